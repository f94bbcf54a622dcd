//! `mhero demo`: a generated iHRIS registry imported into the directory
//! through the mapper plugin, a bulk update selected by role and an
//! emergency alert selected by district, through the broker (opened with
//! [`Broker::open`], as every entry point does) and the sandbox connector
//! (a simulated gateway inside the broker, whose receipts come back
//! through the webhook entry point), with a progress bar per campaign and a
//! final per-status report.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use mhero_broker::channel::SandboxConfig;
use mhero_broker::config::ChannelConfig;
use mhero_broker::dispatch::{
    AudienceSpec, Body, CampaignSpec, Dispatcher, GeneratedAudience, Progress,
};
use mhero_broker::{Broker, Config};
use mhero_proto::{CampaignId, Lane};

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
    let simulated: Vec<&str> = config
        .channels
        .keys()
        .filter(|c| broker.sandbox(c).is_some())
        .map(String::as_str)
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
    let dispatcher = broker.dispatcher();
    let channels: Vec<String> = config.channels.keys().rev().cloned().collect();
    let existing = dispatcher.all_progress();
    let find = |name: &str| {
        existing
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| p.id.parse::<CampaignId>().ok())
    };

    if !args.generated && find(BULK).is_none() {
        import_registry(&broker, args).await?;
    }
    let started = Instant::now();
    let bulk_id = match find(BULK) {
        Some(id) => id,
        None => {
            let audience = if args.generated {
                generated(args.recipients, &["en", "fr", "sw", "en"])
            } else {
                AudienceSpec::Selector(args.bulk_selector.clone())
            };
            dispatcher.submit(bulk(audience, &channels)).await?.id
        }
    };
    let bars = Bars::new(args.quiet);
    bars.add(bulk_id, dispatcher);
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
        let audience = if args.generated {
            generated(alert_count, &["en", "fr"])
        } else {
            AudienceSpec::Selector(args.alert_selector.clone())
        };
        alert_id = Some(dispatcher.submit(alert(audience, &via)).await?.id);
    }
    if let Some(id) = alert_id {
        bars.add(id, dispatcher);
    }
    let ids: Vec<CampaignId> = [Some(bulk_id), alert_id].into_iter().flatten().collect();
    let mut first_alert_send = None;
    loop {
        bars.update(dispatcher);
        if first_alert_send.is_none()
            && let (Some(id), Some(at)) = (alert_id, alert_submitted)
            && dispatcher.progress(id).is_some_and(|p| p.wired > 0)
        {
            first_alert_send = Some(at.elapsed());
        }
        if ids
            .iter()
            .all(|id| dispatcher.progress(*id).is_some_and(|p| p.done))
        {
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
        && channels.iter().any(|c| {
            dispatcher
                .sandbox(c)
                .is_some_and(|g| g.pending_webhook_events() > 0)
        })
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(2 * config.dispatch.receipt_poll_ms)).await;
    bars.finish(dispatcher);
    let report: Vec<Progress> = ids
        .iter()
        .filter_map(|id| dispatcher.progress(*id))
        .collect();
    print_report(&report, sent_in, first_alert_send);
    for c in &channels {
        if let Some(g) = dispatcher.sandbox(c) {
            let s = g.stats();
            println!(
                "  gateway {c:<9} accepted {:>7}  duplicates {:>4}  throttled {:>5}  unknown numbers {:>4}  receipts {:>7}  replies {:>5}",
                s.accepted, s.duplicates, s.throttled, s.unknown, s.receipts, s.replies
            );
        }
    }
    broker.shutdown().await;
    if args.keep {
        println!(
            "store kept: `mhero status --data-dir {}` shows it; dead letters keep their reason and history.",
            config.data_dir.display()
        );
    }
    Ok(())
}

/// A generated iHRIS registry of `--recipients` workers (a four-level
/// location tree, roles, groups, 2 % noisy numbers, 3 % retired), as FHIR
/// Bundles through the `ihris-practitioner` mapper into the directory.
/// Importing again is harmless: unchanged workers are not rewritten.
async fn import_registry(broker: &Broker, args: &DemoArgs) -> Result<()> {
    use mhero_broker::directory::generate::Registry;
    use mhero_broker::directory::{ImportReport, sync};
    let reg = Registry {
        noise_percent: 2.0,
        retired_percent: 3.0,
        ..Registry::new(args.recipients)
    };
    let mapper = broker
        .plugins()
        .require("ihris-practitioner", mhero_broker::plugin::Kind::FhirMapper)?;
    let dir = std::sync::Arc::clone(broker.directory());
    let country = broker.config().dispatch.default_country.clone();
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
    let b = bar.clone();
    let report = tokio::task::spawn_blocking(move || -> Result<ImportReport> {
        let mut total = ImportReport::default();
        let mut import = |doc: serde_json::Value| -> Result<()> {
            let (r, _) =
                sync::import_document(&dir, &mapper, "demo-ihris", &country, &doc.to_string())?;
            total.absorb(r);
            Ok(())
        };
        import(reg.places_bundle())?;
        for page in 0..reg.pages() {
            import(reg.practitioners_page(page))?;
            b.inc(1);
        }
        import(reg.groups_bundle())?;
        Ok(total)
    })
    .await??;
    bar.finish_and_clear();
    println!(
        "directory: {} health workers imported from a generated iHRIS registry in {:.1} s ({} numbers refused with their reason, {} numbers shared by two records, {} unreachable); `mhero contacts count` selects from it",
        report.contacts(),
        started.elapsed().as_secs_f64(),
        report.problems.len(),
        report.duplicates.len(),
        report.unreachable.len()
    );
    for (name, selector) in [
        ("bulk", &args.bulk_selector),
        ("alert", &args.alert_selector),
    ] {
        let c = broker.directory().count(selector, &[])?;
        println!("  {name}: {selector}  →  {} workers", c.selected);
    }
    Ok(())
}

fn print_report(report: &[Progress], elapsed: Duration, first_alert_send: Option<Duration>) {
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
        total += p.total;
        println!(
            "{:<8} {:<38} {:>9} {:>8} {:>9} {:>8} {:>7} {:>6} {:>6} {:>7} {:>8}",
            p.id,
            p.name,
            p.lane,
            p.total,
            p.delivered,
            p.read,
            p.failed,
            p.dead,
            p.wired + p.sent,
            p.retries,
            p.rerouted
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

/// One progress bar per campaign.
struct Bars {
    multi: MultiProgress,
    bars: parking_lot::Mutex<Vec<(CampaignId, ProgressBar)>>,
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

    fn add(&self, id: CampaignId, dispatcher: &Dispatcher) {
        let Some(p) = dispatcher.progress(id) else {
            return;
        };
        let style = ProgressStyle::with_template(
            "{prefix:<42} {bar:32.cyan/blue} {pos:>7}/{len:7} {per_sec:>11} {msg}",
        )
        .expect("valid progress template")
        .progress_chars("█▉▊▋▌▍▎▏ ");
        let bar = self.multi.add(ProgressBar::new(p.total));
        bar.set_style(style);
        bar.set_prefix(format!(
            "{} {} ({})",
            p.id,
            p.name.trim_start_matches("demo: "),
            p.lane
        ));
        self.bars.lock().push((id, bar));
    }

    fn update(&self, dispatcher: &Dispatcher) {
        for (id, bar) in self.bars.lock().iter() {
            if let Some(p) = dispatcher.progress(*id) {
                bar.set_position(p.fanned_out.saturating_sub(p.queued));
                bar.set_message(format!(
                    "delivered {} · retries {} · rerouted {}",
                    p.delivered + p.read,
                    p.retries,
                    p.rerouted
                ));
            }
        }
    }

    fn finish(&self, dispatcher: &Dispatcher) {
        self.update(dispatcher);
        for (_, bar) in self.bars.lock().iter() {
            bar.finish();
        }
    }
}
