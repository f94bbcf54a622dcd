//! The mHero broker's durable delivery queues. This crate knows nothing
//! of the broker above it (dispatch, plugins, channels): it owns its
//! configuration ([`config`]), metrics ([`metrics`]) and errors
//! ([`error`]), and the broker composes them.
//!
//! - [`engine`]: the storage boundary (key spaces, atomic batches, scans)
//!   and the commit ticket.
//! - [`rocks`]: the RocksDB engine with its group-commit writer thread.
//! - [`memory`]: the in-memory engine.
//! - [`keys`] and [`records`]: big-endian key codecs, compact binary values.
//! - [`queue`]: the queue logic, written once against the engine boundary:
//!   enqueue, lease, settle (complete / retry / dead-letter / reroute),
//!   delayed promotion, dead-letter replay, crash recovery.

pub mod config;
pub mod engine;
pub mod error;
pub mod keys;
pub mod memory;
pub mod metrics;
pub mod queue;
pub mod records;
pub mod rocks;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;

pub use engine::{Batch, Cf, Engine, Op, Pending, Ticket};
pub use keys::QueueKey;
pub use memory::MemoryEngine;
pub use queue::{
    ChannelDepth, Clock, DeliveryPage, Leased, NewDelivery, Outcome, Purged, Recovery, Store,
    SystemClock,
};
pub use records::{
    AttemptNote, Counters, DeadLetter, Globals, InboundRecord, InboundResult, Item, Quarantined,
    SentRef, StatusRecord, Undelivered, Versioned, decode_value, encode, hex,
};
pub use rocks::RocksEngine;

pub use config::{Durability, EngineKind, StoreConfig};
pub use error::{Error, Result};
pub use metrics::StoreMetrics;

/// Opens the store `config` names under `data_dir`, with the system clock.
pub fn open(
    data_dir: &Path,
    config: &StoreConfig,
    metrics: StoreMetrics,
) -> Result<(Store, Recovery)> {
    open_with_clock(data_dir, config, metrics, Arc::new(SystemClock))
}

/// Opens the store under `data_dir` to read it: nothing is recovered or
/// written, and a running broker may hold the store meanwhile.
pub fn open_read_only(
    data_dir: &Path,
    config: &StoreConfig,
    metrics: StoreMetrics,
) -> Result<(Store, Recovery)> {
    let engine: Arc<dyn Engine> = match config.engine {
        EngineKind::Rocksdb => Arc::new(RocksEngine::open_read_only(data_dir)?),
        EngineKind::Memory => {
            return Err(Error::Invalid(
                "the memory engine keeps nothing to look at".into(),
            ));
        }
    };
    Store::open_read_only(engine, Arc::new(SystemClock), metrics)
}

/// Opens the store `config` names under `data_dir` with the given clock.
pub fn open_with_clock(
    data_dir: &Path,
    config: &StoreConfig,
    metrics: StoreMetrics,
    clock: Arc<dyn Clock>,
) -> Result<(Store, Recovery)> {
    let engine: Arc<dyn Engine> = match config.engine {
        EngineKind::Rocksdb => Arc::new(RocksEngine::open(data_dir, config, metrics.clone())?),
        EngineKind::Memory => Arc::new(MemoryEngine::new()),
    };
    Store::open(engine, clock, metrics)
}
