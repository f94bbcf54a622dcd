//! `loadgen kannel`: SMS through a real Kannel on loopback (Debian's
//! bearerbox and smsbox, `fakesmsc` as the operator's SMSC) with the
//! `kannel` connector, delivery reports back through the broker's webhook
//! over HTTP. Two phases: `--n` messages at the configured `--rate` (does
//! the channel hold its rate through a real gateway?), then `--max-n` with
//! no limit (the highest rate this Kannel takes here).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use mhero_benches::{fs_type, peak_rss_mb, round};
use mhero_broker::Broker;
use mhero_broker::api::{self, Api, Tokens};
use mhero_broker::config::ChannelConfig;
use mhero_broker::dispatch::{AudienceSpec, CampaignSpec, Recipient};
use mhero_proto::{CampaignId, DeliveryStatus, Lane};
use mhero_tests::kannel::{self, Kannel};
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct KannelArgs {
    /// Messages of the rated phase.
    #[arg(long, default_value_t = 20_000)]
    n: u32,
    /// The channel's configured rate in the rated phase (messages/s).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Messages of the unlimited phase; 0 skips it.
    #[arg(long, default_value_t = 20_000)]
    max_n: u32,
    /// Parent folder of the scratch store and Kannel's files.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print JSON (the only output format).
    #[arg(long)]
    json: bool,
}

const TOKEN: &str = "loadgen-kannel-callbacks";
const TEXT: &str = "Stock report due Friday: reply STOCK <item> <quantity>.";

pub fn run(args: &KannelArgs) -> Result<()> {
    if let Some(why) = kannel::missing() {
        bail!("{why}");
    }
    if args.n == 0 || args.rate <= 0.0 {
        bail!("--n and --rate must be > 0");
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench(args))
}

/// What one phase measured.
struct Phase {
    /// Messages per second between the first and the last hand-over.
    achieved: f64,
    delivered: u64,
    dead: u64,
    dlr_p50_ms: f64,
    dlr_p99_ms: f64,
    seconds: f64,
}

async fn bench(args: &KannelArgs) -> Result<()> {
    let scratch = mhero_benches::scratch(args.data_dir.as_deref())?;
    let sendsms_port = mhero_tests::free_port();
    // `mhero serve`'s defaults with one channel, `sms`, on the kannel
    // connector: at `--rate`, then without a limit.
    let mut config = mhero_broker::Config {
        data_dir: scratch.path().join("store"),
        ..mhero_broker::Config::default()
    };
    let settings = config.plugins.config.entry("kannel".into()).or_default();
    for (key, value) in [
        ("base_url", format!("http://127.0.0.1:{sendsms_port}")),
        ("username", "loadgen".into()),
        ("password", "loadgen-pass".into()),
        ("from", "4455".into()),
        ("webhook_token", TOKEN.into()),
    ] {
        settings.insert(key.into(), value.into());
    }
    let data_dir = config.data_dir.clone();
    let kannel = tokio::task::block_in_place(|| {
        Kannel::start(
            &scratch.path().join("kannel"),
            &kannel::Options {
                // Inbound SMS are not part of this run.
                webhook_url: "http://127.0.0.1:9/unused".into(),
                webhook_token: TOKEN.into(),
                username: "loadgen".into(),
                password: "loadgen-pass".into(),
                mo: None,
                sendsms_port,
            },
        )
    })?;
    let (first, differs) = phase(&config, args.rate, args.n, 0).await?;
    let second = if args.max_n > 0 {
        Some(phase(&config, 0.0, args.max_n, args.n).await?.0)
    } else {
        None
    };
    let received = kannel.received().len();
    let expected = args.n as usize + second.as_ref().map_or(0, |_| args.max_n as usize);
    let mut out = json!({
        "scenario": "kannel",
        "n": args.n,
        "rate": args.rate,
        "achieved_per_s": round(first.achieved, 1),
        "achieved_ratio": round(first.achieved / args.rate, 3),
        "delivered": first.delivered,
        "dead": first.dead,
        "dlr_p50_ms": first.dlr_p50_ms,
        "dlr_p99_ms": first.dlr_p99_ms,
        "seconds": round(first.seconds, 1),
        "smsc_received": received,
        "smsc_expected": expected,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "data_dir": data_dir.display().to_string(),
        "filesystem": fs_type(&data_dir),
        "differs": differs,
        "path": "a campaign of explicit recipients through the dispatcher (durable queue, GCRA at the channel's rate, window 64), the kannel connector's GET /cgi-bin/sendsms over HTTP/1.1 keep-alive to a real smsbox → bearerbox → fakesmsc (Debian's Kannel 1.4.5), delivery reports from smsbox to the broker's /webhooks/sms over HTTP, applied to the status records; dlr latency: from a delivery's hand-over to its `delivered` report applied",
        "bounds": "the broker, bearerbox, smsbox and fakesmsc share this machine's cores, and fakesmsc acknowledges at once (no radio network): the unlimited phase is bounded by Kannel's per-message work and the shared CPU, not by an operator's SMSC",
    });
    if let Some(max) = second {
        out["max_n"] = json!(args.max_n);
        out["max_per_s"] = json!(round(max.achieved, 1));
        out["max_delivered"] = json!(max.delivered);
        out["max_dead"] = json!(max.dead);
        out["max_dlr_p99_ms"] = json!(max.dlr_p99_ms);
        out["max_seconds"] = json!(round(max.seconds, 1));
    }
    drop(kannel);
    println!("{out}");
    drop(scratch);
    Ok(())
}

/// One campaign of `n` recipients (numbers from `first`) at `rate` (0: no
/// limit): the broker opened on `config`'s store with its HTTP API serving
/// the webhooks, closed again at the end.
async fn phase(
    config: &mhero_broker::Config,
    rate: f64,
    n: u32,
    first: u32,
) -> Result<(Phase, Value)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mut config = config.clone();
    config
        .plugins
        .config
        .entry("kannel".into())
        .or_default()
        .insert(
            "webhook_url".into(),
            format!("http://{}/webhooks/sms", listener.local_addr()?).into(),
        );
    config.channels.insert(
        "sms".into(),
        ChannelConfig {
            connector: "kannel".into(),
            rate,
            ..ChannelConfig::default()
        },
    );
    let differs = mhero_benches::config_diff(&config);
    let broker = Arc::new(Broker::open(config).await?);
    let tokens = Arc::new(Tokens::open(Arc::clone(broker.store().engine()))?);
    let api = Arc::new(Api::new(Arc::clone(&broker), tokens));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(listener, api, async {
        let _ = stopped.await;
    }));
    let recipients = (first..first + n)
        .map(|i| Recipient {
            phone: Some(format!("+23177{:07}", 1_000_000 + i)),
            ..Recipient::default()
        })
        .collect();
    let spec = CampaignSpec {
        audience: AudienceSpec::Recipients(recipients),
        ..CampaignSpec::generated("loadgen kannel", Lane::Normal, TEXT, 0, &["sms"])
    };
    let started = Instant::now();
    let id = broker.dispatcher().submit(spec).await?.id;
    // Until every delivery has its final report (or is dead).
    let deadline = started + Duration::from_secs(600 + u64::from(n) / rate.max(1.0) as u64);
    loop {
        let p = broker
            .dispatcher()
            .progress(id)
            .context("campaign vanished")?;
        if p.done && p.delivered + p.dead + p.failed >= u64::from(n) {
            break;
        }
        if Instant::now() > deadline {
            bail!("not finished after {:?}: {p:?}", started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let result = measure(&broker, id, n, seconds)?;
    let _ = stop.send(());
    server.await??;
    let Some(broker) = api::release(broker, Duration::from_secs(10)).await else {
        bail!("the broker was still in use after the server stopped");
    };
    broker.shutdown().await;
    Ok((result, differs))
}

/// The rate between the first and the last hand-over, and each delivery's
/// report latency, from the status records.
fn measure(broker: &Broker, id: CampaignId, n: u32, seconds: f64) -> Result<Phase> {
    let mut dlr = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3)?;
    let (mut first, mut last) = (u64::MAX, 0u64);
    let (mut delivered, mut dead) = (0u64, 0u64);
    broker
        .dispatcher()
        .store()
        .scan_statuses(id, &mut |_, rec| {
            first = first.min(rec.sent_ms);
            last = last.max(rec.sent_ms);
            if rec.status == DeliveryStatus::Delivered {
                delivered += 1;
                dlr.saturating_record(rec.updated_ms.saturating_sub(rec.sent_ms).max(1));
            }
            Ok(true)
        })?;
    if let Some(p) = broker.dispatcher().progress(id) {
        dead = p.dead;
    }
    // n hand-overs span n - 1 intervals.
    let span_s = (last.saturating_sub(first) as f64 / 1000.0).max(0.001);
    Ok(Phase {
        achieved: f64::from(n.saturating_sub(1)) / span_s,
        delivered,
        dead,
        dlr_p50_ms: dlr.value_at_quantile(0.5) as f64,
        dlr_p99_ms: dlr.value_at_quantile(0.99) as f64,
        seconds,
    })
}
