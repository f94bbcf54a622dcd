//! `mhero token …`: API tokens, made and revoked in the store while the
//! broker is stopped (a running broker's are managed through its API:
//! `POST /v1/tokens`, `DELETE /v1/tokens/{id}`).

use anyhow::{Result, bail};
use mhero_broker::Config;
use mhero_broker::api::{Role, Tokens};
use mhero_broker::metrics::Metrics;
use mhero_broker::store;

#[derive(clap::Subcommand)]
pub enum TokenCommand {
    /// Makes a token and prints its secret, once.
    Create {
        /// admin, sender or viewer.
        #[arg(long)]
        role: String,
        /// Who or what it is for.
        #[arg(long, default_value = "cli")]
        name: String,
    },
    /// Lists tokens (never their secrets).
    List,
    /// Revokes a token by its id.
    Revoke { id: String },
}

pub fn run(config: &Config, command: &TokenCommand) -> Result<()> {
    let (store, _) = match store::open(
        &config.data_dir,
        &config.store,
        Metrics::new().store.clone(),
    ) {
        Ok(opened) => opened,
        Err(store::Error::Locked { .. }) => bail!(
            "the store in {} is in use by a running broker; manage its tokens through its API (POST /v1/tokens, DELETE /v1/tokens/{{id}}) or stop it first",
            config.data_dir.display()
        ),
        Err(e) => return Err(e.into()),
    };
    let tokens = Tokens::open(std::sync::Arc::clone(store.engine()))?;
    match command {
        TokenCommand::Create { role, name } => {
            let role: Role = role.parse()?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let (secret, info) = tokens.create(role, name, now)?;
            eprintln!(
                "token {} ({}, {}); its secret, shown this once:",
                info.id,
                info.role.as_str(),
                info.name
            );
            println!("{secret}");
        }
        TokenCommand::List => {
            for t in tokens.list() {
                println!("{}  {:<6}  {}", t.id, t.role.as_str(), t.name);
            }
        }
        TokenCommand::Revoke { id } => {
            if !tokens.revoke(id)? {
                bail!("no token {id}");
            }
            println!("token {id} revoked");
        }
    }
    Ok(())
}
