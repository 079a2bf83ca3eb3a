//! The local DynamoDB (moto behind `infra/kami_local/moto_serve.py`) keeps the guarantee
//! a retried `TransactWriteItems` relies on: the SDK sends one `ClientRequestToken` per
//! call and keeps it across its own retries, so a retry after a lost answer must not run
//! a committed transaction twice (a bulk import once reported its own keys as duplicates
//! when it did; docs/bench.md).

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};
use kami_shared::domain::time::new_id;
use kami_tests::*;

fn increment(table: &str, pk: &str, by: i64) -> TransactWriteItem {
    let update = Update::builder()
        .table_name(table)
        .key("pk", AttributeValue::S(pk.to_owned()))
        .key("sk", AttributeValue::S("COUNT".to_owned()))
        .update_expression("ADD #n :by")
        .expression_attribute_names("#n", "n")
        .expression_attribute_values(":by", AttributeValue::N(by.to_string()))
        .build()
        .expect("update");
    TransactWriteItem::builder().update(update).build()
}

#[tokio::test]
async fn a_transaction_retried_with_its_token_commits_once() {
    let client = aws_sdk_dynamodb::Client::new(&sdk_config().await);
    let table = stack().env["KAMI_TABLE"].clone();
    let pk = format!("TEST#token#{}", new_id());
    let token = new_id();
    let send = |by: i64, token: String| {
        client
            .transact_write_items()
            .transact_items(increment(&table, &pk, by))
            .client_request_token(token)
            .send()
    };

    send(1, token.clone()).await.expect("first call commits");
    send(1, token.clone())
        .await
        .expect("the same call again succeeds");
    let mismatch = send(5, token.clone())
        .await
        .expect_err("the same token with another request is refused");
    assert!(
        matches!(
            mismatch.as_service_error(),
            Some(TransactWriteItemsError::IdempotentParameterMismatchException(_))
        ),
        "{mismatch:?}"
    );
    send(1, new_id()).await.expect("a new token is a new call");

    let item = client
        .get_item()
        .table_name(&table)
        .key("pk", AttributeValue::S(pk.clone()))
        .key("sk", AttributeValue::S("COUNT".to_owned()))
        .consistent_read(true)
        .send()
        .await
        .expect("get")
        .item
        .expect("the counter exists");
    assert_eq!(
        item.get("n")
            .and_then(|n| n.as_n().ok())
            .map(String::as_str),
        Some("2"),
        "two distinct calls, each applied once"
    );
}
