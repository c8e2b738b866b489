//! Reading a request's body within its limits: size, item count, time, and a
//! share of the memory budget of all requests in flight.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use futures::StreamExt;
use tokio::sync::OwnedSemaphorePermit;

use super::auth::{admit, environment_id};
use super::{ApiError, ApiState};
use crate::token::Claims;

/// How much one request, and all requests together, may cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body.
    pub body_bytes: usize,
    /// Most facts or problems in one request.
    pub max_items: usize,
    /// Budget for the bodies and messages of all requests in flight.
    pub inflight_bytes: usize,
    /// Longest time to receive a whole body.
    pub body_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_bytes: 1024 * 1024,
            max_items: 10_000,
            inflight_bytes: 64 * 1024 * 1024,
            body_timeout: Duration::from_secs(10),
        }
    }
}

/// What a request reserves from the in-flight budget per byte of body: the
/// body, the parsed items, the message built from them (an item's fields
/// are filled in, so the message can be a few times the body) and the
/// broker client's copies of it. Measured with the hostile-load benchmark:
/// about 16 bytes of peak RSS per byte of a maximal body.
const BUDGET_PER_BODY_BYTE: usize = 16;
/// The budget counts in KiB so it fits a semaphore's permits.
pub(super) const BUDGET_UNIT: usize = 1024;

impl ApiState {
    /// Reserves memory for a body of up to `body_bytes` and what is built
    /// from it; `None` when the budget is spent by other requests.
    fn reserve(&self, body_bytes: usize) -> Option<OwnedSemaphorePermit> {
        let want = body_bytes
            .saturating_mul(BUDGET_PER_BODY_BYTE)
            .div_ceil(BUDGET_UNIT)
            .clamp(1, self.budget_units as usize) as u32;
        self.budget.clone().try_acquire_many_owned(want).ok()
    }
}

fn declared_length(req: &HttpRequest) -> Option<usize> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
}

/// Reads the body up to the limit and within the body timeout; larger
/// bodies are refused without being read in full.
async fn read_body(
    req: &HttpRequest,
    payload: &mut web::Payload,
    limits: &Limits,
) -> Result<web::BytesMut, ApiError> {
    let limit = limits.body_bytes;
    let declared = declared_length(req);
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::TooLarge(limit));
    }
    let read = async {
        let mut body = web::BytesMut::with_capacity(declared.unwrap_or(0));
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading body: {e}")))?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::TooLarge(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    tokio::time::timeout(limits.body_timeout, read)
        .await
        .unwrap_or(Err(ApiError::BodyTimeout(limits.body_timeout)))
}

/// Admits a request with a body: token, rate, then a share of the memory
/// budget for its body and message, held until the answer; then reads the
/// body within the limits.
pub(super) async fn admit_with_body(
    req: &HttpRequest,
    payload: &mut web::Payload,
    st: &ApiState,
) -> Result<(Claims, OwnedSemaphorePermit, web::BytesMut), ApiError> {
    let claims = admit(req, st)?;
    environment_id(&claims)?;
    let expected = declared_length(req)
        .unwrap_or(st.limits.body_bytes)
        .min(st.limits.body_bytes);
    let Some(permit) = st.reserve(expected) else {
        st.refuse("busy");
        return Err(ApiError::Busy);
    };
    let body = read_body(req, payload, &st.limits).await.inspect_err(|e| {
        if matches!(e, ApiError::BodyTimeout(_)) {
            st.refuse("body_timeout");
        }
    })?;
    Ok((claims, permit, body))
}
