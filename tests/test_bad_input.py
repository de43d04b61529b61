"""Every bad input to the kernel raises InputError (a ValueError) naming the argument."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import localrank
from localrank import InputError

n, d, C = 20, 8, 3


def good() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "u": rng.standard_normal(d).astype(np.float32),
        "E": rng.standard_normal((n, d)).astype(np.float32),
        "bias": np.zeros(n, np.float32),
        "category": rng.integers(0, C, n).astype(np.int32),
        "prior": np.zeros(C, np.float32),
        "eligible": np.ones(n, bool),
    }


def run_f32(args: dict[str, Any], **kw: Any) -> Any:
    return localrank.score_topk(
        args["u"], args["E"], args["bias"], args["category"], args["prior"], args["eligible"], **kw
    )


def run_int8(args: dict[str, Any], **kw: Any) -> Any:
    q, scale = localrank.quantize_int8(np.nan_to_num(args["E"], posinf=0.0, neginf=0.0))
    kw.setdefault("rescore", None)
    return localrank.score_topk_int8(
        args["u"], q, scale, args["bias"], args["category"], args["prior"], args["eligible"], **kw
    )


RUNNERS = [run_f32, run_int8]


def expect(arg: str, fn: Callable[[], Any], what: str = "") -> None:
    with pytest.raises(InputError, match=rf"^{re.escape(arg)}: .*{what}") as info:
        fn()
    assert isinstance(info.value, ValueError)


def with_(**changes: Any) -> dict[str, Any]:
    args = good()
    args.update(changes)
    return args


SHAPE_CASES = [
    ("u", np.zeros((d, 1), np.float32), "1-D"),
    ("E", np.zeros(n * d, np.float32), "2-D"),
    ("bias", np.zeros((n, 1), np.float32), "1-D"),
    ("category", np.zeros((n, 1), np.int32), "1-D"),
    ("prior", np.zeros((C, 1), np.float32), "1-D"),
    ("eligible", np.ones((n, 1), bool), "1-D"),
    ("bias", np.zeros(n + 1, np.float32), "length n = 20"),
    ("category", np.zeros(n - 1, np.int32), "length n = 20"),
    ("eligible", np.ones(3, bool), "length n = 20"),
    ("u", np.zeros(0, np.float32), "non-empty"),
]


@pytest.mark.parametrize(
    ("runner", "arg", "value", "what"),
    # run_int8 quantises E itself, so a bad E is an f32 case; q's shape is tested below.
    [(r, *case) for r in RUNNERS for case in SHAPE_CASES if not (r is run_int8 and case[0] == "E")],
)
def test_shapes(runner: Callable[..., Any], arg: str, value: Any, what: str) -> None:
    expect(arg, lambda: runner(with_(**{arg: value})), re.escape(what))


def test_embedding_width_must_match_u() -> None:
    expect("E", lambda: run_f32(with_(u=np.zeros(d + 1, np.float32))), r"len\(u\) = 9")
    expect("q", lambda: run_int8(with_(u=np.zeros(d + 1, np.float32))), r"len\(u\) = 9")


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("k", [0, -1, -(2**40)])
def test_k_must_be_positive(runner: Callable[..., Any], k: int) -> None:
    expect("k", lambda: runner(good(), k=k), "≥ 1")


@pytest.mark.parametrize("runner", RUNNERS)
def test_threads_must_be_positive(runner: Callable[..., Any]) -> None:
    expect("threads", lambda: runner(good(), threads=0), "≥ 1")


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_u_and_prior(runner: Callable[..., Any], bad: float) -> None:
    u = good()["u"]
    u[3] = bad
    expect("u", lambda: runner(with_(u=u)), r"u\[3\]")
    prior = np.zeros(C, np.float32)
    prior[1] = bad
    expect("prior", lambda: runner(with_(prior=prior)), r"prior\[1\]")


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("weight", ["w_dot", "w_prior"])
def test_non_finite_weights(runner: Callable[..., Any], weight: str) -> None:
    expect(weight, lambda: runner(good(), **{weight: float("nan")}), "finite")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_in_an_eligible_row(bad: float) -> None:
    E = good()["E"]
    E[4, 5] = bad
    expect("E", lambda: run_f32(with_(E=E)), r"E\[4, 5\]")
    bias = np.zeros(n, np.float32)
    bias[6] = bad
    for runner in RUNNERS:
        expect("bias", lambda r=runner: r(with_(bias=bias)), r"bias\[6\]")
    adjust = np.zeros(n, np.float32)
    adjust[7] = bad
    for runner in RUNNERS:
        expect("adjust", lambda r=runner: r(good(), adjust=adjust), r"adjust\[7\]")


def test_non_finite_int8_scale_in_an_eligible_row() -> None:
    args = good()
    q, scale = localrank.quantize_int8(args["E"])
    scale[2] = np.nan
    expect("scale", lambda: localrank.score_topk_int8(
        args["u"], q, scale, args["bias"], args["category"], args["prior"], args["eligible"]
    ), r"scale\[2\]")


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("c", [-1, C, 2**31 - 1])
def test_category_out_of_range_in_an_eligible_row(runner: Callable[..., Any], c: int) -> None:
    category = good()["category"]
    category[9] = c
    expect("category", lambda: runner(with_(category=category)), r"\[0, 3\).*category\[9\]")


def test_wide_integer_categories_out_of_int32_range() -> None:
    category = good()["category"].astype(np.int64)
    category[2] = 2**40
    expect("category", lambda: run_f32(with_(category=category)), r"category\[2\]")
    category = good()["category"].astype(np.uint64)
    category[0] = 2**63 + 5
    expect("category", lambda: run_f32(with_(category=category)), r"category\[0\]")


def test_overflow_is_reported_not_returned() -> None:
    E = good()["E"]
    E[0] = 3e38
    u = np.full(d, 3e38, np.float32)
    expect("E", lambda: run_f32(with_(E=E, u=u)), "overflows")


NON_NUMERIC = [
    ("u", np.ones(d, bool)),
    ("u", np.array(["a"] * d)),
    ("E", np.ones((n, d), complex)),
    ("bias", np.array([object()] * n)),
    ("category", np.zeros(n, np.float32)),
    ("prior", np.array(["x"] * C)),
    ("eligible", np.ones(n, np.int8)),
    ("eligible", np.ones(n, np.float32)),
]


@pytest.mark.parametrize(("arg", "value"), NON_NUMERIC)
def test_non_numeric_dtypes(arg: str, value: Any) -> None:
    expect(arg, lambda: run_f32(with_(**{arg: value})), "dtype")


def test_int8_specific_arguments() -> None:
    args = good()
    q, scale = localrank.quantize_int8(args["E"])
    rest = (args["bias"], args["category"], args["prior"], args["eligible"])
    expect("q", lambda: localrank.score_topk_int8(args["u"], q.astype(np.float32), scale, *rest),
           "int8")
    expect("scale", lambda: localrank.score_topk_int8(args["u"], q, scale[:-1], *rest),
           "length n = 20")
    expect("rescore", lambda: localrank.score_topk_int8(args["u"], q, scale, *rest,
                                                        rescore=args["E"][:, :-1]), r"\(20, 8\)")


def test_quantize_int8_refuses_non_finite_and_bad_rank() -> None:
    E = good()["E"]
    E[3, 1] = np.inf
    expect("E", lambda: localrank.quantize_int8(E), r"E\[3, 1\]")
    expect("E", lambda: localrank.quantize_int8(np.zeros(5, np.float32)), "2-D")


def test_objects_that_are_not_arrays() -> None:
    expect("u", lambda: run_f32(with_(u="not an array")), "")
    expect("E", lambda: run_f32(with_(E=[[1.0, 2.0], [3.0]])), "")


def test_forcing_an_unknown_or_missing_kernel() -> None:
    with pytest.raises(localrank.KernelError, match="expected one of"):
        run_f32(good(), _kernel="sse9")
    missing = [k for k in ("avx2", "neon", "sdot") if k not in localrank.available_kernels()]
    for name in missing:
        with pytest.raises(localrank.KernelError, match="not available"):
            run_f32(good(), _kernel=name)
