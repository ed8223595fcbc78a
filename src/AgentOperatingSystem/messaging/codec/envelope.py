"""The envelope codec: :class:`Message` <-> bytes.

An envelope is a CloudEvents 1.0 event in structured JSON mode::

    {"specversion": "1.0", "id": ..., "source": <sender id, percent-encoded>,
     "type": "aos.<message_type>", "time": <RFC 3339>, "datacontenttype": "application/json",
     "aossender": <sender id>, "aospriority": 2, "data": <content>,
     "aosrecipient": ..., "aoscorrelationid": ..., "aosreplyto": ..., "aosttl": 60,
     "aosmetadata": "<JSON text>", ...}

Every attribute is of a CloudEvents type:

* ``source`` is a URI-reference: the sender id percent-encoded (UTF-8) as one relative
  path segment, every character but ``A-Z a-z 0-9 - . _ ~ ! $ & ' ( ) * + , ; = @``
  escaped (``"CFO agent ü"`` is ``CFO%20agent%20%C3%BC``; ``cfo_agent`` stays
  ``cfo_agent``). The sender id itself is the String extension ``aossender``, where a
  reader takes it from (``source`` decides when the two disagree: an edited ``source``
  names another sender, whose signature then fails).
* ``aosttl`` is an Integer, the TTL in whole seconds, when the message's ``ttl`` is an
  ``int`` of at most 2**31 - 1. Any other TTL (a float, or a larger int) travels as the
  String extension ``aosttlduration``: an ISO 8601 duration in seconds, ``PT<n>S``, where
  ``<n>`` is the decimal ``ttl`` without an exponent and has a ``.`` exactly when ``ttl`` is
  a float (``PT0.5S``, ``PT30.0S``, ``PT4294967296S``), so the TTL comes back as it was sent.
* ``datacontenttype`` says what the bytes are. Content inline as ``data`` is
  ``application/json``. Compressed or encrypted content travels as ``data_base64``: gzip
  alone is ``application/gzip``, zstd alone ``application/zstd``, anything encrypted
  (``aosencryption: aes256gcm`` + ``aoskeyid`` + ``aosnonce``, compressed first or not,
  ``aoscompression``) ``application/octet-stream``; the type of the content inside is the
  extension ``aoscontenttype`` (always ``application/json``). Compression happens before
  encryption (both in :mod:`.sealing`).

Delivery options travel as ``aosdeliverymode``, ``aosidempotencykey``, ``aosretrypolicy``,
``aoshops``, ``aoscausationid``, ``aosextras``.

Envelopes written before these rules still decode: a float ``aosttl``, the sender id as
``source`` (when there is no ``aossender``), ``application/json`` over ``data_base64``.

Decoding validates every field's type and the size, and raises :class:`DecodeError` (or
:class:`DecryptionError`) for anything else: bytes from an engine are untrusted input.

**Foreign events.** :func:`decode_cloudevent` also reads a CloudEvent that another system
wrote (an event with no attribute whose name starts with ``aos``), with any ``type`` and
object, string, other JSON, binary (``data_base64``) or absent data:

* ``type`` ``aos.<message type>`` (``aos.task``, ...) gives that :class:`MessageType`;
  its content is ``data`` when ``data`` is a JSON object, ``{}`` when there is none, and
  ``{"data": <data>}`` otherwise;
* any other ``type`` gives an ``EVENT`` whose content is ``{"type": <type>, "data":
  <data>}`` (``"data"`` left out when the event has none);
* binary data (``data_base64``, or a binary-mode body that is not JSON or text) stays as
  ``{"data_base64": <base64 text>}`` in place of ``"data"``;
* ``id`` is the message id (or the id the engine filed it under, when it gives one),
  ``source`` the sender id, ``time`` the timestamp (now, when absent), ``recipient`` the
  recipient id; priority ``NORMAL``, no TTL, default delivery options;
* every context attribute (``id``, ``source``, ``type``, ``specversion``, ``time``,
  ``subject``, ``datacontenttype``, ``dataschema`` and any extension) is kept as
  ``metadata["cloudevents"]``.

JSON is read and written by :mod:`.strictjson` (fast, and as strict as the standard
library).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any, Callable, Mapping
from urllib.parse import quote, unquote

from ..errors import (
    DecodeError,
    DecryptionError,
    InvalidMessageError,
    MessageTooLargeError,
)
from ..policy import DEFAULT_OPTIONS, DeliveryOptions, RetryPolicy
from ..types import DeliveryMode, Message, MessagePriority, MessageType
from .sealing import COMPRESSION_ALGORITHMS, compress, content_key_id, decompress, decrypt, encrypt
from .strictjson import dumps_text, dumps_utf8, loads

__all__ = [
    "COMPRESSION_ALGORITHMS",
    "EncodeOptions",
    "KeyLookup",
    "content_key_id",
    "decode",
    "decode_batch",
    "decode_cloudevent",
    "decode_event",
    "encode",
    "is_aos_event",
]

_MAX_ID = 512
_MAX_NAME = 512
_MAX_JSON_FIELD = 16 * 1024 * 1024  # bounded by max_bytes in practice
_MAX_INT32 = 2**31 - 1
_MAX_DURATION = 4400  # characters of aosttlduration: an int ttl has at most 4300 digits
_TYPES = {f"aos.{t.value}": t for t in MessageType}
_TYPE_NAMES = {t: f"aos.{t.value}" for t in MessageType}
_PRIORITIES = {p.value: p for p in MessagePriority}
_MODES = {m.value: m for m in DeliveryMode}
_JSON = "application/json"
_SEALED_TYPES = {"gzip": "application/gzip", "zstd": "application/zstd"}
_OCTETS = "application/octet-stream"
_DURATION = re.compile(r"PT([0-9]+)(\.[0-9]+)?S")

# A path segment without a colon (RFC 3986 segment-nz-nc): always a relative reference.
_SEGMENT_SAFE = "-._~!$&'()*+,;=@"
KeyLookup = Callable[[str], "bytes | None"]
"""Returns the content key with that id, or ``None`` (see :func:`decode`)."""


@dataclass(frozen=True, slots=True)
class EncodeOptions:
    """How to seal the content: compression then encryption."""

    compression: str | None = None
    encryption_key: bytes | None = None


# ----------------------------------------------------------------------------- encode


@lru_cache(maxsize=4096)
def _source(sender: str) -> str:
    """The ``source`` URI-reference of a sender id."""
    return quote(sender, safe=_SEGMENT_SAFE, errors="surrogatepass")


def _time(ts: datetime) -> str:
    """``ts`` in RFC 3339 (an offset of whole minutes; other offsets are given in UTC)."""
    if ts.tzinfo is not UTC:
        offset = ts.utcoffset()
        if offset is not None and (offset.seconds % 60 or offset.microseconds):
            try:
                ts = ts.astimezone(UTC)
            except OverflowError as exc:
                raise InvalidMessageError(f"timestamp is out of range: {exc}") from exc
    return ts.isoformat()


def _ttl_attributes(ttl: Any, event: dict[str, Any]) -> None:
    """Write ``aosttl`` (int seconds) or ``aosttlduration`` (``PT<n>S``) for ``ttl``."""
    if isinstance(ttl, int):
        if ttl <= _MAX_INT32:
            event["aosttl"] = ttl
        else:
            event["aosttlduration"] = f"PT{ttl}S"
        return
    if not isinstance(ttl, float) or not math.isfinite(ttl):
        raise InvalidMessageError(f"ttl must be a finite number of seconds, not {ttl!r}")
    digits = format(Decimal(repr(ttl)), "f")
    if "." not in digits:
        digits += ".0"
    event["aosttlduration"] = f"PT{digits}S"


def encode(
    message: Message,
    options: DeliveryOptions = DEFAULT_OPTIONS,
    seal: EncodeOptions | None = None,
    *,
    max_bytes: int | None = None,
) -> bytes:
    """Encode a message and its delivery options as a CloudEvents JSON envelope."""
    sender = message.sender_id
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": message.message_id,
        "source": _source(sender),
        "type": _TYPE_NAMES[message.message_type],
        "time": _time(message.timestamp),
        "datacontenttype": _JSON,
        "aossender": sender,
        "aospriority": message.priority.value,
    }
    if seal is not None and (seal.compression or seal.encryption_key is not None):
        _seal(message.content, seal, event)
    else:
        event["data"] = message.content
    if message.recipient_id is not None:
        event["aosrecipient"] = message.recipient_id
    if message.correlation_id is not None:
        event["aoscorrelationid"] = message.correlation_id
    if message.reply_to is not None:
        event["aosreplyto"] = message.reply_to
    if message.ttl is not None:
        _ttl_attributes(message.ttl, event)
    if message.metadata:
        event["aosmetadata"] = dumps_text(message.metadata)
    if options is not DEFAULT_OPTIONS:
        _option_attributes(options, event)
    body = dumps_utf8(event)
    if max_bytes is not None and len(body) > max_bytes:
        raise MessageTooLargeError(
            f"encoded message is {len(body)} bytes; max_message_bytes is {max_bytes}"
        )
    return body


def _seal(content: Any, seal: EncodeOptions, event: dict[str, Any]) -> None:
    """Compress then encrypt ``content`` into ``data_base64`` and its attributes."""
    raw = dumps_utf8(content)
    if seal.compression:
        raw = compress(raw, seal.compression)
        event["aoscompression"] = seal.compression
        event["datacontenttype"] = _SEALED_TYPES[seal.compression]
    if seal.encryption_key is not None:
        nonce, raw = encrypt(raw, seal.encryption_key)
        event["aosencryption"] = "aes256gcm"
        event["aoskeyid"] = content_key_id(bytes(seal.encryption_key))
        event["aosnonce"] = base64.b64encode(nonce).decode()
        event["datacontenttype"] = _OCTETS
    event["aoscontenttype"] = _JSON
    event["data_base64"] = base64.b64encode(raw).decode()


def _option_attributes(options: DeliveryOptions, event: dict[str, Any]) -> None:
    """The delivery options' extensions (only those that differ from the defaults)."""
    if options.delivery_mode is not DeliveryMode.AT_LEAST_ONCE:
        event["aosdeliverymode"] = options.delivery_mode.value
    if options.idempotency_key is not None:
        event["aosidempotencykey"] = options.idempotency_key
    if options.retry_policy is not None:
        event["aosretrypolicy"] = dumps_text(options.retry_policy.to_dict())
    if options.hops:
        event["aoshops"] = options.hops
    if options.causation_id is not None:
        event["aoscausationid"] = options.causation_id
    if options.extras:
        event["aosextras"] = dumps_text(dict(options.extras))


# ----------------------------------------------------------------------------- decode


def _str(
    event: Mapping[str, Any], name: str, *, required: bool = False, limit: int = _MAX_NAME
) -> str | None:
    value = event.get(name)
    if type(value) is str and 0 < len(value) <= limit and value.isascii():
        return value  # the common case, checked in one go
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
        return loads(text)
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
    """Decode and validate an AOS envelope; raise :class:`DecodeError` for anything
    malformed (a foreign event included: :func:`decode_cloudevent` reads those).

    Encrypted content is opened with ``keys(key_id)``; :class:`DecryptionError` when no key
    opens it.
    """
    event = _parse(body, max_bytes, "envelope", "max_message_bytes")
    return decode_event(event, max_bytes=max_bytes, keys=keys)


def decode_cloudevent(
    body: bytes | dict[str, Any],
    *,
    attributes: Mapping[str, Any] | None = None,
    content_type: str | None = None,
    message_id: str | None = None,
    recipient: str | None = None,
    max_bytes: int = 1024 * 1024,
    keys: KeyLookup | None = None,
) -> tuple[Message, DeliveryOptions]:
    """Decode any CloudEvent: an AOS envelope as :func:`decode` does, and a foreign event
    (no ``aos*`` attribute) by the mapping in this module's docstring.

    With ``attributes`` None, ``body`` is a structured-mode event (JSON), or one already
    parsed (a dict: an event of a CloudEvents batch, see :func:`decode_batch`). With
    ``attributes`` (binary mode: the context attributes without their ``ce-``/``ce_``
    prefix, as the transport's headers gave them), ``body`` is the data and
    ``content_type`` its media type: JSON (``application/json``, ``*+json``) is parsed,
    ``text/*`` read as UTF-8 text, anything else kept as base64. Binary mode is always
    read as a foreign event.

    ``message_id`` is the id a transport filed a foreign event under (its CloudEvents id
    is used when None); ``recipient`` the recipient id a foreign event gets (the queue it
    arrived in). Neither changes an AOS envelope. :class:`DecodeError` (or
    :class:`DecryptionError`) for anything that cannot be read.
    """
    if isinstance(body, dict):
        event: Any = body
    elif attributes is not None:
        if len(body) > max_bytes:
            raise DecodeError(f"event data is {len(body)} bytes; max_message_bytes is {max_bytes}")
        event = dict(attributes)
        event.update(_binary_data(body, content_type))
        return _foreign(event, message_id, recipient), DEFAULT_OPTIONS
    else:
        event = _parse(body, max_bytes, "envelope", "max_message_bytes")
    if isinstance(event, dict) and not is_aos_event(event):
        return _foreign(event, message_id, recipient), DEFAULT_OPTIONS
    return decode_event(event, max_bytes=max_bytes, keys=keys)


def is_aos_event(event: Mapping[str, Any]) -> bool:
    """True when a parsed CloudEvent is an AOS envelope: it has an attribute whose name
    starts with ``aos`` (every envelope AOS writes has ``aospriority``)."""
    return "aospriority" in event or any(name[:3] == "aos" for name in event)


def _parse(body: bytes, max_bytes: int, what: str, limit_name: str) -> Any:
    """Strict JSON of at most ``max_bytes`` bytes, or :class:`DecodeError`."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise DecodeError(f"{what} must be bytes, not {type(body).__name__}")
    if len(body) > max_bytes:
        raise DecodeError(f"{what} is {len(body)} bytes; {limit_name} is {max_bytes}")
    try:
        return loads(bytes(body))
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
    """Validate one already-parsed AOS envelope (a JSON object) as :func:`decode` does."""
    if not isinstance(event, dict):
        raise DecodeError("envelope is not a JSON object")
    if event.get("specversion") != "1.0":
        raise DecodeError("envelope is not a CloudEvents 1.0 event")
    type_name = event.get("type")
    message_type = _TYPES.get(type_name) if isinstance(type_name, str) else None
    if message_type is None:
        raise DecodeError(f"unknown event type {type_name!r}")
    message_id = _str(event, "id", required=True, limit=_MAX_ID)
    sender = _sender(event)
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
    try:
        message = Message(
            message_id=message_id,  # type: ignore[arg-type]
            message_type=message_type,
            sender_id=sender,
            recipient_id=_str(event, "aosrecipient"),
            content=content,
            timestamp=timestamp,
            priority=priority,
            metadata=metadata,
            correlation_id=_str(event, "aoscorrelationid", limit=_MAX_ID),
            reply_to=_str(event, "aosreplyto"),
            ttl=_ttl(event),
        )
    except InvalidMessageError as exc:
        raise DecodeError(f"envelope does not make a valid message: {exc}") from exc
    return message, _decode_options(event)


def _sender(event: Mapping[str, Any]) -> str:
    """The sender id: ``aossender`` when ``source`` is its encoding; ``source`` decoded
    when they differ (``source`` is what the envelope claims); ``source`` as it is in an
    envelope without ``aossender`` (written before it existed)."""
    source = _str(event, "source", required=True)
    assert source is not None
    sender = _str(event, "aossender")
    if sender is None:
        return source
    if _source(sender) == source:
        return sender
    try:
        decoded = unquote(source, errors="strict")
    except UnicodeDecodeError as exc:
        raise DecodeError("envelope field 'source' is not percent-encoded UTF-8") from exc
    return decoded


def _timestamp(time_text: Any) -> datetime:
    """The envelope's ``time``: an RFC 3339 string with a time zone, in range."""
    if not isinstance(time_text, str) or len(time_text) > 64:
        raise DecodeError("envelope field 'time' must be an RFC 3339 string")
    try:
        timestamp = datetime.fromisoformat(time_text)
    except ValueError as exc:
        raise DecodeError("envelope field 'time' is not a valid timestamp") from exc
    tz = timestamp.tzinfo
    if tz is UTC:
        return timestamp  # in range as it is
    if tz is None:
        raise DecodeError("envelope field 'time' has no time zone")
    try:
        timestamp.astimezone(UTC)
        timestamp.utcoffset()
    except (OverflowError, ValueError) as exc:
        raise DecodeError("envelope field 'time' is out of range") from exc
    return timestamp


def _sealed_content(event: Mapping[str, Any], max_bytes: int, keys: KeyLookup | None) -> Any:
    """The content of ``data_base64``: decrypted (``aosencryption``), then decompressed
    (``aoscompression``), then parsed as JSON (``aoscontenttype``, when given, must say
    so)."""
    inner = event.get("aoscontenttype")
    if inner is not None and inner != _JSON:
        raise DecodeError(f"unsupported content type {inner!r} (aoscontenttype)")
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
        return loads(raw)
    except (ValueError, RecursionError) as exc:
        raise DecodeError("content is not JSON") from exc


def _ttl(event: Mapping[str, Any]) -> Any:
    """The TTL of ``aosttl`` (an int, or a float in older envelopes) or of
    ``aosttlduration`` (``PT<n>S``): a positive, finite number of seconds, or None."""
    ttl: Any = event.get("aosttl")
    duration = event.get("aosttlduration")
    if duration is not None:
        if ttl is not None:
            raise DecodeError("an envelope has aosttl or aosttlduration, not both")
        if not isinstance(duration, str) or len(duration) > _MAX_DURATION:
            raise DecodeError("aosttlduration must be a duration PT<seconds>S")
        match = _DURATION.fullmatch(duration)
        if match is None:
            raise DecodeError("aosttlduration must be a duration PT<seconds>S")
        try:
            ttl = float(match[1] + match[2]) if match[2] else int(match[1])
        except ValueError as exc:  # more digits than int() reads
            raise DecodeError("aosttlduration is out of range") from exc
    if ttl is None:
        return None
    if (
        isinstance(ttl, bool)
        or not isinstance(ttl, (int, float))
        or not math.isfinite(ttl)
        or ttl <= 0
    ):
        raise DecodeError("ttl must be a positive number")
    return ttl


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


# ----------------------------------------------------------------------------- foreign


def _binary_data(body: bytes, content_type: str | None) -> dict[str, Any]:
    """The data attributes of a binary-mode body of media type ``content_type``."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    out: dict[str, Any] = {"datacontenttype": content_type} if content_type else {}
    if not body:
        return out
    if media == _JSON or media.endswith("+json"):
        try:
            out["data"] = loads(bytes(body))
        except (ValueError, RecursionError) as exc:
            raise DecodeError(f"event data is not JSON: {exc}") from exc
    elif media.startswith("text/"):
        try:
            out["data"] = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError("event data is not UTF-8 text") from exc
    else:
        out["data_base64"] = base64.b64encode(body).decode("ascii")
    return out


def _foreign(event: Any, message_id: str | None, recipient: str | None) -> Message:
    """The message of a CloudEvent another system wrote (the mapping of the docstring)."""
    if not isinstance(event, dict):
        raise DecodeError("envelope is not a JSON object")
    if event.get("specversion") != "1.0":
        raise DecodeError("envelope is not a CloudEvents 1.0 event")
    ce_id = _str(event, "id", required=True, limit=_MAX_ID)
    source = _str(event, "source", required=True)
    type_name = _str(event, "type", required=True)
    assert type_name is not None
    time_text = event.get("time")
    if isinstance(time_text, str):
        time_text = time_text.upper()  # RFC 3339 allows a lower-case "t" and "z"
    timestamp = None if time_text is None else _timestamp(time_text)
    if "data" in event and "data_base64" in event:
        raise DecodeError("an event has data or data_base64, not both")
    payload: dict[str, Any] = {}
    if "data_base64" in event:
        _b64(event["data_base64"], "data_base64")
        payload["data_base64"] = event["data_base64"]
    elif "data" in event:
        payload["data"] = event["data"]
    message_type = _TYPES.get(type_name)
    if message_type is None:
        message_type = MessageType.EVENT
        content = {"type": type_name, **payload}
    elif isinstance(payload.get("data"), dict):
        content = payload["data"]
    else:
        content = payload
    attributes = {k: v for k, v in event.items() if k not in ("data", "data_base64")}
    fields: dict[str, Any] = {} if timestamp is None else {"timestamp": timestamp}
    try:
        return Message(
            message_id=message_id or ce_id,  # type: ignore[arg-type]
            message_type=message_type,
            sender_id=source,  # type: ignore[arg-type]
            recipient_id=recipient,
            content=content,
            metadata={"cloudevents": attributes},
            **fields,
        )
    except InvalidMessageError as exc:
        raise DecodeError(f"event does not make a valid message: {exc}") from exc
