//! `plugin.toml`: what a plugin is, what it may do, its limits, its
//! settings and their schema.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// The three plugin worlds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Connector,
    FhirMapper,
    Classifier,
}

impl Kind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Connector => "connector",
            Kind::FhirMapper => "fhir-mapper",
            Kind::Classifier => "classifier",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// `[a-z0-9-]+`, unique among loaded plugins.
    pub name: String,
    pub version: String,
    pub kind: Kind,
    #[serde(default)]
    pub summary: String,
    /// The component file, beside the manifest. Default `<name>.wasm`.
    #[serde(default)]
    pub component: Option<String>,
    #[serde(default)]
    pub capabilities: Capabilities,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Default settings; the broker's `[plugins.config.<name>]` overrides.
    #[serde(default)]
    pub config: toml::Table,
    #[serde(default)]
    pub config_schema: BTreeMap<String, SettingSchema>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Hosts the broker may contact on the plugin's behalf: `api.example.org`,
    /// `127.0.0.1:13013`, `sandbox:gateway` for the built-in simulator, or
    /// `config:<key>`: the host of the URL in the plugin's setting `<key>`
    /// (the operator names their gateway in config; nothing else is reached).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Longest message text (characters) the connector's gateway accepts;
    /// a campaign with a longer text for this channel is refused at submit
    /// instead of failing on every attempt.
    #[serde(default)]
    pub max_text_chars: Option<u32>,
}

/// Limits as written in the manifest; unset ones take the kind's default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub timeout_ms: Option<u64>,
    pub memory_mb: Option<u64>,
    pub max_input_kb: Option<u64>,
    pub max_output_kb: Option<u64>,
    pub recycle_after_calls: Option<u32>,
}

/// The limits a plugin runs under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Deadline of one call.
    pub timeout_ms: u64,
    /// Linear memory cap of one instance.
    pub memory_bytes: usize,
    /// Largest input one call takes (texts, bodies, documents).
    pub max_input_bytes: usize,
    /// Largest output one call may return.
    pub max_output_bytes: usize,
    /// An instance is replaced after this many calls.
    pub recycle_after_calls: u32,
}

/// The most any manifest may ask for, set by the operator
/// (`[plugins.ceilings]`): a plugin asking more is refused at load.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ceilings {
    pub timeout_ms: u64,
    pub memory_mb: u64,
    pub max_input_kb: u64,
    pub max_output_kb: u64,
}

impl Default for Ceilings {
    fn default() -> Self {
        Self {
            timeout_ms: 5_000,
            memory_mb: 512,
            max_input_kb: 64 << 10,
            max_output_kb: 64 << 10,
        }
    }
}

impl Ceilings {
    pub fn validate(&self, path: &str) -> Result<(), String> {
        for (key, v) in [
            ("timeout_ms", self.timeout_ms),
            ("memory_mb", self.memory_mb),
            ("max_input_kb", self.max_input_kb),
            ("max_output_kb", self.max_output_kb),
        ] {
            if v == 0 {
                return Err(format!("{path}.{key} must be > 0"));
            }
        }
        Ok(())
    }
}

impl Limits {
    /// Refuses limits above the operator's ceilings, naming the first one.
    pub fn within(&self, c: &Ceilings) -> Result<(), String> {
        let asks = [
            ("timeout_ms", self.timeout_ms, c.timeout_ms, "ms"),
            (
                "memory_mb",
                (self.memory_bytes >> 20) as u64,
                c.memory_mb,
                "MiB",
            ),
            (
                "max_input_kb",
                (self.max_input_bytes >> 10) as u64,
                c.max_input_kb,
                "KiB",
            ),
            (
                "max_output_kb",
                (self.max_output_bytes >> 10) as u64,
                c.max_output_kb,
                "KiB",
            ),
        ];
        for (key, asked, allowed, unit) in asks {
            if asked > allowed {
                return Err(format!(
                    "its manifest asks for {key} = {asked} {unit}; plugins.ceilings.{key} allows {allowed}"
                ));
            }
        }
        Ok(())
    }

    pub fn defaults(kind: Kind) -> Self {
        match kind {
            Kind::Connector => Limits {
                timeout_ms: 100,
                memory_bytes: 32 << 20,
                max_input_bytes: 1 << 20,
                max_output_bytes: 1 << 20,
                recycle_after_calls: 100_000,
            },
            Kind::Classifier => Limits {
                timeout_ms: 50,
                memory_bytes: 32 << 20,
                max_input_bytes: 64 << 10,
                max_output_bytes: 256 << 10,
                recycle_after_calls: 100_000,
            },
            // One call maps a whole Bundle: batch work, seconds not ms.
            Kind::FhirMapper => Limits {
                timeout_ms: 2000,
                memory_bytes: 128 << 20,
                max_input_bytes: 16 << 20,
                max_output_bytes: 32 << 20,
                recycle_after_calls: 10_000,
            },
        }
    }

    fn resolve(kind: Kind, c: &LimitsConfig) -> Self {
        let d = Self::defaults(kind);
        Limits {
            timeout_ms: c.timeout_ms.unwrap_or(d.timeout_ms),
            memory_bytes: c.memory_mb.map_or(d.memory_bytes, |m| (m as usize) << 20),
            max_input_bytes: c
                .max_input_kb
                .map_or(d.max_input_bytes, |k| (k as usize) << 10),
            max_output_bytes: c
                .max_output_kb
                .map_or(d.max_output_bytes, |k| (k as usize) << 10),
            recycle_after_calls: c.recycle_after_calls.unwrap_or(d.recycle_after_calls),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SettingType {
    String,
    Int,
    Float,
    Bool,
    Array,
    Table,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingSchema {
    #[serde(rename = "type")]
    pub kind: SettingType,
    #[serde(default)]
    pub required: bool,
}

impl Manifest {
    pub fn parse(text: &str) -> Result<Self, String> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| e.to_string())?;
        manifest.check_self()?;
        Ok(manifest)
    }

    fn check_self(&self) -> Result<(), String> {
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!(
                "name {:?} must be lowercase letters, digits and '-'",
                self.name
            ));
        }
        if self.version.split('.').count() != 3
            || !self.version.split('.').all(|p| p.parse::<u64>().is_ok())
        {
            return Err(format!(
                "version {:?} must be MAJOR.MINOR.PATCH",
                self.version
            ));
        }
        let l = &self.limits;
        if l.timeout_ms.is_some_and(|t| t == 0 || t > 10_000) {
            return Err("limits.timeout_ms must be 1 to 10000".into());
        }
        if l.memory_mb.is_some_and(|m| m == 0 || m > 1024) {
            return Err("limits.memory_mb must be 1 to 1024".into());
        }
        if l.max_input_kb == Some(0)
            || l.max_output_kb == Some(0)
            || l.recycle_after_calls == Some(0)
        {
            return Err(
                "limits.max_input_kb, max_output_kb and recycle_after_calls must be > 0".into(),
            );
        }
        Ok(())
    }

    pub fn component_file(&self) -> String {
        self.component
            .clone()
            .unwrap_or_else(|| format!("{}.wasm", self.name))
    }

    pub fn limits(&self) -> Limits {
        Limits::resolve(self.kind, &self.limits)
    }

    /// The settings the plugin sees: the manifest's defaults overridden by
    /// `overrides`, checked against the schema, rendered as text.
    pub fn settings(
        &self,
        overrides: Option<&toml::Table>,
    ) -> Result<HashMap<String, String>, String> {
        let mut merged = self.config.clone();
        if let Some(o) = overrides {
            for (k, v) in o {
                merged.insert(k.clone(), v.clone());
            }
        }
        if !self.config_schema.is_empty() {
            for key in merged.keys() {
                if !self.config_schema.contains_key(key) {
                    let known: Vec<&str> = self.config_schema.keys().map(String::as_str).collect();
                    return Err(format!(
                        "unknown setting {key:?} (known: {})",
                        known.join(", ")
                    ));
                }
            }
            for (key, schema) in &self.config_schema {
                match merged.get(key) {
                    None if schema.required => return Err(format!("setting {key:?} is required")),
                    None => {}
                    Some(v) => {
                        let ok = matches!(
                            (schema.kind, v),
                            (SettingType::String, toml::Value::String(_))
                                | (SettingType::Int, toml::Value::Integer(_))
                                | (
                                    SettingType::Float,
                                    toml::Value::Float(_) | toml::Value::Integer(_)
                                )
                                | (SettingType::Bool, toml::Value::Boolean(_))
                                | (SettingType::Array, toml::Value::Array(_))
                                | (SettingType::Table, toml::Value::Table(_))
                        );
                        if !ok {
                            return Err(format!(
                                "setting {key:?} must be of type {:?}",
                                schema.kind
                            )
                            .to_lowercase());
                        }
                    }
                }
            }
        }
        Ok(merged.into_iter().map(|(k, v)| (k, render(&v))).collect())
    }
}

/// Strings as they are, numbers and booleans in TOML form, arrays and
/// tables as JSON.
fn render(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(_) | toml::Value::Table(_) => {
            serde_json::to_string(value).unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SANDBOX: &str = include_str!("../../../../plugins/connectors/sandbox/plugin.toml");
    const KEYWORDS: &str = include_str!("../../../../plugins/classifiers/keywords/plugin.toml");
    const IHRIS: &str = include_str!("../../../../plugins/fhir/ihris-practitioner/plugin.toml");

    #[test]
    fn the_built_in_manifests_parse() {
        let sandbox = Manifest::parse(SANDBOX).unwrap();
        assert_eq!(
            (sandbox.name.as_str(), sandbox.kind),
            ("sandbox", Kind::Connector)
        );
        assert_eq!(sandbox.limits().timeout_ms, 100);
        assert_eq!(sandbox.capabilities.allowed_hosts, vec!["config:base_url"]);
        let keywords = Manifest::parse(KEYWORDS).unwrap();
        assert_eq!(keywords.limits().timeout_ms, 50);
        let settings = keywords.settings(None).unwrap();
        let table: serde_json::Value = serde_json::from_str(&settings["keywords"]).unwrap();
        assert!(
            table["stockout"].as_array().unwrap().len() > 2,
            "tables reach plugins as JSON"
        );
        let ihris = Manifest::parse(IHRIS).unwrap();
        assert_eq!(ihris.limits().memory_bytes, 256 << 20);
        assert_eq!(ihris.limits().timeout_ms, 2000, "a whole Bundle per call");
        assert_eq!(ihris.settings(None).unwrap()["cadre_groups"], "true");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let err = Manifest::parse(
            "name = \"x\"\nversion = \"1.0.0\"\nkind = \"connector\"\ncolour = 1\n",
        )
        .unwrap_err();
        assert!(err.contains("colour"), "{err}");
        let err = Manifest::parse("name = \"X Y\"\nversion = \"1.0.0\"\nkind = \"connector\"\n")
            .unwrap_err();
        assert!(err.contains("lowercase"), "{err}");
        let err =
            Manifest::parse("name = \"x\"\nversion = \"1.0\"\nkind = \"connector\"\n").unwrap_err();
        assert!(err.contains("MAJOR.MINOR.PATCH"), "{err}");
        let err =
            Manifest::parse("name = \"x\"\nversion = \"1.0.0\"\nkind = \"mapper\"\n").unwrap_err();
        assert!(err.contains("mapper"), "{err}");
        let err = Manifest::parse(
            "name = \"x\"\nversion = \"1.0.0\"\nkind = \"classifier\"\n[limits]\ntimeout_ms = 0\n",
        )
        .unwrap_err();
        assert!(err.contains("limits.timeout_ms"), "{err}");
    }

    #[test]
    fn settings_are_merged_and_checked_against_the_schema() {
        let m = Manifest::parse(SANDBOX).unwrap();
        let mut o = toml::Table::new();
        o.insert("token".into(), toml::Value::String("live".into()));
        assert_eq!(m.settings(Some(&o)).unwrap()["token"], "live");
        o.insert("tokn".into(), toml::Value::String("typo".into()));
        assert!(
            m.settings(Some(&o))
                .unwrap_err()
                .contains("unknown setting \"tokn\"")
        );
        let mut bad = toml::Table::new();
        bad.insert("token".into(), toml::Value::Integer(5));
        assert!(
            m.settings(Some(&bad))
                .unwrap_err()
                .contains("must be of type string")
        );
    }
}
