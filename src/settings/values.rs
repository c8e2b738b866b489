//! The typed values the rest of the program reads: what flags, environment
//! and the custom resource resolve to. Pure data with its defaults; every
//! other room imports them from here, and this file imports nothing from
//! them.

use std::time::Duration;

/// The broker's address and credentials when none are given (upstream's).
pub const DEFAULT_BROKER_HOST: &str = "localhost";
pub const DEFAULT_BROKER_VHOST: &str = "/";
pub const DEFAULT_BROKER_USERNAME: &str = "guest";
pub const DEFAULT_BROKER_PASSWORD: &str = "guest";

/// Exchange, queue and routing key the consumer reads from.
pub const DEFAULT_EXCHANGE: &str = "lagoon-insights";
pub const DEFAULT_QUEUE: &str = "lagoon-insights:items";
/// Publishing with the queue name as routing key is silently dropped by the
/// direct exchange: the binding uses the empty key.
pub const DEFAULT_ROUTING_KEY: &str = "";

/// How long a publish waits for the broker's confirm by default: long
/// enough for a busy broker, short enough that a hung one is answered with
/// 503 within seconds.
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);
/// Our default largest message: below RabbitMQ's own default
/// `max_message_size` (128 MiB in 3.x, 16 MiB in 4.x).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// Where and how to reach the broker.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerSettings {
    /// host or host:port
    pub host: String,
    pub vhost: String,
    pub username: String,
    pub password: String,
    pub tls: Option<TlsSettings>,
    pub exchange: String,
    pub queue: String,
    pub routing_key: String,
    /// The longest wait between two connection attempts.
    pub reconnect_interval: Duration,
    /// How long a publish may wait for the broker's confirm.
    pub confirm_timeout: Duration,
    /// The largest message published; larger ones are refused before
    /// publishing (0: no limit of ours).
    pub max_message_bytes: usize,
}

/// PEM material for amqps.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct TlsSettings {
    pub ca_pem: Option<String>,
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Vec<u8>>,
    /// `RABBITMQ_VERIFY=false`, as upstream honours it: the broker's
    /// certificate is not checked (encrypted, not authenticated). Warned
    /// about at start-up, in the status and in the metrics.
    pub skip_verify: bool,
}

impl std::fmt::Debug for BrokerSettings {
    // The password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerSettings")
            .field("host", &self.host)
            .field("vhost", &self.vhost)
            .field("username", &self.username)
            .field("tls", &self.tls.is_some())
            .field("exchange", &self.exchange)
            .field("queue", &self.queue)
            .field("routing_key", &self.routing_key)
            .finish_non_exhaustive()
    }
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            host: DEFAULT_BROKER_HOST.into(),
            vhost: DEFAULT_BROKER_VHOST.into(),
            username: DEFAULT_BROKER_USERNAME.into(),
            password: DEFAULT_BROKER_PASSWORD.into(),
            tls: None,
            exchange: DEFAULT_EXCHANGE.into(),
            queue: DEFAULT_QUEUE.into(),
            routing_key: DEFAULT_ROUTING_KEY.into(),
            reconnect_interval: Duration::from_secs(30),
            confirm_timeout: DEFAULT_CONFIRM_TIMEOUT,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// How much one request, and all requests together, may cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body.
    pub body_bytes: usize,
    /// Most facts or problems in one request.
    pub max_items: usize,
    /// Budget for the bodies and messages of all requests in flight.
    pub inflight_bytes: usize,
    /// Longest time to receive a whole body.
    pub body_timeout: Duration,
    /// Bounds of the listener's connections.
    pub conn: ConnLimits,
    /// Resident bytes above which posts are answered 503 (0: 80% of the
    /// container's memory limit, if any).
    pub memory_high: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_bytes: 1024 * 1024,
            max_items: 10_000,
            inflight_bytes: 64 * 1024 * 1024,
            body_timeout: Duration::from_secs(10),
            conn: ConnLimits::default(),
            memory_high: 0,
        }
    }
}

/// Bounds of the ingestion listener's connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections open at once from one client address.
    pub max_per_client: usize,
    /// Longest request head (request line and headers).
    pub head_bytes: usize,
    /// Longest time from a head's first byte to its end.
    pub head_timeout: Duration,
    /// Longest time an answer may wait for the client to read.
    pub write_timeout: Duration,
    /// Longest idle time between requests on a connection.
    pub keep_alive: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_per_client: 64,
            head_bytes: 8 * 1024,
            head_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(5),
        }
    }
}

pub const DEFAULT_SCANNER_IMAGE: &str = "uselagoon/insights-scanner:latest";

/// The scanner's settings (flags, environment, custom resource).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannerSettings {
    pub enabled: bool,
    pub image: String,
    /// KEY=VALUE pairs, keys checked at start-up; they win over copied ones.
    pub extra_env: Vec<(String, String)>,
    /// The user the scanner runs as; set, the pod is also `runAsNonRoot`
    /// (the Pod Security Standard "restricted"). Unset: the image's user
    /// (the published scanner image's is not documented).
    pub run_as_user: Option<i64>,
    /// The container's imagePullPolicy (default `Always`, as upstream).
    pub pull_policy: String,
}

impl Default for ScannerSettings {
    fn default() -> Self {
        ScannerSettings {
            enabled: false,
            image: DEFAULT_SCANNER_IMAGE.into(),
            extra_env: Vec::new(),
            run_as_user: None,
            pull_policy: "Always".into(),
        }
    }
}

/// How the reconcilers behave; hot-reloaded from the InsightsRemoteConfig.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operations {
    pub burn_after_reading: bool,
    pub forwarding_enabled: bool,
    pub deferred_enabled: bool,
    pub mins_between_retries: u32,
    pub max_retries: u32,
    pub require_core_enabled: bool,
    pub tokens_enabled: bool,
    pub target_label: Option<String>,
    pub dependency_track: super::dependency_track::Settings,
    pub build_scanner: ScannerSettings,
}
