//! `functions/distributor-api`: what a distributor reads with its own API key (its
//! orders and its subtree's, its commissions and statements); never another's (a
//! sibling's or its parent's statement answers 404, as a missing one does).

use axum::Extension;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;

use super::{
    ApiResult, ApiRouter, AppState, ErrorBody, PathParam, Reply, bearer, json_or_csv, routes,
};
use crate::app::distributors::{
    self, DistributorCommissions, DistributorOrders, StatementList, StatementView,
};
use crate::error::{Error, Result};
use crate::store::AttributedOrder;

/// The distributor the request's API key belongs to.
#[derive(Debug, Clone)]
pub struct DistributorId(pub String);

pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(orders))
        .routes(routes!(order))
        .routes(routes!(commissions))
        .routes(routes!(statements))
        .routes(routes!(statement))
}

/// The distributor API's router, the key checked before any route (and before
/// not-found).
pub fn router(ctx: AppState) -> axum::Router {
    super::finish(routes(), ctx.clone()).layer(middleware::from_fn_with_state(ctx, authorize))
}

async fn authorize(
    State(ctx): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response> {
    let key = bearer(request.headers()).ok_or(Error::Unauthorized)?;
    let distributor_id = distributors::authenticate(&ctx, key).await?;
    request
        .extensions_mut()
        .insert(DistributorId(distributor_id));
    Ok(next.run(request).await)
}

/// Orders made through this distributor or any below it, newest first, each with the
/// level it sits at in the order's chain; buyers' emails masked.
#[utoipa::path(
    get,
    path = "/distributor/orders",
    tag = "distributor",
    security(("distributor_key" = [])),
    params(
        ("limit" = Option<i32>, Query, description = "1 to 100, default 50"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "One page", body = DistributorOrders),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    )
)]
async fn orders(
    State(ctx): State<AppState>,
    Extension(DistributorId(me)): Extension<DistributorId>,
    uri: axum::http::Uri,
) -> ApiResult<DistributorOrders> {
    Ok(Reply(
        StatusCode::OK,
        distributors::distributor_orders(&ctx, &me, uri.query()).await?,
    ))
}

/// One order made through this distributor or any below it (buyer's email masked);
/// another distributor's order answers 404, as a missing one does.
#[utoipa::path(
    get,
    path = "/distributor/orders/{order_id}",
    tag = "distributor",
    security(("distributor_key" = [])),
    params(("order_id" = String, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The order", body = AttributedOrder),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`order_not_found`", body = ErrorBody),
    )
)]
async fn order(
    State(ctx): State<AppState>,
    Extension(DistributorId(me)): Extension<DistributorId>,
    PathParam(order_id): PathParam<String>,
) -> ApiResult<AttributedOrder> {
    Ok(Reply(
        StatusCode::OK,
        distributors::distributor_order(&ctx, &me, &order_id).await?,
    ))
}

/// This distributor's own ledger entries, newest first; `status` filters.
#[utoipa::path(
    get,
    path = "/distributor/commissions",
    tag = "distributor",
    security(("distributor_key" = [])),
    params(
        ("status" = Option<String>, Query, description = "`pending`, `available`, `settled` or `cancelled`"),
        ("limit" = Option<i32>, Query, description = "1 to 100, default 50"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "One page", body = DistributorCommissions),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    )
)]
async fn commissions(
    State(ctx): State<AppState>,
    Extension(DistributorId(me)): Extension<DistributorId>,
    uri: axum::http::Uri,
) -> ApiResult<DistributorCommissions> {
    Ok(Reply(
        StatusCode::OK,
        distributors::distributor_commissions(&ctx, &me, uri.query()).await?,
    ))
}

/// This distributor's statements, newest first.
#[utoipa::path(
    get,
    path = "/distributor/statements",
    tag = "distributor",
    security(("distributor_key" = [])),
    params(
        ("limit" = Option<i32>, Query, description = "1 to 100, default 50"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "One page", body = StatementList),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    )
)]
async fn statements(
    State(ctx): State<AppState>,
    Extension(DistributorId(me)): Extension<DistributorId>,
    uri: axum::http::Uri,
) -> ApiResult<StatementList> {
    Ok(Reply(
        StatusCode::OK,
        distributors::distributor_statements(&ctx, &me, uri.query()).await?,
    ))
}

/// One of this distributor's statements with its lines; CSV with `Accept: text/csv`.
#[utoipa::path(
    get,
    path = "/distributor/statements/{statement_id}",
    tag = "distributor",
    security(("distributor_key" = [])),
    params(("statement_id" = String, Path, description = "The statement's id")),
    responses(
        (status = 200, description = "The statement", content((StatementView = "application/json"), (String = "text/csv"))),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`statement_not_found` (also another distributor's)", body = ErrorBody),
    )
)]
async fn statement(
    State(ctx): State<AppState>,
    Extension(DistributorId(me)): Extension<DistributorId>,
    PathParam(statement_id): PathParam<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let view = distributors::statement(&ctx, &statement_id, Some(&me)).await?;
    json_or_csv(&view, &headers)
}
