"""Folding one closed epoch's raw reports into partial sums, and reading them back.

Everything the bundle is built from is a linear count, so partial sums merge by addition: two
ingest workers, two shards of an epoch, or two epochs add up. Per epoch and configuration
(mode, oracle, ε, ε_perm) there are two kinds:

``census``
    ``support[d_seg]``: the supports ``S_j`` of the randomised finest segments (GRR: reports
    equal to ``j``; OUE: reports with bit ``j`` set), and ``n``.
``engagement``
    Over every offer of the catalog × the four events × the *tracked* segments (those usable
    in the bundle current at fold time, and the root; devices report their active segment,
    which is always one of them): ``ldp`` mode stores supports and ``n[offer, event]``;
    ``central`` mode stores the counts themselves.

Noise is added here, once per epoch, and the exact values are discarded:

- every count that is not itself an LDP output (``n`` of each group, and the ``central``
  counts) gets discrete Laplace noise (:func:`localrank.privacy.oracles.discrete_laplace`) at the
  bundle's
  central ε. The sensitivity is ``L`` (``report_limit``) for engagement counts, since a device
  sends at most ``L`` engagement reports per epoch, and 1 for census counts (at most one
  census per epoch). Noise covers every cell, present or not, so in ``central`` mode which
  offers were reported is itself private. In ``ldp`` mode it is not, and the wire contract
  does not claim it: the offer travels in the clear, and the supports of the tracked segments
  count its reports up to binomial thinning (``estimate.engagement`` uses them for popularity).
- LDP supports need no noise: they are already randomised on the device.

The estimator then uses the noised ``ñ`` for ``n``; ``E[ñ] = n``, so ``(S − ñ·q)/(p − q)``
stays unbiased, with ``q²·Var(Z)/(p − q)²`` more variance.

What one report may carry is bounded here (``docs/privacy-math.md``, "Forged reports"):

- an OUE report that sets more bits in some subtree than an honest one would
  (:func:`localrank.server.debias.oue_report_cap`; census: every subtree, engagement: the tracked
  segments of every subtree) is dropped, neither summed nor counted;
- a group whose configuration cannot be folded (not a valid oracle and ε's, as older servers
  may have stored) is skipped and logged: one stored report never stops a fold.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from localrank.errors import InputError
from localrank.privacy.oracles import (
    discrete_laplace,
    effective_probabilities,
    packed_len,
    unpack_bits,
)
from localrank.server.debias import oue_report_cap
from localrank.server.ingest import parse_config
from localrank.server.storage import ReportRow, SumRow

__all__ = [
    "EVENTS",
    "CensusSums",
    "EngagementSums",
    "decode_sum",
    "fold_reports",
]

#: The wire's engagement events, in the order of the ``event`` axis.
EVENTS = ("impression", "click", "conversion", "dismiss")
_EVENT_INDEX = {e: i for i, e in enumerate(EVENTS)}
LOG = logging.getLogger("localrank.server.aggregate")
#: Reports are unpacked this many at a time, to bound memory (OUE bits are d_seg bytes each).
_CHUNK = 20_000


@dataclass(frozen=True)
class CensusSums:
    """One epoch's census supports for one configuration."""

    config: str
    support: np.ndarray  # int64[d_seg]
    n: int  # noised number of reports


@dataclass(frozen=True)
class EngagementSums:
    """One epoch's engagement sums for one configuration."""

    config: str
    offers: tuple[str, ...]
    segments: np.ndarray  # int64[T]: the tracked segment ids
    values: np.ndarray  # int64[offers, 4, T]: ldp supports, or noised central counts
    n: np.ndarray  # int64[offers, 4]: noised report counts (ldp), or zeros (central)


def _blob(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, allow_pickle=False, **arrays)
    return buf.getvalue()


def decode_sum(row: SumRow) -> CensusSums | EngagementSums:
    """A stored partial sum as arrays."""
    with np.load(io.BytesIO(row.data), allow_pickle=False) as z:
        if row.kind == "census":
            return CensusSums(row.config, z["support"].astype(np.int64), row.n)
        return EngagementSums(
            row.config,
            tuple(str(x) for x in z["offers"].tolist()),
            z["segments"].astype(np.int64),
            z["values"].astype(np.int64),
            z["n"].astype(np.int64),
        )


def children_order(parents: np.ndarray) -> np.ndarray:
    """Segment ids deepest first (a child before its parent)."""
    depth = np.zeros(parents.size, dtype=np.int64)
    for s in range(1, parents.size):  # the builder lists parents before children
        depth[s] = depth[parents[s]] + 1
    order: np.ndarray = np.asarray(np.argsort(-depth, kind="stable"))
    return order


def subtree_counts(per_item: np.ndarray, parents: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``per_item`` (``(d,)`` or ``(m, d)``) summed over each segment's subtree."""
    acc: np.ndarray = np.array(per_item, dtype=np.int64 if per_item.dtype.kind in "biu" else None)
    for s in order:
        if s != 0:
            acc[..., parents[s]] += acc[..., s]
    return acc


def kept_per_subtree(keep: np.ndarray, parents: np.ndarray, order: np.ndarray) -> np.ndarray:
    """How many of the segments ``keep`` lie in each segment's subtree (int64)."""
    in_keep = np.zeros(parents.size, dtype=np.int64)
    in_keep[keep] = 1
    return subtree_counts(in_keep, parents, order)


def _supports(
    oracle: str,
    segments: list[int],
    bits: list[bytes],
    d_seg: int,
    keep: np.ndarray,
    caps: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per report, the indicator of each kept segment ``j`` (GRR ``value == j``, OUE bit j),
    and which reports are plausible. With ``caps = (parents, order, cap)``, an OUE report
    whose set bits among ``keep`` exceed ``cap`` in some subtree is implausible."""
    m = len(segments) if oracle != "oue" else len(bits)
    out = np.zeros((m, keep.size), dtype=np.uint8)
    plausible = np.ones(m, dtype=bool)
    if oracle == "oue":
        width = packed_len(d_seg)
        for start in range(0, m, _CHUNK):
            raw = np.frombuffer(b"".join(bits[start : start + _CHUNK]), dtype=np.uint8)
            unpacked = unpack_bits(raw.reshape(-1, width), d_seg)
            out[start : start + _CHUNK] = unpacked[:, keep]
            if caps is not None:
                parents, order, cap = caps
                kept = np.zeros_like(unpacked, dtype=np.int32)
                kept[:, keep] = unpacked[:, keep]
                within = subtree_counts(kept, parents, order) <= cap[None, :]
                plausible[start : start + _CHUNK] = within.all(axis=1)
    else:
        values = np.asarray(segments, dtype=np.int64)
        out[:] = values[:, None] == keep[None, :]
    return out, plausible


def _noised(counts: np.ndarray, epsilon: float | None, sensitivity: int) -> np.ndarray:
    if epsilon is None:  # the evaluation's no-noise reference
        return counts.astype(np.int64)
    noisy: np.ndarray = discrete_laplace(counts.astype(np.int64), Fraction(epsilon), sensitivity)
    return noisy


def fold_reports(
    rows: Sequence[ReportRow],
    *,
    epoch: int,
    d_seg: int,
    parents: np.ndarray,
    offers: Sequence[str],
    tracked: np.ndarray,
    central_epsilon: float,
    report_limit: int,
    part: str = "all",
    noise: bool = True,
) -> list[SumRow]:
    """The partial sums of one epoch's raw reports, noised as the module docstring says.

    Args:
        rows: the epoch's raw reports.
        epoch: the epoch they belong to.
        d_seg: the segment domain size.
        parents: the segment table's parent ids (a central report outside ``tracked`` counts
            for its nearest tracked ancestor).
        offers: the catalog's offer ids (the engagement axis).
        tracked: the segment ids to keep engagement sums for; must include the root (0).
        central_epsilon: the bundle's central ε.
        report_limit: ``L``, the sensitivity of engagement counts.
        part: the name of this partial sum (a shard, a worker).
        noise: False only for the evaluation's no-noise reference (k-anonymity alone); a
            server never turns it off.

    Raises:
        InputError: naming the argument.
    """
    tracked = np.unique(np.asarray(tracked, dtype=np.int64))
    if tracked.size == 0 or tracked[0] != 0 or tracked[-1] >= d_seg:
        raise InputError(f"tracked: expected segment ids in [0, {d_seg}) including the root 0")
    if report_limit < 1:
        raise InputError(f"report_limit: expected ≥ 1, got {report_limit}")
    eps: float | None = central_epsilon if noise else None
    offer_index = {o: i for i, o in enumerate(offers)}
    col = {int(s): i for i, s in enumerate(tracked)}
    groups: dict[tuple[str, str], list[ReportRow]] = {}
    for r in rows:
        groups.setdefault((r.kind, r.config), []).append(r)
    out: list[SumRow] = []
    order = children_order(parents)
    for (kind, config), group in sorted(groups.items()):
        try:
            row = _fold_group(
                kind, config, group, epoch=epoch, d_seg=d_seg, parents=parents, order=order,
                offers=offers, offer_index=offer_index, col=col, tracked=tracked, eps=eps,
                report_limit=report_limit, part=part,
            )  # fmt: skip
        except (InputError, ValueError, OverflowError, ZeroDivisionError) as e:
            # Stored by a server that did not check configurations: skipped, never fatal.
            LOG.warning(
                "fold: epoch %d: %d %s reports of configuration %r skipped: %s",
                epoch, len(group), kind, config, e,
            )  # fmt: skip
            continue
        out.append(row)
    return out


def _fold_group(
    kind: str,
    config: str,
    group: list[ReportRow],
    *,
    epoch: int,
    d_seg: int,
    parents: np.ndarray,
    order: np.ndarray,
    offers: Sequence[str],
    offer_index: dict[str, int],
    col: dict[int, int],
    tracked: np.ndarray,
    eps: float | None,
    report_limit: int,
    part: str,
) -> SumRow:
    mode, oracle, e, perm = parse_config(config)
    q = 0.0
    if mode == "ldp":
        if oracle not in ("grr", "oue") or e is None:
            raise InputError(f"config: {config!r} is not an LDP configuration")
        _, q = effective_probabilities(oracle, d_seg, e, perm)
    elif (mode, oracle, e, perm) != ("central", "none", None, None):
        raise InputError(f"config: {config!r} is not a known configuration")
    if kind == "census":
        if mode != "ldp":
            raise InputError("config: a census is always LDP")
        ind, plausible = _plausible_supports(
            group, oracle, q, d_seg, np.arange(d_seg), parents, order, (epoch, kind, config)
        )
        support = ind[plausible].sum(axis=0, dtype=np.int64)
        n_census = int(_noised(np.array([int(plausible.sum())]), eps, 1)[0])
        return SumRow(epoch, config, kind, part, n_census, _blob(support=support))
    known = [r for r in group if r.offer in offer_index and r.event in _EVENT_INDEX]
    shape = (len(offers), len(EVENTS), tracked.size)
    values = np.zeros(shape, dtype=np.int64)
    n = np.zeros(shape[:2], dtype=np.int64)
    if mode == "central":
        oi = np.array([offer_index[r.offer or ""] for r in known], dtype=np.int64)
        ei = np.array([_EVENT_INDEX[r.event or ""] for r in known], dtype=np.int64)
        seg_cols = np.array(
            [col[_nearest_tracked(r.segment or 0, col, parents)] for r in known],
            dtype=np.int64,
        )
        np.add.at(values, (oi, ei, seg_cols), 1)
        values = _noised(values, eps, report_limit)
    else:
        ind, plausible = _plausible_supports(
            known, oracle, q, d_seg, tracked, parents, order, (epoch, kind, config)
        )
        known = [r for r, ok in zip(known, plausible, strict=True) if ok]
        ind = ind[plausible]
        oi = np.array([offer_index[r.offer or ""] for r in known], dtype=np.int64)
        ei = np.array([_EVENT_INDEX[r.event or ""] for r in known], dtype=np.int64)
        np.add.at(values, (oi, ei), ind.astype(np.int64))
        np.add.at(n, (oi, ei), 1)
        n = _noised(n, eps, report_limit)
    blob = _blob(
        offers=np.array(list(offers), dtype=np.str_),
        segments=tracked,
        values=values.astype(np.int32),
        n=n.astype(np.int32),
    )
    # The row's n is a noised total too: no exact count outlives the fold.
    total = int(values.sum()) if mode == "central" else int(n.sum())
    return SumRow(epoch, config, kind, part, total, blob)


def _plausible_supports(
    group: list[ReportRow],
    oracle: str,
    q: float,
    d_seg: int,
    keep: np.ndarray,
    parents: np.ndarray,
    order: np.ndarray,
    where: tuple[int, str, str],
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_supports` of ``group`` over the segments ``keep``, with OUE reports that set more
    bits in some subtree's kept segments than an honest one would marked implausible (and
    logged). ``where`` is (epoch, kind, config), for the log."""
    caps = None
    if oracle == "oue":
        caps = (parents, order, oue_report_cap(kept_per_subtree(keep, parents, order), q))
    ind, plausible = _supports(
        oracle,
        [r.segment or 0 for r in group],
        [r.bits or b"" for r in group],
        d_seg,
        keep,
        caps,
    )
    _log_dropped(*where, plausible)
    return ind, plausible


def _log_dropped(epoch: int, kind: str, config: str, plausible: np.ndarray) -> None:
    dropped = int(plausible.size - plausible.sum())
    if dropped:
        LOG.warning(
            "fold: epoch %d: %d %s reports of %r dropped: more bits set in a subtree than an "
            "honest report sets (see docs/privacy-math.md)",
            epoch, dropped, kind, config,
        )  # fmt: skip


def _nearest_tracked(segment: int, col: dict[int, int], parents: np.ndarray) -> int:
    s = segment if 0 <= segment < parents.size else 0
    while s not in col:
        s = int(parents[s]) if s != 0 else 0
    return s
