//! The one place where core errors and panics become Python exceptions.
//!
//! The exception classes live in `localrank.errors` (one hierarchy, as in polars):
//! `InputError` subclasses both `LocalrankError` and `ValueError`; `KernelError` subclasses
//! `LocalrankError` and `RuntimeError`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use localrank_core::Error;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyType;

fn exception_class<'py>(py: Python<'py>, name: &str) -> Option<Bound<'py, PyType>> {
    let module = py.import("localrank.errors").ok()?;
    module.getattr(name).ok()?.cast_into::<PyType>().ok()
}

/// An `InputError` (a `ValueError`) naming the argument and what was expected.
pub fn input_error(py: Python<'_>, arg: &str, expected: impl Into<String>) -> PyErr {
    let msg = format!("{arg}: {}", expected.into());
    match exception_class(py, "InputError") {
        Some(cls) => PyErr::from_type(cls, msg),
        None => PyValueError::new_err(msg),
    }
}

/// Map a core error to its Python exception.
pub fn to_py(py: Python<'_>, err: Error) -> PyErr {
    match err {
        Error::Input { arg, expected } => input_error(py, arg, expected),
        Error::Kernel { expected } => {
            let msg = format!("kernel: {expected}");
            match exception_class(py, "KernelError") {
                Some(cls) => PyErr::from_type(cls, msg),
                None => PyRuntimeError::new_err(msg),
            }
        }
    }
}

/// Run core code with the GIL released, turning both its errors and any panic into Python
/// exceptions, so that no panic ever unwinds into the interpreter.
pub fn detached<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    F: FnOnce() -> localrank_core::Result<T> + Send,
    T: Send,
{
    let outcome = py.detach(|| catch_unwind(AssertUnwindSafe(f)));
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(to_py(py, err)),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            let msg = format!("internal error in localrank's core (please report): {what}");
            Err(match exception_class(py, "LocalrankError") {
                Some(cls) => PyErr::from_type(cls, msg),
                None => PyRuntimeError::new_err(msg),
            })
        }
    }
}
