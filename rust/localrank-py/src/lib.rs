//! Python bindings for `localrank-core`: type conversion, GIL release and error mapping only.
//! Every function releases the GIL while the core runs (see [`errors::detached`]).

mod convert;
mod errors;
mod ldp;

use localrank_core::{Kernel, Matrix, Options, Terms};
use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use convert::{array, dims2, int32_array, ranked_tuple, slice, Accept};

fn resolve_kernel(py: Python<'_>, requested: Option<&str>) -> PyResult<Kernel> {
    Kernel::resolve(requested).map_err(|e| errors::to_py(py, e))
}

/// Score every eligible offer and return the top ``k``, best first.
///
/// For each eligible row ``i``::
///
///     score[i] = w_dot·(u·E[i]) + bias[i] + w_prior·prior[category[i]] + adjust[i]
///
/// evaluated left to right in f32. Ties go to the lower index. Rows that are not eligible are
/// never read or checked. Eligible rows are validated inside the single pass.
///
/// Args:
///     u: float32[d], the user vector.
///     E: float32[n, d], the offer embeddings. A C-contiguous float32 array is borrowed
///         without a copy.
///     bias: float32[n].
///     category: int32[n], indices into ``prior``.
///     prior: float32[C], the segment's prior per category.
///     eligible: bool[n].
///     w_dot: weight of the dot product (0 at personalisation levels ``off``/``coarse``).
///     w_prior: weight of the prior (0 at level ``off``).
///     adjust: optional float32[n], the engine's per-request term.
///     k: how many to return, at least 1.
///     threads: how many threads to split the rows over (1 to 256). ``None`` (the default)
///         runs on the calling thread unless the rows scanned exceed 64 MiB (262,144 rows at
///         d = 64), and splits larger catalogs over up to 4 threads, one per 32 MiB, at most
///         the machine's cores. Every split gives the same result as one thread, ties
///         included. The GIL is released either way.
///
/// Numeric arrays of other dtypes (and array-likes) are converted once to the dtype above;
/// ``eligible`` must be bool; non-numeric dtypes are refused.
///
/// Returns:
///     ``(indices, scores)``: int64[m] and float32[m] with ``m = min(k, eligible rows)``.
///
/// Raises:
///     InputError: (a ``ValueError``) naming the argument, for a wrong shape or dtype, k < 1,
///         NaN or infinity in ``u``, ``prior`` or an eligible row, or a category outside
///         ``[0, C)`` in an eligible row.
#[pyfunction]
#[pyo3(signature = (u, E, bias, category, prior, eligible, *, w_dot=1.0, w_prior=1.0, adjust=None, k=10, threads=None, _kernel=None))]
#[allow(non_snake_case, clippy::too_many_arguments)]
fn score_topk<'py>(
    py: Python<'py>,
    u: &Bound<'py, PyAny>,
    E: &Bound<'py, PyAny>,
    bias: &Bound<'py, PyAny>,
    category: &Bound<'py, PyAny>,
    prior: &Bound<'py, PyAny>,
    eligible: &Bound<'py, PyAny>,
    w_dot: f32,
    w_prior: f32,
    adjust: Option<&Bound<'py, PyAny>>,
    k: i64,
    threads: Option<i64>,
    _kernel: Option<&str>,
) -> PyResult<Bound<'py, PyTuple>> {
    let kernel = resolve_kernel(py, _kernel)?;
    let u = array::<f32>(u, "u", 1, Accept::Real)?;
    let e = array::<f32>(E, "E", 2, Accept::Real)?;
    let bias = array::<f32>(bias, "bias", 1, Accept::Real)?;
    let category = int32_array(category, "category")?;
    let prior = array::<f32>(prior, "prior", 1, Accept::Real)?;
    let eligible = array::<bool>(eligible, "eligible", 1, Accept::Bool)?;
    let adjust = adjust
        .map(|a| array::<f32>(a, "adjust", 1, Accept::Real))
        .transpose()?;
    let (n, d) = dims2(&e);
    let e = Matrix::new("E", slice(&e)?, n, d).map_err(|err| errors::to_py(py, err))?;
    let terms = Terms {
        bias: slice(&bias)?,
        category: category.as_slice(),
        prior: slice(&prior)?,
        eligible: slice(&eligible)?,
        adjust: adjust.as_ref().map(slice).transpose()?,
        w_dot,
        w_prior,
    };
    let u = slice(&u)?;
    let opts = Options { k, threads, kernel };
    let ranked = errors::detached(py, || localrank_core::score_topk(u, e, &terms, &opts))?;
    ranked_tuple(py, ranked)
}

/// Score eligible offers from int8 embeddings and return the top ``k``, best first.
///
/// ``u`` is quantised internally the way :func:`quantize_int8` quantises a row; the dot
/// product is exact in int32 and scaled by ``scale_u·scale[i]``. The other terms are as in
/// :func:`score_topk`.
///
/// With ``rescore=E`` (the float32 embeddings ``q`` came from), the best ``4k + 64`` int8
/// candidates are scored again in f32, exactly as :func:`score_topk` scores them, and the
/// top ``k`` of those is returned with f32 scores.
///
/// Args:
///     u: float32[d].
///     q: int8[n, d], from :func:`quantize_int8`. Must be int8; other dtypes are refused.
///     scale: float32[n], from :func:`quantize_int8`.
///     bias, category, prior, eligible, w_dot, w_prior, adjust, k, threads: as in
///         :func:`score_topk`.
///     rescore: optional float32[n, d].
///
/// Returns:
///     ``(indices, scores)``: int64[m] and float32[m] with ``m = min(k, eligible rows)``.
///
/// Raises:
///     InputError: as :func:`score_topk`, and for a ``scale`` or ``rescore`` that does not
///         match ``q``.
#[pyfunction]
#[pyo3(signature = (u, q, scale, bias, category, prior, eligible, *, w_dot=1.0, w_prior=1.0, adjust=None, k=10, rescore=None, threads=None, _kernel=None))]
#[allow(clippy::too_many_arguments)]
fn score_topk_int8<'py>(
    py: Python<'py>,
    u: &Bound<'py, PyAny>,
    q: &Bound<'py, PyAny>,
    scale: &Bound<'py, PyAny>,
    bias: &Bound<'py, PyAny>,
    category: &Bound<'py, PyAny>,
    prior: &Bound<'py, PyAny>,
    eligible: &Bound<'py, PyAny>,
    w_dot: f32,
    w_prior: f32,
    adjust: Option<&Bound<'py, PyAny>>,
    k: i64,
    rescore: Option<&Bound<'py, PyAny>>,
    threads: Option<i64>,
    _kernel: Option<&str>,
) -> PyResult<Bound<'py, PyTuple>> {
    let kernel = resolve_kernel(py, _kernel)?;
    let u = array::<f32>(u, "u", 1, Accept::Real)?;
    let q = array::<i8>(q, "q", 2, Accept::Int8)?;
    let scale = array::<f32>(scale, "scale", 1, Accept::Real)?;
    let bias = array::<f32>(bias, "bias", 1, Accept::Real)?;
    let category = int32_array(category, "category")?;
    let prior = array::<f32>(prior, "prior", 1, Accept::Real)?;
    let eligible = array::<bool>(eligible, "eligible", 1, Accept::Bool)?;
    let adjust = adjust
        .map(|a| array::<f32>(a, "adjust", 1, Accept::Real))
        .transpose()?;
    let rescore = rescore
        .map(|a| array::<f32>(a, "rescore", 2, Accept::Real))
        .transpose()?;
    let to_py = |err| errors::to_py(py, err);
    let (n, d) = dims2(&q);
    let q = Matrix::new("q", slice(&q)?, n, d).map_err(to_py)?;
    let rescore = match &rescore {
        Some(e) => {
            let (rn, rd) = dims2(e);
            Some(Matrix::new("rescore", slice(e)?, rn, rd).map_err(to_py)?)
        }
        None => None,
    };
    let terms = Terms {
        bias: slice(&bias)?,
        category: category.as_slice(),
        prior: slice(&prior)?,
        eligible: slice(&eligible)?,
        adjust: adjust.as_ref().map(slice).transpose()?,
        w_dot,
        w_prior,
    };
    let (u, scale) = (slice(&u)?, slice(&scale)?);
    let opts = Options { k, threads, kernel };
    let ranked = errors::detached(py, || {
        localrank_core::score_topk_int8(u, q, scale, &terms, rescore, &opts)
    })?;
    ranked_tuple(py, ranked)
}

/// Quantise embeddings to int8 with one scale per row.
///
/// Row ``i`` becomes ``q[i] = round(E[i]·127/max|E[i]|)`` in ``[-127, 127]`` with
/// ``scale[i] = max|E[i]|/127`` (0 for an all-zero row), so ``E[i] ≈ scale[i]·q[i]``.
///
/// Args:
///     E: float32[n, d]; other numeric dtypes are converted once.
///
/// Returns:
///     ``(q, scale)``: int8[n, d] and float32[n].
///
/// Raises:
///     InputError: for a wrong rank or dtype, or a NaN or infinity anywhere in ``E``.
#[pyfunction]
#[allow(non_snake_case)]
fn quantize_int8<'py>(py: Python<'py>, E: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyTuple>> {
    let e = array::<f32>(E, "E", 2, Accept::Real)?;
    let (n, d) = dims2(&e);
    let e = Matrix::new("E", slice(&e)?, n, d).map_err(|err| errors::to_py(py, err))?;
    let (q, scale) = errors::detached(py, || localrank_core::quantize_int8(e))?;
    let q = PyArray1::from_vec(py, q).reshape([n, d])?;
    let scale = PyArray1::from_vec(py, scale);
    PyTuple::new(py, [q.into_any(), scale.into_any()])
}

/// The kernel paths this machine can run, worst first (``"scalar"`` is always there).
#[pyfunction]
fn available_kernels() -> Vec<&'static str> {
    Kernel::available().into_iter().map(Kernel::name).collect()
}

/// The kernel path used when none is forced: ``LOCALRANK_KERNEL`` if set, else the best
/// available.
///
/// Raises:
///     KernelError: when ``LOCALRANK_KERNEL`` names a path this machine cannot run.
#[pyfunction]
fn default_kernel(py: Python<'_>) -> PyResult<&'static str> {
    Ok(resolve_kernel(py, None)?.name())
}

/// Sum every value of ``E`` with one streaming read: the benchmark's memory floor. An int8
/// ``E`` (from :func:`quantize_int8`) is read as int8 and summed exactly, the floor of the
/// int8 rows; any other numeric dtype is read as float32.
#[pyfunction]
#[pyo3(signature = (E, *, _kernel=None))]
#[allow(non_snake_case)]
fn _stream_sum(py: Python<'_>, E: &Bound<'_, PyAny>, _kernel: Option<&str>) -> PyResult<f64> {
    let kernel = resolve_kernel(py, _kernel)?;
    if convert::is_int8_array(E) {
        let q = array::<i8>(E, "E", 2, Accept::Int8)?;
        let data = slice(&q)?;
        return errors::detached(py, || localrank_core::stream_sum_i8(data, kernel))
            .map(|s| s as f64);
    }
    let e = array::<f32>(E, "E", 2, Accept::Real)?;
    let data = slice(&e)?;
    errors::detached(py, || localrank_core::stream_sum(data, kernel)).map(f64::from)
}

/// localrank's compiled core. Use the functions re-exported by :mod:`localrank`.
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(score_topk, m)?)?;
    m.add_function(wrap_pyfunction!(score_topk_int8, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_int8, m)?)?;
    m.add_function(wrap_pyfunction!(available_kernels, m)?)?;
    m.add_function(wrap_pyfunction!(default_kernel, m)?)?;
    m.add_function(wrap_pyfunction!(_stream_sum, m)?)?;
    ldp::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
