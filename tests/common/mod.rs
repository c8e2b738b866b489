//! Helpers shared by the integration tests: the real RabbitMQ on
//! 127.0.0.1:5672 (guest/guest, or AMQP_ADDR), and an in-process API server.
#![allow(dead_code)]

pub mod cluster;
pub mod consumer;
pub mod node;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::web;
use insights_remote::broker::{BrokerSettings, Publisher};
use insights_remote::metrics::Metrics;
use insights_remote::server::{self, ApiState, Limits};
use insights_remote::token::{Claims, KeyRing};
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeleteOptions, QueuePurgeOptions};
use lapin::{Connection, ConnectionProperties};
use tokio::sync::watch;

pub const KEY: &str = "integration-test-key-0123456789abcdef";

pub fn broker_host() -> String {
    std::env::var("TEST_RABBITMQ_HOST").unwrap_or_else(|_| "127.0.0.1:5672".into())
}

pub fn amqp_uri() -> String {
    format!("amqp://guest:guest@{}/%2f", broker_host())
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// Settings for a test's own exchange and queue, so tests run in parallel.
pub fn isolated_broker(tag: &str) -> BrokerSettings {
    let name = unique(tag);
    BrokerSettings {
        host: broker_host(),
        exchange: format!("{name}-x"),
        queue: format!("{name}-q"),
        reconnect_interval: Duration::from_millis(500),
        confirm_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

pub fn claims(ns: &str, env_id: &str) -> Claims {
    Claims {
        namespace: ns.into(),
        environment_id: env_id.into(),
        project_name: "demo-project".into(),
        environment_name: "main".into(),
    }
}

pub fn ring() -> KeyRing {
    KeyRing::new(KEY).unwrap()
}

pub struct Api {
    pub url: String,
    pub state: web::Data<ApiState>,
    pub publisher: Publisher,
    pub metrics: Arc<Metrics>,
    pub keys: watch::Sender<Arc<KeyRing>>,
    handle: actix_web::dev::ServerHandle,
}

impl Api {
    pub async fn stop(self) {
        self.handle.stop(true).await;
        self.publisher.shutdown().await;
    }
}

pub async fn start_api(settings: BrokerSettings, body_limit: usize, rate: u32) -> Api {
    let limits = Limits {
        body_bytes: body_limit,
        ..Default::default()
    };
    start_api_with(settings, limits, rate).await
}

/// An API with its own publisher and the given limits.
pub async fn start_api_with(settings: BrokerSettings, limits: Limits, rate: u32) -> Api {
    let metrics = Arc::new(Metrics::new());
    let publisher = Publisher::start(settings, Some(metrics.clone()));
    assert!(
        publisher.wait_connected(Duration::from_secs(20)).await,
        "RabbitMQ is not reachable at {}: start it (see README)",
        broker_host()
    );
    let (keys_tx, keys_rx) = watch::channel(Arc::new(ring()));
    let state = web::Data::new(ApiState::new(
        keys_rx,
        Some(publisher.clone()),
        metrics.clone(),
        limits,
        rate,
    ));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let srv = server::ingestion_server(state.clone(), listener).unwrap();
    let handle = srv.handle();
    tokio::spawn(srv);
    Api {
        url: format!("http://127.0.0.1:{port}"),
        state,
        publisher,
        metrics,
        keys: keys_tx,
        handle,
    }
}

/// Reads up to `want` messages from a queue (acking them), waiting at most
/// `within` for them to arrive.
pub async fn drain(queue: &str, want: usize, within: Duration) -> Vec<serde_json::Value> {
    let conn = Connection::connect(&amqp_uri(), ConnectionProperties::default())
        .await
        .expect("test consumer connects to RabbitMQ");
    let ch = conn.create_channel().await.unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + within;
    while out.len() < want && Instant::now() < deadline {
        match take(&ch, queue).await {
            Some(body) => out.push(body),
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let _ = conn.close(200, "done".into()).await;
    out
}

/// One message from the queue, acked, as JSON; None when it is empty.
async fn take(ch: &lapin::Channel, queue: &str) -> Option<serde_json::Value> {
    let msg = ch
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .unwrap()?;
    let body = serde_json::from_slice(&msg.delivery.data).expect("every published message is JSON");
    msg.delivery.ack(BasicAckOptions::default()).await.unwrap();
    Some(body)
}

/// Reads every message the queue holds now (acking them), until the broker
/// answers that it is empty. For use once every publish the test caused is
/// confirmed: then that is everything that was published, duplicates
/// included, without waiting for stragglers that cannot come.
pub async fn drain_all(queue: &str) -> Vec<serde_json::Value> {
    let conn = Connection::connect(&amqp_uri(), ConnectionProperties::default())
        .await
        .expect("test consumer connects to RabbitMQ");
    let ch = conn.create_channel().await.unwrap();
    let mut out = Vec::new();
    while let Some(body) = take(&ch, queue).await {
        out.push(body);
    }
    let _ = conn.close(200, "done".into()).await;
    out
}

/// Reads exactly `n` messages (waiting at most `within` for them), then
/// asserts the broker holds no more. For use once every publish the test
/// caused is confirmed (it waited for the answers or the processed marks):
/// the queue then holds exactly what was published, so a message too many
/// is seen without waiting for it.
pub async fn drain_exactly(queue: &str, n: usize, within: Duration) -> Vec<serde_json::Value> {
    let got = drain(queue, n, within).await;
    assert_eq!(got.len(), n, "{n} messages in {queue}");
    assert_eq!(
        queue_depth(queue).await,
        0,
        "no message beyond {n} in {queue}"
    );
    got
}

/// How many messages wait in a queue right now.
pub async fn queue_depth(queue: &str) -> u32 {
    let conn = Connection::connect(&amqp_uri(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = conn.close(200, "done".into()).await;
    q.message_count()
}

pub async fn purge(queue: &str) {
    let conn = Connection::connect(&amqp_uri(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let _ = ch
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await;
    let _ = conn.close(200, "done".into()).await;
}

pub async fn delete_queue(queue: &str) {
    if let Ok(conn) = Connection::connect(&amqp_uri(), ConnectionProperties::default()).await {
        if let Ok(ch) = conn.create_channel().await {
            let _ = ch
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = conn.close(200, "done".into()).await;
    }
}

/// Runs a command to completion; panics with `what` and its stderr when it
/// fails. Its standard output.
pub fn run_ok(what: &str, cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs rabbitmqctl with the given arguments; panics with its stderr on failure.
pub fn rabbitmqctl(args: &[&str]) -> String {
    run_ok(
        &format!("rabbitmqctl {args:?}"),
        std::process::Command::new("rabbitmqctl").args(args),
    )
}

/// A free port on 127.0.0.1 (bound and released).
/// A port for a child process to listen on. Picked below the kernel's
/// ephemeral range (32768 and up), at random, and checked free: a port the
/// kernel handed out with `bind(0)` and that was released is soon handed
/// to the next test's `bind(0)` or outgoing connection, before the child
/// binds it (a parallel test raced for one that way). Here only another
/// test's random pick could collide.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos(),
        );
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The arguments that point the binary at `broker`'s host, exchange and
/// queue.
pub fn broker_args(broker: &BrokerSettings) -> [&str; 6] {
    [
        "--rabbitmq-hostname",
        &broker.host,
        "--rabbitmq-exchange",
        &broker.exchange,
        "--rabbitmq-queue",
        &broker.queue,
    ]
}

/// The arguments of the ingestion API only (no controllers, no probe or
/// metrics ports), on 127.0.0.1:`port`, publishing to `broker`.
pub fn api_args(port: u16, broker: &BrokerSettings) -> Vec<String> {
    [
        "--enable-configmap-reconciler=false",
        "--enable-namespace-reconciler=false",
        "--webservice-bind-address",
        "127.0.0.1",
        "--webservice-port",
        &port.to_string(),
        "--health-probe-bind-address",
        "0",
        "--metrics-bind-address",
        "0",
    ]
    .iter()
    .chain(&broker_args(broker))
    .map(|s| s.to_string())
    .collect()
}

/// The real binary with [`api_args`]; the signing key is [`KEY`]. Add
/// arguments and stdio before spawning.
pub fn api_binary(port: u16, broker: &BrokerSettings) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_insights-remote"));
    c.args(api_args(port, broker))
        .env("INSIGHTS_TOKEN_SECRET", KEY);
    c
}

/// Sends `req`; the answer's body as text.
pub async fn body_text(req: reqwest::RequestBuilder) -> String {
    req.send().await.unwrap().text().await.unwrap()
}

/// gzip of `b`, as builds compress insights payloads.
pub fn gzip(b: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), Default::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// Kills a child process if the test fails before stopping it, and prints
/// its log: a failed test leaves nothing running (a child holding the
/// test's stderr kept `cargo test | ...` waiting until it was killed).
pub struct KillOnPanic {
    pub pid: u32,
    pub log: Option<std::path::PathBuf>,
}

impl KillOnPanic {
    /// Spawns `cmd` with its standard output to the file `log` (discarded
    /// without one) and its standard error to the test's; the child, and the
    /// guard that kills it if the test fails.
    pub fn spawn(
        cmd: &mut std::process::Command,
        log: Option<std::path::PathBuf>,
    ) -> (std::process::Child, KillOnPanic) {
        let stdout = match &log {
            Some(path) => std::process::Stdio::from(std::fs::File::create(path).unwrap()),
            None => std::process::Stdio::null(),
        };
        let child = cmd
            .stdout(stdout)
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let guard = KillOnPanic {
            pid: child.id(),
            log,
        };
        (child, guard)
    }
}

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .status();
        if let Some(log) = &self.log {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            eprintln!("--- child log ({}) ---\n{text}", log.display());
        }
    }
}
