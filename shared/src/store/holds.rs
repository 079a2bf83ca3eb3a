//! Holds: per product, the units each client (a source address or a buyer email, kept
//! only as an HMAC) holds in unpaid orders. Claimed in the order's own transaction, so a
//! cap costs no request of its own; released in the transaction that moves the order out
//! of `pending_payment` (`Tx::move_order`), whatever moves it.

use super::Store;
use super::codec::{FromItem, Item, get_n, key_item, keys, n, s};
use super::tx::{ItemName, Tx};
use crate::domain::time::Timestamp;
use crate::error::Result;

/// A hold item lives this long past the newest order that claimed it: DynamoDB's TTL
/// only cleans up counters long at zero; every count is exact without it.
const HOLD_TTL_AFTER_SECONDS: i64 = 30 * 86_400;

/// One client's claim on a product's units for a new order: who (`holder`, as the order
/// stores it) and the most that client may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldClaim {
    pub holder: String,
    pub limit: u32,
}

/// A client's hold on a product, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldRecord {
    pub held: i64,
    /// The `expires_at` of the newest order that claimed it: by then (and the sweep's
    /// grace) every unit held now has been paid for or given back.
    pub until: Timestamp,
}

impl FromItem for HoldRecord {
    fn from_item(item: &Item) -> Result<HoldRecord> {
        Ok(HoldRecord {
            held: get_n(item, "held")?,
            until: Timestamp::from_unix_seconds(get_n(item, "until")?),
        })
    }
}

impl Tx {
    /// Adds `units` to each claim's hold, only if that keeps it within the claim's
    /// limit (`ItemName::Hold(i)` fails otherwise). The caller keeps `units` within every
    /// limit, so a first claim, which has no count yet, always fits.
    pub(crate) fn claim_holds(
        &mut self,
        sku: &str,
        claims: &[HoldClaim],
        units: u32,
        until: Timestamp,
    ) -> Result<&mut Self> {
        for (index, claim) in claims.iter().enumerate() {
            let room = i64::from(claim.limit) - i64::from(units);
            self.update(
                ItemName::Hold(index),
                key_item(keys::hold(sku, &claim.holder)),
                "SET #entity = :entity, #until = :until, #ttl = :ttl ADD #held :units",
                Some("attribute_not_exists(#held) OR #held <= :room"),
                &["entity", "until", "ttl", "held"],
                vec![
                    (":entity", s("hold")),
                    (":until", n(until.unix_seconds())),
                    (":ttl", n(until.unix_seconds() + HOLD_TTL_AFTER_SECONDS)),
                    (":units", n(units)),
                    (":room", n(room)),
                ],
            )?;
        }
        Ok(self)
    }

    /// Gives an order's `units` back to each of its `holders` (never refused: a hold
    /// must not stand in the way of a payment or an expiry).
    pub(crate) fn release_holds(
        &mut self,
        sku: &str,
        holders: &[String],
        units: u32,
    ) -> Result<&mut Self> {
        for (index, holder) in holders.iter().enumerate() {
            self.update(
                ItemName::Hold(index),
                key_item(keys::hold(sku, holder)),
                "ADD #held :less",
                None,
                &["held"],
                vec![(":less", n(-i64::from(units)))],
            )?;
        }
        Ok(self)
    }
}

impl Store {
    /// Access pattern: one client's hold on a product (to tell a refused client when to
    /// come back; read only then).
    pub async fn get_hold(&self, sku: &str, holder: &str) -> Result<Option<HoldRecord>> {
        self.get_as(keys::hold(sku, holder), true).await
    }
}
