//! Status records and the receipt index: receipts move deliveries up
//! the status ladder.

use super::*;

/// What [`Store::delivery_page`] reads: the status records (by position)
/// and dead letters of a range of one campaign's deliveries.
#[derive(Debug, Default)]
pub struct DeliveryPage {
    pub statuses: Vec<(u32, StatusRecord)>,
    pub dead: Vec<DeadLetter>,
}

impl Store {
    /// Applies status reports (receipts) to settled deliveries: a status
    /// only ever moves forward ([`DeliveryStatus::advance`]). Returns how
    /// many changed. Reports for deliveries without a status record are
    /// skipped and counted in the second value. Callers apply one batch at
    /// a time and wait for it, so each reads what the last one wrote.
    pub fn update_statuses(
        &self,
        reports: &[(DeliveryId, DeliveryStatus, Option<String>)],
    ) -> Result<Pending<(usize, usize)>> {
        let now = self.clock.now_ms();
        // The records are read before taking the lock: reads never hold up
        // other channels, and receipts are applied by one caller at a time.
        let mut ids: Vec<DeliveryId> = reports.iter().map(|(id, _, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        let keys: Vec<Vec<u8>> = ids.iter().map(|id| keys::delivery(*id)).collect();
        let mut current: HashMap<DeliveryId, Option<StatusRecord>> =
            HashMap::with_capacity(ids.len());
        for ((id, key), value) in ids
            .iter()
            .zip(&keys)
            .zip(self.engine.get_many(Cf::Status, &keys)?)
        {
            let record = value
                .map(|v| decode::<StatusRecord>(Cf::Status, key, &v))
                .transpose()?;
            current.insert(*id, record);
        }
        let mut state = self.state.lock();
        let mut batch = Batch::new();
        let mut touched = Touched::default();
        let mut changed = 0;
        let mut unknown = 0;
        for (id, next, reason) in reports {
            let Some(Some(record)) = current.get_mut(id) else {
                unknown += 1;
                continue;
            };
            let advanced = record.status.advance(*next);
            if advanced != record.status {
                let c = state.counters(id.campaign);
                c.statuses[record.status.code() as usize] -= 1;
                c.statuses[advanced.code() as usize] += 1;
                touched.campaigns.insert(id.campaign);
                record.status = advanced;
                record.updated_ms = now;
                if reason.is_some() {
                    record.reason.clone_from(reason);
                }
                batch.put(Cf::Status, keys::delivery(*id), encode(&*record));
                changed += 1;
            }
        }
        if batch.is_empty() {
            return Ok(Pending::ready((0, unknown)));
        }
        touched.write(&mut state, &mut batch);
        Ok(Pending::new((changed, unknown), self.engine.submit(batch)))
    }

    /// The status record of a delivery that left the queue.
    pub fn status(&self, id: DeliveryId) -> Result<Option<StatusRecord>> {
        let key = keys::delivery(id);
        self.engine
            .get(Cf::Status, &key)?
            .map(|v| decode(Cf::Status, &key, &v))
            .transpose()
    }

    /// Visits the status records of one campaign in delivery order.
    pub fn scan_statuses(
        &self,
        campaign: CampaignId,
        visit: &mut dyn FnMut(DeliveryId, StatusRecord) -> Result<bool>,
    ) -> Result<()> {
        let (lo, hi) = keys::campaign_deliveries(campaign);
        self.engine.scan(Cf::Status, &lo, &hi, &mut |k, v| {
            let id = keys::delivery_from(k).ok_or_else(|| Error::BadRecord {
                cf: "status",
                key: format!("{k:02x?}"),
                message: "malformed key".into(),
            })?;
            visit(id, decode(Cf::Status, k, v)?)
        })
    }

    /// The status records and dead letters of deliveries `[from, from +
    /// max)` of one campaign, in delivery order: what a reader of its
    /// deliveries needs besides the audience. Reads the store.
    pub fn delivery_page(&self, campaign: CampaignId, from: u32, max: u32) -> Result<DeliveryPage> {
        let lo = keys::delivery(DeliveryId::new(campaign, from));
        let hi = match from.checked_add(max) {
            Some(end) => keys::delivery(DeliveryId::new(campaign, end)),
            None => keys::campaign_deliveries(campaign).1,
        };
        let mut statuses = Vec::new();
        self.engine.scan(Cf::Status, &lo, &hi, &mut |k, v| {
            if let Some(id) = keys::delivery_from(k) {
                statuses.push((id.index, decode(Cf::Status, k, v)?));
            }
            Ok(true)
        })?;
        let mut dead = Vec::new();
        self.engine.scan(Cf::Dead, &lo, &hi, &mut |k, v| {
            dead.push(decode(Cf::Dead, k, v)?);
            Ok(true)
        })?;
        Ok(DeliveryPage { statuses, dead })
    }

    /// The delivery a gateway's message id belongs to.
    pub fn by_external_id(
        &self,
        channel: ChannelId,
        external_id: &str,
    ) -> Result<Option<DeliveryId>> {
        Ok(self
            .engine
            .get(Cf::External, &keys::external(channel, external_id))?
            .and_then(|v| keys::delivery_from(&v)))
    }

    /// The deliveries gateway message ids belong to, in their order: one
    /// batched read for a webhook's receipts.
    pub fn by_external_ids(&self, ids: &[(ChannelId, &str)]) -> Result<Vec<Option<DeliveryId>>> {
        let keys: Vec<Vec<u8>> = ids
            .iter()
            .map(|(channel, external)| keys::external(*channel, external))
            .collect();
        Ok(self
            .engine
            .get_many(Cf::External, &keys)?
            .into_iter()
            .map(|v| v.and_then(|v| keys::delivery_from(&v)))
            .collect())
    }

    /// Messages a channel handed over whose status is not final yet
    /// (`wired` or `sent`) and that left the queue at or after
    /// `sent_since_ms`: their gateway ids, for asking a gateway that pushes
    /// no receipts. Walks the channel's receipt index in id order from
    /// after `after`, visiting at most `max_visits` entries; returns what
    /// it found and the id to go on after (`None`: the end was reached).
    pub fn awaiting_status(
        &self,
        channel: ChannelId,
        after: Option<&str>,
        sent_since_ms: u64,
        max_visits: usize,
    ) -> Result<(Vec<String>, Option<String>)> {
        let mut lo = keys::external(channel, after.unwrap_or(""));
        if after.is_some() {
            // Just past `after` itself.
            lo.push(0);
        }
        let hi = match channel.0.checked_add(1) {
            Some(next) => next.to_be_bytes().to_vec(),
            None => keys::external_range().1,
        };
        let mut ids = Vec::new();
        let mut entries = Vec::new();
        let mut last = None;
        let mut visits = 0;
        self.engine.scan(Cf::External, &lo, &hi, &mut |k, v| {
            visits += 1;
            let external = String::from_utf8_lossy(&k[4..]).into_owned();
            if let Some(id) = keys::delivery_from(v) {
                entries.push((id, external.clone()));
            }
            last = Some(external);
            Ok(visits < max_visits)
        })?;
        // The page's status records in one batched read.
        let keys: Vec<Vec<u8>> = entries.iter().map(|(id, _)| keys::delivery(*id)).collect();
        let records = self.engine.get_many(Cf::Status, &keys)?;
        for (((_, external), key), value) in entries.into_iter().zip(&keys).zip(records) {
            let Some(value) = value else { continue };
            let record: StatusRecord = decode(Cf::Status, key, &value)?;
            if matches!(record.status, DeliveryStatus::Wired | DeliveryStatus::Sent)
                && record.sent_ms >= sent_since_ms
            {
                ids.push(external);
            }
        }
        let next = if visits >= max_visits { last } else { None };
        Ok((ids, next))
    }
}
