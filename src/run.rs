//! Wires settings, the publisher, the HTTP servers and the controllers
//! together, and drives one graceful shutdown for all of them.

use std::sync::Arc;

use actix_web::web;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::broker::Publisher;
use crate::controller::{self, Baseline, Context};
use crate::metrics::Metrics;
use crate::server::{self, ApiState};
use crate::settings::RunArgs;
use crate::token::KeyRing;
use crate::{Error, Result};

pub async fn run(args: RunArgs) -> Result<()> {
    let metrics = Arc::new(Metrics::new());
    let controllers = args.enable_configmap_reconciler()
        || args.enable_namespace_reconciler
        || args.upstream.build_scanner;
    for note in args.compat_report()? {
        warn!("{note}");
    }

    let baseline_keys = match args.key.key_ring() {
        Ok(k) => {
            info!(key = %k.fingerprint(), "signing key loaded");
            Some(Arc::new(k))
        }
        // The InsightsRemoteConfig may name the key instead.
        Err(e)
            if controllers
                && args.key.token_secret.is_none()
                && args.key.token_secret_file.is_none() =>
        {
            warn!(error = %e, "no signing key from flags or environment; expecting one from the InsightsRemoteConfig");
            None
        }
        Err(e) => return Err(e),
    };
    // Until a key is known, tokens are checked against a random key: nothing
    // verifies, and nothing is minted (the namespace reconciler waits).
    let initial = baseline_keys.clone().unwrap_or_else(|| {
        Arc::new(KeyRing::new(uuid::Uuid::new_v4().simple().to_string()).expect("32-byte key"))
    });
    let keys = watch::Sender::new(initial);
    let publisher = if args.rabbitmq_enabled {
        Some(Publisher::start(
            args.broker_settings()?,
            Some(metrics.clone()),
        ))
    } else {
        warn!("RABBITMQ_ENABLED=false: nothing will be published");
        None
    };
    let state = web::Data::new(ApiState::new(
        keys.subscribe(),
        publisher.clone(),
        metrics.clone(),
        args.limits(),
        args.webservice_rate_limit,
    ));

    let (stop_tx, stop_rx) = watch::channel(false);
    let operator = if controllers {
        let client = kube_client(&args).await?;
        let baseline = Baseline {
            broker: args.broker_settings()?,
            keys: baseline_keys.clone(),
            ops: args.operations()?,
        };
        let mut ctx = Context::new(
            client,
            publisher.clone(),
            keys,
            baseline,
            metrics.clone(),
            args.pod_namespace.clone(),
            args.config_name.clone(),
        );
        ctx.watch_namespace = args.watch_namespace.clone().filter(|n| !n.is_empty());
        ctx.token_resync = args.token_resync_interval;
        ctx.uploads = controller::uploads::Uploads::new(
            args.dependency_track_max_concurrent,
            args.dependency_track_timeout,
        );
        let ctx = Arc::new(ctx);
        if baseline_keys.is_none() {
            ctx.health.lock().expect("health lock").signing_key_problem =
                Some(controller::config::Problem::Loading(
                    "waiting for the InsightsRemoteConfig's signing key".into(),
                ));
        }
        // Settings from the resource before the first reconcile.
        controller::config::sync(&ctx).await;
        if ctx
            .health
            .lock()
            .expect("health lock")
            .signing_key_problem
            .is_some()
            && baseline_keys.is_none()
        {
            return Err(Error::Config(
                "no signing key: set INSIGHTS_TOKEN_SECRET (at least 32 bytes) or spec.signingKey.secretRef in the InsightsRemoteConfig".into(),
            ));
        }
        let lease = args.leader_elect.then(|| controller::LeaseOptions {
            name: args.leader_election_id.clone(),
            namespace: args.pod_namespace.clone(),
            identity: format!(
                "{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "insights-remote".into()),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            duration_secs: args.leader_election_lease_duration.as_secs().max(2),
            grace_secs: (args.leader_election_lease_duration.as_secs() / 3).max(1),
        });
        let opts = controller::RunOptions {
            forward: args.enable_configmap_reconciler(),
            tokens: args.enable_namespace_reconciler,
            concurrency: args.configmap_max_concurrent,
            lease,
        };
        Some(tokio::spawn(controller::run(ctx, opts, stop_rx.clone())))
    } else {
        drop(keys);
        None
    };

    let mut handles = Vec::new();
    let ingestion = if args.enable_webservice {
        let addr = args.webservice_addr()?;
        let workers = args
            .webservice_workers
            .filter(|&n| n > 0)
            .unwrap_or_else(server::default_workers);
        let srv =
            server::ingestion_server_with_workers(state.clone(), server::listen(addr)?, workers)?;
        info!(%addr, "ingestion API listening");
        handles.push(srv.handle());
        Some(tokio::spawn(srv))
    } else {
        None
    };
    let secure = args.metrics_secure();
    let plain_addrs = if secure {
        vec![args.health_probe_bind_address]
    } else {
        vec![args.health_probe_bind_address, args.metrics_bind_address]
    };
    let ops = server::ops_server(state.clone(), &plain_addrs, !secure)?.map(|ops| {
        handles.push(ops.handle());
        tokio::spawn(ops)
    });
    let secure_metrics = if secure {
        let client = kube_client(&args).await?;
        let srv = server::secure_metrics_server(
            state.clone(),
            args.metrics_bind_address,
            crate::metrics_auth::MetricsAuth::new(client),
            crate::metrics_auth::self_signed_tls()?,
        )?;
        info!(addr = %args.metrics_bind_address, "metrics over HTTPS for callers allowed to get /metrics (--metrics-secure)");
        handles.push(srv.handle());
        Some(tokio::spawn(srv))
    } else {
        None
    };

    // The operator ending on its own (e.g. leader election could not be set
    // up) is fatal: a replica that serves but never reconciles would look
    // healthy while doing nothing.
    let mut operator = operator;
    let failed = tokio::select! {
        _ = shutdown_signal() => None,
        r = async { operator.as_mut().expect("checked").await }, if operator.is_some() => {
            operator = None;
            Some(match r {
                Ok(Ok(())) => Error::Config("the operator stopped unexpectedly".into()),
                Ok(Err(e)) => Error::Config(format!("the operator stopped: {e}")),
                Err(e) => Error::Config(format!("the operator task failed: {e}")),
            })
        }
    };
    if let Some(e) = &failed {
        tracing::error!(error = %e, "shutting down");
    }
    info!("shutting down: finishing in-flight requests and reconciles");
    let _ = stop_tx.send(true);
    for h in &handles {
        h.stop(true).await;
    }
    if let Some(i) = ingestion {
        let _ = i.await;
    }
    if let Some(op) = operator {
        let _ = op.await;
    }
    if let Some(ops) = ops {
        let _ = ops.await;
    }
    if let Some(m) = secure_metrics {
        let _ = m.await;
    }
    if let Some(p) = publisher {
        p.shutdown().await;
    }
    info!("stopped");
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The API server client (controller-runtime's --kubeconfig, else the
/// usual kubeconfig or in-cluster configuration).
async fn kube_client(args: &RunArgs) -> Result<kube::Client> {
    Ok(match &args.upstream.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::Config(format!("--kubeconfig {}: {e}", path.display())))?;
            let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| Error::Config(format!("--kubeconfig {}: {e}", path.display())))?;
            kube::Client::try_from(config)?
        }
        None => kube::Client::try_default().await?,
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
