"""``python -m tools.evaluation`` (``make eval``, ``make eval-quick``): the MovieLens-100K
evaluation from the source tree."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

__all__ = ["main"]


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markdown import Markdown
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from tools.evaluation.run import EvaluationSettings, evaluate

    settings = EvaluationSettings.quick() if args.quick else EvaluationSettings()
    overrides = {
        name: getattr(args, name)
        for name in ("workers", "cap_days", "user_fraction", "tuning_budget")
        if getattr(args, name) is not None
    }
    settings = replace(settings, **overrides)
    console = Console()
    stages = {
        "fleets": "recording training events",
        "tuning": "tuning on validation",
        "grid": "grid cells",
    }
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        tasks = {k: bar.add_task(v, total=1.0) for k, v in stages.items()}

        def progress(stage: str, frac: float) -> None:
            bar.update(tasks[stage], completed=frac)

        report = evaluate(settings, Path(args.out), progress=progress)
    console.print(Markdown((Path(args.out) / "evaluation.md").read_text()))
    console.print(f"wrote {args.out}/evaluation.{{md,json,png}} in {report['seconds']:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and run the evaluation; returns the exit status."""
    p = argparse.ArgumentParser(
        prog="python -m tools.evaluation",
        description="MovieLens-100K: quality against privacy, vs. ALS",
    )
    p.add_argument("--quick", action="store_true", help="a small grid on a third of the users")
    p.add_argument("--out", default="eval-results", help="output directory")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default 2)")
    p.add_argument("--cap-days", type=int, default=None, help="days simulated after training")
    p.add_argument("--user-fraction", type=float, default=None, help="share of users")
    p.add_argument("--tuning-budget", type=int, default=None, help="configurations per model")
    return _cmd_evaluate(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
