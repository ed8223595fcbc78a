"""The spec's import path for :class:`MessageBus`; the bus lives in :mod:`.core`."""

from .core.bus import *  # noqa: F403
from .core.bus import __all__ as __all__
