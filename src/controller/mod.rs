//! The operator: reconcilers for insights ConfigMaps, Lagoon namespaces and
//! the InsightsRemoteConfig, sharing one [`Context`].

pub mod build;
pub mod config;
pub mod configmap;
pub mod namespace;
pub mod namespaces;
pub mod token_secrets;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::{Client, Resource};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::broker::{BrokerSettings, Publisher};
use crate::crd::InsightsRemoteConfig;
use crate::metrics::{ControllerErrorLabels, ControllerLabels, Metrics};
use crate::settings::Operations;
use crate::token::KeyRing;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("serializing: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("token: {0}")]
    Token(#[from] crate::token::TokenError),
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.is_conflict() => "conflict",
            Error::Kube(kube::Error::Api(s)) if s.is_forbidden() => "forbidden",
            Error::Kube(_) => "kube",
            Error::Serialize(_) => "serialize",
            Error::Token(_) => "token",
            Error::Invalid(_) => "invalid",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How often a namespace's token Secret is re-checked by default.
pub const DEFAULT_TOKEN_RESYNC: Duration = Duration::from_secs(300);

/// Running totals reported in the InsightsRemoteConfig status.
#[derive(Debug, Default)]
pub struct Counters {
    pub forwarded: AtomicU64,
    pub deferred: AtomicU64,
    pub rejected: AtomicU64,
    pub burned: AtomicU64,
    pub tokens_issued: AtomicU64,
    /// RFC 3339 time of the last confirmed forward.
    pub last_forward: Mutex<Option<String>>,
    /// Per post-processor step.
    pub steps: Mutex<std::collections::BTreeMap<String, crate::crd::PostProcessorCounts>>,
}

impl Counters {
    pub fn add(&self, which: &AtomicU64) {
        which.fetch_add(1, Ordering::Relaxed);
    }

    /// One step's result: `success`, `skipped` or `failure`.
    pub fn add_step(&self, processor: &str, result: &str) {
        let mut steps = self.steps.lock().expect("counters lock");
        let c = steps.entry(processor.to_string()).or_default();
        match result {
            "success" => c.succeeded += 1,
            "skipped" => c.skipped += 1,
            _ => c.failed += 1,
        }
    }
}

/// What the config reconciler found wrong, for the status conditions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigHealth {
    /// None when the signing key is fine.
    pub signing_key_problem: Option<config::Problem>,
    /// None when the broker settings resolved.
    pub broker_problem: Option<config::Problem>,
    /// None when the behaviour settings resolved.
    pub settings_problem: Option<config::Problem>,
    pub observed_generation: Option<i64>,
    pub key_fingerprint: Option<String>,
}

/// The settings given by flags and environment: what applies when no
/// InsightsRemoteConfig exists, and the base the resource overrides.
#[derive(Clone)]
pub struct Baseline {
    pub broker: BrokerSettings,
    pub keys: Option<Arc<KeyRing>>,
    pub ops: Operations,
}

pub struct Context {
    pub client: Client,
    pub publisher: Option<Publisher>,
    pub keys: watch::Sender<Arc<KeyRing>>,
    pub ops: watch::Sender<Operations>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub counters: Counters,
    pub health: Mutex<ConfigHealth>,
    pub baseline: Baseline,
    /// Namespace of Secrets the resource names without one.
    pub pod_namespace: String,
    pub config_name: String,
    /// Limit the ConfigMap and namespace reconcilers to one namespace.
    pub watch_namespace: Option<String>,
    /// Wakes the status writer.
    pub status_changed: Notify,
    /// How often each namespace's token Secret is re-checked.
    pub token_resync: Duration,
    /// What RBAC refused already (each is logged once, then at debug).
    pub denied: Mutex<std::collections::BTreeSet<&'static str>>,
    /// Dependency-Track uploads in the background.
    pub uploads: crate::dependency_track::Uploads,
    /// Lagoon namespaces' project and environment labels.
    pub namespaces: namespaces::NamespaceCache,
    /// What is known of the insights-token Secrets without a GET.
    pub token_secrets: token_secrets::TokenSecrets,
    /// RBAC refused a create of a token Secret: write them by apply only
    /// ([`namespace::write_token`]).
    pub token_create_refused: std::sync::atomic::AtomicBool,
    /// Which environments may post now (every replica keeps it; the
    /// ingestion API and the token reconciler read it).
    pub tenants: Arc<crate::tenants::Tenants>,
    /// The InsightsRemoteConfig, as the config follower last saw it.
    pub config_store: Store<InsightsRemoteConfig>,
    /// Fills `config_store`; taken by the config follower.
    pub config_writer: Mutex<Option<Writer<InsightsRemoteConfig>>>,
}

impl Context {
    pub fn new(
        client: Client,
        publisher: Option<Publisher>,
        keys: watch::Sender<Arc<KeyRing>>,
        baseline: Baseline,
        metrics: Arc<Metrics>,
        pod_namespace: String,
        config_name: String,
    ) -> Self {
        let (config_store, config_writer) = reflector::store();
        let reporter = Reporter {
            controller: "insights-remote".into(),
            instance: std::env::var("HOSTNAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            ops: watch::Sender::new(baseline.ops.clone()),
            client,
            publisher,
            keys,
            metrics,
            counters: Counters::default(),
            health: Mutex::new(ConfigHealth::default()),
            baseline,
            pod_namespace,
            config_name,
            watch_namespace: None,
            status_changed: Notify::new(),
            token_resync: DEFAULT_TOKEN_RESYNC,
            denied: Default::default(),
            uploads: crate::dependency_track::Uploads::new(2, Duration::from_secs(300)),
            namespaces: Default::default(),
            token_secrets: Default::default(),
            token_create_refused: Default::default(),
            tenants: crate::tenants::Tenants::new(),
            config_store,
            config_writer: Mutex::new(Some(config_writer)),
        }
    }

    /// Publishes an Event about an object; failures are logged, never fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: action.into(),
            secondary: None,
        };
        match self.recorder.publish(&ev, &obj.object_ref(&())).await {
            Ok(()) => {}
            Err(e) => self.report(
                "Events",
                &e,
                "could not publish an Event; Events are not recorded",
            ),
        }
    }

    /// Logs an API error; one refused by RBAC (403) is logged once per
    /// `what` (e.g. under the lagoon-remote chart's ClusterRole, which has
    /// no rules for Events or the custom resource), then at debug level.
    pub fn report(&self, what: &'static str, err: &kube::Error, msg: &str) {
        let forbidden = matches!(err, kube::Error::Api(s) if s.is_forbidden());
        if forbidden && !self.denied.lock().expect("denied lock").insert(what) {
            tracing::debug!(what, error = %err, "{msg}");
        } else if forbidden {
            warn!(what, error = %err, "{msg} (forbidden by RBAC; said once)");
        } else {
            warn!(what, error = %err, "{msg}");
        }
    }

    /// Starts timing one reconcile of `controller`; see [`ReconcileMeasurer`].
    pub fn measure(&self, controller: &'static str) -> ReconcileMeasurer<'_> {
        ReconcileMeasurer {
            metrics: &self.metrics,
            controller,
            started: std::time::Instant::now(),
            error: None,
        }
    }
}

/// Counts and times one reconcile when dropped, so a reconcile cancelled
/// half-way (at shutdown, or when leadership ends) is counted too; an error
/// recorded with [`ReconcileMeasurer::outcome`] is counted by its kind.
pub struct ReconcileMeasurer<'a> {
    metrics: &'a Metrics,
    controller: &'static str,
    started: std::time::Instant,
    error: Option<&'static str>,
}

impl ReconcileMeasurer<'_> {
    /// Records the reconcile's result and hands it back.
    pub fn outcome<T>(mut self, res: Result<T>) -> Result<T> {
        self.error = res.as_ref().err().map(Error::metric_label);
        res
    }
}

impl Drop for ReconcileMeasurer<'_> {
    fn drop(&mut self) {
        let labels = ControllerLabels {
            controller: self.controller.into(),
        };
        self.metrics.reconciliations.get_or_create(&labels).inc();
        self.metrics
            .reconcile_duration
            .get_or_create(&labels)
            .observe(self.started.elapsed().as_secs_f64());
        if let Some(error) = self.error {
            self.metrics
                .reconcile_errors
                .get_or_create(&ControllerErrorLabels {
                    controller: self.controller.into(),
                    error: error.into(),
                })
                .inc();
        }
    }
}

/// Which reconcilers run, and how leadership is decided.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub forward: bool,
    pub tokens: bool,
    pub concurrency: u16,
    /// None: this process always leads.
    pub lease: Option<LeaseOptions>,
}

#[derive(Clone, Debug)]
pub struct LeaseOptions {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub duration_secs: u64,
    pub grace_secs: u64,
}

/// Runs until `shutdown` fires. Every replica follows the configuration (so
/// its ingestion API has the current key); only the leader reconciles and
/// writes status. Losing the Lease stops the reconcilers at once.
pub async fn run(
    ctx: Arc<Context>,
    opts: RunOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let mut follower = tokio::spawn(config::run(ctx.clone(), shutdown.clone()));
    // Every replica checks tokens against the environments as they are.
    let tenants = tokio::spawn(crate::tenants::run(
        ctx.clone(),
        opts.tokens,
        shutdown.clone(),
    ));
    // The configuration follower ends only at shutdown: ending before is a
    // failure (the settings and the status would freeze).
    let follower_failed = async {
        let ended = (&mut follower).await;
        if stopping(&shutdown) {
            futures::future::pending::<()>().await;
        }
        ended
    };
    let res = tokio::select! {
        r = reconcile(ctx, &opts, shutdown.clone()) => r,
        ended = follower_failed => Err(Error::Invalid(format!(
            "the configuration follower stopped: {ended:?}"
        ))),
    };
    if res.is_err() {
        // Failing: the caller ends the process; the follower goes with it.
        follower.abort();
        tenants.abort();
    } else {
        if !follower.is_finished() {
            let _ = follower.await;
        }
        let _ = tenants.await;
    }
    res
}

/// Leads (with or without a Lease) until shutdown.
async fn reconcile(
    ctx: Arc<Context>,
    opts: &RunOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    match &opts.lease {
        None => {
            // Without leader election every replica leads.
            ctx.metrics.leader.set(1);
            let r = lead(ctx.clone(), opts, shutdown.clone()).await;
            ctx.metrics.leader.set(0);
            r?
        }
        Some(lease) => {
            let manager =
                kube_lease_manager::LeaseManagerBuilder::new(ctx.client.clone(), &lease.name)
                    .with_namespace(&lease.namespace)
                    .with_identity(&lease.identity)
                    .with_duration(lease.duration_secs)
                    .with_grace(lease.grace_secs)
                    // One field manager per replica: a server-side apply
                    // of the holder by another manager conflicts, which is
                    // what keeps two replicas from taking an expired or
                    // released Lease at once (with one shared manager both
                    // succeeded, and both led).
                    .with_field_manager(format!("insights-remote-lease-{}", lease.identity))
                    .build()
                    .await
                    .map_err(|e| Error::Invalid(format!("leader election: {e}")))?;
            let (mut leader, lease_task) = manager.watch().await;
            let mut stop = shutdown.clone();
            let mut failed = None;
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    r = leader.wait_for(|l| *l) => if r.is_err() { break },
                }
                info!(identity = %lease.identity, "became the leader: reconciling");
                ctx.metrics.leader.set(1);
                let (term_tx, term_rx) = watch::channel(false);
                let mut term = tokio::spawn({
                    let (ctx, opts) = (ctx.clone(), opts.clone());
                    async move { lead(ctx, &opts, term_rx).await }
                });
                let stepped_down = tokio::select! {
                    _ = stop.wait_for(|s| *s) => false,
                    _ = leader.wait_for(|l| !*l) => true,
                    ended = &mut term => {
                        // The term failed while leading: the process ends,
                        // after releasing the Lease like a clean stop does,
                        // so the next replica need not wait it out.
                        failed = Some(match ended {
                            Ok(Err(e)) => e,
                            Ok(Ok(())) => Error::Invalid("the leadership term ended".into()),
                            Err(e) => Error::Invalid(format!("the leadership term failed: {e}")),
                        });
                        break;
                    }
                };
                let _ = term_tx.send(true);
                let _ = term.await;
                ctx.metrics.leader.set(0);
                if !stepped_down {
                    break;
                }
                warn!(identity = %lease.identity, "lost the Lease: stopped reconciling");
            }
            // Dropping the receiver releases the Lease for the next replica.
            drop(leader);
            match tokio::time::timeout(std::time::Duration::from_secs(5), lease_task).await {
                Ok(Ok(Ok(_))) => info!("Lease released"),
                other => warn!(?other, "could not release the Lease"),
            }
            if let Some(e) = failed {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// One leadership term: the reconcilers and the status writer. Any of them
/// ending before `stop` is a failure: the term ends with it (and, through
/// [`run`], the process), instead of leading without reconciling.
async fn lead(ctx: Arc<Context>, opts: &RunOptions, outer: watch::Receiver<bool>) -> Result<()> {
    // The term's own stop: the caller's, or the first task to fail.
    let (term_tx, stop) = watch::channel(false);
    let forward = {
        let (term_tx, mut outer) = (term_tx.clone(), outer.clone());
        tokio::spawn(async move {
            let _ = outer.wait_for(|s| *s).await;
            let _ = term_tx.send(true);
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut spawn = |name: &'static str, f: futures::future::BoxFuture<'static, ()>| {
        tasks.spawn(async move {
            f.await;
            name
        });
    };
    use futures::FutureExt;
    spawn(
        "status writer",
        config::write_status(ctx.clone(), stop.clone()).boxed(),
    );
    if opts.forward {
        spawn(
            "namespace cache",
            namespaces::run(ctx.clone(), stop.clone()).boxed(),
        );
        spawn(
            "ConfigMap reconciler",
            configmap::run(ctx.clone(), opts.concurrency, stop.clone()).boxed(),
        );
    }
    if opts.tokens {
        spawn(
            "token reconciler",
            namespace::run(ctx.clone(), stop.clone()).boxed(),
        );
    }
    // Idle until the scanner is enabled (flag, environment or resource).
    spawn(
        "build scanner",
        build::run(ctx.clone(), stop.clone()).boxed(),
    );
    let mut failed = None;
    while let Some(ended) = tasks.join_next().await {
        if stopping(&stop) {
            continue;
        }
        failed = Some(Error::Invalid(match ended {
            Ok(name) => format!("the {name} stopped unexpectedly"),
            Err(e) => format!("a reconciler failed: {e}"),
        }));
        // Stop the others as at shutdown, so in-flight reconciles finish
        // (a ConfigMap confirmed is also marked); bounded, then aborted.
        let _ = term_tx.send(true);
        let rest = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(20), rest)
            .await
            .is_err()
        {
            warn!("some reconcilers did not stop within 20 s; aborting them");
        }
        break;
    }
    forward.abort();
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Follows a metadata watch until shutdown, handing each event to `apply`.
/// Any error makes what was built from the watch untrustworthy (events may
/// have been missed): `invalidate` is called, and after a backoff the watch
/// starts again with a full list (`Init` ... `InitDone`). Errors are counted
/// under `name`; one refused by RBAC is logged once (see
/// [`Context::report`]), others with `fallback` (what the operator does
/// meanwhile).
#[allow(clippy::too_many_arguments)]
pub async fn follow<K>(
    ctx: &Context,
    api: kube::Api<kube::core::PartialObjectMeta<K>>,
    config: kube::runtime::watcher::Config,
    name: &'static str,
    fallback: &'static str,
    shutdown: watch::Receiver<bool>,
    mut apply: impl FnMut(kube::runtime::watcher::Event<kube::core::PartialObjectMeta<K>>),
    mut invalidate: impl FnMut(),
) where
    K: Resource + Clone + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    use futures::StreamExt;
    use kube::runtime::watcher;
    let stop = until_shutdown(shutdown);
    tokio::pin!(stop);
    let restart_delays =
        || crate::broker::doubling(Duration::from_millis(500), Duration::from_secs(30));
    let mut delays = restart_delays();
    loop {
        let mut events = watcher::watcher(api.clone(), config.clone()).boxed();
        loop {
            tokio::select! {
                _ = &mut stop => return,
                ev = events.next() => match ev {
                    Some(Ok(ev)) => {
                        if matches!(ev, watcher::Event::InitDone) {
                            delays = restart_delays();
                        }
                        apply(ev)
                    }
                    Some(Err(e)) => {
                        ctx.metrics.count_watch_error(name);
                        match &e {
                            watcher::Error::InitialListFailed(k)
                            | watcher::Error::WatchStartFailed(k)
                            | watcher::Error::WatchFailed(k) => {
                                ctx.report(name, k, &format!("watching {name} ({fallback})"))
                            }
                            other => warn!(error = %other, "watching {name} ({fallback})"),
                        }
                        break;
                    }
                    None => break,
                },
            }
        }
        invalidate();
        let wait = delays.next().expect("doubling delays do not end");
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Whether shutdown was asked for (the flag set, or its sender gone, which
/// is how a dropped owner stops everything).
pub fn stopping(rx: &watch::Receiver<bool>) -> bool {
    *rx.borrow() || rx.has_changed().is_err()
}

/// Resolves when the shutdown flag turns true.
pub async fn until_shutdown(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// RFC 3339 UTC to the second, as the Go original writes it.
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}
