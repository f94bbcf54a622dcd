//! `mhero serve`: the broker with its HTTP API, until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use mhero_broker::Config;
use mhero_broker::api::{self, Api, Tokens};
use mhero_broker::config::ChannelConfig;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Overrides `api.listen` (`127.0.0.1:0` picks a free port; the
    /// address is printed).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Overrides `api.quic_listen` (`127.0.0.1:0` picks a free port).
    #[arg(long)]
    quic_listen: Option<SocketAddr>,
    /// No QUIC API (overrides `api.quic`).
    #[arg(long)]
    no_quic: bool,
}

pub fn run(mut config: Config, args: &ServeArgs) -> Result<()> {
    if let Some(listen) = args.listen {
        config.api.listen = listen;
    }
    if let Some(listen) = args.quic_listen {
        config.api.quic_listen = listen;
    }
    if args.no_quic {
        config.api.quic = false;
    }
    if config.api.admin_token.is_none()
        && let Ok(token) = std::env::var("MHERO_ADMIN_TOKEN")
    {
        config.api.admin_token = Some(token);
    }
    if config.channels.is_empty() {
        eprintln!(
            "mhero: no channels configured; serving the `sandbox` channel (a simulated gateway inside the broker)"
        );
        config
            .channels
            .insert("sandbox".into(), ChannelConfig::default());
    }
    config.validate()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(config))
}

async fn serve(config: Config) -> Result<()> {
    let broker = mhero_broker::Broker::open(config.clone())
        .await
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    let tokens = Arc::new(Tokens::open(Arc::clone(broker.store().engine()))?);
    let now = broker.dispatcher().now_ms();
    if let Some(secret) = api::first_admin(&tokens, config.api.admin_token.as_deref(), now)? {
        eprintln!(
            "mhero: first start: an admin token was made. It is shown this once; keep it safe:\n\n    {secret}\n"
        );
    }
    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .with_context(|| format!("listening on {}", config.api.listen))?;
    let addr = listener.local_addr()?;
    let quic = if config.api.quic {
        let certificate = api::quic::Certificate::load_or_make(&config.data_dir.join("tls"))?;
        let server = api::quic::QuicServer::bind(config.api.quic_listen, &certificate)
            .with_context(|| format!("listening on udp {}", config.api.quic_listen))?;
        Some((server, certificate.fingerprint()))
    } else {
        None
    };
    // Before anything says it is serving: a stop asked for from then on
    // is a clean stop.
    let signal = stop_signal()?;
    let quic_note = match &quic {
        Some((server, pin)) => format!(" and quic://{} (certificate {pin})", server.local_addr()?),
        None => String::new(),
    };
    println!(
        "mhero: serving http://{addr}{quic_note} (data in {})",
        config.data_dir.display()
    );
    let broker = Arc::new(broker);
    let api = Arc::new(Api::new(Arc::clone(&broker), tokens));
    let (stop_quic, quic_stopped) = tokio::sync::watch::channel(false);
    let quic_task = quic.map(|(server, _)| {
        let api = Arc::clone(&api);
        let mut stopped = quic_stopped.clone();
        tokio::spawn(server.serve(api, async move {
            let _ = stopped.wait_for(|s| *s).await;
        }))
    });
    let stopping = Arc::clone(&api);
    let served = api::serve(listener, api, async move {
        signal.await;
        eprintln!("mhero: stopping: finishing requests in flight");
        stopping.stop_accepting();
        let _ = stop_quic.send(true);
    })
    .await;
    served.context("serving HTTP")?;
    if let Some(task) = quic_task {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
    }
    let Some(broker) = api::release(broker, std::time::Duration::from_secs(10)).await else {
        anyhow::bail!("the broker is still in use 10 s after the server stopped");
    };
    broker.shutdown().await;
    eprintln!("mhero: stopped; the store is closed");
    Ok(())
}

/// SIGTERM (what service managers send) or Ctrl-C. The handlers are
/// installed when this is called, so a signal that comes right after is
/// not lost (or fatal).
fn stop_signal() -> Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    #[cfg(unix)]
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing the SIGINT handler")?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    })
}
