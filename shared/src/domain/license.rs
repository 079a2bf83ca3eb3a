//! License keys Kami generates at delivery (docs/licenses.md): four groups of five
//! characters from an alphabet without look-alikes, the last one a check character.
//!
//! The check: with the 20 characters' values `v1..v20` (their index in `ALPHABET`),
//! `sum(i * v_i) ≡ 0 (mod 31)`, dashes not counted. 31 is prime and every weight is
//! 1..=20, so one wrong character changes the sum by `i * d ≢ 0`, and swapping
//! neighbours `i, i+1` (a dash between them too) changes it by `v_i - v_{i+1} ≢ 0`
//! unless they are equal. 19 random characters carry 19·log2(31) ≈ 94 bits.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

pub const ALPHABET: &[u8; 31] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";
const GROUPS: usize = 4;
const GROUP_LEN: usize = 5;
const CHARS: usize = GROUPS * GROUP_LEN;
const MODULUS: u32 = ALPHABET.len() as u32;

pub const MAX_ACTIVATION_LIMIT: u32 = 1_000;
pub const MAX_VALID_DAYS: u32 = 36_500;

/// What a `license_key` product grants per unit: how many instances may be active at
/// once, and for how long the key is valid from delivery (`None`: no end).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LicenseSpec {
    #[schema(minimum = 1, maximum = 1000, example = 3)]
    pub activation_limit: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 36500, example = 365)]
    pub valid_days: Option<u32>,
}

/// A well-formed license key in its canonical form (upper case, dashes); wiped on drop
/// and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct LicenseKey(Zeroizing<String>);

impl std::fmt::Debug for LicenseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LicenseKey(<redacted>)")
    }
}

impl LicenseKey {
    /// A fresh key: 19 characters from the thread's CSPRNG (uniform over the alphabet by
    /// rejection), then the check character.
    pub fn generate() -> Self {
        let mut values = [0u32; CHARS];
        for value in values.iter_mut().take(CHARS - 1) {
            *value = loop {
                // 248 = 8 * 31: bytes above it would favour the first values.
                let byte = rand::random::<u8>();
                if byte < 248 {
                    break u32::from(byte) % MODULUS;
                }
            };
        }
        values[CHARS - 1] = check_value(&values[..CHARS - 1]);
        LicenseKey(Zeroizing::new(render(&values)))
    }

    /// Reads a key as a buyer may type it (any case, surrounding spaces): a key of the
    /// wrong shape or with characters outside the alphabet is `invalid_license_key`; one
    /// whose check character disagrees is `license_key_typo`.
    pub fn parse(text: &str) -> Result<Self> {
        let malformed = || {
            Error::invalid_field(
                "invalid_license_key",
                "license_key",
                "license_key must be four groups of five characters joined by '-' (XXXXX-XXXXX-XXXXX-XXXXX)",
            )
        };
        let text = text.trim();
        let groups: Vec<&str> = text.split('-').collect();
        if groups.len() != GROUPS || groups.iter().any(|group| group.len() != GROUP_LEN) {
            return Err(malformed());
        }
        let mut values = [0u32; CHARS];
        for (value, byte) in values.iter_mut().zip(groups.concat().bytes()) {
            let upper = byte.to_ascii_uppercase();
            let index = ALPHABET
                .iter()
                .position(|&c| c == upper)
                .ok_or_else(malformed)?;
            *value = index as u32;
        }
        if !weighted_sum(&values).is_multiple_of(MODULUS) {
            return Err(Error::invalid_field(
                "license_key_typo",
                "license_key",
                "license_key is mistyped: its check character does not match; compare it with the key as delivered",
            ));
        }
        Ok(LicenseKey(Zeroizing::new(render(&values))))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

fn weighted_sum(values: &[u32]) -> u32 {
    values
        .iter()
        .zip(1u32..)
        .map(|(value, weight)| value * weight % MODULUS)
        .sum()
}

/// The value that makes the 20-character sum divisible by 31: `-(sum) * 20^-1 (mod 31)`.
fn check_value(first: &[u32]) -> u32 {
    let last_weight = CHARS as u32;
    // 20^-1 mod 31 by Fermat: 20^(31-2).
    let inverse = (0..MODULUS - 2).fold(1u32, |acc, _| acc * last_weight % MODULUS);
    let rest = weighted_sum(first) % MODULUS;
    (MODULUS - rest) % MODULUS * inverse % MODULUS
}

fn render(values: &[u32; CHARS]) -> String {
    let mut out = String::with_capacity(CHARS + GROUPS - 1);
    for (i, value) in values.iter().enumerate() {
        if i > 0 && i % GROUP_LEN == 0 {
            out.push('-');
        }
        out.push(char::from(ALPHABET[*value as usize]));
    }
    out
}

/// Where a key stands, as `POST /licenses/validate` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LicenseStatus {
    Active,
    Expired,
    Voided,
    Refunded,
}

impl LicenseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            LicenseStatus::Active => "active",
            LicenseStatus::Expired => "expired",
            LicenseStatus::Voided => "voided",
            LicenseStatus::Refunded => "refunded",
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        Ok(match text {
            "active" => LicenseStatus::Active,
            "expired" => LicenseStatus::Expired,
            "voided" => LicenseStatus::Voided,
            "refunded" => LicenseStatus::Refunded,
            other => return Err(Error::Corrupt(format!("license status {other:?}"))),
        })
    }
}

pub const MAX_INSTANCE_NAME_LEN: usize = 200;

/// An instance name as a merchant's software sends it: 1 to 200 printable characters.
pub fn validate_instance_name(name: &str) -> Result<()> {
    if name.trim().is_empty()
        || name.chars().count() > MAX_INSTANCE_NAME_LEN
        || name.chars().any(char::is_control)
    {
        return Err(Error::invalid_field(
            "invalid_instance_name",
            "instance_name",
            format!("instance_name must be 1 to {MAX_INSTANCE_NAME_LEN} printable characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(err: Error) -> &'static str {
        match err {
            Error::InvalidRequest { code, .. } => code,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn generated_keys_have_the_documented_shape_and_verify() {
        for _ in 0..200 {
            let key = LicenseKey::generate();
            let text = key.expose();
            assert_eq!(text.len(), 23);
            assert_eq!(text.matches('-').count(), 3);
            assert!(text.bytes().all(|b| b == b'-' || ALPHABET.contains(&b)));
            assert_eq!(LicenseKey::parse(text).unwrap(), key);
            assert_eq!(LicenseKey::parse(&text.to_lowercase()).unwrap(), key);
        }
    }

    #[test]
    fn every_single_wrong_character_and_neighbour_swap_is_a_typo() {
        let mut singles = 0;
        let mut swaps = 0;
        for _ in 0..100 {
            let key = LicenseKey::generate();
            let chars: Vec<u8> = key.expose().bytes().filter(|&b| b != b'-').collect();
            for position in 0..CHARS {
                for &other in ALPHABET.iter().filter(|&&c| c != chars[position]) {
                    let mut typed = chars.clone();
                    typed[position] = other;
                    let text = render_bytes(&typed);
                    assert_eq!(
                        code(LicenseKey::parse(&text).unwrap_err()),
                        "license_key_typo"
                    );
                    singles += 1;
                }
            }
            // Neighbours in the character sequence: positions 4 and 5 sit either side
            // of a dash.
            for position in 0..CHARS - 1 {
                if chars[position] == chars[position + 1] {
                    continue;
                }
                let mut typed = chars.clone();
                typed.swap(position, position + 1);
                let text = render_bytes(&typed);
                assert_eq!(
                    code(LicenseKey::parse(&text).unwrap_err()),
                    "license_key_typo"
                );
                swaps += 1;
            }
        }
        assert_eq!(singles, 100 * CHARS * 30);
        assert!(swaps > 100 * 15, "{swaps} swaps checked");
    }

    fn render_bytes(chars: &[u8]) -> String {
        chars
            .chunks(GROUP_LEN)
            .map(|group| String::from_utf8(group.to_vec()).unwrap())
            .collect::<Vec<_>>()
            .join("-")
    }

    #[test]
    fn malformed_keys_are_told_apart_from_typos() {
        let key = LicenseKey::generate();
        let text = key.expose().to_owned();
        for bad in [
            "",
            "ABCDE-ABCDE-ABCDE",
            &text.replace('-', ""),
            &format!("{text}-ABCDE"),
            &text.replacen(&text[..1], "0", 1),
            &text.replacen(&text[..1], "O", 1),
            &text.replacen(&text[..1], "I", 1),
        ] {
            assert_eq!(
                code(LicenseKey::parse(bad).unwrap_err()),
                "invalid_license_key",
                "{bad}"
            );
        }
        assert_eq!(LicenseKey::parse(&format!("  {text} ")).unwrap(), key);
    }

    #[test]
    fn keys_never_print() {
        let key = LicenseKey::generate();
        assert!(!format!("{key:?}").contains(key.expose()));
    }

    #[test]
    fn instance_names_are_checked() {
        assert!(validate_instance_name("laptop").is_ok());
        for bad in ["", "  ", "a\nb", &"x".repeat(201)] {
            assert_eq!(
                code(validate_instance_name(bad).unwrap_err()),
                "invalid_instance_name"
            );
        }
    }
}
