//! `mhero plugin …`: try a plugin under production limits.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use mhero_broker::Config;
use mhero_broker::plugin::fixture::{self, Fixture};
use mhero_broker::plugin::secrets::Redactor;
use mhero_broker::plugin::{HostOptions, Loaded, Manifest, Plugin, PluginHost, PluginMetrics};
use serde_json::json;

#[derive(clap::Subcommand)]
pub enum PluginCommand {
    /// Runs a plugin on golden fixtures under production limits and prints
    /// each answer with its time, fuel, peak memory and what a fresh
    /// instance costs.
    Test(TestArgs),
    /// Lists the built-in plugins and those in `plugins.dir`.
    List,
    /// Makes a plugin folder that builds and passes `mhero plugin test`
    /// unchanged: source, manifest, a golden fixture, a build script.
    New(crate::scaffold::NewArgs),
}

#[derive(clap::Args)]
pub struct TestArgs {
    /// A built-in plugin's name, or a component file (`.wasm`) with its
    /// `plugin.toml` beside it.
    plugin: String,
    /// Fixture files, or folders of them.
    #[arg(long = "fixture", required = true)]
    fixtures: Vec<PathBuf>,
    /// The manifest of a component file, when not beside it.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// One JSON object per fixture instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(config: &Config, command: &PluginCommand) -> Result<()> {
    match command {
        PluginCommand::Test(args) => test(config, args),
        PluginCommand::List => list(config),
        PluginCommand::New(args) => crate::scaffold::run(args),
    }
}

/// A plugin host with the config's settings and ceilings, and every
/// plugin loaded (the built-in ones, then `plugins.dir`'s).
pub fn loaded_host(config: &Config) -> Result<(PluginHost, Vec<Loaded>)> {
    let host = PluginHost::new(
        HostOptions {
            settings: config.plugins.config.clone(),
            ceilings: config.plugins.ceilings.clone(),
            ..HostOptions::default()
        },
        PluginMetrics::default(),
    )?;
    let mut loaded = host.load_builtins()?;
    if let Some(dir) = &config.plugins.dir {
        loaded.extend(host.load_dir(dir)?);
    }
    Ok((host, loaded))
}

fn list(config: &Config) -> Result<()> {
    let (host, loaded) = loaded_host(config)?;
    for l in loaded {
        let p = host.get(&l.name).context("just loaded")?;
        println!(
            "{:<20} {:<12} {:<8} {:<10} {}",
            l.name,
            l.kind.as_str(),
            l.version,
            l.origin,
            p.manifest().summary
        );
    }
    Ok(())
}

fn fixture_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    if files.is_empty() {
        bail!(
            "no fixture files found in {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(files)
}

/// Compiled components for the fixtures of one run: the first fixture
/// compiles the plugin, the others load it from here (an interpreter's
/// component takes tens of seconds to compile). A scratch folder under a
/// key of this run only.
struct RunCache {
    dir: tempfile::TempDir,
    key: [u8; 32],
}

impl RunCache {
    fn new() -> Result<Self> {
        use std::io::Read;
        let mut key = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut key))
            .context("reading /dev/urandom for the run's cache key")?;
        Ok(Self {
            dir: tempfile::tempdir().context("making a scratch folder for compiled components")?,
            key,
        })
    }
}

fn load(
    config: &Config,
    args: &TestArgs,
    fixture: &Fixture,
    cache: &RunCache,
) -> Result<(PluginHost, String)> {
    let mut settings = config.plugins.config.clone();
    let path = Path::new(&args.plugin);
    let is_file = args.plugin.ends_with(".wasm") || path.is_file();
    let manifest = if is_file {
        let manifest_path = args
            .manifest
            .clone()
            .unwrap_or_else(|| path.with_file_name("plugin.toml"));
        let text = std::fs::read_to_string(&manifest_path).with_context(|| {
            format!(
                "reading {} (pass --manifest for a manifest elsewhere)",
                manifest_path.display()
            )
        })?;
        Some(
            Manifest::parse(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", manifest_path.display()))?,
        )
    } else {
        None
    };
    let name = manifest
        .as_ref()
        .map_or(args.plugin.clone(), |m| m.name.clone());
    if let Some(c) = &fixture.config {
        settings.insert(name.clone(), c.clone());
    }
    // Fuel metering on, everything else as in production.
    let host = PluginHost::new(
        HostOptions {
            cache: Some(mhero_broker::plugin::ComponentCache::new(
                cache.dir.path(),
                cache.key,
            )),
            fuel: true,
            settings,
            ceilings: config.plugins.ceilings.clone(),
            ..HostOptions::default()
        },
        PluginMetrics::default(),
    )?;
    match manifest {
        Some(m) => {
            host.load_file(m, path)?;
        }
        None => {
            host.load_builtins()?;
            if host.get(&name).is_none() {
                let names: Vec<String> = host.list().iter().map(|p| p.name().to_string()).collect();
                bail!(
                    "{name} is neither a component file nor a built-in plugin (built-in: {})",
                    names.join(", ")
                );
            }
        }
    }
    Ok((host, name))
}

/// Hides secrets in a plugin's answer: the values of secret-named headers
/// (`{"name": "authorization", "value": …}`), and the plugin's secret
/// settings and URL credentials wherever they appear.
fn redact_json(value: &mut serde_json::Value, redactor: &Redactor) {
    use serde_json::Value;
    match value {
        Value::String(s) => {
            if let std::borrow::Cow::Owned(clean) = redactor.redact(s) {
                *s = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact_json(v, redactor)),
        Value::Object(fields) => {
            let secret_header = fields
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(mhero_broker::plugin::secrets::is_secret_name);
            for (k, v) in fields.iter_mut() {
                if secret_header && k == "value" {
                    *v = Value::String(mhero_broker::plugin::secrets::REDACTED.into());
                } else {
                    redact_json(v, redactor);
                }
            }
        }
        _ => {}
    }
}

fn test(config: &Config, args: &TestArgs) -> Result<()> {
    let mut failed = 0;
    let files = fixture_files(&args.fixtures)?;
    let cache = RunCache::new()?;
    for file in &files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let fx = Fixture::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let (host, name) = load(config, args, &fx, &cache)?;
        let plugin = host.get(&name).context("loaded above")?;
        // A first call warms the instance; the second is the one measured.
        let _ =
            fixture::run(&plugin, &fx).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let result =
            fixture::run(&plugin, &fx).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let stats = Plugin::last_call_stats();
        // What a fresh instance costs a thread before its first call.
        let cold = plugin.cold_start()?;
        let verdict = fixture::check(&fx, &result);
        if matches!(verdict, Some(Err(_))) {
            failed += 1;
        }
        let mut answer = match &result {
            Ok(v) => v.clone(),
            Err(e) => json!({"error": fixture::error_json(e), "message": e.to_string()}),
        };
        // Checked above as the plugin answered; shown without its secrets.
        redact_json(&mut answer, plugin.redactor());
        let verdict =
            verdict.map(|v| v.map_err(|diff| plugin.redactor().redact(&diff).into_owned()));
        if args.json {
            println!(
                "{}",
                json!({
                    "fixture": file.display().to_string(),
                    "plugin": name,
                    "call": fx.call,
                    "result": answer,
                    "time_us": stats.elapsed.as_secs_f64() * 1e6,
                    "fuel": stats.fuel,
                    "peak_memory_bytes": stats.peak_memory_bytes,
                    "instantiate_ms": cold.instantiate.as_secs_f64() * 1e3,
                    "pass": verdict.as_ref().map(Result::is_ok),
                })
            );
            continue;
        }
        println!("── {} ({} {})", file.display(), name, fx.call);
        if !fx.description.is_empty() {
            println!("   {}", fx.description);
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        );
        println!(
            "   time {:.1} µs · fuel {} · peak memory {} KiB · a fresh instance {:.2} ms",
            stats.elapsed.as_secs_f64() * 1e6,
            stats.fuel.map_or("-".to_string(), |f| f.to_string()),
            stats.peak_memory_bytes / 1024,
            cold.instantiate.as_secs_f64() * 1e3
        );
        match verdict {
            Some(Ok(())) => println!("   PASS"),
            Some(Err(diff)) => println!("   FAIL\n   {diff}"),
            None => println!("   (no expectation)"),
        }
    }
    if failed > 0 {
        bail!("{failed} of {} fixtures failed", files.len());
    }
    Ok(())
}
