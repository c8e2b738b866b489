//! The confirmed publisher: each publish waits for the broker's confirm of
//! that very message on the shared channel, with bounded retries.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::{watch, Notify};

use crate::metrics::Metrics;
use crate::settings::BrokerSettings;

use super::supervisor::*;

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
pub(super) struct Live {
    pub(super) channel: Channel,
    pub(super) connection: Arc<Connection>,
    pub(super) exchange: String,
    pub(super) routing_key: String,
    /// Held while lapin assigns a delivery tag and queues the frames, so
    /// tag order is wire order and each confirm belongs to its publish.
    pub(super) publish_lock: std::sync::Mutex<()>,
    /// Set when a confirm did not come in time: the peer looks hung.
    pub(super) suspect: AtomicBool,
}

/// A cheap, clonable handle on the supervised publisher.
#[derive(Clone)]
pub struct Publisher {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) settings: watch::Sender<BrokerSettings>,
    pub(super) live: watch::Sender<Option<Arc<Live>>>,
    pub(super) state: watch::Sender<BrokerState>,
    pub(super) broken: Notify,
    pub(super) shutdown: watch::Sender<bool>,
    pub(super) next_id: AtomicU64,
    pub(super) boot: String,
    pub(super) metrics: Option<Arc<Metrics>>,
    /// The broker's `max_message_size` once it told us (0: not known yet).
    pub(super) broker_max: AtomicUsize,
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
pub(super) struct Pending<'a>(&'a Metrics);

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
pub(super) const MAX_ATTEMPTS: u32 = 3;

/// When the broker closed the channel because a message was over its
/// `max_message_size` ("message size N is larger than configured max size
/// M"): (N, M). The same close reaches every publish pending on the
/// channel; only the one of size N is the culprit.
pub(super) fn broker_size_limit(reason: &str) -> Option<(usize, usize)> {
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

pub(super) async fn publish_once(live: &Live, body: &[u8], id: &str) -> Result<(), PublishError> {
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

#[cfg(test)]
mod limits_tests {
    use super::*;
    use crate::broker::settings::socket_target;
    use crate::settings::TlsSettings;

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
