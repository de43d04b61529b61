"""How a server is configured: the database, the signing key, the base bundle, the clock and
the limits. ``localrank serve`` builds one from its flags; tests build one directly."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localrank.errors import InputError
from localrank.server.aggregate import AggregationSettings
from localrank.server.transport import HttpLimits
from localrank.shared.clock import Clock, SystemClock

__all__ = ["CONFIG_ENV", "ServerConfig", "ShiftedClock"]

#: Worker processes started by uvicorn read their configuration from this variable.
CONFIG_ENV = "LOCALRANK_SERVER_CONFIG"


class ShiftedClock:
    """The wall clock shifted by a fixed offset: replays history at real speed. Every worker
    process given the same offset agrees on the time."""

    def __init__(self, offset: float) -> None:
        if not math.isfinite(offset):
            raise InputError(f"offset: expected a finite number of seconds, got {offset!r}")
        self.offset = float(offset)

    def now(self) -> float:
        return time.time() + self.offset

    def __repr__(self) -> str:
        return f"ShiftedClock({self.offset!r})"


@dataclass
class ServerConfig:
    """Everything a server process needs.

    Args:
        db: ``sqlite:///path`` or ``postgresql://…``.
        key: the Ed25519 private key (PEM path or bytes) that signs published bundles.
        base_bundle: the bundle published first when the database holds none (path or bytes);
            it must verify against ``key``.
        clock: the server's clock (default: the wall clock); reports are accepted for its
            current epoch ± 1.
        max_body_bytes: the largest request body accepted.
        max_reports: the most reports per batch (≤ 256, the schema's bound).
        aggregate_every: seconds between aggregation runs inside the server; None: never.
        retry_after: the Retry-After (seconds) sent with a 503.
        busy_timeout_ms: how long a request waits for a database lock before it gets a 503.
        key_chain: the key-chain file served at ``GET /v1/keys`` (key rotation), or None.
        http: per-connection time and size limits (request head and body deadlines, open
            connections, keep-alive; ``server/transport.py``).
    """

    db: str
    key: bytes | str | Path
    base_bundle: bytes | str | Path
    clock: Clock = field(default_factory=SystemClock)
    max_body_bytes: int = 1 << 20
    max_reports: int = 256
    aggregate_every: float | None = 3600.0
    retry_after: int = 5
    busy_timeout_ms: int = 5000
    aggregation: AggregationSettings = field(default_factory=AggregationSettings)
    key_chain: str | Path | None = None
    http: HttpLimits = field(default_factory=HttpLimits)

    def __post_init__(self) -> None:
        if not isinstance(self.db, str) or "://" not in self.db:
            raise InputError(f"db: expected sqlite:///path or postgresql://…, got {self.db!r}")
        if self.aggregate_every is not None and not self.aggregate_every > 0:
            raise InputError(
                f"aggregate_every: expected seconds > 0 or None, got {self.aggregate_every}"
            )
        if not isinstance(self.retry_after, int) or self.retry_after < 0:
            raise InputError(f"retry_after: expected an integer ≥ 0, got {self.retry_after!r}")

    def key_bytes(self) -> bytes:
        return _read(self.key, "key")

    def base_bundle_bytes(self) -> bytes:
        return _read(self.base_bundle, "base_bundle")

    def to_env(self, clock_offset: float = 0.0) -> str:
        """The JSON a worker process reads from :data:`CONFIG_ENV` (paths, not bytes)."""
        for name in ("key", "base_bundle"):
            if isinstance(getattr(self, name), bytes):
                raise InputError(f"{name}: worker processes need a file path, not bytes")
        doc: dict[str, Any] = {
            "db": self.db,
            "key": str(Path(str(self.key)).resolve()),
            "base_bundle": str(Path(str(self.base_bundle)).resolve()),
            "clock_offset": clock_offset,
            "max_body_bytes": self.max_body_bytes,
            "max_reports": self.max_reports,
            "aggregate_every": self.aggregate_every,
            "retry_after": self.retry_after,
            "busy_timeout_ms": self.busy_timeout_ms,
            "aggregation": self.aggregation.__dict__,
            "key_chain": None if self.key_chain is None else str(Path(self.key_chain).resolve()),
            "http": self.http.to_dict(),
        }
        return json.dumps(doc)

    @classmethod
    def from_env(cls) -> ServerConfig:
        """The configuration a parent ``localrank serve`` left in :data:`CONFIG_ENV`."""
        text = os.environ.get(CONFIG_ENV)
        if not text:
            raise InputError(f"{CONFIG_ENV}: not set; start workers with `localrank serve`")
        doc = json.loads(text)
        offset = float(doc.pop("clock_offset", 0.0))
        doc["aggregation"] = AggregationSettings(**doc.get("aggregation", {}))
        doc["http"] = HttpLimits(**doc.get("http", {}))
        return cls(clock=ShiftedClock(offset) if offset else SystemClock(), **doc)


def _read(source: bytes | str | Path, arg: str) -> bytes:
    if isinstance(source, bytes):
        return source
    try:
        return Path(source).read_bytes()
    except OSError as e:
        raise InputError(f"{arg}: cannot read {source}: {e}") from e
