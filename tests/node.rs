//! End to end on a real node (hack/node.sh): the product's image, installed
//! by `helm install` with lagoon-remote's values, runs as the chart says
//! (non-root, read-only root filesystem, in-cluster configuration, kubelet
//! probes); a workload pod posts with its mounted token to the
//! Service by its cluster DNS name; a build pod writes insights ConfigMaps and the scanner pod the
//! operator starts really runs; everything arrives in the broker.
mod common;

use std::time::Duration;

use common::cluster::{client, lagoon_deployer, wait_for, TestNamespace};
use common::drain;
use common::node::{environment_token, node_environment, node_var, run_pod, tools_pod, Release};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// A Lagoon environment namespace whose pods run on the node, with what
/// Lagoon gives it: the `lagoon-deployer` ServiceAccount (allowed to edit
/// the namespace, as Lagoon's is), the registry Secret the scanner mounts,
/// and a Deployment whose image the scanner is asked to scan.
async fn environment(client: &Client) -> (TestNamespace, String) {
    let (ns, env_id) = node_environment(client, "e2e").await;
    lagoon_deployer(client, &ns.name).await;
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(client.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": {"name": "lagoon-deployer-edit"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
                "subjects": [{"kind": "ServiceAccount", "name": "lagoon-deployer", "namespace": ns.name}],
            })),
        )
        .await
        .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": {"name": "lagoon-internal-registry-secret"},
                "type": "kubernetes.io/dockerconfigjson",
                "stringData": {".dockerconfigjson": "{\"auths\":{}}"},
            })),
        )
        .await
        .unwrap();
    Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": {"name": "cli"},
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": "cli"}},
                    "template": {
                        "metadata": {"labels": {"app": "cli"}},
                        "spec": {"containers": [{"name": "cli", "image": node_var("INSIGHTS_NODE_TOOLS_IMAGE")}]},
                    },
                },
            })),
        )
        .await
        .unwrap();
    (ns, env_id)
}

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn count(messages: &[serde_json::Value], kind: &str) -> usize {
    messages.iter().filter(|m| m["type"] == kind).count()
}

#[tokio::test]
async fn the_chart_runs_on_the_node_and_pods_post_build_and_scan() {
    let client = client().await;
    tokio::task::spawn_blocking(common::node::node)
        .await
        .unwrap();
    let (env, env_id) = environment(&client).await;
    let release = Release::install(
        &client,
        &env.name,
        &[
            "--set".into(),
            format!(
                "buildScannerImage={},buildScannerImagePullPolicy=IfNotPresent",
                node_var("INSIGHTS_NODE_SCANNER_IMAGE")
            ),
        ],
    )
    .await;

    // The operator's pod: Ready through the kubelet's probes, as the chart
    // runs it, and never restarted.
    let pods = release.pods().await;
    let operator = pods
        .iter()
        .find(|p| {
            p.labels().get("app.kubernetes.io/name").map(String::as_str) == Some("insights-remote")
        })
        .expect("the chart's pod");
    let status = operator.status.as_ref().unwrap();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    let cs = &status.container_statuses.as_ref().unwrap()[0];
    assert!(cs.ready, "the kubelet's readiness probe passed");
    assert_eq!(cs.restart_count, 0);
    let c = &operator.spec.as_ref().unwrap().containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        operator
            .spec
            .as_ref()
            .unwrap()
            .security_context
            .as_ref()
            .unwrap()
            .run_as_non_root,
        Some(true)
    );
    assert_eq!(c.image.as_deref(), Some("localhost/insights-remote:dev"));

    // In-cluster configuration at work: the environment's token Secret is
    // minted by the pod (it has no kubeconfig).
    environment_token(&client, &env.name).await;

    // A workload posts facts and a problem with its mounted token, to the
    // Service by its cluster DNS name, as Lagoon's clients do.
    let url = release.service_dns_url();
    let (phase, log) = run_pod(
        &client,
        &env.name,
        tools_pod("workload", "post-insights", None, &[("INSIGHTS_URL", &url)]),
    )
    .await;
    assert_eq!(phase, "Succeeded", "the workload's posts: {log}");
    assert!(log.contains("POST /facts: {\"message\":\"okay\"}"), "{log}");
    assert!(
        log.contains("POST /problems: {\"message\":\"okay\"}"),
        "{log}"
    );

    // A build pod writes the SBOM and image ConfigMaps and succeeds; the
    // operator starts the scanner, which really runs and writes its SBOM.
    let build_name = "lagoon-build-e2e";
    let mut build = tools_pod(
        build_name,
        "lagoon-build",
        Some("lagoon-deployer"),
        &[
            ("PROJECT", "demo-project"),
            ("ENVIRONMENT", "main"),
            ("SERVICE", "cli"),
            ("LAGOON_BUILD_NAME", build_name),
        ],
    );
    build["metadata"]["labels"] =
        json!({"lagoon.sh/buildName": build_name, "lagoon.sh/jobType": "build"});
    let (phase, log) = run_pod(&client, &env.name, build).await;
    assert_eq!(phase, "Succeeded", "the build pod: {log}");
    let pods = Api::<Pod>::namespaced(client.clone(), &env.name);
    let scanner = format!("insights-scanner-{build_name}");
    let scan_log = wait_for(
        "the scanner pod to succeed",
        Duration::from_secs(90),
        || async {
            let p = pods.get_opt(&scanner).await.ok().flatten()?;
            match p.status?.phase?.as_str() {
                "Succeeded" => Some(
                    pods.logs(&scanner, &Default::default())
                        .await
                        .unwrap_or_default(),
                ),
                "Failed" => panic!("the scanner pod failed"),
                _ => None,
            }
        },
    )
    .await;
    assert!(
        scan_log.contains("scanned localhost/insights-remote/tools:1"),
        "{scan_log}"
    );

    // Everything in the broker: 2 posts, the build's SBOM and image, the
    // scanner's SBOM; each ConfigMap burnt after reading.
    let got = drain(&release.queue, 5, Duration::from_secs(90)).await;
    assert_eq!(got.len(), 5, "{got:#?}");
    assert_eq!(count(&got, "direct.facts"), 1);
    assert_eq!(count(&got, "direct.problems"), 1);
    assert_eq!(count(&got, "sbom"), 2);
    assert_eq!(count(&got, "inspect"), 1);
    let facts = got.iter().find(|m| m["type"] == "direct.facts").unwrap();
    assert_eq!(facts["environment"], json!(env_id.parse::<i64>().unwrap()));
    let cms = Api::<ConfigMap>::namespaced(client.clone(), &env.name);
    wait_for(
        "every insights ConfigMap burnt",
        Duration::from_secs(30),
        || async {
            let left = cms
                .list(&kube::api::ListParams::default().labels("lagoon.sh/insightsType"))
                .await
                .ok()?;
            left.items.is_empty().then_some(())
        },
    )
    .await;

    release.uninstall().await;
    env.cleanup().await;
}
