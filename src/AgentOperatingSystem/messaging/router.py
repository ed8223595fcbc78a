"""Content-based routing and load balancing (spec section 3.6).

A :class:`MessageRouter` holds an ordered list of rules. :meth:`MessageRouter.route` tries them
in the order they were added; the first rule whose condition is true names the target agent,
and ``None`` means no rule matched. The bus asks its router only for messages without a
``recipient_id``.

A plain rule (:meth:`~MessageRouter.add_rule`) always names one target. A load-balancing rule
(:meth:`~MessageRouter.add_load_balancing_rule`) spreads matching messages over several targets
with one of these strategies:

``round_robin``
    Each target in turn: 1, 2, 3, 1, 2, 3, ...
``random``
    A uniform random choice; pass ``rng=random.Random(seed)`` for a reproducible sequence.
``least_loaded``
    The target with the shortest live queue. :meth:`~MessageRouter.route_async` awaits the
    depth function it is given (the bus passes its ``queue_depth``); the synchronous
    :meth:`~MessageRouter.route` uses the provider set with
    :meth:`~MessageRouter.set_load_provider`. Ties go to the target listed first.
``weighted``
    Smooth weighted round robin (as nginx does it): deterministic, and the picks of one cycle
    are interleaved rather than bunched (weights ``{a: 5, b: 1, c: 1}`` give
    ``a a b a c a a``).
``consistent_hash``
    Sticky routing: messages with the same key (by default the conversation id, else the
    correlation id, else the sender) always reach the same target. Targets sit on a hash ring
    with ``virtual_nodes`` points each (BLAKE2b, stable across processes and runs); adding a
    target moves only about ``1/n`` of the keys, all of them to the new target, and removing
    one moves only the keys it held.

Example (the spec's own, in section 3.6, has a priority rule and a ``round_robin`` rule; this
one weighs its targets, keeps conversations together and hands the router to a bus)::

    router = MessageRouter()
    router.add_rule("urgent", lambda msg: msg.priority == MessagePriority.CRITICAL, "ceo_agent")
    router.add_load_balancing_rule(
        "reports",
        lambda msg: msg.content.get("task_type") == "report",
        ["writer_1", "writer_2"],
        "weighted",
        weights={"writer_1": 3, "writer_2": 1},  # writer_1 gets 3 of every 4
    )
    router.add_load_balancing_rule(  # a conversation's queries always reach the same agent
        "support", is_support_query, ["support_1", "support_2"], "consistent_hash"
    )
    bus.router = router  # the bus asks it for every message without a recipient_id

Errors: a bad rule, strategy, weight or target raises :class:`RouterError`, as does a condition
or key function that raises while routing (chained with ``raise ... from``, naming the rule).
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Final

from .errors import MessagingError, RouterError
from .types import Message

__all__ = [
    "STRATEGIES",
    "Condition",
    "DepthFunction",
    "KeyFunction",
    "LoadProvider",
    "MessageRouter",
    "default_hash_key",
]

Condition = Callable[[Message], bool]
"""A rule's predicate: true when the rule applies to the message."""

KeyFunction = Callable[[Message], "str | None"]
"""Gives a message's sticky key for ``consistent_hash`` (``None``: use the default key)."""

LoadProvider = Callable[[str], int]
"""Synchronous queue depth of an agent, for ``least_loaded`` in :meth:`MessageRouter.route`."""

DepthFunction = Callable[[str], Awaitable[int]]
"""Asynchronous queue depth of an agent, e.g. ``MessageBus.queue_depth``."""

STRATEGIES: Final[tuple[str, ...]] = (
    "round_robin",
    "random",
    "least_loaded",
    "weighted",
    "consistent_hash",
)
"""The load-balancing strategies :meth:`MessageRouter.add_load_balancing_rule` accepts."""


def default_hash_key(message: Message) -> str:
    """The default sticky key of ``consistent_hash``.

    The first that is set of: ``metadata["conversation_id"]``, ``content["conversation_id"]``,
    ``correlation_id``, ``sender_id``.
    """
    for value in (
        message.metadata.get("conversation_id"),
        message.content.get("conversation_id"),
        message.correlation_id,
    ):
        if value is not None and value != "":
            return str(value)
    return message.sender_id


def _stable_hash(text: str) -> int:
    """A 64-bit hash that is the same in every process (unlike ``hash()``)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise RouterError(f"rule name must be a non-empty string, not {name!r}")
    return name


def _check_target(target: object) -> str:
    if not isinstance(target, str) or not target:
        raise RouterError(f"target must be a non-empty agent id string, not {target!r}")
    return target


def _check_weight(target: str, weight: object) -> int:
    if isinstance(weight, bool) or not isinstance(weight, int) or weight <= 0:
        raise RouterError(f"weight of target {target!r} must be a positive int, not {weight!r}")
    return weight


def _check_strategy(strategy: object) -> str:
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise RouterError(
            f"unknown load-balancing strategy {strategy!r}; "
            f"valid strategies: {', '.join(STRATEGIES)}"
        )
    return strategy


def _check_targets(name: str, targets: Iterable[str]) -> list[str]:
    """The targets of rule ``name`` as a list: at least one, each a valid id, no repeats."""
    if isinstance(targets, str):
        raise RouterError("targets must be a list of agent ids, not a single string")
    try:
        target_list = [_check_target(t) for t in targets]
    except TypeError as exc:
        raise RouterError(f"targets of rule {name!r} must be an iterable of agent ids") from exc
    if not target_list:
        raise RouterError(f"rule {name!r} needs at least one target")
    duplicates = sorted({t for t in target_list if target_list.count(t) > 1})
    if duplicates:
        raise RouterError(f"rule {name!r} lists targets more than once: {duplicates}")
    return target_list


def _check_weights(
    name: str, strategy: str, weights: Mapping[str, int] | None, targets: list[str]
) -> dict[str, int]:
    """The weight of every target (1 each when ``weights`` is None and may be)."""
    if weights is None:
        if strategy == "weighted":
            raise RouterError(f"the 'weighted' strategy of rule {name!r} needs weights")
        return dict.fromkeys(targets, 1)
    if strategy not in ("weighted", "consistent_hash"):
        raise RouterError(
            f"weights only apply to the 'weighted' and 'consistent_hash' strategies, "
            f"not {strategy!r}"
        )
    if not isinstance(weights, Mapping):
        raise RouterError("weights must be a dict of target -> positive int")
    missing = [t for t in targets if t not in weights]
    if missing:
        raise RouterError(f"weights of rule {name!r} are missing for targets {missing}")
    unknown = sorted(set(weights) - set(targets))
    if unknown:
        raise RouterError(f"weights of rule {name!r} name unknown targets {unknown}")
    return {t: _check_weight(t, weights[t]) for t in targets}


def _check_options(
    name: str,
    strategy: str,
    key: KeyFunction | None,
    rng: random.Random | None,
    virtual_nodes: int,
) -> None:
    """``key``, ``rng`` and ``virtual_nodes`` are valid, and given only where they apply."""
    if key is not None:
        if strategy != "consistent_hash":
            raise RouterError(f"key only applies to 'consistent_hash', not {strategy!r}")
        if not callable(key):
            raise RouterError(f"key of rule {name!r} must be callable")
    if rng is not None:
        if strategy != "random":
            raise RouterError(f"rng only applies to 'random', not {strategy!r}")
        if not isinstance(rng, random.Random):
            raise RouterError("rng must be a random.Random instance")
    if isinstance(virtual_nodes, bool) or not isinstance(virtual_nodes, int):
        raise RouterError("virtual_nodes must be a positive int")
    if virtual_nodes <= 0:
        raise RouterError("virtual_nodes must be a positive int")


class _Rule:
    """A rule with one fixed target."""

    kind = "static"

    def __init__(self, name: str, condition: Condition, target: str) -> None:
        self.name = name
        self.condition = condition
        self.target = target

    @property
    def targets(self) -> tuple[str, ...]:
        return (self.target,)

    def matches(self, message: Message) -> bool:
        try:
            return bool(self.condition(message))
        except Exception as exc:
            raise RouterError(
                f"condition of routing rule {self.name!r} raised {type(exc).__name__}: {exc}"
            ) from exc


class _BalancedRule(_Rule):
    """A rule that picks one of several targets with a strategy."""

    kind = "load_balancing"

    def __init__(
        self,
        name: str,
        condition: Condition,
        targets: list[str],
        strategy: str,
        weights: dict[str, int],
        key: KeyFunction | None,
        rng: random.Random,
        virtual_nodes: int,
    ) -> None:
        super().__init__(name, condition, targets[0])
        self.strategy = strategy
        self._targets = list(targets)
        self._weights = dict(weights)
        self._key = key
        self._rng = rng
        self._virtual_nodes = virtual_nodes
        self._next = 0  # round_robin: index of the next target
        self._current: dict[str, int] = dict.fromkeys(targets, 0)  # weighted: current weights
        self._ring_hashes: list[int] = []  # consistent_hash: sorted points ...
        self._ring_targets: list[str] = []  # ... and the target owning each point
        if strategy == "consistent_hash":
            for target in targets:
                self._ring_add(target)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(self._targets)

    @property
    def needs_load(self) -> bool:
        return self.strategy == "least_loaded"

    # -- membership ------------------------------------------------------------------------

    def add_target(self, target: str, weight: int) -> None:
        if target in self._targets:
            raise RouterError(f"rule {self.name!r} already has target {target!r}")
        if weight != 1 and self.strategy not in ("weighted", "consistent_hash"):
            raise RouterError(
                f"a weight only applies to the 'weighted' and 'consistent_hash' strategies, "
                f"not {self.strategy!r}"
            )
        self._targets.append(target)
        self._weights[target] = weight
        self._current[target] = 0
        if self.strategy == "consistent_hash":
            self._ring_add(target)

    def remove_target(self, target: str) -> None:
        if target not in self._targets:
            raise RouterError(f"rule {self.name!r} has no target {target!r}")
        if len(self._targets) == 1:
            raise RouterError(
                f"cannot remove the last target of rule {self.name!r}; remove the rule instead"
            )
        index = self._targets.index(target)
        del self._targets[index]
        if index < self._next:
            self._next -= 1
        self._next %= len(self._targets)
        self._weights.pop(target, None)
        self._current.pop(target, None)
        if self.strategy == "consistent_hash":
            keep = [i for i, owner in enumerate(self._ring_targets) if owner != target]
            self._ring_hashes = [self._ring_hashes[i] for i in keep]
            self._ring_targets = [self._ring_targets[i] for i in keep]

    def _ring_add(self, target: str) -> None:
        points = self._virtual_nodes * self._weights.get(target, 1)
        for replica in range(points):
            point = _stable_hash(f"{target}#{replica}")
            # Sort by (point, target) so a (very unlikely) collision resolves the same way
            # whatever order the targets were added in.
            index = bisect.bisect_left(self._ring_hashes, point)
            while (
                index < len(self._ring_hashes)
                and self._ring_hashes[index] == point
                and self._ring_targets[index] < target
            ):
                index += 1
            self._ring_hashes.insert(index, point)
            self._ring_targets.insert(index, target)

    # -- picking ---------------------------------------------------------------------------

    def pick(self, message: Message) -> str:
        """Pick a target for every strategy but ``least_loaded`` (no awaits: asyncio-safe)."""
        if self.strategy == "round_robin":
            target = self._targets[self._next % len(self._targets)]
            self._next = (self._next + 1) % len(self._targets)
            return target
        if self.strategy == "random":
            return self._rng.choice(self._targets)
        if self.strategy == "weighted":
            return self._pick_weighted()
        if self.strategy == "consistent_hash":
            return self._pick_hashed(message)
        raise AssertionError(f"pick() called for strategy {self.strategy!r}")  # pragma: no cover

    def _pick_weighted(self) -> str:
        total = 0
        best: str | None = None
        for target in self._targets:
            weight = self._weights[target]
            total += weight
            self._current[target] += weight
            if best is None or self._current[target] > self._current[best]:
                best = target
        assert best is not None
        self._current[best] -= total
        return best

    def _pick_hashed(self, message: Message) -> str:
        key: str | None = None
        if self._key is not None:
            try:
                key = self._key(message)
            except Exception as exc:
                raise RouterError(
                    f"key function of routing rule {self.name!r} raised {type(exc).__name__}: {exc}"
                ) from exc
            if key is not None and not isinstance(key, str):
                raise RouterError(
                    f"key function of routing rule {self.name!r} returned "
                    f"{type(key).__name__}, expected str or None"
                )
        if key is None:
            key = default_hash_key(message)
        index = bisect.bisect_left(self._ring_hashes, _stable_hash(key))
        if index == len(self._ring_hashes):
            index = 0
        return self._ring_targets[index]

    def pick_least_loaded(self, depths: list[tuple[str, int]]) -> str:
        best, best_depth = depths[0]
        for target, depth in depths[1:]:
            if depth < best_depth:
                best, best_depth = target, depth
        return best

    def check_depth(self, target: str, depth: object) -> int:
        if isinstance(depth, bool) or not isinstance(depth, int):
            raise RouterError(
                f"queue depth of {target!r} for rule {self.name!r} must be an int, "
                f"got {type(depth).__name__}"
            )
        return depth


class MessageRouter:
    """Routes messages to agents by ordered rules, with load-balancing strategies.

    Not thread-safe; safe to share between asyncio tasks (state updates never await).
    """

    def __init__(self) -> None:
        self._rules: dict[str, _Rule] = {}
        self._load_provider: LoadProvider | None = None

    # -- configuration ---------------------------------------------------------------------

    def add_rule(self, name: str, condition: Condition, target: str) -> None:
        """Add a rule that sends every message matching ``condition`` to ``target``.

        Raises:
            RouterError: empty or duplicate ``name``, non-callable ``condition``, bad target.
        """
        name = self._check_new_name(name)
        if not callable(condition):
            raise RouterError(f"condition of rule {name!r} must be callable")
        self._rules[name] = _Rule(name, condition, _check_target(target))

    def add_load_balancing_rule(
        self,
        name: str,
        condition: Condition,
        targets: Iterable[str],
        strategy: str = "round_robin",
        *,
        weights: Mapping[str, int] | None = None,
        key: KeyFunction | None = None,
        rng: random.Random | None = None,
        virtual_nodes: int = 160,
    ) -> None:
        """Add a rule that spreads messages matching ``condition`` over ``targets``.

        Args:
            name: unique rule name.
            condition: predicate on the message.
            targets: agent ids (at least one, no duplicates).
            strategy: one of :data:`STRATEGIES`.
            weights: ``weighted`` (required, a positive int for every target) or
                ``consistent_hash`` (optional: scales each target's share of the ring).
            key: ``consistent_hash`` only: the message's sticky key; ``None`` or a ``None``
                result uses :func:`default_hash_key`.
            rng: ``random`` only: the random source (seed it for reproducible picks).
            virtual_nodes: ``consistent_hash`` only: ring points per unit of weight.

        Raises:
            RouterError: unknown strategy, duplicate name, empty or duplicate targets,
                non-callable condition or key, missing or non-positive weights, or an option
                given to a strategy that does not use it.
        """
        name = self._check_new_name(name)
        if not callable(condition):
            raise RouterError(f"condition of rule {name!r} must be callable")
        strategy = _check_strategy(strategy)
        target_list = _check_targets(name, targets)
        checked_weights = _check_weights(name, strategy, weights, target_list)
        _check_options(name, strategy, key, rng, virtual_nodes)
        self._rules[name] = _BalancedRule(
            name,
            condition,
            target_list,
            strategy,
            checked_weights,
            key,
            rng if rng is not None else random.Random(),
            virtual_nodes,
        )

    def remove_rule(self, name: str) -> None:
        """Remove the rule called ``name``.

        Raises:
            RouterError: no such rule.
        """
        self._rule(name)
        del self._rules[name]

    def add_target(self, rule_name: str, target: str, weight: int = 1) -> None:
        """Add ``target`` to a load-balancing rule (a worker came up).

        ``weight`` applies to ``weighted`` and ``consistent_hash``; other strategies accept only
        the default 1.

        Raises:
            RouterError: unknown rule, not a load-balancing rule, target already present,
                bad weight.
        """
        rule = self._balanced(rule_name)
        target = _check_target(target)
        rule.add_target(target, _check_weight(target, weight))

    def remove_target(self, rule_name: str, target: str) -> None:
        """Remove ``target`` from a load-balancing rule (a worker went away).

        Raises:
            RouterError: unknown rule or target, not a load-balancing rule, or the last target
                (remove the rule instead).
        """
        self._balanced(rule_name).remove_target(target)

    def clear(self) -> None:
        """Remove every rule (the load provider stays)."""
        self._rules.clear()

    def set_load_provider(self, provider: LoadProvider | None) -> None:
        """Set the synchronous queue-depth function ``least_loaded`` uses in :meth:`route`.

        ``None`` removes it.
        """
        if provider is not None and not callable(provider):
            raise RouterError("load provider must be callable")
        self._load_provider = provider

    # -- inspection ------------------------------------------------------------------------

    @property
    def rules(self) -> tuple[str, ...]:
        """Rule names in the order they are tried."""
        return tuple(self._rules)

    def targets(self, rule_name: str) -> tuple[str, ...]:
        """The current targets of a rule, in order.

        Raises:
            RouterError: no such rule.
        """
        return self._rule(rule_name).targets

    def strategy(self, rule_name: str) -> str | None:
        """The load-balancing strategy of a rule, or ``None`` for a single-target rule.

        Raises:
            RouterError: no such rule.
        """
        rule = self._rule(rule_name)
        return rule.strategy if isinstance(rule, _BalancedRule) else None

    def __len__(self) -> int:
        return len(self._rules)

    def __contains__(self, name: object) -> bool:
        return name in self._rules

    def __repr__(self) -> str:
        return f"MessageRouter(rules={list(self._rules)!r})"

    # -- routing ---------------------------------------------------------------------------

    def route(self, message: Message) -> str | None:
        """Return the target agent id for ``message``, or ``None`` if no rule matches.

        Raises:
            RouterError: a condition or key function raised, or a ``least_loaded`` rule
                matched with no load provider set (use :meth:`route_async` then).
        """
        for rule in tuple(self._rules.values()):
            if not rule.matches(message):
                continue
            if not isinstance(rule, _BalancedRule):
                return rule.target
            if not rule.needs_load:
                return rule.pick(message)
            provider = self._load_provider
            if provider is None:
                raise RouterError(
                    f"rule {rule.name!r} uses 'least_loaded', which needs queue depths: "
                    f"use 'await router.route_async(message, depth=...)' or "
                    f"'router.set_load_provider(...)'"
                )
            depths: list[tuple[str, int]] = []
            for target in rule.targets:
                try:
                    depth = provider(target)
                except MessagingError:
                    raise
                except Exception as exc:
                    raise RouterError(
                        f"load provider failed for {target!r} in rule {rule.name!r}: {exc}"
                    ) from exc
                depths.append((target, rule.check_depth(target, depth)))
            return rule.pick_least_loaded(depths)
        return None

    async def route_async(self, message: Message, depth: DepthFunction | None = None) -> str | None:
        """Like :meth:`route`, but ``least_loaded`` awaits ``depth(target)`` for each target.

        Without ``depth`` the synchronous load provider is used. Errors of ours
        (:class:`MessagingError`) from ``depth`` pass through unchanged; any other exception
        becomes a :class:`RouterError`.
        """
        if depth is None:
            return self.route(message)
        for rule in tuple(self._rules.values()):
            if not rule.matches(message):
                continue
            if not isinstance(rule, _BalancedRule):
                return rule.target
            if not rule.needs_load:
                return rule.pick(message)
            depths: list[tuple[str, int]] = []
            for target in rule.targets:
                try:
                    value = await depth(target)
                except MessagingError:
                    raise
                except Exception as exc:
                    raise RouterError(
                        f"queue depth failed for {target!r} in rule {rule.name!r}: {exc}"
                    ) from exc
                depths.append((target, rule.check_depth(target, value)))
            return rule.pick_least_loaded(depths)
        return None

    # -- helpers ---------------------------------------------------------------------------

    def _check_new_name(self, name: str) -> str:
        name = _check_name(name)
        if name in self._rules:
            raise RouterError(f"a routing rule named {name!r} already exists")
        return name

    def _rule(self, name: str) -> _Rule:
        try:
            return self._rules[name]
        except (KeyError, TypeError):
            raise RouterError(
                f"no routing rule named {name!r}; rules: {list(self._rules)}"
            ) from None

    def _balanced(self, name: str) -> _BalancedRule:
        rule = self._rule(name)
        if not isinstance(rule, _BalancedRule):
            raise RouterError(f"rule {name!r} is not a load-balancing rule")
        return rule
