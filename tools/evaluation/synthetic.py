"""SIMULATION: synthetic devices drawn from a taste model fitted to MovieLens-100K.

The fleet-size simulation (:mod:`tools.evaluation.scale`) needs more devices than MovieLens has
users (943). It draws them from a generative model of *who engages with what*, fitted to the
real ratings treated as implicit engagement (a rating is an engagement, its value is ignored):

**Poisson factorisation** (the maximum-likelihood fit, by Lee and Seung's multiplicative
updates for the Kullback-Leibler divergence): the 943 × 1,682 0/1 engagement matrix ``X`` is
modelled as ``X_ui ~ Poisson((W H)_ui)`` with non-negative user tastes ``W`` (943 × K) and
factor-item profiles ``H`` (K × 1,682), K = 24. A factor is a "taste" (a set of movies engaged
with together); a user is a non-negative mix of tastes, so co-engagement structure (which movies
go together, and in what proportions users mix them) and item popularity (the profiles' mass)
are both in the model.

**Drawing a device**: pick a real user ``r`` uniformly; its taste is ``w = W_r ⊙ g``, ``g`` a
vector of independent Gamma(shape 4, mean 1) jitters (so each synthetic device is a new mix
near a real one, not a copy); its activity ``n`` is ``r``'s number of ratings (the activity
distribution and its link to taste are MovieLens'); its history is ``n`` distinct movies drawn
one after another without replacement with probabilities ``∝ (w H)_i`` (Gumbel top-n, whose
order is the sequential draw order). The draw order stands in for time: the evaluation's split
(:func:`tools.evaluation.split.histories_split`) takes the last 20% of each device's draws as
its test set.

How close the synthetic data is to the real one is measured on every run
(:func:`tools.evaluation.scale.resemblance`: item popularity, co-occurrence and its lift among
the most popular movies, activity) and reported in ``evaluation-scale.md``, beside the same
pipeline and ALS on the real MovieLens split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from tools.movielens import MovieLens100K

__all__ = ["TasteModel", "draw_histories", "fit_taste_model", "implicit_matrix"]

FACTORS = 24
ITERATIONS = 300
#: Gamma shape of the per-factor jitter: coefficient of variation 1/√4 = 0.5.
JITTER_SHAPE = 4.0


@dataclass(frozen=True)
class TasteModel:
    """A fitted Poisson factorisation and MovieLens' activity per user."""

    W: np.ndarray  # float64[users, K]: each real user's taste
    H: np.ndarray  # float64[K, items]: each taste's item profile
    activity: np.ndarray  # int64[users]: ratings per real user
    log_likelihood: float  # Poisson log-likelihood per entry at the fit (up to a constant)

    @property
    def n_items(self) -> int:
        return int(self.H.shape[1])


def implicit_matrix(data: MovieLens100K) -> np.ndarray:
    """float64[users, items]: 1 where the user rated the movie."""
    X = np.zeros((len(data.users), len(data.items)))
    X[data.ratings.user.astype(np.int64) - 1, data.ratings.item.astype(np.int64) - 1] = 1.0
    return X


def fit_taste_model(
    X: np.ndarray, factors: int = FACTORS, iterations: int = ITERATIONS, seed: int = 0
) -> TasteModel:
    """The Poisson factorisation ``X ≈ W H`` (KL multiplicative updates; each update never
    increases the divergence)."""
    if X.ndim != 2 or X.size == 0 or np.any(X < 0):
        raise ValueError(f"X: expected a non-negative [users, items] matrix, got {X.shape}")
    if factors < 1 or iterations < 1:
        raise ValueError(f"factors, iterations: expected ≥ 1, got {factors}, {iterations}")
    rng = np.random.default_rng(seed)
    n, m = X.shape
    rows, cols = np.nonzero(X)
    vals = X[rows, cols]
    scale = np.sqrt(X.mean() / factors)
    W = rng.uniform(0.5, 1.5, (n, factors)) * scale
    H = rng.uniform(0.5, 1.5, (factors, m)) * scale
    tiny = 1e-12

    def ratio() -> sp.csr_matrix:
        # X / (W H) is zero wherever X is: only the engaged entries are computed
        fitted = np.einsum("ek,ek->e", W[rows], H[:, cols].T) + tiny
        return sp.csr_matrix((vals / fitted, (rows, cols)), shape=(n, m))

    for _ in range(iterations):
        W *= (ratio() @ H.T) / (H.sum(axis=1)[None, :] + tiny)
        H *= np.asarray(ratio().T @ W).T / (W.sum(axis=0)[:, None] + tiny)
    L = W @ H + tiny
    ll = float(np.mean(X * np.log(L) - L))
    return TasteModel(W, H, X.sum(axis=1).astype(np.int64), ll)


def draw_histories(
    model: TasteModel, n_devices: int, rng: np.random.Generator, chunk: int = 4096
) -> list[np.ndarray]:
    """``n_devices`` synthetic histories: int64 item arrays in draw order (module docstring)."""
    if n_devices < 1:
        raise ValueError(f"n_devices: expected ≥ 1, got {n_devices}")
    out: list[np.ndarray] = []
    for start in range(0, n_devices, chunk):
        m = min(chunk, n_devices - start)
        real = rng.integers(0, model.W.shape[0], size=m)
        w = model.W[real] * rng.gamma(JITTER_SHAPE, 1.0 / JITTER_SHAPE, (m, model.W.shape[1]))
        rates = w @ model.H
        with np.errstate(divide="ignore"):
            keys = (np.log(rates) + rng.gumbel(size=rates.shape)).astype(np.float32)
        n = np.minimum(model.activity[real], np.count_nonzero(rates > 0, axis=1))
        top = int(n.max())
        # the top-n keys in descending order are the sequential draws without replacement
        part = np.argpartition(-keys, top - 1, axis=1)[:, :top]
        order = np.take_along_axis(
            part, np.argsort(-np.take_along_axis(keys, part, axis=1), axis=1, kind="stable"),
            axis=1,
        )
        out.extend(order[j, : int(n[j])].astype(np.int64) for j in range(m))
    return out
