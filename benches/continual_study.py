"""Continual release: per-epoch noise summed vs tree aggregation vs square-root factorisation.

    python benches/continual_study.py [--days 240] [--reports-per-window 30] [--delta 1e-6]
        [--census-epsilon 0 --census-per-window 0] [--simulate CELLS] [--json FILE]

At the same device-level zCDP ρ per 30 days (from ε ∈ {0.5, 1, 2, 4} at δ), for releases every
1, 7 and 30 days over ``--days`` days, it prints the per-cell RMSE of an all-time count: at the
final release, and averaged (root of the mean variance) over all releases. The figures are the
mechanisms' exact noise variances (``noise_variance``, which ``tests/test_continual.py`` checks
against measurement, plus 1/12 for rounding where the estimate is real-valued). With
``--simulate CELLS`` it also runs each mechanism with real OpenDP noise over ``CELLS`` cells and
prints the measured RMSEs beside them.

The RMSE does not see staleness: a 30-day cadence publishes a count up to 29 days late.
Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from localrank.privacy.continual import (
    Calibration,
    calibrate,
    census_rho,
    epsilon_for_rho,
    history_rho,
    rho_for_epsilon,
)

EPSILONS = (0.5, 1.0, 2.0, 4.0)
CADENCES = (1, 7, 30)
KINDS = (
    ("summed", "per-epoch noise, summed (today)"),
    ("tree", "tree aggregation"),
    ("sqrt", "square-root factorisation"),
)


def _rounding(kind: str) -> float:
    return 0.0 if kind == "summed" else 1.0 / 12.0


def _simulate(cal: Calibration, cells: int) -> tuple[float, float]:
    """Measured RMSE (final, over all releases) with real noise on a fixed stream."""
    mech = cal.mechanism(cells)
    sq = []
    for t in range(1, cal.horizon + 1):
        err = mech.release(np.ones(cells, dtype=np.int64)) - t
        sq.append(float(np.mean(err.astype(np.float64) ** 2)))
    return math.sqrt(sq[-1]), math.sqrt(float(np.mean(sq)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=240)
    ap.add_argument("--reports-per-window", type=int, default=30, help="W")
    ap.add_argument("--delta", type=float, default=1e-6)
    ap.add_argument("--census-epsilon", type=float, default=0.0)
    ap.add_argument("--census-per-window", type=int, default=0)
    ap.add_argument("--simulate", type=int, default=0, metavar="CELLS")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    rho_c = census_rho(args.census_epsilon, args.census_per_window)
    rows = []
    print(
        f"W = {args.reports_per_window} reports per device per 30 days, each offer once; "
        f"{args.days} days; δ = {args.delta:g}; census ρ = {rho_c:.4g} per window"
    )
    for eps in EPSILONS:
        rho = rho_for_epsilon(eps, args.delta)
        eps_hist = epsilon_for_rho(history_rho(rho, args.days), args.delta)
        print(
            f"\n### ε = {eps:g} per 30 days (ρ = {rho:.5f}); over {args.days} days "
            f"ε = {eps_hist:.2f}\n"
        )
        head = "| mechanism | cadence | releases | RMSE final | RMSE mean |"
        if args.simulate:
            head += " measured final | measured mean |"
        print(head)
        print("|" + "---|" * (head.count("|") - 1))
        for kind, label in KINDS:
            for cadence in CADENCES:
                cal = calibrate(
                    kind,
                    rho_window=rho,
                    history_days=args.days,
                    cadence_days=cadence,
                    reports_per_window=args.reports_per_window,
                    rho_census=rho_c,
                    delta=args.delta,
                )
                final = math.sqrt(cal.final_variance + _rounding(kind))
                mean = math.sqrt(cal.mean_variance + _rounding(kind))
                row = {
                    "epsilon": eps,
                    "rho": rho,
                    "epsilon_history": eps_hist,
                    "mechanism": kind,
                    "cadence_days": cadence,
                    "releases": cal.horizon,
                    "rmse_final": final,
                    "rmse_mean": mean,
                }
                line = f"| {label} | {cadence} d | {cal.horizon} | {final:.1f} | {mean:.1f} |"
                if args.simulate:
                    mf, mm = _simulate(cal, args.simulate)
                    row |= {"measured_final": mf, "measured_mean": mm}
                    line += f" {mf:.1f} | {mm:.1f} |"
                print(line)
                rows.append(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
