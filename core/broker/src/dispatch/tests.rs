//! Dispatch on tokio's paused clock: the in-memory store, the real plugin
//! host and the sandbox connector against the simulated gateway.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mhero_proto::{DeliveryId, DeliveryStatus, Lane};

use super::*;
use crate::Broker;
use crate::channel::SandboxConfig;
use crate::config::ChannelConfig;
use crate::store::{MemoryEngine, Store};

struct World {
    broker: Broker,
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

/// The broker on the in-memory engine and a clock starting at a fixed
/// time, through the composition root every entry point uses.
async fn world(channels: BTreeMap<String, ChannelConfig>) -> World {
    world_with(channels, crate::Config::default()).await
}

async fn world_with(channels: BTreeMap<String, ChannelConfig>, config: crate::Config) -> World {
    world_on(Arc::new(MemoryEngine::new()), channels, config).await
}

async fn world_on(
    engine: Arc<dyn crate::store::Engine>,
    channels: BTreeMap<String, ChannelConfig>,
    mut config: crate::Config,
) -> World {
    config.channels = channels;
    config.store.engine = crate::config::EngineKind::Memory;
    config.plugins.cache_dir = None;
    config.dispatch = DispatchConfig {
        fanout_page: 200,
        fanout_ahead: 1000,
        ..config.dispatch
    };
    let options = crate::broker::Options {
        clock: Some(TokioClock::at(1_800_000_000_000)),
        engine: Some(engine),
    };
    World {
        broker: Broker::open_with(config, options).await.unwrap(),
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
        self.dispatcher().submit(spec).await.unwrap().id
    }

    /// Waits until the campaign has ended (failing the test after
    /// `secs`), and returns its progress.
    async fn finish(&self, id: mhero_proto::CampaignId, secs: u64) -> Progress {
        assert!(
            self.dispatcher()
                .wait_done(&[id], Duration::from_secs(secs))
                .await,
            "not done after {secs} s: {:?}",
            self.dispatcher().progress(id)
        );
        self.dispatcher().progress(id).unwrap()
    }

    fn dispatcher(&self) -> &Dispatcher {
        self.broker.dispatcher()
    }

    fn store(&self) -> &Arc<Store> {
        self.broker.store()
    }

    async fn shutdown(self) {
        self.broker.shutdown().await;
    }
}

async fn run_for(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test(start_paused = true)]
async fn an_emergency_overtakes_a_bulk_backlog() {
    let w = world(sms(100.0)).await;
    let bulk = w
        .submit(generated("bulk", Lane::Bulk, 2000, &["sms"]))
        .await;
    run_for(2000).await;
    let bulk_before = w.dispatcher().progress(bulk).unwrap().wired;
    assert!((150..=250).contains(&bulk_before), "{bulk_before}");
    let alert = w
        .submit(generated("alert", Lane::Emergency, 50, &["sms"]))
        .await;
    run_for(100).await;
    let first = w.dispatcher().progress(alert).unwrap().wired;
    assert!(
        first >= 5,
        "emergency sends start within one round: {first}"
    );
    assert!(
        w.dispatcher()
            .wait_done(&[alert], Duration::from_secs(2))
            .await,
        "50 at 100/s take 0.5 s"
    );
    let bulk_during = w.dispatcher().progress(bulk).unwrap().wired - bulk_before;
    assert!(
        bulk_during <= 10,
        "bulk sent {bulk_during} while the alert was going out"
    );
    w.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn campaigns_in_a_lane_share_the_channel_fairly() {
    let w = world(sms(200.0)).await;
    let a = w.submit(generated("a", Lane::Normal, 1000, &["sms"])).await;
    let b = w.submit(generated("b", Lane::Normal, 1000, &["sms"])).await;
    run_for(3000).await;
    let (pa, pb) = (
        w.dispatcher().progress(a).unwrap().wired,
        w.dispatcher().progress(b).unwrap().wired,
    );
    assert!((500..=700).contains(&(pa + pb)), "{pa} + {pb}");
    assert!(pa.abs_diff(pb) <= 10, "{pa} vs {pb}");
    w.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_rate_counts_sms_segments() {
    let w = world(sms(100.0)).await;
    let mut spec = generated("long", Lane::Normal, 400, &["sms"]);
    spec.body = Body::text(&"Two segments of GSM-7 text. ".repeat(8)); // 224 septets: 2 parts
    let id = w.submit(spec).await;
    run_for(4000).await;
    let wired = w.dispatcher().progress(id).unwrap().wired;
    assert!(
        (190..=210).contains(&wired),
        "100 segments/s of 2-part messages is 50/s: {wired} in 4 s"
    );
    w.shutdown().await;
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
    )
    .await;
    let id = w.submit(generated("x", Lane::High, 3, &["sms"])).await;
    run_for(500).await;
    let p = w.dispatcher().progress(id).unwrap();
    assert_eq!(
        (p.retries, p.dead),
        (3, 0),
        "one failed attempt each, then waiting: never an immediate retry"
    );
    run_for(1000).await;
    assert_eq!(
        w.dispatcher().progress(id).unwrap().retries,
        6,
        "second attempt after the 1 s backoff"
    );
    run_for(2500).await;
    let p = w.dispatcher().progress(id).unwrap();
    assert_eq!(
        (p.dead, p.queued),
        (3, 0),
        "third attempt fails and max_attempts = 3"
    );
    assert!(p.done);
    let dead = w.store().dead_letters(None, 10).unwrap();
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
    let text = w.broker.metrics().encode();
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
    w.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn dead_letters_of_a_campaign_that_left_memory_are_sent_again_when_replayed() {
    let failing = SandboxConfig {
        error_percent: 100.0,
        ..SandboxConfig::default()
    };
    let w = world([("sms".to_string(), channel(0.0, failing))].into()).await;
    let id = w.submit(generated("x", Lane::High, 3, &["sms"])).await;
    run_for(5_000).await;
    assert_eq!(w.dispatcher().progress(id).unwrap().dead, 3);
    // An hour after it ended it leaves memory.
    tokio::time::advance(Duration::from_secs(3_600)).await;
    run_for(61_000).await;
    assert!(
        w.dispatcher()
            .all_progress()
            .iter()
            .all(|p| p.id != id.to_string())
    );
    // Replayed: the campaign is read back (off the async workers) and its
    // deliveries are tried again, three attempts each.
    let ids: Vec<_> = w
        .store()
        .dead_letters(None, 10)
        .unwrap()
        .iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(w.dispatcher().replay_dead(ids).await.unwrap(), 3);
    run_for(5_000).await;
    let p = w.dispatcher().progress(id).unwrap();
    assert_eq!((p.dead, p.retries), (3, 12), "{p:?}");
    assert!(
        w.dispatcher()
            .all_progress()
            .iter()
            .any(|p| p.id == id.to_string()),
        "back in memory while its work runs"
    );
    // Cancelling it then (it is in memory again) changes nothing sent.
    w.dispatcher().cancel(id).await.unwrap();
    w.shutdown().await;
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
    let w = world([("sms".to_string(), ch)].into()).await;
    let id = w.submit(generated("x", Lane::Normal, 300, &["sms"])).await;
    let p = w.finish(id, 120).await;
    assert_eq!((p.wired, p.dead), (300, 0));
    assert!(p.retries > 0);
    let stats = w.dispatcher().sandbox("sms").unwrap().stats();
    assert!(stats.throttled > 0 && stats.throttled < 200, "{stats:?}");
    w.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn expiry_stops_sending_and_the_rest_end_expired() {
    let w = world(sms(50.0)).await;
    let mut spec = generated("x", Lane::Normal, 1000, &["sms"]);
    spec.expires_at_ms = Some(1_800_000_000_000 + 1000);
    let id = w.submit(spec).await;
    run_for(1500).await;
    let at_expiry = w.dispatcher().progress(id).unwrap();
    assert_eq!(at_expiry.state, "expired");
    run_for(2000).await;
    let p = w.dispatcher().progress(id).unwrap();
    assert_eq!(p.wired, at_expiry.wired, "nothing sent after expiry");
    assert!((40..=60).contains(&p.wired), "{}", p.wired);
    assert_eq!(p.wired + p.expired, 1000, "every recipient accounted for");
    assert!(p.done);
    w.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn cancel_takes_effect_within_a_second() {
    let w = world(sms(100.0)).await;
    let id = w.submit(generated("x", Lane::Bulk, 10_000, &["sms"])).await;
    run_for(1000).await;
    w.dispatcher().cancel(id).await.unwrap();
    run_for(1000).await;
    let after = w.dispatcher().progress(id).unwrap();
    run_for(5000).await;
    let p = w.dispatcher().progress(id).unwrap();
    assert_eq!(
        p.wired, after.wired,
        "nothing sent more than a second after the cancel"
    );
    assert_eq!(p.state, "cancelled");
    assert_eq!(p.wired + p.cancelled, 10_000);
    assert!(p.done);
    w.shutdown().await;
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
    )
    .await;
    let mut spec = generated("x", Lane::High, 100, &["whatsapp", "sms"]);
    if let AudienceSpec::Generated(g) = &mut spec.audience {
        g.not_on_percent.insert("whatsapp".into(), 50.0);
    }
    let id = w.submit(spec).await;
    let p = w.finish(id, 10).await;
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
    let sms_id = w.store().channel("sms").unwrap();
    let rec = w.store().status(DeliveryId::new(id, 7)).unwrap().unwrap();
    assert_eq!(rec.channel, sms_id);
    w.shutdown().await;
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
    let w = world([("sms".to_string(), ch)].into()).await;
    let id = w.submit(generated("x", Lane::Normal, 20, &["sms"])).await;
    w.finish(id, 5).await;
    run_for(1000).await;
    let p = w.dispatcher().progress(id).unwrap();
    assert_eq!(p.read, 20, "delivered then read: {p:?}");
    // A late, out-of-order "sent" does not move a read message back.
    let one = DeliveryId::new(id, 3);
    w.store()
        .update_statuses(&[(one, DeliveryStatus::Sent, None)])
        .unwrap()
        .await
        .unwrap();
    assert_eq!(
        w.store().status(one).unwrap().unwrap().status,
        DeliveryStatus::Read
    );
    assert_eq!(w.dispatcher().progress(id).unwrap().read, 20);
    w.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn explicit_recipients_are_normalised_and_bad_numbers_refused_with_reasons() {
    let w = world(sms(0.0)).await;
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
    let submitted = w.dispatcher().submit(spec).await.unwrap();
    assert_eq!(submitted.accepted, 2);
    let reasons: Vec<(usize, &str)> = submitted
        .rejected
        .iter()
        .map(|r| (r.index, r.reason.as_str()))
        .collect();
    assert_eq!(reasons.len(), 2);
    assert_eq!(reasons[0].0, 1);
    assert_eq!(reasons[1], (3, "no phone number and no channel address"));
    w.finish(submitted.id, 5).await;
    let stats = w.dispatcher().sandbox("sms").unwrap().stats();
    assert_eq!(stats.accepted, 2);
    w.shutdown().await;
}

fn file(url: &str, content_type: &str) -> crate::dispatch::Attachment {
    crate::dispatch::Attachment {
        url: url.into(),
        content_type: content_type.into(),
        filename: None,
    }
}

#[tokio::test(start_paused = true)]
async fn bad_campaigns_are_refused_clearly() {
    let w = world(sms(0.0)).await;
    let err = w
        .dispatcher()
        .submit(generated("x", Lane::Normal, 10, &["telegram"]))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "channels: unknown channel \"telegram\" (configured: sms)"
    );
    let mut spec = generated("x", Lane::Normal, 10, &["sms"]);
    spec.body.default = " ".into();
    assert_eq!(
        w.dispatcher().submit(spec).await.unwrap_err().to_string(),
        "body.default: must not be empty"
    );
    let refused = |change: &dyn Fn(&mut CampaignSpec)| {
        let mut spec = generated("x", Lane::Normal, 10, &["sms"]);
        change(&mut spec);
        spec
    };
    for (spec, message) in [
        (
            refused(&|s| s.name = "n".repeat(201)),
            "name: longer than 200 characters",
        ),
        (
            refused(&|s| s.body.default = "é".repeat(4097)),
            "body.default: longer than 4096 characters",
        ),
        (
            refused(&|s| {
                s.body.variants.insert("fr FR".into(), "x".into());
            }),
            "body.variants: \"fr FR\" is not a language tag (like \"fr\" or \"pt-BR\")",
        ),
        (
            refused(&|s| s.body.default = "a".repeat(1601)),
            "body.default: 1601 characters; channel sms accepts at most 1600",
        ),
        (
            refused(&|s| {
                s.body.variants.insert("fr".into(), "b".repeat(2000));
            }),
            "body.variants.fr: 2000 characters; channel sms accepts at most 1600",
        ),
        (
            refused(&|s| {
                s.body
                    .attachments
                    .push(file("https://moh.example/p.jpg", "image/jpeg"))
            }),
            "body.attachments: none of the channels sms carries media (WhatsApp, Telegram and Twilio connectors do)",
        ),
        (
            refused(&|s| {
                s.body
                    .attachments
                    .push(file("ftp://moh.example/p.jpg", "image/jpeg"))
            }),
            "body.attachments[0].url: \"ftp://moh.example/p.jpg\" is not an http(s) URL of at most 2048 bytes the gateway can fetch",
        ),
        (
            refused(&|s| {
                s.body
                    .attachments
                    .push(file("https://moh.example/p.jpg", "jpeg"))
            }),
            "body.attachments[0].content_type: \"jpeg\" is not a MIME type (like \"image/jpeg\")",
        ),
        (
            refused(&|s| {
                let mut f = file("https://moh.example/p.pdf", "application/pdf");
                f.filename = Some("../etc/passwd".into());
                s.body.attachments.push(f);
            }),
            "body.attachments[0].filename: must be a file name of 1 to 255 characters, without a path",
        ),
        (
            refused(&|s| {
                s.body.attachments = vec![file("https://moh.example/p.jpg", "image/jpeg"); 11];
            }),
            "body.attachments: 11 files; at most 10",
        ),
        (refused(&|s| s.channels = vec!["sms".into(); 9]), ""),
    ] {
        let result = w.dispatcher().submit(spec).await;
        if message.is_empty() {
            // Nine times the same channel is one channel.
            assert!(result.is_ok(), "{result:?}");
        } else {
            let err = result.unwrap_err();
            assert_eq!(err.to_string(), message);
            assert_eq!(err.code(), crate::error::ErrorCode::Invalid);
            assert!(message.starts_with(err.field().unwrap()), "{message}");
        }
    }
    // What does not exist is not found, with its id.
    let missing = mhero_proto::CampaignId(999);
    let err = w.dispatcher().cancel(missing).await.unwrap_err();
    assert_eq!(
        (err.code(), err.to_string().as_str()),
        (crate::error::ErrorCode::NotFound, "no campaign c999")
    );
    w.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_million_recipient_audience_fans_out_lazily() {
    let w = world(sms(1000.0)).await;
    let id = w
        .submit(generated("national", Lane::Bulk, 1_000_000, &["sms"]))
        .await;
    run_for(2000).await;
    let p = w.dispatcher().progress(id).unwrap();
    assert!(p.wired >= 1500, "sending started at once: {}", p.wired);
    assert!(
        p.fanned_out <= p.wired + 1000 + 200,
        "fan-out stays a bounded step ahead: {} vs {}",
        p.fanned_out,
        p.wired
    );
    w.dispatcher().cancel(id).await.unwrap();
    run_for(1000).await;
    let p = w.dispatcher().progress(id).unwrap();
    assert_eq!(p.wired + p.cancelled, 1_000_000);
    w.shutdown().await;
}

/// Small campaigns' pages are read together, a page's worth at a time,
/// beside big ones: each campaign gets its own recipients, all of them,
/// once, whatever group its page was read in.
#[tokio::test(start_paused = true)]
async fn many_small_campaigns_fan_out_beside_a_big_one_each_to_its_own_recipients() {
    let w = world(sms(0.0)).await;
    let mut small = Vec::new();
    let big = w
        .submit(generated("big", Lane::Normal, 1_000, &["sms"]))
        .await;
    for c in 0..150u32 {
        // 1 to 7 recipients, numbered by campaign and position.
        let size = 1 + c % 7;
        let mut spec = generated(&format!("lab {c}"), Lane::Normal, 1, &["sms"]);
        spec.audience = AudienceSpec::Recipients(
            (0..size)
                .map(|i| Recipient {
                    phone: Some(format!("+23177{c:04}{i:03}")),
                    ..Recipient::default()
                })
                .collect(),
        );
        small.push((w.submit(spec).await, size));
    }
    let p = w.finish(big, 30).await;
    assert_eq!(p.wired, 1_000);
    let sms_id = w.store().channel("sms").unwrap();
    for &(id, size) in &small {
        let p = w.finish(id, 30).await;
        assert_eq!(
            (p.wired, p.fanned_out),
            (u64::from(size), u64::from(size)),
            "{id}"
        );
        // What went to each number was this campaign's delivery to it.
        let c = id.0 - big.0 - 1;
        for i in 0..size {
            let sent = w
                .store()
                .last_sent(sms_id, &format!("+23177{c:04}{i:03}"))
                .unwrap()
                .unwrap();
            assert_eq!(sent.delivery, DeliveryId::new(id, i), "{id}");
        }
    }
    let total: u64 = small.iter().map(|&(_, s)| u64::from(s)).sum();
    assert_eq!(
        w.dispatcher().sandbox("sms").unwrap().stats().accepted,
        1_000 + total
    );
    w.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_scheduled_campaign_waits_for_its_start_time() {
    let w = world(sms(0.0)).await;
    let mut spec = generated("later", Lane::Normal, 10, &["sms"]);
    spec.start_at_ms = Some(1_800_000_000_000 + 5000);
    let id = w.submit(spec).await;
    run_for(4000).await;
    let p = w.dispatcher().progress(id).unwrap();
    assert_eq!((p.state, p.wired), ("scheduled", 0));
    run_for(2000).await;
    let p = w.dispatcher().progress(id).unwrap();
    assert_eq!((p.state, p.wired), ("sending", 10));
    w.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn recipient_pacing_spaces_messages_to_one_person() {
    let mut ch = channel(0.0, SandboxConfig::default());
    ch.recipient_interval_ms = 10_000;
    let w = world([("sms".to_string(), ch)].into()).await;
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
    assert_eq!(w.dispatcher().progress(a).unwrap().wired, 1);
    assert_eq!(
        w.dispatcher().progress(b).unwrap().wired,
        0,
        "the same person waits 10 s between messages"
    );
    run_for(6000).await;
    let p = w.dispatcher().progress(b).unwrap();
    assert_eq!(p.wired, 1);
    // Waiting its turn was not an attempt: no retry counted, one attempt
    // recorded.
    assert_eq!(p.retries, 0, "{p:?}");
    let rec = w.store().status(DeliveryId::new(b, 0)).unwrap().unwrap();
    assert_eq!(rec.attempts, 1, "{rec:?}");
    w.shutdown().await;
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
    let w = world([("sms".to_string(), ch)].into()).await;
    let id = w.submit(generated("x", Lane::Normal, 20, &["sms"])).await;
    run_for(450).await;
    let wired = w.dispatcher().progress(id).unwrap().wired;
    assert!(
        (6..=8).contains(&wired),
        "two requests of 100 ms at a time: {wired} in 450 ms"
    );
    w.finish(id, 2).await;
    w.shutdown().await;
}

/// The in-memory engine whose commits can be held: while held, batches
/// are applied but their tickets wait, as a write waits for its fsync.
/// It counts the forward scans of the campaign records, and can refuse
/// the batches that delete one (a purge), as a failing disk would.
#[derive(Default)]
struct HeldCommits {
    inner: MemoryEngine,
    /// While held: each batch's own ticket, and the sender of the one
    /// handed out for it.
    held: parking_lot::Mutex<Option<Vec<HeldTicket>>>,
    campaign_scans: std::sync::atomic::AtomicUsize,
    refuse_purges: AtomicBool,
    /// Refuses writes of a campaign record stamped ended.
    refuse_stamps: AtomicBool,
}

type HeldTicket = (
    crate::store::Ticket,
    tokio::sync::oneshot::Sender<crate::store::Result<()>>,
);

impl HeldCommits {
    fn hold(&self) {
        *self.held.lock() = Some(Vec::new());
    }

    /// Commits what was held, in order, and stops holding.
    fn release(&self) {
        for (ticket, done) in self.held.lock().take().unwrap_or_default() {
            let _ = done.send(ticket.wait());
        }
    }
}

impl crate::store::Engine for HeldCommits {
    fn get(&self, cf: crate::store::Cf, key: &[u8]) -> crate::store::Result<Option<Vec<u8>>> {
        self.inner.get(cf, key)
    }

    fn scan(
        &self,
        cf: crate::store::Cf,
        lower: &[u8],
        upper: &[u8],
        visit: &mut crate::store::engine::Visit<'_>,
    ) -> crate::store::Result<()> {
        if cf == crate::store::Cf::Campaigns {
            self.campaign_scans
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.inner.scan(cf, lower, upper, visit)
    }

    fn scan_rev(
        &self,
        cf: crate::store::Cf,
        lower: &[u8],
        upper: &[u8],
        visit: &mut crate::store::engine::Visit<'_>,
    ) -> crate::store::Result<()> {
        self.inner.scan_rev(cf, lower, upper, visit)
    }

    fn submit(&self, batch: crate::store::Batch) -> crate::store::Ticket {
        let purge = batch.ops.iter().any(|op| {
            matches!(
                op,
                crate::store::Op::Delete {
                    cf: crate::store::Cf::Campaigns,
                    ..
                }
            )
        });
        let stamp = batch.ops.iter().any(|op| match op {
            crate::store::Op::Put {
                cf: crate::store::Cf::Campaigns,
                value,
                ..
            } => CampaignRecord::decode(value).is_ok_and(|r| r.finished_ms.is_some()),
            _ => false,
        });
        if (purge && self.refuse_purges.load(Ordering::Relaxed))
            || (stamp && self.refuse_stamps.load(Ordering::Relaxed))
        {
            return crate::store::Ticket::done(Err(crate::store::Error::Internal(
                "disk failing".into(),
            )));
        }
        let ticket = self.inner.submit(batch);
        match self.held.lock().as_mut() {
            Some(held) => {
                let (done, committed) = tokio::sync::oneshot::channel();
                held.push((ticket, done));
                crate::store::Ticket::pending(committed)
            }
            None => ticket,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn nothing_leased_goes_to_the_gateway_before_its_lease_commits() {
    let engine = Arc::new(HeldCommits::default());
    let w = world_on(engine.clone(), sms(0.0), crate::Config::default()).await;
    w.dispatcher().hold_channel("sms", true).await.unwrap();
    let id = w.submit(generated("x", Lane::Normal, 30, &["sms"])).await;
    run_for(1_000).await;
    assert_eq!(
        w.dispatcher().progress(id).unwrap().queued,
        30,
        "fanned out"
    );
    // Resumed, then every commit held before the channel's worker runs:
    // it leases, prepares and builds a round, but sends none of it.
    w.dispatcher().hold_channel("sms", false).await.unwrap();
    engine.hold();
    run_for(2_000).await;
    let gateway = w.dispatcher().sandbox("sms").unwrap();
    assert_eq!(
        gateway.stats().requests,
        0,
        "sent before the lease committed"
    );
    assert_eq!(
        w.store().campaign_depth(id),
        (0, 30),
        "leased, waiting for the commit"
    );
    engine.release();
    let progress = w.finish(id, 10).await;
    assert_eq!(progress.wired, 30, "{progress:?}");
    assert_eq!(gateway.stats().accepted, 30);
    w.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_rated_channel_fits_its_window_to_its_rate_as_the_gateway_slows_and_recovers() {
    // 100/s against a gateway answering in 100 ms needs 10 in flight; the
    // window starts at 2 (20/s).
    let slow = |window_max: usize| {
        let mut ch = channel(
            100.0,
            SandboxConfig {
                delay_ms: 100,
                ..SandboxConfig::default()
            },
        );
        ch.window = 2;
        ch.window_max = window_max;
        ch
    };
    let w = world(
        [
            ("sms".to_string(), slow(1024)),
            ("capped".to_string(), slow(3)),
        ]
        .into(),
    )
    .await;
    let wide = w
        .submit(generated("wide", Lane::Normal, 1000, &["sms"]))
        .await;
    let capped = w
        .submit(generated("capped", Lane::Normal, 1000, &["capped"]))
        .await;
    run_for(5_000).await;
    let wired = |id| w.dispatcher().progress(id).unwrap().wired;
    // Widened to twice rate × latency (20): the rate, less the first
    // answers' ramp, in 5 s.
    assert!(
        (420..=510).contains(&wired(wide)),
        "about 100/s: {} in 5 s",
        wired(wide)
    );
    let window = w.dispatcher().channels()["sms"].window_size();
    assert!(
        (20..=22).contains(&window),
        "twice 100/s × 100 ms: {window}"
    );
    // Held to window_max: 3 requests of 100 ms at a time.
    assert!(
        (130..=160).contains(&wired(capped)),
        "about 30/s: {} in 5 s",
        wired(capped)
    );
    assert_eq!(w.dispatcher().channels()["capped"].window_size(), 3);
    // The gateway recovers (5 ms): the window narrows back, to what
    // 100/s needs now (1) but never below `window` (2), and the rate holds.
    let sms = &w.dispatcher().channels()["sms"];
    sms.sandbox.as_ref().unwrap().set_delay_ms(5);
    let before = wired(wide);
    run_for(3_000).await;
    assert_eq!(sms.window_size(), 2, "back to window");
    let after = wired(wide) - before;
    assert!((280..=310).contains(&after), "still 100/s: {after} in 3 s");
    w.shutdown().await;
}

/// Copies a hostile test fixture into a plugin folder, as an operator
/// installs a plugin.
fn plugin_dir(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, component) = crate::plugin::test_fixtures()
        .iter()
        .find(|(m, _)| m.contains(&format!("/{name}/")))
        .copied()
        .unwrap_or_else(|| panic!("fixture {name} not built"));
    let folder = dir.path().join(name);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(manifest, folder.join("plugin.toml")).unwrap();
    let file = std::path::Path::new(component).file_name().unwrap();
    std::fs::copy(component, folder.join(file)).unwrap();
    dir
}

#[tokio::test(start_paused = true)]
async fn a_connector_that_prints_sleeps_and_busy_waits_does_not_stop_its_campaign() {
    let plugins = plugin_dir("noisy");
    let mut config = crate::Config::default();
    config.plugins.dir = Some(plugins.path().to_path_buf());
    let mut ch = channel(0.0, SandboxConfig::default());
    ch.connector = "hostile-noisy".into();
    ch.count_segments = Some(false);
    let w = world_with([("sms".to_string(), ch)].into(), config).await;
    let id = w
        .submit(generated("noisy", Lane::Normal, 40, &["sms"]))
        .await;
    let p = w.finish(id, 30).await;
    assert_eq!(p.wired, 40, "every message sent in the end: {p:?}");
    assert_eq!(p.dead, 0);
    // Indexes 0 and 1 modulo 4 failed their first attempt: a refused
    // sleep, and a busy wait stopped at the deadline.
    assert_eq!(p.retries, 20, "{p:?}");
    let text = w.broker.metrics().encode();
    for outcome in ["blocked", "timeout"] {
        let line = format!(
            "mhero_plugin_calls_total{{plugin=\"hostile-noisy\",outcome=\"{outcome}\"}} 10"
        );
        assert!(text.contains(&line), "{line} missing from\n{text}");
    }
    assert_eq!(w.dispatcher().sandbox("sms").unwrap().stats().accepted, 40);
    w.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_receipt_after_wiring_falls_back_to_the_next_channel() {
    let whatsapp = channel(
        0.0,
        SandboxConfig {
            receipt_delay_ms: 100,
            undelivered_percent: 100.0,
            ..SandboxConfig::default()
        },
    );
    let mut whatsapp = whatsapp;
    whatsapp.sandbox.receipts = true;
    let mut sms = channel(0.0, SandboxConfig::default());
    sms.sandbox.receipts = true;
    sms.sandbox.receipt_delay_ms = 100;
    let w = world([("whatsapp".to_string(), whatsapp), ("sms".to_string(), sms)].into()).await;
    let id = w
        .submit(generated("fallback", Lane::High, 30, &["whatsapp", "sms"]))
        .await;
    run_for(3000).await;
    let p = w.dispatcher().progress(id).unwrap();
    assert_eq!(p.rerouted, 30, "{p:?}");
    assert_eq!(p.delivered, 30, "delivered on the second channel: {p:?}");
    assert_eq!(p.failed, 0, "{p:?}");
    assert!(p.done);
    let sms_id = w.store().channel("sms").unwrap();
    let rec = w.store().status(DeliveryId::new(id, 5)).unwrap().unwrap();
    assert_eq!(
        (rec.channel, rec.status),
        (sms_id, DeliveryStatus::Delivered)
    );
    assert_eq!(
        w.dispatcher().sandbox("whatsapp").unwrap().stats().accepted,
        30
    );
    assert_eq!(w.dispatcher().sandbox("sms").unwrap().stats().accepted, 30);
    w.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_refused_webhook_loses_nothing_and_replies_are_stored() {
    // The simulator signs with a secret the connector does not know: every
    // webhook is refused, and the simulator keeps its events.
    let mut bad = channel(
        0.0,
        SandboxConfig {
            webhook_secret: "not-the-connector-secret".into(),
            receipt_delay_ms: 50,
            ..SandboxConfig::default()
        },
    );
    bad.sandbox.receipts = true;
    let w = world([("sms".to_string(), bad)].into()).await;
    let id = w.submit(generated("x", Lane::Normal, 10, &["sms"])).await;
    run_for(2000).await;
    let gw = w.dispatcher().sandbox("sms").unwrap();
    assert_eq!(gw.pending_webhook_events(), 10, "kept for a later try");
    assert!(gw.stats().webhooks_refused > 0);
    assert_eq!(gw.stats().receipts, 0);
    let p = w.dispatcher().progress(id).unwrap();
    assert_eq!((p.wired, p.delivered), (10, 0));
    let text = w.broker.metrics().encode();
    assert!(
        text.contains("mhero_channel_webhooks_total{channel=\"sms\",outcome=\"unauthorized\"}"),
        "{text}"
    );
    // The entry point itself: unknown channels and oversized bodies.
    let request = |body: Vec<u8>| crate::plugin::bindings::HttpRequest {
        method: "POST".into(),
        url: "/webhooks/sms".into(),
        headers: Vec::new(),
        body,
    };
    let webhooks = w.broker.webhooks();
    assert_eq!(
        webhooks
            .handle("telegram", request(b"{}".to_vec()))
            .await
            .status,
        404
    );
    let big = vec![b' '; crate::channel::webhooks::MAX_WEBHOOK_BYTES + 1];
    assert_eq!(webhooks.handle("sms", request(big)).await.status, 413);
    assert_eq!(
        webhooks.handle("sms", request(b"{}".to_vec())).await.status,
        401
    );
    w.shutdown().await;

    // Signed right: receipts and replies arrive; replies are kept.
    let mut good = channel(
        0.0,
        SandboxConfig {
            receipt_delay_ms: 50,
            reply_percent: 100.0,
            replies: vec!["YES".into()],
            ..SandboxConfig::default()
        },
    );
    good.sandbox.receipts = true;
    let w = world([("sms".to_string(), good)].into()).await;
    let id = w.submit(generated("y", Lane::Normal, 10, &["sms"])).await;
    run_for(2000).await;
    assert_eq!(w.dispatcher().progress(id).unwrap().delivered, 10);
    let inbound = w.store().inbound(0, 100).unwrap();
    assert_eq!(inbound.len(), 10);
    assert!(
        inbound
            .iter()
            .all(|(_, m)| m.text == "YES" && m.from.starts_with('+'))
    );
    // The same webhook twice stores nothing new.
    let sms_id = w.store().channel("sms").unwrap();
    let again: Vec<_> = inbound.iter().map(|(_, m)| m.clone()).collect();
    let stored = w.store().put_inbound(sms_id, again).unwrap().await.unwrap();
    assert_eq!(stored, 0);
    w.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn webhook_calls_overlap_and_one_workers_replies_keep_their_order() {
    // 6,000 receipts are calls of 2,000 at most, several out at once; a
    // worker's replies, sent meanwhile, go in calls of their own.
    let mut sms = channel(
        0.0,
        SandboxConfig {
            receipt_delay_ms: 50,
            ..SandboxConfig::default()
        },
    );
    sms.sandbox.receipts = true;
    let w = world([("sms".to_string(), sms)].into()).await;
    let id = w
        .submit(generated("many", Lane::Normal, 6000, &["sms"]))
        .await;
    let gw = w.dispatcher().sandbox("sms").unwrap();
    for i in 0..30 {
        let now = w.dispatcher().now_ms();
        gw.worker_sends(&format!("m{i}"), "+231770000009", &i.to_string(), now);
        run_for(7).await;
    }
    let p = w.finish(id, 30).await;
    run_for(2000).await;
    assert_eq!(
        w.dispatcher().progress(id).unwrap().delivered,
        6000,
        "{p:?}"
    );
    let stats = gw.stats();
    assert_eq!((stats.receipts, stats.replies), (6000, 30), "{stats:?}");
    assert_eq!(stats.webhooks_refused, 0);
    assert!(stats.peak_webhook_calls > 1, "{stats:?}");
    assert_eq!(gw.pending_webhook_events(), 0);
    let texts: Vec<String> = w
        .store()
        .inbound(0, 100)
        .unwrap()
        .into_iter()
        .map(|(_, m)| m.text)
        .collect();
    let sent: Vec<String> = (0..30).map(|i| i.to_string()).collect();
    assert_eq!(texts, sent, "stored in the order the worker sent them");
    w.shutdown().await;
}

/// A gateway speaking the sandbox protocol over real HTTP on loopback: it
/// answers after `latency`, refuses the first `fail_first` requests with
/// 503, and counts the requests in flight at once.
struct HttpGateway {
    url: String,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    peak: Arc<std::sync::atomic::AtomicUsize>,
}

async fn http_gateway(latency: Duration, fail_first: usize) -> HttpGateway {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let accepted = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let state = (
        Arc::clone(&accepted),
        Arc::clone(&requests),
        Arc::clone(&now),
        Arc::clone(&peak),
    );
    let app = axum::Router::new().route(
        "/messages",
        axum::routing::post(move |body: axum::body::Bytes| {
            let (accepted, requests, now, peak) = state.clone();
            async move {
                let inside = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(inside, Ordering::SeqCst);
                tokio::time::sleep(latency).await;
                now.fetch_sub(1, Ordering::SeqCst);
                if requests.fetch_add(1, Ordering::SeqCst) < fail_first {
                    return (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        "{}".to_string(),
                    );
                }
                let n = accepted.fetch_add(1, Ordering::SeqCst);
                let _ = body;
                (
                    axum::http::StatusCode::ACCEPTED,
                    format!("{{\"message_id\":\"gw-{n}\"}}"),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    HttpGateway {
        url: format!("http://{addr}"),
        accepted,
        peak,
    }
}

fn over_http(url: &str) -> crate::Config {
    let mut config = crate::Config::default();
    config
        .plugins
        .config
        .entry("sandbox".into())
        .or_default()
        .insert("base_url".into(), url.to_string().into());
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_channels_on_one_connector_each_use_their_own_settings() {
    use std::sync::atomic::Ordering;
    let (a, b) = (
        http_gateway(Duration::ZERO, 0).await,
        http_gateway(Duration::ZERO, 0).await,
    );
    let on = |settings: &[(&str, &str)]| ChannelConfig {
        settings: settings
            .iter()
            .map(|(k, v)| (k.to_string(), toml::Value::from(*v)))
            .collect(),
        count_segments: Some(false),
        ..ChannelConfig::default()
    };
    // The connector's own setting points where nothing listens: only each
    // channel's own address reaches a gateway.
    let shared = over_http("http://127.0.0.1:9");
    let w = world_with(
        [
            ("orange".to_string(), on(&[("base_url", &a.url)])),
            ("lonestar".to_string(), on(&[("base_url", &b.url)])),
        ]
        .into(),
        shared.clone(),
    )
    .await;
    let x = w
        .submit(generated("x", Lane::Normal, 30, &["orange"]))
        .await;
    let y = w
        .submit(generated("y", Lane::Normal, 20, &["lonestar"]))
        .await;
    assert_eq!(w.finish(x, 30).await.wired, 30);
    assert_eq!(w.finish(y, 30).await.wired, 20);
    assert_eq!(a.accepted.load(Ordering::SeqCst), 30);
    assert_eq!(b.accepted.load(Ordering::SeqCst), 20);
    w.shutdown().await;

    // A setting its connector does not have, or of the wrong type, is
    // refused when the broker opens, naming the channel.
    for (settings, says) in [
        (on(&[("base_ulr", &a.url)]), "unknown setting \"base_ulr\""),
        (
            ChannelConfig {
                settings: [("base_url".to_string(), toml::Value::from(5))]
                    .into_iter()
                    .collect(),
                ..ChannelConfig::default()
            },
            "setting \"base_url\" must be of type string",
        ),
    ] {
        let mut config = shared.clone();
        config.channels = [("orange".to_string(), settings)].into();
        config.store.engine = crate::config::EngineKind::Memory;
        config.plugins.cache_dir = None;
        let err = Broker::open_with(config, crate::broker::Options::default())
            .await
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("channels.orange.settings: ") && err.contains(says),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_gateway_gets_the_window_in_flight_and_the_campaign_completes() {
    use std::sync::atomic::Ordering;
    let gw = http_gateway(Duration::from_millis(50), 0).await;
    let ch = ChannelConfig {
        window: 32,
        count_segments: Some(false),
        ..ChannelConfig::default()
    };
    let w = world_with([("sms".to_string(), ch)].into(), over_http(&gw.url)).await;
    let id = w
        .submit(generated("http", Lane::Normal, 400, &["sms"]))
        .await;
    let p = w.finish(id, 30).await;
    assert_eq!(p.wired, 400, "{p:?}");
    assert_eq!(gw.accepted.load(Ordering::SeqCst), 400);
    // One request at a time would take 20 s; the window keeps 32 going.
    let peak = gw.peak.load(Ordering::SeqCst);
    assert!(peak > 16 && peak <= 32, "peak in flight {peak}");
    assert!(
        w.dispatcher().sandbox("sms").is_none(),
        "no simulator for an http gateway"
    );
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_errors_and_unreachable_gateways_are_retried_not_dead_lettered() {
    use std::sync::atomic::Ordering;
    let gw = http_gateway(Duration::ZERO, 5).await;
    let mut ch = channel(0.0, SandboxConfig::default());
    ch.retry = RetryPolicy {
        backoff_ms: vec![100],
        jitter: 0.0,
        max_attempts: 4,
    };
    let w = world_with([("sms".to_string(), ch.clone())].into(), over_http(&gw.url)).await;
    let id = w
        .submit(generated("retry", Lane::Normal, 5, &["sms"]))
        .await;
    let p = w.finish(id, 20).await;
    assert_eq!((p.wired, p.retries, p.dead), (5, 5, 0), "{p:?}");
    assert_eq!(gw.accepted.load(Ordering::SeqCst), 5);
    w.shutdown().await;

    // Nobody listens: connection refused is retried with backoff, and
    // only after the last attempt is it a dead letter, with the reason.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let w = world_with([("sms".to_string(), ch)].into(), over_http(&url)).await;
    let id = w.submit(generated("down", Lane::Normal, 3, &["sms"])).await;
    let p = w.finish(id, 20).await;
    assert_eq!((p.dead, p.retries), (3, 9), "{p:?}");
    let dead = w.store().dead_letters(None, 10).unwrap();
    assert!(
        dead[0].reason.contains("cannot connect"),
        "{}",
        dead[0].reason
    );
    assert_eq!(dead[0].item.history.len(), 3);
    w.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_of_years_is_cut_to_the_channel_ceiling() {
    // Every send is answered 429 with a Retry-After of ~584 million years.
    let mut ch = channel(
        0.0,
        SandboxConfig {
            throttle_percent: 100.0,
            retry_after_s: u64::MAX / 1000,
            ..SandboxConfig::default()
        },
    );
    ch.max_retry_after_ms = 5_000;
    let w = world([("sms".to_string(), ch)].into()).await;
    let id = w.submit(generated("x", Lane::Emergency, 5, &["sms"])).await;
    // Three attempts, each followed by at most the 5 s ceiling (and the
    // rate the throttling cut).
    let p = w.finish(id, 60).await;
    assert_eq!(
        p.dead, 5,
        "gave up after its attempts, not parked for years: {p:?}"
    );
    assert_eq!(p.retries, 10, "{p:?}");
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_echoing_credentials_leaves_none_in_dead_letters() {
    // Refuses every message, echoing the bearer token and a credentialed
    // URL in its error text, as some gateways do.
    let app = axum::Router::new().route(
        "/messages",
        axum::routing::post(|headers: axum::http::HeaderMap| async move {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            (
                axum::http::StatusCode::BAD_REQUEST,
                serde_json::json!({
                    "error": format!("number barred ({auth}) via https://ops:hunter2@gw.example/send?api_key=zz9q"),
                    "code": "barred",
                })
                .to_string(),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let w = world_with(
        [("sms".to_string(), channel(0.0, SandboxConfig::default()))].into(),
        over_http(&url),
    )
    .await;
    let id = w.submit(generated("echo", Lane::Normal, 3, &["sms"])).await;
    w.finish(id, 20).await;
    let dead = w.store().dead_letters(None, 10).unwrap();
    assert_eq!(dead.len(), 3);
    for d in &dead {
        let all = format!("{} {:?}", d.reason, d.item.history);
        for secret in ["sandbox-token", "hunter2", "zz9q"] {
            assert!(!all.contains(secret), "{secret} in {all}");
        }
        assert!(d.reason.contains("number barred"), "{}", d.reason);
        assert!(d.reason.contains("[redacted]"), "{}", d.reason);
    }
    w.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn ended_campaigns_leave_memory_then_the_store_after_the_retention() {
    let mut config = crate::Config::default();
    config.dispatch.retention_days = 1;
    let w = world_with(sms(0.0), config).await;
    let ended = w
        .submit(generated("ended", Lane::Normal, 50, &["sms"]))
        .await;
    w.finish(ended, 10).await;
    // A second one ends at the same time: one pass purges both together.
    let also = w
        .submit(generated("also ended", Lane::Normal, 20, &["sms"]))
        .await;
    w.finish(also, 10).await;
    run_for(1_500).await;
    // An hour later it has left memory; its progress is read from the store.
    tokio::time::advance(Duration::from_secs(3_600)).await;
    run_for(61_000).await;
    assert!(
        w.dispatcher()
            .all_progress()
            .iter()
            .all(|p| p.id != ended.to_string())
    );
    let p = w.dispatcher().progress(ended).unwrap();
    assert_eq!((p.wired, p.done), (50, true), "{p:?}");
    let active = w
        .submit(generated("active", Lane::Normal, 5, &["sms"]))
        .await;
    // A day later the ended one is purged: record, statuses, counters.
    tokio::time::advance(Duration::from_secs(86_400)).await;
    run_for(61_000).await;
    for gone in [ended, also] {
        assert!(w.dispatcher().progress(gone).is_none());
        assert_eq!(w.store().campaign(gone).unwrap(), None);
        assert_eq!(w.store().counters(gone), Default::default());
        let mut statuses = 0;
        w.store()
            .scan_statuses(gone, &mut |_, _| {
                statuses += 1;
                Ok(true)
            })
            .unwrap();
        assert_eq!(statuses, 0);
    }
    // The later campaign ended less than a day ago: kept.
    assert!(w.dispatcher().progress(active).is_some());
    w.shutdown().await;
}

/// The ended-campaign index is kept only when something will be purged:
/// with `retention_days = 0` it would only grow.
#[tokio::test(start_paused = true)]
async fn the_ended_index_is_kept_only_with_a_retention() {
    for days in [0, 1] {
        let mut config = crate::Config::default();
        config.dispatch.retention_days = days;
        let w = world_with(sms(0.0), config).await;
        let id = w.submit(generated("x", Lane::Normal, 3, &["sms"])).await;
        w.finish(id, 10).await;
        run_for(1_500).await;
        let noted = w.dispatcher().shared.ended.lock().len();
        assert_eq!(noted, usize::from(days > 0), "retention {days}");
        w.shutdown().await;
    }
}

/// After a restart, campaigns that ended before it are purged once their
/// retention has passed; neither a retention pass nor a campaign list
/// reads every stored campaign record (a server keeps months of them).
#[tokio::test(start_paused = true)]
async fn the_retention_finds_campaigns_that_ended_before_a_restart_without_reading_them_all() {
    let mut config = crate::Config::default();
    config.dispatch.retention_days = 1;
    let engine = Arc::new(HeldCommits::default());
    let w = world_on(engine.clone(), sms(0.0), config.clone()).await;
    let ended = w
        .submit(generated("ended", Lane::Normal, 30, &["sms"]))
        .await;
    w.finish(ended, 10).await;
    run_for(1_500).await;
    w.shutdown().await;

    let w = world_on(engine.clone(), sms(0.0), config).await;
    let scans = engine
        .campaign_scans
        .load(std::sync::atomic::Ordering::Relaxed);
    // A day later (this start's clock began where the last one's did),
    // the one that ended before the restart is purged; a pass that fails
    // leaves it for the next.
    engine.refuse_purges.store(true, Ordering::Relaxed);
    tokio::time::advance(Duration::from_secs(86_400 + 120)).await;
    run_for(61_000).await;
    assert!(w.store().campaign(ended).unwrap().is_some(), "refused");
    engine.refuse_purges.store(false, Ordering::Relaxed);
    run_for(61_000).await;
    assert_eq!(w.store().campaign(ended).unwrap(), None, "purged");
    assert_eq!(w.store().counters(ended), Default::default());
    let kept = w.submit(generated("kept", Lane::Normal, 5, &["sms"])).await;
    w.finish(kept, 10).await;
    run_for(61_000).await;
    assert!(
        w.dispatcher().progress(kept).is_some(),
        "ended, but not long"
    );
    let listed: Vec<String> = w
        .dispatcher()
        .list_progress(5)
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(listed, vec![kept.to_string()]);
    assert_eq!(
        engine
            .campaign_scans
            .load(std::sync::atomic::Ordering::Relaxed),
        scans,
        "records read only at start"
    );
    w.shutdown().await;
}

/// The fan-out, the expiry check and the end stamping walk only the
/// campaigns not yet ended: one that ended leaves that index once its end
/// is stored (a refused write is stamped again at the next pass), and an
/// expiry that passes after it ended leaves its state as it ended.
#[tokio::test(start_paused = true)]
async fn campaigns_leave_the_open_index_once_their_end_is_stored() {
    let mut config = crate::Config::default();
    config.dispatch.retention_days = 1;
    let engine = Arc::new(HeldCommits::default());
    let w = world_on(engine.clone(), sms(0.0), config).await;
    let open = |w: &World| -> Vec<CampaignId> {
        w.dispatcher().shared.open.lock().keys().copied().collect()
    };
    let stored =
        |w: &World, id| CampaignRecord::decode(&w.store().campaign(id).unwrap().unwrap()).unwrap();
    engine.refuse_stamps.store(true, Ordering::Relaxed);
    let mut spec = generated("x", Lane::Normal, 3, &["sms"]);
    spec.expires_at_ms = Some(1_800_000_000_000 + 10_000);
    let id = w.submit(spec).await;
    assert_eq!(open(&w), vec![id], "open while it sends");
    w.finish(id, 10).await;
    run_for(2_500).await;
    assert_eq!(stored(&w, id).finished_ms, None, "the stamp was refused");
    assert_eq!(open(&w), vec![id], "still open: stamped again next pass");
    assert!(w.dispatcher().shared.ended.lock().is_empty());

    engine.refuse_stamps.store(false, Ordering::Relaxed);
    run_for(1_500).await;
    assert!(stored(&w, id).finished_ms.is_some(), "stamped");
    assert!(open(&w).is_empty(), "ended: no longer walked");
    assert_eq!(w.dispatcher().shared.ended.lock().len(), 1);
    assert_eq!(
        w.dispatcher().live_progress(id).unwrap().wired,
        3,
        "kept in memory"
    );

    run_for(10_000).await;
    let p = w.dispatcher().progress(id).unwrap();
    assert_eq!(
        (p.state, p.wired, p.expired),
        ("sending", 3, 0),
        "not relabelled expired"
    );
    w.shutdown().await;
}

/// Ended campaigns beyond `ended_in_memory` leave memory, oldest first;
/// their progress is then read from the store, the same as before. A
/// restart keeps the bound too.
#[tokio::test(start_paused = true)]
async fn ended_campaigns_beyond_the_memory_bound_are_read_from_the_store() {
    let mut config = crate::Config::default();
    config.dispatch.ended_in_memory = 2;
    let engine = Arc::new(MemoryEngine::new());
    let w = world_on(engine.clone(), sms(0.0), config.clone()).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = w
            .submit(generated(&format!("c{i}"), Lane::Normal, 3, &["sms"]))
            .await;
        w.finish(id, 10).await;
        // Each ends in its own second: stamped, and so evicted, in order.
        run_for(1_100).await;
        ids.push(id);
    }
    let resident = |w: &World| -> Vec<CampaignId> {
        w.dispatcher()
            .shared
            .campaigns
            .read()
            .keys()
            .copied()
            .collect()
    };
    assert_eq!(resident(&w), ids[3..].to_vec(), "the newest two stay");
    for &id in &ids {
        let p = w.dispatcher().progress(id).unwrap();
        assert_eq!((p.wired, p.done, p.state), (3, true, "sending"), "{id}");
    }
    assert!(w.dispatcher().live_progress(ids[0]).is_none());
    w.shutdown().await;

    let w = world_on(engine, sms(0.0), config).await;
    assert_eq!(resident(&w), ids[3..].to_vec(), "bounded after a restart");
    assert_eq!(w.dispatcher().progress(ids[0]).unwrap().wired, 3);
    w.shutdown().await;
}

/// An ended campaign that work came back to (a late failure's fallback)
/// stays in memory until that work ends, and still counts against
/// `ended_in_memory`: the others leave in its place.
#[tokio::test(start_paused = true)]
async fn an_ended_campaign_with_work_again_stays_in_memory_and_counts_against_the_bound() {
    let mut whatsapp = channel(
        0.0,
        SandboxConfig {
            receipt_delay_ms: 2_000,
            undelivered_percent: 100.0,
            ..SandboxConfig::default()
        },
    );
    whatsapp.sandbox.receipts = true;
    let mut sms = channel(0.0, SandboxConfig::default());
    sms.sandbox.receipts = true;
    sms.sandbox.receipt_delay_ms = 100;
    let mut config = crate::Config::default();
    config.dispatch.ended_in_memory = 1;
    let w = world_with(
        [("whatsapp".to_string(), whatsapp), ("sms".to_string(), sms)].into(),
        config,
    )
    .await;
    w.dispatcher().hold_channel("sms", true).await.unwrap();
    let back = w
        .submit(generated("back", Lane::Normal, 3, &["whatsapp", "sms"]))
        .await;
    // Wired and stamped ended; two seconds later every receipt says
    // undelivered, and the deliveries wait on the held second channel.
    run_for(1_500).await;
    assert!(w.dispatcher().progress(back).unwrap().done);
    run_for(2_500).await;
    let p = w.dispatcher().progress(back).unwrap();
    assert_eq!((p.rerouted, p.done), (3, false), "{p:?}");

    let mut later = Vec::new();
    for name in ["b", "c"] {
        later.push(
            w.submit(generated(name, Lane::Normal, 3, &["whatsapp"]))
                .await,
        );
    }
    run_for(1_500).await;
    let resident: Vec<CampaignId> = w
        .dispatcher()
        .shared
        .campaigns
        .read()
        .keys()
        .copied()
        .collect();
    assert_eq!(
        resident,
        vec![back],
        "the one with work stays, and fills the bound"
    );
    for id in later {
        assert!(
            w.dispatcher().progress(id).unwrap().done,
            "read from the store"
        );
    }

    w.dispatcher().hold_channel("sms", false).await.unwrap();
    run_for(2_000).await;
    let p = w.dispatcher().progress(back).unwrap();
    assert_eq!((p.delivered, p.done), (3, true), "{p:?}");
    w.shutdown().await;
}

#[test]
fn channel_addresses_are_checked_like_numbers_or_as_ids() {
    let with = |channel: &str, address: &str| Recipient {
        addresses: [(channel.to_string(), address.to_string())].into(),
        ..Recipient::default()
    };
    let (ok, rejected) = normalize(
        &[
            with("whatsapp", "+231 77 012 3456"),
            with("telegram", " 123456789 "),
            with("whatsapp", "+231 12"),
            with("telegram", "  "),
            with("telegram", "abc\u{7}def"),
            with("messenger", &"x".repeat(300)),
        ],
        "LR",
    );
    assert_eq!(ok.len(), 2);
    assert_eq!(ok[0].addresses["whatsapp"], "+231770123456", "normalised");
    assert_eq!(ok[1].addresses["telegram"], "123456789", "an id, trimmed");
    let reasons: Vec<(usize, &str)> = rejected
        .iter()
        .map(|r| (r.index, r.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (
                2,
                "the address for whatsapp, \"+231 12\", is not a valid phone number"
            ),
            (3, "the address for telegram is empty"),
            (4, "the address for telegram contains control characters"),
            (5, "the address for messenger is longer than 256 bytes"),
        ]
    );
}

/// `n` nurses (and as many midwives) in the directory.
fn directory_of(w: &World, n: usize) {
    use crate::directory::{Incoming, IncomingContact, Telecom};
    let contacts = (0..2 * n)
        .map(|i| IncomingContact {
            resource: format!("Practitioner/{i}"),
            name: format!("Worker {i}"),
            telecoms: vec![Telecom {
                system: "phone".into(),
                value: format!("07700{i:05}"),
                ..Default::default()
            }],
            roles: vec![if i % 2 == 0 { "nurse" } else { "midwife" }.into()],
            active: true,
            ..Default::default()
        })
        .collect();
    w.broker
        .directory()
        .import(
            "ihris",
            "LR",
            Incoming {
                contacts,
                ..Default::default()
            },
        )
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_selector_audience_is_frozen_at_submit_and_withholds_later_opt_outs() {
    let w = world(sms(100.0)).await;
    directory_of(&w, 1500);
    let mut spec = generated("nurses", Lane::Normal, 1, &["sms"]);
    spec.audience = AudienceSpec::Selector("role:nurse".into());
    let submitted = w.dispatcher().submit(spec.clone()).await.unwrap();
    assert_eq!(submitted.accepted, 1500);
    let id = submitted.id;
    // Joins after the submit are not in it; an opt-out before the fan-out
    // reaches the contact is honoured.
    directory_of(&w, 1600);
    let last = w
        .broker
        .directory()
        .find("Practitioner/2998")
        .unwrap()
        .unwrap();
    w.broker
        .directory()
        .set_opted_out(
            last.number,
            Some(crate::directory::OptOut {
                at_ms: 1,
                via: "operator".into(),
            }),
        )
        .unwrap();
    let p = w.finish(id, 60).await;
    assert_eq!(p.total, 1500);
    assert_eq!(p.wired, 1499);
    assert_eq!(p.failed + p.dead, 1);
    let rec = w
        .store()
        .status(DeliveryId::new(id, 1499))
        .unwrap()
        .unwrap();
    assert_eq!(rec.reason.as_deref(), Some("opted out"));

    // A selector that selects nobody, or does not parse, is refused and
    // leaves no campaign behind.
    spec.audience = AudienceSpec::Selector("role:surgeon".into());
    let e = w.dispatcher().submit(spec.clone()).await.unwrap_err();
    assert!(e.to_string().contains("selects no contact"), "{e}");
    spec.audience = AudienceSpec::Selector("role:nurse AND (".into());
    let e = w.dispatcher().submit(spec).await.unwrap_err();
    assert!(e.to_string().contains("audience.selector"), "{e}");
    assert_eq!(w.dispatcher().all_progress().len(), 1);
    w.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_named_list_withholds_who_opts_out_while_it_fans_out_but_an_answer_reaches_them() {
    let w = world(sms(100.0)).await;
    directory_of(&w, 750);
    let directory = w.broker.directory();
    let opt_out = |resource: &str| {
        let c = directory.find(resource).unwrap().unwrap();
        directory
            .set_opted_out(
                c.number,
                Some(crate::directory::OptOut {
                    at_ms: 1,
                    via: "sms".into(),
                }),
            )
            .unwrap();
    };
    let list = |range: std::ops::Range<usize>| {
        AudienceSpec::Recipients(
            range
                .map(|i| Recipient {
                    phone: Some(format!("07700{i:05}")),
                    ..Recipient::default()
                })
                .collect(),
        )
    };
    // Someone already opted out is refused at once.
    opt_out("Practitioner/0");
    let mut spec = generated("stock count", Lane::Normal, 1, &["sms"]);
    spec.audience = list(0..1500);
    let submitted = w.dispatcher().submit(spec.clone()).await.unwrap();
    assert_eq!(submitted.accepted, 1499);
    assert_eq!(submitted.rejected[0].index, 0);
    // At 100/s the list fans out 1,000 ahead of what is sent: the last
    // worker opts out (a STOP to another campaign) long before it gets
    // there.
    opt_out("Practitioner/1499");
    let p = w.finish(submitted.id, 60).await;
    assert_eq!(p.total, 1499);
    assert_eq!(p.wired, 1498);
    let last = w
        .store()
        .status(DeliveryId::new(submitted.id, 1498))
        .unwrap()
        .unwrap();
    assert_eq!(
        last.reason.as_deref(),
        Some("the worker at this number opted out")
    );
    // The confirmation of that STOP is an answer: it reaches them.
    spec.audience = list(1499..1500);
    let answer = w.dispatcher().submitter().answer(spec).await.unwrap();
    assert_eq!(answer.accepted, 1);
    let p = w.finish(answer.id, 5).await;
    assert_eq!(p.wired, 1);
    w.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_submission_repeated_under_its_idempotency_key_is_answered_not_sent_again() {
    let mut config = crate::Config::default();
    config.dispatch.retention_days = 1;
    let w = world_with(sms(0.0), config).await;
    let once = |key: &str, request: u8| Once {
        scope: "api",
        field: "Idempotency-Key",
        key: key.into(),
        request: [request; 32],
    };
    let mut spec = generated("lab result 42", Lane::High, 1, &["sms"]);
    spec.audience = AudienceSpec::Recipients(vec![
        Recipient {
            phone: Some("0770 123 456".into()),
            ..Recipient::default()
        },
        Recipient {
            phone: Some("12".into()),
            ..Recipient::default()
        },
    ]);
    let first = w
        .dispatcher()
        .submit_once(spec.clone(), once("lab-42", 1))
        .await
        .unwrap();
    assert!(!first.replayed);
    assert_eq!((first.accepted, first.rejected.len()), (1, 1));
    // The client's retry: the first answer, rejections included.
    let again = w
        .dispatcher()
        .submit_once(spec.clone(), once("lab-42", 1))
        .await
        .unwrap();
    assert_eq!(
        again,
        Submitted {
            replayed: true,
            ..first.clone()
        }
    );
    w.finish(first.id, 5).await;
    run_for(1_500).await;
    assert_eq!(w.dispatcher().all_progress().len(), 1, "one campaign");
    assert_eq!(
        w.dispatcher().sandbox("sms").unwrap().stats().accepted,
        1,
        "sent once"
    );

    // The key with another request, or no key at all: refused, naming it.
    let reused = w
        .dispatcher()
        .submit_once(spec.clone(), once("lab-42", 2))
        .await
        .unwrap_err();
    assert!(
        matches!(&reused, Error::InvalidField { field, .. } if field == "Idempotency-Key"),
        "{reused}"
    );
    for bad in ["", "two words", &"k".repeat(256)] {
        let refused = w
            .dispatcher()
            .submit_once(spec.clone(), once(bad, 1))
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, Error::InvalidField { field, .. } if field == "Idempotency-Key"),
            "{bad:?}: {refused}"
        );
    }
    // While a first submission with a key is being accepted, a second is
    // told to retry rather than accepted beside it.
    w.dispatcher()
        .shared
        .submitting
        .lock()
        .insert("api:lab-43".into());
    let racing = w
        .dispatcher()
        .submit_once(spec.clone(), once("lab-43", 3))
        .await
        .unwrap_err();
    assert!(matches!(racing, Error::Conflict(_)), "{racing}");
    w.dispatcher().shared.submitting.lock().remove("api:lab-43");

    // Purged with its campaign after the retention: the key is free again.
    assert!(w.store().submission("api:lab-42").unwrap().is_some());
    tokio::time::advance(Duration::from_secs(3_600)).await;
    run_for(61_000).await;
    tokio::time::advance(Duration::from_secs(86_400)).await;
    run_for(61_000).await;
    assert_eq!(w.store().campaign(first.id).unwrap(), None);
    assert_eq!(w.store().submission("api:lab-42").unwrap(), None);
    let reused = w
        .dispatcher()
        .submit_once(spec, once("lab-42", 2))
        .await
        .unwrap();
    assert!(!reused.replayed && reused.id != first.id, "{reused:?}");
    w.shutdown().await;
}
