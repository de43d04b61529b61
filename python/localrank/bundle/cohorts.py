"""What a bundle carries for learned interest cohorts, as plain arrays both sides can read.

The server (:mod:`localrank.server.cohort_fit`) builds a :class:`CohortPayload`; the device
(:mod:`localrank.device.fold_in`) folds itself in with it. This module sits with the bundle's
other vocabulary because the server never imports the device and the device never imports the
server.

| array | shape, dtype | what it is |
|---|---|---|
| ``factors`` | ``[offers, f]`` float32, float16 or int8 | the offer factors ``V`` |
| ``factor_scale`` | ``[offers]`` float32 (int8 only) | ``V[i] = factors[i] · factor_scale[i]`` |
| ``gram_inv`` | ``[f, f]`` float32 | ``(V̂ᵀV̂ + λI)⁻¹`` of the *decoded* ``V̂`` |
| ``centroids`` | ``[C, f]`` float32 | the cohorts' centroids in factor space |
| ``ids`` | ``[C]`` int32 | the cohorts' segment ids (a reserved range of the domain) |
| ``regularization`` | ``[]`` float64 | ``λ`` |
| ``fold_in_weight`` | ``[]`` float64, optional | the rows' share of signal, in [0, 1] (absent: 1) |

``fold_in_weight`` scales the ranking's ``w_dot·u·V_i`` term on every device: the server's own
measure of how much of the cohort rows it learned ``V`` from is signal rather than the
de-biasing noise of randomised reports (:func:`localrank.server.cohort_fit.signal_shares`). Under
heavy noise the learned term fades out, and ranking falls back on the prior and popularity.

``gram_inv`` is computed from the decoded factors, not the server's full-precision ones, so a
device's fold-in is exactly the ridge solve on the factors it holds. At 2,000 offers and f = 32
the arrays take 134 KB in float16 and 78 KB in int8 with 12 cohorts (146 KB and 90 KB with
100), as .npy files; float32 takes 262 KB.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from localrank.errors import InputError

__all__ = [
    "FACTOR_ENCODINGS",
    "CohortPayload",
    "FactorEncoding",
    "decode_factors",
    "encode_factors",
    "encode_payload",
    "gram_inverse",
]

FactorEncoding = Literal["float32", "float16", "int8"]
FACTOR_ENCODINGS: tuple[FactorEncoding, ...] = ("float32", "float16", "int8")
_NAMES = ("factors", "factor_scale", "gram_inv", "centroids", "ids", "regularization")
_OPTIONAL = ("factor_scale", "fold_in_weight")


def encode_factors(factors: np.ndarray, encoding: FactorEncoding) -> dict[str, np.ndarray]:
    """``{"factors": ...}`` (plus ``"factor_scale"`` for int8) for ``V`` in ``encoding``.

    Raises:
        InputError: naming the argument.
    """
    V = np.asarray(factors, dtype=np.float64)
    if V.ndim != 2 or V.shape[0] < 1 or V.shape[1] < 1 or not np.all(np.isfinite(V)):
        raise InputError(f"factors: expected finite [offers ≥ 1, f ≥ 1], got {V.shape}")
    if encoding == "float32":
        return {"factors": V.astype(np.float32)}
    if encoding == "float16":
        if np.max(np.abs(V), initial=0.0) > 6.0e4:
            raise InputError("factors: expected |values| < 6e4 for float16 encoding")
        return {"factors": V.astype(np.float16)}
    if encoding == "int8":
        # The kernel's own int8 quantiser: the same q and scale its int8 path would use.
        from localrank._core import quantize_int8

        q, scale = quantize_int8(np.ascontiguousarray(V, dtype=np.float32))
        return {"factors": np.asarray(q, np.int8), "factor_scale": np.asarray(scale, np.float32)}
    raise InputError(f"encoding: expected one of {FACTOR_ENCODINGS}, got {encoding!r}")


def decode_factors(encoded: Mapping[str, np.ndarray]) -> np.ndarray:
    """float32 ``V̂`` from :func:`encode_factors`' arrays.

    Raises:
        InputError: naming the array.
    """
    factors = np.asarray(encoded["factors"])
    scale = encoded.get("factor_scale")
    if factors.ndim != 2 or factors.shape[1] < 1:
        raise InputError(f"factors: expected [offers, f], got {factors.shape}")
    if factors.dtype == np.int8:
        if scale is None or np.shape(scale) != (factors.shape[0],):
            raise InputError(
                f"factor_scale: expected float32[{factors.shape[0]}] beside int8 factors, got "
                f"{None if scale is None else np.shape(scale)}"
            )
        out: np.ndarray = factors.astype(np.float32) * np.asarray(scale, np.float32)[:, None]
        return out
    if factors.dtype not in (np.float32, np.float16):
        raise InputError(f"factors: expected float32, float16 or int8, got {factors.dtype}")
    return factors.astype(np.float32)


def gram_inverse(V: np.ndarray, regularization: float) -> np.ndarray:
    """``(VᵀV + λI)⁻¹`` in float64. Computed with ``np.einsum`` (no BLAS call, so the sum's
    order does not depend on the BLAS thread count)."""
    V = np.asarray(V, dtype=np.float64)
    f = V.shape[1]
    G = np.einsum("if,ig->fg", V, V, optimize=False) + regularization * np.eye(f)
    G = (G + G.T) / 2
    inv: np.ndarray = np.linalg.inv(G)
    out: np.ndarray = (inv + inv.T) / 2
    return out


@dataclass(frozen=True)
class CohortPayload:
    """The decoded cohort arrays of a bundle (see the module docstring)."""

    factors: np.ndarray  # float32[offers, f], decoded
    gram_inv: np.ndarray  # float32[f, f]
    centroids: np.ndarray  # float32[C, f]
    ids: np.ndarray  # int32[C]
    regularization: float
    encoded: Mapping[str, np.ndarray]  # exactly what goes into the bundle
    #: scales ``w_dot`` on the device (the module docstring)
    fold_in_weight: float = 1.0

    def to_arrays(self, prefix: str = "extra_cohort_") -> dict[str, np.ndarray]:
        """The plain arrays to store, their names prefixed (the bundle's extras need
        ``extra_``)."""
        return {prefix + name: np.asarray(a) for name, a in self.encoded.items()}

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, np.ndarray], prefix: str = "extra_cohort_"
    ) -> CohortPayload:
        """Parse and check what :meth:`to_arrays` stored.

        Raises:
            InputError: naming the array that is missing or malformed.
        """
        raw: dict[str, np.ndarray] = {}
        for name in (*_NAMES, "fold_in_weight"):
            if prefix + name in arrays:
                raw[name] = np.asarray(arrays[prefix + name])
            elif name not in _OPTIONAL:
                raise InputError(f"{prefix}{name}: expected in the bundle's arrays, missing")
        try:
            V = decode_factors(raw)
        except InputError as e:
            raise InputError(f"{prefix}{e}") from e
        f = V.shape[1]
        gram_inv = raw["gram_inv"].astype(np.float32)
        centroids = raw["centroids"].astype(np.float32)
        ids = raw["ids"]
        lam = raw["regularization"]
        if gram_inv.shape != (f, f):
            raise InputError(f"{prefix}gram_inv: expected ({f}, {f}), got {gram_inv.shape}")
        if centroids.ndim != 2 or centroids.shape[1] != f:
            raise InputError(f"{prefix}centroids: expected [C, {f}], got {centroids.shape}")
        if ids.shape != (centroids.shape[0],) or ids.dtype.kind not in "iu":
            raise InputError(
                f"{prefix}ids: expected int[{centroids.shape[0]}], got {ids.dtype}{ids.shape}"
            )
        if len(np.unique(ids)) != ids.size:
            raise InputError(f"{prefix}ids: expected unique ids, got {ids.tolist()}")
        if lam.shape != () or not (np.isfinite(lam) and lam > 0):
            raise InputError(f"{prefix}regularization: expected a number > 0, got {lam!r}")
        for name, a in (("factors", V), ("gram_inv", gram_inv), ("centroids", centroids)):
            if not np.all(np.isfinite(a)):
                raise InputError(f"{prefix}{name}: expected finite values")
        weight = _fold_in_weight(raw.get("fold_in_weight"), prefix + "fold_in_weight")
        return cls(V, gram_inv, centroids, ids.astype(np.int32), float(lam), raw, weight)

    @classmethod
    def build(
        cls,
        encoded_factors: Mapping[str, np.ndarray],
        centroids: np.ndarray,
        ids: np.ndarray,
        *,
        regularization: float,
        fold_in_weight: float | None = None,
    ) -> CohortPayload:
        """The payload of already encoded factors: ``gram_inv`` is computed from the decoded
        ``V̂``, ``centroids`` are stored as float32 and ``ids`` as int32. ``fold_in_weight``:
        None keeps the one ``encoded_factors`` carries (a previous payload's arrays), else 1.

        Raises:
            InputError: naming the argument.
        """
        V_hat = decode_factors(encoded_factors)
        f = V_hat.shape[1]
        # No cohorts yet is a valid payload: every device stays at the root.
        C = np.zeros((0, f)) if np.size(centroids) == 0 else np.asarray(centroids, np.float64)
        if C.ndim != 2 or C.shape[1] != f or not np.all(np.isfinite(C)):
            raise InputError(f"centroids: expected finite [C, {f}], got {C.shape}")
        ids_a = np.asarray(ids)
        if ids_a.shape != (C.shape[0],) or (ids_a.size and ids_a.dtype.kind not in "iu"):
            raise InputError(f"ids: expected int[{C.shape[0]}], got {ids_a.dtype}{ids_a.shape}")
        if len(np.unique(ids_a)) != ids_a.size or (ids_a.size and ids_a.min() < 0):
            raise InputError(f"ids: expected unique ids ≥ 0, got {ids_a.tolist()}")
        if isinstance(regularization, bool) or not isinstance(regularization, (int, float)):
            raise InputError(f"regularization: expected a number > 0, got {regularization!r}")
        if not (np.isfinite(regularization) and regularization > 0):
            raise InputError(f"regularization: expected a number > 0, got {regularization!r}")
        encoded = {k: np.asarray(v) for k, v in encoded_factors.items()}
        kept = encoded.pop("fold_in_weight", None)
        weight = _fold_in_weight(kept if fold_in_weight is None else fold_in_weight,
                                 "fold_in_weight")  # fmt: skip
        if weight != 1.0:  # absent means 1: round 0's bundles keep their bytes
            encoded["fold_in_weight"] = np.asarray(weight, dtype=np.float64)
        gram_inv = gram_inverse(V_hat, float(regularization)).astype(np.float32)
        encoded["gram_inv"] = gram_inv
        encoded["centroids"] = C.astype(np.float32)
        encoded["ids"] = ids_a.astype(np.int32)
        encoded["regularization"] = np.asarray(float(regularization), dtype=np.float64)
        return cls(
            V_hat,
            gram_inv,
            encoded["centroids"],
            encoded["ids"],
            float(regularization),
            encoded,
            weight,
        )

    @property
    def payload_bytes(self) -> int:
        """Bytes of the stored arrays' data (each .npy file adds a ~128-byte header)."""
        return sum(int(a.nbytes) for a in self.encoded.values())


def _fold_in_weight(value: object, arg: str) -> float:
    """A weight in [0, 1] (None: 1), or InputError naming ``arg``."""
    if value is None:
        return 1.0
    a = np.asarray(value)
    if a.shape != () or a.dtype.kind not in "fiu" or not (0.0 <= float(a) <= 1.0):
        raise InputError(f"{arg}: expected a number in [0, 1], got {value!r}")
    return float(a)


def encode_payload(
    factors: np.ndarray,
    centroids: np.ndarray,
    ids: np.ndarray,
    *,
    regularization: float,
    encoding: FactorEncoding = "float16",
) -> CohortPayload:
    """Encode ``V`` in ``encoding``, then :meth:`CohortPayload.build` (``gram_inv`` from the
    decoded ``V̂``). The server computes ``centroids`` with ``V̂`` too
    (:func:`localrank.server.cohort_fit.cohort_round`).

    Raises:
        InputError: naming the argument.
    """
    return CohortPayload.build(
        encode_factors(factors, encoding), centroids, ids, regularization=regularization
    )
