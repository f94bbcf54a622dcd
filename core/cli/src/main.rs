//! `mhero`: the broker's command line.
//!
//! # Layout
//!
//! - `main.rs`: arguments, logging, config loading, dispatch to commands.
//! - `demo.rs`: `mhero demo`, the guided first run on the embedded store.
//! - `status.rs`: `mhero status`, what a store holds.
//! - `dead.rs`: `mhero dead list|replay`, dead letters.
//! - `contacts.rs`: `mhero import`, `mhero sync`, `mhero contacts …`: the
//!   health-worker directory.
//! - `plugin.rs`: `mhero plugin test|list|new`, plugins under production limits.
//! - `scaffold.rs`: `mhero plugin new`, a plugin folder in Rust, Python or
//!   JavaScript; `templates/` holds its sources.
//! - `serve.rs`: `mhero serve`, the broker with its HTTP API.
//! - `send.rs`, `api_client.rs`: `mhero send`, `mhero status <campaign>`:
//!   a running server through its HTTP API.
//! - `token.rs`: `mhero token create|list|revoke`, API tokens.

mod api_client;
mod channel;
mod contacts;
mod dead;
mod demo;
mod plugin;
mod scaffold;
mod send;
mod serve;
mod status;
mod token;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use mhero_broker::Config;
use mhero_broker::config::EngineKind;

#[derive(Parser)]
#[command(
    name = "mhero",
    version,
    about = "mHero broker: reach every health worker, fast, over the phones they carry"
)]
struct Cli {
    /// Config file (TOML). Without one, the defaults apply.
    #[arg(long, global = true, env = "MHERO_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides `data_dir` from the config.
    #[arg(long, global = true, env = "MHERO_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the broker with its HTTP API until SIGTERM or Ctrl-C.
    Serve(serve::ServeArgs),
    /// API tokens: create, list, revoke (while the broker is stopped).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Runs a generated campaign through the embedded store and reports.
    Demo(demo::DemoArgs),
    /// Sends a message through a running server (`--server`, `--token`).
    Send(send::SendArgs),
    /// Shows what a store holds: campaigns, counts, queues, dead letters;
    /// with a campaign id, that campaign from a running server.
    Status(status::StatusArgs),
    /// Imports FHIR R4 documents (a Bundle file or a folder of them) into
    /// the directory through a mapper plugin.
    Import(contacts::ImportArgs),
    /// Syncs the directory from the configured FHIR servers.
    Sync(contacts::SyncArgs),
    /// The directory: count a selector, show a contact.
    #[command(subcommand)]
    Contacts(contacts::ContactsCommand),
    /// Dead letters: list, replay.
    #[command(subcommand)]
    Dead(dead::DeadCommand),
    /// Plugin tools.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Channels: list them, send one test message through a gateway.
    #[command(subcommand)]
    Channel(channel::ChannelCommand),
    /// Prints the example configuration with every default.
    ConfigExample,
    /// Loads and validates a config file.
    ConfigCheck { file: PathBuf },
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub const EXAMPLE_CONFIG: &str = include_str!("../../../config/mhero.example.toml");

fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MHERO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    mhero_broker::broker::tune_process();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let load = || -> Result<Config> {
        let mut config = match &cli.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(dir) = &cli.data_dir {
            config.data_dir = dir.clone();
        }
        config.validate()?;
        Ok(config)
    };
    match &cli.command {
        Command::Serve(args) => serve::run(load()?, args),
        Command::Token(command) => token::run(&load()?, command),
        Command::Demo(args) => demo::run(load()?, args),
        Command::Send(args) => send::send(args),
        Command::Status(args) if args.campaign.is_some() => send::status(
            args.campaign.as_deref().unwrap_or_default(),
            args.json,
            args.wait,
            &args.remote,
        ),
        Command::Status(args) => {
            let config = load()?;
            if config.store.engine == EngineKind::Memory {
                anyhow::bail!(
                    "`mhero status` reads a store on disk; the config selects the memory engine"
                );
            }
            status::run(&config, args)
        }
        Command::Plugin(command) => plugin::run(&load()?, command),
        Command::Channel(channel::ChannelCommand::Add(args)) => match &cli.config {
            Some(path) => channel::add(path, args),
            None => anyhow::bail!("`channel add` writes a config file: name it with --config"),
        },
        Command::Channel(command) => channel::run(&load()?, command),
        Command::Dead(command) => dead::run(&load()?, command),
        Command::Import(args) => contacts::import(&load()?, args),
        Command::Sync(args) => contacts::sync(&load()?, args),
        Command::Contacts(command) => contacts::contacts(&load()?, command),
        Command::ConfigExample => {
            print!("{EXAMPLE_CONFIG}");
            Ok(())
        }
        Command::ConfigCheck { file } => {
            Config::load(file)
                .with_context(|| format!("{} is not a valid mhero config", file.display()))?;
            println!("{}: ok", file.display());
            Ok(())
        }
    }
}
