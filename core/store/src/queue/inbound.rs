//! Inbound messages as webhooks brought them, de-duplicated.

use super::*;

impl Store {
    /// Keeps inbound messages of `channel`, in arrival order, dropping any
    /// whose external id this channel already brought. Returns how many
    /// were new. Reads the index: call it from a blocking thread.
    pub fn put_inbound(
        &self,
        channel: ChannelId,
        messages: Vec<InboundRecord>,
    ) -> Result<Pending<usize>> {
        // Inbound records have their own lock: they share nothing with the
        // queues. Held across the index reads so a webhook sent twice at
        // once is still stored once.
        let mut next = self.next_inbound.lock();
        let mut batch = Batch::new();
        let mut seen = BTreeSet::new();
        let mut stored = 0;
        for m in messages {
            if let Some(ext) = &m.external_id {
                let index = keys::inbound_index(channel, ext);
                if !seen.insert(index.clone()) || self.engine.get(Cf::Inbound, &index)?.is_some() {
                    continue;
                }
                batch.put(Cf::Inbound, index, next.to_be_bytes().to_vec());
            }
            batch.put(Cf::Inbound, keys::inbound(*next), encode(&m));
            *next += 1;
            stored += 1;
        }
        if stored == 0 {
            return Ok(Pending::ready(0));
        }
        batch.put(Cf::Inbound, keys::NEXT_INBOUND.to_vec(), encode(&*next));
        Ok(Pending::new(stored, self.engine.submit(batch)))
    }

    /// Inbound messages after sequence number `after`, oldest first.
    pub fn inbound(&self, after: u64, limit: usize) -> Result<Vec<(u64, InboundRecord)>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let (_, hi) = keys::inbound_range();
        self.engine.scan(
            Cf::Inbound,
            &keys::inbound(after.saturating_add(1)),
            &hi,
            &mut |k, v| {
                if let Some(seq) = keys::inbound_from(k) {
                    out.push((seq, decode(Cf::Inbound, k, v)?));
                }
                Ok(out.len() < limit)
            },
        )?;
        Ok(out)
    }
}
