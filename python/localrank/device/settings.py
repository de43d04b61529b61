"""The user's settings: personalisation level, leave-alone controls, opt-ins and consent.

Defaults, and why (docs/guardrails.md has the longer version):

- ``level = "full"``: on-device personalisation is private by construction (nothing personal
  leaves the phone), so it is on; ``coarse`` and ``off`` are one call away.
- ``quiet_hours = (22, 7)``: nothing is recommended from 22:00 to 07:00 device-local time.
- ``daily_cap = 20`` impressions a day in total and ``offer_cap = 3`` per offer a day: enough
  for a feed, never a barrage.
- ``reporting = False``: sending reports needs its own consent, off until the user gives it.
- No sensitive opt-ins: sensitive categories appear only after an explicit opt-in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from localrank.errors import InputError

__all__ = ["LEVELS", "Level", "Settings"]

Level = Literal["off", "coarse", "full"]
LEVELS: tuple[Level, ...] = ("off", "coarse", "full")


@dataclass(frozen=True)
class Settings:
    """A snapshot of the settings. Change them with ``Engine.update_settings``."""

    level: Level = "full"
    quiet_hours: tuple[int, int] | None = (22, 7)
    timezone: str = "UTC"
    daily_cap: int = 20
    offer_cap: int = 3
    context_overrides: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    sensitive_opt_ins: tuple[str, ...] = ()
    reporting: bool = False

    def validated(self) -> Settings:
        """Self, after checking every field; raises InputError naming the field."""
        if self.level not in LEVELS:
            raise InputError(f"level: expected one of {LEVELS}, got {self.level!r}")
        if self.quiet_hours is not None:
            qh = self.quiet_hours
            if (
                not isinstance(qh, (tuple, list))
                or len(qh) != 2
                or not all(
                    isinstance(h, int) and not isinstance(h, bool) and 0 <= h <= 23 for h in qh
                )
            ):
                raise InputError(
                    f"quiet_hours: expected None or (start_hour, end_hour) in 0..23, got {qh!r}"
                )
        try:
            if not isinstance(self.timezone, str):
                raise ValueError(self.timezone)
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InputError(
                f"timezone: expected an IANA time zone name, got {self.timezone!r}"
            ) from None
        for name in ("daily_cap", "offer_cap"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise InputError(f"{name}: expected an integer ≥ 0, got {v!r}")
        if not isinstance(self.reporting, bool):
            raise InputError(f"reporting: expected True or False, got {self.reporting!r}")
        return self

    def in_quiet_hours(self, t: float) -> bool:
        """Whether POSIX time ``t`` falls in the quiet hours, in the device's local time."""
        if self.quiet_hours is None:
            return False
        from datetime import datetime

        hour = datetime.fromtimestamp(t, tz=ZoneInfo(self.timezone)).hour
        start, end = self.quiet_hours
        if start == end:
            return False
        return start <= hour < end if start < end else (hour >= start or hour < end)

    def with_changes(self, **changes: Any) -> Settings:
        unknown = set(changes) - set(self.__dataclass_fields__)
        if unknown:
            raise InputError(
                f"settings: unknown setting(s) {sorted(unknown)}; "
                f"expected some of {sorted(self.__dataclass_fields__)}"
            )
        if "quiet_hours" in changes and changes["quiet_hours"] is not None:
            qh = changes["quiet_hours"]
            if not isinstance(qh, (tuple, list)):
                raise InputError(
                    f"quiet_hours: expected None or (start_hour, end_hour) in 0..23, got {qh!r}"
                )
            changes["quiet_hours"] = tuple(qh)
        if "sensitive_opt_ins" in changes:
            changes["sensitive_opt_ins"] = tuple(
                sorted(set(_names(changes["sensitive_opt_ins"], "sensitive_opt_ins")))
            )
        if "context_overrides" in changes:
            overrides = changes["context_overrides"]
            if not isinstance(overrides, Mapping):
                raise InputError(
                    "context_overrides: expected a mapping of context to signal names, "
                    f"got {overrides!r}"
                )
            changes["context_overrides"] = {
                k: tuple(sorted(set(_names(v, f"context_overrides[{k!r}]"))))
                for k, v in overrides.items()
            }
        return replace(self, **changes).validated()

    def to_json(self) -> str:
        data = asdict(self)
        data["context_overrides"] = {k: list(v) for k, v in self.context_overrides.items()}
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Settings:
        data = json.loads(text)
        if data.get("quiet_hours") is not None:
            data["quiet_hours"] = tuple(data["quiet_hours"])
        data["sensitive_opt_ins"] = tuple(data.get("sensitive_opt_ins", ()))
        data["context_overrides"] = {
            k: tuple(v) for k, v in data.get("context_overrides", {}).items()
        }
        return cls(**data)


def _names(value: object, arg: str) -> list[str]:
    """A list, tuple or set of strings (a lone string is refused, not split into letters)."""
    if not isinstance(value, (list, tuple, set, frozenset)) or not all(
        isinstance(v, str) for v in value
    ):
        raise InputError(f"{arg}: expected a list of names, got {value!r}")
    return list(value)
