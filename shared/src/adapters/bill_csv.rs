//! What the providers' CSV bill readers share (`alipay_bill`, `wechatpay_bill`): rows of
//! trimmed fields, and columns found by their names in the header row.

use crate::error::Result;

/// The rows of a bill file, each a list of fields made plain by `clean` (trimmed, and
/// rid of a provider's padding); `#` lines skipped when `comments` is set. An error
/// (not CSV) is `bad`'s.
pub fn rows(
    file: &[u8],
    comments: bool,
    clean: impl Fn(&str) -> String,
    bad: impl Fn() -> crate::error::Error,
) -> Result<Vec<Vec<String>>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(comments.then_some(b'#'))
        .from_reader(file)
        .records()
        .map(|row| Ok(row.map_err(|_| bad())?.iter().map(&clean).collect()))
        .collect()
}

/// Where the column `name` is in `header`; a bill without it is `missing(name)`.
pub fn column(
    header: &[String],
    name: &str,
    missing: impl Fn(&str) -> crate::error::Error,
) -> Result<usize> {
    header
        .iter()
        .position(|column| column == name)
        .ok_or_else(|| missing(name))
}
