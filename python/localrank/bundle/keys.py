"""Ed25519 keys for signing bundles (the `cryptography` library, not a home-made scheme).

Private keys are PKCS#8 PEM, public keys SubjectPublicKeyInfo PEM. A device is configured with
the server's public key: a path, PEM bytes, or a key object.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from localrank.errors import InputError

__all__ = ["PublicKeyLike", "generate_keypair", "load_private_key", "load_public_key"]

PublicKeyLike = Ed25519PublicKey | bytes | str | Path


def _lexists(path: Path) -> bool:
    # lstat, not exists(): a dangling symlink is still something we must not write through
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    return True


def _exists(arg: str, path: Path) -> InputError:
    return InputError(
        f"{arg}: {path} already exists; refusing to overwrite it (use --force to replace it)"
    )


def _write_new(path: Path, data: bytes, mode: int, *, force: bool, arg: str) -> None:
    """Write ``data`` to ``path`` with exactly ``mode``, never through a symlink.

    Without ``force`` the file must not exist (``O_EXCL``). With it, the bytes go to a fresh
    temporary file in the same directory (``O_EXCL``, so never an existing file or link) that
    is renamed over ``path``: a rename replaces a symlink itself, not its target, and the old
    file's mode does not carry over.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    target = path
    if force:
        target = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(target, flags, mode)
    except FileExistsError:
        raise _exists(arg, path) from None
    except OSError as e:
        raise InputError(f"{arg}: cannot create {path}: {e}") from e
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it; the result is exactly ``mode``
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(target, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(target)
        raise


def generate_keypair(
    private_path: str | Path, public_path: str | Path, *, force: bool = False
) -> Ed25519PublicKey:
    """Write a new key pair. The private key file is created with mode 0600, the public one
    0644. An existing file is refused unless ``force``; a symlink is never followed."""
    private_path, public_path = Path(private_path), Path(public_path)
    if private_path.resolve() == public_path.resolve() or private_path == public_path:
        raise InputError(f"public_path: expected a file other than the private key {private_path}")
    if not force:
        # Checked for both before writing either, so a refusal leaves nothing half-written.
        for arg, path in (("private_path", private_path), ("public_path", public_path)):
            if _lexists(path):
                raise _exists(arg, path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key()
    public_pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(private_path, pem, 0o600, force=force, arg="private_path")
    _write_new(public_path, public_pem, 0o644, force=force, arg="public_path")
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
