//! [`Settings`]: everything one process runs with, mapped once from flags
//! and environment ([`Settings::from_args`]). `run::App::build` takes it and
//! nothing else; the custom resource later overlays the broker, key and
//! behaviour parts of it (`controller::config`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{BrokerSettings, KeyArgs, Limits, Operations, Result, RunArgs};

/// Everything one process runs with.
#[derive(Clone, Debug)]
pub struct Settings {
    pub broker: BrokerSettings,
    /// `RABBITMQ_ENABLED`: false publishes nothing.
    pub publish: bool,
    /// Where the signing key comes from (checked when the process starts).
    pub keys: KeyArgs,
    /// Behaviour, as flags and environment give it.
    pub ops: Operations,
    /// Which reconcilers run.
    pub reconcilers: Reconcilers,
    /// Leader election, when on.
    pub lease: Option<LeaseSettings>,
    /// Where the process runs and what it follows.
    pub scope: Scope,
    /// How often each namespace's token Secret is re-checked.
    pub token_resync: Duration,
    pub uploads: UploadSettings,
    pub web: WebSettings,
    /// How long the servers keep serving after SIGTERM.
    pub shutdown_delay: Duration,
    /// controller-runtime's `--kubeconfig`; else the usual kubeconfig or
    /// in-cluster configuration.
    pub kubeconfig: Option<PathBuf>,
    /// What upstream's flags do here, one line each, for the start-up log.
    pub compat_notes: Vec<String>,
}

/// Which reconcilers run.
#[derive(Clone, Debug)]
pub struct Reconcilers {
    pub forward: bool,
    pub tokens: bool,
    pub scanner: bool,
    /// ConfigMaps reconciled at once.
    pub concurrency: u16,
}

impl Reconcilers {
    /// Whether any controller runs (then the operator's context is built).
    pub fn any(&self) -> bool {
        self.forward || self.tokens || self.scanner
    }
}

#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    pub duration: Duration,
}

/// Where the process runs and what it follows.
#[derive(Clone, Debug)]
pub struct Scope {
    /// The namespace of the pod (Lease, Secrets the resource names without
    /// a namespace).
    pub pod_namespace: String,
    /// The InsightsRemoteConfig followed.
    pub config_name: String,
    /// Only this namespace's ConfigMaps, namespaces and Secrets.
    pub watch_namespace: Option<String>,
}

/// Dependency-Track uploads in the background.
#[derive(Clone, Debug)]
pub struct UploadSettings {
    pub max_concurrent: u16,
    pub timeout: Duration,
    /// Where a namespace's own endpoint may point (see
    /// `dependency_track::EndpointPolicy`).
    pub custom_endpoint_hosts: String,
}

/// The listeners.
#[derive(Clone, Debug)]
pub struct WebSettings {
    /// The ingestion API, when on.
    pub ingestion: Option<SocketAddr>,
    /// Worker threads of the ingestion API (None: one per core).
    pub workers: Option<usize>,
    pub limits: Limits,
    /// Requests per second and environment.
    pub rate_limit: u32,
    /// Probes (port 0: none).
    pub probes: SocketAddr,
    /// Metrics (port 0: none).
    pub metrics: SocketAddr,
    /// Metrics over HTTPS for callers the API server authorises.
    pub metrics_secure: bool,
}

impl Settings {
    /// Maps flags and environment, once. A setting that cannot be used
    /// (a bad template, an unreadable TLS file, a bad extra variable)
    /// stops here.
    pub fn from_args(args: &RunArgs) -> Result<Settings> {
        Ok(Settings {
            broker: args.broker_settings()?,
            publish: args.rabbitmq_enabled,
            keys: args.key.clone(),
            ops: args.operations()?,
            reconcilers: Reconcilers {
                forward: args.enable_configmap_reconciler(),
                tokens: args.enable_namespace_reconciler,
                scanner: args.upstream.build_scanner,
                concurrency: args.configmap_max_concurrent,
            },
            lease: args.leader_elect.then(|| LeaseSettings {
                name: args.leader_election_id.clone(),
                duration: args.leader_election_lease_duration,
            }),
            scope: Scope {
                pod_namespace: args.pod_namespace.clone(),
                config_name: args.config_name.clone(),
                watch_namespace: args.watch_namespace.clone().filter(|n| !n.is_empty()),
            },
            token_resync: args.token_resync_interval,
            uploads: UploadSettings {
                max_concurrent: args.dependency_track_max_concurrent,
                timeout: args.dependency_track_timeout,
                custom_endpoint_hosts: args.dependency_track_custom_endpoint_hosts.clone(),
            },
            web: WebSettings {
                ingestion: if args.enable_webservice {
                    Some(args.webservice_addr()?)
                } else {
                    None
                },
                workers: args.webservice_workers.filter(|&n| n > 0),
                limits: args.limits(),
                rate_limit: args.webservice_rate_limit,
                probes: args.health_probe_bind_address,
                metrics: args.metrics_bind_address,
                metrics_secure: args.metrics_secure(),
            },
            shutdown_delay: args.shutdown_delay,
            kubeconfig: args.upstream.kubeconfig.clone(),
            compat_notes: args.compat_report()?,
        })
    }
}
