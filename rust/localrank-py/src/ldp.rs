//! Bindings for `localrank_core::ldp`: the frequency oracles and the central-mode noise.
//!
//! Conversion and error mapping only. Every randomiser draws from the OS CSPRNG; `seed` switches
//! to a reproducible ChaCha20 stream and exists for tests only.

use localrank_core::ldp::{
    discrete_laplace as add_discrete_laplace, packed_len, DiscreteLaplace, Domain, Epsilon, Grr,
    Oracle, Oue, Probabilities, Rng,
};
use numpy::prelude::*;
use numpy::{dtype, PyArray1, PyUntypedArray};
use pyo3::prelude::*;

use crate::convert::{array, slice, Accept};
use crate::errors::{self, input_error};

fn core<T>(py: Python<'_>, result: localrank_core::Result<T>) -> PyResult<T> {
    result.map_err(|err| errors::to_py(py, err))
}

fn int_arg(obj: &Bound<'_, PyAny>, arg: &'static str) -> PyResult<i64> {
    obj.extract::<i64>().map_err(|_| {
        input_error(
            obj.py(),
            arg,
            format!("expected an integer, got {}", type_name(obj)),
        )
    })
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

fn domain_arg(py: Python<'_>, d: &Bound<'_, PyAny>) -> PyResult<Domain> {
    core(py, Domain::new(int_arg(d, "d")?))
}

fn epsilon_arg(py: Python<'_>, value: &Bound<'_, PyAny>, arg: &'static str) -> PyResult<Epsilon> {
    let value = value.extract::<f64>().map_err(|_| {
        input_error(
            py,
            arg,
            format!("expected a real number, got {}", type_name(value)),
        )
    })?;
    core(py, Epsilon::new(arg, value))
}

fn oracle_arg(py: Python<'_>, name: &Bound<'_, PyAny>) -> PyResult<Oracle> {
    let name = name.extract::<String>().map_err(|_| {
        input_error(
            py,
            "oracle",
            format!("expected 'grr' or 'oue', got {}", type_name(name)),
        )
    })?;
    core(py, Oracle::parse(&name))
}

/// The RNG for one call: the OS CSPRNG, or ChaCha20 from `seed` (tests only).
fn rng(seed: Option<&Bound<'_, PyAny>>) -> PyResult<Option<u64>> {
    seed.map(|s| {
        s.extract::<u64>().map_err(|_| {
            input_error(
                s.py(),
                "seed",
                "expected None or an integer in [0, 2^64) (testing only)",
            )
        })
    })
    .transpose()
}

fn pair(p: Probabilities) -> (f64, f64) {
    (p.p, p.q)
}

/// ``(p, q)`` of a single-stage oracle.
///
/// GRR: ``p = e^ε/(e^ε + d − 1)`` is the probability of reporting the true value and
/// ``q = 1/(e^ε + d − 1)`` that of each other value. OUE: ``p = 1/2`` and ``q = 1/(e^ε + 1)``
/// are the probabilities that a bit is reported as 1 when it was 1 and 0.
///
/// Args:
///     oracle: ``"grr"`` or ``"oue"``.
///     d: domain size, ``2 ≤ d ≤ 2^32``.
///     epsilon: ``0 < ε ≤ 50``.
///
/// Raises:
///     InputError: naming the argument.
#[pyfunction]
fn ldp_probabilities(
    py: Python<'_>,
    oracle: &Bound<'_, PyAny>,
    d: &Bound<'_, PyAny>,
    epsilon: &Bound<'_, PyAny>,
) -> PyResult<(f64, f64)> {
    let o = oracle_arg(py, oracle)?;
    let (d, e) = (domain_arg(py, d)?, epsilon_arg(py, epsilon, "epsilon")?);
    Ok(pair(o.probabilities(d, e)))
}

/// ``(p*, q*)`` of the chained mechanism: a permanent response with ``epsilon_perm``, then an
/// instantaneous response with ``epsilon`` drawn from it. Use these to debias chained reports.
///
/// GRR: ``p* = p₁p₂ + (1 − p₁)q₂`` and ``q* = p₁q₂ + q₁p₂ + (d − 2)q₁q₂``. OUE, per bit:
/// ``p* = p₁p₂ + (1 − p₁)q₂`` and ``q* = q₁p₂ + (1 − q₁)q₂``. Stage 1 is permanent, 2 is
/// instantaneous.
///
/// Raises:
///     InputError: naming the argument.
#[pyfunction]
fn ldp_effective_probabilities(
    py: Python<'_>,
    oracle: &Bound<'_, PyAny>,
    d: &Bound<'_, PyAny>,
    epsilon: &Bound<'_, PyAny>,
    epsilon_perm: &Bound<'_, PyAny>,
) -> PyResult<(f64, f64)> {
    let o = oracle_arg(py, oracle)?;
    let d = domain_arg(py, d)?;
    let e = epsilon_arg(py, epsilon, "epsilon")?;
    let ep = epsilon_arg(py, epsilon_perm, "epsilon_perm")?;
    Ok(pair(o.effective_probabilities(d, e, ep)))
}

/// The oracle with the smaller estimator variance: ``"grr"`` when ``d < 3e^ε + 2``, else
/// ``"oue"``.
///
/// Raises:
///     InputError: naming the argument.
#[pyfunction]
fn choose_oracle(
    py: Python<'_>,
    d: &Bound<'_, PyAny>,
    epsilon: &Bound<'_, PyAny>,
) -> PyResult<&'static str> {
    let (d, e) = (domain_arg(py, d)?, epsilon_arg(py, epsilon, "epsilon")?);
    Ok(Oracle::choose(d, e).name())
}

#[allow(clippy::too_many_arguments)]
fn grr_run<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyAny>,
    values_arg: &'static str,
    d: &Bound<'py, PyAny>,
    eps: &Bound<'py, PyAny>,
    eps_arg: &'static str,
    seed: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let values = array::<i64>(values, values_arg, 1, Accept::Integer)?;
    let grr = Grr::new(domain_arg(py, d)?, epsilon_arg(py, eps, eps_arg)?);
    let seed = rng(seed)?;
    let data = slice(&values)?;
    let out = errors::detached(py, || {
        grr.perturb(data, values_arg, &mut Rng::from_seed(seed))
    })?;
    Ok(PyArray1::from_vec(py, out))
}

/// Single-stage GRR: randomise each value in ``[0, d)`` independently with ``epsilon``.
///
/// Args:
///     values: integer array of shape ``(m,)``, each in ``[0, d)``.
///     d: domain size.
///     epsilon: privacy of each report.
///     seed: **testing only.** A seed makes the output reproducible, so anyone who knows it
///         can undo the randomisation. Never pass one in production; the default draws from
///         the OS CSPRNG.
///
/// Returns:
///     int64 array of shape ``(m,)``.
///
/// Raises:
///     InputError: naming the argument (a value outside ``[0, d)``, a bad ``d`` or ε, a
///         non-integer dtype).
#[pyfunction]
#[pyo3(signature = (values, d, epsilon, *, seed=None))]
fn grr_perturb<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyAny>,
    d: &Bound<'py, PyAny>,
    epsilon: &Bound<'py, PyAny>,
    seed: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    grr_run(py, values, "values", d, epsilon, "epsilon", seed)
}

/// The permanent GRR response of each true value, with ``epsilon_perm``. The device draws it
/// once per value and memoises it; every report is then an instantaneous response on top.
///
/// Args and Returns as :func:`grr_perturb`, with ``epsilon_perm`` for ``epsilon``.
#[pyfunction]
#[pyo3(signature = (values, d, epsilon_perm, *, seed=None))]
fn grr_permanent<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyAny>,
    d: &Bound<'py, PyAny>,
    epsilon_perm: &Bound<'py, PyAny>,
    seed: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    grr_run(py, values, "values", d, epsilon_perm, "epsilon_perm", seed)
}

/// A fresh instantaneous GRR response, with ``epsilon``, of each memoised permanent response.
///
/// Args and Returns as :func:`grr_perturb`, with ``permanent`` (int array, each in
/// ``[0, d)``) for ``values``.
#[pyfunction]
#[pyo3(signature = (permanent, d, epsilon, *, seed=None))]
fn grr_instantaneous<'py>(
    py: Python<'py>,
    permanent: &Bound<'py, PyAny>,
    d: &Bound<'py, PyAny>,
    epsilon: &Bound<'py, PyAny>,
    seed: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    grr_run(py, permanent, "permanent", d, epsilon, "epsilon", seed)
}

fn oue_encode<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyAny>,
    d: &Bound<'py, PyAny>,
    eps: &Bound<'py, PyAny>,
    eps_arg: &'static str,
    seed: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let values = array::<i64>(values, "values", 1, Accept::Integer)?;
    let oue = Oue::new(domain_arg(py, d)?, epsilon_arg(py, eps, eps_arg)?);
    let seed = rng(seed)?;
    let data = slice(&values)?;
    let out = errors::detached(py, || {
        oue.perturb(data, "values", &mut Rng::from_seed(seed))
    })?;
    Ok(PyArray1::from_vec(py, out)
        .reshape([data.len(), oue.stride()])?
        .into_any())
}

/// Single-stage OUE: one-hot encode each value in ``[0, d)`` and randomise every bit.
///
/// Bits are packed LSB-first: bit ``j`` of a report is bit ``j % 8`` of byte ``j // 8``
/// (``numpy.unpackbits(..., bitorder="little")`` undoes it), and the high bits of the last
/// byte beyond ``d`` are zero.
///
/// Args:
///     values: integer array of shape ``(m,)``, each in ``[0, d)``.
///     d: domain size.
///     epsilon: privacy of each report.
///     seed: **testing only**, as in :func:`grr_perturb`.
///
/// Returns:
///     uint8 array of shape ``(m, ceil(d/8))``, one packed report per row.
///
/// Raises:
///     InputError: naming the argument.
#[pyfunction]
#[pyo3(signature = (values, d, epsilon, *, seed=None))]
fn oue_perturb<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyAny>,
    d: &Bound<'py, PyAny>,
    epsilon: &Bound<'py, PyAny>,
    seed: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    oue_encode(py, values, d, epsilon, "epsilon", seed)
}

/// The permanent OUE response of each true value, with ``epsilon_perm``, packed as in
/// :func:`oue_perturb`. The device memoises it per value.
#[pyfunction]
#[pyo3(signature = (values, d, epsilon_perm, *, seed=None))]
fn oue_permanent<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyAny>,
    d: &Bound<'py, PyAny>,
    epsilon_perm: &Bound<'py, PyAny>,
    seed: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    oue_encode(py, values, d, epsilon_perm, "epsilon_perm", seed)
}

/// A fresh instantaneous OUE response, with ``epsilon``, of each memoised permanent response:
/// every bit that is 1 stays 1 with probability ``1/2``, every bit that is 0 becomes 1 with
/// probability ``1/(e^ε + 1)``.
///
/// Args:
///     permanent: uint8 array of shape ``(m, ceil(d/8))``, packed as in :func:`oue_perturb`.
///         Must be uint8 (other dtypes would wrap silently), with the padding bits zero.
///     d: domain size.
///     epsilon: privacy of each report.
///     seed: **testing only**, as in :func:`grr_perturb`.
///
/// Returns:
///     uint8 array of shape ``(m, ceil(d/8))``.
///
/// Raises:
///     InputError: naming the argument.
#[pyfunction]
#[pyo3(signature = (permanent, d, epsilon, *, seed=None))]
fn oue_instantaneous<'py>(
    py: Python<'py>,
    permanent: &Bound<'py, PyAny>,
    d: &Bound<'py, PyAny>,
    epsilon: &Bound<'py, PyAny>,
    seed: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    const ARG: &str = "permanent";
    let is_uint8 = permanent
        .cast::<PyUntypedArray>()
        .is_ok_and(|a| a.dtype().is_equiv_to(&dtype::<u8>(py)));
    if !is_uint8 {
        return Err(input_error(
            py,
            ARG,
            format!(
                "expected a uint8 array of packed bits, got {}",
                match permanent.cast::<PyUntypedArray>() {
                    Ok(a) => format!("dtype {}", a.dtype()),
                    Err(_) => type_name(permanent),
                }
            ),
        ));
    }
    let bits = array::<u8>(permanent, ARG, 2, Accept::Integer)?;
    let d = domain_arg(py, d)?;
    let oue = Oue::new(d, epsilon_arg(py, epsilon, "epsilon")?);
    let (m, width) = (bits.shape()[0], bits.shape()[1]);
    if width != packed_len(d.get()) {
        return Err(input_error(
            py,
            ARG,
            format!(
                "expected shape (m, {}) for d = {}, got ({m}, {width})",
                packed_len(d.get()),
                d.get()
            ),
        ));
    }
    let seed = rng(seed)?;
    let data = slice(&bits)?;
    let out = errors::detached(py, || oue.reperturb(data, ARG, &mut Rng::from_seed(seed)))?;
    Ok(PyArray1::from_vec(py, out).reshape([m, width])?.into_any())
}

/// Add discrete Laplace noise to integer counts, for central mode. Exact: no floating point.
///
/// Each output is ``counts[i] + Z`` with ``P(Z = z) = (1 − α)/(1 + α)·α^|z|``,
/// ``α = exp(−ε/Δ)``, sampled with integer arithmetic (Canonne, Kamath and Steinke 2020), so
/// the result is ε-differentially private for counts of L1 sensitivity ``Δ``.
///
/// Args:
///     counts: integer array of shape ``(m,)``.
///     epsilon: ε as an ``int``, ``float`` or ``fractions.Fraction`` (anything with
///         ``as_integer_ratio()``). It is used as the exact rational it is: a float as its exact
///         binary value (``0.1`` is ``3602879701896397/2**55``), a Fraction as given. Numerator
///         and denominator must be below ``2**64``, and ``ε/Δ ≥ 2**-32``.
///     sensitivity: ``Δ``, an integer in ``[1, 2**32]``.
///     seed: **testing only**, as in :func:`grr_perturb`.
///
/// Returns:
///     int64 array of shape ``(m,)``.
///
/// Raises:
///     InputError: naming the argument.
#[pyfunction]
#[pyo3(signature = (counts, epsilon, sensitivity, *, seed=None))]
fn discrete_laplace<'py>(
    py: Python<'py>,
    counts: &Bound<'py, PyAny>,
    epsilon: &Bound<'py, PyAny>,
    sensitivity: &Bound<'py, PyAny>,
    seed: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let counts = array::<i64>(counts, "counts", 1, Accept::Integer)?;
    let bad_epsilon = || {
        input_error(
            py,
            "epsilon",
            format!(
                "expected a positive int, float or Fraction whose numerator and denominator are \
                 below 2**64, got {}",
                epsilon
                    .repr()
                    .map(|r| r.to_string())
                    .unwrap_or_else(|_| type_name(epsilon))
            ),
        )
    };
    let (num, den) = epsilon
        .call_method0("as_integer_ratio")
        .map_err(|_| bad_epsilon())?
        .extract::<(Bound<'py, PyAny>, Bound<'py, PyAny>)>()
        .map_err(|_| bad_epsilon())?;
    let num = num.extract::<u64>().map_err(|_| bad_epsilon())?;
    let den = den.extract::<u64>().map_err(|_| bad_epsilon())?;
    let noise = core(
        py,
        DiscreteLaplace::new(num, den, int_arg(sensitivity, "sensitivity")?),
    )?;
    let seed = rng(seed)?;
    let data = slice(&counts)?;
    let out = errors::detached(py, || {
        add_discrete_laplace(data, &noise, &mut Rng::from_seed(seed))
    })?;
    Ok(PyArray1::from_vec(py, out))
}

/// Add this module's functions to the extension module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(ldp_probabilities, m)?)?;
    m.add_function(wrap_pyfunction!(ldp_effective_probabilities, m)?)?;
    m.add_function(wrap_pyfunction!(choose_oracle, m)?)?;
    m.add_function(wrap_pyfunction!(grr_perturb, m)?)?;
    m.add_function(wrap_pyfunction!(grr_permanent, m)?)?;
    m.add_function(wrap_pyfunction!(grr_instantaneous, m)?)?;
    m.add_function(wrap_pyfunction!(oue_perturb, m)?)?;
    m.add_function(wrap_pyfunction!(oue_permanent, m)?)?;
    m.add_function(wrap_pyfunction!(oue_instantaneous, m)?)?;
    m.add_function(wrap_pyfunction!(discrete_laplace, m)?)?;
    Ok(())
}
