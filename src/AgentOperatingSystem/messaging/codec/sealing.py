"""Sealing an envelope's content: compression, then AES-256-GCM encryption, and back.

Compression (``gzip`` or ``zstd``) comes before encryption. A content key is known by an id
derived from the key itself (:func:`content_key_id`), so publisher and consumer agree on it
without coordination; the envelope carries the id and the 12-byte nonce, never the key.
Opening is bounded: decompression stops at the size limit, whatever a frame declares.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import zlib

from ..errors import DecodeError, DecryptionError, InvalidMessageError

__all__ = [
    "COMPRESSION_ALGORITHMS",
    "compress",
    "content_key_id",
    "decompress",
    "decrypt",
    "encrypt",
]

COMPRESSION_ALGORITHMS = ("gzip", "zstd")
"""The values of ``compression_algorithm`` (and of the envelope's ``aoscompression``)."""


def content_key_id(key: bytes) -> str:
    """The id under which a content-encryption key is known: derived from the key itself,
    so publisher and consumer agree on it without coordination and it reveals nothing."""
    return hashlib.sha256(b"aos-content-key:" + key).hexdigest()[:32]


def compress(data: bytes, algorithm: str) -> bytes:
    """``data`` compressed with ``algorithm``; :class:`InvalidMessageError` for an unknown
    one."""
    if algorithm == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if algorithm == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=3).compress(data)
    raise InvalidMessageError(
        f"unknown compression_algorithm {algorithm!r}; expected one of {COMPRESSION_ALGORITHMS}"
    )


def decompress(data: bytes, algorithm: str, limit: int) -> bytes:
    """``data`` decompressed, at most ``limit`` bytes; :class:`DecodeError` otherwise."""
    try:
        if algorithm == "gzip":
            d = zlib.decompressobj(wbits=31)
            out = d.decompress(data, limit + 1)
            if len(out) > limit or d.unconsumed_tail:
                raise DecodeError(f"decompressed content exceeds {limit} bytes")
            if not d.eof or d.unused_data:
                raise DecodeError("gzip content is truncated or has trailing data")
            return out
        if algorithm == "zstd":
            import zstandard

            # Read at most limit + 1 bytes: a frame's declared size is not trusted, so a
            # small bomb cannot make us allocate more than the limit.
            reader = zstandard.ZstdDecompressor().stream_reader(
                io.BytesIO(data), read_across_frames=False
            )
            with reader:
                chunks: list[bytes] = []
                total = 0
                while total <= limit:
                    chunk = reader.read(limit + 1 - total)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    total += len(chunk)
            if total > limit:
                raise DecodeError(f"decompressed content exceeds {limit} bytes")
            return b"".join(chunks)
    except DecodeError:
        raise
    except Exception as exc:  # zlib.error, zstandard.ZstdError, ...
        raise DecodeError(f"content does not decompress with {algorithm}: {exc}") from exc
    raise DecodeError(f"unknown compression {algorithm!r}")


def encrypt(plain: bytes, key: bytes) -> tuple[bytes, bytes]:
    """``(nonce, ciphertext)`` of ``plain`` under the 32-byte ``key``."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not isinstance(key, (bytes, bytearray)) or len(key) != 32:
        raise InvalidMessageError("encryption_key must be 32 bytes (AES-256)")
    nonce = os.urandom(12)
    return nonce, AESGCM(bytes(key)).encrypt(nonce, plain, b"aos-content-v1")


def decrypt(sealed: bytes, nonce: bytes, key: bytes) -> bytes:
    """The plaintext of ``sealed``; :class:`DecryptionError` when ``key`` does not open it."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        return AESGCM(key).decrypt(nonce, sealed, b"aos-content-v1")
    except (InvalidTag, ValueError) as exc:
        raise DecryptionError("content does not decrypt with the key for its key id") from exc
