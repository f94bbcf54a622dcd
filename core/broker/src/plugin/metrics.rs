//! Plugin call metrics: calls by plugin and outcome, call durations by
//! plugin. Handles are resolved once per plugin at load, so a call records
//! with two atomic adds and no label lookup.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The outcomes a call can have (label values).
pub const OUTCOMES: [&str; 12] = [
    "ok",
    "plugin_error",
    "timeout",
    "out_of_memory",
    "panic",
    "invalid_output",
    "trap",
    "circuit_open",
    "input_too_large",
    "wrong_kind",
    "blocked",
    "stopped",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    plugin: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabel {
    plugin: String,
}

fn duration_histogram() -> Histogram {
    // 1 µs to ~1 s.
    Histogram::new(exponential_buckets(0.000_001, 3.0, 13))
}

/// The families, registered once.
#[derive(Clone)]
pub struct PluginMetrics {
    calls: Family<CallLabels, Counter>,
    durations: Family<PluginLabel, Histogram, fn() -> Histogram>,
}

impl Default for PluginMetrics {
    fn default() -> Self {
        Self::register(&mut Registry::default())
    }
}

impl PluginMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            calls: Family::default(),
            durations: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
        };
        registry.register(
            "calls",
            "Plugin calls by plugin and outcome",
            m.calls.clone(),
        );
        registry.register_with_unit(
            "call_duration",
            "Plugin call duration",
            Unit::Seconds,
            m.durations.clone(),
        );
        m
    }

    /// The handles of one plugin.
    pub fn for_plugin(&self, plugin: &str) -> PluginCallMetrics {
        let outcomes = OUTCOMES.map(|outcome| {
            self.calls
                .get_or_create(&CallLabels {
                    plugin: plugin.to_string(),
                    outcome,
                })
                .clone()
        });
        let duration = self
            .durations
            .get_or_create(&PluginLabel {
                plugin: plugin.to_string(),
            })
            .clone();
        PluginCallMetrics { outcomes, duration }
    }
}

/// One plugin's counters and histogram.
#[derive(Clone, Debug)]
pub struct PluginCallMetrics {
    outcomes: [Counter; OUTCOMES.len()],
    duration: Histogram,
}

impl Default for PluginCallMetrics {
    fn default() -> Self {
        PluginMetrics::default().for_plugin("unregistered")
    }
}

impl PluginCallMetrics {
    pub fn record(&self, outcome: &'static str, took: Duration) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.outcomes[i].inc();
        }
        if !took.is_zero() {
            self.duration.observe(took.as_secs_f64());
        }
    }
}
