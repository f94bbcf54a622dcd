//! Records that could not be read, moved aside and listed.

use super::*;

impl Store {
    /// Records moved to the quarantine since the store was created.
    pub fn quarantined_count(&self) -> u64 {
        self.state.lock().quarantined
    }

    /// Quarantined records, oldest first, after number `after`.
    pub fn quarantined(&self, after: u64, limit: usize) -> Result<Vec<(u64, Quarantined)>> {
        let (_, hi) = keys::quarantine_range();
        let mut out = Vec::new();
        self.engine.scan(
            Cf::Meta,
            &keys::quarantine(after.saturating_add(1)),
            &hi,
            &mut |k, v| {
                if let Some(seq) = keys::quarantine_from(k) {
                    out.push((seq, decode(Cf::Meta, k, v)?));
                }
                Ok(out.len() < limit)
            },
        )?;
        Ok(out)
    }

    /// Moves an unreadable campaign record to the quarantine (its queued
    /// deliveries then settle as dead letters: nothing says what to send).
    pub fn quarantine_campaign(&self, id: CampaignId, value: &[u8], reason: String) -> Ticket {
        let now = self.clock.now_ms();
        let mut state = self.state.lock();
        let mut batch = Batch::new();
        state.quarantine(
            &mut batch,
            Cf::Campaigns,
            &keys::campaign(id),
            value,
            reason,
            now,
        );
        self.engine.submit(batch)
    }
}
