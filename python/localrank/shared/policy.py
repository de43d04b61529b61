"""Contextual integrity: which signals each calling context may use.

One store serves the whole device and every call names the calling app's context. The policy
maps each context to the signal kinds it may use; a signal recorded anywhere is used only where
the *current* context allows its kind, so location recorded by a navigation app never ranks
offers inside a game. One more row, ``segments``, says what may shape the segment that leaves
the device: purchases, browsing and the coarse region — never precise location.

Demographics (age band, occupation, region) are on-device attributes. No default row lets them
rank offers; the region is the one attribute that may shape a segment, and only through the
``segments`` row's ``region`` permission.

Users can tighten the table for themselves (remove signals from a context); they cannot widen it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from localrank.errors import InputError

__all__ = [
    "DEFAULT_POLICY",
    "EVENT_KINDS",
    "EVENT_SIGNAL",
    "SEGMENTS_ROW",
    "SIGNALS",
    "Policy",
]

SIGNALS = ("location", "purchases", "browsing", "app_usage", "demographics")
#: What may shape the outgoing segment; "region" is the coarse place, never a location.
SEGMENTS_ROW = "segments"
_SEGMENT_SIGNALS = ("purchases", "browsing", "app_usage", "demographics", "region")

#: Device event kinds and the signal each one is. Impressions are what the app showed, not
#: something the user did: they count for caps and fatigue only.
EVENT_SIGNAL: dict[str, str | None] = {
    "impression": None,
    "click": "browsing",
    "view": "browsing",
    "dismiss": "browsing",
    "purchase": "purchases",
    "visit": "location",
    "app_use": "app_usage",
}
EVENT_KINDS = tuple(EVENT_SIGNAL)

_ALL = frozenset(SIGNALS)
DEFAULT_POLICY: dict[str, frozenset[str]] = {
    "navigation": frozenset({"location", "purchases", "browsing"}),
    "game": frozenset({"browsing", "app_usage"}),
    "shopping": frozenset({"purchases", "browsing", "location"}),
    "news": frozenset({"browsing"}),
    "social": frozenset({"browsing"}),
    # A health app gets context and popularity only: nothing personal ranks offers there.
    "health": frozenset(),
    "entertainment": frozenset({"browsing", "app_usage", "purchases"}),
    SEGMENTS_ROW: frozenset({"purchases", "browsing", "region"}),
}
#: Contexts a bundle adds beyond the default table start from this conservative row.
UNLISTED_CONTEXT = frozenset({"browsing"})


@dataclass(frozen=True)
class Policy:
    """The default table, tightened by the user's overrides."""

    overrides: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def allowed(self, context: str) -> frozenset[str]:
        """The signal kinds ``context`` may use (for ``segments``: what may shape a segment)."""
        base = DEFAULT_POLICY.get(context, UNLISTED_CONTEXT)
        if context in self.overrides:
            return base & self.overrides[context]
        return base

    def allows(self, context: str, signal: str) -> bool:
        return signal in self.allowed(context)

    def table(self, contexts: Sequence[str]) -> dict[str, list[str]]:
        """The effective table for display: every context plus the ``segments`` row."""
        return {c: sorted(self.allowed(c)) for c in [*contexts, SEGMENTS_ROW]}

    @staticmethod
    def validate_overrides(
        overrides: Mapping[str, Sequence[str]], contexts: Sequence[str]
    ) -> dict[str, frozenset[str]]:
        """Check user overrides: known contexts, known signals, and only tightening."""
        out: dict[str, frozenset[str]] = {}
        for ctx, signals in overrides.items():
            if ctx != SEGMENTS_ROW and ctx not in contexts:
                raise InputError(
                    f"context_overrides: unknown context {ctx!r}; expected one of "
                    f"{[*contexts, SEGMENTS_ROW]}"
                )
            known = _SEGMENT_SIGNALS if ctx == SEGMENTS_ROW else SIGNALS
            bad = [s for s in signals if s not in known]
            if bad:
                raise InputError(
                    f"context_overrides[{ctx!r}]: unknown signals {bad}; expected some of {known}"
                )
            base = DEFAULT_POLICY.get(ctx, UNLISTED_CONTEXT)
            wider = sorted(set(signals) - base)
            if wider:
                raise InputError(
                    f"context_overrides[{ctx!r}]: overrides can only remove signals; "
                    f"{wider} are not allowed there by default"
                )
            out[ctx] = frozenset(signals)
        return out
