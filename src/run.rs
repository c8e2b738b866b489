//! Wires settings, the publisher, the HTTP servers and the controllers
//! together, and drives one graceful shutdown for all of them.

use std::sync::Arc;

use actix_web::web;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::broker::Publisher;
use crate::metrics::Metrics;
use crate::server::{self, ApiState, RateLimiter};
use crate::settings::RunArgs;
use crate::Result;

pub async fn run(args: RunArgs) -> Result<()> {
    let metrics = Arc::new(Metrics::new());
    let keys = args.key.key_ring()?;
    info!(key = %keys.fingerprint(), "signing key loaded");
    let (keys_tx, keys_rx) = watch::channel(Arc::new(keys));
    let publisher = if args.rabbitmq_enabled {
        Some(Publisher::start(args.broker_settings()?, Some(metrics.clone())))
    } else {
        warn!("RABBITMQ_ENABLED=false: nothing will be published");
        None
    };
    let state = web::Data::new(ApiState {
        keys: keys_rx,
        publisher: publisher.clone(),
        metrics: metrics.clone(),
        body_limit: args.webservice_body_limit,
        limiter: RateLimiter::new(args.webservice_rate_limit),
    });

    let mut handles = Vec::new();
    let ingestion = if args.enable_webservice {
        let addr = args.webservice_addr()?;
        let srv = server::ingestion_server(state.clone(), std::net::TcpListener::bind(addr)?)?;
        info!(%addr, "ingestion API listening");
        handles.push(srv.handle());
        Some(tokio::spawn(srv))
    } else {
        None
    };
    let ops = server::ops_server(
        state.clone(),
        &[args.health_probe_bind_address, args.metrics_bind_address],
    )?;
    handles.push(ops.handle());
    let ops = tokio::spawn(ops);
    drop(keys_tx);

    shutdown_signal().await;
    info!("shutting down: finishing in-flight requests");
    for h in &handles {
        h.stop(true).await;
    }
    if let Some(i) = ingestion {
        let _ = i.await;
    }
    let _ = ops.await;
    if let Some(p) = publisher {
        p.shutdown().await;
    }
    info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
