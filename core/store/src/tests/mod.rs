//! The store's test suites. `conformance` runs the same scenarios against
//! both engines; `model` checks random operation sequences, crashes
//! included, against a plain in-memory model of the queues.

mod conformance;
mod faults;
mod model;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Engine, MemoryEngine, RocksEngine, Store};
use crate::config::{Durability, StoreConfig};
use crate::metrics::StoreMetrics;

/// A clock the tests move by hand.
#[derive(Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }

    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl super::Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// How a suite gets an engine and "crashes" it.
pub trait Harness {
    fn engine(&mut self) -> Arc<dyn Engine>;
    /// Drops every handle and returns a fresh engine over the same data.
    fn crash(&mut self, old: Arc<dyn Engine>) -> Arc<dyn Engine>;
}

pub struct MemoryHarness(Option<Arc<MemoryEngine>>);

impl MemoryHarness {
    pub fn new() -> Self {
        Self(None)
    }
}

impl Harness for MemoryHarness {
    fn engine(&mut self) -> Arc<dyn Engine> {
        let engine = self.0.get_or_insert_with(|| Arc::new(MemoryEngine::new()));
        engine.clone()
    }

    fn crash(&mut self, old: Arc<dyn Engine>) -> Arc<dyn Engine> {
        drop(old);
        self.engine()
    }
}

pub struct RocksHarness {
    dir: tempfile::TempDir,
    config: StoreConfig,
}

impl RocksHarness {
    pub fn new() -> Self {
        // Async durability: a process crash keeps the WAL either way, and the
        // suites run thousands of commits.
        let config = StoreConfig {
            durability: Durability::Async,
            ..StoreConfig::default()
        };
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            config,
        }
    }
}

impl Harness for RocksHarness {
    fn engine(&mut self) -> Arc<dyn Engine> {
        Arc::new(
            RocksEngine::open(self.dir.path(), &self.config, StoreMetrics::default())
                .expect("open rocksdb"),
        )
    }

    fn crash(&mut self, old: Arc<dyn Engine>) -> Arc<dyn Engine> {
        drop(old);
        self.engine()
    }
}

pub fn open_store(engine: Arc<dyn Engine>, clock: &Arc<ManualClock>) -> (Store, super::Recovery) {
    Store::open(engine, clock.clone(), StoreMetrics::default()).expect("open store")
}
