//! Redemption links (docs/links.md): a `link` product delivers, per unit, a URL
//! `GET /r/{token}` that, while valid and not opened too often, redirects to the
//! merchant's `target_url` with a signed assertion of what was bought:
//! `kami_order`, `kami_sku`, `kami_exp` (the link's own expiry, unix seconds) and
//! `kami_sig` = lowercase hex HMAC-SHA256(link secret, "{kami_order}.{kami_sku}.{kami_exp}").

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use zeroize::Zeroizing;

use crate::domain::crypto::hmac_sha256_hex;
use crate::error::{Error, Result};

pub const MAX_VALID_HOURS: u32 = 8_760;
pub const MAX_OPENS: u32 = 1_000;
pub const MAX_TARGET_URL_LEN: usize = 2_000;
/// 32 random bytes, base64url without padding.
const TOKEN_LEN: usize = 43;

/// What a `link` product delivers per unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LinkSpec {
    /// Where an opened link redirects (https), with the assertion appended.
    #[schema(example = "https://merchant.example/redeem")]
    pub target_url: String,
    #[schema(minimum = 1, maximum = 8760, example = 72)]
    pub valid_hours: u32,
    #[schema(minimum = 1, maximum = 1000, example = 1)]
    pub max_opens: u32,
}

/// A target URL a product may redirect to: absolute https, no fragment.
pub fn valid_target_url(text: &str) -> bool {
    text.len() <= MAX_TARGET_URL_LEN
        && url::Url::parse(text).is_ok_and(|url| {
            url.scheme() == "https" && url.host_str().is_some() && url.fragment().is_none()
        })
}

/// A fresh link token (256 random bits); wiped on drop, never printed.
pub struct LinkToken(Zeroizing<String>);

impl std::fmt::Debug for LinkToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkToken(<redacted>)")
    }
}

impl LinkToken {
    pub fn generate() -> Self {
        LinkToken(Zeroizing::new(
            URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>()),
        ))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Whether `text` could be a token Kami made (anything else is 404 at once).
pub fn plausible_token(text: &str) -> bool {
    text.len() == TOKEN_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The `kami_sig` of an assertion.
pub fn assertion_signature(secret: &[u8], order_id: &str, sku: &str, exp: i64) -> Result<String> {
    hmac_sha256_hex(secret, format!("{order_id}.{sku}.{exp}").as_bytes())
}

/// `target_url` with the signed assertion appended to its query.
pub fn redirect_location(
    target_url: &str,
    secret: &[u8],
    (order_id, sku, exp): (&str, &str, i64),
) -> Result<String> {
    let mut url = url::Url::parse(target_url)
        .map_err(|_| Error::Corrupt("stored link target is not a URL".into()))?;
    let signature = assertion_signature(secret, order_id, sku, exp)?;
    url.query_pairs_mut()
        .append_pair("kami_order", order_id)
        .append_pair("kami_sku", sku)
        .append_pair("kami_exp", &exp.to_string())
        .append_pair("kami_sig", &signature);
    Ok(url.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_must_be_absolute_https_without_fragment() {
        assert!(valid_target_url("https://merchant.example/redeem"));
        assert!(valid_target_url(
            "https://merchant.example/redeem?campaign=x"
        ));
        for bad in [
            "http://merchant.example/redeem",
            "https://merchant.example/#x",
            "/redeem",
            "javascript:alert(1)",
            "",
        ] {
            assert!(!valid_target_url(bad), "{bad}");
        }
    }

    #[test]
    fn the_assertion_is_the_documented_hmac_appended_to_the_query() {
        let location = redirect_location(
            "https://merchant.example/redeem?campaign=x",
            b"secret",
            ("01J0ORDER", "course-1", 1_800_000_000),
        )
        .unwrap();
        let expected = hmac_sha256_hex(b"secret", b"01J0ORDER.course-1.1800000000").unwrap();
        assert_eq!(
            location,
            format!(
                "https://merchant.example/redeem?campaign=x&kami_order=01J0ORDER&kami_sku=course-1&kami_exp=1800000000&kami_sig={expected}"
            )
        );
        assert_eq!(expected.len(), 64);
        assert!(
            expected
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
    }

    #[test]
    fn tokens_are_long_random_and_checked_for_shape() {
        let a = LinkToken::generate();
        let b = LinkToken::generate();
        assert_ne!(a.expose(), b.expose());
        assert!(plausible_token(a.expose()));
        assert!(!plausible_token(&a.expose()[1..]));
        assert!(!plausible_token(&format!("{}!", &a.expose()[1..])));
        assert!(!format!("{a:?}").contains(a.expose()));
    }
}
