"""Time: every time-dependent call takes ``now`` or uses an injected clock.

Times are POSIX seconds (UTC) as floats. An *epoch* is a UTC calendar day, the finest time unit
that ever leaves the device: ``epoch_of(t) = floor(t / 86400)``.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from typing import Protocol, runtime_checkable

from localrank.errors import InputError

__all__ = [
    "SECONDS_PER_DAY",
    "Clock",
    "FixedClock",
    "SystemClock",
    "epoch_of",
    "epoch_start",
    "resolve_now",
]

SECONDS_PER_DAY = 86_400


@runtime_checkable
class Clock(Protocol):
    """Anything with ``now() -> float`` (POSIX seconds, UTC)."""

    def now(self) -> float: ...


class SystemClock:
    """The real wall clock."""

    def now(self) -> float:
        return time.time()

    def __repr__(self) -> str:
        return "SystemClock()"


class FixedClock:
    """A clock that only moves when told to: for tests, replays and the evaluation."""

    def __init__(self, start: float | datetime) -> None:
        self._t = _to_seconds(start, "start")

    def now(self) -> float:
        return self._t

    def set(self, t: float | datetime) -> None:
        """Jump to ``t``."""
        self._t = _to_seconds(t, "t")

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (≥ 0) and return the new time."""
        if not math.isfinite(seconds) or seconds < 0:
            raise InputError(f"seconds: expected a finite number ≥ 0, got {seconds!r}")
        self._t += seconds
        return self._t

    def __repr__(self) -> str:
        return f"FixedClock({self._t!r})"


def _to_seconds(t: float | datetime, arg: str) -> float:
    if isinstance(t, datetime):
        if t.tzinfo is None:
            raise InputError(f"{arg}: expected a timezone-aware datetime, got a naive one")
        return t.timestamp()
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise InputError(
            f"{arg}: expected POSIX seconds (a finite number) or a datetime, got {t!r}"
        )
    return float(t)


def resolve_now(now: float | datetime | None, clock: Clock) -> float:
    """``now`` as POSIX seconds, or the clock's time when ``now`` is None."""
    return clock.now() if now is None else _to_seconds(now, "now")


def epoch_of(t: float) -> int:
    """The UTC day number of ``t``."""
    return math.floor(t / SECONDS_PER_DAY)


def epoch_start(epoch: int) -> float:
    """The first second of an epoch."""
    return float(epoch * SECONDS_PER_DAY)


def iso(t: float) -> str:
    """``t`` as an ISO-8601 UTC string, for display."""
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="seconds")
