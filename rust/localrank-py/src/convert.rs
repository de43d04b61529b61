//! Python objects in, borrowed slices out; vectors in, numpy arrays out.
//!
//! An ndarray of the exact dtype, C-contiguous, is borrowed without a copy. Any other numeric
//! input is converted once (`numpy.ascontiguousarray`); non-numeric dtypes are refused.

use numpy::prelude::*;
use numpy::{dtype, Element, PyArray1, PyArrayDyn, PyReadonlyArrayDyn, PyUntypedArray};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::errors::input_error;

/// Which dtypes an argument accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Any integer or floating dtype, converted to the target type.
    Real,
    /// Any integer dtype.
    Integer,
    /// int8 exactly (quantised embeddings: converting anything else would silently round).
    Int8,
    /// bool exactly.
    Bool,
}

impl Accept {
    fn admits(self, kind: u8, is_int8: bool) -> bool {
        match self {
            Accept::Real => matches!(kind, b'i' | b'u' | b'f'),
            Accept::Integer => matches!(kind, b'i' | b'u'),
            Accept::Int8 => is_int8,
            Accept::Bool => kind == b'b',
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Accept::Real => "a numeric (integer or float) dtype",
            Accept::Integer => "an integer dtype",
            Accept::Int8 => "dtype int8 (as returned by quantize_int8)",
            Accept::Bool => "dtype bool",
        }
    }
}

fn shape_str(shape: &[usize]) -> String {
    match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The object as an ndarray, checked for rank and dtype family.
fn as_ndarray<'py>(
    obj: &Bound<'py, PyAny>,
    arg: &'static str,
    ndim: usize,
    accept: Accept,
) -> PyResult<Bound<'py, PyUntypedArray>> {
    let py = obj.py();
    let array = match obj.cast::<PyUntypedArray>() {
        Ok(a) => a.clone(),
        Err(_) => py
            .import("numpy")?
            .call_method1("asarray", (obj,))
            .and_then(|a| Ok(a.cast_into::<PyUntypedArray>()?))
            .map_err(|_| {
                input_error(
                    py,
                    arg,
                    format!(
                        "expected a {ndim}-D numpy array, got an object of type {}",
                        obj.get_type()
                            .name()
                            .map(|n| n.to_string())
                            .unwrap_or_else(|_| "?".into())
                    ),
                )
            })?,
    };
    if array.ndim() != ndim {
        return Err(input_error(
            py,
            arg,
            format!(
                "expected a {ndim}-D array, got a {}-D array of shape {}",
                array.ndim(),
                shape_str(array.shape())
            ),
        ));
    }
    let descr = array.dtype();
    let is_int8 = descr.is_equiv_to(&dtype::<i8>(py));
    if !accept.admits(descr.kind(), is_int8) {
        return Err(input_error(
            py,
            arg,
            format!("expected {}, got dtype {}", accept.describe(), descr),
        ));
    }
    Ok(array)
}

/// Whether `obj` is already a numpy array of dtype int8.
pub fn is_int8_array(obj: &Bound<'_, PyAny>) -> bool {
    obj.cast::<PyUntypedArray>()
        .is_ok_and(|a| a.dtype().is_equiv_to(&dtype::<i8>(obj.py())))
}

/// Borrow (or convert once, then borrow) an array argument as `T`.
pub fn array<'py, T: Element>(
    obj: &Bound<'py, PyAny>,
    arg: &'static str,
    ndim: usize,
    accept: Accept,
) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    let py = obj.py();
    // The common case first: already an ndarray of exactly `T`, of the right rank and
    // C-contiguous, borrowed after one type check (PyArray_Check, the dtype, the rank) instead
    // of the general path's several dtype lookups and comparisons.
    // (Measured in one process, n = 1: 1.87 → 1.62 µs per call, best of 25 rounds.)
    if let Ok(typed) = obj.cast::<PyArrayDyn<T>>() {
        if typed.ndim() == ndim && typed.is_c_contiguous() {
            return typed.try_readonly().map_err(|e| {
                input_error(
                    py,
                    arg,
                    format!("expected an array that is not being written to: {e}"),
                )
            });
        }
    }
    let array = as_ndarray(obj, arg, ndim, accept)?;
    let target = dtype::<T>(py);
    let typed = if array.dtype().is_equiv_to(&target) && array.is_c_contiguous() {
        array.into_any()
    } else {
        py.import("numpy")?
            .call_method1("ascontiguousarray", (array, target))?
    };
    let typed = typed.cast_into::<PyArrayDyn<T>>()?;
    typed.try_readonly().map_err(|e| {
        input_error(
            py,
            arg,
            format!("expected an array that is not being written to: {e}"),
        )
    })
}

/// An integer array as i32: borrowed when it already is int32, else converted once with values
/// beyond the i32 range clamped (they are out of any category range, and so refused where read).
pub enum Ints<'py> {
    Borrowed(PyReadonlyArrayDyn<'py, i32>),
    Owned(Vec<i32>),
}

impl Ints<'_> {
    pub fn as_slice(&self) -> &[i32] {
        match self {
            Ints::Borrowed(a) => a.as_slice().expect("converted arrays are contiguous"),
            Ints::Owned(v) => v,
        }
    }
}

pub fn int32_array<'py>(obj: &Bound<'py, PyAny>, arg: &'static str) -> PyResult<Ints<'py>> {
    let checked = as_ndarray(obj, arg, 1, Accept::Integer)?;
    let descr = checked.dtype();
    // Narrower integers and int32 itself fit i32 exactly; wider ones go through i64.
    if descr.itemsize() < 4 || (descr.itemsize() == 4 && descr.kind() == b'i') {
        return Ok(Ints::Borrowed(array::<i32>(
            checked.as_any(),
            arg,
            1,
            Accept::Integer,
        )?));
    }
    let wide = array::<i64>(checked.as_any(), arg, 1, Accept::Integer)?;
    let values = wide.as_slice()?;
    Ok(Ints::Owned(
        values
            .iter()
            .map(|v| (*v).clamp(i32::MIN as i64, i32::MAX as i64) as i32)
            .collect(),
    ))
}

/// The shape of a 2-D borrowed array as (rows, cols).
pub fn dims2<T: Element>(a: &PyReadonlyArrayDyn<'_, T>) -> (usize, usize) {
    let s = a.shape();
    (s[0], s[1])
}

/// Contiguous data of an array we borrowed or converted ourselves.
pub fn slice<'a, T: Element>(a: &'a PyReadonlyArrayDyn<'_, T>) -> PyResult<&'a [T]> {
    Ok(a.as_slice()?)
}

/// `(indices: int64[m], scores: float32[m])` as a Python tuple.
pub fn ranked_tuple<'py>(
    py: Python<'py>,
    r: localrank_core::Ranked,
) -> PyResult<Bound<'py, PyTuple>> {
    let idx = PyArray1::from_vec(py, r.indices);
    let scores = PyArray1::from_vec(py, r.scores);
    PyTuple::new(py, [idx.into_any(), scores.into_any()])
}
