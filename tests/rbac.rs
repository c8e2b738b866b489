//! The operator (the real binary, with leader election) runs under exactly
//! the rules in config/rbac/, as a ServiceAccount, against the real API
//! server; and a removed permission fails clearly, not silently.

mod common;

use std::process::Command;
use std::time::Duration;

use common::cluster::*;
use common::*;
use insights_remote::crd::InsightsRemoteConfig;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

fn manifest<T: serde::de::DeserializeOwned>(path: &str) -> T {
    let text = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

/// The committed ClusterRoles in `cluster_roles` and the operator's Role
/// (config/rbac/leader_election_role.yaml), bound to the ServiceAccount
/// `insights-remote` of `ns`: a kubeconfig that authenticates as it only,
/// and the ClusterRoles' (unique) names.
async fn grant_committed_roles(
    admin: &kube::Client,
    ns: &TestNamespace,
    cluster_roles: &[&str],
) -> (std::path::PathBuf, Vec<String>) {
    let mut names = Vec::new();
    for file in cluster_roles {
        let role_name = unique("insights-remote");
        let mut cluster_role: ClusterRole = manifest(file);
        cluster_role.metadata.name = Some(role_name.clone());
        Api::<ClusterRole>::all(admin.clone())
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
        names.push(role_name);
    }
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
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns.name)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    (
        service_account_kubeconfig(admin, &ns.name, "insights-remote").await,
        names,
    )
}

/// Deletes the ClusterRoles `names` and their bindings of the same names:
/// what [`grant_committed_roles`] made cluster-wide (the namespace takes
/// the rest).
async fn revoke_committed_roles(admin: &kube::Client, names: Vec<String>) {
    for n in names {
        let _ = Api::<ClusterRole>::all(admin.clone())
            .delete(&n, &DeleteParams::default())
            .await;
        let _ = Api::<ClusterRoleBinding>::all(admin.clone())
            .delete(&n, &DeleteParams::default())
            .await;
    }
}

/// Deletes the ClusterRoles `names` with their bindings, the queue and the
/// namespace.
async fn clean_up(admin: &kube::Client, names: Vec<String>, queue: &str, ns: TestNamespace) {
    revoke_committed_roles(admin, names).await;
    delete_queue(queue).await;
    ns.cleanup().await;
}

/// Stops the operator process with SIGTERM and waits for it to exit.
fn terminate(child: &mut std::process::Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Waits until the API server refuses `client` to `verb` ConfigMaps in
/// `ns` (a changed role reaches the authorizer shortly after it is written).
async fn wait_configmaps_denied(client: &kube::Client, ns: &str, verb: &str) {
    use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let review: SelfSubjectAccessReview = serde_json::from_value(json!({
        "spec": {"resourceAttributes": {"namespace": ns, "verb": verb, "resource": "configmaps"}}
    }))
    .unwrap();
    wait_for(
        &format!("{verb} on ConfigMaps denied"),
        Duration::from_secs(30),
        || async {
            let answer = reviews.create(&PostParams::default(), &review).await.ok()?;
            (!answer.status?.allowed).then_some(())
        },
    )
    .await
}

#[tokio::test]
async fn operator_runs_under_its_own_rbac_and_reports_missing_permissions() {
    let admin = client().await;
    ensure_crd(&admin).await;
    let ns = TestNamespace::new(&admin, "rbac").await;
    let (sa_kubeconfig, names) =
        grant_committed_roles(&admin, &ns, &["config/rbac/role.yaml"]).await;
    let role_name = names[0].clone();
    let roles: Api<ClusterRole> = Api::all(admin.clone());

    let broker = isolated_broker("rbac");
    let config_name = unique("irc-rbac");
    apply_config(
        &admin,
        &config_name,
        json!({"broker": {"address": broker.host, "exchange": broker.exchange, "queue": broker.queue}}),
    )
    .await;
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log_path = std::env::temp_dir().join(format!("{}.log", ns.name));
    let (mut child, _on_failure) = KillOnPanic::spawn(
        Command::new(env!("CARGO_BIN_EXE_insights-remote"))
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
                "--metrics-secure=false",
            ])
            .env("KUBECONFIG", &sa_kubeconfig)
            .env("INSIGHTS_TOKEN_SECRET", KEY)
            .env("RUST_LOG", "info"),
        Some(log_path.clone()),
    );

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
    // Listing is allowed only by the token Secret's name (what the token
    // cache watches), never for other names.
    let by_name = |name: &str| ListParams::default().fields(&format!("metadata.name={name}"));
    Api::<Secret>::all(sa_client.clone())
        .list_metadata(&by_name("insights-token"))
        .await
        .expect("list of insights-token Secrets by name is allowed");
    assert!(forbidden(
        Api::<Secret>::all(sa_client.clone())
            .list_metadata(&by_name("lagoon-env"))
            .await
            .map(|_| ())
    ));
    // A resource naming another namespace's Secret is refused, and says so.
    apply_config(
        &admin,
        &config_name,
        json!({"broker": {"address": broker.host, "exchange": broker.exchange, "queue": broker.queue,
            "credentialsSecret": {"name": "rabbit", "namespace": "kube-system"}}}),
    )
    .await;
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

    // The own-namespace Role reads Secrets by name only: a signing key in a
    // Secret it names is used, and a change to it is followed at once
    // (watched by name; the periodic re-read is 30 s away); a Secret it
    // does not name cannot be read, and the status says so.
    assert!(forbidden(
        Api::<Secret>::namespaced(sa_client.clone(), &ns.name)
            .list_metadata(&Default::default())
            .await
            .map(|_| ())
    ));
    let own_key = |k: &str| {
        serde_json::from_value::<Secret>(
            json!({"metadata": {"name": "insights-remote-signing-key"},
            "stringData": {"key": k}}),
        )
        .unwrap()
    };
    let (key_a, key_b) = (
        "rbac-own-signing-key-a-0123456789abcdef",
        "rbac-own-signing-key-b-0123456789abcdef",
    );
    secrets
        .create(&PostParams::default(), &own_key(key_a))
        .await
        .unwrap();
    let with_key = |name: &str| {
        json!({"broker": {"address": broker.host, "exchange": broker.exchange, "queue": broker.queue},
               "signingKey": {"secretRef": {"name": name, "key": "key"}}})
    };
    apply_config(
        &admin,
        &config_name,
        with_key("insights-remote-signing-key"),
    )
    .await;
    let signed_with = |k: &'static str| {
        let secrets = secrets.clone();
        async move {
            let ring = insights_remote::token::KeyRing::new(k).unwrap();
            wait_for(
                &format!("token signed with {k}"),
                Duration::from_secs(20),
                || async {
                    let s = secrets.get_opt("insights-token").await.unwrap()?;
                    let t = String::from_utf8(s.data?["INSIGHTS_TOKEN"].0.clone()).ok()?;
                    ring.verify(&t).ok()
                },
            )
            .await
        }
    };
    signed_with(key_a).await;
    secrets
        .replace("insights-remote-signing-key", &PostParams::default(), &{
            let mut s = own_key(key_b);
            s.metadata.resource_version = secrets
                .get("insights-remote-signing-key")
                .await
                .unwrap()
                .metadata
                .resource_version;
            s
        })
        .await
        .unwrap();
    signed_with(key_b).await;
    // Followed without listing the namespace's Secrets: no denied watch.
    let text = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let denied: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.contains("watch_errors") && l.contains("controller=\"secrets\"") && !l.ends_with(" 0")
        })
        .collect();
    assert!(denied.is_empty(), "{denied:?}");
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "not-granted"}, "stringData": {"key": key_a}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    apply_config(&admin, &config_name, with_key("not-granted")).await;
    wait_for(
        "a Secret the Role does not name",
        Duration::from_secs(30),
        || async {
            let st = irc.get(&config_name).await.ok()?.status?;
            st.conditions
                .iter()
                .any(|c| c.message.contains("not-granted") && c.message.contains("forbidden"))
                .then_some(())
        },
    )
    .await;

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
    let sa_client = service_account_client(&admin, &ns.name, "insights-remote").await;
    wait_configmaps_denied(&sa_client, &ns.name, "patch").await;
    cm.metadata.name = Some("after-revoke".into());
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let metrics = wait_for("forbidden counted", Duration::from_secs(30), || async {
        let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
        text.lines()
            .any(|l| {
                // The series exists from the start at 0: counted means above.
                l.starts_with("insights_remote_reconcile_errors_total")
                    && l.contains("controller=\"configmap\"")
                    && l.contains("error=\"forbidden\"")
                    && !l.ends_with(" 0")
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

    terminate(&mut child);
    let _ = irc.delete(&config_name, &DeleteParams::default()).await;
    clean_up(&admin, names, &broker.queue, ns).await;
}

/// Watches denied by RBAC back off instead of retrying in a hot loop
/// against the API server: a ServiceAccount with no rules at all follows
/// the configuration for a few seconds.
#[tokio::test]
async fn denied_watches_back_off() {
    use insights_remote::controller::{self, Baseline, Context};
    use insights_remote::metrics::{ControllerLabels, Metrics};
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
    let nobody = service_account_client(&admin, &ns.name, "nobody").await;
    let metrics = Arc::new(Metrics::new());
    let ctx = Arc::new(Context::new(controller::Parts {
        client: nobody,
        publisher: None,
        keys: tokio::sync::watch::Sender::new(Arc::new(ring())),
        baseline: Baseline {
            broker: isolated_broker("nowatch"),
            keys: Some(Arc::new(ring())),
            ops: test_ops(),
        },
        metrics: metrics.clone(),
        scope: insights_remote::settings::Scope {
            pod_namespace: ns.name.clone(),
            config_name: unique("irc"),
            watch_namespace: None,
        },
        token_resync: Duration::from_secs(300),
        uploads: insights_remote::dependency_track::Uploads::new(2, Duration::from_secs(300)),
    }));
    let stop = controller::CancellationToken::new();
    let task = tokio::spawn(controller::config::run(ctx, stop.clone()));
    let errors = |w: &str| {
        metrics
            .watch_errors
            .get_or_create(&ControllerLabels {
                controller: w.into(),
            })
            .get()
    };
    wait_for("a denied watch", Duration::from_secs(20), || async {
        // The Secrets are watched by name once the resource names them:
        // here it cannot even be read, so only its watch is denied.
        (errors("config") > 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (config, secrets) = (errors("config"), errors("secrets"));
    println!("denied watches: {config} config errors, {secrets} Secret errors in ~3 s");
    assert!(
        config <= 8 && secrets <= 8,
        "backoff: {config} and {secrets} errors"
    );
    stop.cancel();
    let _ = task.await;
    ns.cleanup().await;
}

/// The lagoon-remote chart's own ClusterRole (chart 0.106.0) and its
/// Deployment's environment, no arguments: the operator forwards (and burns),
/// mints tokens and serves; what the role does not allow (Events, the custom
/// resource) is said once in the log, not per attempt.
#[tokio::test]
async fn runs_under_the_lagoon_remote_charts_role() {
    let admin = client().await;
    ensure_crd(&admin).await;
    let ns = TestNamespace::new(&admin, "chart").await;
    let role_name = unique("chart-insights-remote-manager");
    let rule = |groups: &[&str], resources: &[&str], verbs: &[&str]| json!({"apiGroups": groups, "resources": resources, "verbs": verbs});
    let all = [
        "create", "delete", "get", "list", "patch", "update", "watch",
    ];
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": role_name},
        "rules": [
            rule(&["apps"], &["deployments"], &["get", "list", "watch"]),
            rule(&[""], &["configmaps"], &all),
            rule(&[""], &["deployments"], &["get", "list", "watch"]),
            rule(&[""], &["namespaces"], &["get", "list", "watch"]),
            rule(&[""], &["pods"], &all),
            rule(&[""], &["secrets"], &all),
        ]
    }))
    .unwrap();
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    roles.create(&PostParams::default(), &role).await.unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": role_name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
        "subjects": [{"kind": "ServiceAccount", "name": "lagoon-remote-insights-remote", "namespace": ns.name}]
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns.name);
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "lagoon-remote-insights-remote"}}))
            .unwrap(),
    )
    .await
    .unwrap();
    let sa_kubeconfig =
        service_account_kubeconfig(&admin, &ns.name, "lagoon-remote-insights-remote").await;

    let broker = isolated_broker("chart");
    let port = free_port();
    let log_path = std::env::temp_dir().join(format!("{}.log", ns.name));
    // The chart's environment (values defaults, broker TLS off), and no
    // arguments; the last variables only keep the test to its namespace.
    let (mut child, _on_failure) = KillOnPanic::spawn(
        Command::new(env!("CARGO_BIN_EXE_insights-remote"))
            .env_clear()
            .env("BURN_AFTER_READING", "TRUE")
            .env("RABBITMQ_ADDRESS", &broker.host)
            .env("RABBITMQ_VERIFY", "true")
            .env("RABBITMQ_USERNAME", "guest")
            .env("RABBITMQ_PASSWORD", "guest")
            .env("INSIGHTS_TOKEN_SECRET", "AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEf")
            .env("KUBECONFIG", &sa_kubeconfig)
            .env("RABBITMQ_EXCHANGE", &broker.exchange)
            .env("RABBITMQ_QUEUE", &broker.queue)
            .env("WATCH_NAMESPACE", &ns.name)
            .env("POD_NAMESPACE", &ns.name)
            .env("WEBSERVICE_PORT", port.to_string())
            .env("HEALTH_PROBE_BIND_ADDRESS", "0")
            .env("INSIGHTS_REMOTE_CONFIG_NAME", unique("absent")),
        Some(log_path.clone()),
    );

    // Forwards and burns.
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), &ns.name);
    cms.create(
        &PostParams::default(),
        &fixture_configmap("configmap-image.json", &ns.name),
    )
    .await
    .unwrap();
    // Two rejected ConfigMaps: two Events the role does not allow.
    for name in ["bad-1", "bad-2"] {
        let mut bad = fixture_configmap("configmap-image.json", &ns.name);
        bad.metadata.name = Some(name.into());
        bad.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("lagoon.sh/insightsType".into(), "weird-gz".into());
        bad.metadata
            .labels
            .as_mut()
            .unwrap()
            .remove("insights.lagoon.sh/type");
        cms.create(&PostParams::default(), &bad).await.unwrap();
    }
    wait_for("forwarded and burned", Duration::from_secs(30), || async {
        cms.get_opt("lagoon-insights-image-cli")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    for name in ["bad-1", "bad-2"] {
        rejection(&cms, name).await;
    }
    drain_exactly(&broker.queue, 1, Duration::from_secs(5)).await;
    // Mints the token, and the API takes it.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);
    let secret = wait_for("token minted", Duration::from_secs(30), || async {
        secrets.get_opt("insights-token").await.unwrap()
    })
    .await;
    let minted = String::from_utf8(secret.data.unwrap()["INSIGHTS_TOKEN"].0.clone()).unwrap();
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/facts"))
        .header("authorization", minted)
        .body(r#"[{"name":"a","value":"b"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    terminate(&mut child);
    let log = std::fs::read_to_string(&log_path).unwrap();
    let said = |what: &str| {
        log.lines()
            .filter(|l| l.contains("said once") && l.contains(&format!("what=\"{what}\"")))
            .count()
    };
    assert_eq!(
        said("Events"),
        1,
        "the refused Events are said once:\n{log}"
    );
    assert!(said("InsightsRemoteConfig") <= 1, "{log}");
    clean_up(&admin, vec![role_name], &broker.queue, ns).await;
}

/// The build scanner under exactly config/rbac plus its own ClusterRole
/// (config/build-scanner): a succeeded build gets its scanner pod and mark.
#[tokio::test]
async fn build_scanner_runs_under_its_own_role() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Pod;
    let admin = client().await;
    let ns = TestNamespace::new(&admin, "rbacscan").await;
    let (sa_kubeconfig, names) = grant_committed_roles(
        &admin,
        &ns,
        &["config/rbac/role.yaml", "config/build-scanner/role.yaml"],
    )
    .await;
    lagoon_deployer(&admin, &ns.name).await;
    Api::<Deployment>::namespaced(admin.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "web"},
                "spec": {"selector": {"matchLabels": {"app": "web"}},
                         "template": {"metadata": {"labels": {"app": "web"}},
                                      "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns.name);
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "lagoon-build-x", "labels": {"lagoon.sh/buildName": "lagoon-build-x"}},
            "spec": {"serviceAccountName": "lagoon-deployer", "automountServiceAccountToken": false,
                     "restartPolicy": "Never", "containers": [{"name": "build", "image": "build:1"}]},
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    let (mut child, _on_failure) = KillOnPanic::spawn(
        Command::new(env!("CARGO_BIN_EXE_insights-remote"))
            .args([
                "--pod-namespace",
                &ns.name,
                "--watch-namespace",
                &ns.name,
                "--config-name",
                &unique("absent"),
                "--enable-webservice=false",
                "--enable-configmap-reconciler=false",
                "--enable-namespace-reconciler=false",
                "--rabbitmq-enabled=false",
                "--enable-build-scanner",
                "--health-probe-bind-address=0",
            ])
            .env("KUBECONFIG", &sa_kubeconfig)
            .env("INSIGHTS_TOKEN_SECRET", KEY),
        None,
    );
    pods.patch_status(
        "lagoon-build-x",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
    )
    .await
    .unwrap();
    let scanner = wait_for("scanner pod", Duration::from_secs(30), || async {
        pods.get_opt("insights-scanner-lagoon-build-x")
            .await
            .unwrap()
    })
    .await;
    let env = scanner.spec.unwrap().containers[0].env.clone().unwrap();
    assert!(env
        .iter()
        .any(|e| e.name == "INSIGHT_SCAN_IMAGES" && e.value.as_deref() == Some("nginx:1.27")));
    wait_scanned(&pods, "lagoon-build-x").await;
    let _ = child.kill();
    let _ = child.wait();
    revoke_committed_roles(&admin, names).await;
    ns.cleanup().await;
}

/// Under the committed role the create of a new token Secret is refused
/// (a role cannot grant a create by resource name): the write falls back to
/// the server-side apply, which the role grants by name, and remembers the
/// refusal so later writes go straight to the apply.
#[tokio::test]
async fn token_write_under_the_committed_role_falls_back_to_the_apply() {
    use insights_remote::controller::namespace::{token_secret, write_token, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    let admin = client().await;
    let ns = TestNamespace::with_labels(&admin, "rbacw", Default::default()).await;
    let (_, names) = grant_committed_roles(&admin, &ns, &["config/rbac/role.yaml"]).await;
    let operator = service_account_client(&admin, &ns.name, "insights-remote").await;
    let secrets: Api<Secret> = Api::namespaced(operator, &ns.name);

    let refused = AtomicBool::new(false);
    let secret = token_secret(&ns.name, "minted".into(), None);
    let written = write_token(&secrets, &secret, Write::Create, &refused)
        .await
        .expect("written by the apply");
    assert!(refused.load(Ordering::Relaxed), "RBAC refused the create");
    let stored = Api::<Secret>::namespaced(admin.clone(), &ns.name)
        .get("insights-token")
        .await
        .unwrap();
    assert_eq!(stored.uid(), written.uid());
    assert_eq!(stored.data.unwrap()["INSIGHTS_TOKEN"].0, b"minted");

    revoke_committed_roles(&admin, names).await;
    ns.cleanup().await;
}
