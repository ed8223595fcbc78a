"""HMAC signing of node-to-node requests, and their check on the serving node.

A request is signed with the deployment's shared secret (``NetworkConfig.auth_secret``)::

    X-AOS-Timestamp: <unix seconds>
    X-AOS-Signature: v1=<hex HMAC-SHA256(secret,
                         "aos-v1\\n" METHOD "\\n" PATH "\\n" TIMESTAMP "\\n" BODY)>

and refused (``401``) when unsigned, wrongly signed, or older than ``signature_max_age``.
Older secrets (``previous_auth_secrets``) are still accepted when verifying (key rotation).
A message request whose signature was accepted before is refused too (``401``): see
:mod:`.replay`.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from typing import Any, Callable, Mapping, ParamSpec, Sequence

from ...config.network import NetworkConfig
from ..clock import Clock

__all__ = [
    "HEADER_NOT_BEFORE",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "AuthFailure",
    "RequestAuth",
    "sign_request",
    "signature_headers",
    "verify_request",
]

HEADER_TIMESTAMP = "X-AOS-Timestamp"
HEADER_SIGNATURE = "X-AOS-Signature"
#: on a 503: the earliest signing time the node accepts (it started then, see :mod:`.replay`)
HEADER_NOT_BEFORE = "X-AOS-Not-Before"
_SIG_VERSION = "v1"

#: HMAC states with the key already absorbed, one per secret: copying one is about three
#: times cheaper than building a new HMAC (no key schedule, no digest look-up per request).
_KEYED: dict[bytes, Any] = {}

_P = ParamSpec("_P")


def _mac(secret: bytes, method: str, path: str, timestamp: str, body: bytes) -> str:
    keyed = _KEYED.get(secret)
    if keyed is None:
        if len(_KEYED) >= 64:  # secrets rotate rarely; never let this grow without bound
            _KEYED.clear()
        keyed = _KEYED[secret] = hmac.new(secret, digestmod=hashlib.sha256)
    mac = keyed.copy()
    mac.update(f"aos-{_SIG_VERSION}\n{method.upper()}\n{path}\n{timestamp}\n".encode())
    mac.update(body)
    return mac.hexdigest()


def sign_request(secret: bytes, method: str, path: str, timestamp: str, body: bytes) -> str:
    """The ``X-AOS-Signature`` value of a request: ``v1=<hex HMAC-SHA256>`` over the method,
    the raw path with query, the timestamp and the body."""
    return f"{_SIG_VERSION}={_mac(secret, method, path, timestamp, body)}"


def signature_headers(
    secret: bytes, method: str, path: str, body: bytes, now: float
) -> dict[str, str]:
    """The timestamp and signature headers for a request sent at ``now`` (epoch seconds, to
    the microsecond: two requests signed at different instants never share a signature, so
    the receiving node's replay record refuses only a copy)."""
    timestamp = f"{now:.6f}"
    return {
        HEADER_TIMESTAMP: timestamp,
        HEADER_SIGNATURE: sign_request(secret, method, path, timestamp, body),
    }


class AuthFailure(Exception):
    """A request failed authentication (-> 401); the text says why."""


def check_timestamp(timestamp: str | None, now: float, max_age: float) -> None:
    """:class:`AuthFailure` unless ``timestamp`` is within ``max_age`` seconds of ``now``."""
    if not timestamp:
        raise AuthFailure(f"missing {HEADER_TIMESTAMP} header: the request is not signed")
    try:
        stamp = float(timestamp)
    except ValueError:
        raise AuthFailure(f"invalid {HEADER_TIMESTAMP} header") from None
    if not math.isfinite(stamp):
        raise AuthFailure(f"invalid {HEADER_TIMESTAMP} header")
    if abs(now - stamp) > max_age:
        raise AuthFailure(
            f"stale request: timestamp is {abs(now - stamp):.0f}s away from this node's clock"
            f" (limit {max_age:.0f}s)"
        )


def verify(
    secrets: Sequence[bytes],
    method: str,
    path: str,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    *,
    now: float,
    max_age: float,
) -> None:
    """Check that ``signature`` is a valid signature of the request by one of ``secrets``
    and that the timestamp is within ``max_age`` seconds of ``now`` (constant-time
    comparison); :class:`AuthFailure` says why not."""
    check_timestamp(timestamp, now, max_age)
    assert timestamp is not None
    if not signature:
        raise AuthFailure(f"missing {HEADER_SIGNATURE} header: the request is not signed")
    given = signature.strip()
    ok = False
    for secret in secrets:
        expected = f"{_SIG_VERSION}={_mac(secret, method, path, timestamp, body)}"
        if hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace")):
            ok = True
    if not ok:
        raise AuthFailure("invalid signature")


def _passes(check: Callable[_P, None]) -> Callable[_P, bool]:
    """``check`` as a predicate: True when it returns, False when it raises
    :class:`AuthFailure` (same parameters)."""

    def passes(*args: _P.args, **kwargs: _P.kwargs) -> bool:
        try:
            check(*args, **kwargs)
        except AuthFailure:
            return False
        return True

    return passes


#: ``verify_request(secrets, method, path, timestamp, signature, body, *, now, max_age)``:
#: True when :func:`verify` accepts the request, False where it would raise.
verify_request = _passes(verify)


class RequestAuth:
    """The serving node's check of incoming node-to-node requests: first the headers (an
    early 401 before the body is read), then the signature over the body. Each check
    returns why the request is refused, or None."""

    def __init__(self, config: NetworkConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.secrets = config.verification_secrets

    def refuse_headers(self, headers: Mapping[str, str]) -> str | None:
        """Why a request with these headers cannot be valid whatever its body, or None."""
        auth = self.config.auth
        if not self.secrets:
            if auth.allow_unsigned:
                return None
            return "this node has no auth_secret configured: node-to-node requests are refused"
        try:
            check_timestamp(headers.get(HEADER_TIMESTAMP), self.clock.now(), auth.signature_max_age)
        except AuthFailure as exc:
            return str(exc)
        if not headers.get(HEADER_SIGNATURE):
            return f"missing {HEADER_SIGNATURE} header"
        return None

    def refuse_body(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> str | None:
        """Why the signature over ``body`` is not valid, or None (also None when the node
        accepts unsigned requests)."""
        if not self.secrets:
            return None
        try:
            verify(
                self.secrets,
                method,
                path,
                headers.get(HEADER_TIMESTAMP),
                headers.get(HEADER_SIGNATURE),
                body,
                now=self.clock.now(),
                max_age=self.config.auth.signature_max_age,
            )
        except AuthFailure as exc:
            return str(exc)
        return None
