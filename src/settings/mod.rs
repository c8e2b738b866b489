//! Command line and environment, with the Go original's names, so that an
//! existing Deployment's arguments and variables keep working.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};

mod app;
pub mod crd;
pub mod dependency_track;
pub mod overlay;
mod values;

pub use app::{LeaseSettings, Reconcilers, Scope, Settings, UploadSettings, WebSettings};
pub use values::*;

/// A setting that cannot be used, in words for the admin.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct Invalid(pub String);

pub type Result<T, E = Invalid> = std::result::Result<T, E>;

/// The Go original's default signing key, public in its repository: refused
/// outside the explicit dev mode.
pub const INSECURE_DEFAULT_KEY: &str = "testsecret";

/// The signing keys as given, checked against the insecure default (their
/// length is checked where the key ring is built, in the token module).
#[derive(Clone)]
pub struct SigningKeys {
    pub current: Vec<u8>,
    /// Previous keys still accepted during a rotation.
    pub previous: Vec<String>,
}

#[derive(Debug, Parser)]
#[command(
    name = "insights-remote",
    version,
    about = "Carries Lagoon insights to Lagoon core"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// With no subcommand, the binary runs, taking the Go original's flags.
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator and the ingestion API (the default).
    Run(Box<RunArgs>),
    /// Print a token for an environment, signed with the configured key.
    GenerateToken(GenerateTokenArgs),
    /// Print the InsightsRemoteConfig CustomResourceDefinition as YAML.
    Crd,
}

#[derive(Debug, Clone, Args)]
pub struct GenerateTokenArgs {
    #[arg(long)]
    pub namespace: String,
    #[arg(long)]
    pub environment_id: String,
    #[arg(long)]
    pub project_name: String,
    #[arg(long)]
    pub environment_name: String,
    #[command(flatten)]
    pub key: KeyArgs,
}

/// Where the signing key comes from.
#[derive(Debug, Clone, Args, Default)]
pub struct KeyArgs {
    /// HS256 signing key for environment tokens (at least 32 bytes).
    #[arg(
        long = "insights-token-secret",
        env = "INSIGHTS_TOKEN_SECRET",
        hide_env_values = true
    )]
    pub token_secret: Option<String>,
    /// Read the signing key from a file instead (trailing newline ignored).
    #[arg(
        long = "insights-token-secret-file",
        env = "INSIGHTS_TOKEN_SECRET_FILE"
    )]
    pub token_secret_file: Option<std::path::PathBuf>,
    /// Previous signing keys still accepted, comma separated, during a rotation.
    #[arg(
        long = "insights-token-previous-secrets",
        env = "INSIGHTS_TOKEN_PREVIOUS_SECRETS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub previous_secrets: Vec<String>,
    /// Development only: allow starting without a real signing key (a random
    /// one is made for this process).
    #[arg(long = "insecure-dev-mode", env = "INSIGHTS_INSECURE_DEV_MODE", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = parse_bool)]
    pub dev_mode: bool,
}

impl KeyArgs {
    /// The signing keys, refusing the Go original's insecure default
    /// outside dev mode. Never echoes a key.
    pub fn signing_keys(&self) -> Result<SigningKeys> {
        let key = match (&self.token_secret, &self.token_secret_file) {
            (_, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        Invalid(format!("reading signing key file {}: {e}", path.display()))
                    })?
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
            ),
            (Some(k), None) if !k.is_empty() => Some(k.clone()),
            _ => None,
        };
        let key = match key {
            Some(k) if k == INSECURE_DEFAULT_KEY && !self.dev_mode => {
                return Err(Invalid(
                    "the signing key is the Go original's public default \"testsecret\"; set INSIGHTS_TOKEN_SECRET to a secret of at least 32 bytes (or pass --insecure-dev-mode for local development)".into(),
                ))
            }
            Some(k) => k.into_bytes(),
            None if self.dev_mode => {
                tracing::warn!("insecure dev mode: no signing key given, using a random key for this process only");
                let mut k = uuid::Uuid::new_v4().simple().to_string().into_bytes();
                k.extend(uuid::Uuid::new_v4().simple().to_string().into_bytes());
                k
            }
            None => {
                return Err(Invalid(
                    "no signing key: set INSIGHTS_TOKEN_SECRET (at least 32 bytes) or --insights-token-secret-file, or name a key Secret in the InsightsRemoteConfig".into(),
                ))
            }
        };
        Ok(SigningKeys {
            current: key,
            previous: self
                .previous_secrets
                .iter()
                .filter(|k| !k.is_empty())
                .cloned()
                .collect(),
        })
    }
}

/// The Go original's flags, plus ours.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[arg(
        long = "rabbitmq-username",
        env = "RABBITMQ_USERNAME",
        default_value = DEFAULT_BROKER_USERNAME
    )]
    pub rabbitmq_username: String,
    #[arg(
        long = "rabbitmq-password",
        env = "RABBITMQ_PASSWORD",
        default_value = DEFAULT_BROKER_PASSWORD,
        hide_env_values = true,
        hide_default_value = true
    )]
    pub rabbitmq_password: String,
    /// Broker host, or host:port.
    #[arg(
        long = "rabbitmq-hostname",
        env = "RABBITMQ_ADDRESS",
        default_value = DEFAULT_BROKER_HOST
    )]
    pub rabbitmq_hostname: String,
    #[arg(long = "rabbitmq-vhost", env = "RABBITMQ_VHOST", default_value = DEFAULT_BROKER_VHOST)]
    pub rabbitmq_vhost: String,
    #[arg(long = "rabbitmq-enabled", env = "RABBITMQ_ENABLED", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "true", value_parser = parse_bool)]
    pub rabbitmq_enabled: bool,
    #[arg(long = "rabbitmq-tls", env = "RABBITMQ_TLS", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = parse_bool)]
    pub rabbitmq_tls: bool,
    /// With RABBITMQ_TLS, verify the broker's certificate (give the CA with
    /// --rabbitmq-cacert for a private CA). Verified unless set to false
    /// explicitly (upstream did not verify unless told to; the lagoon-remote
    /// chart always sets it, so nothing changes there).
    #[arg(long = "rabbitmq-verify", env = "RABBITMQ_VERIFY", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool)]
    pub rabbitmq_verify: Option<bool>,
    #[arg(long = "rabbitmq-cacert", env = "RABBITMQ_CACERT")]
    pub rabbitmq_cacert: Option<std::path::PathBuf>,
    #[arg(long = "rabbitmq-clientcert", env = "RABBITMQ_CLIENTCERT")]
    pub rabbitmq_clientcert: Option<std::path::PathBuf>,
    #[arg(long = "rabbitmq-clientkey", env = "RABBITMQ_CLIENTKEY")]
    pub rabbitmq_clientkey: Option<std::path::PathBuf>,
    /// Longest wait between broker connection attempts (seconds, or 500ms, 30s, 1m).
    #[arg(long = "rabbitmq-reconnect-retry-interval", default_value = "30", value_parser = parse_duration)]
    pub rabbitmq_reconnect_retry_interval: Duration,
    /// How long a publish waits for the broker's confirm.
    /// A confirm that does not come in time answers 503 and drops the
    /// connection as hung, so the requests after it are answered at once.
    #[arg(long = "rabbitmq-confirm-timeout", env = "RABBITMQ_CONFIRM_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub rabbitmq_confirm_timeout: Duration,
    /// Largest message published, in bytes (0: no limit of ours); larger
    /// ones are refused with 413 (API) or rejected (ConfigMaps) before
    /// publishing. Keep it at or below the broker's `max_message_size`.
    #[arg(long = "max-message-bytes", env = "MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    #[arg(long = "rabbitmq-exchange", env = "RABBITMQ_EXCHANGE", default_value = DEFAULT_EXCHANGE)]
    pub rabbitmq_exchange: String,
    #[arg(long = "rabbitmq-queue", env = "RABBITMQ_QUEUE", default_value = DEFAULT_QUEUE)]
    pub rabbitmq_queue: String,
    #[arg(long = "rabbitmq-routing-key", env = "RABBITMQ_ROUTING_KEY", default_value = DEFAULT_ROUTING_KEY)]
    pub rabbitmq_routing_key: String,

    #[arg(long = "burn-after-reading", env = "BURN_AFTER_READING", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = parse_bool)]
    pub burn_after_reading: bool,
    /// Accepted for compatibility; processed ConfigMaps are burned right away
    /// and swept continuously, so no schedule is needed.
    #[arg(
        long = "clear-configmap-sched",
        env = "CLEAR_CONFIGMAP_SCHED",
        default_value = ""
    )]
    pub clear_configmap_sched: String,
    #[arg(long = "enable-insights-deferred", env = "ENABLE_INSIGHTS_DEFERRED", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "true", value_parser = parse_bool)]
    pub enable_insights_deferred: bool,
    #[arg(
        long = "configmap-reconciler-max-retries",
        env = "CONFIGMAP_RECONCILER_MAX_RETRIES",
        default_value = "3"
    )]
    pub configmap_max_retries: u32,
    #[arg(
        long = "configmap-reconciler-mins-between-retries",
        env = "CONFIGMAP_RECONCILER_MINS_BETWEEN_RETRIES",
        default_value = "3"
    )]
    pub configmap_mins_between_retries: u32,
    #[arg(
        long = "configmap-reconciler-max-concurrent",
        env = "CONFIGMAP_RECONCILER_MAX_CONCURRENT",
        default_value = "8"
    )]
    pub configmap_max_concurrent: u16,
    /// Dependency-Track uploads running at once (each in the background: a
    /// slow Dependency-Track never holds up forwarding to the broker).
    #[arg(
        long = "dependency-track-max-concurrent",
        env = "DEPENDENCY_TRACK_MAX_CONCURRENT",
        default_value = "2"
    )]
    pub dependency_track_max_concurrent: u16,
    /// The hosts a namespace's own Dependency-Track endpoint (annotation
    /// dependencytrack.insights.lagoon.sh/custom-endpoint) may name:
    /// comma-separated names, addresses or `*.suffix`. Empty: any host
    /// except loopback, link-local, unspecified and multicast addresses and
    /// the Kubernetes API server's, checked on the resolved addresses.
    #[arg(
        long = "dependency-track-custom-endpoint-hosts",
        env = "DEPENDENCY_TRACK_CUSTOM_ENDPOINT_HOSTS",
        default_value = ""
    )]
    pub dependency_track_custom_endpoint_hosts: String,
    /// How long to wait for Dependency-Track to process one BOM (upstream: 300s).
    #[arg(long = "dependency-track-timeout", env = "DEPENDENCY_TRACK_TIMEOUT", default_value = "300s", value_parser = parse_duration)]
    pub dependency_track_timeout: Duration,
    /// Publish to Lagoon core only ConfigMaps annotated
    /// core.insights.lagoon.sh/enabled=true, as upstream v0.0.19 does (the
    /// build sets it when the environment has core insights on); false
    /// publishes every one (for older build-deploy-tool versions).
    #[arg(long = "require-core-insights-enabled", env = "REQUIRE_CORE_INSIGHTS_ENABLED", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "true", value_parser = parse_bool)]
    pub require_core_enabled: bool,
    /// Unset: follows --enable-namespace-reconciler, as upstream does.
    #[arg(long = "enable-configmap-reconciler", env = "ENABLE_CONFIGMAP_RECONCILER", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool)]
    pub enable_configmap_reconciler_flag: Option<bool>,
    /// ENABLE_NAMESPACE_RECONCILER as given in the environment: upstream's
    /// ConfigMap fallback reads the namespace reconciler's *flag*, not it.
    #[arg(
        long = "namespace-reconciler-env",
        env = "ENABLE_NAMESPACE_RECONCILER",
        hide = true
    )]
    pub namespace_reconciler_env: Option<String>,
    #[arg(long = "enable-namespace-reconciler", env = "ENABLE_NAMESPACE_RECONCILER", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "true", value_parser = parse_bool)]
    pub enable_namespace_reconciler: bool,
    #[arg(long = "enable-webservice", env = "ENABLE_WEBSERVICE", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "true", value_parser = parse_bool)]
    pub enable_webservice: bool,
    #[arg(
        long = "webservice-port",
        env = "WEBSERVICE_PORT",
        default_value = "8888"
    )]
    pub webservice_port: u16,
    /// Address the ingestion API binds to.
    #[arg(
        long = "webservice-bind-address",
        env = "WEBSERVICE_BIND_ADDRESS",
        default_value = "0.0.0.0"
    )]
    pub webservice_bind_address: String,
    /// Largest accepted request body, in bytes.
    #[arg(
        long = "webservice-body-limit",
        env = "WEBSERVICE_BODY_LIMIT",
        default_value = "1048576"
    )]
    pub webservice_body_limit: usize,
    /// Requests per second allowed per token (0: unlimited); bursts up to 2x.
    #[arg(
        long = "webservice-rate-limit",
        env = "WEBSERVICE_RATE_LIMIT",
        default_value = "0"
    )]
    pub webservice_rate_limit: u32,
    /// Most facts or problems accepted in one request.
    #[arg(long = "webservice-max-items", env = "WEBSERVICE_MAX_ITEMS", default_value_t = Limits::default().max_items)]
    pub webservice_max_items: usize,
    /// Memory budget, in bytes, for the bodies and messages of all requests
    /// in flight; a request that does not fit gets 503 with Retry-After.
    #[arg(long = "webservice-inflight-bytes", env = "WEBSERVICE_INFLIGHT_BYTES", default_value_t = Limits::default().inflight_bytes)]
    pub webservice_inflight_bytes: usize,
    /// How long a client may take to send its whole body (e.g. 10s).
    #[arg(long = "webservice-body-timeout", env = "WEBSERVICE_BODY_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub webservice_body_timeout: Duration,
    /// Connections the ingestion API holds open at once (at most half the
    /// process's descriptor limit); more are answered 503 and closed.
    #[arg(long = "webservice-max-connections", env = "WEBSERVICE_MAX_CONNECTIONS", default_value_t = ConnLimits::default().max_connections)]
    pub webservice_max_connections: usize,
    /// Connections the ingestion API holds open at once from one client
    /// address; more are answered 503 and closed.
    #[arg(long = "webservice-max-connections-per-client", env = "WEBSERVICE_MAX_CONNECTIONS_PER_CLIENT", default_value_t = ConnLimits::default().max_per_client)]
    pub webservice_max_connections_per_client: usize,
    /// Longest request head (request line and headers), in bytes; a longer
    /// one is answered 431 and the connection closed.
    #[arg(long = "webservice-max-head-bytes", env = "WEBSERVICE_MAX_HEAD_BYTES", default_value_t = ConnLimits::default().head_bytes)]
    pub webservice_max_head_bytes: usize,
    /// How long an answer may wait for a client that does not read it
    /// before the connection is closed (e.g. 5s).
    #[arg(long = "webservice-write-timeout", env = "WEBSERVICE_WRITE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub webservice_write_timeout: Duration,
    /// Resident memory, in bytes, above which the ingestion API answers
    /// posts 503 with Retry-After until it falls again. 0: 80% of the
    /// container's memory limit when there is one, else never.
    #[arg(
        long = "webservice-memory-high",
        env = "WEBSERVICE_MEMORY_HIGH",
        default_value_t = 0
    )]
    pub webservice_memory_high: u64,
    /// Worker threads of the ingestion API (unset, empty or 0: one per core).
    #[arg(long = "webservice-workers", env = "WEBSERVICE_WORKERS", value_parser = parse_workers)]
    pub webservice_workers: Option<usize>,
    #[command(flatten)]
    pub key: KeyArgs,
    /// How often each namespace's token Secret is re-checked (a Secret
    /// edited or deleted by hand is repaired within this time).
    #[arg(long = "token-resync-interval", env = "TOKEN_RESYNC_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub token_resync_interval: Duration,
    #[arg(long = "token-target-label", env = "TOKEN_TARGET_LABEL")]
    pub token_target_label: Option<String>,
    #[arg(long = "leader-elect", env = "LEADER_ELECT", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = parse_bool)]
    pub leader_elect: bool,
    /// Name of the coordination.k8s.io Lease in POD_NAMESPACE.
    #[arg(
        long = "leader-election-id",
        env = "LEADER_ELECTION_ID",
        default_value = UPSTREAM_LEASE
    )]
    pub leader_election_id: String,
    /// How long a Lease stays valid without renewal: the longest handover after a leader dies.
    #[arg(long = "leader-election-lease-duration", env = "LEADER_ELECTION_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub leader_election_lease_duration: Duration,
    /// After SIGTERM, how long to keep serving while /readyz answers 503,
    /// so that Services stop sending before the listeners close (a rolling
    /// upgrade loses no request). Default 0s (stop at once, as upstream);
    /// the chart sets 5s.
    #[arg(long = "shutdown-delay", env = "SHUTDOWN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,
    #[arg(long = "health-probe-bind-address", env = "HEALTH_PROBE_BIND_ADDRESS", default_value = ":8081", value_parser = parse_bind)]
    pub health_probe_bind_address: SocketAddr,
    /// Prometheus metrics; `0` (the default, as upstream) turns them off.
    #[arg(long = "metrics-bind-address", env = "METRICS_BIND_ADDRESS", default_value = "0", value_parser = parse_bind)]
    pub metrics_bind_address: SocketAddr,
    /// Name of the cluster-scoped InsightsRemoteConfig to follow, if it exists.
    #[arg(
        long = "config-name",
        env = "INSIGHTS_REMOTE_CONFIG_NAME",
        default_value = "default"
    )]
    pub config_name: String,
    /// Reconcile ConfigMaps and tokens in this namespace only (default: all).
    #[arg(long = "watch-namespace", env = "WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Namespace holding Secrets the InsightsRemoteConfig references.
    #[arg(
        long = "pod-namespace",
        env = "POD_NAMESPACE",
        default_value = "lagoon"
    )]
    pub pod_namespace: String,
    /// plain (default) or json; --zap-encoder maps here when this is unset.
    #[arg(long = "log-format", env = "LOG_FORMAT", value_parser = ["plain", "json"])]
    pub log_format: Option<String>,
    /// info (default), debug, warn, error, or RUST_LOG syntax; --zap-log-level
    /// maps here when this is unset.
    #[arg(long = "log-level", env = "LOG_LEVEL")]
    pub log_level: Option<String>,
    #[command(flatten)]
    pub upstream: UpstreamArgs,

    #[arg(long = "generate-token-only", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = parse_bool)]
    pub generate_token_only: bool,
    #[arg(long = "generate-token-only-namespace", default_value = "")]
    pub generate_token_only_namespace: String,
    #[arg(long = "generate-token-only-environment-id", default_value = "")]
    pub generate_token_only_environment_id: String,
    #[arg(long = "generate-token-only-project-name", default_value = "")]
    pub generate_token_only_project_name: String,
    #[arg(long = "generate-token-only-environment-name", default_value = "")]
    pub generate_token_only_environment_name: String,
}

/// Upstream v0.0.19's Lease name: a Go and a Rust replica share it, so a
/// rolling switch never has two leaders.
pub const UPSTREAM_LEASE: &str = "ac8a682b.lagoon.sh";

/// Flags and variables of upstream v0.0.19 (controller-runtime, zap,
/// Dependency-Track, build scanner) that this version accepts so that an
/// existing Deployment starts; what they do here is reported at start-up
/// ([`RunArgs::compat_report`]).
#[derive(Debug, Clone, Args, Default)]
pub struct UpstreamArgs {
    /// As upstream (default true): metrics over HTTPS for callers the API
    /// server authenticates (TokenReview) and authorises to get /metrics
    /// (SubjectAccessReview); false serves plain HTTP. Only when
    /// --metrics-bind-address is not 0.
    #[arg(long = "metrics-secure", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool)]
    pub metrics_secure: Option<bool>,
    /// No effect: no listener here serves HTTP/2.
    #[arg(long = "enable-http2", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool)]
    pub enable_http2: Option<bool>,
    /// Kubeconfig file (the KUBECONFIG variable works too).
    #[arg(long = "kubeconfig")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// zap development mode: accepted; logs are plain text unless json is asked for.
    #[arg(long = "zap-devel", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool)]
    pub zap_devel: Option<bool>,
    /// json or console: maps to --log-format json or plain.
    #[arg(long = "zap-encoder", value_parser = ["json", "console"])]
    pub zap_encoder: Option<String>,
    /// debug, info, error, panic or a number: maps to --log-level.
    #[arg(long = "zap-log-level")]
    pub zap_log_level: Option<String>,
    /// Accepted; no effect.
    #[arg(long = "zap-stacktrace-level")]
    pub zap_stacktrace_level: Option<String>,
    /// Accepted; timestamps are RFC 3339.
    #[arg(long = "zap-time-encoding")]
    pub zap_time_encoding: Option<String>,
    #[arg(long = "enable-dependency-track-integration", env = "ENABLE_DEPENDENCY_TRACK_INTEGRATION", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = parse_bool)]
    pub dependency_track: bool,
    #[arg(
        long = "dependency-track-api-endpoint",
        env = "DEPENDENCY_TRACK_API_ENDPOINT",
        default_value = ""
    )]
    pub dependency_track_api_endpoint: String,
    #[arg(
        long = "dependency-track-api-key",
        env = "DEPENDENCY_TRACK_API_KEY",
        default_value = "",
        hide_env_values = true
    )]
    pub dependency_track_api_key: String,
    #[arg(
        long = "dependency-track-root-project-name-template",
        default_value = "{{ .ProjectName }}"
    )]
    pub dependency_track_root_project_name_template: String,
    #[arg(
        long = "dependency-track-parent-project-name-template",
        default_value = "{{ .ProjectName }}-{{ .EnvironmentName }}"
    )]
    pub dependency_track_parent_project_name_template: String,
    #[arg(
        long = "dependency-track-project-name-template",
        default_value = "{{ .ProjectName }}-{{ .EnvironmentName }}-{{ .ServiceName }}"
    )]
    pub dependency_track_project_name_template: String,
    #[arg(long = "dependency-track-version-template", default_value = "unset")]
    pub dependency_track_version_template: String,
    #[arg(long = "dependency-track-push-prod-only", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "true", value_parser = parse_bool)]
    pub dependency_track_push_prod_only: bool,
    #[arg(long = "enable-build-scanner", env = "ENABLE_BUILD_SCANNING", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = parse_bool)]
    pub build_scanner: bool,
    #[arg(
        long = "build-scanner-image",
        env = "BUILD_SCANNER_IMAGE",
        default_value = "uselagoon/insights-scanner:latest"
    )]
    pub build_scanner_image: String,
    /// The user id the scanner pod runs as; set, the pod is runAsNonRoot
    /// too (Pod Security Standard "restricted"). Unset: the image's user.
    #[arg(long = "build-scanner-run-as-user", env = "BUILD_SCANNER_RUN_AS_USER")]
    pub build_scanner_run_as_user: Option<i64>,
    /// When the node fetches the scanner image: upstream's `Always` (a
    /// moving tag is re-read each build), or `IfNotPresent`/`Never` for
    /// nodes without a registry (images imported beforehand).
    #[arg(
        long = "build-scanner-image-pull-policy",
        env = "BUILD_SCANNER_IMAGE_PULL_POLICY",
        default_value = "Always",
        value_parser = ["Always", "IfNotPresent", "Never"]
    )]
    pub build_scanner_image_pull_policy: String,
    /// KEY=VALUE for the scanner pod, repeatable (keys checked at start-up).
    #[arg(long = "build-scanner-extra-env", value_parser = parse_env_pair)]
    pub build_scanner_extra_env: Vec<(String, String)>,
    /// Comma-separated KEY=VALUE pairs; win over the flag on the same key.
    #[arg(
        long = "build-scanner-extra-env-vars",
        env = "BUILD_SCANNER_EXTRA_ENV_VARS",
        default_value = "",
        hide = true
    )]
    pub build_scanner_extra_env_vars: String,
}

/// `KEY=VALUE` with a key that is a valid environment variable name.
pub fn parse_env_pair(s: &str) -> std::result::Result<(String, String), String> {
    let s = s.trim();
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    let k = k.trim();
    let valid = k
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "{k:?} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

impl RunArgs {
    /// Upstream reads ENABLE_CONFIGMAP_RECONCILER with the namespace
    /// reconciler's value as its fallback.
    pub fn enable_configmap_reconciler(&self) -> bool {
        self.enable_configmap_reconciler_flag.unwrap_or(
            // The flag's value: its default (true) when the namespace
            // reconciler was set only through the environment.
            self.namespace_reconciler_env.is_some() || self.enable_namespace_reconciler,
        )
    }

    pub fn log_format(&self) -> &str {
        match (&self.log_format, self.upstream.zap_encoder.as_deref()) {
            (Some(f), _) => f,
            (None, Some("json")) => "json",
            _ => "plain",
        }
    }

    pub fn log_level(&self) -> String {
        if let Some(l) = &self.log_level {
            return l.clone();
        }
        match self.upstream.zap_log_level.as_deref().map(str::trim) {
            Some("debug") => "debug".into(),
            Some("error" | "panic" | "dpanic" | "fatal") => "error".into(),
            Some("warn") => "warn".into(),
            // zap's numeric levels go below debug.
            Some(n) if n.parse::<u8>().is_ok_and(|n| n > 0) => "trace".into(),
            _ => "info".into(),
        }
    }

    /// The build scanner's extra variables: flags, then the variable's pairs
    /// (which win on the same key).
    pub fn build_scanner_extra_env(&self) -> Result<Vec<(String, String)>> {
        let mut out = self.upstream.build_scanner_extra_env.clone();
        for item in self.upstream.build_scanner_extra_env_vars.split(',') {
            if item.trim().is_empty() {
                continue;
            }
            let pair = parse_env_pair(item)
                .map_err(|e| Invalid(format!("BUILD_SCANNER_EXTRA_ENV_VARS: {e}")))?;
            out.retain(|(k, _)| *k != pair.0);
            out.push(pair);
        }
        Ok(out)
    }

    /// Metrics over HTTPS with API-server authentication (upstream's default).
    pub fn metrics_secure(&self) -> bool {
        self.metrics_bind_address.port() != 0 && self.upstream.metrics_secure.unwrap_or(true)
    }

    /// What upstream's flags do here, one line each, for the start-up log.
    pub fn compat_report(&self) -> Result<Vec<String>> {
        let u = &self.upstream;
        let mut notes = Vec::new();
        if u.enable_http2.is_some() {
            notes.push("--enable-http2: no effect (no HTTP/2 listener)".into());
        }
        if u.zap_devel.is_some()
            || u.zap_stacktrace_level.is_some()
            || u.zap_time_encoding.is_some()
        {
            notes.push("--zap-devel/--zap-stacktrace-level/--zap-time-encoding: no effect (--zap-log-level and --zap-encoder map to --log-level and --log-format)".into());
        }
        if u.dependency_track
            && (u.dependency_track_api_endpoint.is_empty() || u.dependency_track_api_key.is_empty())
        {
            notes.push("ENABLE_DEPENDENCY_TRACK_INTEGRATION: no DEPENDENCY_TRACK_API_ENDPOINT or DEPENDENCY_TRACK_API_KEY: only per-namespace uploads (dependencytrack.insights.lagoon.sh/custom-endpoint) run".into());
        }
        self.build_scanner_extra_env()?;
        if !self.clear_configmap_sched.is_empty() {
            notes.push("CLEAR_CONFIGMAP_SCHED: no effect (burn-after-reading deletes right after forwarding)".into());
        }
        Ok(notes)
    }

    pub fn broker_settings(&self) -> Result<BrokerSettings> {
        let read = |p: &Option<std::path::PathBuf>| -> Result<Option<Vec<u8>>> {
            p.as_ref()
                .map(|p| {
                    std::fs::read(p).map_err(|e| Invalid(format!("reading {}: {e}", p.display())))
                })
                .transpose()
        };
        let tls = if self.rabbitmq_tls {
            Some(TlsSettings {
                skip_verify: self.rabbitmq_verify == Some(false),
                ca_pem: read(&self.rabbitmq_cacert)?
                    .map(|b| String::from_utf8_lossy(&b).into_owned()),
                client_cert_pem: read(&self.rabbitmq_clientcert)?,
                client_key_pem: read(&self.rabbitmq_clientkey)?,
            })
        } else {
            None
        };
        Ok(BrokerSettings {
            host: self.rabbitmq_hostname.clone(),
            vhost: self.rabbitmq_vhost.clone(),
            username: self.rabbitmq_username.clone(),
            password: self.rabbitmq_password.clone(),
            tls,
            exchange: self.rabbitmq_exchange.clone(),
            queue: self.rabbitmq_queue.clone(),
            routing_key: self.rabbitmq_routing_key.clone(),
            reconnect_interval: self.rabbitmq_reconnect_retry_interval,
            confirm_timeout: self.rabbitmq_confirm_timeout,
            max_message_bytes: self.max_message_bytes,
        })
    }

    pub fn limits(&self) -> Limits {
        Limits {
            body_bytes: self.webservice_body_limit,
            max_items: self.webservice_max_items,
            inflight_bytes: self.webservice_inflight_bytes,
            body_timeout: self.webservice_body_timeout,
            conn: ConnLimits {
                max_connections: self.webservice_max_connections.max(1),
                max_per_client: self.webservice_max_connections_per_client.max(1),
                head_bytes: self.webservice_max_head_bytes.max(256),
                write_timeout: self.webservice_write_timeout,
                ..Default::default()
            },
            memory_high: self.webservice_memory_high,
        }
    }

    pub fn webservice_addr(&self) -> Result<SocketAddr> {
        format!("{}:{}", self.webservice_bind_address, self.webservice_port)
            .parse()
            .map_err(|e| Invalid(format!("webservice address: {e}")))
    }
}

impl RunArgs {
    pub fn operations(&self) -> Result<Operations> {
        Ok(Operations {
            burn_after_reading: self.burn_after_reading,
            forwarding_enabled: self.enable_configmap_reconciler(),
            deferred_enabled: self.enable_insights_deferred,
            mins_between_retries: self.configmap_mins_between_retries,
            max_retries: self.configmap_max_retries,
            require_core_enabled: self.require_core_enabled,
            tokens_enabled: self.enable_namespace_reconciler,
            target_label: self.token_target_label.clone().filter(|l| !l.is_empty()),
            dependency_track: self.dependency_track_settings()?,
            build_scanner: ScannerSettings {
                enabled: self.upstream.build_scanner,
                image: self.upstream.build_scanner_image.clone(),
                extra_env: self.build_scanner_extra_env()?,
                run_as_user: self.upstream.build_scanner_run_as_user,
                pull_policy: self.upstream.build_scanner_image_pull_policy.clone(),
            },
        })
    }

    /// The Dependency-Track flags and variables; a template this version
    /// cannot render stops start-up.
    pub fn dependency_track_settings(&self) -> Result<dependency_track::Settings> {
        let u = &self.upstream;
        let templates = dependency_track::Templates::parse(
            &u.dependency_track_root_project_name_template,
            &u.dependency_track_parent_project_name_template,
            &u.dependency_track_project_name_template,
            &u.dependency_track_version_template,
        )
        .map_err(|e| Invalid(format!("Dependency-Track: {e}")))?;
        Ok(dependency_track::Settings {
            enabled: u.dependency_track,
            endpoint: u.dependency_track_api_endpoint.clone(),
            api_key: u.dependency_track_api_key.clone(),
            templates,
            push_prod_only: u.dependency_track_push_prod_only,
        })
    }
}

/// Go's flag package accepts `-name` as well as `--name`; clap only the
/// latter. Rewrite single-dash long flags so old Deployments keep working.
pub fn normalize_args<I: IntoIterator<Item = String>>(args: I) -> Vec<String> {
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            let b = a.as_bytes();
            if i > 0
                && b.len() > 2
                && b[0] == b'-'
                && b[1] != b'-'
                && b[1].is_ascii_alphabetic()
                && b[2] != b'='
            {
                format!("-{a}")
            } else {
                a
            }
        })
        .collect()
}

/// Upstream's booleans, as Go's ParseBool and zap take them, plus what
/// clap's `BoolishValueParser` takes (`yes`, `on`, ...), trimmed, and an
/// empty value as false: charts set `ENABLE_X: ""` for "unset", which
/// `BoolishValueParser` refuses, stopping an existing Deployment.
pub fn parse_bool(s: &str) -> std::result::Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "yes" | "y" | "on" => Ok(true),
        "0" | "f" | "false" | "no" | "n" | "off" | "" => Ok(false),
        other => Err(format!("{other:?} is not a boolean")),
    }
}

/// A bare number of seconds (`30`, as upstream's flags take it), or a
/// duration as humantime reads it (`500ms`, `30s`, `5m`, `1h30m`).
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| format!("{s:?} is not a duration"));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration (use ms, s, m or h): {e}"))
}

/// A worker count; empty is 0 (one per core), so `WEBSERVICE_WORKERS=` as
/// scripts set it for "unset" keeps the default.
pub fn parse_workers(s: &str) -> std::result::Result<usize, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(0);
    }
    s.parse()
        .map_err(|_| format!("{s:?} is not a number of workers"))
}

/// Go-style bind addresses: `:8081` means every interface; `0` disables.
pub fn parse_bind(s: &str) -> std::result::Result<SocketAddr, String> {
    let s = s.trim();
    let full = if let Some(port) = s.strip_prefix(':') {
        format!("0.0.0.0:{port}")
    } else if s == "0" {
        "0.0.0.0:0".to_string()
    } else {
        s.to_string()
    };
    full.parse().map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let argv = normalize_args(
            std::iter::once("insights-remote".to_string())
                .chain(args.iter().map(|s| s.to_string())),
        );
        Cli::try_parse_from(argv).unwrap()
    }

    /// RABBITMQ_TLS alone verifies the broker's certificate; only an
    /// explicit RABBITMQ_VERIFY=false (as the chart may give) skips it.
    #[test]
    fn tls_verifies_unless_told_not_to() {
        let skip = |extra: &[&str]| {
            let mut args = vec!["insights-remote", "--rabbitmq-tls=true"];
            args.extend_from_slice(extra);
            let cli = Cli::parse_from(normalize_args(args.into_iter().map(String::from)));
            cli.run.broker_settings().unwrap().tls.unwrap().skip_verify
        };
        assert!(!skip(&[]));
        assert!(!skip(&["--rabbitmq-verify=true"]));
        assert!(!skip(&["--rabbitmq-verify"]));
        assert!(skip(&["--rabbitmq-verify=false"]));
    }

    #[test]
    fn go_style_flags_parse() {
        let cli = parse(&[
            "-rabbitmq-hostname=broker:5672",
            "--burn-after-reading",
            "-webservice-port",
            "9999",
            "--enable-configmap-reconciler=false",
            "--health-probe-bind-address=:8082",
            "--rabbitmq-reconnect-retry-interval=2",
        ]);
        assert!(cli.command.is_none());
        let r = cli.run;
        assert_eq!(r.rabbitmq_hostname, "broker:5672");
        assert!(r.burn_after_reading);
        assert_eq!(r.webservice_port, 9999);
        assert!(!r.enable_configmap_reconciler());
        assert!(r.enable_namespace_reconciler);
        assert_eq!(r.health_probe_bind_address.port(), 8082);
        assert_eq!(r.rabbitmq_reconnect_retry_interval, Duration::from_secs(2));
        assert_eq!(r.configmap_max_retries, 3);
    }

    /// The lagoon-remote chart's Deployment (no arguments) and upstream's
    /// kustomize patch (controller-runtime and zap flags) both parse, with
    /// upstream's meaning.
    #[test]
    fn upstream_argument_lists_parse() {
        let r = parse(&[]).run;
        assert!(
            r.enable_configmap_reconciler(),
            "follows the namespace reconciler"
        );
        assert_eq!(r.configmap_mins_between_retries, 3);
        assert_eq!(r.metrics_bind_address.port(), 0, "metrics off by default");
        assert!(!r.metrics_secure(), "nothing to secure when off");
        assert!(
            r.operations().unwrap().require_core_enabled,
            "the core gate is on by default, as upstream v0.0.19"
        );
        assert_eq!(r.leader_election_id, "ac8a682b.lagoon.sh");
        assert_eq!(r.rabbitmq_verify, None);
        let r = parse(&[
            "--leader-elect",
            "--metrics-bind-address=:8443",
            "--health-probe-bind-address=:8081",
            "--metrics-secure",
            "--enable-http2=false",
            "--zap-devel=true",
            "--zap-encoder=json",
            "--zap-log-level=debug",
            "--zap-stacktrace-level=error",
            "--zap-time-encoding=iso8601",
            "--enable-namespace-reconciler=false",
            "--enable-dependency-track-integration=false",
            "--dependency-track-push-prod-only=true",
            "--enable-build-scanner=false",
            "--build-scanner-image=registry/scanner:1",
            "--build-scanner-extra-env=HTTP_PROXY=http://proxy:3128",
            "--build-scanner-extra-env",
            "A=b=c",
        ])
        .run;
        assert!(
            !r.enable_configmap_reconciler(),
            "follows the namespace reconciler"
        );
        assert_eq!(r.log_format(), "json");
        assert_eq!(r.log_level(), "debug");
        assert_eq!(
            r.build_scanner_extra_env().unwrap(),
            [
                ("HTTP_PROXY".to_string(), "http://proxy:3128".to_string()),
                ("A".to_string(), "b=c".to_string())
            ]
        );
        // --enable-http2 and the zap flags without an equivalent.
        assert_eq!(r.compat_report().unwrap().len(), 2);
        assert!(
            r.metrics_secure(),
            "metrics on :8443 over HTTPS, as upstream"
        );
        // A bad key stops start-up with a clear message.
        let argv = ["insights-remote", "--build-scanner-extra-env=1BAD=x"];
        let e = Cli::try_parse_from(argv).unwrap_err().to_string();
        assert!(e.contains("not an environment variable name"), "{e}");
    }

    #[test]
    fn run_subcommand_and_generate_token_parse() {
        let cli = parse(&["run", "--webservice-port=1234"]);
        match cli.command {
            Some(Command::Run(r)) => assert_eq!(r.webservice_port, 1234),
            other => panic!("{other:?}"),
        }
        let cli = parse(&[
            "generate-token",
            "--namespace=n",
            "--environment-id=1",
            "--project-name=p",
            "--environment-name=e",
        ]);
        assert!(matches!(cli.command, Some(Command::GenerateToken(_))));
    }

    #[test]
    fn insecure_default_key_is_refused_outside_dev_mode() {
        let args = KeyArgs {
            token_secret: Some("testsecret".into()),
            ..Default::default()
        };
        let err = args.signing_keys().err().unwrap().to_string();
        assert!(
            err.contains("testsecret") && err.contains("32 bytes"),
            "{err}"
        );
        assert!(KeyArgs::default().signing_keys().is_err());
        let dev = KeyArgs {
            dev_mode: true,
            ..Default::default()
        };
        assert!(dev.signing_keys().is_ok());
    }

    /// The broker's defaults live in `BrokerSettings::default()` (used by
    /// the custom resource's merge and the tests) and in the flags' clap
    /// attributes (shown by --help): they must not drift apart.
    #[test]
    fn flag_defaults_are_the_broker_defaults() {
        let cli = parse(&[]);
        let from_flags = cli.run.broker_settings().unwrap();
        assert_eq!(from_flags, BrokerSettings::default());
    }

    #[test]
    fn helpers_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("abc").is_err());
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("").is_err());
        assert!(parse_bool("TRUE").unwrap());
        assert!(!parse_bool("false").unwrap());
        assert!(parse_bool("maybe").is_err());
        assert_eq!(parse_workers("4").unwrap(), 4);
        assert_eq!(parse_workers("").unwrap(), 0);
        assert!(parse_workers("many").is_err());
        assert_eq!(parse_bind(":8080").unwrap().to_string(), "0.0.0.0:8080");
        assert_eq!(
            parse_bind("127.0.0.1:9").unwrap().to_string(),
            "127.0.0.1:9"
        );
    }

    /// What `parse_bool` takes beyond clap's `BoolishValueParser`: an empty
    /// or padded value (as charts render an unset variable).
    #[test]
    fn booleans_as_deployments_give_them() {
        use clap::builder::TypedValueParser;
        let cmd = clap::Command::new("t");
        let boolish = |v: &str| {
            clap::builder::BoolishValueParser::new()
                .parse_ref(&cmd, None, std::ffi::OsStr::new(v))
                .ok()
        };
        for (v, want) in [("", false), (" true ", true), ("T", true), ("off", false)] {
            assert_eq!(parse_bool(v), Ok(want), "{v:?}");
        }
        assert_eq!(boolish(""), None, "clap refuses an empty value");
        assert_eq!(boolish(" true "), None, "and a padded one");
        assert!(parse_bool("maybe").is_err());
    }
}
