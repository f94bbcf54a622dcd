//! The inbound pipeline through the composition root, on the in-memory
//! engine: workers' replies are scripted at the sandbox gateway and reach
//! the broker through the webhook entry point, as a real gateway's would.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::Broker;
use crate::config::{ChannelConfig, Config, EngineKind};
use crate::directory::{Incoming, IncomingContact, Telecom};
use crate::store::MemoryEngine;
use crate::testkit::{broker_on, phone_worker};

const START_MS: u64 = 1_800_000_000_000;

async fn broker(inbound: InboundConfig) -> Broker {
    let engine = Arc::new(MemoryEngine::new());
    broker_on(engine, START_MS, &["sms", "telegram"], |c| {
        c.inbound = inbound
    })
    .await
}

/// A broker with one sandbox SMS channel on `engine`: opened again on the
/// same engine, it is the same broker after a restart.
async fn on(engine: Arc<dyn crate::store::Engine>) -> Broker {
    broker_on(engine, START_MS, &["sms"], |_| {}).await
}

fn worker(id: &str, phone: &str, language: &str) -> IncomingContact {
    IncomingContact {
        languages: vec![language.into()],
        roles: vec!["nurse".into()],
        facilities: vec!["Location/phebe".into()],
        ..phone_worker(id, phone)
    }
}

/// Three nurses: two with phones (one French-speaking), one on Telegram
/// only.
fn import(b: &Broker) -> [u32; 3] {
    let telegram_only = IncomingContact {
        telecoms: vec![Telecom {
            system: "telegram".into(),
            value: "chat-42".into(),
            ..Default::default()
        }],
        ..worker("3", "", "en")
    };
    b.directory()
        .import(
            "ihris",
            "LR",
            Incoming {
                contacts: vec![
                    worker("1", "0770000001", "fr"),
                    worker("2", "0770000002", "en"),
                    telegram_only,
                ],
                ..Default::default()
            },
        )
        .unwrap();
    ["1", "2", "3"].map(|id| {
        b.directory()
            .find(&format!("Practitioner/{id}"))
            .unwrap()
            .unwrap()
            .number
    })
}

/// Waits until the pipeline has processed `n` messages; returns them.
async fn processed(b: &Broker, n: usize) -> Vec<InboundEvent> {
    for _ in 0..600 {
        let got = b.store().processed_inbound(0, 10_000).unwrap();
        if got.len() >= n {
            return got
                .into_iter()
                .map(|(seq, m, r)| {
                    let channel = b.dispatcher().channel_name(m.channel).unwrap().to_string();
                    InboundEvent::new(seq, m, Some(r), channel)
                })
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored = b.store().inbound_results(0, 10_000).unwrap();
    panic!(
        "fewer than {n} processed: {} stored, {} processed, the first not processed: {:?}",
        stored.len(),
        stored.iter().filter(|m| m.2.is_some()).count(),
        stored.iter().find(|m| m.2.is_none())
    );
}

fn by_text<'a>(events: &'a [InboundEvent], text: &str) -> Vec<&'a InboundEvent> {
    events.iter().filter(|e| e.text == text).collect()
}

fn now(b: &Broker) -> u64 {
    b.dispatcher().now_ms()
}

#[tokio::test(start_paused = true)]
async fn replies_are_deduplicated_matched_classified_and_routed() {
    let b = broker(InboundConfig::default()).await;
    let [one, two, three] = import(&b);
    let sent = b
        .dispatcher()
        .submit(CampaignSpec {
            name: "stock check".into(),
            lane: Lane::Normal,
            body: crate::dispatch::Body::text("Do you have ORS in stock? Reply YES or NO."),
            channels: vec!["sms".into(), "telegram".into()],
            audience: AudienceSpec::Selector("role:nurse".into()),
            expires_at_ms: None,
            start_at_ms: None,
        })
        .await
        .unwrap()
        .id;
    assert!(
        b.dispatcher()
            .wait_done(&[sent], Duration::from_secs(30))
            .await
    );

    let sms = b.sandbox("sms").unwrap();
    let telegram = b.sandbox("telegram").unwrap();
    let t = now(&b);
    sms.worker_sends("m1", "+231770000001", "Oui", t);
    // The gateway sends its webhook twice: kept once.
    sms.worker_sends("m1", "+231770000001", "Oui", t);
    // The worker presses send twice: kept, marked, not routed again.
    sms.worker_sends("m2", "+231770000001", "oui ", t);
    sms.worker_sends("m3", "+231779999999", "Hello, who is this?", t);
    // Without the plus, as some gateways write numbers.
    sms.worker_sends("m4", "231770000002", "Arrêt", t);
    sms.worker_sends("m5", "+231770000001", "AIDE", t);
    telegram.worker_sends("t1", "chat-42", "no", t);
    let events = processed(&b, 6).await;
    assert_eq!(events.len(), 6, "{events:#?}");

    let yes = by_text(&events, "Oui");
    assert_eq!(yes.len(), 1, "the webhook sent twice is kept once");
    let p = yes[0].processed.as_ref().unwrap();
    assert_eq!(p.contact, Some(one));
    assert_eq!(p.route, "inbox");
    assert_eq!(
        (p.label.as_str(), p.language.as_deref()),
        ("yes", Some("fr"))
    );
    assert_eq!(p.classifier.as_deref(), Some("keywords"));
    assert_eq!(p.reply_to_campaign, Some(sent.0), "it answers the campaign");
    assert!(
        p.reply_to
            .as_deref()
            .unwrap()
            .starts_with(&sent.to_string())
    );

    let again = by_text(&events, "oui ")[0].processed.as_ref().unwrap();
    assert_eq!(again.route, "duplicate");
    assert_eq!(again.duplicate_of, Some(yes[0].seq));
    assert_eq!(
        again.label, "unknown",
        "a duplicate is not classified again"
    );

    let stranger = by_text(&events, "Hello, who is this?")[0]
        .processed
        .as_ref()
        .unwrap();
    assert_eq!((stranger.contact, stranger.reply_to.as_ref()), (None, None));
    assert_eq!(stranger.route, "inbox");

    let stop = by_text(&events, "Arrêt")[0].processed.as_ref().unwrap();
    assert_eq!(stop.contact, Some(two));
    assert_eq!(
        (stop.route.as_str(), stop.keyword.as_deref()),
        ("opt_out", Some("Arrêt"))
    );
    assert!(stop.problems.is_empty(), "{:?}", stop.problems);
    let c = b.directory().contact(two).unwrap().unwrap();
    assert_eq!(
        c.opted_out.as_ref().map(|o| o.via.as_str()),
        Some("Arrêt by sms")
    );
    assert_eq!(
        b.directory().count("role:nurse", &[]).unwrap().selected,
        2,
        "the directory stops selecting the worker at once"
    );

    let help = by_text(&events, "AIDE")[0].processed.as_ref().unwrap();
    assert_eq!(help.route, "help");

    let on_telegram = by_text(&events, "no")[0].processed.as_ref().unwrap();
    assert_eq!(
        on_telegram.contact,
        Some(three),
        "found by its Telegram chat"
    );
    assert_eq!(on_telegram.label, "no");
    assert_eq!(on_telegram.reply_to_campaign, Some(sent.0));

    // The opt-out and the help request are answered on their channel, at
    // high priority, in the worker's language.
    let mut answered = BTreeMap::new();
    for _ in 0..200 {
        answered = b
            .dispatcher()
            .all_progress()
            .into_iter()
            .filter(|p| p.name.starts_with("answer: "))
            .map(|p| (p.name.clone(), (p.lane, p.total, p.wired + p.delivered)))
            .collect();
        if answered.len() == 2 && answered.values().all(|(_, _, w)| *w == 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        answered,
        [
            ("answer: help (sms)".to_string(), ("high", 1, 1)),
            ("answer: opt_out (sms)".to_string(), ("high", 1, 1)),
        ]
        .into()
    );

    // A message naming the worker outright (a lab result) leaves them out
    // too, by phone number or by channel address, and says why; alone, it
    // is refused.
    let named = |who: &[(&str, &str)]| CampaignSpec {
        name: "lab result".into(),
        lane: Lane::High,
        body: crate::dispatch::Body::text("Your sample 12 is ready."),
        channels: vec!["sms".into()],
        audience: AudienceSpec::Recipients(
            who.iter()
                .map(|(channel, address)| match *channel {
                    "phone" => crate::audience::Recipient {
                        phone: Some(address.to_string()),
                        ..crate::audience::Recipient::default()
                    },
                    _ => crate::audience::Recipient {
                        addresses: [(channel.to_string(), address.to_string())].into(),
                        ..crate::audience::Recipient::default()
                    },
                })
                .collect(),
        ),
        expires_at_ms: None,
        start_at_ms: None,
    };
    let s = b
        .dispatcher()
        .submit(named(&[
            ("phone", "0770000002"),
            ("phone", "+231770000001"),
            ("sms", "+231770000002"),
        ]))
        .await
        .unwrap();
    assert_eq!(s.accepted, 1, "{s:?}");
    let reasons: Vec<(usize, &str)> = s
        .rejected
        .iter()
        .map(|r| (r.index, r.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            (0, "the worker at this number opted out"),
            (2, "the worker at this sms address opted out"),
        ]
    );
    let alone = b
        .dispatcher()
        .submit(named(&[("phone", "+231770000002")]))
        .await
        .unwrap_err();
    assert!(alone.to_string().contains("opted out"), "{alone}");

    // START opts back in.
    sms.worker_sends("m6", "+231770000002", "start", now(&b));
    let events = processed(&b, 7).await;
    assert_eq!(events[6].processed.as_ref().unwrap().route, "opt_in");
    assert!(
        b.directory()
            .contact(two)
            .unwrap()
            .unwrap()
            .opted_out
            .is_none()
    );
    let s = b
        .dispatcher()
        .submit(named(&[("phone", "+231770000002")]))
        .await
        .unwrap();
    assert_eq!((s.accepted, s.rejected.len()), (1, 0), "{s:?}");
    b.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_duplicate_window_closes_and_old_entries_are_forgotten() {
    let b = broker(InboundConfig {
        dedup_window_s: 60,
        ..InboundConfig::default()
    })
    .await;
    import(&b);
    let sms = b.sandbox("sms").unwrap();
    sms.worker_sends("a", "+231770000001", "YES", now(&b));
    processed(&b, 1).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    sms.worker_sends("b", "+231770000001", "yes", now(&b));
    processed(&b, 2).await;
    tokio::time::sleep(Duration::from_secs(61)).await;
    sms.worker_sends("c", "+231770000001", "YES", now(&b));
    let events = processed(&b, 3).await;
    let routes: Vec<_> = events
        .iter()
        .map(|e| e.processed.as_ref().unwrap().route.as_str())
        .collect();
    assert_eq!(routes, ["inbox", "duplicate", "inbox"]);
    // Only the latest entry is left in the recent-text index.
    let digest = keywords::digest(
        b.store().channel("sms").unwrap().0,
        "+231770000001",
        "yes",
        None,
    );
    assert_eq!(
        b.store().recent_inbound(digest).unwrap(),
        Some((events[2].seq, events[2].stored_ms))
    );
    tokio::time::sleep(Duration::from_secs(61)).await;
    sms.worker_sends("d", "+231770000002", "NO", now(&b));
    processed(&b, 4).await;
    assert_eq!(
        b.store().recent_inbound(digest).unwrap(),
        None,
        "forgotten once out of the window"
    );
    b.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn processing_resumes_where_it_stopped_after_a_restart() {
    let engine: Arc<dyn crate::store::Engine> = Arc::new(MemoryEngine::new());
    let b = on(Arc::clone(&engine)).await;
    let sms = b.sandbox("sms").unwrap();
    for i in 0..1500 {
        sms.worker_sends(
            &format!("x{i}"),
            &format!("+23177{i:07}"),
            "REPORT ok",
            now(&b),
        );
    }
    processed(&b, 1500).await;
    b.shutdown().await;

    let b = on(engine).await;
    assert_eq!(*b.inbound().processed().borrow(), 1500);
    let sms = b.sandbox("sms").unwrap();
    sms.worker_sends("y", "+231770000001", "STOCK AMOX 12", now(&b));
    let events = processed(&b, 1501).await;
    let routes: BTreeMap<&str, usize> = events.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e.processed.as_ref().unwrap().route.as_str())
            .or_default() += 1;
        m
    });
    assert_eq!(routes, [("report", 1500), ("stock", 1)].into());
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=1501).collect::<Vec<_>>(),
        "each processed once, in order"
    );
    b.shutdown().await;
}

/// A crash between answering a page's messages and committing what was
/// made of them: the page is processed again at the next start, and its
/// messages are answered once, even when more arrived before the crash.
/// A message after it is answered as usual.
#[tokio::test(start_paused = true)]
async fn a_page_processed_again_after_a_crash_answers_its_messages_once() {
    let engine: Arc<dyn crate::store::Engine> = Arc::new(MemoryEngine::new());
    // The answer campaigns stored, by name, with their recipients.
    let answers = |b: &Broker| -> Vec<(String, u32)> {
        let mut out: Vec<(String, u32)> = b
            .store()
            .campaigns()
            .unwrap()
            .into_iter()
            .map(|(_, bytes)| crate::dispatch::CampaignRecord::decode(&bytes).unwrap())
            .filter(|r| r.spec.name.starts_with("answer: "))
            .map(|r| (r.spec.name, r.total))
            .collect();
        out.sort();
        out
    };
    let until_processed = |b: &Broker, seq: u64| {
        let mut processed = b.inbound().processed();
        async move {
            processed.wait_for(|&p| p >= seq).await.unwrap();
        }
    };
    let b = on(Arc::clone(&engine)).await;
    let sms = b.sandbox("sms").unwrap();
    sms.worker_sends("s1", "+231770000001", "STOP", now(&b));
    sms.worker_sends("h1", "+231770000002", "HELP", now(&b));
    until_processed(&b, 2).await;
    let first = answers(&b);
    assert_eq!(
        first,
        [
            ("answer: help (sms)".to_string(), 1),
            ("answer: opt_out (sms)".to_string(), 1)
        ]
    );
    b.shutdown().await;

    // The crash: what the page's messages were made into is lost (the
    // pipeline's position with it); the answers were accepted.
    let mut lost = crate::store::Batch::new();
    lost.delete(
        crate::store::Cf::Inbound,
        crate::store::keys::INBOUND_PROCESSED.to_vec(),
    );
    engine.write(lost).unwrap();
    let position = engine
        .get(
            crate::store::Cf::Inbound,
            crate::store::keys::INBOUND_PROCESSED,
        )
        .unwrap();
    assert_eq!(position, None, "the page's position is lost");
    // Another STOP arrived before the crash, after the page was read: the
    // page read again must not take it in (its opt-out answer would then
    // be keyed by two messages, and the first worker answered twice).
    let key = |seq: u64| crate::store::keys::inbound(seq);
    let stored = engine.get(crate::store::Cf::Inbound, &key(1)).unwrap();
    let mut later: crate::store::InboundRecord =
        crate::store::records::decode(crate::store::Cf::Inbound, &key(1), &stored.unwrap())
            .unwrap();
    later.from = "+231770000003".into();
    later.external_id = Some("s2".into());
    let mut arrived = crate::store::Batch::new();
    arrived.put(
        crate::store::Cf::Inbound,
        key(3),
        crate::store::records::encode(&later),
    );
    arrived.put(
        crate::store::Cf::Inbound,
        crate::store::keys::NEXT_INBOUND.to_vec(),
        crate::store::records::encode(&4u64),
    );
    engine.write(arrived).unwrap();
    // The pipeline starts from the beginning as the broker opens (it may
    // be done before `on` returns): both messages are processed again,
    // then the one that arrived.
    let b = on(engine).await;
    until_processed(&b, 3).await;
    assert_eq!(
        answers(&b),
        [
            ("answer: help (sms)".to_string(), 1),
            ("answer: opt_out (sms)".to_string(), 1),
            ("answer: opt_out (sms)".to_string(), 1)
        ],
        "each message answered once"
    );

    let sms = b.sandbox("sms").unwrap();
    sms.worker_sends("s3", "+231770000004", "STOP", now(&b));
    until_processed(&b, 4).await;
    assert_eq!(
        answers(&b),
        [
            ("answer: help (sms)".to_string(), 1),
            ("answer: opt_out (sms)".to_string(), 1),
            ("answer: opt_out (sms)".to_string(), 1),
            ("answer: opt_out (sms)".to_string(), 1)
        ]
    );
    b.shutdown().await;
}

#[test]
fn an_answer_key_names_its_messages_in_visible_ascii_whatever_the_names() {
    let key = answer_key("sms-côte", "arrêt", [3, 5, 9].into_iter());
    assert!(key.starts_with("3-9:3:"), "{key}");
    assert!(
        key.len() <= 255 && key.bytes().all(|b| b.is_ascii_graphic()),
        "{key}"
    );
    assert_ne!(key, answer_key("sms-côte", "help", [3, 5, 9].into_iter()));
    assert_ne!(key, answer_key("sms", "arrêt", [3, 5, 9].into_iter()));
    assert_ne!(key, answer_key("sms-côte", "arrêt", [3, 9].into_iter()));
}

#[test]
fn the_config_refuses_what_it_cannot_use() {
    let channels = ["sms"];
    let ok = InboundConfig::default();
    assert_eq!(ok.validate(&channels), Ok(()));
    let mut c = ok.clone();
    c.keywords.get_mut("help").unwrap().push("stop".into());
    assert!(c.validate(&channels).unwrap_err().contains("both"));
    let mut c = ok.clone();
    c.answers
        .insert("nothing".into(), crate::dispatch::Body::text("x"));
    assert!(
        c.validate(&channels)
            .unwrap_err()
            .contains("inbound.answers.nothing")
    );
    let mut c = ok.clone();
    c.channel_classifiers.insert("fax".into(), vec![]);
    assert!(c.validate(&channels).unwrap_err().contains("fax"));
    let mut c = ok.clone();
    c.subscribers.push(SubscriberConfig {
        name: "hmis".into(),
        url: "ftp://example.org".into(),
        secret: "0123456789abcdef".into(),
        routes: vec![],
        batch: 100,
        max_attempts: 3,
        backoff_ms: vec![10],
        timeout_ms: 100,
    });
    assert!(c.validate(&channels).unwrap_err().contains("http(s)"));
    c.subscribers[0].url = "https://hmis.example.org/mhero".into();
    c.subscribers[0].secret = "short".into();
    assert!(c.validate(&channels).unwrap_err().contains("secret"));
}

/// What the integrator's endpoint saw: each call's delivery id,
/// signature check and messages.
#[derive(Default)]
struct Seen {
    calls: Vec<(String, bool, subscribers::Delivery)>,
    refuse_first: usize,
}

async fn endpoint(seen: Arc<parking_lot::Mutex<Seen>>) -> String {
    use axum::http::{HeaderMap, StatusCode};
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let seen = Arc::clone(&seen);
            async move {
                let header = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string()
                };
                let signed = header(subscribers::SIGNATURE_HEADER)
                    == crate::signature::sign("integrator-secret-1", &body);
                let delivery: subscribers::Delivery = serde_json::from_slice(&body).unwrap();
                let mut seen = seen.lock();
                let refuse = seen.calls.len() < seen.refuse_first;
                seen.calls
                    .push((header(subscribers::DELIVERY_HEADER), signed, delivery));
                if refuse {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_get_signed_calls_in_order_retried_or_set_aside() {
    let seen = Arc::new(parking_lot::Mutex::new(Seen {
        refuse_first: 2,
        ..Seen::default()
    }));
    let url = endpoint(Arc::clone(&seen)).await;
    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let subscriber = |name: &str, url: String, routes: &[&str]| SubscriberConfig {
        name: name.into(),
        url,
        secret: "integrator-secret-1".into(),
        routes: routes.iter().map(|r| r.to_string()).collect(),
        batch: 2,
        max_attempts: 3,
        backoff_ms: vec![20, 40],
        timeout_ms: 2_000,
    };
    let inbound = InboundConfig {
        subscribers: vec![
            subscriber("hmis", url, &[]),
            subscriber("gone", format!("http://{closed}/hook"), &["inbox"]),
        ],
        ..InboundConfig::default()
    };
    let mut config = Config {
        channels: [("sms".to_string(), ChannelConfig::default())].into(),
        inbound,
        ..Config::default()
    };
    config.store.engine = EngineKind::Memory;
    config.plugins.cache_dir = None;
    let b = Broker::open_with(
        config,
        crate::broker::Options {
            clock: None,
            engine: Some(Arc::new(MemoryEngine::new())),
        },
    )
    .await
    .unwrap();
    let sms = b.sandbox("sms").unwrap();
    let texts = ["YES", "STOP", "hello", "REPORT 3 cases"];
    for (i, t) in texts.iter().enumerate() {
        sms.worker_sends(&format!("s{i}"), &format!("+23177000000{i}"), t, now(&b));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let taken: usize = seen
            .lock()
            .calls
            .iter()
            .skip(2)
            .map(|c| c.2.messages.len())
            .sum();
        let gone = b.store().subscriber_position("gone").unwrap();
        if taken >= 4 && gone >= 4 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{taken} taken, gone at {gone}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let calls = std::mem::take(&mut seen.lock().calls);
    assert!(calls.iter().all(|c| c.1), "every call is signed");
    // Refused twice, then taken: the same call three times, same id.
    assert_eq!(calls[0].0, calls[1].0);
    assert_eq!(calls[1].0, calls[2].0);
    assert_eq!(calls[0].0, format!("hmis-{}", calls[0].2.messages[0].seq));
    let delivered: Vec<(&str, &str)> = calls[2..]
        .iter()
        .flat_map(|c| &c.2.messages)
        .map(|m| {
            (
                m.text.as_str(),
                m.processed.as_ref().unwrap().route.as_str(),
            )
        })
        .collect();
    assert_eq!(
        delivered,
        [
            ("YES", "inbox"),
            ("STOP", "opt_out"),
            ("hello", "inbox"),
            ("REPORT 3 cases", "report")
        ],
        "in order, once each after the retries"
    );
    // The unreachable subscriber set its inbox messages aside, with why,
    // and went on.
    let undelivered = b.store().undelivered_inbound("gone", 10).unwrap();
    let set_aside: Vec<u64> = undelivered.iter().flat_map(|u| u.seqs.clone()).collect();
    assert_eq!(set_aside.len(), 2, "{undelivered:?}");
    assert!(
        undelivered
            .iter()
            .all(|u| u.attempts == 3 && u.reason.contains("cannot reach")),
        "{undelivered:?}"
    );
    b.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_chain_reads_reports_and_detects_the_language() {
    let b = broker(InboundConfig {
        classifiers: vec!["stock-report".into(), "keywords".into(), "language".into()],
        ..InboundConfig::default()
    })
    .await;
    import(&b);
    let sms = b.sandbox("sms").unwrap();
    let t = now(&b);
    sms.worker_sends("r1", "+231770000002", "STOCK AMOX 120 ORS 40", t);
    // An English-speaking worker writes in Swahili.
    sms.worker_sends("r2", "+231770000002", "asante sana, leo hatuna dawa", t);
    let events = processed(&b, 2).await;
    let report = events[0].processed.as_ref().unwrap();
    assert_eq!(
        (
            report.route.as_str(),
            report.label.as_str(),
            report.classifier.as_deref()
        ),
        ("stock", "stock", Some("stock-report"))
    );
    assert_eq!(report.fields.get("AMOX").map(String::as_str), Some("120"));
    assert_eq!(report.fields.get("ORS").map(String::as_str), Some("40"));
    let swahili = events[1].processed.as_ref().unwrap();
    assert_eq!(swahili.language.as_deref(), Some("sw"), "{swahili:?}");
    assert_eq!(swahili.label, "unknown", "a language is not a label");
    b.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_scheduled_campaign_withholds_who_opted_out_after_it_was_accepted() {
    let b = broker(InboundConfig::default()).await;
    let [_, two, _] = import(&b);
    let phone = |p: &str| crate::audience::Recipient {
        phone: Some(p.to_string()),
        ..crate::audience::Recipient::default()
    };
    let s = b
        .dispatcher()
        .submit(CampaignSpec {
            name: "reminder: facility visit tomorrow".into(),
            lane: Lane::Normal,
            body: crate::dispatch::Body::text("The supervision team visits tomorrow."),
            channels: vec!["sms".into()],
            audience: AudienceSpec::Recipients(vec![
                phone("+231770000001"),
                phone("+231770000002"),
            ]),
            expires_at_ms: None,
            start_at_ms: Some(now(&b) + 3_600_000),
        })
        .await
        .unwrap();
    assert_eq!((s.accepted, s.rejected.len()), (2, 0), "both reachable now");
    // The second worker opts out before it starts.
    b.directory()
        .set_opted_out(
            two,
            Some(OptOut {
                at_ms: now(&b),
                via: "STOP by sms".into(),
            }),
        )
        .unwrap();
    tokio::time::advance(Duration::from_secs(3_600)).await;
    assert!(
        b.dispatcher()
            .wait_done(&[s.id], Duration::from_secs(30))
            .await
    );
    let (_, deliveries) = b.dispatcher().deliveries(s.id, 0, 10).unwrap().unwrap();
    let seen: Vec<(u32, Option<&str>)> = deliveries
        .iter()
        .map(|d| (d.index, d.withheld.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [(0, None), (1, Some("the worker at this number opted out"))]
    );
    assert_eq!(
        b.sandbox("sms").unwrap().stats().accepted,
        1,
        "only the first was sent"
    );
    b.shutdown().await;
}
