//! The real API server started by `hack/control-plane.sh`: a client, a
//! namespace per test, the CRD, and an in-process operator per test.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use insights_remote::broker::{BrokerSettings, Publisher};
use insights_remote::controller::{self, Context};
use insights_remote::crd::InsightsRemoteConfig;
use insights_remote::metrics::Metrics;
use insights_remote::run::App;
use insights_remote::settings::{Operations, Scope, Settings};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, CustomResourceExt, ResourceExt};

use super::unique;

pub fn kubeconfig_path() -> String {
    std::env::var("KUBECONFIG").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        let state = std::env::var("INSIGHTS_CP_STATE")
            .unwrap_or_else(|_| format!("{home}/.cache/insights-remote/control-plane/state"));
        format!("{state}/kubeconfig")
    })
}

pub async fn client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let path = kubeconfig_path();
    let kc = Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("no kubeconfig at {path} ({e}): run hack/control-plane.sh up"));
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// A namespace of the test's own, with Lagoon's labels; deleted by
/// `cleanup`, or when dropped without it (a failed assertion), so a failing
/// test leaves nothing behind.
pub struct TestNamespace {
    pub name: String,
    pub client: Client,
    cleaned: bool,
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        // Not on the test's runtime (it is blocked here): a thread with a
        // runtime and a client of its own.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the clean-up");
            rt.block_on(async {
                let client = client().await;
                let _ = Api::<Namespace>::all(client)
                    .delete(&name, &DeleteParams::default())
                    .await;
            });
        })
        .join();
    }
}

impl TestNamespace {
    pub async fn new(client: &Client, tag: &str) -> Self {
        Self::with_labels(client, tag, lagoon_labels("42")).await
    }

    pub async fn with_labels(client: &Client, tag: &str, labels: BTreeMap<String, String>) -> Self {
        let name = unique(tag);
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                labels: Some(labels),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
        Self {
            name,
            client: client.clone(),
            cleaned: false,
        }
    }

    pub async fn cleanup(mut self) {
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::default())
            .await;
        self.cleaned = true;
    }
}

/// A ConfigMap from tests/fixtures (the shapes Lagoon's build makes), placed
/// in namespace `ns`.
pub fn fixture_configmap(file: &str, ns: &str) -> k8s_openapi::api::core::v1::ConfigMap {
    let path = format!("{}/tests/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
    let mut cm: k8s_openapi::api::core::v1::ConfigMap =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    cm.metadata.namespace = Some(ns.into());
    cm
}

/// A minimal insights ConfigMap `cm-<i>` whose forwarded message can be
/// recognised by its `test-id` label.
pub fn numbered_insights_cm(i: usize) -> k8s_openapi::api::core::v1::ConfigMap {
    let mut cm = k8s_openapi::api::core::v1::ConfigMap::default();
    cm.metadata.name = Some(format!("cm-{i}"));
    cm.metadata.labels = Some(
        [
            ("lagoon.sh/insightsType".to_string(), "image-gz".to_string()),
            ("test-id".to_string(), i.to_string()),
        ]
        .into(),
    );
    // As a build with core insights on marks it (the gate is on by default).
    cm.metadata.annotations = Some(
        [(
            "core.insights.lagoon.sh/enabled".to_string(),
            "true".to_string(),
        )]
        .into(),
    );
    let inspect = format!(r#"{{"name":"cm-{i}","env":["I={i}"]}}"#);
    cm.binary_data = Some(
        [(
            "x.image-inspect.json.gz".to_string(),
            k8s_openapi::ByteString(super::gzip(inspect.as_bytes())),
        )]
        .into(),
    );
    cm
}

pub fn lagoon_labels(env_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("lagoon.sh/project".to_string(), "demo-project".to_string()),
        ("lagoon.sh/environment".to_string(), "main".to_string()),
        ("lagoon.sh/environmentId".to_string(), env_id.to_string()),
        (
            "lagoon.sh/environmentType".to_string(),
            "production".to_string(),
        ),
    ])
}

/// Applies the CRD committed in crds/ and waits until it is served.
pub async fn ensure_crd(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = InsightsRemoteConfig::crd();
    api.patch(
        &crd.name_any(),
        &PatchParams::apply("insights-remote-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    let irc: Api<InsightsRemoteConfig> = Api::all(client.clone());
    wait_for("CRD served", Duration::from_secs(30), || async {
        irc.list(&Default::default()).await.is_ok().then_some(())
    })
    .await;
}

/// Polls `f` until it returns Some, or panics after `within`.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn test_ops() -> Operations {
    Operations {
        burn_after_reading: false,
        forwarding_enabled: true,
        deferred_enabled: true,
        mins_between_retries: 5,
        max_retries: 3,
        require_core_enabled: false,
        tokens_enabled: true,
        target_label: None,
        dependency_track: Default::default(),
        build_scanner: Default::default(),
    }
}

/// The settings of an operator under test: no listeners, the tests' key,
/// and the options' broker, behaviour and scope (tokens re-checked every
/// 2 s).
pub fn operator_settings(o: &OperatorOptions) -> Settings {
    use clap::Parser;
    let key = format!("--insights-token-secret={}", super::KEY);
    let cli = insights_remote::settings::Cli::try_parse_from([
        "insights-remote",
        "--enable-webservice=false",
        "--health-probe-bind-address=0",
        "--metrics-bind-address=0",
        key.as_str(),
    ])
    .unwrap();
    let mut s = Settings::from_args(&cli.run).unwrap();
    s.broker = o.broker.clone();
    s.ops = o.ops.clone();
    s.reconcilers.forward = o.forward;
    s.reconcilers.tokens = o.tokens;
    // The operator always runs (the scanner follows `ops`, and the
    // resource may switch it on later).
    s.reconcilers.scanner = true;
    s.reconcilers.concurrency = 4;
    s.scope = Scope {
        pod_namespace: o.namespace.clone(),
        config_name: o.config_name.clone(),
        watch_namespace: Some(o.namespace.clone()),
    };
    s.token_resync = Duration::from_secs(2);
    s
}

/// One operator, in-process, scoped to one namespace, following the
/// InsightsRemoteConfig `config_name`.
pub struct Operator {
    pub ctx: Arc<Context>,
    pub metrics: Arc<Metrics>,
    pub publisher: Publisher,
    stop: tokio_util::sync::DropGuard,
    task: tokio::task::JoinHandle<()>,
}

pub struct OperatorOptions {
    pub broker: BrokerSettings,
    pub ops: Operations,
    pub namespace: String,
    pub config_name: String,
    pub forward: bool,
    pub tokens: bool,
}

impl OperatorOptions {
    /// Tokens only (no forwarding), scoped to `ns`, with a broker of its
    /// own (tagged `tag`), following the InsightsRemoteConfig `config_name`.
    pub fn tokens(ns: &str, tag: &str, config_name: &str) -> Self {
        OperatorOptions {
            broker: super::isolated_broker(tag),
            ops: test_ops(),
            namespace: ns.to_string(),
            config_name: config_name.to_string(),
            forward: false,
            tokens: true,
        }
    }

    /// Forwarding only (no tokens), scoped to `ns`, following the
    /// InsightsRemoteConfig `config_name`.
    pub fn forwarding(
        ns: &TestNamespace,
        broker: BrokerSettings,
        ops: Operations,
        config_name: &str,
    ) -> Self {
        OperatorOptions {
            broker,
            ops,
            namespace: ns.name.clone(),
            config_name: config_name.to_string(),
            forward: true,
            tokens: false,
        }
    }

    /// The same options, minting tokens too.
    pub fn with_tokens(self) -> Self {
        OperatorOptions {
            tokens: true,
            ..self
        }
    }
}

/// Creates or replaces (server-side apply) the InsightsRemoteConfig `name`.
pub async fn apply_config(client: &Client, name: &str, spec: serde_json::Value) {
    let api: Api<insights_remote::crd::InsightsRemoteConfig> = Api::all(client.clone());
    let obj = serde_json::json!({"apiVersion": "insights.lagoon.sh/v1alpha1", "kind": "InsightsRemoteConfig", "metadata": {"name": name}, "spec": spec});
    api.patch(
        name,
        &kube::api::PatchParams::apply("tests").force(),
        &kube::api::Patch::Apply(obj),
    )
    .await
    .unwrap();
}

impl Operator {
    pub async fn start(client: &Client, o: OperatorOptions) -> Operator {
        Self::start_with(client, o, |_| {}).await
    }

    /// As [`Operator::start`], with a last word on the settings. Wired by
    /// `App::with_client`, as the binary is (no listeners: the probes and
    /// the ingestion API are off).
    pub async fn start_with(
        client: &Client,
        o: OperatorOptions,
        customise: impl FnOnce(&mut Settings),
    ) -> Operator {
        let mut settings = operator_settings(&o);
        customise(&mut settings);
        let app = App::with_client(settings, client.clone()).await.unwrap();
        let ctx = app.ctx.clone().expect("the reconcilers run");
        let publisher = app.publisher.clone().expect("it publishes");
        let stop = controller::CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move { app.serve(stop.cancelled_owned()).await.unwrap() }
        });
        Operator {
            metrics: ctx.metrics.clone(),
            ctx,
            publisher,
            stop: stop.drop_guard(),
            task,
        }
    }

    pub async fn stop(self) {
        drop(self.stop);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        self.publisher.shutdown().await;
    }
}

/// How many reconciles of `controller` ("configmap", "namespace", ...)
/// have finished.
pub fn reconciliations(metrics: &Metrics, controller: &str) -> u64 {
    metrics
        .reconciliations
        .get_or_create(&insights_remote::metrics::ControllerLabels {
            controller: controller.into(),
        })
        .get()
}

/// Waits until at least `n` reconciles of `controller` have finished: the
/// positive sign that the operator looked again (rather than a sleep).
pub async fn wait_reconciliations(metrics: &Metrics, controller: &str, n: u64) {
    wait_for(
        &format!("{n} {controller} reconciles"),
        Duration::from_secs(30),
        || async { (reconciliations(metrics, controller) >= n).then_some(()) },
    )
    .await
}

/// Waits for a ConfigMap's `insights.lagoon.sh/rejected` annotation; its
/// reason.
pub async fn rejection(cms: &Api<k8s_openapi::api::core::v1::ConfigMap>, name: &str) -> String {
    wait_for(
        &format!("{name} rejected"),
        Duration::from_secs(30),
        || async {
            cms.get(name)
                .await
                .ok()?
                .metadata
                .annotations?
                .get("insights.lagoon.sh/rejected")
                .cloned()
        },
    )
    .await
}

/// Stops the shared API server for `down_secs` and starts it again (only
/// from a test binary of its own: every other test would see the outage).
pub fn restart_apiserver(down_secs: u32) {
    super::run_ok(
        "restarting the API server",
        std::process::Command::new("bash")
            .args([
                "hack/control-plane.sh",
                "restart-apiserver",
                &down_secs.to_string(),
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR")),
    );
}

/// A client that authenticates as the ServiceAccount `sa` of `ns` only.
pub async fn service_account_client(admin: &Client, ns: &str, sa: &str) -> Client {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let token = service_account_token(admin, ns, sa).await;
    let mut config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig_path()).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    Client::try_from(config).unwrap()
}

/// A bearer token for the ServiceAccount `sa` of `ns` (TokenRequest API).
pub async fn service_account_token(admin: &Client, ns: &str, sa: &str) -> String {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create_token_request(
            sa,
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
        .token
        .expect("the TokenRequest answers a token")
}

/// A kubeconfig file that authenticates as the ServiceAccount `sa` of `ns`
/// only (a token from the TokenRequest API).
pub async fn service_account_kubeconfig(admin: &Client, ns: &str, sa: &str) -> std::path::PathBuf {
    let token = service_account_token(admin, ns, sa).await;
    let mut kc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(kubeconfig_path()).unwrap()).unwrap();
    for user in kc["users"].as_sequence_mut().unwrap() {
        user["user"] = serde_yaml::to_value(serde_json::json!({ "token": token })).unwrap();
    }
    let path = std::env::temp_dir().join(format!("{ns}-{sa}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&kc).unwrap()).unwrap();
    path
}

/// The ServiceAccount Lagoon namespaces have and the scanner pod uses.
pub async fn lagoon_deployer(client: &Client, ns: &str) {
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "lagoon-deployer"}}))
                .unwrap(),
        )
        .await
        .unwrap();
}

/// Waits until the build pod `name` carries `insights.lagoon.sh/scanned: "true"`.
pub async fn wait_scanned(pods: &Api<k8s_openapi::api::core::v1::Pod>, name: &str) {
    wait_for(
        &format!("{name} marked scanned"),
        Duration::from_secs(30),
        || async {
            pods.get(name)
                .await
                .unwrap()
                .labels()
                .get("insights.lagoon.sh/scanned")
                .filter(|v| *v == "true")
                .map(|_| ())
        },
    )
    .await
}
