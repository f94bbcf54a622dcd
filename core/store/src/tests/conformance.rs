//! One suite, both engines: every scenario runs against the in-memory
//! engine and against RocksDB.

use std::sync::Arc;

use mhero_proto::{CampaignId, ChannelId, DeliveryId, DeliveryStatus, Lane};

use super::{Harness, ManualClock, MemoryHarness, RocksHarness, open_store};
use crate::error::Error;
use crate::{Batch, Cf, Leased, NewDelivery, Outcome, QueueKey, Store};

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $( #[test] fn $name() { super::$name(&mut super::MemoryHarness::new()) } )*
        }
        mod rocksdb {
            $( #[test] fn $name() { super::$name(&mut super::RocksHarness::new()) } )*
        }
    };
}

conformance!(
    engine_scans_in_key_order_within_bounds,
    engine_applies_a_batch_atomically_in_order,
    lease_is_fifo_within_a_queue,
    higher_lanes_are_leased_first,
    campaigns_in_a_lane_share_round_robin,
    settle_done_records_status_and_receipt_index,
    awaiting_status_walks_the_channel_index_in_pages,
    retry_waits_in_the_delayed_queue_until_due,
    dead_letters_keep_reason_and_history_and_replay,
    reroute_moves_a_delivery_to_another_channel,
    settling_what_is_not_leased_is_refused_and_writes_nothing,
    crash_returns_unsettled_leases_as_ready_and_counts_them,
    delayed_and_dead_survive_a_crash,
    channels_and_campaigns_persist,
    counters_account_for_every_delivery,
    a_clock_that_ran_ahead_does_not_park_later_retries,
    a_secret_is_generated_once_and_kept,
    a_later_release_reads_the_counters_this_one_wrote,
    an_unreadable_ready_record_is_quarantined_and_the_queue_goes_on,
    an_unreadable_delayed_record_is_quarantined_and_promotion_goes_on,
    purging_an_ended_campaign_removes_all_it_left_and_nothing_else,
    a_purge_keeps_a_gateway_id_a_later_message_took_and_passes_an_unreadable_status,
    a_fallback_keeps_a_gateway_id_a_later_message_took,
    a_history_replayed_many_times_stays_bounded,
    audience_pages_read_the_same_by_key_or_by_scan,
);

const CH: ChannelId = ChannelId(1);

fn q(lane: Lane, campaign: u64) -> QueueKey {
    QueueKey {
        channel: CH,
        lane,
        campaign: CampaignId(campaign),
    }
}

fn new(range: std::ops::Range<u32>) -> Vec<NewDelivery> {
    range
        .map(|i| NewDelivery {
            index: i,
            recipient: format!("+2317700{i:05}"),
            route: 0,
            language: None,
        })
        .collect()
}

fn ids(leased: &[Leased]) -> Vec<(u64, u32)> {
    leased
        .iter()
        .map(|l| (l.queue.campaign.0, l.item.index))
        .collect()
}

fn done(status: DeliveryStatus) -> Outcome {
    Outcome::Done {
        status,
        external_id: None,
        reason: None,
    }
}

struct Fixture {
    clock: Arc<ManualClock>,
    store: Store,
}

fn fixture(h: &mut dyn Harness) -> Fixture {
    let clock = Arc::new(ManualClock::default());
    clock.set(1_000_000);
    let (store, recovery) = open_store(h.engine(), &clock);
    assert_eq!(recovery.requeued, 0);
    Fixture { clock, store }
}

fn crash(h: &mut dyn Harness, f: Fixture) -> (Fixture, crate::Recovery) {
    let engine = f.store.engine().clone();
    drop(f.store);
    let engine = h.crash(engine);
    let (store, recovery) = open_store(engine, &f.clock);
    (
        Fixture {
            clock: f.clock,
            store,
        },
        recovery,
    )
}

/// Settles every delivery in `got` as wired.
fn wire_all(store: &Store, got: Vec<Leased>) {
    store
        .settle(
            got.into_iter()
                .map(|l| (l, done(DeliveryStatus::Wired)))
                .collect(),
        )
        .unwrap()
        .wait()
        .unwrap();
}

fn lease(store: &Store, n: usize) -> Vec<Leased> {
    store.lease(CH, n).unwrap().wait().unwrap()
}

fn engine_scans_in_key_order_within_bounds(h: &mut dyn Harness) {
    let engine = h.engine();
    let mut batch = Batch::new();
    for k in [5u8, 1, 3, 9, 7] {
        batch.put(Cf::Ready, vec![k], vec![k * 10]);
    }
    batch.put(Cf::Delayed, vec![4], vec![0]);
    engine.write(batch).unwrap();
    let mut seen = Vec::new();
    engine
        .scan(Cf::Ready, &[3], &[9], &mut |k, v| {
            seen.push((k[0], v[0]));
            Ok(true)
        })
        .unwrap();
    assert_eq!(seen, vec![(3, 30), (5, 50), (7, 70)]);
    let mut first = Vec::new();
    engine
        .scan(Cf::Ready, &[0], &[255], &mut |k, _| {
            first.push(k[0]);
            Ok(first.len() < 2)
        })
        .unwrap();
    assert_eq!(first, vec![1, 3]);
    // Backwards: from the highest key below the upper bound down to the
    // lower bound, stopping when told.
    let mut down = Vec::new();
    engine
        .scan_rev(Cf::Ready, &[3], &[9], &mut |k, v| {
            down.push((k[0], v[0]));
            Ok(true)
        })
        .unwrap();
    assert_eq!(down, vec![(7, 70), (5, 50), (3, 30)]);
    let mut last = Vec::new();
    engine
        .scan_rev(Cf::Ready, &[0], &[255], &mut |k, _| {
            last.push(k[0]);
            Ok(last.len() < 2)
        })
        .unwrap();
    assert_eq!(last, vec![9, 7]);
    let mut none = Vec::new();
    engine
        .scan_rev(Cf::Ready, &[8], &[8], &mut |k, _| {
            none.push(k[0]);
            Ok(true)
        })
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(engine.get(Cf::Delayed, &[4]).unwrap(), Some(vec![0]));
    assert_eq!(engine.get(Cf::Ready, &[4]).unwrap(), None);
    // A batched read answers in the caller's order, repeats and misses
    // included, and sees only its own family.
    let keys = [vec![9], vec![4], vec![1], vec![9], vec![200]];
    assert_eq!(
        engine.get_many(Cf::Ready, &keys).unwrap(),
        vec![Some(vec![90]), None, Some(vec![10]), Some(vec![90]), None]
    );
    assert_eq!(
        engine.get_many(Cf::Delayed, &keys).unwrap(),
        vec![None, Some(vec![0]), None, None, None]
    );
    assert_eq!(
        engine.get_many(Cf::Ready, &[]).unwrap(),
        Vec::<Option<Vec<u8>>>::new()
    );
}

fn engine_applies_a_batch_atomically_in_order(h: &mut dyn Harness) {
    let engine = h.engine();
    let mut batch = Batch::new();
    for k in 0u8..10 {
        batch.put(Cf::Dead, vec![k], vec![1]);
    }
    batch.delete_range(Cf::Dead, vec![2], vec![6]);
    batch.delete(Cf::Dead, vec![8]);
    batch.put(Cf::Dead, vec![3], vec![2]);
    engine.write(batch).unwrap();
    let mut keys = Vec::new();
    engine
        .scan(Cf::Dead, &[], &[255], &mut |k, v| {
            keys.push((k[0], v[0]));
            Ok(true)
        })
        .unwrap();
    assert_eq!(keys, vec![(0, 1), (1, 1), (3, 2), (6, 1), (7, 1), (9, 1)]);
}

fn lease_is_fifo_within_a_queue(h: &mut dyn Harness) {
    let f = fixture(h);
    f.store
        .enqueue(q(Lane::Normal, 1), new(0..5))
        .wait()
        .unwrap();
    assert_eq!(ids(&lease(&f.store, 3)), vec![(1, 0), (1, 1), (1, 2)]);
    f.store
        .enqueue(q(Lane::Normal, 1), new(5..6))
        .wait()
        .unwrap();
    assert_eq!(ids(&lease(&f.store, 10)), vec![(1, 3), (1, 4), (1, 5)]);
    assert!(lease(&f.store, 10).is_empty());
    let depth = f.store.depth(CH);
    assert_eq!(depth.ready, [0; 4]);
    assert_eq!(depth.leased, [0, 0, 6, 0]);
}

fn higher_lanes_are_leased_first(h: &mut dyn Harness) {
    let f = fixture(h);
    f.store
        .enqueue(q(Lane::Bulk, 1), new(0..100))
        .wait()
        .unwrap();
    f.store
        .enqueue(q(Lane::Normal, 2), new(0..2))
        .wait()
        .unwrap();
    f.store
        .enqueue(q(Lane::Emergency, 3), new(0..3))
        .wait()
        .unwrap();
    let got = lease(&f.store, 7);
    assert_eq!(
        ids(&got),
        vec![(3, 0), (3, 1), (3, 2), (2, 0), (2, 1), (1, 0), (1, 1)]
    );
    assert_eq!(got[0].queue.lane, Lane::Emergency);
    // New emergency work jumps the bulk backlog at the very next lease.
    f.store
        .enqueue(q(Lane::Emergency, 4), new(0..1))
        .wait()
        .unwrap();
    assert_eq!(ids(&lease(&f.store, 2)), vec![(4, 0), (1, 2)]);
}

fn campaigns_in_a_lane_share_round_robin(h: &mut dyn Harness) {
    assert_eq!(
        crate::queue::DEAL,
        32,
        "the expectations below deal 32 at a time"
    );
    let f = fixture(h);
    let fill = |campaign: u64, n: u32| {
        f.store
            .enqueue(q(Lane::Normal, campaign), new(0..n))
            .wait()
            .unwrap();
    };
    for (campaign, n) in [(1, 50), (2, 50), (3, 3)] {
        fill(campaign, n);
    }
    let run = |campaign: u64, range: std::ops::Range<u32>| range.map(move |i| (campaign, i));
    // Too few for 32 each: up to 32 of each campaign in turn (all 3 of
    // the third), then on from the first.
    let got = ids(&lease(&f.store, 70));
    let want: Vec<_> = run(1, 0..32)
        .chain(run(2, 0..32))
        .chain(run(3, 0..3))
        .chain(run(1, 32..35))
        .collect();
    assert_eq!(got, want);
    // The next lease starts after the campaign served last (the third is
    // empty now).
    let want: Vec<_> = run(2, 32..42).collect();
    assert_eq!(ids(&lease(&f.store, 10)), want);
    // A single lease of one each keeps rotating.
    assert_eq!(ids(&lease(&f.store, 1)), vec![(1, 35)]);
    assert_eq!(ids(&lease(&f.store, 1)), vec![(2, 42)]);
    // Two bigger campaigns join. The next lease starts after the campaign
    // served last (the second), so they come first; the two nearly done
    // give all they have in the first turn.
    fill(4, 100);
    fill(5, 100);
    let got = ids(&lease(&f.store, 140));
    let want: Vec<_> = run(4, 0..32)
        .chain(run(5, 0..32))
        .chain(run(1, 36..50))
        .chain(run(2, 43..50))
        .chain(run(4, 32..64))
        .chain(run(5, 32..55))
        .collect();
    assert_eq!(got, want);
    // More than they have: 32 of each in turn until each gave all it had.
    let got = ids(&lease(&f.store, 200));
    let want: Vec<_> = run(4, 64..96)
        .chain(run(5, 55..87))
        .chain(run(4, 96..100))
        .chain(run(5, 87..100))
        .collect();
    assert_eq!(got, want);
}

fn settle_done_records_status_and_receipt_index(h: &mut dyn Harness) {
    let f = fixture(h);
    f.store.enqueue(q(Lane::High, 7), new(0..2)).wait().unwrap();
    let got = lease(&f.store, 2);
    let mut it = got.into_iter();
    let a = it.next().unwrap();
    let b = it.next().unwrap();
    let outcome = Outcome::Done {
        status: DeliveryStatus::Wired,
        external_id: Some("gw-123".into()),
        reason: None,
    };
    f.store
        .settle(vec![(a, outcome), (b, done(DeliveryStatus::Failed))])
        .unwrap()
        .wait()
        .unwrap();
    let id = DeliveryId::new(CampaignId(7), 0);
    let rec = f.store.status(id).unwrap().unwrap();
    assert_eq!(rec.status, DeliveryStatus::Wired);
    assert_eq!(rec.channel, CH);
    assert_eq!(rec.attempts, 1);
    assert_eq!(rec.external_id.as_deref(), Some("gw-123"));
    assert_eq!(f.store.by_external_id(CH, "gw-123").unwrap(), Some(id));
    assert_eq!(f.store.by_external_id(CH, "gw-999").unwrap(), None);
    assert_eq!(
        f.store
            .by_external_ids(&[(CH, "gw-999"), (CH, "gw-123"), (ChannelId(2), "gw-123")])
            .unwrap(),
        vec![None, Some(id), None]
    );
    assert_eq!(
        f.store
            .status(DeliveryId::new(CampaignId(7), 1))
            .unwrap()
            .unwrap()
            .status,
        DeliveryStatus::Failed
    );
    let mut all = Vec::new();
    f.store
        .scan_statuses(CampaignId(7), &mut |id, rec| {
            all.push((id.index, rec.status));
            Ok(true)
        })
        .unwrap();
    assert_eq!(
        all,
        vec![(0, DeliveryStatus::Wired), (1, DeliveryStatus::Failed)]
    );
    assert_eq!(f.store.depth(CH).leased, [0; 4]);
}

fn awaiting_status_walks_the_channel_index_in_pages(h: &mut dyn Harness) {
    let f = fixture(h);
    f.store
        .enqueue(q(Lane::Normal, 3), new(0..5))
        .wait()
        .unwrap();
    let sent_at = f.clock.now();
    let settled: Vec<_> = lease(&f.store, 5)
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            (
                l,
                Outcome::Done {
                    status: DeliveryStatus::Wired,
                    external_id: Some(format!("b-{i}")),
                    reason: None,
                },
            )
        })
        .collect();
    f.store.settle(settled).unwrap().wait().unwrap();
    // Another channel's index is not walked.
    let other = QueueKey {
        channel: ChannelId(2),
        ..q(Lane::Normal, 4)
    };
    f.store.enqueue(other, new(0..1)).wait().unwrap();
    let l = f.store.lease(ChannelId(2), 1).unwrap().wait().unwrap();
    f.store
        .settle(vec![(
            l.into_iter().next().unwrap(),
            Outcome::Done {
                status: DeliveryStatus::Wired,
                external_id: Some("b-9".into()),
                reason: None,
            },
        )])
        .unwrap()
        .wait()
        .unwrap();
    // b-1 is delivered (final), b-2 only sent (still awaited).
    f.store
        .update_statuses(&[
            (
                DeliveryId::new(CampaignId(3), 1),
                DeliveryStatus::Delivered,
                None,
            ),
            (
                DeliveryId::new(CampaignId(3), 2),
                DeliveryStatus::Sent,
                None,
            ),
        ])
        .unwrap()
        .wait()
        .unwrap();
    let (page, next) = f.store.awaiting_status(CH, None, 0, 2).unwrap();
    assert_eq!(page, ["b-0"]);
    assert_eq!(next.as_deref(), Some("b-1"));
    let (page, next) = f.store.awaiting_status(CH, next.as_deref(), 0, 2).unwrap();
    assert_eq!(page, ["b-2", "b-3"]);
    let (page, next) = f.store.awaiting_status(CH, next.as_deref(), 0, 2).unwrap();
    assert_eq!((page.as_slice(), next), (&["b-4".to_string()][..], None));
    // Too old: nothing.
    let (page, _) = f.store.awaiting_status(CH, None, sent_at + 1, 100).unwrap();
    assert!(page.is_empty(), "{page:?}");
    let (page, _) = f.store.awaiting_status(ChannelId(2), None, 0, 100).unwrap();
    assert_eq!(page, ["b-9"]);
}

fn retry_waits_in_the_delayed_queue_until_due(h: &mut dyn Harness) {
    let f = fixture(h);
    f.store
        .enqueue(q(Lane::Normal, 1), new(0..3))
        .wait()
        .unwrap();
    let got = lease(&f.store, 3);
    let now = f.clock.now();
    let settled = got
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            (
                l,
                Outcome::Retry {
                    due_ms: now + 1000 * (i as u64 + 1),
                    reason: format!("timeout {i}"),
                },
            )
        })
        .collect();
    f.store.settle(settled).unwrap().wait().unwrap();
    assert_eq!(f.store.globals().delayed, 3);
    assert_eq!(f.store.promote_due().unwrap(), 0);
    assert!(lease(&f.store, 10).is_empty());
    f.clock.advance(2000);
    assert_eq!(f.store.promote_due().unwrap(), 2);
    let again = lease(&f.store, 10);
    assert_eq!(ids(&again), vec![(1, 0), (1, 1)]);
    assert_eq!(again[0].item.attempts, 1);
    assert_eq!(again[0].item.history[0].reason, "timeout 0");
    assert!(!again[0].redelivered);
    f.clock.advance(1000);
    assert_eq!(f.store.promote_due().unwrap(), 1);
    assert_eq!(f.store.globals().delayed, 0);
    // A retry due in the past is promoted at the next call, never lost.
    let last = lease(&f.store, 1);
    let past = f.clock.now() - 50_000;
    f.store
        .settle(vec![(
            last.into_iter().next().unwrap(),
            Outcome::Retry {
                due_ms: past,
                reason: "x".into(),
            },
        )])
        .unwrap()
        .wait()
        .unwrap();
    f.clock.advance(1);
    assert_eq!(f.store.promote_due().unwrap(), 1);
    assert_eq!(lease(&f.store, 5).len(), 1);
}

fn dead_letters_keep_reason_and_history_and_replay(h: &mut dyn Harness) {
    let f = fixture(h);
    f.store
        .enqueue(q(Lane::Normal, 2), new(0..2))
        .wait()
        .unwrap();
    let first = lease(&f.store, 2);
    let now = f.clock.now();
    let mut it = first.into_iter();
    let a = it.next().unwrap();
    let b = it.next().unwrap();
    f.store
        .settle(vec![(
            a,
            Outcome::Retry {
                due_ms: now + 10,
                reason: "503 from gateway".into(),
            },
        )])
        .unwrap()
        .wait()
        .unwrap();
    f.store
        .settle(vec![(
            b,
            Outcome::Dead {
                reason: "invalid number".into(),
            },
        )])
        .unwrap()
        .wait()
        .unwrap();
    f.clock.advance(10);
    assert_eq!(f.store.promote_due().unwrap(), 1);
    let a = lease(&f.store, 1).pop().unwrap();
    f.store
        .settle(vec![(
            a,
            Outcome::Dead {
                reason: "retries exhausted".into(),
            },
        )])
        .unwrap()
        .wait()
        .unwrap();

    let dead = f.store.dead_letters(None, 10).unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].id, DeliveryId::new(CampaignId(2), 0));
    assert_eq!(dead[0].reason, "retries exhausted");
    assert_eq!(dead[0].item.attempts, 2);
    assert_eq!(dead[0].item.history.len(), 1);
    assert_eq!(dead[0].item.history[0].reason, "503 from gateway");
    assert_eq!(dead[1].reason, "invalid number");
    assert_eq!(f.store.dead_letters(Some(dead[0].id), 10).unwrap().len(), 1);
    // The last ones, still in delivery order.
    assert_eq!(f.store.newest_dead_letters(10).unwrap(), dead);
    assert_eq!(f.store.newest_dead_letters(1).unwrap(), &dead[1..]);
    assert!(f.store.newest_dead_letters(0).unwrap().is_empty());
    assert_eq!(f.store.globals().dead, 2);

    let missing = DeliveryId::new(CampaignId(2), 99);
    assert!(
        matches!(f.store.replay_dead(&[dead[0].id, missing]), Err(Error::NoDeadLetter(id)) if id == missing)
    );
    assert_eq!(
        f.store.dead_letters(None, 10).unwrap().len(),
        2,
        "a refused replay changes nothing"
    );
    assert_eq!(
        f.store.replay_dead(&[dead[0].id]).unwrap().wait().unwrap(),
        1
    );
    let back = lease(&f.store, 5);
    assert_eq!(ids(&back), vec![(2, 0)]);
    assert_eq!(back[0].item.attempts, 0);
    assert_eq!(back[0].item.history.len(), 2);
    assert_eq!(f.store.globals().dead, 1);
    assert_eq!(f.store.counters(CampaignId(2)).dead, 1);
}

fn reroute_moves_a_delivery_to_another_channel(h: &mut dyn Harness) {
    let f = fixture(h);
    let sms = ChannelId(2);
    f.store.enqueue(q(Lane::High, 5), new(0..1)).wait().unwrap();
    let l = lease(&f.store, 1).pop().unwrap();
    let outcome = Outcome::Reroute {
        channel: sms,
        recipient: "+231880000001".into(),
        route: 1,
        reason: "not on whatsapp".into(),
    };
    f.store.settle(vec![(l, outcome)]).unwrap().wait().unwrap();
    assert!(lease(&f.store, 5).is_empty());
    let moved = f.store.lease(sms, 5).unwrap().wait().unwrap();
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].queue.lane, Lane::High);
    assert_eq!(moved[0].item.recipient, "+231880000001");
    assert_eq!(moved[0].item.route, 1);
    assert_eq!(moved[0].item.history[0].reason, "not on whatsapp");
    assert_eq!(f.store.counters(CampaignId(5)).rerouted, 1);
}

fn settling_what_is_not_leased_is_refused_and_writes_nothing(h: &mut dyn Harness) {
    let f = fixture(h);
    f.store
        .enqueue(q(Lane::Normal, 1), new(0..2))
        .wait()
        .unwrap();
    let got = lease(&f.store, 2);
    let a = got[0].clone();
    let b = got[1].clone();
    f.store
        .settle(vec![(a.clone(), done(DeliveryStatus::Wired))])
        .unwrap()
        .wait()
        .unwrap();
    let err = f.store.settle(vec![
        (b.clone(), done(DeliveryStatus::Wired)),
        (a.clone(), done(DeliveryStatus::Wired)),
    ]);
    assert!(matches!(err, Err(Error::NotLeased(id)) if id == a.id()));
    assert_eq!(
        f.store.status(b.id()).unwrap(),
        None,
        "nothing of a refused call is written"
    );
    let twice = f.store.settle(vec![
        (b.clone(), done(DeliveryStatus::Wired)),
        (b.clone(), done(DeliveryStatus::Sent)),
    ]);
    assert!(matches!(twice, Err(Error::NotLeased(_))));
    f.store
        .settle(vec![(b, done(DeliveryStatus::Wired))])
        .unwrap()
        .wait()
        .unwrap();
}

fn crash_returns_unsettled_leases_as_ready_and_counts_them(h: &mut dyn Harness) {
    let f = fixture(h);
    f.store
        .enqueue(q(Lane::Normal, 1), new(0..10))
        .wait()
        .unwrap();
    f.store.enqueue(q(Lane::Bulk, 2), new(0..3)).wait().unwrap();
    let got = lease(&f.store, 8);
    assert_eq!(got.len(), 8);
    // Settle 0, 2 and 3 (not contiguous with 0), leave 1, 4, 5, 6, 7 leased.
    let settled: Vec<_> = got
        .iter()
        .filter(|l| [0, 2, 3].contains(&l.item.index))
        .map(|l| (l.clone(), done(DeliveryStatus::Wired)))
        .collect();
    f.store.settle(settled).unwrap().wait().unwrap();
    let (f, recovery) = crash(h, f);
    assert_eq!(recovery.requeued, 5);
    let again = lease(&f.store, 20);
    assert_eq!(
        ids(&again),
        vec![
            (1, 1),
            (1, 4),
            (1, 5),
            (1, 6),
            (1, 7),
            (1, 8),
            (1, 9),
            (2, 0),
            (2, 1),
            (2, 2)
        ]
    );
    let redelivered: Vec<bool> = again.iter().map(|l| l.redelivered).collect();
    assert_eq!(
        redelivered,
        vec![
            true, true, true, true, true, false, false, false, false, false
        ]
    );
    assert_eq!(f.store.counters(CampaignId(1)).redelivered, 5);
    assert_eq!(
        f.store
            .status(DeliveryId::new(CampaignId(1), 2))
            .unwrap()
            .unwrap()
            .status,
        DeliveryStatus::Wired
    );
    // A second crash with nothing settled brings all of them back once more.
    let (f, recovery) = crash(h, f);
    assert_eq!(recovery.requeued, 10);
    assert_eq!(lease(&f.store, 20).len(), 10);
}

fn delayed_and_dead_survive_a_crash(h: &mut dyn Harness) {
    let f = fixture(h);
    f.store
        .enqueue(q(Lane::Normal, 1), new(0..2))
        .wait()
        .unwrap();
    let mut got = lease(&f.store, 2).into_iter();
    let now = f.clock.now();
    f.store
        .settle(vec![
            (
                got.next().unwrap(),
                Outcome::Retry {
                    due_ms: now + 500,
                    reason: "429".into(),
                },
            ),
            (
                got.next().unwrap(),
                Outcome::Dead {
                    reason: "blocked".into(),
                },
            ),
        ])
        .unwrap()
        .wait()
        .unwrap();
    let (f, recovery) = crash(h, f);
    assert_eq!(recovery.requeued, 0);
    assert_eq!(f.store.globals().delayed, 1);
    assert_eq!(f.store.globals().dead, 1);
    f.clock.advance(500);
    assert_eq!(f.store.promote_due().unwrap(), 1);
    assert_eq!(ids(&lease(&f.store, 5)), vec![(1, 0)]);
    assert_eq!(f.store.dead_letters(None, 5).unwrap()[0].reason, "blocked");
}

fn channels_and_campaigns_persist(h: &mut dyn Harness) {
    let f = fixture(h);
    let sms = f.store.channel("sms").unwrap();
    let wa = f.store.channel("whatsapp").unwrap();
    assert_ne!(sms, wa);
    assert_eq!(f.store.channel("sms").unwrap(), sms);
    let c1 = f
        .store
        .create_campaign(b"alert body".to_vec())
        .wait()
        .unwrap();
    let c2 = f
        .store
        .create_campaign(b"bulk body".to_vec())
        .wait()
        .unwrap();
    assert!(c2 > c1);
    f.store
        .update_campaign(c1, b"cancelled".to_vec())
        .wait()
        .unwrap();
    let (f, _) = crash(h, f);
    assert_eq!(f.store.channel("whatsapp").unwrap(), wa);
    assert_eq!(
        f.store.channels(),
        vec![("sms".to_string(), sms), ("whatsapp".to_string(), wa)]
    );
    assert_eq!(
        f.store.campaign(c1).unwrap().as_deref(),
        Some(&b"cancelled"[..])
    );
    let all = f.store.campaigns().unwrap();
    assert_eq!(
        all.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![c1, c2]
    );
    let c3 = f.store.create_campaign(Vec::new()).wait().unwrap();
    assert!(c3 > c2, "campaign ids are never reused after a restart");
    // The newest first, as many as asked; a purged one is not listed.
    let c4 = f.store.create_campaign(Vec::new()).wait().unwrap();
    assert_eq!(f.store.newest_campaigns(2).unwrap(), vec![c4, c3]);
    f.store.purge_campaign(c3).unwrap();
    assert_eq!(f.store.newest_campaigns(2).unwrap(), vec![c4, c2]);
    assert_eq!(f.store.newest_campaigns(100).unwrap(), vec![c4, c2, c1]);
    assert!(f.store.newest_campaigns(0).unwrap().is_empty());
}

fn counters_account_for_every_delivery(h: &mut dyn Harness) {
    let f = fixture(h);
    let c = CampaignId(9);
    f.store
        .enqueue(q(Lane::Normal, 9), new(0..20))
        .wait()
        .unwrap();
    let got = lease(&f.store, 12);
    let now = f.clock.now();
    let settled = got
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let outcome = match i % 4 {
                0 => done(DeliveryStatus::Wired),
                1 => Outcome::Retry {
                    due_ms: now + 100,
                    reason: "timeout".into(),
                },
                2 => Outcome::Dead {
                    reason: "bad".into(),
                },
                _ => done(DeliveryStatus::Failed),
            };
            (l, outcome)
        })
        .collect();
    f.store.settle(settled).unwrap().wait().unwrap();
    let check = |store: &Store| {
        let k = store.counters(c);
        let (ready, leased) = store.campaign_depth(c);
        assert_eq!(k.enqueued, 20);
        assert_eq!(k.status(DeliveryStatus::Wired), 3);
        assert_eq!(k.status(DeliveryStatus::Failed), 3);
        assert_eq!(k.delayed, 3);
        assert_eq!(k.dead, 3);
        assert_eq!(
            ready + leased + k.delayed + k.dead + k.settled(),
            k.enqueued
        );
        assert_eq!(k.queued(), ready + leased + k.delayed);
    };
    check(&f.store);
    let (f, _) = crash(h, f);
    check(&f.store);
}

impl ManualClock {
    fn now(&self) -> u64 {
        crate::Clock::now_ms(self)
    }
}

#[test]
fn rocksdb_store_survives_reopen_with_sync_durability() {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::config::StoreConfig::default();
    assert_eq!(config.durability, crate::config::Durability::Sync);
    let clock = Arc::new(ManualClock::default());
    {
        let engine =
            Arc::new(crate::RocksEngine::open(dir.path(), &config, Default::default()).unwrap());
        let (store, _) = open_store(engine, &clock);
        store
            .enqueue(q(Lane::Emergency, 1), new(0..1000))
            .wait()
            .unwrap();
        let got = lease(&store, 400);
        wire_all(&store, got);
    }
    let engine =
        Arc::new(crate::RocksEngine::open(dir.path(), &config, Default::default()).unwrap());
    let (store, recovery) = open_store(engine, &clock);
    assert_eq!(recovery.requeued, 0);
    assert_eq!(store.depth(CH).ready[0], 600);
    assert_eq!(lease(&store, 1)[0].item.index, 400);
}

/// A run with the clock a year ahead promotes retries and moves the
/// delayed floor to that date; after a restart with the clock right again,
/// a new retry must come back when it is due, not a year later.
fn a_clock_that_ran_ahead_does_not_park_later_retries(h: &mut dyn Harness) {
    let f = fixture(h);
    let right = f.clock.now();
    let year = 365 * 24 * 3600 * 1000;
    f.clock.set(right + year);
    f.store
        .enqueue(q(Lane::Normal, 1), new(0..2))
        .wait()
        .unwrap();
    let got = lease(&f.store, 2);
    let ahead = f.clock.now();
    let settled = got
        .into_iter()
        .map(|l| {
            (
                l,
                Outcome::Retry {
                    due_ms: ahead + 1000,
                    reason: "x".into(),
                },
            )
        })
        .collect();
    f.store.settle(settled).unwrap().wait().unwrap();
    f.clock.advance(2000);
    assert_eq!(f.store.promote_due().unwrap(), 2);
    // The clock comes back to the right time; the store restarts.
    f.clock.set(right);
    let (f, _) = crash(h, f);
    let again = lease(&f.store, 2);
    assert_eq!(again.len(), 2);
    let now = f.clock.now();
    let settled = again
        .into_iter()
        .map(|l| {
            (
                l,
                Outcome::Retry {
                    due_ms: now + 5000,
                    reason: "y".into(),
                },
            )
        })
        .collect();
    f.store.settle(settled).unwrap().wait().unwrap();
    f.clock.advance(6000);
    assert_eq!(
        f.store.promote_due().unwrap(),
        2,
        "a retry due in 5 s is back after 6 s"
    );
    // And forward again: nothing is promoted early.
    let last = lease(&f.store, 2);
    let now = f.clock.now();
    let settled = last
        .into_iter()
        .map(|l| {
            (
                l,
                Outcome::Retry {
                    due_ms: now + 10_000,
                    reason: "z".into(),
                },
            )
        })
        .collect();
    f.store.settle(settled).unwrap().wait().unwrap();
    f.clock.advance(9_000);
    assert_eq!(f.store.promote_due().unwrap(), 0);
    f.clock.advance(1_000);
    assert_eq!(f.store.promote_due().unwrap(), 2);
}

fn a_secret_is_generated_once_and_kept(h: &mut dyn Harness) {
    let f = fixture(h);
    let first = f.store.secret("plugin-cache").unwrap();
    assert_ne!(first, [0; 32]);
    assert_eq!(f.store.secret("plugin-cache").unwrap(), first);
    assert_ne!(f.store.secret("other").unwrap(), first);
    let (f, _) = crash(h, f);
    assert_eq!(f.store.secret("plugin-cache").unwrap(), first);
}

fn a_later_release_reads_the_counters_this_one_wrote(h: &mut dyn Harness) {
    use crate::keys;
    use crate::records::{decode, later::CountersWithRegion};

    let f = fixture(h);
    f.store
        .enqueue(q(Lane::Normal, 1), new(0..5))
        .wait()
        .unwrap();
    f.store.enqueue(q(Lane::Bulk, 2), new(0..3)).wait().unwrap();
    let leased = lease(&f.store, 2);
    f.store
        .settle(
            leased
                .into_iter()
                .map(|l| (l, done(DeliveryStatus::Wired)))
                .collect(),
        )
        .unwrap()
        .wait()
        .unwrap();
    let (f, _) = crash(h, f);
    let (lo, hi) = keys::counters_range();
    let mut read = 0;
    f.store
        .engine()
        .scan(Cf::Meta, &lo, &hi, &mut |k, v| {
            let campaign = keys::counters_from(k).unwrap();
            let later: CountersWithRegion = decode(Cf::Meta, k, v).unwrap();
            let now = f.store.counters(campaign);
            assert_eq!((later.counters, later.region), (now, None));
            read += 1;
            Ok(true)
        })
        .unwrap();
    assert_eq!(read, 2);
}

/// Replaces the value under the `n`th key (in order) of `cf` between
/// `lower` and `upper` with bytes no record decodes from.
fn corrupt_nth(store: &Store, cf: Cf, lower: &[u8], upper: &[u8], n: usize) -> Vec<u8> {
    let mut keys = Vec::new();
    store
        .engine()
        .scan(cf, lower, upper, &mut |k, _| {
            keys.push(k.to_vec());
            Ok(true)
        })
        .unwrap();
    let key = keys[n].clone();
    let mut batch = Batch::new();
    batch.put(cf, key.clone(), vec![1, 0xff, 0xff, 0xff]);
    store.engine().write(batch).unwrap();
    key
}

fn an_unreadable_ready_record_is_quarantined_and_the_queue_goes_on(h: &mut dyn Harness) {
    use crate::keys;

    let f = fixture(h);
    let queue = q(Lane::Normal, 1);
    f.store.enqueue(queue, new(0..5)).wait().unwrap();
    let bad = corrupt_nth(
        &f.store,
        Cf::Ready,
        &keys::ready(queue, 0),
        &keys::ready(queue, u64::MAX),
        1,
    );
    // The channel is not stopped: the four readable deliveries are leased.
    let got = lease(&f.store, 10);
    assert_eq!(ids(&got), vec![(1, 0), (1, 2), (1, 3), (1, 4)]);
    assert_eq!(f.store.quarantined_count(), 1);
    let listed = f.store.quarantined(0, 10).unwrap();
    assert_eq!(listed.len(), 1);
    let (_, record) = &listed[0];
    assert_eq!(
        (record.cf.as_str(), record.key.as_slice()),
        ("ready", bad.as_slice())
    );
    assert_eq!(record.value, vec![1, 0xff, 0xff, 0xff], "kept as it was");
    assert!(!record.reason.is_empty());
    let k = f.store.counters(CampaignId(1));
    assert_eq!((k.quarantined, k.queued()), (1, 4));
    wire_all(&f.store, got);
    assert_eq!(f.store.counters(CampaignId(1)).queued(), 0);
    // After a restart it is still listed, once, and nothing is re-read.
    let (f, recovery) = crash(h, f);
    assert_eq!(recovery.requeued, 0);
    assert!(lease(&f.store, 10).is_empty());
    assert_eq!(f.store.quarantined_count(), 1);
    assert_eq!(f.store.counters(CampaignId(1)).quarantined, 1);
}

fn an_unreadable_delayed_record_is_quarantined_and_promotion_goes_on(h: &mut dyn Harness) {
    let f = fixture(h);
    f.store
        .enqueue(q(Lane::Normal, 1), new(0..3))
        .wait()
        .unwrap();
    let now = f.clock.now();
    let settled = lease(&f.store, 3)
        .into_iter()
        .map(|l| {
            (
                l,
                Outcome::Retry {
                    due_ms: now + 1000,
                    reason: "timeout".into(),
                },
            )
        })
        .collect();
    f.store.settle(settled).unwrap().wait().unwrap();
    corrupt_nth(&f.store, Cf::Delayed, &[], &crate::keys::delayed_end(), 0);
    f.clock.advance(2000);
    assert_eq!(f.store.promote_due().unwrap(), 2, "the readable two move");
    assert_eq!(ids(&lease(&f.store, 10)), vec![(1, 1), (1, 2)]);
    assert_eq!(f.store.globals().delayed, 0);
    assert_eq!(f.store.quarantined_count(), 1);
    assert_eq!(f.store.quarantined(0, 10).unwrap()[0].1.cf, "delayed");
    let k = f.store.counters(CampaignId(1));
    assert_eq!((k.delayed, k.quarantined, k.queued()), (0, 1, 2));
}

fn purging_an_ended_campaign_removes_all_it_left_and_nothing_else(h: &mut dyn Harness) {
    let f = fixture(h);
    // Campaign 1 ends: one wired with a receipt id, one dead letter, an
    // audience stored. Campaign 2 is the neighbour that must stay whole.
    for c in [1, 2] {
        let campaign = f.store.create_campaign(vec![1, 0]).wait().unwrap();
        assert_eq!(campaign, CampaignId(c));
        f.store
            .put_audience(campaign, 0, vec![vec![1, 7], vec![1, 8]])
            .wait()
            .unwrap();
        f.store
            .enqueue(q(Lane::Normal, c), new(0..2))
            .wait()
            .unwrap();
        let mut got = lease(&f.store, 2).into_iter();
        let (a, b) = (got.next().unwrap(), got.next().unwrap());
        let wired = Outcome::Done {
            status: DeliveryStatus::Wired,
            external_id: Some(format!("gw-{c}")),
            reason: None,
        };
        let dead = Outcome::Dead {
            reason: "invalid number".into(),
        };
        f.store
            .settle(vec![(a, wired), (b, dead)])
            .unwrap()
            .wait()
            .unwrap();
    }
    // Still queued: refused.
    f.store
        .enqueue(q(Lane::Normal, 2), new(5..6))
        .wait()
        .unwrap();
    assert!(f.store.purge_campaign(CampaignId(2)).is_err());
    assert_eq!(f.store.globals().dead, 2);

    let purged = f.store.purge_campaign(CampaignId(1)).unwrap();
    assert_eq!((purged.statuses, purged.dead, purged.receipts), (1, 1, 1));
    let check = |store: &Store| {
        let gone = DeliveryId::new(CampaignId(1), 0);
        assert_eq!(store.status(gone).unwrap(), None);
        assert_eq!(store.by_external_id(CH, "gw-1").unwrap(), None);
        assert!(store.audience(CampaignId(1), 0, 10).unwrap().is_empty());
        assert_eq!(store.campaign(CampaignId(1)).unwrap(), None);
        assert_eq!(store.counters(CampaignId(1)), Default::default());
        assert_eq!(store.globals().dead, 1);
        assert!(
            store
                .dead_letters(None, 10)
                .unwrap()
                .iter()
                .all(|d| d.id.campaign == CampaignId(2))
        );
        // The neighbour is whole.
        let kept = DeliveryId::new(CampaignId(2), 0);
        assert_eq!(store.by_external_id(CH, "gw-2").unwrap(), Some(kept));
        assert_eq!(store.audience(CampaignId(2), 0, 10).unwrap().len(), 2);
        assert!(store.campaign(CampaignId(2)).unwrap().is_some());
        assert_eq!(store.counters(CampaignId(2)).enqueued, 3);
    };
    check(&f.store);
    let (f, _) = crash(h, f);
    check(&f.store);
    let last = lease(&f.store, 10);
    assert_eq!(ids(&last), vec![(2, 5)]);

    // After the restart, campaign 2's counters come from what was
    // recovered: purged together with a campaign refused before it queued
    // anything (its audience kept, nothing sent), its receipt entry is
    // still found, and the other leaves nothing either.
    let sent = last.into_iter().next().unwrap();
    let failed = Outcome::Done {
        status: DeliveryStatus::Failed,
        external_id: None,
        reason: Some("rejected".into()),
    };
    f.store
        .settle(vec![(sent, failed)])
        .unwrap()
        .wait()
        .unwrap();
    let never = f.store.create_campaign(vec![1, 0]).wait().unwrap();
    f.store
        .put_audience(never, 0, vec![vec![1, 9]])
        .wait()
        .unwrap();
    let purged = f.store.purge_campaigns(&[CampaignId(2), never]).unwrap();
    let counts: Vec<_> = purged
        .iter()
        .map(|p| (p.statuses, p.dead, p.receipts))
        .collect();
    assert_eq!(counts, [(2, 1, 1), (0, 0, 0)]);
    assert_eq!(f.store.by_external_id(CH, "gw-2").unwrap(), None);
    assert_eq!(f.store.globals().dead, 0);
    for c in [CampaignId(2), never] {
        assert_eq!(f.store.campaign(c).unwrap(), None);
        assert!(f.store.audience(c, 0, 10).unwrap().is_empty());
        assert_eq!(f.store.counters(c), Default::default());
    }
}

fn a_purge_keeps_a_gateway_id_a_later_message_took_and_passes_an_unreadable_status(
    h: &mut dyn Harness,
) {
    let f = fixture(h);
    // A gateway that restarted its numbering gives campaign 2's message
    // the id campaign 1's had: the receipt entry names campaign 2's now.
    for c in [1, 2] {
        let campaign = f.store.create_campaign(vec![1, 0]).wait().unwrap();
        f.store
            .enqueue(q(Lane::Normal, c), new(0..2))
            .wait()
            .unwrap();
        let mut got = lease(&f.store, 2).into_iter();
        let wired = |ext: String| Outcome::Done {
            status: DeliveryStatus::Wired,
            external_id: Some(ext),
            reason: None,
        };
        f.store
            .settle(vec![
                (got.next().unwrap(), wired("gw-7".into())),
                (got.next().unwrap(), wired(format!("gw-{c}0"))),
            ])
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(campaign, CampaignId(c));
    }
    let later = DeliveryId::new(CampaignId(2), 0);
    assert_eq!(f.store.by_external_id(CH, "gw-7").unwrap(), Some(later));

    let purged = f.store.purge_campaign(CampaignId(1)).unwrap();
    assert_eq!((purged.statuses, purged.receipts), (2, 1));
    assert_eq!(f.store.by_external_id(CH, "gw-10").unwrap(), None);
    assert_eq!(f.store.by_external_id(CH, "gw-7").unwrap(), Some(later));
    let (f, _) = crash(h, f);
    assert_eq!(f.store.by_external_id(CH, "gw-7").unwrap(), Some(later));

    // An unreadable status record does not hold the purge up: it goes,
    // and only the entry it named is left behind.
    let (lo, hi) = crate::keys::campaign_deliveries(CampaignId(2));
    corrupt_nth(&f.store, Cf::Status, &lo, &hi, 1);
    let purged = f.store.purge_campaign(CampaignId(2)).unwrap();
    assert_eq!((purged.statuses, purged.receipts), (2, 1));
    assert_eq!(f.store.by_external_id(CH, "gw-7").unwrap(), None);
    assert_eq!(
        f.store.status(DeliveryId::new(CampaignId(2), 1)).unwrap(),
        None
    );
    assert_eq!(f.store.campaign(CampaignId(2)).unwrap(), None);
}

fn a_fallback_keeps_a_gateway_id_a_later_message_took(h: &mut dyn Harness) {
    let f = fixture(h);
    // Campaign 2's message took the gateway id campaign 1's had.
    for c in [1, 2] {
        f.store
            .enqueue(q(Lane::Normal, c), new(0..1))
            .wait()
            .unwrap();
        let got = lease(&f.store, 1).into_iter().next().unwrap();
        f.store
            .settle(vec![(
                got,
                Outcome::Done {
                    status: DeliveryStatus::Wired,
                    external_id: Some("gw-7".into()),
                    reason: None,
                },
            )])
            .unwrap()
            .wait()
            .unwrap();
    }
    let (first, later) = (
        DeliveryId::new(CampaignId(1), 0),
        DeliveryId::new(CampaignId(2), 0),
    );
    let reroute = |id: DeliveryId| {
        f.store
            .update_statuses(&[(id, DeliveryStatus::Failed, Some("expired".into()))])
            .unwrap()
            .wait()
            .unwrap();
        let to = q(Lane::Normal, id.campaign.0);
        f.store
            .reroute_failed(id, "failed after wiring".into(), |_| {
                Ok(Some((to, new(0..1).remove(0))))
            })
            .unwrap()
            .wait()
            .unwrap()
    };
    // The first message's failure moves it on and leaves the entry, which
    // names the later message.
    assert!(reroute(first));
    assert_eq!(f.store.status(first).unwrap(), None);
    assert_eq!(f.store.by_external_id(CH, "gw-7").unwrap(), Some(later));
    // The later message's own failure takes its entry with it.
    assert!(reroute(later));
    assert_eq!(f.store.by_external_id(CH, "gw-7").unwrap(), None);
    assert_eq!(ids(&lease(&f.store, 10)), vec![(1, 0), (2, 0)]);
}

fn a_history_replayed_many_times_stays_bounded(h: &mut dyn Harness) {
    use crate::records::MAX_HISTORY;

    let f = fixture(h);
    f.store
        .enqueue(q(Lane::Normal, 4), new(0..1))
        .wait()
        .unwrap();
    let id = DeliveryId::new(CampaignId(4), 0);
    let kill = |store: &Store, reason: String| {
        let got = lease(store, 1);
        assert_eq!(got.len(), 1);
        store
            .settle(
                got.into_iter()
                    .map(|l| {
                        (
                            l,
                            Outcome::Dead {
                                reason: reason.clone(),
                            },
                        )
                    })
                    .collect(),
            )
            .unwrap()
            .wait()
            .unwrap();
    };
    kill(&f.store, "r0".into());
    for i in 1..=30 {
        assert_eq!(f.store.replay_dead(&[id]).unwrap().wait().unwrap(), 1);
        kill(&f.store, format!("r{i}"));
    }
    let dead = f.store.dead_letters(None, 10).unwrap();
    let history: Vec<&str> = dead[0]
        .item
        .history
        .iter()
        .map(|n| n.reason.as_str())
        .collect();
    assert_eq!(history.len(), MAX_HISTORY, "{history:?}");
    assert_eq!(history[0], "replayed after: r0", "the first is kept");
    assert_eq!(
        history[MAX_HISTORY - 1],
        "replayed after: r29",
        "the latest are kept"
    );
    assert_eq!(dead[0].reason, "r30");
}

/// Small pages are read by key, larger ones by scan: the same entries
/// either way, gaps stepped over, another campaign's never included.
fn audience_pages_read_the_same_by_key_or_by_scan(h: &mut dyn Harness) {
    let f = fixture(h);
    let (c, next) = (CampaignId(7), CampaignId(8));
    let r = |b: u8| vec![b; 3];
    f.store.put_audience(c, 0, vec![r(0), r(1)]).wait().unwrap();
    f.store.put_audience(c, 5, vec![r(5)]).wait().unwrap();
    f.store.put_audience(next, 0, vec![r(80)]).wait().unwrap();
    let page = |from: u32, max: u32| -> Vec<u32> {
        let got = f.store.audience(c, from, max).unwrap();
        for (i, v) in &got {
            assert_eq!(v, &r(*i as u8), "entry {i}");
        }
        got.into_iter().map(|(i, _)| i).collect()
    };
    // Dense: by key.
    assert_eq!(page(0, 1), vec![0]);
    assert_eq!(page(0, 2), vec![0, 1]);
    // A gap: by scan, which steps over it, up to `max` entries.
    assert_eq!(page(1, 2), vec![1, 5]);
    assert_eq!(page(0, 3), vec![0, 1, 5]);
    assert_eq!(page(2, 1), vec![5]);
    // Past the end, and never into the next campaign.
    assert_eq!(page(5, 8), vec![5]);
    assert!(page(6, 1).is_empty());
    assert!(page(u32::MAX, 1).is_empty());
    // Large pages: by scan.
    assert_eq!(page(0, 100), vec![0, 1, 5]);
}
