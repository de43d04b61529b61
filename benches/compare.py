"""Side-by-side comparison of the scoring kernel with faiss, numpy and onnxruntime, in one process.

    python -m benches.compare [--sizes 1000,10000,100000,1000000] [--quick] [--out FILE]

For each catalog size n (d = 64, k = 10, one thread everywhere) it times:

- ``f32``    localrank.score_topk
- ``int8``   localrank.score_topk_int8 (no re-scoring) and ``int8+rs`` (with ``rescore=E``)
- ``faiss``  faiss ``IndexFlatIP`` over ``[E, bias, prior[category], adjust]`` searched with the
             query ``[w_dot·u, 1, w_prior, 1]`` and an ``IDSelectorBitmap`` for the mask, one
             OpenMP thread: the same top k, the way a faiss user would write the job
- ``numpy``  the same job in numpy: matvec, weights, bias, prior, mask, argpartition, sort
- ``ort``    onnxruntime running the equivalent graph (MatMul, Gather, Where, TopK) with one
             intra-op thread; the catalog arrays are initializers, as in an exported model
- ``floor``  a plain streaming read of E (the f32 memory floor), ``floor8`` the same of the
             int8 rows q (a quarter of the bytes): int8's yardstick, since faiss's 8-bit
             ``IndexScalarQuantizer`` is 10–25× slower than localrank's int8 and no peer

Methods are timed round-robin in interleaved rounds so that drift on a shared machine hits them
alike; each figure is the median over rounds of the per-call mean of a batch. It prints the
medians and ratios and writes JSON with the machine (CPU model, SIMD features), the BLAS library
numpy used and its thread count, and the timings.

CPU-type overrides in the environment (``OPENBLAS_CORETYPE``, ``MKL_DEBUG_CPU_TYPE``,
``*_CPU_TYPE``, ``NPY_DISABLE_CPU_FEATURES``, ...) would pin numpy's BLAS to a slower kernel, so
the script re-executes itself without them before numpy loads, and records what it removed.
"""

from __future__ import annotations

import os
import re
import sys

_OVERRIDE = re.compile(
    r"(CORETYPE|CPU_TYPE|CPU_FEATURES|MKL_CBWR|MKL_ENABLE_INSTRUCTIONS|MKL_DEBUG)", re.IGNORECASE
)
_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def _sanitised_environment() -> None:
    """Re-exec without CPU-type overrides and with single-threaded BLAS, before numpy loads."""
    if os.environ.get("_LOCALRANK_BENCH_CLEAN") == "1":
        return
    env = dict(os.environ)
    removed = sorted(name for name in env if _OVERRIDE.search(name))
    for name in removed:
        del env[name]
    for name in _THREADS:
        env[name] = "1"
    env["_LOCALRANK_BENCH_CLEAN"] = "1"
    env["_LOCALRANK_BENCH_REMOVED"] = ",".join(removed)
    # run as a module (python -m benches.compare), re-run as one: benches.machine must import
    argv = ["-m", __spec__.name, *sys.argv[1:]] if __spec__ is not None else sys.argv
    os.execve(sys.executable, [sys.executable, *argv], env)


_sanitised_environment()

# ruff: noqa: E402 — numpy and friends must load only after the environment is clean.
import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
import onnx
import onnxruntime as ort
from benches.machine import describe
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.table import Table
from threadpoolctl import threadpool_info

import localrank
from localrank import _core

D, K, C = 64, 10, 32
W_DOT, W_PRIOR = 1.0, 0.5


def make_catalog(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "u": rng.standard_normal(D).astype(np.float32),
        "E": rng.standard_normal((n, D), dtype=np.float32),
        "bias": (0.1 * rng.standard_normal(n)).astype(np.float32),
        "category": rng.integers(0, C, n).astype(np.int32),
        "prior": rng.standard_normal(C).astype(np.float32),
        "eligible": rng.random(n) < 0.9,
        "adjust": (0.1 * rng.standard_normal(n)).astype(np.float32),
    }


def numpy_topk(c: dict[str, np.ndarray], cat64: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The numpy version of the job, written the way a careful numpy user would.

    In-place updates of one n-sized score array; the prior is weighted once per category
    (C products instead of n, the same f32 values) before the gather; the top k are found by
    ``argpartition`` on the scores themselves (no negated copy) and ordered by (score desc,
    index asc).
    """
    s = c["E"] @ c["u"]
    s *= np.float32(W_DOT)
    s += c["bias"]
    s += (np.float32(W_PRIOR) * c["prior"])[cat64]
    s += c["adjust"]
    s[~c["eligible"]] = -np.inf
    k = min(K, s.size)
    part = np.argpartition(s, s.size - k)[s.size - k:]
    order = np.lexsort((part, -s[part]))
    idx = part[order]
    return idx, s[idx]


def ort_session(c: dict[str, np.ndarray]) -> ort.InferenceSession:
    """An ONNX graph of the same job; the catalog arrays are initializers.

    ``u`` enters as f32[D] like everywhere else and is reshaped in the graph to a (D, 1)
    column for the MatMul: onnxruntime 1.x runs a MatMul whose second operand is 1-D on a slow
    path (measured here: 26 ms at n = 100k against 0.6–0.9 ms for the (D, 1) form, the speed
    of numpy's sgemv), which would make the baseline lose for a reason no ONNX user would keep.
    """
    n = c["E"].shape[0]
    inits = [
        numpy_helper.from_array(c["E"], "E"),
        numpy_helper.from_array(c["bias"], "bias"),
        numpy_helper.from_array(c["category"].astype(np.int64), "category"),
        numpy_helper.from_array(np.array(W_DOT, np.float32), "w_dot"),
        numpy_helper.from_array(np.array(W_PRIOR, np.float32), "w_prior"),
        numpy_helper.from_array(np.array(-np.inf, np.float32), "neg_inf"),
        numpy_helper.from_array(np.array([min(K, n)], np.int64), "k"),
        numpy_helper.from_array(np.array([D, 1], np.int64), "column"),
        numpy_helper.from_array(np.array([n], np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("Reshape", ["u", "column"], ["u_col"]),
        helper.make_node("MatMul", ["E", "u_col"], ["dot_col"]),
        helper.make_node("Reshape", ["dot_col", "flat"], ["dot"]),
        helper.make_node("Mul", ["dot", "w_dot"], ["s1"]),
        helper.make_node("Add", ["s1", "bias"], ["s2"]),
        helper.make_node("Gather", ["prior", "category"], ["pc"], axis=0),
        helper.make_node("Mul", ["pc", "w_prior"], ["pcw"]),
        helper.make_node("Add", ["s2", "pcw"], ["s3"]),
        helper.make_node("Add", ["s3", "adjust"], ["s4"]),
        helper.make_node("Where", ["eligible", "s4", "neg_inf"], ["masked"]),
        helper.make_node("TopK", ["masked", "k"], ["scores", "indices"], largest=1, sorted=1),
    ]
    graph = helper.make_graph(
        nodes,
        "score_topk",
        [
            helper.make_tensor_value_info("u", TensorProto.FLOAT, [D]),
            helper.make_tensor_value_info("prior", TensorProto.FLOAT, [C]),
            helper.make_tensor_value_info("eligible", TensorProto.BOOL, [n]),
            helper.make_tensor_value_info("adjust", TensorProto.FLOAT, [n]),
        ],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None]),
            helper.make_tensor_value_info("indices", TensorProto.INT64, [None]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(
        model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )


class FaissJob:
    """The job as a faiss user would write it: an exact inner-product index whose rows carry the
    per-row terms as extra columns, and a query that weights them.

    ``score[i] = [E[i], bias[i], prior[category[i]], adjust[i]] · [w_dot·u, 1, w_prior, 1]``,
    which is localrank's score summed in another order (so near-ties may swap, as between any
    two SIMD paths). The segment prior and the per-request ``adjust`` are baked into the index
    ahead of time, untimed: a favour to faiss, whose index would otherwise be rebuilt per
    request. Its rows are d + 3 floats, the bytes localrank reads per row (E, bias, category,
    adjust). The mask is an ``IDSelectorBitmap`` over the packed eligibility flags.
    """

    def __init__(self, c: dict[str, np.ndarray]) -> None:
        faiss.omp_set_num_threads(1)
        n, d = c["E"].shape
        rows = np.empty((n, d + 3), np.float32)
        rows[:, :d] = c["E"]
        rows[:, d] = c["bias"]
        rows[:, d + 1] = c["prior"][c["category"]]
        rows[:, d + 2] = c["adjust"]
        self.index = faiss.IndexFlatIP(d + 3)
        self.index.add(rows)
        self.query = np.empty((1, d + 3), np.float32)
        self.query[0, :d] = np.float32(W_DOT) * c["u"]
        self.query[0, d:] = (1.0, W_PRIOR, 1.0)
        # The selector keeps a pointer into the bitmap: both must outlive every search.
        self.bitmap = np.packbits(c["eligible"], bitorder="little")
        self.selector = faiss.IDSelectorBitmap(n, faiss.swig_ptr(self.bitmap))
        self.params = faiss.SearchParameters(sel=self.selector)
        self.k = min(K, int(c["eligible"].sum()))

    def search(self) -> tuple[np.ndarray, np.ndarray]:
        scores, idx = self.index.search(self.query, self.k, params=self.params)
        return idx[0], scores[0]


CLOCKS: dict[str, Callable[[], float]] = {
    # Wall time: what a caller waits. CPU time of the whole process (every thread, so a method
    # that used a helper thread is not undercounted): excludes the time the process waits for
    # a core, which on a machine shared with other work is most of the noise.
    "wall": time.perf_counter,
    "cpu": time.process_time,
}


def time_methods(
    methods: dict[str, Callable[[], object]], rounds: int, budget_s: float, clock: str = "wall"
) -> dict[str, dict[str, float]]:
    """Median over ``rounds`` interleaved rounds of the mean time per call (µs)."""
    now = CLOCKS[clock]
    loops: dict[str, int] = {}
    for name, fn in methods.items():
        fn()  # warm-up: page in, build caches
        t0 = time.perf_counter()
        fn()
        one = max(time.perf_counter() - t0, 1e-7)
        loops[name] = max(1, int(budget_s / (rounds * len(methods)) / one))
    samples: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            n_loops = loops[name]
            t0 = now()
            for _ in range(n_loops):
                fn()
            samples[name].append((now() - t0) / n_loops * 1e6)
    return {
        name: {
            "median_us": statistics.median(v),
            "iqr_us": float(np.subtract(*np.percentile(v, [75, 25]))),
            "rounds": len(v),
            "loops": loops[name],
        }
        for name, v in samples.items()
    }


def reference_scores(c: dict[str, np.ndarray]) -> np.ndarray:
    s = (c["E"] @ c["u"]) * np.float32(W_DOT) + c["bias"]
    s += np.float32(W_PRIOR) * c["prior"][c["category"]] + c["adjust"]
    return np.where(c["eligible"], s, -np.inf)


def check_agreement(
    c: dict[str, np.ndarray], sess: ort.InferenceSession, fj: FaissJob
) -> None:
    """All methods must rank "the same" (docs/design.md) before their speed means anything:
    position by position the same row, or rows whose exact scores are within the tolerance."""
    idx, _ = localrank.score_topk(
        c["u"], c["E"], c["bias"], c["category"], c["prior"], c["eligible"],
        w_dot=W_DOT, w_prior=W_PRIOR, adjust=c["adjust"], k=K,
    )
    np_idx, _ = numpy_topk(c, c["category"].astype(np.int64))
    _, ort_idx = sess.run(
        None, {"u": c["u"], "prior": c["prior"], "eligible": c["eligible"], "adjust": c["adjust"]}
    )
    faiss_idx, _ = fj.search()
    ref = reference_scores(c)
    for name, other in (("numpy", np_idx), ("onnxruntime", ort_idx), ("faiss", faiss_idx)):
        for a, b in zip(idx.tolist(), other.tolist(), strict=True):
            sa, sb = float(ref[a]), float(ref[b])
            if a != b and abs(sa - sb) >= 1e-5 * max(1.0, abs(sa)):
                raise AssertionError(f"{name} ranks row {b} where localrank ranks row {a}")


def measure(n: int, rounds: int, budget_s: float, clock: str = "wall") -> dict[str, object]:
    """Time every method on one catalog of ``n`` offers."""
    c = make_catalog(n)
    q, scale = localrank.quantize_int8(c["E"])
    cat64 = c["category"].astype(np.int64)
    sess = ort_session(c)
    fj = FaissJob(c)
    check_agreement(c, sess, fj)
    feeds = {"u": c["u"], "prior": c["prior"], "eligible": c["eligible"], "adjust": c["adjust"]}
    args = (c["bias"], c["category"], c["prior"], c["eligible"])
    # One thread, like every other method (threads=None would split a 1M-row catalog).
    kw = {"w_dot": W_DOT, "w_prior": W_PRIOR, "adjust": c["adjust"], "k": K, "threads": 1}
    methods: dict[str, Callable[[], object]] = {
        "f32": lambda: localrank.score_topk(c["u"], c["E"], *args, **kw),
        "int8": lambda: localrank.score_topk_int8(c["u"], q, scale, *args, **kw),
        "int8+rs": lambda: localrank.score_topk_int8(c["u"], q, scale, *args, **kw, rescore=c["E"]),
        "faiss": fj.search,
        "numpy": lambda: numpy_topk(c, cat64),
        "ort": lambda: sess.run(None, feeds),
        "floor": lambda: _core._stream_sum(c["E"]),
        "floor8": lambda: _core._stream_sum(q),
    }
    timing = time_methods(methods, rounds, budget_s, clock)
    med = {name: t["median_us"] for name, t in timing.items()}
    ratios = {
        "faiss/f32": med["faiss"] / med["f32"],
        "numpy/f32": med["numpy"] / med["f32"],
        "ort/f32": med["ort"] / med["f32"],
        "f32/floor": med["f32"] / med["floor"],
        "faiss/floor": med["faiss"] / med["floor"],
        "faiss/int8": med["faiss"] / med["int8"],
        "numpy/int8": med["numpy"] / med["int8"],
        "ort/int8": med["ort"] / med["int8"],
        "int8/floor8": med["int8"] / med["floor8"],
    }
    return {"n": n, "d": D, "k": K, "timings": timing, "ratios": ratios}


def _faiss_simd() -> str:
    """Which of faiss's builds loaded (generic, AVX2, AVX-512): it picks one at import."""
    config = getattr(faiss, "SIMDConfig", None)
    if config is not None and hasattr(config, "get_level_name"):
        return str(config.get_level_name())
    return str(faiss.get_compile_options())


def run(
    sizes: list[int], rounds: int, budget_s: float, out: Path | None, clock: str = "wall"
) -> dict[str, object]:
    console = Console(width=210)
    machine = describe()
    blas = [
        {k: v for k, v in lib.items() if k in ("internal_api", "version", "num_threads",
                                                 "threading_layer", "architecture", "prefix")}
        for lib in threadpool_info()
    ]
    removed = [v for v in os.environ.get("_LOCALRANK_BENCH_REMOVED", "").split(",") if v]
    console.print(
        f"[bold]localrank kernel bench[/] · {machine['cpu_model']} · {machine['arch']} · "
        f"kernel {localrank.default_kernel()} · faiss {faiss.__version__} "
        f"({_faiss_simd()}) · numpy {np.__version__} · onnxruntime {ort.__version__} · BLAS "
        + ", ".join(f"{b.get('internal_api')} {b.get('version')} ({b.get('num_threads')} thr)"
                    for b in blas)
    )
    if removed:
        console.print(f"removed CPU-type overrides from the environment: {', '.join(removed)}")
    results = [measure(n, rounds, budget_s, clock) for n in sizes]

    table = Table(title=f"median µs per call ({clock} clock; d = {D}, k = {K}, one thread)")
    times = ["f32", "int8", "int8+rs", "faiss", "numpy", "ort", "floor", "floor8"]
    shown = ["faiss/f32", "numpy/f32", "ort/f32", "f32/floor", "faiss/int8", "int8/floor8",
             "numpy/int8"]
    for col in ["n", *times, *shown]:
        table.add_column(col, justify="right")
    for r in results:
        t = {name: v["median_us"] for name, v in r["timings"].items()}
        ra = r["ratios"]
        table.add_row(
            f"{r['n']:,}", *(f"{t[m]:,.1f}" for m in times), *(f"{ra[m]:.2f}×" for m in shown)
        )
    console.print(table)
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "faiss": {"version": faiss.__version__, "simd": _faiss_simd(), "omp_threads": 1},
        "blas": blas,
        "removed_env_overrides": removed,
        "threads": 1,
        "clock": clock,
        "results": results,
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        console.print(f"wrote {out}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per size, roughly")
    parser.add_argument("--quick", action="store_true", help="small sizes, few rounds")
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default="wall",
        help="wall time, or the process's CPU time (steadier on a machine shared with others)",
    )
    default_out = Path("benches/results") / f"compare-{platform.machine()}.json"
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.quick:
        sizes, args.rounds, args.budget = [1000, 10000], 5, 0.5
    run(sizes, args.rounds, args.budget, args.out, args.clock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
