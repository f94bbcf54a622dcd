//! The broker's TOML configuration. Every section refuses unknown keys, and
//! [`Config::validate`] names the key path of anything out of range.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::api::ApiConfig;
pub use crate::directory::config::{DirectoryConfig, SourceConfig};
pub use crate::dispatch::config::{ChannelConfig, DispatchConfig};
use crate::error::{Error, Result};
pub use crate::inbound::{InboundConfig, SubscriberConfig};
pub use crate::plugin::PluginsConfig;
pub use mhero_store::config::{Durability, EngineKind, StoreConfig};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the store keeps its data.
    pub data_dir: PathBuf,
    pub store: StoreConfig,
    pub plugins: PluginsConfig,
    pub dispatch: DispatchConfig,
    /// The health-worker directory and the FHIR servers it syncs from.
    pub directory: DirectoryConfig,
    /// Channels by name (`sms`, `whatsapp`…): what campaigns send through.
    pub channels: BTreeMap<String, ChannelConfig>,
    /// The HTTP API (`mhero serve`).
    pub api: ApiConfig,
    /// Replies: duplicates, classifiers, trigger words, answers,
    /// integrators' webhooks.
    pub inbound: InboundConfig,
    /// Structured reports (stock, cases): how they add up, who is alerted.
    pub reports: crate::workflows::reports::ReportsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("mhero-data"),
            store: StoreConfig::default(),
            plugins: PluginsConfig::default(),
            dispatch: DispatchConfig::default(),
            directory: DirectoryConfig::default(),
            channels: BTreeMap::new(),
            api: ApiConfig::default(),
            inbound: InboundConfig::default(),
            reports: Default::default(),
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
        self.plugins.validate().map_err(Error::Config)?;
        self.dispatch.validate().map_err(Error::Config)?;
        self.directory.validate().map_err(Error::Config)?;
        self.api.validate().map_err(Error::Config)?;
        for c in &self.api.default_channels {
            if !self.channels.contains_key(c) {
                return Err(Error::Config(format!(
                    "api.default_channels: {c:?} is not a configured channel"
                )));
            }
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
            c.validate(&path).map_err(Error::Config)?;
        }
        let names: Vec<&str> = self.channels.keys().map(String::as_str).collect();
        self.inbound.validate(&names).map_err(Error::Config)?;
        self.reports.validate(&names).map_err(Error::Config)?;
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
