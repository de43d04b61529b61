"""The privacy mechanisms behind every report that leaves a device, and the server's noise.

Two frequency oracles randomise a value ``v`` in a domain ``[0, d)`` (the segment ids):

- **GRR** (generalised randomised response) reports ``v`` with probability
  ``p = e^ε/(e^ε + d − 1)`` and each other value with ``q = 1/(e^ε + d − 1)``.
- **OUE** (optimised unary encoding) one-hot encodes ``v`` in ``d`` bits and reports each bit as 1
  with probability ``p = 1/2`` if it was 1 and ``q = 1/(e^ε + 1)`` if it was 0.

:func:`choose_oracle` picks the one with the smaller estimator variance (GRR when
``d < 3e^ε + 2``).

Reports are chained, RAPPOR-style. The device draws a **permanent** response per true value with
``epsilon_perm`` (:func:`permanent_response`) and memoises it; every report is a fresh
**instantaneous** response with ``epsilon`` drawn from the memoised one
(:func:`instantaneous_response`). Averaging many reports therefore reveals at most the permanent
response, which is ``epsilon_perm``-private, and one report is :func:`effective_epsilon`-private.
The server debiases with :func:`effective_probabilities` (see :mod:`localrank.server.debias`).

OUE reports are bit vectors packed LSB-first into ``ceil(d/8)`` bytes (bit ``j`` is bit ``j % 8``
of byte ``j // 8``, the unused high bits of the last byte are zero) and sent as standard base64
(RFC 4648, with padding): :func:`encode_bits` and :func:`decode_bits`.

All randomness comes from the operating system's CSPRNG. Every randomiser takes a keyword
``seed`` that switches to a reproducible ChaCha20 stream: it is for tests only, since anyone who
knows the seed can undo the randomisation.

For central mode, :func:`discrete_laplace` adds exact integer noise to published counts.

The mathematics is in ``docs/privacy-math.md``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from localrank import _core
from localrank.errors import InputError

__all__ = [
    "Oracle",
    "Randomizer",
    "Reports",
    "choose_chained_oracle",
    "choose_oracle",
    "decode_bits",
    "discrete_laplace",
    "effective_epsilon",
    "effective_probabilities",
    "encode_bits",
    "instantaneous_response",
    "pack_bits",
    "packed_len",
    "permanent_response",
    "perturb",
    "probabilities",
    "unpack_bits",
]

#: Reports of ``m`` devices: int64 ``(m,)`` values for GRR, uint8 ``(m, ceil(d/8))`` packed bits
#: for OUE.
Reports: TypeAlias = npt.NDArray[np.int64] | npt.NDArray[np.uint8]


class Oracle(str, enum.Enum):
    """A frequency oracle. The value is the name the wire contract uses."""

    GRR = "grr"
    OUE = "oue"

    @classmethod
    def parse(cls, value: Oracle | str) -> Oracle:
        """``value`` as an :class:`Oracle`.

        Raises:
            InputError: naming ``oracle``, for anything but ``"grr"`` or ``"oue"``.
        """
        try:
            return cls(value)
        except ValueError:
            raise InputError(f"oracle: expected 'grr' or 'oue', got {value!r}") from None


def choose_oracle(d: int, epsilon: float) -> Oracle:
    """The oracle with the smaller estimator variance at ``(d, epsilon)``.

    GRR's variance per report is ``(e^ε + d − 2)/(e^ε − 1)²`` and OUE's is ``4e^ε/(e^ε − 1)²``,
    so GRR wins exactly when ``d < 3e^ε + 2``. At ``ε = 2`` that is ``d ≤ 24``.

    Raises:
        InputError: naming ``d`` (outside ``[2, 2**32]``) or ``epsilon`` (outside ``(0, 50]``).
    """
    return Oracle(_core.choose_oracle(d, epsilon))


def choose_chained_oracle(d: int, epsilon: float, epsilon_perm: float) -> Oracle:
    """The oracle with the smaller variance per report of a de-biased count *for the chained
    report devices send* (a memoised permanent response at ``epsilon_perm``, an instantaneous
    one at ``epsilon`` on top): ``q*(1 − q*)/(p* − q*)²`` with each oracle's effective
    ``(p*, q*)``. The single-stage rule (:func:`choose_oracle`) misjudges the chain: at
    ``ε = 2, ε_perm = 4`` it switches to OUE at ``d = 25``, where GRR's chained variance is
    still about half of OUE's (the crossover is near ``d = 38``).

    Raises:
        InputError: naming the argument.
    """
    choose_oracle(d, epsilon)  # the same argument checks
    best, best_var = Oracle.GRR, math.inf
    for oracle in (Oracle.GRR, Oracle.OUE):
        p, q = effective_probabilities(oracle, d, epsilon, epsilon_perm)
        var = q * (1 - q) / (p - q) ** 2
        if var < best_var:
            best, best_var = oracle, var
    return best


def probabilities(oracle: Oracle | str, d: int, epsilon: float) -> tuple[float, float]:
    """``(p, q)`` of a single-stage report.

    GRR: ``p`` = P(report the true value), ``q`` = P(report one given other value), and
    ``p/q = e^ε``. OUE: ``p`` = P(bit reported 1 | it was 1), ``q`` = P(1 | 0), and
    ``p(1 − q)/((1 − p)q) = e^ε``.

    Raises:
        InputError: naming the argument.
    """
    return _core.ldp_probabilities(Oracle.parse(oracle).value, d, epsilon)


def effective_probabilities(
    oracle: Oracle | str, d: int, epsilon: float, epsilon_perm: float | None
) -> tuple[float, float]:
    """``(p*, q*)`` of a chained report: the permanent response with ``epsilon_perm``, then the
    instantaneous response with ``epsilon`` on top. With ``epsilon_perm=None``, the single-stage
    ``(p, q)``.

    The chain is again an oracle of the same kind, so the estimator ``(S − n·q*)/(p* − q*)`` and
    its variance formula apply unchanged (:mod:`localrank.server.debias`).

    Raises:
        InputError: naming the argument.
    """
    name = Oracle.parse(oracle).value
    if epsilon_perm is None:
        return _core.ldp_probabilities(name, d, epsilon)
    return _core.ldp_effective_probabilities(name, d, epsilon, epsilon_perm)


def effective_epsilon(
    oracle: Oracle | str, d: int, epsilon: float, epsilon_perm: float | None
) -> float:
    """The ε of one chained report: ``ln(p*/q*)`` for GRR, ``ln(p*(1 − q*)/((1 − p*)q*))`` for
    OUE. It is at most ``min(epsilon, epsilon_perm)``; with ``epsilon_perm=None`` it is
    ``epsilon``.

    This is what one report reveals. What any number of reports of the same value reveal is
    bounded by ``epsilon_perm``, because they all derive from one memoised permanent response.

    Raises:
        InputError: naming the argument.
    """
    p, q = effective_probabilities(oracle, d, epsilon, epsilon_perm)
    ratio = math.log(p) - math.log(q)
    if Oracle.parse(oracle) is Oracle.OUE:
        ratio += math.log1p(-q) - math.log1p(-p)
    return ratio


def perturb(
    oracle: Oracle | str,
    values: npt.ArrayLike,
    d: int,
    epsilon: float,
    *,
    seed: int | None = None,
) -> Reports:
    """Single-stage reports of ``values`` (each in ``[0, d)``), one per value.

    Production reports are chained (:func:`permanent_response`, then
    :func:`instantaneous_response`); this is the plain oracle, for analysis and tests.

    Args:
        oracle: ``"grr"`` or ``"oue"``.
        values: integer array of shape ``(m,)``.
        d: domain size, ``2 ≤ d ≤ 2**32``.
        epsilon: ``0 < ε ≤ 50``.
        seed: testing only; see the module docstring.

    Returns:
        GRR: int64 ``(m,)``. OUE: uint8 ``(m, ceil(d/8))``, packed LSB-first.

    Raises:
        InputError: naming the argument.
    """
    if Oracle.parse(oracle) is Oracle.GRR:
        return _core.grr_perturb(values, d, epsilon, seed=seed)
    return _core.oue_perturb(values, d, epsilon, seed=seed)


def permanent_response(
    oracle: Oracle | str,
    values: npt.ArrayLike,
    d: int,
    epsilon_perm: float,
    *,
    seed: int | None = None,
) -> Reports:
    """The permanent response of each true value, with ``epsilon_perm``.

    The device draws this once per true value, stores it, and never draws it again for that
    value (forgetting single events keeps it; forgetting everything starts a silent period).
    Shapes as :func:`perturb`.

    Raises:
        InputError: naming the argument.
    """
    if Oracle.parse(oracle) is Oracle.GRR:
        return _core.grr_permanent(values, d, epsilon_perm, seed=seed)
    return _core.oue_permanent(values, d, epsilon_perm, seed=seed)


def instantaneous_response(
    oracle: Oracle | str,
    permanent: npt.ArrayLike,
    d: int,
    epsilon: float,
    *,
    seed: int | None = None,
) -> Reports:
    """A fresh instantaneous response, with ``epsilon``, of each memoised permanent response.

    Args:
        oracle: ``"grr"`` or ``"oue"``.
        permanent: what :func:`permanent_response` returned (GRR: int ``(m,)``; OUE: uint8
            ``(m, ceil(d/8))``).
        d: domain size.
        epsilon: the per-report ε.
        seed: testing only.

    Returns:
        The same shape and dtype as ``permanent``: what goes on the wire.

    Raises:
        InputError: naming the argument.
    """
    if Oracle.parse(oracle) is Oracle.GRR:
        return _core.grr_instantaneous(permanent, d, epsilon, seed=seed)
    return _core.oue_instantaneous(np.asarray(permanent), d, epsilon, seed=seed)


@dataclass(frozen=True)
class Randomizer:
    """The device-side mechanism for one configuration: oracle, domain and both ε.

    Build it with :meth:`for_domain` to choose the oracle by variance, or give the oracle the
    bundle names. Construction validates everything.

    Example::

        r = Randomizer.for_domain(d=256, epsilon=2.0, epsilon_perm=4.0)
        memo = r.permanent([17])          # store this, once per true value
        wire = r.instantaneous(memo)      # fresh for every report
    """

    oracle: Oracle
    d: int
    epsilon: float
    epsilon_perm: float
    #: ``(p*, q*)`` of the chained report, for the server to debias with.
    probabilities: tuple[float, float] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "oracle", Oracle.parse(self.oracle))
        pq = effective_probabilities(self.oracle, self.d, self.epsilon, self.epsilon_perm)
        object.__setattr__(self, "probabilities", pq)

    @classmethod
    def for_domain(cls, d: int, epsilon: float, epsilon_perm: float) -> Randomizer:
        """The randomiser with the oracle :func:`choose_chained_oracle` picks for its chained
        report (the rule a bundle's ``auto`` oracle follows)."""
        return cls(choose_chained_oracle(d, epsilon, epsilon_perm), d, epsilon, epsilon_perm)

    @property
    def report_epsilon(self) -> float:
        """The ε one report actually reveals (:func:`effective_epsilon`)."""
        return effective_epsilon(self.oracle, self.d, self.epsilon, self.epsilon_perm)

    def permanent(self, values: npt.ArrayLike, *, seed: int | None = None) -> Reports:
        """:func:`permanent_response` with this configuration."""
        return permanent_response(self.oracle, values, self.d, self.epsilon_perm, seed=seed)

    def instantaneous(self, permanent: npt.ArrayLike, *, seed: int | None = None) -> Reports:
        """:func:`instantaneous_response` with this configuration."""
        return instantaneous_response(self.oracle, permanent, self.d, self.epsilon, seed=seed)


def packed_len(d: int) -> int:
    """Bytes in one packed OUE report of ``d`` bits: ``ceil(d/8)``."""
    return (d + 7) // 8


def pack_bits(bits: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """Pack a boolean array ``(..., d)`` LSB-first along its last axis into
    ``(..., ceil(d/8))`` bytes, the layout of OUE reports."""
    return np.packbits(np.asarray(bits, dtype=bool), axis=-1, bitorder="little")


def unpack_bits(packed: npt.ArrayLike, d: int) -> npt.NDArray[np.bool_]:
    """The inverse of :func:`pack_bits`: ``(..., ceil(d/8))`` bytes to ``(..., d)`` booleans.

    Raises:
        InputError: naming ``packed``, if its last axis is not ``ceil(d/8)`` bytes of uint8.
    """
    arr = np.asarray(packed)
    if arr.dtype != np.uint8 or arr.ndim == 0 or arr.shape[-1] != packed_len(d):
        raise InputError(
            f"packed: expected uint8 (..., {packed_len(d)}) for d = {d}, "
            f"got {arr.dtype} {arr.shape}"
        )
    return np.unpackbits(arr, axis=-1, count=d, bitorder="little").astype(bool)


def encode_bits(packed: npt.ArrayLike) -> str:
    """One packed OUE report (uint8 ``(ceil(d/8),)``) as the base64 text the wire carries.

    Raises:
        InputError: naming ``packed``, if it is not a 1-D uint8 array.
    """
    arr = np.asarray(packed)
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise InputError(f"packed: expected a 1-D uint8 array, got {arr.dtype} {arr.shape}")
    return base64.b64encode(arr.tobytes()).decode("ascii")


def decode_bits(text: str, d: int) -> npt.NDArray[np.uint8]:
    """The packed report (uint8 ``(ceil(d/8),)``) a wire ``bits`` field holds, validated.

    Raises:
        InputError: naming ``bits``, for text that is not strict base64, the wrong length for
            ``d``, or padding bits set beyond ``d``.
    """
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise InputError("bits: expected standard base64 text") from None
    if len(raw) != packed_len(d):
        raise InputError(f"bits: expected {packed_len(d)} bytes for d = {d}, got {len(raw)} bytes")
    arr: npt.NDArray[np.uint8] = np.frombuffer(raw, dtype=np.uint8).copy()
    if d % 8 and arr[-1] >> (d % 8):
        raise InputError(f"bits: bits set beyond d = {d}")
    return arr


def discrete_laplace(
    counts: npt.ArrayLike,
    epsilon: int | float | Fraction,
    sensitivity: int,
    *,
    seed: int | None = None,
) -> npt.NDArray[np.int64]:
    """``counts`` (any shape, integers) plus independent discrete Laplace noise, for central
    mode. The result is ε-differentially private for counts of L1 sensitivity ``sensitivity``.

    The noise ``Z`` has ``P(Z = z) ∝ exp(−ε|z|/Δ)`` over the integers, variance
    ``2α/(1 − α)²`` with ``α = exp(−ε/Δ)``, and is sampled exactly with integer arithmetic
    (Canonne, Kamath and Steinke 2020). Textbook floating-point Laplace is not used: its
    outputs leak the input through which doubles they can take (Mironov 2012).

    Args:
        counts: integer array of any shape.
        epsilon: ε as an exact rational. A ``float`` means its exact binary value (``0.1`` is
            ``3602879701896397/2**55``); pass ``Fraction(1, 10)`` (or ``Fraction("0.1")``) for
            exactly one tenth. Numerator and denominator must be below ``2**64``, which
            rules out floats below about ``2**-11`` (``1e-6`` is ``4722366482869645/2**72``):
            pass those as a Fraction. ``ε/Δ`` must be at least ``2**-32``.
        sensitivity: ``Δ``, an integer in ``[1, 2**32]``: how much one device can change any
            count (``L`` for engagement counts when a device sends at most ``L`` reports).
        seed: testing only.

    Raises:
        InputError: naming the argument.
    """
    arr = np.asarray(counts)
    noisy = _core.discrete_laplace(arr.reshape(-1), epsilon, sensitivity, seed=seed)
    return noisy.reshape(arr.shape)
