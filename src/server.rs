//! The ingestion API: workloads holding their environment's token post facts
//! and problems, or delete them by source; each request answers 200 only once
//! the broker confirmed the message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::pin::Pin;
use std::task::Poll;

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer, ResponseError};
use futures::StreamExt;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use crate::broker::{PublishError, Publisher};
use crate::contract::{
    normalise_fact_type, DirectDelete, DirectFacts, DirectProblems, Fact, FactsBody, Problem,
    DEFAULT_SEVERITY, DEFAULT_SOURCE, SEVERITIES, TYPE_DELETE_FACTS, TYPE_DELETE_PROBLEMS,
    TYPE_DIRECT_FACTS, TYPE_DIRECT_PROBLEMS,
};
use crate::metrics::Metrics;
use crate::token::{Claims, KeyRing, TokenError};

/// Seconds a client is told to wait while the broker is away.
const RETRY_AFTER_SECS: u64 = 5;
/// Longest Authorization header looked at; a JWT of ours is ~300 bytes.
const MAX_AUTH_HEADER: usize = 8 * 1024;

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
const BUDGET_UNIT: usize = 1024;

/// Shared by every worker of the HTTP server.
pub struct ApiState {
    pub keys: watch::Receiver<Arc<KeyRing>>,
    pub publisher: Option<Publisher>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub limiter: RateLimiter,
    budget: Arc<Semaphore>,
    budget_units: u32,
}

impl ApiState {
    pub fn new(
        keys: watch::Receiver<Arc<KeyRing>>,
        publisher: Option<Publisher>,
        metrics: Arc<Metrics>,
        limits: Limits,
        rate_limit: u32,
    ) -> Self {
        let budget_units = u32::try_from((limits.inflight_bytes / BUDGET_UNIT).max(1))
            .unwrap_or(u32::MAX >> 4)
            .min(Semaphore::MAX_PERMITS as u32);
        Self {
            keys,
            publisher,
            metrics,
            limits,
            limiter: RateLimiter::new(rate_limit),
            budget: Arc::new(Semaphore::new(budget_units as usize)),
            budget_units,
        }
    }

    /// Reserves memory for a body of up to `body_bytes` and what is built
    /// from it; `None` when the budget is spent by other requests.
    fn reserve(&self, body_bytes: usize) -> Option<OwnedSemaphorePermit> {
        let want = body_bytes
            .saturating_mul(BUDGET_PER_BODY_BYTE)
            .div_ceil(BUDGET_UNIT)
            .clamp(1, self.budget_units as usize) as u32;
        self.budget.clone().try_acquire_many_owned(want).ok()
    }

    fn refuse(&self, reason: &str) {
        self.metrics
            .refused
            .get_or_create(&crate::metrics::OutcomeLabels {
                outcome: reason.into(),
            })
            .inc();
    }
}

/// An error answered as `{"status": ..., "message": ...}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("request body is larger than the limit of {0} bytes")]
    TooLarge(usize),
    /// Too many items, or a message over the publish limit.
    #[error("{0}")]
    TooMuch(String),
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    #[error("too many requests for this environment; retry later")]
    RateLimited,
    #[error("the server is busy with other large requests; retry later")]
    Busy,
    /// The detail stays in the log; callers learn only that it failed.
    #[error("the message broker is unavailable; retry later")]
    Unavailable(String),
    /// A nack, or no queue bound (the message came back).
    #[error("the message broker refused the message; retry later")]
    Refused,
}

/// Every error: `{"status": ..., "message": ...}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    status: &'a str,
    message: String,
}

/// The answer once the broker confirmed the message.
#[derive(Serialize, utoipa::ToSchema)]
pub struct OkBody {
    /// Always "okay".
    message: String,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) | ApiError::TooMuch(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) | ApiError::Busy | ApiError::Refused => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::BadRequest(_) => "bad request",
            ApiError::TooLarge(_) | ApiError::TooMuch(_) => "payload too large",
            ApiError::BodyTimeout(_) => "request timeout",
            ApiError::RateLimited => "too many requests",
            ApiError::Unavailable(_) | ApiError::Busy | ApiError::Refused => "unavailable",
        };
        let mut resp = HttpResponse::build(self.status_code());
        if matches!(
            self,
            ApiError::Unavailable(_) | ApiError::RateLimited | ApiError::Busy | ApiError::Refused
        ) {
            resp.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECS.to_string()));
        }
        // A refused request may still be sending its body (or never stop):
        // close the connection instead of reading the rest.
        resp.force_close();
        resp.json(ErrorBody {
            status,
            message: self.to_string(),
        })
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::TooLarge { .. } => ApiError::TooMuch(e.to_string()),
            PublishError::Refused(_) => ApiError::Refused,
            other => ApiError::Unavailable(other.to_string()),
        }
    }
}

/// The answer to a request; an error keeps the request's payload alive until
/// the response is written, so a body the client is still sending (or never
/// ends) makes actix close the connection rather than drain it.
fn respond(res: Result<HttpResponse, ApiError>, payload: web::Payload) -> HttpResponse {
    match res {
        Ok(r) => r,
        Err(e) => e.error_response().map_body(|_, body| {
            BoxBody::new(HoldingPayload {
                body,
                _payload: payload,
            })
        }),
    }
}

/// A response body that owns the request's payload (see [`respond`]).
struct HoldingPayload {
    body: BoxBody,
    _payload: web::Payload,
}

impl MessageBody for HoldingPayload {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<web::Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}

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
    keys.verify(token).map_err(|e| {
        ApiError::Unauthorized(match e {
            TokenError::Missing => "missing token".into(),
            other => format!("invalid token: {other}"),
        })
    })
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

/// Refuses a request with more items than allowed, before any is parsed.
fn check_items(count: usize, max: usize, what: &str) -> Result<(), ApiError> {
    if count > max {
        return Err(ApiError::TooMuch(format!(
            "{count} {what} in one request, over the limit of {max} (--webservice-max-items)"
        )));
    }
    Ok(())
}

fn parse_json<'a, T: serde::Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("{what}: {e}")))
}

/// The raw items of a facts body: a bare array, or `{"facts": [...]}`
/// (see [`FactsBody`]).
fn facts_items(body: &[u8]) -> Result<Vec<&RawValue>, ApiError> {
    #[derive(serde::Deserialize)]
    struct Wrapped<'a> {
        #[serde(borrow)]
        facts: Vec<&'a RawValue>,
    }
    const WHAT: &str = "expected a JSON array of facts or an object with a \"facts\" array";
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(parse_json::<Wrapped>(body, WHAT)?.facts),
        _ => parse_json(body, WHAT),
    }
}

/// Each item must be a JSON object: serde would otherwise take an array as
/// a struct's fields in order.
fn objects<'a, T: serde::Deserialize<'a>>(
    items: Vec<&'a RawValue>,
    what: &str,
) -> Result<Vec<T>, ApiError> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            if !raw.get().starts_with('{') {
                return Err(ApiError::BadRequest(format!(
                    "{what} {i}: expected a JSON object"
                )));
            }
            serde_json::from_str(raw.get())
                .map_err(|e| ApiError::BadRequest(format!("{what} {i}: {e}")))
        })
        .collect()
}

fn default_source(s: &mut String) {
    if s.trim().is_empty() {
        *s = DEFAULT_SOURCE.to_string();
    }
}

/// Serialises the message, frees it, and publishes the bytes: only the
/// bytes are held while the confirm is awaited.
async fn publish<T: Serialize>(st: &ApiState, msg: T) -> Result<HttpResponse, ApiError> {
    let Some(publisher) = &st.publisher else {
        return Err(ApiError::Unavailable(
            "publishing to the broker is disabled".into(),
        ));
    };
    let body = serde_json::to_vec(&msg).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    drop(msg);
    if let Err(e) = publisher.publish_confirmed(&body).await {
        match &e {
            PublishError::TooLarge { .. } => st.refuse("too_large"),
            // Per request at debug: an outage must not flood the log (the
            // publisher logs the connection state once, metrics count).
            other => debug!(error = %other, "publish failed"),
        }
        return Err(e.into());
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({"message": "okay"})))
}

fn admit(req: &HttpRequest, st: &ApiState) -> Result<Claims, ApiError> {
    let claims = authenticate(req, st)?;
    if !st.limiter.allow(&claims.namespace) {
        return Err(ApiError::RateLimited);
    }
    Ok(claims)
}

/// Admits a request with a body: token, rate, then a share of the memory
/// budget for its body and message, held until the answer; then reads the
/// body within the limits.
async fn admit_with_body(
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

/// Publish facts for the token's environment.
#[utoipa::path(post, path = "/facts", tag = "facts", request_body = FactsBody,
    security(("token" = [])),
    responses(
        (status = 200, description = "the broker confirmed the message", body = OkBody),
        (status = 400, description = "malformed JSON or wrong field types", body = ErrorBody),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 408, description = "the body did not arrive within the body timeout", body = ErrorBody),
        (status = 413, description = "body, item count or message over its limit (the message says which)", body = ErrorBody),
        (status = 429, description = "rate limited; see Retry-After", body = ErrorBody),
        (status = 503, description = "broker unavailable, or the server busy with other large requests; see Retry-After", body = ErrorBody),
    ))]
async fn post_facts(
    req: HttpRequest,
    mut payload: web::Payload,
    st: web::Data<ApiState>,
) -> HttpResponse {
    let res = async {
        let (claims, _budget, body) = admit_with_body(&req, &mut payload, &st).await?;
        let message = facts_message(&claims, &body, st.limits.max_items)?;
        drop(body);
        debug!(namespace = %claims.namespace, count = message.facts.len(), "facts received");
        publish(&st, message).await
    }
    .await;
    respond(res, payload)
}

/// The `direct.facts` message for a body, or why the body is refused.
/// Identity comes from the token, never from the body.
pub fn facts_message(
    claims: &Claims,
    body: &[u8],
    max_items: usize,
) -> Result<DirectFacts, ApiError> {
    let env_id = environment_id(claims)?;
    let items = facts_items(body)?;
    check_items(items.len(), max_items, "facts")?;
    let facts: Vec<Fact> = objects(items, "fact")?;
    let facts = facts
        .into_iter()
        .enumerate()
        .map(|(i, mut f)| {
            f.environment = env_id.to_string();
            f.project_name = claims.project_name.clone();
            f.environment_name = claims.environment_name.clone();
            default_source(&mut f.source);
            f.fact_type = normalise_fact_type(&f.fact_type).into();
            if f.name.is_empty() {
                return Err(ApiError::BadRequest(format!("fact {i}: name is required")));
            }
            Ok(f)
        })
        .collect::<Result<Vec<Fact>, _>>()?;
    Ok(DirectFacts {
        message_type: TYPE_DIRECT_FACTS.into(),
        environment: env_id,
        project_name: claims.project_name.clone(),
        environment_name: claims.environment_name.clone(),
        facts,
    })
}

/// Publish problems for the token's environment.
#[utoipa::path(post, path = "/problems", tag = "problems", request_body = Vec<Problem>,
    security(("token" = [])),
    responses(
        (status = 200, description = "the broker confirmed the message", body = OkBody),
        (status = 400, description = "malformed JSON or wrong field types", body = ErrorBody),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 408, description = "the body did not arrive within the body timeout", body = ErrorBody),
        (status = 413, description = "body, item count or message over its limit (the message says which)", body = ErrorBody),
        (status = 429, description = "rate limited; see Retry-After", body = ErrorBody),
        (status = 503, description = "broker unavailable, or the server busy with other large requests; see Retry-After", body = ErrorBody),
    ))]
async fn post_problems(
    req: HttpRequest,
    mut payload: web::Payload,
    st: web::Data<ApiState>,
) -> HttpResponse {
    let res = async {
        let (claims, _budget, body) = admit_with_body(&req, &mut payload, &st).await?;
        let message = problems_message(&claims, &body, st.limits.max_items)?;
        drop(body);
        debug!(namespace = %claims.namespace, count = message.problems.len(), "problems received");
        publish(&st, message).await
    }
    .await;
    respond(res, payload)
}

/// The `direct.problems` message for a body, or why the body is refused.
pub fn problems_message(
    claims: &Claims,
    body: &[u8],
    max_items: usize,
) -> Result<DirectProblems, ApiError> {
    let env_id = environment_id(claims)?;
    let items: Vec<&RawValue> = parse_json(body, "expected a JSON array of problems")?;
    check_items(items.len(), max_items, "problems")?;
    let problems: Vec<Problem> = objects(items, "problem")?;
    let problems = problems
        .into_iter()
        .enumerate()
        .map(|(i, mut p)| {
            p.environment = env_id;
            default_source(&mut p.source);
            if p.severity.is_empty() {
                p.severity = DEFAULT_SEVERITY.into();
            }
            if !SEVERITIES.contains(&p.severity.as_str()) {
                return Err(ApiError::BadRequest(format!(
                    "problem {i}: severity {:?} is not one of {}",
                    p.severity,
                    SEVERITIES.join(", ")
                )));
            }
            if !p.severity_score.is_finite() {
                return Err(ApiError::BadRequest(format!(
                    "problem {i}: severityScore must be a number"
                )));
            }
            Ok(p)
        })
        .collect::<Result<Vec<Problem>, _>>()?;
    Ok(DirectProblems {
        message_type: TYPE_DIRECT_PROBLEMS.into(),
        environment: env_id,
        project_name: claims.project_name.clone(),
        environment_name: claims.environment_name.clone(),
        problems,
    })
}

async fn delete(
    req: HttpRequest,
    st: web::Data<ApiState>,
    message_type: &str,
    payload: web::Payload,
) -> HttpResponse {
    let res = delete_message(&req, &st, message_type).await;
    respond(res, payload)
}

async fn delete_message(
    req: &HttpRequest,
    st: &ApiState,
    message_type: &str,
) -> Result<HttpResponse, ApiError> {
    let claims = admit(req, st)?;
    let env_id = environment_id(&claims)?;
    let segment = |name| decode_segment(req.match_info().get(name).unwrap_or_default());
    let (source, service) = (segment("source"), segment("service"));
    debug!(namespace = %claims.namespace, source = %source.escape_debug(), service = %service.escape_debug(), kind = message_type, "delete received");
    publish(
        st,
        DirectDelete {
            message_type: message_type.into(),
            environment: env_id,
            source,
            service,
        },
    )
    .await
}

/// A path segment fully decoded, as the Go original sees it: actix decodes
/// every escape except `%2F`, `%2B` and `%25`, which it leaves as they are.
pub fn decode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3).unwrap_or("");
        let decoded = match code.to_ascii_uppercase().as_str() {
            "2F" => Some('/'),
            "2B" => Some('+'),
            "25" => Some('%'),
            _ => None,
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[i + 3..];
            }
            None => {
                out.push('%');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

macro_rules! delete_route {
    ($name:ident, $path:literal, $tag:literal, $kind:expr, $doc:literal $(, $param:literal)*) => {
        #[doc = $doc]
        #[utoipa::path(delete, path = $path, tag = $tag,
            params(("source" = String, Path, description = "the source whose entries are removed")
                $(, ($param = String, Path, description = "limit to this service"))*),
            security(("token" = [])),
            responses(
                (status = 200, description = "the broker confirmed the message", body = OkBody),
                (status = 400, description = "the token's environment id is not an integer", body = ErrorBody),
                (status = 401, description = "missing or invalid token", body = ErrorBody),
                (status = 429, description = "rate limited; see Retry-After", body = ErrorBody),
                (status = 503, description = "broker unavailable; see Retry-After", body = ErrorBody),
            ))]
        async fn $name(req: HttpRequest, payload: web::Payload, st: web::Data<ApiState>) -> HttpResponse {
            delete(req, st, $kind, payload).await
        }
    };
}

delete_route!(
    delete_facts,
    "/facts/{source}",
    "facts",
    TYPE_DELETE_FACTS,
    "Delete the environment's facts from a source."
);
delete_route!(
    delete_service_facts,
    "/facts/{source}/{service}",
    "facts",
    TYPE_DELETE_FACTS,
    "Delete the environment's facts from a source for one service.",
    "service"
);
delete_route!(
    delete_problems,
    "/problems/{source}",
    "problems",
    TYPE_DELETE_PROBLEMS,
    "Delete the environment's problems from a source."
);
delete_route!(
    delete_service_problems,
    "/problems/{source}/{service}",
    "problems",
    TYPE_DELETE_PROBLEMS,
    "Delete the environment's problems from a source for one service.",
    "service"
);

/// Liveness: the process serves requests.
#[utoipa::path(get, path = "/healthz", tag = "probes", responses((status = 200, description = "alive")))]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Readiness: the process answers requests. A broker outage does not take
/// the replica out of the Service: callers get 503 with Retry-After, which
/// they can act on, rather than connection errors. The broker's state is in
/// the body (and in metrics, the custom resource's status and Events).
#[utoipa::path(get, path = "/readyz", tag = "probes", responses(
    (status = 200, description = "serving; `broker` says whether the broker is connected")))]
async fn readyz(st: web::Data<ApiState>) -> HttpResponse {
    let broker = match &st.publisher {
        None => "disabled",
        Some(p) if p.is_connected() => "connected",
        Some(_) => "disconnected",
    };
    HttpResponse::Ok().json(serde_json::json!({"status": "ok", "broker": broker}))
}

async fn metrics(st: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(st.metrics.render())
}

/// Counts and logs every request (route pattern, not the raw path: sources
/// in paths are caller-chosen and would blow up label cardinality).
async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let st = req.app_data::<web::Data<ApiState>>().cloned();
    let method = req.method().clone();
    let res = next.call(req).await?;
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".into());
    let status = res.status().as_u16();
    if let Some(st) = st {
        st.metrics.observe_http(&route, status, started.elapsed());
    }
    // One line per request is debug: a flood of bad tokens must not flood
    // the log. Counts are in the metrics.
    debug!(%method, %route, status, took_ms = started.elapsed().as_millis() as u64, "request");
    Ok(res)
}

/// JSON errors for requests that match no route.
async fn not_found() -> HttpResponse {
    HttpResponse::NotFound()
        .json(serde_json::json!({"status": "not found", "message": "no such route"}))
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/facts", web::post().to(post_facts))
        .route("/problems", web::post().to(post_problems))
        .route("/facts/{source}", web::delete().to(delete_facts))
        .route(
            "/facts/{source}/{service}",
            web::delete().to(delete_service_facts),
        )
        .route("/problems/{source}", web::delete().to(delete_problems))
        .route(
            "/problems/{source}/{service}",
            web::delete().to(delete_service_problems),
        )
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/openapi.json", web::get().to(openapi_json));
}

async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(api_doc())
}

struct TokenScheme;

impl utoipa::Modify for TokenScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
        doc.components.get_or_insert_with(Default::default).add_security_scheme(
            "token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "The environment's token (mounted at /var/run/secrets/lagoon/dynamic/insights-token/INSIGHTS_TOKEN), raw or as `Bearer <token>`",
            ))),
        );
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "insights-remote ingestion API", description = "Facts and problems from Lagoon workloads, published to Lagoon core once the broker confirms them."),
    paths(post_facts, post_problems, delete_facts, delete_service_facts, delete_problems, delete_service_problems, healthz, readyz),
    components(schemas(Fact, Problem, FactsBody, OkBody, ErrorBody, crate::contract::FactType, crate::contract::Severity)),
    modifiers(&TokenScheme)
)]
struct ApiDoc;

/// The OpenAPI document served at `/openapi.json`.
pub fn api_doc() -> utoipa::openapi::OpenApi {
    <ApiDoc as utoipa::OpenApi>::openapi()
}

/// Accept backlog of every listener: a burst of connections waits in the
/// kernel instead of being refused.
pub const BACKLOG: i32 = 1024;

/// Binds a listening socket with [`BACKLOG`]; the error names the address.
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let named =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("listening on {addr}: {e}"));
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(named)?;
    socket.set_reuse_address(true).map_err(named)?;
    socket.bind(&addr.into()).map_err(named)?;
    socket.listen(BACKLOG).map_err(named)?;
    socket.set_nonblocking(true).map_err(named)?;
    Ok(socket.into())
}

/// The ingestion server. Signals are left to the caller, which drives one
/// graceful shutdown for everything.
pub fn ingestion_server(
    state: web::Data<ApiState>,
    listener: std::net::TcpListener,
) -> std::io::Result<Server> {
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(actix_web::middleware::from_fn(observe))
            .configure(routes)
            .default_service(web::to(not_found))
    })
    .disable_signals()
    .shutdown_timeout(30)
    .client_request_timeout(Duration::from_secs(10))
    .client_disconnect_timeout(Duration::from_secs(2))
    .max_connection_rate(256)
    .workers(
        std::env::var("WEBSERVICE_WORKERS")
            .ok()
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
    )
    .listen(listener)?
    .run())
}

/// Probes and metrics, on their own ports as in the Go original. Port 0
/// disables an address (Go's "0"); with none left, no server is started.
/// With `serve_metrics` false (metrics served securely elsewhere), these
/// ports answer only the probes.
pub fn ops_server(
    state: web::Data<ApiState>,
    addrs: &[std::net::SocketAddr],
    serve_metrics: bool,
) -> std::io::Result<Option<Server>> {
    let addrs: Vec<_> = addrs.iter().filter(|a| a.port() != 0).collect();
    if addrs.is_empty() {
        return Ok(None);
    }
    let mut server = HttpServer::new(move || {
        let app = App::new()
            .app_data(state.clone())
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz));
        let app = if serve_metrics {
            app.route("/metrics", web::get().to(metrics))
        } else {
            app
        };
        app.default_service(web::to(not_found))
    })
    .disable_signals()
    .workers(1);
    for addr in addrs {
        server = server.listen(listen(*addr)?)?;
    }
    Ok(Some(server.run()))
}

/// `/metrics` over HTTPS for callers the API server authenticates and
/// authorises (`--metrics-secure`).
pub fn secure_metrics_server(
    state: web::Data<ApiState>,
    addr: std::net::SocketAddr,
    auth: std::sync::Arc<crate::metrics_auth::MetricsAuth>,
    tls: rustls::ServerConfig,
) -> std::io::Result<Server> {
    let auth = web::Data::from(auth);
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(auth.clone())
            .route("/metrics", web::get().to(secure_metrics))
            .default_service(web::to(not_found))
    })
    .disable_signals()
    .workers(1)
    .listen_rustls_0_23(listen(addr)?, tls)?
    .run())
}

async fn secure_metrics(
    req: HttpRequest,
    st: web::Data<ApiState>,
    auth: web::Data<crate::metrics_auth::MetricsAuth>,
) -> HttpResponse {
    use crate::metrics_auth::Decision;
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    match auth.check(header).await {
        Decision::Allowed => metrics(st).await,
        Decision::Unauthenticated => HttpResponse::Unauthorized()
            .insert_header(("WWW-Authenticate", "Bearer"))
            .body("Unauthorized"),
        Decision::Forbidden => HttpResponse::Forbidden().body("Forbidden"),
        Decision::Unavailable => {
            HttpResponse::ServiceUnavailable().body("cannot reach the API server")
        }
    }
}

/// A token bucket per environment, so one workload cannot starve the others.
pub struct RateLimiter {
    per_second: u32,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `per_second == 0` disables limiting.
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn allow(&self, key: &str) -> bool {
        if self.per_second == 0 {
            return true;
        }
        let rate = f64::from(self.per_second);
        let burst = rate * 2.0;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        if buckets.len() > 100_000 {
            // Bounded memory: forget idle buckets.
            buckets.retain(|_, (_, t)| now.duration_since(*t) < Duration::from_secs(60));
        }
        let (tokens, last) = buckets.entry(key.to_string()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_decoded_like_go() {
        assert_eq!(decode_segment("a%2Bb"), "a+b");
        assert_eq!(decode_segment("a%2fb%2F"), "a/b/");
        assert_eq!(decode_segment("100%25"), "100%");
        // Decoded once: a literal "%2B" arrives as %252B.
        assert_eq!(decode_segment("%252B"), "%2B");
        assert_eq!(decode_segment("50%"), "50%");
        assert_eq!(decode_segment("plain"), "plain");
    }

    #[test]
    fn fact_types_and_severities_are_what_the_api_takes() {
        let claims = Claims {
            namespace: "ns".into(),
            environment_id: "42".into(),
            project_name: "p".into(),
            environment_name: "e".into(),
        };
        let m = facts_message(
            &claims,
            br#"[{"name":"a","type":"semver"},{"name":"b","type":"Url"},{"name":"c","type":"other"},{"name":"d"}]"#,
            10,
        )
        .unwrap();
        let types: Vec<_> = m.facts.iter().map(|f| f.fact_type.as_str()).collect();
        assert_eq!(types, ["SEMVER", "URL", "TEXT", "TEXT"]);
        let p = problems_message(&claims, br#"[{"identifier":"x"}]"#, 10).unwrap();
        assert_eq!(p.problems[0].severity, "UNKNOWN");
        assert!(
            problems_message(&claims, br#"[{"identifier":"x","severity":"SEVERE"}]"#, 10).is_err()
        );
    }

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

    #[test]
    fn facts_carry_the_canonical_environment_id() {
        let claims = Claims {
            namespace: "ns".into(),
            environment_id: "42".into(),
            project_name: "p".into(),
            environment_name: "e".into(),
        };
        let m = facts_message(&claims, br#"[{"name":"a"}]"#, 10).unwrap();
        assert_eq!(m.environment, 42);
        assert_eq!(m.facts[0].environment, "42");
        let plus = Claims {
            environment_id: "+42".into(),
            ..claims
        };
        assert!(facts_message(&plus, br#"[{"name":"a"}]"#, 10).is_err());
    }

    #[test]
    fn rate_limiter_limits_per_key() {
        let l = RateLimiter::new(5);
        let allowed = (0..50).filter(|_| l.allow("a")).count();
        assert!(
            (10..=11).contains(&allowed),
            "burst of 2x rate, got {allowed}"
        );
        assert!(l.allow("b"), "another environment has its own bucket");
        assert!(RateLimiter::new(0).allow("a"));
    }
}
