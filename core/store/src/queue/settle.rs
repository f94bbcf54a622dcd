//! Settling leased deliveries (wired, retry, defer, dead letter,
//! reroute) and the fallback after a failed receipt.

use super::*;

impl Store {
    /// Settles leased deliveries, each in its own atomic state change; all
    /// of them commit in one batch. Refuses the whole call, writing
    /// nothing, if any delivery is not currently leased.
    pub fn settle(&self, settled: Vec<(Leased, Outcome)>) -> Result<Pending<()>> {
        if settled.is_empty() {
            return Ok(Pending::ready(()));
        }
        let now = self.clock.now_ms();
        let mut state = self.state.lock();
        let mut seen = BTreeSet::new();
        for (l, _) in &settled {
            let qs = state.queue(l.queue);
            if !qs.leased.contains(&l.qseq) || !seen.insert((l.queue, l.qseq)) {
                return Err(Error::NotLeased(l.id()));
            }
        }
        let mut batch = Batch::new();
        let mut touched = Touched::default();
        let mut removed: BTreeMap<QueueKey, Vec<u64>> = BTreeMap::new();
        for (l, outcome) in settled {
            let id = l.id();
            let campaign = l.queue.campaign;
            {
                let qs = state.queue(l.queue);
                qs.leased.remove(&l.qseq);
            }
            state.lane(l.queue.channel, l.queue.lane).leased -= 1;
            removed.entry(l.queue).or_default().push(l.qseq);
            touched.queues.insert(l.queue);
            touched.campaigns.insert(campaign);
            let mut item = l.item;
            match outcome {
                Outcome::Done {
                    status,
                    external_id,
                    reason,
                } => {
                    if let Some(ext) = &external_id {
                        batch.put(
                            Cf::External,
                            keys::external(l.queue.channel, ext),
                            keys::delivery(id),
                        );
                    }
                    let record = StatusRecord {
                        status,
                        channel: l.queue.channel,
                        attempts: item.attempts + 1,
                        updated_ms: now,
                        external_id,
                        reason,
                        sent_ms: now,
                    };
                    batch.put(Cf::Status, keys::delivery(id), encode(&record));
                    state.counters(campaign).statuses[status.code() as usize] += 1;
                    // Handed over: a reply from this address on this
                    // channel now answers this delivery.
                    if matches!(
                        status,
                        DeliveryStatus::Wired
                            | DeliveryStatus::Sent
                            | DeliveryStatus::Delivered
                            | DeliveryStatus::Read
                    ) {
                        batch.put(
                            Cf::LastSent,
                            keys::last_sent(l.queue.channel, &item.recipient),
                            encode(&SentRef {
                                delivery: id,
                                at_ms: now,
                            }),
                        );
                    }
                }
                Outcome::Retry { .. } | Outcome::Defer { .. } => {
                    let due_ms = match outcome {
                        Outcome::Retry { due_ms, reason } => {
                            item.attempts += 1;
                            item.note(AttemptNote {
                                at_ms: now,
                                channel: l.queue.channel,
                                reason,
                            });
                            state.counters(campaign).retries += 1;
                            due_ms
                        }
                        Outcome::Defer { due_ms } => due_ms,
                        _ => unreachable!("matched above"),
                    };
                    let due = due_ms
                        .max(state.globals.delayed_floor)
                        .max(state.retry_floor);
                    batch.put(
                        Cf::Delayed,
                        keys::delayed(due, l.queue, item.index),
                        encode(&item),
                    );
                    state.globals.delayed += 1;
                    state.next_due = Some(state.next_due.map_or(due, |d| d.min(due)));
                    touched.globals = true;
                    state.counters(campaign).delayed += 1;
                }
                Outcome::Dead { reason } => {
                    item.attempts += 1;
                    let dead = DeadLetter {
                        id,
                        channel: l.queue.channel,
                        lane: l.queue.lane,
                        item,
                        reason,
                        dead_ms: now,
                    };
                    batch.put(Cf::Dead, keys::delivery(id), encode(&dead));
                    state.globals.dead += 1;
                    touched.globals = true;
                    state.counters(campaign).dead += 1;
                }
                Outcome::Reroute {
                    channel,
                    recipient,
                    route,
                    reason,
                } => {
                    let to = QueueKey { channel, ..l.queue };
                    item.note(AttemptNote {
                        at_ms: now,
                        channel: l.queue.channel,
                        reason,
                    });
                    item.recipient = recipient;
                    item.route = route;
                    item.attempts = 0;
                    item.enqueued_ms = now;
                    let qseq = state.push_ready(to, 1);
                    batch.put(Cf::Ready, keys::ready(to, qseq), encode(&item));
                    touched.queues.insert(to);
                    state.counters(campaign).rerouted += 1;
                }
            }
        }
        for (q, mut positions) in removed {
            positions.sort_unstable();
            delete_runs(&mut batch, q, &positions);
        }
        touched.write(&mut state, &mut batch);
        Ok(Pending::new((), self.engine.submit(batch)))
    }

    /// Moves a delivery whose receipt said it failed back into a queue: the
    /// campaign's next channel (fallback after wiring), which `next` picks
    /// from its status record. Its status record and receipt index entry
    /// go (the entry only while it names this delivery), its history keeps
    /// the failure. Returns false, writing nothing, unless its status is
    /// `failed` and `next` names a queue. Reads the store: call it from a
    /// blocking thread.
    pub fn reroute_failed(
        &self,
        id: DeliveryId,
        reason: String,
        next: impl FnOnce(&StatusRecord) -> Result<Option<(QueueKey, NewDelivery)>>,
    ) -> Result<Pending<bool>> {
        let now = self.clock.now_ms();
        let key = keys::delivery(id);
        let Some(record) = self
            .engine
            .get(Cf::Status, &key)?
            .map(|v| decode::<StatusRecord>(Cf::Status, &key, &v))
            .transpose()?
        else {
            return Ok(Pending::ready(false));
        };
        if record.status != DeliveryStatus::Failed {
            return Ok(Pending::ready(false));
        }
        let Some((to, delivery)) = next(&record)? else {
            return Ok(Pending::ready(false));
        };
        // The receipt entry goes only while it names this delivery: a
        // gateway that gave its id to a later message keeps that one's.
        let entry = match &record.external_id {
            Some(ext) if self.by_external_id(record.channel, ext)? == Some(id) => {
                Some(keys::external(record.channel, ext))
            }
            _ => None,
        };
        let mut state = self.state.lock();
        let mut batch = Batch::new();
        batch.delete(Cf::Status, key);
        if let Some(k) = entry {
            batch.delete(Cf::External, k);
        }
        let item = Item {
            index: id.index,
            recipient: delivery.recipient,
            route: delivery.route,
            language: delivery.language,
            attempts: 0,
            enqueued_ms: now,
            history: vec![AttemptNote {
                at_ms: now,
                channel: record.channel,
                reason,
            }],
        };
        let qseq = state.push_ready(to, 1);
        batch.put(Cf::Ready, keys::ready(to, qseq), encode(&item));
        let c = state.counters(id.campaign);
        c.statuses[DeliveryStatus::Failed.code() as usize] -= 1;
        c.rerouted += 1;
        let mut touched = Touched::default();
        touched.queues.insert(to);
        touched.campaigns.insert(id.campaign);
        touched.write(&mut state, &mut batch);
        Ok(Pending::new(true, self.engine.submit(batch)))
    }
}

/// Runs shorter than this are deleted key by key: every range tombstone in
/// the memtable is fragmented again by each new iterator, so thousands of
/// small ones would slow every lease.
pub const MIN_RANGE_DELETE: u64 = 128;

/// Deletes settled positions: one range per long run of consecutive
/// positions, point deletes for the rest.
fn delete_runs(batch: &mut Batch, q: QueueKey, positions: &[u64]) {
    let mut i = 0;
    while i < positions.len() {
        let start = positions[i];
        let mut end = start + 1;
        while i + 1 < positions.len() && positions[i + 1] == end {
            end += 1;
            i += 1;
        }
        if end - start < MIN_RANGE_DELETE {
            for qseq in start..end {
                batch.delete(Cf::Ready, keys::ready(q, qseq));
            }
        } else {
            batch.delete_range(Cf::Ready, keys::ready(q, start), keys::ready(q, end));
        }
        i += 1;
    }
}
