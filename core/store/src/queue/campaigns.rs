//! Campaign records, fan-out steps, stored audiences, secrets, and the
//! purge of an ended campaign.

use super::*;

/// Audience pages up to this size are read by key (see [`Store::audience`]).
const POINT_READ_PAGE: u32 = 8;

/// Receipt entries a purge looks up in one batched read.
const PURGE_LOOKUPS: usize = 4096;

impl Store {
    /// Stores a campaign body once and allocates its id.
    pub fn create_campaign(&self, body: Vec<u8>) -> Pending<CampaignId> {
        let mut state = self.state.lock();
        let id = CampaignId(state.next_campaign);
        state.next_campaign += 1;
        let mut batch = Batch::new();
        batch.put(Cf::Campaigns, keys::campaign(id), body);
        batch.put(
            Cf::Meta,
            keys::NEXT_CAMPAIGN.to_vec(),
            encode(&state.next_campaign),
        );
        batch.put(Cf::Meta, keys::counters(id), encode(state.counters(id)));
        Pending::new(id, self.engine.submit(batch))
    }

    /// A 32-byte secret of this store, generated (from the operating
    /// system's random source) and committed the first time it is asked
    /// for; the same bytes afterwards. It keys what the broker must trust
    /// later, such as its compiled-component cache.
    pub fn secret(&self, name: &str) -> Result<[u8; 32]> {
        let key = keys::secret(name);
        let _order = self.state.lock();
        if let Some(v) = self.engine.get(Cf::Meta, &key)? {
            return <[u8; 32]>::try_from(v.as_slice()).map_err(|_| Error::BadRecord {
                cf: Cf::Meta.name(),
                key: format!("secret {name}"),
                message: format!("{} bytes, not 32", v.len()),
            });
        }
        let mut secret = [0u8; 32];
        rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut secret)
            .map_err(|e| Error::Internal(format!("no random source for secret {name}: {e}")))?;
        let mut batch = Batch::new();
        batch.put(Cf::Meta, key, secret.to_vec());
        self.engine.submit(batch).wait()?;
        Ok(secret)
    }

    /// Replaces a campaign's body (its state changed: cancelled, expired…).
    pub fn update_campaign(&self, id: CampaignId, body: Vec<u8>) -> Ticket {
        let _order = self.state.lock();
        let mut batch = Batch::new();
        batch.put(Cf::Campaigns, keys::campaign(id), body);
        self.engine.submit(batch)
    }

    /// [`Self::update_campaign`] for a campaign submitted with an
    /// idempotency key: the key and `answer` (what a repeat of the
    /// submission is answered) in the same commit, so a key never names a
    /// campaign that was not accepted. Purging the campaign forgets them.
    pub fn accept_submission(
        &self,
        id: CampaignId,
        body: Vec<u8>,
        key: &str,
        answer: Vec<u8>,
    ) -> Ticket {
        let _order = self.state.lock();
        let mut batch = Batch::new();
        batch.put(Cf::Campaigns, keys::campaign(id), body);
        batch.put(Cf::Meta, keys::submission(key), answer);
        batch.put(Cf::Meta, keys::submission_of(id), key.as_bytes().to_vec());
        self.engine.submit(batch)
    }

    /// What the submission with idempotency key `key` was answered.
    pub fn submission(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.engine.get(Cf::Meta, &keys::submission(key))
    }

    pub fn campaign(&self, id: CampaignId) -> Result<Option<Vec<u8>>> {
        self.engine.get(Cf::Campaigns, &keys::campaign(id))
    }

    /// Every stored campaign id and body, oldest first.
    pub fn campaigns(&self) -> Result<Vec<(CampaignId, Vec<u8>)>> {
        let mut all = Vec::new();
        let (lo, hi) = keys::campaigns_range();
        self.engine.scan(Cf::Campaigns, &lo, &hi, &mut |k, v| {
            if let Ok(raw) = <[u8; 8]>::try_from(k) {
                all.push((CampaignId(u64::from_be_bytes(raw)), v.to_vec()));
            }
            Ok(true)
        })?;
        Ok(all)
    }

    /// The ids of the newest `limit` stored campaigns, newest first: the
    /// highest ids, read from the top of the key space (a store holding
    /// months of campaigns reads only these).
    pub fn newest_campaigns(&self, limit: usize) -> Result<Vec<CampaignId>> {
        let mut ids = Vec::with_capacity(limit.min(1024));
        if limit == 0 {
            return Ok(ids);
        }
        let (lo, hi) = keys::campaigns_range();
        self.engine.scan_rev(Cf::Campaigns, &lo, &hi, &mut |k, _| {
            if let Ok(raw) = <[u8; 8]>::try_from(k) {
                ids.push(CampaignId(u64::from_be_bytes(raw)));
            }
            Ok(ids.len() < limit)
        })?;
        Ok(ids)
    }

    /// One step of a campaign's fan-out, atomically: deliveries enqueued
    /// into their queues, recipients that cannot be reached on any channel
    /// settled as failed at once, and the campaign's record (its cursor)
    /// replaced. A crash leaves either all of it or none.
    pub fn fan_out(
        &self,
        campaign: CampaignId,
        record: Vec<u8>,
        queues: Vec<(QueueKey, Vec<NewDelivery>)>,
        unreachable: Vec<(u32, String)>,
    ) -> Pending<()> {
        let now = self.clock.now_ms();
        let mut state = self.state.lock();
        let mut batch = Batch::new();
        let mut touched = Touched::default();
        touched.campaigns.insert(campaign);
        for (queue, deliveries) in queues {
            if deliveries.is_empty() {
                continue;
            }
            debug_assert_eq!(queue.campaign, campaign);
            state.add_new(&mut batch, queue, deliveries, now);
            touched.queues.insert(queue);
        }
        for (index, reason) in unreachable {
            let record = StatusRecord {
                status: DeliveryStatus::Failed,
                channel: ChannelId(0),
                attempts: 0,
                updated_ms: now,
                external_id: None,
                reason: Some(reason),
                sent_ms: now,
            };
            batch.put(
                Cf::Status,
                keys::delivery(DeliveryId::new(campaign, index)),
                encode(&record),
            );
            let c = state.counters(campaign);
            c.enqueued += 1;
            c.statuses[DeliveryStatus::Failed.code() as usize] += 1;
        }
        batch.put(Cf::Campaigns, keys::campaign(campaign), record);
        touched.write(&mut state, &mut batch);
        Pending::new((), self.engine.submit(batch))
    }

    /// Stores part of an explicit audience: recipient `first + i` is
    /// `recipients[i]` (opaque bytes the dispatcher encodes).
    pub fn put_audience(
        &self,
        campaign: CampaignId,
        first: u32,
        recipients: Vec<Vec<u8>>,
    ) -> Pending<()> {
        let mut batch = Batch::new();
        for (i, r) in recipients.into_iter().enumerate() {
            batch.put(
                Cf::Audience,
                keys::delivery(DeliveryId::new(campaign, first + i as u32)),
                r,
            );
        }
        let _order = self.state.lock();
        Pending::new((), self.engine.submit(batch))
    }

    /// Up to `max` audience entries of a campaign from `from` on, in order.
    pub fn audience(
        &self,
        campaign: CampaignId,
        from: u32,
        max: u32,
    ) -> Result<Vec<(u32, Vec<u8>)>> {
        // A stored audience is dense, so a small page is its keys: point
        // reads cost less than an iterator (a campaign to one worker, as
        // most lab results and CommunicationRequests are, reads one
        // entry). A gap falls back to the scan, which steps over it.
        if max <= POINT_READ_PAGE
            && let Some(last) = from.checked_add(max)
        {
            let keys: Vec<Vec<u8>> = (from..last)
                .map(|i| keys::delivery(DeliveryId::new(campaign, i)))
                .collect();
            let found = self.engine.get_many(Cf::Audience, &keys)?;
            if found.iter().all(Option::is_some) {
                return Ok((from..).zip(found.into_iter().flatten()).collect());
            }
        }
        let mut out = Vec::with_capacity(max as usize);
        let lower = keys::delivery(DeliveryId::new(campaign, from));
        let (_, upper) = keys::campaign_deliveries(campaign);
        self.engine
            .scan(Cf::Audience, &lower, &upper, &mut |k, v| {
                if let Some(id) = keys::delivery_from(k) {
                    out.push((id.index, v.to_vec()));
                }
                Ok((out.len() as u32) < max)
            })?;
        Ok(out)
    }

    /// Removes everything the store holds for a campaign that has ended:
    /// its record, counters, queue positions, status records, dead letters,
    /// stored audience, receipt index entries and idempotency key. Keyed
    /// by campaign, most of it goes as one range delete per keyspace
    /// (cheap for compaction); the receipt index, keyed by channel and
    /// gateway id, is looked up from the campaign's status records.
    /// Refused while any of its deliveries is still queued.
    /// Returns how many status records, dead letters and receipt entries
    /// went. Reads the store: call it from a blocking thread.
    pub fn purge_campaign(&self, id: CampaignId) -> Result<Purged> {
        let mut purged = self.purge_campaigns(&[id])?;
        Ok(purged.pop().unwrap_or_default())
    }

    /// [`Store::purge_campaign`] for several campaigns at once, in one
    /// commit. All or none: refused, with nothing removed, while any of
    /// them still has a delivery queued. Returns what went, in the order
    /// of `ids`.
    pub fn purge_campaigns(&self, ids: &[CampaignId]) -> Result<Vec<Purged>> {
        for &id in ids {
            if self.counters(id).queued() > 0 || self.campaign_depth(id) != (0, 0) {
                return Err(Error::Invalid(format!(
                    "campaign {id} still has queued deliveries; only an ended campaign is purged"
                )));
            }
        }
        let gone: BTreeSet<CampaignId> = ids.iter().copied().collect();
        let mut purged: HashMap<CampaignId, Purged> = HashMap::new();
        // A status record names the receipt entry its send wrote (channel
        // and gateway id): the entries are looked up from the campaign's
        // own statuses, not found by scanning the whole receipt index,
        // which holds every message sent within the retention.
        let mut named: Vec<(ChannelId, String, DeliveryId)> = Vec::new();
        for &id in &gone {
            let (lo, hi) = keys::campaign_deliveries(id);
            let p = purged.entry(id).or_default();
            self.engine.scan(Cf::Status, &lo, &hi, &mut |k, v| {
                p.statuses += 1;
                // An unreadable record goes with the range all the same and
                // holds up nothing; the entry it may have named stays, and a
                // receipt that finds it finds no status (skipped, unknown).
                if let Ok(StatusRecord {
                    channel,
                    external_id: Some(ext),
                    ..
                }) = decode::<StatusRecord>(Cf::Status, k, v)
                    && let Some(d) = keys::delivery_from(k)
                {
                    named.push((channel, ext, d));
                }
                Ok(true)
            })?;
            self.engine.scan(Cf::Dead, &lo, &hi, &mut |_, _| {
                p.dead += 1;
                Ok(true)
            })?;
        }
        // An entry goes only while it still names that delivery: a gateway
        // that used the same id again since (one that restarted its
        // numbering) has it naming a later message, which keeps it.
        let mut external = Vec::new();
        for chunk in named.chunks(PURGE_LOOKUPS) {
            let ids: Vec<(ChannelId, &str)> =
                chunk.iter().map(|(c, e, _)| (*c, e.as_str())).collect();
            let found = self.by_external_ids(&ids)?;
            for ((channel, ext, delivery), names) in chunk.iter().zip(found) {
                if names == Some(*delivery) {
                    purged.entry(delivery.campaign).or_default().receipts += 1;
                    external.push(keys::external(*channel, ext));
                }
            }
        }
        let mut submitted_as = Vec::new();
        for &id in &gone {
            if let Some(key) = self.engine.get(Cf::Meta, &keys::submission_of(id))? {
                submitted_as.push((id, key));
            }
        }
        let mut state = self.state.lock();
        let mut batch = Batch::new();
        for &id in &gone {
            let (lo, hi) = keys::campaign_deliveries(id);
            for cf in [Cf::Status, Cf::Dead, Cf::Audience] {
                batch.delete_range(cf, lo.clone(), hi.clone());
            }
            batch.delete(Cf::Campaigns, keys::campaign(id));
            batch.delete(Cf::Frozen, keys::campaign(id));
            batch.delete(Cf::Meta, keys::counters(id));
        }
        for k in external {
            batch.delete(Cf::External, k);
        }
        for (id, key) in submitted_as {
            batch.delete(Cf::Meta, keys::submission_of(id));
            if let Ok(key) = std::str::from_utf8(&key) {
                batch.delete(Cf::Meta, keys::submission(key));
            }
        }
        let mut queues = Vec::new();
        for (channel, ch) in &mut state.queues {
            for (code, lane) in ch.lanes.iter_mut().enumerate() {
                for &id in &gone {
                    if lane.queues.remove(&id).is_some() {
                        lane.active.remove(&id);
                        if lane.cursor == Some(id) {
                            lane.cursor = None;
                        }
                        if let Some(l) = Lane::from_code(code as u8) {
                            queues.push(QueueKey {
                                channel: *channel,
                                lane: l,
                                campaign: id,
                            });
                        }
                    }
                }
            }
        }
        for q in queues {
            batch.delete(Cf::Meta, keys::queue_meta(q));
        }
        let dead: u64 = purged.values().map(|p| p.dead).sum();
        for id in &gone {
            state.counters.remove(id);
        }
        state.globals.dead = state.globals.dead.saturating_sub(dead);
        let touched = Touched {
            globals: true,
            ..Touched::default()
        };
        touched.write(&mut state, &mut batch);
        let committed = Arc::clone(&state.committed);
        batch.on_commit(move || {
            let mut view = committed.lock();
            for id in &gone {
                view.counters.remove(id);
            }
        });
        let ticket = self.engine.submit(batch);
        drop(state);
        ticket.wait()?;
        Ok(ids
            .iter()
            .map(|id| purged.get(id).cloned().unwrap_or_default())
            .collect())
    }
}

/// What [`Store::purge_campaign`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub statuses: u64,
    pub dead: u64,
    pub receipts: u64,
}
