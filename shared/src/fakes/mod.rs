//! Fakes of every port, for fast tests of the rules that use them (no moto, no network):
//! compiled for `shared`'s own tests and for crates that enable the `fakes` feature (the
//! tests crate), never into a Lambda binary.
//!
//! A fake of an outside system can be told what its next calls do ([`Behaviour`]):
//! succeed, fail, time out or answer twice. Each keeps a record of what the outside
//! world saw, for a test to check.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use aws_sdk_dynamodb::config::{Credentials, Region};

use crate::config::{Config, ContextBuilder, sdk_loader};
use crate::error::{Error, Result};

mod clock;
pub mod contracts;
mod notifier;
mod orders;
mod payment;
mod supplier;
mod vault;

pub use clock::{FakeClock, TickingClock};
pub use notifier::FakeNotifier;
pub use orders::{FIXTURE_UNIT_PRICE, order_fixture};
pub use payment::FakePaymentProvider;
pub use supplier::FakeSupplier;
pub use vault::FakeVault;

/// What an outside system does with one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Behaviour {
    /// Acts once and answers.
    #[default]
    Succeed,
    /// Refuses: nothing happens; the call fails with `Error::Upstream`.
    Fail,
    /// Acts, but the answer is lost: the call fails with `Error::Timeout`, and only a
    /// later query shows that it happened.
    TimeOut,
    /// Acts and answers twice (a duplicated request, a repeated notification): what it
    /// did is recorded twice; the caller sees one answer.
    AnswerTwice,
}

/// The behaviours of the next calls, in order; `Succeed` once they are used up.
#[derive(Debug, Default)]
pub struct Script(Mutex<VecDeque<Behaviour>>);

impl Script {
    pub fn then(&self, behaviour: Behaviour) {
        lock(&self.0).push_back(behaviour);
    }

    /// Performs `effect` (what the outside system does) as the next behaviour says.
    /// `Ok` when an answer reaches the caller.
    pub fn perform(&self, system: &'static str, mut effect: impl FnMut()) -> Result<()> {
        let behaviour = lock(&self.0).pop_front().unwrap_or_default();
        match behaviour {
            Behaviour::Succeed => effect(),
            Behaviour::Fail => {
                return Err(Error::Upstream {
                    system,
                    message: "refused (scripted)".into(),
                });
            }
            Behaviour::TimeOut => {
                effect();
                return Err(Error::Timeout { system });
            }
            Behaviour::AnswerTwice => {
                effect();
                effect();
            }
        }
        Ok(())
    }
}

/// A context builder for rules that never reach AWS (give it fake ports): its AWS
/// clients point at a closed loopback port, so a stray call fails instead of leaving
/// the machine.
pub async fn offline_context() -> Result<ContextBuilder> {
    let config = Config::from_lookup(|name| (name == "KAMI_TABLE").then(|| "offline".to_owned()))?;
    let sdk = sdk_loader()
        .endpoint_url("http://127.0.0.1:9")
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("fake", "fake", None, None, "fakes"))
        .load()
        .await;
    Ok(ContextBuilder::new(config, sdk, None))
}

/// A fake's state, whatever a panicking test thread left behind.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_plays_in_order_then_succeeds() {
        let script = Script::default();
        for behaviour in [Behaviour::Fail, Behaviour::TimeOut, Behaviour::AnswerTwice] {
            script.then(behaviour);
        }
        let acted = std::cell::Cell::new(0);
        let call = || script.perform("fake", || acted.set(acted.get() + 1));
        assert!(matches!(call(), Err(Error::Upstream { .. })));
        assert!(matches!(call(), Err(Error::Timeout { system: "fake" })));
        assert!(call().is_ok());
        assert!(call().is_ok());
        // Fail: 0, TimeOut: 1, AnswerTwice: 2, Succeed: 1.
        assert_eq!(acted.get(), 4);
    }
}
