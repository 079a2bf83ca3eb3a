//! Card-key sealing (AES-256-GCM under a per-batch data key), keyed fingerprints for
//! duplicate detection, and order access tokens. Pure functions: the KMS side lives in
//! `adapters::kms`.

use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::domain::card_key::{CardKeyCode, CardKeyRules};
use crate::error::{Error, Result};

const NONCE_LEN: usize = 12;

/// Secret fields sealed under a data key of their own: the wrapped data key and
/// `nonce || ciphertext` (a channel's secrets, a supplier's, a license key, a link token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSecrets {
    /// Names the data key in its encryption context (one per write).
    pub seal_id: String,
    pub wrapped_key: Vec<u8>,
    pub sealed: Vec<u8>,
}

/// A plaintext 256-bit data key; wiped on drop, never printed.
#[derive(Clone)]
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let array: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::Crypto("data key must be 32 bytes"))?;
        Ok(DataKey(Zeroizing::new(array)))
    }

    fn cipher(&self) -> Result<Aes256Gcm> {
        Aes256Gcm::new_from_slice(self.0.as_slice()).map_err(|_| Error::Crypto("bad data key"))
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

/// Associated data binding a sealed card key to its product and id: a ciphertext moved
/// to another product or key id fails to open.
pub fn card_key_aad(sku: &str, key_id: &str) -> Vec<u8> {
    format!("kami/card-key/v1|{sku}|{key_id}").into_bytes()
}

/// Encrypts with a fresh random nonce; returns `nonce || ciphertext+tag`.
pub fn seal_bytes(key: &DataKey, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
    let nonce = Nonce::generate();
    let ciphertext = key
        .cipher()?
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| Error::Crypto("encryption failed"))?;
    let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    sealed.extend_from_slice(nonce.as_slice());
    sealed.extend_from_slice(&ciphertext);
    Ok(sealed)
}

/// The plaintext of `seal_bytes`, if `key` and `aad` are the ones it was sealed with.
pub fn open_bytes(key: &DataKey, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE_LEN + 16 {
        return Err(Error::Crypto("sealed value is truncated"));
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_from(nonce).map_err(|_| Error::Crypto("bad nonce"))?;
    Ok(Zeroizing::new(
        key.cipher()?
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| Error::Crypto("sealed value failed authentication"))?,
    ))
}

/// Seals a card key (`seal_bytes` of its text).
pub fn seal(key: &DataKey, aad: &[u8], code: &CardKeyCode) -> Result<Vec<u8>> {
    seal_bytes(key, aad, code.expose().as_bytes())
}

pub fn open(key: &DataKey, aad: &[u8], sealed: &[u8]) -> Result<CardKeyCode> {
    let plaintext = open_bytes(key, aad, sealed)
        .map_err(|_| Error::Crypto("card key failed authentication"))?;
    let code =
        std::str::from_utf8(&plaintext).map_err(|_| Error::Crypto("card key is not UTF-8"))?;
    Ok(CardKeyCode::from(code.to_owned()))
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Result<[u8; 32]> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(|_| Error::Crypto("bad HMAC key"))?;
    for part in parts {
        mac.update(part);
    }
    Ok(mac.finalize().into_bytes().into())
}

/// Keyed fingerprint of a card key: finds duplicates without a plaintext index, and
/// without letting someone with the table alone test guesses. `code` is a validated
/// (trimmed, NFKC) key; a product whose codes ignore case fingerprints its case folding,
/// so `abc` and `ABC` meet. A case-sensitive key is fingerprinted as before
/// normalisation existed: ASCII keys already imported keep their fingerprints.
pub fn fingerprint(
    fingerprint_key: &[u8],
    code: &CardKeyCode,
    rules: CardKeyRules,
) -> Result<String> {
    let compared = code.comparison_form(rules);
    Ok(hex::encode(hmac_sha256(
        fingerprint_key,
        &[b"kami/fingerprint/v1|", compared.expose().as_bytes()],
    )?))
}

/// The buyer's bearer token for one order: derived, so a retried `POST /orders` can
/// return the same token while only its hash is stored.
pub fn order_access_token(token_key: &[u8], order_id: &str) -> Result<String> {
    Ok(URL_SAFE_NO_PAD.encode(hmac_sha256(
        token_key,
        &[b"kami/order-token/v1|", order_id.as_bytes()],
    )?))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Compares a presented token with a stored hash in constant time.
pub fn token_matches(presented: &str, stored_hash: &str) -> bool {
    sha256_hex(presented.as_bytes())
        .as_bytes()
        .ct_eq(stored_hash.as_bytes())
        .into()
}

/// Constant-time equality of two secrets of possibly different length.
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    // Hash first so the comparison time does not depend on the length either.
    Sha256::digest(a).ct_eq(&Sha256::digest(b)).into()
}

pub fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> Result<String> {
    Ok(hex::encode(hmac_sha256(key, &[message])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> DataKey {
        DataKey::from_slice(&[byte; 32]).unwrap()
    }

    #[test]
    fn seal_open_round_trip_with_fresh_nonces() {
        let code = CardKeyCode::from("ABCD-1234".to_owned());
        let aad = card_key_aad("sku", "K1");
        let a = seal(&key(1), &aad, &code).unwrap();
        let b = seal(&key(1), &aad, &code).unwrap();
        assert_ne!(a, b, "nonces must differ");
        assert!(!a.windows(9).any(|w| w == b"ABCD-1234"));
        assert_eq!(open(&key(1), &aad, &a).unwrap().expose(), "ABCD-1234");
    }

    #[test]
    fn open_refuses_other_product_other_id_other_key_or_tampering() {
        let code = CardKeyCode::from("ABCD".to_owned());
        let sealed = seal(&key(1), &card_key_aad("sku", "K1"), &code).unwrap();
        assert!(open(&key(1), &card_key_aad("other", "K1"), &sealed).is_err());
        assert!(open(&key(1), &card_key_aad("sku", "K2"), &sealed).is_err());
        assert!(open(&key(2), &card_key_aad("sku", "K1"), &sealed).is_err());
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(open(&key(1), &card_key_aad("sku", "K1"), &tampered).is_err());
        assert!(open(&key(1), &card_key_aad("sku", "K1"), &sealed[..20]).is_err());
    }

    #[test]
    fn fingerprints_are_keyed_and_stable() {
        let code = CardKeyCode::from("ABCD".to_owned());
        let rules = CardKeyRules::default();
        let a = fingerprint(b"k1", &code, rules).unwrap();
        assert_eq!(a, fingerprint(b"k1", &code, rules).unwrap());
        assert_ne!(a, fingerprint(b"k2", &code, rules).unwrap());
        assert_ne!(a, sha256_hex(b"ABCD"));
    }

    #[test]
    fn look_alike_keys_have_one_fingerprint() {
        use crate::domain::card_key::validate_key;
        let sensitive = CardKeyRules::default();
        let insensitive = CardKeyRules {
            case_sensitive: false,
        };
        let fp = |raw: &str, rules| fingerprint(b"k", &validate_key(raw).unwrap(), rules).unwrap();
        assert_eq!(fp("GIFT-42", sensitive), fp("ＧＩＦＴ－４２", sensitive));
        assert_eq!(fp("GIFT-42", sensitive), fp(" GIFT-42\u{3000}", sensitive));
        assert_ne!(fp("GIFT-42", sensitive), fp("gift-42", sensitive));
        assert_eq!(fp("GIFT-42", insensitive), fp("gift-42", insensitive));
        assert_eq!(
            fp("GIFT-42", insensitive),
            fp("ｇｉｆｔ－４２", insensitive)
        );
        // Keys imported before normalisation (ASCII, case-sensitive) keep their print.
        assert_eq!(
            fp("GIFT-42", sensitive),
            hmac_sha256_hex(b"k", b"kami/fingerprint/v1|GIFT-42").unwrap()
        );
    }

    #[test]
    fn order_tokens_verify_against_their_hash_only() {
        let token = order_access_token(b"secret", "01ORDER").unwrap();
        assert_eq!(token, order_access_token(b"secret", "01ORDER").unwrap());
        let stored = sha256_hex(token.as_bytes());
        assert!(token_matches(&token, &stored));
        assert!(!token_matches("guess", &stored));
        assert_ne!(token, order_access_token(b"secret", "01OTHER").unwrap());
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(secrets_equal(b"abc", b"abc"));
        assert!(!secrets_equal(b"abc", b"abd"));
        assert!(!secrets_equal(b"abc", b"abcd"));
    }
}
