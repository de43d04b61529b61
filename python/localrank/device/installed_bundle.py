"""The bundle installed on the device and the keys it must be signed with.

A bundle is verified against the trusted keys (:class:`~localrank.bundle.trust.KeyTrust`, which
follows the server's signed key transitions) before it is stored; the stored one is verified
again when the engine opens, and may then be expired: the last good bundle keeps serving.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

from localrank.bundle import Bundle, open_bundle
from localrank.bundle.trust import KeyTrust
from localrank.device.store import Store
from localrank.errors import BundleError, LocalrankError

__all__ = ["InstalledBundle"]


class InstalledBundle:
    """The device's bundle slot: what is installed, and which keys may replace it."""

    def __init__(self, store: Store, configured_key: Any) -> None:
        self._store = store
        self.trust = self._read_trust(configured_key)
        self.bundle: Bundle | None = None
        stored = store.installed_bundle()
        self._stored_version: int | None = stored[1] if stored else None
        if stored:
            # Verify again (the file may have been tampered with) but allow an expired bundle.
            # One that no longer verifies (a new server key) is not used, but must not lock the
            # user out of their store: install() takes a fresh one, no older.
            with contextlib.suppress(BundleError):
                self.bundle = open_bundle(stored[0], self.trust.installed_keys(), now=-math.inf)

    def _read_trust(self, configured: Any) -> KeyTrust:
        """The stored key chain if it knows the configured key (the app may ship the root or a
        key the chain introduced since); otherwise the configured key is a new root."""
        stored = self._store.setting("key_trust")
        if stored is not None:
            with contextlib.suppress(LocalrankError, ValueError, KeyError, TypeError):
                trust = KeyTrust.from_json(stored)
                if trust.knows(configured):
                    return trust
        return KeyTrust(configured)

    def install(self, data: bytes, now: float) -> Bundle:
        """Verify ``data`` as of ``now`` (signature, expiry, format, no rollback), store it and
        use it; the installed version again is a no-op. Raises a
        :class:`~localrank.errors.BundleError` and keeps the last good bundle on a refusal."""
        current = self.bundle.version if self.bundle else self._stored_version
        bundle = open_bundle(data, self.trust.bundle_keys(now), now=now, current_version=current)
        if self.bundle is not None and bundle.digest == self.bundle.digest:
            return self.bundle
        with self._store.transaction() as db:
            Store.put_bundle(db, bundle.version, bundle.digest, data)
        self.bundle = bundle
        return bundle

    def apply_key_statements(self, statements: Sequence[object]) -> int:
        """Apply the server's key chain; persisted before it takes effect. Returns how many
        statements were new; on a bad statement those before it stay applied."""
        trial = KeyTrust.from_json(self.trust.to_json())
        try:
            new = trial.apply(statements)
        finally:
            if trial.sequence != self.trust.sequence:  # keep the valid prefix, as apply() does
                with self._store.transaction() as db:
                    Store.put_setting(db, "key_trust", trial.to_json())
                self.trust = trial
        return new
