//! The supervisor: one task per publisher that connects, opens the confirm
//! channel, watches the connection, reconnects with a backoff capped at
//! the admin's interval, and swaps connections when the settings change.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::settings::BrokerSettings;

use super::publisher::*;
use super::settings::*;
use super::tls::*;

pub(super) async fn connect(settings: &BrokerSettings) -> Result<Arc<Connection>, String> {
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

/// Opens a channel on `conn`, declares the topology and enables confirms.
pub(super) async fn open_channel(
    conn: &Arc<Connection>,
    settings: &BrokerSettings,
) -> Result<Live, String> {
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
pub(super) async fn close_quietly(conn: &Connection, why: &str) {
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.close(200, why.into())).await;
}

/// The first wait after a failed AMQP attempt while the broker's port
/// answers; it doubles up to `reconnect_interval`.
pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// While the broker's port is closed (the broker is away), how often a
/// plain TCP connect checks whether it is back: no AMQP handshake, no log
/// line, so a broker that stays away is not hammered, and one that comes
/// back is used within this interval.
pub(super) const PORT_POLL: Duration = Duration::from_millis(200);

/// Whether the broker's port accepts a TCP connection.
pub(super) async fn port_open(target: &(String, u16)) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect((target.0.as_str(), target.1)),
        )
        .await,
        Ok(Ok(_))
    )
}

pub(super) enum Ended {
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
pub(super) fn reconnect_delays(s: &BrokerSettings) -> backon::ExponentialBackoff {
    doubling(FIRST_BACKOFF, s.reconnect_interval.max(FIRST_BACKOFF))
}

/// [`reconnect_delays`] for the settings in force: new settings (a
/// hot-reloaded reconnect interval, another host) start a new series at
/// the next wait instead of going on with the old one.
pub(super) struct ReconnectBackoff {
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
/// restarts with kube's `default_backoff`).
pub(crate) fn doubling(first: Duration, max: Duration) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::new()
        .with_min_delay(first)
        .with_max_delay(max)
        .with_factor(2.0)
        .without_max_times()
        .build()
}

pub(super) async fn supervise(inner: Arc<Inner>) {
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
pub(super) async fn watch_connection(
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
}
