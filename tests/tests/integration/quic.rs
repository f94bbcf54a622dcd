//! The QUIC API through `mhero-client` against the real `mhero serve`:
//! the certificate pinned, tokens and roles, batched submission, status
//! and inbound subscriptions that resume from a position.

use std::time::{Duration, Instant};

use mhero_client::wire::{Recipient, Submit};
use mhero_client::{Client, ClientError, Pin, Subscription, Update};
use reqwest::blocking::Client as Http;

use super::server::{Server, make_token};

/// The QUIC address and certificate pin the server printed.
fn quic_of(server: &Server) -> (std::net::SocketAddr, Pin) {
    let banner = &server.banner;
    let addr = banner
        .split("quic://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no quic:// in {banner:?}"));
    let pin = banner
        .split("(certificate ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no certificate in {banner:?}"));
    (addr.parse().unwrap(), Pin::parse(pin).unwrap())
}

/// Opens subscription `i`, reads it until it has caught up, and closes
/// it; within 10 s, or the test fails.
async fn caught_up<T>(
    i: usize,
    open: impl std::future::Future<Output = Result<Subscription<T>, ClientError>>,
) {
    let read = async {
        let mut s = open.await.unwrap();
        while !matches!(
            s.next().await.unwrap().expect("the stream stays open"),
            Update::CaughtUp
        ) {}
        s.close();
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| panic!("subscription {i} was not opened and caught up within 10 s"));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn integrators_submit_batches_and_follow_statuses_and_replies_over_quic() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("mhero.toml");
    // Every worker replies, so the inbound stream has something to carry.
    std::fs::write(
        &config,
        "[channels.sms]\nconnector = \"sandbox\"\nrate = 2000\n\
         [channels.sms.sandbox]\nreply_percent = 100\nreplies = [\"OK\"]\nreceipt_delay_ms = 50\n",
    )
    .unwrap();
    let data = tmp.path().join("data");
    let server = Server::start_with(&data, &["--config", config.to_str().unwrap()]);
    let http = Http::new();
    let admin = server.first_admin_token();
    let (sender, _) = make_token(&http, &server, &admin, "sender");
    let (viewer, _) = make_token(&http, &server, &admin, "viewer");
    let (addr, pin) = quic_of(&server);
    let rt = runtime();
    rt.block_on(async {
        // Wrong pin: refused before any token is sent.
        let wrong = Pin::parse(&format!("sha256:{}", "0".repeat(64))).unwrap();
        match Client::connect(addr, wrong, &sender).await {
            Err(ClientError::Connect { message, .. }) => {
                assert!(
                    message.contains("pinned") || message.contains("certificate"),
                    "{message}"
                )
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("connected to a certificate that is not the pinned one"),
        }
        // Unknown token: refused with the reason.
        match Client::connect(addr, pin, "mhero_not-a-token").await {
            Err(ClientError::Refused { code, .. }) => assert_eq!(code, "unauthorized"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("an unknown token was accepted"),
        }
        // A viewer reads but does not send.
        let read_only = Client::connect(addr, pin, &viewer).await.unwrap();
        assert_eq!(read_only.role(), "viewer");
        let batch = |n: u32| Submit {
            name: "malaria RDT results".into(),
            lane: "high".into(),
            text: "Your malaria test result is ready: please come to the clinic.".into(),
            recipients: (0..n)
                .map(|i| Recipient {
                    phone: format!("+2317700{i:05}"),
                    language: None,
                })
                .collect(),
            ..Submit::default()
        };
        match read_only.submit(batch(1)).await {
            Err(ClientError::Refused { code, .. }) => assert_eq!(code, "forbidden"),
            other => panic!("{other:?}"),
        }

        let client = Client::connect(addr, pin, &sender).await.unwrap();
        // A bad number in a batch is refused alone, with its index.
        let mut first = batch(300);
        first.recipients[7].phone = "12".into();
        let submitted = client.submit(first).await.unwrap();
        assert_eq!(submitted.accepted, 299);
        assert_eq!(submitted.rejected.len(), 1);
        assert_eq!(submitted.rejected[0].0, 7);
        // A wrong lane refuses the batch.
        let mut wrong_lane = batch(1);
        wrong_lane.lane = "urgent-ish".into();
        match client.submit(wrong_lane).await {
            Err(ClientError::Refused { code, message }) => {
                assert_eq!(code, "invalid", "{message}");
                assert!(message.contains("lane"), "{message}");
            }
            other => panic!("{other:?}"),
        }

        // Every delivery's status, until all are delivered (the sandbox
        // reports delivery 50 ms after sending).
        let campaign = submitted.campaign.clone();
        let mut statuses = read_only.statuses(&campaign, 0).await.unwrap();
        let mut delivered = std::collections::BTreeMap::new();
        let mut last_ms = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while delivered.len() < 299 {
            assert!(Instant::now() < deadline, "{} delivered", delivered.len());
            let e = tokio::time::timeout(Duration::from_secs(30), statuses.next_event())
                .await
                .expect("an event within 30 s")
                .unwrap()
                .expect("the stream stays open");
            assert!(e.delivery.starts_with(&format!("{campaign}-")), "{e:?}");
            if e.status == "delivered" {
                delivered.insert(e.index, e.updated_ms);
                last_ms = last_ms.max(e.updated_ms);
            }
        }
        // The refused number was never sent: no delivery maps back to it.
        let batch_positions: std::collections::BTreeSet<u32> = delivered
            .keys()
            .map(|i| submitted.batch_index(*i))
            .collect();
        assert!(!batch_positions.contains(&7));
        assert_eq!(batch_positions.len(), 299);
        assert_eq!(batch_positions.last(), Some(&299));
        statuses.close();
        // Resumed from the last position: at least that event again,
        // nothing earlier than it.
        let mut resumed = read_only.statuses(&campaign, last_ms).await.unwrap();
        let again = resumed.next_event().await.unwrap().unwrap();
        assert!(again.updated_ms >= last_ms, "{again:?}");
        resumed.close();
        // A closed subscription ends on the server too: a client that
        // subscribes again and again never runs out of the streams one
        // connection may hold open (256).
        for i in 0..300 {
            let s = read_only.statuses(&campaign, last_ms);
            caught_up(i, s).await;
        }

        // Replies come back through the inbound stream, in order; resuming
        // after the last one seen starts after it.
        let mut inbound = read_only.inbound(None).await.unwrap();
        let mut seqs = Vec::new();
        while seqs.len() < 10 {
            let m = tokio::time::timeout(Duration::from_secs(30), inbound.next_event())
                .await
                .expect("a reply within 30 s")
                .unwrap()
                .unwrap();
            assert_eq!(m.channel, "sms");
            assert_eq!(m.text, "OK");
            assert!(m.from.starts_with("+2317700"), "{m:?}");
            // Processed before it is streamed: an answer to the campaign.
            assert_eq!(
                (m.route.as_str(), m.label.as_str()),
                ("inbox", "yes"),
                "{m:?}"
            );
            assert!(
                m.reply_to
                    .as_deref()
                    .is_some_and(|r| r.starts_with(&format!("{campaign}-"))),
                "{m:?}"
            );
            seqs.push(m.seq);
        }
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        inbound.close();
        let mut later = read_only.inbound(Some(seqs[4])).await.unwrap();
        assert_eq!(later.next_event().await.unwrap().unwrap().seq, seqs[5]);
        later.close();
        for i in 0..300 {
            caught_up(i, read_only.inbound(Some(seqs[9]))).await;
        }

        // Last, as its recipients reply too: under an idempotency key a
        // batch is accepted once, and the retry (a lost answer, a timeout)
        // is answered with the first campaign.
        let keyed = client.submit_once("lab-7f3a-0001", batch(2)).await.unwrap();
        assert!(!keyed.replayed);
        let retried = client.submit_once("lab-7f3a-0001", batch(2)).await.unwrap();
        assert_eq!(
            (retried.replayed, &retried.campaign, retried.accepted),
            (true, &keyed.campaign, 2)
        );
        // The key with another batch is refused, naming the key.
        match client.submit_once("lab-7f3a-0001", batch(3)).await {
            Err(ClientError::Refused { code, message }) => {
                assert_eq!(code, "invalid", "{message}");
                assert!(message.contains("SubmitOnce.key"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        match client.submit_once("", batch(1)).await {
            Err(ClientError::Refused { code, .. }) => assert_eq!(code, "invalid"),
            other => panic!("{other:?}"),
        }
        client.close();
        read_only.close();
    });
    assert!(server.stop().success());
    // The certificate is kept: the same pin after a restart.
    let again = Server::start_with(&data, &["--config", config.to_str().unwrap()]);
    assert_eq!(quic_of(&again).1, pin);
    assert!(again.stop().success());
}
