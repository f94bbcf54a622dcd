//! Random operation sequences, crashes included, run against the real
//! queues on both engines and against a plain model; they must agree on
//! every observable: what a lease returns, in which order, what a crash
//! brings back, and every count.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use mhero_proto::{CampaignId, ChannelId, DeliveryId, DeliveryStatus, Lane};
use proptest::prelude::*;

use super::{Harness, ManualClock, MemoryHarness, RocksHarness, open_store};
use crate::{Leased, NewDelivery, Outcome, QueueKey, Store};

#[derive(Clone, Debug)]
enum Kind {
    Done(u8),
    Retry(u64),
    Dead,
    Reroute,
}

#[derive(Clone, Debug)]
enum Op {
    Enqueue {
        ch: u32,
        lane: u8,
        campaign: u64,
        n: u32,
    },
    Lease {
        ch: u32,
        n: usize,
    },
    Settle(Vec<(usize, Kind)>),
    Promote {
        advance: u64,
    },
    Replay(usize),
    Crash,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        3 => (1u8..8).prop_map(Kind::Done),
        2 => (0u64..3000).prop_map(Kind::Retry),
        1 => Just(Kind::Dead),
        1 => Just(Kind::Reroute),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u32..3, 0u8..4, 1u64..4, 1u32..6).prop_map(|(ch, lane, campaign, n)| Op::Enqueue { ch, lane, campaign, n }),
        4 => (1u32..3, 1usize..10).prop_map(|(ch, n)| Op::Lease { ch, n }),
        4 => prop::collection::vec((any::<usize>(), kind()), 1..6).prop_map(Op::Settle),
        2 => (0u64..2500).prop_map(|advance| Op::Promote { advance }),
        1 => any::<usize>().prop_map(Op::Replay),
        1 => Just(Op::Crash),
    ]
}

type Qk = (u32, u8, u64);

#[derive(Clone, Debug)]
struct MItem {
    index: u32,
    attempts: u16,
    qpos: u64,
    redelivered: bool,
}

#[derive(Default)]
struct Model {
    ready: BTreeMap<Qk, VecDeque<MItem>>,
    tails: HashMap<Qk, u64>,
    leased: Vec<(Qk, MItem)>,
    delayed: BTreeMap<(u64, Qk, u32), MItem>,
    dead: BTreeMap<(u64, u32), (Qk, MItem, String)>,
    status: BTreeMap<(u64, u32), DeliveryStatus>,
    cursors: HashMap<(u32, u8), u64>,
    next_index: HashMap<u64, u32>,
    floor: u64,
    next_due: Option<u64>,
    enqueued: HashMap<u64, u64>,
}

impl Model {
    fn push(&mut self, q: Qk, mut item: MItem) {
        let tail = self.tails.entry(q).or_default();
        item.qpos = *tail;
        *tail += 1;
        self.ready.entry(q).or_default().push_back(item);
    }

    fn lease(&mut self, ch: u32, n: usize) -> Vec<(Qk, MItem)> {
        let mut out = Vec::new();
        for lane in 0..4u8 {
            let mut active: Vec<u64> = self
                .ready
                .iter()
                .filter(|((c, l, _), items)| *c == ch && *l == lane && !items.is_empty())
                .map(|((_, _, k), _)| *k)
                .collect();
            if let Some(&cursor) = self.cursors.get(&(ch, lane)) {
                let split = active
                    .iter()
                    .position(|&k| k > cursor)
                    .unwrap_or(active.len());
                active.rotate_left(split);
            }
            loop {
                let mut progress = false;
                // Each campaign in turn gives up to DEAL.
                for &k in &active {
                    for _ in 0..crate::queue::DEAL {
                        if out.len() == n {
                            break;
                        }
                        if let Some(item) = self
                            .ready
                            .get_mut(&(ch, lane, k))
                            .and_then(VecDeque::pop_front)
                        {
                            self.cursors.insert((ch, lane), k);
                            out.push(((ch, lane, k), item));
                            progress = true;
                        }
                    }
                }
                if !progress || out.len() == n {
                    break;
                }
            }
        }
        self.leased.extend(out.iter().cloned());
        out
    }

    fn crash(&mut self) -> u64 {
        let mut back: BTreeMap<Qk, Vec<MItem>> = BTreeMap::new();
        for (q, mut item) in self.leased.drain(..) {
            item.redelivered = true;
            back.entry(q).or_default().push(item);
        }
        let mut n = 0;
        for (q, mut items) in back {
            items.sort_by_key(|i| i.qpos);
            let queue = self.ready.entry(q).or_default();
            for item in items.into_iter().rev() {
                n += 1;
                queue.push_front(item);
            }
        }
        self.cursors.clear();
        self.next_due = if self.delayed.is_empty() {
            None
        } else {
            Some(self.floor)
        };
        n
    }

    /// The store scans only when its earliest-due hint has passed, and each
    /// scan moves the floor that later retries are due at, at the earliest.
    fn promote(&mut self, now: u64) -> usize {
        match self.next_due {
            Some(due) if due <= now && !self.delayed.is_empty() => {}
            _ => return 0,
        }
        let due: Vec<_> = self
            .delayed
            .range(..(now + 1, (0, 0, 0), 0))
            .map(|(k, _)| *k)
            .collect();
        for k in &due {
            let mut item = self.delayed.remove(k).expect("listed");
            item.redelivered = false;
            self.push(k.1, item);
        }
        self.floor = now + 1;
        self.next_due = self.delayed.keys().next().map(|k| k.0);
        due.len()
    }
}

struct Real {
    store: Store,
    leased: Vec<Leased>,
}

fn qk(q: &QueueKey) -> Qk {
    (q.channel.0, q.lane.code(), q.campaign.0)
}

fn check_lease(real: &[Leased], model: &[(Qk, MItem)]) -> Result<(), TestCaseError> {
    let r: Vec<_> = real
        .iter()
        .map(|l| (qk(&l.queue), l.item.index, l.item.attempts, l.redelivered))
        .collect();
    let m: Vec<_> = model
        .iter()
        .map(|(q, i)| (*q, i.index, i.attempts, i.redelivered))
        .collect();
    prop_assert_eq!(r, m);
    Ok(())
}

fn check_counts(store: &Store, model: &Model) -> Result<(), TestCaseError> {
    for ch in 1..3u32 {
        let depth = store.depth(ChannelId(ch));
        for lane in 0..4u8 {
            let ready: usize = model
                .ready
                .iter()
                .filter(|((c, l, _), _)| *c == ch && *l == lane)
                .map(|(_, v)| v.len())
                .sum();
            let leased = model
                .leased
                .iter()
                .filter(|((c, l, _), _)| *c == ch && *l == lane)
                .count();
            prop_assert_eq!(
                depth.ready[lane as usize],
                ready as u64,
                "ready ch{} lane{}",
                ch,
                lane
            );
            prop_assert_eq!(
                depth.leased[lane as usize],
                leased as u64,
                "leased ch{} lane{}",
                ch,
                lane
            );
        }
    }
    let g = store.globals();
    prop_assert_eq!(g.delayed, model.delayed.len() as u64);
    prop_assert_eq!(g.dead, model.dead.len() as u64);
    for campaign in 1..4u64 {
        let k = store.counters(CampaignId(campaign));
        prop_assert_eq!(
            k.enqueued,
            model.enqueued.get(&campaign).copied().unwrap_or(0)
        );
        prop_assert_eq!(
            k.dead,
            model.dead.keys().filter(|(c, _)| *c == campaign).count() as u64
        );
        prop_assert_eq!(
            k.delayed,
            model
                .delayed
                .keys()
                .filter(|(_, (_, _, c), _)| *c == campaign)
                .count() as u64
        );
        prop_assert_eq!(
            k.settled(),
            model.status.keys().filter(|(c, _)| *c == campaign).count() as u64
        );
        let (ready, leased) = store.campaign_depth(CampaignId(campaign));
        prop_assert_eq!(
            ready + leased + k.delayed + k.dead + k.settled(),
            k.enqueued,
            "accounting"
        );
    }
    Ok(())
}

fn run(h: &mut dyn Harness, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let clock = Arc::new(ManualClock::default());
    clock.set(10_000);
    let (store, _) = open_store(h.engine(), &clock);
    let mut real = Real {
        store,
        leased: Vec::new(),
    };
    let mut model = Model::default();
    for op in ops {
        match op {
            Op::Enqueue {
                ch,
                lane,
                campaign,
                n,
            } => {
                let q = QueueKey {
                    channel: ChannelId(ch),
                    lane: Lane::from_code(lane).expect("lane"),
                    campaign: CampaignId(campaign),
                };
                let next = model.next_index.entry(campaign).or_default();
                let first = *next;
                *next += n;
                let items: Vec<_> = (first..first + n)
                    .map(|i| NewDelivery {
                        index: i,
                        recipient: format!("+1{i}"),
                        route: 0,
                        language: None,
                    })
                    .collect();
                real.store
                    .enqueue(q, items)
                    .wait()
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                *model.enqueued.entry(campaign).or_default() += u64::from(n);
                for i in first..first + n {
                    model.push(
                        (ch, lane, campaign),
                        MItem {
                            index: i,
                            attempts: 0,
                            qpos: 0,
                            redelivered: false,
                        },
                    );
                }
            }
            Op::Lease { ch, n } => {
                let got = real
                    .store
                    .lease(ChannelId(ch), n)
                    .and_then(|p| p.wait())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let expected = model.lease(ch, n);
                check_lease(&got, &expected)?;
                real.leased.extend(got);
            }
            Op::Settle(picks) => {
                let now = crate::Clock::now_ms(&*clock);
                let mut chosen: Vec<(usize, Kind)> = Vec::new();
                for (pick, kind) in picks {
                    if real.leased.is_empty() {
                        break;
                    }
                    let i = pick % real.leased.len();
                    if !chosen.iter().any(|(j, _)| *j == i) {
                        chosen.push((i, kind));
                    }
                }
                if chosen.is_empty() {
                    continue;
                }
                let mut batch = Vec::new();
                for (i, kind) in &chosen {
                    let l = real.leased[*i].clone();
                    let (q, mut item) = model.leased[*i].clone();
                    let id = (q.2, item.index);
                    let outcome = match kind {
                        Kind::Done(code) => {
                            let status = DeliveryStatus::from_code(*code).expect("status");
                            model.status.insert(id, status);
                            Outcome::Done {
                                status,
                                external_id: None,
                                reason: None,
                            }
                        }
                        Kind::Retry(delay) => {
                            item.attempts += 1;
                            item.redelivered = false;
                            let due = (now + delay).max(model.floor);
                            model.next_due = Some(model.next_due.map_or(due, |d| d.min(due)));
                            model.delayed.insert((due, q, item.index), item);
                            Outcome::Retry {
                                due_ms: now + delay,
                                reason: "later".into(),
                            }
                        }
                        Kind::Dead => {
                            item.attempts += 1;
                            model.dead.insert(id, (q, item, "dead".into()));
                            Outcome::Dead {
                                reason: "dead".into(),
                            }
                        }
                        Kind::Reroute => {
                            let to = if q.0 == 1 { 2 } else { 1 };
                            item.attempts = 0;
                            item.redelivered = false;
                            model.push((to, q.1, q.2), item);
                            Outcome::Reroute {
                                channel: ChannelId(to),
                                recipient: "+2".into(),
                                route: 1,
                                reason: "fallback".into(),
                            }
                        }
                    };
                    batch.push((l, outcome));
                }
                real.store
                    .settle(batch)
                    .and_then(|p| p.wait())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let mut idx: Vec<usize> = chosen.iter().map(|(i, _)| *i).collect();
                idx.sort_unstable();
                for i in idx.into_iter().rev() {
                    real.leased.remove(i);
                    model.leased.remove(i);
                }
            }
            Op::Promote { advance } => {
                clock.advance(advance);
                let now = crate::Clock::now_ms(&*clock);
                let moved = real
                    .store
                    .promote_due()
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let expected = model.promote(now);
                prop_assert_eq!(moved, expected, "promoted");
            }
            Op::Replay(pick) => {
                let Some(&key) = model.dead.keys().nth(pick % model.dead.len().max(1)) else {
                    continue;
                };
                let id = DeliveryId::new(CampaignId(key.0), key.1);
                let n = real
                    .store
                    .replay_dead(&[id])
                    .and_then(|p| p.wait())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(n, 1);
                let (q, mut item, _) = model.dead.remove(&key).expect("listed");
                item.attempts = 0;
                item.redelivered = false;
                model.push(q, item);
            }
            Op::Crash => {
                let engine = real.store.engine().clone();
                drop(real);
                let engine = h.crash(engine);
                let (store, recovery) = open_store(engine, &clock);
                real = Real {
                    store,
                    leased: Vec::new(),
                };
                prop_assert_eq!(recovery.requeued, model.crash(), "requeued");
            }
        }
        check_counts(&real.store, &model)?;
    }
    let dead: Vec<_> = real
        .store
        .dead_letters(None, 10_000)
        .map_err(|e| TestCaseError::fail(e.to_string()))?
        .into_iter()
        .map(|d| (d.id.campaign.0, d.id.index, d.item.attempts))
        .collect();
    let expected: Vec<_> = model
        .dead
        .iter()
        .map(|((c, i), (_, item, _))| (*c, *i, item.attempts))
        .collect();
    prop_assert_eq!(dead, expected);
    for ((c, i), status) in &model.status {
        let rec = real
            .store
            .status(DeliveryId::new(CampaignId(*c), *i))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(rec.map(|r| r.status), Some(*status));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn memory_engine_agrees_with_the_model(ops in prop::collection::vec(op(), 1..60)) {
        run(&mut MemoryHarness::new(), ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn rocksdb_engine_agrees_with_the_model(ops in prop::collection::vec(op(), 1..60)) {
        run(&mut RocksHarness::new(), ops)?;
    }
}
