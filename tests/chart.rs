//! The Helm chart (`charts/insights-remote`) with Helm built from the Go
//! module proxy (`hack/helm.sh`): lint, render against a golden file with
//! the lagoon-remote chart's values, and install on the local API server.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::cluster::*;
use common::run_ok;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::Api;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn helm() -> PathBuf {
    let out = run_ok(
        "hack/helm.sh",
        Command::new("bash").arg(root().join("hack/helm.sh")),
    );
    PathBuf::from(out.trim())
}

fn run_helm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(helm())
        .args(args)
        .current_dir(root())
        .env("KUBECONFIG", kubeconfig_path())
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("insights-remote-helm/cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("insights-remote-helm/config"),
        )
        .env(
            "HELM_DATA_HOME",
            std::env::temp_dir().join("insights-remote-helm/data"),
        )
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const CHART: &str = "charts/insights-remote";
const LAGOON_VALUES: &str = "charts/insights-remote/ci/lagoon-remote-values.yaml";

fn docs(yaml: &str) -> Vec<serde_yaml::Value> {
    yaml.split("\n---")
        .filter_map(|d| serde_yaml::from_str::<serde_yaml::Value>(d).ok())
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [serde_yaml::Value], kind: &str, name: &str) -> &'a serde_yaml::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn lint_passes_with_lagoon_remote_values_and_defaults() {
    let (ok, out, err) = run_helm(&["lint", CHART, "--strict", "-f", LAGOON_VALUES]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = run_helm(&[
        "lint",
        CHART,
        "--strict",
        "--set",
        "rabbitMQHostname=rabbit:5672,rabbitMQUsername=u,rabbitMQPassword=p",
    ]);
    assert!(ok, "{out}{err}");
    // lagoon-remote's own image (the Go original) is refused with a reason.
    let (ok, _, err) = run_helm(&[
        "template",
        "x",
        CHART,
        "-f",
        LAGOON_VALUES,
        "--set",
        "image.repository=uselagoon/insights-remote,image.tag=v0.0.19",
    ]);
    assert!(!ok);
    assert!(err.contains("is the Go original"), "{err}");
    // The lagoon-remote chart's required values stay required.
    let (ok, _, err) = run_helm(&["template", "x", CHART]);
    assert!(!ok);
    assert!(
        err.contains("A valid rabbitMQ") && err.contains("required!"),
        "{err}"
    );
}

/// `helm template` with an admin's lagoon-remote values renders exactly
/// the golden file (UPDATE_GOLDEN=1 rewrites it), which keeps what
/// lagoon-remote sets: env names and quoting, the CA at /ca.crt, the
/// Service name and port.
#[test]
fn template_matches_the_golden_file_and_keeps_lagoon_remotes_contract() {
    let (ok, out, err) = run_helm(&[
        "template",
        "lagoon-remote",
        CHART,
        "-n",
        "lagoon",
        "-f",
        LAGOON_VALUES,
    ]);
    assert!(ok, "{err}");
    let golden = root().join("tests/golden/chart-lagoon-remote-values.yaml");
    if std::env::var("UPDATE_GOLDEN").is_ok() {
        std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
        std::fs::write(&golden, &out).unwrap();
    }
    let want = std::fs::read_to_string(&golden).expect("golden file (UPDATE_GOLDEN=1 writes it)");
    assert!(
        out == want,
        "rendered chart differs from {}: run UPDATE_GOLDEN=1 cargo test --test chart and review the diff",
        golden.display()
    );

    let d = docs(&out);
    let dep = find(&d, "Deployment", "lagoon-remote-insights-remote");
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    let env: Vec<(String, String)> = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap_or("<ref>").to_string(),
            )
        })
        .collect();
    let get = |n: &str| env.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    assert_eq!(get("BURN_AFTER_READING"), Some("TRUE"));
    assert_eq!(get("RABBITMQ_TLS"), Some("TRUE"));
    assert_eq!(
        get("RABBITMQ_VERIFY"),
        Some("false"),
        "both verifyPeer false"
    );
    assert_eq!(get("RABBITMQ_CACERT"), Some("/ca.crt"));
    assert_eq!(
        get("RABBITMQ_ADDRESS"),
        Some("lagoon-core-broker.lagoon-core.svc:5671")
    );
    assert_eq!(get("ENABLE_BUILD_SCANNING"), Some("TRUE"));
    assert_eq!(
        get("CONFIGMAP_RECONCILER_MAX_RETRIES"),
        Some("5"),
        "extraEnvs kept"
    );
    for k in [
        "RABBITMQ_USERNAME",
        "RABBITMQ_PASSWORD",
        "INSIGHTS_TOKEN_SECRET",
    ] {
        assert_eq!(get(k), Some("<ref>"), "{k} from the Secret");
    }
    let mount = &c["volumeMounts"][0];
    assert_eq!(mount["mountPath"], "/ca.crt");
    assert_eq!(mount["subPath"], "ca.crt");
    assert_eq!(
        c["image"], "ghcr.io/uselagoon/insights-remote-rs:0.1.0",
        "this project's image, not lagoon-remote's"
    );
    let svc = find(&d, "Service", "lagoon-remote-insights-remote");
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8888);
    // Least privilege from config/ (one source): no cluster-wide Secret
    // access, the scanner's role only because scanning is on.
    // lagoon-env only when per-namespace Dependency-Track uploads can run.
    let role = find(&d, "ClusterRole", "lagoon-remote-insights-remote");
    let mut want_rules: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("config/rbac/role.yaml")).unwrap(),
    )
    .unwrap();
    want_rules["rules"]
        .as_sequence_mut()
        .unwrap()
        .retain(|r| !serde_yaml::to_string(r).unwrap().contains("lagoon-env"));
    assert_eq!(role["rules"], want_rules["rules"]);
    // The own-namespace Role: Secrets by name only.
    let own = find(&d, "Role", "lagoon-remote-insights-remote");
    let secrets = own["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|r| {
            serde_yaml::to_string(&r["resources"])
                .unwrap()
                .contains("secrets")
        })
        .unwrap();
    assert!(
        secrets["resourceNames"]
            .as_sequence()
            .is_some_and(|n| n.iter().any(|x| x == "insights-remote-signing-key")),
        "{secrets:?}"
    );
    find(
        &d,
        "ClusterRole",
        "lagoon-remote-insights-remote-build-scanner",
    );
}

#[test]
fn scanner_and_per_namespace_rules_only_when_asked() {
    let (ok, out, err) = run_helm(&[
        "template",
        "ir",
        CHART,
        "--set",
        "rabbitMQHostname=rabbit:5672,rabbitMQUsername=u,rabbitMQPassword=p,dependencyTrack.enabled=true,dependencyTrack.perNamespace=false",
    ]);
    assert!(ok, "{err}");
    let d = docs(&out);
    assert!(!d
        .iter()
        .any(|x| x["metadata"]["name"] == "ir-insights-remote-build-scanner"));
    let role = find(&d, "ClusterRole", "ir-insights-remote");
    let text = serde_yaml::to_string(&role["rules"]).unwrap();
    assert!(!text.contains("lagoon-env"), "{text}");
    assert!(text.contains("insights-token"));
    // Dependency-Track on with per-namespace uploads: lagoon-env, and the
    // admin's endpoint policy and own Secret names reach the pod and Role.
    let (ok, out, err) = run_helm(&[
        "template",
        "ir",
        CHART,
        "--set",
        "rabbitMQHostname=rabbit:5672,rabbitMQUsername=u,rabbitMQPassword=p,dependencyTrack.enabled=true,dependencyTrack.customEndpointHosts=dt.example.com,configSecretNames={my-key}",
    ]);
    assert!(ok, "{err}");
    let d = docs(&out);
    let role = find(&d, "ClusterRole", "ir-insights-remote");
    assert!(serde_yaml::to_string(&role["rules"])
        .unwrap()
        .contains("lagoon-env"));
    let own = serde_yaml::to_string(&find(&d, "Role", "ir-insights-remote")["rules"]).unwrap();
    assert!(
        own.contains("my-key") && !own.contains("insights-remote-signing-key"),
        "{own}"
    );
    let deployment = serde_yaml::to_string(&find(&d, "Deployment", "ir-insights-remote")).unwrap();
    assert!(
        deployment.contains("DEPENDENCY_TRACK_CUSTOM_ENDPOINT_HOSTS"),
        "{deployment}"
    );
}

/// Installed on the real API server: the objects exist as rendered, and an
/// upgrade keeps the generated signing key (tokens stay valid).
#[tokio::test]
async fn installs_on_the_api_server_and_keeps_the_key_on_upgrade() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "chart").await;
    let release = common::unique("ir");
    let set = "rabbitMQHostname=rabbit.example:5672,rabbitMQUsername=u,rabbitMQPassword=p";
    let (ok, out, err) = run_helm(&["install", &release, CHART, "-n", &ns.name, "--set", set]);
    assert!(ok, "{out}{err}");
    let fullname = format!("{release}-insights-remote");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let key = |s: &Secret| s.data.as_ref().unwrap()["INSIGHTS_TOKEN_SECRET"].0.clone();
    let first = key(&secrets.get(&fullname).await.unwrap());
    assert_eq!(
        first.len(),
        32,
        "a random 32-character key, as lagoon-remote"
    );
    let dep: Deployment = Api::namespaced(client.clone(), &ns.name)
        .get(&fullname)
        .await
        .unwrap();
    assert_eq!(dep.spec.replicas, Some(2));
    // Two replicas: a PodDisruptionBudget (with one it would block drains).
    Api::<k8s_openapi::api::policy::v1::PodDisruptionBudget>::namespaced(client.clone(), &ns.name)
        .get(&fullname)
        .await
        .unwrap();
    let svc: Service = Api::namespaced(client.clone(), &ns.name)
        .get("lagoon-remote-insights-remote")
        .await
        .unwrap();
    assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 80);
    Api::<ClusterRole>::all(client.clone())
        .get(&fullname)
        .await
        .unwrap();
    let (ok, out, err) = run_helm(&["upgrade", &release, CHART, "-n", &ns.name, "--set", set]);
    assert!(ok, "{out}{err}");
    assert_eq!(
        key(&secrets.get(&fullname).await.unwrap()),
        first,
        "kept on upgrade"
    );
    let (ok, out, err) = run_helm(&["uninstall", &release, "-n", &ns.name]);
    assert!(ok, "{out}{err}");
    assert!(Api::<ClusterRole>::all(client.clone())
        .get_opt(&fullname)
        .await
        .unwrap()
        .is_none());
    ns.cleanup().await;
}
