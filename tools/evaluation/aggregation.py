"""The server side of the simulation: the real ingest and aggregation, in process, on a real
SQLite store. Only the HTTP hop is skipped (the sync client's own tests cover it)."""

from __future__ import annotations

from pathlib import Path

from localrank.bundle import open_bundle
from localrank.bundle.keys import load_private_key
from localrank.server.aggregate import (
    AggregationSettings,
    Aggregator,
    closed_before,
    ensure_base_bundle,
)
from localrank.server.ingest import IngestRules, PublishedHistory, parse_batch
from localrank.server.storage import open_storage
from localrank.shared.clock import epoch_of

__all__ = ["SimulatedServer"]


class SimulatedServer:
    """Implements :class:`tools.evaluation.fleet.ReportServer`."""

    def __init__(
        self,
        directory: Path,
        base_bundle: bytes,
        signing_key: bytes,
        settings: AggregationSettings,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.storage = open_storage(f"sqlite:///{directory / 'server.db'}")
        self.storage.migrate()
        ensure_base_bundle(self.storage, base_bundle, signing_key)
        self.aggregator = Aggregator(self.storage, signing_key, settings=settings)
        self._public = load_private_key(signing_key).public_key()
        self._rules: tuple[str, IngestRules] | None = None
        self._history = PublishedHistory(self._public)
        self.stored = 0

    def _ingest_rules(self) -> IngestRules:
        row = self.storage.latest_bundle()
        assert row is not None
        if self._rules is None or self._rules[0] != row.digest:
            b = open_bundle(row.data, self._public, now=float("-inf"))
            published = self._history.configs(self.storage.bundles())
            self._rules = (
                row.digest,
                IngestRules(offers=frozenset(b.catalog.ids), published=published),
            )
        return self._rules[1]

    def submit(self, body: bytes, now: float) -> None:
        rows = parse_batch(body, self._ingest_rules(), epoch_of(now))
        stored = self.storage.store_reports(
            rows, closed_before(now, self.aggregator.settings.grace_seconds)
        )
        self.stored += sum(stored)

    def publish(self, now: float) -> bytes:
        self.aggregator.run(now=now, force_publish=True)
        row = self.storage.latest_bundle()
        assert row is not None
        return row.data

    def cohort_rounds(self) -> list[dict[str, int]]:
        """Per stored bundle (oldest first, the latest ``keep_bundles``): how many cohorts it
        carries and how many of them have a published population (≥ ``min_population``)."""
        out = []
        for row in self.storage.bundles():
            b = open_bundle(row.data, self._public, now=float("-inf"))
            ids = b.cohorts.ids if b.cohorts is not None else []
            k = b.config.min_population
            out.append(
                {
                    "version": row.version,
                    "cohorts": len(ids),
                    "published": int(sum(b.segments.populations[int(i)] >= k for i in ids)),
                }
            )
        return out

    def close(self) -> None:
        self.storage.close()
