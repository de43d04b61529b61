"""``make eval-scale`` (docs/evaluation.md, "Fleet-size simulation"): the synthetic devices,
their split, the product's cohort pipeline without the engine, and a tiny run of the whole
target on the real MovieLens-100K."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tools.evaluation.metrics import quality
from tools.evaluation.movie_catalog import movielens_config
from tools.evaluation.scale import (
    Fleet,
    fleet_of,
    main,
    rankings,
    simulate,
    weekly_reports,
)
from tools.evaluation.split import histories_split
from tools.evaluation.synthetic import TasteModel, draw_histories
from tools.movielens import MovieLens100K

N_ITEMS = 240
N_TASTES = 4


def clustered_model(activity: int = 40) -> TasteModel:
    """Four tastes, each engaging almost only with its own quarter of the catalog: a fleet
    with a strong cohort structure that popularity alone cannot see."""
    H = np.full((N_TASTES, N_ITEMS), 1e-3)
    block = N_ITEMS // N_TASTES
    for t in range(N_TASTES):
        # within a block, a popularity gradient, so the block's "top" items are well defined
        H[t, t * block : (t + 1) * block] = np.linspace(2.0, 0.5, block)
    W = np.eye(N_TASTES).repeat(5, axis=0)
    return TasteModel(W, H, np.full(W.shape[0], activity, dtype=np.int64), 0.0)


def clustered_fleet(n: int, seed: int = 0) -> Fleet:
    histories = draw_histories(clustered_model(), n, np.random.default_rng(seed))
    # every movie has one of the 19 genres, spread across blocks (content says nothing
    # about the tastes)
    genres = [[i % 19] for i in range(N_ITEMS)]
    return fleet_of(histories_split(histories, N_ITEMS), genres, 19)


def test_synthetic_histories_are_distinct_draws_of_each_devices_activity() -> None:
    model = clustered_model(activity=37)
    histories = draw_histories(model, 300, np.random.default_rng(1))
    assert len(histories) == 300
    for h in histories:
        assert h.size == 37 == np.unique(h).size
        assert h.min() >= 0 and h.max() < N_ITEMS
    # a device draws from its own taste's quarter almost always (the model is what it says)
    block = N_ITEMS // N_TASTES
    own = [np.mean(h // block == np.bincount(h // block).argmax()) for h in histories]
    assert np.mean(own) > 0.95


def test_split_takes_the_last_fifth_of_each_devices_draws_as_test() -> None:
    histories = [np.array([5, 3, 9, 1, 7], dtype=np.int64), np.arange(22, dtype=np.int64)[::-1]]
    split = histories_split(histories, 30)
    fleet = fleet_of(split, [[0]] * 30, 1)
    assert fleet.train[0].tolist() == [5, 3, 9, 1]
    assert split.items("test")[0] == {7}
    # 20% of 22 rounds half up to 4: the last four draws
    assert fleet.train[1].tolist() == list(range(21, 3, -1))
    assert split.items("test")[1] == {3, 2, 1, 0}


def test_the_product_budget_allows_six_engagement_reports_a_week() -> None:
    # 64 ε per 30 days at ε = 2 per report: 7 reports a week, one of them the census
    assert weekly_reports(movielens_config()) == 6


def test_reports_are_capped_and_without_noise_the_cohorts_beat_popularity() -> None:
    fleet = clustered_fleet(600)
    config = movielens_config(min_population=50)
    rounds = 3
    outcome = simulate(fleet, config, rounds=rounds, noise=False)
    cap = weekly_reports(config) * rounds
    assert outcome.reports == sum(min(cap, t.size) for t in fleet.train)
    # a device holds one cohort a week at most: between one and `rounds` permanent responses
    assert 1.0 <= outcome.memos <= rounds
    # 600 devices support 600 / (1.5·50) = 8 cohorts at most, and four tastes need ≥ 4
    assert 4 <= outcome.cohorts <= 8
    users = np.arange(fleet.n_devices)
    r = rankings(fleet, outcome, users, weight=0.2)
    relevant = fleet.split.items("test")
    off = quality(r["off"], relevant, N_ITEMS)
    full = quality(r["full"], relevant, N_ITEMS)
    assert full.ndcg > 2 * off.ndcg
    assert full.hr > off.hr


def test_the_private_pipeline_runs_on_randomised_reports() -> None:
    fleet = clustered_fleet(400, seed=2)
    config = movielens_config(min_population=50)
    outcome = simulate(fleet, config, rounds=2, noise=True, seed=3)
    assert outcome.cohorts >= 1
    assert outcome.payload.factors.shape == (N_ITEMS, config.d)
    # the popularity the server publishes is a lower bound: never negative
    assert outcome.popularity.shape == (N_ITEMS,) and outcome.popularity.min() >= 0


def test_the_target_writes_a_result_labelled_as_a_simulation(
    tmp_path: Path, cache_dir: Path, ml100k: MovieLens100K
) -> None:
    main(["--out", str(tmp_path), "--sizes", "300", "--als-budget", "1", "--fit-iterations",
          "5", "--no-no-noise", "--cache-dir", str(cache_dir)])  # fmt: skip
    doc = json.loads((tmp_path / "evaluation-scale.json").read_text())
    assert doc["simulation"] is True
    assert [f["devices"] for f in doc["fleets"]] == [len(ml100k.users), 300]
    for fl in doc["fleets"]:
        assert set(fl["methods"]) == {"popularity (raw)", "off (ε = 2)", "full (ε = 2)", "ALS"}
        for m in fl["methods"].values():
            assert 0 <= m["ndcg@10"] <= m["hr@10"] <= 1
    md = (tmp_path / "evaluation-scale.md").read_text()
    assert md.startswith("# Fleet-size SIMULATION")
