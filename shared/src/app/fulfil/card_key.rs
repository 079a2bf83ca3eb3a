//! Card keys, the first delivery type. Each unit of an order is one key moved from the
//! product's stock into the order's delivery slot (`CardKeySlot`), one transaction per
//! key conditional on the key, the slot and the order, so duplicate messages, parallel
//! workers and a crash between any two writes all converge on each slot holding exactly
//! one key and no key in two slots. Showing the keys is the only place a card key is
//! ever decrypted.

use std::collections::HashMap;

use super::{Fulfiller, Fulfilment};
use crate::app::delivery::{Budget, KEY_RESERVE_MS};
use crate::app::orders::Delivered;
use crate::config::Context;
use crate::domain::crypto::{self, DataKey, card_key_aad};
use crate::domain::product::DeliveryType;
use crate::error::{Error, Result};
use crate::ports::vault::EncryptionContext;
use crate::store::{AllocateOutcome, DeliveryRecord, OrderRecord, STOCK_SHARDS, Store};

const KEYS_PER_QUERY: i32 = 10;
/// Re-reads of one stock shard when other deliveries keep taking its keys first.
const SHARD_RETRIES: u32 = 5;

/// The card-key fulfiller.
pub struct CardKeys;

impl Fulfiller for CardKeys {
    async fn fulfil(
        &self,
        ctx: &Context,
        order: &OrderRecord,
        done: &[DeliveryRecord],
        budget: &Budget,
    ) -> Result<Fulfilment> {
        let filled: Vec<u32> = done
            .iter()
            .filter_map(DeliveryRecord::card_key)
            .map(|slot| slot.slot)
            .collect();
        Ok(if allocate_keys(ctx, order, &filled, budget).await? {
            Fulfilment::Done
        } else {
            Fulfilment::NotPayable
        })
    }

    async fn show(
        &self,
        ctx: &Context,
        _order: &OrderRecord,
        done: &[DeliveryRecord],
    ) -> Result<Vec<Delivered>> {
        reveal(ctx, done).await
    }
}

/// Fills every slot of the order not in `filled` (a slot filled meanwhile by another
/// worker is detected by its condition). Returns false if the order stopped waiting for
/// delivery meanwhile; `Error::OutOfTime` when `budget` runs low before a key (the
/// slots filled so far stay filled).
pub async fn allocate_keys(
    ctx: &Context,
    order: &OrderRecord,
    filled: &[u32],
    budget: &Budget,
) -> Result<bool> {
    for slot in order.slots().filter(|slot| !filled.contains(slot)) {
        if !fill_slot(ctx, order, slot, budget).await? {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn fill_slot(ctx: &Context, order: &OrderRecord, slot: u32, budget: &Budget) -> Result<bool> {
    let home = Store::home_shard(&order.order_id);
    for step in 0..STOCK_SHARDS {
        let shard = (home + step) % STOCK_SHARDS;
        for _ in 0..SHARD_RETRIES {
            let candidates = ctx
                .store
                .available_keys(&order.sku, shard, KEYS_PER_QUERY)
                .await?;
            if candidates.is_empty() {
                break;
            }
            for key in &candidates {
                budget.check(KEY_RESERVE_MS, "the next card key")?;
                match ctx
                    .store
                    .allocate_key(order, slot, key, ctx.clock.now())
                    .await?
                {
                    AllocateOutcome::Allocated | AllocateOutcome::SlotFilled => return Ok(true),
                    AllocateOutcome::NotPayable => return Ok(false),
                    AllocateOutcome::KeyGone => continue,
                }
            }
        }
    }
    // Stock was reserved at order time, so this means the inventory and the counters
    // disagree: fail loudly (the message retries, then the order shows delivery_failed).
    Err(Error::Corrupt(format!(
        "no card key left in stock for paid order {}",
        order.order_id
    )))
}

/// Decrypts the delivered keys, each batch's data key unwrapped once.
async fn reveal(ctx: &Context, done: &[DeliveryRecord]) -> Result<Vec<Delivered>> {
    let mut data_keys: HashMap<&str, DataKey> = HashMap::new();
    let mut codes = Vec::with_capacity(done.len());
    for slot in done.iter().filter_map(DeliveryRecord::card_key) {
        if !data_keys.contains_key(slot.batch_id.as_str()) {
            let vault = ctx.vault()?;
            let recent = vault.recently_unwrapped(&EncryptionContext::card_key_batch(
                &slot.sku,
                &slot.batch_id,
            ));
            let key = match recent {
                Some(key) => key,
                None => {
                    let batch =
                        ctx.store.get_batch(&slot.batch_id).await?.ok_or_else(|| {
                            Error::Corrupt("delivered key without its batch".into())
                        })?;
                    let context = EncryptionContext::card_key_batch(&batch.sku, &batch.batch_id);
                    vault.unwrap_data_key(&context, &batch.wrapped_key).await?
                }
            };
            data_keys.insert(slot.batch_id.as_str(), key);
        }
        let data_key = data_keys
            .get(slot.batch_id.as_str())
            .ok_or(Error::Crypto("data key missing"))?;
        let code = crypto::open(
            data_key,
            &card_key_aad(&slot.sku, &slot.key_id),
            &slot.sealed,
        )?;
        codes.push(Delivered {
            code: Some(code.expose().to_owned()),
            ..Delivered::of(DeliveryType::CardKey)
        });
    }
    Ok(codes)
}
