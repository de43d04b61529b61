"""The segment term is the active segment's lift over the whole fleet (its prior row less the
root's), because the bias already carries the fleet's popularity. Adding the root's own
category shares counted each category's popularity twice: on ``make eval-quick`` level
``coarse`` (the root for every device of a 283-device fleet) ranked at NDCG@10 0.085 against
0.109 for level ``off``, and the tuned ``full`` below ``off``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine_fixtures import (
    HOUR,
    T0,
    TAXONOMY,
    Keys,
    ids,
    n_segments,
    open_engine,
    same_ranking,
)
from localrank.device.engine import Engine, Tuning


def _priors(root: str, others: str) -> np.ndarray:
    """Rows favouring one category: ``root`` at the root, ``others`` everywhere else."""
    priors = np.full((n_segments(), len(TAXONOMY)), 0.01, np.float32)
    priors[0, TAXONOMY.index(root)] = 0.9
    priors[1:, TAXONOMY.index(others)] = 0.9
    return priors


def _history(engine: Engine) -> None:
    """Enough matured purchases for two interests (sci-fi, music) and a segment below the root."""
    for i in range(3):
        for c in ("sci-fi", "music"):
            engine.record("purchase", context="shopping", offer=f"o-{c}-{i}", now=T0 - 2 * HOUR)


def _ranking(engine: Engine, level: str) -> list:
    engine.update_settings(level=level)
    return engine.recommend("shopping", k=12, now=T0)


def test_at_the_root_the_segment_term_changes_nothing(keys: Keys, tmp_path: Path) -> None:
    """Nothing published: the fleet's favourite category (music) does not jump ahead at
    ``coarse``; the ranking is that of ``coarse`` without the segment term (``w_prior = 0``;
    level ``off`` differs in its guardrails), and no segment reason is given."""
    bundle = keys.bundle(priors=_priors("music", "coffee"))
    engine, _ = open_engine(tmp_path / "root.db", keys, bundle)
    assert engine.scoring_inputs("shopping", now=T0).segment == 0
    coarse = _ranking(engine, "coarse")
    engine.tuning = Tuning(w_prior=0.0)
    unweighted = _ranking(engine, "coarse")
    assert same_ranking(coarse, unweighted), (ids(coarse), ids(unweighted))
    assert not any(kind == "segment" for r in coarse for kind, _ in r.reasons)
    np.testing.assert_array_equal(engine.scoring_inputs("shopping", now=T0).prior, 0.0)


def test_below_the_root_the_segment_term_is_its_lift_over_the_fleet(
    keys: Keys, tmp_path: Path
) -> None:
    """The control: with segments published, a device in one gets its row less the root's, so
    the category its segment favours more than the fleet (coffee) leads at ``coarse``."""
    priors = _priors("music", "coffee")
    bundle = keys.bundle(populations=np.full(n_segments(), 1000, np.int64), priors=priors)
    engine, _ = open_engine(tmp_path / "seg.db", keys, bundle)
    _history(engine)
    x = engine.scoring_inputs("shopping", now=T0)
    assert x.segment != 0
    np.testing.assert_allclose(x.prior, priors[x.segment] - priors[0])
    coarse = ids(_ranking(engine, "coarse"))
    assert all(o.startswith("o-coffee-") or o == "o-local-cafe" for o in coarse[:4]), coarse
