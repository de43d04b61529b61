"""``make eval`` (docs/evaluation.md): the split, the metrics, and a small run of the
whole evaluation through the real code paths on the real MovieLens-100K.

The full grid is ``make eval``; here one cell runs on 40 users with a short cap, which is
enough to check that every stage runs end to end and that its outputs say what they should.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from tools.evaluation.ceilings import popularity_rankings, segment_popularity_rankings
from tools.evaluation.grid import DEFAULT_GRID, QUICK_GRID, Cell
from tools.evaluation.metrics import quality
from tools.evaluation.run import EvaluationSettings, evaluate
from tools.evaluation.split import temporal_split
from tools.movielens import MovieLens100K

# --- the split ---------------------------------------------------------------------------------


def test_split_holds_out_the_last_fifth_of_each_user_by_time_then_item(
    ml100k: MovieLens100K,
) -> None:
    split = temporal_split(ml100k)
    assert split.train.size + split.test.size == ml100k.ratings.user.size
    assert np.intersect1d(split.train, split.test).size == 0
    user, item, ts = split.user, split.item, split.timestamp
    for u in range(0, split.n_users, 37):
        rows = np.flatnonzero(user == u)
        order = rows[np.lexsort((item[rows], ts[rows]))]
        n_test = int(0.2 * rows.size + 0.5)
        expected_test = set(order[rows.size - n_test :].tolist())
        assert set(split.test[user[split.test] == u].tolist()) == expected_test
        # every training rating comes no later than every test rating, by (timestamp, item)
        last_train = max((ts[r], item[r]) for r in order[: rows.size - n_test])
        first_test = min((ts[r], item[r]) for r in expected_test)
        assert last_train <= first_test


def test_validation_is_carved_from_training_only(ml100k: MovieLens100K) -> None:
    split = temporal_split(ml100k)
    val = split.carve_validation()
    assert set(val.train.tolist()) | set(val.test.tolist()) == set(split.train.tolist())
    assert not set(val.test.tolist()) & set(split.test.tolist())


# --- the metrics -------------------------------------------------------------------------------


def test_ndcg_hr_and_coverage_match_hand_computation() -> None:
    rankings = [[5, 1, 7], [2, 3], [9]]
    relevant = [{1, 4}, {8}, set()]  # the third user has no test items: not counted
    q = quality(rankings, relevant, n_items=20, k=3)
    ndcg_user0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert q.users == 2
    assert q.ndcg == pytest.approx(ndcg_user0 / 2)
    assert q.hr == pytest.approx(0.5)
    assert q.coverage == pytest.approx(5 / 20)  # items shown to counted users only


def test_perfect_ranking_scores_one() -> None:
    q = quality([[3, 4, 0, 1]], [{3, 4}], n_items=5, k=10)
    assert q.ndcg == pytest.approx(1.0)
    assert q.hr == 1.0


# --- the centralised references -----------------------------------------------------------


def test_popularity_reference_ranks_unseen_movies_by_training_count(ml100k: MovieLens100K) -> None:
    split = temporal_split(ml100k)
    users = np.arange(0, split.n_users, 50)
    counts = np.bincount(split.item[split.train], minlength=split.n_items)
    seen = split.items("train")
    for u, ranked in zip(users.tolist(), popularity_rankings(split, users), strict=True):
        assert len(ranked) == 10 and not set(ranked) & seen[u]
        c = counts[ranked]
        assert np.all(c[:-1] >= c[1:])
        unseen = np.setdiff1d(np.arange(split.n_items), list(seen[u]))
        assert c[-1] >= np.sort(counts[unseen])[-10]


def test_segment_reference_ranks_within_the_users_top_genre(ml100k: MovieLens100K) -> None:
    split = temporal_split(ml100k)
    users = np.arange(0, split.n_users, 97)
    ranked = segment_popularity_rankings(split, ml100k, users)
    seen = split.items("train")
    for u, top in zip(users.tolist(), ranked, strict=True):
        assert len(top) == 10 and not set(top) & seen[u]
    # users with different top genres get different lists
    assert len({tuple(r) for r in ranked}) > 1


# --- the grid ----------------------------------------------------------------------------------


def test_default_grid_is_the_issue_grid() -> None:
    names = {c.name for c in DEFAULT_GRID}
    for k in (20, 50):
        for eps in ("0.5", "1", "2", "4"):
            assert f"ldp ε={eps} k={k}" in names
        assert f"central ε=none k={k}" in names  # k-anonymity alone, no noise
        for eps in ("0.5", "1", "2", "4"):  # the device-level guarantee per 30 days
            assert f"central ε={eps}/30d k={k}" in names
    assert len(DEFAULT_GRID) == 18
    assert set(QUICK_GRID) <= set(DEFAULT_GRID)
    units = {c.name: c.unit for c in DEFAULT_GRID}
    assert units["ldp ε=2 k=50"] == "report"
    assert units["central ε=1/30d k=50"] == "device-30-days"
    # the first central design still runs on request, under its own unit
    assert Cell("central", 1.0, 50).unit == "device-epoch"


def test_cell_config_carries_its_epsilon_and_population() -> None:
    ldp = Cell("ldp", 0.5, 20).config(32)
    assert ldp.mode == "ldp" and ldp.epsilon == 0.5 and ldp.min_population == 20
    central = Cell("central", 2.0, 50).config(32)
    assert central.mode == "central" and central.central_epsilon == 2.0
    assert central.min_population == 50
    assert central.central_guarantee is None  # the per-epoch design promises no 30-day figure
    window = Cell("central", 2.0, 20, window=True).config(32)
    guarantee = window.central_guarantee
    assert guarantee is not None and window.min_population == 20
    assert guarantee.epsilon_window == pytest.approx(2.0, abs=1e-9)
    assert guarantee.rho_census < guarantee.rho_window  # the census is charged, and fits


# --- a small end-to-end run --------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_run(ml100k: MovieLens100K, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("eval")
    settings = EvaluationSettings(
        cells=(Cell("ldp", 2.0, 50),),  # the default cell, which the device study ends with
        tuning_budget=2,
        cap_days=7,
        user_fraction=40 / 943,
        device_fractions=(0.5,),
        workers=1,
    )
    stages: list[tuple[str, float]] = []
    report = evaluate(settings, out, data=ml100k, progress=lambda s, f: stages.append((s, f)))
    return {"report": report, "out": out, "stages": stages}


def test_small_run_writes_table_json_and_plot(small_run: dict) -> None:
    out: Path = small_run["out"]
    on_disk = json.loads((out / "evaluation.json").read_text())
    assert on_disk["data"]["users"] == 40
    table = (out / "evaluation.md").read_text()
    assert "| ldp ε=2 k=50 |" in table and "ALS (centralised" in table
    assert "| 20 |" in table and "| 40 |" in table  # the device-count study
    assert (out / "evaluation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ("grid", 1.0) in small_run["stages"]


def test_small_run_reports_through_the_privacy_code(small_run: dict) -> None:
    (cell,) = small_run["report"]["cells"]
    assert cell["devices"] == 40
    assert cell["unit"] == "report" and cell["epsilon_history"] is None
    assert cell["epochs"] > 0
    # reports were made, under the budget: never more engagement reports than events
    assert 0 < cell["engagement_reports"] <= cell["training_events"]
    assert 0 < cell["reported_share"] <= 1
    assert cell["census_reports"] > 0
    # every reporting device memoised at least its census value, each at ε_perm = 4; no
    # 30-day window holds more memo ε than the budget (64)
    memos = cell["memos"]
    assert memos["devices"] > 0 and memos["memos_mean"] >= 1
    assert memos["memo_epsilon_mean"] == pytest.approx(4.0 * memos["memos_mean"])
    assert 0 < memos["memo_epsilon_30_days_max"] <= 64
    assert 0 < memos["memo_share_of_30_day_spend_mean"] <= 1


def test_small_run_measures_every_ranker(small_run: dict) -> None:
    report = small_run["report"]
    (cell,) = report["cells"]
    for level in ("off", "coarse", "full"):
        m = cell["metrics"][f"{level}/0"]
        assert m["users"] == 40
        assert 0 <= m["ndcg@10"] <= 1 and 0 <= m["hr@10"] <= 1 and 0 < m["coverage"] <= 1
    als = report["als"]
    assert als["users"] == 40 and 0 < als["ndcg@10"] <= 1
    for name in ("popularity", "segment_popularity"):
        assert report["ceilings"][name]["users"] == 40
    study = sorted(report["devices_study"], key=lambda s: s["devices"])
    assert [s["devices"] for s in study] == [20, 40]
    assert study[0]["als"]["users"] == 20 and study[1]["full"] == cell["metrics"]["full/0"]
    # tuned on validation: the chosen knobs are among the searched ones and scored there
    assert report["tuning"]["localrank_validation_ndcg"] >= 0
    assert report["tuning"]["als_validation_ndcg"] > 0
