//! Prometheus metrics, served as text on the metrics port.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub processor: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerErrorLabels {
    pub controller: String,
    pub error: String,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub publishes: Family<OutcomeLabels, Counter>,
    pub publish_duration: Histogram,
    pub confirms_pending: Gauge,
    pub broker_connected: Gauge,
    /// 1 while connected over TLS without verifying the broker's certificate.
    pub broker_tls_unverified: Gauge,
    /// AMQP connections opened (a reconnect adds one).
    pub broker_connections: Counter,
    /// Channels opened, on new or existing connections.
    pub broker_channels: Counter,
    /// Requests refused before publishing, by reason (too_large, busy, body_timeout).
    pub refused: Family<OutcomeLabels, Counter>,
    /// Connections open on the ingestion listener.
    pub http_connections: Gauge,
    /// Connections refused at accept, by reason (max_connections, max_per_client).
    pub http_connections_refused: Family<OutcomeLabels, Counter>,
    /// Connections closed for a bound, by reason (head_too_large, head_timeout, write_timeout, spinning).
    pub http_connections_closed: Family<OutcomeLabels, Counter>,
    pub reconciliations: Family<ControllerLabels, Counter>,
    pub reconcile_errors: Family<ControllerErrorLabels, Counter>,
    /// Watch errors, by watch (config, secrets).
    pub watch_errors: Family<ControllerLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    pub configmaps: Family<OutcomeLabels, Counter>,
    pub post_processors: Family<StepLabels, Counter>,
    pub build_scans: Family<OutcomeLabels, Counter>,
    pub tokens_minted: Counter,
    pub tokens_revoked: Counter,
    /// 1 while this replica leads (reconciles); 0 while it only serves.
    pub leader: Gauge,
}

/// Label values known in advance: their series exist from the start at 0,
/// so that `rate()` and `increase()` see the first event and alert rules
/// and dashboards find every metric they name (tests/monitoring.rs).
const CONTROLLERS: [&str; 3] = ["namespace", "configmap", "build"];
const ERROR_KINDS: [&str; 6] = [
    "conflict",
    "forbidden",
    "kube",
    "serialize",
    "token",
    "invalid",
];
const CONFIGMAP_OUTCOMES: [&str; 5] = ["forwarded", "deferred", "rejected", "burned", "skipped"];
const PUBLISH_OUTCOMES: [&str; 2] = ["confirmed", "failed"];
const REQUESTS_REFUSED: [&str; 5] = ["too_large", "busy", "body_timeout", "memory", "expansion"];
const CONNECTIONS_REFUSED: [&str; 3] = ["max_connections", "max_per_client", "max_per_environment"];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("insights_remote");
        let m = Self {
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            publishes: Family::default(),
            publish_duration: latency_histogram(),
            confirms_pending: Gauge::default(),
            broker_connected: Gauge::default(),
            broker_connections: Counter::default(),
            broker_tls_unverified: Gauge::default(),
            broker_channels: Counter::default(),
            refused: Family::default(),
            http_connections: Gauge::default(),
            http_connections_refused: Family::default(),
            http_connections_closed: Family::default(),
            reconciliations: Family::default(),
            reconcile_errors: Family::default(),
            watch_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            ),
            configmaps: Family::default(),
            post_processors: Family::default(),
            build_scans: Family::default(),
            tokens_minted: Counter::default(),
            tokens_revoked: Counter::default(),
            leader: Gauge::default(),
            registry: Registry::default(),
        };
        let outcome = |o: &str| OutcomeLabels { outcome: o.into() };
        for o in CONFIGMAP_OUTCOMES {
            let _ = m.configmaps.get_or_create(&outcome(o));
        }
        for o in PUBLISH_OUTCOMES {
            let _ = m.publishes.get_or_create(&outcome(o));
        }
        for o in REQUESTS_REFUSED {
            let _ = m.refused.get_or_create(&outcome(o));
        }
        for o in CONNECTIONS_REFUSED {
            let _ = m.http_connections_refused.get_or_create(&outcome(o));
        }
        for c in CONTROLLERS {
            let _ = m.reconciliations.get_or_create(&ControllerLabels {
                controller: c.into(),
            });
            for e in ERROR_KINDS {
                let _ = m.reconcile_errors.get_or_create(&ControllerErrorLabels {
                    controller: c.into(),
                    error: e.into(),
                });
            }
        }
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            m.http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            m.http_duration.clone(),
        );
        registry.register(
            "publishes",
            "Messages published to the broker, by outcome (confirmed or failed)",
            m.publishes.clone(),
        );
        registry.register(
            "publish_duration_seconds",
            "Time from publish to the broker's confirm",
            m.publish_duration.clone(),
        );
        registry.register(
            "confirms_pending",
            "Publishes waiting for the broker's confirm",
            m.confirms_pending.clone(),
        );
        registry.register(
            "broker_connected",
            "1 while connected to the broker",
            m.broker_connected.clone(),
        );
        registry.register(
            "broker_tls_unverified",
            "1 while connected over TLS without verifying the broker's certificate (RABBITMQ_VERIFY=false)",
            m.broker_tls_unverified.clone(),
        );
        registry.register(
            "broker_connections",
            "AMQP connections opened to the broker",
            m.broker_connections.clone(),
        );
        registry.register(
            "broker_channels",
            "AMQP channels opened (a channel-level error reopens only the channel)",
            m.broker_channels.clone(),
        );
        registry.register(
            "requests_refused",
            "Ingestion requests refused before publishing, by reason",
            m.refused.clone(),
        );
        registry.register(
            "http_connections",
            "Connections open on the ingestion listener",
            m.http_connections.clone(),
        );
        registry.register(
            "http_connections_refused",
            "Ingestion connections refused at accept, by reason (max_connections, max_per_client)",
            m.http_connections_refused.clone(),
        );
        registry.register(
            "http_connections_closed",
            "Ingestion connections closed for a bound, by reason (head_too_large, head_timeout, write_timeout, spinning)",
            m.http_connections_closed.clone(),
        );
        registry.register(
            "watch_errors",
            "Errors from the API server's watches, by watch",
            m.watch_errors.clone(),
        );
        registry.register(
            "reconciliations",
            "Reconciliations by controller",
            m.reconciliations.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconcile failures by controller and kind",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration by controller",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "configmaps",
            "Insights ConfigMaps by outcome (forwarded, deferred, rejected, burned, skipped)",
            m.configmaps.clone(),
        );
        registry.register(
            "post_processor_steps",
            "Post-processor steps by processor (core, dependencytrack-default, dependencytrack-custom) and result (success, skipped, failure)",
            m.post_processors.clone(),
        );
        registry.register(
            "build_scans",
            "Succeeded build pods by scan outcome (started, no_images, failed)",
            m.build_scans.clone(),
        );
        registry.register(
            "tokens_minted",
            "Token Secrets written",
            m.tokens_minted.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica leads (reconciles ConfigMaps, tokens and builds)",
            m.leader.clone(),
        );
        registry.register(
            "tokens_revoked",
            "Namespaces whose tokens were revoked on an admin's request (insights.lagoon.sh/revoke-tokens)",
            m.tokens_revoked.clone(),
        );
        Self { registry, ..m }
    }

    pub fn count_watch_error(&self, watch: &str) {
        self.watch_errors
            .get_or_create(&ControllerLabels {
                controller: watch.into(),
            })
            .inc();
    }

    pub fn observe_publish(&self, took: Duration, ok: bool) {
        self.publish_duration.observe(took.as_secs_f64());
        let outcome = if ok { "confirmed" } else { "failed" };
        self.publishes
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn observe_http(&self, route: &str, status: u16, took: Duration) {
        self.http_requests
            .get_or_create(&HttpLabels {
                route: route.into(),
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels {
                route: route.into(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn count_scan(&self, outcome: &str) {
        self.build_scans
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn count_step(&self, processor: &str, result: &str) {
        self.post_processors
            .get_or_create(&StepLabels {
                processor: processor.into(),
                result: result.into(),
            })
            .inc();
    }

    pub fn count_configmap(&self, outcome: &str) {
        self.configmaps
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
