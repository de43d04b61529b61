"""The signed container: the exact bytes a signature covers, and how they are checked.

Layout::

    header   8 bytes  b"LRBUNDLE"
             2 bytes  format version (little-endian u16), currently 1
             2 bytes  reserved, zero
             8 bytes  payload length (little-endian u64)
    payload  a ZIP archive (stored, fixed timestamps, sorted names) holding manifest.json and
             one .npy file per array
    trailer  4 bytes  b"SIG1"
            64 bytes  Ed25519 signature over header + payload

A file that ends right after the payload is *unsigned*; one that ends anywhere earlier, or
inside the trailer, is *truncated*. Checks run in that order, then the signature; only a
verified payload is ever parsed.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from localrank.errors import (
    BundleFormatError,
    BundleSignatureError,
    BundleTruncatedError,
    BundleUnsignedError,
)

__all__ = ["FORMAT_VERSION", "HEADER_SIZE", "seal", "sealed_size", "unseal"]

MAGIC = b"LRBUNDLE"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sHHQ")
_SIG_MAGIC = b"SIG1"
_SIG_LEN = 64
HEADER_SIZE = _HEADER.size


def sealed_size(header: bytes) -> int | None:
    """The total size a sealed bundle announces in its first :data:`HEADER_SIZE` bytes, or
    None when they are not a bundle header. The sync client uses it to stop a download that
    runs past what the bundle itself says it holds, before any signature check."""
    if len(header) < _HEADER.size:
        return None
    magic, _, _, length = _HEADER.unpack_from(header)
    if magic != MAGIC:
        return None
    return int(_HEADER.size + length + len(_SIG_MAGIC) + _SIG_LEN)


def seal(payload: bytes, key: Ed25519PrivateKey, *, format_version: int = FORMAT_VERSION) -> bytes:
    """Frame and sign ``payload``. Ed25519 is deterministic, so equal inputs give equal bytes."""
    header = _HEADER.pack(MAGIC, format_version, 0, len(payload))
    signature = key.sign(header + payload)
    return header + payload + _SIG_MAGIC + signature


def unseal(data: bytes, public_key: Ed25519PublicKey) -> bytes:
    """The verified payload of a sealed bundle, or a :class:`~localrank.errors.BundleError`."""
    if len(data) < _HEADER.size:
        if MAGIC.startswith(data[:8]) and data:
            raise BundleTruncatedError(
                f"bundle: truncated: {len(data)} bytes, shorter than the {_HEADER.size}-byte header"
            )
        raise BundleFormatError("bundle: not a localrank bundle (no LRBUNDLE header)")
    magic, version, _, length = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise BundleFormatError("bundle: not a localrank bundle (no LRBUNDLE header)")
    if version != FORMAT_VERSION:
        raise BundleFormatError(
            f"bundle: unknown format version {version}; this device reads version {FORMAT_VERSION}"
        )
    end = _HEADER.size + length
    if len(data) < end:
        raise BundleTruncatedError(
            f"bundle: truncated: the header announces {length} payload bytes, "
            f"{len(data) - _HEADER.size} are present"
        )
    if len(data) == end:
        raise BundleUnsignedError("bundle: unsigned: no signature follows the payload")
    trailer = data[end:]
    if len(trailer) < len(_SIG_MAGIC) + _SIG_LEN:
        raise BundleTruncatedError(
            f"bundle: truncated: the signature trailer has {len(trailer)} of "
            f"{len(_SIG_MAGIC) + _SIG_LEN} bytes"
        )
    if trailer[:4] != _SIG_MAGIC or len(trailer) != len(_SIG_MAGIC) + _SIG_LEN:
        raise BundleFormatError("bundle: malformed signature trailer")
    try:
        public_key.verify(trailer[4:], data[:end])
    except InvalidSignature:
        raise BundleSignatureError(
            "bundle: bad signature: it does not verify against the configured public key"
        ) from None
    return data[_HEADER.size : end]
