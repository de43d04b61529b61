"""The exported ONNX scorer under onnxruntime, beside the Rust core, on demo-like catalogs.

    python -m benches.onnx_model [--sizes 1000,100000] [--d 32] [--quick] [--out FILE]

For each catalog size n it builds a signed bundle of ``demo_offers(n)`` (local, sensitive,
time-limited and context-limited offers, content embeddings in dimension d), exports the
model with :func:`localrank.device.onnx_export.build_model` (f32 and int8) and times, with one
thread everywhere, one realistic request (level ``full``, the shopping context, location granted in
London, one sensitive opt-in, some fatigue):

- ``ort``            onnxruntime running the exported f32 model: mask, adjust, score, top-k
                     and reasons, from the raw request
- ``ort int8``       the same with the int8 model (MatMulInteger)
- ``rust``           ``localrank.score_topk`` alone, on the mask and adjust the engine computed
- ``rust+guards``    :func:`guardrails.eligibility` + :func:`guardrails.adjust_term` (numpy)
                     + ``score_topk``: the same job the model does, the Python engine's way
- ``rust int8``      ``localrank.score_topk_int8`` alone

Before timing, the model's mask and adjust must equal the engine's and its ranking must be
"the same" as the Rust core's (docs/design.md). Methods are timed round-robin in interleaved
rounds; each figure is the median over rounds of the per-call mean of a batch. Writes JSON
(``benches/results/onnx-model-<arch>.json``) with the machine, versions, model sizes and
timings.
"""

from __future__ import annotations

import os

# One thread for every library, set before numpy and onnxruntime load.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

# ruff: noqa: E402 — the thread settings above must precede these imports.
import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from benches.machine import describe
from rich.console import Console
from rich.table import Table
from tools.demo_catalog import (
    DEMO_CONTEXTS,
    DEMO_CREATED,
    DEMO_REGIONS,
    DEMO_TAXONOMY,
    demo_offers,
)

import localrank
from localrank.bundle import Bundle, BundleConfig, build_bundle, generate_keypair, open_bundle
from localrank.device import onnx_export as ox
from localrank.device.engine import ScoringInputs
from localrank.device.guardrails import Guardrails, OfferGeometry, adjust_term, eligibility
from localrank.shared.catalog import Catalog

K = 10
NOW = DEMO_CREATED + 10 * 86400 + 12 * 3600
LONDON = (51.5074, -0.1278)


def make_bundle(directory: Path, n: int, d: int) -> Bundle:
    key, pub = directory / "k.pem", directory / "k.pub.pem"
    if not key.exists():
        generate_keypair(key, pub)
    offers = demo_offers(n, seed=11)
    config = BundleConfig(d=d, contexts=DEMO_CONTEXTS, regions=DEMO_REGIONS)
    catalog = Catalog.from_offers(offers, DEMO_TAXONOMY, DEMO_CONTEXTS, d=d)
    data = build_bundle(
        catalog=catalog,
        taxonomy=DEMO_TAXONOMY,
        config=config,
        version=1,
        created=DEMO_CREATED,
        expires=NOW + 86400,
        signing_key=key.read_bytes(),
    )
    return open_bundle(data, pub, now=NOW)


def request(bundle: Bundle, geo: OfferGeometry) -> ScoringInputs:
    """One request as the engine would make it at level full in the shopping context."""
    rng = np.random.default_rng(5)
    n, C, d = len(bundle.catalog), len(bundle.taxonomy), bundle.config.d
    opt = np.zeros(C, np.float32)
    opt[bundle.taxonomy.index("pharmacy")] = 1
    g = Guardrails(
        now=NOW,
        context_id=bundle.config.context_id("shopping"),
        level_off=False,
        opt_ins=opt,
        fatigue=rng.choice([0, 0, 0, 0, 1, 2, 3], n).astype(np.float32),
        offer_cap=3,
        location_allowed=True,
        location=LONDON,
    )
    u = rng.standard_normal(d).astype(np.float32)
    return ScoringInputs(
        u=u / np.linalg.norm(u),
        prior=rng.normal(0, 0.1, C).astype(np.float32),
        w_dot=1.0,
        w_prior=1.0,
        eligible=eligibility(bundle, geo, g),
        adjust=adjust_term(geo, g),
        segment=0,
        context_id=g.context_id,
        guardrails=g,
    )


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def check(bundle: Bundle, x: ScoringInputs, sess: ort.InferenceSession) -> None:
    """The model must agree with the engine and the Rust core before its speed means anything."""
    cat = bundle.catalog
    names = ["scores", "indices", "eligible", "adjust"]
    scores, indices, eligible, adjust = sess.run(names, ox.feeds(x, "full"))
    if not (np.array_equal(eligible, x.eligible) and np.array_equal(adjust, x.adjust)):
        raise AssertionError("the model's mask or adjust differs from the engine's")
    idx, _ = localrank.score_topk(
        x.u, cat.embeddings, cat.bias, cat.category, x.prior, x.eligible, adjust=x.adjust, k=K
    )
    s = cat.embeddings.astype(np.float64) @ x.u + cat.bias + x.prior[cat.category] + x.adjust
    got, _ = ox.drop_masked(scores, indices)
    for a, b in zip(got.tolist(), idx.tolist(), strict=True):
        if a != b and abs(s[a] - s[b]) >= 1e-5 * max(1.0, abs(s[a])):
            raise AssertionError(f"the model ranks row {a} where the Rust core ranks row {b}")


def time_methods(
    methods: dict[str, Callable[[], object]], rounds: int, budget_s: float
) -> dict[str, dict[str, float]]:
    """Median over ``rounds`` interleaved rounds of the mean time per call (µs)."""
    loops: dict[str, int] = {}
    for name, fn in methods.items():
        fn()
        t0 = time.perf_counter()
        fn()
        one = max(time.perf_counter() - t0, 1e-7)
        loops[name] = max(1, int(budget_s / (rounds * len(methods)) / one))
    samples: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            for _ in range(loops[name]):
                fn()
            samples[name].append((time.perf_counter() - t0) / loops[name] * 1e6)
    return {
        name: {
            "median_us": statistics.median(v),
            "iqr_us": float(np.subtract(*np.percentile(v, [75, 25]))),
            "rounds": len(v),
            "loops": loops[name],
        }
        for name, v in samples.items()
    }


def measure(directory: Path, n: int, d: int, rounds: int, budget_s: float) -> dict[str, object]:
    bundle = make_bundle(directory, n, d)
    cat, geo = bundle.catalog, OfferGeometry.of(bundle)
    x = request(bundle, geo)
    models = {"f32": ox.build_model(bundle, k=K), "int8": ox.build_model(bundle, k=K, int8=True)}
    sessions = {kind: session(m) for kind, m in models.items()}
    check(bundle, x, sessions["f32"])
    feeds = ox.feeds(x, "full")
    app_outputs = ["scores", "indices", "reasons"]  # what an app fetches
    q, scale = localrank.quantize_int8(cat.embeddings)
    args = (cat.bias, cat.category, x.prior)

    def guarded() -> object:
        g = x.guardrails
        return localrank.score_topk(
            x.u, cat.embeddings, *args, eligibility(bundle, geo, g), adjust=adjust_term(geo, g), k=K
        )

    methods: dict[str, Callable[[], object]] = {
        "ort": lambda: sessions["f32"].run(app_outputs, feeds),
        "ort int8": lambda: sessions["int8"].run(app_outputs, feeds),
        "rust": lambda: localrank.score_topk(
            x.u, cat.embeddings, *args, x.eligible, adjust=x.adjust, k=K
        ),
        "rust+guards": guarded,
        "rust int8": lambda: localrank.score_topk_int8(
            x.u, q, scale, *args, x.eligible, adjust=x.adjust, k=K
        ),
    }
    timing = time_methods(methods, rounds, budget_s)
    med = {name: t["median_us"] for name, t in timing.items()}
    return {
        "n": n,
        "d": d,
        "k": K,
        "eligible": int(x.eligible.sum()),
        "local_offers": int(cat.local.sum()),
        "model_bytes": {kind: len(m.SerializeToString()) for kind, m in models.items()},
        "timings": timing,
        "ratios": {
            "ort/rust": med["ort"] / med["rust"],
            "ort/rust+guards": med["ort"] / med["rust+guards"],
            "ort int8/rust int8": med["ort int8"] / med["rust int8"],
            "ort int8/ort": med["ort int8"] / med["ort"],
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,100000")
    parser.add_argument("--d", type=int, default=32, help="embedding dimension (demo: 32)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per size, roughly")
    parser.add_argument("--quick", action="store_true", help="few rounds, short budget")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("benches/results") / f"onnx-model-{platform.machine()}.json",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.budget = 5, 0.5
    console = Console(width=140)
    machine = describe()
    console.print(
        f"[bold]exported ONNX scorer vs Rust core[/] · {machine['cpu_model']} · "
        f"kernel {localrank.default_kernel()} · onnxruntime {ort.__version__} · one thread"
    )
    with tempfile.TemporaryDirectory() as tmp:
        results = [
            measure(Path(tmp), int(n), args.d, args.rounds, args.budget)
            for n in args.sizes.split(",")
        ]
    table = Table(title=f"median µs per request (d = {args.d}, k = {K}, one thread)")
    cols = ["ort", "ort int8", "rust", "rust+guards", "rust int8"]
    for col in ["n", *cols, "ort/rust", "ort/rust+guards", "model f32", "model int8"]:
        table.add_column(col, justify="right")
    for r in results:
        t, ra, size = r["timings"], r["ratios"], r["model_bytes"]
        table.add_row(
            f"{r['n']:,}",
            *(f"{t[c]['median_us']:,.1f}" for c in cols),
            f"{ra['ort/rust']:.2f}×",
            f"{ra['ort/rust+guards']:.2f}×",
            f"{size['f32'] / 1e6:.2f} MB",
            f"{size['int8'] / 1e6:.2f} MB",
        )
    console.print(table)
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "threads": 1,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
