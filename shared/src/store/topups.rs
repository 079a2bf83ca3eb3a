//! Direct top-ups in their order's partition: one delivery record per request sent to a
//! supplier (`DELIVERY#{seq}`, type `direct_topup`: its request id, supplier, status),
//! written before the request leaves so that no later attempt sends blindly; and the
//! supplier history (`SUPPLIERLOG#{id}`): every call, answer, callback and poll, for
//! support. Every change of a request's status is one transaction with its history line.

use super::Store;
use super::codec::{FromItem, Item, get_n, get_opt_s, get_s, get_u32, item, key_item, keys, n, s};
use super::tx::{ItemName, TxOutcome};
use crate::domain::money::Money;
use crate::domain::order::OrderStatus;
use crate::domain::product::DeliveryType;
use crate::domain::time::{Timestamp, new_id};
use crate::error::{Error, Result};

/// Where a request sent to a supplier stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TopUpStatus {
    /// Recorded, on its way: whether it arrived is not known yet.
    Sending,
    /// The supplier accepted it and has not finished.
    Pending,
    /// No answer (a timeout, a 5xx, an unreadable answer): it may or may not have
    /// happened. Queried before anything else is sent.
    Unknown,
    Success,
    Failed,
}

impl TopUpStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TopUpStatus::Sending => "sending",
            TopUpStatus::Pending => "pending",
            TopUpStatus::Unknown => "unknown",
            TopUpStatus::Success => "success",
            TopUpStatus::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Result<Self> {
        Ok(match text {
            "sending" => TopUpStatus::Sending,
            "pending" => TopUpStatus::Pending,
            "unknown" => TopUpStatus::Unknown,
            "success" => TopUpStatus::Success,
            "failed" => TopUpStatus::Failed,
            other => return Err(Error::Corrupt(format!("unknown top-up status {other:?}"))),
        })
    }

    /// Not finished: the supplier may still do it (or may have done it).
    pub fn is_open(self) -> bool {
        matches!(
            self,
            TopUpStatus::Sending | TopUpStatus::Pending | TopUpStatus::Unknown
        )
    }

    pub const OPEN: [TopUpStatus; 3] = [
        TopUpStatus::Sending,
        TopUpStatus::Pending,
        TopUpStatus::Unknown,
    ];
}

/// One request sent (or about to be sent) to a supplier for an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopUpAttempt {
    pub order_id: String,
    /// 0, 1, 2... in the order they were sent; the record's slot.
    pub seq: u32,
    /// `{order_id}-{seq}`: unique per (order, attempt, supplier).
    pub request_id: String,
    pub supplier_id: String,
    /// Rounds over the product's suppliers: a retry of a failed order starts the next.
    pub round: u32,
    pub status: TopUpStatus,
    pub supplier_ref: Option<String>,
    /// The supplier's reason for a failure (history and operators only).
    pub reason: Option<String>,
    pub account: String,
    pub sent_at: Timestamp,
    pub updated_at: String,
    /// What Kami owes the supplier if it succeeds (the order's supplier cost).
    pub cost: Option<Money>,
}

/// The request id of an order's `seq`-th top-up request.
pub fn topup_request_id(order_id: &str, seq: u32) -> String {
    format!("{order_id}-{seq:02}")
}

/// The order id and seq a request id names (`None` if it is not one of Kami's).
pub fn parse_topup_request_id(request_id: &str) -> Option<(&str, u32)> {
    let (order_id, seq) = request_id.rsplit_once('-')?;
    if order_id.is_empty() || seq.len() < 2 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((order_id, seq.parse().ok()?))
}

impl FromItem for TopUpAttempt {
    fn from_item(item: &Item) -> Result<Self> {
        Ok(TopUpAttempt {
            order_id: get_s(item, "order_id")?,
            seq: get_u32(item, "slot")?,
            request_id: get_s(item, "request_id")?,
            supplier_id: get_s(item, "supplier_id")?,
            round: get_u32(item, "round")?,
            status: TopUpStatus::parse(&get_s(item, "topup_status")?)?,
            supplier_ref: get_opt_s(item, "supplier_ref"),
            reason: get_opt_s(item, "reason"),
            account: get_s(item, "account")?,
            sent_at: Timestamp(get_n(item, "sent_at")?),
            updated_at: get_s(item, "updated_at")?,
            cost: match item.get("cost_amount") {
                Some(_) => Some(Money {
                    amount: get_n(item, "cost_amount")?,
                    currency: get_s(item, "cost_currency")?,
                }),
                None => None,
            },
        })
    }
}

/// One line of an order's supplier history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct SupplierLogEntry {
    pub at: String,
    pub request_id: String,
    pub supplier_id: String,
    /// `send`, `resend`, `answer`, `poll`, `callback`, `deadline`.
    pub action: String,
    /// What was learnt: `success`, `pending`, `failed`, `not_found`, `unreadable`,
    /// `no_answer`, `sent`, or for a callback that changed nothing `ignored_*`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supplier_ref: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl FromItem for SupplierLogEntry {
    fn from_item(item: &Item) -> Result<Self> {
        Ok(SupplierLogEntry {
            at: get_s(item, "at")?,
            request_id: get_s(item, "request_id")?,
            supplier_id: get_s(item, "supplier_id")?,
            action: get_s(item, "action")?,
            status: get_s(item, "log_status")?,
            supplier_ref: get_opt_s(item, "supplier_ref"),
            reason: get_opt_s(item, "reason"),
        })
    }
}

pub(crate) fn is_supplier_log(sk: &str) -> bool {
    sk.starts_with(keys::SUPPLIER_LOG_PREFIX)
}

fn log_item(order_id: &str, entry: &SupplierLogEntry) -> Item {
    let mut stored = item(
        keys::supplier_log(order_id, &new_id()),
        "supplier_log",
        [
            ("at", s(&entry.at)),
            ("request_id", s(&entry.request_id)),
            ("supplier_id", s(&entry.supplier_id)),
            ("action", s(&entry.action)),
            ("log_status", s(&entry.status)),
        ],
    );
    for (name, value) in [
        ("supplier_ref", &entry.supplier_ref),
        ("reason", &entry.reason),
    ] {
        if let Some(value) = value {
            stored.insert(name.to_owned(), s(value));
        }
    }
    stored
}

/// A change of a request's status.
#[derive(Debug, Clone)]
pub struct TopUpChange<'a> {
    pub to: TopUpStatus,
    /// When it changed: a success's payable is owed from then.
    pub at: Timestamp,
    pub supplier_ref: Option<&'a str>,
    pub reason: Option<&'a str>,
}

/// How opening a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenAttempt {
    Opened,
    /// Another worker recorded a request in this slot first.
    SlotTaken,
    /// The order no longer awaits delivery.
    NotPayable,
}

impl Store {
    /// Access pattern: record a request before it is sent (status `sending`), with its
    /// history line, only if its slot is free and the order still awaits delivery.
    pub async fn open_topup_attempt(
        &self,
        attempt: &TopUpAttempt,
        log: &SupplierLogEntry,
    ) -> Result<OpenAttempt> {
        let mut stored = item(
            keys::delivery(&attempt.order_id, attempt.seq),
            "delivery",
            [
                ("type", s(DeliveryType::DirectTopup.as_str())),
                ("order_id", s(&attempt.order_id)),
                ("slot", n(attempt.seq)),
                ("request_id", s(&attempt.request_id)),
                ("supplier_id", s(&attempt.supplier_id)),
                ("round", n(attempt.round)),
                ("topup_status", s(attempt.status.as_str())),
                ("account", s(&attempt.account)),
                ("sent_at", n(attempt.sent_at.0)),
                ("updated_at", s(&attempt.updated_at)),
            ],
        );
        if let Some(cost) = &attempt.cost {
            stored.insert("cost_amount".to_owned(), n(cost.amount));
            stored.insert("cost_currency".to_owned(), s(&cost.currency));
        }
        let mut tx = self.tx();
        tx.put(ItemName::Slot, stored, Some("attribute_not_exists(pk)"))?;
        tx.check(
            ItemName::Order,
            key_item(keys::order(&attempt.order_id)),
            "#status IN (:paid, :delivering, :failed)",
            &["status"],
            vec![
                (":paid", s(OrderStatus::Paid.as_str())),
                (":delivering", s(OrderStatus::Delivering.as_str())),
                (":failed", s(OrderStatus::DeliveryFailed.as_str())),
            ],
        )?;
        tx.put(
            ItemName::SupplierLog,
            log_item(&attempt.order_id, log),
            None,
        )?;
        Ok(match self.transact(tx).await? {
            TxOutcome::Committed => OpenAttempt::Opened,
            TxOutcome::Cancelled(c) if c.failed(ItemName::Slot) => OpenAttempt::SlotTaken,
            TxOutcome::Cancelled(_) => OpenAttempt::NotPayable,
        })
    }

    /// Access pattern: move a request to `change.to` if its status is one of `from`,
    /// with its history line. False (nothing written) if it was not.
    pub async fn change_topup_attempt(
        &self,
        attempt: &TopUpAttempt,
        from: &[TopUpStatus],
        change: &TopUpChange<'_>,
        log: &SupplierLogEntry,
    ) -> Result<bool> {
        let mut expression = "SET topup_status = :to, updated_at = :at".to_owned();
        let mut values = vec![(":to", s(change.to.as_str())), (":at", s(&log.at))];
        if let Some(supplier_ref) = change.supplier_ref {
            expression.push_str(", supplier_ref = :ref");
            values.push((":ref", s(supplier_ref)));
        }
        if let Some(reason) = change.reason {
            expression.push_str(", #reason = :reason");
            values.push((":reason", s(reason)));
        }
        let placeholders: Vec<String> = (0..from.len()).map(|i| format!(":from{i}")).collect();
        for (placeholder, status) in placeholders.iter().zip(from) {
            values.push((placeholder.as_str(), s(status.as_str())));
        }
        let condition = format!("topup_status IN ({})", placeholders.join(", "));
        let mut tx = self.tx();
        tx.update(
            ItemName::Slot,
            key_item(keys::delivery(&attempt.order_id, attempt.seq)),
            &expression,
            Some(&condition),
            if change.reason.is_some() {
                &["reason"]
            } else {
                &[]
            },
            values,
        )?;
        tx.put(
            ItemName::SupplierLog,
            log_item(&attempt.order_id, log),
            None,
        )?;
        if change.to == TopUpStatus::Success {
            tx.owe_supplier(attempt, change.supplier_ref, change.at)?;
        }
        Ok(self.transact(tx).await?.committed())
    }

    /// Access pattern: a history line alone (a poll that learnt nothing new, a callback
    /// that changes nothing).
    pub async fn log_topup(&self, order_id: &str, log: &SupplierLogEntry) -> Result<()> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(log_item(order_id, log)))
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        Ok(())
    }

    /// Access pattern: one request of an order by its slot (strongly consistent); `None`
    /// if there is none or the slot holds something else.
    pub async fn get_topup_attempt(
        &self,
        order_id: &str,
        seq: u32,
    ) -> Result<Option<TopUpAttempt>> {
        let Some(stored) = self.get(keys::delivery(order_id, seq), true).await? else {
            return Ok(None);
        };
        if get_opt_s(&stored, "type").as_deref() != Some(DeliveryType::DirectTopup.as_str()) {
            return Ok(None);
        }
        TopUpAttempt::from_item(&stored).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_name_their_order_and_slot() {
        let id = topup_request_id("01JD0000000000000000000000", 3);
        assert_eq!(id, "01JD0000000000000000000000-03");
        assert_eq!(
            parse_topup_request_id(&id),
            Some(("01JD0000000000000000000000", 3))
        );
        for bad in ["", "-03", "01JD-3", "01JD-x1", "01JD"] {
            assert_eq!(parse_topup_request_id(bad), None, "{bad}");
        }
    }
}
