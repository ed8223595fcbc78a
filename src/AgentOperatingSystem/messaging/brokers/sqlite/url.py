"""The ``sqlite:///`` URL: which file, and the engine's options."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from ...errors import ConfigurationError

__all__ = ["SqliteOptions", "parse_sqlite_url", "sqlite_options"]

#: The options a ``sqlite:///`` URL may carry.
_KNOWN = frozenset({"synchronous", "busy_timeout_ms"})


def parse_sqlite_url(url: str) -> tuple[Path, dict[str, str]]:
    """Split ``sqlite:///relative.db`` / ``sqlite:////abs.db?opt=v`` into path and options."""
    parsed = urlparse(url)
    if parsed.scheme != "sqlite":
        raise ConfigurationError(f"not a sqlite URL: {url!r}")
    raw = unquote(parsed.path)
    if parsed.netloc:
        raise ConfigurationError(
            f"sqlite URL {url!r} has a host; use sqlite:///relative.db or sqlite:////abs.db"
        )
    if not raw or raw == "/":
        raise ConfigurationError(f"sqlite URL {url!r} names no file")
    path = Path(raw[1:])  # sqlite:///rel.db -> rel.db; sqlite:////abs.db -> /abs.db
    options = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    return path, options


SqliteOptions = tuple[Path, str, int]
"""What a URL names: (path, synchronous, busy_timeout_ms)."""


def sqlite_options(url: str) -> SqliteOptions:
    """The file and the checked options of a ``sqlite:///`` URL (defaults filled in)."""
    path, options = parse_sqlite_url(url)
    unknown = set(options) - _KNOWN
    if unknown:
        raise ConfigurationError(f"unknown sqlite URL options {sorted(unknown)}")
    try:
        busy = int(options.get("busy_timeout_ms", "5000"))
    except ValueError as exc:
        raise ConfigurationError("busy_timeout_ms must be an integer") from exc
    return path, options.get("synchronous", "full"), busy
