"""Continual release of all-time counts under one device-level zCDP guarantee per 30 days.

The server publishes, after every release step, the *prefix sums* ``S_t = x_1 + … + x_t`` of a
stream of per-step count vectors ``x_i`` (one entry per cell, e.g. cohort × offer × event).
Adding fresh noise to every ``x_i`` and summing (what ``central`` mode did) makes the error of
``S_t`` grow as ``√t``. The two mechanisms here grow polylogarithmically:

:class:`TreeAggregation`
    The binary mechanism (Dwork, Naor, Pitassi & Rothblum 2010; Chan, Shi & Song 2011): noise
    on every dyadic block of steps, ``S_t`` the sum of the ≤ ``log₂ t + 1`` blocks that tile
    ``[1, t]``. Each completed block's estimate is combined, online, with the sum of its two
    children's estimates by inverse-variance weights (Honaker 2015's idea restricted to what is
    known when the block closes), which brings the per-block variance from ``σ²`` to ``≈ σ²/2``.
:class:`SqrtFactorisation`
    The matrix mechanism with the square-root factorisation of the prefix-sum matrix
    (Henzinger, Upadhyay & Upadhyay 2023; Fichtenberger, Henzinger & Upadhyay 2023): ``A = C·C``
    with ``C`` lower-triangular Toeplitz, ``c_k = binom(2k, k)/4^k`` (the series of
    ``(1 − x)^(−1/2)``). The mechanism privatises ``y = C·x + z`` and publishes ``C·y = A·x + C·z``.
:class:`SummedEpochNoise`
    The baseline: independent noise per step, summed. Kept to measure against.

**Integer noise.** Every noise value is a discrete Gaussian drawn by OpenDP
(:func:`discrete_gaussian`; exact sampler, OS CSPRNG). A discrete Gaussian is only private
for *integer* shifts (Canonne, Kamath & Steinke 2020), but ``C·x`` is not an integer. So the
factorisation uses ``C_s = round(2^s·C)`` (integer Toeplitz coefficients, ``s =``
:data:`PRECISION_BITS`), privatises the integer vector ``y = C_s·x + z`` and publishes
``round(B·y)`` with ``B = A·C_s⁻¹ ≈ 2^(−s)·C``: an exact factorisation ``A = B·C_s``, so the
published values are a post-processing of ``y`` alone, and the privacy analysis is the discrete
Gaussian's, with no real-valued noise anywhere. Published values are rounded to integers; the
noise is symmetric about 0 and the true counts are integers, so rounding keeps them unbiased.

**Privacy unit and sensitivity** (``docs/continual-release.md`` has the derivation). One device
over any rolling 30-day window sends at most ``W`` engagement reports, and reports each offer
at most once, so each of its reports lands in a cell it has never touched: a device's window
contribution ``v`` has at most ``W`` entries equal to 1, no two in the same cell. Noise is
independent across cells and every mechanism is linear along time in each cell, so the
squared L2 sensitivity of the privatised output is the sum over the device's reports of the
squared norm of the column of the step it landed in, at most ``W · max_col²``:

- per-step noise: ``max_col² = 1``;
- tree: ``max_col² =`` the number of levels whose blocks can close within the horizon,
  ``⌊log₂ T⌋ + 1``;
- factorisation: column 1 of ``C_s`` down to the horizon, ``Σ_{k<T} c_{s,k}²``. A later step's
  column is a truncation of column 1 (Toeplitz), so it is never larger: the window can touch
  any steps, and the worst is the earliest.

A discrete Gaussian with scale ``σ`` on an integer vector of L2 sensitivity ``Δ`` is
``Δ²/(2σ²)``-zCDP (CKS 2020, Theorem 14 with independent coordinates), so
``σ = √(W·max_col² / (2ρ))``. Without the once-per-offer rule a device could put all ``W``
reports in one cell and the sensitivity would be ``W·max_col``, not ``√W·max_col``.

**State.** Each mechanism's :meth:`state` is a dict of plain integer/float numpy arrays (plus
its configuration as 0-d arrays) that a database can store; ``from_state`` resumes it. Noise is
never re-derived from a seed: the noised values a mechanism needs later are stored themselves.
:meth:`latest` re-reads the last release without drawing noise, so a restarted server
republishes the same numbers instead of averaging fresh noise away.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt

from localrank.errors import InputError

__all__ = [
    "DEFAULT_DELTA",
    "PRECISION_BITS",
    "WINDOW_DAYS",
    "Calibration",
    "ContinualCounter",
    "NoiseSource",
    "SqrtFactorisation",
    "SummedEpochNoise",
    "TreeAggregation",
    "calibrate",
    "census_rho",
    "discrete_gaussian",
    "epsilon_for_rho",
    "history_rho",
    "horizon_for",
    "mechanism_class",
    "rho_for_epsilon",
    "sqrt_coefficients",
]

#: The privacy unit's window: one device over any rolling 30 days.
WINDOW_DAYS = 30
#: δ for displaying a zCDP ρ as (ε, δ).
DEFAULT_DELTA = 1e-6
#: ``C_s = round(2^s·C)``: the factorisation's integer coefficients keep s bits after the point,
#: so ``C_s`` differs from ``2^s·C`` by at most 1/2 per coefficient (a relative 2⁻²¹ at
#: ``c_0 = 1``, ≤ 2⁻¹⁶ down to ``c_k`` at k = 10⁴). The exact ``B = A·C_s⁻¹`` absorbs the
#: difference, so it changes the variance negligibly and the privacy not at all.
PRECISION_BITS = 20
#: int64 headroom: ``C_s·x + z`` must stay well inside 2⁶³.
_INT64_LIMIT = 2**62

#: ``noise(sigma, shape)`` → int64 array of independent discrete Gaussians N_Z(0, σ²).
NoiseSource = Callable[[float, tuple[int, ...]], npt.NDArray[np.int64]]


# --------------------------------------------------------------------------------------------
# Discrete Gaussian (OpenDP)


@lru_cache(maxsize=64)
def _opendp_gaussian(sigma: float) -> Any:
    # Imported here: OpenDP is needed only where noise is drawn, not to read state or calibrate.
    import opendp.prelude as dp

    # make_gaussian is in OpenDP's "contrib" set (proved, not yet vetted by their committee);
    # on an integer vector domain it samples the discrete Gaussian exactly (CKS 2020) from the
    # OS CSPRNG, which is what we want.
    dp.enable_features("contrib")
    return dp.m.make_gaussian(
        dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T="i64"), scale=sigma
    )


def discrete_gaussian(sigma: float, shape: int | tuple[int, ...]) -> npt.NDArray[np.int64]:
    """Independent discrete Gaussians ``N_Z(0, σ²)`` (``P(z) ∝ exp(−z²/(2σ²))`` on the
    integers), int64, of the given shape, drawn by OpenDP's exact sampler from the OS CSPRNG.

    ``Var = σ²`` up to a relative ``< 10⁻¹²`` for ``σ ≥ 1`` (it is slightly below ``σ²``).
    ``σ`` may be up to ``2⁴⁰``: samples then stay far inside int64.

    Raises:
        InputError: naming the argument.
    """
    sigma = _positive_float("sigma", sigma)
    if sigma > 2.0**40:
        raise InputError(f"sigma: expected at most 2**40, got {sigma!r}")
    dims = _shape("shape", shape)
    n = math.prod(dims)
    if n == 0:
        return np.zeros(dims, dtype=np.int64)
    noise = _opendp_gaussian(sigma)([0] * n)
    return np.asarray(noise, dtype=np.int64).reshape(dims)


# --------------------------------------------------------------------------------------------
# zCDP accounting


def _log_delta_bound(rho: float, alpha: float, log_delta: float) -> float:
    return alpha * rho + math.log1p(-1.0 / alpha) - (log_delta + math.log(alpha)) / (alpha - 1.0)


def epsilon_for_rho(rho: float, delta: float = DEFAULT_DELTA) -> float:
    """The ε of ``(ε, δ)``-DP implied by ``ρ``-zCDP.

    The conversion through Rényi DP of every order ``α > 1`` (``D_α ≤ αρ``) with the improved
    bound of Canonne, Kamath & Steinke 2020 (Proposition 12) / Asoodeh et al. 2020:
    ``ε = inf_α [αρ + log(1 − 1/α) − (log δ + log α)/(α − 1)]``, the same formula as Google's
    ``dp_accounting`` (``rdp.compute_epsilon``), which evaluates it on a grid of orders; here it
    is minimised exactly. Its derivative is ``ρ + (log δ + log α)/(α − 1)²``, whose numerator
    ``ρ(α − 1)² + log α + log δ`` increases in α, so the minimiser is its unique root, found by
    bisection to machine precision.

    Raises:
        InputError: naming the argument.
    """
    rho = _nonnegative_float("rho", rho)
    delta = _probability("delta", delta)
    if rho == 0.0:
        return 0.0
    log_delta = math.log(delta)

    def slope_sign(alpha: float) -> float:
        return rho * (alpha - 1.0) ** 2 + math.log(alpha) + log_delta

    lo, hi = 1.0, 2.0
    while slope_sign(hi) < 0.0:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if slope_sign(mid) < 0.0:
            lo = mid
        else:
            hi = mid
    # The root is bracketed by [lo, hi] to the last ulp; take the better of the two (lo may be
    # 1.0 exactly only when ρ is huge, where the bound is at α → 1).
    candidates = [a for a in (lo, hi) if a > 1.0]
    eps = min(_log_delta_bound(rho, a, log_delta) for a in candidates)
    # As dp_accounting: below the KL bound δ ≥ √(1 − e^{−ρ}) the answer is ε = 0.
    if delta**2 + math.expm1(-rho) > 0.0:
        return 0.0
    return max(0.0, eps)


def rho_for_epsilon(epsilon: float, delta: float = DEFAULT_DELTA) -> float:
    """The largest zCDP ρ whose :func:`epsilon_for_rho` at ``delta`` is at most ``epsilon``
    (bisection on a monotone function, to a relative 1e-13).

    Raises:
        InputError: naming the argument.
    """
    epsilon = _positive_float("epsilon", epsilon)
    delta = _probability("delta", delta)
    lo, hi = 0.0, 1.0
    while epsilon_for_rho(hi, delta) <= epsilon:
        hi *= 2.0
    while hi - lo > 1e-13 * hi:
        mid = 0.5 * (lo + hi)
        if epsilon_for_rho(mid, delta) <= epsilon:
            lo = mid
        else:
            hi = mid
    return lo


def census_rho(epsilon: float, reports_per_window: int) -> float:
    """The zCDP charge of a device's LDP census reports in one window: each report is
    ``ε``-DP, so ``ε²/2``-zCDP (Bun & Steinke 2016, Proposition 1.4), and zCDP adds up.

    With one census per 7 days, a rolling 30 days holds at most 5 (days 0, 7, 14, 21, 28).

    Raises:
        InputError: naming the argument.
    """
    epsilon = _nonnegative_float("epsilon", epsilon)
    reports_per_window = _nonnegative_int("reports_per_window", reports_per_window)
    return reports_per_window * epsilon * epsilon / 2.0


def history_rho(rho_window: float, history_days: int, window_days: int = WINDOW_DAYS) -> float:
    """A device's zCDP over its whole history of ``history_days`` days, given ``ρ`` per window.

    The history splits into ``⌈history_days / window_days⌉`` consecutive windows. Each offer is
    reported at most once in a device's lifetime, so the windows' contributions lie in distinct
    cells, whose noise is independent: their squared sensitivities add, and so do their ρ (the
    LDP census composes likewise). Without the once-per-offer rule this would be group privacy,
    quadratic in the number of windows.

    Raises:
        InputError: naming the argument.
    """
    rho_window = _nonnegative_float("rho_window", rho_window)
    history_days = _positive_int("history_days", history_days)
    window_days = _positive_int("window_days", window_days)
    return math.ceil(history_days / window_days) * rho_window


def horizon_for(history_days: int, cadence_days: int) -> int:
    """The number of releases in ``history_days`` at one release every ``cadence_days``.

    Raises:
        InputError: naming the argument.
    """
    history_days = _positive_int("history_days", history_days)
    cadence_days = _positive_int("cadence_days", cadence_days)
    return math.ceil(history_days / cadence_days)


# --------------------------------------------------------------------------------------------
# Mechanisms


class ContinualCounter(Protocol):
    """What every mechanism offers. ``release`` takes one step's counts and returns the noised
    all-time prefix sums after it."""

    kind: ClassVar[str]
    cells: int
    horizon: int
    sigma: float
    steps: int

    def release(self, counts: npt.ArrayLike) -> npt.NDArray[np.int64]: ...

    def latest(self) -> npt.NDArray[np.int64]: ...

    def noise_variance(self, step: int) -> float: ...

    def state(self) -> dict[str, npt.NDArray[Any]]: ...

    @classmethod
    def max_column_sq(cls, horizon: int) -> float: ...


def sqrt_coefficients(horizon: int) -> list[Fraction]:
    """``c_k = binom(2k, k)/4^k`` for ``k < horizon``: the coefficients of ``(1 − x)^(−1/2)``,
    whose Toeplitz matrix squared is the prefix-sum matrix (``Σ_{j≤k} c_j·c_{k−j} = 1``). Exact.

    Raises:
        InputError: naming the argument.
    """
    horizon = _positive_int("horizon", horizon)
    out = [Fraction(1)]
    for k in range(1, horizon):
        out.append(out[-1] * Fraction(2 * k - 1, 2 * k))
    return out


@lru_cache(maxsize=16)
def _factorisation(horizon: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """``(c_s, b)``: ``C_s``'s integer coefficients and ``B = A·C_s⁻¹``'s (both Toeplitz)."""
    scale = 2**PRECISION_BITS
    c_s = np.array([round(c * scale) for c in sqrt_coefficients(horizon)], dtype=np.int64)
    # B's series is (1/(1 − x)) · (1/C_s(x)): invert C_s's power series, then take running sums.
    inverse = np.zeros(horizon, dtype=np.float64)
    inverse[0] = 1.0 / float(c_s[0])
    cf = c_s.astype(np.float64)
    for k in range(1, horizon):
        inverse[k] = -float(np.dot(cf[1 : k + 1], inverse[k - 1 :: -1])) / cf[0]
    b = np.cumsum(inverse)
    c_s.setflags(write=False)
    b.setflags(write=False)
    return c_s, b


class _Base:
    kind: ClassVar[str] = ""

    def __init__(
        self, cells: int, horizon: int, sigma: float, *, noise: NoiseSource | None = None
    ) -> None:
        self.cells = _positive_int("cells", cells)
        self.horizon = _positive_int("horizon", horizon)
        self.sigma = _positive_float("sigma", sigma)
        self.steps = 0
        if noise is not None and not callable(noise):
            raise InputError(
                f"noise: expected a callable (sigma, shape) -> int64 array, got {noise!r}"
            )
        # Another source only to replay recorded draws (tests); production draws from OpenDP.
        self._noise: NoiseSource = discrete_gaussian if noise is None else noise

    @classmethod
    def calibrated(
        cls,
        cells: int,
        horizon: int,
        rho: float,
        reports_per_window: int,
    ) -> Any:
        """A fresh mechanism whose whole output stream is ``rho``-zCDP for one device's
        contributions in any window (at most ``reports_per_window`` reports, each in a distinct
        cell), over ``horizon`` releases.

        Raises:
            InputError: naming the argument.
        """
        rho = _positive_float("rho", rho)
        reports_per_window = _positive_int("reports_per_window", reports_per_window)
        horizon = _positive_int("horizon", horizon)
        sigma = math.sqrt(reports_per_window * cls.max_column_sq(horizon) / (2.0 * rho))
        return cls(cells, horizon, sigma)

    @classmethod
    def max_column_sq(cls, horizon: int) -> float:  # pragma: no cover - overridden
        raise NotImplementedError

    def rho(self, reports_per_window: int) -> float:
        """The zCDP ρ per window of this mechanism for ``reports_per_window`` reports."""
        w = _positive_int("reports_per_window", reports_per_window)
        return w * self.max_column_sq(self.horizon) / (2.0 * self.sigma**2)

    def _counts(self, counts: npt.ArrayLike) -> npt.NDArray[np.int64]:
        if self.steps >= self.horizon:
            raise InputError(
                f"counts: this mechanism was calibrated for {self.horizon} releases and has made "
                "them all; start a new one (with a new calibration)"
            )
        arr = np.asarray(counts)
        if arr.shape != (self.cells,):
            raise InputError(f"counts: expected shape ({self.cells},), got {arr.shape}")
        if arr.dtype.kind not in "iub":
            raise InputError(f"counts: expected integers, got dtype {arr.dtype}")
        out = arr.astype(np.int64)
        if out.size and (out.min() < 0 or out.max() > 2**31):
            raise InputError("counts: expected integers in [0, 2**31]")
        return out

    def _step_arg(self, step: int) -> int:
        step = _positive_int("step", step)
        if step > self.horizon:
            raise InputError(f"step: expected at most the horizon {self.horizon}, got {step}")
        return step

    def _header(self) -> dict[str, npt.NDArray[Any]]:
        return {
            "kind": np.array(self.kind),
            "cells": np.array(self.cells, dtype=np.int64),
            "horizon": np.array(self.horizon, dtype=np.int64),
            "sigma": np.array(self.sigma, dtype=np.float64),
            "steps": np.array(self.steps, dtype=np.int64),
        }

    @classmethod
    def _from_header(
        cls, state: Mapping[str, npt.ArrayLike], noise: NoiseSource | None
    ) -> Any:
        if not isinstance(state, Mapping):
            raise InputError(f"state: expected a mapping of arrays, got {type(state).__name__}")
        missing = [k for k in ("kind", "cells", "horizon", "sigma", "steps") if k not in state]
        if missing:
            raise InputError(f"state: missing {', '.join(missing)}")
        kind = str(np.asarray(state["kind"]))
        if kind != cls.kind:
            raise InputError(f"state: expected kind {cls.kind!r}, got {kind!r}")
        for key, dtype_kinds in (("cells", "iu"), ("horizon", "iu"), ("steps", "iu"),
                                 ("sigma", "f")):
            arr = np.asarray(state[key])
            if arr.shape != () or arr.dtype.kind not in dtype_kinds:
                raise InputError(f"state: {key} must be a scalar of kind {dtype_kinds!r}, got "
                                 f"{arr.shape} {arr.dtype}")
        obj = cls(
            int(np.asarray(state["cells"])),
            int(np.asarray(state["horizon"])),
            float(np.asarray(state["sigma"])),
            noise=noise,
        )
        steps = int(np.asarray(state["steps"]))
        if not 0 <= steps <= obj.horizon:
            raise InputError(f"state: steps must lie in [0, {obj.horizon}], got {steps}")
        obj.steps = steps
        return obj

    def _array(
        self, state: Mapping[str, npt.ArrayLike], key: str, shape: tuple[int, ...], kind: str
    ) -> npt.NDArray[Any]:
        if key not in state:
            raise InputError(f"state: missing {key}")
        arr = np.asarray(state[key])
        if arr.shape != shape or arr.dtype.kind not in kind:
            raise InputError(f"state: {key} must be {shape} of kind {kind!r}, got {arr.shape} "
                             f"{arr.dtype}")
        return arr


class SummedEpochNoise(_Base):
    """Independent discrete Gaussian noise on every step's counts, summed: the baseline.
    Variance of ``S_t``: ``t·σ²``. State: the noised running sum."""

    kind: ClassVar[str] = "summed"

    def __init__(
        self, cells: int, horizon: int, sigma: float, *, noise: NoiseSource | None = None
    ) -> None:
        super().__init__(cells, horizon, sigma, noise=noise)
        self._sum = np.zeros(self.cells, dtype=np.int64)

    @classmethod
    def max_column_sq(cls, horizon: int) -> float:
        _positive_int("horizon", horizon)
        return 1.0

    def release(self, counts: npt.ArrayLike) -> npt.NDArray[np.int64]:
        x = self._counts(counts)
        self._sum += x + self._noise(self.sigma, (self.cells,))
        self.steps += 1
        return self.latest()

    def latest(self) -> npt.NDArray[np.int64]:
        out: npt.NDArray[np.int64] = self._sum.copy()
        return out

    def noise_variance(self, step: int) -> float:
        return self._step_arg(step) * self.sigma**2

    def state(self) -> dict[str, npt.NDArray[Any]]:
        return {**self._header(), "noised_sum": self._sum.copy()}

    @classmethod
    def from_state(
        cls, state: Mapping[str, npt.ArrayLike], *, noise: NoiseSource | None = None
    ) -> SummedEpochNoise:
        """Resume from :meth:`state` (read back from storage).

        Raises:
            InputError: naming the argument.
        """
        obj: SummedEpochNoise = cls._from_header(state, noise)
        obj._sum = obj._array(state, "noised_sum", (obj.cells,), "i").astype(np.int64)
        return obj


def _tree_levels(horizon: int) -> int:
    """Levels whose blocks (of 2^ℓ steps) can close within the horizon: ``⌊log₂ T⌋ + 1``."""
    return int(horizon).bit_length()


def _tree_unit_variances(levels: int) -> list[float]:
    """Variance of a closed block's estimate at each level, in units of σ²:
    ``u_0 = 1``, ``u_ℓ = 2u_{ℓ−1}/(1 + 2u_{ℓ−1})`` (own noise, inverse-variance combined with
    the two children's estimates); tends to 1/2."""
    u = [1.0]
    for _ in range(1, levels):
        u.append(2 * u[-1] / (1 + 2 * u[-1]))
    return u


class TreeAggregation(_Base):
    """Binary-tree continual counting with online inverse-variance refinement of each block.

    Variance of ``S_t``: ``σ² · Σ_{ℓ : bit ℓ of t is 1} u_ℓ`` (:func:`_tree_unit_variances`).
    State: per level, the exact partial sum of the open block (int64) and the estimate of the
    latest closed block (float64).
    """

    kind: ClassVar[str] = "tree"

    def __init__(
        self, cells: int, horizon: int, sigma: float, *, noise: NoiseSource | None = None
    ) -> None:
        super().__init__(cells, horizon, sigma, noise=noise)
        self.levels = _tree_levels(self.horizon)
        self._u = _tree_unit_variances(self.levels)
        self._open = np.zeros((self.levels, self.cells), dtype=np.int64)
        self._closed = np.zeros((self.levels, self.cells), dtype=np.float64)

    @classmethod
    def max_column_sq(cls, horizon: int) -> float:
        # A step lies in one block per level; only blocks that close are ever noised and used.
        return float(_tree_levels(_positive_int("horizon", horizon)))

    def release(self, counts: npt.ArrayLike) -> npt.NDArray[np.int64]:
        x = self._counts(counts)
        t = self.steps + 1
        self._open += x
        new: dict[int, npt.NDArray[np.float64]] = {}
        for lvl in range(self.levels):
            if t % (1 << lvl):
                break
            noised = (self._open[lvl] + self._noise(self.sigma, (self.cells,))).astype(np.float64)
            if lvl == 0:
                new[lvl] = noised
            else:
                # Children: the left one is the level's previous closed block, the right one
                # closed at this very step.
                children = self._closed[lvl - 1] + new[lvl - 1]
                var_children = 2.0 * self._u[lvl - 1]  # in units of σ²; own noise is 1
                new[lvl] = (noised * var_children + children) / (1.0 + var_children)
            self._open[lvl] = 0
        for lvl, est in new.items():
            self._closed[lvl] = est
        self.steps = t
        return self.latest()

    def _estimate(self) -> npt.NDArray[np.float64]:
        t = self.steps
        total = np.zeros(self.cells, dtype=np.float64)
        for lvl in range(self.levels):
            if t >> lvl & 1:
                total += self._closed[lvl]
        return total

    def latest(self) -> npt.NDArray[np.int64]:
        return np.rint(self._estimate()).astype(np.int64)

    def noise_variance(self, step: int) -> float:
        t = self._step_arg(step)
        return self.sigma**2 * sum(self._u[lvl] for lvl in range(self.levels) if t >> lvl & 1)

    def state(self) -> dict[str, npt.NDArray[Any]]:
        return {**self._header(), "open": self._open.copy(), "closed": self._closed.copy()}

    @classmethod
    def from_state(
        cls, state: Mapping[str, npt.ArrayLike], *, noise: NoiseSource | None = None
    ) -> TreeAggregation:
        """Resume from :meth:`state` (read back from storage).

        Raises:
            InputError: naming the argument.
        """
        obj: TreeAggregation = cls._from_header(state, noise)
        shape = (obj.levels, obj.cells)
        obj._open = obj._array(state, "open", shape, "i").astype(np.int64)
        obj._closed = obj._array(state, "closed", shape, "f").astype(np.float64)
        return obj


class SqrtFactorisation(_Base):
    """The square-root factorisation mechanism on integers (module docstring).

    ``sigma`` is in the units of ``C_s``, i.e. ``2^PRECISION_BITS`` times the noise scale it
    corresponds to on counts. Variance of ``S_t``: ``σ² · Σ_{k<t} b_k²`` (``≈ σ_counts² ·
    Σ_{k<t} c_k²``, which grows as ``ln t / π``). State: every step's exact counts and its
    privatised ``y`` (both int64 ``[steps, cells]``), since each ``y_t`` needs all past counts
    and each release all past ``y``.
    """

    kind: ClassVar[str] = "sqrt"

    def __init__(
        self, cells: int, horizon: int, sigma: float, *, noise: NoiseSource | None = None
    ) -> None:
        super().__init__(cells, horizon, sigma, noise=noise)
        self._c, self._b = _factorisation(self.horizon)
        self._x = np.zeros((self.horizon, self.cells), dtype=np.int64)
        self._y = np.zeros((self.horizon, self.cells), dtype=np.int64)

    @classmethod
    def max_column_sq(cls, horizon: int) -> float:
        c, _ = _factorisation(_positive_int("horizon", horizon))
        return float(np.sum(c.astype(np.float64) ** 2))

    def release(self, counts: npt.ArrayLike) -> npt.NDArray[np.int64]:
        x = self._counts(counts)
        t = self.steps
        # c_0 is the largest coefficient, so c_0 · (all-time count) bounds |C_s·x| per cell.
        total = self._x[:t].sum(axis=0) + x
        if total.size and int(total.max()) * int(self._c[0]) + 64 * self.sigma > _INT64_LIMIT:
            raise InputError("counts: the all-time counts grew too large for int64 arithmetic")
        self._x[t] = x
        # y_t = Σ_{i≤t} c_{t−i} x_i + z_t, exactly in integers.
        cx = self._c[t::-1] @ self._x[: t + 1]
        self._y[t] = cx + self._noise(self.sigma, (self.cells,))
        self.steps = t + 1
        return self.latest()

    def latest(self) -> npt.NDArray[np.int64]:
        t = self.steps
        if t == 0:
            return np.zeros(self.cells, dtype=np.int64)
        # S_t = Σ_{i≤t} b_{t−i} y_i: a function of the privatised y alone.
        est = self._b[t - 1 :: -1] @ self._y[:t].astype(np.float64)
        return np.rint(est).astype(np.int64)

    def noise_variance(self, step: int) -> float:
        t = self._step_arg(step)
        return self.sigma**2 * float(np.sum(self._b[:t] ** 2))

    def state(self) -> dict[str, npt.NDArray[Any]]:
        t = self.steps
        return {**self._header(), "counts": self._x[:t].copy(), "privatised": self._y[:t].copy()}

    @classmethod
    def from_state(
        cls, state: Mapping[str, npt.ArrayLike], *, noise: NoiseSource | None = None
    ) -> SqrtFactorisation:
        """Resume from :meth:`state` (read back from storage).

        Raises:
            InputError: naming the argument.
        """
        obj: SqrtFactorisation = cls._from_header(state, noise)
        shape = (obj.steps, obj.cells)
        obj._x[: obj.steps] = obj._array(state, "counts", shape, "i")
        obj._y[: obj.steps] = obj._array(state, "privatised", shape, "i")
        return obj


_KINDS: dict[str, type[SummedEpochNoise] | type[TreeAggregation] | type[SqrtFactorisation]] = {
    "summed": SummedEpochNoise,
    "tree": TreeAggregation,
    "sqrt": SqrtFactorisation,
}


def mechanism_class(
    kind: str,
) -> type[SummedEpochNoise] | type[TreeAggregation] | type[SqrtFactorisation]:
    """The mechanism called ``kind`` (``"summed"``, ``"tree"`` or ``"sqrt"``).

    Raises:
        InputError: naming the argument.
    """
    if kind not in _KINDS:
        raise InputError(f"kind: expected one of {sorted(_KINDS)}, got {kind!r}")
    return _KINDS[kind]


# --------------------------------------------------------------------------------------------
# Calibration


@dataclass(frozen=True)
class Calibration:
    """Everything a release configuration implies, for one device over any 30-day window."""

    kind: str
    cadence_days: int
    horizon: int  # releases the mechanism is calibrated for
    reports_per_window: int  # W
    rho_window: float  # the device-level guarantee per window, census included
    rho_census: float  # the part spent by the LDP census
    rho_engagement: float  # what the mechanism gets
    sigma: float  # the mechanism's noise scale (SqrtFactorisation: in C_s units)
    final_variance: float  # per cell, of the last release's all-time count
    mean_variance: float  # per cell, averaged over all releases
    delta: float

    @property
    def sigma_counts(self) -> float:
        """The noise scale in counts (SqrtFactorisation's ``sigma`` is in ``C_s`` units)."""
        return self.sigma / 2**PRECISION_BITS if self.kind == "sqrt" else self.sigma

    @property
    def epsilon_window(self) -> float:
        """ε per 30-day window at ``delta``."""
        return epsilon_for_rho(self.rho_window, self.delta)

    def epsilon_history(self, history_days: int) -> float:
        """ε over a device's whole history of ``history_days`` days, at ``delta``."""
        return epsilon_for_rho(history_rho(self.rho_window, history_days), self.delta)

    def mechanism(self, cells: int) -> SummedEpochNoise | TreeAggregation | SqrtFactorisation:
        """A fresh mechanism with this calibration over ``cells`` cells."""
        return mechanism_class(self.kind)(cells, self.horizon, self.sigma)


def calibrate(
    kind: str,
    *,
    rho_window: float,
    history_days: int,
    cadence_days: int,
    reports_per_window: int,
    reports_per_epoch: int | None = None,
    rho_census: float = 0.0,
    delta: float = DEFAULT_DELTA,
) -> Calibration:
    """The noise for a device-level ``rho_window`` per 30 days.

    ``W`` is ``reports_per_window``, lowered to ``L·30`` when ``reports_per_epoch`` (``L``)
    makes that the tighter bound. The census's LDP charge (:func:`census_rho`) comes off the
    top; the rest, ``ρ_e``, goes to the mechanism: ``σ = √(W·max_col² / (2ρ_e))`` over
    ``horizon = ⌈history_days / cadence_days⌉`` releases.

    Raises:
        InputError: naming the argument, also when the census alone spends the budget.
    """
    cls = mechanism_class(kind)
    rho_window = _positive_float("rho_window", rho_window)
    rho_census = _nonnegative_float("rho_census", rho_census)
    w = _positive_int("reports_per_window", reports_per_window)
    if reports_per_epoch is not None:
        w = min(w, _positive_int("reports_per_epoch", reports_per_epoch) * WINDOW_DAYS)
    delta = _probability("delta", delta)
    horizon = horizon_for(history_days, cadence_days)
    if rho_census >= rho_window:
        raise InputError(
            f"rho_census: the census alone ({rho_census:.4g}) spends the whole window budget "
            f"rho_window = {rho_window:.4g}; lower the census ε or its cadence"
        )
    rho_e = rho_window - rho_census
    mech = cls.calibrated(1, horizon, rho_e, w)
    variances = [mech.noise_variance(t) for t in range(1, horizon + 1)]
    return Calibration(
        kind=kind,
        cadence_days=int(cadence_days),
        horizon=horizon,
        reports_per_window=w,
        rho_window=rho_window,
        rho_census=rho_census,
        rho_engagement=rho_e,
        sigma=mech.sigma,
        final_variance=variances[-1],
        mean_variance=float(np.mean(variances)),
        delta=delta,
    )


# --------------------------------------------------------------------------------------------
# Argument checks


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, bool
    )


def _positive_float(name: str, value: object) -> float:
    if not _is_real(value) or not math.isfinite(float(value)) or float(value) <= 0:  # type: ignore[arg-type]
        raise InputError(f"{name}: expected a finite number > 0, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _nonnegative_float(name: str, value: object) -> float:
    if not _is_real(value) or not math.isfinite(float(value)) or float(value) < 0:  # type: ignore[arg-type]
        raise InputError(f"{name}: expected a finite number >= 0, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _probability(name: str, value: object) -> float:
    if not _is_real(value) or not 0 < float(value) < 1:  # type: ignore[arg-type]
        raise InputError(f"{name}: expected a number in (0, 1), got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _positive_int(name: str, value: object) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise InputError(f"{name}: expected an integer >= 1, got {value!r}")
    return int(value)


def _nonnegative_int(name: str, value: object) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise InputError(f"{name}: expected an integer >= 0, got {value!r}")
    return int(value)


def _shape(name: str, value: object) -> tuple[int, ...]:
    dims = (value,) if isinstance(value, (int, np.integer)) else value
    if (
        not isinstance(dims, tuple)
        or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in dims)
        or any(int(d) < 0 for d in dims)
    ):
        raise InputError(f"{name}: expected an int or a tuple of ints >= 0, got {value!r}")
    return tuple(int(d) for d in dims)
