//! `loadgen inbound`: health workers' replies through the whole inbound
//! path: signed webhook calls over HTTP to the server `mhero serve` runs →
//! the connector parses them (wasm) → the durable inbound record → the
//! inbound pipeline (duplicate window, directory look-up, what each
//! answers, the default classifier chain — keywords, then stock-report —
//! trigger routing, answers to HELP, stock reports counted per facility).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use mhero_benches::{fs_type, peak_rss_mb, round};
use mhero_broker::Broker;
use mhero_broker::config::ChannelConfig;
use mhero_broker::dispatch::{AudienceSpec, Body, CampaignSpec};
use mhero_proto::Lane;
use serde_json::json;

#[derive(clap::Args)]
pub struct InboundArgs {
    /// Inbound messages sent.
    #[arg(long, default_value_t = 500_000)]
    n: u64,
    /// Workers in the generated directory; message `i` comes from worker
    /// `i % workers`.
    #[arg(long, default_value_t = 100_000)]
    workers: u32,
    /// Messages per webhook call (gateways batch replies: the sandbox
    /// gateway sends up to 2,000 per call, WhatsApp several changes).
    #[arg(long, default_value_t = 50)]
    per_call: usize,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Messages per second offered (calls paced to it); 0: as fast as the
    /// server takes them, which measures throughput while the latency
    /// measures the backlog that builds.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Parent folder of the scratch store (default: the system's temp dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print JSON (the only output format).
    #[arg(long)]
    json: bool,
}

/// What workers reply: answers, reports, a thank-you; every 100th asks
/// for HELP (answered by the broker).
const TEXTS: [&str; 7] = [
    "YES",
    "No",
    "2",
    "REPORT CASES MEASLES 3",
    "STOCK AMOX 120 ORS 40",
    "Received, thank you",
    "oui",
];

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Worker `i`'s phone number, as the generated directory has it.
fn phone(i: u32) -> String {
    format!(
        "+231{}{:07}",
        if i.is_multiple_of(2) { "77" } else { "88" },
        i % 10_000_000
    )
}

pub fn run(args: &InboundArgs) -> Result<()> {
    if args.concurrency == 0 || args.per_call == 0 || args.workers == 0 {
        bail!("--concurrency, --per-call and --workers must be > 0");
    }
    if args.per_call > 2_000 {
        bail!("--per-call must be at most 2000 (a webhook body is limited to 1 MiB)");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(bench(args))
}

async fn bench(args: &InboundArgs) -> Result<()> {
    // The defaults: sync durability, the keywords classifier, the default
    // triggers and answers.
    let (_scratch, config) = super::api::server_config(args.data_dir.as_ref(), "sync")?;
    let data_dir = config.data_dir.clone();
    let secret = ChannelConfig::default().sandbox.webhook_secret;
    let broker = Arc::new(Broker::open(config).await?);

    // The workers, and a campaign to all of them: their replies answer it.
    let mapper = broker
        .plugins()
        .get("ihris-practitioner")
        .context("the ihris-practitioner mapper is built in")?;
    let (directory, workers) = (Arc::clone(broker.directory()), args.workers);
    tokio::task::spawn_blocking(move || super::directory::load(&directory, &mapper, workers))
        .await??;
    let campaign = broker
        .dispatcher()
        .submit(CampaignSpec {
            name: "weekly stock check".into(),
            lane: Lane::Normal,
            body: Body::text("Do you have ORS in stock? Reply YES or NO."),
            channels: vec!["sandbox".into()],
            audience: AudienceSpec::Selector("*".into()),
            expires_at_ms: None,
            start_at_ms: None,
        })
        .await?
        .id;
    if !broker
        .dispatcher()
        .wait_done(&[campaign], Duration::from_secs(600))
        .await
    {
        bail!("the campaign to the workers did not finish in 10 minutes");
    }

    let served = super::api::Served::start(&broker).await?;
    let base = served.base.clone();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let processed = broker.inbound().processed();
    let start_position = *processed.borrow();
    let calls = args.n.div_ceil(args.per_call as u64);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..args.concurrency {
        let (client, next, base, secret) = (
            client.clone(),
            Arc::clone(&next),
            base.clone(),
            secret.clone(),
        );
        let (n, per_call, workers) = (args.n, args.per_call as u64, u64::from(args.workers));
        let call_every =
            (args.rate > 0.0).then(|| Duration::from_secs_f64(per_call as f64 / args.rate));
        senders.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            loop {
                let call = next.fetch_add(1, Ordering::Relaxed);
                if call >= calls {
                    return anyhow::Ok(latency);
                }
                if let Some(every) = call_every {
                    tokio::time::sleep_until((started + every * call as u32).into()).await;
                }
                let at_ms = now_ms();
                let inbound: Vec<_> = (call * per_call..((call + 1) * per_call).min(n))
                    .map(|i| {
                        let worker = (i % workers) as u32;
                        let text = if i % 100 == 99 {
                            "HELP"
                        } else {
                            TEXTS[((i / workers) as usize) % TEXTS.len()]
                        };
                        json!({"id": format!("in-{i}"), "from": phone(worker), "text": text, "at_ms": at_ms})
                    })
                    .collect();
                let body = json!({"receipts": [], "inbound": inbound}).to_string();
                let signature = mhero_broker::signature::sign(&secret, body.as_bytes());
                let t = Instant::now();
                let r = client
                    .post(format!("{base}/webhooks/sandbox"))
                    .header("content-type", "application/json")
                    .header("x-sandbox-signature", signature)
                    .body(body)
                    .send()
                    .await?;
                let status = r.status();
                let _ = r.bytes().await?;
                if !status.is_success() {
                    bail!("webhook call {call} answered {status}");
                }
                latency.record(t.elapsed().as_micros() as u64)?;
            }
        }));
    }
    let mut call_latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for s in senders {
        call_latency.add(s.await??)?;
    }
    let stored_s = started.elapsed().as_secs_f64();
    let target = start_position + args.n;
    let mut watch = processed.clone();
    tokio::time::timeout(Duration::from_secs(600), watch.wait_for(|p| *p >= target))
        .await
        .context("the pipeline did not process every message in 10 minutes")??;
    let elapsed = started.elapsed().as_secs_f64();
    served.stop().await?;

    // Each message's time from its webhook call to its processed result,
    // and what the pipeline made of them.
    let store = Arc::clone(broker.store());
    let (latency, routes, answered, known, problems) = tokio::task::spawn_blocking(move || {
        let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000, 3)?;
        let mut routes = std::collections::BTreeMap::<String, u64>::new();
        let (mut answered, mut known, mut problems) = (0u64, 0u64, 0u64);
        let mut after = start_position;
        loop {
            let page = store.processed_inbound(after, 10_000)?;
            let Some(last) = page.last().map(|p| p.0) else {
                break;
            };
            for (_, m, r) in page {
                let sent = m.received_ms.unwrap_or(m.stored_ms);
                latency.record(r.processed_ms.saturating_sub(sent).max(1))?;
                *routes.entry(r.route).or_default() += 1;
                answered += u64::from(r.reply_to.is_some());
                known += u64::from(r.contact.is_some());
                problems += u64::from(!r.problems.is_empty());
            }
            after = last;
        }
        anyhow::Ok((latency, routes, answered, known, problems))
    })
    .await??;
    anyhow::ensure!(
        latency.len() == args.n,
        "{} processed, expected {}",
        latency.len(),
        args.n
    );
    let out = json!({
        "scenario": "inbound",
        "n": args.n,
        "workers": args.workers,
        "per_call": args.per_call,
        "concurrency": args.concurrency,
        "offered_per_s": if args.rate > 0.0 { json!(args.rate) } else { json!("unpaced") },
        "elapsed_s": round(elapsed, 3),
        "events_per_s": round(args.n as f64 / elapsed, 0),
        "stored_per_s": round(args.n as f64 / stored_s, 0),
        "p50_ms": latency.value_at_quantile(0.5),
        "p99_ms": latency.value_at_quantile(0.99),
        "max_ms": latency.max(),
        "call_p50_ms": round(call_latency.value_at_quantile(0.5) as f64 / 1000.0, 2),
        "call_p99_ms": round(call_latency.value_at_quantile(0.99) as f64 / 1000.0, 2),
        "routes": routes,
        "from_known_workers": known,
        "answering_the_campaign": answered,
        "with_problems": problems,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "path": "signed sandbox-gateway webhook calls (JSON, `per_call` replies each) over HTTP/1.1 on loopback (keep-alive) to the server of `mhero serve` with its defaults → sandbox connector handle-webhook (wasm) → inbound records (synced commit before the 200) → the inbound pipeline with its defaults: duplicate window, directory look-up by phone, the delivery each answers (every worker was sent a campaign first), the default classifier chain, keywords then stock-report (wasm, one call per classifier per message, a page per call, on a plugin thread), trigger routing, HELP answered by a high-lane campaign per page, STOCK reports counted for the sender's facility; the result and the pipeline's position in one synced commit per page",
        "latency_is": "from the webhook call carrying the message to its processed result (ms, wall clock)",
        "differs_from_production": "nothing in the broker; the gateway is this process posting what the sandbox gateway would",
        "data_dir": data_dir.display().to_string(),
        "filesystem": fs_type(&data_dir),
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
    });
    println!("{out}");
    drop(broker);
    Ok(())
}
