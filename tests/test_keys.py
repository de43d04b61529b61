"""Signing keys on disk and on the device: ``localrank keygen`` never overwrites, never
follows a symlink and leaves the private key 0600; key rotation (old → new → newer) through
signed key statements, which no one holding neither key can forge, replay or roll back."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from localrank.bundle import generate_keypair, load_private_key
from localrank.errors import InputError

REPO = Path(__file__).resolve().parent.parent


def _keygen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localrank.cli", "keygen", *args],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_keygen_refuses_to_overwrite_an_existing_key(tmp_path: Path) -> None:
    key, pub = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    assert _keygen("--private", str(key), "--public", str(pub)).returncode == 0
    assert _mode(key) == 0o600
    before = key.read_bytes(), pub.read_bytes()
    out = _keygen("--private", str(key), "--public", str(pub))
    assert out.returncode == 2
    assert "already exists" in out.stderr and "--force" in out.stderr
    assert (key.read_bytes(), pub.read_bytes()) == before
    # The public file alone existing is refused too, before the private key is written.
    key.unlink()
    with pytest.raises(InputError, match=r"^public_path: .* already exists"):
        generate_keypair(key, pub)
    assert not key.exists()


def test_keygen_force_replaces_and_leaves_0600_whatever_was_there(tmp_path: Path) -> None:
    key, pub = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    key.write_bytes(b"old")
    os.chmod(key, 0o644)
    pub.write_bytes(b"old")
    out = _keygen("--private", str(key), "--public", str(pub), "--force")
    assert out.returncode == 0, out.stderr
    assert _mode(key) == 0o600
    load_private_key(key)  # a real key replaced the old bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pem", "k.pub.pem"]  # no temp left


@pytest.mark.parametrize("force", [False, True])
def test_keygen_never_writes_through_a_symlink(tmp_path: Path, force: bool) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    os.chmod(victim, 0o644)
    key, pub = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    key.symlink_to(victim)
    args = ["--private", str(key), "--public", str(pub)] + (["--force"] if force else [])
    out = _keygen(*args)
    assert victim.read_bytes() == b"precious" and _mode(victim) == 0o644
    if force:
        # The link itself was replaced by a regular 0600 file.
        assert out.returncode == 0, out.stderr
        assert not key.is_symlink() and _mode(key) == 0o600
        load_private_key(key)
    else:
        assert out.returncode == 2 and "already exists" in out.stderr
        assert key.is_symlink()


def test_keygen_refuses_a_dangling_symlink(tmp_path: Path) -> None:
    key, pub = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    target = tmp_path / "created-by-the-attacker.pem"
    key.symlink_to(target)
    with pytest.raises(InputError, match=r"^private_path: .* already exists"):
        generate_keypair(key, pub)
    assert not target.exists()
