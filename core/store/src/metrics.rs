//! The store's metrics: commit groups, bytes written, recovery.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The store's commit path.
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    commits: Counter,
    group_requests: Histogram,
    group_ops: Histogram,
    commit_duration: Histogram,
    written_bytes: Counter,
    pub recovered: Counter,
}

impl Default for StoreMetrics {
    /// Metrics that are recorded but exposed nowhere (tests, benches).
    fn default() -> Self {
        Self::register(&mut Registry::default())
    }
}

impl StoreMetrics {
    /// Registers the metrics under `registry` (the broker gives it the
    /// `mhero_store` prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            commits: Counter::default(),
            group_requests: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            group_ops: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            commit_duration: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            written_bytes: Counter::default(),
            recovered: Counter::default(),
        };
        registry.register("commits", "Commit groups written", m.commits.clone());
        registry.register(
            "commit_group_requests",
            "Write requests per commit group",
            m.group_requests.clone(),
        );
        registry.register(
            "commit_group_ops",
            "Writes per commit group",
            m.group_ops.clone(),
        );
        registry.register_with_unit(
            "commit_duration",
            "Time to build and commit one group, fsync included",
            Unit::Seconds,
            m.commit_duration.clone(),
        );
        registry.register_with_unit(
            "written",
            "Key and value bytes committed",
            Unit::Bytes,
            m.written_bytes.clone(),
        );
        registry.register(
            "recovered_deliveries",
            "Deliveries leased but unsettled at a crash, made ready again on open",
            m.recovered.clone(),
        );
        m
    }

    pub fn observe_group(&self, requests: usize, ops: usize, bytes: usize, took: Duration) {
        self.commits.inc();
        self.group_requests.observe(requests as f64);
        self.group_ops.observe(ops as f64);
        self.commit_duration.observe(took.as_secs_f64());
        self.written_bytes.inc_by(bytes as u64);
    }
}
