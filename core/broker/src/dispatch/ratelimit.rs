//! A channel's send rate: a GCRA limit (governor) counted in messages or
//! SMS segments, cut when the gateway throttles and recovered gradually.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::clock::TokioClock;

type Gcra = RateLimiter<
    NotKeyed,
    InMemoryState,
    TokioClock,
    governor::middleware::NoOpMiddleware<governor::nanos::Nanos>,
>;

/// Cut to this share of the rate on throttling.
const CUT: f64 = 0.5;
/// Recover by this share of the configured rate per second without
/// throttling.
const RECOVER_PER_S: f64 = 0.1;
/// Never slower than this (per second) after cuts.
const FLOOR: f64 = 1.0;
/// A gateway that asks for a pause again within this long of the last one
/// is being sent too fast: the rate is cut as well.
const REPEAT_PAUSE_NS: u64 = 10_000_000_000;

pub struct ChannelRate {
    clock: TokioClock,
    configured: Option<f64>,
    burst: u32,
    current: Option<f64>,
    gcra: Option<Gcra>,
    throttled_at_ns: Option<u64>,
    last_adjust_ns: u64,
    /// When the gateway last named a pause (`Retry-After`).
    paused_at_ns: Option<u64>,
}

impl ChannelRate {
    /// `per_second`: 0 for no limit. `burst`: how many may go at once.
    pub fn new(clock: TokioClock, per_second: f64, burst: u32) -> Self {
        let configured = (per_second > 0.0).then_some(per_second);
        let mut rate = Self {
            clock,
            configured,
            burst: burst.max(1),
            current: configured,
            gcra: None,
            throttled_at_ns: None,
            last_adjust_ns: 0,
            paused_at_ns: None,
        };
        rate.rebuild();
        rate
    }

    pub fn current(&self) -> Option<f64> {
        self.current
    }

    fn rebuild(&mut self) {
        self.gcra = self.current.map(|per_second| {
            let period = Duration::from_secs_f64(1.0 / per_second.max(FLOOR / 10.0));
            let quota = Quota::with_period(period)
                .expect("a positive period")
                .allow_burst(NonZeroU32::new(self.burst).expect("burst >= 1"));
            RateLimiter::direct_with_clock(quota, self.clock)
        });
    }

    /// How long to wait before `cost` units may go (zero: go now, and they
    /// are taken). Costs above the burst are taken one unit at a time by
    /// the caller.
    pub fn reserve(&mut self, cost: u32) -> Duration {
        self.recover();
        let Some(gcra) = &self.gcra else {
            return Duration::ZERO;
        };
        let n = NonZeroU32::new(cost.clamp(1, self.burst)).expect("cost >= 1");
        match gcra.check_n(n) {
            Ok(Ok(())) => Duration::ZERO,
            Ok(Err(not_until)) => {
                let now = governor::clock::Clock::now(&self.clock);
                not_until
                    .wait_time_from(now)
                    .max(Duration::from_micros(100))
            }
            // Cannot happen: the cost is clamped to the burst.
            Err(_) => Duration::from_millis(1),
        }
    }

    /// The gateway named a pause (a 429 with `Retry-After`): the channel
    /// waits exactly that long, so the first time nothing else changes —
    /// every lane, the emergency lane included, resumes at the full rate
    /// when the gateway said it may. A second pause within 10 s of the
    /// last means the channel sends too fast for it: the rate is cut too.
    /// Returns whether it was.
    pub fn gateway_paused(&mut self, measured_per_s: f64) -> bool {
        let now = self.clock.elapsed_nanos();
        let again = self
            .paused_at_ns
            .is_some_and(|t| now.saturating_sub(t) < REPEAT_PAUSE_NS);
        self.paused_at_ns = Some(now);
        if again {
            self.throttled(measured_per_s);
        }
        again
    }

    /// The gateway throttled: slow down. `measured_per_s` is what went out
    /// lately, used when the channel has no configured limit.
    pub fn throttled(&mut self, measured_per_s: f64) {
        let base = self.current.unwrap_or(measured_per_s.max(FLOOR));
        self.current = Some((base * CUT).max(FLOOR));
        let now = self.clock.elapsed_nanos();
        self.throttled_at_ns = Some(now);
        self.last_adjust_ns = now;
        self.rebuild();
    }

    fn recover(&mut self) {
        let Some(current) = self.current else { return };
        let now = self.clock.elapsed_nanos();
        let since = now.saturating_sub(self.last_adjust_ns);
        if since < 1_000_000_000 || self.throttled_at_ns.is_none() {
            return;
        }
        let target = self.configured.unwrap_or(f64::INFINITY);
        if current >= target {
            return;
        }
        let step = self.configured.unwrap_or(current) * RECOVER_PER_S * (since as f64 / 1e9);
        let next = current + step;
        self.current = if next >= target {
            self.configured
        } else {
            Some(next)
        };
        self.last_adjust_ns = now;
        self.rebuild();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_limited_channel_goes_at_its_rate_with_its_burst() {
        let clock = TokioClock::new();
        let mut rate = ChannelRate::new(clock, 100.0, 5);
        let started = tokio::time::Instant::now();
        let mut sent = 0;
        while started.elapsed() < Duration::from_secs(10) {
            let wait = rate.reserve(1);
            if wait.is_zero() {
                sent += 1;
            } else {
                tokio::time::sleep(wait).await;
            }
        }
        // 5 at once, then 100 per second.
        assert!((1000..=1006).contains(&sent), "{sent}");
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_cuts_the_rate_and_it_recovers_gradually() {
        let clock = TokioClock::new();
        let mut rate = ChannelRate::new(clock, 100.0, 1);
        rate.throttled(0.0);
        assert_eq!(rate.current(), Some(50.0));
        rate.throttled(0.0);
        assert_eq!(rate.current(), Some(25.0));
        tokio::time::advance(Duration::from_secs(2)).await;
        rate.reserve(1);
        let after_2s = rate.current().unwrap();
        assert!((44.0..=46.0).contains(&after_2s), "{after_2s}");
        tokio::time::advance(Duration::from_secs(10)).await;
        rate.reserve(1);
        assert_eq!(
            rate.current(),
            Some(100.0),
            "back to the configured rate, not above"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_named_pause_keeps_the_rate_and_a_repeated_one_cuts_it() {
        let mut rate = ChannelRate::new(TokioClock::new(), 100.0, 5);
        assert!(!rate.gateway_paused(100.0));
        assert_eq!(rate.current(), Some(100.0), "the gateway's pause is enough");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!rate.gateway_paused(100.0));
        assert_eq!(rate.current(), Some(100.0), "long after: still enough");
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(rate.gateway_paused(100.0));
        assert_eq!(rate.current(), Some(50.0), "asked again soon: too fast");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unlimited_channel_gets_a_limit_from_what_it_was_sending() {
        let mut rate = ChannelRate::new(TokioClock::new(), 0.0, 10);
        assert!(rate.reserve(1_000).is_zero());
        rate.throttled(800.0);
        assert_eq!(rate.current(), Some(400.0));
    }
}
