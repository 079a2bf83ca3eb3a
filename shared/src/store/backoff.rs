//! Backoff before re-sending what DynamoDB left unprocessed (`UnprocessedKeys` of a
//! `BatchGetItem`): it leaves keys when the table or partition is throttled, so an
//! immediate retry only adds to the load that caused it. Exponential with jitter,
//! bounded in delay and in attempts.

use std::time::Duration;

use crate::error::{Error, Result};

/// Re-sends after the first call; then the read gives up as contention.
pub(crate) const UNPROCESSED_RETRIES: u32 = 8;
const BASE_MS: u64 = 25;
const CAP_MS: u64 = 2_000;

/// The longest wait before retry `attempt` (1-based): 25 ms doubling to 2 s at most.
pub(crate) fn ceiling(attempt: u32) -> Duration {
    let doubled = BASE_MS.saturating_mul(1u64 << attempt.saturating_sub(1).min(16));
    Duration::from_millis(doubled.min(CAP_MS))
}

/// The wait before retry `attempt`, from a random number: "equal jitter", half the
/// ceiling plus a random share of the other half, so retries of many callers spread
/// out and none comes back at once.
pub(crate) fn delay(attempt: u32, random: u64) -> Duration {
    let ceiling = u64::try_from(ceiling(attempt).as_millis()).unwrap_or(CAP_MS);
    let half = ceiling / 2;
    Duration::from_millis(half + random % (ceiling - half + 1))
}

/// Waits before retry `attempt` of `what`; past `UNPROCESSED_RETRIES`, contention.
pub(crate) async fn before_retry(attempt: u32, what: &'static str) -> Result<()> {
    if attempt > UNPROCESSED_RETRIES {
        return Err(Error::Contention(what));
    }
    tokio::time::sleep(delay(attempt, rand::random::<u64>())).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unprocessed_keys_back_off_exponentially_with_bounded_jitter() {
        let ceilings: Vec<u64> = (1..=UNPROCESSED_RETRIES)
            .map(|attempt| ceiling(attempt).as_millis() as u64)
            .collect();
        assert_eq!(ceilings, [25, 50, 100, 200, 400, 800, 1600, 2000]);
        assert_eq!(ceiling(64), Duration::from_millis(CAP_MS), "capped");
        for attempt in 1..=UNPROCESSED_RETRIES {
            let top = ceiling(attempt);
            let floor = Duration::from_millis(top.as_millis() as u64 / 2);
            assert!(!floor.is_zero(), "never at once: {attempt}");
            assert_eq!(delay(attempt, 0), floor);
            for random in [1, 7, 12_345, u64::MAX / 3, u64::MAX] {
                let wait = delay(attempt, random);
                assert!(wait >= floor && wait <= top, "{attempt}/{random}: {wait:?}");
            }
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|r| delay(5, r)).collect();
        assert!(spread.len() > 10, "jitter spreads callers");
        let total: Duration = (1..=UNPROCESSED_RETRIES).map(ceiling).sum();
        assert!(total <= Duration::from_secs(6), "bounded: {total:?}");
    }

    #[tokio::test]
    async fn unprocessed_keys_give_up_after_the_last_retry() {
        assert!(before_retry(1, "read").await.is_ok());
        assert!(matches!(
            before_retry(UNPROCESSED_RETRIES + 1, "read").await,
            Err(Error::Contention("read"))
        ));
    }
}
