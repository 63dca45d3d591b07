//! The network layer's one error type. Every variant closes only the connection it
//! arose on (with a log line naming the peer); the broker and other connections go on.

/// Errors of the network layer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("frame of {size} bytes exceeds socket.request.max.bytes ({max})")]
    FrameTooLarge { size: i64, max: usize },
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("unknown API key {0}")]
    UnknownApi(i16),
    #[error("unsupported version {version} of API {api}")]
    UnsupportedVersion { api: i16, version: i16 },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("could not encode the message: {0}")]
    Encode(String),
    #[error("cannot reach a broker at {address}: {reason}")]
    Unreachable { address: String, reason: String },
}

impl NetError {
    /// Whether the error is the connection's (refused, reset, closed, timed out), so
    /// that another connection, maybe to another broker, may succeed.
    pub fn is_connection(&self) -> bool {
        matches!(self, NetError::Io(_) | NetError::Unreachable { .. })
    }
}

impl From<glommio::GlommioError<()>> for NetError {
    fn from(e: glommio::GlommioError<()>) -> Self {
        NetError::Io(e.into())
    }
}

/// The network layer's result type.
pub type Result<T> = std::result::Result<T, NetError>;
