//! Wires settings, the publisher, the HTTP servers and the controllers
//! together ([`App::build`]), runs them under supervision and drives one
//! graceful shutdown for all of them ([`App::serve`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use actix_web::web;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::broker::Publisher;
use crate::controller::{self, Baseline, Context};
use crate::metrics::Metrics;
use crate::server::{self, ApiState};
use crate::settings::{KeyArgs, RunArgs, Settings};
use crate::token::KeyRing;
use crate::{Error, Result};

/// Runs until SIGTERM or Ctrl-C, or until a part fails.
pub async fn run(args: RunArgs) -> Result<()> {
    App::build(Settings::from_args(&args)?)
        .await?
        .serve(shutdown_signal())
        .await
}

/// Everything one process runs, built and started from one settings value.
pub struct App {
    pub state: web::Data<ApiState>,
    pub publisher: Option<Publisher>,
    /// The operator's context, when any reconciler or the scanner runs.
    pub ctx: Option<Arc<Context>>,
    /// Where the ingestion API listens (the port the OS chose for port 0).
    pub ingestion_addr: Option<SocketAddr>,
    parts: Vec<Part>,
    /// Stops the operator.
    stop: controller::CancellationToken,
    /// Stops it when the App is dropped without serving to the end.
    _stop_on_drop: tokio_util::sync::DropGuard,
    shutdown_delay: std::time::Duration,
}

/// A supervised part: any end before shutdown is a failure.
struct Part {
    name: &'static str,
    task: JoinHandle<Result<()>>,
    handle: Option<ServerHandle>,
}

impl Part {
    fn server(name: &'static str, srv: Server) -> Self {
        let handle = Some(srv.handle());
        let task = tokio::spawn(async move { srv.await.map_err(Error::from) });
        Part { name, task, handle }
    }
}

impl App {
    /// Loads the key, connects the publisher, follows the custom resource
    /// once (so its key applies before anything is minted or verified),
    /// binds the listeners and starts every part.
    pub async fn build(settings: Settings) -> Result<App> {
        Self::assemble(settings, None).await
    }

    /// As [`App::build`], talking to the API server through `client`
    /// instead of the configured one.
    pub async fn with_client(settings: Settings, client: kube::Client) -> Result<App> {
        Self::assemble(settings, Some(client)).await
    }

    async fn assemble(settings: Settings, client: Option<kube::Client>) -> Result<App> {
        let s = &settings;
        let metrics = Arc::new(Metrics::new());
        let controllers = s.reconcilers.any();
        for note in &s.compat_notes {
            warn!("{note}");
        }
        let baseline_keys = baseline_keys(&s.keys, controllers)?;
        // Until a key is known, tokens are checked against a random key:
        // nothing verifies, and nothing is minted (the namespace reconciler
        // waits).
        let initial = baseline_keys.clone().unwrap_or_else(|| {
            Arc::new(KeyRing::new(uuid::Uuid::new_v4().simple().to_string()).expect("32-byte key"))
        });
        let keys = watch::Sender::new(initial);
        let publisher = if s.publish {
            Some(Publisher::start(s.broker.clone(), Some(metrics.clone())))
        } else {
            warn!("RABBITMQ_ENABLED=false: nothing will be published");
            None
        };
        let mut limits = s.web.limits.clone();
        let descriptors = server::raise_descriptor_limit();
        if let Some(fds) = descriptors {
            // Half the descriptors stay for the probes, the broker, the API
            // server and the files the process opens.
            let most = usize::try_from(fds / 2).unwrap_or(usize::MAX).max(1);
            if limits.conn.max_connections > most {
                warn!(
                    configured = limits.conn.max_connections,
                    descriptors = fds,
                    using = most,
                    "WEBSERVICE_MAX_CONNECTIONS is more than half the descriptor limit"
                );
                limits.conn.max_connections = most;
            }
        }
        let api_state = ApiState::new(
            keys.subscribe(),
            publisher.clone(),
            metrics.clone(),
            limits,
            s.web.rate_limit,
        );
        let stop = controller::CancellationToken::new();
        let mut parts = Vec::new();
        let ctx = if controllers {
            let ctx =
                match operator_context(s, client, publisher.clone(), keys, baseline_keys, metrics)
                    .await
                {
                    Ok(ctx) => ctx,
                    Err(e) => {
                        // Closed before the runtime goes, so its I/O thread
                        // ends cleanly rather than panicking on the way out.
                        if let Some(p) = &publisher {
                            p.shutdown().await;
                        }
                        return Err(e);
                    }
                };
            let opts = run_options(s);
            parts.push(Part {
                name: "operator",
                task: tokio::spawn({
                    let (ctx, stop) = (ctx.clone(), stop.clone());
                    async move {
                        controller::run(ctx, opts, stop)
                            .await
                            .map_err(|e| Error::Config(e.to_string()))
                    }
                }),
                handle: None,
            });
            Some(ctx)
        } else {
            None
        };
        let state = web::Data::new(match &ctx {
            Some(ctx) => api_state.with_tenants(ctx.tenants.clone()),
            None => {
                if s.web.ingestion.is_some() {
                    warn!("no reconciler runs, so the environments are not watched: tokens are checked by their signature only (a deleted namespace's or a revoked token is accepted)");
                }
                api_state
            }
        });
        if let Some(high) = state.memory.high() {
            info!(
                bytes = high,
                "posts are answered 503 above this resident size"
            );
        }
        let mut ingestion_addr = None;
        if let Some(listen_at) = s.web.ingestion {
            let listener = server::listen(listen_at)?;
            let addr = listener.local_addr()?;
            let workers = s.web.workers.unwrap_or_else(server::default_workers);
            let srv = server::ingestion_server_with_workers(state.clone(), listener, workers)?;
            info!(%addr, "ingestion API listening");
            ingestion_addr = Some(addr);
            parts.push(Part::server("ingestion API", srv));
        }
        let secure = s.web.metrics_secure;
        let plain_addrs = if secure {
            vec![s.web.probes]
        } else {
            vec![s.web.probes, s.web.metrics]
        };
        if let Some(ops) = server::ops_server(state.clone(), &plain_addrs, !secure)? {
            parts.push(Part::server("probes and metrics", ops));
        }
        if secure {
            let client = match &ctx {
                Some(ctx) => ctx.client.clone(),
                None => kube_client(s).await?,
            };
            let srv = server::secure_metrics_server(
                state.clone(),
                s.web.metrics,
                crate::metrics_auth::MetricsAuth::new(client),
                crate::metrics_auth::self_signed_tls()?,
            )?;
            info!(addr = %s.web.metrics, "metrics over HTTPS for callers allowed to get /metrics (--metrics-secure)");
            parts.push(Part::server("secure metrics", srv));
        }
        Ok(App {
            state,
            publisher,
            ctx,
            ingestion_addr,
            parts,
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
            shutdown_delay: s.shutdown_delay,
        })
    }

    /// Serves until `shutdown` resolves or a part ends on its own. A part
    /// ending (a server that stopped, the operator that could not set up
    /// leader election or whose reconciler died) is fatal: a replica that
    /// serves but does not work would look healthy while doing nothing, and
    /// a restart by the kubelet is the better cure. Either way everything
    /// is stopped gracefully: in-flight requests and reconciles finish, and
    /// the publisher closes after the last confirm.
    pub async fn serve(mut self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let failed = if self.parts.is_empty() {
            shutdown.await;
            None
        } else {
            let watched = futures::future::select_all(self.parts.iter_mut().map(|p| {
                let name = p.name;
                Box::pin(async move { (name, (&mut p.task).await) })
            }));
            tokio::select! {
                _ = shutdown => None,
                ((name, r), _, _) = watched => Some(match r {
                    Ok(Ok(())) => Error::Config(format!("the {name} stopped unexpectedly")),
                    Ok(Err(e)) => Error::Config(format!("the {name} stopped: {e}")),
                    Err(e) => Error::Config(format!("the {name} failed: {e}")),
                }),
            }
        };
        if let Some(e) = &failed {
            tracing::error!(error = %e, "shutting down");
        } else if !self.shutdown_delay.is_zero() {
            // Out of the Service first, then stop: requests routed here
            // until the endpoint is gone are still answered. Leadership
            // needs no such delay: the reconcilers stop and the Lease is
            // released now, so another replica takes over at once.
            self.state
                .draining
                .store(true, std::sync::atomic::Ordering::Relaxed);
            self.stop.cancel();
            info!(delay = ?self.shutdown_delay, "stopping: reconcilers stopped, /readyz answers 503, serving until the delay ends");
            tokio::time::sleep(self.shutdown_delay).await;
        }
        info!("shutting down: finishing in-flight requests and reconciles");
        self.stop.cancel();
        for p in &self.parts {
            if let Some(h) = &p.handle {
                h.stop(true).await;
            }
        }
        for p in self.parts {
            if !p.task.is_finished() {
                let _ = p.task.await;
            }
        }
        if let Some(p) = self.publisher {
            p.shutdown().await;
        }
        info!("stopped");
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The signing key from flags and environment; None when the custom
/// resource is expected to name it.
fn baseline_keys(keys: &KeyArgs, controllers: bool) -> Result<Option<Arc<KeyRing>>> {
    match KeyRing::from_args(keys) {
        Ok(k) => {
            info!(key = %k.fingerprint(), "signing key loaded");
            Ok(Some(Arc::new(k)))
        }
        Err(e)
            if controllers && keys.token_secret.is_none() && keys.token_secret_file.is_none() =>
        {
            warn!(error = %e, "no signing key from flags or environment; expecting one from the InsightsRemoteConfig");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The operator's context, with the custom resource followed once.
async fn operator_context(
    s: &Settings,
    client: Option<kube::Client>,
    publisher: Option<Publisher>,
    keys: watch::Sender<Arc<KeyRing>>,
    baseline_keys: Option<Arc<KeyRing>>,
    metrics: Arc<Metrics>,
) -> Result<Arc<Context>> {
    let client = match client {
        Some(c) => c,
        None => kube_client(s).await?,
    };
    let uploads = crate::dependency_track::Uploads::with_policy(
        s.uploads.max_concurrent,
        s.uploads.timeout,
        crate::dependency_track::EndpointPolicy::new(
            &s.uploads.custom_endpoint_hosts,
            api_server_addresses(s).await,
        ),
    );
    let ctx = Context::new(controller::Parts {
        client,
        publisher,
        keys,
        baseline: Baseline {
            broker: s.broker.clone(),
            keys: baseline_keys.clone(),
            ops: s.ops.clone(),
        },
        metrics,
        scope: s.scope.clone(),
        token_resync: s.token_resync,
        uploads,
    });
    let ctx = Arc::new(ctx);
    if baseline_keys.is_none() {
        ctx.health.lock().expect("health lock").signing_key_problem =
            Some(controller::config::Problem::Loading(
                "waiting for the InsightsRemoteConfig's signing key".into(),
            ));
    }
    // Settings from the resource before the first reconcile.
    controller::config::sync(&ctx).await;
    let problem = ctx
        .health
        .lock()
        .expect("health lock")
        .signing_key_problem
        .clone();
    match problem {
        Some(p) if baseline_keys.is_none() => {
            // Say what is wrong where an admin looks (`kubectl get irc`)
            // and in the exit message: the resource's own problem (a
            // foreign or missing Secret, a short key), not a generic one.
            controller::config::status::write_status_once(&ctx).await;
            let what = match p {
                controller::config::Problem::Loading(_) | controller::config::Problem::NoSigningKey(_) => {
                    "set INSIGHTS_TOKEN_SECRET (at least 32 bytes) or spec.signingKey.secretRef in the InsightsRemoteConfig".to_string()
                }
                other => format!("the InsightsRemoteConfig's signing key cannot be used: {other}"),
            };
            Err(Error::Config(format!("no signing key: {what}")))
        }
        _ => Ok(ctx),
    }
}

/// Which reconcilers run, and how leadership is decided.
fn run_options(s: &Settings) -> controller::RunOptions {
    let lease = s.lease.as_ref().map(|l| controller::LeaseOptions {
        name: l.name.clone(),
        namespace: s.scope.pod_namespace.clone(),
        identity: format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "insights-remote".into()),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ),
        duration_secs: l.duration.as_secs().max(2),
        grace_secs: (l.duration.as_secs() / 3).max(1),
    });
    controller::RunOptions {
        forward: s.reconcilers.forward,
        tokens: s.reconcilers.tokens,
        concurrency: s.reconcilers.concurrency,
        lease,
    }
}

/// The API server client (controller-runtime's --kubeconfig, else the
/// usual kubeconfig or in-cluster configuration).
async fn kube_client(s: &Settings) -> Result<kube::Client> {
    Ok(kube::Client::try_from(kube_config(s).await?)?)
}

async fn kube_config(s: &Settings) -> Result<kube::Config> {
    Ok(match &s.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::Config(format!("--kubeconfig {}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| Error::Config(format!("--kubeconfig {}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| Error::Config(format!("no Kubernetes configuration: {e}")))?,
    })
}

/// The addresses the Kubernetes API server answers at, as this process
/// sees them: the in-cluster Service and the configured URL's host. A
/// namespace's Dependency-Track endpoint may not point there.
async fn api_server_addresses(s: &Settings) -> Vec<std::net::IpAddr> {
    let mut out: Vec<std::net::IpAddr> = std::env::var("KUBERNETES_SERVICE_HOST")
        .ok()
        .and_then(|h| h.parse().ok())
        .into_iter()
        .collect();
    if let Ok(config) = kube_config(s).await {
        if let Some(host) = config.cluster_url.host() {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = config.cluster_url.port_u16().unwrap_or(443);
            if let Ok(addrs) = tokio::net::lookup_host((host, port)).await {
                out.extend(addrs.map(|a| a.ip()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
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
