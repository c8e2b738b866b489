//! Who is calling: the token in the Authorization header, the rate limit of
//! its environment, and the environment id Lagoon can store.

use actix_web::http::header;
use actix_web::HttpRequest;

use super::{ApiError, ApiState};
use crate::tenants::Refusal;
use crate::token::{Claims, TokenError};

/// Longest Authorization header looked at; a JWT of ours is ~300 bytes.
const MAX_AUTH_HEADER: usize = 8 * 1024;

/// Reads the caller's identity from the Authorization header: the raw token
/// (as Lagoon's clients send it) or `Bearer <token>`. The token itself never
/// reaches a log line or an error body.
fn authenticate(req: &HttpRequest, st: &ApiState) -> Result<Claims, ApiError> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Err(ApiError::Unauthorized(
            "missing Authorization header".into(),
        ));
    };
    if value.len() > MAX_AUTH_HEADER {
        return Err(ApiError::Unauthorized(
            "Authorization header is too long".into(),
        ));
    }
    let raw = value
        .to_str()
        .map_err(|_| ApiError::Unauthorized("Authorization header is not valid text".into()))?
        .trim();
    let token = match raw.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => raw,
    };
    let keys = st.keys.borrow().clone();
    let (claims, issued_at) = keys.verify_issued(token).map_err(|e| {
        ApiError::Unauthorized(match e {
            TokenError::Missing => "missing token".into(),
            other => format!("invalid token: {other}"),
        })
    })?;
    if let Some(tenants) = &st.tenants {
        tenants.admit(&claims, issued_at).map_err(|r| match r {
            Refusal::NotReady => ApiError::Starting,
            other => ApiError::Unauthorized(format!("invalid token: {other}")),
        })?;
    }
    Ok(claims)
}

/// The token's environment id, if Lagoon can store it: canonical digits
/// (no sign, no leading zero) from 1 to 2^31-1, the API's 32-bit `Int`.
/// Anything else would be dropped by the consumer or fail every API call.
pub fn environment_id(claims: &Claims) -> Result<i64, ApiError> {
    let id = &claims.environment_id;
    crate::contract::lagoon_environment_id(id).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "the token's EnvironmentId {:?} is not a Lagoon environment id (an integer from 1 to 2147483647)",
            id.escape_debug().to_string()
        ))
    })
}

pub(super) fn admit(req: &HttpRequest, st: &ApiState) -> Result<Claims, ApiError> {
    let claims = authenticate(req, st)?;
    // One environment holds at most its share of the connections.
    if let Some(tenant) = req.conn_data::<std::sync::Arc<super::Tenant>>() {
        if !tenant.attribute(&claims.namespace) {
            return Err(ApiError::TooManyConnections);
        }
    }
    if !st.limiter.allow(&claims.namespace) {
        return Err(ApiError::RateLimited);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_ids_must_be_canonical_32_bit() {
        let id = |s: &str| {
            environment_id(&Claims {
                namespace: "ns".into(),
                environment_id: s.into(),
                project_name: "p".into(),
                environment_name: "e".into(),
            })
            .ok()
        };
        assert_eq!(id("42"), Some(42));
        assert_eq!(id("1"), Some(1));
        assert_eq!(id("2147483647"), Some(2_147_483_647));
        for bad in [
            "+42",
            "0042",
            "0",
            "-1",
            "3000000000",
            "2147483648",
            "4 2",
            "",
            "42.0",
            "99999999999",
        ] {
            assert_eq!(id(bad), None, "{bad:?}");
        }
    }
}
