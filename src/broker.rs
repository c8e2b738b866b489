//! The confirmed publisher: one long-lived AMQP connection and one channel in
//! confirm mode, supervised by a task that reconnects after the broker goes
//! away and swaps connections when the settings change.
//!
//! Reconnection is ours rather than lapin's `enable_auto_recover`, because
//! lapin gives up after a fixed number of attempts, while an operator must
//! keep trying for as long as it runs, at the admin's interval, and must know
//! at every moment whether it can publish (readiness, 503s, the CR status).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
use tracing::{debug, info, warn};

use crate::contract;
use crate::metrics::Metrics;

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
            host: "localhost".into(),
            vhost: "/".into(),
            username: "guest".into(),
            password: "guest".into(),
            tls: None,
            exchange: contract::DEFAULT_EXCHANGE.into(),
            queue: contract::DEFAULT_QUEUE.into(),
            routing_key: contract::DEFAULT_ROUTING_KEY.into(),
            reconnect_interval: Duration::from_secs(30),
            confirm_timeout: DEFAULT_CONFIRM_TIMEOUT,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
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
            "{scheme}://{}:{}@{host}/{}?heartbeat=20&connection_timeout=5000",
            crate::contract::percent_encode(&self.username),
            crate::contract::percent_encode(&self.password),
            crate::contract::percent_encode(&self.vhost)
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
    /// The message is larger than our limit or the broker's; nothing was
    /// published (or the broker refused it as too large).
    #[error("the message would be {size} bytes, over the {which} limit of {limit} bytes")]
    TooLarge {
        size: usize,
        limit: usize,
        which: &'static str,
    },
}

/// What the supervisor knows about the connection, for readiness and status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerState {
    pub connected: bool,
    /// Connected over TLS without checking the broker's certificate
    /// (RABBITMQ_VERIFY=false).
    pub unverified: bool,
    /// Why the last attempt failed or the connection dropped (no secrets).
    pub last_error: Option<String>,
}

/// One channel in confirm mode on a live connection, with the exchange and
/// routing key it was set up for (a settings change brings a new `Live`, so
/// a publish never mixes a new exchange with an old connection).
struct Live {
    channel: Channel,
    connection: Arc<Connection>,
    exchange: String,
    routing_key: String,
    /// Held while lapin assigns a delivery tag and queues the frames, so
    /// tag order is wire order and each confirm belongs to its publish.
    publish_lock: std::sync::Mutex<()>,
    /// Set when a confirm did not come in time: the peer looks hung.
    suspect: AtomicBool,
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
    /// The broker's `max_message_size` once it told us (0: not known yet).
    broker_max: AtomicUsize,
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
            broker_max: AtomicUsize::new(0),
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
            close_quietly(&live.connection, "shutdown").await;
        }
    }

    /// The largest message that may be published: our own limit, or the
    /// broker's once it refused a larger one.
    fn size_check(&self, size: usize) -> Result<(), PublishError> {
        let ours = self.inner.settings.borrow().max_message_bytes;
        if ours > 0 && size > ours {
            return Err(PublishError::TooLarge {
                size,
                limit: ours,
                which: "operator's (--max-message-bytes)",
            });
        }
        let broker = self.inner.broker_max.load(Ordering::Relaxed);
        if broker > 0 && size > broker {
            return Err(PublishError::TooLarge {
                size,
                limit: broker,
                which: "broker's (max_message_size)",
            });
        }
        Ok(())
    }

    /// Publishes one JSON message and returns only once the broker confirmed
    /// it. A publish cut off by a dropped connection or channel is retried
    /// (up to twice) on the new channel if it comes back within the confirm timeout;
    /// a duplicate is harmless to the consumer, a loss is not.
    pub async fn publish_confirmed(&self, body: &[u8]) -> Result<(), PublishError> {
        let started = Instant::now();
        self.size_check(body.len())?;
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
            // A retry with almost no time left would only send the message
            // and then blame the new connection for the missing confirm.
            if attempt > 1 && remaining < timeout / 4 {
                return Err(PublishError::Unavailable(
                    "the connection dropped and there is no time left to retry".into(),
                ));
            }
            let _pending = self.inner.metrics.as_ref().map(|m| Pending::new(m));
            let res = tokio::time::timeout(remaining, publish_once(&live, body, id)).await;
            match res {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(PublishError::Unavailable(reason))) => {
                    if let Some((culprit, limit)) = broker_size_limit(&reason) {
                        // Remember the broker's limit at once (every publish
                        // pending on the closed channel sees the reason), so
                        // no oversized message reaches the next channel.
                        self.inner.broker_max.store(limit, Ordering::Relaxed);
                        self.inner.broken.notify_one();
                        if culprit == body.len() {
                            return Err(PublishError::TooLarge {
                                size: body.len(),
                                limit,
                                which: "broker's (max_message_size)",
                            });
                        }
                    }
                    self.inner.broken.notify_one();
                    let remaining = timeout.saturating_sub(started.elapsed());
                    if attempt >= MAX_ATTEMPTS || !self.wait_new_channel(&live, remaining).await {
                        return Err(PublishError::Unavailable(reason));
                    }
                    // Refuse the retry too if the other message taught us
                    // the broker's limit meanwhile.
                    self.size_check(body.len())?;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    // A confirm that never comes, in a whole attempt, means
                    // a hung or dead peer: drop this connection so the next
                    // requests get a quick 503 instead of waiting here too.
                    if attempt == 1 {
                        live.suspect.store(true, Ordering::Relaxed);
                    }
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
}

/// Counts a publish awaiting its confirm for as long as it lives, also
/// when the request is cancelled mid-wait.
struct Pending<'a>(&'a Metrics);

impl<'a> Pending<'a> {
    fn new(m: &'a Metrics) -> Self {
        m.confirms_pending.inc();
        Self(m)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.confirms_pending.dec();
    }
}

/// Attempts of one publish: the first, and retries on a new channel or
/// connection after a drop (all within the confirm timeout).
const MAX_ATTEMPTS: u32 = 3;

/// When the broker closed the channel because a message was over its
/// `max_message_size` ("message size N is larger than configured max size
/// M"): (N, M). The same close reaches every publish pending on the
/// channel; only the one of size N is the culprit.
fn broker_size_limit(reason: &str) -> Option<(usize, usize)> {
    let rest = reason.split("message size ").nth(1)?;
    let (n, rest) = rest.split_once(' ')?;
    let m = rest.split("configured max size ").nth(1)?;
    let m: usize = m
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some((n.parse().ok()?, m))
}

async fn publish_once(live: &Live, body: &[u8], id: &str) -> Result<(), PublishError> {
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(id.into());
    let mut publish = std::pin::pin!(live.channel.basic_publish(
        live.exchange.as_str().into(),
        live.routing_key.as_str().into(),
        // mandatory: a message no queue takes comes back instead of
        // vanishing, so a missing binding is an error, not a loss.
        BasicPublishOptions {
            mandatory: true,
            immediate: false,
        },
        body,
        props,
    ));
    // lapin assigns the delivery tag and queues the frames in the first poll
    // of `basic_publish`, without a lock across the two: polling under ours
    // keeps concurrent publishes from interleaving there, so the broker's
    // ack or nack for tag N is the answer for this very message.
    let confirm = std::future::poll_fn(|cx| {
        let _serial = live.publish_lock.lock().unwrap_or_else(|p| p.into_inner());
        publish.as_mut().poll(cx)
    })
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

async fn connect(settings: &BrokerSettings) -> Result<Arc<Connection>, String> {
    let props = ConnectionProperties::default().with_connection_name("insights-remote".into());
    if let Some(tls) = settings.tls.as_ref().filter(|t| t.skip_verify) {
        return connect_unverified(settings, tls, props).await;
    }
    let conn = Connection::connect_with_config(
        &settings.uri(),
        props,
        settings.tls_config(),
        lapin::runtime::default_runtime().map_err(|e| e.to_string())?,
    )
    .await
    .map_err(|e| redact(&e.to_string(), settings))?;
    Ok(Arc::new(conn))
}

/// amqps without checking the broker's certificate (RABBITMQ_VERIFY=false):
/// the handshake's signatures are still checked, the chain and name are not.
async fn connect_unverified(
    settings: &BrokerSettings,
    tls: &TlsSettings,
    props: ConnectionProperties,
) -> Result<Arc<Connection>, String> {
    use lapin::tcp::RustlsConnector;
    let config = unverified_client_config(tls)?;
    let connector = Arc::new(RustlsConnector::from(Arc::new(config)));
    let uri: lapin::uri::AMQPUri = settings
        .uri()
        .parse()
        .map_err(|e: String| redact(&e, settings))?;
    let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
    let conn = Connection::connector(
        uri,
        runtime,
        async move |uri, runtime| {
            let host = uri.authority.host.clone();
            let addrs = runtime.to_socket_addrs((host.clone(), uri.authority.port));
            let stream = lapin::AsyncTcpStream::connect(&runtime, addrs).await?;
            Ok(stream.into_rustls(&connector, &host).await?)
        },
        props,
    )
    .await
    .map_err(|e| redact(&e.to_string(), settings))?;
    Ok(Arc::new(conn))
}

fn unverified_client_config(tls: &TlsSettings) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)));
    match (&tls.client_cert_pem, &tls.client_key_pem) {
        (Some(cert), Some(key)) => {
            use rustls::pki_types::pem::PemObject;
            let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("client certificate: {e}"))?;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| format!("client key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// Accepts any server certificate; checks the handshake signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Opens a channel on `conn`, declares the topology and enables confirms.
async fn open_channel(conn: &Arc<Connection>, settings: &BrokerSettings) -> Result<Live, String> {
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
        connection: conn.clone(),
        exchange: settings.exchange.clone(),
        routing_key: settings.routing_key.clone(),
        publish_lock: std::sync::Mutex::new(()),
        suspect: AtomicBool::new(false),
    })
}

/// Closes a connection without waiting on a peer that may be hung.
async fn close_quietly(conn: &Connection, why: &str) {
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.close(200, why.into())).await;
}

/// lapin errors may echo the URI; keep the password out.
fn redact(msg: &str, settings: &BrokerSettings) -> String {
    if settings.password.is_empty() {
        return msg.to_string();
    }
    msg.replace(&settings.password, "***")
        .replace(&crate::contract::percent_encode(&settings.password), "***")
}

/// The first wait after a failed AMQP attempt while the broker's port
/// answers; it doubles up to `reconnect_interval`.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// While the broker's port is closed (the broker is away), how often a
/// plain TCP connect checks whether it is back: no AMQP handshake, no log
/// line, so a broker that stays away is not hammered, and one that comes
/// back is used within this interval.
const PORT_POLL: Duration = Duration::from_millis(200);

/// host:port of the broker (5672, or 5671 with TLS, when no port is given).
fn socket_target(settings: &BrokerSettings) -> (String, u16) {
    let host = settings
        .host
        .trim_start_matches("amqp://")
        .trim_start_matches("amqps://")
        .trim_end_matches('/');
    let default_port = if settings.tls.is_some() { 5671 } else { 5672 };
    match host.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.ends_with(':') => match p.parse() {
            Ok(port) => (h.trim_matches(['[', ']']).to_string(), port),
            Err(_) => (host.to_string(), default_port),
        },
        _ => (host.trim_matches(['[', ']']).to_string(), default_port),
    }
}

/// Whether the broker's port accepts a TCP connection.
async fn port_open(target: &(String, u16)) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect((target.0.as_str(), target.1)),
        )
        .await,
        Ok(Ok(_))
    )
}

enum Ended {
    /// The connection is gone (or suspect): reconnect.
    Connection(String),
    /// Only the channel closed (e.g. the broker refused one message): open a
    /// new channel on the same connection.
    Channel(String),
    Settings,
    Shutdown,
}

/// The waits between connection attempts while the broker's port is open
/// but AMQP set-up fails: doubling from [`FIRST_BACKOFF`] up to the
/// reconnect interval, without end.
fn reconnect_delays(s: &BrokerSettings) -> backon::ExponentialBackoff {
    doubling(FIRST_BACKOFF, s.reconnect_interval.max(FIRST_BACKOFF))
}

/// [`reconnect_delays`] for the settings in force: new settings (a
/// hot-reloaded reconnect interval, another host) start a new series at
/// the next wait instead of going on with the old one.
struct ReconnectBackoff {
    settings: BrokerSettings,
    delays: backon::ExponentialBackoff,
}

impl ReconnectBackoff {
    fn new(s: &BrokerSettings) -> Self {
        Self {
            settings: s.clone(),
            delays: reconnect_delays(s),
        }
    }

    /// Starts the series again (after a success, or once the port opened).
    fn reset(&mut self, s: &BrokerSettings) {
        *self = Self::new(s);
    }

    fn next_for(&mut self, s: &BrokerSettings) -> Duration {
        if *s != self.settings {
            self.reset(s);
        }
        self.delays.next().unwrap_or(s.reconnect_interval)
    }
}

/// Waits doubling from `first` up to `max`, without end (also the watch
/// restarts in [`crate::controller::follow`]).
pub(crate) fn doubling(first: Duration, max: Duration) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::new()
        .with_min_delay(first)
        .with_max_delay(max)
        .with_factor(2.0)
        .without_max_times()
        .build()
}

async fn supervise(inner: Arc<Inner>) {
    let mut settings_rx = inner.settings.subscribe();
    let mut shutdown_rx = inner.shutdown.subscribe();
    // Started afresh after a success or when the broker's port was closed.
    let mut delays = ReconnectBackoff::new(&inner.settings.borrow());
    loop {
        if *shutdown_rx.borrow() {
            return;
        }
        let settings = settings_rx.borrow_and_update().clone();
        let attempt = tokio::select! {
            r = async {
                let conn = connect(&settings).await?;
                match open_channel(&conn, &settings).await {
                    Ok(live) => Ok(live),
                    Err(e) => {
                        close_quietly(&conn, "setup failed").await;
                        Err(e)
                    }
                }
            } => r,
            _ = settings_rx.changed() => continue,
            _ = shutdown_rx.changed() => return,
        };
        let mut live = match attempt {
            Ok(live) => Arc::new(live),
            Err(e) => {
                let target = socket_target(&settings);
                let away = !port_open(&target).await;
                if inner.state.borrow().last_error.as_deref() != Some(e.as_str()) {
                    warn!(error = %e, host = %settings.host, "cannot connect to the message broker");
                }
                inner.state.send_replace(BrokerState {
                    connected: false,
                    unverified: false,
                    last_error: Some(e),
                });
                if away {
                    // Wait for the port to open, then try at once.
                    delays.reset(&settings);
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep(PORT_POLL) => {}
                            _ = settings_rx.changed() => break,
                            _ = shutdown_rx.changed() => return,
                        }
                        if port_open(&target).await {
                            break;
                        }
                    }
                } else {
                    let retry_in = delays.next_for(&settings);
                    debug!(?retry_in, "broker port open but AMQP set-up failed");
                    tokio::select! {
                        _ = tokio::time::sleep(retry_in) => {}
                        _ = settings_rx.changed() => {}
                        _ = shutdown_rx.changed() => return,
                    }
                }
                continue;
            }
        };
        let unverified = settings.tls.as_ref().is_some_and(|t| t.skip_verify);
        if unverified {
            warn!(host = %settings.host, "connected to the message broker over TLS WITHOUT verifying its certificate (RABBITMQ_VERIFY=false): set RABBITMQ_VERIFY=true and give its CA with RABBITMQ_CACERT");
        } else {
            info!(host = %settings.host, vhost = %settings.vhost, "connected to the message broker");
        }
        if let Some(m) = &inner.metrics {
            m.broker_connections.inc();
            m.broker_channels.inc();
            m.broker_connected.set(1);
            m.broker_tls_unverified.set(i64::from(unverified));
        }
        inner.state.send_replace(BrokerState {
            connected: true,
            unverified,
            last_error: None,
        });
        let reason = loop {
            inner.live.send_replace(Some(live.clone()));
            match watch_connection(&inner, &live, &mut settings_rx, &mut shutdown_rx).await {
                Ended::Channel(reason) => {
                    // Keep the connection other requests use; replace the channel.
                    warn!(%reason, "broker channel closed; opening a new one");
                    match open_channel(&live.connection, &settings).await {
                        Ok(next) => {
                            if let Some(m) = &inner.metrics {
                                m.broker_channels.inc();
                            }
                            live = Arc::new(next);
                        }
                        Err(e) => break format!("{reason}; reopening the channel failed: {e}"),
                    }
                }
                Ended::Connection(reason) => break reason,
                Ended::Settings => break "settings changed".into(),
                Ended::Shutdown => break "shutdown".into(),
            }
        };
        inner.live.send_replace(None);
        if let Some(m) = &inner.metrics {
            m.broker_connected.set(0);
            m.broker_tls_unverified.set(0);
        }
        close_quietly(&live.connection, "reconnecting").await;
        if *shutdown_rx.borrow() {
            return;
        }
        warn!(%reason, "lost the message broker connection");
        delays.reset(&settings);
        inner.state.send_replace(BrokerState {
            connected: false,
            unverified: false,
            last_error: Some(reason),
        });
    }
}

/// Returns when the connection or channel is no longer usable, the settings
/// changed, or shutdown was asked for.
async fn watch_connection(
    inner: &Inner,
    live: &Live,
    settings_rx: &mut watch::Receiver<BrokerSettings>,
    shutdown_rx: &mut watch::Receiver<bool>,
) -> Ended {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = inner.broken.notified() => {}
            _ = settings_rx.changed() => return Ended::Settings,
            _ = shutdown_rx.changed() => return Ended::Shutdown,
        }
        if live.suspect.load(Ordering::Relaxed) {
            return Ended::Connection(
                "no confirm within the timeout: the broker looks hung".into(),
            );
        }
        if !live.connection.status().connected() {
            return Ended::Connection("connection closed".into());
        }
        if !live.channel.status().connected() {
            return Ended::Channel("channel closed".into());
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
            "amqp://us%20er:p%40ss%2Fword@rabbit:5672/%2F?heartbeat=20&connection_timeout=5000"
        );
        let tls = BrokerSettings {
            tls: Some(TlsSettings::default()),
            ..s.clone()
        };
        assert!(tls.uri().starts_with("amqps://"));
        assert!(!format!("{s:?}").contains("p@ss"));
    }

    #[test]
    fn reconnect_delays_double_up_to_the_interval() {
        let ms = |interval: u64, n: usize| -> Vec<u128> {
            let s = BrokerSettings {
                reconnect_interval: Duration::from_millis(interval),
                ..Default::default()
            };
            reconnect_delays(&s)
                .take(n)
                .map(|d| d.as_millis())
                .collect()
        };
        assert_eq!(ms(1_000, 6), [250, 500, 1_000, 1_000, 1_000, 1_000]);
        assert_eq!(ms(30_000, 4), [250, 500, 1_000, 2_000]);
        // An interval under the first delay never shortens it.
        assert_eq!(ms(10, 3), [250, 250, 250]);
        assert_eq!(ms(30_000, 1_000).len(), 1_000, "no end");
    }

    #[test]
    fn reconnect_backoff_starts_over_when_the_settings_change() {
        let with = |interval: u64, host: &str| BrokerSettings {
            reconnect_interval: Duration::from_millis(interval),
            host: host.into(),
            ..Default::default()
        };
        let (slow, fast) = (with(60_000, "a"), with(1_000, "a"));
        let mut b = ReconnectBackoff::new(&slow);
        let mut take = |s: &BrokerSettings, n: usize| -> Vec<u128> {
            (0..n).map(|_| b.next_for(s).as_millis()).collect()
        };
        assert_eq!(take(&slow, 9)[8], 60_000, "backed off to the slow interval");
        // The interval lowered from the custom resource while backing off:
        // the next wait follows it, not the old series.
        assert_eq!(take(&fast, 4), [250, 500, 1_000, 1_000]);
        assert_eq!(take(&with(1_000, "b"), 1), [250], "another host");
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

#[cfg(test)]
mod limits_tests {
    use super::*;

    #[test]
    fn broker_size_limit_reads_the_culprit_and_the_limit() {
        let msg =
            "PRECONDITION_FAILED - message size 3145728 is larger than configured max size 1048576";
        assert_eq!(broker_size_limit(msg), Some((3_145_728, 1_048_576)));
        assert_eq!(broker_size_limit("connection closed"), None);
    }

    #[test]
    fn socket_target_defaults_the_port() {
        let s = |host: &str, tls: bool| BrokerSettings {
            host: host.into(),
            tls: tls.then(TlsSettings::default),
            ..Default::default()
        };
        assert_eq!(socket_target(&s("rabbit", false)), ("rabbit".into(), 5672));
        assert_eq!(socket_target(&s("rabbit", true)), ("rabbit".into(), 5671));
        assert_eq!(
            socket_target(&s("rabbit:1234", false)),
            ("rabbit".into(), 1234)
        );
        assert_eq!(
            socket_target(&s("amqp://rabbit:99/", false)),
            ("rabbit".into(), 99)
        );
        assert_eq!(socket_target(&s("[::1]:5673", false)), ("::1".into(), 5673));
    }
}
