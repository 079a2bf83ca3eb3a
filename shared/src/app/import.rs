//! Card-key import: validate, de-duplicate by keyed fingerprint, seal under one KMS data
//! key per batch, and add to stock in transactions of 49 keys (98 items + a counter).
//! Each transaction's units go to one stock counter shard, the next transaction's to
//! the next shard: small stock stays on one counter (an order for several units finds
//! them together), large stock spreads over all of them (flash sales scale).

use std::collections::HashMap;

use futures_util::{StreamExt, stream};
use serde::Serialize;

use super::audit::{Actor, snapshot};
use crate::config::Context;
use crate::domain::card_key::{CardKeyCode, ImportFormat, InvalidKey, parse_import};
use crate::domain::crypto::{DataKey, card_key_aad, fingerprint, seal};
use crate::domain::product::DeliveryType;
use crate::domain::time::new_id;
use crate::error::{Error, Result};
use crate::ports::vault::{EncryptionContext, NewDataKey};
use crate::store::AuditSubject;
use crate::store::{BatchRecord, SealedKey};

/// 49 keys × 2 items + 1 counter update = 99 of the 100 items a transaction may hold.
const KEYS_PER_TRANSACTION: usize = 49;
const TRANSACTIONS_IN_FLIGHT: usize = 8;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DuplicateKey {
    pub index: usize,
}

/// What an import did: keys are named by their position in the request, never by text.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ImportReport {
    pub batch_id: Option<String>,
    pub accepted: usize,
    pub duplicates: Vec<DuplicateKey>,
    pub invalid: Vec<InvalidKey>,
}

/// One card key of product `sku` ready to store: a new key id, sealed under its batch's
/// data key with its AAD, with its fingerprint.
pub(crate) fn seal_key(
    data_key: &DataKey,
    sku: &str,
    fingerprint: String,
    code: &CardKeyCode,
) -> Result<SealedKey> {
    let key_id = new_id();
    let sealed = seal(data_key, &card_key_aad(sku, &key_id), code)?;
    Ok(SealedKey {
        key_id,
        fingerprint,
        sealed,
    })
}

pub async fn import_card_keys(
    ctx: &Context,
    actor: &Actor,
    sku: &str,
    format: ImportFormat,
    body: &[u8],
) -> Result<ImportReport> {
    let report = import_unrecorded(ctx, sku, format, body).await?;
    // Counts only: the report's positions are long for a big import, its keys never
    // there.
    let summary = serde_json::json!({
        "batch_id": report.batch_id,
        "accepted": report.accepted,
        "duplicates": report.duplicates.len(),
        "invalid": report.invalid.len(),
    });
    let entry = actor.entry(
        ctx,
        "product.import_card_keys",
        (AuditSubject::Product, sku),
        None,
        None,
        snapshot(&summary),
    );
    actor.record(ctx, entry).await;
    Ok(report)
}

async fn import_unrecorded(
    ctx: &Context,
    sku: &str,
    format: ImportFormat,
    body: &[u8],
) -> Result<ImportReport> {
    let product = super::catalog::find_product(ctx, sku, true).await?;
    if product.delivery != DeliveryType::CardKey {
        return Err(Error::invalid(
            "unsupported_delivery_type",
            "this product does not deliver card keys",
        ));
    }
    let candidates = parse_import(format, body)?;
    let fingerprint_key = ctx.secrets.fingerprint_key()?;

    // The same key twice in one request: the first counts, the rest are duplicates.
    let mut first_seen: HashMap<String, usize> = HashMap::new();
    let mut duplicates = Vec::new();
    let mut fresh = Vec::new();
    for (index, code) in candidates.valid {
        // Look-alikes (NFKC forms, and case variants where the product ignores case)
        // share a fingerprint: the second is a duplicate, here and across imports.
        let fp = fingerprint(fingerprint_key, &code, product.card_keys)?;
        if first_seen.contains_key(&fp) {
            duplicates.push(index);
        } else {
            first_seen.insert(fp.clone(), index);
            fresh.push((index, fp, code));
        }
    }
    if fresh.is_empty() {
        return Ok(report(None, 0, duplicates, candidates.invalid));
    }

    let batch_id = new_id();
    let created_at = ctx.clock.now().to_rfc3339();
    let NewDataKey {
        plaintext: data_key,
        wrapped: wrapped_key,
    } = ctx
        .vault()?
        .new_data_key(&EncryptionContext::card_key_batch(sku, &batch_id))
        .await?;
    ctx.store
        .put_batch(
            &BatchRecord {
                batch_id: batch_id.clone(),
                sku: sku.to_owned(),
                wrapped_key,
            },
            &created_at,
        )
        .await?;
    let mut sealed = Vec::with_capacity(fresh.len());
    for (index, fp, code) in fresh {
        sealed.push((index, seal_key(&data_key, sku, fp, &code)?));
    }
    drop(data_key);

    let chunks: Vec<Vec<(usize, SealedKey)>> = {
        let mut chunks = Vec::new();
        let mut rest = sealed.into_iter().peekable();
        while rest.peek().is_some() {
            chunks.push(rest.by_ref().take(KEYS_PER_TRANSACTION).collect());
        }
        chunks
    };
    // Imports start on a random counter shard so repeated small imports spread too.
    let first_shard = rand::random::<u32>();
    let results: Vec<Result<(usize, Vec<usize>)>> = stream::iter((0u32..).zip(chunks))
        .map(|(index, chunk)| {
            let shard = first_shard.wrapping_add(index);
            add_chunk(ctx, sku, &batch_id, chunk, shard, &created_at)
        })
        .buffer_unordered(TRANSACTIONS_IN_FLIGHT)
        .collect()
        .await;
    let mut accepted = 0;
    for result in results {
        let (added, chunk_duplicates) = result?;
        accepted += added;
        duplicates.extend(chunk_duplicates);
    }
    tracing::info!(sku, batch_id = %batch_id, accepted, duplicates = duplicates.len(), "card keys imported");
    Ok(report(
        Some(batch_id),
        accepted,
        duplicates,
        candidates.invalid,
    ))
}

/// Adds one chunk, dropping keys whose fingerprint already exists until the rest commit.
async fn add_chunk(
    ctx: &Context,
    sku: &str,
    batch_id: &str,
    mut chunk: Vec<(usize, SealedKey)>,
    counter_shard: u32,
    created_at: &str,
) -> Result<(usize, Vec<usize>)> {
    let mut duplicates = Vec::new();
    while !chunk.is_empty() {
        let keys: Vec<&SealedKey> = chunk.iter().map(|(_, key)| key).collect();
        let existing = ctx
            .store
            .add_stock(sku, batch_id, &keys, counter_shard, created_at)
            .await?;
        if existing.is_empty() {
            return Ok((chunk.len(), duplicates));
        }
        let mut position = 0;
        chunk.retain(|(index, _)| {
            let keep = !existing.contains(&position);
            if !keep {
                duplicates.push(*index);
            }
            position += 1;
            keep
        });
    }
    Ok((0, duplicates))
}

fn report(
    batch_id: Option<String>,
    accepted: usize,
    mut duplicates: Vec<usize>,
    invalid: Vec<InvalidKey>,
) -> ImportReport {
    duplicates.sort_unstable();
    ImportReport {
        batch_id,
        accepted,
        duplicates: duplicates
            .into_iter()
            .map(|index| DuplicateKey { index })
            .collect(),
        invalid,
    }
}
