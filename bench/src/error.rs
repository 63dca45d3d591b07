//! The harness's one error type. Every failure a user can cause (a bad flag, an
//! unreachable broker, an unwritable output directory) is one of these with a sentence
//! that names the problem; none is a panic.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BenchError {
    /// A parameter that cannot be run as given.
    #[error("{0}")]
    Usage(String),
    /// The broker refused or failed a setup step.
    #[error("{0}")]
    Broker(String),
    #[error("{0}")]
    Net(#[from] spate_net::NetError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot draw {what}: {why}")]
    Plot { what: String, why: String },
    #[error("cannot start the load generator: {0}")]
    Runtime(String),
}

impl BenchError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
        let what = what.into();
        move |source| BenchError::Io { what, source }
    }
}

pub type Result<T> = std::result::Result<T, BenchError>;
