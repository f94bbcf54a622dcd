//! The broker's TOML configuration. Every section refuses unknown keys, and
//! [`Config::validate`] names the key path of anything out of range.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use mhero_store::config::{Durability, EngineKind, StoreConfig};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the store keeps its data.
    pub data_dir: PathBuf,
    pub store: StoreConfig,
    pub plugins: PluginsConfig,
    pub dispatch: DispatchConfig,
    /// Channels by name (`sms`, `whatsapp`…): what campaigns send through.
    pub channels: BTreeMap<String, ChannelConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("mhero-data"),
            store: StoreConfig::default(),
            plugins: PluginsConfig::default(),
            dispatch: DispatchConfig::default(),
            channels: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// A folder of external plugins, one sub-folder each with a
    /// `plugin.toml` and its component. The built-in plugins always load.
    pub dir: Option<PathBuf>,
    /// Where compiled components are cached; default `<data_dir>/plugin-cache`.
    pub cache_dir: Option<PathBuf>,
    /// Settings per plugin, overriding its manifest's `[config]`:
    /// `[plugins.config.<name>]`.
    pub config: BTreeMap<String, toml::Table>,
    /// The most a plugin manifest may ask for (deadline, memory, input,
    /// output); a plugin asking more is refused at load.
    pub ceilings: crate::plugin::Ceilings,
}

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
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelConfig {
    /// The connector plugin that talks to the gateway.
    pub connector: String,
    /// Messages (or SMS segments, see `count_segments`) per second; 0: no
    /// limit.
    pub rate: f64,
    /// How many may go at once within the rate.
    pub burst: u32,
    /// Count SMS segments against the rate; default: what the connector
    /// says of its gateway.
    pub count_segments: Option<bool>,
    /// Most requests in flight at once.
    pub window: usize,
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
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            connector: "sandbox".into(),
            rate: 0.0,
            burst: 10,
            count_segments: None,
            window: 64,
            workers: 2,
            batch: 1,
            recipient_interval_ms: 0,
            max_retry_after_ms: 600_000,
            retry: crate::dispatch::RetryPolicy::default(),
            http: crate::channel::HttpConfig::default(),
            sandbox: crate::channel::SandboxConfig::default(),
        }
    }
}

impl Config {
    /// The component cache folder: as configured, else beside the store;
    /// none with the memory engine (it writes nothing to disk).
    pub fn plugin_cache_dir(&self) -> Option<PathBuf> {
        match (&self.plugins.cache_dir, self.store.engine) {
            (Some(dir), _) => Some(dir.clone()),
            (None, EngineKind::Rocksdb) => Some(self.data_dir.join("plugin-cache")),
            (None, EngineKind::Memory) => None,
        }
    }
}

impl Config {
    /// Parses and validates a config text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self> {
        let config: Config = toml::from_str(text).map_err(|e| Error::ConfigParse {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigFile {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    pub fn validate(&self) -> Result<()> {
        self.store.validate().map_err(Error::Config)?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(Error::Config("data_dir must not be empty".into()));
        }
        self.plugins
            .ceilings
            .validate("plugins.ceilings")
            .map_err(Error::Config)?;
        let d = &self.dispatch;
        if d.default_country.len() != 2
            || !d.default_country.bytes().all(|b| b.is_ascii_uppercase())
        {
            return Err(Error::Config(
                "dispatch.default_country must be an ISO 3166 code like \"LR\"".into(),
            ));
        }
        if d.fanout_page == 0 || d.lease_max == 0 || d.tick_ms == 0 || d.receipt_poll_ms == 0 {
            return Err(Error::Config(
                "dispatch.fanout_page, lease_max, tick_ms and receipt_poll_ms must be > 0".into(),
            ));
        }
        if d.fanout_ahead < u64::from(d.fanout_page) {
            return Err(Error::Config(
                "dispatch.fanout_ahead must be >= dispatch.fanout_page".into(),
            ));
        }
        for (name, c) in &self.channels {
            let path = format!("channels.{name}");
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            {
                return Err(Error::Config(format!(
                    "{path}: channel names are lowercase letters, digits, '-' and '_'"
                )));
            }
            if !c.rate.is_finite() || c.rate < 0.0 {
                return Err(Error::Config(format!(
                    "{path}.rate must be >= 0 (0: no limit)"
                )));
            }
            if c.burst == 0 || c.window == 0 || c.batch == 0 {
                return Err(Error::Config(format!(
                    "{path}.burst, window and batch must be > 0"
                )));
            }
            if c.max_retry_after_ms == 0 {
                return Err(Error::Config(format!(
                    "{path}.max_retry_after_ms must be > 0"
                )));
            }
            if c.workers == 0 || c.workers > 16 {
                return Err(Error::Config(format!("{path}.workers must be 1 to 16")));
            }
            c.retry
                .validate(&format!("{path}.retry"))
                .map_err(Error::Config)?;
            c.sandbox
                .validate(&format!("{path}.sandbox"))
                .map_err(Error::Config)?;
            c.http
                .validate(&format!("{path}.http"))
                .map_err(Error::Config)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../config/mhero.example.toml");

    #[test]
    fn example_config_parses_validates_and_matches_the_defaults() {
        let config = Config::from_toml(EXAMPLE, Path::new("mhero.example.toml")).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let err =
            Config::from_toml("[store]\ndurabilty = \"sync\"\n", Path::new("x.toml")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("durabilty") && text.contains("x.toml"),
            "{text}"
        );
        let err = Config::from_toml("colour = 1\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("colour"));
    }

    #[test]
    fn channel_values_name_the_key_path() {
        let err =
            Config::from_toml("[channels.sms]\nrate = -1\n", Path::new("x.toml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: channels.sms.rate must be >= 0 (0: no limit)"
        );
        let err = Config::from_toml(
            "[channels.sms.retry]\nbackoff_ms = []\n",
            Path::new("x.toml"),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("channels.sms.retry.backoff_ms"),
            "{err}"
        );
        let err = Config::from_toml("[channels.sms]\nrtae = 5\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("rtae"), "{err}");
        let ok = Config::from_toml(
            "[channels.sms]\nrate = 100\n[channels.sms.sandbox]\nthrottle_percent = 5\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(ok.channels["sms"].sandbox.throttle_percent, 5.0);
    }

    #[test]
    fn bad_values_name_the_key_path() {
        let err =
            Config::from_toml("[store]\nmax_group_ops = 0\n", Path::new("x.toml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: store.max_group_ops must be > 0"
        );
        let err = Config::from_toml("[store]\ndurability = \"maybe\"\n", Path::new("x.toml"))
            .unwrap_err();
        assert!(err.to_string().contains("maybe"));
    }
}
