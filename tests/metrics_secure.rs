//! `--metrics-secure` (upstream's default) against the real API server:
//! HTTPS, 401 without or with a bad token, 403 for an identity without
//! `get` on /metrics, 200 for one with it; probes stay plain and do not
//! serve metrics; `--metrics-secure=false` serves plain HTTP.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::cluster::*;
use common::*;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use serde_json::json;

/// The operator; killed when dropped, and its log printed if the test
/// failed (a child that could not start says why).
struct Killed(Child, std::path::PathBuf);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.1).unwrap_or_default();
            eprintln!("--- operator log ({}) ---\n{log}", self.1.display());
        }
    }
}

fn operator(metrics_port: u16, probes_port: u16, extra: &[&str]) -> Killed {
    let log = std::env::temp_dir().join(format!("metrics-secure-{metrics_port}.log"));
    let out = std::fs::File::create(&log).unwrap();
    Killed(
        Command::new(env!("CARGO_BIN_EXE_insights-remote"))
            .args([
                "--enable-webservice=false",
                "--enable-configmap-reconciler=false",
                "--enable-namespace-reconciler=false",
                "--rabbitmq-enabled=false",
                &format!("--health-probe-bind-address=127.0.0.1:{probes_port}"),
                &format!("--metrics-bind-address=127.0.0.1:{metrics_port}"),
            ])
            .args(extra)
            .env("KUBECONFIG", kubeconfig_path())
            .env("INSIGHTS_TOKEN_SECRET", KEY)
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap(),
        log,
    )
}

fn https() -> reqwest::Client {
    // The certificate is self-signed, made at start-up (as controller-runtime's).
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
}

async fn status(url: &str, token: Option<&str>) -> Option<u16> {
    let mut req = https().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    Some(req.send().await.ok()?.status().as_u16())
}

#[tokio::test]
async fn metrics_need_a_token_allowed_to_get_metrics() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "metrics").await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
    for sa in ["scraper", "nobody"] {
        sas.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": sa}})).unwrap(),
        )
        .await
        .unwrap();
    }
    // The reader role from config/rbac, bound to the scraper only.
    let mut reader: ClusterRole = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/rbac/metrics_reader_role.yaml"
        ))
        .unwrap(),
    )
    .unwrap();
    let role_name = unique("metrics-reader");
    reader.metadata.name = Some(role_name.clone());
    let roles: Api<ClusterRole> = Api::all(client.clone());
    roles.create(&PostParams::default(), &reader).await.unwrap();
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": role_name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
                "subjects": [{"kind": "ServiceAccount", "name": "scraper", "namespace": ns.name}],
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let scraper = service_account_token(&client, &ns.name, "scraper").await;
    let nobody = service_account_token(&client, &ns.name, "nobody").await;

    let (metrics_port, probes_port) = (free_port(), free_port());
    let _op = operator(metrics_port, probes_port, &[]);
    let url = format!("https://127.0.0.1:{metrics_port}/metrics");
    let first = wait_for(
        "HTTPS metrics listener",
        Duration::from_secs(20),
        || async { status(&url, None).await },
    )
    .await;
    assert_eq!(first, 401, "no token");
    assert_eq!(status(&url, Some("not-a-token")).await, Some(401));
    assert_eq!(status(&url, Some(&nobody)).await, Some(403));
    // RBAC bindings take a moment to reach the authorizer's cache.
    wait_for("the scraper allowed", Duration::from_secs(20), || async {
        (status(&url, Some(&scraper)).await == Some(200)).then_some(())
    })
    .await;
    let body = body_text(https().get(&url).bearer_auth(&scraper)).await;
    assert!(body.contains("insights_remote_"), "{body}");
    // Plain HTTP on the metrics port is refused; the probe port has no metrics.
    assert!(
        reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
            .await
            .map(|r| r.status().as_u16() != 200)
            .unwrap_or(true)
    );
    let probes = format!("http://127.0.0.1:{probes_port}");
    assert_eq!(
        reqwest::get(format!("{probes}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(format!("{probes}/metrics"))
            .await
            .unwrap()
            .status(),
        404
    );

    let _ = bindings.delete(&role_name, &DeleteParams::default()).await;
    let _ = roles.delete(&role_name, &DeleteParams::default()).await;
    ns.cleanup().await;
}

#[tokio::test]
async fn metrics_secure_false_serves_plain_http() {
    let (metrics_port, probes_port) = (free_port(), free_port());
    let _op = operator(metrics_port, probes_port, &["--metrics-secure=false"]);
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let body = wait_for("plain metrics", Duration::from_secs(20), || async {
        reqwest::get(&url).await.ok()?.text().await.ok()
    })
    .await;
    assert!(body.contains("insights_remote_"), "{body}");
}
