//! `loadgen quic`: one `mhero-client` connection submitting batches of
//! messages to explicit recipients over the QUIC API (a lab system's
//! results, reminders), then status subscriptions reading back what
//! became of every one of them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use mhero_benches::{fs_type, peak_rss_mb, round};
use mhero_broker::Broker;
use mhero_broker::api::quic::{Certificate, QuicServer};
use mhero_broker::api::{self, Api, Role, Tokens};
use mhero_client::wire::{Recipient, Submit};
use mhero_client::{Client, Pin};
use serde_json::json;

#[derive(clap::Args)]
pub struct QuicArgs {
    /// Messages submitted.
    #[arg(long, default_value_t = 1_000_000)]
    n: u64,
    /// Messages per batch (one campaign each).
    #[arg(long, default_value_t = 1000)]
    batch: u64,
    /// Batches in flight at once on the one connection.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Status subscriptions open at once after the run, each reading one
    /// campaign from the start to its end, then the next, until every
    /// campaign submitted was read.
    #[arg(long, default_value_t = 16)]
    subscriptions: usize,
    /// Parent folder of the scratch store (default: the system's temp dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// `sync` (the default: fsynced before the answer) or `async`.
    #[arg(long, default_value = "sync")]
    durability: String,
    /// Print JSON (the only output format).
    #[arg(long)]
    json: bool,
}

pub fn run(args: &QuicArgs) -> Result<()> {
    if args.concurrency == 0 || args.subscriptions == 0 || args.batch == 0 || args.batch > 100_000 {
        bail!("--concurrency and --subscriptions must be > 0 and --batch between 1 and 100000");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(bench(args))
}

fn batch(first: u64, size: u64) -> Submit {
    Submit {
        name: format!("lab results {first}"),
        lane: "high".into(),
        text: "Your malaria test result is ready: collect it at the district lab.".into(),
        recipients: (first..first + size)
            .map(|i| Recipient {
                phone: format!("+23177{:07}", i % 10_000_000),
                language: None,
            })
            .collect(),
        ..Submit::default()
    }
}

async fn bench(args: &QuicArgs) -> Result<()> {
    let (scratch, config) = super::api::server_config(args.data_dir.as_ref(), &args.durability)?;
    let data_dir = config.data_dir.clone();
    let certificate = Certificate::load_or_make(&scratch.path().join("tls"))?;
    let pin = Pin::parse(&certificate.fingerprint())?;
    let broker = Arc::new(Broker::open(config).await?);
    let tokens = Arc::new(Tokens::open(Arc::clone(broker.store().engine()))?);
    let (token, _) = tokens.create(Role::Sender, "loadgen", 0)?;
    let server = QuicServer::bind("127.0.0.1:0".parse()?, &certificate)?;
    let addr = server.local_addr()?;
    let api = Arc::new(Api::new(Arc::clone(&broker), tokens));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(Arc::clone(&api), async {
        let _ = stopped.await;
    }));

    let client = Client::connect(addr, pin, &token).await?;
    let batches = args.n.div_ceil(args.batch);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (client, next, n, size) = (client.clone(), Arc::clone(&next), args.n, args.batch);
        workers.push(tokio::spawn(async move {
            let mut latencies = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
            let mut campaigns = Vec::new();
            let mut accepted = 0u64;
            loop {
                let b = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if b >= batches {
                    return anyhow::Ok((latencies, campaigns, accepted));
                }
                let first = b * size;
                let t = Instant::now();
                let s = client.submit(batch(first, size.min(n - first))).await?;
                latencies.saturating_record(t.elapsed().as_micros() as u64);
                accepted += u64::from(s.accepted);
                campaigns.push((b, s.campaign));
            }
        }));
    }
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut campaigns = Vec::new();
    let mut accepted = 0;
    for w in workers {
        let (h, c, a) = w.await??;
        latencies.add(h)?;
        campaigns.extend(c);
        accepted += a;
    }
    let submit_s = started.elapsed().as_secs_f64();
    campaigns.sort();

    // Then what became of them: every message sent (the sandbox answers at
    // once), and status subscriptions reading whole campaigns.
    let ids: Vec<mhero_proto::CampaignId> = campaigns
        .iter()
        .map(|(_, c)| c.parse())
        .collect::<std::result::Result<_, _>>()?;
    let all_sent = broker
        .dispatcher()
        .wait_done(&ids, Duration::from_secs(600))
        .await;
    let sent_s = started.elapsed().as_secs_f64();
    let read = Instant::now();
    let campaigns = Arc::new(campaigns);
    let next_read = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..args.subscriptions.min(campaigns.len()) {
        let (client, campaigns, next) = (
            client.clone(),
            Arc::clone(&campaigns),
            Arc::clone(&next_read),
        );
        readers.push(tokio::spawn(async move {
            let mut events = 0u64;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((_, campaign)) = campaigns.get(i) else {
                    return anyhow::Ok(events);
                };
                let mut s = client.statuses(campaign, 0).await?;
                while let Some(update) = s.next().await? {
                    match update {
                        mhero_client::Update::Event(_) => events += 1,
                        mhero_client::Update::CaughtUp => break,
                    }
                }
                s.close();
            }
        }));
    }
    let subscriptions = readers.len();
    let mut events = 0;
    for r in readers {
        events += r.await??;
    }
    let read_s = read.elapsed().as_secs_f64();
    let rss = peak_rss_mb();
    client.close();
    api.stop_accepting();
    drop(api);
    let _ = stop.send(());
    serving.await?;
    let Some(broker) = api::release(broker, Duration::from_secs(10)).await else {
        bail!("the broker was still in use after the server stopped");
    };
    broker.shutdown().await;
    let ms = |q: f64| round(latencies.value_at_quantile(q) as f64 / 1000.0, 2);
    println!(
        "{}",
        json!({
            "scenario": "quic",
            "n": args.n,
            "batch": args.batch,
            "concurrency": args.concurrency,
            "accepted": accepted,
            "msgs_per_s": round(accepted as f64 / submit_s, 0),
            "batch_p50_ms": ms(0.5),
            "batch_p99_ms": ms(0.99),
            "submit_seconds": round(submit_s, 2),
            "all_sent": all_sent,
            "sent_seconds": round(sent_s, 2),
            "subscriptions": subscriptions,
            "campaigns_read": campaigns.len(),
            "status_events": events,
            "events_per_s": round(events as f64 / read_s, 0),
            "peak_rss_mb": round(rss, 1),
            "data_dir": data_dir.display().to_string(),
            "filesystem": fs_type(&data_dir),
            "durability": args.durability,
            "path": "mhero-client over QUIC on loopback (TLS 1.3, pinned certificate) to the QUIC server of `mhero serve` with its defaults (the sandbox channel, no rate limit): each batch is a campaign (record, stored audience: synced writes) answered once durable; its messages are sent through the sandbox connector while batches arrive; then status subscriptions (`subscriptions` open at once) read every campaign from its start until caught up, one event per delivery (its status record or dead letter)",
            "differs": "server and client share one process and its 2 cores; the gateway is the sandbox simulator inside the broker",
        })
    );
    drop(scratch);
    Ok(())
}
