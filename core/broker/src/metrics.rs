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
    pub inbound: crate::inbound::InboundMetrics,
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
        let inbound =
            crate::inbound::InboundMetrics::register(registry.sub_registry_with_prefix("inbound"));
        Self {
            registry,
            store,
            plugin,
            dispatch,
            webhooks,
            inbound,
        }
    }

    /// The metrics in the Prometheus text format (0.0.4), what `/metrics`
    /// serves unless the scraper asks for OpenMetrics: what `promtool
    /// check metrics` and older scrapers read.
    pub fn encode_text(&self) -> String {
        openmetrics_to_text(&self.encode())
    }

    /// The OpenMetrics exposition (what Prometheus asks for first).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        encode(&mut out, &self.registry).expect("encoding metrics into a String");
        out
    }
}

/// OpenMetrics → Prometheus text 0.0.4. The two differ, for what the
/// registry writes, only in that a counter's `HELP` and `TYPE` name it
/// without `_total` in OpenMetrics (and with it in the text format), that
/// OpenMetrics has `UNIT` lines, and that it ends with `# EOF`.
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|rest| ("# HELP ", rest))
            .or_else(|| line.strip_prefix("# TYPE ").map(|rest| ("# TYPE ", rest)));
        match meta {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(kind);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
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

    #[test]
    fn the_text_format_names_counters_with_total_and_has_no_eof() {
        let metrics = Metrics::new();
        let text = metrics.encode_text();
        assert!(text.contains("# HELP mhero_store_commits_total Commit groups written."));
        assert!(text.contains("# TYPE mhero_store_commits_total counter\n"));
        assert!(text.contains("# TYPE mhero_store_commit_duration_seconds histogram\n"));
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
        // Samples are as they were.
        let samples = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(samples(&text), samples(&metrics.encode()));
    }
}
