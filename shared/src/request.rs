//! Request bodies: how a use case's input is read from JSON, naming the field at fault.

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Storefront and webhook bodies are small; key imports may be large (API Gateway's
/// own limit is 10 MB, Lambda's synchronous payload 6 MB).
pub const MAX_SMALL_BODY: usize = 64 * 1024;
pub const MAX_IMPORT_BODY: usize = 6 * 1024 * 1024;

/// A type that a route takes as its JSON body.
pub trait RequestBody: DeserializeOwned {
    const LIMIT: usize = MAX_SMALL_BODY;

    /// The stable code for a bad value at `path` (`quantity` → `invalid_quantity`),
    /// where the API has one; `invalid_json` otherwise.
    fn field_code(_path: &str) -> Option<&'static str> {
        None
    }
}

/// Parses `bytes` as `T`, naming the path of the field at fault.
pub fn parse_json<T: RequestBody>(bytes: &[u8]) -> Result<T> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() || path == "." {
            return Error::invalid_json(inner);
        }
        match T::field_code(&path) {
            Some(code) => Error::invalid_field(code, &path, format!("{path}: {inner}")),
            None => Error::InvalidJson {
                message: format!("request body field {path} is not valid: {inner}"),
                path: Some(path),
            },
        }
    })?;
    deserializer.end().map_err(Error::invalid_json)?;
    Ok(value)
}
