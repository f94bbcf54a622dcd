//! `loadgen store`: deliveries through the durable queue (enqueue → lease
//! → settle) with synced commits, against the raw RocksDB limit measured in
//! the same run on the same disk.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use mhero_benches::{peak_rss_mb, round};
use mhero_broker::config::{Durability, StoreConfig};
use mhero_broker::metrics::StoreMetrics;
use mhero_broker::store::{
    Engine, Item, NewDelivery, Outcome, QueueKey, RocksEngine, Store, SystemClock, Ticket, records,
};
use mhero_proto::{CampaignId, DeliveryStatus, Lane};
use serde_json::json;

#[derive(clap::Args)]
pub struct StoreArgs {
    /// Deliveries to take through the queue.
    #[arg(long, default_value_t = 1_000_000)]
    n: u64,
    /// Deliveries per enqueue, lease and settle call.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Campaigns the deliveries are spread over (round-robin leasing).
    #[arg(long, default_value_t = 4)]
    campaigns: u64,
    /// "sync" (fsync per commit group) or "async".
    #[arg(long, default_value = "sync")]
    durability: String,
    /// Folder for the scratch databases (default: the system temp folder).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print JSON (the only output format; kept for symmetry with the docs).
    #[arg(long)]
    json: bool,
}

/// Commits waited on at most this many requests behind the newest, so the
/// pipeline keeps the writer busy without unbounded memory.
const WINDOW: usize = 8;

pub fn run(args: &StoreArgs) -> Result<()> {
    let durability = match args.durability.as_str() {
        "sync" => Durability::Sync,
        "async" => Durability::Async,
        other => anyhow::bail!("--durability must be sync or async, not {other:?}"),
    };
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let scratch = tempfile::tempdir_in(&parent)
        .with_context(|| format!("creating a scratch folder in {}", parent.display()))?;
    let config = StoreConfig {
        durability,
        ..StoreConfig::default()
    };
    let metrics = StoreMetrics::default();
    let engine: Arc<dyn Engine> = Arc::new(RocksEngine::open(
        &scratch.path().join("queue"),
        &config,
        metrics.clone(),
    )?);
    let (store, _) = Store::open(engine, Arc::new(SystemClock), metrics)?;
    let store = Arc::new(store);
    let channel = store.channel("sms")?;
    let campaigns: Vec<CampaignId> = (0..args.campaigns.max(1))
        .map(|_| store.create_campaign(b"benchmark body".to_vec()).wait())
        .collect::<Result<_, _>>()?;

    let n = args.n;
    let batch = args.batch as u64;
    let started = Instant::now();
    let producer = {
        let store = Arc::clone(&store);
        let campaigns = campaigns.clone();
        std::thread::spawn(move || -> Result<Histogram<u64>> {
            let mut latency = new_histogram();
            let mut window = VecDeque::new();
            let mut next = 0u64;
            let mut turn = 0usize;
            while next < n {
                let count = batch.min(n - next);
                let campaign = campaigns[turn % campaigns.len()];
                turn += 1;
                let q = QueueKey {
                    channel,
                    lane: Lane::Normal,
                    campaign,
                };
                let items = (next..next + count)
                    .map(|i| NewDelivery {
                        index: i as u32,
                        recipient: format!("+2317{i:08}"),
                        route: 0,
                        language: None,
                    })
                    .collect();
                next += count;
                let submitted = Instant::now();
                window.push_back((submitted, store.enqueue(q, items)));
                if window.len() >= WINDOW {
                    let (at, pending) = window.pop_front().expect("window is full");
                    pending.wait()?;
                    record(&mut latency, at);
                }
            }
            for (at, pending) in window {
                pending.wait()?;
                record(&mut latency, at);
            }
            Ok(latency)
        })
    };

    let mut latency = new_histogram();
    let mut window: VecDeque<(Instant, Ticket)> = VecDeque::new();
    let mut settled = 0u64;
    let done = Outcome::Done {
        status: DeliveryStatus::Wired,
        external_id: None,
        reason: None,
    };
    while settled < n {
        let submitted = Instant::now();
        let leased = store.lease(channel, args.batch)?.wait()?;
        record(&mut latency, submitted);
        if leased.is_empty() {
            std::thread::sleep(Duration::from_micros(100));
            continue;
        }
        settled += leased.len() as u64;
        let submitted = Instant::now();
        let pending = store.settle(leased.into_iter().map(|l| (l, done.clone())).collect())?;
        window.push_back((submitted, pending.into_ticket()));
        if window.len() >= WINDOW {
            let (at, ticket) = window.pop_front().expect("window is full");
            ticket.wait()?;
            record(&mut latency, at);
        }
    }
    for (at, ticket) in window {
        ticket.wait()?;
        record(&mut latency, at);
    }
    let enqueue_latency = producer
        .join()
        .map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
    let elapsed = started.elapsed().as_secs_f64();
    latency.add(&enqueue_latency)?;
    let counted: u64 = campaigns
        .iter()
        .map(|c| store.counters(*c).status(DeliveryStatus::Wired))
        .sum();
    anyhow::ensure!(
        counted == n,
        "the store counted {counted} settled deliveries, expected {n}"
    );
    drop(store);

    let value_size = records::encode(&Item {
        index: 123_456,
        recipient: "+231700123456".into(),
        route: 0,
        language: None,
        attempts: 0,
        enqueued_ms: 1_764_000_000_000,
        history: Vec::new(),
    })
    .len();
    let limit = raw_limit(
        &scratch.path().join("raw"),
        n,
        value_size,
        durability == Durability::Sync,
    )?;
    let msgs_per_s = n as f64 / elapsed;
    let out = json!({
        "scenario": "store",
        "n": n,
        "durability": args.durability,
        "batch": args.batch,
        "campaigns": campaigns.len(),
        "elapsed_s": round(elapsed, 3),
        "msgs_per_s": round(msgs_per_s, 0),
        "p50_ms": round(latency.value_at_quantile(0.5) as f64 / 1000.0, 3),
        "p99_ms": round(latency.value_at_quantile(0.99) as f64 / 1000.0, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "value_bytes": value_size,
        "limit_msgs_per_s": round(limit, 0),
        "ratio_to_limit": round(msgs_per_s / limit, 3),
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
    });
    println!("{out}");
    Ok(())
}

/// Raw RocksDB on the same disk: `n` values of `size` bytes in 1,000-put
/// WriteBatches, each committed with the same WAL sync setting.
fn raw_limit(path: &std::path::Path, n: u64, size: usize, sync: bool) -> Result<f64> {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    let db = rocksdb::DB::open(&opts, path)?;
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(sync);
    let value = vec![0x5au8; size];
    let started = Instant::now();
    let mut i = 0u64;
    while i < n {
        let mut wb = rocksdb::WriteBatch::default();
        for _ in 0..1000.min(n - i) {
            wb.put(i.to_be_bytes(), &value);
            i += 1;
        }
        db.write_opt(wb, &wo)?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, since: Instant) {
    let us = since.elapsed().as_micros() as u64;
    h.saturating_record(us.max(1));
}
