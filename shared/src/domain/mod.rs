//! Types and rules with no I/O.

pub mod card_key;
pub mod channel;
pub mod crypto;
pub mod hold;
pub mod money;
pub mod order;
pub mod product;
pub mod supplier;
pub mod time;
