//! Types and rules with no I/O.

pub mod bundle;
pub mod card_key;
pub mod channel;
pub mod crypto;
pub mod distributor;
pub mod entitlement;
pub mod hold;
pub mod license;
pub mod link;
pub mod money;
pub mod notification;
pub mod order;
pub mod product;
pub mod supplier;
pub mod time;

/// An id an operator chooses that appears in URLs and keys (a channel's, a supplier's):
/// 1 to `max_len` characters of `a-z 0-9 _ -`.
pub fn is_slug(id: &str, max_len: usize) -> bool {
    !id.is_empty()
        && id.len() <= max_len
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}
