//! `loadgen store`: deliveries through the durable queue (enqueue → lease
//! → settle) with synced commits, against the raw RocksDB limit measured in
//! the same run on the same disk, doing the same writes per delivery.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use mhero_benches::{fs_type, peak_rss_mb, round};
use mhero_broker::config::{Durability, StoreConfig};
use mhero_broker::metrics::Metrics;
use mhero_broker::store::queue::{DEAL, MIN_RANGE_DELETE};
use mhero_broker::store::records::QueueMeta;
use mhero_broker::store::{
    Cf, Counters, Engine, Item, NewDelivery, Outcome, QueueKey, RocksEngine, SentRef, StatusRecord,
    Store, SystemClock, Ticket, keys, records, rocks,
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
                channel: store.channel,
                campaigns: &store.campaigns,
                ready_value: sizes.ready,
                status_value: sizes.status,
                last_sent_value: sizes.last_sent,
                group_ops: store.group_ops.max(1),
            },
            &config(durability),
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
        "limit_does": format!("raw RocksDB opened with the store's own database and column-family options, doing the store's writes with its keys and value sizes: per enqueue call a ready put per delivery of one campaign in turn, the queue's meta and the campaign's counters; per lease of `batch` deliveries, dealt across the campaigns up to {DEAL} of one at a time as the store deals them, a queue-meta put per queue dealt from; per settle, in the dealt order, a status and a last-sent put per delivery, then per queue a range delete of its run (key by key below {MIN_RANGE_DELETE}), its meta and its counters; in synced WriteBatches of the mean size the store's writer formed in the same round, one thread building the next group while another commits the last. It does no reads"),
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
    /// The campaigns it spread the deliveries over.
    campaigns: Vec<CampaignId>,
}

/// The store's default configuration with `durability`, for the store's
/// run and its limit alike.
fn config(durability: Durability) -> StoreConfig {
    StoreConfig {
        durability,
        ..StoreConfig::default()
    }
}

/// `n` deliveries through enqueue → lease → settle on a fresh store in
/// `path`.
fn store_round(
    path: &std::path::Path,
    args: &StoreArgs,
    durability: Durability,
) -> Result<StoreRun> {
    let config = config(durability);
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
        campaigns,
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
struct RawWork<'a> {
    n: u64,
    /// Deliveries per enqueue / lease / settle call.
    batch: usize,
    /// The channel and campaigns the store's run used: the limit writes
    /// the same keys.
    channel: ChannelId,
    campaigns: &'a [CampaignId],
    ready_value: usize,
    status_value: usize,
    last_sent_value: usize,
    /// Writes per synced commit, as the store's writer grouped them.
    group_ops: usize,
}

/// One campaign's queue in the limit: what it has been given, what was
/// leased, and the global index of each position (its status key and
/// recipient).
#[derive(Default)]
struct RawQueue {
    head: u64,
    indices: Vec<u32>,
    settled: u64,
}

/// Raw RocksDB on the same disk, opened with the store's own options and
/// column families, doing the store's writes without its logic, with the
/// store's keys:
/// - each enqueue call, `batch` deliveries of one campaign in turn: a
///   ready put each, the queue's meta and the campaign's counters;
/// - each lease, `batch` deliveries dealt across the campaigns up to
///   [`DEAL`] at a time, as the store deals them: a queue-meta put per
///   queue dealt from;
/// - each settle, in the dealt order: a status put and a last-sent put per
///   delivery, then per queue its run deleted (one range, or key by key
///   below [`MIN_RANGE_DELETE`]), its meta and its campaign's counters.
///
/// Enqueues run `campaigns` calls ahead of the leases, so each lease is
/// dealt across every campaign as in the store's run, whose producer runs
/// ahead of its consumer. Everything commits in synced groups of
/// `group_ops` writes, one thread building the next group while another
/// commits the last, as the store's writer commits while other threads
/// prepare. Deliveries per second.
fn raw_limit(path: &std::path::Path, work: &RawWork<'_>, config: &StoreConfig) -> Result<f64> {
    let (opts, families) = rocks::raw_options(config);
    let db = rocksdb::DB::open_cf_descriptors(&opts, path, families)?;
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(config.durability == Durability::Sync);
    // Pipelined as the store's writer is: one thread builds the next
    // group while another commits the last (memtable inserts, WAL, fsync).
    let (groups, commits) = std::sync::mpsc::sync_channel::<rocksdb::WriteBatch>(2);
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let writer = scope.spawn(|| -> Result<()> {
            for wb in commits {
                db.write_opt(wb, &wo)?;
            }
            Ok(())
        });
        let built = build_groups(work, &db, groups);
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("the limit's writer panicked"))??;
        built
    })?;
    Ok(work.n as f64 / started.elapsed().as_secs_f64())
}

/// Builds the limit's writes (see [`raw_limit`]) into groups of
/// `group_ops` and hands each to the committing thread.
fn build_groups(
    work: &RawWork<'_>,
    db: &rocksdb::DB,
    groups: std::sync::mpsc::SyncSender<rocksdb::WriteBatch>,
) -> Result<()> {
    let cf = |c: Cf| {
        db.cf_handle(c.name())
            .with_context(|| format!("{} family", c.name()))
    };
    let (meta, ready, status, last_sent) = (
        cf(Cf::Meta)?,
        cf(Cf::Ready)?,
        cf(Cf::Status)?,
        cf(Cf::LastSent)?,
    );
    let ready_value = vec![0x5au8; work.ready_value];
    let status_value = vec![0xa5u8; work.status_value];
    let last_sent_value = vec![0x3cu8; work.last_sent_value];
    let queue = |c: usize| QueueKey {
        channel: work.channel,
        lane: Lane::Normal,
        campaign: work.campaigns[c],
    };
    let mut queues: Vec<RawQueue> = work.campaigns.iter().map(|_| RawQueue::default()).collect();
    let encode_meta = |q: &RawQueue| {
        records::encode(&QueueMeta {
            low: q.settled,
            head: q.head,
            tail: q.indices.len() as u64,
            ready: q.indices.len() as u64 - q.head,
            redeliver_below: 0,
        })
    };
    let encode_counters = |q: &RawQueue| {
        let mut counters = Counters {
            enqueued: q.indices.len() as u64,
            ..Counters::default()
        };
        counters.statuses[DeliveryStatus::Wired.code() as usize] = q.settled;
        records::encode(&counters)
    };
    let mut wb = rocksdb::WriteBatch::default();
    let mut ops = 0usize;
    let flush = |wb: &mut rocksdb::WriteBatch, ops: &mut usize, force: bool| -> Result<()> {
        if *ops >= work.group_ops || (force && *ops > 0) {
            groups
                .send(std::mem::take(wb))
                .map_err(|_| anyhow::anyhow!("the limit's writer stopped"))?;
            *ops = 0;
        }
        Ok(())
    };
    let count = work.campaigns.len();
    let batch = work.batch as u64;
    let mut recipient = String::with_capacity(16);
    let (mut enqueued, mut settled, mut turn, mut cursor) = (0u64, 0u64, 0usize, 0usize);
    while settled < work.n {
        // Enqueue, one campaign per call.
        while enqueued < work.n && enqueued < settled + count as u64 * batch {
            let c = turn % count;
            turn += 1;
            let q = &mut queues[c];
            for i in enqueued..enqueued + batch.min(work.n - enqueued) {
                wb.put_cf(
                    &ready,
                    keys::ready(queue(c), q.indices.len() as u64),
                    &ready_value,
                );
                q.indices.push(i as u32);
                ops += 1;
                flush(&mut wb, &mut ops, false)?;
            }
            enqueued += batch.min(work.n - enqueued);
            wb.put_cf(&meta, keys::queue_meta(queue(c)), encode_meta(q));
            wb.put_cf(&meta, keys::counters(queue(c).campaign), encode_counters(q));
            ops += 2;
            flush(&mut wb, &mut ops, false)?;
        }
        // Lease: up to DEAL of each campaign in turn.
        let mut dealt: Vec<(usize, u64, u64)> = Vec::new();
        let mut left = batch;
        loop {
            let before = left;
            for k in 0..count {
                let c = (cursor + k) % count;
                let q = &mut queues[c];
                let give = DEAL.min(left).min(q.indices.len() as u64 - q.head);
                if give == 0 {
                    continue;
                }
                dealt.push((c, q.head, give));
                q.head += give;
                left -= give;
                if left == 0 {
                    break;
                }
            }
            if left == 0 || left == before {
                break;
            }
        }
        // The next lease starts after the campaign served last.
        if let Some(&(c, ..)) = dealt.last() {
            cursor = c + 1;
        }
        let mut touched: Vec<usize> = dealt.iter().map(|&(c, ..)| c).collect();
        touched.sort_unstable();
        touched.dedup();
        for &c in &touched {
            wb.put_cf(&meta, keys::queue_meta(queue(c)), encode_meta(&queues[c]));
            ops += 1;
            flush(&mut wb, &mut ops, false)?;
        }
        // Settle, in the dealt order.
        for &(c, from, give) in &dealt {
            for qseq in from..from + give {
                let index = queues[c].indices[qseq as usize];
                let id = DeliveryId::new(work.campaigns[c], index);
                wb.put_cf(&status, keys::delivery(id), &status_value);
                recipient.clear();
                write!(recipient, "+2317{index:08}")?;
                wb.put_cf(
                    &last_sent,
                    keys::last_sent(work.channel, &recipient),
                    &last_sent_value,
                );
                ops += 2;
                flush(&mut wb, &mut ops, false)?;
            }
        }
        for &c in &touched {
            let q = &mut queues[c];
            let (start, end) = (q.settled, q.head);
            if end - start < MIN_RANGE_DELETE {
                for qseq in start..end {
                    wb.delete_cf(&ready, keys::ready(queue(c), qseq));
                }
                ops += (end - start) as usize;
            } else {
                wb.delete_range_cf(
                    &ready,
                    keys::ready(queue(c), start),
                    keys::ready(queue(c), end),
                );
                ops += 1;
            }
            settled += end - start;
            q.settled = end;
            wb.put_cf(&meta, keys::queue_meta(queue(c)), encode_meta(q));
            wb.put_cf(&meta, keys::counters(queue(c).campaign), encode_counters(q));
            ops += 2;
            flush(&mut wb, &mut ops, false)?;
        }
    }
    flush(&mut wb, &mut ops, true)
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, since: Instant) {
    let us = since.elapsed().as_micros() as u64;
    h.saturating_record(us.max(1));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys left in `cf` of the limit's database at `path`.
    fn keys_in(path: &std::path::Path, cf: Cf) -> usize {
        let (opts, families) = rocks::raw_options(&config(Durability::Async));
        let db = rocksdb::DB::open_cf_descriptors(&opts, path, families).unwrap();
        let handle = db.cf_handle(cf.name()).unwrap();
        db.iterator_cf(&handle, rocksdb::IteratorMode::Start)
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
            .len()
    }

    /// The limit does the store's whole work: every delivery it enqueued
    /// is leased and settled (a status and a last-sent record each), and
    /// every queue is emptied, whether its runs are deleted as ranges or
    /// key by key.
    #[test]
    fn the_limit_settles_every_delivery_it_enqueues() {
        // 4 campaigns: runs of 250 per lease of 1,000 (ranges); 16: runs
        // of 62 (key by key); n not a multiple of the batch.
        for (campaigns, n) in [(4u64, 10_500u64), (16, 19_999)] {
            let dir = tempfile::tempdir().unwrap();
            let ids: Vec<CampaignId> = (1..=campaigns).map(CampaignId).collect();
            let sizes = Sizes::of_records(ChannelId(1));
            let work = RawWork {
                n,
                batch: 1000,
                channel: ChannelId(1),
                campaigns: &ids,
                ready_value: sizes.ready,
                status_value: sizes.status,
                last_sent_value: sizes.last_sent,
                group_ops: 700,
            };
            let rate = raw_limit(dir.path(), &work, &config(Durability::Async)).unwrap();
            assert!(rate > 0.0);
            assert_eq!(keys_in(dir.path(), Cf::Status), n as usize, "{campaigns}");
            assert_eq!(keys_in(dir.path(), Cf::LastSent), n as usize, "{campaigns}");
            assert_eq!(keys_in(dir.path(), Cf::Ready), 0, "{campaigns}");
            // A queue meta and counters per campaign.
            assert_eq!(
                keys_in(dir.path(), Cf::Meta),
                2 * campaigns as usize,
                "{campaigns}"
            );
        }
    }
}
