"""MessageRouter: rule order, every strategy, consistent hashing, bad input."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from AgentOperatingSystem.messaging.errors import BrokerUnavailableError, RouterError
from AgentOperatingSystem.messaging.router import (
    STRATEGIES,
    MessageRouter,
    default_hash_key,
)
from AgentOperatingSystem.messaging.types import Message
from tests.support import messages


def task(task_type: str = "analysis") -> Message:
    """A TASK without a recipient whose content names ``task_type``, what the rules here test."""
    return messages.task(None, content={"task_type": task_type})


def always(_: Message) -> bool:
    return True


def route_n(router: MessageRouter, n: int, message: Message | None = None) -> list[str | None]:
    msg = message if message is not None else task()
    return [router.route(msg) for _ in range(n)]


# -- rules -----------------------------------------------------------------------------------


def test_rules_are_tried_in_insertion_order() -> None:
    router = MessageRouter()
    router.add_rule("b_first", always, "b")
    router.add_rule("a_second", always, "a")
    assert list(router.rules) == ["b_first", "a_second"]
    assert router.route(task()) == "b"
    router.remove_rule("b_first")
    assert list(router.rules) == ["a_second"]
    assert router.route(task()) == "a"


def test_non_matching_rules_fall_through() -> None:
    router = MessageRouter()
    router.add_rule("reports", lambda m: m.content.get("task_type") == "report", "reporter")
    router.add_rule("analysis", lambda m: m.content.get("task_type") == "analysis", "analyst")
    assert router.route(task("analysis")) == "analyst"
    assert router.route(task("report")) == "reporter"
    assert router.route(task("other")) is None


def test_remove_rule_and_clear() -> None:
    router = MessageRouter()
    router.add_rule("one", always, "a")
    router.add_load_balancing_rule("two", always, ["b", "c"])
    assert len(router) == 2 and "one" in router
    router.remove_rule("one")
    assert list(router.rules) == ["two"]
    assert router.route(task()) == "b"
    with pytest.raises(RouterError, match="no routing rule named 'one'"):
        router.remove_rule("one")
    # the name is free again
    router.add_rule("one", always, "a")
    router.clear()
    assert list(router.rules) == []
    assert router.route(task()) is None


def test_rules_listing_is_read_only() -> None:
    router = MessageRouter()
    router.add_rule("one", always, "a")
    rules = router.rules
    assert isinstance(rules, tuple)
    with pytest.raises(AttributeError):
        router.rules = ("x",)  # type: ignore[misc]


def test_condition_that_raises_is_reported_with_the_rule_name() -> None:
    router = MessageRouter()

    def broken(msg: Message) -> bool:
        return bool(msg.content["missing"])

    router.add_rule("broken_rule", broken, "a")
    with pytest.raises(RouterError, match="broken_rule") as info:
        router.route(task())
    assert isinstance(info.value.__cause__, KeyError)


async def test_condition_that_raises_in_route_async() -> None:
    router = MessageRouter()
    router.add_load_balancing_rule("lb", lambda m: 1 / 0 > 0, ["a", "b"], "least_loaded")

    async def depth(_: str) -> int:
        return 0

    with pytest.raises(RouterError, match="'lb'") as info:
        await router.route_async(task(), depth=depth)
    assert isinstance(info.value.__cause__, ZeroDivisionError)


# -- round robin -----------------------------------------------------------------------------


def test_round_robin_over_three_targets() -> None:
    router = MessageRouter()
    router.add_load_balancing_rule("rr", always, ["t1", "t2", "t3"], "round_robin")
    assert route_n(router, 9) == ["t1", "t2", "t3"] * 3


async def test_round_robin_through_route_async() -> None:
    router = MessageRouter()
    router.add_load_balancing_rule("rr", always, ["t1", "t2", "t3"])

    async def depth(_: str) -> int:
        raise AssertionError("round_robin must not ask for depths")

    assert [await router.route_async(task(), depth=depth) for _ in range(4)] == [
        "t1",
        "t2",
        "t3",
        "t1",
    ]


def test_round_robin_when_workers_come_and_go() -> None:
    router = MessageRouter()
    router.add_load_balancing_rule("rr", always, ["a", "b", "c"])
    assert route_n(router, 2) == ["a", "b"]
    router.remove_target("rr", "a")  # removed before the cursor: c is still next
    assert route_n(router, 3) == ["c", "b", "c"]
    router.add_target("rr", "d")
    assert router.targets("rr") == ("b", "c", "d")
    assert route_n(router, 4) == ["b", "c", "d", "b"]


# -- random ----------------------------------------------------------------------------------


def test_random_is_reproducible_with_a_seeded_rng() -> None:
    def picks(seed: int) -> list[str | None]:
        router = MessageRouter()
        router.add_load_balancing_rule(
            "rnd", always, ["a", "b", "c"], "random", rng=random.Random(seed)
        )
        return route_n(router, 200)

    first = picks(42)
    assert first == picks(42)
    assert first != picks(43)
    counts = Counter(first)
    assert set(counts) == {"a", "b", "c"}
    assert all(40 <= n <= 100 for n in counts.values())


# -- least loaded ----------------------------------------------------------------------------


async def test_least_loaded_with_async_depth() -> None:
    depths = {"w1": 5, "w2": 1, "w3": 3}
    asked: list[str] = []

    async def depth(agent: str) -> int:
        asked.append(agent)
        return depths[agent]

    router = MessageRouter()
    router.add_load_balancing_rule("ll", always, ["w1", "w2", "w3"], "least_loaded")
    assert await router.route_async(task(), depth=depth) == "w2"
    assert asked == ["w1", "w2", "w3"]
    depths["w2"] = 9
    assert await router.route_async(task(), depth=depth) == "w3"
    depths.update(w1=0, w3=0)  # tie: first in targets order
    assert await router.route_async(task(), depth=depth) == "w1"


def test_least_loaded_with_sync_provider() -> None:
    depths = {"w1": 4, "w2": 4, "w3": 2}
    router = MessageRouter()
    router.add_load_balancing_rule("ll", always, ["w1", "w2", "w3"], "least_loaded")
    router.set_load_provider(depths.__getitem__)
    assert router.route(task()) == "w3"
    depths["w3"] = 7
    assert router.route(task()) == "w1"


async def test_route_async_without_depth_uses_the_sync_provider() -> None:
    router = MessageRouter()
    router.add_load_balancing_rule("ll", always, ["w1", "w2"], "least_loaded")
    router.set_load_provider({"w1": 3, "w2": 0}.__getitem__)
    assert await router.route_async(task()) == "w2"


def test_least_loaded_in_sync_route_without_provider_explains() -> None:
    router = MessageRouter()
    router.add_load_balancing_rule("ll", always, ["w1", "w2"], "least_loaded")
    with pytest.raises(RouterError, match="route_async"):
        router.route(task())
    router.set_load_provider(lambda _: 0)
    assert router.route(task()) == "w1"
    router.set_load_provider(None)
    with pytest.raises(RouterError, match="route_async"):
        router.route(task())


async def test_least_loaded_depth_errors() -> None:
    router = MessageRouter()
    router.add_load_balancing_rule("ll", always, ["w1", "w2"], "least_loaded")

    async def broken(_: str) -> int:
        raise OSError("disk")

    async def ours(_: str) -> int:
        raise BrokerUnavailableError("engine down")

    async def not_int(_: str) -> int:
        return "3"  # type: ignore[return-value]

    with pytest.raises(RouterError, match="w1") as info:
        await router.route_async(task(), depth=broken)
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(BrokerUnavailableError):  # our own errors pass through unchanged
        await router.route_async(task(), depth=ours)
    with pytest.raises(RouterError, match="must be an int"):
        await router.route_async(task(), depth=not_int)


# -- weighted --------------------------------------------------------------------------------


def test_weighted_is_exact_over_a_cycle() -> None:
    router = MessageRouter()
    router.add_load_balancing_rule(
        "w", always, ["a", "b", "c"], "weighted", weights={"a": 5, "b": 1, "c": 1}
    )
    cycle = route_n(router, 7)
    assert cycle == ["a", "a", "b", "a", "c", "a", "a"]  # smooth: interleaved, not bunched
    assert route_n(router, 7) == cycle  # and it repeats exactly
    many = Counter(route_n(router, 700))
    assert many == {"a": 500, "b": 100, "c": 100}


def test_weighted_with_added_and_removed_targets() -> None:
    router = MessageRouter()
    router.add_load_balancing_rule("w", always, ["a", "b"], "weighted", weights={"a": 2, "b": 1})
    assert Counter(route_n(router, 3)) == {"a": 2, "b": 1}
    router.add_target("w", "c", weight=3)
    assert Counter(route_n(router, 600)) == {"a": 200, "b": 100, "c": 300}
    router.remove_target("w", "a")
    assert Counter(route_n(router, 400)) == {"b": 100, "c": 300}


# -- consistent hash -------------------------------------------------------------------------


def keyed(key: str) -> Message:
    return Message(sender_id="s", metadata={"conversation_id": key})


def assignments(router: MessageRouter, keys: list[str]) -> dict[str, str | None]:
    return {k: router.route(keyed(k)) for k in keys}


KEYS = [f"conversation-{i}" for i in range(10_000)]


def test_consistent_hash_same_key_same_target_and_spread() -> None:
    router = MessageRouter()
    router.add_load_balancing_rule("ch", always, ["a", "b", "c"], "consistent_hash")
    first = assignments(router, KEYS)
    assert assignments(router, KEYS) == first
    counts = Counter(first.values())
    assert set(counts) == {"a", "b", "c"}
    assert all(2_000 <= n <= 4_700 for n in counts.values()), counts
    # Stable across router instances (no use of the salted built-in hash()).
    other = MessageRouter()
    other.add_load_balancing_rule("ch", always, ["c", "a", "b"], "consistent_hash")
    assert assignments(other, KEYS[:500]) == {k: first[k] for k in KEYS[:500]}


def test_consistent_hash_is_stable_across_processes() -> None:
    # Pinned assignments: they would change from run to run with the salted built-in hash().
    router = MessageRouter()
    router.add_load_balancing_rule("ch", always, ["a", "b", "c"], "consistent_hash")
    expected = {
        "alpha": "c",
        "beta": "b",
        "gamma": "a",
        "delta": "a",
        "epsilon": "b",
        "zeta": "c",
        "eta": "c",
        "theta": "b",
    }
    assert assignments(router, list(expected)) == expected


def test_consistent_hash_adding_a_target_moves_about_a_quarter_only_to_it() -> None:
    router = MessageRouter()
    router.add_load_balancing_rule("ch", always, ["a", "b", "c"], "consistent_hash")
    before = assignments(router, KEYS)
    router.add_target("ch", "d")
    after = assignments(router, KEYS)
    moved = [k for k in KEYS if before[k] != after[k]]
    assert 0.15 * len(KEYS) <= len(moved) <= 0.35 * len(KEYS), len(moved)
    assert all(after[k] == "d" for k in moved)


def test_consistent_hash_removing_a_target_moves_only_its_keys() -> None:
    router = MessageRouter()
    router.add_load_balancing_rule("ch", always, ["a", "b", "c", "d"], "consistent_hash")
    before = assignments(router, KEYS)
    router.remove_target("ch", "b")
    after = assignments(router, KEYS)
    for k in KEYS:
        if before[k] == "b":
            assert after[k] in {"a", "c", "d"}
        else:
            assert after[k] == before[k]
    assert "b" not in set(after.values())


def test_consistent_hash_default_and_custom_keys() -> None:
    by_meta = Message(sender_id="x", metadata={"conversation_id": "c1"}, content={})
    by_content = Message(sender_id="y", content={"conversation_id": "c1"})
    by_corr = Message(sender_id="z", correlation_id="c1")
    by_sender = Message(sender_id="c1")
    assert {default_hash_key(m) for m in (by_meta, by_content, by_corr, by_sender)} == {"c1"}
    meta_wins = Message(
        sender_id="s", metadata={"conversation_id": "m"}, content={"conversation_id": "c"}
    )
    assert default_hash_key(meta_wins) == "m"

    router = MessageRouter()
    router.add_load_balancing_rule("ch", always, ["a", "b", "c"], "consistent_hash")
    targets = {router.route(m) for m in (by_meta, by_content, by_corr, by_sender)}
    assert len(targets) == 1

    custom = MessageRouter()
    custom.add_load_balancing_rule(
        "ch",
        always,
        ["a", "b", "c"],
        "consistent_hash",
        key=lambda m: m.content.get("customer"),
    )
    for i in range(50):
        a = Message(sender_id=f"s{i}", content={"customer": f"cust{i}"})
        b = Message(sender_id=f"other{i}", content={"customer": f"cust{i}"})
        assert custom.route(a) == custom.route(b)
    # A None key falls back to the default key.
    no_customer = Message(sender_id="s", correlation_id="corr-7")
    assert custom.route(no_customer) == custom.route(Message(sender_id="corr-7"))


def test_consistent_hash_key_errors() -> None:
    router = MessageRouter()
    router.add_load_balancing_rule(
        "ch", always, ["a", "b"], "consistent_hash", key=lambda m: m.content["k"]
    )
    with pytest.raises(RouterError, match="key function of routing rule 'ch'"):
        router.route(Message())
    with pytest.raises(RouterError, match="expected str"):
        router.route(Message(content={"k": 5}))


def test_consistent_hash_weights_scale_the_share() -> None:
    router = MessageRouter()
    router.add_load_balancing_rule(
        "ch", always, ["a", "b"], "consistent_hash", weights={"a": 3, "b": 1}
    )
    counts = Counter(assignments(router, KEYS).values())
    assert counts["a"] > 2 * counts["b"]


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"strategy": "fastest"}, "valid strategies: " + ", ".join(STRATEGIES)),
        ({"targets": []}, "at least one target"),
        ({"targets": ["a", "a"]}, "more than once"),
        ({"targets": ["a", ""]}, "non-empty"),
        ({"targets": "abc"}, "single string"),
        ({"targets": 3}, "iterable"),
        ({"condition": "yes"}, "callable"),
        ({"strategy": "weighted"}, "needs weights"),
        ({"strategy": "weighted", "weights": {"a": 1}}, r"missing for targets \['b'\]"),
        ({"strategy": "weighted", "weights": {"a": 1, "b": 0}}, "positive int"),
        ({"strategy": "weighted", "weights": {"a": 1, "b": -2}}, "positive int"),
        ({"strategy": "weighted", "weights": {"a": 1, "b": 1.5}}, "positive int"),
        ({"strategy": "weighted", "weights": {"a": 1, "b": 1, "z": 1}}, "unknown targets"),
        ({"weights": {"a": 1, "b": 1}}, "weights only apply"),
        ({"key": lambda m: "k"}, "key only applies"),
        ({"strategy": "consistent_hash", "key": "k"}, "must be callable"),
        ({"rng": random.Random(1)}, "rng only applies"),
        ({"strategy": "random", "rng": 5}, "random.Random"),
        ({"strategy": "consistent_hash", "virtual_nodes": 0}, "virtual_nodes"),
        ({"name": ""}, "non-empty"),
    ],
)
def test_bad_load_balancing_rules(kwargs: dict[str, Any], match: str) -> None:
    router = MessageRouter()
    args: dict[str, Any] = {"name": "lb", "condition": always, "targets": ["a", "b"]}
    args.update(kwargs)
    with pytest.raises(RouterError, match=match):
        router.add_load_balancing_rule(**args)
    assert list(router.rules) == []


def test_bad_rules_and_names() -> None:
    router = MessageRouter()
    router.add_rule("r", always, "a")
    with pytest.raises(RouterError, match="already exists"):
        router.add_rule("r", always, "b")
    with pytest.raises(RouterError, match="already exists"):
        router.add_load_balancing_rule("r", always, ["a"])
    with pytest.raises(RouterError, match="callable"):
        router.add_rule("s", None, "a")  # type: ignore[arg-type]
    with pytest.raises(RouterError, match="non-empty"):
        router.add_rule("s", always, "")
    with pytest.raises(RouterError, match="non-empty"):
        router.add_rule(None, always, "a")  # type: ignore[arg-type]
    with pytest.raises(RouterError, match="load provider must be callable"):
        router.set_load_provider(3)  # type: ignore[arg-type]
    assert list(router.rules) == ["r"]


def test_bad_target_changes() -> None:
    router = MessageRouter()
    router.add_rule("static", always, "a")
    router.add_load_balancing_rule("rr", always, ["a", "b"])
    router.add_load_balancing_rule("w", always, ["a"], "weighted", weights={"a": 1})
    with pytest.raises(RouterError, match="not a load-balancing rule"):
        router.add_target("static", "b")
    with pytest.raises(RouterError, match="no routing rule"):
        router.add_target("nope", "b")
    with pytest.raises(RouterError, match="already has target"):
        router.add_target("rr", "a")
    with pytest.raises(RouterError, match="weight only applies"):
        router.add_target("rr", "c", weight=2)
    with pytest.raises(RouterError, match="positive int"):
        router.add_target("w", "c", weight=0)
    with pytest.raises(RouterError, match="has no target"):
        router.remove_target("rr", "zzz")
    with pytest.raises(RouterError, match="last target"):
        router.remove_target("w", "a")
    with pytest.raises(RouterError, match="no routing rule"):
        router.targets("nope")
    assert router.targets("rr") == ("a", "b")
    assert router.strategy("w") == "weighted"
    assert router.strategy("static") is None
