//! Opening a store: reading its state back and recovering from an
//! earlier stop (leases never settled become ready again, counted).

use super::*;

impl Store {
    /// Opens the queues on `engine`, recovering from an earlier stop.
    pub fn open(
        engine: Arc<dyn Engine>,
        clock: Arc<dyn Clock>,
        metrics: StoreMetrics,
    ) -> Result<(Self, Recovery)> {
        Self::open_inner(engine, clock, metrics, true)
    }

    /// Opens the queues to look at them: what a recovery would find is
    /// reported, nothing is written (use it on a read-only engine).
    pub fn open_read_only(
        engine: Arc<dyn Engine>,
        clock: Arc<dyn Clock>,
        metrics: StoreMetrics,
    ) -> Result<(Self, Recovery)> {
        Self::open_inner(engine, clock, metrics, false)
    }

    fn open_inner(
        engine: Arc<dyn Engine>,
        clock: Arc<dyn Clock>,
        metrics: StoreMetrics,
        recover: bool,
    ) -> Result<(Self, Recovery)> {
        let mut state = State {
            channels: HashMap::new(),
            queues: BTreeMap::new(),
            counters: HashMap::new(),
            globals: Globals::default(),
            next_campaign: 1,
            next_due: None,
            retry_floor: 0,
            committed: Arc::new(Mutex::new(Committed::default())),
            quarantined: 0,
            next_quarantine: 1,
        };
        let (lo, hi) = keys::quarantine_range();
        engine.scan(Cf::Meta, &lo, &hi, &mut |k, _| {
            if let Some(seq) = keys::quarantine_from(k) {
                state.quarantined += 1;
                state.next_quarantine = state.next_quarantine.max(seq + 1);
            }
            Ok(true)
        })?;
        let next_inbound = match engine.get(Cf::Inbound, keys::NEXT_INBOUND)? {
            Some(v) => decode(Cf::Inbound, keys::NEXT_INBOUND, &v)?,
            None => 1u64,
        };
        if let Some(v) = engine.get(Cf::Meta, keys::NEXT_CAMPAIGN)? {
            state.next_campaign = decode(Cf::Meta, keys::NEXT_CAMPAIGN, &v)?;
        }
        if let Some(v) = engine.get(Cf::Meta, keys::GLOBALS)? {
            state.globals = decode(Cf::Meta, keys::GLOBALS, &v)?;
        }
        let (lo, hi) = keys::channel_names_range();
        engine.scan(Cf::Meta, &lo, &hi, &mut |k, v| {
            if let Some(name) = keys::channel_name_from(k) {
                state
                    .channels
                    .insert(name.to_owned(), ChannelId(decode(Cf::Meta, k, v)?));
            }
            Ok(true)
        })?;
        let (lo, hi) = keys::counters_range();
        engine.scan(Cf::Meta, &lo, &hi, &mut |k, v| {
            if let Some(c) = keys::counters_from(k) {
                state.counters.insert(c, decode(Cf::Meta, k, v)?);
            }
            Ok(true)
        })?;

        let mut metas = Vec::new();
        let (lo, hi) = keys::queue_meta_range();
        engine.scan(Cf::Meta, &lo, &hi, &mut |k, v| {
            if let Some(q) = keys::queue_meta_from(k) {
                metas.push((q, decode::<QueueMeta>(Cf::Meta, k, v)?));
            }
            Ok(true)
        })?;
        let mut recovery = Recovery {
            queues: metas.len(),
            ..Recovery::default()
        };
        recovery.campaigns = state.counters.len();
        let mut reset = Batch::new();
        for (q, meta) in metas {
            // Whatever is still present below head was leased, never settled.
            let mut requeued = 0u64;
            let mut first = None;
            engine.scan(
                Cf::Ready,
                &keys::ready(q, meta.low),
                &keys::ready(q, meta.head),
                &mut |k, _| {
                    if first.is_none() {
                        first = keys::ready_from(k).map(|(_, s)| s);
                    }
                    requeued += 1;
                    Ok(true)
                },
            )?;
            let head = first.unwrap_or(meta.head);
            let ready = meta.ready + requeued;
            let restored = QueueMeta {
                low: head,
                head,
                tail: meta.tail,
                ready,
                redeliver_below: meta
                    .redeliver_below
                    .max(if requeued > 0 { meta.head } else { 0 }),
            };
            if restored != meta {
                // Persist the rewind so a second crash does not count these
                // deliveries again, and keeps them flagged as redeliveries.
                reset.put(Cf::Meta, keys::queue_meta(q), encode(&restored));
            }
            let lane = state.lane(q.channel, q.lane);
            lane.ready += ready;
            if ready > 0 {
                lane.active.insert(q.campaign);
            }
            lane.queues.insert(
                q.campaign,
                QueueState {
                    meta: restored,
                    leased: BTreeSet::new(),
                },
            );
            recovery.requeued += requeued;
        }
        // The floor comes from the wall clock: after a run with the clock
        // ahead, it would hold every new retry until that date. Every
        // delayed entry is at or above the floor, so bringing it back to
        // now loses nothing.
        let now = clock.now_ms();
        if recover && state.globals.delayed_floor > now {
            tracing::warn!(
                floor_ms = state.globals.delayed_floor,
                now_ms = now,
                "The delayed queue's floor is in the future (the clock went back); it is brought back to now."
            );
            state.globals.delayed_floor = now;
            reset.put(Cf::Meta, keys::GLOBALS.to_vec(), encode(&state.globals));
        }
        if recover && !reset.is_empty() {
            engine.write(reset)?;
        }
        if state.globals.delayed > 0 {
            state.next_due = Some(state.globals.delayed_floor);
        }
        *state.committed.lock() = Committed {
            counters: state.counters.clone(),
            globals: state.globals.clone(),
        };
        if recover {
            metrics.recovered.inc_by(recovery.requeued);
        }
        if recover && recovery.requeued > 0 {
            tracing::warn!(
                deliveries = recovery.requeued,
                "Deliveries leased before the last stop were never settled; they are ready again and will be re-sent."
            );
        }
        let committed = Arc::clone(&state.committed);
        let store = Self {
            engine,
            state: Mutex::new(state),
            leasing: Mutex::new(HashMap::new()),
            promoting: Mutex::new(()),
            next_inbound: Mutex::new(next_inbound),
            committed,
            clock,
            metrics,
        };
        Ok((store, recovery))
    }
}
