//! The Prometheus registry. Names follow
//! `mhero_<subsystem>_<name>_<unit>[_total]`; label values are bounded
//! (channel, lane, outcome), never a phone number or a name. Hot paths
//! record once per batch, not once per message.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// All of the broker's metrics and the registry they are exposed from.
pub struct Metrics {
    registry: Registry,
    pub store: StoreMetrics,
    pub plugin: crate::plugin::PluginMetrics,
    pub dispatch: crate::dispatch::DispatchMetrics,
    pub webhooks: crate::channel::WebhookMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mhero");
        let store = StoreMetrics::register(registry.sub_registry_with_prefix("store"));
        let plugin =
            crate::plugin::PluginMetrics::register(registry.sub_registry_with_prefix("plugin"));
        let dispatch = crate::dispatch::DispatchMetrics::register(
            registry.sub_registry_with_prefix("dispatch"),
        );
        let webhooks =
            crate::channel::WebhookMetrics::register(registry.sub_registry_with_prefix("channel"));
        Self {
            registry,
            store,
            plugin,
            dispatch,
            webhooks,
        }
    }

    /// The text exposition served at `/metrics`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        encode(&mut out, &self.registry).expect("encoding metrics into a String");
        out
    }
}

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
    fn register(registry: &mut Registry) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_metrics_are_exposed_with_house_names() {
        let metrics = Metrics::new();
        metrics
            .store
            .observe_group(3, 300, 9000, Duration::from_micros(800));
        let text = metrics.encode();
        for name in [
            "mhero_store_commits_total 1",
            "mhero_store_commit_group_requests_sum 3",
            "mhero_store_commit_duration_seconds_count 1",
            "mhero_store_written_bytes_total 9000",
            "mhero_store_recovered_deliveries_total 0",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
