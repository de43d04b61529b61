"""pytest-benchmark suite for the kernel and the engine (``make bench``; not part of the tests).

The side-by-side ratios against numpy and onnxruntime come from ``benches/compare.py``; this
suite tracks the absolute timings of each public entry point across changes.
"""

from __future__ import annotations

import numpy as np
import pytest

import localrank

D, K = 64, 10


def catalog(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n)
    return {
        "u": rng.standard_normal(D).astype(np.float32),
        "E": rng.standard_normal((n, D), dtype=np.float32),
        "bias": rng.standard_normal(n).astype(np.float32),
        "category": rng.integers(0, 16, n).astype(np.int32),
        "prior": rng.standard_normal(16).astype(np.float32),
        "eligible": rng.random(n) < 0.9,
        "adjust": rng.standard_normal(n).astype(np.float32),
    }


SIZES = [1_000, 100_000]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kernel", localrank.available_kernels())
def test_score_topk(benchmark: pytest.FixtureRequest, n: int, kernel: str) -> None:
    c = catalog(n)
    idx, _ = benchmark(
        localrank.score_topk, c["u"], c["E"], c["bias"], c["category"], c["prior"],
        c["eligible"], adjust=c["adjust"], k=K, _kernel=kernel,
    )
    assert idx.size == K


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("rescore", [False, True])
def test_score_topk_int8(benchmark: pytest.FixtureRequest, n: int, rescore: bool) -> None:
    c = catalog(n)
    q, scale = localrank.quantize_int8(c["E"])
    idx, _ = benchmark(
        localrank.score_topk_int8, c["u"], q, scale, c["bias"], c["category"], c["prior"],
        c["eligible"], adjust=c["adjust"], k=K, rescore=c["E"] if rescore else None,
    )
    assert idx.size == K


def test_quantize_int8(benchmark: pytest.FixtureRequest) -> None:
    c = catalog(100_000)
    q, _ = benchmark(localrank.quantize_int8, c["E"])
    assert q.shape == c["E"].shape
