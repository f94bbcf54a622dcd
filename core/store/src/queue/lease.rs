//! Enqueueing and leasing: highest lane first, round-robin across a
//! lane's campaigns, reads outside the store's lock.

use super::*;

impl Store {
    /// Appends deliveries to the tail of their queue.
    pub fn enqueue(&self, queue: QueueKey, deliveries: Vec<NewDelivery>) -> Pending<()> {
        if deliveries.is_empty() {
            return Pending::ready(());
        }
        let now = self.clock.now_ms();
        let mut state = self.state.lock();
        let mut batch = Batch::new();
        state.add_new(&mut batch, queue, deliveries, now);
        let mut touched = Touched::default();
        touched.queues.insert(queue);
        touched.campaigns.insert(queue.campaign);
        touched.write(&mut state, &mut batch);
        Pending::new((), self.engine.submit(batch))
    }

    /// Leases up to `max` ready deliveries of `channel`: the highest lane
    /// first, round-robin across the campaigns of a lane (up to [`DEAL`] of
    /// one campaign at a time), oldest first within a campaign. Send
    /// nothing before the returned value is committed.
    ///
    /// The queues are read from the engine outside the store's lock (under
    /// the channel's own lease lock, so the heads it read from cannot
    /// move): one channel's reads never hold up another channel.
    pub fn lease(&self, channel: ChannelId, max: usize) -> Result<Pending<Vec<Leased>>> {
        let lease_lock = Arc::clone(self.leasing.lock().entry(channel).or_default());
        let _leasing = lease_lock.lock();
        let now = self.clock.now_ms();
        let mut out = Vec::new();
        let mut touched = Touched::default();
        let mut quarantine = Batch::new();
        for lane in Lane::ALL {
            let remaining = max - out.len();
            if remaining == 0 {
                break;
            }
            // Plan: which queues, from which heads, how many.
            let plan: Vec<(QueueKey, u64, u64, u64, u64)> = {
                let mut state = self.state.lock();
                let Some(ch) = state.queues.get_mut(&channel) else {
                    break;
                };
                let ls = &mut ch.lanes[lane.code() as usize];
                if ls.ready == 0 {
                    continue;
                }
                round_robin(ls, remaining)
                    .into_iter()
                    .filter_map(|(campaign, want)| {
                        let qs = ls.queues.get(&campaign)?;
                        Some((
                            QueueKey {
                                channel,
                                lane,
                                campaign,
                            },
                            qs.meta.head,
                            qs.meta.tail,
                            qs.meta.redeliver_below,
                            want,
                        ))
                    })
                    .collect()
            };
            // Read, without the store's lock.
            let mut taken: Vec<Vec<Leased>> = Vec::with_capacity(plan.len());
            let mut unreadable: Vec<(QueueKey, Vec<Unreadable>)> = Vec::new();
            for &(q, head, tail, redeliver_below, want) in &plan {
                let (got, bad) = self.read_ready(q, head, tail, redeliver_below, want)?;
                taken.push(got);
                if !bad.is_empty() {
                    unreadable.push((q, bad));
                }
            }
            // Apply.
            let mut state = self.state.lock();
            // Unreadable records are moved aside, never handed out: the
            // queue goes on past them.
            for (q, bad) in unreadable {
                for u in bad {
                    state.quarantine(&mut quarantine, Cf::Ready, &u.key, &u.value, u.reason, now);
                    let qs = state.queue(q);
                    if qs.leased.contains(&u.qseq) {
                        continue;
                    }
                    qs.meta.head = qs.meta.head.max(u.qseq + 1);
                    qs.meta.ready = qs.meta.ready.saturating_sub(1);
                    let emptied = qs.meta.ready == 0;
                    let ls = state.lane(q.channel, q.lane);
                    ls.ready = ls.ready.saturating_sub(1);
                    if emptied {
                        ls.active.remove(&q.campaign);
                    }
                    state.counters(q.campaign).quarantined += 1;
                    touched.queues.insert(q);
                    touched.campaigns.insert(q.campaign);
                }
            }
            let Some(ch) = state.queues.get_mut(&channel) else {
                break;
            };
            let ls = &mut ch.lanes[lane.code() as usize];
            for got in &taken {
                let Some(last) = got.last() else {
                    continue;
                };
                let q = last.queue;
                let qs = ls
                    .queues
                    .get_mut(&q.campaign)
                    .expect("queues are never removed while the store is open");
                qs.meta.head = qs.meta.head.max(last.qseq + 1);
                qs.meta.ready -= got.len() as u64;
                qs.leased.extend(got.iter().map(|l| l.qseq));
                ls.ready -= got.len() as u64;
                ls.leased += got.len() as u64;
                if qs.meta.ready == 0 {
                    ls.active.remove(&q.campaign);
                }
                touched.queues.insert(q);
            }
            // Hand them out in the order the round-robin dealt them, up
            // to DEAL of a campaign at a time.
            let mut iters: Vec<_> = taken.into_iter().map(Vec::into_iter).collect();
            loop {
                let before = out.len();
                for it in &mut iters {
                    for l in it.by_ref().take(DEAL as usize) {
                        ls.cursor = Some(l.queue.campaign);
                        out.push(l);
                    }
                }
                if out.len() == before {
                    break;
                }
            }
        }
        if out.is_empty() && quarantine.is_empty() {
            return Ok(Pending::ready(out));
        }
        let mut state = self.state.lock();
        for l in out.iter().filter(|l| l.redelivered) {
            state.counters(l.queue.campaign).redelivered += 1;
            touched.campaigns.insert(l.queue.campaign);
        }
        let mut batch = quarantine;
        touched.write(&mut state, &mut batch);
        Ok(Pending::new(out, self.engine.submit(batch)))
    }

    /// Up to `want` readable deliveries of `q` from `head`, and the
    /// records on the way that cannot be read.
    fn read_ready(
        &self,
        q: QueueKey,
        head: u64,
        tail: u64,
        redeliver_below: u64,
        want: u64,
    ) -> Result<(Vec<Leased>, Vec<Unreadable>)> {
        let mut got = Vec::with_capacity(want as usize);
        let mut bad = Vec::new();
        let lower = keys::ready(q, head);
        let upper = keys::ready(q, tail);
        self.engine.scan(Cf::Ready, &lower, &upper, &mut |k, v| {
            let Some((_, qseq)) = keys::ready_from(k) else {
                // Inside this queue's key range, so it has its prefix:
                // only its length can be wrong. Nothing to lease there.
                return Ok(true);
            };
            match decode::<Item>(Cf::Ready, k, v) {
                Ok(item) => got.push(Leased {
                    queue: q,
                    qseq,
                    item,
                    redelivered: qseq < redeliver_below,
                }),
                Err(e) => bad.push(Unreadable {
                    qseq,
                    key: k.to_vec(),
                    value: v.to_vec(),
                    reason: e.to_string(),
                }),
            }
            Ok((got.len() as u64) < want)
        })?;
        Ok((got, bad))
    }

    /// When the oldest ready delivery of `channel` was enqueued.
    pub fn oldest_ready_ms(&self, channel: ChannelId) -> Result<Option<u64>> {
        let heads: Vec<(QueueKey, u64, u64)> = {
            let state = self.state.lock();
            let Some(ch) = state.queues.get(&channel) else {
                return Ok(None);
            };
            ch.lanes
                .iter()
                .enumerate()
                .flat_map(|(i, lane)| {
                    lane.active.iter().filter_map(move |c| {
                        let qs = lane.queues.get(c)?;
                        let lane = Lane::from_code(i as u8)?;
                        Some((
                            QueueKey {
                                channel,
                                lane,
                                campaign: *c,
                            },
                            qs.meta.head,
                            qs.meta.tail,
                        ))
                    })
                })
                .collect()
        };
        let mut oldest: Option<u64> = None;
        for (q, head, tail) in heads {
            self.engine.scan(
                Cf::Ready,
                &keys::ready(q, head),
                &keys::ready(q, tail),
                &mut |k, v| {
                    // An unreadable head is quarantined by the next lease.
                    let Ok(item) = decode::<Item>(Cf::Ready, k, v) else {
                        return Ok(true);
                    };
                    oldest = Some(oldest.map_or(item.enqueued_ms, |o| o.min(item.enqueued_ms)));
                    Ok(false)
                },
            )?;
        }
        Ok(oldest)
    }
}

/// A queued record that could not be read.
struct Unreadable {
    qseq: u64,
    key: Vec<u8>,
    value: Vec<u8>,
    reason: String,
}

/// The most a campaign is dealt at a time when a lease is shared across a
/// lane's campaigns. Each share is one read of consecutive queue keys and,
/// once sent, a run of consecutive status keys; dealt one at a time, a
/// lease over many small campaigns (lab results, reminders: a campaign per
/// batch) cost a seek per delivery and scattered every write across the
/// memtable. A campaign waits behind at most this many deliveries of each
/// other campaign of its lane.
pub const DEAL: u64 = 32;

/// Deals `want` leases round-robin across the lane's active campaigns,
/// starting after the cursor: up to [`DEAL`] to each in turn, until `want`
/// are dealt or the campaigns have no more. Returns (campaign, share) in
/// dealing order.
fn round_robin(lane: &LaneState, want: usize) -> Vec<(CampaignId, u64)> {
    let (after_cursor, up_to_cursor) = match lane.cursor {
        Some(c) => (
            lane.active.range((Bound::Excluded(c), Bound::Unbounded)),
            lane.active.range(..=c),
        ),
        None => (lane.active.range(..), lane.active.range(..CampaignId(0))),
    };
    let mut left = want as u64;
    // The first turn visits only the campaigns it deals to (a lane may
    // hold thousands of small campaigns); later turns, if they had less
    // than `want`, go round those again.
    let mut dealt: Vec<(CampaignId, u64, u64)> = Vec::new();
    for &campaign in after_cursor.chain(up_to_cursor) {
        if left == 0 {
            break;
        }
        let avail = lane.queues.get(&campaign).map_or(0, |q| q.meta.ready);
        let give = DEAL.min(left).min(avail);
        left -= give;
        dealt.push((campaign, avail, give));
    }
    while left > 0 {
        let before = left;
        for (_, avail, share) in &mut dealt {
            let give = DEAL.min(left).min(*avail - *share);
            *share += give;
            left -= give;
            if left == 0 {
                break;
            }
        }
        if left == before {
            break;
        }
    }
    dealt
        .into_iter()
        .filter(|&(_, _, share)| share > 0)
        .map(|(campaign, _, share)| (campaign, share))
        .collect()
}
