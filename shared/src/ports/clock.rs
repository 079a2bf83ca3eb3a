//! The clock: what time it is for the rules (order deadlines, webhook tolerance, the
//! sweep). Every use case reads time through `ctx.clock`, never from the system, and
//! hands it to the store, which never reads it itself (docs/ports.md, "Clock").

use crate::domain::time::Timestamp;

pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}
