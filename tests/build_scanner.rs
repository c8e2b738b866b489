//! The post-build image scanner against the real API server. There is no
//! kubelet: the test moves the build pod to `Succeeded` through the status
//! subresource, as the kubelet would.

mod common;

use std::time::Duration;

use common::cluster::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

fn scanner_ops(extra: &[(&str, &str)]) -> insights_remote::settings::Operations {
    let mut ops = test_ops();
    ops.forwarding_enabled = false;
    ops.build_scanner = insights_remote::controller::build::ScannerSettings {
        enabled: true,
        image: "registry.example/insights-scanner:test".into(),
        extra_env: extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        run_as_user: None,
        pull_policy: "Always".into(),
    };
    ops
}

async fn start(ns: &TestNamespace, ops: insights_remote::settings::Operations) -> Operator {
    Operator::start(
        &ns.client,
        OperatorOptions {
            broker: common::isolated_broker("scan"),
            ops,
            namespace: ns.name.clone(),
            config_name: common::unique("irc"),
            forward: false,
            tokens: false,
        },
    )
    .await
}

/// The namespace's deployer, one Deployment `web` (nginx), and an operator
/// scanning there: the pods API and the operator.
async fn one_web_deployment(client: &kube::Client, ns: &TestNamespace) -> (Api<Pod>, Operator) {
    lagoon_deployer(client, &ns.name).await;
    Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &deployment("web", &["nginx:1.27"]))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    (pods, start(ns, scanner_ops(&[])).await)
}

fn deployment(name: &str, images: &[&str]) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "initContainers": [{"name": "init", "image": "busybox:init"}],
                    "containers": images.iter().enumerate().map(|(i, img)| json!({"name": format!("c{i}"), "image": img})).collect::<Vec<_>>(),
                },
            },
        },
    }))
    .unwrap()
}

fn pod(name: &str, labels: serde_json::Value, annotations: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {
            "serviceAccountName": "lagoon-deployer",
            "automountServiceAccountToken": false,
            "restartPolicy": "Never",
            "containers": [{
                "name": "lagoon-build",
                "image": "uselagoon/build-deploy-image:main",
                "env": [
                    {"name": "PROJECT", "value": "demo-project"},
                    {"name": "ENVIRONMENT", "value": "main"},
                    {"name": "BRANCH", "value": "main"},
                    {"name": "ENVIRONMENT_ID", "value": "42"},
                    {"name": "SSH_PRIVATE_KEY", "value": "never copied"},
                    {"name": "LAGOON_FEATURE_FLAG_INSIGHTS", "value": "enabled"},
                    {"name": "LAGOON_FEATURE_FLAG_FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "lagoon-env", "key": "X"}}},
                ],
            }],
        },
    }))
    .unwrap()
}

async fn phase(pods: &Api<Pod>, name: &str, phase: &str) {
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": phase}})),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn succeeded_build_gets_one_scanner_pod_even_across_restarts() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "scan").await;
    lagoon_deployer(&client, &ns.name).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    for d in [
        deployment("nginx", &["nginx:1.27", "php:8.3"]),
        deployment("cli", &["php:8.3", "cli:latest"]),
    ] {
        deployments
            .create(&PostParams::default(), &d)
            .await
            .unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    // A scanner pod of an earlier build: replaced.
    pods.create(
        &PostParams::default(),
        &pod(
            "insights-scanner-lagoon-build-old",
            json!({"insights.lagoon.sh/scan-status": "scanning", "insights.lagoon.sh/imagescanner": "true"}),
            json!({}),
        ),
    )
    .await
    .unwrap();
    let build = "lagoon-build-abc123";
    pods.create(
        &PostParams::default(),
        &pod(
            build,
            json!({"lagoon.sh/buildName": build, "lagoon.sh/jobType": "build"}),
            json!({"dockerhost.lagoon.sh/name": "docker-host-2.lagoon.svc"}),
        ),
    )
    .await
    .unwrap();
    let op = start(
        &ns,
        scanner_ops(&[
            ("BRANCH", "from-extra"),
            ("HTTP_PROXY", "http://proxy:3128"),
        ]),
    )
    .await;
    phase(&pods, build, "Running").await;
    phase(&pods, build, "Succeeded").await;

    let scanner_name = format!("insights-scanner-{build}");
    let scanner = wait_for("scanner pod", Duration::from_secs(30), || async {
        pods.get_opt(&scanner_name).await.unwrap()
    })
    .await;
    assert_eq!(
        scanner.labels()["insights.lagoon.sh/scan-status"],
        "scanning"
    );
    assert_eq!(scanner.labels()["insights.lagoon.sh/imagescanner"], "true");
    let spec = scanner.spec.clone().unwrap();
    assert_eq!(
        spec.service_account_name.as_deref(),
        Some("lagoon-deployer")
    );
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    let c = &spec.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some("registry.example/insights-scanner:test")
    );
    let mount = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.mount_path == "/home/.docker/")
        .expect("registry credentials mounted");
    let vol = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == mount.name)
        .unwrap();
    assert_eq!(
        vol.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("lagoon-internal-registry-secret")
    );
    let env = c.env.clone().unwrap();
    let names: Vec<&str> = env.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "BRANCH",
            "DOCKER_HOST",
            "ENVIRONMENT",
            "HTTP_PROXY",
            "INSIGHT_SCAN_IMAGES",
            "LAGOON_FEATURE_FLAG_FROM_SECRET",
            "LAGOON_FEATURE_FLAG_INSIGHTS",
            "NAMESPACE",
            "PROJECT",
        ]
    );
    let get = |n: &str| env.iter().find(|e| e.name == n).unwrap().clone();
    assert_eq!(
        get("INSIGHT_SCAN_IMAGES").value.as_deref(),
        Some("php:8.3,cli:latest,nginx:1.27"),
        "Deployments in the API's order (by name: cli, nginx), each image once"
    );
    assert_eq!(get("NAMESPACE").value.as_deref(), Some(ns.name.as_str()));
    assert_eq!(
        get("DOCKER_HOST").value.as_deref(),
        Some("docker-host-2.lagoon.svc")
    );
    assert_eq!(
        get("BRANCH").value.as_deref(),
        Some("from-extra"),
        "extra env wins"
    );
    assert!(get("LAGOON_FEATURE_FLAG_FROM_SECRET").value_from.is_some());

    // The build pod is marked, the earlier scanner is gone.
    wait_scanned(&pods, build).await;
    wait_for(
        "earlier scanner removed",
        Duration::from_secs(30),
        || async {
            pods.get_opt("insights-scanner-lagoon-build-old")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    let first_uid = scanner.uid().unwrap();
    op.stop().await;

    // A restart in the window between creating the scanner and marking the
    // build (the mark removed by hand): the new process marks the build and
    // keeps the scanner pod it finds, rather than starting a second scan.
    pods.patch(
        build,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"insights.lagoon.sh/scanned": null}}})),
    )
    .await
    .unwrap();
    let op = start(&ns, scanner_ops(&[])).await;
    // Marked again after the restart.
    wait_scanned(&pods, build).await;
    let after = pods.get(&scanner_name).await.unwrap();
    assert_eq!(after.uid().unwrap(), first_uid, "not created twice");
    let scanners = pods
        .list(&kube::api::ListParams::default().labels("insights.lagoon.sh/imagescanner=true"))
        .await
        .unwrap();
    assert_eq!(scanners.items.len(), 1);
    op.stop().await;
    ns.cleanup().await;
}

#[tokio::test]
async fn failed_build_is_not_scanned_and_a_later_success_is() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "scanfail").await;
    let (pods, op) = one_web_deployment(&client, &ns).await;
    for b in ["lagoon-build-failed", "lagoon-build-ok"] {
        pods.create(
            &PostParams::default(),
            &pod(b, json!({"lagoon.sh/buildName": b}), json!({})),
        )
        .await
        .unwrap();
    }
    phase(&pods, "lagoon-build-failed", "Failed").await;
    phase(&pods, "lagoon-build-ok", "Succeeded").await;
    // The successful one is scanned; by then the failed one, seen earlier
    // (its update came first), has no scanner and no mark.
    wait_for("ok build scanned", Duration::from_secs(30), || async {
        pods.get_opt("insights-scanner-lagoon-build-ok")
            .await
            .unwrap()
    })
    .await;
    assert!(pods
        .get_opt("insights-scanner-lagoon-build-failed")
        .await
        .unwrap()
        .is_none());
    assert!(!pods
        .get("lagoon-build-failed")
        .await
        .unwrap()
        .labels()
        .contains_key("insights.lagoon.sh/scanned"));
    op.stop().await;
    ns.cleanup().await;
}

#[test]
fn a_bad_extra_env_key_stops_start_up_with_a_clear_message() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_insights-remote"))
        .args(["--build-scanner-extra-env", "1BAD=x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1BAD"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_insights-remote"))
        .env("BUILD_SCANNER_EXTRA_ENV_VARS", "GOOD=1,BAD-KEY=2")
        .env("INSIGHTS_TOKEN_SECRET", "x".repeat(40))
        .args([
            "--enable-webservice=false",
            "--enable-namespace-reconciler=false",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        all.contains("BUILD_SCANNER_EXTRA_ENV_VARS") && all.contains("BAD-KEY"),
        "{all}"
    );
}

/// A pod labelled `lagoon.sh/buildName` in a namespace that is not a Lagoon
/// environment starts no scanner, even when it succeeds: anyone may label
/// a pod so. (The positive signal: the succeeded pod was reconciled.)
#[tokio::test]
async fn a_build_outside_a_lagoon_namespace_is_not_scanned() {
    let client = client().await;
    let ns = TestNamespace::with_labels(&client, "scanplain", Default::default()).await;
    let (pods, op) = one_web_deployment(&client, &ns).await;
    let b = "lagoon-build-plain";
    pods.create(
        &PostParams::default(),
        &pod(b, json!({"lagoon.sh/buildName": b}), json!({})),
    )
    .await
    .unwrap();
    let labels = insights_remote::metrics::ControllerLabels {
        controller: "build".into(),
    };
    let count = || op.metrics.reconciliations.get_or_create(&labels).get();
    // The pending pod's reconcile first, then the succeeded one's.
    wait_for(
        "the new pod reconciled",
        Duration::from_secs(30),
        || async { (count() > 0).then_some(()) },
    )
    .await;
    let before = count();
    phase(&pods, b, "Succeeded").await;
    wait_for(
        "the succeeded pod reconciled",
        Duration::from_secs(30),
        || async { (count() > before).then_some(()) },
    )
    .await;
    assert!(pods
        .get_opt(&format!("insights-scanner-{b}"))
        .await
        .unwrap()
        .is_none());
    assert!(!pods
        .get(b)
        .await
        .unwrap()
        .labels()
        .contains_key("insights.lagoon.sh/scanned"));
    // Once the namespace is a Lagoon environment, the same build is scanned
    // (so it was the namespace that stopped it).
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": lagoon_labels("42")}})),
        )
        .await
        .unwrap();
    pods.patch(
        b,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"touched": "1"}}})),
    )
    .await
    .unwrap();
    wait_for(
        "scanned once a Lagoon environment",
        Duration::from_secs(30),
        || async {
            pods.get_opt(&format!("insights-scanner-{b}"))
                .await
                .unwrap()
        },
    )
    .await;
    op.stop().await;
    ns.cleanup().await;
}
