//! Merchant API keys: what a merchant's own systems present to the merchant API
//! (`functions/merchant-api`), each with the scopes it may use. Issued by an operator
//! (`POST /admin/api-keys`, the key shown once), listed without the key, revoked for
//! good. docs/licenses.md, "Merchant API keys".

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::app::audit::Actor;
use crate::config::Context;
use crate::domain::crypto::{sha256_hex, token_matches};
use crate::domain::time::new_id;
use crate::error::{Error, Result};
use crate::request::RequestBody;
use crate::store::{ApiKeyRecord, AuditSubject};

/// Prefix of merchant API keys (tells them apart from other secrets in a leak scan).
const API_KEY_PREFIX: &str = "km_";
const MAX_NAME_LEN: usize = 100;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    EntitlementsRead,
    EntitlementsRedeem,
    Licenses,
}

impl Scope {
    pub const ALL: [Scope; 3] = [
        Scope::EntitlementsRead,
        Scope::EntitlementsRedeem,
        Scope::Licenses,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::EntitlementsRead => "entitlements:read",
            Scope::EntitlementsRedeem => "entitlements:redeem",
            Scope::Licenses => "licenses",
        }
    }
}

/// `POST /admin/api-keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKeyRequest {
    /// 1 to 100 printable characters: what the key is for.
    #[schema(example = "license server")]
    pub name: String,
    /// One or more of `entitlements:read`, `entitlements:redeem`, `licenses`.
    #[schema(example = json!(["licenses"]))]
    pub scopes: Vec<String>,
}

impl RequestBody for NewApiKeyRequest {}

/// A new key: the only time `key` is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyCreated {
    pub api_key_id: String,
    /// Send as `Authorization: Bearer <key>`. Only its hash is kept.
    pub key: String,
    pub name: String,
    pub scopes: Vec<String>,
}

/// A key as listed (never the key).
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyView {
    pub api_key_id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyList {
    pub api_keys: Vec<ApiKeyView>,
}

impl From<&ApiKeyRecord> for ApiKeyView {
    fn from(record: &ApiKeyRecord) -> Self {
        ApiKeyView {
            api_key_id: record.api_key_id.clone(),
            name: record.name.clone(),
            scopes: record.scopes.clone(),
            created_at: record.created_at.clone(),
            revoked_at: record.revoked_at.clone(),
        }
    }
}

fn checked_scopes(requested: &[String]) -> Result<Vec<String>> {
    if requested.is_empty() {
        return Err(Error::invalid_field(
            "invalid_scope",
            "scopes",
            "scopes must name at least one scope",
        ));
    }
    let mut scopes = Vec::new();
    for (i, scope) in requested.iter().enumerate() {
        let known = Scope::ALL.iter().find(|known| known.as_str() == scope);
        let Some(known) = known else {
            return Err(Error::invalid_field(
                "invalid_scope",
                &format!("scopes[{i}]"),
                format!(
                    "unknown scope {scope:?}; use entitlements:read, entitlements:redeem or licenses"
                ),
            ));
        };
        if !scopes.iter().any(|kept: &String| kept == known.as_str()) {
            scopes.push(known.as_str().to_owned());
        }
    }
    Ok(scopes)
}

pub async fn create(
    ctx: &Context,
    actor: &Actor,
    request: NewApiKeyRequest,
) -> Result<ApiKeyCreated> {
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_LEN || name.chars().any(char::is_control)
    {
        return Err(Error::invalid_field(
            "invalid_name",
            "name",
            format!("name must be 1 to {MAX_NAME_LEN} printable characters"),
        ));
    }
    let scopes = checked_scopes(&request.scopes)?;
    let key = format!(
        "{API_KEY_PREFIX}{}",
        hex::encode(rand::random::<[u8; 32]>())
    );
    let record = ApiKeyRecord {
        api_key_id: new_id(),
        name: name.to_owned(),
        scopes,
        key_hash: sha256_hex(key.as_bytes()),
        created_at: ctx.clock.now().to_rfc3339(),
        revoked_at: None,
    };
    let view = ApiKeyView::from(&record);
    let audit = actor.entry(
        ctx,
        "api_key.create",
        (AuditSubject::ApiKey, &record.api_key_id),
        None,
        None,
        serde_json::to_string(&view).ok(),
    );
    ctx.store.create_api_key(&record, &audit).await?;
    Ok(ApiKeyCreated {
        api_key_id: record.api_key_id,
        key,
        name: record.name,
        scopes: record.scopes,
    })
}

pub async fn list(ctx: &Context) -> Result<ApiKeyList> {
    Ok(ApiKeyList {
        api_keys: ctx
            .store
            .api_keys()
            .await?
            .iter()
            .map(ApiKeyView::from)
            .collect(),
    })
}

/// Revokes a key for good; revoking it again changes nothing (204 both times).
pub async fn revoke(ctx: &Context, actor: &Actor, api_key_id: &str) -> Result<()> {
    if !crate::domain::time::is_id(api_key_id) {
        return Err(Error::NotFound("api key"));
    }
    let record = ctx
        .store
        .api_key(api_key_id)
        .await?
        .ok_or(Error::NotFound("api key"))?;
    if record.revoked_at.is_some() {
        return Ok(());
    }
    let before = serde_json::to_string(&ApiKeyView::from(&record)).ok();
    let at = ctx.clock.now().to_rfc3339();
    let after = serde_json::to_string(&ApiKeyView {
        revoked_at: Some(at.clone()),
        ..ApiKeyView::from(&record)
    })
    .ok();
    let audit = actor.entry(
        ctx,
        "api_key.revoke",
        (AuditSubject::ApiKey, api_key_id),
        None,
        before,
        after,
    );
    // False: revoked meanwhile by a twin request; the key is revoked either way.
    ctx.store.revoke_api_key(&record, &at, &audit).await?;
    Ok(())
}

/// The key a request presents, if it is live and holds `scope`: a missing, unknown or
/// revoked key is 401 `unauthorized`, a key without the scope 403 `forbidden`.
pub async fn authenticate(ctx: &Context, presented: &str, scope: Scope) -> Result<String> {
    let hash = sha256_hex(presented.as_bytes());
    let record = ctx
        .store
        .api_key_by_hash(&hash)
        .await?
        .filter(|record| record.revoked_at.is_none() && token_matches(presented, &record.key_hash))
        .ok_or(Error::Unauthorized)?;
    if !record.scopes.iter().any(|held| held == scope.as_str()) {
        return Err(Error::Forbidden(scope.as_str()));
    }
    Ok(record.api_key_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_checked_and_kept_once() {
        assert_eq!(
            checked_scopes(&["licenses".into(), "licenses".into()]).unwrap(),
            vec!["licenses".to_owned()]
        );
        for bad in [vec![], vec!["licenses".to_owned(), "admin".to_owned()]] {
            match checked_scopes(&bad).unwrap_err() {
                Error::InvalidRequest { code, .. } => assert_eq!(code, "invalid_scope"),
                other => panic!("{other:?}"),
            }
        }
    }
}
