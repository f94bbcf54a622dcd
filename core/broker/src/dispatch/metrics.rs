//! Dispatch metrics. Label values are channel names (configured, so
//! bounded), lanes, and the fixed outcome and reason sets below.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use mhero_proto::Lane;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub channel: String,
    pub lane: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabel {
    pub channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DepthLabels {
    pub channel: String,
    pub lane: &'static str,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub channel: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReceiptLabels {
    pub channel: String,
    pub status: &'static str,
}

/// Outcomes of a send attempt.
pub mod outcome {
    pub const WIRED: &str = "wired";
    pub const RETRIED: &str = "retried";
    pub const REROUTED: &str = "rerouted";
    pub const DEAD: &str = "dead";
    pub const EXPIRED: &str = "expired";
    pub const CANCELLED: &str = "cancelled";
}

/// Why a send is retried.
pub mod reason {
    pub const THROTTLED: &str = "throttled";
    pub const TRANSIENT: &str = "transient";
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const PLUGIN_FAILURE: &str = "plugin_failure";
    pub const NETWORK: &str = "network";
}

#[derive(Clone)]
pub struct DispatchMetrics {
    pub deliveries: Family<DeliveryLabels, Counter>,
    pub depth: Family<DepthLabels, Gauge>,
    pub delayed: Gauge,
    pub dead_letters: Gauge,
    pub oldest_ready_age: Family<ChannelLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub rate_limit_waits: Family<ChannelLabel, Counter>,
    pub rate_limit_wait: Family<ChannelLabel, Counter<f64, std::sync::atomic::AtomicU64>>,
    pub retries: Family<ReasonLabels, Counter>,
    pub redelivered: Family<ChannelLabel, Counter>,
    pub receipts: Family<ReceiptLabels, Counter>,
    pub unmatched_receipts: Counter,
    pub rerouted_after_wiring: Counter,
    pub inbound: Family<ChannelLabel, Counter>,
    pub request_duration: Family<ChannelLabel, Histogram, fn() -> Histogram>,
    pub throttle_rate: Family<ChannelLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

/// 25 µs to 26 s, doubling: a loopback gateway answers in tens of µs, a
/// hosted one in tens of ms, a slow one up to the request timeout (30 s by
/// default). Doubling keeps a quantile read from the buckets (PromQL's
/// `histogram_quantile`) within a factor of two.
fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_025, 2.0, 21))
}

impl Default for DispatchMetrics {
    fn default() -> Self {
        Self::register(&mut Registry::default())
    }
}

impl DispatchMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let m = Self {
            deliveries: Family::default(),
            depth: Family::default(),
            delayed: Gauge::default(),
            dead_letters: Gauge::default(),
            oldest_ready_age: Family::default(),
            rate_limit_waits: Family::default(),
            rate_limit_wait: Family::default(),
            retries: Family::default(),
            redelivered: Family::default(),
            receipts: Family::default(),
            unmatched_receipts: Counter::default(),
            rerouted_after_wiring: Counter::default(),
            inbound: Family::default(),
            request_duration: Family::new_with_constructor(request_histogram as fn() -> Histogram),
            throttle_rate: Family::default(),
        };
        r.register(
            "deliveries",
            "Send attempts by channel, lane and outcome",
            m.deliveries.clone(),
        );
        r.register(
            "queue_depth",
            "Deliveries waiting by channel, lane and state (ready, leased)",
            m.depth.clone(),
        );
        r.register(
            "delayed_deliveries",
            "Deliveries waiting for a retry",
            m.delayed.clone(),
        );
        r.register(
            "dead_letters",
            "Deliveries kept as dead letters",
            m.dead_letters.clone(),
        );
        r.register_with_unit(
            "oldest_ready_age",
            "Age of the oldest ready delivery",
            Unit::Seconds,
            m.oldest_ready_age.clone(),
        );
        r.register(
            "rate_limit_waits",
            "Times a send waited for its channel's rate limit",
            m.rate_limit_waits.clone(),
        );
        r.register_with_unit(
            "rate_limit_wait",
            "Time spent waiting for the rate limit",
            Unit::Seconds,
            m.rate_limit_wait.clone(),
        );
        r.register(
            "retries",
            "Deliveries scheduled for a retry, by reason",
            m.retries.clone(),
        );
        r.register(
            "redelivered",
            "Deliveries re-sent after a crash (leased, unsettled at the crash)",
            m.redelivered.clone(),
        );
        r.register(
            "receipts",
            "Delivery receipts by status",
            m.receipts.clone(),
        );
        r.register(
            "unmatched_receipts",
            "Receipts for no known message",
            m.unmatched_receipts.clone(),
        );
        r.register(
            "rerouted_after_wiring",
            "Deliveries whose receipt said failed, sent again on the campaign's next channel",
            m.rerouted_after_wiring.clone(),
        );
        r.register(
            "inbound_messages",
            "Messages received from health workers",
            m.inbound.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Gateway request time: from taking a connection from the pool to the answer (connector calls and the window's wait excluded)",
            Unit::Seconds,
            m.request_duration.clone(),
        );
        r.register(
            "throttled_rate",
            "Current send rate per second after throttling cuts (0: not cut)",
            m.throttle_rate.clone(),
        );
        m
    }

    pub fn delivery(&self, channel: &str, lane: Lane, outcome: &'static str, n: u64) {
        if n > 0 {
            self.deliveries
                .get_or_create(&DeliveryLabels {
                    channel: channel.to_string(),
                    lane: lane.as_str(),
                    outcome,
                })
                .inc_by(n);
        }
    }

    pub fn retry(&self, channel: &str, reason: &'static str) {
        self.retries
            .get_or_create(&ReasonLabels {
                channel: channel.to_string(),
                reason,
            })
            .inc();
    }

    pub fn waited(&self, channel: &str, wait: Duration) {
        let label = ChannelLabel {
            channel: channel.to_string(),
        };
        self.rate_limit_waits.get_or_create(&label).inc();
        self.rate_limit_wait
            .get_or_create(&label)
            .inc_by(wait.as_secs_f64());
    }
}
