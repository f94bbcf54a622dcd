//! The broker's error type.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store refused or failed (its own error says how).
    #[error(transparent)]
    Store(#[from] mhero_store::Error),

    #[error("cannot access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("unreadable record in column family {cf} at key {key}: {message}")]
    BadRecord {
        cf: &'static str,
        key: String,
        message: String,
    },

    #[error("plugin {plugin} not loaded: {message}")]
    PluginLoad { plugin: String, message: String },

    /// A request that cannot be accepted as it is.
    #[error("{0}")]
    Invalid(String),

    #[error("invalid configuration: {0}")]
    Config(String),

    #[error("cannot read config file {path}")]
    ConfigFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot parse config file {path}: {message}")]
    ConfigParse { path: PathBuf, message: String },

    /// A task the broker runs stopped unexpectedly (a bug, or shutdown).
    #[error("internal error: {0}")]
    Internal(String),
}

/// A broker error met inside a store callback (a reroute's next step reads
/// the campaign's audience): the store's own error passes through, any
/// other becomes the store's internal error with its text.
impl From<Error> for mhero_store::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Store(e) => e,
            other => mhero_store::Error::Internal(other.to_string()),
        }
    }
}
