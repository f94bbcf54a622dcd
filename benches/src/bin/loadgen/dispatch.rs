//! Dispatcher scenarios through the sandbox connector. The sandbox gateway
//! is a simulator inside the broker, so these measure the broker itself:
//! store, fan-out, scheduler, plugin calls.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mhero_benches::{fs_type, peak_rss_mb, round};
use mhero_broker::channel::SandboxConfig;
use mhero_broker::config::{ChannelConfig, DispatchConfig, Durability};
use mhero_broker::dispatch::CampaignSpec;
use mhero_broker::{Broker, Config};
use mhero_proto::{CampaignId, Lane};
use serde_json::json;

#[derive(clap::Args)]
pub struct FanoutArgs {
    /// Recipients of the one campaign.
    #[arg(long, default_value_t = 1_000_000)]
    n: u32,
    /// Messages per gateway request (the connector's batch form); 1: one
    /// request per message.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Leave receipts off: a delivery then ends when it is wired.
    #[arg(long)]
    no_receipts: bool,
    /// "sync" or "async".
    #[arg(long, default_value = "sync")]
    durability: String,
    /// Where recipients come from: `generated` (derived from their
    /// position) or `directory` (a directory of n contacts, selected with
    /// `*` and frozen at submit).
    #[arg(long, default_value = "generated")]
    audience: String,
    /// Split the `n` recipients over this many campaigns, each an explicit
    /// recipient list, all submitted at once (what workflows, lab results
    /// and the API make: many small campaigns).
    #[arg(long, default_value_t = 1)]
    campaigns: u32,
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct PreemptArgs {
    /// Bulk deliveries backlogged.
    #[arg(long, default_value_t = 1_000_000)]
    bulk: u32,
    /// Emergency deliveries.
    #[arg(long, default_value_t = 10_000)]
    emergency: u32,
    /// The channel's rate (messages per second).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct RatelimitArgs {
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Burst of the GCRA limit.
    #[arg(long, default_value_t = 5)]
    burst: u32,
    /// Seconds to measure.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

pub(crate) struct Bench {
    pub broker: Broker,
    /// What the run changed from the defaults, for its JSON.
    pub differs: serde_json::Value,
    pub _scratch: tempfile::TempDir,
}

pub(crate) fn config(
    dir: Option<&PathBuf>,
    durability: &str,
) -> Result<(Config, tempfile::TempDir)> {
    let scratch = mhero_benches::scratch(dir.map(PathBuf::as_path))?;
    let mut config = Config {
        data_dir: scratch.path().join("store"),
        ..Config::default()
    };
    config.store.durability = match durability {
        "sync" => Durability::Sync,
        "async" => Durability::Async,
        other => bail!("--durability must be sync or async, not {other:?}"),
    };
    config.dispatch = DispatchConfig {
        fanout_page: 5000,
        fanout_ahead: 50_000,
        ..DispatchConfig::default()
    };
    Ok((config, scratch))
}

/// Starts the broker through its one door, as `mhero` does.
pub(crate) async fn start(
    mut config: Config,
    scratch: tempfile::TempDir,
    channels: BTreeMap<String, ChannelConfig>,
) -> Result<Bench> {
    config.channels = channels;
    let differs = mhero_benches::config_diff(&config);
    let broker = Broker::open(config).await?;
    Ok(Bench {
        broker,
        differs,
        _scratch: scratch,
    })
}

fn sandbox(rate: f64, burst: u32, batch: usize, record_times: bool) -> ChannelConfig {
    ChannelConfig {
        rate,
        burst,
        batch,
        window: 64,
        count_segments: Some(false),
        sandbox: SandboxConfig {
            receipts: false,
            record_times,
            ..SandboxConfig::default()
        },
        ..ChannelConfig::default()
    }
}

fn campaign(name: &str, lane: Lane, count: u32) -> CampaignSpec {
    CampaignSpec::generated(
        name,
        lane,
        "Cholera alert: report suspected cases to the county health team today.",
        count,
        &["sms"],
    )
}

/// The broker `fanout` runs: one unlimited sandbox channel at the batch
/// asked, receipts as asked, delivered at once.
async fn fanout_bench(args: &FanoutArgs) -> Result<Bench> {
    let (config, scratch) = config(args.dir.as_ref(), &args.durability)?;
    start(
        config,
        scratch,
        [("sms".to_string(), {
            let mut c = sandbox(0.0, 10, args.batch, false);
            c.sandbox.receipts = !args.no_receipts;
            c.sandbox.receipt_delay_ms = 0;
            c
        })]
        .into(),
    )
    .await
}

/// `n` recipients over `campaigns` explicit-list campaigns submitted at
/// once, each through the dispatcher's submit (its commits), until every
/// delivery ended.
fn fanout_many(args: &FanoutArgs) -> Result<()> {
    runtime()?.block_on(async {
        let bench = fanout_bench(args).await?;
        let data_dir = bench.broker.config().data_dir.clone();
        let per = (args.n / args.campaigns).max(1);
        let n = per * args.campaigns;
        let started = Instant::now();
        let mut submits = tokio::task::JoinSet::new();
        for c in 0..args.campaigns {
            let submitter = bench.broker.dispatcher().submitter();
            let recipients = (0..per)
                .map(|i| mhero_broker::audience::Recipient {
                    phone: Some(format!("+23177{:07}", (c * per + i) % 10_000_000)),
                    addresses: Default::default(),
                    not_on: Vec::new(),
                    language: None,
                })
                .collect();
            let mut spec = campaign(&format!("small {c}"), Lane::Normal, per);
            spec.audience = mhero_broker::dispatch::AudienceSpec::Recipients(recipients);
            submits.spawn(async move { submitter.submit(spec).await.map(|s| s.id) });
        }
        let mut ids = Vec::new();
        while let Some(r) = submits.join_next().await {
            ids.push(r??);
        }
        let accepted_s = started.elapsed().as_secs_f64();
        let receipts = !args.no_receipts;
        let ended = |p: &mhero_broker::dispatch::Progress| if receipts { p.delivered } else { p.wired };
        loop {
            let done = ids.iter().all(|id| {
                bench
                    .broker
                    .dispatcher()
                    .progress(*id)
                    .is_some_and(|p| p.done && ended(&p) == u64::from(per))
            });
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let rss = peak_rss_mb();
        bench.broker.shutdown().await;
        println!(
            "{}",
            json!({
                "scenario": "fanout",
                "differs_from_defaults": bench.differs,
                "n": n,
                "campaigns": args.campaigns,
                "recipients_per_campaign": per,
                "batch": args.batch,
                "durability": args.durability,
                "audience": "explicit recipient lists, stored with each campaign at submit (inside the timing)",
                "gateway": gateway(),
                "receipts": receipts,
                "delivery_means": delivery_means(receipts),
                "data_dir": data_dir.display().to_string(),
                "filesystem": fs_type(&data_dir),
                "accepted_s": round(accepted_s, 3),
                "campaigns_accepted_per_s": round(f64::from(args.campaigns) / accepted_s, 0),
                "elapsed_s": round(elapsed, 3),
                "deliveries_per_s": round(f64::from(n) / elapsed, 0),
                "peak_rss_mb": round(rss, 1),
                "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
            })
        );
        Ok(())
    })
}

/// What `fanout` counts as a delivery.
fn delivery_means(receipts: bool) -> &'static str {
    if receipts {
        "wired to the gateway, and its delivered receipt pushed through the webhook entry point and applied to the status record"
    } else {
        "wired to the gateway (settled with its message id)"
    }
}

/// The gateway `fanout` sends to.
fn gateway() -> String {
    use mhero_broker::channel::sandbox::{WEBHOOK_EVENTS, WEBHOOKS_IN_FLIGHT};
    format!(
        "sandbox simulator inside the broker (no network); it pushes receipts in webhook calls of up to {WEBHOOK_EVENTS} events, up to {WEBHOOKS_IN_FLIGHT} calls at once"
    )
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Acceptance-to-wire latency percentiles from the status records.
fn wire_latencies(bench: &Bench, id: CampaignId, accepted_ms: u64) -> Result<(f64, f64)> {
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000, 3)?;
    bench
        .broker
        .dispatcher()
        .store()
        .scan_statuses(id, &mut |_, rec| {
            h.saturating_record(rec.updated_ms.saturating_sub(accepted_ms).max(1));
            Ok(true)
        })?;
    Ok((
        h.value_at_quantile(0.5) as f64,
        h.value_at_quantile(0.99) as f64,
    ))
}

pub fn fanout(args: &FanoutArgs) -> Result<()> {
    if args.campaigns > 1 {
        return fanout_many(args);
    }
    runtime()?.block_on(async {
        let bench = fanout_bench(args).await?;
        let data_dir = bench.broker.config().data_dir.clone();
        let mut spec = campaign("fanout", Lane::Normal, args.n);
        let audience = match args.audience.as_str() {
            "generated" => "generated: recipient i derived from i, nothing read",
            "directory" => {
                crate::directory::load_for_fanout(&bench.broker, args.n).await?;
                spec.audience = mhero_broker::dispatch::AudienceSpec::Selector("*".into());
                "directory: n contacts selected with `*`, frozen at submit (inside the timing), each page's contacts read from the store"
            }
            other => bail!("--audience must be generated or directory, not {other:?}"),
        };
        let accepted_ms = now_ms();
        let started = Instant::now();
        let id = bench.broker.dispatcher().submit(spec).await?.id;
        let receipts = !args.no_receipts;
        let finished = |p: &mhero_broker::dispatch::Progress| {
            p.done && (!receipts || p.delivered == u64::from(args.n))
        };
        while !bench.broker.dispatcher().progress(id).is_some_and(|p| finished(&p)) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let p = bench.broker.dispatcher().progress(id).context("campaign vanished")?;
        let ended = if receipts { p.delivered } else { p.wired };
        if ended != u64::from(args.n) {
            bail!("only {ended} of {} ended: {p:?}", args.n);
        }
        let (p50, p99) = wire_latencies(&bench, id, accepted_ms)?;
        let rss = peak_rss_mb();
        let stats = bench
            .broker
            .dispatcher()
            .sandbox("sms")
            .map(|g| g.stats())
            .unwrap_or_default();
        bench.broker.shutdown().await;
        println!(
            "{}",
            json!({
                "scenario": "fanout",
                "differs_from_defaults": bench.differs,
                "n": args.n,
                "batch": args.batch,
                "durability": args.durability,
                "audience": audience,
                "gateway": gateway(),
                "receipts": receipts,
                "delivery_means": delivery_means(receipts),
                "data_dir": data_dir.display().to_string(),
                "filesystem": fs_type(&data_dir),
                "elapsed_s": round(elapsed, 3),
                "deliveries_per_s": round(f64::from(args.n) / elapsed, 0),
                "p50_ms": p50,
                "p99_ms": p99,
                "peak_rss_mb": round(rss, 1),
                "gateway_requests": stats.requests,
                "gateway_accepted": stats.accepted,
                "gateway_peak_webhook_calls": stats.peak_webhook_calls,
                "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
            })
        );
        Ok(())
    })
}

pub fn preempt(args: &PreemptArgs) -> Result<()> {
    runtime()?.block_on(async {
        let (config, scratch) = config(args.dir.as_ref(), "sync")?;
        let bench = start(config, scratch, [("sms".to_string(), sandbox(args.rate, 10, 1, true))].into()).await?;
        let bulk = bench.broker.dispatcher().submit(campaign("bulk backlog", Lane::Bulk, args.bulk)).await?.id;
        // Let the backlog build and the channel run at its rate.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let bulk_before = bench.broker.dispatcher().progress(bulk).map_or(0, |p| p.wired);
        let submitted = Instant::now();
        let submitted_ms = now_ms();
        let alert = bench.broker.dispatcher().submit(campaign("emergency", Lane::Emergency, args.emergency)).await?.id;
        let accepted = submitted.elapsed();
        let mut first = None;
        loop {
            let p = bench.broker.dispatcher().progress(alert).context("campaign vanished")?;
            if first.is_none() && p.wired > 0 {
                first = Some(submitted.elapsed());
            }
            if p.done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let complete = submitted.elapsed();
        // When the gateway took the first emergency message.
        let prefix = format!("{alert}-");
        let log = bench.broker.dispatcher().sandbox("sms").context("sandbox channel")?.accept_log();
        let first_at_gateway = log.iter().find(|(_, id)| id.starts_with(&prefix)).map(|(t, _)| t.saturating_sub(submitted_ms));
        let bulk_during = bench.broker.dispatcher().progress(bulk).map_or(0, |p| p.wired) - bulk_before;
        bench.broker.dispatcher().cancel(bulk).await?;
        bench.broker.shutdown().await;
        println!(
            "{}",
            json!({
                "scenario": "preempt",
                "differs_from_defaults": bench.differs,
                "bulk": args.bulk,
                "emergency": args.emergency,
                "rate_per_s": args.rate,
                "accept_ms": round(accepted.as_secs_f64() * 1000.0, 2),
                "first_emergency_send_ms": first_at_gateway,
                "first_emergency_wired_ms": round(first.unwrap_or(complete).as_secs_f64() * 1000.0, 2),
                "emergency_complete_s": round(complete.as_secs_f64(), 3),
                "bulk_sent_meanwhile": bulk_during,
                "peak_rss_mb": round(peak_rss_mb(), 1),
            })
        );
        Ok(())
    })
}

pub fn ratelimit(args: &RatelimitArgs) -> Result<()> {
    runtime()?.block_on(async {
        let (config, scratch) = config(args.dir.as_ref(), "sync")?;
        let bench = start(
            config,
            scratch,
            [("sms".to_string(), sandbox(args.rate, args.burst, 1, true))].into(),
        )
        .await?;
        let count = (args.rate * (args.seconds as f64 + 5.0)) as u32;
        let id = bench
            .broker
            .dispatcher()
            .submit(campaign("paced", Lane::Normal, count))
            .await?
            .id;
        tokio::time::sleep(Duration::from_secs(args.seconds + 2)).await;
        let times: Vec<u64> = bench
            .broker
            .dispatcher()
            .sandbox("sms")
            .context("sandbox channel")?
            .accept_log()
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        bench.broker.dispatcher().cancel(id).await?;
        bench.broker.shutdown().await;
        let Some(&t0) = times.first() else {
            bail!("nothing was sent")
        };
        let window_ms = args.seconds * 1000;
        let in_window: Vec<u64> = times
            .iter()
            .copied()
            .filter(|t| *t < t0 + window_ms)
            .collect();
        let achieved = in_window.len() as f64 / args.seconds as f64;
        // The most sends in any sliding second.
        let mut max_1s = 0;
        let mut lo = 0;
        for hi in 0..in_window.len() {
            while in_window[hi] - in_window[lo] >= 1000 {
                lo += 1;
            }
            max_1s = max_1s.max(hi - lo + 1);
        }
        let bound = args.rate.ceil() as usize + args.burst as usize;
        println!(
            "{}",
            json!({
                "scenario": "ratelimit",
                "differs_from_defaults": bench.differs,
                "rate_per_s": args.rate,
                "burst": args.burst,
                "seconds": args.seconds,
                "sent": in_window.len(),
                "achieved_per_s": round(achieved, 2),
                "error_percent": round((achieved - args.rate) / args.rate * 100.0, 3),
                "max_in_any_1s": max_1s,
                "gcra_bound_in_any_1s": bound,
                "within_bound": max_1s <= bound,
            })
        );
        Ok(())
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
