"""The committed artifacts in models/ are the same bytes on every CPU.

Every float that reaches the demo bundle or the exported models is computed without BLAS or
LAPACK, in float64 element by element with correctly rounded sums, and rounded once at the end
(``localrank.shared.catalog.content_embeddings``); the int8 scales come from the Rust core's scalar
code. This test rebuilds the models in subprocesses under forced numpy and OpenBLAS code paths
and under the scalar kernel, and compares each file's digest with the committed one, so a
machine with AVX-512 also proves what an AVX2-only or SSE machine would produce.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
ARTIFACTS = ("demo.bundle", "catalog.json", "localrank-scorer.onnx", "localrank-scorer-int8.onnx")

REBUILD = """
import sys
from pathlib import Path
from localrank.device import onnx_export
from localrank.bundle import open_bundle
from tools.demo_catalog import DEMO_CREATED, write_models

out = Path(sys.argv[1])
paths = write_models(out)
bundle = open_bundle(paths["bundle"].read_bytes(), paths["public_key"], now=DEMO_CREATED)
onnx_export.export_onnx(bundle, out / "localrank-scorer.onnx")
onnx_export.export_onnx(bundle, out / "localrank-scorer-int8.onnx", int8=True)
"""


def _numpy_simd_off() -> str:
    """numpy's dispatch targets at and above AVX2 that this numpy build knows (the names
    changed between numpy versions), for NPY_DISABLE_CPU_FEATURES."""
    from numpy._core._multiarray_umath import __cpu_dispatch__

    wanted = {"AVX2", "FMA3", "AVX512F", "AVX512CD", "AVX512_SKX", "AVX512_CLX", "AVX512_CNL"}
    wanted |= {"AVX512_ICL", "AVX512_SPR", "X86_V3", "X86_V4", "AVX512_KNL", "AVX512_KNM"}
    return " ".join(sorted(set(__cpu_dispatch__) & wanted))


CODE_PATHS = {
    "openblas-prescott": {"OPENBLAS_CORETYPE": "Prescott"},
    "openblas-haswell": {"OPENBLAS_CORETYPE": "Haswell"},
    "openblas-skylakex": {"OPENBLAS_CORETYPE": "SkylakeX"},
    "numpy-no-avx2-no-avx512": {"NPY_DISABLE_CPU_FEATURES": "<numpy-simd>"},
    "scalar-kernel": {"LOCALRANK_KERNEL": "scalar"},
}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("path_name", sorted(CODE_PATHS))
def test_models_rebuild_byte_for_byte_under_each_code_path(path_name: str, tmp_path: Path):
    if sys.platform != "linux" or os.uname().machine not in ("x86_64", "AMD64"):
        pytest.skip("the forced code paths are x86-64 OpenBLAS and numpy dispatch names")
    env = dict(os.environ)
    for key, value in CODE_PATHS[path_name].items():
        env[key] = _numpy_simd_off() if value == "<numpy-simd>" else value
    for name in ("demo-key.pem", "demo-key.pub.pem"):
        shutil.copy(MODELS / name, tmp_path / name)
    done = subprocess.run(
        [sys.executable, "-c", REBUILD, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    for name in ARTIFACTS:
        assert _digest(tmp_path / name) == _digest(MODELS / name), f"{name} under {path_name}"


def test_the_forced_numpy_path_is_really_forced() -> None:
    """The NPY_DISABLE_CPU_FEATURES case above means something only if numpy then runs
    without its AVX2/AVX-512 loops."""
    names = _numpy_simd_off()
    assert names, "this numpy build dispatches to no AVX2/AVX-512 target"
    env = dict(os.environ, NPY_DISABLE_CPU_FEATURES=names)
    probe = (
        "from numpy._core._multiarray_umath import __cpu_features__ as f;"
        f"print(sum(f[n] for n in {names.split()!r} if n in f))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"
    assert np.__version__  # numpy itself still imports with them off
