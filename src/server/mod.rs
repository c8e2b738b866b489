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
//! | `handlers.rs` | the routes: post facts and problems, the deletes (`delete_route!`), publishing | add or change a route (then add it to `openapi.rs`) |
//! | `messages.rs` | pure domain checks: [`facts_message`], [`problems_message`], [`decode_segment`] | change what a body may hold; unit-testable without a server |
//! | `auth.rs` | the Authorization header, the rate-limit check, [`environment_id`] | change how callers are identified |
//! | `body.rs` | [`Limits`], the in-flight memory budget, reading a body | change how much a request may cost |
//! | `error.rs` | [`ApiError`] and how errors are answered | add an error; its status and body are the contract |
//! | `rate_limit.rs` | [`RateLimiter`], a token bucket per environment (governor) | change the rate limit |
//! | `ops.rs` | probes, `/metrics`, the request metrics middleware, [`ops_server`], [`secure_metrics_server`] | change what operations see |
//! | `openapi.rs` | the route table [`routes`] and the OpenAPI document [`api_doc`] that lists the same routes | mount a route, list a new route or schema |
//!
//! Error texts, status codes, headers and the OpenAPI document are what
//! clients and `hack/schemathesis.sh` rely on: change them only on purpose.

mod auth;
mod body;
mod conn;
mod error;
mod framing;
mod handlers;
mod memory;
mod messages;
mod openapi;
mod ops;
mod rate_limit;

use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App};
use tokio::sync::watch;

use crate::broker::Publisher;
use crate::metrics::Metrics;
use crate::token::KeyRing;

pub use crate::settings::{ConnLimits, Limits};
pub use auth::environment_id;
pub use conn::{Gate, Tenant, PIPELINE, READ_AHEAD, SPIN_POLLS};
pub use error::{ApiError, ErrorBody, OkBody};
pub use memory::{container_limit, resident};
pub use messages::{decode_segment, facts_message, problems_message};
pub use openapi::api_doc;
pub use openapi::routes;
pub use ops::{ops_server, secure_metrics_server};
pub use rate_limit::RateLimiter;

/// Shared by every worker of the HTTP server.
pub struct ApiState {
    pub keys: watch::Receiver<Arc<KeyRing>>,
    pub publisher: Option<Publisher>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub limiter: RateLimiter,
    budget: Arc<body::Budget>,
    pub memory: Arc<memory::Memory>,
    /// The environments that may post now; None where no cluster is
    /// watched (then a good signature is enough).
    pub tenants: Option<Arc<crate::tenants::Tenants>>,
    /// Set at SIGTERM while the process keeps serving for its shutdown
    /// delay: /readyz answers 503 so that Services stop sending here.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

impl ApiState {
    pub fn new(
        keys: watch::Receiver<Arc<KeyRing>>,
        publisher: Option<Publisher>,
        metrics: Arc<Metrics>,
        limits: Limits,
        rate_limit: u32,
    ) -> Self {
        Self {
            budget: Arc::new(body::Budget::new(&limits)),
            memory: memory::Memory::new(limits.memory_high),
            keys,
            publisher,
            metrics,
            limits,
            limiter: RateLimiter::new(rate_limit),
            tenants: None,
            draining: Arc::default(),
        }
    }

    /// Checks every token against the cluster's environments too
    /// (revocation, deleted namespaces, duplicate environment ids).
    pub fn with_tenants(mut self, tenants: Arc<crate::tenants::Tenants>) -> Self {
        self.tenants = Some(tenants);
        self
    }

    /// Bytes of the in-flight memory budget held by requests now.
    pub fn budget_held(&self) -> u64 {
        self.budget.held_bytes()
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

/// Allocator settings, before any thread starts. glibc serves allocations
/// of 128 KiB and more (request bodies, messages) with their own mappings,
/// returned to the system when freed, but raises that threshold after each
/// such free (up to 32 MiB), after which large buffers come from the heap
/// and stay there fragmented after a burst. A fixed threshold keeps them
/// mapped (bench/README.md, "Hostile connections": RSS after a burst of
/// large bodies).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Raises the soft limit on open descriptors to the hard limit (as Go does
/// at start-up) and returns it.
pub fn raise_descriptor_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `lim`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
    Some(lim.rlim_cur as u64)
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
/// (`--webservice-workers`): actix-web's App over actix-http, on
/// connections bounded by [`conn`] (count, head, reading ahead, writing).
/// Signals are left to the caller, which drives one graceful shutdown for
/// everything.
pub fn ingestion_server_with_workers(
    state: web::Data<ApiState>,
    listener: std::net::TcpListener,
    workers: usize,
) -> std::io::Result<Server> {
    use actix_service::{fn_service, map_config, IntoServiceFactory, ServiceFactoryExt};

    let gate = Gate::new(state.limits.conn.clone(), state.metrics.clone());
    state.memory.clone().watch();
    Ok(actix_server::Server::build()
        .disable_signals()
        .shutdown_timeout(30)
        .workers(workers)
        .listen("ingestion", listener, move || {
            let state = state.clone();
            let gate = gate.clone();
            let limits = gate.limits().clone();
            let app = App::new()
                .app_data(state)
                .wrap(actix_web::middleware::from_fn(ops::observe))
                .configure(routes)
                .default_service(web::to(ops::not_found));
            let app = app
                .into_factory()
                .map_err(|err: actix_web::Error| err.error_response());
            let http = actix_http::HttpService::<conn::Guarded, _, _>::build()
                .keep_alive(limits.keep_alive)
                .client_request_timeout(limits.head_timeout)
                .client_disconnect_timeout(Duration::from_secs(2))
                .on_connect_ext(|io: &conn::Guarded, ext: &mut actix_http::Extensions| {
                    ext.insert(io.tenant());
                })
                .h1(map_config(app, |_| actix_web::dev::AppConfig::default()));
            fn_service(move |io: tokio::net::TcpStream| {
                let gate = gate.clone();
                async move {
                    let peer = io.peer_addr().ok();
                    // Answers go out at once, not held back by Nagle's
                    // algorithm until the client acknowledges.
                    let _ = io.set_nodelay(true);
                    match gate.admit(peer.map(|p| p.ip())) {
                        Ok(ticket) => Ok((conn::Guarded::new(io, ticket), peer)),
                        Err(reason) => {
                            gate.refuse(io, reason);
                            Err(actix_http::error::DispatchError::Io(std::io::Error::other(
                                reason.label(),
                            )))
                        }
                    }
                }
            })
            .and_then(http)
        })?
        .run())
}
