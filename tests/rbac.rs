//! The operator (the real binary, with leader election) runs under exactly
//! the rules in config/rbac/, as a ServiceAccount, against the real API
//! server; and a removed permission fails clearly, not silently.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::cluster::*;
use common::*;
use insights_remote::crd::InsightsRemoteConfig;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

fn manifest<T: serde::de::DeserializeOwned>(path: &str) -> T {
    let text = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

#[tokio::test]
async fn operator_runs_under_its_own_rbac_and_reports_missing_permissions() {
    let admin = client().await;
    ensure_crd(&admin).await;
    let ns = TestNamespace::new(&admin, "rbac").await;
    let role_name = unique("insights-remote");

    // The committed rules, bound to a ServiceAccount of this test.
    let mut cluster_role: ClusterRole = manifest("config/rbac/role.yaml");
    cluster_role.metadata.name = Some(role_name.clone());
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    roles
        .create(&PostParams::default(), &cluster_role)
        .await
        .unwrap();
    let mut binding: ClusterRoleBinding = manifest("config/rbac/role_binding.yaml");
    binding.metadata.name = Some(role_name.clone());
    binding.role_ref.name = role_name.clone();
    binding.subjects.as_mut().unwrap()[0].namespace = Some(ns.name.clone());
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let mut le_role: Role = manifest("config/rbac/leader_election_role.yaml");
    le_role.metadata.namespace = Some(ns.name.clone());
    Api::<Role>::namespaced(admin.clone(), &ns.name)
        .create(&PostParams::default(), &le_role)
        .await
        .unwrap();
    let mut le_binding: RoleBinding = manifest("config/rbac/leader_election_role_binding.yaml");
    le_binding.metadata.namespace = Some(ns.name.clone());
    le_binding.subjects.as_mut().unwrap()[0].namespace = Some(ns.name.clone());
    Api::<RoleBinding>::namespaced(admin.clone(), &ns.name)
        .create(&PostParams::default(), &le_binding)
        .await
        .unwrap();
    let mut sa: ServiceAccount = manifest("config/rbac/service_account.yaml");
    sa.metadata.namespace = Some(ns.name.clone());
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns.name);
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let token = sas
        .create_token_request(
            "insights-remote",
            &PostParams::default(),
            &TokenRequest {
                spec: Some(TokenRequestSpec {
                    expiration_seconds: Some(3600),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .status
        .unwrap()
        .token;

    // A kubeconfig that authenticates as the ServiceAccount only.
    let mut kc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(kubeconfig_path()).unwrap()).unwrap();
    for user in kc["users"].as_sequence_mut().unwrap() {
        user["user"] = serde_yaml::to_value(json!({ "token": token })).unwrap();
    }
    let sa_kubeconfig = std::env::temp_dir().join(format!("{}.kubeconfig", ns.name));
    std::fs::write(&sa_kubeconfig, serde_yaml::to_string(&kc).unwrap()).unwrap();

    let broker = isolated_broker("rbac");
    let config_name = unique("irc-rbac");
    Api::<InsightsRemoteConfig>::all(admin.clone())
        .patch(
            &config_name,
            &PatchParams::apply("tests").force(),
            &Patch::Apply(json!({"apiVersion": "insights.lagoon.sh/v1alpha1", "kind": "InsightsRemoteConfig",
                "metadata": {"name": config_name},
                "spec": {"broker": {"address": broker.host, "exchange": broker.exchange, "queue": broker.queue}}})),
        )
        .await
        .unwrap();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log_path = std::env::temp_dir().join(format!("{}.log", ns.name));
    let mut child = Command::new(env!("CARGO_BIN_EXE_insights-remote"))
        .args([
            "--leader-elect",
            "--leader-election-lease-duration=6s",
            "--pod-namespace",
            &ns.name,
            "--watch-namespace",
            &ns.name,
            "--config-name",
            &config_name,
            "--enable-webservice=false",
            "--health-probe-bind-address",
            "127.0.0.1:0",
            "--metrics-bind-address",
            &format!("127.0.0.1:{metrics_port}"),
        ])
        .env("KUBECONFIG", &sa_kubeconfig)
        .env("INSIGHTS_TOKEN_SECRET", KEY)
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(&log_path).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();

    // Everything works with exactly these rules.
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), &ns.name);
    let mut cm = fixture_configmap("configmap-image.json", &ns.name);
    cms.create(&PostParams::default(), &cm).await.unwrap();
    wait_for("forwarded under RBAC", Duration::from_secs(60), || async {
        cms.get("lagoon-insights-image-cli")
            .await
            .ok()
            .filter(|c| c.labels().contains_key("lagoon.sh/insightsProcessed"))
    })
    .await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);
    wait_for("token under RBAC", Duration::from_secs(30), || async {
        secrets.get_opt("insights-token").await.unwrap()
    })
    .await;
    // The rules give no way to read other Secrets: no cluster-wide list,
    // no get outside the insights-token name and the own namespace.
    let sa_client = {
        use kube::config::{KubeConfigOptions, Kubeconfig};
        let kc = Kubeconfig::read_from(&sa_kubeconfig).unwrap();
        kube::Client::try_from(
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .unwrap(),
        )
        .unwrap()
    };
    let forbidden =
        |r: Result<_, kube::Error>| matches!(r, Err(kube::Error::Api(s)) if s.code == 403);
    assert!(forbidden(
        Api::<Secret>::all(sa_client.clone())
            .list_metadata(&Default::default())
            .await
            .map(|_| ())
    ));
    assert!(forbidden(
        Api::<Secret>::namespaced(sa_client.clone(), "default")
            .get("anything")
            .await
            .map(|_| ())
    ));
    // A resource naming another namespace's Secret is refused, and says so.
    Api::<InsightsRemoteConfig>::all(admin.clone())
        .patch(
            &config_name,
            &PatchParams::apply("tests").force(),
            &Patch::Apply(json!({"apiVersion": "insights.lagoon.sh/v1alpha1", "kind": "InsightsRemoteConfig",
                "metadata": {"name": config_name},
                "spec": {"broker": {"address": broker.host, "exchange": broker.exchange, "queue": broker.queue,
                    "credentialsSecret": {"name": "rabbit", "namespace": "kube-system"}}}})),
        )
        .await
        .unwrap();
    wait_for(
        "cross-namespace reference refused",
        Duration::from_secs(30),
        || async {
            let irc = Api::<InsightsRemoteConfig>::all(admin.clone())
                .get(&config_name)
                .await
                .ok()?;
            irc.status?
                .conditions
                .iter()
                .any(|c| c.message.contains("must be in the operator's namespace"))
                .then_some(())
        },
    )
    .await;
    assert!(Api::<Lease>::namespaced(admin.clone(), &ns.name)
        .get_opt(insights_remote::settings::UPSTREAM_LEASE)
        .await
        .unwrap()
        .is_some());
    let irc: Api<InsightsRemoteConfig> = Api::all(admin.clone());
    wait_for("status under RBAC", Duration::from_secs(30), || async {
        irc.get(&config_name)
            .await
            .ok()?
            .status
            .filter(|s| s.forwarded == 1 && s.tokens_issued == 1)
    })
    .await;
    assert_eq!(
        drain(&broker.queue, 1, Duration::from_secs(5)).await.len(),
        1
    );

    // Take away the right to patch ConfigMaps: the failure is counted and
    // logged as forbidden, and the ConfigMap is not marked.
    let mut reduced = roles.get(&role_name).await.unwrap();
    reduced.rules.as_mut().unwrap()[0]
        .verbs
        .retain(|v| v != "patch");
    roles
        .replace(&role_name, &PostParams::default(), &reduced)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cm.metadata.name = Some("after-revoke".into());
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let metrics = wait_for("forbidden counted", Duration::from_secs(30), || async {
        let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
        text.lines()
            .any(|l| {
                l.starts_with("insights_remote_reconcile_errors_total")
                    && l.contains("controller=\"configmap\"")
                    && l.contains("error=\"forbidden\"")
            })
            .then_some(text)
    })
    .await;
    assert!(metrics.contains("insights_remote_reconciliations_total"));
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("forbidden"), "the log says why");
    assert!(!cms
        .get("after-revoke")
        .await
        .unwrap()
        .labels()
        .contains_key("lagoon.sh/insightsProcessed"));

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let _ = roles.delete(&role_name, &DeleteParams::default()).await;
    let _ = Api::<ClusterRoleBinding>::all(admin.clone())
        .delete(&role_name, &DeleteParams::default())
        .await;
    let _ = irc.delete(&config_name, &DeleteParams::default()).await;
    delete_queue(&broker.queue).await;
    ns.cleanup().await;
}

/// Watches denied by RBAC back off instead of retrying in a hot loop
/// against the API server: a ServiceAccount with no rules at all follows
/// the configuration for a few seconds.
#[tokio::test]
async fn denied_watches_back_off() {
    use insights_remote::controller::{self, Baseline, Context};
    use insights_remote::metrics::{ControllerLabels, Metrics};
    use kube::config::{KubeConfigOptions, Kubeconfig};
    use std::sync::Arc;

    let admin = client().await;
    let ns = TestNamespace::new(&admin, "nowatch").await;
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns.name);
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "nobody"}})).unwrap(),
    )
    .await
    .unwrap();
    let token = sas
        .create_token_request("nobody", &PostParams::default(), &TokenRequest::default())
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let kc = Kubeconfig::read_from(kubeconfig_path()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.unwrap().into()),
        ..Default::default()
    };
    let nobody = kube::Client::try_from(config).unwrap();
    let metrics = Arc::new(Metrics::new());
    let ctx = Arc::new(Context::new(
        nobody,
        None,
        tokio::sync::watch::Sender::new(Arc::new(ring())),
        Baseline {
            broker: isolated_broker("nowatch"),
            keys: Some(Arc::new(ring())),
            ops: test_ops(),
        },
        metrics.clone(),
        ns.name.clone(),
        unique("irc"),
    ));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(controller::config::run(ctx, stop_rx));
    let errors = |w: &str| {
        metrics
            .watch_errors
            .get_or_create(&ControllerLabels {
                controller: w.into(),
            })
            .get()
    };
    wait_for("a denied watch", Duration::from_secs(20), || async {
        (errors("config") > 0 && errors("secrets") > 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (config, secrets) = (errors("config"), errors("secrets"));
    println!("denied watches: {config} config errors, {secrets} Secret errors in ~3 s");
    assert!(
        config <= 8 && secrets <= 8,
        "backoff: {config} and {secrets} errors"
    );
    let _ = stop.send(true);
    let _ = task.await;
    ns.cleanup().await;
}
