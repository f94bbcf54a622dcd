//! `mhero demo`: the real server on the embedded store, driven through
//! its API as an integrator would: a generated iHRIS registry posted to
//! the FHIR facade (imported through the mapper plugin), a bulk update
//! selected by role and an emergency alert selected by district submitted
//! to `/v1/campaigns`, progress bars read from the API, and a final
//! per-status report. Channels are the sandbox connector's (a simulated
//! gateway inside the broker, whose receipts come back through the webhook
//! entry point) unless the config names others. The dashboard is served
//! while it runs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use mhero_broker::api::{self, Api, Role, Tokens};
use mhero_broker::channel::SandboxConfig;
use mhero_broker::config::ChannelConfig;
use mhero_broker::dispatch::{AudienceSpec, Body, CampaignSpec, GeneratedAudience};
use mhero_broker::{Broker, Config};
use mhero_proto::Lane;
use serde_json::{Value, json};

use crate::api_client::ApiClient;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Health workers in the generated registry (or, with `--generated`,
    /// in the generated audience).
    #[arg(long, default_value_t = 100_000)]
    recipients: u32,
    /// Who gets the bulk update.
    #[arg(long, default_value = BULK_SELECTOR)]
    bulk_selector: String,
    /// Who gets the emergency alert: a district.
    #[arg(long, default_value = ALERT_SELECTOR)]
    alert_selector: String,
    /// Send to a generated audience (recipient i derived from i, 30 % not on
    /// WhatsApp) instead of the directory, as the benchmarks do: nothing is
    /// imported or read per recipient.
    #[arg(long)]
    generated: bool,
    /// With `--generated`: the share (percent) that receives the alert.
    #[arg(long, default_value_t = 10)]
    alert_percent: u32,
    /// When the alert goes out, after the bulk update started (ms).
    #[arg(long, default_value_t = 1500)]
    alert_after_ms: u64,
    /// Send rate of each demo channel, messages (or SMS segments) per second.
    #[arg(long, default_value_t = 8000.0)]
    rate: f64,
    /// Keep the store in `data_dir` (and resume what it holds) instead of
    /// a scratch folder.
    #[arg(long)]
    keep: bool,
    /// No progress bars; only the report.
    #[arg(long)]
    quiet: bool,
    /// Where the demo's server listens (its dashboard is at `/`); a free
    /// port is taken when this one is in use.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

const BULK: &str = "demo: monthly stock-report reminder";
const ALERT: &str = "demo: cholera alert";
/// The cadres that report stock.
const BULK_SELECTOR: &str = "role:nurse OR role:chw OR role:midwife OR role:pharmacist";
/// A district of Bong county in the generated registry.
const ALERT_SELECTOR: &str = "location:D-bong-0";

/// The channels the demo uses when the config names none: WhatsApp first,
/// SMS as the fallback, both simulated.
fn demo_channels(rate: f64) -> BTreeMap<String, ChannelConfig> {
    let whatsapp = ChannelConfig {
        rate,
        burst: 50,
        count_segments: Some(false),
        // Some numbers turn out not to be on WhatsApp only when sent to:
        // they fall back to SMS.
        sandbox: SandboxConfig {
            unknown_percent: 5.0,
            receipt_delay_ms: 300,
            read_percent: 60.0,
            reply_percent: 3.0,
            ..SandboxConfig::default()
        },
        ..ChannelConfig::default()
    };
    let sms = ChannelConfig {
        rate,
        burst: 50,
        sandbox: SandboxConfig {
            unknown_percent: 0.3,
            receipt_delay_ms: 500,
            undelivered_percent: 1.0,
            ..SandboxConfig::default()
        },
        ..ChannelConfig::default()
    };
    [("whatsapp".to_string(), whatsapp), ("sms".to_string(), sms)].into()
}

fn bulk(audience: AudienceSpec, channels: &[String]) -> CampaignSpec {
    let mut body = Body::text(
        "Reminder: send this month's stock report (ORS, zinc, ACT, RDTs) by Friday. Reply with the count of each.",
    );
    body.variants.insert(
        "fr".into(),
        "Rappel : envoyez le rapport de stock du mois (SRO, zinc, ACT, TDR) avant vendredi.".into(),
    );
    body.variants.insert(
        "sw".into(),
        "Kumbusho: tuma ripoti ya akiba ya mwezi huu (ORS, zinki, ACT, RDT) kabla ya Ijumaa."
            .into(),
    );
    CampaignSpec {
        name: BULK.into(),
        lane: Lane::Bulk,
        body,
        channels: channels.to_vec(),
        audience,
        expires_at_ms: None,
        start_at_ms: None,
    }
}

fn generated(count: u32, languages: &[&str]) -> AudienceSpec {
    AudienceSpec::Generated(GeneratedAudience {
        count,
        languages: languages.iter().map(|l| l.to_string()).collect(),
        not_on_percent: [("whatsapp".to_string(), 30.0)].into(),
        prefix: "+2317".into(),
    })
}

fn alert(audience: AudienceSpec, channels: &[String]) -> CampaignSpec {
    let mut body = Body::text(
        "URGENT: suspected cholera cases in Bong County. Report any acute watery diarrhoea today. Reply YES when read.",
    );
    body.variants.insert("fr".into(), "URGENT : cas suspects de choléra dans le comté de Bong. Signalez toute diarrhée aqueuse aiguë aujourd'hui.".into());
    CampaignSpec {
        name: ALERT.into(),
        lane: Lane::Emergency,
        body,
        channels: channels.to_vec(),
        audience,
        expires_at_ms: None,
        start_at_ms: None,
    }
}

pub fn run(mut config: Config, args: &DemoArgs) -> Result<()> {
    let scratch = if args.keep {
        None
    } else {
        Some(tempfile::tempdir().context("creating a scratch folder for the demo store")?)
    };
    if let Some(dir) = &scratch {
        config.data_dir = dir.path().join("store");
    }
    if config.channels.is_empty() {
        config.channels = demo_channels(args.rate);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(demo(config, args))
}

async fn demo(config: Config, args: &DemoArgs) -> Result<()> {
    let broker = Broker::open(config).await?;
    let config = broker.config().clone();
    let recovery = broker.recovery().clone();
    println!(
        "mHero demo: store {} ({} engine, {} durability); channels: {}",
        config.data_dir.display(),
        format!("{:?}", config.store.engine).to_lowercase(),
        format!("{:?}", config.store.durability).to_lowercase(),
        config
            .channels
            .iter()
            .map(|(n, c)| format!("{n} via {} at {}/s", c.connector, c.rate))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let simulated: Vec<String> = config
        .channels
        .keys()
        .filter(|c| broker.sandbox(c).is_some())
        .cloned()
        .collect();
    if !simulated.is_empty() {
        println!(
            "({} through the sandbox gateway, a simulator inside the broker: nothing reaches a phone)",
            simulated.join(", ")
        );
    }
    if recovery.requeued > 0 {
        println!(
            "recovered {} deliveries leased before the last stop; they are re-sent (the gateway de-duplicates them)",
            recovery.requeued
        );
    }

    // The real server, with a token made for this run (revoked at the end).
    let tokens = Arc::new(Tokens::open(Arc::clone(broker.store().engine()))?);
    let (secret, token) = tokens.create(Role::Admin, "mhero demo", broker.dispatcher().now_ms())?;
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            println!(
                "({} is taken ({e}); serving on a free port instead)",
                args.listen
            );
            tokio::net::TcpListener::bind((args.listen.ip(), 0)).await?
        }
    };
    let addr = listener.local_addr()?;
    let broker = Arc::new(broker);
    let server_api = Arc::new(Api::new(Arc::clone(&broker), Arc::clone(&tokens)));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(listener, server_api, async move {
        let _ = stopped.await;
    }));
    let client = ApiClient::new(&format!("http://{addr}"), &secret)?;
    println!(
        "dashboard: http://{addr}/#token={secret}  (open it while the demo runs; the token is revoked when it ends)"
    );

    let outcome = drive(&broker, &client, args, &simulated).await;
    let _ = tokens.revoke(&token.id);
    let _ = stop.send(());
    server.await.context("the API server task")??;
    let Some(broker) = api::release(broker, Duration::from_secs(10)).await else {
        anyhow::bail!("the broker is still in use 10 s after the server stopped");
    };
    broker.shutdown().await;
    outcome?;
    if args.keep {
        println!(
            "store kept: `mhero status --data-dir {}` shows it; dead letters keep their reason and history.",
            config.data_dir.display()
        );
    }
    Ok(())
}

/// The demo through the API: directory in through the FHIR facade,
/// campaigns through `/v1/campaigns`, progress read back from it.
async fn drive(
    broker: &Broker,
    client: &ApiClient,
    args: &DemoArgs,
    simulated: &[String],
) -> Result<()> {
    let dispatcher = broker.dispatcher();
    let channels: Vec<String> = broker.config().channels.keys().rev().cloned().collect();
    let existing = client.get("/v1/campaigns?limit=1000").await?;
    let find = |name: &str| {
        existing
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .and_then(|p| p["id"].as_str().map(str::to_string))
    };

    if !args.generated && find(BULK).is_none() {
        import_registry(client, args).await?;
    }
    let started = Instant::now();
    let bulk_id = match find(BULK) {
        Some(id) => id,
        None if args.generated => {
            // A generated audience is the benchmarks' tool, not an API
            // concept: submitted to the dispatcher directly.
            let audience = generated(args.recipients, &["en", "fr", "sw", "en"]);
            dispatcher
                .submit(bulk(audience, &channels))
                .await?
                .id
                .to_string()
        }
        None => {
            let spec = bulk(
                AudienceSpec::Selector(args.bulk_selector.clone()),
                &channels,
            );
            submit(client, &spec, &args.bulk_selector).await?
        }
    };
    let bars = Bars::new(args.quiet);
    bars.add(client, &bulk_id).await?;
    let alert_count =
        (u64::from(args.recipients) * u64::from(args.alert_percent.min(100)) / 100) as u32;
    let mut alert_id = find(ALERT);
    let mut alert_submitted = None;
    if alert_id.is_none() && (alert_count > 0 || !args.generated) {
        tokio::time::sleep(Duration::from_millis(args.alert_after_ms)).await;
        alert_submitted = Some(Instant::now());
        // Alerts go by SMS, which every phone receives.
        let via = if channels.iter().any(|c| c == "sms") {
            vec!["sms".to_string()]
        } else {
            channels.clone()
        };
        alert_id = Some(if args.generated {
            let audience = generated(alert_count, &["en", "fr"]);
            dispatcher
                .submit(alert(audience, &via))
                .await?
                .id
                .to_string()
        } else {
            let spec = alert(AudienceSpec::Selector(args.alert_selector.clone()), &via);
            submit(client, &spec, &args.alert_selector).await?
        });
    }
    if let Some(id) = &alert_id {
        bars.add(client, id).await?;
    }
    let ids: Vec<String> = [Some(bulk_id), alert_id.clone()]
        .into_iter()
        .flatten()
        .collect();
    let mut first_alert_send = None;
    loop {
        let shown = bars.update(client).await?;
        if first_alert_send.is_none()
            && let (Some(id), Some(at)) = (&alert_id, alert_submitted)
            && shown
                .iter()
                .any(|p| p["id"] == id.as_str() && count(p, "wired") + count(p, "sent") > 0)
        {
            first_alert_send = Some(at.elapsed());
        }
        if shown.len() == ids.len() && shown.iter().all(|p| p["done"] == true) {
            break;
        }
        // Watch closely until the alert's first send, to time it.
        let watching = alert_submitted.is_some() && first_alert_send.is_none();
        tokio::time::sleep(Duration::from_millis(if watching { 2 } else { 50 })).await;
    }
    let sent_in = started.elapsed();
    // Give the simulated gateways' last receipts time to arrive.
    let drain = Instant::now();
    while drain.elapsed() < Duration::from_secs(3)
        && simulated.iter().any(|c| {
            dispatcher
                .sandbox(c)
                .is_some_and(|g| g.pending_webhook_events() > 0)
        })
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(
        2 * broker.config().dispatch.receipt_poll_ms,
    ))
    .await;
    let report = bars.finish(client).await?;
    print_report(&report, sent_in, first_alert_send);
    for c in simulated {
        if let Some(g) = dispatcher.sandbox(c) {
            let s = g.stats();
            println!(
                "  gateway {c:<9} accepted {:>7}  duplicates {:>4}  throttled {:>5}  unknown numbers {:>4}  receipts {:>7}  replies {:>5}",
                s.accepted, s.duplicates, s.throttled, s.unknown, s.receipts, s.replies
            );
        }
    }
    Ok(())
}

/// `POST /v1/campaigns` with a selector audience; the campaign's id.
async fn submit(client: &ApiClient, spec: &CampaignSpec, selector: &str) -> Result<String> {
    let request = json!({
        "name": spec.name,
        "lane": spec.lane.as_str(),
        "body": spec.body,
        "channels": spec.channels,
        "audience": {"selector": selector},
    });
    let created = client
        .post("/v1/campaigns", &request, "application/json")
        .await
        .with_context(|| format!("submitting {}", spec.name))?;
    created["id"]
        .as_str()
        .map(str::to_string)
        .context("the server's answer has no campaign id")
}

fn count(p: &Value, field: &str) -> u64 {
    p[field].as_u64().unwrap_or(0)
}

/// A generated iHRIS registry of `--recipients` workers (a four-level
/// location tree, roles, groups, 2 % noisy numbers, 3 % retired), posted
/// as FHIR batch Bundles to the server's `/fhir/r4`, which imports them
/// into the directory through the `ihris-practitioner` mapper. Importing
/// again is harmless: unchanged workers are not rewritten.
async fn import_registry(client: &ApiClient, args: &DemoArgs) -> Result<()> {
    use mhero_broker::directory::generate::{Registry, as_batch};
    let reg = Registry {
        noise_percent: 2.0,
        retired_percent: 3.0,
        ..Registry::new(args.recipients)
    };
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(u64::from(reg.pages()))
    };
    bar.set_style(ProgressStyle::with_template(
        "{prefix:<42} {bar:32.green/blue} {pos:>7}/{len:7} pages {msg}",
    )?);
    bar.set_prefix("directory: generated iHRIS registry");
    let started = Instant::now();
    let path = "/fhir/r4?source=demo-ihris&mapper=ihris-practitioner";
    let mut refused = 0usize;
    let mut post = async |bundle: Value| -> Result<()> {
        let answer = client
            .post(path, &as_batch(&bundle), "application/fhir+json")
            .await?;
        refused += answer["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["response"]["status"] != "200 OK")
            .count();
        Ok(())
    };
    post(reg.places_bundle()).await?;
    for page in 0..reg.pages() {
        post(reg.practitioners_page(page)).await?;
        bar.inc(1);
    }
    post(reg.groups_bundle()).await?;
    bar.finish_and_clear();
    let summary = client.get("/v1/directory").await?;
    println!(
        "directory: {} health workers imported from a generated iHRIS registry through {}/fhir/r4 in {:.1} s ({refused} entries refused with their reason, {} workers unreachable); `mhero contacts count` selects from it",
        count(&summary, "contacts"),
        client.base(),
        started.elapsed().as_secs_f64(),
        count(&summary, "unreachable"),
    );
    for (name, selector) in [
        ("bulk", &args.bulk_selector),
        ("alert", &args.alert_selector),
    ] {
        let c = client
            .post(
                "/v1/audience/count",
                &json!({"selector": selector}),
                "application/json",
            )
            .await?;
        println!("  {name}: {selector}  →  {} workers", count(&c, "selected"));
    }
    Ok(())
}

fn print_report(report: &[Value], elapsed: Duration, first_alert_send: Option<Duration>) {
    println!();
    println!(
        "{:<8} {:<38} {:>9} {:>8} {:>9} {:>8} {:>7} {:>6} {:>6} {:>7} {:>8}",
        "campaign",
        "name",
        "lane",
        "total",
        "delivered",
        "read",
        "failed",
        "dead",
        "wired",
        "retries",
        "rerouted"
    );
    let mut total = 0;
    for p in report {
        total += count(p, "total");
        println!(
            "{:<8} {:<38} {:>9} {:>8} {:>9} {:>8} {:>7} {:>6} {:>6} {:>7} {:>8}",
            p["id"].as_str().unwrap_or(""),
            p["name"].as_str().unwrap_or(""),
            p["lane"].as_str().unwrap_or(""),
            count(p, "total"),
            count(p, "delivered"),
            count(p, "read"),
            count(p, "failed"),
            count(p, "dead"),
            count(p, "wired") + count(p, "sent"),
            count(p, "retries"),
            count(p, "rerouted")
        );
    }
    let secs = elapsed.as_secs_f64();
    println!();
    println!(
        "{total} recipients reached or accounted for in {secs:.2} s ({:.0}/s through the dispatcher)",
        total as f64 / secs
    );
    if let Some(t) = first_alert_send {
        println!(
            "the emergency alert jumped the bulk backlog: first send {:.0} ms after it was submitted",
            t.as_secs_f64() * 1000.0
        );
    }
}

/// One progress bar per campaign, fed from `GET /v1/campaigns/{id}`.
struct Bars {
    multi: MultiProgress,
    bars: parking_lot::Mutex<Vec<(String, ProgressBar)>>,
}

impl Bars {
    fn new(quiet: bool) -> Self {
        let multi = MultiProgress::new();
        if quiet {
            multi.set_draw_target(ProgressDrawTarget::hidden());
        }
        Self {
            multi,
            bars: parking_lot::Mutex::new(Vec::new()),
        }
    }

    async fn add(&self, client: &ApiClient, id: &str) -> Result<()> {
        let p = client.get(&format!("/v1/campaigns/{id}")).await?;
        let style = ProgressStyle::with_template(
            "{prefix:<42} {bar:32.cyan/blue} {pos:>7}/{len:7} {per_sec:>11} {msg}",
        )
        .expect("valid progress template")
        .progress_chars("█▉▊▋▌▍▎▏ ");
        let bar = self.multi.add(ProgressBar::new(count(&p, "total")));
        bar.set_style(style);
        bar.set_prefix(format!(
            "{} {} ({})",
            id,
            p["name"]
                .as_str()
                .unwrap_or("")
                .trim_start_matches("demo: "),
            p["lane"].as_str().unwrap_or("")
        ));
        self.bars.lock().push((id.to_string(), bar));
        Ok(())
    }

    /// Reads each campaign and moves its bar; what was read.
    async fn update(&self, client: &ApiClient) -> Result<Vec<Value>> {
        let ids: Vec<String> = self.bars.lock().iter().map(|(id, _)| id.clone()).collect();
        let mut shown = Vec::with_capacity(ids.len());
        for id in ids {
            let p = client.get(&format!("/v1/campaigns/{id}")).await?;
            if let Some((_, bar)) = self.bars.lock().iter().find(|(i, _)| *i == id) {
                bar.set_position(count(&p, "fanned_out").saturating_sub(count(&p, "queued")));
                bar.set_message(format!(
                    "delivered {} · retries {} · rerouted {}",
                    count(&p, "delivered") + count(&p, "read"),
                    count(&p, "retries"),
                    count(&p, "rerouted")
                ));
            }
            shown.push(p);
        }
        Ok(shown)
    }

    async fn finish(&self, client: &ApiClient) -> Result<Vec<Value>> {
        let shown = self.update(client).await?;
        for (_, bar) in self.bars.lock().iter() {
            bar.finish();
        }
        Ok(shown)
    }
}
