"""Type stubs for localrank's compiled core. Checked against the module by mypy.stubtest."""

from fractions import Fraction

import numpy as np
import numpy.typing as npt

__version__: str
__all__ = [
    "__version__",
    "_stream_sum",
    "available_kernels",
    "choose_oracle",
    "default_kernel",
    "discrete_laplace",
    "grr_instantaneous",
    "grr_permanent",
    "grr_perturb",
    "ldp_effective_probabilities",
    "ldp_probabilities",
    "oue_instantaneous",
    "oue_permanent",
    "oue_perturb",
    "quantize_int8",
    "score_topk",
    "score_topk_int8",
]

def score_topk(
    u: npt.ArrayLike,
    E: npt.ArrayLike,
    bias: npt.ArrayLike,
    category: npt.ArrayLike,
    prior: npt.ArrayLike,
    eligible: npt.ArrayLike,
    *,
    w_dot: float = 1.0,
    w_prior: float = 1.0,
    adjust: npt.ArrayLike | None = None,
    k: int = 10,
    threads: int | None = None,
    _kernel: str | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
def score_topk_int8(
    u: npt.ArrayLike,
    q: npt.ArrayLike,
    scale: npt.ArrayLike,
    bias: npt.ArrayLike,
    category: npt.ArrayLike,
    prior: npt.ArrayLike,
    eligible: npt.ArrayLike,
    *,
    w_dot: float = 1.0,
    w_prior: float = 1.0,
    adjust: npt.ArrayLike | None = None,
    k: int = 10,
    rescore: npt.ArrayLike | None = None,
    threads: int | None = None,
    _kernel: str | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
def quantize_int8(E: npt.ArrayLike) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]: ...
def available_kernels() -> list[str]: ...
def default_kernel() -> str: ...
def _stream_sum(E: npt.ArrayLike, *, _kernel: str | None = None) -> float: ...

# Privacy mechanisms (rust/localrank-py/src/ldp.rs). `seed` is for tests only.
def ldp_probabilities(oracle: str, d: int, epsilon: float) -> tuple[float, float]: ...
def ldp_effective_probabilities(
    oracle: str, d: int, epsilon: float, epsilon_perm: float
) -> tuple[float, float]: ...
def choose_oracle(d: int, epsilon: float) -> str: ...
def grr_perturb(
    values: npt.ArrayLike, d: int, epsilon: float, *, seed: int | None = None
) -> npt.NDArray[np.int64]: ...
def grr_permanent(
    values: npt.ArrayLike, d: int, epsilon_perm: float, *, seed: int | None = None
) -> npt.NDArray[np.int64]: ...
def grr_instantaneous(
    permanent: npt.ArrayLike, d: int, epsilon: float, *, seed: int | None = None
) -> npt.NDArray[np.int64]: ...
def oue_perturb(
    values: npt.ArrayLike, d: int, epsilon: float, *, seed: int | None = None
) -> npt.NDArray[np.uint8]: ...
def oue_permanent(
    values: npt.ArrayLike, d: int, epsilon_perm: float, *, seed: int | None = None
) -> npt.NDArray[np.uint8]: ...
def oue_instantaneous(
    permanent: npt.NDArray[np.uint8], d: int, epsilon: float, *, seed: int | None = None
) -> npt.NDArray[np.uint8]: ...
def discrete_laplace(
    counts: npt.ArrayLike,
    epsilon: int | float | Fraction,
    sensitivity: int,
    *,
    seed: int | None = None,
) -> npt.NDArray[np.int64]: ...
