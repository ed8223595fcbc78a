"""The envelope codec: :class:`Message` <-> bytes.

An envelope is a CloudEvents 1.0 event in structured JSON mode::

    {"specversion": "1.0", "id": ..., "source": <sender_id>, "type": "aos.<message_type>",
     "time": <RFC 3339>, "datacontenttype": "application/json", "data": <content>,
     "aosrecipient": ..., "aospriority": 2, "aoscorrelationid": ..., "aosreplyto": ...,
     "aosttl": ..., "aosmetadata": "<JSON text>", ...}

Compressed or encrypted content travels as ``data_base64`` with ``aoscompression``
(``gzip``/``zstd``) and ``aosencryption`` (``aes256gcm``) + ``aoskeyid`` + ``aosnonce``.
Compression happens before encryption (both in :mod:`.sealing`). Delivery options travel
as ``aosdeliverymode``, ``aosidempotencykey``, ``aosretrypolicy``, ``aoshops``,
``aoscausationid``.

Decoding validates every field's type and the size, and raises :class:`DecodeError` (or
:class:`DecryptionError`) for anything else: bytes from an engine are untrusted input.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Callable, Mapping

from ..errors import (
    DecodeError,
    DecryptionError,
    InvalidMessageError,
    MessageTooLargeError,
)
from ..policy import DEFAULT_OPTIONS, DeliveryOptions, RetryPolicy
from ..types import DeliveryMode, Message, MessagePriority, MessageType
from .sealing import COMPRESSION_ALGORITHMS, compress, content_key_id, decompress, decrypt, encrypt

__all__ = [
    "COMPRESSION_ALGORITHMS",
    "EncodeOptions",
    "KeyLookup",
    "content_key_id",
    "decode",
    "decode_batch",
    "decode_event",
    "encode",
]

_MAX_ID = 512
_MAX_NAME = 512
_MAX_JSON_FIELD = 16 * 1024 * 1024  # bounded by max_bytes in practice
_TYPES = {f"aos.{t.value}": t for t in MessageType}
_TYPE_NAMES = {t: f"aos.{t.value}" for t in MessageType}
_PRIORITIES = {p.value: p for p in MessagePriority}
_MODES = {m.value: m for m in DeliveryMode}

KeyLookup = Callable[[str], "bytes | None"]
"""Returns the content key with that id, or ``None`` (see :func:`decode`)."""


@dataclass(frozen=True, slots=True)
class EncodeOptions:
    """How to seal the content: compression then encryption."""

    compression: str | None = None
    encryption_key: bytes | None = None


# Built once: ``json.dumps`` with non-default arguments builds an encoder on every call,
# which costs as much as encoding a small envelope.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_ASCII_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _c_encoder() -> Callable[[Any], str]:
    """The C encoder behind ``_ENCODER``, made once: ``JSONEncoder.encode`` makes a new one
    per call. It runs without the circular-reference record (a cycle ends in
    ``RecursionError`` instead, reported the same way); where CPython's accelerator is
    missing, ``_ENCODER.encode`` is used."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython always has it
        return _ENCODER.encode
    # markers, default, encode_str, indent, key_sep, item_sep, sort_keys, skipkeys, allow_nan
    chunks = make(
        None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )

    def encode(value: Any) -> str:
        return "".join(chunks(value, 0))

    return encode


_encode_json = _c_encoder()


def _dumps(value: Any) -> str:
    try:
        return _encode_json(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidMessageError(f"message is not JSON-serialisable: {exc}") from exc


def _utf8(value: Any) -> bytes:
    """JSON of ``value`` as UTF-8; strings with lone surrogates (which UTF-8 cannot carry)
    are written as ``\\u`` escapes instead, so they round-trip."""
    text = _dumps(value)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _ASCII_ENCODER.encode(value).encode("ascii")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]!r} is out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def _loads(data: str | bytes) -> Any:
    """Strict JSON: no NaN/Infinity, no numbers that overflow to infinity. Raises
    ``ValueError`` (``UnicodeDecodeError`` included) or ``RecursionError``."""
    if not isinstance(data, str):
        # RFC 8259 JSON between systems is UTF-8; UTF-16/32 (a NUL among the first bytes)
        # and a BOM are still recognised as json.loads does.
        encoding = "utf-8" if data[:1] == b"{" and data[1:2] != b"\x00" else None
        data = data.decode(encoding or json.detect_encoding(data), "surrogatepass")
    return _DECODER.decode(data)


def encode(
    message: Message,
    options: DeliveryOptions = DEFAULT_OPTIONS,
    seal: EncodeOptions | None = None,
    *,
    max_bytes: int | None = None,
) -> bytes:
    """Encode a message and its delivery options as a CloudEvents JSON envelope."""
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": message.message_id,
        "source": message.sender_id,
        "type": _TYPE_NAMES[message.message_type],
        "time": message.timestamp.isoformat(),
        "datacontenttype": "application/json",
        "aospriority": message.priority.value,
    }
    if seal is not None and (seal.compression or seal.encryption_key is not None):
        raw = _utf8(message.content)
        if seal.compression:
            raw = compress(raw, seal.compression)
            event["aoscompression"] = seal.compression
        if seal.encryption_key is not None:
            nonce, raw = encrypt(raw, seal.encryption_key)
            event["aosencryption"] = "aes256gcm"
            event["aoskeyid"] = content_key_id(bytes(seal.encryption_key))
            event["aosnonce"] = base64.b64encode(nonce).decode()
        event["data_base64"] = base64.b64encode(raw).decode()
    else:
        event["data"] = message.content
    if message.recipient_id is not None:
        event["aosrecipient"] = message.recipient_id
    if message.correlation_id is not None:
        event["aoscorrelationid"] = message.correlation_id
    if message.reply_to is not None:
        event["aosreplyto"] = message.reply_to
    if message.ttl is not None:
        event["aosttl"] = message.ttl
    if message.metadata:
        event["aosmetadata"] = _dumps(message.metadata)
    if options is not DEFAULT_OPTIONS:
        if options.delivery_mode is not DeliveryMode.AT_LEAST_ONCE:
            event["aosdeliverymode"] = options.delivery_mode.value
        if options.idempotency_key is not None:
            event["aosidempotencykey"] = options.idempotency_key
        if options.retry_policy is not None:
            event["aosretrypolicy"] = _dumps(options.retry_policy.to_dict())
        if options.hops:
            event["aoshops"] = options.hops
        if options.causation_id is not None:
            event["aoscausationid"] = options.causation_id
        if options.extras:
            event["aosextras"] = _dumps(dict(options.extras))
    body = _utf8(event)
    if max_bytes is not None and len(body) > max_bytes:
        raise MessageTooLargeError(
            f"encoded message is {len(body)} bytes; max_message_bytes is {max_bytes}"
        )
    return body


def _str(
    event: Mapping[str, Any], name: str, *, required: bool = False, limit: int = _MAX_NAME
) -> str | None:
    value = event.get(name)
    if value is None:
        if required:
            raise DecodeError(f"envelope has no {name!r}")
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise DecodeError(f"envelope field {name!r} must be a non-empty string of <= {limit} chars")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # Ids and names become queue names and keys in engines: no lone surrogates.
            raise DecodeError(f"envelope field {name!r} is not valid Unicode text") from None
    return value


def _json_field(event: Mapping[str, Any], name: str) -> Any:
    text = event.get(name)
    if text is None:
        return None
    if not isinstance(text, str):
        raise DecodeError(f"envelope field {name!r} must be JSON text")
    if len(text) > _MAX_JSON_FIELD:
        raise DecodeError(f"envelope field {name!r} is too long")
    try:
        return _loads(text)
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"envelope field {name!r} is not valid JSON") from exc


def _b64(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise DecodeError(f"envelope field {name!r} must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecodeError(f"envelope field {name!r} is not valid base64") from exc


def decode(
    body: bytes,
    *,
    max_bytes: int = 1024 * 1024,
    keys: KeyLookup | None = None,
) -> tuple[Message, DeliveryOptions]:
    """Decode and validate an envelope; raise :class:`DecodeError` for anything malformed.

    Encrypted content is opened with ``keys(key_id)``; :class:`DecryptionError` when no key
    opens it.
    """
    event = _parse(body, max_bytes, "envelope", "max_message_bytes")
    return decode_event(event, max_bytes=max_bytes, keys=keys)


def _parse(body: bytes, max_bytes: int, what: str, limit_name: str) -> Any:
    """Strict JSON of at most ``max_bytes`` bytes, or :class:`DecodeError`."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise DecodeError(f"{what} must be bytes, not {type(body).__name__}")
    if len(body) > max_bytes:
        raise DecodeError(f"{what} is {len(body)} bytes; {limit_name} is {max_bytes}")
    try:
        return _loads(bytes(body))
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"{what} is not JSON: {exc}") from exc


def decode_batch(body: bytes, *, max_bytes: int = 1024 * 1024) -> list[Any]:
    """Parse a CloudEvents JSON batch (``application/cloudevents-batch+json``: a JSON array
    of events) into its events, each to be checked with :func:`decode_event`; raise
    :class:`DecodeError` when the body is not such an array."""
    events = _parse(body, max_bytes, "batch", "the limit")
    if not isinstance(events, list):
        raise DecodeError("a CloudEvents batch must be a JSON array")
    return events


def decode_event(
    event: Any,
    *,
    max_bytes: int = 1024 * 1024,
    keys: KeyLookup | None = None,
) -> tuple[Message, DeliveryOptions]:
    """Validate one already-parsed envelope (a JSON object) as :func:`decode` does."""
    if not isinstance(event, dict):
        raise DecodeError("envelope is not a JSON object")
    if event.get("specversion") != "1.0":
        raise DecodeError("envelope is not a CloudEvents 1.0 event")
    type_name = event.get("type")
    message_type = _TYPES.get(type_name) if isinstance(type_name, str) else None
    if message_type is None:
        raise DecodeError(f"unknown event type {type_name!r}")
    message_id = _str(event, "id", required=True, limit=_MAX_ID)
    sender = _str(event, "source", required=True)
    timestamp = _timestamp(event.get("time"))
    priority_value = event.get("aospriority", 2)
    priority = (
        _PRIORITIES.get(priority_value)
        if isinstance(priority_value, int) and not isinstance(priority_value, bool)
        else None
    )
    if priority is None:
        raise DecodeError(f"invalid priority {priority_value!r}")
    if "data_base64" in event:
        content = _sealed_content(event, max_bytes, keys)
    else:
        content = event.get("data", {})
    if not isinstance(content, dict):
        raise DecodeError("content (data) must be a JSON object")
    metadata = _json_field(event, "aosmetadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise DecodeError("metadata must be a JSON object")
    ttl: Any = event.get("aosttl")  # int or float seconds, as the sender gave it
    if ttl is not None:
        _check_ttl(ttl)
    try:
        message = Message(
            message_id=message_id,  # type: ignore[arg-type]
            message_type=message_type,
            sender_id=sender,  # type: ignore[arg-type]
            recipient_id=_str(event, "aosrecipient"),
            content=content,
            timestamp=timestamp,
            priority=priority,
            metadata=metadata,
            correlation_id=_str(event, "aoscorrelationid", limit=_MAX_ID),
            reply_to=_str(event, "aosreplyto"),
            ttl=ttl,
        )
    except InvalidMessageError as exc:
        raise DecodeError(f"envelope does not make a valid message: {exc}") from exc
    return message, _decode_options(event)


def _timestamp(time_text: Any) -> datetime:
    """The envelope's ``time``: an RFC 3339 string with a time zone, in range."""
    if not isinstance(time_text, str) or len(time_text) > 64:
        raise DecodeError("envelope field 'time' must be an RFC 3339 string")
    try:
        timestamp = datetime.fromisoformat(time_text)
    except ValueError as exc:
        raise DecodeError("envelope field 'time' is not a valid timestamp") from exc
    if timestamp.tzinfo is None:
        raise DecodeError("envelope field 'time' has no time zone")
    try:
        timestamp.astimezone(UTC)
        timestamp.utcoffset()
    except (OverflowError, ValueError) as exc:
        raise DecodeError("envelope field 'time' is out of range") from exc
    return timestamp


def _sealed_content(event: Mapping[str, Any], max_bytes: int, keys: KeyLookup | None) -> Any:
    """The content of ``data_base64``: decrypted (``aosencryption``), then decompressed
    (``aoscompression``), then parsed as JSON."""
    raw = _b64(event["data_base64"], "data_base64")
    encryption = event.get("aosencryption")
    if encryption is not None:
        if encryption != "aes256gcm":
            raise DecodeError(f"unknown encryption {encryption!r}")
        key_id = _str(event, "aoskeyid", required=True)
        assert key_id is not None
        nonce = _b64(event.get("aosnonce"), "aosnonce")
        if len(nonce) != 12:
            raise DecodeError("nonce must be 12 bytes")
        key = keys(key_id) if keys is not None else None
        if key is None:
            raise DecryptionError(f"no key in the key ring for key id {key_id}")
        raw = decrypt(raw, nonce, key)
    compression = event.get("aoscompression")
    if compression is not None:
        if compression not in COMPRESSION_ALGORITHMS:
            raise DecodeError(f"unknown compression {compression!r}")
        raw = decompress(raw, compression, max_bytes)
    try:
        return _loads(raw)
    except (ValueError, RecursionError) as exc:
        raise DecodeError("content is not JSON") from exc


def _check_ttl(ttl: Any) -> None:
    """A ttl must be a positive, finite number of seconds (not a bool)."""
    if (
        isinstance(ttl, bool)
        or not isinstance(ttl, (int, float))
        or not math.isfinite(ttl)
        or ttl <= 0
    ):
        raise DecodeError("ttl must be a positive number")


def _decode_options(event: Mapping[str, Any]) -> DeliveryOptions:
    mode_value = event.get("aosdeliverymode")
    idem = event.get("aosidempotencykey")
    retry = event.get("aosretrypolicy")
    hops = event.get("aoshops", 0)
    causation = event.get("aoscausationid")
    extras = event.get("aosextras")
    if (
        mode_value is None
        and idem is None
        and retry is None
        and not hops
        and causation is None
        and extras is None
    ):
        return DEFAULT_OPTIONS
    mode = DeliveryMode.AT_LEAST_ONCE
    if mode_value is not None:
        found = _MODES.get(mode_value) if isinstance(mode_value, str) else None
        if found is None:
            raise DecodeError(f"unknown delivery mode {mode_value!r}")
        mode = found
    if idem is not None and (not isinstance(idem, str) or not idem or len(idem) > _MAX_ID):
        raise DecodeError("idempotency key must be a non-empty string")
    policy = None
    if retry is not None:
        try:
            policy = RetryPolicy.parse(_json_field(event, "aosretrypolicy"))
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"invalid retry policy: {exc}") from exc
    if isinstance(hops, bool) or not isinstance(hops, int) or hops < 0:
        raise DecodeError("hop count must be a non-negative int")
    if causation is not None and (not isinstance(causation, str) or len(causation) > _MAX_ID):
        raise DecodeError("causation id must be a string")
    extras_value = _json_field(event, "aosextras") if extras is not None else {}
    if not isinstance(extras_value, dict):
        raise DecodeError("extras must be a JSON object")
    return DeliveryOptions(
        delivery_mode=mode,
        idempotency_key=idem,
        retry_policy=policy,
        hops=hops,
        causation_id=causation,
        extras=extras_value,
    )
