//! The directory's configuration: FHIR R4 servers it syncs from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `[directory]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// FHIR R4 servers, by name (`[directory.sources.ihris]`).
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
}

/// How a FHIR server is authenticated to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// HTTP basic authentication.
    Basic { user: String, password: String },
}

/// One FHIR R4 server (iHRIS, OpenMRS's FHIR2 module, DHIS2's FHIR
/// adapter, HAPI…).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The FHIR base, `https://ihris.example.org/fhir`.
    pub base_url: String,
    #[serde(default)]
    pub auth: Option<Auth>,
    /// Resource types read, in this order (places before the people who
    /// work in them).
    #[serde(default = "default_types")]
    pub resource_types: Vec<String>,
    /// `_revinclude` per resource type, so related resources arrive in the
    /// same page (a Practitioner's PractitionerRoles).
    #[serde(default = "default_revinclude")]
    pub revinclude: BTreeMap<String, Vec<String>>,
    /// The mapper plugin (kind `fhir-mapper`).
    #[serde(default = "default_mapper")]
    pub mapper: String,
    /// Country for phone numbers written without one (ISO 3166 alpha-2);
    /// default: `dispatch.default_country`.
    #[serde(default)]
    pub country: Option<String>,
    /// Seconds between incremental syncs while the broker runs; 0 syncs
    /// only when asked (`mhero sync`).
    #[serde(default = "default_every")]
    pub every_s: u64,
    /// Seconds between full reconciles (every resource read, and those the
    /// server no longer has removed), for servers without `_history`.
    #[serde(default = "default_reconcile")]
    pub reconcile_every_s: u64,
    /// Resources per page (`_count`).
    #[serde(default = "default_page")]
    pub page_size: u32,
    /// Per request.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
    /// Retries of a request that failed with a server error, a 429 or a
    /// network error, with backoff (0.5 s doubling, or the server's
    /// `Retry-After`, at most 60 s).
    #[serde(default = "default_retries")]
    pub max_retries: u32,
}

fn default_types() -> Vec<String> {
    ["Location", "Organization", "Practitioner", "Group"]
        .map(String::from)
        .to_vec()
}

fn default_revinclude() -> BTreeMap<String, Vec<String>> {
    [(
        "Practitioner".to_string(),
        vec!["PractitionerRole:practitioner".to_string()],
    )]
    .into()
}

fn default_mapper() -> String {
    "ihris-practitioner".into()
}

fn default_every() -> u64 {
    3600
}

fn default_reconcile() -> u64 {
    86_400
}

fn default_page() -> u32 {
    200
}

fn default_timeout() -> u64 {
    30
}

fn default_retries() -> u32 {
    5
}

impl SourceConfig {
    /// A source with every default.
    pub fn new(base_url: &str) -> Self {
        Self {
            base_url: base_url.to_string(),
            auth: None,
            resource_types: default_types(),
            revinclude: default_revinclude(),
            mapper: default_mapper(),
            country: None,
            every_s: default_every(),
            reconcile_every_s: default_reconcile(),
            page_size: default_page(),
            timeout_s: default_timeout(),
            max_retries: default_retries(),
        }
    }
}

impl DirectoryConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (name, s) in &self.sources {
            let path = format!("directory.sources.{name}");
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "{path}: source names are lowercase letters, digits, '-' and '_'"
                ));
            }
            if !(s.base_url.starts_with("http://") || s.base_url.starts_with("https://")) {
                return Err(format!("{path}.base_url must be an http(s) URL"));
            }
            if s.resource_types.is_empty()
                || s.resource_types
                    .iter()
                    .any(|t| t.is_empty() || !t.bytes().all(|b| b.is_ascii_alphabetic()))
            {
                return Err(format!(
                    "{path}.resource_types must name FHIR resource types, like \"Practitioner\""
                ));
            }
            if s.page_size == 0 || s.page_size > 1000 {
                return Err(format!("{path}.page_size must be 1..=1000"));
            }
            if s.timeout_s == 0 {
                return Err(format!("{path}.timeout_s must be > 0"));
            }
            if let Some(c) = &s.country
                && (c.len() != 2 || !c.bytes().all(|b| b.is_ascii_uppercase()))
            {
                return Err(format!(
                    "{path}.country must be an ISO 3166 code like \"LR\""
                ));
            }
        }
        Ok(())
    }
}
