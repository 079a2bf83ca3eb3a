//! Card-key import rules: what a key may look like and how import bodies are read.
//!
//! A key is compared, sealed and delivered in one canonical form: trimmed and in Unicode
//! NFKC, so full-width and other compatibility forms of a code are the code itself.
//! Default-ignorable code points (zero-width characters, variation selectors, Hangul
//! fillers, ...) are refused rather than removed: a key holding one is not what its
//! supplier's system holds. A product whose codes ignore case compares them case-folded.

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::request::{RequestBody, parse_json};

pub const MAX_KEY_CHARS: usize = 512;
pub const MAX_KEYS_PER_IMPORT: usize = 200_000;

/// A plaintext card key. Its `Debug` never shows the code, so it cannot leak through
/// a `?` in a log line; the buffer is wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct CardKeyCode(Zeroizing<String>);

impl CardKeyCode {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The form duplicates are found by: the key itself, or, for a product whose codes
    /// ignore case, its full case folding (upper then lower case, so `ß` and `SS` meet)
    /// in NFKC again.
    pub fn comparison_form(&self, rules: CardKeyRules) -> CardKeyCode {
        if rules.case_sensitive {
            return self.clone();
        }
        let upper = Zeroizing::new(self.0.to_uppercase());
        let lower = Zeroizing::new(upper.to_lowercase());
        CardKeyCode(Zeroizing::new(lower.nfkc().collect()))
    }
}

/// How a product's card keys compare (`"card_keys"` on `POST /admin/products`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CardKeyRules {
    /// False when the product's codes are redeemed whatever their case: `abc-1` and
    /// `ABC-1` are then one key (the second imported is a duplicate).
    pub case_sensitive: bool,
}

impl Default for CardKeyRules {
    fn default() -> Self {
        CardKeyRules {
            case_sensitive: true,
        }
    }
}

impl From<String> for CardKeyCode {
    fn from(code: String) -> Self {
        CardKeyCode(Zeroizing::new(code))
    }
}

impl std::fmt::Debug for CardKeyCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CardKeyCode(<redacted>)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InvalidReason {
    Empty,
    TooLong,
    ControlCharacter,
    /// A default-ignorable code point (Unicode's `Default_Ignorable_Code_Point`: zero-width
    /// characters, variation selectors, Hangul fillers, ...): a buyer could not see it.
    InvisibleCharacter,
}

/// A rejected entry, named by its position in the request (never by its text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct InvalidKey {
    pub index: usize,
    pub reason: InvalidReason,
}

/// Keys from one import request: valid ones with their position, invalid ones by position.
#[derive(Debug, Default)]
pub struct ImportCandidates {
    pub valid: Vec<(usize, CardKeyCode)>,
    pub invalid: Vec<InvalidKey>,
}

/// An `application/json` import body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonImport {
    /// The card keys, in order; answers name them by their index here.
    pub keys: Vec<String>,
}

impl RequestBody for JsonImport {
    const LIMIT: usize = crate::request::MAX_IMPORT_BODY;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportFormat {
    Json,
    /// `text/plain`: one key per line, the whole line.
    Lines,
    /// `text/csv` (RFC 4180): the first column of each record is the key; a first record
    /// whose first field is `key` or `code` is a header. Keys are indexed by record,
    /// header excluded.
    Csv,
}

pub fn parse_import(format: ImportFormat, body: &[u8]) -> Result<ImportCandidates> {
    let entries: Vec<String> = match format {
        ImportFormat::Json => parse_json::<JsonImport>(body)?.keys,
        ImportFormat::Lines => text(body)?.lines().map(str::to_owned).collect(),
        ImportFormat::Csv => csv_first_column(text(body)?)?,
    };
    if entries.len() > MAX_KEYS_PER_IMPORT {
        return Err(Error::invalid(
            "too_many_keys",
            format!("at most {MAX_KEYS_PER_IMPORT} keys per import"),
        ));
    }
    // A text body's final newline is not a key: drop trailing empty lines only.
    let mut entries = entries;
    if format != ImportFormat::Json {
        while entries.last().is_some_and(|last| last.trim().is_empty()) {
            entries.pop();
        }
    }
    let mut candidates = ImportCandidates::default();
    for (index, raw) in entries.into_iter().enumerate() {
        let raw = Zeroizing::new(raw);
        match validate_key(&raw) {
            Ok(code) => candidates.valid.push((index, code)),
            Err(reason) => candidates.invalid.push(InvalidKey { index, reason }),
        }
    }
    Ok(candidates)
}

/// A text body as UTF-8, without the byte-order mark spreadsheet exports start with.
fn text(body: &[u8]) -> Result<&str> {
    Ok(std::str::from_utf8(body)
        .map_err(|_| Error::invalid("invalid_encoding", "body must be UTF-8 text"))?
        .trim_start_matches('\u{FEFF}'))
}

/// The first field of every CSV record (quotes, doubled quotes, separators and line
/// breaks inside quotes as RFC 4180 has them), without a `key`/`code` header.
fn csv_first_column(text: &str) -> Result<Vec<String>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut keys = Vec::new();
    let mut record = csv::StringRecord::new();
    let mut first = true;
    loop {
        let more = reader.read_record(&mut record).map_err(|err| {
            let line = err.position().map_or(0, csv::Position::line);
            Error::invalid(
                "invalid_csv",
                format!("CSV body unreadable near line {line}"),
            )
        })?;
        if !more {
            break;
        }
        let field = record.get(0).unwrap_or_default();
        let header = first && {
            let name = field.trim();
            name.eq_ignore_ascii_case("key") || name.eq_ignore_ascii_case("code")
        };
        first = false;
        if !header {
            if keys.len() == MAX_KEYS_PER_IMPORT {
                return Err(Error::invalid(
                    "too_many_keys",
                    format!("at most {MAX_KEYS_PER_IMPORT} keys per import"),
                ));
            }
            keys.push(field.to_owned());
        }
    }
    Ok(keys)
}

/// Trims and normalises (NFKC), then refuses empty, over-long, control-character and
/// default-ignorable keys. The key returned is the normalised one: it is what is
/// fingerprinted, sealed and delivered.
pub fn validate_key(raw: &str) -> std::result::Result<CardKeyCode, InvalidReason> {
    // Ignorables are judged on the key as sent: NFKC maps some of them (U+3164, U+FFA0)
    // to others, and none of them should pass silently.
    if raw.trim().chars().any(is_default_ignorable) {
        return Err(InvalidReason::InvisibleCharacter);
    }
    let normalised = Zeroizing::new(raw.trim().nfkc().collect::<String>());
    let key = normalised.trim();
    if key.is_empty() {
        Err(InvalidReason::Empty)
    } else if key.chars().count() > MAX_KEY_CHARS {
        Err(InvalidReason::TooLong)
    } else if key.chars().any(char::is_control) {
        Err(InvalidReason::ControlCharacter)
    } else if key.chars().any(is_default_ignorable) {
        Err(InvalidReason::InvisibleCharacter)
    } else {
        Ok(CardKeyCode::from(key.to_owned()))
    }
}

/// Unicode's `Default_Ignorable_Code_Point` (DerivedCoreProperties.txt, Unicode 16.0;
/// surrogates, also in it, are no `char`): code points a renderer shows as nothing.
pub fn is_default_ignorable(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_import_trims_and_classifies() {
        let body =
            serde_json::json!({"keys": [" AAA-1 ", "", "x".repeat(513), "bad\u{0001}key", "BBB"]});
        let parsed = parse_import(ImportFormat::Json, body.to_string().as_bytes()).unwrap();
        let valid: Vec<_> = parsed
            .valid
            .iter()
            .map(|(i, k)| (*i, k.expose().to_owned()))
            .collect();
        assert_eq!(valid, vec![(0, "AAA-1".to_owned()), (4, "BBB".to_owned())]);
        assert_eq!(
            parsed.invalid,
            vec![
                InvalidKey {
                    index: 1,
                    reason: InvalidReason::Empty
                },
                InvalidKey {
                    index: 2,
                    reason: InvalidReason::TooLong
                },
                InvalidKey {
                    index: 3,
                    reason: InvalidReason::ControlCharacter
                },
            ]
        );
    }

    fn codes(parsed: &ImportCandidates) -> Vec<(usize, String)> {
        parsed
            .valid
            .iter()
            .map(|(i, k)| (*i, k.expose().to_owned()))
            .collect()
    }

    #[test]
    fn text_import_reads_whole_lines() {
        let parsed = parse_import(ImportFormat::Lines, b"K1\r\n\"K\"\"2\"\n\nK3,note\n\n").unwrap();
        assert_eq!(
            codes(&parsed),
            vec![
                (0, "K1".to_owned()),
                (1, "\"K\"\"2\"".to_owned()),
                (3, "K3,note".to_owned())
            ]
        );
        assert_eq!(
            parsed.invalid,
            vec![InvalidKey {
                index: 2,
                reason: InvalidReason::Empty
            }]
        );
    }

    #[test]
    fn csv_import_takes_the_first_column_of_each_record() {
        let body = "\u{FEFF}key,note\r\n\"K\"\"1\",\"first, quoted\"\r\nK2\n\"K3\",\"multi\nline\"\n  ,empty\n\"A,B\",\"C\"\n\n";
        let parsed = parse_import(ImportFormat::Csv, body.as_bytes()).unwrap();
        assert_eq!(
            codes(&parsed),
            vec![
                (0, "K\"1".to_owned()),
                (1, "K2".to_owned()),
                (2, "K3".to_owned()),
                (4, "A,B".to_owned()),
            ],
            "a quoted line with several fields is its first field, not one key"
        );
        assert_eq!(
            parsed.invalid,
            vec![InvalidKey {
                index: 3,
                reason: InvalidReason::Empty
            }]
        );
    }

    #[test]
    fn csv_header_is_only_a_first_record_named_key_or_code() {
        let parsed = parse_import(ImportFormat::Csv, b" Code ;x\nK1\ncode\n").unwrap();
        assert_eq!(
            codes(&parsed),
            vec![
                (0, "Code ;x".to_owned()),
                (1, "K1".to_owned()),
                (2, "code".to_owned())
            ],
            "`Code ;x` is one field (comma separated), so no header"
        );
        let parsed = parse_import(ImportFormat::Csv, b"CODE,batch\nK1,b\nkey\n").unwrap();
        assert_eq!(
            codes(&parsed),
            vec![(0, "K1".to_owned()), (1, "key".to_owned())]
        );
        assert!(
            parse_import(ImportFormat::Csv, b"key\n")
                .unwrap()
                .valid
                .is_empty()
        );
    }

    #[test]
    fn look_alikes_normalise_to_one_key() {
        let canonical = validate_key("ABC-123").unwrap();
        for look_alike in [
            "ＡＢＣ－１２３",   // full-width
            " ABC-123\u{3000}", // ideographic space around it
            "ABC\u{2011}123",   // non-breaking hyphen is not NFKC-equal: stays apart
        ] {
            let key = validate_key(look_alike).unwrap();
            if look_alike.contains('\u{2011}') {
                assert_ne!(key, canonical);
            } else {
                assert_eq!(key, canonical, "{look_alike:?}");
            }
        }
        assert_eq!(validate_key("ﬁ①").unwrap().expose(), "fi1");
        // Case: apart by default, one key when the product ignores case.
        let lower = validate_key("abc-123").unwrap();
        let sensitive = CardKeyRules::default();
        let insensitive = CardKeyRules {
            case_sensitive: false,
        };
        assert_ne!(
            lower.comparison_form(sensitive),
            canonical.comparison_form(sensitive)
        );
        assert_eq!(
            lower.comparison_form(insensitive),
            canonical.comparison_form(insensitive)
        );
        assert_eq!(
            validate_key("STRASSE")
                .unwrap()
                .comparison_form(insensitive),
            validate_key("straße").unwrap().comparison_form(insensitive)
        );
        assert_eq!(
            validate_key("ＡＢＣ")
                .unwrap()
                .comparison_form(insensitive)
                .expose(),
            "abc"
        );
    }

    #[test]
    fn every_default_ignorable_code_point_is_refused() {
        for ignorable in [
            '\u{00AD}',
            '\u{034F}',
            '\u{061C}',
            '\u{115F}',
            '\u{1160}',
            '\u{17B4}',
            '\u{180B}',
            '\u{180E}',
            '\u{180F}',
            '\u{200B}',
            '\u{200D}',
            '\u{202E}',
            '\u{2060}',
            '\u{2065}',
            '\u{206F}',
            '\u{3164}',
            '\u{FE00}',
            '\u{FE0F}',
            '\u{FEFF}',
            '\u{FFA0}',
            '\u{FFF0}',
            '\u{1BCA0}',
            '\u{1D173}',
            '\u{E0001}',
            '\u{E0041}',
            '\u{E0100}',
            '\u{E0FFF}',
        ] {
            for key in [
                format!("ABC{ignorable}123"),
                format!("{ignorable}ABC"),
                format!("ABC{ignorable}"),
            ] {
                assert_eq!(
                    validate_key(&key),
                    Err(InvalidReason::InvisibleCharacter),
                    "U+{:04X}",
                    u32::from(ignorable)
                );
            }
        }
        for visible in [
            'A',
            '-',
            'é',
            '中',
            '\u{0301}',
            '\u{1161}',
            '\u{FFF9}',
            '\u{E1000}',
        ] {
            assert!(
                !is_default_ignorable(visible),
                "U+{:04X}",
                u32::from(visible)
            );
        }
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert!(matches!(
            parse_import(ImportFormat::Json, b"{\"keys\": 5}"),
            Err(Error::InvalidJson { .. })
        ));
        assert!(parse_import(ImportFormat::Lines, &[0xff, 0xfe]).is_err());
    }

    #[test]
    fn invisible_characters_are_refused_and_a_leading_bom_is_dropped() {
        let parsed = parse_import(
            ImportFormat::Lines,
            "\u{FEFF}K1\nK\u{200B}2\n\u{FEFF}K3\n".as_bytes(),
        )
        .unwrap();
        let codes: Vec<_> = parsed
            .valid
            .iter()
            .map(|(_, k)| k.expose().to_owned())
            .collect();
        assert_eq!(codes, vec!["K1"]);
        assert_eq!(
            parsed.invalid,
            vec![
                InvalidKey {
                    index: 1,
                    reason: InvalidReason::InvisibleCharacter
                },
                InvalidKey {
                    index: 2,
                    reason: InvalidReason::InvisibleCharacter
                },
            ]
        );
    }

    #[test]
    fn debug_never_shows_the_code() {
        let code = CardKeyCode::from("SECRET-CODE".to_owned());
        assert!(!format!("{code:?}").contains("SECRET"));
    }
}
