"""A2A message parts: parsing one (1.0 or 0.3 shape) into the normalised form carried in a
message's content, rendering it back for a client, and the parts of an agent's answer."""

from __future__ import annotations

from typing import Any, Mapping

from .rpc import RpcError, invalid_params

__all__ = ["parse_part", "render_part", "reply_parts"]


def parse_part(part: Any) -> dict[str, Any]:
    """One A2A part (1.0 or 0.3 shape) in the normalised form used in message content:
    ``{"kind": "text", "text"}``, ``{"kind": "data", "data"}`` or ``{"kind": "file",
    "url" | "raw", "media_type", "filename"}``."""
    if not isinstance(part, dict):
        raise invalid_params("each part must be an object")
    kind = part.get("kind")
    out: dict[str, Any]
    if "text" in part and kind in (None, "text"):
        if not isinstance(part["text"], str):
            raise invalid_params("a text part's text must be a string")
        out = {"kind": "text", "text": part["text"]}
    elif "data" in part and kind in (None, "data"):
        out = {"kind": "data", "data": part["data"]}
    elif kind == "file" and isinstance(part.get("file"), dict):
        f = part["file"]
        out = {"kind": "file"}
        if isinstance(f.get("uri"), str):
            out["url"] = f["uri"]
        elif isinstance(f.get("bytes"), str):
            out["raw"] = f["bytes"]
        else:
            raise invalid_params("a file part needs file.uri or file.bytes")
        if isinstance(f.get("mimeType"), str):
            out["media_type"] = f["mimeType"]
        if isinstance(f.get("name"), str):
            out["filename"] = f["name"]
    elif isinstance(part.get("url"), str) or isinstance(part.get("raw"), str):
        out = {"kind": "file"}
        if isinstance(part.get("url"), str):
            out["url"] = part["url"]
        else:
            out["raw"] = part["raw"]
        media = part.get("mediaType", part.get("media_type"))
        if isinstance(media, str):
            out["media_type"] = media
        if isinstance(part.get("filename"), str):
            out["filename"] = part["filename"]
    else:
        raise invalid_params("unsupported part: expected text, data, url or raw")
    meta = part.get("metadata")
    if isinstance(meta, dict) and meta:
        out["metadata"] = meta
    return out


def render_part(part: Mapping[str, Any], legacy: bool) -> dict[str, Any]:
    """A normalised part (see :func:`parse_part`) in the A2A 1.0 shape, or the 0.3 one when
    ``legacy``."""
    kind = part.get("kind")
    out: dict[str, Any]
    if kind == "text":
        out = {"kind": "text", "text": part["text"]} if legacy else {"text": part["text"]}
    elif kind == "data":
        data = part["data"]
        if legacy:
            out = {"kind": "data", "data": data if isinstance(data, dict) else {"value": data}}
        else:
            out = {"data": data, "mediaType": "application/json"}
    else:
        if legacy:
            file: dict[str, Any] = {}
            if "url" in part:
                file["uri"] = part["url"]
            else:
                file["bytes"] = part.get("raw", "")
            if part.get("media_type"):
                file["mimeType"] = part["media_type"]
            if part.get("filename"):
                file["name"] = part["filename"]
            out = {"kind": "file", "file": file}
        else:
            out = {"url": part["url"]} if "url" in part else {"raw": part.get("raw", "")}
            if part.get("media_type"):
                out["mediaType"] = part["media_type"]
            if part.get("filename"):
                out["filename"] = part["filename"]
    if part.get("metadata"):
        out["metadata"] = part["metadata"]
    return out


def reply_parts(content: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The A2A parts of a handler's answer (the RESPONSE content)."""
    parts = content.get("parts")
    if isinstance(parts, list) and parts:
        try:
            return [parse_part(p) for p in parts]
        except RpcError:
            pass
    text = content.get("text")
    if isinstance(text, str):
        return [{"kind": "text", "text": text}]
    if set(content) == {"result"}:
        result = content["result"]
        if isinstance(result, str):
            return [{"kind": "text", "text": result}]
        return [{"kind": "data", "data": result}]
    return [{"kind": "data", "data": dict(content)}]
