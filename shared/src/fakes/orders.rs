//! The one fixture of a stored order, for tests that write or decide on orders without
//! going through checkout: change what a test is about with struct-update syntax
//! (`OrderRecord { status: OrderStatus::Paid, ..order_fixture("sku", 2, now) }`).

use crate::domain::money::Money;
use crate::domain::order::OrderStatus;
use crate::domain::product::DeliveryType;
use crate::domain::time::{Timestamp, new_id};
use crate::store::{OrderRecord, StockShare};

/// The price of one unit in fixtures, in fen.
pub const FIXTURE_UNIT_PRICE: i64 = 100;

/// A new card-key order of `quantity` units, pending payment since `now` (due 15 minutes
/// later), reserved on counter 0, with no holds.
pub fn order_fixture(sku: &str, quantity: u32, now: Timestamp) -> OrderRecord {
    OrderRecord {
        order_id: new_id(),
        sku: sku.to_owned(),
        quantity,
        delivery_type: DeliveryType::CardKey,
        stock_shards: StockShare::whole(0, quantity),
        amount: Money {
            amount: FIXTURE_UNIT_PRICE * i64::from(quantity),
            currency: "CNY".into(),
        },
        status: OrderStatus::PendingPayment,
        buyer_email: "buyer@example.com".into(),
        token_hash: "0".repeat(64),
        created_at: now.to_rfc3339(),
        expires_at: now.plus_seconds(900),
        updated_at: now.to_rfc3339(),
        payment_ref: None,
        exception: None,
        holds: Vec::new(),
        top_up: None,
        license: None,
        grant: None,
        account_id: None,
        contact: Default::default(),
        renews: None,
        link: None,
        redelivery_requested_at: None,
        paid_amount: None,
        referral: None,
        parts: Vec::new(),
        on_partial_failure: None,
        failed_part: None,
        slot_base: 0,
        paid_at: None,
    }
}
