//! The kustomize base renders, and agrees with the CRD and RBAC the other
//! tests use.

use std::process::Command;

use insights_remote::crd::InsightsRemoteConfig;
use kube::CustomResourceExt;
use serde_yaml::Value;

fn render(dir: &str) -> Vec<Value> {
    let out = Command::new("bash")
        .args(["hack/control-plane.sh", "kubectl", "kustomize", dir])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

use serde::Deserialize;

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} not rendered"))
}

/// JSON with every number as f64: kustomize prints 65535 where serde writes 65535.0.
fn normalized(v: &Value) -> serde_json::Value {
    fn walk(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Number(n) => serde_json::json!(n.as_f64().unwrap()),
            serde_json::Value::Array(a) => a.into_iter().map(walk).collect(),
            serde_json::Value::Object(o) => o.into_iter().map(|(k, v)| (k, walk(v))).collect(),
            other => other,
        }
    }
    walk(serde_json::to_value(v).unwrap())
}

#[test]
fn kustomize_base_renders_consistent_manifests() {
    let docs = render("config/default");
    let crd = find(
        &docs,
        "CustomResourceDefinition",
        "insightsremoteconfigs.insights.lagoon.sh",
    );
    assert_eq!(
        normalized(crd),
        normalized(&serde_yaml::to_value(InsightsRemoteConfig::crd()).unwrap()),
        "rendered CRD matches the Rust type"
    );

    let role = find(&docs, "ClusterRole", "insights-remote");
    let file: Value = serde_yaml::from_str(
        &std::fs::read_to_string(format!(
            "{}/config/rbac/role.yaml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        role["rules"], file["rules"],
        "the rules tests/rbac.rs runs under"
    );
    // Least privilege: no wildcards, no update/deletecollection, secrets never deleted.
    for rule in role["rules"].as_sequence().unwrap() {
        for v in rule["verbs"].as_sequence().unwrap() {
            assert!(
                v != "*" && v != "update" && v != "deletecollection",
                "{rule:?}"
            );
        }
        if rule["resources"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|r| r == "secrets")
        {
            assert!(!rule["verbs"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|v| v == "delete"));
        }
    }

    let dep = find(&docs, "Deployment", "insights-remote");
    assert_eq!(dep["metadata"]["namespace"], "lagoon");
    assert_eq!(dep["spec"]["replicas"], 2);
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "insights-remote");
    find(&docs, "ServiceAccount", "insights-remote");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert!(c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|a| a == "--leader-elect"));
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(c["resources"]["limits"]["memory"].is_string());

    let svc = find(&docs, "Service", "lagoon-remote-insights-remote");
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "ingestion");
    let ingestion = c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "ingestion")
        .unwrap();
    assert_eq!(ingestion["containerPort"], 8888);
    find(&docs, "Service", "insights-remote-metrics");

    let overlay = render("config/samples/switch-from-go");
    let dep = find(&overlay, "Deployment", "insights-remote");
    let env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_sequence()
        .unwrap();
    for name in [
        "RABBITMQ_ADDRESS",
        "RABBITMQ_USERNAME",
        "RABBITMQ_PASSWORD",
        "INSIGHTS_TOKEN_SECRET",
        "BURN_AFTER_READING",
        "POD_NAMESPACE",
    ] {
        assert!(
            env.iter().any(|e| e["name"] == name),
            "{name} in the overlay"
        );
    }
}
