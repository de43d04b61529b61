"""``make demo`` (tools/demo.py) at small scale: its base bundle carries round-0 interest
cohorts, so after the simulated days and publications the devices' recommendations explain
themselves with a cohort reason."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from tools.demo import COHORT_REASONS, run
from tools.movielens import load_movielens_100k

from localrank.errors import DataUnavailableError


def _movielens_cached() -> bool:
    try:
        load_movielens_100k(fetch=False)
    except DataUnavailableError:
        return False
    return True


@pytest.mark.parametrize("world", ["embedded", "movielens"])
def test_demo_explains_recommendations_with_cohorts(world: str) -> None:
    if world == "movielens" and not _movielens_cached():
        pytest.skip("MovieLens-100K is not cached (the demo then uses the embedded world)")
    out = io.StringIO()
    summary = run(
        Console(file=out, width=160), devices=12, days=3, k=10, quality=False, world=world
    )
    assert int(str(summary["bundle_version"])) > 1  # the devices hold a published bundle
    assert int(str(summary["cohorts"])) > 0
    explanations = summary["explanations"]
    assert isinstance(explanations, list) and len(explanations) == 30
    with_cohort = [e for e in explanations if any(r.lower() in e.lower() for r in COHORT_REASONS)]
    assert with_cohort, explanations
    # the demo says so (the count it prints is the one checked here)
    assert f"{len(with_cohort)} of these 30 recommendations give a cohort reason" in out.getvalue()
