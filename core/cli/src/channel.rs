//! `mhero channel …`: the channels of a config, and one test message
//! through a channel's real gateway.

use anyhow::{Context, Result, bail};
use mhero_broker::Config;
use mhero_broker::dispatch::probe::{Probe, probe};
use mhero_broker::plugin::PluginHost;
use mhero_broker::plugin::manifest::SettingType;

#[derive(clap::Subcommand)]
pub enum ChannelCommand {
    /// Lists the configured channels: connector, rate, window, where the
    /// connector sends.
    List,
    /// Adds a channel to the config file (`--config`, made if missing):
    /// its connector, rate and the connector's settings. The result is
    /// checked (the config, the connector, its settings' schema) before
    /// the file is written.
    Add(AddArgs),
    /// Sends one message through a channel's connector to its gateway and
    /// reports what the gateway answered (status, body, what the connector
    /// made of it). Nothing is queued or recorded; exits 1 unless the
    /// gateway took the message.
    Test(TestArgs),
}

#[derive(clap::Args)]
pub struct TestArgs {
    /// The channel's name (`[channels.<name>]`).
    channel: String,
    /// A phone number (E.164, or national with `dispatch.default_country`).
    #[arg(long)]
    to: String,
    /// Send `--to` as given (a chat id, a user id) instead of as a phone
    /// number.
    #[arg(long)]
    raw: bool,
    #[arg(long, default_value = "mHero test message: this channel works.")]
    text: String,
    /// The report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct AddArgs {
    /// The channel's name (lowercase letters, digits, `-`, `_`): it names
    /// its webhook, `/webhooks/<name>`.
    channel: String,
    /// The connector plugin (`mhero plugin list`).
    #[arg(long)]
    connector: String,
    /// Messages (or SMS segments) per second; 0: no limit.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// A connector setting, `key=value` (repeatable); values that read as
    /// TOML numbers or booleans are written as such.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    settings: Vec<String>,
}

pub fn run(config: &Config, command: &ChannelCommand) -> Result<()> {
    match command {
        ChannelCommand::List => list(config),
        ChannelCommand::Test(args) => test(config, args),
        ChannelCommand::Add(_) => bail!("`channel add` writes a config file: run it with --config"),
    }
}

fn bare_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `mhero --config <file> channel add …`.
pub fn add(path: &std::path::Path, args: &AddArgs) -> Result<()> {
    let name_ok = !args.channel.is_empty()
        && args
            .channel
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !name_ok {
        bail!(
            "channel name {:?}: use lowercase letters, digits, '-' and '_'",
            args.channel
        );
    }
    if !bare_key(&args.connector) {
        bail!("connector name {:?} is not a plugin name", args.connector);
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!("--rate must be 0 (no limit) or more");
    }
    let old = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let table: toml::Table =
        toml::from_str(&old).with_context(|| format!("{} is not valid TOML", path.display()))?;
    let has = |keys: &[&str]| {
        let mut t = &table;
        for (i, k) in keys.iter().enumerate() {
            match t.get(*k) {
                Some(toml::Value::Table(inner)) => t = inner,
                Some(_) => return i + 1 == keys.len(),
                None => return false,
            }
        }
        true
    };
    if has(&["channels", &args.channel]) {
        bail!(
            "{} already has a channel {:?}",
            path.display(),
            args.channel
        );
    }
    // The connector, and its settings typed and checked against its
    // schema, with the plugins the file has now.
    let current = if old.trim().is_empty() {
        Config::default()
    } else {
        Config::from_toml(&old, path)?
    };
    let host = host(&current)?;
    let plugin = host.require(&args.connector, mhero_broker::plugin::Kind::Connector)?;
    let manifest = plugin.manifest();
    let mut settings = toml::Table::new();
    for pair in &args.settings {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("--set {pair:?}: write key=value"))?;
        let key = key.trim();
        if !bare_key(key) {
            bail!("--set {pair:?}: {key:?} is not a setting name");
        }
        let kind = manifest.config_schema.get(key).map(|s| s.kind);
        let value = typed(kind, value).map_err(|e| anyhow::anyhow!("--set {pair:?}: {e}"))?;
        settings.insert(key.to_string(), value);
    }
    // The first channel on a connector gives the connector its settings; a
    // later one keeps its own beside them (another route, account or
    // webhook address on the same kind of gateway).
    let shared = current.plugins.config.get(&args.connector);
    let (table, mut merged) = match shared {
        Some(shared) => (
            format!("channels.{}.settings", args.channel),
            shared.clone(),
        ),
        None => (
            format!("plugins.config.{}", args.connector),
            toml::Table::new(),
        ),
    };
    if !settings.is_empty() {
        merged.extend(settings.clone());
        manifest
            .settings(Some(&merged))
            .map_err(|e| anyhow::anyhow!("{table}: {e}"))?;
    }
    let mut text = old.clone();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "\n[channels.{}]\nconnector = {}\nrate = {}\n",
        args.channel,
        toml::Value::String(args.connector.clone()),
        toml::Value::Float(args.rate)
    ));
    if !settings.is_empty() {
        text.push_str(&format!("\n[{table}]\n"));
        for (key, value) in &settings {
            text.push_str(&format!("{key} = {value}\n"));
        }
    }
    // The whole file as the broker will read it (parsed and validated),
    // before anything is written.
    Config::from_toml(&text, path)?;
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, &text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "added channel {} ({} connector) to {}\ntry it: mhero --config {} channel test {} --to <number>",
        args.channel,
        args.connector,
        path.display(),
        path.display(),
        args.channel
    );
    Ok(())
}

/// A `--set` value as its setting's type says (a sender id `4455` stays
/// text); a setting the schema does not type is a number or a boolean
/// when it reads as one, else text.
fn typed(kind: Option<SettingType>, raw: &str) -> Result<toml::Value, String> {
    let parsed = raw.trim().parse::<toml::Value>();
    match kind {
        Some(SettingType::String) => Ok(toml::Value::String(raw.to_string())),
        Some(SettingType::Int) => raw
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| format!("{raw:?} is not an integer")),
        Some(SettingType::Float) => raw
            .trim()
            .parse::<f64>()
            .map(toml::Value::Float)
            .map_err(|_| format!("{raw:?} is not a number")),
        Some(SettingType::Bool) => raw
            .trim()
            .parse::<bool>()
            .map(toml::Value::Boolean)
            .map_err(|_| format!("{raw:?} is not true or false")),
        Some(SettingType::Array) => match parsed {
            Ok(v @ toml::Value::Array(_)) => Ok(v),
            _ => Err(format!("{raw:?} is not a TOML array like [\"a\", \"b\"]")),
        },
        Some(SettingType::Table) => match parsed {
            Ok(v @ toml::Value::Table(_)) => Ok(v),
            _ => Err(format!(
                "{raw:?} is not a TOML inline table like {{ a = 1 }}"
            )),
        },
        None => match parsed {
            Ok(v @ (toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_))) => {
                Ok(v)
            }
            _ => Ok(toml::Value::String(raw.to_string())),
        },
    }
}

fn host(config: &Config) -> Result<PluginHost> {
    Ok(crate::plugin::loaded_host(config)?.0)
}

fn list(config: &Config) -> Result<()> {
    if config.channels.is_empty() {
        println!("no channels configured (`mhero serve` then serves the sandbox channel)");
        return Ok(());
    }
    let host = host(config)?;
    for (name, ch) in &config.channels {
        let target = match host.for_channel(&ch.connector, name, &ch.settings) {
            Ok(p) => p.setting("base_url").unwrap_or_default(),
            Err(e) => format!("not usable: {e}"),
        };
        let rate = if ch.rate > 0.0 {
            format!("{}/s", ch.rate)
        } else {
            "no limit".into()
        };
        println!(
            "{name:<16} {:<16} {rate:<10} window {:<4} {target}",
            ch.connector, ch.window
        );
    }
    Ok(())
}

fn test(config: &Config, args: &TestArgs) -> Result<()> {
    let Some(channel) = config.channels.get(&args.channel) else {
        let known: Vec<&str> = config.channels.keys().map(String::as_str).collect();
        bail!(
            "no channel {:?} in the config (configured: {})",
            args.channel,
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        );
    };
    let to = if args.raw {
        args.to.clone()
    } else {
        let region = config
            .dispatch
            .default_country
            .parse::<phonenumber::country::Id>()
            .ok();
        mhero_broker::phone::e164(&args.to, region)
            .map_err(|e| anyhow::anyhow!("--to: {e} (use --raw for a chat or user id)"))?
    };
    let host = host(config)?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let report = rt.block_on(probe(
        &host,
        &args.channel,
        channel,
        &to,
        &args.text,
        now_ms,
    ))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print(&report, &to);
    }
    if !report.accepted() {
        std::process::exit(1);
    }
    Ok(())
}

fn print(p: &Probe, to: &str) {
    println!(
        "channel {} ({} connector), message {} to {to}",
        p.channel, p.connector, p.id
    );
    if let Some(request) = &p.request {
        println!("request:  {request}");
    }
    match p.status {
        Some(status) => println!("answer:   HTTP {status} in {} ms", p.elapsed_ms),
        None if p.request.is_some() => println!("answer:   none after {} ms", p.elapsed_ms),
        None => {}
    }
    if let Some(body) = p.body.as_deref().filter(|b| !b.trim().is_empty()) {
        println!("body:     {}", body.trim());
    }
    println!("outcome:  {}: {}", p.outcome, p.detail);
}
