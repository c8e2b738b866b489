//! The real node started by `hack/node.sh` (kubelet, containerd, kube-proxy
//! beside the control plane): the chart installed with Helm as an admin
//! installs it, pods that really run, and what they printed.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{LogParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};

use super::cluster::{kubeconfig_path, wait_for, TestNamespace};
use super::{run_ok, unique};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The node's addresses and image names (`hack/node.sh env`), after making
/// sure the node runs and holds the product image of this working tree
/// (once per test binary).
pub fn node() -> &'static HashMap<String, String> {
    static NODE: OnceLock<HashMap<String, String>> = OnceLock::new();
    NODE.get_or_init(|| {
        let script = root().join("hack/node.sh");
        run_ok(
            "hack/node.sh up",
            Command::new("bash").arg(&script).arg("up"),
        );
        // Without the variables cargo sets for a test: the nested release
        // build must see what `hack/test.sh` saw, or it builds again.
        let mut build = Command::new("bash");
        build.arg(&script).arg("product-image");
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if (k.starts_with("CARGO") && k != "CARGO_HOME")
                || k.starts_with("RUSTC")
                || k == "LD_LIBRARY_PATH"
            {
                build.env_remove(k);
            }
        }
        run_ok("hack/node.sh product-image", &mut build);
        run_ok(
            "hack/node.sh env",
            Command::new("bash").arg(&script).arg("env"),
        )
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    })
}

pub fn node_var(name: &str) -> String {
    node()
        .get(name)
        .unwrap_or_else(|| panic!("hack/node.sh env has no {name}"))
        .clone()
}

/// Lets the namespace's pods onto the node (its taint keeps every other
/// pod off it).
pub async fn tolerate_node(client: &Client, ns: &str) {
    let patch = serde_json::json!({"metadata": {"annotations": {
        "scheduler.alpha.kubernetes.io/defaultTolerations": node_var("INSIGHTS_NODE_TOLERATION"),
    }}});
    Api::<Namespace>::all(client.clone())
        .patch(ns, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

pub fn helm_bin() -> PathBuf {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let out = run_ok(
            "hack/helm.sh",
            Command::new("bash").arg(root().join("hack/helm.sh")),
        );
        PathBuf::from(out.trim())
    })
    .clone()
}

/// Runs helm against the local API server; panics with its output when it
/// fails.
pub fn helm(args: &[&str]) -> String {
    let tmp = std::env::temp_dir().join("insights-remote-helm");
    run_ok(
        &format!("helm {}", args.join(" ")),
        Command::new(helm_bin())
            .args(args)
            .current_dir(root())
            .env("KUBECONFIG", kubeconfig_path())
            .env("HELM_CACHE_HOME", tmp.join("cache"))
            .env("HELM_CONFIG_HOME", tmp.join("config"))
            .env("HELM_DATA_HOME", tmp.join("data")),
    )
}

/// A Lagoon environment namespace whose pods may run on the node, with an
/// environment id no other test uses (the registry refuses a duplicate);
/// the namespace and its id.
pub async fn node_environment(client: &Client, tag: &str) -> (TestNamespace, String) {
    let env_id = (100_000 + uuid::Uuid::new_v4().as_u128() % 800_000).to_string();
    let ns = TestNamespace::with_labels(client, tag, super::cluster::lagoon_labels(&env_id)).await;
    tolerate_node(client, &ns.name).await;
    (ns, env_id)
}

/// The environment's token, once the operator has minted its Secret.
pub async fn environment_token(client: &Client, ns: &str) -> String {
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns);
    wait_for(
        "the insights-token Secret",
        Duration::from_secs(60),
        || async {
            let s = secrets.get_opt("insights-token").await.ok()??;
            String::from_utf8(s.data?.get("INSIGHTS_TOKEN")?.0.clone()).ok()
        },
    )
    .await
}

/// A release of charts/insights-remote in a namespace of its own, with the
/// lagoon-remote values an admin copies, pointed at this machine's broker
/// (through the node's relay) and scoped to one environment namespace.
pub struct Release {
    pub name: String,
    pub ns: TestNamespace,
    pub exchange: String,
    pub queue: String,
    client: Client,
}

impl Release {
    /// `extra`: more `--set`/`--set-json` style arguments.
    pub async fn install(client: &Client, env_ns: &str, extra: &[String]) -> Release {
        let ns = TestNamespace::with_labels(client, "irel", BTreeMap::new()).await;
        tolerate_node(client, &ns.name).await;
        let name = unique("lr");
        let exchange = format!("{name}-x");
        let queue = format!("{name}-q");
        let extra_envs = serde_json::json!([
            {"name": "WATCH_NAMESPACE", "value": env_ns},
            {"name": "RABBITMQ_EXCHANGE", "value": exchange},
            {"name": "RABBITMQ_QUEUE", "value": queue},
            // Its own InsightsRemoteConfig name (cluster-scoped; none
            // exists): a running demo's `default` must not steer it.
            {"name": "INSIGHTS_REMOTE_CONFIG_NAME", "value": name},
        ]);
        let mut args: Vec<String> = vec![
            "install".into(),
            name.clone(),
            "charts/insights-remote".into(),
            "--namespace".into(),
            ns.name.clone(),
            "-f".into(),
            "charts/insights-remote/ci/lagoon-remote-values.yaml".into(),
            "--set".into(),
            "image.repository=localhost/insights-remote,image.tag=dev".into(),
            "--set".into(),
            format!(
                "global.rabbitMQHostname={},global.rabbitMQUsername=guest,global.rabbitMQPassword=guest",
                node_var("INSIGHTS_NODE_BROKER")
            ),
            "--set".into(),
            "global.broker.tls.enabled=false,broker.tlsCA.enabled=false".into(),
            "--set-json".into(),
            format!("extraEnvs={extra_envs}"),
        ];
        args.extend(extra.iter().cloned());
        args.extend(["--wait".into(), "--timeout".into(), "120s".into()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        helm(&refs);
        Release {
            name,
            ns,
            exchange,
            queue,
            client: client.clone(),
        }
    }

    /// The chart's Service, as a workload reaches it by address.
    pub async fn service_url(&self) -> String {
        let svc = Api::<Service>::namespaced(self.client.clone(), &self.ns.name)
            .get("lagoon-remote-insights-remote")
            .await
            .unwrap();
        let ip = svc.spec.unwrap().cluster_ip.unwrap();
        format!("http://{ip}:80")
    }

    /// The chart's Service by its cluster DNS name, as Lagoon's clients
    /// reach it (CoreDNS on the node).
    pub fn service_dns_url(&self) -> String {
        format!("http://lagoon-remote-insights-remote.{}.svc", self.ns.name)
    }

    pub async fn pods(&self) -> Vec<Pod> {
        Api::<Pod>::namespaced(self.client.clone(), &self.ns.name)
            .list(&Default::default())
            .await
            .unwrap()
            .items
    }

    pub async fn uninstall(self) {
        let _ = Command::new(helm_bin())
            .args(["uninstall", &self.name, "--namespace", &self.ns.name])
            .env("KUBECONFIG", kubeconfig_path())
            .output();
        super::delete_queue(&self.queue).await;
        self.ns.cleanup().await;
    }
}

/// Creates a pod and waits until it has ended; its phase and log.
pub async fn run_pod(client: &Client, ns: &str, pod: serde_json::Value) -> (String, String) {
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(pod).unwrap();
    let name = pods
        .create(&PostParams::default(), &pod)
        .await
        .unwrap()
        .metadata
        .name
        .unwrap();
    let phase = wait_for(
        &format!("pod {ns}/{name} to end"),
        Duration::from_secs(90),
        || async {
            let p = pods.get(&name).await.ok()?;
            let phase = p.status?.phase?;
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
        },
    )
    .await;
    let log = pods
        .logs(&name, &LogParams::default())
        .await
        .unwrap_or_default();
    (phase, log)
}

/// A pod of the node's tools image running `command` (a script of
/// hack/node/), with `env`, the ServiceAccount `sa` (if any) and the
/// environment's insights-token Secret mounted where Lagoon mounts it.
pub fn tools_pod(
    name: &str,
    command: &str,
    sa: Option<&str>,
    env: &[(&str, &str)],
) -> serde_json::Value {
    let env: Vec<serde_json::Value> = env
        .iter()
        .map(|(k, v)| serde_json::json!({"name": k, "value": v}))
        .collect();
    let mut spec = serde_json::json!({
        "restartPolicy": "Never",
        "automountServiceAccountToken": sa.is_some(),
        "containers": [{
            "name": "main",
            "image": node_var("INSIGHTS_NODE_TOOLS_IMAGE"),
            "imagePullPolicy": "Never",
            "command": [format!("/usr/local/bin/{command}")],
            "env": env,
            "volumeMounts": [{"name": "insights-token", "readOnly": true,
                "mountPath": "/var/run/secrets/lagoon/dynamic/insights-token"}],
        }],
        "volumes": [{"name": "insights-token",
            "secret": {"secretName": "insights-token", "optional": false}}],
    });
    if let Some(sa) = sa {
        spec["serviceAccountName"] = sa.into();
    }
    serde_json::json!({"metadata": {"name": name}, "spec": spec})
}
