//! The store's settings (`[store]` of the broker's configuration).

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Every commit group is fsynced before anyone is acknowledged.
    Sync,
    /// Written to the WAL without fsync: survives a process crash, not a
    /// power loss.
    Async,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// The embedded RocksDB store under `data_dir`.
    Rocksdb,
    /// Nothing written to disk; for trying things out and tests.
    Memory,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub engine: EngineKind,
    pub durability: Durability,
    /// Most writes one commit group takes.
    pub max_group_ops: usize,
    /// How long the writer waits for more writes when a group is small
    /// (µs). 0 commits whatever is waiting at once: under load, groups
    /// still grow while the previous commit's fsync runs.
    pub group_linger_us: u64,
    /// Most write requests waiting for the writer before submitters block.
    pub max_queued_writes: usize,
    /// WAL size that forces memtable flushes (MiB).
    pub max_wal_mb: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            engine: EngineKind::Rocksdb,
            durability: Durability::Sync,
            max_group_ops: 50_000,
            group_linger_us: 0,
            max_queued_writes: 4096,
            max_wal_mb: 256,
        }
    }
}

impl StoreConfig {
    /// Checks ranges; the error names the key under `[store]`.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_group_ops == 0 {
            return Err("store.max_group_ops must be > 0".into());
        }
        if self.group_linger_us > 100_000 {
            return Err("store.group_linger_us must be <= 100000 (100 ms)".into());
        }
        if self.max_queued_writes == 0 {
            return Err("store.max_queued_writes must be > 0".into());
        }
        if self.max_wal_mb < 16 {
            return Err("store.max_wal_mb must be >= 16".into());
        }
        Ok(())
    }
}
