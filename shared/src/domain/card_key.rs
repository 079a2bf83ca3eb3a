//! Card-key import rules: what a key may look like and how import bodies are read.

use serde::{Deserialize, Serialize};
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
    /// Zero-width and other invisible format characters: a buyer could not type or see them.
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

pub enum ImportFormat {
    Json,
    /// `text/plain` or `text/csv`: one key per line.
    Lines,
}

pub fn parse_import(format: ImportFormat, body: &[u8]) -> Result<ImportCandidates> {
    let entries: Vec<String> = match format {
        ImportFormat::Json => parse_json::<JsonImport>(body)?.keys,
        ImportFormat::Lines => std::str::from_utf8(body)
            .map_err(|_| Error::invalid("invalid_encoding", "body must be UTF-8 text"))?
            // Spreadsheet exports start with a byte-order mark; it is not part of a key.
            .trim_start_matches('\u{FEFF}')
            .lines()
            .map(unquote_csv)
            .collect(),
    };
    if entries.len() > MAX_KEYS_PER_IMPORT {
        return Err(Error::invalid(
            "too_many_keys",
            format!("at most {MAX_KEYS_PER_IMPORT} keys per import"),
        ));
    }
    // A text body's final newline is not a key: drop trailing empty lines only.
    let mut entries = entries;
    if matches!(format, ImportFormat::Lines) {
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

/// Trims, then refuses empty, over-long and control-character keys.
pub fn validate_key(raw: &str) -> std::result::Result<CardKeyCode, InvalidReason> {
    let key = raw.trim();
    if key.is_empty() {
        Err(InvalidReason::Empty)
    } else if key.chars().count() > MAX_KEY_CHARS {
        Err(InvalidReason::TooLong)
    } else if key.chars().any(char::is_control) {
        Err(InvalidReason::ControlCharacter)
    } else if key.chars().any(is_invisible) {
        Err(InvalidReason::InvisibleCharacter)
    } else {
        Ok(CardKeyCode::from(key.to_owned()))
    }
}

/// Unicode format characters (category Cf) that appear in pasted or exported keys.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}'
    )
}

/// A CSV line holding one quoted field: `"a""b"` is `a"b`.
fn unquote_csv(line: &str) -> String {
    let trimmed = line.trim();
    match trimmed
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    {
        Some(inner) => inner.replace("\"\"", "\""),
        None => line.to_owned(),
    }
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

    #[test]
    fn text_import_reads_lines_and_csv_quotes() {
        let parsed = parse_import(ImportFormat::Lines, b"K1\r\n\"K\"\"2\"\n\nK3\n\n").unwrap();
        let codes: Vec<_> = parsed
            .valid
            .iter()
            .map(|(_, k)| k.expose().to_owned())
            .collect();
        assert_eq!(codes, vec!["K1", "K\"2", "K3"]);
        assert_eq!(
            parsed.invalid,
            vec![InvalidKey {
                index: 2,
                reason: InvalidReason::Empty
            }]
        );
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
