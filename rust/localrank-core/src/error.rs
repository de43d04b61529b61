//! The core's one error type. The binding maps it to Python exceptions in one place.

use std::fmt;

/// Everything the core can refuse. Each variant names the argument at fault.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// An argument has the wrong shape, length or value.
    ///
    /// `arg` is the argument's public name (`"E"`, `"bias"`, `"k"`, ...), and `expected`
    /// says what would have been accepted and what was received.
    Input { arg: &'static str, expected: String },
    /// A kernel path was requested that this machine cannot run.
    Kernel { expected: String },
}

impl Error {
    /// Shorthand for an [`Error::Input`].
    pub fn input(arg: &'static str, expected: impl Into<String>) -> Self {
        Error::Input {
            arg,
            expected: expected.into(),
        }
    }

    /// The argument this error is about, if any.
    pub fn arg(&self) -> Option<&'static str> {
        match self {
            Error::Input { arg, .. } => Some(arg),
            Error::Kernel { .. } => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Input { arg, expected } => write!(f, "{arg}: {expected}"),
            Error::Kernel { expected } => write!(f, "kernel: {expected}"),
        }
    }
}

impl std::error::Error for Error {}

/// The core's result type.
pub type Result<T> = std::result::Result<T, Error>;
