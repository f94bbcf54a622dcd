//! The store's error type.

use std::path::PathBuf;

use mhero_proto::DeliveryId;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the store at {path} is locked by another process (is another mhero running on it?)")]
    Locked { path: PathBuf },

    #[error("{path} is not an mHero store: {reason}")]
    ForeignStore { path: PathBuf, reason: String },

    #[error("the store at {path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },

    #[error("cannot open the store at {path}: {message}")]
    Open { path: PathBuf, message: String },

    #[error("cannot read the store at {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },

    /// A failed commit: nothing of the failed group was acknowledged, and
    /// the store refuses later writes until it is reopened.
    #[error("cannot write the store at {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },

    #[error("cannot access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot start the store writer thread")]
    Spawn(#[source] std::io::Error),

    #[error("unreadable record in column family {cf} at key {key}: {message}")]
    BadRecord {
        cf: &'static str,
        key: String,
        message: String,
    },

    #[error("the store is closed")]
    StoreClosed,

    #[error("the store at {path} is open for reading only")]
    ReadOnly { path: PathBuf },

    #[error("delivery {0} is not leased (settled twice, or after a restart?)")]
    NotLeased(DeliveryId),

    #[error("no dead letter for delivery {0}")]
    NoDeadLetter(DeliveryId),

    /// A request the store cannot carry out as asked.
    #[error("{0}")]
    Invalid(String),

    /// A thread of the store stopped unexpectedly.
    #[error("internal error: {0}")]
    Internal(String),
}
