//! `loadgen store`: deliveries through the durable queue (enqueue → lease
//! → settle) with synced commits, against the raw RocksDB limit measured in
//! the same run on the same disk, doing the same writes per delivery.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use mhero_benches::{fs_type, peak_rss_mb, round};
use mhero_broker::config::{Durability, StoreConfig};
use mhero_broker::metrics::Metrics;
use mhero_broker::store::{
    Engine, Item, NewDelivery, Outcome, QueueKey, RocksEngine, SentRef, StatusRecord, Store,
    SystemClock, Ticket, records,
};
use mhero_proto::{CampaignId, ChannelId, DeliveryId, DeliveryStatus, Lane};
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
    /// Rounds of the store's run then its limit's, each on a fresh
    /// database; the medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
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

/// Leases asked for before the oldest one's commit is waited on, as the
/// dispatcher prepares a leased round while its lease commits: nothing is
/// settled (sent) before its lease is durable.
const LEASES_AHEAD: usize = 2;

pub fn run(args: &StoreArgs) -> Result<()> {
    let durability = match args.durability.as_str() {
        "sync" => Durability::Sync,
        "async" => Durability::Async,
        other => anyhow::bail!("--durability must be sync or async, not {other:?}"),
    };
    anyhow::ensure!(args.rounds >= 1, "--rounds must be at least 1");
    let scratch = mhero_benches::scratch(args.dir.as_deref())?;
    // The store and its limit take turns, each on a fresh database, so a
    // machine that speeds up or slows down within the run moves both: each
    // round's ratio compares neighbours in time.
    let mut rounds = Vec::with_capacity(args.rounds);
    let mut latency = new_histogram();
    for r in 0..args.rounds {
        let (queue, raw) = (
            scratch.path().join(format!("queue-{r}")),
            scratch.path().join(format!("raw-{r}")),
        );
        let store = store_round(&queue, args, durability)?;
        latency.add(&store.latency)?;
        let sizes = Sizes::of_records(store.channel);
        let limit = raw_limit(
            &raw,
            &RawWork {
                n: args.n,
                batch: args.batch,
                ready_value: sizes.ready,
                status_value: sizes.status,
                last_sent_value: sizes.last_sent,
                group_ops: store.group_ops.max(1),
            },
            durability == Durability::Sync,
        )?;
        // The next round starts on a disk as empty as this one did.
        for dir in [&queue, &raw] {
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        rounds.push(Round {
            msgs_per_s: store.msgs_per_s,
            groups: store.groups,
            group_ops: store.group_ops,
            limit_msgs_per_s: limit,
            sizes,
        });
    }
    let median = |f: &dyn Fn(&Round) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        }
    };
    let data_dir = scratch.path().to_path_buf();
    let out = json!({
        "scenario": "store",
        "n": args.n,
        "durability": args.durability,
        "batch": args.batch,
        "leases_ahead": LEASES_AHEAD,
        "leases_ahead_means": "the consumer asks for its next lease before waiting for the last one's commit, as the dispatcher builds a leased round while its lease commits; it settles a round only after its lease committed",
        "campaigns": args.campaigns.max(1),
        "rounds": rounds.iter().map(|r| json!({
            "msgs_per_s": round(r.msgs_per_s, 0),
            "limit_msgs_per_s": round(r.limit_msgs_per_s, 0),
            "ratio_to_limit": round(r.msgs_per_s / r.limit_msgs_per_s, 3),
            "commit_groups": r.groups,
            "mean_group_ops": r.group_ops,
        })).collect::<Vec<_>>(),
        "rounds_mean": "the store's run and its limit's take turns, each on a fresh database; the figures below are the medians over the rounds (ratio_to_limit: the median of each round's ratio)",
        "msgs_per_s": round(median(&|r| r.msgs_per_s), 0),
        "p50_ms": round(latency.value_at_quantile(0.5) as f64 / 1000.0, 3),
        "p99_ms": round(latency.value_at_quantile(0.99) as f64 / 1000.0, 3),
        "p_means": "commit latency of each enqueue, lease and settle call, over every round",
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "value_bytes": rounds[0].sizes.ready,
        "status_value_bytes": rounds[0].sizes.status,
        "mean_group_ops": median(&|r| r.group_ops as f64).round() as u64,
        "limit_msgs_per_s": round(median(&|r| r.limit_msgs_per_s), 0),
        "limit_does": "raw RocksDB, one thread, the same writes per delivery (a ready put of the same key and value size, a status put, a last-sent put of the same key and value size, a range delete per leased run, the queue-meta and counter puts per call) in synced WriteBatches of the mean size the store's writer formed in the same round",
        "data_dir": data_dir.display().to_string(),
        "filesystem": fs_type(&data_dir),
        "ratio_to_limit": round(median(&|r| r.msgs_per_s / r.limit_msgs_per_s), 3),
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
    });
    println!("{out}");
    Ok(())
}

/// One round's store run and its limit.
struct Round {
    msgs_per_s: f64,
    groups: f64,
    group_ops: usize,
    limit_msgs_per_s: f64,
    sizes: Sizes,
}

/// What the store's run measured, and the commit groups its writer formed.
struct StoreRun {
    msgs_per_s: f64,
    latency: Histogram<u64>,
    groups: f64,
    group_ops: usize,
    /// The channel it leased from, which its status records name.
    channel: ChannelId,
}

/// `n` deliveries through enqueue → lease → settle on a fresh store in
/// `path`.
fn store_round(
    path: &std::path::Path,
    args: &StoreArgs,
    durability: Durability,
) -> Result<StoreRun> {
    let config = StoreConfig {
        durability,
        ..StoreConfig::default()
    };
    let registry = Metrics::new();
    let metrics = registry.store.clone();
    let engine: Arc<dyn Engine> = Arc::new(RocksEngine::open(path, &config, metrics.clone())?);
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
    let mut leases = VecDeque::new();
    while settled < n {
        while leases.len() < LEASES_AHEAD {
            leases.push_back((Instant::now(), store.lease(channel, args.batch)?));
        }
        let (submitted, pending) = leases.pop_front().expect("a lease was just asked for");
        let leased = pending.wait()?;
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
    // The groups the writer formed: the limit commits the same.
    let exposition = registry.encode();
    let sample = |name: &str| -> f64 {
        exposition
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let groups = sample("mhero_store_commit_group_ops_count");
    let group_ops = (sample("mhero_store_commit_group_ops_sum") / groups.max(1.0)).round() as usize;

    Ok(StoreRun {
        msgs_per_s: n as f64 / elapsed,
        latency,
        groups,
        group_ops,
        channel,
    })
}

/// The encoded sizes of the values the store writes per delivery, its
/// status records naming `channel`.
struct Sizes {
    ready: usize,
    status: usize,
    last_sent: usize,
}

impl Sizes {
    fn of_records(channel: ChannelId) -> Self {
        let ready = records::encode(&Item {
            index: 123_456,
            recipient: "+231700123456".into(),
            route: 0,
            language: None,
            attempts: 0,
            enqueued_ms: 1_764_000_000_000,
            history: Vec::new(),
        })
        .len();
        let status = records::encode(&StatusRecord {
            status: DeliveryStatus::Wired,
            channel,
            attempts: 1,
            updated_ms: 1_764_000_000_000,
            external_id: None,
            reason: None,
            sent_ms: 1_764_000_000_000,
        })
        .len();
        let last_sent = records::encode(&SentRef {
            delivery: DeliveryId::new(CampaignId(1), 123_456),
            at_ms: 1_764_000_000_000,
        })
        .len();
        Self {
            ready,
            status,
            last_sent,
        }
    }
}

/// The work the limit does, matching the store's per delivery.
struct RawWork {
    n: u64,
    /// Deliveries per enqueue / lease / settle call.
    batch: usize,
    ready_value: usize,
    status_value: usize,
    last_sent_value: usize,
    /// Writes per synced commit, as the store's writer grouped them.
    group_ops: usize,
}

/// Raw RocksDB on the same disk doing the store's writes without its
/// logic: per call of `batch` deliveries, the enqueue (a ready put each,
/// queue meta, counters), the lease (queue meta) and the settle (a status
/// put each, one range delete of the leased run, queue meta, counters), in
/// column families like the store's, committed in synced groups of
/// `group_ops` writes. Deliveries per second.
fn raw_limit(path: &std::path::Path, work: &RawWork, sync: bool) -> Result<f64> {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let db = rocksdb::DB::open_cf(&opts, path, ["ready", "status", "last_sent"])?;
    let (meta, ready, status, last_sent) = (
        db.cf_handle("default").context("default family")?,
        db.cf_handle("ready").context("ready family")?,
        db.cf_handle("status").context("status family")?,
        db.cf_handle("last_sent").context("last_sent family")?,
    );
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(sync);
    let ready_value = vec![0x5au8; work.ready_value];
    let status_value = vec![0xa5u8; work.status_value];
    let last_sent_value = vec![0x3cu8; work.last_sent_value];
    let meta_value = [0x11u8; 40];
    // Ready keys as the store writes them: channel | lane | campaign | qseq.
    let ready_key = |qseq: u64| {
        let mut k = Vec::with_capacity(21);
        k.extend_from_slice(&1u32.to_be_bytes());
        k.push(2);
        k.extend_from_slice(&1u64.to_be_bytes());
        k.extend_from_slice(&qseq.to_be_bytes());
        k
    };
    let status_key = |i: u64| {
        let mut k = Vec::with_capacity(12);
        k.extend_from_slice(&1u64.to_be_bytes());
        k.extend_from_slice(&(i as u32).to_be_bytes());
        k
    };
    // Last-sent keys: channel | recipient address (as in the store bench,
    // `+2317…` numbers).
    let last_sent_key = |i: u64| {
        let mut k = Vec::with_capacity(17);
        k.extend_from_slice(&1u32.to_be_bytes());
        k.extend_from_slice(format!("+2317{i:08}").as_bytes());
        k
    };
    let mut wb = rocksdb::WriteBatch::default();
    let mut ops = 0usize;
    let flush = |wb: &mut rocksdb::WriteBatch, ops: &mut usize, force: bool| -> Result<()> {
        if *ops >= work.group_ops || (force && *ops > 0) {
            db.write_opt(std::mem::take(wb), &wo)?;
            *ops = 0;
        }
        Ok(())
    };
    let started = Instant::now();
    let mut i = 0u64;
    while i < work.n {
        let count = (work.batch as u64).min(work.n - i);
        // Enqueue.
        for q in i..i + count {
            wb.put_cf(&ready, ready_key(q), &ready_value);
            ops += 1;
            flush(&mut wb, &mut ops, false)?;
        }
        wb.put_cf(&meta, b"Qqueue", meta_value);
        wb.put_cf(&meta, b"Kcounters", meta_value);
        ops += 2;
        flush(&mut wb, &mut ops, false)?;
        // Lease.
        wb.put_cf(&meta, b"Qqueue", meta_value);
        ops += 1;
        flush(&mut wb, &mut ops, false)?;
        // Settle.
        for q in i..i + count {
            wb.put_cf(&status, status_key(q), &status_value);
            wb.put_cf(&last_sent, last_sent_key(q), &last_sent_value);
            ops += 2;
            flush(&mut wb, &mut ops, false)?;
        }
        wb.delete_range_cf(&ready, ready_key(i), ready_key(i + count));
        wb.put_cf(&meta, b"Qqueue", meta_value);
        wb.put_cf(&meta, b"Kcounters", meta_value);
        ops += 3;
        flush(&mut wb, &mut ops, false)?;
        i += count;
    }
    flush(&mut wb, &mut ops, true)?;
    Ok(work.n as f64 / started.elapsed().as_secs_f64())
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, since: Instant) {
    let us = since.elapsed().as_micros() as u64;
    h.saturating_record(us.max(1));
}
