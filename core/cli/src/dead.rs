//! `mhero dead …`: dead letters: list them, put them back in their queues.

use anyhow::{Result, bail};
use mhero_broker::Config;
use mhero_broker::metrics::Metrics;
use mhero_broker::store;
use mhero_proto::DeliveryId;

#[derive(clap::Subcommand)]
pub enum DeadCommand {
    /// Lists dead letters with their reason and attempt history.
    List {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Puts dead letters back at the tail of their queues with a fresh
    /// attempt count; the next dispatcher run sends them.
    Replay {
        /// Delivery ids (`c12-40017`); with `--all`, every dead letter.
        ids: Vec<String>,
        #[arg(long)]
        all: bool,
    },
}

pub fn run(config: &Config, command: &DeadCommand) -> Result<()> {
    if !config.data_dir.exists() {
        bail!(
            "no store at {} (set --data-dir or data_dir in the config)",
            config.data_dir.display()
        );
    }
    let (store, _) = store::open(
        &config.data_dir,
        &config.store,
        Metrics::new().store.clone(),
    )?;
    match command {
        DeadCommand::List { limit } => {
            for d in store.dead_letters(None, *limit)? {
                println!(
                    "{}  {:<9} attempts {}  {}",
                    d.id,
                    d.lane.as_str(),
                    d.item.attempts,
                    d.reason
                );
                for h in &d.item.history {
                    println!("      earlier: {}", h.reason);
                }
            }
            Ok(())
        }
        DeadCommand::Replay { ids, all } => {
            let ids: Vec<DeliveryId> = if *all {
                store
                    .dead_letters(None, usize::MAX)?
                    .into_iter()
                    .map(|d| d.id)
                    .collect()
            } else {
                if ids.is_empty() {
                    bail!("name the deliveries to replay, or pass --all");
                }
                ids.iter().map(|s| s.parse()).collect::<Result<_, _>>()?
            };
            let n = store.replay_dead(&ids)?.wait()?;
            println!("{n} dead letters back in their queues");
            Ok(())
        }
    }
}
