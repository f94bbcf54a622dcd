//! Dispatch on tokio's paused clock: the in-memory store, the real plugin
//! host and the sandbox connector against the simulated gateway.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mhero_proto::{DeliveryId, DeliveryStatus, Lane};

use super::*;
use crate::channel::SandboxConfig;
use crate::config::ChannelConfig;
use crate::metrics::Metrics;
use crate::plugin::{HostOptions, PluginHost, PluginMetrics};
use crate::store::{MemoryEngine, Store};

struct World {
    dispatcher: Dispatcher,
    store: Arc<Store>,
    metrics: Metrics,
}

fn plugins() -> PluginHost {
    let host = PluginHost::new(HostOptions::default(), PluginMetrics::default()).unwrap();
    host.load_builtins().unwrap();
    host
}

fn channel(rate: f64, sandbox: SandboxConfig) -> ChannelConfig {
    ChannelConfig {
        rate,
        burst: 1,
        sandbox: SandboxConfig {
            receipts: false,
            ..sandbox
        },
        retry: RetryPolicy {
            backoff_ms: vec![1000, 2000, 4000],
            jitter: 0.0,
            max_attempts: 3,
        },
        ..ChannelConfig::default()
    }
}

fn world(channels: BTreeMap<String, ChannelConfig>) -> World {
    let clock = TokioClock::at(1_800_000_000_000);
    let metrics = Metrics::new();
    let (store, _) = Store::open(
        Arc::new(MemoryEngine::new()),
        Arc::new(clock),
        metrics.store.clone(),
    )
    .unwrap();
    let store = Arc::new(store);
    let config = DispatchConfig {
        fanout_page: 200,
        fanout_ahead: 1000,
        ..DispatchConfig::default()
    };
    let dispatcher = Dispatcher::start(
        Arc::clone(&store),
        &plugins(),
        &channels,
        config,
        clock,
        metrics.dispatch.clone(),
    )
    .unwrap();
    World {
        dispatcher,
        store,
        metrics,
    }
}

fn sms(rate: f64) -> BTreeMap<String, ChannelConfig> {
    [("sms".to_string(), channel(rate, SandboxConfig::default()))].into()
}

fn generated(name: &str, lane: Lane, count: u32, channels: &[&str]) -> CampaignSpec {
    CampaignSpec::generated(
        name,
        lane,
        "Cholera alert: report suspected cases today.",
        count,
        channels,
    )
}

impl World {
    async fn submit(&self, spec: CampaignSpec) -> mhero_proto::CampaignId {
        self.dispatcher.submit(spec).await.unwrap().id
    }
}

async fn run_for(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test(start_paused = true)]
async fn an_emergency_overtakes_a_bulk_backlog() {
    let w = world(sms(100.0));
    let bulk = w
        .submit(generated("bulk", Lane::Bulk, 2000, &["sms"]))
        .await;
    run_for(2000).await;
    let bulk_before = w.dispatcher.progress(bulk).unwrap().wired;
    assert!((150..=250).contains(&bulk_before), "{bulk_before}");
    let alert = w
        .submit(generated("alert", Lane::Emergency, 50, &["sms"]))
        .await;
    run_for(100).await;
    let first = w.dispatcher.progress(alert).unwrap().wired;
    assert!(
        first >= 5,
        "emergency sends start within one round: {first}"
    );
    assert!(
        w.dispatcher
            .wait_done(&[alert], Duration::from_secs(2))
            .await,
        "50 at 100/s take 0.5 s"
    );
    let bulk_during = w.dispatcher.progress(bulk).unwrap().wired - bulk_before;
    assert!(
        bulk_during <= 10,
        "bulk sent {bulk_during} while the alert was going out"
    );
    w.dispatcher.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn campaigns_in_a_lane_share_the_channel_fairly() {
    let w = world(sms(200.0));
    let a = w.submit(generated("a", Lane::Normal, 1000, &["sms"])).await;
    let b = w.submit(generated("b", Lane::Normal, 1000, &["sms"])).await;
    run_for(3000).await;
    let (pa, pb) = (
        w.dispatcher.progress(a).unwrap().wired,
        w.dispatcher.progress(b).unwrap().wired,
    );
    assert!((500..=700).contains(&(pa + pb)), "{pa} + {pb}");
    assert!(pa.abs_diff(pb) <= 10, "{pa} vs {pb}");
    w.dispatcher.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_rate_counts_sms_segments() {
    let w = world(sms(100.0));
    let mut spec = generated("long", Lane::Normal, 400, &["sms"]);
    spec.body = Body::text(&"Two segments of GSM-7 text. ".repeat(8)); // 224 septets: 2 parts
    let id = w.submit(spec).await;
    run_for(4000).await;
    let wired = w.dispatcher.progress(id).unwrap().wired;
    assert!(
        (190..=210).contains(&wired),
        "100 segments/s of 2-part messages is 50/s: {wired} in 4 s"
    );
    w.dispatcher.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_then_become_dead_letters_with_their_history() {
    let w = world(
        [(
            "sms".to_string(),
            channel(
                0.0,
                SandboxConfig {
                    error_percent: 100.0,
                    ..SandboxConfig::default()
                },
            ),
        )]
        .into(),
    );
    let id = w.submit(generated("x", Lane::High, 3, &["sms"])).await;
    run_for(500).await;
    let p = w.dispatcher.progress(id).unwrap();
    assert_eq!(
        (p.retries, p.dead),
        (3, 0),
        "one failed attempt each, then waiting: never an immediate retry"
    );
    run_for(1000).await;
    assert_eq!(
        w.dispatcher.progress(id).unwrap().retries,
        6,
        "second attempt after the 1 s backoff"
    );
    run_for(2500).await;
    let p = w.dispatcher.progress(id).unwrap();
    assert_eq!(
        (p.dead, p.queued),
        (3, 0),
        "third attempt fails and max_attempts = 3"
    );
    assert!(p.done);
    let dead = w.store.dead_letters(None, 10).unwrap();
    assert_eq!(dead.len(), 3);
    assert!(
        dead[0].reason.starts_with("gave up after 3 attempts"),
        "{}",
        dead[0].reason
    );
    assert_eq!(dead[0].item.history.len(), 2);
    assert!(
        dead[0].item.history[0].reason.contains("503"),
        "{:?}",
        dead[0].item.history
    );
    let text = w.metrics.encode();
    assert!(
        text.contains(r#"mhero_dispatch_retries_total{channel="sms",reason="transient"} 6"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"mhero_dispatch_deliveries_total{channel="sms",lane="high",outcome="dead"} 3"#
        ),
        "{text}"
    );
    w.dispatcher.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn throttling_pauses_the_channel_and_every_message_still_goes() {
    let gateway = SandboxConfig {
        throttle_percent: 20.0,
        retry_after_s: 1,
        ..SandboxConfig::default()
    };
    let mut ch = channel(200.0, gateway);
    // Enough attempts that no message is throttled every time.
    ch.retry.max_attempts = 12;
    let w = world([("sms".to_string(), ch)].into());
    let id = w.submit(generated("x", Lane::Normal, 300, &["sms"])).await;
    assert!(
        w.dispatcher
            .wait_done(&[id], Duration::from_secs(120))
            .await
    );
    let p = w.dispatcher.progress(id).unwrap();
    assert_eq!((p.wired, p.dead), (300, 0));
    assert!(p.retries > 0);
    let stats = w.dispatcher.sandbox("sms").unwrap().stats();
    assert!(stats.throttled > 0 && stats.throttled < 200, "{stats:?}");
    w.dispatcher.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn expiry_stops_sending_and_the_rest_end_expired() {
    let w = world(sms(50.0));
    let mut spec = generated("x", Lane::Normal, 1000, &["sms"]);
    spec.expires_at_ms = Some(1_800_000_000_000 + 1000);
    let id = w.submit(spec).await;
    run_for(1500).await;
    let at_expiry = w.dispatcher.progress(id).unwrap();
    assert_eq!(at_expiry.state, "expired");
    run_for(2000).await;
    let p = w.dispatcher.progress(id).unwrap();
    assert_eq!(p.wired, at_expiry.wired, "nothing sent after expiry");
    assert!((40..=60).contains(&p.wired), "{}", p.wired);
    assert_eq!(p.wired + p.expired, 1000, "every recipient accounted for");
    assert!(p.done);
    w.dispatcher.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn cancel_takes_effect_within_a_second() {
    let w = world(sms(100.0));
    let id = w.submit(generated("x", Lane::Bulk, 10_000, &["sms"])).await;
    run_for(1000).await;
    w.dispatcher.cancel(id).await.unwrap();
    run_for(1000).await;
    let after = w.dispatcher.progress(id).unwrap();
    run_for(5000).await;
    let p = w.dispatcher.progress(id).unwrap();
    assert_eq!(
        p.wired, after.wired,
        "nothing sent more than a second after the cancel"
    );
    assert_eq!(p.state, "cancelled");
    assert_eq!(p.wired + p.cancelled, 10_000);
    assert!(p.done);
    w.dispatcher.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn unreachable_recipients_fall_back_to_the_next_channel() {
    let whatsapp = channel(
        0.0,
        SandboxConfig {
            unknown_percent: 100.0,
            ..SandboxConfig::default()
        },
    );
    let w = world(
        [
            ("whatsapp".to_string(), whatsapp),
            ("sms".to_string(), channel(0.0, SandboxConfig::default())),
        ]
        .into(),
    );
    let mut spec = generated("x", Lane::High, 100, &["whatsapp", "sms"]);
    if let AudienceSpec::Generated(g) = &mut spec.audience {
        g.not_on_percent.insert("whatsapp".into(), 50.0);
    }
    let id = w.submit(spec).await;
    assert!(w.dispatcher.wait_done(&[id], Duration::from_secs(10)).await);
    let p = w.dispatcher.progress(id).unwrap();
    assert_eq!(p.wired, 100);
    let not_on = (0..100)
        .filter(|i| {
            !GeneratedAudience {
                count: 100,
                languages: vec![],
                not_on_percent: [("whatsapp".to_string(), 50.0)].into(),
                prefix: "+2317".into(),
            }
            .recipient(*i)
            .not_on
            .is_empty()
        })
        .count() as u64;
    assert_eq!(
        p.rerouted,
        100 - not_on,
        "those on WhatsApp were tried there first"
    );
    let sms_id = w.store.channel("sms").unwrap();
    let rec = w.store.status(DeliveryId::new(id, 7)).unwrap().unwrap();
    assert_eq!(rec.channel, sms_id);
    w.dispatcher.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn receipts_move_statuses_forward_and_never_back() {
    let gateway = SandboxConfig {
        receipts: true,
        receipt_delay_ms: 300,
        read_percent: 100.0,
        ..SandboxConfig::default()
    };
    let mut ch = channel(0.0, gateway);
    ch.sandbox.receipts = true;
    let w = world([("sms".to_string(), ch)].into());
    let id = w.submit(generated("x", Lane::Normal, 20, &["sms"])).await;
    assert!(w.dispatcher.wait_done(&[id], Duration::from_secs(5)).await);
    run_for(1000).await;
    let p = w.dispatcher.progress(id).unwrap();
    assert_eq!(p.read, 20, "delivered then read: {p:?}");
    // A late, out-of-order "sent" does not move a read message back.
    let one = DeliveryId::new(id, 3);
    w.store
        .update_statuses(&[(one, DeliveryStatus::Sent, None)])
        .unwrap()
        .await
        .unwrap();
    assert_eq!(
        w.store.status(one).unwrap().unwrap().status,
        DeliveryStatus::Read
    );
    assert_eq!(w.dispatcher.progress(id).unwrap().read, 20);
    w.dispatcher.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn explicit_recipients_are_normalised_and_bad_numbers_refused_with_reasons() {
    let w = world(sms(0.0));
    let mut spec = generated("x", Lane::Normal, 1, &["sms"]);
    spec.audience = AudienceSpec::Recipients(vec![
        Recipient {
            phone: Some("0770 123 456".into()),
            language: Some("fr".into()),
            ..Recipient::default()
        },
        Recipient {
            phone: Some("12".into()),
            ..Recipient::default()
        },
        Recipient {
            phone: Some("+231 88 765 4321".into()),
            ..Recipient::default()
        },
        Recipient::default(),
    ]);
    spec.body
        .variants
        .insert("fr".into(), "Alerte choléra.".into());
    let submitted = w.dispatcher.submit(spec).await.unwrap();
    assert_eq!(submitted.accepted, 2);
    let reasons: Vec<(usize, &str)> = submitted
        .rejected
        .iter()
        .map(|r| (r.index, r.reason.as_str()))
        .collect();
    assert_eq!(reasons.len(), 2);
    assert_eq!(reasons[0].0, 1);
    assert_eq!(reasons[1], (3, "no phone number and no channel address"));
    assert!(
        w.dispatcher
            .wait_done(&[submitted.id], Duration::from_secs(5))
            .await
    );
    let stats = w.dispatcher.sandbox("sms").unwrap().stats();
    assert_eq!(stats.accepted, 2);
    w.dispatcher.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn bad_campaigns_are_refused_clearly() {
    let w = world(sms(0.0));
    let err = w
        .dispatcher
        .submit(generated("x", Lane::Normal, 10, &["telegram"]))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown channel \"telegram\" (configured: sms)"
    );
    let mut spec = generated("x", Lane::Normal, 10, &["sms"]);
    spec.body.default = " ".into();
    assert_eq!(
        w.dispatcher.submit(spec).await.unwrap_err().to_string(),
        "body.default must not be empty"
    );
    w.dispatcher.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_million_recipient_audience_fans_out_lazily() {
    let w = world(sms(1000.0));
    let id = w
        .submit(generated("national", Lane::Bulk, 1_000_000, &["sms"]))
        .await;
    run_for(2000).await;
    let p = w.dispatcher.progress(id).unwrap();
    assert!(p.wired >= 1500, "sending started at once: {}", p.wired);
    assert!(
        p.fanned_out <= p.wired + 1000 + 200,
        "fan-out stays a bounded step ahead: {} vs {}",
        p.fanned_out,
        p.wired
    );
    w.dispatcher.cancel(id).await.unwrap();
    run_for(1000).await;
    let p = w.dispatcher.progress(id).unwrap();
    assert_eq!(p.wired + p.cancelled, 1_000_000);
    w.dispatcher.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_scheduled_campaign_waits_for_its_start_time() {
    let w = world(sms(0.0));
    let mut spec = generated("later", Lane::Normal, 10, &["sms"]);
    spec.start_at_ms = Some(1_800_000_000_000 + 5000);
    let id = w.submit(spec).await;
    run_for(4000).await;
    let p = w.dispatcher.progress(id).unwrap();
    assert_eq!((p.state, p.wired), ("scheduled", 0));
    run_for(2000).await;
    let p = w.dispatcher.progress(id).unwrap();
    assert_eq!((p.state, p.wired), ("sending", 10));
    w.dispatcher.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn recipient_pacing_spaces_messages_to_one_person() {
    let mut ch = channel(0.0, SandboxConfig::default());
    ch.recipient_interval_ms = 10_000;
    let w = world([("sms".to_string(), ch)].into());
    let one = || Recipient {
        phone: Some("+231770123456".into()),
        ..Recipient::default()
    };
    let mut first = generated("first", Lane::Normal, 1, &["sms"]);
    first.audience = AudienceSpec::Recipients(vec![one()]);
    let a = w.submit(first).await;
    run_for(500).await;
    let mut second = generated("second", Lane::Normal, 1, &["sms"]);
    second.audience = AudienceSpec::Recipients(vec![one()]);
    let b = w.submit(second).await;
    run_for(5000).await;
    assert_eq!(w.dispatcher.progress(a).unwrap().wired, 1);
    assert_eq!(
        w.dispatcher.progress(b).unwrap().wired,
        0,
        "the same person waits 10 s between messages"
    );
    run_for(6000).await;
    assert_eq!(w.dispatcher.progress(b).unwrap().wired, 1);
    w.dispatcher.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_in_flight_window_bounds_concurrent_requests() {
    let mut ch = channel(
        0.0,
        SandboxConfig {
            delay_ms: 100,
            ..SandboxConfig::default()
        },
    );
    ch.window = 2;
    let w = world([("sms".to_string(), ch)].into());
    let id = w.submit(generated("x", Lane::Normal, 20, &["sms"])).await;
    run_for(450).await;
    let wired = w.dispatcher.progress(id).unwrap().wired;
    assert!(
        (6..=8).contains(&wired),
        "two requests of 100 ms at a time: {wired} in 450 ms"
    );
    assert!(w.dispatcher.wait_done(&[id], Duration::from_secs(2)).await);
    w.dispatcher.shutdown().await;
}
