//! Inbound messages as webhooks brought them, de-duplicated; what the
//! inbound pipeline made of each; where each subscriber has got to; and
//! what was last handed over to each address, so a reply finds what it
//! answers.

use super::*;
use crate::records::{InboundResult, Undelivered};

/// Most recent-text entries one call forgets.
const FORGET_PER_CALL: usize = 10_000;

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

    /// The last message (seq) the inbound pipeline has processed; 0: none.
    pub fn inbound_processed(&self) -> Result<u64> {
        self.position(keys::INBOUND_PROCESSED)
    }

    /// The position (a message's seq) kept under `key`; 0: none.
    fn position(&self, key: &[u8]) -> Result<u64> {
        match self.engine.get(Cf::Inbound, key)? {
            Some(v) => decode(Cf::Inbound, key, &v),
            None => Ok(0),
        }
    }

    /// Marks `last` as the end of the page being processed after
    /// [`Self::inbound_processed`], before what the page does outside its
    /// own batch (answers keyed by the page's messages). A crash before the
    /// page's results are committed then reads the same page again, not a
    /// longer one, and so makes the same keys.
    pub fn mark_inbound_page(&self, last: u64) -> Pending<()> {
        let mut batch = Batch::new();
        batch.put(Cf::Inbound, keys::INBOUND_PAGE.to_vec(), encode(&last));
        Pending::new((), self.engine.submit(batch))
    }

    /// The end of the page marked by [`Self::mark_inbound_page`]; 0: none.
    /// Only a mark past [`Self::inbound_processed`] names a page still to
    /// be committed.
    pub fn inbound_page_mark(&self) -> Result<u64> {
        self.position(keys::INBOUND_PAGE)
    }

    /// The latest message whose sender-and-text digest is `digest`:
    /// `(seq, stored_ms)`.
    pub fn recent_inbound(&self, digest: u64) -> Result<Option<(u64, u64)>> {
        let key = keys::inbound_recent(digest);
        match self.engine.get(Cf::Inbound, &key)? {
            Some(v) if v.len() == 16 => Ok(Some((
                u64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
                u64::from_be_bytes(v[8..].try_into().expect("8 bytes")),
            ))),
            Some(_) => Err(Error::BadRecord {
                cf: Cf::Inbound.name(),
                key: records::hex(&key),
                message: "a recent-text entry is not 16 bytes".into(),
            }),
            None => Ok(None),
        }
    }

    /// Records what the pipeline made of messages, moves its position to
    /// the last of them, and keeps their sender-and-text digests for the
    /// duplicate window, all in one batch: a message is processed once
    /// even across a crash. `recent` holds `(digest, seq, ms, earlier ms)`,
    /// the earlier entry's time when the digest had one; entries older than
    /// `forget_before_ms` are forgotten.
    ///
    /// `with` holds what the results changed elsewhere (a survey session
    /// moved on by an answer): written in the same batch.
    pub fn finish_inbound(
        &self,
        results: Vec<(u64, InboundResult)>,
        recent: Vec<(u64, u64, u64, Option<u64>)>,
        forget_before_ms: u64,
        with: Batch,
    ) -> Result<Pending<()>> {
        let Some(last) = results.iter().map(|(seq, _)| *seq).max() else {
            return Ok(Pending::ready(()));
        };
        let mut batch = with;
        for (seq, r) in &results {
            batch.put(Cf::Inbound, keys::inbound_result(*seq), encode(r));
        }
        let renewed: BTreeSet<u64> = recent.iter().map(|r| r.0).collect();
        for (digest, seq, ms, earlier) in recent {
            if let Some(e) = earlier {
                batch.delete(Cf::Inbound, keys::inbound_recent_by_time(e, digest));
            }
            batch.put(
                Cf::Inbound,
                keys::inbound_recent(digest),
                [seq.to_be_bytes(), ms.to_be_bytes()].concat(),
            );
            batch.put(
                Cf::Inbound,
                keys::inbound_recent_by_time(ms, digest),
                Vec::new(),
            );
        }
        // Forget what left the window: each by-time entry names the one
        // recent entry it times (a replaced entry's by-time key went when
        // it was replaced).
        let from = keys::inbound_recent_by_time(0, 0);
        let to = keys::inbound_recent_by_time(forget_before_ms, 0);
        let mut forgotten = Vec::new();
        self.engine.scan(Cf::Inbound, &from, &to, &mut |k, _| {
            if let Some((_, digest)) = keys::inbound_recent_by_time_from(k) {
                forgotten.push((k.to_vec(), digest));
            }
            Ok(forgotten.len() < FORGET_PER_CALL)
        })?;
        if !forgotten.is_empty() {
            let end = if forgotten.len() < FORGET_PER_CALL {
                to
            } else {
                let mut after_last = forgotten[forgotten.len() - 1].0.clone();
                after_last.push(0);
                after_last
            };
            // An entry renewed by this batch stays (its old by-time key
            // may still be in the range).
            for (_, digest) in forgotten.iter().filter(|(_, d)| !renewed.contains(d)) {
                batch.delete(Cf::Inbound, keys::inbound_recent(*digest));
            }
            batch.delete_range(Cf::Inbound, from, end);
        }
        let last = last.max(self.inbound_processed()?);
        batch.put(Cf::Inbound, keys::INBOUND_PROCESSED.to_vec(), encode(&last));
        Ok(Pending::new((), self.engine.submit(batch)))
    }

    /// Inbound messages after `after`, oldest first, each with what the
    /// pipeline made of it once it has been processed.
    pub fn inbound_results(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, InboundRecord, Option<InboundResult>)>> {
        let messages = self.inbound(after, limit)?;
        let mut out = Vec::with_capacity(messages.len());
        for (seq, m) in messages {
            let key = keys::inbound_result(seq);
            let result = match self.engine.get(Cf::Inbound, &key)? {
                Some(v) => Some(decode(Cf::Inbound, &key, &v)?),
                None => None,
            };
            out.push((seq, m, result));
        }
        Ok(out)
    }

    /// The newest `limit` inbound messages stored, oldest first, each with
    /// what the pipeline made of it once processed (a dashboard's latest).
    pub fn newest_inbound_results(
        &self,
        limit: usize,
    ) -> Result<Vec<(u64, InboundRecord, Option<InboundResult>)>> {
        // Sequence numbers are dense: the newest are the last `limit`
        // given out.
        let next = *self.next_inbound.lock();
        self.inbound_results(next.saturating_sub(limit as u64 + 1), limit)
    }

    /// Processed inbound messages after `after`, oldest first, with what
    /// the pipeline made of each; stops at the first one not processed.
    pub fn processed_inbound(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, InboundRecord, InboundResult)>> {
        Ok(self
            .inbound_results(after, limit)?
            .into_iter()
            .map_while(|(seq, m, r)| Some((seq, m, r?)))
            .collect())
    }

    /// What was last handed over to `address` on `channel`.
    pub fn last_sent(&self, channel: ChannelId, address: &str) -> Result<Option<SentRef>> {
        let key = keys::last_sent(channel, address);
        self.engine
            .get(Cf::LastSent, &key)?
            .map(|v| decode(Cf::LastSent, &key, &v))
            .transpose()
    }

    /// How far subscriber `name` has taken processed messages; 0: none.
    pub fn subscriber_position(&self, name: &str) -> Result<u64> {
        self.position(&keys::inbound_subscriber(name))
    }

    /// Moves subscriber `name` past message `to`; `undelivered`, when the
    /// subscriber refused them every time, is kept with its reason in the
    /// same batch.
    pub fn advance_subscriber(
        &self,
        name: &str,
        to: u64,
        undelivered: Option<Undelivered>,
    ) -> Result<Pending<()>> {
        let mut batch = Batch::new();
        if let Some(u) = undelivered {
            let first = u.seqs.first().copied().unwrap_or(to);
            batch.put(
                Cf::Inbound,
                keys::inbound_undelivered(name, first),
                encode(&u),
            );
        }
        batch.put(Cf::Inbound, keys::inbound_subscriber(name), encode(&to));
        Ok(Pending::new((), self.engine.submit(batch)))
    }

    /// What subscriber `name` never took, oldest first.
    pub fn undelivered_inbound(&self, name: &str, limit: usize) -> Result<Vec<Undelivered>> {
        let prefix = keys::inbound_undelivered_prefix(name);
        let end = keys::end_of_prefix(&prefix);
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        self.engine.scan(Cf::Inbound, &prefix, &end, &mut |k, v| {
            out.push(decode(Cf::Inbound, k, v)?);
            Ok(out.len() < limit)
        })?;
        Ok(out)
    }
}
