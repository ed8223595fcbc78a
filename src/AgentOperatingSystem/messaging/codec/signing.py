"""Ed25519 signatures over a message: the canonical bytes, sign, verify and key ids.

A signature covers :func:`canonical_bytes`: every field of the message (its metadata without
the two signature keys) and the signer's key id, as sorted, compact, ASCII JSON. The
signature and the key id travel in ``metadata["aos.signature"]`` and
``metadata["aos.signer_key"]``. These functions know nothing of where keys are kept; the
key ring (:mod:`.keyring`) and the key files (:mod:`.keyfiles`) do.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ..errors import InvalidMessageError
from ..types import Message

__all__ = [
    "KEY_ID_LEN",
    "SIGNATURE_KEY",
    "SIGNER_KEY",
    "canonical_bytes",
    "raw_public",
    "sign_message",
    "signing_key_id",
    "verify_message",
]

log = logging.getLogger("aos.messaging.security")

#: Metadata key of the base64 Ed25519 signature.
SIGNATURE_KEY = "aos.signature"
#: Metadata key of the id of the key that made the signature.
SIGNER_KEY = "aos.signer_key"
#: Length of a signing key id (hex characters).
KEY_ID_LEN = 32

_SIGNATURE_KEYS = (SIGNATURE_KEY, SIGNER_KEY)
_CANON_VERSION = "aos-sig-v1"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_SIG_B64_LEN = 88  # base64 of 64 bytes


def signing_key_id(public_key: Ed25519PublicKey | bytes) -> str:
    """The id of a signing key: derived from the raw public key, 32 hex characters."""
    raw = public_key if isinstance(public_key, bytes) else raw_public(public_key)
    return hashlib.sha256(b"aos-signing-key:" + raw).hexdigest()[:KEY_ID_LEN]


def raw_public(public_key: Ed25519PublicKey) -> bytes:
    """The raw 32 bytes of an Ed25519 public key."""
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _micros(ts: datetime) -> int:
    return (ts - _EPOCH) // _MICROSECOND


def _canonical_json(value: Any) -> bytes:
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )
    except TypeError:
        # Keys of mixed types cannot be sorted: take the JSON form first (as the envelope
        # does: every key becomes a string), then sort.
        plain = json.loads(json.dumps(value, separators=(",", ":"), allow_nan=False))
        text = json.dumps(
            plain, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )
    return text.encode("ascii")


def canonical_bytes(message: Message, key_id: str) -> bytes:
    """The bytes a signature covers: every field of ``message`` (metadata without the
    signature keys) and the signer's key id, as sorted, compact, ASCII JSON.

    The timestamp is taken as integer microseconds since the epoch, so it survives the
    envelope's RFC 3339 round trip whatever its time zone. Raises ``TypeError``/``ValueError``
    for content that is not JSON data.
    """
    metadata = {k: v for k, v in message.metadata.items() if k not in _SIGNATURE_KEYS}
    return _canonical_json(
        [
            _CANON_VERSION,
            key_id,
            message.message_id,
            message.message_type.value,
            message.sender_id,
            message.recipient_id,
            message.content,
            _micros(message.timestamp),
            message.priority.value,
            metadata,
            message.correlation_id,
            message.reply_to,
            message.ttl,
        ]
    )


def sign_message(
    message: Message, private_key: Ed25519PrivateKey, key_id: str | None = None
) -> None:
    """Sign ``message`` in place: writes ``aos.signature`` and ``aos.signer_key``."""
    kid = key_id or signing_key_id(private_key.public_key())
    try:
        data = canonical_bytes(message, kid)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidMessageError(f"message cannot be signed: {exc}") from exc
    signature = private_key.sign(data)
    message.metadata[SIGNER_KEY] = kid
    message.metadata[SIGNATURE_KEY] = base64.b64encode(signature).decode("ascii")


def verify_message(message: Message, public_keys: Mapping[str, Ed25519PublicKey]) -> bool:
    """True when ``message`` carries a valid signature by one of ``public_keys`` (the
    sender's keys by key id). Never raises."""
    try:
        metadata = message.metadata
        signature = metadata.get(SIGNATURE_KEY)
        kid = metadata.get(SIGNER_KEY)
        if not isinstance(signature, str) or not isinstance(kid, str):
            return False
        if len(signature) != _SIG_B64_LEN or len(kid) != KEY_ID_LEN:
            return False
        key = public_keys.get(kid)
        if key is None:
            return False
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, canonical_bytes(message, kid))
        return True
    except (InvalidSignature, binascii.Error, ValueError, TypeError, RecursionError):
        return False
    except Exception:  # anything odd in a hostile message is a failed verification
        log.debug("signature verification failed unexpectedly", exc_info=True)
        return False
