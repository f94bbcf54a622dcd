//! Time as the dispatcher sees it: tokio's clock, so tests can pause and
//! advance it, anchored to the wall clock for the timestamps it stores.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::store::Clock;

/// Wall-clock milliseconds that advance with tokio's (pausable) clock.
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    start: Instant,
    start_ms: u64,
}

impl TokioClock {
    /// Must be created inside a tokio runtime.
    pub fn new() -> Self {
        let start_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self {
            start: Instant::now(),
            start_ms,
        }
    }

    /// Anchored at a given wall-clock time (deterministic tests).
    pub fn at(start_ms: u64) -> Self {
        Self {
            start: Instant::now(),
            start_ms,
        }
    }

    pub fn elapsed_nanos(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        self.start_ms
            .saturating_add(self.start.elapsed().as_millis() as u64)
    }
}

/// governor reads the same clock, so rate limits follow paused time too.
impl governor::clock::Clock for TokioClock {
    type Instant = governor::nanos::Nanos;

    fn now(&self) -> Self::Instant {
        governor::nanos::Nanos::from(self.start.elapsed())
    }
}
