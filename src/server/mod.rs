//! The ingestion API: workloads holding their environment's token post facts
//! and problems, or delete them by source; each request answers 200 only once
//! the broker confirmed the message.
//!
//! One file per concern; every public item is re-exported here, so callers
//! use `crate::server::...` and never a file's path:
//!
//! | file | holds | touch it to |
//! | --- | --- | --- |
//! | `mod.rs` | [`ApiState`], [`listen`] and [`BACKLOG`], [`ingestion_server`] | add shared state or tune the ingestion server |
//! | `handlers.rs` | the routes: post facts and problems, the deletes (`delete_route!`), publishing, [`routes`] | add or change a route (then add it to `openapi.rs`) |
//! | `messages.rs` | pure domain checks: [`facts_message`], [`problems_message`], [`decode_segment`] | change what a body may hold; unit-testable without a server |
//! | `auth.rs` | the Authorization header, the rate-limit check, [`environment_id`] | change how callers are identified |
//! | `body.rs` | [`Limits`], the in-flight memory budget, reading a body | change how much a request may cost |
//! | `error.rs` | [`ApiError`] and how errors are answered | add an error; its status and body are the contract |
//! | `rate_limit.rs` | [`RateLimiter`], a token bucket per environment (governor) | change the rate limit |
//! | `ops.rs` | probes, `/metrics`, the request metrics middleware, [`ops_server`], [`secure_metrics_server`] | change what operations see |
//! | `openapi.rs` | the OpenAPI document, [`api_doc`] | list a new route or schema |
//!
//! Error texts, status codes, headers and the OpenAPI document are what
//! clients and `hack/schemathesis.sh` rely on: change them only on purpose.

mod auth;
mod body;
mod error;
mod handlers;
mod messages;
mod openapi;
mod ops;
mod rate_limit;

use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use tokio::sync::{watch, Semaphore};

use crate::broker::Publisher;
use crate::metrics::Metrics;
use crate::token::KeyRing;

pub use auth::environment_id;
pub use body::Limits;
pub use error::{ApiError, ErrorBody, OkBody};
pub use handlers::routes;
pub use messages::{decode_segment, facts_message, problems_message};
pub use openapi::api_doc;
pub use ops::{ops_server, secure_metrics_server};
pub use rate_limit::RateLimiter;

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
        let budget_units = u32::try_from((limits.inflight_bytes / body::BUDGET_UNIT).max(1))
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

    fn refuse(&self, reason: &str) {
        self.metrics
            .refused
            .get_or_create(&crate::metrics::OutcomeLabels {
                outcome: reason.into(),
            })
            .inc();
    }
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

/// Worker threads of the ingestion server when not configured: one per core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// The ingestion server with [`default_workers`]. Signals are left to the
/// caller, which drives one graceful shutdown for everything.
pub fn ingestion_server(
    state: web::Data<ApiState>,
    listener: std::net::TcpListener,
) -> std::io::Result<Server> {
    ingestion_server_with_workers(state, listener, default_workers())
}

/// The ingestion server with `workers` worker threads
/// (`--webservice-workers`). Signals are left to the caller, which drives
/// one graceful shutdown for everything.
pub fn ingestion_server_with_workers(
    state: web::Data<ApiState>,
    listener: std::net::TcpListener,
    workers: usize,
) -> std::io::Result<Server> {
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(actix_web::middleware::from_fn(ops::observe))
            .configure(routes)
            .default_service(web::to(ops::not_found))
    })
    .disable_signals()
    .shutdown_timeout(30)
    .client_request_timeout(Duration::from_secs(10))
    .client_disconnect_timeout(Duration::from_secs(2))
    .max_connection_rate(256)
    // Answers go out at once, not held back by Nagle's algorithm until the
    // client acknowledges the previous segment.
    .tcp_nodelay(true)
    .workers(workers)
    .listen(listener)?
    .run())
}
