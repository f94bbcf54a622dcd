//! Dispatch's settings: `[dispatch]` and each `[channels.<name>]` of the
//! broker's configuration, with their checks (the error names the key).

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchConfig {
    /// Country (ISO 3166 alpha-2) for phone numbers written without one.
    pub default_country: String,
    /// Recipients expanded per fan-out step.
    pub fanout_page: u32,
    /// Most deliveries of one campaign waiting in queues before fan-out
    /// pauses: memory stays bounded whatever the audience size.
    pub fanout_ahead: u64,
    /// Most deliveries one channel leases at a time.
    pub lease_max: usize,
    /// How often simulated gateways push their due receipts and replies,
    /// and held receipts (their delivery's settle not yet committed) are
    /// tried again (ms).
    pub receipt_poll_ms: u64,
    /// Housekeeping period: due retries, expiry, gauges (ms).
    pub tick_ms: u64,
    /// Days an ended campaign is kept (its statuses, dead letters,
    /// audience and receipt index) before it is purged; 0: forever.
    pub retention_days: u32,
    /// Most ended campaigns kept in memory, where their progress is read
    /// without the store; the oldest leave first, and any leaves an hour
    /// after it ended. Reads of those that left go to the store.
    pub ended_in_memory: usize,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            default_country: "LR".into(),
            fanout_page: 2000,
            fanout_ahead: 20_000,
            lease_max: 2000,
            receipt_poll_ms: 50,
            tick_ms: 20,
            retention_days: 90,
            ended_in_memory: 10_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelConfig {
    /// The connector plugin that talks to the gateway.
    pub connector: String,
    /// This channel's own connector settings, over the connector's
    /// `[plugins.config.<connector>]`: two channels on one connector (two
    /// Kannel SMSC routes, two operators' accounts) each with their own
    /// credentials, sender and webhook address.
    #[serde(skip_serializing_if = "toml::Table::is_empty")]
    pub settings: toml::Table,
    /// Messages (or SMS segments, see `count_segments`) per second; 0: no
    /// limit.
    pub rate: f64,
    /// How many may go at once within the rate.
    pub burst: u32,
    /// Count SMS segments against the rate; default: what the connector
    /// says of its gateway.
    pub count_segments: Option<bool>,
    /// Most requests in flight at once. On a channel with a rate, where it
    /// starts and the narrowest it gets: it fits twice rate × the
    /// gateway's latency (smoothed over its answers), up to `window_max`,
    /// so the rate is reached however slowly the gateway answers (Little's
    /// law), and narrows back when the gateway answers faster again.
    pub window: usize,
    /// The widest a rated channel's window grows (never below `window`).
    /// Over HTTP/1.1 each request in flight holds a connection: this is
    /// also the most connections the channel opens to its gateway.
    pub window_max: usize,
    /// Lease rounds worked on at once (one is sent while the next one's
    /// lease commits).
    pub workers: usize,
    /// Messages per request when the connector has a batch form (1: never
    /// batch).
    pub batch: usize,
    /// Least time between two messages to one recipient (ms); 0: off.
    pub recipient_interval_ms: u64,
    /// Longest pause a gateway's `Retry-After` can impose on the channel
    /// (ms); longer requests are cut to this.
    pub max_retry_after_ms: u64,
    pub retry: crate::dispatch::RetryPolicy,
    /// How requests reach a real gateway over HTTP.
    pub http: crate::channel::HttpConfig,
    /// Settings of the simulated gateway, for `connector = "sandbox"`.
    pub sandbox: crate::channel::SandboxConfig,
    /// How often to ask a gateway that pushes no delivery reports (its
    /// connector answers status queries: RapidPro) about the messages it
    /// took (s); 0: never.
    pub status_poll_s: u64,
    /// How long after a message was handed over it is still asked about
    /// (hours).
    pub status_poll_max_age_h: u32,
    /// Not for confidential content (plain SMS: operators and anyone
    /// holding the phone read it): a lab result goes out on it as a notice
    /// to fetch the result, never the result.
    pub insecure: bool,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            connector: "sandbox".into(),
            settings: toml::Table::new(),
            rate: 0.0,
            burst: 10,
            count_segments: None,
            window: 64,
            window_max: 256,
            workers: 2,
            batch: 1,
            recipient_interval_ms: 0,
            max_retry_after_ms: 600_000,
            retry: crate::dispatch::RetryPolicy::default(),
            http: crate::channel::HttpConfig::default(),
            sandbox: crate::channel::SandboxConfig::default(),
            status_poll_s: 60,
            status_poll_max_age_h: 72,
            insecure: false,
        }
    }
}

impl DispatchConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.default_country.len() != 2
            || !self.default_country.bytes().all(|b| b.is_ascii_uppercase())
        {
            return Err("dispatch.default_country must be an ISO 3166 code like \"LR\"".into());
        }
        if self.fanout_page == 0
            || self.lease_max == 0
            || self.tick_ms == 0
            || self.receipt_poll_ms == 0
        {
            return Err(
                "dispatch.fanout_page, lease_max, tick_ms and receipt_poll_ms must be > 0".into(),
            );
        }
        if self.fanout_ahead < u64::from(self.fanout_page) {
            return Err("dispatch.fanout_ahead must be >= dispatch.fanout_page".into());
        }
        Ok(())
    }
}

impl ChannelConfig {
    /// `path`: the channel's key path (`channels.sms`).
    pub fn validate(&self, path: &str) -> Result<(), String> {
        if !self.rate.is_finite() || self.rate < 0.0 {
            return Err(format!("{path}.rate must be >= 0 (0: no limit)"));
        }
        if self.burst == 0 || self.window == 0 || self.batch == 0 {
            return Err(format!("{path}.burst, window and batch must be > 0"));
        }
        if self.max_retry_after_ms == 0 {
            return Err(format!("{path}.max_retry_after_ms must be > 0"));
        }
        if self.workers == 0 || self.workers > 16 {
            return Err(format!("{path}.workers must be 1 to 16"));
        }
        if self.status_poll_max_age_h == 0 {
            return Err(format!("{path}.status_poll_max_age_h must be > 0"));
        }
        self.retry.validate(&format!("{path}.retry"))?;
        self.sandbox.validate(&format!("{path}.sandbox"))?;
        self.http.validate(&format!("{path}.http"))
    }
}
