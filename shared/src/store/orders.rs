//! Orders and everything in an order's partition: the order item, its events (one per
//! transition, written in the transition's transaction), its delivery records (one per
//! delivered unit, each in its delivery type's shape); and the sparse index the sweep
//! reads (due pending orders, paid orders still undelivered).

use aws_sdk_dynamodb::types::AttributeValue;

use super::attempts::{AttemptRecord, is_attempt};
use super::audit::AuditEntry;
use super::card_keys::CardKeySlot;
use super::codec::{
    FromItem, Item, get_delivery_type, get_money, get_n, get_opt_json, get_opt_s, get_s, get_u32,
    item, json, key_item, keys, n, s,
};
use super::commissions::{CommissionEntry, is_commission};
use super::entitlements::GrantSlot;
use super::holds::HoldClaim;
use super::idempotency::idempotency_item;
use super::licenses::LicenseSlot;
use super::links::LinkSlot;
use super::payments::PaymentRecord;
use super::products::StockMove;
use super::refunds::{RefundRecord, is_refund};
use super::topups::{SupplierLogEntry, TopUpAttempt, is_supplier_log};
use super::tx::{CountedTransition, ItemName, Tx, TxOutcome};
use super::{
    FAILED_RETRY_AFTER_SECONDS, INDEX_SHARDS, ORDER_INDEX, POLL_SUPPLIER_AFTER_SECONDS,
    STUCK_AFTER_SECONDS, Store, condition_failed, shard_of,
};
use crate::domain::bundle::PartialFailure;
use crate::domain::distributor::Referral;
use crate::domain::entitlement::GrantSpec;
use crate::domain::license::LicenseSpec;
use crate::domain::link::LinkSpec;
use crate::domain::money::Money;
use crate::domain::notification::{Contact, Language};
use crate::domain::order::{Cause, OrderStatus, TopUpOrder};
use crate::domain::product::DeliveryType;
use crate::domain::time::{Timestamp, new_id};
use crate::error::{ConflictKind, Error, Result};

/// The order as stored.
#[derive(Debug, Clone)]
pub struct OrderRecord {
    pub order_id: String,
    pub sku: String,
    pub quantity: u32,
    /// The product's delivery type when the order was made: which fulfiller delivers it.
    pub delivery_type: DeliveryType,
    /// The stock counter shards this order's quantity is reserved on, with the units
    /// on each (their sum is `quantity`). Stored as `stock_split`, plus `stock_shard`
    /// (the first) that orders made before splits had alone.
    pub stock_shards: Vec<StockShare>,
    pub amount: Money,
    pub status: OrderStatus,
    pub buyer_email: String,
    pub token_hash: String,
    pub created_at: String,
    pub expires_at: Timestamp,
    pub updated_at: String,
    pub payment_ref: Option<String>,
    pub exception: Option<String>,
    /// The holds (`store::holds`) its units count against while it is unpaid: the
    /// holders as stored, so a release finds the same items whatever the secrets are by
    /// then. Empty for orders made before holds.
    pub holds: Vec<String>,
    /// For a direct top-up: the account and suppliers it was made for.
    pub top_up: Option<TopUpOrder>,
    /// For a license key: what each key it delivers allows.
    pub license: Option<LicenseSpec>,
    /// For a membership or count card: what each unit grants, and to which account.
    pub grant: Option<GrantSpec>,
    pub account_id: Option<String>,
    /// The buyer's phone and language, for notifications.
    pub contact: Contact,
    /// For a renewal order: the subscription it renews (docs/subscriptions.md).
    pub renews: Option<String>,
    /// For a link: where its links lead, for how long and how often.
    pub link: Option<LinkSpec>,
    /// When an operator last asked for it to be delivered again (a top-up whose every
    /// supplier failed starts a new round only then).
    pub redelivery_requested_at: Option<Timestamp>,
    /// When it became `paid` (absent before it was, and on orders paid before this was
    /// kept).
    pub paid_at: Option<Timestamp>,
    /// What the money that paid it came to (absent before it was paid; an order paid
    /// before this was kept paid its `amount`): commissions are a share of it.
    pub paid_amount: Option<Money>,
    /// The distributor chain it was referred through, as it was when it was made.
    pub referral: Option<Referral>,
    /// For a bundle: its parts as they were when it was made, each with its own stock
    /// reservation and delivery spec (docs/bundles.md).
    pub parts: Vec<OrderPart>,
    /// For a bundle: what a part's failure for good does.
    pub on_partial_failure: Option<PartialFailure>,
    /// For a bundle whose part failed for good: that part's sku.
    pub failed_part: Option<String>,
    /// Where this order's delivery records are numbered from: 0, or a bundle part's
    /// first slot when a part is delivered as an order of its own (never stored).
    pub slot_base: u32,
}

/// One part of a bundle order: `units` of product `sku` (its quantity per bundle times
/// the order's), reserved on `stock_shards` of that product when it counts stock.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OrderPart {
    pub sku: String,
    pub units: u32,
    pub delivery_type: DeliveryType,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stock_shards: Vec<StockShare>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_up: Option<TopUpOrder>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<LicenseSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<GrantSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkSpec>,
}

impl OrderRecord {
    /// The stock this order holds, per product: its own, or each counted part's.
    pub fn stock_lines(&self) -> Vec<(&str, &[StockShare])> {
        if self.parts.is_empty() {
            return vec![(self.sku.as_str(), self.stock_shards.as_slice())];
        }
        self.parts
            .iter()
            .filter(|part| !part.stock_shards.is_empty())
            .map(|part| (part.sku.as_str(), part.stock_shards.as_slice()))
            .collect()
    }

    /// Part `index` of a bundle as an order of its own, for its type's fulfiller: the
    /// same order (id, status, buyer), the part's product, units and spec, its records
    /// numbered from the part's first slot.
    pub fn part_order(&self, index: usize) -> Option<OrderRecord> {
        let part = self.parts.get(index)?;
        Some(OrderRecord {
            sku: part.sku.clone(),
            quantity: part.units,
            delivery_type: part.delivery_type,
            stock_shards: part.stock_shards.clone(),
            top_up: part.top_up.clone(),
            license: part.license,
            grant: part.grant.clone(),
            link: part.link.clone(),
            parts: Vec::new(),
            on_partial_failure: None,
            slot_base: u32::try_from(index).ok()? * crate::domain::bundle::PART_SLOTS,
            ..self.clone()
        })
    }

    /// The slots its units are delivered into.
    pub fn slots(&self) -> std::ops::Range<u32> {
        self.slot_base..self.slot_base + self.quantity
    }
}

/// Units of an order reserved on one stock counter shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StockShare {
    pub shard: u32,
    pub units: u32,
}

impl StockShare {
    /// All of an order's units on one counter.
    pub fn whole(shard: u32, units: u32) -> Vec<StockShare> {
        vec![StockShare { shard, units }]
    }
}

/// The order's `stock_shard` and `stock_split` attributes.
fn stock_attributes(shares: &[StockShare]) -> (AttributeValue, AttributeValue) {
    let first = shares.first().map_or(0, |share| share.shard);
    let split = shares
        .iter()
        .map(|share| {
            AttributeValue::M(
                [("shard", n(share.shard)), ("units", n(share.units))]
                    .into_iter()
                    .map(|(name, value)| (name.to_owned(), value))
                    .collect(),
            )
        })
        .collect();
    (n(first), AttributeValue::L(split))
}

/// Reads `stock_split`; an order stored before splits has only `stock_shard`, which
/// then holds its whole quantity. Empty for an order of a type without stock (a top-up).
fn get_stock_shares(item: &Item, quantity: u32) -> Result<Vec<StockShare>> {
    if matches!(item.get("stock_split"), Some(AttributeValue::L(list)) if list.is_empty()) {
        return Ok(Vec::new());
    }
    let shares = match item.get("stock_split") {
        None => StockShare::whole(get_u32(item, "stock_shard")?, quantity),
        Some(AttributeValue::L(list)) => list
            .iter()
            .map(|entry| match entry {
                AttributeValue::M(share) => Ok(StockShare {
                    shard: get_u32(share, "shard")?,
                    units: get_u32(share, "units")?,
                }),
                _ => Err(Error::Corrupt("stock_split entry is not a map".into())),
            })
            .collect::<Result<Vec<_>>>()?,
        Some(_) => return Err(Error::Corrupt("stock_split is not a list".into())),
    };
    if shares.is_empty() || shares.iter().map(|share| share.units).sum::<u32>() != quantity {
        return Err(Error::Corrupt(
            "stock_split does not add up to the quantity".into(),
        ));
    }
    Ok(shares)
}

#[derive(Debug, Clone)]
pub struct OrderEvent {
    pub at: String,
    pub from: Option<OrderStatus>,
    pub to: OrderStatus,
    pub cause: String,
    /// The operator whose action it was, and why (absent for Kami's own steps).
    pub by: Option<String>,
    pub reason: Option<String>,
}

/// What accepting an exception's money came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    Moved,
    /// The counters tried no longer hold the units.
    NoStock,
    /// The order moved meanwhile.
    Raced,
}

/// Who moved an order by hand, and why: kept on the event (the order's history).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorNote {
    pub by: String,
    pub reason: String,
}

/// One delivered unit, as its delivery type records it (`DELIVERY#{slot}` items, told
/// apart by their `type`). A bundle's parts each number theirs from the part's first
/// slot (`OrderRecord::part_order`).
#[derive(Debug, Clone)]
pub enum DeliveryRecord {
    CardKey(CardKeySlot),
    /// A request sent to a supplier (one per attempt, not per unit).
    TopUp(TopUpAttempt),
    /// A license key generated for one unit.
    License(LicenseSlot),
    /// The entitlement a membership or count card granted or extended (one per order).
    Grant(GrantSlot),
    /// A redemption link generated for one unit.
    Link(LinkSlot),
}

impl DeliveryRecord {
    /// The card key this record holds, if it is a card-key record.
    pub fn card_key(&self) -> Option<&CardKeySlot> {
        match self {
            DeliveryRecord::CardKey(slot) => Some(slot),
            _ => None,
        }
    }

    /// The top-up request this record is, if it is one.
    pub fn top_up(&self) -> Option<&TopUpAttempt> {
        match self {
            DeliveryRecord::TopUp(attempt) => Some(attempt),
            _ => None,
        }
    }

    /// The license key this record holds, if it is one.
    pub fn license(&self) -> Option<&LicenseSlot> {
        match self {
            DeliveryRecord::License(slot) => Some(slot),
            _ => None,
        }
    }

    /// The entitlement this record granted, if it is a grant.
    pub fn grant(&self) -> Option<&GrantSlot> {
        match self {
            DeliveryRecord::Grant(slot) => Some(slot),
            _ => None,
        }
    }

    /// Where it is in the order: its slot (a top-up request's sequence number).
    pub fn slot(&self) -> u32 {
        match self {
            DeliveryRecord::CardKey(slot) => slot.slot,
            DeliveryRecord::TopUp(attempt) => attempt.seq,
            DeliveryRecord::License(slot) => slot.slot,
            DeliveryRecord::Grant(slot) => slot.slot,
            DeliveryRecord::Link(slot) => slot.slot,
        }
    }

    /// The link this record holds, if it is one.
    pub fn link(&self) -> Option<&LinkSlot> {
        match self {
            DeliveryRecord::Link(slot) => Some(slot),
            _ => None,
        }
    }
}

/// What writing one generated unit (a license key, a link) into an order's slot came
/// to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotWrite {
    Written,
    /// Another attempt filled the slot first: its unit stands, this one is dropped.
    SlotFilled,
    /// The order stopped waiting for delivery.
    NotPayable,
}

impl SlotWrite {
    /// Reads a slot transaction's outcome (`ItemName::Slot`, `ItemName::Order`); any
    /// other failed condition is a collision on the unit's own item (`what`), retried.
    pub(crate) fn of(outcome: TxOutcome, what: &'static str) -> Result<Self> {
        Ok(match outcome {
            TxOutcome::Committed => SlotWrite::Written,
            TxOutcome::Cancelled(c) if c.failed(ItemName::Order) => SlotWrite::NotPayable,
            TxOutcome::Cancelled(c) if c.failed(ItemName::Slot) => SlotWrite::SlotFilled,
            TxOutcome::Cancelled(_) => return Err(Error::Contention(what)),
        })
    }
}

impl Tx {
    /// The condition every delivery write carries: the order still awaits delivery
    /// (`ItemName::Order`).
    pub(crate) fn awaiting_delivery(&mut self, order: &OrderRecord) -> Result<&mut Self> {
        self.check(
            ItemName::Order,
            key_item(keys::order(&order.order_id)),
            "#status IN (:paid, :delivering, :failed)",
            &["status"],
            vec![
                (":paid", s(OrderStatus::Paid.as_str())),
                // A bundle's other parts go on while its top-up waits on a supplier.
                (":delivering", s(OrderStatus::Delivering.as_str())),
                (":failed", s(OrderStatus::DeliveryFailed.as_str())),
            ],
        )
    }
}

/// Everything stored under one order's partition.
#[derive(Debug, Clone)]
pub struct OrderView {
    pub order: OrderRecord,
    pub events: Vec<OrderEvent>,
    pub deliveries: Vec<DeliveryRecord>,
    pub payments: Vec<PaymentRecord>,
    pub attempts: Vec<AttemptRecord>,
    pub refunds: Vec<RefundRecord>,
    /// Every call to a supplier and what came of it, oldest first.
    pub supplier_log: Vec<SupplierLogEntry>,
    /// Its distributors' commission entries (a referred, delivered order).
    pub commissions: Vec<CommissionEntry>,
}

/// The two queues of work the sweep reads from the sparse index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DueQueue {
    /// Paid orders still undelivered at their next re-queue time (`PAID#{shard}`).
    Paid,
    /// Unpaid orders by their `expires_at` (`PENDING#{shard}`).
    Pending,
}

/// Where the next page of a `due_orders` query starts (DynamoDB's `LastEvaluatedKey`).
#[derive(Debug, Clone)]
pub struct DueCursor(Item);

/// One page of due order ids; `next` is `None` once the shard has no more.
#[derive(Debug)]
pub struct DuePage<C = DueCursor> {
    pub order_ids: Vec<String>,
    pub next: Option<C>,
}

pub enum CreateOrderOutcome {
    Created,
    /// Another request with the same key got there first.
    KeyTaken,
    /// The client already holds as many unpaid units as the `claim`-th hold allows.
    HoldFull {
        claim: usize,
    },
}

fn order_item(order: &OrderRecord) -> Result<Item> {
    let (stock_shard, stock_split) = stock_attributes(&order.stock_shards);
    let mut stored = item(
        keys::order(&order.order_id),
        "order",
        [
            ("order_id", s(&order.order_id)),
            ("sku", s(&order.sku)),
            ("quantity", n(order.quantity)),
            ("delivery_type", s(order.delivery_type.as_str())),
            ("stock_shard", stock_shard),
            ("stock_split", stock_split),
            ("amount", n(order.amount.amount)),
            ("currency", s(&order.amount.currency)),
            ("status", s(order.status.as_str())),
            ("buyer_email", s(&order.buyer_email)),
            ("token_hash", s(&order.token_hash)),
            ("created_at", s(&order.created_at)),
            ("expires_at", n(order.expires_at.0)),
            ("updated_at", s(&order.updated_at)),
            (
                "holds",
                AttributeValue::L(order.holds.iter().map(s).collect()),
            ),
        ],
    );
    if let Some(license) = &order.license {
        stored.insert("license".to_owned(), json(license)?);
    }
    if let Some(grant) = &order.grant {
        stored.insert("grant".to_owned(), json(grant)?);
    }
    if let Some(account_id) = &order.account_id {
        stored.insert("account_id".to_owned(), s(account_id));
    }
    if let Some(subscription_id) = &order.renews {
        stored.insert("renews".to_owned(), s(subscription_id));
    }
    if let Some(phone) = &order.contact.phone {
        stored.insert("buyer_phone".to_owned(), s(phone));
    }
    if order.contact.language != Language::default() {
        stored.insert(
            "buyer_language".to_owned(),
            s(order.contact.language.as_str()),
        );
    }
    if let Some(link) = &order.link {
        stored.insert("link".to_owned(), json(link)?);
    }
    if let Some(top_up) = &order.top_up {
        stored.insert("top_up".to_owned(), json(top_up)?);
    }
    if let Some(referral) = &order.referral {
        stored.insert("referral".to_owned(), json(referral)?);
    }
    if !order.parts.is_empty() {
        stored.insert("parts".to_owned(), json(&order.parts)?);
    }
    if let Some(policy) = &order.on_partial_failure {
        stored.insert("on_partial_failure".to_owned(), json(policy)?);
    }
    Ok(stored)
}

/// A new order as stored, in the sweep's pending queue until its `expires_at`.
fn pending_order_item(order: &OrderRecord) -> Result<Item> {
    let mut stored = order_item(order)?;
    stored.insert(
        "gsi1pk".to_owned(),
        s(keys::pending_index(shard_of(&order.order_id, INDEX_SHARDS))),
    );
    stored.insert("gsi1sk".to_owned(), n(order.expires_at.unix_seconds()));
    Ok(stored)
}

impl FromItem for OrderRecord {
    fn from_item(item: &Item) -> Result<OrderRecord> {
        let quantity = get_u32(item, "quantity")?;
        Ok(OrderRecord {
            order_id: get_s(item, "order_id")?,
            sku: get_s(item, "sku")?,
            quantity,
            delivery_type: get_delivery_type(item, "delivery_type")?,
            stock_shards: get_stock_shares(item, quantity)?,
            amount: get_money(item, "amount")?,
            status: OrderStatus::parse(&get_s(item, "status")?)?,
            buyer_email: get_s(item, "buyer_email")?,
            token_hash: get_s(item, "token_hash")?,
            created_at: get_s(item, "created_at")?,
            expires_at: Timestamp(get_n(item, "expires_at")?),
            updated_at: get_s(item, "updated_at")?,
            payment_ref: get_opt_s(item, "payment_ref"),
            exception: get_opt_s(item, "exception"),
            holds: match item.get("holds") {
                None => Vec::new(),
                Some(AttributeValue::L(list)) => list
                    .iter()
                    .map(|holder| match holder {
                        AttributeValue::S(holder) => Ok(holder.clone()),
                        _ => Err(Error::Corrupt("holds entry is not a string".into())),
                    })
                    .collect::<Result<_>>()?,
                Some(_) => return Err(Error::Corrupt("holds is not a list".into())),
            },
            top_up: get_opt_json(item, "top_up")?,
            license: get_opt_json(item, "license")?,
            grant: get_opt_json(item, "grant")?,
            account_id: get_opt_s(item, "account_id"),
            renews: get_opt_s(item, "renews"),
            contact: Contact {
                phone: get_opt_s(item, "buyer_phone"),
                language: get_opt_s(item, "buyer_language")
                    .map(|tag| Language::parse(&tag))
                    .transpose()
                    .map_err(|_| Error::Corrupt("unknown buyer_language".into()))?
                    .unwrap_or_default(),
            },
            link: get_opt_json(item, "link")?,
            redelivery_requested_at: item
                .contains_key("redelivery_requested_at")
                .then(|| get_n(item, "redelivery_requested_at").map(Timestamp))
                .transpose()?,
            paid_at: item
                .contains_key("paid_at")
                .then(|| get_n(item, "paid_at").map(Timestamp))
                .transpose()?,
            paid_amount: item
                .contains_key("paid_amount")
                .then(|| {
                    get_n(item, "paid_amount").map(|amount| Money {
                        amount,
                        currency: get_s(item, "currency").unwrap_or_default(),
                    })
                })
                .transpose()?,
            referral: get_opt_json(item, "referral")?,
            parts: get_opt_json(item, "parts")?.unwrap_or_default(),
            on_partial_failure: get_opt_json(item, "on_partial_failure")?,
            failed_part: get_opt_s(item, "failed_part"),
            slot_base: 0,
        })
    }
}

fn event_item(
    order_id: &str,
    from: Option<OrderStatus>,
    to: OrderStatus,
    cause: Cause,
    at: &str,
    note: Option<&OperatorNote>,
) -> Item {
    let mut event = item(
        keys::event(order_id, &new_id()),
        "order_event",
        [
            ("at", s(at)),
            ("to", s(to.as_str())),
            ("cause", s(cause.as_str())),
        ],
    );
    if let Some(from) = from {
        event.insert("from".to_owned(), s(from.as_str()));
    }
    if let Some(note) = note {
        event.insert("by".to_owned(), s(&note.by));
        event.insert("reason".to_owned(), s(&note.reason));
    }
    event
}

impl FromItem for OrderEvent {
    fn from_item(item: &Item) -> Result<OrderEvent> {
        Ok(OrderEvent {
            at: get_s(item, "at")?,
            from: get_opt_s(item, "from")
                .map(|f| OrderStatus::parse(&f))
                .transpose()?,
            to: OrderStatus::parse(&get_s(item, "to")?)?,
            cause: get_s(item, "cause")?,
            by: get_opt_s(item, "by"),
            reason: get_opt_s(item, "reason"),
        })
    }
}

impl FromItem for DeliveryRecord {
    fn from_item(item: &Item) -> Result<DeliveryRecord> {
        Ok(match get_delivery_type(item, "type")? {
            DeliveryType::CardKey => DeliveryRecord::CardKey(CardKeySlot::from_item(item)?),
            DeliveryType::DirectTopup => DeliveryRecord::TopUp(TopUpAttempt::from_item(item)?),
            DeliveryType::LicenseKey => DeliveryRecord::License(LicenseSlot::from_item(item)?),
            DeliveryType::Membership | DeliveryType::CountCard | DeliveryType::Subscription => {
                DeliveryRecord::Grant(GrantSlot::from_item(item)?)
            }
            DeliveryType::Link => DeliveryRecord::Link(LinkSlot::from_item(item)?),
            DeliveryType::Bundle => {
                return Err(Error::Corrupt("a delivery record of type bundle".into()));
            }
        })
    }
}

impl Tx {
    /// A new unpaid order (in the sweep's pending queue) and its first event.
    pub(crate) fn new_order(&mut self, order: &OrderRecord) -> Result<&mut Self> {
        self.put(
            ItemName::Order,
            pending_order_item(order)?,
            Some("attribute_not_exists(pk)"),
        )?;
        self.put(
            ItemName::Event,
            event_item(
                &order.order_id,
                None,
                order.status,
                Cause::Created,
                &order.created_at,
                None,
            ),
            None,
        )
    }

    /// The one way a transition is written: the order moves `from → to` only if it is
    /// still `from` (and `condition` holds), and its event is appended (`ItemName::Order`,
    /// `ItemName::Event`). `more` continues the update expression (`, a = :a` or
    /// ` REMOVE ...`) with its `names` and `values`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn move_order(
        &mut self,
        order: &OrderRecord,
        transition: (OrderStatus, OrderStatus, Cause),
        now: Timestamp,
        more: &str,
        condition: Option<&str>,
        names: &[&str],
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<&mut Self> {
        self.move_order_noted(order, transition, now, more, condition, names, values, None)
    }

    /// A move to `paid`: the order joins the stuck-order index (due
    /// `STUCK_AFTER_SECONDS` after `now`); an order whose stock went back takes it again
    /// on the counters `reserve` names (recorded on the order, reserved in the same
    /// transaction). `more` adds the caller's own attributes (`, a = :a`, values).
    pub(crate) fn move_to_paid(
        &mut self,
        order: &OrderRecord,
        transition: (OrderStatus, OrderStatus, Cause),
        now: Timestamp,
        reserve: Option<&[StockShare]>,
        (more, mut values): (&str, Vec<(&str, AttributeValue)>),
        note: Option<&OperatorNote>,
    ) -> Result<&mut Self> {
        let mut expression = format!("{more}, gsi1pk = :gpk, gsi1sk = :gsk");
        values.extend([
            (
                ":gpk",
                s(keys::paid_index(shard_of(&order.order_id, INDEX_SHARDS))),
            ),
            (":gsk", n(now.unix_seconds() + STUCK_AFTER_SECONDS)),
        ]);
        if let Some(shares) = reserve {
            let (first, split) = stock_attributes(shares);
            expression.push_str(", stock_shard = :shard, stock_split = :split");
            values.extend([(":shard", first), (":split", split)]);
        }
        self.move_order_noted(order, transition, now, &expression, None, &[], values, note)?;
        match reserve {
            // A bundle takes its parts' units again where they were (`Retake`).
            Some(_) if !order.parts.is_empty() => {
                self.move_order_stock(order, StockMove::Reserve)?;
            }
            Some(shares) => {
                self.move_stock((0, &order.sku), shares, StockMove::Reserve)?;
            }
            None => {}
        }
        Ok(self)
    }

    /// The order must still be in the status it was read in (`ItemName::Order`).
    pub(crate) fn order_still(&mut self, order: &OrderRecord) -> Result<&mut Self> {
        self.check(
            ItemName::Order,
            key_item(keys::order(&order.order_id)),
            "#status = :status",
            &["status"],
            vec![(":status", s(order.status.as_str()))],
        )
    }

    /// `move_order`, by an operator's hand: the event names who and why.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn move_order_noted(
        &mut self,
        order: &OrderRecord,
        (from, to, cause): (OrderStatus, OrderStatus, Cause),
        now: Timestamp,
        more: &str,
        condition: Option<&str>,
        names: &[&str],
        mut values: Vec<(&str, AttributeValue)>,
        note: Option<&OperatorNote>,
    ) -> Result<&mut Self> {
        // A function whose clock runs behind the last mover's never dates a move before
        // the one it follows: the history stays in order, latencies never go negative.
        let now = Timestamp::parse_rfc3339(&order.updated_at).map_or(now, |last| now.max(last));
        let condition = condition.map_or_else(
            || "#status = :from".to_owned(),
            |extra| format!("#status = :from AND {extra}"),
        );
        let at = now.to_rfc3339();
        let mut all_names = vec!["status"];
        all_names.extend_from_slice(names);
        values.extend([
            (":to", s(to.as_str())),
            (":from", s(from.as_str())),
            (":at", s(&at)),
        ]);
        // The exception queue's index (`gsi2`): an order is in it from the transition
        // that makes it need a person until the one that ends that, dated by the first.
        let mut expression = "SET #status = :to, updated_at = :at".to_owned();
        // When it was paid: the delivery latency metric counts from it.
        if to == OrderStatus::Paid {
            expression.push_str(", paid_at = :paid_at");
            values.push((":paid_at", n(now.0)));
        }
        // Delivered: its distributors' commissions are earned, with the move.
        if to == OrderStatus::Delivered && from != OrderStatus::Delivered {
            self.earn_commissions(order, now)?;
        }
        self.transitions.push(CountedTransition {
            from,
            to,
            at: now,
            paid_at: order.paid_at,
        });
        let mut more = more.to_owned();
        match (from.needs_a_person(), to.needs_a_person()) {
            (false, true) => {
                expression
                    .push_str(", gsi2pk = :exceptions, gsi2sk = :since, exception_cause = :to");
                values.push((":exceptions", s(keys::EXCEPTIONS_INDEX)));
                values.push((":since", n(now.0)));
            }
            (true, false) if more.contains(" REMOVE ") => more.push_str(", gsi2pk, gsi2sk"),
            (true, false) => more.push_str(" REMOVE gsi2pk, gsi2sk"),
            // Failing again keeps the date it first needed a person, with its new cause.
            (true, true) => expression.push_str(", exception_cause = :to"),
            (false, false) => {}
        }
        expression.push_str(&more);
        self.update(
            ItemName::Order,
            key_item(keys::order(&order.order_id)),
            &expression,
            Some(&condition),
            &all_names,
            values,
        )?;
        // Leaving `pending_payment` (paid, expired, a payment exception, cancelled):
        // its units no longer count against the client's holds.
        if from == OrderStatus::PendingPayment {
            self.release_holds(&order.sku, &order.holds, order.quantity)?;
        }
        self.put(
            ItemName::Event,
            event_item(&order.order_id, Some(from), to, cause, &at, note),
            None,
        )
    }
}

impl Store {
    /// Access pattern: create an order. One transaction claims the idempotency key
    /// (kept a day from `now`), reserves stock (fails if not enough is available),
    /// adds the order's units to each of the client's `holds` (fails if one is full),
    /// stores the order and its first event (at the order's `created_at`).
    pub async fn create_order(
        &self,
        order: &OrderRecord,
        holds: &[HoldClaim],
        idempotency_key: &str,
        source: &str,
        request_hash: &str,
        now: Timestamp,
    ) -> Result<CreateOrderOutcome> {
        let mut tx = self.tx();
        tx.put(
            ItemName::Idempotency,
            idempotency_item(
                "orders",
                idempotency_key,
                source,
                request_hash,
                &order.order_id,
                now,
            ),
            Some("attribute_not_exists(pk)"),
        )?;
        tx.move_order_stock(order, StockMove::Reserve)?;
        tx.claim_holds(&order.sku, holds, order.quantity, order.expires_at)?;
        tx.new_order(order)?;
        if let Some(referral) = &order.referral {
            tx.attribute_order(order, referral)?;
        }
        match self.transact(tx).await? {
            TxOutcome::Committed => Ok(CreateOrderOutcome::Created),
            TxOutcome::Cancelled(c) if c.failed(ItemName::Idempotency) => {
                Ok(CreateOrderOutcome::KeyTaken)
            }
            // A full hold wins over short stock: trying other counters cannot help.
            TxOutcome::Cancelled(c)
                if let Some(claim) = (0..holds.len()).find(|i| c.failed(ItemName::Hold(*i))) =>
            {
                Ok(CreateOrderOutcome::HoldFull { claim })
            }
            // The counter had too little (an order id collision, a fresh ULID, would
            // land here too and is effectively impossible).
            TxOutcome::Cancelled(_) => Err(Error::Conflict(ConflictKind::OutOfStock)),
        }
    }

    /// Access pattern: one order item (strongly consistent).
    pub async fn get_order(&self, order_id: &str) -> Result<Option<OrderRecord>> {
        self.get_as(keys::order(order_id), true).await
    }

    /// Access pattern: an order with its events, deliveries and payments (one Query).
    pub async fn get_order_view(&self, order_id: &str) -> Result<Option<OrderView>> {
        let query = self
            .query()
            .consistent_read(true)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(keys::order_partition(order_id)));
        let items = self.query_all(query).await?;
        let mut order = None;
        let mut events = Vec::new();
        let mut deliveries = Vec::new();
        let mut payments = Vec::new();
        let mut attempts = Vec::new();
        let mut refunds = Vec::new();
        let mut supplier_log = Vec::new();
        let mut commissions = Vec::new();
        for item in &items {
            let sk = get_s(item, "sk")?;
            if sk == keys::ORDER_SK {
                order = Some(OrderRecord::from_item(item)?);
            } else if sk.starts_with(keys::EVENT_PREFIX) {
                events.push(OrderEvent::from_item(item)?);
            } else if sk.starts_with(keys::DELIVERY_PREFIX) {
                deliveries.push(DeliveryRecord::from_item(item)?);
            } else if sk.starts_with(keys::PAYMENT_PREFIX) {
                payments.push(PaymentRecord::from_item(item)?);
            } else if is_attempt(&sk) {
                attempts.push(AttemptRecord::from_item(item)?);
            } else if is_refund(&sk) {
                refunds.push(RefundRecord::from_item(item)?);
            } else if is_supplier_log(&sk) {
                supplier_log.push(SupplierLogEntry::from_item(item)?);
            } else if is_commission(&sk) {
                commissions.push(CommissionEntry::from_item(item)?);
            }
        }
        Ok(order.map(|order| OrderView {
            order,
            events,
            deliveries,
            payments,
            attempts,
            refunds,
            supplier_log,
            commissions,
        }))
    }

    /// Access pattern: mark an order delivered once its fulfiller is done, moving its
    /// quantity from reserved to sold (and dropping the exception of an earlier failed
    /// delivery), its event and `updated_at` at `now`. Returns false if it was not in
    /// `from`.
    pub async fn mark_delivered(
        &self,
        order: &OrderRecord,
        from: OrderStatus,
        now: Timestamp,
    ) -> Result<bool> {
        let to = from.next(Cause::Deliver)?;
        let mut tx = self.tx();
        tx.move_order(
            order,
            (from, to, Cause::Deliver),
            now,
            " REMOVE gsi1pk, gsi1sk, #exception",
            None,
            &["exception"],
            Vec::new(),
        )?;
        tx.move_order_stock(order, StockMove::Sell)?;
        Ok(self.transact(tx).await?.committed())
    }

    /// Access pattern: give up delivering a paid order (`paid → delivery_failed`). It
    /// stays in the stuck-order index, due again `FAILED_RETRY_AFTER_SECONDS` after
    /// `now`, so the sweep retries it after an outage. Returns false if it was no longer
    /// `paid`.
    pub async fn give_up_delivery(&self, order: &OrderRecord, now: Timestamp) -> Result<bool> {
        let to = order.status.next(Cause::DeliveryGaveUp)?;
        let mut tx = self.tx();
        tx.move_order(
            order,
            (order.status, to, Cause::DeliveryGaveUp),
            now,
            ", gsi1sk = :retry",
            None,
            &[],
            vec![(":retry", n(now.unix_seconds() + FAILED_RETRY_AFTER_SECONDS))],
        )?;
        Ok(self.transact(tx).await?.committed())
    }

    /// Access pattern: a fulfiller's definite failure (`paid | delivery_failed →
    /// delivery_failed`), its reason kept as the order's `exception`. The order leaves
    /// the sweep's index: retrying cannot help, an operator redelivers. Returns false if
    /// it was no longer in the status it was read in.
    pub async fn fail_delivery(
        &self,
        order: &OrderRecord,
        reason: &str,
        now: Timestamp,
    ) -> Result<bool> {
        let to = order.status.next(Cause::FulfilmentFailed)?;
        let mut tx = self.tx();
        tx.move_order(
            order,
            (order.status, to, Cause::FulfilmentFailed),
            now,
            ", #exception = :reason REMOVE gsi1pk, gsi1sk",
            None,
            &["exception"],
            vec![(":reason", s(reason))],
        )?;
        Ok(self.transact(tx).await?.committed())
    }

    /// Access pattern: a bundle's part `sku` failed for good, its reason kept as the
    /// order's `exception` and the part as `failed_part`. With `keep` the order becomes
    /// `partially_delivered` and its stock is settled at once (what its other parts
    /// delivered is sold, the failed part's units go back); otherwise `delivery_failed`,
    /// holding its stock as any undelivered order. Either way it leaves the sweep's
    /// index. Returns false if it was no longer in the status it was read in.
    pub async fn fail_part(
        &self,
        order: &OrderRecord,
        (sku, reason): (&str, &str),
        keep: bool,
        now: Timestamp,
    ) -> Result<bool> {
        let cause = if keep {
            Cause::PartFailed
        } else {
            Cause::FulfilmentFailed
        };
        let to = order.status.next(cause)?;
        let mut tx = self.tx();
        tx.move_order(
            order,
            (order.status, to, cause),
            now,
            ", #exception = :reason, failed_part = :part REMOVE gsi1pk, gsi1sk",
            None,
            &["exception"],
            vec![(":reason", s(reason)), (":part", s(sku))],
        )?;
        if keep {
            tx.settle_order_stock(order, |line| {
                order
                    .parts
                    .iter()
                    .find(|part| part.sku == line && part.sku != sku)
                    .map_or(0, |part| part.units)
            })?;
        }
        Ok(self.transact(tx).await?.committed())
    }

    /// Access pattern: an operator settles an order that needs a person (`→ resolved`),
    /// in one transaction with the action's audit record: the order leaves every index
    /// and the stock it still held is given back (`delivered(sku)` units of each
    /// product's were handed out and count as sold). Returns false if the order was no
    /// longer in the status it was read in (another action won).
    pub async fn resolve_order(
        &self,
        order: &OrderRecord,
        note: &OperatorNote,
        delivered: impl Fn(&str) -> u32,
        audit: &AuditEntry,
        now: Timestamp,
    ) -> Result<bool> {
        let to = order.status.next(Cause::Resolve)?;
        let mut tx = self.tx();
        tx.move_order_noted(
            order,
            (order.status, to, Cause::Resolve),
            now,
            " REMOVE gsi1pk, gsi1sk",
            None,
            &[],
            Vec::new(),
            Some(note),
        )?;
        // A payment that came after expiry finds its stock already given back, a
        // partly delivered bundle settled its when it stopped.
        if order.status.holds_stock() {
            tx.settle_order_stock(order, delivered)?;
        }
        tx.audit(audit)?;
        Ok(self.transact(tx).await?.committed())
    }

    /// Access pattern: an operator accepts an exception's money as it came
    /// (`payment_exception | paid_after_expiry → paid`), in one transaction with the
    /// audit record: the order joins the stuck-order index like any paid order, and an
    /// order whose stock went back at expiry reserves `reserve` again (on those counters
    /// only if they hold it).
    pub async fn accept_payment(
        &self,
        order: &OrderRecord,
        note: &OperatorNote,
        reserve: Option<&[StockShare]>,
        audit: &AuditEntry,
        now: Timestamp,
    ) -> Result<Accepted> {
        let to = order.status.next(Cause::AcceptPayment)?;
        let mut tx = self.tx();
        tx.move_to_paid(
            order,
            (order.status, to, Cause::AcceptPayment),
            now,
            reserve,
            ("", Vec::new()),
            Some(note),
        )?;
        tx.audit(audit)?;
        Ok(match self.transact(tx).await? {
            TxOutcome::Committed => Accepted::Moved,
            TxOutcome::Cancelled(c) if c.failed(ItemName::Order) => Accepted::Raced,
            TxOutcome::Cancelled(_) => Accepted::NoStock,
        })
    }

    /// Access pattern: an operator asks for the order to be delivered again, at `now`,
    /// if it is still in `status`, in one transaction with the audit record. False if it
    /// moved meanwhile.
    pub async fn request_redelivery(
        &self,
        order_id: &str,
        status: OrderStatus,
        audit: &AuditEntry,
        now: Timestamp,
    ) -> Result<bool> {
        let mut tx = self.tx();
        tx.update(
            ItemName::Order,
            key_item(keys::order(order_id)),
            "SET redelivery_requested_at = :now",
            Some("#status = :status"),
            &["status"],
            vec![(":now", n(now.0)), (":status", s(status.as_str()))],
        )?;
        tx.audit(audit)?;
        Ok(self.transact(tx).await?.committed())
    }

    /// Access pattern: a supplier is about to work on the order (`paid |
    /// delivery_failed → delivering`), which the sweep then sends round every
    /// `POLL_SUPPLIER_AFTER_SECONDS` to ask about its requests. Returns false if it was
    /// no longer in the status it was read in.
    pub async fn start_delivering(&self, order: &OrderRecord, now: Timestamp) -> Result<bool> {
        let to = order.status.next(Cause::AwaitSupplier)?;
        let mut tx = self.tx();
        tx.move_order(
            order,
            (order.status, to, Cause::AwaitSupplier),
            now,
            ", gsi1pk = :queue, gsi1sk = :due",
            None,
            &[],
            vec![
                (
                    ":queue",
                    s(keys::paid_index(shard_of(&order.order_id, INDEX_SHARDS))),
                ),
                (":due", n(now.unix_seconds() + POLL_SUPPLIER_AFTER_SECONDS)),
            ],
        )?;
        Ok(self.transact(tx).await?.committed())
    }

    // ---------- the sweep's index ----------

    /// Access pattern: one page (at most `limit` ids) of the orders due by `due_by` in
    /// one shard of one of the sweep's queues, from `after` (the previous page's
    /// `next`). The sweep handles a page before it asks for the next, so it never holds
    /// a whole backlog in memory and can stop between two pages.
    pub async fn due_orders(
        &self,
        queue: DueQueue,
        shard: u32,
        due_by: Timestamp,
        after: Option<DueCursor>,
        limit: i32,
    ) -> Result<DuePage> {
        let partition = match queue {
            DueQueue::Paid => keys::paid_index(shard),
            DueQueue::Pending => keys::pending_index(shard),
        };
        let output = self
            .query()
            .index_name(ORDER_INDEX)
            .key_condition_expression("gsi1pk = :pk AND gsi1sk <= :due")
            .expression_attribute_values(":pk", s(partition))
            .expression_attribute_values(":due", n(due_by.unix_seconds()))
            .limit(limit)
            .set_exclusive_start_key(after.map(|cursor| cursor.0))
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        let mut order_ids = Vec::with_capacity(output.items().len());
        for item in output.items() {
            if let Some(id) = keys::order_id_of(&get_s(item, "pk")?) {
                order_ids.push(id.to_owned());
            }
        }
        Ok(DuePage {
            order_ids,
            next: output.last_evaluated_key().cloned().map(DueCursor),
        })
    }

    /// Access pattern: expire a pending order and give its stock back, only if it is
    /// still pending and due. Returns false if another sweep or a payment won.
    pub async fn expire_order(&self, order: &OrderRecord, now: Timestamp) -> Result<bool> {
        let to = order.status.next(Cause::Expire)?;
        let mut tx = self.tx();
        tx.move_order(
            order,
            (order.status, to, Cause::Expire),
            now,
            " REMOVE gsi1pk, gsi1sk",
            Some("expires_at <= :now"),
            &[],
            vec![(":now", n(now.0))],
        )?;
        tx.move_order_stock(order, StockMove::Release)?;
        Ok(self.transact(tx).await?.committed())
    }

    /// Access pattern: push a stuck order's next re-queue time forward (soon for `paid`,
    /// later for `delivery_failed`), only while it is still in that state.
    pub async fn snooze_stuck_order(
        &self,
        order_id: &str,
        status: OrderStatus,
        now: Timestamp,
    ) -> Result<()> {
        let wait = match status {
            OrderStatus::DeliveryFailed => FAILED_RETRY_AFTER_SECONDS,
            OrderStatus::Delivering => POLL_SUPPLIER_AFTER_SECONDS,
            _ => STUCK_AFTER_SECONDS,
        };
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_item(keys::order(order_id))))
            .update_expression("SET gsi1sk = :next")
            .condition_expression("#status = :status")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":next", n(now.unix_seconds() + wait))
            .expression_attribute_values(":status", s(status.as_str()))
            .send()
            .await;
        match result {
            // Delivered meanwhile: nothing to snooze.
            Ok(_) => Ok(()),
            Err(err) if condition_failed(&err) => Ok(()),
            Err(err) => Err(Error::aws("dynamodb", err)),
        }
    }
}

#[cfg(feature = "fakes")]
impl Store {
    /// Test support (the `fakes` feature; never in a Lambda binary): stores new pending
    /// orders as `create_order` does, indexed for the sweep, but without their
    /// idempotency record, first event or stock reservation, 25 to a `BatchWriteItem`
    /// and several at once, so a test lays out a backlog of thousands in seconds. A test
    /// that counts stock reserves their units on the counters itself.
    pub async fn put_pending_orders_unchecked(&self, orders: &[OrderRecord]) -> Result<()> {
        use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
        use futures_util::{StreamExt, TryStreamExt, stream};

        let batches = orders
            .chunks(25)
            .map(|chunk| {
                chunk
                    .iter()
                    .map(|order| {
                        let put = PutRequest::builder()
                            .set_item(Some(pending_order_item(order)?))
                            .build();
                        super::built(put)
                            .map(|put| WriteRequest::builder().put_request(put).build())
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        stream::iter(batches)
            .map(|batch| self.batch_write(batch))
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn batch_write(&self, batch: Vec<aws_sdk_dynamodb::types::WriteRequest>) -> Result<()> {
        let mut pending = batch;
        let mut attempt = 0;
        while !pending.is_empty() {
            if attempt > 0 {
                super::backoff::before_retry(attempt, "batch write").await?;
            }
            attempt += 1;
            let output = self
                .client
                .batch_write_item()
                .request_items(&self.table, pending)
                .send()
                .await
                .map_err(|e| Error::aws("dynamodb", e))?;
            pending = output
                .unprocessed_items()
                .and_then(|left| left.get(&self.table))
                .cloned()
                .unwrap_or_default();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(shares: &[StockShare], quantity: u32) -> Item {
        let now = Timestamp(1_700_000_000_000);
        order_item(&OrderRecord {
            stock_shards: shares.to_vec(),
            ..crate::fakes::order_fixture("sku", quantity, now)
        })
        .unwrap()
    }

    #[test]
    fn an_order_keeps_the_counters_it_reserved_on() {
        let split = [
            StockShare { shard: 6, units: 7 },
            StockShare { shard: 2, units: 3 },
        ];
        let item = stored(&split, 10);
        assert_eq!(item.get("stock_shard"), Some(&n(6)));
        let order = OrderRecord::from_item(&item).unwrap();
        assert_eq!(order.stock_shards, split);
    }

    #[test]
    fn an_order_stored_before_splits_reads_as_its_one_counter() {
        let mut item = stored(&StockShare::whole(4, 3), 3);
        item.remove("stock_split");
        let order = OrderRecord::from_item(&item).unwrap();
        assert_eq!(order.stock_shards, StockShare::whole(4, 3));
    }

    #[test]
    fn a_split_that_does_not_add_up_is_corrupt() {
        let mut item = stored(&StockShare::whole(4, 3), 3);
        item.insert("quantity".into(), n(4));
        assert!(matches!(
            OrderRecord::from_item(&item),
            Err(Error::Corrupt(_))
        ));
    }
}
