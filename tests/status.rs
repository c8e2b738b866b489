//! The InsightsRemoteConfig status: counters, conditions and what
//! `kubectl get irc` shows.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster::*;
use common::*;
use insights_remote::crd::InsightsRemoteConfig;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::ByteString;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};

fn condition(irc: &InsightsRemoteConfig, type_: &str) -> Option<(String, String, String)> {
    irc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test]
async fn status_reports_counters_conditions_and_kubectl_columns() {
    let client = client().await;
    ensure_crd(&client).await;
    let ns = TestNamespace::new(&client, "status").await;
    let broker = isolated_broker("status");
    let config_name = unique("irc-status");
    let irc: Api<InsightsRemoteConfig> = Api::all(client.clone());
    let spec = json!({"broker": {"address": broker_host(), "exchange": broker.exchange, "queue": broker.queue}});
    apply_config(&client, &config_name, spec).await;
    let op = Operator::start(
        &client,
        OperatorOptions::forwarding(&ns, broker.clone(), test_ops(), &config_name).with_tokens(),
    )
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    for f in ["configmap-sbom.json", "configmap-image.json"] {
        cms.create(&PostParams::default(), &fixture_configmap(f, &ns.name))
            .await
            .unwrap();
    }
    let got = wait_for("status counters", Duration::from_secs(30), || async {
        let o = irc.get(&config_name).await.ok()?;
        let s = o.status.as_ref()?;
        (s.forwarded == 2
            && s.tokens_issued == 1
            && condition(&o, "Ready").map(|c| c.0) == Some("True".into()))
        .then_some(o)
    })
    .await;
    let s = got.status.clone().unwrap();
    assert!(s.last_forward_time.is_some());
    assert_eq!(s.observed_generation, got.metadata.generation);
    assert_eq!(condition(&got, "BrokerConnected").unwrap().0, "True");
    assert_eq!(condition(&got, "SigningKeyReady").unwrap().0, "True");
    assert!(s.signing_key_fingerprint.is_some());

    // What an admin sees.
    let out = std::process::Command::new("bash")
        .args([
            "hack/control-plane.sh",
            "kubectl",
            "get",
            "irc",
            &config_name,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "BROKER",
            "FORWARDED",
            "DEFERRED",
            "TOKENS",
            "AGE"
        ]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..6],
        [config_name.as_str(), "True", "True", "2", "0", "1"]
    );

    // A broken reference is a condition, not a crash.
    apply_config(
        &client,
        &config_name,
        json!({"broker": {"address": broker_host(), "exchange": broker.exchange, "queue": broker.queue},
               "signingKey": {"secretRef": {"name": "does-not-exist", "key": "key"}}}),
    )
    .await;
    let broken = wait_for("SigningKeyReady False", Duration::from_secs(40), || async {
        let o = irc.get(&config_name).await.ok()?;
        (condition(&o, "SigningKeyReady")?.0 == "False").then_some(o)
    })
    .await;
    let (_, reason, message) = condition(&broken, "SigningKeyReady").unwrap();
    assert_eq!(reason, "SecretUnavailable");
    assert!(message.contains("does-not-exist"), "{message}");
    assert_eq!(condition(&broken, "Ready").unwrap().0, "False");
    // The operator keeps its last good key meanwhile.
    assert!(ring()
        .verify(&ring().mint(&claims("x", "1")).unwrap())
        .is_ok());
    assert_eq!(op.ctx.keys.borrow().fingerprint(), ring().fingerprint());

    // A short key is refused with a message saying why.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some("short".into()),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(
                    "key".to_string(),
                    ByteString(b"testsecret".to_vec()),
                )])),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    irc.patch(
        &config_name,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"signingKey": {"secretRef": {"name": "short", "key": "key"}}}}),
        ),
    )
    .await
    .unwrap();
    let short = wait_for("InvalidKey", Duration::from_secs(40), || async {
        let o = irc.get(&config_name).await.ok()?;
        let c = condition(&o, "SigningKeyReady")?;
        (c.1 == "InvalidKey").then_some(c)
    })
    .await;
    assert!(short.2.contains("32 bytes"), "{}", short.2);

    // An unreachable broker shows up as BrokerConnected False.
    irc.patch(
        &config_name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"broker": {"address": "127.0.0.1:1"}}})),
    )
    .await
    .unwrap();
    let down = wait_for("BrokerConnected False", Duration::from_secs(40), || async {
        let o = irc.get(&config_name).await.ok()?;
        (condition(&o, "BrokerConnected")?.0 == "False").then_some(o)
    })
    .await;
    let v: Value = serde_json::to_value(&down.status).unwrap();
    assert_eq!(v["forwarded"], 2, "counters survive: {v}");
    op.stop().await;
    irc.delete(&config_name, &DeleteParams::default())
        .await
        .unwrap();
    ns.cleanup().await;
}

/// At start-up, a resource whose `previousSecretRefs` names a Secret in
/// another namespace (the current `secretRef` valid, no key in the
/// environment): the process stops saying which reference is refused (not
/// a generic "no signing key"), without a panic on the way out, and the
/// resource's SigningKeyReady condition names it too.
#[tokio::test]
async fn a_foreign_secret_at_start_up_is_named_and_the_process_stops_cleanly() {
    let client = client().await;
    ensure_crd(&client).await;
    let ns = TestNamespace::new(&client, "foreign").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let key = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("signing-key".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "key".to_string(),
            ByteString(KEY.as_bytes().to_vec()),
        )])),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &key).await.unwrap();
    let config_name = unique("irc-foreign");
    apply_config(
        &client,
        &config_name,
        json!({"signingKey": {
            "secretRef": {"name": "signing-key", "key": "key"},
            "previousSecretRefs": [{"name": "stolen", "namespace": "kube-system", "key": "key"}],
        }}),
    )
    .await;
    let broker = isolated_broker("foreign");
    let out = tokio::task::spawn_blocking({
        let (ns, config_name) = (ns.name.clone(), config_name.clone());
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_insights-remote"))
                .args([
                    "--pod-namespace",
                    &ns,
                    "--watch-namespace",
                    &ns,
                    "--config-name",
                    &config_name,
                    "--enable-webservice=false",
                    "--enable-configmap-reconciler=false",
                    "--health-probe-bind-address",
                    "0",
                    "--metrics-bind-address",
                    "0",
                ])
                .args(broker_args(&broker))
                .env("KUBECONFIG", kubeconfig_path())
                .env_remove("INSIGHTS_TOKEN_SECRET")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("previousSecretRefs[0]") && stderr.contains("kube-system/stolen"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let irc: Api<InsightsRemoteConfig> = Api::all(client.clone());
    let o = irc.get(&config_name).await.unwrap();
    let (status, reason, message) = condition(&o, "SigningKeyReady").expect("a condition");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SecretUnavailable")
    );
    assert!(message.contains("kube-system/stolen"), "{message}");
    irc.delete(&config_name, &DeleteParams::default())
        .await
        .unwrap();
    ns.cleanup().await;
}
