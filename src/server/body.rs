//! Reading a request's body within its limits: size, item count, time, and a
//! share of the memory budget of all requests in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::auth::{admit, environment_id};
use super::{ApiError, ApiState};
use crate::settings::Limits;
use crate::token::Claims;

/// What a request is charged in the in-flight budget per byte of body: the
/// body, the parsed items, the message built from them (an item's fields
/// are filled in, so the message can be a few times the body; see
/// `MAX_EXPANSION` in `handlers.rs`) and the broker client's copies of it.
/// Measured with the hostile-load benchmark: about 16 bytes of peak RSS
/// per byte of a maximal body.
const BUDGET_PER_BODY_BYTE: usize = 16;
/// The budget counts in KiB so it fits a semaphore's permits.
pub(super) const BUDGET_UNIT: usize = 1024;
/// A body is charged as it arrives, in steps of this many bytes (a small
/// post is charged 64 KiB: one environment can have 256 of them in flight
/// within its quarter of the default budget).
const CHARGE_STEP: usize = 4 * 1024;

/// The memory budget of all requests in flight, charged as their bodies
/// arrive (never from a declared `Content-Length`), with at most a fair
/// share of it held by one environment at once.
pub(super) struct Budget {
    free: Arc<Semaphore>,
    /// Units held per environment id.
    held: Mutex<HashMap<i64, u32>>,
    /// Most units one environment may hold.
    share: u32,
    /// Units held by all requests now (for metrics and tests).
    total_held: std::sync::atomic::AtomicU64,
}

impl Budget {
    pub(super) fn new(limits: &Limits) -> Self {
        let total = u32::try_from((limits.inflight_bytes / BUDGET_UNIT).max(1))
            .unwrap_or(u32::MAX >> 4)
            .min(Semaphore::MAX_PERMITS as u32);
        // A quarter of the budget, but never less than one largest body.
        let share = (total / 4).max(units(limits.body_bytes).min(total));
        Self {
            free: Arc::new(Semaphore::new(total as usize)),
            held: Mutex::new(HashMap::new()),
            share,
            total_held: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Bytes of budget held by all requests now.
    pub(super) fn held_bytes(&self) -> u64 {
        self.total_held.load(std::sync::atomic::Ordering::Relaxed) * BUDGET_UNIT as u64
    }

    /// An empty charge for `env`, grown as its body arrives.
    pub(super) fn charge(self: &Arc<Self>, env: i64) -> Charge {
        Charge {
            budget: self.clone(),
            env,
            units: 0,
            permit: None,
        }
    }
}

fn units(body_bytes: usize) -> u32 {
    u32::try_from(
        body_bytes
            .saturating_mul(BUDGET_PER_BODY_BYTE)
            .div_ceil(BUDGET_UNIT),
    )
    .unwrap_or(u32::MAX)
}

/// One request's part of the budget, given back when dropped.
pub(super) struct Charge {
    budget: Arc<Budget>,
    env: i64,
    units: u32,
    permit: Option<OwnedSemaphorePermit>,
}

impl Charge {
    /// Covers a body of `body_bytes` so far (rounded up to the next step,
    /// at most `cap`); `false` when the budget, or the environment's
    /// share of it, is spent.
    fn cover(&mut self, body_bytes: usize, cap: usize) -> bool {
        let want = units(
            body_bytes
                .max(1)
                .next_multiple_of(CHARGE_STEP)
                .min(cap.max(1)),
        );
        if want <= self.units {
            return true;
        }
        let more = want - self.units;
        let mut held = self.budget.held.lock().unwrap_or_else(|e| e.into_inner());
        let mine = held.get(&self.env).copied().unwrap_or(0);
        if mine + more > self.budget.share {
            return false;
        }
        let Ok(permit) = self.budget.free.clone().try_acquire_many_owned(more) else {
            return false;
        };
        held.insert(self.env, mine + more);
        self.budget
            .total_held
            .fetch_add(u64::from(more), std::sync::atomic::Ordering::Relaxed);
        self.units = want;
        match &mut self.permit {
            Some(p) => p.merge(permit),
            None => self.permit = Some(permit),
        }
        true
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.units == 0 {
            return;
        }
        self.budget
            .total_held
            .fetch_sub(u64::from(self.units), std::sync::atomic::Ordering::Relaxed);
        let mut held = self.budget.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.env) {
            *n = n.saturating_sub(self.units);
            if *n == 0 {
                held.remove(&self.env);
            }
        }
    }
}

fn declared_length(req: &HttpRequest) -> Option<usize> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
}

/// Reads the body up to the limit and within the body timeout, charging
/// the budget as it arrives; larger bodies are refused without being read
/// in full.
async fn read_body(
    req: &HttpRequest,
    payload: &mut web::Payload,
    limits: &Limits,
    charge: &mut Charge,
) -> Result<web::BytesMut, ApiError> {
    let limit = limits.body_bytes;
    let declared = declared_length(req);
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::TooLarge(limit));
    }
    if !charge.cover(0, limit) {
        return Err(ApiError::Busy);
    }
    let read = async {
        // Grown as bytes arrive: a declared length is not memory yet.
        let mut body = web::BytesMut::with_capacity(declared.unwrap_or(0).min(64 * 1024));
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading body: {e}")))?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::TooLarge(limit));
            }
            if !charge.cover(body.len() + chunk.len(), limit) {
                return Err(ApiError::Busy);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    tokio::time::timeout(limits.body_timeout, read)
        .await
        .unwrap_or(Err(ApiError::BodyTimeout(limits.body_timeout)))
}

/// Admits a request with a body: token, rate, memory pressure; then reads
/// the body within the limits, charging the environment's part of the
/// memory budget as it arrives, held until the answer.
pub(super) async fn admit_with_body(
    req: &HttpRequest,
    payload: &mut web::Payload,
    st: &ApiState,
) -> Result<(Claims, Charge, web::BytesMut), ApiError> {
    let claims = admit(req, st)?;
    let env = environment_id(&claims)?;
    if st.memory.shedding() {
        st.refuse("memory");
        return Err(ApiError::Busy);
    }
    let mut charge = st.budget.charge(env);
    let body = read_body(req, payload, &st.limits, &mut charge)
        .await
        .inspect_err(|e| match e {
            ApiError::BodyTimeout(_) => st.refuse("body_timeout"),
            ApiError::Busy => st.refuse("busy"),
            _ => {}
        })?;
    Ok((claims, charge, body))
}
