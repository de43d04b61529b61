"""SIMULATION — ``make eval-scale``: how the learned cohorts fare as the fleet grows past
MovieLens' 943 users, on synthetic devices. Not part of ``make eval``; nothing here is a
measurement on real people.

**Devices.** Synthetic histories from a Poisson factorisation fitted to MovieLens-100K
(:mod:`tools.evaluation.synthetic`: activity, item popularity and co-engagement are
MovieLens'), at N = 943 (reference), 1,000, 10,000 and 100,000 devices. Per device, the last
20% of its draws are its test set (:func:`tools.evaluation.split.histories_split`). The real
MovieLens split runs through the same pipeline too, to show how far the synthetic data is
from the real one.

**The privacy pipeline without the engine** (100,000 engines do not fit in 15 minutes): every
step is the product's own function, driven by the product's MovieLens configuration
(:func:`tools.evaluation.movie_catalog.movielens_config`: 24 cohort slots, ``d_seg = 25``,
ε = 2, ε_perm = 4, L = 3, central ε = 1, 30-day budget 64, weekly census) with
``min_population`` k = 50:

1. Round 0 (:func:`localrank.server.cohort_fit.initial_model`): content factors and one cohort
   per genre.
2. Each week (a census interval) every device folds its training history in with the current
   bundle (:func:`localrank.device.fold_in.fold_in`, weight 1 per movie) and joins the nearest
   centroid (:func:`~localrank.device.fold_in.nearest_cohort`). It sends one census (its
   cohort) and up to ``B`` engagement reports (cohort, movie) for the next movies of its
   history not yet reported, oldest first. The cohort id goes through the product's chained
   oracle (:mod:`localrank.privacy.oracles`, the oracle ``choose_oracle(d_seg, ε)`` picks: OUE
   at d_seg = 25): a permanent response with ε_perm memoised per (device, value), then a fresh
   instantaneous response with ε per report.
   ``B`` approximates the product's budgets in steady state: a report spends ε = 2 of a
   rolling 30-day budget of 64, so a week affords ``⌊64·7/30 / 2⌋ = 7`` reports, one of them
   the census: ``B = min(7·L, 6) = 6`` (the accountant's exact day-by-day schedule would let a
   device with a backlog burst 3 a day first and then starve, census included).
3. The server (:mod:`localrank.server.statistics`, which de-biases with
   :mod:`localrank.server.debias`): the week's census sums (discrete-Laplace noise on ``n``,
   sensitivity 1) give the populations and their variances; the engagement sums of every week
   so far (within the 28-epoch window; noise on every ``n[offer, event]``, sensitivity L) give
   the de-biased cohort × movie counts and the popularity. A cohort round follows
   :func:`localrank.server.cohorts.next_cohorts`:
   :func:`~localrank.server.cohort_fit.cohort_round` with sizes, variances, the forged-report
   margin and the census total as the fleet size.
4. After the last round each device ranks its unseen movies with the last bundle:
   ``off`` = the published popularity bias alone, ``popularity_weight · log1p(p) /
   log1p(max p)`` with ``p`` the lower end of the 95% interval of the privatised engagement
   counts (as :mod:`localrank.server.aggregate` publishes it); ``full`` = ``w_dot·(u·V_i)`` +
   that bias with the product's defaults (``w_dot = 1``, weight 0.2), ``u`` the device's fold-in
   of its whole training history. The engine's third term, the segment's category prior, is
   left out (it needs the catalog's category tree; on MovieLens it adds little).

References on the same synthetic training data: raw popularity (exact training counts) and
`implicit`'s ALS (:mod:`tools.evaluation.als`), tuned once on the validation carved from the
1,000-device fleet with the evaluation's budget and used at every N. Metrics
(:mod:`tools.evaluation.metrics`) are computed on the same sample of at most 10,000 devices for
every method (ALS is trained on all devices; coverage depends on how many devices are scored,
so it compares methods within a row, not across N). A no-noise reference (cohort ids and counts
in the clear, same reports) runs when ``--no-noise`` is given (the default target runs it).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from localrank.bundle import BundleConfig
from localrank.bundle.cohorts import CohortPayload
from localrank.privacy import oracles
from localrank.server.aggregate import AggregationSettings
from localrank.server.cohort_fit import cohort_round, initial_model
from localrank.server.cohorts import cohort_settings
from localrank.server.ingest import config_key
from localrank.server.statistics import (
    EVENT_WEIGHTS,
    engagement,
    populations,
)
from localrank.server.sums import EVENTS, CensusSums, EngagementSums
from localrank.shared.segments import ROOT, SegmentTable, build_segments
from tools.evaluation.als import AlsParams, als_rankings, tune_als
from tools.evaluation.cohort_sim import assign, fold_ins, rank
from tools.evaluation.metrics import Quality, quality
from tools.evaluation.movie_catalog import movielens_config, movielens_taxonomy, offer_id
from tools.evaluation.split import Split, histories_split, temporal_split
from tools.evaluation.synthetic import (
    ITERATIONS,
    draw_histories,
    fit_taste_model,
    implicit_matrix,
)
from tools.movielens import load_movielens_100k

__all__ = ["Fleet", "Outcome", "simulate", "weekly_reports"]

FLEET_SIZES = (943, 1_000, 10_000, 100_000)
K = 50
ROUNDS = 4
EVAL_SAMPLE = 10_000
CONVERSION = EVENTS.index("conversion")  # a rating is recorded as a purchase (a conversion)


def weekly_reports(config: BundleConfig) -> int:
    """``B``: engagement reports per device per census interval in steady state (module
    docstring): what the rolling 30-day budget affords, less the census, at most ``L`` a day."""
    per_interval = config.window_epsilon * config.census_interval_days / 30.0
    reports = math.floor(per_interval / config.epsilon + 1e-9)
    return max(0, min(config.report_limit * config.census_interval_days, reports - 1))


@dataclass(frozen=True)
class Fleet:
    """Devices, each with its ordered training items, and the genres of the catalog."""

    split: Split
    train: list[np.ndarray]  # per device, training items in draw (time) order
    genres: list[list[int]]  # per item, genre indices
    n_genres: int

    @property
    def n_devices(self) -> int:
        return self.split.n_users


def fleet_of(split: Split, genres: list[list[int]], n_genres: int) -> Fleet:
    rows = split.train[np.lexsort((split.timestamp[split.train], split.user[split.train]))]
    bounds = np.flatnonzero(np.diff(split.user[rows])) + 1
    train: list[np.ndarray] = [np.zeros(0, np.int64) for _ in range(split.n_users)]
    for chunk in np.split(rows, bounds):
        if chunk.size:
            train[int(split.user[chunk[0]])] = split.item[chunk].astype(np.int64)
    return Fleet(split, train, genres, n_genres)


@dataclass
class Outcome:
    """What one simulated fleet ends with."""

    payload: CohortPayload
    popularity: np.ndarray  # what "off" ranks by (the lower end of the 95% interval)
    cohorts: int  # cohorts in the last bundle
    published: int  # of which with a published population (measured, lower bound ≥ k)
    reports: int  # engagement reports sent, over all weeks
    #: mean distinct segment values a device reported under: each is a permanent response
    #: (ε_perm) the device drew and keeps
    memos: float
    reported_share: float  # of all training engagements
    seconds: float


class _Memos:
    """Each device's permanent responses, one per (device, true value), drawn on first use
    with the product's randomiser (its test-only seed keeps the simulation reproducible)."""

    def __init__(self, n: int, d: int, oracle: oracles.Oracle, eps_perm: float) -> None:
        self.oracle, self.d, self.eps_perm = oracle, d, eps_perm
        width = oracles.packed_len(d) if oracle is oracles.Oracle.OUE else 1
        dtype = np.uint8 if oracle is oracles.Oracle.OUE else np.int64
        self.memo = np.zeros((n, d, width), dtype=dtype)
        self.has = np.zeros((n, d), dtype=bool)

    def of(self, devices: np.ndarray, values: np.ndarray, seed: int) -> np.ndarray:
        missing = ~self.has[devices, values]
        if missing.any():
            md, mv = devices[missing], values[missing]
            perm = oracles.permanent_response(self.oracle, mv, self.d, self.eps_perm, seed=seed)
            self.memo[md, mv] = np.asarray(perm).reshape(md.size, -1)
            self.has[md, mv] = True
        rows = self.memo[devices, values]
        return rows if self.oracle is oracles.Oracle.OUE else rows[:, 0]


def _indicators(oracle: oracles.Oracle, reports: np.ndarray, d: int) -> np.ndarray:
    """uint8[m, d]: which segment each report supports (GRR: its value; OUE: its bits)."""
    if oracle is oracles.Oracle.OUE:
        return oracles.unpack_bits(reports, d).astype(np.uint8)
    out = np.zeros((reports.size, d), dtype=np.uint8)
    out[np.arange(reports.size), reports] = 1
    return out


def simulate(
    fleet: Fleet,
    config: BundleConfig,
    *,
    rounds: int = ROUNDS,
    noise: bool = True,
    seed: int = 0,
    log: Callable[[str], None] = lambda _: None,
) -> Outcome:
    """The pipeline of the module docstring; ``noise=False``: ids and counts in the clear."""
    t0 = time.monotonic()
    rng = np.random.default_rng(seed)
    segs: SegmentTable = build_segments(
        movielens_taxonomy(), config.regions, config.segment_depth, config.cohort_slots
    )
    d_seg, slots = segs.d_seg, segs.cohort_ids
    id_range = (slots.start, slots.stop)
    # the product's fit (localrank.server.cohorts.cohort_settings): in ldp mode the learning
    # cohorts stay apart; ids and counts in the clear are central mode's, which merges
    settings = cohort_settings(config)
    if not noise:
        settings = replace(settings, fit_unmerged=False, fine_cohorts=False)
    agg = AggregationSettings()
    model, _ = initial_model(fleet.genres, fleet.n_genres, id_range=id_range, settings=settings)
    payload = model.payload
    # as the bundle's ``oracle``: the config's, or for "auto" the one choose_oracle picks
    oracle = (
        oracles.choose_oracle(d_seg, config.epsilon)
        if config.oracle == "auto"
        else oracles.Oracle.parse(config.oracle)
    )
    cfg_key = config_key("ldp", oracle.value, config.epsilon, config.epsilon_perm)
    memos = _Memos(fleet.n_devices, d_seg, oracle, config.epsilon_perm)
    offers = tuple(offer_id(i) for i in range(fleet.split.n_items))
    n_items = len(offers)
    w = np.array([EVENT_WEIGHTS[e] for e in EVENTS])
    B = weekly_reports(config)
    sent = np.zeros(fleet.n_devices, dtype=np.int64)  # how far each backlog has been reported
    eng_sums: list[EngagementSums] = []
    clear_counts = np.zeros((d_seg, n_items))  # no noise: every week's (segment, item) counts
    popularity = np.zeros(n_items)
    reports = 0

    def seed_() -> int:
        return int(rng.integers(0, 2**63))

    def noised(x: np.ndarray, sensitivity: int) -> np.ndarray:
        return oracles.discrete_laplace(x, config.central_epsilon, sensitivity, seed=seed_())

    held = np.zeros((fleet.n_devices, d_seg), dtype=bool)
    cohorts_now = int(payload.ids.size)
    for week in range(rounds):
        U = fold_ins(payload, fleet.train)
        row = assign(payload, U)
        value = np.where(row >= 0, payload.ids[np.maximum(row, 0)], ROOT).astype(np.int64)
        held[np.arange(fleet.n_devices), value] = True
        # this week's engagements: the next B movies of each backlog
        lengths = np.array([t.size for t in fleet.train], dtype=np.int64)
        take = np.minimum(B, lengths - sent)
        eng_dev = np.repeat(np.arange(fleet.n_devices), take)
        pos = sent[eng_dev] + (np.arange(eng_dev.size) - np.repeat(np.cumsum(take) - take, take))
        eng_item = np.array(
            [fleet.train[d][k] for d, k in zip(eng_dev.tolist(), pos.tolist(), strict=True)],
            dtype=np.int64,
        )
        sent += take
        reports += int(eng_dev.size)
        tracked = np.unique(np.concatenate([payload.ids, [ROOT]])).astype(np.int64)
        onehot = sp.csr_matrix(
            (np.ones(eng_dev.size), (np.arange(eng_dev.size), eng_item)),
            shape=(eng_dev.size, n_items),
        )
        if not noise:
            census = np.bincount(value, minlength=d_seg).astype(np.float64)
            by_seg = sp.csr_matrix(
                (np.ones(eng_dev.size), (value[eng_dev], eng_item)), shape=(d_seg, n_items)
            )
            clear_counts += by_seg.toarray()
            popularity = w[CONVERSION] * clear_counts.sum(axis=0)
            ids = payload.ids.astype(np.int64)
            sizes = np.maximum(census[ids], 1.0)
            variances = np.zeros(ids.size)
            counts = w[CONVERSION] * clear_counts[ids]
            noise_var = np.zeros_like(counts)
            margin, n_devices = 0.0, float(census.sum())
        else:
            devices = np.arange(fleet.n_devices)
            both_dev = np.concatenate([devices, eng_dev])
            memo = memos.of(both_dev, value[both_dev], seed_())
            wire = oracles.instantaneous_response(
                oracle, memo, d_seg, config.epsilon, seed=seed_()
            )
            ind = _indicators(oracle, np.asarray(wire), d_seg)
            support = ind[: fleet.n_devices].sum(axis=0).astype(np.int64)
            n_census = int(noised(np.array([fleet.n_devices]), 1)[0])
            pops = populations(
                [CensusSums(cfg_key, support, n_census)],
                parents=segs.parents,
                min_population=config.min_population,
                central_epsilon=config.central_epsilon,
                tolerated=agg.forged_reports_tolerated,
            )
            values = np.zeros((n_items, len(EVENTS), tracked.size), dtype=np.int64)
            values[:, CONVERSION, :] = np.asarray(
                (onehot.T @ sp.csr_matrix(ind[fleet.n_devices :][:, tracked])).todense()
            ).astype(np.int64)
            n = np.zeros((n_items, len(EVENTS)), dtype=np.int64)
            n[:, CONVERSION] = np.bincount(eng_item, minlength=n_items)
            eng_sums.append(
                EngagementSums(cfg_key, offers, tracked, values, noised(n, config.report_limit))
            )
            eng = engagement(
                eng_sums[-agg.window_epochs // config.census_interval_days :],
                offers=offers,
                d_seg=d_seg,
                central_epsilon=config.central_epsilon,
                report_limit=config.report_limit,
                parents=segs.parents,
            )
            popularity = np.clip(
                eng.popularity - 1.96 * np.sqrt(eng.popularity_variance), 0, None
            )
            # as localrank.server.cohorts.next_cohorts
            ids = payload.ids.astype(np.int64)
            col = {int(s): i for i, s in enumerate(eng.tracked)}
            sizes = np.maximum(pops.estimate[ids], 1.0)
            variances = np.maximum(pops.variance[ids], 0.0)
            margin = 0.0
            if pops.influence is not None:
                margin = float(agg.forged_reports_tolerated * np.max(pops.influence[ids]))
            counts = np.zeros((ids.size, n_items))
            noise_var = np.zeros_like(counts)
            for r, cid in enumerate(ids.tolist()):
                if cid in col:
                    counts[r] = eng.scores[:, col[cid]]
                    noise_var[r] = eng.variance[:, col[cid]]
            n_devices = max(float(pops.estimate[ROOT]), 1.0)
        done = cohort_round(
            payload,
            counts,
            sizes,
            variances,
            n_devices=n_devices,
            id_range=id_range,
            settings=settings,
            margin=margin,
            count_variances=noise_var,
        )
        # what the bundle publishes a population for: measured (not split this round) and ≥ k
        published = int(
            np.sum((done.model.populations >= config.min_population) & ~done.model.provisional)
        )
        if done.model.payload.ids.size:  # none publishable: keep the centroids (next_cohorts)
            payload = done.model.payload
            cohorts_now = int(payload.ids.size)
        log(
            f"    week {week + 1}: {int(np.sum(row >= 0))} devices in "
            f"{np.unique(row[row >= 0]).size} cohorts; round → {cohorts_now} cohorts "
            f"({published} published), "
            f"merged {len(done.merged)}, split {len(done.split)}"
        )
    total = int(sum(t.size for t in fleet.train))
    return Outcome(
        payload,
        popularity,
        cohorts_now,
        published,
        reports,
        float(held.sum(axis=1).mean()),
        reports / max(total, 1),
        time.monotonic() - t0,
    )


def rankings(
    fleet: Fleet, outcome: Outcome, users: np.ndarray, weight: float
) -> dict[str, list[list[int]]]:
    """``off`` and ``full`` for ``users``."""
    seen = [fleet.train[u] for u in users.tolist()]
    U = fold_ins(outcome.payload, seen)
    f = outcome.payload.factors.shape[1]
    return {
        "off": rank(None, np.zeros((users.size, f)), outcome.popularity, weight, seen),
        "full": rank(outcome.payload, U, outcome.popularity, weight, seen),
    }


def evaluate_fleet(
    label: str,
    fleet: Fleet,
    config: BundleConfig,
    als: AlsParams,
    *,
    no_noise: bool,
    seed: int,
    log: Callable[[str], None],
) -> dict[str, object]:
    t0 = time.monotonic()
    rng = np.random.default_rng(seed)
    N = fleet.n_devices
    users = np.sort(rng.choice(N, size=min(N, EVAL_SAMPLE), replace=False))
    relevant_all = fleet.split.items("test")
    relevant = [relevant_all[u] for u in users.tolist()]
    weight = AggregationSettings().popularity_weight
    out: dict[str, object] = {"label": label, "devices": N, "evaluated": int(users.size)}

    def score(r: Sequence[Sequence[int]]) -> dict[str, float]:
        q: Quality = quality(r, relevant, fleet.split.n_items)
        return q.as_dict()

    counts = np.bincount(
        fleet.split.item[fleet.split.train], minlength=fleet.split.n_items
    ).astype(np.float64)
    seen = [fleet.train[u] for u in users.tolist()]
    methods: dict[str, dict[str, float]] = {
        "popularity (raw)": score(rank(None, np.zeros((users.size, 1)), counts, 1.0, seen))
    }
    variants = [("ε = 2", True)] + ([("no noise", False)] if no_noise else [])
    for name, noise in variants:
        log(f"  {label}: pipeline, {name}")
        o = simulate(fleet, config, noise=noise, seed=seed, log=log)
        r = rankings(fleet, o, users, weight)
        methods[f"off ({name})"] = score(r["off"])
        methods[f"full ({name})"] = score(r["full"])
        out[f"pipeline ({name})"] = {
            "cohorts": o.cohorts,
            "published": o.published,
            "engagement reports": o.reports,
            "memos per device": o.memos,
            "reported share": o.reported_share,
            "seconds": o.seconds,
        }
    t_als = time.monotonic()
    methods["ALS"] = score(als_rankings(fleet.split, als, users=users, seed=seed))
    out["als seconds"] = time.monotonic() - t_als
    out["methods"] = methods
    out["seconds"] = time.monotonic() - t0
    return out


def _markdown(results: dict[str, object]) -> str:
    rows = results["fleets"]
    assert isinstance(rows, list)
    lines = [
        "# Fleet-size SIMULATION (synthetic devices, not real people)",
        "",
        "Synthetic devices from a Poisson factorisation fitted to MovieLens-100K "
        "(docs/evaluation.md, \"Fleet-size simulation\"); the product's cohort pipeline "
        f"without the engine; k = {K}, ldp ε = 2 (ε_perm = 4), {ROUNDS} weekly rounds, "
        f"{results['weekly_reports']} engagement reports per device per week. Metrics on at most "
        f"{EVAL_SAMPLE:,} devices per fleet.",
        "",
        "| fleet | method | NDCG@10 | HR@10 | coverage | NDCG / ALS |",
        "|---|---|---|---|---|---|",
    ]
    for fl in rows:
        methods = fl["methods"]
        als = methods["ALS"]["ndcg@10"]
        for name, m in methods.items():
            lines.append(
                f"| {fl['label']} | {name} | {m['ndcg@10']:.4f} | {m['hr@10']:.4f} | "
                f"{m['coverage']:.3f} | {m['ndcg@10'] / als:.0%} |"
            )
    lines += [
        "",
        "Cohorts in the last bundle, of which with a published population (measured, lower "
        "bound ≥ k; a cohort split in the last round is provisional), engagement reports and "
        "their share of the training engagements, and the distinct cohort ids a device "
        "reported under (each a permanent response it keeps).",
        "",
        "| fleet | pipeline | cohorts | published | reports | share | memos per device | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for fl in rows:
        for key, v in fl.items():
            if key.startswith("pipeline"):
                lines.append(
                    f"| {fl['label']} | {key[10:-1]} | {v['cohorts']} | {v['published']} | "
                    f"{v['engagement reports']:,} | {v['reported share']:.0%} | "
                    f"{v['memos per device']:.2f} | {v['seconds']:.0f} |"
                )
    fit = results["model"]
    assert isinstance(fit, dict)
    lines += [
        "",
        "Generative model: " + ", ".join(f"{k} {v}" for k, v in fit.items()),
        f"ALS (tuned once on the 1,000-device fleet's validation): {results['als']}",
        f"Total {results['seconds']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ranks = [np.argsort(np.argsort(x, kind="stable"), kind="stable") for x in (a, b)]
    return float(np.corrcoef(ranks[0], ranks[1])[0, 1])


def resemblance(X: np.ndarray, fleet: Fleet, top: int = 200) -> dict[str, float]:
    """How close a synthetic fleet (ten times MovieLens' size) is to the real data: item
    popularity (Spearman), and among the ``top`` most popular movies the co-occurrence counts
    (Pearson) and their lift over independence (Spearman)."""
    scale = fleet.n_devices / X.shape[0]
    S = sp.csr_matrix(
        (np.ones(fleet.split.user.size), (fleet.split.user, fleet.split.item)),
        shape=(fleet.n_devices, X.shape[1]),
    )
    pop_real, pop_syn = X.sum(axis=0), np.asarray(S.sum(axis=0)).ravel() / scale
    items = np.argsort(-pop_real, kind="stable")[:top]
    co_real = X[:, items].T @ X[:, items]
    Si = S[:, items]
    co_syn = np.asarray((Si.T @ Si).todense()) / scale
    upper = np.triu_indices(top, 1)
    lift_real = co_real / np.outer(pop_real[items], pop_real[items])
    lift_syn = co_syn / np.outer(pop_syn[items], pop_syn[items])
    return {
        "item popularity Spearman": round(_spearman(pop_real, pop_syn), 4),
        f"co-occurrence of the top {top} Pearson": round(
            float(np.corrcoef(co_real[upper], co_syn[upper])[0, 1]), 4
        ),
        f"lift of the top {top} Spearman": round(
            _spearman(lift_real[upper], lift_syn[upper]), 4
        ),
    }


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Fleet-size SIMULATION (docs/evaluation.md)")
    ap.add_argument("--out", required=True, type=Path, help="directory for the results")
    ap.add_argument(
        "--sizes", type=int, nargs="+", default=list(FLEET_SIZES), help="fleet sizes"
    )
    ap.add_argument("--als-budget", type=int, default=6, help="ALS configurations tried")
    ap.add_argument("--no-noise", action=argparse.BooleanOptionalAction, default=True,
                    help="also run the no-noise reference")  # fmt: skip
    ap.add_argument("--fit-iterations", type=int, default=ITERATIONS,
                    help="the taste model's updates (fewer only for a quick check)")  # fmt: skip
    ap.add_argument("--cache-dir", type=Path, default=None, help="the MovieLens cache")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if any(n < 1 for n in args.sizes):
        ap.error(f"--sizes: expected fleet sizes ≥ 1, got {args.sizes}")
    if args.fit_iterations < 1:
        ap.error(f"--fit-iterations: expected ≥ 1, got {args.fit_iterations}")
    if args.als_budget < 1:
        ap.error(f"--als-budget: expected ≥ 1, got {args.als_budget}")
    t0 = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:5.0f} s] {msg}", flush=True)

    data = load_movielens_100k(args.cache_dir, fetch=False)
    index = {g: k for k, g in enumerate(data.genres)}
    genres = [[index[g] for g in gs] for gs in data.items.genres]
    X = implicit_matrix(data)
    model = fit_taste_model(X, iterations=args.fit_iterations, seed=args.seed)
    log(f"taste model fitted (log-likelihood per entry {model.log_likelihood:.4f})")
    rng = np.random.default_rng(args.seed)
    config = movielens_config(min_population=K)

    def synthetic(n: int) -> Fleet:
        histories = draw_histories(model, n, rng)
        return fleet_of(histories_split(histories, model.n_items), genres, len(data.genres))

    tune_fleet = synthetic(1_000)
    als, als_val = tune_als(tune_fleet.split, args.als_budget, seed=args.seed)
    log(f"ALS tuned: {als} (validation NDCG@10 {als_val.ndcg:.4f})")
    # how close the synthetic data is; the same pipeline also runs on the real split
    big = synthetic(10 * X.shape[0])
    activity = big.split.user.size / big.n_devices
    fit: dict[str, object] = {
        "factors": int(model.W.shape[1]),
        "log-likelihood per entry": round(model.log_likelihood, 4),
        **resemblance(X, big),
        "ratings per device": f"{X.sum(axis=1).mean():.1f} real, {activity:.1f} synthetic",
    }
    log(f"synthetic against real: {fit}")
    fleets: list[dict[str, object]] = []
    real = fleet_of(temporal_split(data), genres, len(data.genres))
    fleets.append(
        evaluate_fleet(
            "MovieLens (real, 943)", real, config, als, no_noise=args.no_noise,
            seed=args.seed, log=log,
        )
    )
    for n in args.sizes:
        fl = tune_fleet if n == 1_000 else synthetic(n)
        fleets.append(
            evaluate_fleet(
                f"synthetic {n:,}", fl, config, als, no_noise=args.no_noise,
                seed=args.seed, log=log,
            )
        )
        log(f"synthetic {n:,} done: {json.dumps(fleets[-1]['methods'])}")
    results: dict[str, object] = {
        "simulation": True,
        "description": "SIMULATION: synthetic devices from a Poisson factorisation fitted to "
        "MovieLens-100K, the product's cohort pipeline without the engine",
        "k": K,
        "epsilon": config.epsilon,
        "epsilon_perm": config.epsilon_perm,
        "rounds": ROUNDS,
        "weekly_reports": weekly_reports(config),
        "cohort_slots": config.cohort_slots,
        "model": fit,
        "als": asdict(als),
        "fleets": fleets,
        "seconds": time.monotonic() - t0,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "evaluation-scale.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "evaluation-scale.md").write_text(_markdown(results))
    log(f"wrote {args.out / 'evaluation-scale.md'}")


if __name__ == "__main__":
    main()
