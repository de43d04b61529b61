"""Signing keys on disk and on the device: ``localrank keygen`` never overwrites, never
follows a symlink and leaves the private key 0600; key rotation (old → new → newer) through
signed key statements, which no one holding neither key can forge, replay or roll back."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from engine_fixtures import DAY, T0, Keys, open_engine
from localrank.bundle import generate_keypair, load_private_key
from localrank.bundle.trust import (
    KeyStatementError,
    append_to_chain,
    read_chain,
    sign_retirement,
    sign_transition,
)
from localrank.device.engine import Engine
from localrank.errors import BundleSignatureError, InputError, LocalrankError

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


# -- key rotation --------------------------------------------------------------------------------



@pytest.fixture(scope="module")
def rotation(tmp_path_factory: pytest.TempPathFactory) -> tuple[Keys, Keys, Keys, Keys]:
    d = tmp_path_factory.mktemp("rotation")
    return Keys(d, "old"), Keys(d, "new"), Keys(d, "newer"), Keys(d, "attacker")


def test_old_new_newer_in_sequence_on_a_real_device_store(tmp_path: Path, rotation) -> None:
    old, new, newer, _ = rotation
    db = tmp_path / "device.db"
    engine, clock = open_engine(db, old, old.bundle(version=1))
    t1 = sign_transition(old.private.read_bytes(), new.public, sequence=1, valid_from=T0 + DAY)
    # Before the transition is known, a bundle by the new key is refused.
    with pytest.raises(BundleSignatureError):
        engine.load_bundle(new.bundle(version=2))
    assert engine.apply_key_statements([t1]) == 1
    # Until valid_from both keys sign; then only the new one.
    assert engine.load_bundle(old.bundle(version=2)).version == 2
    assert engine.load_bundle(new.bundle(version=3)).version == 3
    clock.set(T0 + DAY)
    with pytest.raises(BundleSignatureError):
        engine.load_bundle(old.bundle(version=4))
    t2 = sign_transition(new.private.read_bytes(), newer.public, sequence=2, valid_from=T0 + DAY)
    engine.close()
    # The trust survives a restart: the app still ships the old key as configured.
    engine = Engine.open(db, public_key=old.public, clock=clock)
    assert engine.bundle.version == 3
    assert engine.apply_key_statements([t1, t2]) == 1  # the whole chain, as /v1/keys serves it
    assert engine.load_bundle(newer.bundle(version=4)).version == 4
    for stale in (old, new):
        with pytest.raises(BundleSignatureError):
            engine.load_bundle(stale.bundle(version=5))
    engine.close()
    again = Engine.open(db, public_key=old.public, clock=clock)
    assert again.bundle.version == 4  # verified at open under the chain's keys
    assert again.trusted_key.public_bytes_raw() == load_public_raw(newer)
    # Forgetting everything the user did does not forget the chain.
    again.forget(everything=True)
    with pytest.raises(BundleSignatureError):
        again.load_bundle(new.bundle(version=5))


def load_public_raw(keys: Keys) -> bytes:
    from localrank.bundle import load_public_key

    return load_public_key(keys.public).public_bytes_raw()


def test_an_attacker_holding_neither_key_cannot_inject_one(tmp_path: Path, rotation) -> None:
    old, new, newer, attacker = rotation
    engine, _ = open_engine(tmp_path / "device.db", old, old.bundle(version=1))
    evil = attacker.private.read_bytes()
    # A transition signed by the attacker's own key is not by a trusted key: skipped.
    own = sign_transition(evil, newer.public, sequence=1, valid_from=T0)
    assert engine.apply_key_statements([own]) == 0
    # The same, rewritten to claim the old key introduces the attacker's.
    forged = json.loads(own["statement"])
    forged["old"] = base64.b64encode(load_public_raw(old)).decode()
    forged["new"] = base64.b64encode(load_public_raw(attacker)).decode()
    text = json.dumps(forged, sort_keys=True, separators=(",", ":"))
    with pytest.raises(KeyStatementError, match="bad signature"):
        engine.apply_key_statements([{"statement": text, "signature": own["signature"]}])
    # A genuine statement edited after signing (its new key swapped).
    t1 = sign_transition(old.private.read_bytes(), new.public, sequence=1, valid_from=T0)
    edited = json.loads(t1["statement"])
    edited["new"] = base64.b64encode(load_public_raw(attacker)).decode()
    text = json.dumps(edited, sort_keys=True, separators=(",", ":"))
    with pytest.raises(KeyStatementError, match="bad signature"):
        engine.apply_key_statements([{"statement": text, "signature": t1["signature"]}])
    with pytest.raises(BundleSignatureError):
        engine.load_bundle(attacker.bundle(version=2))
    # Replay and rollback: after old → new → newer, replaying the first statement changes
    # nothing, and a second statement under an applied number (even one the old key really
    # signed, e.g. by an attacker who stole the retired old key) is refused as a fork.
    t2 = sign_transition(new.private.read_bytes(), newer.public, sequence=2, valid_from=T0)
    assert engine.apply_key_statements([t1, t2]) == 2
    assert engine.apply_key_statements([t1]) == 0
    assert engine.trusted_key.public_bytes_raw() == load_public_raw(newer)
    fork = sign_transition(old.private.read_bytes(), attacker.public, sequence=1, valid_from=T0)
    with pytest.raises(KeyStatementError, match="fork"):
        engine.apply_key_statements([fork])
    # Skipping ahead is refused too: statements are applied one number at a time.
    t4 = sign_transition(newer.private.read_bytes(), attacker.public, sequence=4, valid_from=T0)
    with pytest.raises(KeyStatementError, match="expected sequence 3"):
        engine.apply_key_statements([t4])
    # A retirement by a key older than the one it retires is refused.
    backwards = sign_retirement(new.private.read_bytes(), newer.public, sequence=3)
    with pytest.raises(KeyStatementError, match="newer than the one it retires"):
        engine.apply_key_statements([backwards])
    assert engine.trusted_key.public_bytes_raw() == load_public_raw(newer)
    assert engine.load_bundle(newer.bundle(version=2)).version == 2


def test_a_retired_keys_bundles_are_refused(tmp_path: Path, rotation) -> None:
    old, new, _, _ = rotation
    db = tmp_path / "device.db"
    engine, clock = open_engine(db, old, old.bundle(version=1))
    t1 = sign_transition(old.private.read_bytes(), new.public, sequence=1, valid_from=T0 + DAY)
    engine.apply_key_statements([t1])
    assert engine.load_bundle(old.bundle(version=2)).version == 2  # grace period
    # The old key is compromised: the new key retires it before valid_from.
    r2 = sign_retirement(new.private.read_bytes(), old.public, sequence=2)
    engine.apply_key_statements([t1, r2])
    with pytest.raises(BundleSignatureError):
        engine.load_bundle(old.bundle(version=3))
    engine.close()
    # The installed bundle, signed by the retired key, is not used after a restart either.
    again = Engine.open(db, public_key=old.public, clock=clock)
    with pytest.raises(LocalrankError, match="no bundle loaded"):
        again.bundle  # noqa: B018
    assert again.load_bundle(new.bundle(version=3)).version == 3


def test_keygen_rotates_and_the_server_serves_the_chain(tmp_path: Path, rotation) -> None:
    from localrank.server.key_chain import key_chain_document

    old = rotation[0]
    chain = tmp_path / "keys.json"
    new_key, new_pub = tmp_path / "new.pem", tmp_path / "new.pub.pem"
    out = _keygen(
        "--private", str(new_key), "--public", str(new_pub),
        "--rotate-from", str(old.private), "--chain", str(chain), "--valid-from", str(T0),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    statements = read_chain(chain)
    assert len(statements) == 1
    doc = json.loads(key_chain_document(chain, new_key.read_bytes()))
    assert doc["statements"] == statements
    # A chain whose current key is not the signing key is refused at start.
    with pytest.raises(InputError, match="not the signing key"):
        key_chain_document(chain, old.private.read_bytes())
    engine, _ = open_engine(tmp_path / "d.db", old, old.bundle(version=1))
    assert engine.apply_key_statements(doc["statements"]) == 1
    append_to_chain(chain, sign_retirement(new_key.read_bytes(), old.public, sequence=2))
    assert engine.apply_key_statements(read_chain(chain)) == 1
