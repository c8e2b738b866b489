//! The API's errors and how they are answered: `{"status": ..., "message": ...}`
//! with a status code, `Retry-After` where retrying helps, and the
//! connection closed rather than a refused body drained.

use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpResponse, ResponseError};
use serde::Serialize;

use crate::broker::PublishError;

/// Seconds a client is told to wait while the broker is away.
const RETRY_AFTER_SECS: u64 = 5;

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
    /// A message many times its body (see `messages::message_limit`).
    #[error("the message built from this body would be {qualifier}{size} bytes, more than the limit of {limit} ({expansion} times the body plus {allowance} bytes): send fewer, fuller items", expansion = super::messages::MAX_EXPANSION, allowance = super::messages::MESSAGE_ALLOWANCE)]
    Expanded {
        qualifier: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    #[error("too many requests for this environment; retry later")]
    RateLimited,
    #[error("the server is busy with other large requests; retry later")]
    Busy,
    /// The caller's environment holds its share of the connections.
    #[error("too many connections for this environment; retry later")]
    TooManyConnections,
    /// The environments are not listed yet (a replica just started).
    #[error("the server is starting; retry shortly")]
    Starting,
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
            ApiError::TooLarge(_) | ApiError::TooMuch(_) | ApiError::Expanded { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_)
            | ApiError::Busy
            | ApiError::Starting
            | ApiError::TooManyConnections
            | ApiError::Refused => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::BadRequest(_) => "bad request",
            ApiError::TooLarge(_) | ApiError::TooMuch(_) | ApiError::Expanded { .. } => {
                "payload too large"
            }
            ApiError::BodyTimeout(_) => "request timeout",
            ApiError::RateLimited => "too many requests",
            ApiError::Unavailable(_)
            | ApiError::Busy
            | ApiError::Starting
            | ApiError::TooManyConnections
            | ApiError::Refused => "unavailable",
        };
        let mut resp = HttpResponse::build(self.status_code());
        if matches!(
            self,
            ApiError::Unavailable(_)
                | ApiError::RateLimited
                | ApiError::Busy
                | ApiError::Starting
                | ApiError::TooManyConnections
                | ApiError::Refused
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
pub(super) fn respond(res: Result<HttpResponse, ApiError>, payload: web::Payload) -> HttpResponse {
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
