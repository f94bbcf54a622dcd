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

pub fn run(config: &Config, command: &ChannelCommand) -> Result<()> {
    match command {
        ChannelCommand::List => list(config),
        ChannelCommand::Test(args) => test(config, args),
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
        mhero_broker::directory::import::e164(&args.to, region)
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
