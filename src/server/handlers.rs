//! The ingestion routes: post facts and problems, delete them by source,
//! each answered once the broker confirmed the message. They are mounted,
//! with the probes, by [`super::openapi::routes`], which documents them.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use tracing::debug;

use super::auth::{admit, environment_id};
use super::body::admit_with_body;
use super::error::{respond, ErrorBody, OkBody};
use super::messages::{decode_segment, facts_message, message_limit, problems_message};
use super::{ApiError, ApiState};
use crate::broker::PublishError;
use crate::contract::{DirectDelete, FactsBody, Problem, TYPE_DELETE_FACTS, TYPE_DELETE_PROBLEMS};
use crate::token::Claims;

/// The answer once the broker confirmed the message ([`OkBody`]): a
/// constant, so the hot path builds no JSON value for it.
const OK_BODY: &str = r#"{"message":"okay"}"#;

/// Longest source or service in a DELETE path, decoded (Lagoon stores
/// sources of up to 300 characters).
pub const MAX_SEGMENT_BYTES: usize = 300;

/// Serialises the message, frees it, and publishes the bytes: only the
/// bytes are held while the confirm is awaited. `limit`: the largest
/// message allowed for the request.
async fn publish<T: Serialize>(
    st: &ApiState,
    msg: T,
    limit: usize,
) -> Result<HttpResponse, ApiError> {
    let Some(publisher) = &st.publisher else {
        return Err(ApiError::Unavailable(
            "publishing to the broker is disabled".into(),
        ));
    };
    let body = serde_json::to_vec(&msg).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    drop(msg);
    if body.len() > limit {
        return Err(ApiError::Expanded {
            qualifier: "",
            size: body.len(),
            limit,
        });
    }
    if let Err(e) = publisher.publish_confirmed(&body).await {
        match &e {
            PublishError::TooLarge { .. } => st.refuse("too_large"),
            // Per request at debug: an outage must not flood the log (the
            // publisher logs the connection state once, metrics count).
            other => debug!(error = %other, "publish failed"),
        }
        return Err(e.into());
    }
    Ok(HttpResponse::Ok()
        .insert_header(actix_web::http::header::ContentType::json())
        .body(OK_BODY))
}

/// Admits, reads and checks a body, then publishes the message built from
/// it; the body is freed before the confirm is awaited.
async fn post<M: Serialize>(
    req: HttpRequest,
    mut payload: web::Payload,
    st: web::Data<ApiState>,
    build: fn(&Claims, &[u8], usize) -> Result<M, ApiError>,
    count: fn(&M) -> usize,
    what: &'static str,
) -> HttpResponse {
    let res = async {
        let (claims, _charge, body) = admit_with_body(&req, &mut payload, &st).await?;
        let message = build(&claims, &body, st.limits.max_items)?;
        let limit = message_limit(body.len());
        drop(body);
        debug!(namespace = %claims.namespace, count = count(&message), "{what} received");
        publish(&st, message, limit).await
    }
    .await;
    if matches!(res, Err(ApiError::Expanded { .. })) {
        st.refuse("expansion");
    }
    respond(res, payload)
}

macro_rules! post_route {
    ($name:ident, $path:literal, $tag:literal, $body:ty, $build:expr, $count:expr, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = $tag, request_body = $body,
            security(("token" = [])),
            responses(
                (status = 200, description = "the broker confirmed the message", body = OkBody),
                (status = 400, description = "malformed JSON or wrong field types", body = ErrorBody),
                (status = 401, description = "missing or invalid token", body = ErrorBody),
                (status = 408, description = "the body did not arrive within the body timeout", body = ErrorBody),
                (status = 413, description = "body, item count or message over its limit, or a message more than 8 times its body plus 64 KiB (the message says which)", body = ErrorBody),
                (status = 429, description = "rate limited; see Retry-After", body = ErrorBody),
                (status = 503, description = "broker unavailable, or the server busy with other large requests; see Retry-After", body = ErrorBody),
            ))]
        pub(super) async fn $name(
            req: HttpRequest,
            payload: web::Payload,
            st: web::Data<ApiState>,
        ) -> HttpResponse {
            post(req, payload, st, $build, $count, $tag).await
        }
    };
}

post_route!(
    post_facts,
    "/facts",
    "facts",
    FactsBody,
    facts_message,
    |m| m.facts.len(),
    "Publish facts for the token's environment."
);
post_route!(
    post_problems,
    "/problems",
    "problems",
    Vec<Problem>,
    problems_message,
    |m| m.problems.len(),
    "Publish problems for the token's environment."
);

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
    for (what, value) in [("source", &source), ("service", &service)] {
        if value.len() > MAX_SEGMENT_BYTES {
            return Err(ApiError::BadRequest(format!(
                "the {what} is longer than {MAX_SEGMENT_BYTES} bytes"
            )));
        }
    }
    debug!(namespace = %claims.namespace, source = %source.escape_debug(), service = %service.escape_debug(), kind = message_type, "delete received");
    publish(
        st,
        DirectDelete {
            message_type: message_type.into(),
            environment: env_id,
            source,
            service,
        },
        usize::MAX,
    )
    .await
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
                (status = 400, description = "the token's environment id is not an integer, or the source or service is longer than 300 bytes", body = ErrorBody),
                (status = 401, description = "missing or invalid token", body = ErrorBody),
                (status = 429, description = "rate limited; see Retry-After", body = ErrorBody),
                (status = 503, description = "broker unavailable; see Retry-After", body = ErrorBody),
            ))]
        pub(super) async fn $name(req: HttpRequest, payload: web::Payload, st: web::Data<ApiState>) -> HttpResponse {
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
