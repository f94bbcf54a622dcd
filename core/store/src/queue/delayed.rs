//! The delayed queue: retries promoted back into their queues when due.

use super::*;

impl Store {
    /// Whether a delayed delivery may be due now (a cheap check before
    /// [`Self::promote_due`], which reads the store).
    pub fn has_due(&self) -> bool {
        let now = self.clock.now_ms();
        let state = self.state.lock();
        state.globals.delayed > 0 && state.next_due.is_some_and(|d| d <= now)
    }

    /// Moves delayed deliveries that are due into the tail of their queues
    /// (unreadable ones to the quarantine). Returns how many moved.
    ///
    /// The store's lock is not held while waiting for earlier commits or
    /// scanning: first the floor for new retries moves past `now` (so none
    /// can land in the range about to be deleted), then a barrier makes
    /// every earlier retry visible, then the range is read and promoted.
    pub fn promote_due(&self) -> Result<usize> {
        let _one = self.promoting.lock();
        let now = self.clock.now_ms();
        let floor = {
            let mut state = self.state.lock();
            match state.next_due {
                Some(due) if due <= now && state.globals.delayed > 0 => {}
                _ => return Ok(0),
            }
            state.retry_floor = state.retry_floor.max(now.saturating_add(1));
            // Retries settled from here on set the hint themselves.
            state.next_due = None;
            state.globals.delayed_floor
        };
        self.engine.barrier()?;
        let lower = keys::delayed_floor(floor);
        let upper = keys::delayed_floor(now.saturating_add(1));
        // Unreadable entries are moved aside as the scan meets them; the
        // rest are promoted.
        let mut due: Vec<(Vec<u8>, DelayedEntry)> = Vec::new();
        self.engine.scan(Cf::Delayed, &lower, &upper, &mut |k, v| {
            let item = decode::<Item>(Cf::Delayed, k, v).map_err(|e| (v.to_vec(), e.to_string()));
            due.push((k.to_vec(), item));
            Ok(due.len() < PROMOTE_LIMIT)
        })?;
        let full = due.len() == PROMOTE_LIMIT;
        let mut later = None;
        if !full {
            self.engine
                .scan(Cf::Delayed, &upper, &keys::delayed_end(), &mut |k, _| {
                    later = keys::delayed_from(k).map(|(d, _, _)| d);
                    Ok(false)
                })?;
        }
        let mut batch = Batch::new();
        let mut touched = Touched {
            globals: true,
            ..Touched::default()
        };
        let mut state = self.state.lock();
        let mut last_due = floor;
        let mut quarantined = 0;
        for (k, item) in &due {
            let parsed = keys::delayed_from(k);
            let item = match (parsed, item) {
                (Some(_), Ok(item)) => item,
                (_, Err((value, reason))) => {
                    state.quarantine(&mut batch, Cf::Delayed, k, value, reason.clone(), now);
                    quarantined += 1;
                    if let Some((d, q, _)) = parsed {
                        last_due = d;
                        let c = state.counters(q.campaign);
                        c.delayed = c.delayed.saturating_sub(1);
                        c.quarantined += 1;
                        touched.campaigns.insert(q.campaign);
                    }
                    continue;
                }
                (None, Ok(_)) => {
                    // Inside the delayed range but not a delayed key: only
                    // its length can be wrong.
                    state.quarantine(&mut batch, Cf::Delayed, k, &[], "malformed key".into(), now);
                    quarantined += 1;
                    continue;
                }
            };
            let Some((d, q, _)) = parsed else { continue };
            last_due = d;
            let qseq = state.push_ready(q, 1);
            batch.put(Cf::Ready, keys::ready(q, qseq), encode(item));
            touched.queues.insert(q);
            touched.campaigns.insert(q.campaign);
            state.counters(q.campaign).delayed -= 1;
        }
        if let Some((last, _)) = due.last() {
            let mut end = last.clone();
            end.push(0);
            batch.delete_range(Cf::Delayed, lower, end);
        }
        state.globals.delayed -= due.len() as u64;
        state.globals.delayed_floor = if full {
            last_due
        } else {
            now.saturating_add(1)
        };
        let found = if full { Some(last_due) } else { later };
        state.next_due = if state.globals.delayed == 0 {
            None
        } else {
            // What the scan found, or what a retry settled meanwhile set;
            // a retry committed before the barrier but due later was found.
            match (found, state.next_due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => Some(a.or(b).unwrap_or(now.saturating_add(1))),
            }
        };
        touched.write(&mut state, &mut batch);
        let ticket = self.engine.submit(batch);
        drop(state);
        ticket.wait()?;
        Ok(due.len() - quarantined)
    }
}

/// A delayed entry as the promotion scan read it: the delivery, or its
/// raw value and why it cannot be read.
type DelayedEntry = std::result::Result<Item, (Vec<u8>, String)>;

/// Most delayed deliveries one [`Store::promote_due`] call moves.
const PROMOTE_LIMIT: usize = 20_000;
