use std::sync::atomic::{AtomicI64, Ordering};

use crate::domain::time::Timestamp;
use crate::ports::Clock;

/// A clock that stands still until a test moves it.
#[derive(Debug)]
pub struct FakeClock(AtomicI64);

impl FakeClock {
    /// 2027-01-15T08:00:00Z, a time no test depends on.
    pub const DEFAULT: Timestamp = Timestamp(1_800_000_000_000);

    pub fn at(time: Timestamp) -> Self {
        FakeClock(AtomicI64::new(time.0))
    }

    pub fn set(&self, time: Timestamp) {
        self.0.store(time.0, Ordering::SeqCst);
    }

    pub fn advance_seconds(&self, seconds: i64) {
        self.0
            .fetch_add(seconds.saturating_mul(1000), Ordering::SeqCst);
    }
}

impl Default for FakeClock {
    fn default() -> Self {
        FakeClock::at(Self::DEFAULT)
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

/// A clock that moves `step_ms` forward each time it is read: a `Budget` on it runs out
/// after a known number of checks, however fast or slow the machine is.
#[derive(Debug)]
pub struct TickingClock {
    now: AtomicI64,
    step_ms: i64,
}

impl TickingClock {
    pub fn at(time: Timestamp, step_ms: i64) -> Self {
        TickingClock {
            now: AtomicI64::new(time.0),
            step_ms,
        }
    }
}

impl Clock for TickingClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.now.fetch_add(self.step_ms, Ordering::SeqCst))
    }
}
