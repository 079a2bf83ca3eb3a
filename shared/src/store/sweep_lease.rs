//! The sweep's lease: one item that at most one sweep run holds at a time, so two runs
//! (a slow one and the next scheduled one, or a schedule delivered twice) never work
//! the same due orders at once. It is taken with a conditional put and lapses by
//! itself at `lease_until`, so a run killed before it released the lease blocks the
//! next runs only until then.

use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure;

use super::codec::{Item, get_n, get_s, item, key_item, keys, n, s};
use super::{LEASE_CLOCK_SKEW_MS, SWEEP_LEASE_MAX_MS, Store, condition_failed};
use crate::domain::time::Timestamp;
use crate::error::{Error, Result};

/// What became of a run's attempt to take the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SweepLease {
    /// This run holds it until the `until` it asked for.
    Taken,
    /// Another run holds it (`holder`, its run id) until `until`.
    Held { holder: String, until: Timestamp },
}

fn holder_of(old: Option<&Item>) -> SweepLease {
    let holder = old.and_then(|old| get_s(old, "holder").ok());
    let until = old.and_then(|old| get_n(old, "lease_until").ok());
    SweepLease::Held {
        holder: holder.unwrap_or_default(),
        until: Timestamp(until.unwrap_or_default()),
    }
}

impl Store {
    /// Access pattern: take the sweep's lease for the run `holder` until `until`, if
    /// no other run holds it: there is none, it was released, it lapsed before `now`, or
    /// it ends further than `SWEEP_LEASE_MAX_MS` (and `LEASE_CLOCK_SKEW_MS`) after `now`, longer than any run takes
    /// it (taken on a clock since moved back, as the local platform's can be).
    pub async fn take_sweep_lease(
        &self,
        holder: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<SweepLease> {
        let lease = item(
            keys::sweep_lease(),
            "sweep_lease",
            [
                ("holder", s(holder)),
                ("lease_until", n(until.0)),
                ("taken_at", s(now.to_rfc3339())),
            ],
        );
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(lease))
            .condition_expression(
                "attribute_not_exists(lease_until) OR lease_until < :now OR lease_until > :latest",
            )
            .expression_attribute_values(":now", n(now.0))
            .expression_attribute_values(
                ":latest",
                n(now
                    .0
                    .saturating_add(SWEEP_LEASE_MAX_MS + LEASE_CLOCK_SKEW_MS)),
            )
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(SweepLease::Taken),
            Err(err) if condition_failed(&err) => Ok(
                match holder_of(match err.as_service_error() {
                    Some(PutItemError::ConditionalCheckFailedException(failed)) => failed.item(),
                    _ => None,
                }) {
                    // Our own lease: the first put took effect and its answer was lost,
                    // so the SDK's retry found it (run ids are unique ULIDs).
                    SweepLease::Held { holder: found, .. } if found == holder => SweepLease::Taken,
                    other => other,
                },
            ),
            Err(err) => Err(Error::aws("dynamodb", err)),
        }
    }

    /// Access pattern: release the lease the run `holder` took, so the next run need not
    /// wait for it to lapse; false if it is no longer this run's (it lapsed and another
    /// run took it).
    pub async fn release_sweep_lease(&self, holder: &str) -> Result<bool> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_item(keys::sweep_lease())))
            .update_expression("REMOVE lease_until")
            .condition_expression("holder = :holder AND attribute_exists(lease_until)")
            .expression_attribute_values(":holder", s(holder))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(err) if condition_failed(&err) => Ok(false),
            Err(err) => Err(Error::aws("dynamodb", err)),
        }
    }
}
