//! The OpenAPI 3.1 spec of the whole API, assembled from the HTTP functions' routers
//! (the same `#[utoipa::path]` declarations that route requests), with its security
//! schemes. `docs/openapi.json` is that spec, checked by a unit test (it fails when the
//! code moved without it); checkout serves the committed file, so its binary does not
//! link the other functions' routers to build it (docs/bench.md, binary size).

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
#[cfg(test)]
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
#[cfg(test)]
use utoipa::openapi::{InfoBuilder, OpenApi, Server};

#[cfg(test)]
use super::{admin, checkout, distributor, merchant, operations, webhook};

/// The committed spec (`docs/openapi.json`), which the unit test below holds equal to
/// the one the routers generate.
const SPEC: &str = include_str!("../../../docs/openapi.json");

/// The spec as a value, generated from the routers.
#[cfg(test)]
pub fn spec() -> OpenApi {
    let mut spec = checkout::routes()
        .merge(admin::routes())
        .merge(operations::routes())
        .merge(webhook::routes())
        .merge(distributor::routes())
        .merge(merchant::routes())
        .into_openapi();
    spec.info = InfoBuilder::new()
        .title("Kami")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Selling virtual goods: card keys today. Every error is \
             `{\"error\": {\"code\", \"message\", \"path\"?}}` with a stable `code`.",
        ))
        .build();
    spec.servers = Some(vec![Server::new("/")]);
    let components = spec.components.get_or_insert_with(Default::default);
    let bearer = |description: &str| {
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(description))
                .build(),
        )
    };
    components.add_security_scheme(
        "admin_token",
        bearer(
            "The deployment's admin token (Secrets Manager), as `Authorization: Bearer <token>`",
        ),
    );
    components.add_security_scheme(
        "distributor_key",
        bearer(
            "A distributor's API key (`POST /admin/distributors/{id}/api-key`), as `Authorization: Bearer <key>`",
        ),
    );
    components.add_security_scheme(
        "merchant_key",
        bearer(
            "A merchant API key (`POST /admin/api-keys`) holding the route's scope, as `Authorization: Bearer <key>`",
        ),
    );
    components.add_security_scheme(
        "order_token",
        bearer(
            "The order's `access_token` from `POST /orders`, as `Authorization: Bearer <token>`",
        ),
    );
    components.add_security_scheme(
        "stripe_signature",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "Stripe-Signature",
            "Stripe's HMAC-SHA256 signature of the raw body with a timestamp (t=..., v1=...)",
        ))),
    );
    components.add_security_scheme(
        "provider_signature",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "Wechatpay-Signature",
            "The channel provider's own signature, verified with the channel's keys: Alipay's RSA2 `sign` in the form body, WeChat Pay's `Wechatpay-Signature` (with `-Timestamp`, `-Nonce`, `-Serial`), Stripe's `Stripe-Signature`",
        ))),
    );
    components.add_security_scheme(
        "supplier_signature",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "X-Kami-Signature",
            "Hex HMAC-SHA256 under the supplier's secret of `{X-Kami-Timestamp}.{raw body}`; the timestamp within 300 s (docs/suppliers.md)",
        ))),
    );
    spec
}

/// The spec as pretty JSON, the text of `docs/openapi.json`.
#[cfg(test)]
pub fn spec_json() -> String {
    match spec().to_pretty_json() {
        Ok(text) => text + "\n",
        Err(err) => {
            tracing::error!(error = %err, "OpenAPI spec did not serialise");
            String::new()
        }
    }
}

/// This API's OpenAPI 3.1 description.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 spec", content_type = "application/json"))
)]
pub async fn get_spec() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        SPEC,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn docs_copy() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json")
    }

    /// `docs/openapi.json` is the served spec: CI fails when the code moved without it.
    /// `KAMI_WRITE_OPENAPI=1 cargo test -p kami-shared --lib openapi` rewrites it.
    #[test]
    fn docs_openapi_json_is_the_generated_spec() {
        let generated = spec_json();
        if std::env::var_os("KAMI_WRITE_OPENAPI").is_some() {
            std::fs::write(docs_copy(), &generated).unwrap();
        }
        let committed = std::fs::read_to_string(docs_copy()).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/openapi.json is stale: run KAMI_WRITE_OPENAPI=1 cargo test -p kami-shared --lib openapi"
        );
    }

    #[test]
    fn every_operation_names_its_errors_and_security() {
        let spec = spec();
        assert!(matches!(
            spec.openapi,
            utoipa::openapi::OpenApiVersion::Version31
        ));
        let mut operations = 0;
        for (path, item) in &spec.paths.paths {
            for (method, operation) in [
                ("get", &item.get),
                ("post", &item.post),
                ("put", &item.put),
                ("delete", &item.delete),
            ] {
                let Some(operation) = operation else { continue };
                operations += 1;
                let statuses: Vec<&String> = operation.responses.responses.keys().collect();
                // A success, or for a redemption link the redirect that is its success.
                assert!(
                    statuses
                        .iter()
                        .any(|s| s.starts_with('2') || (path.starts_with("/r/") && *s == "302")),
                    "{method} {path}: {statuses:?}"
                );
                // Redemption links are opened by anyone holding one (the token is the key).
                let public = path == "/openapi.json"
                    || path.starts_with("/products")
                    || path == "/orders"
                    || path.starts_with("/r/");
                if !public {
                    assert!(
                        operation.security.is_some(),
                        "{method} {path} has no security"
                    );
                    assert!(
                        statuses.iter().any(|s| s.starts_with('4')),
                        "{method} {path} documents no client error"
                    );
                }
            }
        }
        assert_eq!(
            operations, 54,
            "one operation per route of the six HTTP functions"
        );
    }
}
