"""Central mode's continual release: all-time engagement counts under one device-level
guarantee per 30 days (docs/privacy.md, docs/continual-release.md).

When the current bundle's config carries a ``central_guarantee``, central engagement reports
no longer get per-epoch noise at fold time. Instead:

1. **Fold.** A closed epoch's central engagement reports become *exact* counts per offer ×
   event × tracked segment, stored as a partial sum of kind :data:`EXACT_KIND`. Nothing
   publishes that kind; it lives until the release step that covers its epoch has been made
   (the aggregation's purge keeps the sums of the last ``cadence_days`` epochs).
2. **Release.** Every ``cadence_days`` epochs, once all of them are closed, their exact counts
   go into the mechanism (:mod:`localrank.privacy.continual`: the square-root factorisation by
   default), which draws its discrete Gaussian noise (OpenDP) and returns the noised all-time
   counts. The mechanism's state after the step is stored as one row ``(series, step)``: the
   primary key makes each step's noise drawn and kept once, whatever the number of workers; a
   worker that loses the race discards its draw, which was never published.
3. **Publish.** Every bundle publishes the latest step's counts, re-read from the stored state
   with ``latest()``: no fresh noise, so a restarted server or a second publish cannot be
   averaged.

A *series* is one set of counters: one calibration and one cell layout (the catalog's offers ×
the 4 events × the segments tracked when the series started; a report from a segment outside
the layout counts for its nearest ancestor inside it). A series ends when its calibrated
horizon of releases is used up, or when the guarantee changes; the next series starts from the
next unreleased epoch and carries the previous one's final counts (already published, so
carrying them costs no privacy), adding their variances.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from localrank.bundle import Bundle, CentralGuarantee
from localrank.errors import InputError
from localrank.privacy.continual import (
    SqrtFactorisation,
    SummedEpochNoise,
    TreeAggregation,
    calibrate,
    mechanism_class,
)
from localrank.server.ingest import config_key
from localrank.server.storage import ReleaseRow, ReportRow, Storage, SumRow
from localrank.server.sums import EVENTS, EngagementSums, decode_sum, fold_reports

__all__ = [
    "CENTRAL_CONFIG",
    "EXACT_KIND",
    "CentralRelease",
    "exact_central_sums",
    "latest_release",
    "release_due",
    "split_central",
]

#: The partial sums that hold exact central counts until their release step. Never published.
EXACT_KIND = "engagement-exact"
#: The configuration key of every central engagement report.
CENTRAL_CONFIG = config_key("central", "none", None, None)
#: Rounding each release to integers adds a uniform error of this variance per cell.
_ROUNDING_VARIANCE = 1.0 / 12.0

Mechanism = SqrtFactorisation | TreeAggregation | SummedEpochNoise


def split_central(rows: Sequence[ReportRow]) -> tuple[list[ReportRow], list[ReportRow]]:
    """(central engagement reports, everything else) of one epoch's raw reports."""
    central = [r for r in rows if r.kind == "engagement" and r.config == CENTRAL_CONFIG]
    rest = [r for r in rows if not (r.kind == "engagement" and r.config == CENTRAL_CONFIG)]
    return central, rest


def exact_central_sums(
    rows: Sequence[ReportRow],
    *,
    epoch: int,
    d_seg: int,
    parents: np.ndarray,
    offers: Sequence[str],
    tracked: np.ndarray,
) -> list[SumRow]:
    """One epoch's central engagement reports as exact counts (kind :data:`EXACT_KIND`)."""
    if not rows:
        return []
    folded = fold_reports(
        rows, epoch=epoch, d_seg=d_seg, parents=parents, offers=offers, tracked=tracked,
        central_epsilon=1.0, report_limit=1, noise=False,
    )  # fmt: skip
    return [replace(s, kind=EXACT_KIND) for s in folded if s.config == CENTRAL_CONFIG]


@dataclass(frozen=True)
class CentralRelease:
    """The latest release: noised all-time counts per offer × event × segment."""

    series: int
    step: int
    first_epoch: int  # the series' first epoch
    through_epoch: int  # the last epoch counted
    offers: tuple[str, ...]
    segments: npt.NDArray[np.int64]
    counts: npt.NDArray[np.int64]  # [offers, 4, segments]
    variance: float  # of each cell's noise (0 without noise)

    def as_sums(self) -> EngagementSums:
        """The release in the shape the statistics read."""
        return EngagementSums(
            CENTRAL_CONFIG,
            self.offers,
            self.segments,
            self.counts,
            np.zeros((len(self.offers), len(EVENTS)), dtype=np.int64),
        )


@dataclass
class _Series:
    """A series as stored: its layout, what it carries from earlier series, its mechanism."""

    series: int
    first_epoch: int
    offers: tuple[str, ...]
    segments: npt.NDArray[np.int64]
    base: npt.NDArray[np.int64]  # carried all-time counts, flattened like the cells
    base_variance: float
    mechanism: Mechanism
    noise: bool
    cadence_days: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.offers), len(EVENTS), int(self.segments.size))

    def release(self) -> CentralRelease:
        step = self.mechanism.steps
        variance = 0.0
        if step and self.noise:
            variance = self.mechanism.noise_variance(step) + _ROUNDING_VARIANCE
        return CentralRelease(
            series=self.series,
            step=step,
            first_epoch=self.first_epoch,
            through_epoch=self.first_epoch + step * self.cadence_days - 1,
            offers=self.offers,
            segments=self.segments,
            counts=(self.base + self.mechanism.latest()).reshape(self.shape),
            variance=self.base_variance + variance,
        )

    def to_blob(self) -> bytes:
        arrays: dict[str, Any] = {
            f"m_{k}": v for k, v in self.mechanism.state().items()
        }
        arrays.update(
            offers=np.array(self.offers, dtype=np.str_),
            segments=self.segments,
            base=self.base,
            base_variance=np.array(self.base_variance),
            noise=np.array(self.noise),
            cadence_days=np.array(self.cadence_days, dtype=np.int64),
        )
        buf = io.BytesIO()
        np.savez_compressed(buf, allow_pickle=False, **arrays)
        return buf.getvalue()

    @classmethod
    def from_row(cls, row: ReleaseRow) -> _Series:
        with np.load(io.BytesIO(row.data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        state = {k[2:]: v for k, v in arrays.items() if k.startswith("m_")}
        kind = str(np.asarray(state.get("kind", "")))
        noise = bool(arrays["noise"])
        mechanism = mechanism_class(kind).from_state(state, noise=None if noise else _no_noise)
        return cls(
            series=row.series,
            first_epoch=row.first_epoch,
            offers=tuple(str(o) for o in arrays["offers"].tolist()),
            segments=arrays["segments"].astype(np.int64),
            base=arrays["base"].astype(np.int64),
            base_variance=float(arrays["base_variance"]),
            mechanism=mechanism,
            noise=noise,
            cadence_days=int(arrays["cadence_days"]),
        )


def _no_noise(sigma: float, shape: tuple[int, ...]) -> npt.NDArray[np.int64]:
    """The evaluation's no-noise reference: the same counters, exact."""
    return np.zeros(shape, dtype=np.int64)


def _calibrated(guarantee: CentralGuarantee, cells: int, noise: bool) -> Mechanism:
    cal = calibrate(
        guarantee.mechanism,
        rho_window=guarantee.rho_window,
        history_days=guarantee.history_days,
        cadence_days=guarantee.cadence_days,
        reports_per_window=guarantee.reports_per_window,
        reports_per_epoch=guarantee.reports_per_epoch,
        rho_census=guarantee.rho_census,
        delta=guarantee.delta,
    )
    mechanism: Mechanism = mechanism_class(cal.kind)(
        cells, cal.horizon, cal.sigma, noise=None if noise else _no_noise
    )
    return mechanism


def _same_calibration(a: Mechanism, b: Mechanism) -> bool:
    return (
        a.kind == b.kind
        and a.horizon == b.horizon
        and math.isclose(a.sigma, b.sigma, rel_tol=1e-12)
    )


def _mapped(
    values: npt.NDArray[np.int64],
    offers: Sequence[str],
    segments: npt.NDArray[np.int64],
    onto: _Series,
    parents: np.ndarray,
) -> npt.NDArray[np.int64]:
    """``values`` [offers, 4, segments] added onto ``onto``'s layout: offers by id (offers no
    longer in it are dropped), each segment to its nearest ancestor in the layout."""
    out = np.zeros(onto.shape, dtype=np.int64)
    row = {o: i for i, o in enumerate(onto.offers)}
    col = {int(s): i for i, s in enumerate(onto.segments)}
    oi = np.array([row.get(o, -1) for o in offers], dtype=np.int64)
    keep = oi >= 0
    if not keep.any():
        return out
    ci = np.array([col[_nearest(int(s), col, parents)] for s in segments], dtype=np.int64)
    ei = np.arange(len(EVENTS))
    np.add.at(
        out,
        (oi[keep][:, None, None], ei[None, :, None], ci[None, None, :]),
        values[keep].astype(np.int64),
    )
    return out


def _nearest(segment: int, col: dict[int, int], parents: np.ndarray) -> int:
    s = segment if 0 <= segment < parents.size else 0
    while s not in col:
        s = int(parents[s]) if s != 0 else 0
    return s


def _new_series(
    number: int,
    first_epoch: int,
    guarantee: CentralGuarantee,
    bundle: Bundle,
    tracked: np.ndarray,
    noise: bool,
    carried: _Series | None,
) -> _Series:
    segments = np.unique(np.concatenate([np.asarray(tracked, dtype=np.int64), [0]]))
    offers = tuple(bundle.catalog.ids)
    cells = len(offers) * len(EVENTS) * int(segments.size)
    series = _Series(
        series=number,
        first_epoch=first_epoch,
        offers=offers,
        segments=segments,
        base=np.zeros(cells, dtype=np.int64),
        base_variance=0.0,
        mechanism=_calibrated(guarantee, cells, noise),
        noise=noise,
        cadence_days=guarantee.cadence_days,
    )
    if carried is not None:
        last = carried.release()
        series.base = _mapped(
            last.counts, last.offers, last.segments, series, bundle.segments.parents
        ).reshape(-1)
        series.base_variance = last.variance
    return series


def release_due(
    storage: Storage,
    bundle: Bundle,
    *,
    closed: int,
    now: float,
    tracked: np.ndarray,
    noise: bool = True,
) -> tuple[list[tuple[int, int]], CentralRelease | None]:
    """Make every release step whose epochs are all closed (below ``closed``) and folded; return
    the ``(series, step)`` made by this call and the latest release (None before the first).

    Raises:
        InputError: naming ``bundle`` when its config has no central guarantee.
    """
    guarantee = bundle.config.central_guarantee
    if guarantee is None:
        raise InputError("bundle: its config publishes no central guarantee to release under")
    cadence = guarantee.cadence_days
    parents = bundle.segments.parents
    made: list[tuple[int, int]] = []
    while True:
        row = storage.latest_release()
        current: _Series | None = None
        if row is not None:
            current = _Series.from_row(row)
            if current.noise != noise:
                raise InputError(
                    "noise: the stored release series was made "
                    f"{'with' if current.noise else 'without'} noise"
                )
        step = 0 if current is None else current.mechanism.steps
        if current is None:
            first = _first_exact_epoch(storage, closed)
            if first is None:
                return made, None
            target = _new_series(1, first, guarantee, bundle, tracked, noise, None)
        elif step >= current.mechanism.horizon or not _same_calibration(
            current.mechanism, _calibrated(guarantee, 1, noise)
        ):
            # the horizon is used up, or the guarantee changed: new counters, same history
            target = _new_series(
                current.series + 1, current.first_epoch + step * cadence, guarantee, bundle,
                tracked, noise, current,
            )  # fmt: skip
        else:
            target = current
        next_step = target.mechanism.steps
        start = target.first_epoch + next_step * cadence
        if start + cadence > closed:
            latest = current if target is not current and current is not None else target
            return made, (latest.release() if latest.mechanism.steps else None)
        counts = np.zeros(target.shape, dtype=np.int64)
        for r in storage.sums(start, start + cadence - 1):
            if r.kind != EXACT_KIND or r.config != CENTRAL_CONFIG:
                continue
            s = decode_sum(r)
            assert isinstance(s, EngagementSums)
            counts += _mapped(s.values, s.offers, s.segments, target, parents)
        target.mechanism.release(counts.reshape(-1))
        stored = ReleaseRow(
            target.series, next_step + 1, target.first_epoch, now, target.to_blob()
        )
        if storage.add_release(stored):
            made.append((target.series, next_step + 1))
        # else another worker released this step first: ours was never published, theirs is
        # read back on the next turn


def latest_release(storage: Storage) -> CentralRelease | None:
    """The latest stored release, re-read without drawing noise (None before the first)."""
    row = storage.latest_release()
    if row is None:
        return None
    return _Series.from_row(row).release()


def _first_exact_epoch(storage: Storage, closed: int) -> int | None:
    """The first epoch with exact central counts: where the first series starts."""
    folded = storage.folded_epochs()
    if not folded:
        return None
    epochs = [r.epoch for r in storage.sums(folded[0], closed - 1) if r.kind == EXACT_KIND]
    return min(epochs) if epochs else None
