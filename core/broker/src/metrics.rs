//! The Prometheus registry. Names follow
//! `mhero_<subsystem>_<name>_<unit>[_total]`; label values are bounded
//! (channel, lane, outcome), never a phone number or a name. Hot paths
//! record once per batch, not once per message.

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

pub use mhero_store::metrics::StoreMetrics;

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
