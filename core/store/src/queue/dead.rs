//! Dead letters: listed, scanned, replayed.

use super::*;

impl Store {
    /// Dead letters in delivery order, starting after `after`.
    pub fn dead_letters(&self, after: Option<DeliveryId>, limit: usize) -> Result<Vec<DeadLetter>> {
        let lower = match after {
            Some(id) => {
                let mut k = keys::delivery(id);
                k.push(0);
                k
            }
            None => Vec::new(),
        };
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        self.engine
            .scan(Cf::Dead, &lower, &keys::deliveries_end(), &mut |k, v| {
                out.push(decode(Cf::Dead, k, v)?);
                Ok(out.len() < limit)
            })?;
        Ok(out)
    }

    /// The last `limit` dead letters in delivery order (those of the newest
    /// campaigns), still in delivery order: what an operator looks at
    /// first during a send. Reads only those.
    pub fn newest_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        self.engine
            .scan_rev(Cf::Dead, &[], &keys::deliveries_end(), &mut |k, v| {
                out.push(decode(Cf::Dead, k, v)?);
                Ok(out.len() < limit)
            })?;
        out.reverse();
        Ok(out)
    }

    /// Puts dead letters back at the tail of their queues with a fresh
    /// attempt count; their history is kept. Refuses the whole call if any
    /// id has no dead letter.
    pub fn replay_dead(&self, ids: &[DeliveryId]) -> Result<Pending<usize>> {
        let now = self.clock.now_ms();
        let mut state = self.state.lock();
        let mut letters = Vec::with_capacity(ids.len());
        let mut seen = BTreeSet::new();
        for &id in ids {
            let key = keys::delivery(id);
            let found = self.engine.get(Cf::Dead, &key)?;
            match found {
                Some(v) if seen.insert(id) => {
                    letters.push(decode::<DeadLetter>(Cf::Dead, &key, &v)?)
                }
                _ => return Err(Error::NoDeadLetter(id)),
            }
        }
        let mut batch = Batch::new();
        let mut touched = Touched {
            globals: true,
            ..Touched::default()
        };
        for dead in &letters {
            let q = QueueKey {
                channel: dead.channel,
                lane: dead.lane,
                campaign: dead.id.campaign,
            };
            let mut item = dead.item.clone();
            item.note(AttemptNote {
                at_ms: now,
                channel: dead.channel,
                reason: format!("replayed after: {}", dead.reason),
            });
            item.attempts = 0;
            item.enqueued_ms = now;
            let qseq = state.push_ready(q, 1);
            batch.delete(Cf::Dead, keys::delivery(dead.id));
            batch.put(Cf::Ready, keys::ready(q, qseq), encode(&item));
            state.counters(q.campaign).dead -= 1;
            touched.queues.insert(q);
            touched.campaigns.insert(q.campaign);
        }
        state.globals.dead -= letters.len() as u64;
        touched.write(&mut state, &mut batch);
        Ok(Pending::new(letters.len(), self.engine.submit(batch)))
    }

    /// Visits the dead letters of one campaign in delivery order.
    pub fn scan_dead(
        &self,
        campaign: CampaignId,
        visit: &mut dyn FnMut(DeadLetter) -> Result<bool>,
    ) -> Result<()> {
        let (lo, hi) = keys::campaign_deliveries(campaign);
        self.engine.scan(Cf::Dead, &lo, &hi, &mut |k, v| {
            visit(decode(Cf::Dead, k, v)?)
        })
    }
}
