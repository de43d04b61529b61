"""Ed25519 keys for signing bundles (the `cryptography` library, not a home-made scheme).

Private keys are PKCS#8 PEM, public keys SubjectPublicKeyInfo PEM. A device is configured with
the server's public key: a path, PEM bytes, or a key object.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from localrank.errors import InputError

__all__ = ["PublicKeyLike", "generate_keypair", "load_private_key", "load_public_key"]

PublicKeyLike = Ed25519PublicKey | bytes | str | Path


def generate_keypair(private_path: str | Path, public_path: str | Path) -> Ed25519PublicKey:
    """Write a new key pair; the private key file is created with mode 0600."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    private_path, public_path = Path(private_path), Path(public_path)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public = key.public_key()
    public_path.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return public


def _read(source: bytes | str | Path, arg: str) -> bytes:
    if isinstance(source, bytes):
        return source
    if isinstance(source, str) and source.lstrip().startswith("-----BEGIN"):
        return source.encode()
    try:
        return Path(source).read_bytes()
    except OSError as e:
        raise InputError(f"{arg}: cannot read key file {source}: {e}") from e


def load_private_key(source: Ed25519PrivateKey | bytes | str | Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a key object, PEM bytes/text or a PEM file path."""
    if isinstance(source, Ed25519PrivateKey):
        return source
    try:
        key = serialization.load_pem_private_key(_read(source, "private_key"), password=None)
    except (ValueError, TypeError) as e:
        raise InputError(f"private_key: expected an unencrypted Ed25519 PEM key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"private_key: expected an Ed25519 key, got {type(key).__name__}")
    return key


def load_public_key(source: PublicKeyLike) -> Ed25519PublicKey:
    """An Ed25519 public key from a key object, PEM bytes/text or a PEM file path."""
    if isinstance(source, Ed25519PublicKey):
        return source
    try:
        key = serialization.load_pem_public_key(_read(source, "public_key"))
    except (ValueError, TypeError) as e:
        raise InputError(f"public_key: expected an Ed25519 PEM public key: {e}") from e
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"public_key: expected an Ed25519 key, got {type(key).__name__}")
    return key
