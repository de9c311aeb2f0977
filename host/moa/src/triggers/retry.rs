//! The retry policy every trigger shares (event triggers today; the job trigger and the outbox
//! relay next): exponential backoff (backon), waiting for a free instance slot, and dead-letter headers.

use backon::{BackoffBuilder, ExponentialBuilder};
use std::time::Duration;

/// Longest wait between two retries of one message.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How a failing delivery is retried before it is dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Wait before the first retry; doubled for each further retry, up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    pub fn new(max_attempts: u32, first_backoff: Duration) -> Self {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            first_backoff,
            max_backoff: MAX_BACKOFF,
        }
    }

    /// The waits between attempts, in order (no jitter: one key's retries stay in order).
    pub fn backoffs(&self) -> impl Iterator<Item = Duration> + use<> {
        exponential(self.first_backoff, self.max_backoff)
    }

    /// The wait after failed attempt `attempt` (1 = the first).
    pub fn backoff_after(&self, attempt: u32) -> Duration {
        self.backoffs()
            .nth(attempt.saturating_sub(1) as usize)
            .unwrap_or(self.max_backoff)
    }
}

/// Waits for a free instance slot: 20 ms doubling to 1 s. Such waits are not attempts.
pub fn slot_waits() -> impl Iterator<Item = Duration> {
    exponential(Duration::from_millis(20), Duration::from_secs(1))
}

/// Waits after a failure on a transient condition: 50 ms doubling to 2 s. Such waits are not
/// attempts (within the trigger's transient window).
pub fn transient_waits() -> impl Iterator<Item = Duration> {
    exponential(Duration::from_millis(50), Duration::from_secs(2))
}

fn exponential(first: Duration, max: Duration) -> impl Iterator<Item = Duration> + use<> {
    ExponentialBuilder::new()
        .with_min_delay(first)
        .with_max_delay(max)
        .with_factor(2.0)
        .without_max_times()
        .build()
}

/// What a dead-lettered message carries besides its own headers.
pub struct DeadLetterFacts<'a> {
    pub error: &'a str,
    pub original_topic: &'a str,
    pub original_partition: u32,
    pub original_offset: u64,
    pub original_id: &'a str,
    pub attempts: u32,
    pub component: &'a str,
    pub group: &'a str,
}

impl DeadLetterFacts<'_> {
    /// The `moa-*` headers that say where the message came from and why it failed.
    pub fn headers(&self) -> Vec<(String, Vec<u8>)> {
        [
            ("moa-error", self.error.to_string()),
            ("moa-original-topic", self.original_topic.to_string()),
            (
                "moa-original-partition",
                self.original_partition.to_string(),
            ),
            ("moa-original-offset", self.original_offset.to_string()),
            ("moa-original-id", self.original_id.to_string()),
            ("moa-attempts", self.attempts.to_string()),
            ("moa-component", self.component.to_string()),
            ("moa-group", self.group.to_string()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value.into_bytes()))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_first_wait_up_to_the_cap() {
        let policy = RetryPolicy::new(10, Duration::from_millis(500));
        let waits: Vec<u64> = policy
            .backoffs()
            .take(8)
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(policy.backoff_after(1), Duration::from_millis(500));
        assert_eq!(policy.backoff_after(3), Duration::from_millis(2000));
        assert_eq!(RetryPolicy::new(0, Duration::ZERO).max_attempts, 1);
    }

    #[test]
    fn slot_waits_stay_short() {
        // backon multiplies in f32: 20 ms doubled may come out a microsecond short.
        let waits: Vec<u64> = slot_waits()
            .take(8)
            .map(|d| (d.as_micros() as u64).div_ceil(1000))
            .collect();
        assert_eq!(waits, [20, 40, 80, 160, 320, 640, 1000, 1000]);
    }
}
