//! UTC time and sortable ids.

use time::{
    OffsetDateTime, PrimitiveDateTime, format_description::FormatItem, macros::format_description,
};

/// Fixed-width RFC 3339 in UTC with milliseconds, so stored times sort as strings.
const UTC_MILLIS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// A point in time as Unix milliseconds (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        Timestamp((OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64)
    }

    pub fn from_unix_seconds(seconds: i64) -> Self {
        Timestamp(seconds.saturating_mul(1000))
    }

    pub fn unix_seconds(self) -> i64 {
        self.0.div_euclid(1000)
    }

    pub fn plus_seconds(self, seconds: i64) -> Self {
        Timestamp(self.0.saturating_add(seconds.saturating_mul(1000)))
    }

    pub fn to_rfc3339(self) -> String {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .ok()
            .and_then(|t| t.format(UTC_MILLIS).ok())
            .unwrap_or_default()
    }

    /// A time `to_rfc3339` wrote, read back; `None` for any other text.
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        let utc = PrimitiveDateTime::parse(text, UTC_MILLIS)
            .ok()?
            .assume_utc();
        Some(Timestamp((utc.unix_timestamp_nanos() / 1_000_000) as i64))
    }
}

/// A new ULID: unique and sortable by creation time.
pub fn new_id() -> String {
    ulid::Ulid::generate().to_string()
}

/// True for a syntactically valid ULID (26 Crockford base32 characters).
pub fn is_id(candidate: &str) -> bool {
    candidate.len() == 26 && candidate.parse::<ulid::Ulid>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_fixed_width_utc() {
        assert_eq!(Timestamp(0).to_rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Timestamp(1_700_000_000_123).to_rfc3339(),
            "2023-11-14T22:13:20.123Z"
        );
    }

    #[test]
    fn stored_times_read_back() {
        for at in [Timestamp(0), Timestamp(1_700_000_000_123)] {
            assert_eq!(Timestamp::parse_rfc3339(&at.to_rfc3339()), Some(at));
        }
        assert_eq!(Timestamp::parse_rfc3339("2023-11-14T22:13:20Z"), None);
        assert_eq!(Timestamp::parse_rfc3339(""), None);
    }

    #[test]
    fn ids_are_ulids_and_sort_by_time() {
        let first = new_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = new_id();
        assert!(is_id(&first) && is_id(&second));
        assert!(first < second);
        assert!(!is_id("not-an-id"));
    }
}
