//! Operations: the probes, `/metrics` (plain, or over HTTPS for callers
//! the API server authorises), the request metrics middleware, the JSON 404,
//! and the servers for the probe and metrics ports.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use tracing::debug;

use super::{listen, ApiState};

/// Liveness: the process serves requests.
#[utoipa::path(get, path = "/healthz", tag = "probes", responses((status = 200, description = "alive")))]
pub(super) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Readiness: the process answers requests. A broker outage does not take
/// the replica out of the Service: callers get 503 with Retry-After, which
/// they can act on, rather than connection errors. The broker's state is in
/// the body (and in metrics, the custom resource's status and Events).
#[utoipa::path(get, path = "/readyz", tag = "probes", responses(
    (status = 200, description = "serving; `broker` says whether the broker is connected"),
    (status = 503, description = "starting (the environments are not listed yet) or stopping (the shutdown delay)")))]
pub(super) async fn readyz(st: web::Data<ApiState>) -> HttpResponse {
    let broker = match &st.publisher {
        None => "disabled",
        Some(p) if p.is_connected() => "connected",
        Some(_) => "disconnected",
    };
    if st.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"status": "stopping", "broker": broker}));
    }
    // Until the environments are listed no token can be checked: keep the
    // replica out of the Service rather than answer 503 to every post.
    if st.tenants.as_ref().is_some_and(|t| !t.ready()) {
        return HttpResponse::ServiceUnavailable().json(
            serde_json::json!({"status": "starting", "broker": broker, "environments": "listing"}),
        );
    }
    HttpResponse::Ok().json(serde_json::json!({"status": "ok", "broker": broker}))
}

async fn metrics(st: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(st.metrics.render())
}

/// Counts and logs every request (route pattern, not the raw path: sources
/// in paths are caller-chosen and would blow up label cardinality).
pub(super) async fn observe(
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
pub(super) async fn not_found() -> HttpResponse {
    HttpResponse::NotFound()
        .json(serde_json::json!({"status": "not found", "message": "no such route"}))
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
        Decision::Busy => HttpResponse::TooManyRequests()
            .insert_header(("Retry-After", "1"))
            .body("too many callers waiting for authentication"),
    }
}
