//! What every reconciler reads: the settings (as watches), the cluster's
//! stores, the counters the status reports, and the means to report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::{Client, Resource};
use tokio::sync::{watch, Notify};
use tracing::warn;

use super::{config, token_secrets, Error, Result};
use crate::broker::{BrokerSettings, Publisher};
use crate::crd::InsightsRemoteConfig;
use crate::metrics::{ControllerErrorLabels, ControllerLabels, Metrics};
use crate::settings::{Operations, Scope};
use crate::token::KeyRing;

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
    // -- Fixed at start-up (from `Settings`).
    pub client: Client,
    pub publisher: Option<Publisher>,
    /// The settings from flags and environment: what applies without a
    /// resource, and what the resource overlays.
    pub baseline: Baseline,
    /// Namespace of Secrets the resource names without one.
    pub pod_namespace: String,
    pub config_name: String,
    /// Limit the ConfigMap and namespace reconcilers to one namespace.
    pub watch_namespace: Option<String>,
    /// How often each namespace's token Secret is re-checked.
    pub token_resync: Duration,

    // -- Settings in force: watches the config follower writes and every
    // reconciler (and the ingestion API) follows.
    pub keys: watch::Sender<Arc<KeyRing>>,
    pub ops: watch::Sender<Operations>,

    // -- What this process sees of the cluster (kube stores) and knows
    // beside it.
    /// The Lagoon namespaces and token Secrets.
    pub cluster: Arc<crate::cluster::Cluster>,
    /// Which environments may post now (every replica keeps it; the
    /// ingestion API and the token reconciler read it).
    pub tenants: Arc<crate::tenants::Tenants>,
    /// Which token Secrets this process verified or wrote.
    pub token_secrets: token_secrets::TokenSecrets,
    /// The InsightsRemoteConfig, as the config follower last saw it.
    pub config_store: Store<InsightsRemoteConfig>,
    /// Fills `config_store`; taken by the config follower.
    pub config_writer: Mutex<Option<Writer<InsightsRemoteConfig>>>,
    /// Dependency-Track uploads in the background.
    pub uploads: crate::dependency_track::Uploads,
    /// ConfigMap versions this process wrote over (a read returning one is
    /// stale).
    pub written: super::configmap::Written,
    /// RBAC refused a create of a token Secret: write them by apply only
    /// ([`super::namespace::write_token`]).
    pub token_create_refused: std::sync::atomic::AtomicBool,

    // -- What is reported: counters and health for the status, metrics,
    // Events, and what RBAC refused.
    pub counters: Counters,
    pub health: Mutex<ConfigHealth>,
    /// Wakes the status writer.
    pub status_changed: Notify,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// What RBAC refused already (each is logged once, then at debug).
    pub denied: Mutex<std::collections::BTreeSet<&'static str>>,
}

/// What a [`Context`] is made of: it is built complete from these and
/// nothing is set on it afterwards.
pub struct Parts {
    pub client: Client,
    pub publisher: Option<Publisher>,
    /// The signing keys in force (the resource may replace them).
    pub keys: watch::Sender<Arc<KeyRing>>,
    pub baseline: Baseline,
    pub metrics: Arc<Metrics>,
    pub scope: Scope,
    pub token_resync: Duration,
    pub uploads: crate::dependency_track::Uploads,
}

impl Context {
    pub fn new(p: Parts) -> Self {
        let (config_store, config_writer) = reflector::store();
        let cluster = Arc::new(crate::cluster::Cluster::default());
        let reporter = Reporter {
            controller: "insights-remote".into(),
            instance: std::env::var("HOSTNAME").ok(),
        };
        Self {
            recorder: Recorder::new(p.client.clone(), reporter),
            ops: watch::Sender::new(p.baseline.ops.clone()),
            client: p.client,
            publisher: p.publisher,
            keys: p.keys,
            metrics: p.metrics,
            counters: Counters::default(),
            health: Mutex::new(ConfigHealth::default()),
            baseline: p.baseline,
            pod_namespace: p.scope.pod_namespace,
            config_name: p.scope.config_name,
            watch_namespace: p.scope.watch_namespace,
            status_changed: Notify::new(),
            token_resync: p.token_resync,
            denied: Default::default(),
            uploads: p.uploads,
            written: Default::default(),
            token_secrets: Default::default(),
            token_create_refused: Default::default(),
            tenants: crate::tenants::Tenants::new(cluster.clone()),
            cluster,
            config_store,
            config_writer: Mutex::new(Some(config_writer)),
        }
    }

    /// Resolves at shutdown, or once the settings satisfy `until` (a
    /// controller whose watch depends on a setting restarts then).
    pub fn until_settings(
        &self,
        shutdown: &tokio_util::sync::CancellationToken,
        until: impl Fn(&Operations) -> bool + Send + Sync + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut ops = self.ops.subscribe();
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                _ = shutdown.cancelled_owned() => {}
                _ = ops.wait_for(|o| until(o)) => {}
            }
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
