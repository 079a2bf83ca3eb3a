//! The clock: what time it is for the rules (order deadlines, webhook tolerance, the
//! sweep). Every use case reads time through `ctx.clock`, never from the system.

use crate::domain::time::Timestamp;

pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}
