//! A listing's pages: how many entries (`limit`) and where the next page starts (the
//! cursor as the client holds it: the text of the page key it goes on from, base64url,
//! opaque; each listing reads its own text back and refuses what is not one of its
//! keys).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::{Error, Result};

/// Entries a page holds unless asked otherwise, and at most.
pub(crate) const DEFAULT_LIMIT: i32 = 50;
pub(crate) const MAX_LIMIT: i32 = 100;

pub(crate) fn invalid(field: &str, message: &str) -> Error {
    Error::invalid_field("invalid_query", field, message.to_owned())
}

/// A `limit` parameter: 1 to `MAX_LIMIT`.
pub(crate) fn limit(value: &str) -> Result<i32> {
    value
        .parse()
        .ok()
        .filter(|l| (1..=MAX_LIMIT).contains(l))
        .ok_or_else(|| invalid("limit", "limit must be 1 to 100"))
}

pub(crate) fn encode_cursor(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(text)
}

/// The key `parse` reads from the cursor's text; `400 invalid_query` (`cursor`) for
/// anything else.
pub(crate) fn decode_cursor<T>(cursor: &str, parse: impl FnOnce(&str) -> Option<T>) -> Result<T> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| parse(&text))
        .ok_or_else(|| invalid("cursor", "cursor is not one this listing gave"))
}
