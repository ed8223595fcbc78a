"""A handler's answer that is not the end of the exchange: :class:`InputRequired`.

A request handler returns ``InputRequired("Which quarter?")`` to say it needs more input
before it can answer. The requester gets it as the RESPONSE content (a plain dict with the
:data:`INPUT_REQUIRED` mark), so ``bus.request()`` callers test it with
:func:`input_required`; through A2A, the task moves to ``INPUT_REQUIRED`` and the client's
next message with that ``taskId`` comes back to the handler as a new request with the same
task and context ids (``content["a2a"]``).
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["INPUT_REQUIRED", "InputRequired", "input_required"]

#: The content key that marks an answer asking for more input.
INPUT_REQUIRED = "aos_input_required"


class InputRequired(dict[str, Any]):
    """The answer of a handler that needs more input: ``InputRequired(prompt, **data)``.

    ``prompt`` is the question for the requester (the A2A status message); ``data`` is
    kept beside it in the content."""

    def __init__(self, prompt: str = "", **data: Any) -> None:
        if not isinstance(prompt, str):
            raise TypeError("InputRequired's prompt must be a string")
        super().__init__(data)
        self[INPUT_REQUIRED] = True
        self["text"] = prompt

    @property
    def prompt(self) -> str:
        """The question for the requester."""
        return str(self.get("text", ""))


def input_required(content: Mapping[str, Any]) -> bool:
    """True when the answer ``content`` asks for more input (:class:`InputRequired`)."""
    return content.get(INPUT_REQUIRED) is True
