"""Key rotation: which bundle-signing keys a device trusts, moved forward by signed statements.

A device starts out trusting one public key (the one its app ships: its *root*). The server
rotates with a chain of **key statements**, each Ed25519-signed, numbered 1, 2, 3, …:

``transition``
    ``{old, new, valid_from, sequence}`` signed by ``old``, which must be the key the device
    trusts now. From then on the device trusts ``new``; bundles signed by ``old`` are still
    accepted until ``valid_from`` (so a server can publish the statement before it switches),
    and never after.
``retirement``
    ``{retired, signer, sequence}`` signed by ``signer``, a trusted key introduced *after*
    ``retired``. A bundle signed by a retired key is refused, whatever its dates: a
    compromised key can sign any ``created`` it likes.

A statement is applied only if its sequence number is exactly one more than the last applied;
a different statement under a number already applied (a fork, or a forged re-signing) is
refused, and replaying an applied one changes nothing, so trust never moves back. Someone
holding neither the current key nor a newer one cannot introduce a key. The chain is
persisted in the device store; the server publishes it at ``GET /v1/keys``.

Signatures cover ``b"localrank.key-statement/1\\n"`` followed by the statement's canonical
JSON (sorted keys, no spaces), so a statement signature can never pass for a bundle signature,
whose signed bytes start with ``LRBUNDLE``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from localrank.bundle.keys import PublicKeyLike, load_private_key, load_public_key
from localrank.errors import BundleError, InputError

__all__ = [
    "CHAIN_SCHEMA",
    "KeyStatementError",
    "KeyTrust",
    "append_to_chain",
    "next_sequence",
    "read_chain",
    "sign_retirement",
    "sign_transition",
]

STATEMENT_SCHEMA = "localrank.key-statement/1"
#: The document ``GET /v1/keys`` serves: ``{"schema": CHAIN_SCHEMA, "statements": [...]}``.
CHAIN_SCHEMA = "localrank.key-chain/1"
_DOMAIN = (STATEMENT_SCHEMA + "\n").encode()


class KeyStatementError(BundleError):
    """A key statement was refused: malformed, badly signed, out of sequence, a fork of one
    already applied, or by a key not entitled to make it. Trust is unchanged."""



def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _key_of(text: object, field: str) -> bytes:
    try:
        raw = base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise KeyStatementError(f"key statement: {field}: expected a base64 Ed25519 public key")
    return raw


def _canonical(body: Mapping[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def _sign(body: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, str]:
    text = _canonical(body)
    return {"statement": text, "signature": _b64(key.sign(_DOMAIN + text.encode()))}


def _check_sequence(sequence: object) -> int:
    if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 1:
        raise InputError(f"sequence: expected an integer ≥ 1, got {sequence!r}")
    return sequence


def sign_transition(
    old_key: Ed25519PrivateKey | bytes | str,
    new_public: PublicKeyLike,
    *,
    sequence: int,
    valid_from: float,
) -> dict[str, str]:
    """A statement, signed by ``old_key``, that hands trust over to ``new_public``."""
    old = load_private_key(old_key)
    new = load_public_key(new_public)
    if not (isinstance(valid_from, (int, float)) and math.isfinite(valid_from)):
        raise InputError(f"valid_from: expected POSIX seconds, got {valid_from!r}")
    if new.public_bytes_raw() == old.public_key().public_bytes_raw():
        raise InputError("new_public: expected a key other than the old one")
    body = {
        "schema": STATEMENT_SCHEMA,
        "kind": "transition",
        "sequence": _check_sequence(sequence),
        "old": _b64(old.public_key().public_bytes_raw()),
        "new": _b64(new.public_bytes_raw()),
        "valid_from": float(valid_from),
    }
    return _sign(body, old)


def sign_retirement(
    signer_key: Ed25519PrivateKey | bytes | str, retired_public: PublicKeyLike, *, sequence: int
) -> dict[str, str]:
    """A statement, signed by ``signer_key`` (a key newer than the retired one), that no
    bundle signed by ``retired_public`` is to be trusted any more."""
    signer = load_private_key(signer_key)
    retired = load_public_key(retired_public)
    body = {
        "schema": STATEMENT_SCHEMA,
        "kind": "retirement",
        "sequence": _check_sequence(sequence),
        "retired": _b64(retired.public_bytes_raw()),
        "signer": _b64(signer.public_key().public_bytes_raw()),
    }
    return _sign(body, signer)


@dataclass(frozen=True)
class _Statement:
    wire: tuple[str, str]  # (statement text, signature): what identifies it
    kind: str
    sequence: int
    signer: bytes
    subject: bytes  # the new key (transition) or the retired one (retirement)
    valid_from: float

    @classmethod
    def parse(cls, doc: object) -> _Statement:
        if not isinstance(doc, Mapping) or set(doc) != {"statement", "signature"}:
            raise KeyStatementError(
                "key statement: expected an object with 'statement' and 'signature'"
            )
        text, signature = doc["statement"], doc["signature"]
        if not isinstance(text, str) or not isinstance(signature, str):
            raise KeyStatementError("key statement: 'statement' and 'signature' must be strings")
        try:
            body = json.loads(text)
            sig = base64.b64decode(signature, validate=True)
        except (ValueError, binascii.Error):
            raise KeyStatementError("key statement: not JSON or not base64") from None
        if not isinstance(body, dict) or body.get("schema") != STATEMENT_SCHEMA:
            raise KeyStatementError(f"key statement: expected schema {STATEMENT_SCHEMA!r}")
        if _canonical(body) != text:
            # one text per statement: the bytes compared for forks are the bytes signed
            raise KeyStatementError("key statement: not in canonical form")
        kind = body.get("kind")
        seq = body.get("sequence")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            raise KeyStatementError("key statement: sequence: expected an integer ≥ 1")
        if kind == "transition":
            fields = {"schema", "kind", "sequence", "old", "new", "valid_from"}
            vf = body.get("valid_from")
            if isinstance(vf, bool) or not isinstance(vf, (int, float)) or not math.isfinite(vf):
                raise KeyStatementError("key statement: valid_from: expected POSIX seconds")
            signer = _key_of(body.get("old"), "old")
            subject = _key_of(body.get("new"), "new")
            valid_from = float(vf)
        elif kind == "retirement":
            fields = {"schema", "kind", "sequence", "retired", "signer"}
            signer = _key_of(body.get("signer"), "signer")
            subject = _key_of(body.get("retired"), "retired")
            valid_from = -math.inf
        else:
            raise KeyStatementError(f"key statement: unknown kind {kind!r}")
        if set(body) != fields:
            raise KeyStatementError(f"key statement: expected the fields {sorted(fields)}")
        if signer == subject:
            raise KeyStatementError("key statement: a key cannot introduce or retire itself")
        try:
            Ed25519PublicKey.from_public_bytes(signer).verify(sig, _DOMAIN + text.encode())
        except InvalidSignature:
            raise KeyStatementError(
                f"key statement {seq}: bad signature: it does not verify against its signer"
            ) from None
        return cls((text, signature), kind, seq, signer, subject, valid_from)


class KeyTrust:
    """The keys one device trusts: a root and the statements applied to it, in order."""

    def __init__(self, root: PublicKeyLike) -> None:
        self.root = load_public_key(root).public_bytes_raw()
        self.keys: list[bytes] = [self.root]  # oldest first; the last is the current key
        self.valid_from: list[float] = [-math.inf]  # when each key took over
        self.retired: set[bytes] = set()
        self.sequence = 0  # the last applied statement's number
        self.applied: dict[int, tuple[str, str]] = {}

    # -- the chain -----------------------------------------------------------------------------

    def apply(self, statements: Sequence[object]) -> int:
        """Apply a chain (or its tail), in order; returns how many statements were new.

        Statements already applied are skipped if identical and refused otherwise. Raises
        :class:`KeyStatementError` at the first refused statement; the ones before it stay
        applied (each stood on its own).
        """
        if isinstance(statements, (str, bytes)) or not isinstance(statements, Sequence):
            raise InputError("statements: expected a list of key statements")
        parsed = [_Statement.parse(doc) for doc in statements]
        new = 0
        for st in parsed:
            if not self.applied:
                # Nothing applied yet: the chain before this device's root (an app may ship a
                # newer key) is history it cannot and need not check. Its part starts with the
                # first transition its root signed; anything else before that is skipped, so
                # made-up history cannot shift the numbering either.
                if not (st.kind == "transition" and st.signer == self.keys[-1]):
                    continue
                self.sequence = st.sequence - 1
            if st.sequence <= self.sequence:
                seen = self.applied.get(st.sequence)
                if seen is not None and seen != st.wire:
                    raise KeyStatementError(
                        f"key statement {st.sequence}: refused: a different statement with this "
                        "sequence number was applied already (a fork, a forgery or a rollback)"
                    )
                continue  # a replay, or history before this device's part: changes nothing
            if st.sequence != self.sequence + 1:
                raise KeyStatementError(
                    f"key statement {st.sequence}: refused: expected sequence "
                    f"{self.sequence + 1} next (statements cannot be skipped)"
                )
            self._apply_one(st)
            new += 1
        return new

    def _apply_one(self, st: _Statement) -> None:
        if st.kind == "transition":
            if st.signer != self.keys[-1] or st.signer in self.retired:
                raise KeyStatementError(
                    f"key statement {st.sequence}: refused: a transition must be signed by the "
                    "currently trusted key"
                )
            if st.subject in self.keys:
                raise KeyStatementError(
                    f"key statement {st.sequence}: refused: the new key was trusted before"
                )
            self.keys.append(st.subject)
            self.valid_from.append(st.valid_from)
        else:
            if st.subject not in self.keys:
                raise KeyStatementError(
                    f"key statement {st.sequence}: refused: retires a key this device never "
                    "trusted"
                )
            if (
                st.signer not in self.keys
                or st.signer in self.retired
                or self.keys.index(st.signer) <= self.keys.index(st.subject)
            ):
                raise KeyStatementError(
                    f"key statement {st.sequence}: refused: a retirement must be signed by a "
                    "trusted key newer than the one it retires"
                )
            self.retired.add(st.subject)
        self.sequence = st.sequence
        self.applied[st.sequence] = st.wire

    # -- which keys sign bundles ---------------------------------------------------------------

    @property
    def current(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.keys[-1])

    def bundle_keys(self, now: float) -> list[Ed25519PublicKey]:
        """The keys a new bundle may be signed with at ``now``: the current key, and the one
        before it until the transition's ``valid_from``; never a retired one."""
        raws = [self.keys[-1]]
        if len(self.keys) > 1 and now < self.valid_from[-1]:
            raws.append(self.keys[-2])
        return [Ed25519PublicKey.from_public_bytes(r) for r in raws if r not in self.retired]

    def installed_keys(self) -> list[Ed25519PublicKey]:
        """The keys a bundle installed earlier may carry (it verified when installed), newest
        first: every key of the chain except the retired ones."""
        return [
            Ed25519PublicKey.from_public_bytes(r)
            for r in reversed(self.keys)
            if r not in self.retired
        ]

    def knows(self, key: PublicKeyLike) -> bool:
        return load_public_key(key).public_bytes_raw() in self.keys

    # -- persistence ---------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(
            {
                "root": _b64(self.root),
                "statements": [
                    {"statement": t, "signature": s} for _, (t, s) in sorted(self.applied.items())
                ],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> KeyTrust:
        """Re-verifies every statement: the stored chain proves itself, as on first receipt."""
        doc = json.loads(text)
        trust = cls(Ed25519PublicKey.from_public_bytes(_key_of(doc["root"], "root")))
        trust.apply(doc["statements"])
        return trust


def read_chain(path: str | Path) -> list[dict[str, Any]]:
    """The statements of a chain file (``{"schema": CHAIN_SCHEMA, "statements": [...]}``);
    a missing file is an empty chain."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"key_chain: cannot read {path}: {e}") from e
    if not isinstance(doc, dict) or doc.get("schema") != CHAIN_SCHEMA:
        raise InputError(f"key_chain: {path}: expected a {CHAIN_SCHEMA!r} document")
    statements = doc.get("statements")
    if not isinstance(statements, list):
        raise InputError(f"key_chain: {path}: expected a list of statements")
    return statements


def append_to_chain(path: str | Path, statement: Mapping[str, str]) -> None:
    """Add ``statement`` to the chain file (created if missing), atomically."""
    path = Path(path)
    statements = [*read_chain(path), dict(statement)]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(
        json.dumps({"schema": CHAIN_SCHEMA, "statements": statements}, indent=1) + "\n",
        encoding="utf-8",
    )
    tmp.replace(path)


def next_sequence(path: str | Path) -> int:
    """The sequence number the next statement in the chain file takes."""
    statements = read_chain(path)
    if not statements:
        return 1
    return int(json.loads(statements[-1]["statement"])["sequence"]) + 1
