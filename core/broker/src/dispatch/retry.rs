//! Retry policy: a backoff list with jitter and a maximum attempt count.

use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Wait before retry 1, 2, …; the last value repeats.
    pub backoff_ms: Vec<u64>,
    /// Each wait varies by up to this share either way (0.2 = ±20 %).
    pub jitter: f64,
    /// Attempts on one channel before a delivery becomes a dead letter.
    pub max_attempts: u16,
}

impl Default for RetryPolicy {
    /// RapidPro's courier retries after 5 then 10 minutes; alerts cannot
    /// wait that long for a first retry, so start at seconds.
    fn default() -> Self {
        Self {
            backoff_ms: vec![5_000, 30_000, 120_000, 600_000],
            jitter: 0.2,
            max_attempts: 5,
        }
    }
}

impl RetryPolicy {
    pub fn validate(&self, path: &str) -> Result<(), String> {
        if self.backoff_ms.is_empty() || self.backoff_ms.contains(&0) {
            return Err(format!(
                "{path}.backoff_ms must list waits > 0 ms (never an immediate retry)"
            ));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(format!("{path}.jitter must be at least 0 and below 1"));
        }
        if self.max_attempts == 0 {
            return Err(format!("{path}.max_attempts must be > 0"));
        }
        Ok(())
    }

    /// The wait before the next attempt, after `attempts` failed ones, or
    /// `None` when they are exhausted. `floor_ms` is what the gateway asked
    /// for (`Retry-After`), honoured as a minimum.
    pub fn next_wait(
        &self,
        attempts: u16,
        floor_ms: Option<u64>,
        rng: &mut impl Rng,
    ) -> Option<u64> {
        if attempts >= self.max_attempts {
            return None;
        }
        let i = usize::from(attempts.max(1) - 1).min(self.backoff_ms.len() - 1);
        let base = self.backoff_ms[i] as f64;
        let spread = if self.jitter > 0.0 {
            rng.random_range(-self.jitter..self.jitter)
        } else {
            0.0
        };
        let wait = (base * (1.0 + spread)).round().max(1.0) as u64;
        Some(wait.max(floor_ms.unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn waits_follow_the_list_with_jitter_and_stop_at_the_maximum() {
        let policy = RetryPolicy {
            backoff_ms: vec![1000, 4000],
            jitter: 0.25,
            max_attempts: 4,
        };
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..100 {
            let w = policy.next_wait(1, None, &mut rng).unwrap();
            assert!((750..=1250).contains(&w), "{w}");
            let w = policy.next_wait(3, None, &mut rng).unwrap();
            assert!((3000..=5000).contains(&w), "{w}");
        }
        assert_eq!(policy.next_wait(4, None, &mut rng), None);
        assert!(
            policy.next_wait(1, Some(60_000), &mut rng).unwrap() >= 60_000,
            "Retry-After is a floor"
        );
    }

    #[test]
    fn an_immediate_retry_is_refused_by_validation() {
        let policy = RetryPolicy {
            backoff_ms: vec![0],
            ..RetryPolicy::default()
        };
        assert!(
            policy
                .validate("channels.sms.retry")
                .unwrap_err()
                .contains("never an immediate retry")
        );
    }
}
