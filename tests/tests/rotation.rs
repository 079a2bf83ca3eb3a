//! Secret rotation revokes (docs/operations.md): a warm instance reads the admin token
//! and the Stripe webhook secrets again every `SECRETS_REFRESH_SECONDS` (60 by default),
//! so a rotated value stops working within that interval. Its own test binary (own
//! moto): these tests change the deployment's secrets.

use std::sync::Arc;

use kami_shared::Context;
use kami_shared::domain::time::{Timestamp, new_id};
use kami_shared::fakes::FakeClock;
use kami_tests::*;
use lambda_http::Body;

/// One test at a time: they rotate the same secrets.
static ROTATIONS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn put_secret(id_variable: &str, value: &str) {
    aws_sdk_secretsmanager::Client::new(&sdk_config().await)
        .put_secret_value()
        .secret_id(&stack().env[id_variable])
        .secret_string(value)
        .send()
        .await
        .expect("rotate the secret");
}

async fn admin_status(ctx: &Arc<Context>, token: &str) -> u16 {
    let auth = format!("Bearer {token}");
    operations(
        ctx,
        request(
            "GET",
            "/admin/payments/unmatched",
            &[("authorization", &auth)],
            Body::Empty,
        ),
    )
    .await
    .0
}

/// A warm context at `clock`, as a cold start at its time builds it.
async fn warm(clock: &Arc<FakeClock>) -> Arc<Context> {
    let ctx = context_on(clock.clone()).await;
    assert_eq!(admin_status(&ctx, ADMIN_TOKEN).await, 200);
    ctx
}

/// GIVEN a warm admin instance WHEN the admin token is rotated THEN the old token keeps
/// working until the refresh interval has passed (no read in between), and from then on
/// only the new one is accepted.
#[tokio::test]
async fn a_rotated_admin_token_is_refused_by_a_warm_instance_within_the_interval() {
    let _turn = ROTATIONS.lock().await;
    let clock = Arc::new(FakeClock::at(Timestamp::now()));
    let ctx = warm(&clock).await;
    let rotated = format!("rotated-admin-token-{}", new_id());
    put_secret("ADMIN_TOKEN_SECRET_ID", &rotated).await;

    clock.advance_seconds(59);
    assert_eq!(
        admin_status(&ctx, ADMIN_TOKEN).await,
        200,
        "not re-read yet"
    );
    clock.advance_seconds(2);
    assert_eq!(
        admin_status(&ctx, ADMIN_TOKEN).await,
        401,
        "old token revoked"
    );
    assert_eq!(admin_status(&ctx, &rotated).await, 200);

    put_secret("ADMIN_TOKEN_SECRET_ID", ADMIN_TOKEN).await;
    clock.advance_seconds(61);
    assert_eq!(admin_status(&ctx, ADMIN_TOKEN).await, 200, "restored");
}

/// GIVEN a warm webhook instance WHEN the endpoint secret is retired THEN an event signed
/// with it is refused after the interval, and one signed with the new secret is taken.
#[tokio::test]
async fn a_retired_stripe_webhook_secret_stops_verifying_within_the_interval() {
    let _turn = ROTATIONS.lock().await;
    let clock = Arc::new(FakeClock::at(Timestamp::now()));
    let ctx = warm(&clock).await;
    let send = |secret: String, clock: Arc<FakeClock>, ctx: Arc<Context>| async move {
        let payload = checkout_completed(&format!("evt_{}", new_id()), &new_id(), 100, "CNY");
        let signature = stripe_signature(&secret, now_at(&clock), &payload);
        send_webhook(&ctx, &signature, payload).await
    };
    let retired = STRIPE_SECRET.to_owned();
    let current = format!("whsec_rotated_{}", new_id());
    put_secret("STRIPE_WEBHOOK_SECRET_ID", &current).await;

    let (status, answer) = send(retired.clone(), clock.clone(), ctx.clone()).await;
    assert_eq!(status, 200, "still the old secret until re-read: {answer}");
    clock.advance_seconds(61);
    let (status, answer) = send(retired.clone(), clock.clone(), ctx.clone()).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("invalid_signature")),
        "{answer}"
    );
    let (status, answer) = send(current, clock.clone(), ctx.clone()).await;
    assert_eq!(status, 200, "{answer}");

    put_secret("STRIPE_WEBHOOK_SECRET_ID", &retired).await;
    clock.advance_seconds(61);
    let (status, _) = send(retired, clock.clone(), ctx.clone()).await;
    assert_eq!(status, 200, "restored");
}

/// A rotation to a value too weak to start with is refused, and so is the value it
/// replaced (fails closed); a Secrets Manager that cannot be read keeps the values in hand
/// (the operator is not locked out by an outage).
#[tokio::test]
async fn a_weak_rotation_fails_closed_and_an_unreadable_secret_keeps_the_last_value() {
    let _turn = ROTATIONS.lock().await;
    let clock = Arc::new(FakeClock::at(Timestamp::now()));
    let ctx = warm(&clock).await;

    put_secret("ADMIN_TOKEN_SECRET_ID", "short").await;
    clock.advance_seconds(61);
    assert_ne!(admin_status(&ctx, ADMIN_TOKEN).await, 200);
    assert_ne!(admin_status(&ctx, "short").await, 200);

    put_secret("ADMIN_TOKEN_SECRET_ID", ADMIN_TOKEN).await;
    clock.advance_seconds(61);
    assert_eq!(admin_status(&ctx, ADMIN_TOKEN).await, 200);

    // An instance whose reads fail: its secret ids point nowhere after its cold start.
    let lost = context_via_secret_ids(&clock).await;
    clock.advance_seconds(61);
    assert_eq!(
        admin_status(&lost, ADMIN_TOKEN).await,
        200,
        "kept through a failed read"
    );
}

/// A context that read its secrets at cold start from a secret that is then deleted.
async fn context_via_secret_ids(clock: &Arc<FakeClock>) -> Arc<Context> {
    let secrets = aws_sdk_secretsmanager::Client::new(&sdk_config().await);
    let name = format!("kami-test-admin-{}", new_id());
    let created = secrets
        .create_secret()
        .name(&name)
        .secret_string(ADMIN_TOKEN)
        .send()
        .await
        .expect("create a secret");
    let ctx = context_on_with(
        clock.clone(),
        &[("ADMIN_TOKEN_SECRET_ID", created.arn().expect("arn"))],
    )
    .await;
    assert_eq!(admin_status(&ctx, ADMIN_TOKEN).await, 200);
    secrets
        .delete_secret()
        .secret_id(&name)
        .force_delete_without_recovery(true)
        .send()
        .await
        .expect("delete the secret");
    ctx
}

fn now_at(clock: &FakeClock) -> i64 {
    use kami_shared::ports::Clock;
    clock.now().unix_seconds()
}
