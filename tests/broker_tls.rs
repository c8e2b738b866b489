//! amqps against RabbitMQ's real TLS listener (127.0.0.1:5671, set up by
//! `hack/deps.sh` with a test CA, a server and a client certificate): the
//! CA, a client certificate, a wrong CA refused, and RABBITMQ_VERIFY=false
//! honoured as upstream does, with warnings in the log, status and metrics.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::cluster::wait_for;
use common::*;
use insights_remote::broker::{BrokerSettings, Publisher, TlsSettings};
use insights_remote::metrics::Metrics;

const TLS_HOST: &str = "127.0.0.1:5671";

fn tls_dir() -> PathBuf {
    let cache = std::env::var("XDG_CACHE_HOME")
        .unwrap_or_else(|_| format!("{}/.cache", std::env::var("HOME").unwrap()));
    PathBuf::from(cache).join("insights-remote/tls")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(tls_dir().join(name)).unwrap_or_else(|e| {
        panic!("{name}: {e}: run hack/deps.sh (it makes the test certificates)")
    })
}

/// A CA nobody signed the broker's certificate with.
fn other_ca() -> String {
    let dir = std::env::temp_dir().join(unique("other-ca"));
    std::fs::create_dir_all(&dir).unwrap();
    run_ok(
        "openssl req",
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=someone else's CA"])
            .arg("-keyout")
            .arg(dir.join("ca.key"))
            .arg("-out")
            .arg(dir.join("ca.pem")),
    );
    std::fs::read_to_string(dir.join("ca.pem")).unwrap()
}

fn tls_broker(tag: &str, tls: TlsSettings) -> BrokerSettings {
    BrokerSettings {
        host: TLS_HOST.into(),
        tls: Some(tls),
        ..isolated_broker(tag)
    }
}

/// Connects, publishes one message with a confirm and reads it back.
async fn round_trip(settings: BrokerSettings) -> Publisher {
    let queue = settings.queue.clone();
    let metrics = Arc::new(Metrics::new());
    let p = Publisher::start(settings, Some(metrics));
    assert!(
        p.wait_connected(Duration::from_secs(15)).await,
        "not connected: {:?}",
        p.state().last_error
    );
    p.publish_confirmed(br#"{"tls":true}"#).await.unwrap();
    let got = drain(&queue, 1, Duration::from_secs(5)).await;
    assert_eq!(got, [serde_json::json!({"tls": true})]);
    p
}

#[tokio::test]
async fn amqps_with_the_ca_verifies_and_publishes() {
    let p = round_trip(tls_broker(
        "tls-ca",
        TlsSettings {
            ca_pem: Some(String::from_utf8(read("ca.pem")).unwrap()),
            ..Default::default()
        },
    ))
    .await;
    assert!(!p.state().unverified);
    p.shutdown().await;
}

#[tokio::test]
async fn amqps_with_a_client_certificate_presents_it() {
    let settings = tls_broker(
        "tls-client",
        TlsSettings {
            ca_pem: Some(String::from_utf8(read("ca.pem")).unwrap()),
            client_cert_pem: Some(read("client.pem")),
            client_key_pem: Some(read("client.key")),
            skip_verify: false,
        },
    );
    let p = round_trip(settings).await;
    // The broker saw our certificate on an insights-remote connection.
    let conns = rabbitmqctl(&[
        "list_connections",
        "client_properties",
        "peer_cert_subject",
        "--no-table-headers",
        "--quiet",
    ]);
    assert!(
        conns
            .lines()
            .any(|l| l.contains("insights-remote") && l.contains("CN=guest")),
        "{conns}"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn a_wrong_ca_is_refused() {
    let p = Publisher::start(
        tls_broker(
            "tls-wrong",
            TlsSettings {
                ca_pem: Some(other_ca()),
                ..Default::default()
            },
        ),
        None,
    );
    let err = wait_for("a refused handshake", Duration::from_secs(15), || async {
        p.state().last_error
    })
    .await;
    assert!(!p.state().connected);
    assert!(
        err.to_lowercase().contains("certificate") || err.to_lowercase().contains("issuer"),
        "{err}"
    );
    assert!(matches!(
        p.publish_confirmed(b"{}").await,
        Err(insights_remote::broker::PublishError::Unavailable(_))
    ));
    p.shutdown().await;
}

#[tokio::test]
async fn verify_false_connects_to_an_unknown_certificate_and_says_so() {
    let metrics = Arc::new(Metrics::new());
    let settings = tls_broker(
        "tls-noverify",
        TlsSettings {
            ca_pem: Some(other_ca()),
            skip_verify: true,
            ..Default::default()
        },
    );
    let queue = settings.queue.clone();
    let p = Publisher::start(settings, Some(metrics.clone()));
    assert!(
        p.wait_connected(Duration::from_secs(15)).await,
        "{:?}",
        p.state().last_error
    );
    assert!(p.state().unverified);
    assert_eq!(metrics.broker_tls_unverified.get(), 1);
    p.publish_confirmed(b"{}").await.unwrap();
    assert_eq!(drain(&queue, 1, Duration::from_secs(5)).await.len(), 1);
    p.shutdown().await;
}

/// The child's stdout lines for which `matches` holds, as they come.
fn lines_matching(
    child: &mut std::process::Child,
    matches: impl Fn(&str) -> bool + Send + 'static,
) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if matches(&line) {
                let _ = tx.send(line);
            }
        }
    });
    rx
}

/// The binary as the chart configures a broker with a self-signed
/// certificate: RABBITMQ_TLS=TRUE, RABBITMQ_VERIFY="false", no CA. It
/// connects (as upstream does) and warns in its log and metrics.
#[tokio::test]
async fn the_binary_honours_rabbitmq_verify_false_with_a_warning() {
    let broker = tls_broker("tls-bin", TlsSettings::default());
    let port = free_port();
    let metrics_port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_insights-remote"))
        .args([
            "--enable-configmap-reconciler=false",
            "--enable-namespace-reconciler=false",
            "--webservice-bind-address=127.0.0.1",
            &format!("--webservice-port={port}"),
            &format!("--rabbitmq-hostname={}", broker.host),
            &format!("--rabbitmq-exchange={}", broker.exchange),
            &format!("--rabbitmq-queue={}", broker.queue),
            "--health-probe-bind-address=0",
            &format!("--metrics-bind-address=127.0.0.1:{metrics_port}"),
            "--metrics-secure=false",
        ])
        .env("INSIGHTS_TOKEN_SECRET", KEY)
        .env("RABBITMQ_TLS", "TRUE")
        .env("RABBITMQ_VERIFY", "false")
        .env("RUST_LOG", "info")
        .stderr(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_matching(&mut child, |l| l.contains("WITHOUT verifying"));
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("a warning that the certificate is not verified");
    assert!(line.contains("WARN"), "{line}");
    let metrics = wait_for("metrics", Duration::from_secs(10), || async {
        reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()
    })
    .await;
    assert!(
        metrics.contains("insights_remote_broker_tls_unverified 1"),
        "{metrics}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// RABBITMQ_TLS=true without RABBITMQ_VERIFY (and no CA) verifies the
/// broker's certificate: a self-signed one is refused, and the log says why
/// (issue 22 point 7; the chart always sets RABBITMQ_VERIFY).
#[tokio::test]
async fn tls_without_rabbitmq_verify_verifies_the_certificate() {
    let broker = tls_broker("tls-default", TlsSettings::default());
    let mut child = api_binary(free_port(), &broker)
        .env("RABBITMQ_TLS", "true")
        .env_remove("RABBITMQ_VERIFY")
        .env("RUST_LOG", "info")
        .stderr(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_matching(&mut child, |l| {
        let l = l.to_ascii_lowercase();
        l.contains("certificate")
            || l.contains("without verifying")
            || l.contains("broker connected")
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("a line about the broker's certificate");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.to_ascii_lowercase().contains("certificate")
            && !line.contains("WITHOUT verifying")
            && !line.contains("broker connected"),
        "{line}"
    );
}

/// The custom resource's status says so too.
#[tokio::test]
async fn status_says_the_broker_is_not_verified() {
    use common::cluster::*;
    use insights_remote::crd::InsightsRemoteConfig;
    use kube::api::{Patch, PatchParams};
    let client = client().await;
    ensure_crd(&client).await;
    let ns = TestNamespace::new(&client, "tlsstatus").await;
    let config_name = unique("irc-tls");
    let irc: kube::Api<InsightsRemoteConfig> = kube::Api::all(client.clone());
    irc.patch(
        &config_name,
        &PatchParams::apply("tests").force(),
        &Patch::Apply(serde_json::json!({"apiVersion": "insights.lagoon.sh/v1alpha1", "kind": "InsightsRemoteConfig", "metadata": {"name": config_name}, "spec": {}})),
    )
    .await
    .unwrap();
    let op = Operator::start(
        &client,
        OperatorOptions {
            broker: tls_broker(
                "tls-status",
                TlsSettings {
                    skip_verify: true,
                    ..Default::default()
                },
            ),
            ops: test_ops(),
            namespace: ns.name.clone(),
            config_name: config_name.clone(),
            forward: false,
            tokens: false,
        },
    )
    .await;
    let (status, message) = wait_for(
        "BrokerConnected ConnectedUnverified",
        Duration::from_secs(30),
        || async {
            let o = irc.get(&config_name).await.ok()?;
            let c = o
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "BrokerConnected" && c.reason == "ConnectedUnverified")?;
            Some((c.status, c.message))
        },
    )
    .await;
    assert_eq!(status, "True");
    assert!(message.contains("RABBITMQ_VERIFY=false"), "{message}");
    op.stop().await;
    let _ = irc.delete(&config_name, &Default::default()).await;
    ns.cleanup().await;
}
