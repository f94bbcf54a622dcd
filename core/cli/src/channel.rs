//! `mhero channel …`: the channels of a config, and one test message
//! through a channel's real gateway.

use anyhow::{Context, Result, bail};
use mhero_broker::Config;
use mhero_broker::dispatch::probe::{Probe, probe};
use mhero_broker::plugin::PluginHost;

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
    if !args.settings.is_empty() {
        if has(&["plugins", "config", &args.connector]) {
            bail!(
                "{} already has [plugins.config.{}]: set those there (settings are the connector's, shared by its channels)",
                path.display(),
                args.connector
            );
        }
        text.push_str(&format!("\n[plugins.config.{}]\n", args.connector));
        for pair in &args.settings {
            let (key, value) = pair
                .split_once('=')
                .with_context(|| format!("--set {pair:?}: write key=value"))?;
            let key = key.trim();
            if !bare_key(key) {
                bail!("--set {pair:?}: {key:?} is not a setting name");
            }
            let value = match value.trim().parse::<toml::Value>() {
                Ok(
                    v @ (toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)),
                ) => v,
                _ => toml::Value::String(value.to_string()),
            };
            text.push_str(&format!("{key} = {value}\n"));
        }
    }
    // The whole file as the broker will read it, and the connector with
    // these settings, before anything is written.
    let config = Config::from_toml(&text, path)?;
    config.validate()?;
    let host = host(&config)?;
    host.require(&args.connector, mhero_broker::plugin::Kind::Connector)?;
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
        let target = host
            .get(&ch.connector)
            .and_then(|p| p.setting("base_url"))
            .unwrap_or_default();
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
