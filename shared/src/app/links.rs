//! Opening a redemption link (`GET /r/{token}`, checkout): while it is valid and has
//! opens left, a redirect to the product's target with the signed assertion
//! (`domain::link`); afterwards 410 `link_expired` / `link_used`; any token Kami did not
//! make, 404 `link_not_found`. docs/links.md.

use crate::app::catalog::link_secret_aad;
use crate::app::sealed;
use crate::config::Context;
use crate::domain::crypto::sha256_hex;
use crate::domain::link::{plausible_token, redirect_location};
use crate::error::{Error, Result};
use crate::ports::vault::EncryptionContext;
use crate::store::LinkOpen;

/// Counts one open of the link and answers where it redirects.
pub async fn open(ctx: &Context, token: &str) -> Result<String> {
    if !plausible_token(token) {
        return Err(Error::NotFound("link"));
    }
    let now = ctx.clock.now();
    let link = match ctx
        .store
        .open_link(&sha256_hex(token.as_bytes()), now)
        .await?
    {
        LinkOpen::Opened(link) => link,
        LinkOpen::Expired => return Err(Error::Gone("link_expired")),
        LinkOpen::Used => return Err(Error::Gone("link_used")),
        LinkOpen::Unknown => return Err(Error::NotFound("link")),
    };
    let product = ctx
        .store
        .get_product(&link.sku, false)
        .await?
        .ok_or_else(|| Error::Corrupt("a link's product is gone".into()))?;
    let sealed_secret = product
        .link_secret
        .ok_or_else(|| Error::Corrupt("a link product without its secret".into()))?;
    let secret = sealed::open(
        ctx,
        &EncryptionContext::link_secret(&link.sku, &sealed_secret.seal_id),
        &link_secret_aad(&link.sku),
        &sealed_secret,
    )
    .await?;
    tracing::info!(order_id = %link.order_id, opens = link.opens, "link opened");
    redirect_location(
        &link.target_url,
        &secret,
        (&link.order_id, &link.sku, link.expires_at.unix_seconds()),
    )
}
