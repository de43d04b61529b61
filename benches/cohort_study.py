"""An offline study of learned interest cohorts on MovieLens-100K, without the engine.

Not part of ``make test``: it checks the design of the cohorts issue end to end with only the
mathematical core (``localrank.server.cohort_fit``, ``localrank.device.fold_in``) and the
evaluation's split, ALS and metrics, so the lead can see what the wiring should reach.

What crosses the boundary here is what the design lets cross: per round, each device's cohort
id (nearest centroid of its own fold-in) and, per engagement, (cohort id, movie). The server
sees only the cohort × movie counts and the cohort populations.

- Devices: every MovieLens user; a device's history is its training ratings (weight 1 each).
- Round 0: factors and cohorts from the genres (one cohort per genre; one run adds one per pair
  of genres). Each later round: every device folds its history in with the current
  bundle, picks its nearest cohort, and reports all its training ratings under it (an
  idealisation: the product reports under ``L`` and the ε budget); the server merges cohorts
  below ``min_population`` (50), fits V by weighted ALS warm-started from the previous V,
  updates the centroids, splits the largest ones and matches ids.
- Noise: none, or GRR at ε on the cohort id (one draw per device per round, so all its reports
  of a round carry the same randomised id, like a memoised response), de-biased with the
  unbiased estimator; populations' lower bounds are ``n̂ − 1.96·sd``.
- Ranking: ``score = V̂·u + β·log1p(pop)/log1p(max pop)``, with ``u`` the device's fold-in of
  its whole training history and ``pop`` the movie's total of the (de-biased) cohort counts.
- Tuning: the design's knobs (f, λ, λ_V, α, β) and ALS's get the validation split carved from
  training, never the test split; ALS uses ``evaluation/als.py``'s random search (10 configs).

Run: ``PYTHONPATH=python:. .venv/bin/python benches/cohort_study.py`` (about two minutes on two
cores).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from dataclasses import dataclass, replace

import numpy as np
from tools.evaluation.als import als_rankings, tune_als
from tools.evaluation.cohort_sim import assign, fold_ins, own_items, rank
from tools.evaluation.metrics import Quality, quality
from tools.evaluation.split import Split, temporal_split
from tools.movielens import load_movielens_100k

from localrank.server.cohort_fit import CohortSettings, cohort_round, initial_model

ID_RANGE = (10_000, 12_000)  # any reserved range of the segment domain


@dataclass(frozen=True)
class Design:
    settings: CohortSettings
    pairs: bool = False
    epsilon: float | None = None  # GRR on the cohort id; None: no noise


def grr(values: np.ndarray, k: int, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    p = math.exp(epsilon) / (math.exp(epsilon) + k - 1)
    keep = rng.random(values.size) < p
    other = rng.integers(0, k - 1, size=values.size)
    other = other + (other >= values)  # uniform over the k − 1 other values
    return np.where(keep, values, other)


def observe(
    cohort: np.ndarray,
    items: list[np.ndarray],
    C: int,
    n_items: int,
    epsilon: float | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(counts [C, items], sizes [C], variances [C]) as the server estimates them."""
    active = np.flatnonzero(cohort >= 0)
    sent = cohort.copy()
    if epsilon is not None and C > 1:
        sent[active] = grr(cohort[active], C, epsilon, rng)
    S = np.zeros((C, n_items))
    for d in active.tolist():
        np.add.at(S[sent[d]], items[d], 1.0)
    census = np.bincount(sent[active], minlength=C).astype(float)
    if epsilon is None or C == 1:
        return S, census, np.zeros(C)
    p = math.exp(epsilon) / (math.exp(epsilon) + C - 1)
    q = 1.0 / (math.exp(epsilon) + C - 1)
    N = active.size
    n_hat = (census - N * q) / (p - q)
    # GRR's variance at the estimated population (clipped to what is possible)
    n_c = np.clip(n_hat, 0, N)
    var = (N * q * (1 - q) + n_c * (p * (1 - p) - q * (1 - q))) / (p - q) ** 2
    totals = S.sum(axis=0, keepdims=True)
    R_hat = (S - totals * q) / (p - q)
    return R_hat, n_hat, var


@dataclass
class Stage:
    label: str
    cohorts: int
    moved: float  # share of devices whose cohort id changed since the previous round
    memos: float  # mean distinct cohort ids a device has held so far: permanent memos spent
    by_beta: dict[float, Quality]


def run(
    split: Split,
    genres: list[list[int]],
    n_genres: int,
    design: Design,
    rounds: int,
    betas: list[float],
    seed: int = 0,
) -> list[Stage]:
    """Stages: 'content' (bundle 0), then 'round r' after the r-th fit (r = 1 fits on the
    genre cohorts' aggregates)."""
    rng = np.random.default_rng(seed)
    items = own_items(split)
    relevant = split.items("test")
    model, _ = initial_model(
        genres, n_genres, id_range=ID_RANGE, settings=design.settings, pairs=design.pairs
    )
    payload = model.payload
    stages: list[Stage] = []
    pop = np.zeros(split.n_items)
    prev_ids: np.ndarray | None = None
    held: list[set[int]] = [set() for _ in items]
    for r in range(rounds + 1):
        U = fold_ins(payload, items)
        cohort = assign(payload, U)
        ids_now = np.full(cohort.size, -1)
        ids_now[cohort >= 0] = payload.ids[cohort[cohort >= 0]]
        moved = float(np.mean(ids_now != prev_ids)) if prev_ids is not None else float("nan")
        prev_ids = ids_now
        for d, c in enumerate(ids_now.tolist()):
            if c >= 0:
                held[d].add(c)
        if r > 0 or not stages:
            stages.append(
                Stage(
                    "content" if r == 0 else f"round {r}",
                    int(payload.ids.size),
                    moved,
                    float(np.mean([len(h) for h in held])),
                    {
                        b: quality(rank(payload, U, pop, b, items), relevant, split.n_items)
                        for b in betas
                    },
                )
            )
        if r == rounds:
            break
        R, n, var = observe(cohort, items, payload.ids.size, split.n_items, design.epsilon, rng)
        pop = np.clip(R, 0, None).sum(axis=0)
        payload = cohort_round(
            payload,
            R,
            n,
            var,
            n_devices=float(np.sum(cohort >= 0)),
            id_range=ID_RANGE,
            settings=design.settings,
        ).model.payload
    return stages


def best_beta(stage: Stage) -> tuple[float, Quality]:
    return max(stage.by_beta.items(), key=lambda kv: kv[1].ndcg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--als-budget", type=int, default=10)
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = ap.parse_args()
    t0 = time.monotonic()
    data = load_movielens_100k(fetch=False)
    split = temporal_split(data)
    val = split.carve_validation()
    index = {g: k for k, g in enumerate(data.genres)}
    genres = [[index[g] for g in gs] for gs in data.items.genres]
    betas = [0.0, 0.03, 0.1, 0.3, 1.0]

    als_params, als_val = tune_als(split, args.als_budget)
    als_test = quality(als_rankings(split, als_params), split.items("test"), split.n_items)
    print(f"ALS tuned on validation: {als_params} (validation NDCG@10 {als_val.ndcg:.4f})")
    print(f"ALS test: NDCG@10 {als_test.ndcg:.4f}  HR@10 {als_test.hr:.4f}  "
          f"coverage {als_test.coverage:.3f}   [{time.monotonic() - t0:.0f} s]")  # fmt: skip

    # The design's knobs, tuned on validation with no noise over 3 rounds (β is free: every
    # β is scored from the same fit).
    base = CohortSettings(factors=32, min_population=50)
    grid = [
        replace(base, factors=f, regularization=lam, offer_regularization=lam_v, alpha=alpha)
        for f, lam, lam_v, alpha in itertools.product(
            [32], [1.0, 3.0, 10.0], [10.0, 30.0], [0.0, 5.0]
        )
    ]
    best: tuple[float, CohortSettings, float] | None = None
    for s in grid:
        stage = run(val, genres, len(data.genres), Design(s), 3, betas)[-1]
        b, q = best_beta(stage)
        print(f"  validation λ={s.regularization} λ_V={s.offer_regularization} α={s.alpha}: "
              f"NDCG@10 {q.ndcg:.4f} (β={b})")  # fmt: skip
        if best is None or q.ndcg > best[0]:
            best = (q.ndcg, s, b)
    assert best is not None
    _, settings, beta = best
    print(f"chosen on validation: λ={settings.regularization} λ_V={settings.offer_regularization}"
          f" α={settings.alpha} f={settings.factors} β={beta}   "
          f"[{time.monotonic() - t0:.0f} s]")  # fmt: skip

    results: dict[str, object] = {
        "als": {"params": vars(als_params), **als_test.as_dict()},
        "settings": {k: v for k, v in vars(settings).items()},
        "beta": beta,
        "runs": {},
    }
    for label, design in (
        ("no noise, k=50", Design(settings)),
        ("GRR ε=2 on the cohort id, k=50", Design(settings, epsilon=2.0)),
        ("no noise, k=50, int8 factors", Design(replace(settings, encoding="int8"))),
        ("no noise, k=50, genre pairs in round 0", Design(settings, pairs=True)),
    ):
        stages = run(split, genres, len(data.genres), design, args.rounds, [beta])
        print(f"\n{label}:")
        print("| stage | cohorts | moved | memos | NDCG@10 | / ALS | HR@10 | coverage |")
        print("|---|---|---|---|---|---|---|---|")
        rows = []
        for st in stages:
            q = st.by_beta[beta]
            print(f"| {st.label} | {st.cohorts} | {st.moved:.0%} | {st.memos:.2f} | {q.ndcg:.4f} | "
                  f"{q.ndcg / als_test.ndcg:.0%} | {q.hr:.4f} | {q.coverage:.3f} |")  # fmt: skip
            rows.append({"stage": st.label, "cohorts": st.cohorts, "moved": st.moved,
                         "memos": st.memos,
                         **q.as_dict(), "share_of_als": q.ndcg / als_test.ndcg})  # fmt: skip
        results["runs"][label] = rows  # type: ignore[index]
    print(f"\n[{time.monotonic() - t0:.0f} s]")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
