//! The WebAssembly plugin host.
//!
//! Channel connectors, FHIR source mappers and reply classifiers are
//! WebAssembly components built against the SDK's WIT contract
//! (`mhero:plugin@1.1.0`; components built against 1.0.0 load too). This module loads them and calls them safely.
//!
//! # Layout
//!
//! - [`bindings`]: host bindings generated from `sdk/wit`.
//! - [`manifest`]: `plugin.toml` (kind, capabilities, limits, settings).
//! - [`cache`]: compiled components cached on disk.
//! - [`runtime`]: the engine, the per-thread pools of warm instances,
//!   deadlines, memory caps, trap classification, circuit breakers.
//! - [`calls`]: the typed calls of each world.
//! - [`stdio`]: stdout/stderr as a bounded sink forwarded to the log, and
//!   `wasi:io/poll` that refuses to wait, so no plugin parks a host thread.
//! - [`metrics`]: calls by outcome and call durations, per plugin.
//!
//! Loading: bytes → compiled (or cached) component → imports checked
//! against the allow-list → pre-instantiated → `describe()` checked against
//! the manifest → registered. Calling: a warm instance from this thread's
//! pool → deadline set → call → output measured → instance back to the
//! pool, or dropped after a trap.

pub mod bindings;
pub mod cache;
pub mod calls;
pub mod fixture;
mod http;
pub mod manifest;
pub mod metrics;
pub mod runtime;
pub mod secrets;
pub mod stdio;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

pub use manifest::{Ceilings, Kind, Limits, Manifest};
pub use metrics::PluginMetrics;
pub use runtime::{CallError, CallStats, ColdStart, Plugin, TrapKind};
pub use runtime::{MAX_ERROR_TEXT, truncate};

use crate::error::{Error, Result};
use runtime::{Runtime, WorldPre};

/// A plugin built into the binary.
pub struct Builtin {
    pub manifest: &'static str,
    pub component: &'static [u8],
}

mod built {
    use super::Builtin;
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

pub use built::BUILTIN;
pub use cache::ComponentCache;

/// Paths of the hostile test plugins: (manifest, component).
#[doc(hidden)]
pub fn test_fixtures() -> &'static [(&'static str, &'static str)] {
    built::FIXTURES
}

/// Largest component file accepted from a plugin folder.
const MAX_COMPONENT_BYTES: u64 = 64 << 20;

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
    pub ceilings: Ceilings,
}

impl PluginsConfig {
    pub fn validate(&self) -> Result<(), String> {
        self.ceilings.validate("plugins.ceilings")
    }
}

/// Milliseconds since the epoch, as the circuit breakers read them: the
/// wall clock, or the broker's own (which tests run on tokio's paused
/// time).
#[derive(Clone)]
pub struct PluginClock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl PluginClock {
    pub fn new(now_ms: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Self(Arc::new(now_ms))
    }

    pub fn now_ms(&self) -> u64 {
        (self.0)()
    }
}

impl Default for PluginClock {
    fn default() -> Self {
        Self::new(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        })
    }
}

impl std::fmt::Debug for PluginClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PluginClock({} ms)", self.now_ms())
    }
}

#[derive(Clone, Debug, Default)]
pub struct HostOptions {
    /// The clock of the circuit breakers.
    pub clock: PluginClock,
    /// The most a manifest may ask for.
    pub ceilings: Ceilings,
    /// Where compiled components are cached, with the key that verifies
    /// them; `None`: compile every time.
    pub cache: Option<ComponentCache>,
    /// Meter fuel (for `mhero plugin test`; slower).
    pub fuel: bool,
    /// Per-plugin settings overriding their manifests' `[config]`.
    pub settings: BTreeMap<String, toml::Table>,
}

/// What a load did.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub name: String,
    pub kind: Kind,
    pub version: String,
    pub from_cache: bool,
    pub origin: String,
}

pub struct PluginHost {
    runtime: Runtime,
    plugins: RwLock<BTreeMap<String, Arc<Plugin>>>,
    options: HostOptions,
    metrics: PluginMetrics,
}

fn load_error(plugin: &str, message: impl Into<String>) -> Error {
    Error::PluginLoad {
        plugin: plugin.to_string(),
        message: message.into(),
    }
}

impl PluginHost {
    pub fn new(options: HostOptions, metrics: PluginMetrics) -> Result<Self> {
        let runtime = Runtime::new(options.fuel)
            .map_err(|e| load_error("*", format!("cannot start the WebAssembly engine: {e:#}")))?;
        Ok(Self {
            runtime,
            plugins: RwLock::new(BTreeMap::new()),
            options,
            metrics,
        })
    }

    /// Loads every built-in plugin.
    pub fn load_builtins(&self) -> Result<Vec<Loaded>> {
        BUILTIN
            .iter()
            .map(|b| {
                let manifest =
                    Manifest::parse(b.manifest).map_err(|e| load_error("built-in", e))?;
                self.load(manifest, b.component, "built-in")
            })
            .collect()
    }

    /// Loads every plugin folder (one with a `plugin.toml`) under `dir`.
    pub fn load_dir(&self, dir: &Path) -> Result<Vec<Loaded>> {
        let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
        let mut folders: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("plugin.toml").is_file())
            .collect();
        folders.sort();
        folders.iter().map(|f| self.load_folder(f)).collect()
    }

    /// Loads one plugin folder: `plugin.toml` and its component.
    pub fn load_folder(&self, folder: &Path) -> Result<Loaded> {
        let manifest_path = folder.join("plugin.toml");
        let text = std::fs::read_to_string(&manifest_path).map_err(|source| Error::Io {
            path: manifest_path.clone(),
            source,
        })?;
        let manifest = Manifest::parse(&text).map_err(|e| {
            load_error(
                &folder.display().to_string(),
                format!("{}: {e}", manifest_path.display()),
            )
        })?;
        let component = folder.join(manifest.component_file());
        self.load_file(manifest, &component)
    }

    /// Loads a component file under a manifest.
    pub fn load_file(&self, manifest: Manifest, component: &Path) -> Result<Loaded> {
        let size = std::fs::metadata(component)
            .map_err(|source| Error::Io {
                path: component.to_owned(),
                source,
            })?
            .len();
        if size > MAX_COMPONENT_BYTES {
            return Err(load_error(
                &manifest.name,
                format!(
                    "{} is {size} bytes, over the {MAX_COMPONENT_BYTES}-byte limit",
                    component.display()
                ),
            ));
        }
        let bytes = std::fs::read(component).map_err(|source| Error::Io {
            path: component.to_owned(),
            source,
        })?;
        self.load(manifest, &bytes, &component.display().to_string())
    }

    /// Compiles (or reads from the cache), checks and registers a plugin.
    pub fn load(&self, manifest: Manifest, bytes: &[u8], origin: &str) -> Result<Loaded> {
        let name = manifest.name.clone();
        if self.plugins.read().contains_key(&name) {
            return Err(load_error(
                &name,
                format!("a plugin named {name} is already loaded ({origin})"),
            ));
        }
        // Before compiling anything: what it asks for must be allowed.
        manifest
            .limits()
            .within(&self.options.ceilings)
            .map_err(|e| load_error(&name, e))?;
        let engine = &self.runtime.engine;
        let (component, source) =
            cache::load(engine, self.options.cache.as_ref(), bytes).map_err(|e| {
                load_error(
                    &name,
                    format!("{origin} is not a valid WebAssembly component: {e:#}"),
                )
            })?;
        let refused: Vec<String> = component
            .component_type()
            .imports(engine)
            .map(|(import, _)| import.to_string())
            .filter(|import| !runtime::import_allowed(import))
            .collect();
        if !refused.is_empty() {
            return Err(load_error(
                &name,
                format!(
                    "it imports {}, which the host does not provide (plugins get no network, files or environment of their own)",
                    refused.join(", ")
                ),
            ));
        }
        let instance_pre = self
            .runtime
            .linker
            .instantiate_pre(&component)
            .map_err(|e| load_error(&name, format!("cannot link it: {e:#}")))?;
        let world = |e: wasmtime::Error| {
            load_error(
                &name,
                format!(
                    "it does not export the {} world its manifest declares: {e:#}",
                    manifest.kind
                ),
            )
        };
        let pre = match manifest.kind {
            Kind::Connector => WorldPre::Connector(
                instance_pre.clone(),
                bindings::connector::ConnectorIndices::new(&instance_pre).map_err(world)?,
                runtime::ConnectorExtras::find(&component, engine).map_err(world)?,
            ),
            Kind::Classifier => WorldPre::Classifier(
                bindings::classifier::ClassifierPre::new(instance_pre).map_err(world)?,
            ),
            Kind::FhirMapper => {
                WorldPre::Fhir(bindings::fhir::FhirMapperPre::new(instance_pre).map_err(world)?)
            }
        };
        let settings = manifest
            .settings(self.options.settings.get(&name))
            .map_err(|e| load_error(&name, format!("plugins.config.{name}: {e}")))?;
        let version = manifest.version.clone();
        let kind = manifest.kind;
        let plugin = Plugin::new(
            &self.runtime,
            manifest,
            settings,
            pre,
            self.metrics.for_plugin(&name),
            self.options.clock.clone(),
        );
        let described = match kind {
            Kind::Connector => plugin.connector_info().map(|i| i.plugin),
            Kind::Classifier => plugin.classifier_info().map(|i| i.plugin),
            Kind::FhirMapper => plugin.mapper_info().map(|i| i.plugin),
        }
        .map_err(|e| load_error(&name, format!("describe() failed: {e}")))?;
        if described.name != name {
            return Err(load_error(
                &name,
                format!(
                    "describe() names it {:?}, its manifest {name:?}",
                    described.name
                ),
            ));
        }
        let mut plugins = self.plugins.write();
        if plugins.contains_key(&name) {
            return Err(load_error(
                &name,
                format!("a plugin named {name} is already loaded ({origin})"),
            ));
        }
        plugins.insert(name.clone(), Arc::new(plugin));
        Ok(Loaded {
            name,
            kind,
            version,
            from_cache: source == cache::Source::Cached,
            origin: origin.to_string(),
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        self.plugins.read().get(name).cloned()
    }

    /// The plugin named `name`, or an error listing what is loaded.
    pub fn require(&self, name: &str, kind: Kind) -> Result<Arc<Plugin>> {
        match self.get(name) {
            Some(p) if p.kind() == kind => Ok(p),
            Some(p) => Err(load_error(
                name,
                format!("it is a {}, not a {kind}", p.kind()),
            )),
            None => {
                let known: Vec<String> = self.plugins.read().keys().cloned().collect();
                Err(load_error(
                    name,
                    format!("no such plugin (loaded: {})", known.join(", ")),
                ))
            }
        }
    }

    /// The connector `name` as the channel `channel` uses it: its
    /// `[channels.<channel>.settings]` over `[plugins.config.<name>]` over
    /// the manifest's defaults, checked against the manifest's schema. The
    /// shared plugin when the channel sets nothing of its own.
    pub fn for_channel(
        &self,
        name: &str,
        channel: &str,
        settings: &toml::Table,
    ) -> Result<Arc<Plugin>> {
        let plugin = self.require(name, Kind::Connector)?;
        if settings.is_empty() {
            return Ok(plugin);
        }
        let mut merged = self.options.settings.get(name).cloned().unwrap_or_default();
        merged.extend(settings.clone());
        let settings = plugin
            .manifest()
            .settings(Some(&merged))
            .map_err(|e| crate::Error::Config(format!("channels.{channel}.settings: {e}")))?;
        Ok(Arc::new(plugin.with_settings(settings)))
    }

    pub fn list(&self) -> Vec<Arc<Plugin>> {
        self.plugins.read().values().cloned().collect()
    }
}
