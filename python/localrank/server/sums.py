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
  counts) gets discrete Laplace noise (:func:`localrank.ldp.discrete_laplace`) at the bundle's
  central ε. The sensitivity is ``L`` (``report_limit``) for engagement counts, since a device
  sends at most ``L`` engagement reports per epoch, and 1 for census counts (at most one
  census per epoch). Noise covers every cell, present or not, so which offers were reported
  is itself private.
- LDP supports need no noise: they are already randomised on the device.

The estimator then uses the noised ``ñ`` for ``n``; ``E[ñ] = n``, so ``(S − ñ·q)/(p − q)``
stays unbiased, with ``q²·Var(Z)/(p − q)²`` more variance.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from localrank.errors import InputError
from localrank.ldp import discrete_laplace, packed_len, unpack_bits
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


def _supports(
    oracle: str, segments: list[int], bits: list[bytes], d_seg: int, keep: np.ndarray
) -> np.ndarray:
    """Per report, the indicator of each kept segment ``j``: GRR ``value == j``, OUE bit j."""
    m = len(segments) if oracle != "oue" else len(bits)
    out = np.zeros((m, keep.size), dtype=np.uint8)
    if oracle == "oue":
        width = packed_len(d_seg)
        for start in range(0, m, _CHUNK):
            raw = np.frombuffer(b"".join(bits[start : start + _CHUNK]), dtype=np.uint8)
            out[start : start + _CHUNK] = unpack_bits(raw.reshape(-1, width), d_seg)[:, keep]
    else:
        values = np.asarray(segments, dtype=np.int64)
        out[:] = values[:, None] == keep[None, :]
    return out


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
    for (kind, config), group in sorted(groups.items()):
        mode, oracle, _, _ = parse_config(config)
        if kind == "census":
            every = np.arange(d_seg)
            ind = _supports(
                oracle,
                [r.segment or 0 for r in group],
                [r.bits or b"" for r in group],
                d_seg,
                every,
            )
            support = ind.sum(axis=0, dtype=np.int64)
            n_census = int(_noised(np.array([len(group)]), eps, 1)[0])
            out.append(SumRow(epoch, config, kind, part, n_census, _blob(support=support)))
            continue
        known = [r for r in group if r.offer in offer_index and r.event in _EVENT_INDEX]
        oi = np.array([offer_index[r.offer or ""] for r in known], dtype=np.int64)
        ei = np.array([_EVENT_INDEX[r.event or ""] for r in known], dtype=np.int64)
        shape = (len(offers), len(EVENTS), tracked.size)
        values = np.zeros(shape, dtype=np.int64)
        n = np.zeros(shape[:2], dtype=np.int64)
        if mode == "central":
            seg_cols = np.array(
                [col[_nearest_tracked(r.segment or 0, col, parents)] for r in known],
                dtype=np.int64,
            )
            np.add.at(values, (oi, ei, seg_cols), 1)
            values = _noised(values, eps, report_limit)
        else:
            ind = _supports(
                oracle,
                [r.segment or 0 for r in known],
                [r.bits or b"" for r in known],
                d_seg,
                tracked,
            )
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
        out.append(SumRow(epoch, config, kind, part, total, blob))
    return out


def _nearest_tracked(segment: int, col: dict[int, int], parents: np.ndarray) -> int:
    s = segment if 0 <= segment < parents.size else 0
    while s not in col:
        s = int(parents[s]) if s != 0 else 0
    return s
