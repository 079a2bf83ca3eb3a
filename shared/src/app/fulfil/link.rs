//! Redemption links, generated at delivery (docs/links.md). Each unit of an order is a
//! fresh token written into its delivery slot (sealed) together with its link item,
//! found by the token's SHA-256 when the buyer opens `GET /r/{token}`; one transaction
//! per link conditional on the slot and the order (`fill_slots`), as license keys.

use super::{Fulfiller, Fulfilment, fill_slots};
use crate::app::delivery::Budget;
use crate::app::orders::Delivered;
use crate::app::sealed;
use crate::config::Context;
use crate::domain::crypto::sha256_hex;
use crate::domain::link::LinkToken;
use crate::domain::product::DeliveryType;
use crate::error::{Error, Result};
use crate::ports::vault::EncryptionContext;
use crate::store::{DeliveryRecord, OrderRecord};

pub struct Links;

/// Associated data binding a sealed token to its order and slot.
fn link_aad(order_id: &str, slot: u32) -> Vec<u8> {
    format!("kami/link-token/v1|{order_id}|{slot}").into_bytes()
}

impl Fulfiller for Links {
    async fn fulfil(
        &self,
        ctx: &Context,
        order: &OrderRecord,
        done: &[DeliveryRecord],
        budget: &Budget,
    ) -> Result<Fulfilment> {
        let spec = order
            .link
            .as_ref()
            .ok_or_else(|| Error::Corrupt("link order without its spec".into()))?;
        let filled: Vec<u32> = done
            .iter()
            .filter_map(DeliveryRecord::link)
            .map(|slot| slot.slot)
            .collect();
        fill_slots(order, &filled, budget, "the next link", |slot| async move {
            let token = LinkToken::generate();
            let sealed = sealed::seal(
                ctx,
                |link_id| EncryptionContext::link(&order.order_id, link_id),
                &link_aad(&order.order_id, slot),
                token.expose().as_bytes(),
            )
            .await?;
            let hash = sha256_hex(token.expose().as_bytes());
            ctx.store
                .deliver_link(order, slot, (&hash, &sealed), spec, ctx.clock.now())
                .await
        })
        .await
    }

    async fn show(
        &self,
        ctx: &Context,
        order: &OrderRecord,
        done: &[DeliveryRecord],
    ) -> Result<Vec<Delivered>> {
        let base = ctx
            .config
            .public_api_url
            .as_deref()
            .ok_or_else(|| Error::Config("PUBLIC_API_URL is not set: links need it".into()))?
            .trim_end_matches('/');
        let mut shown = Vec::new();
        for slot in done.iter().filter_map(DeliveryRecord::link) {
            let token = sealed::open(
                ctx,
                &EncryptionContext::link(&order.order_id, &slot.token.seal_id),
                &link_aad(&order.order_id, slot.slot),
                &slot.token,
            )
            .await?;
            let token = std::str::from_utf8(&token)
                .map_err(|_| Error::Corrupt("sealed link token is not text".into()))?;
            shown.push(Delivered {
                url: Some(format!("{base}/r/{token}")),
                ..Delivered::of(DeliveryType::Link)
            });
        }
        Ok(shown)
    }
}
