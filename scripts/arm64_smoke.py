"""Smoke test of the aarch64 wheel, run by scripts/arm64-wheel.sh under an emulated aarch64 Python.

It imports the installed wheel and checks every available kernel path against a numpy
reference: f32 rankings must be "the same" as docs/design.md defines it, int8 rankings without
re-scoring bit-for-bit equal to the scalar path and within tolerance of the numpy reference.
Only numpy and the standard library are needed (the emulated Python has no pytest).

Exit status 0 when everything passed; an AssertionError otherwise.
"""

from __future__ import annotations

import os
import platform
import sys

import numpy as np

import localrank


def tol(s: float) -> float:
    return 1e-5 * max(1.0, abs(s))


def _round_away(x: np.ndarray) -> np.ndarray:
    """Rust's f32::round: halves away from zero (numpy's round goes to even)."""
    return (np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))).astype(np.float32)


def user_int8(u: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """The kernel's two-limb quantisation of the user vector (rust/localrank-core/src/int8.rs,
    ``UserInt8``): ``u ≈ step·wide`` with ``wide = 254·hi + lo``; returns (wide, step)."""
    m = np.float32(np.max(np.abs(u)))
    if m == 0:
        return np.zeros(u.shape, np.int64), np.float32(0)
    scale = np.float32(m / np.float32(127))
    x = (u / scale).astype(np.float32)
    hi = np.clip(_round_away(x), -127, 127)
    lo = np.clip(_round_away(((x - hi) * np.float32(254)).astype(np.float32)), -127, 127)
    wide = hi.astype(np.int64) * 254 + lo.astype(np.int64)
    return wide, np.float32(scale / np.float32(254))


def reference(u, E, bias, category, prior, eligible, w_dot, w_prior, adjust):
    """Every row's score in float64 (NaN where ineligible)."""
    s = w_dot * (E.astype(np.float64) @ u.astype(np.float64)) + bias + w_prior * prior[category]
    if adjust is not None:
        s = s + adjust
    return np.where(eligible, s, np.nan)


def ranking(ref, k):
    """The reference top-k: highest score first, ties to the lower index."""
    idx = np.flatnonzero(~np.isnan(ref))
    order = sorted(idx.tolist(), key=lambda i: (-ref[i], i))
    return order[:k]


def assert_same(what, ref, k, indices, scores):
    want = ranking(ref, k)
    assert indices.dtype == np.int64 and scores.dtype == np.float32, what
    assert len(indices) == len(want), f"{what}: {len(indices)} results, want {len(want)}"
    assert len(set(indices.tolist())) == len(indices), f"{what}: duplicate index"
    for rank, (i, s) in enumerate(zip(indices.tolist(), scores.tolist(), strict=True)):
        true_s = ref[i]
        assert not np.isnan(true_s), f"{what}: ineligible row {i} returned"
        assert abs(s - true_s) <= tol(true_s), f"{what}: row {i} scored {s}, numpy {true_s}"
        want_s = ref[want[rank]]
        assert abs(true_s - want_s) <= tol(want_s), (
            f"{what}: rank {rank} holds row {i} ({true_s}), numpy has row {want[rank]} ({want_s})"
        )


def main() -> int:
    assert platform.machine() == "aarch64", platform.machine()
    kernels = localrank.available_kernels()
    print(
        f"machine {platform.machine()}, numpy {np.__version__}, localrank {localrank.__version__}"
    )
    print(f"kernels available: {','.join(kernels)} (default {localrank.default_kernel()})")
    expect = os.environ.get("LOCALRANK_EXPECT_KERNELS")
    if expect:
        assert ",".join(kernels) == expect, f"expected paths {expect}, got {kernels}"
    assert "neon" in kernels

    rng = np.random.default_rng(8)
    n, C = 500, 6
    for d in (1, 7, 16, 33, 64, 100):
        u = rng.uniform(-1, 1, d).astype(np.float32)
        E = rng.uniform(-1, 1, (n, d)).astype(np.float32)
        bias = rng.uniform(-0.1, 0.1, n).astype(np.float32)
        category = rng.integers(0, C, n).astype(np.int32)
        prior = rng.uniform(0, 0.5, C).astype(np.float32)
        eligible = rng.random(n) < 0.8
        adjust = rng.uniform(-0.05, 0.05, n).astype(np.float32)
        args = (u, E, bias, category, prior, eligible)
        ref = reference(u, E, bias, category, prior, eligible, 0.8, 1.5, adjust)

        q, scale = localrank.quantize_int8(E)
        q[:, ::5] = -128  # the stored row may hold -128; quantize_int8 never writes it
        wide, step = user_int8(u)
        idot = q.astype(np.int64) @ wide  # exact
        qdot = (idot.astype(np.float32) * (step * scale)).astype(np.float64)
        ref8 = np.where(eligible, 0.8 * qdot + bias + 1.5 * prior[category] + adjust, np.nan)

        for k in (1, 10, n):
            int8_scalar = localrank.score_topk_int8(
                u,
                q,
                scale,
                bias,
                category,
                prior,
                eligible,
                w_dot=0.8,
                w_prior=1.5,
                adjust=adjust,
                k=k,
                _kernel="scalar",
            )
            for kernel in kernels:
                what = f"path {kernel} d {d} k {k}"
                got = localrank.score_topk(
                    *args, w_dot=0.8, w_prior=1.5, adjust=adjust, k=k, _kernel=kernel
                )
                assert_same(what, ref, k, *got)
                got8 = localrank.score_topk_int8(
                    u,
                    q,
                    scale,
                    bias,
                    category,
                    prior,
                    eligible,
                    w_dot=0.8,
                    w_prior=1.5,
                    adjust=adjust,
                    k=k,
                    _kernel=kernel,
                )
                assert_same(what + " int8", ref8, k, *got8)
                assert np.array_equal(got8[0], int8_scalar[0]), what + " int8 indices"
                assert np.array_equal(got8[1], int8_scalar[1]), what + " int8 scores"
                rescored = localrank.score_topk_int8(
                    u,
                    q,
                    scale,
                    bias,
                    category,
                    prior,
                    eligible,
                    w_dot=0.8,
                    w_prior=1.5,
                    adjust=adjust,
                    k=k,
                    rescore=E,
                    _kernel=kernel,
                )
                # Re-scored candidates carry f32 scores; with k = n every row is a candidate.
                ri, rs = rescored
                assert len(ri) == min(k, int(eligible.sum())), what + " rescored"
                assert np.all(np.diff(rs) <= 0), what + " rescored order"
                for i, s in zip(ri.tolist(), rs.tolist(), strict=True):
                    assert abs(s - ref[i]) <= tol(ref[i]), f"{what} rescored row {i}"
                if k == n:
                    assert_same(what + " rescored", ref, k, *rescored)

    integers = rng.integers(-1000, 1000, (37, 29)).astype(np.float32)
    for kernel in kernels:
        assert localrank._core._stream_sum(integers, _kernel=kernel) == float(integers.sum())
        print(f"path {kernel}: ok (score_topk, score_topk_int8 vs numpy; _stream_sum)")

    # Threads inside the extension, in a dynamically linked Python under qemu-user: rows are
    # split over threads only past 2 × 16384 rows.
    m = 40_000
    big = (
        rng.uniform(-1, 1, 8).astype(np.float32),
        rng.uniform(-1, 1, (m, 8)).astype(np.float32),
        np.zeros(m, np.float32),
        np.zeros(m, np.int32),
        np.zeros(1, np.float32),
        np.ones(m, bool),
    )
    for kernel in kernels:
        one = localrank.score_topk(*big, k=5, threads=1, _kernel=kernel)
        two = localrank.score_topk(*big, k=5, threads=2, _kernel=kernel)
        assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1]), kernel
        print(f"path {kernel}: ok (threads=2 equal to one pass)")

    for kernel in ("avx2", "sdot"):
        if kernel not in kernels:
            try:
                localrank.score_topk(*args, _kernel=kernel)
            except localrank.KernelError:
                print(f"path {kernel}: refused (not on this CPU)")
            else:
                raise AssertionError(f"path {kernel} is not available but was not refused")
    print("arm64 smoke: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
