"""``make eval``: MovieLens-100K through the real code paths, against a centralised ALS.

Steps (docs/evaluation.md has the full method):

1. Temporal split per user (last 20% by (timestamp, item id) is the test set); a validation
   split is carved from training the same way.
2. Template fleets: one device store per user holding its training (or train′) ratings as
   purchases, with reporting consent and on-device attributes; cells share them.
3. Tuning on validation only, with the same budget for both: localrank's knobs (w_dot, w_prior)
   and ALS's (factors, regularisation, alpha, iterations).
4. Each grid cell: copies of the template stores; the training period replayed day by day
   (reports under the bundle's L and budgets, the real ingest and aggregation publishing a
   signed bundle weekly), up to a cap after it; then every device ranks its unseen movies with
   ``Engine.recommend`` at levels off (popularity), coarse (segment) and full (on-device).
5. Metrics: NDCG@10, HR@10, catalog coverage; a markdown table, JSON and a PNG plot.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from localrank.bundle import build_bundle, generate_keypair
from localrank.device.engine import Tuning
from localrank.server.cohorts import round_zero
from tools.evaluation.als import als_rankings, tune_als
from tools.evaluation.ceilings import popularity_rankings, segment_popularity_rankings
from tools.evaluation.fleet import Fleet, build_fleet, recommend_all, run_reports
from tools.evaluation.grid import DEFAULT_GRID, QUICK_GRID, Cell
from tools.evaluation.metrics import Quality, quality
from tools.evaluation.movie_catalog import movielens_catalog, movielens_taxonomy
from tools.evaluation.split import Split, temporal_split
from tools.movielens import MovieLens100K, load_movielens_100k

__all__ = ["EvaluationSettings", "evaluate"]

LEVELS = ("off", "coarse", "full")
D = 32


@dataclass(frozen=True)
class EvaluationSettings:
    cells: tuple[Cell, ...] = DEFAULT_GRID
    tuning_budget: int = 10
    cap_days: int = 28
    user_fraction: float = 1.0
    device_fractions: tuple[float, ...] = (0.25, 0.5)
    workers: int = 2
    seed: int = 0

    @classmethod
    def quick(cls) -> EvaluationSettings:
        return cls(
            cells=QUICK_GRID,
            tuning_budget=4,
            cap_days=14,
            user_fraction=0.3,
            device_fractions=(),
            workers=2,
        )


@dataclass
class Workspace:
    root: Path
    key: Path
    public_key: Path
    data: MovieLens100K
    split: Split
    validation: Split
    users: np.ndarray


def _bundle(ws: Workspace, cell: Cell) -> bytes:
    catalog, taxonomy, config = movielens_catalog(ws.data, D), movielens_taxonomy(), cell.config(D)
    return build_bundle(
        catalog=catalog,
        taxonomy=taxonomy,
        config=config,
        cohorts=round_zero(catalog, taxonomy, config) if config.cohort_slots else None,
        version=1,
        created=float(ws.data.ratings.timestamp.min()) - 86400,
        expires=float(ws.data.ratings.timestamp.max()) + 400 * 86400,
        signing_key=ws.key.read_bytes(),
    )


def _cell_run(
    args: tuple[Workspace, Fleet, Cell, int, Tuning, Sequence[Tuning], str],
) -> dict[str, Any]:
    """One cell (in a worker process): reports → aggregation → rankings → metrics."""
    from localrank.server.aggregate import AggregationSettings
    from tools.evaluation.aggregation import SimulatedServer

    ws, template, cell, cap_days, _, tunings, tag = args
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f"cell-{tag}-", dir=ws.root))
    fleet = template.copy_to(work / "devices")
    base = _bundle(ws, cell)
    span_days = int((ws.data.ratings.timestamp.max() - ws.data.ratings.timestamp.min()) // 86400)
    settings = AggregationSettings(window_epochs=span_days + cap_days + 14, noise=cell.noise)
    server = SimulatedServer(work / "server", base, ws.key.read_bytes(), settings)
    run = run_reports(
        fleet,
        server,
        base,
        first_day=min(d.first_t for d in fleet.devices),
        last_day=max(d.last_t for d in fleet.devices),
        cap_days=cap_days,
    )
    rounds = server.cohort_rounds()
    server.close()
    shutil.rmtree(work / "devices", ignore_errors=True)
    part = ws.validation if tag.startswith("val") else ws.split
    # validation tunes the on-device ranker only: rank at level full alone
    levels = ("full",) if tag.startswith("val") else LEVELS
    ranked = recommend_all(
        template.copy_to(work / "rank"), run.final_bundle, levels, tunings, seen=part.items("train")
    )
    relevant_all = part.items("test")
    relevant = [relevant_all[d.user] for d in fleet.devices]
    metrics = {
        f"{level}/{j}": quality(r, relevant, part.n_items).as_dict()
        for (level, j), r in ranked.items()
    }
    shutil.rmtree(work, ignore_errors=True)
    return {
        "cell": asdict(cell),
        "name": cell.name,
        "unit": cell.unit,
        **_guarantee(cell, run.epochs),
        "tag": tag,
        "devices": len(fleet.devices),
        "epochs": run.epochs,
        "drained": run.drained,
        "reports": run.reports,
        "engagement_reports": run.engagements,
        "census_reports": run.censuses,
        "training_events": run.events,
        "reported_share": run.reported_share,
        "memos": run.memos,
        "metrics": metrics,
        # per published bundle: cohorts carried and published (populations ≥ k)
        "cohort_rounds": rounds,
        "seconds": time.perf_counter() - t0,
    }


def _guarantee(cell: Cell, epochs: int) -> dict[str, Any]:
    """The device-level figures of a ``device-30-days`` cell: its ε and ρ per 30 days, and the
    ε over the device's whole simulated history (``epochs`` days: its 30-day windows' ρ add up)
    and over the bundle's published horizon. Other cells carry None."""
    from localrank.privacy.continual import epsilon_for_rho, history_rho

    g = cell.config(D).central_guarantee
    if g is None:
        return {"epsilon_30_days": None, "rho_30_days": None, "epsilon_history": None,
                "history_days": None, "delta": None}  # fmt: skip
    return {
        "epsilon_30_days": g.epsilon_window,
        "rho_30_days": g.rho_window,
        "epsilon_history": epsilon_for_rho(history_rho(g.rho_window, max(epochs, 1)), g.delta),
        "history_days": epochs,
        "epsilon_published_horizon": g.epsilon_history,
        "published_horizon_days": g.history_days,
        "delta": g.delta,
        "mechanism": g.mechanism,
        "cadence_days": g.cadence_days,
        "reports_per_window": g.reports_per_window,
    }


def tuning_grid(budget: int, seed: int) -> list[Tuning]:
    """``budget`` (w_dot, w_prior) pairs: the product default first, then a random search."""
    rng = np.random.default_rng(seed)
    out = [Tuning()]
    while len(out) < budget:
        out.append(
            Tuning(
                w_dot=float(10 ** rng.uniform(-2, 1)), w_prior=float(10 ** rng.uniform(-2, 1))
            )
        )
    return out[:budget]


def evaluate(
    settings: EvaluationSettings,
    out: Path,
    *,
    data: MovieLens100K | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> dict[str, Any]:
    """Run the evaluation; write ``out/evaluation.{json,md,png}``; return the JSON data."""
    t_start = time.perf_counter()
    say = progress or (lambda stage, frac: None)
    data = data or load_movielens_100k()
    split = temporal_split(data)
    validation = split.carve_validation()
    rng = np.random.default_rng(settings.seed)
    n_users = split.n_users
    users = np.sort(
        rng.choice(n_users, size=max(2, round(settings.user_fraction * n_users)), replace=False)
    )
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="localrank-eval-", dir=_scratch()))
    try:
        return _evaluate(settings, out, data, split, validation, users, rng, root, say, t_start)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _evaluate(
    settings: EvaluationSettings,
    out: Path,
    data: MovieLens100K,
    split: Split,
    validation: Split,
    users: np.ndarray,
    rng: np.random.Generator,
    root: Path,
    say: Callable[[str, float], None],
    t_start: float,
) -> dict[str, Any]:
    key, pub = root / "server-key.pem", root / "server-key.pub.pem"
    generate_keypair(key, pub)
    ws = Workspace(root, key, pub, data, split, validation, users)

    default = Cell("ldp", 2.0, 50)
    say("fleets", 0.0)
    base = _bundle(ws, default)
    tunings = tuning_grid(settings.tuning_budget, settings.seed)
    results: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=settings.workers) as pool:
        # Tuning, on validation only, with the same budget for both. The validation cell runs
        # in a worker while this process builds the test fleet and tunes ALS.
        val_fleet = build_fleet(root / "tpl-val", data, validation, users, base, pub)
        val_job = pool.submit(
            _cell_run, (ws, val_fleet, default, settings.cap_days, Tuning(), tunings, "val")
        )
        test_fleet = build_fleet(root / "tpl-test", data, split, users, base, pub)
        say("fleets", 1.0)
        als_params, als_val = tune_als(
            split.subsample_users(users), settings.tuning_budget, settings.seed
        )
        val = val_job.result()
        full_scores = [val["metrics"][f"full/{j}"]["ndcg@10"] for j in range(len(tunings))]
        best = tunings[int(np.argmax(full_scores))]
        say("tuning", 1.0)

        # The grid (and the device-count study).
        jobs = [
            (ws, test_fleet, cell, settings.cap_days, best, [best], f"c{i}")
            for i, cell in enumerate(settings.cells)
        ]
        for frac in settings.device_fractions:
            keep = np.sort(rng.choice(users, size=max(2, round(frac * users.size)), replace=False))
            small = Fleet(
                test_fleet.directory,
                test_fleet.public_key,
                tuple(d for d in test_fleet.devices if d.user in set(keep.tolist())),
            )
            jobs.append((ws, small, default, settings.cap_days, best, [best], f"n{frac:g}"))
        for i, r in enumerate(pool.map(_cell_run, jobs)):
            results.append(r)
            say("grid", (i + 1) / len(jobs))

    # The centralised reference on the test split, for the full user set and the subsets.
    relevant_all = split.items("test")

    def als_quality(user_set: np.ndarray) -> Quality:
        s = split.subsample_users(user_set)
        ranked = als_rankings(s, als_params, seed=settings.seed)
        return quality(
            [ranked[u] for u in user_set.tolist()],
            [relevant_all[u] for u in user_set.tolist()],
            split.n_items,
        )

    als = als_quality(users)
    own = split.subsample_users(users)
    relevant_users = [relevant_all[u] for u in users.tolist()]
    ceilings = {
        "popularity": quality(popularity_rankings(own, users), relevant_users, split.n_items),
        "segment_popularity": quality(
            segment_popularity_rankings(own, data, users), relevant_users, split.n_items
        ),
    }
    scaling = []
    for r in results:
        if r["tag"].startswith("n"):
            kept = np.array([d.user for d in jobs[results.index(r)][1].devices])
            scaling.append(
                {
                    "devices": r["devices"],
                    "full": r["metrics"]["full/0"],
                    "popularity": r["metrics"]["off/0"],
                    "als": als_quality(kept).as_dict(),
                }
            )
    whole = [r for r in results if r["tag"].startswith("c") and r["name"] == default.name]
    if scaling and whole:  # the study's last point: the default cell on every device
        scaling.append(
            {
                "devices": whole[0]["devices"],
                "full": whole[0]["metrics"]["full/0"],
                "popularity": whole[0]["metrics"]["off/0"],
                "als": als.as_dict(),
            }
        )
    report = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {**asdict(settings), "cells": [c.name for c in settings.cells]},
        "data": {
            "source": data.source,
            "users": int(users.size),
            "items": split.n_items,
            "train": int(split.train.size),
            "test": int(split.test.size),
        },
        "tuning": {
            "localrank": asdict(best) | {"rules": asdict(best.rules)},
            "localrank_validation_ndcg": max(full_scores),
            "als": asdict(als_params),
            "als_validation_ndcg": als_val.ndcg,
        },
        "als": als.as_dict(),
        "ceilings": {name: q.as_dict() for name, q in ceilings.items()},
        "cells": [r for r in results if r["tag"].startswith("c")],
        "devices_study": scaling,
        "seconds": time.perf_counter() - t_start,
    }
    (out / "evaluation.json").write_text(json.dumps(report, indent=2, default=float))
    (out / "evaluation.md").write_text(markdown(report))
    plot(report, out / "evaluation.png")
    return report


def _scratch() -> str | None:
    """A RAM-backed scratch directory when the machine has one (thousands of small stores)."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def markdown(report: dict[str, Any]) -> str:
    """The quality table."""
    als = report["als"]["ndcg@10"]
    lines = [
        f"MovieLens-100K, {report['data']['users']} devices, temporal split (last 20% per user). "
        f"ALS (centralised, all raw training data): NDCG@10 {als:.4f}, "
        f"HR@10 {report['als']['hr@10']:.4f}, coverage {report['als']['coverage']:.3f}.",
        "",
        "| cell | unit | popularity NDCG@10 | segment NDCG@10 | on-device full NDCG@10 | "
        "full / ALS | full HR@10 | full coverage | epochs | reported | ε whole history |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["cells"]:
        m = r["metrics"]
        full = m["full/0"]
        history = r.get("epsilon_history")
        whole = "" if history is None else f"{history:.2f} over {r['history_days']} d"
        lines.append(
            f"| {r['name']} | {r.get('unit', '')} | {m['off/0']['ndcg@10']:.4f} | "
            f"{m['coarse/0']['ndcg@10']:.4f} | "
            f"{full['ndcg@10']:.4f} | {full['ndcg@10'] / als:.0%} | {full['hr@10']:.4f} | "
            f"{full['coverage']:.3f} | {r['epochs']} | {r['reported_share']:.0%} | "
            f"{whole} |"
        )
    lines += [
        "",
        "Per cell: the cohorts in the last bundle (of them published, population ≥ k), and the "
        "memo spend per device (memoised permanent responses, ε_perm each; their ε in the "
        "device's worst 30 days, mean and max, against the 30-day budget):",
        "",
        "| cell | cohorts (published) | memos per device, mean / max | memo ε in 30 days, "
        "mean / max | memo share of that window's spend |",
        "|---|---|---|---|---|",
    ]
    for r in report["cells"]:
        rounds = r.get("cohort_rounds") or [{"cohorts": 0, "published": 0}]
        memo = r.get("memos") or {}
        spend = (
            f"{memo['memos_mean']:.1f} / {memo['memos_max']:.0f} | "
            f"{memo['memo_epsilon_30_days_mean']:.1f} / {memo['memo_epsilon_30_days_max']:.0f} | "
            f"{memo['memo_share_of_30_day_spend_mean']:.0%}"
            if memo
            else " | | "
        )
        lines.append(
            f"| {r['name']} | {rounds[-1]['cohorts']} ({rounds[-1]['published']}) | {spend} |"
        )
    ceilings = report.get("ceilings", {})
    if ceilings:
        names = {
            "popularity": "popularity from the raw ratings",
            "segment_popularity": "popularity within the user's top genre, from the raw ratings",
        }
        lines += [
            "",
            "Centralised, from the raw training data, with no noise, budget or threshold, using "
            "only what may cross the boundary (docs/evaluation.md):",
            "",
            "| reference | NDCG@10 | / ALS | HR@10 |",
            "|---|---|---|---|",
        ]
        for name, q in ceilings.items():
            lines.append(
                f"| {names.get(name, name)} | {q['ndcg@10']:.4f} | {q['ndcg@10'] / als:.0%} | "
                f"{q['hr@10']:.4f} |"
            )
    if report["devices_study"]:
        lines += [
            "",
            "| devices | popularity NDCG@10 | on-device full NDCG@10 | ALS NDCG@10 | full / ALS |",
            "|---|---|---|---|---|",
        ]
        for s in sorted(report["devices_study"], key=lambda s: s["devices"]):
            lines.append(
                f"| {s['devices']} | {s['popularity']['ndcg@10']:.4f} | "
                f"{s['full']['ndcg@10']:.4f} | {s['als']['ndcg@10']:.4f} | "
                f"{s['full']['ndcg@10'] / s['als']['ndcg@10']:.0%} |"
            )
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """NDCG@10 against ε for each mode and k, with ALS and popularity for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    series: dict[str, list[tuple[float, float]]] = {}
    flat: list[tuple[str, float]] = []
    for r in report["cells"]:
        c = r["cell"]
        ndcg = r["metrics"]["full/0"]["ndcg@10"]
        if c["epsilon"] is None:
            flat.append((f"k-anonymity only, k={c['min_population']}", ndcg))
        else:
            unit = r.get("unit", "")
            series.setdefault(f"{c['mode']} ({unit}), k={c['min_population']}", []).append(
                (c["epsilon"], ndcg)
            )
    for name, pts in sorted(series.items()):
        pts.sort()
        ax.plot(
            [p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"on-device full, {name}"
        )
    for name, y in flat:
        ax.axhline(y, linestyle=":", linewidth=1, label=name, color="gray")
    ax.axhline(report["als"]["ndcg@10"], color="black", linewidth=1.2, label="ALS (centralised)")
    pops = [r["metrics"]["off/0"]["ndcg@10"] for r in report["cells"]]
    if pops:
        ax.axhline(
            float(np.median(pops)),
            color="tab:red",
            linestyle="--",
            linewidth=1,
            label="popularity (level off)",
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("ε (per report in ldp; per device-epoch or per device over 30 days in central)")
    ax.set_ylabel("NDCG@10")
    ax.set_title("MovieLens-100K: quality against privacy")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
