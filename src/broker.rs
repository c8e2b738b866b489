//! The confirmed publisher: one long-lived AMQP connection and one channel in
//! confirm mode, supervised by a task that reconnects after the broker goes
//! away and swaps connections when the settings change.
//!
//! Reconnection is ours rather than lapin's `enable_auto_recover`, because
//! lapin gives up after a fixed number of attempts, while an operator must
//! keep trying for as long as it runs, at the admin's interval, and must know
//! at every moment whether it can publish (readiness, 503s, the CR status).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::contract;
use crate::metrics::Metrics;

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
}

/// PEM material for amqps.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct TlsSettings {
    pub ca_pem: Option<String>,
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Vec<u8>>,
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
            host: "localhost".into(),
            vhost: "/".into(),
            username: "guest".into(),
            password: "guest".into(),
            tls: None,
            exchange: contract::DEFAULT_EXCHANGE.into(),
            queue: contract::DEFAULT_QUEUE.into(),
            routing_key: contract::DEFAULT_ROUTING_KEY.into(),
            reconnect_interval: Duration::from_secs(30),
            confirm_timeout: Duration::from_secs(10),
        }
    }
}

impl BrokerSettings {
    /// The AMQP URI, credentials percent-encoded. Contains the password:
    /// never log it.
    fn uri(&self) -> String {
        let scheme = if self.tls.is_some() { "amqps" } else { "amqp" };
        let host = self
            .host
            .trim_start_matches("amqp://")
            .trim_start_matches("amqps://")
            .trim_end_matches('/');
        format!(
            "{scheme}://{}:{}@{host}/{}?heartbeat=20&connection_timeout=10000",
            encode(&self.username),
            encode(&self.password),
            encode(&self.vhost)
        )
    }

    fn tls_config(&self) -> OwnedTLSConfig {
        let Some(tls) = &self.tls else {
            return OwnedTLSConfig::default();
        };
        let identity = match (&tls.client_cert_pem, &tls.client_key_pem) {
            (Some(pem), Some(key)) => Some(OwnedIdentity::PKCS8 {
                pem: pem.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        OwnedTLSConfig {
            identity,
            cert_chain: tls.ca_pem.clone(),
        }
    }
}

/// Percent-encodes everything outside RFC 3986's unreserved set.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// No connection right now, or it dropped before the confirm.
    #[error("the message broker is unavailable: {0}")]
    Unavailable(String),
    /// The broker refused the message (nack) or could not route it.
    #[error("the message broker refused the message: {0}")]
    Refused(String),
    #[error("the message broker did not confirm within {0:?}")]
    Timeout(Duration),
}

/// What the supervisor knows about the connection, for readiness and status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerState {
    pub connected: bool,
    /// Why the last attempt failed or the connection dropped (no secrets).
    pub last_error: Option<String>,
}

struct Live {
    channel: Channel,
    // Kept so the connection lives as long as the channel is in use.
    _connection: Arc<Connection>,
}

/// A cheap, clonable handle on the supervised publisher.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    settings: watch::Sender<BrokerSettings>,
    live: watch::Sender<Option<Arc<Live>>>,
    state: watch::Sender<BrokerState>,
    broken: Notify,
    shutdown: watch::Sender<bool>,
    next_id: AtomicU64,
    boot: String,
    metrics: Option<Arc<Metrics>>,
}

impl Publisher {
    /// Starts the supervisor; the first connection is made in the background.
    pub fn start(settings: BrokerSettings, metrics: Option<Arc<Metrics>>) -> Self {
        let inner = Arc::new(Inner {
            settings: watch::Sender::new(settings),
            live: watch::Sender::new(None),
            state: watch::Sender::new(BrokerState::default()),
            broken: Notify::new(),
            shutdown: watch::Sender::new(false),
            next_id: AtomicU64::new(0),
            boot: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            metrics,
        });
        tokio::spawn(supervise(inner.clone()));
        Self { inner }
    }

    /// Replaces the broker settings; the connection is swapped if they differ.
    pub fn reconfigure(&self, settings: BrokerSettings) {
        self.inner.settings.send_if_modified(|cur| {
            if *cur == settings {
                false
            } else {
                *cur = settings;
                true
            }
        });
    }

    pub fn state(&self) -> BrokerState {
        self.inner.state.borrow().clone()
    }

    pub fn subscribe_state(&self) -> watch::Receiver<BrokerState> {
        self.inner.state.subscribe()
    }

    pub fn confirm_timeout(&self) -> Duration {
        self.inner.settings.borrow().confirm_timeout
    }

    pub fn is_connected(&self) -> bool {
        self.inner.live.borrow().is_some()
    }

    /// Waits until connected, or the timeout passes.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.live.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|l| l.is_some()))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false)
    }

    /// Closes the connection and stops the supervisor.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        if let Some(live) = self.inner.live.send_replace(None) {
            let _ = live._connection.close(200, "shutdown".into()).await;
        }
    }

    /// Publishes one JSON message and returns only once the broker confirmed
    /// it. A publish cut off by a dropped connection is retried once on the
    /// new connection if it comes back within the confirm timeout; a
    /// duplicate is harmless to the consumer, a loss is not.
    pub async fn publish_confirmed(&self, body: &[u8]) -> Result<(), PublishError> {
        let started = Instant::now();
        let timeout = self.inner.settings.borrow().confirm_timeout;
        let id = format!(
            "{}-{}",
            self.inner.boot,
            self.inner.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let result = self.publish_with_retry(body, &id, timeout, started).await;
        if let Some(m) = &self.inner.metrics {
            m.observe_publish(started.elapsed(), result.is_ok());
        }
        result
    }

    async fn publish_with_retry(
        &self,
        body: &[u8],
        id: &str,
        timeout: Duration,
        started: Instant,
    ) -> Result<(), PublishError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let live = self.inner.live.borrow().clone();
            let Some(live) = live else {
                return Err(PublishError::Unavailable(self.unavailable_reason()));
            };
            let remaining = timeout.saturating_sub(started.elapsed());
            if let Some(m) = &self.inner.metrics {
                m.confirms_pending.inc();
            }
            let res =
                tokio::time::timeout(remaining, self.publish_once(&live.channel, body, id)).await;
            if let Some(m) = &self.inner.metrics {
                m.confirms_pending.dec();
            }
            match res {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(PublishError::Unavailable(reason))) => {
                    self.inner.broken.notify_one();
                    let remaining = timeout.saturating_sub(started.elapsed());
                    if attempt >= 2 || !self.wait_new_channel(&live, remaining).await {
                        return Err(PublishError::Unavailable(reason));
                    }
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    // A confirm that never comes usually means a dead peer.
                    self.inner.broken.notify_one();
                    return Err(PublishError::Timeout(timeout));
                }
            }
        }
    }

    async fn wait_new_channel(&self, old: &Arc<Live>, within: Duration) -> bool {
        let mut rx = self.inner.live.subscribe();
        let found = tokio::time::timeout(
            within,
            rx.wait_for(|l| matches!(l, Some(l) if !Arc::ptr_eq(l, old))),
        )
        .await
        .map(|r| r.is_ok());
        matches!(found, Ok(true))
    }

    fn unavailable_reason(&self) -> String {
        self.inner
            .state
            .borrow()
            .last_error
            .clone()
            .unwrap_or_else(|| "not connected".into())
    }

    async fn publish_once(
        &self,
        channel: &Channel,
        body: &[u8],
        id: &str,
    ) -> Result<(), PublishError> {
        let (exchange, routing_key) = {
            let s = self.inner.settings.borrow();
            (s.exchange.clone(), s.routing_key.clone())
        };
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(id.into());
        let confirm = channel
            .basic_publish(
                exchange.as_str().into(),
                routing_key.as_str().into(),
                // mandatory: a message no queue takes comes back instead of
                // vanishing, so a missing binding is an error, not a loss.
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                body,
                props,
            )
            .await
            .map_err(|e| PublishError::Unavailable(e.to_string()))?;
        match confirm.await {
            Ok(Confirmation::Ack(None)) => Ok(()),
            Ok(Confirmation::Ack(Some(_))) => Err(PublishError::Refused(
                "no queue is bound to the exchange for this routing key".into(),
            )),
            Ok(Confirmation::Nack(_)) => Err(PublishError::Refused("nack".into())),
            Ok(Confirmation::NotRequested) => Err(PublishError::Unavailable(
                "channel is not in confirm mode".into(),
            )),
            Err(e) => Err(PublishError::Unavailable(e.to_string())),
        }
    }
}

async fn connect(settings: &BrokerSettings) -> Result<Live, String> {
    let props = ConnectionProperties::default().with_connection_name("insights-remote".into());
    let conn = Connection::connect_with_config(
        &settings.uri(),
        props,
        settings.tls_config(),
        lapin::runtime::default_runtime().map_err(|e| e.to_string())?,
    )
    .await
    .map_err(|e| redact(&e.to_string(), settings))?;
    let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
    channel
        .exchange_declare(
            settings.exchange.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("declaring exchange {:?}: {e}", settings.exchange))?;
    // Classic queue with no arguments: any argument makes the broker close
    // the channel (406) against the queue Lagoon core already declared.
    channel
        .queue_declare(
            settings.queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("declaring queue {:?}: {e}", settings.queue))?;
    channel
        .queue_bind(
            settings.queue.as_str().into(),
            settings.exchange.as_str().into(),
            settings.routing_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("binding queue: {e}"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| format!("enabling publisher confirms: {e}"))?;
    Ok(Live {
        channel,
        _connection: Arc::new(conn),
    })
}

/// lapin errors may echo the URI; keep the password out.
fn redact(msg: &str, settings: &BrokerSettings) -> String {
    if settings.password.is_empty() {
        return msg.to_string();
    }
    msg.replace(&settings.password, "***")
        .replace(&encode(&settings.password), "***")
}

async fn supervise(inner: Arc<Inner>) {
    let mut settings_rx = inner.settings.subscribe();
    let mut shutdown_rx = inner.shutdown.subscribe();
    let mut backoff = Duration::from_millis(250);
    loop {
        if *shutdown_rx.borrow() {
            return;
        }
        let settings = settings_rx.borrow_and_update().clone();
        let attempt = tokio::select! {
            r = connect(&settings) => r,
            _ = settings_rx.changed() => continue,
            _ = shutdown_rx.changed() => return,
        };
        match attempt {
            Ok(live) => {
                info!(host = %settings.host, vhost = %settings.vhost, "connected to the message broker");
                backoff = Duration::from_millis(250);
                let live = Arc::new(live);
                inner.live.send_replace(Some(live.clone()));
                inner.state.send_replace(BrokerState {
                    connected: true,
                    last_error: None,
                });
                if let Some(m) = &inner.metrics {
                    m.broker_connected.set(1);
                }
                let reason =
                    watch_connection(&inner, &live, &mut settings_rx, &mut shutdown_rx).await;
                inner.live.send_replace(None);
                if let Some(m) = &inner.metrics {
                    m.broker_connected.set(0);
                }
                let _ = live._connection.close(200, "reconnecting".into()).await;
                if *shutdown_rx.borrow() {
                    return;
                }
                warn!(%reason, "lost the message broker connection");
                inner.state.send_replace(BrokerState {
                    connected: false,
                    last_error: Some(reason),
                });
            }
            Err(e) => {
                warn!(error = %e, host = %settings.host, retry_in = ?backoff, "cannot connect to the message broker");
                inner.state.send_replace(BrokerState {
                    connected: false,
                    last_error: Some(e),
                });
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = settings_rx.changed() => {}
                    _ = shutdown_rx.changed() => return,
                }
                backoff =
                    (backoff * 2).min(settings.reconnect_interval.max(Duration::from_millis(250)));
            }
        }
    }
}

/// Returns when the connection or channel is no longer usable, the settings
/// changed, or shutdown was asked for.
async fn watch_connection(
    inner: &Inner,
    live: &Live,
    settings_rx: &mut watch::Receiver<BrokerSettings>,
    shutdown_rx: &mut watch::Receiver<bool>,
) -> String {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = inner.broken.notified() => {}
            _ = settings_rx.changed() => return "settings changed".into(),
            _ = shutdown_rx.changed() => return "shutdown".into(),
        }
        if !live._connection.status().connected() {
            return "connection closed".into();
        }
        if !live.channel.status().connected() {
            return "channel closed".into();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_encodes_credentials_and_vhost() {
        let s = BrokerSettings {
            host: "rabbit:5672".into(),
            username: "us er".into(),
            password: "p@ss/word".into(),
            vhost: "/".into(),
            ..Default::default()
        };
        assert_eq!(
            s.uri(),
            "amqp://us%20er:p%40ss%2Fword@rabbit:5672/%2F?heartbeat=20&connection_timeout=10000"
        );
        let tls = BrokerSettings {
            tls: Some(TlsSettings::default()),
            ..s.clone()
        };
        assert!(tls.uri().starts_with("amqps://"));
        assert!(!format!("{s:?}").contains("p@ss"));
    }

    #[test]
    fn redact_hides_password() {
        let s = BrokerSettings {
            password: "hunter2-secret".into(),
            ..Default::default()
        };
        assert_eq!(
            redact("failed amqp://g:hunter2-secret@h", &s),
            "failed amqp://g:***@h"
        );
    }
}
