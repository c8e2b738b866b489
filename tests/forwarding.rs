//! ConfigMap forwarding end to end: the real API server, the real RabbitMQ,
//! an in-process operator per test scoped to the test's own namespace.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::cluster::*;
use common::*;
use insights_remote::broker::BrokerSettings;
use insights_remote::controller::configmap::reconcile;
use insights_remote::crd::InsightsRemoteConfig;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde_json::{json, Value};

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn fixture_cm(name: &str, ns: &str) -> ConfigMap {
    fixture_configmap(name, ns)
}

/// The fixture SBOM as a build without core insights leaves it.
fn sbom_without_core_annotation(ns: &str) -> ConfigMap {
    let mut cm = fixture_cm("configmap-sbom.json", ns);
    cm.metadata
        .annotations
        .as_mut()
        .unwrap()
        .remove("core.insights.lagoon.sh/enabled");
    cm
}

fn gunzip(b64: &str) -> Value {
    let bytes = STANDARD.decode(b64).expect("standard padded base64");
    let mut out = String::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_string(&mut out)
        .unwrap();
    serde_json::from_str(&out).unwrap()
}

/// A minimal SBOM the consumer can read (metadata.component and tools).
const SBOM: &str = r#"{"bomFormat":"CycloneDX","specVersion":"1.5","metadata":{"component":{"name":"img"},"tools":{"components":[{"type":"application","name":"syft"}]}}}"#;

fn cm_with(
    name: &str,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
    bin: Option<(&str, &[u8])>,
    data: Option<(&str, &str)>,
) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.into());
    cm.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    cm.metadata.annotations = Some(
        annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    if let Some((k, v)) = bin {
        cm.binary_data = Some(BTreeMap::from([(
            k.to_string(),
            k8s_openapi::ByteString(v.to_vec()),
        )]));
    }
    if let Some((k, v)) = data {
        cm.data = Some(BTreeMap::from([(k.to_string(), v.to_string())]));
    }
    cm
}

async fn start(
    ns: &TestNamespace,
    broker: BrokerSettings,
    ops: insights_remote::settings::Operations,
) -> Operator {
    Operator::start(
        &ns.client,
        OperatorOptions::forwarding(ns, broker, ops, &unique("irc")),
    )
    .await
}

/// A namespace and a queue of the test's own (both tagged `tag`), an
/// operator forwarding from the one to the other with `ops`, and the
/// namespace's ConfigMaps.
async fn setup(
    client: &kube::Client,
    tag: &str,
    ops: insights_remote::settings::Operations,
) -> (TestNamespace, Api<ConfigMap>, String, Operator) {
    let ns = TestNamespace::new(client, tag).await;
    let broker = isolated_broker(tag);
    let queue = broker.queue.clone();
    let op = start(&ns, broker, ops).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    (ns, api, queue, op)
}

/// Stops the operator and deletes the namespace.
async fn finish(op: Operator, ns: TestNamespace) {
    op.stop().await;
    ns.cleanup().await;
}

/// Creates the fixture ConfigMap `file` in the namespace of `api`; the
/// version created.
async fn create_fixture(api: &Api<ConfigMap>, file: &str, ns: &str) -> ConfigMap {
    api.create(&PostParams::default(), &fixture_cm(file, ns))
        .await
        .unwrap()
}

/// Waits until ConfigMap `name` is labelled processed; the ConfigMap.
async fn wait_processed(api: &Api<ConfigMap>, name: &str) -> ConfigMap {
    wait_label(api, name, "lagoon.sh/insightsProcessed").await
}

async fn wait_label(api: &Api<ConfigMap>, name: &str, label: &str) -> ConfigMap {
    wait_for(
        &format!("{name} labelled {label}"),
        Duration::from_secs(30),
        || async {
            api.get_opt(name)
                .await
                .unwrap()
                .filter(|cm| cm.labels().contains_key(label))
        },
    )
    .await
}

#[tokio::test]
async fn fixture_configmaps_are_forwarded_in_the_contract_shape() {
    let client = client().await;
    let (ns, api, queue, op) = setup(&client, "fwd", test_ops()).await;
    for f in ["configmap-sbom.json", "configmap-image.json"] {
        api.create(&PostParams::default(), &fixture_cm(f, &ns.name))
            .await
            .unwrap();
    }
    for name in ["lagoon-insights-sbom-cli", "lagoon-insights-image-cli"] {
        let cm = wait_processed(&api, name).await;
        let secs: u64 = cm.labels()["lagoon.sh/insightsProcessed"]
            .parse()
            .expect("unix seconds");
        assert!(secs > 1_700_000_000);
        let at = &cm.annotations()["lagoon.sh/insightsProcessed"];
        assert!(
            at.parse::<k8s_openapi::jiff::Timestamp>().is_ok() && at.ends_with('Z'),
            "{at}"
        );
    }
    let mut got = drain(&queue, 2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    got.sort_by_key(|m| m["type"].as_str().unwrap().to_string());
    let (inspect, sbom) = (&got[0], &got[1]);
    for (m, t, key, original, fixture_name) in [
        (
            sbom,
            "sbom",
            "cli.cyclonedx.json.gz",
            "sbom.cyclonedx.json",
            "configmap-sbom.json",
        ),
        (
            inspect,
            "inspect",
            "cli.image-inspect.json.gz",
            "image-inspect.json",
            "configmap-image.json",
        ),
    ] {
        let f = fixture(fixture_name);
        assert_eq!(m["type"], t);
        assert!(
            m["payload"].is_null(),
            "payload must be null: {}",
            m["payload"]
        );
        let bin = m["binaryPayload"].as_object().unwrap();
        assert_eq!(bin.len(), 1);
        assert_eq!(gunzip(bin[key].as_str().unwrap()), fixture(original));
        assert_eq!(m["namespace"], json!(ns.name));
        assert_eq!(m["project"], "demo-project");
        assert_eq!(m["environment"], "main");
        assert_eq!(m["service"], "cli");
        assert_eq!(m["labels"], f["metadata"]["labels"]);
        for (k, v) in f["metadata"]["annotations"].as_object().unwrap() {
            assert_eq!(&m["annotations"][k], v);
        }
        let keys: Vec<&str> = m.as_object().unwrap().keys().map(String::as_str).collect();
        let mut keys = keys;
        keys.sort();
        assert_eq!(
            keys,
            [
                "annotations",
                "binaryPayload",
                "environment",
                "labels",
                "namespace",
                "payload",
                "project",
                "service",
                "type"
            ]
        );
    }
    assert_eq!(
        op.ctx
            .counters
            .forwarded
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    finish(op, ns).await;
}

#[tokio::test]
async fn text_data_travels_gzipped_and_go_deferred_configmaps_are_retried() {
    let client = client().await;
    let (ns, api, queue, op) = setup(&client, "text", test_ops()).await;
    let sbom = SBOM;
    let inspect = gzip(br#"{"name":"img","env":["A=b"]}"#);
    api.create(
        &PostParams::default(),
        &cm_with(
            "plain",
            &[
                ("lagoon.sh/insightsType", "sbom-gz"),
                ("lagoon.sh/service", "php"),
            ],
            &[],
            None,
            Some(("php.cyclonedx.json", sbom)),
        ),
    )
    .await
    .unwrap();
    // Deferred by the Go original, its time already past.
    api.create(
        &PostParams::default(),
        &cm_with(
            "go-deferred",
            &[
                ("lagoon.sh/insightsType", "image-gz"),
                ("lagoon.sh/insightsWriteDeferred", "1000"),
            ],
            &[("insights.lagoon.sh/retries", "1")],
            Some(("x.image-inspect.json.gz", &inspect)),
            None,
        ),
    )
    .await
    .unwrap();
    wait_processed(&api, "plain").await;
    let deferred = wait_processed(&api, "go-deferred").await;
    assert!(
        !deferred
            .labels()
            .contains_key("lagoon.sh/insightsWriteDeferred"),
        "deferral label removed"
    );
    let got = drain(&queue, 2, Duration::from_secs(10)).await;
    let plain = got
        .iter()
        .find(|m| m["service"] == "php")
        .expect("text ConfigMap message");
    assert!(plain["payload"].is_null());
    assert_eq!(plain["type"], "sbom");
    // Text travels gzipped: the consumer reads image inspect data only so.
    assert_eq!(
        gunzip(
            plain["binaryPayload"]["php.cyclonedx.json"]
                .as_str()
                .unwrap()
        ),
        serde_json::from_str::<Value>(sbom).unwrap()
    );
    assert!(got.iter().any(|m| m["type"] == "inspect"));
    finish(op, ns).await;
}

async fn events_for(client: &kube::Client, ns: &str, name: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

/// Waits for the `Rejected` Warning Event about ConfigMap `name`.
async fn wait_rejected_event(client: &kube::Client, ns: &str, name: &str) {
    let events = wait_for(
        &format!("{name} event"),
        Duration::from_secs(10),
        || async {
            let e = events_for(client, ns, name).await;
            (!e.is_empty()).then_some(e)
        },
    )
    .await;
    assert!(events
        .iter()
        .any(|e| e.reason.as_deref() == Some("Rejected") && e.type_.as_deref() == Some("Warning")));
}

#[tokio::test]
async fn unforwardable_configmaps_are_rejected_with_an_event_and_not_published() {
    let client = client().await;
    let (ns, api, queue, op) = setup(&client, "reject", test_ops()).await;
    let sbom_gz = gzip(SBOM.as_bytes());
    let bin = Some(("a.json.gz", &sbom_gz[..]));
    let cases = [
        cm_with(
            "legacy-sbom",
            &[
                ("lagoon.sh/insightsType", "sbom"),
                ("insights.lagoon.sh/type", "sbom"),
            ],
            &[],
            bin,
            None,
        ),
        cm_with(
            "legacy-direct",
            &[("lagoon.sh/insightsType", "direct")],
            &[],
            bin,
            None,
        ),
        cm_with(
            "unknown-type",
            &[
                ("lagoon.sh/insightsType", "sbom-gz"),
                ("insights.lagoon.sh/type", "facts"),
            ],
            &[],
            bin,
            None,
        ),
        cm_with(
            "unknown-legacy",
            &[("lagoon.sh/insightsType", "weird-gz")],
            &[],
            bin,
            None,
        ),
        cm_with(
            "no-payload",
            &[("lagoon.sh/insightsType", "sbom-gz")],
            &[],
            None,
            None,
        ),
    ];
    for cm in &cases {
        api.create(&PostParams::default(), cm).await.unwrap();
    }
    for cm in &cases {
        let name = cm.name_any();
        let got = wait_for(
            &format!("{name} rejected"),
            Duration::from_secs(30),
            || async {
                api.get(&name)
                    .await
                    .ok()
                    .filter(|c| c.annotations().contains_key("insights.lagoon.sh/rejected"))
            },
        )
        .await;
        assert!(!got.labels().contains_key("lagoon.sh/insightsProcessed"));
        wait_rejected_event(&client, &ns.name, &name).await;
    }
    // Not retried while unchanged: each was reconciled again after its
    // rejection was written (its create, then that patch: 2 each), and the
    // counter stayed put.
    wait_reconciliations(&op.metrics, "configmap", 2 * cases.len() as u64).await;
    assert_eq!(
        op.ctx
            .counters
            .rejected
            .load(std::sync::atomic::Ordering::Relaxed),
        5
    );
    assert_eq!(
        queue_depth(&queue).await,
        0,
        "nothing rejected is published"
    );
    // Fixing it (a change) gets it forwarded.
    api.patch(
        "unknown-type",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"insights.lagoon.sh/type": "sbom"}}})),
    )
    .await
    .unwrap();
    wait_processed(&api, "unknown-type").await;
    assert_eq!(drain(&queue, 1, Duration::from_secs(10)).await.len(), 1);
    finish(op, ns).await;
}

/// `--require-core-insights-enabled=false` (for older build-deploy-tool
/// versions that do not annotate): every ConfigMap is published.
#[tokio::test]
async fn with_the_gate_off_unannotated_configmaps_are_published() {
    let client = client().await;
    let mut ops = test_ops();
    ops.require_core_enabled = false;
    let (ns, api, queue, op) = setup(&client, "nogate", ops).await;
    let cm = sbom_without_core_annotation(&ns.name);
    api.create(&PostParams::default(), &cm).await.unwrap();
    let done = wait_processed(&api, "lagoon-insights-sbom-cli").await;
    assert_eq!(
        done.annotations()["core.insights.lagoon.sh/status"],
        "success"
    );
    // published although not annotated
    drain_exactly(&queue, 1, Duration::from_secs(5)).await;
    finish(op, ns).await;
}

#[tokio::test]
async fn core_insights_gate_marks_without_publishing() {
    let client = client().await;
    let mut ops = test_ops();
    ops.require_core_enabled = true;
    let (ns, api, queue, op) = setup(&client, "gate", ops).await;
    let mut off = sbom_without_core_annotation(&ns.name);
    off.metadata.name = Some("core-off".into());
    api.create(&PostParams::default(), &off).await.unwrap();
    create_fixture(&api, "configmap-sbom.json", &ns.name).await;
    wait_processed(&api, "core-off").await;
    wait_processed(&api, "lagoon-insights-sbom-cli").await;
    // only the core-enabled ConfigMap is published
    let got = drain_exactly(&queue, 1, Duration::from_secs(5)).await;
    // Both record the core step as done (upstream's annotation).
    for name in ["core-off", "lagoon-insights-sbom-cli"] {
        let cm = api.get(name).await.unwrap();
        assert_eq!(
            cm.annotations()
                .get("core.insights.lagoon.sh/status")
                .map(String::as_str),
            Some("success"),
            "{name}"
        );
    }
    assert_eq!(
        got[0]["annotations"]["core.insights.lagoon.sh/enabled"],
        "true"
    );
    finish(op, ns).await;
}

#[tokio::test]
async fn burn_after_reading_deletes_forwarded_and_older_processed_configmaps() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "burn").await;
    let broker = isolated_broker("burn");
    let queue = broker.queue.clone();
    let mut ops = test_ops();
    ops.burn_after_reading = true;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    // Processed earlier by the Go original (annotation only).
    api.create(
        &PostParams::default(),
        &cm_with(
            "old",
            &[("lagoon.sh/insightsType", "sbom-gz")],
            &[("lagoon.sh/insightsProcessed", "2026-01-01T00:00:00Z")],
            Some(("a.gz", b"x")),
            None,
        ),
    )
    .await
    .unwrap();
    let op = start(&ns, broker, ops).await;
    create_fixture(&api, "configmap-image.json", &ns.name).await;
    for name in ["old", "lagoon-insights-image-cli"] {
        wait_for(
            &format!("{name} deleted"),
            Duration::from_secs(30),
            || async { api.get_opt(name).await.unwrap().is_none().then_some(()) },
        )
        .await;
    }
    // the old one was not published again
    let got = drain_exactly(&queue, 1, Duration::from_secs(5)).await;
    assert_eq!(got[0]["type"], "inspect");
    assert_eq!(
        op.ctx
            .counters
            .burned
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    finish(op, ns).await;
}

/// Burn-after-reading switched on later through the custom resource deletes
/// the ConfigMaps this operator labelled processed while it was off: the
/// watch's selector follows the setting. (Switching through the resource,
/// not by writing the live settings: the config controller owns those and
/// may re-derive them from flags at any moment.)
#[tokio::test]
async fn burn_after_reading_switched_on_later_deletes_what_we_processed_before() {
    let client = client().await;
    ensure_crd(&client).await;
    let ns = TestNamespace::new(&client, "burnlater").await;
    let broker = isolated_broker("burnlater");
    let queue = broker.queue.clone();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let config_name = unique("irc-burnlater");
    apply_config(&client, &config_name, json!({"burnAfterReading": false})).await;
    let op = Operator::start(
        &client,
        OperatorOptions::forwarding(&ns, broker, test_ops(), &config_name),
    )
    .await;
    create_fixture(&api, "configmap-image.json", &ns.name).await;
    let name = "lagoon-insights-image-cli";
    wait_processed(&api, name).await;
    apply_config(&client, &config_name, json!({"burnAfterReading": true})).await;
    wait_for(
        "burned after the switch",
        Duration::from_secs(30),
        || async { api.get_opt(name).await.unwrap().is_none().then_some(()) },
    )
    .await;
    // burning does not publish it again
    drain_exactly(&queue, 1, Duration::from_secs(3)).await;
    op.stop().await;
    let configs: Api<InsightsRemoteConfig> = Api::all(client.clone());
    let _ = configs.delete(&config_name, &Default::default()).await;
    ns.cleanup().await;
}

#[tokio::test]
async fn broker_down_defers_then_forwards_after_hot_reload_and_gives_up_past_max_retries() {
    let client = client().await;
    ensure_crd(&client).await;
    let ns = TestNamespace::new(&client, "defer").await;
    let live = isolated_broker("defer");
    let queue = live.queue.clone();
    let dead = BrokerSettings {
        host: "127.0.0.1:1".into(),
        ..live.clone()
    };
    let config_name = unique("irc-defer");
    let spec = |address: &str, max_retries: u32| {
        json!({
            "broker": {"address": address, "exchange": live.exchange, "queue": live.queue},
            "forwarding": {"minutesBetweenRetries": 0, "maxRetries": max_retries},
        })
    };
    apply_config(&client, &config_name, spec("127.0.0.1:1", 1000)).await;
    let op = Operator::start(
        &client,
        OperatorOptions::forwarding(&ns, dead, test_ops(), &config_name),
    )
    .await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    create_fixture(&api, "configmap-sbom.json", &ns.name).await;
    let deferred = wait_label(
        &api,
        "lagoon-insights-sbom-cli",
        "lagoon.sh/insightsWriteDeferred",
    )
    .await;
    let retries: u32 = deferred.annotations()["insights.lagoon.sh/retries"]
        .parse()
        .unwrap();
    assert!(retries >= 1);
    // The Event follows the label: wait for it rather than read once.
    let events = wait_for("Deferred event", Duration::from_secs(10), || async {
        let e = events_for(&client, &ns.name, "lagoon-insights-sbom-cli").await;
        e.iter()
            .any(|e| e.reason.as_deref() == Some("Deferred"))
            .then_some(e)
    })
    .await;
    assert!(events
        .iter()
        .any(|e| e.reason.as_deref() == Some("Deferred")));
    // The broker "comes back": the resource now points at the live one and
    // the operator switches without a restart.
    apply_config(&client, &config_name, spec(&broker_host(), 1000)).await;
    let done = wait_processed(&api, "lagoon-insights-sbom-cli").await;
    assert!(!done
        .labels()
        .contains_key("lagoon.sh/insightsWriteDeferred"));
    assert!(!drain(&queue, 1, Duration::from_secs(10)).await.is_empty());

    // Past the maximum: labelled and left alone.
    apply_config(&client, &config_name, spec("127.0.0.1:1", 2)).await;
    let mut second = fixture_cm("configmap-image.json", &ns.name);
    second.metadata.name = Some("exhausted".into());
    api.create(&PostParams::default(), &second).await.unwrap();
    let gave_up = wait_label(&api, "exhausted", "insights.lagoon.sh/max-retry-exceeded").await;
    assert_eq!(
        gave_up.labels()["insights.lagoon.sh/max-retry-exceeded"],
        "MAX_RETRY_EXCEEDED"
    );
    assert_eq!(gave_up.annotations()["insights.lagoon.sh/retries"], "3");
    assert!(!gave_up.labels().contains_key("lagoon.sh/insightsProcessed"));
    op.stop().await;
    let _ = Api::<InsightsRemoteConfig>::all(client.clone())
        .delete(&config_name, &Default::default())
        .await;
    ns.cleanup().await;
}

#[tokio::test]
async fn replaced_configmap_is_forwarded_again_not_marked_blindly() {
    // The build replaces a ConfigMap wholesale; a content change after the
    // processed mark must be forwarded as new.
    let client = client().await;
    let (ns, api, queue, op) = setup(&client, "replace", test_ops()).await;
    create_fixture(&api, "configmap-image.json", &ns.name).await;
    wait_processed(&api, "lagoon-insights-image-cli").await;
    // The build's replace: new content, no marks.
    let mut fresh = fixture_cm("configmap-image.json", &ns.name);
    let new = gzip(br#"{"name":"new","env":["A=b"]}"#);
    fresh.binary_data.as_mut().unwrap().insert(
        "cli.image-inspect.json.gz".into(),
        k8s_openapi::ByteString(new.clone()),
    );
    fresh.metadata.resource_version = None;
    api.replace("lagoon-insights-image-cli", &PostParams::default(), &fresh)
        .await
        .unwrap();
    wait_processed(&api, "lagoon-insights-image-cli").await;
    let got = drain(&queue, 2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[1]["binaryPayload"]["cli.image-inspect.json.gz"],
        STANDARD.encode(&new)
    );
    finish(op, ns).await;
}

/// The API server's watch cache can trail the operator's own write by a few
/// milliseconds, and a reconcile can follow straight on the one that wrote
/// (an ended upload wakes its ConfigMap at once): its read can still be the
/// version before the processed mark. Handed that version, as a trailing
/// cache would answer it, the reconciler must not publish again. (CI saw
/// exactly this: two messages in the Dependency-Track outage test.)
#[tokio::test]
async fn a_version_from_before_our_own_mark_is_not_forwarded_again() {
    let client = client().await;
    let (ns, api, queue, op) = setup(&client, "behind", test_ops()).await;
    let created = create_fixture(&api, "configmap-image.json", &ns.name).await;
    wait_processed(&api, &created.name_any()).await;
    drain_exactly(&queue, 1, Duration::from_secs(5)).await;
    let res = reconcile(Arc::new(created), op.ctx.clone()).await;
    assert_eq!(queue_depth(&queue).await, 0, "published again");
    assert_eq!(
        res.expect("read again, nothing to do"),
        Action::await_change()
    );
    finish(op, ns).await;
}

/// The same with burn-after-reading: the version before the delete finds
/// the ConfigMap gone and publishes nothing.
#[tokio::test]
async fn a_version_from_before_our_own_delete_is_not_forwarded_again() {
    let client = client().await;
    let mut ops = test_ops();
    ops.burn_after_reading = true;
    let (ns, api, queue, op) = setup(&client, "behindburn", ops).await;
    let created = create_fixture(&api, "configmap-image.json", &ns.name).await;
    let name = created.name_any();
    wait_for("burnt", Duration::from_secs(30), || async {
        api.get_opt(&name).await.unwrap().is_none().then_some(())
    })
    .await;
    drain_exactly(&queue, 1, Duration::from_secs(5)).await;
    let res = reconcile(Arc::new(created), op.ctx.clone()).await;
    assert_eq!(queue_depth(&queue).await, 0, "published again");
    assert_eq!(res.expect("gone, nothing to do"), Action::await_change());
    finish(op, ns).await;
}

/// A version recorded as written over that is in fact still the current one
/// (as a write that did not land would leave it) is read again from etcd and
/// forwarded, not put off until the record expires. (An earlier build kept
/// re-reading until it got a version not recorded: a patch lost to an API
/// server restart, recorded as it may have landed, then stalled its
/// ConfigMap, and CI's apiserver_restart test timed out.)
#[tokio::test]
async fn a_version_recorded_as_written_over_but_current_is_still_forwarded() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "notlanded").await;
    let broker = isolated_broker("notlanded");
    let queue = broker.queue.clone();
    // No ConfigMap controller: the test calls the reconciler itself.
    let options = OperatorOptions::forwarding(&ns, broker, test_ops(), &unique("irc"));
    let op = Operator::start(
        &client,
        OperatorOptions {
            forward: false,
            ..options
        },
    )
    .await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let created = create_fixture(&api, "configmap-image.json", &ns.name).await;
    op.ctx.written.wrote_over(
        created.metadata.uid.as_deref().unwrap(),
        created.metadata.resource_version.as_deref().unwrap(),
    );
    let res = reconcile(Arc::new(created.clone()), op.ctx.clone()).await;
    assert_eq!(res.expect("forwarded"), Action::await_change());
    drain_exactly(&queue, 1, Duration::from_secs(5)).await;
    wait_processed(&api, &created.name_any()).await;
    finish(op, ns).await;
}

/// A ConfigMap whose message is over the publish limit is rejected with the
/// reason (retrying cannot help), not deferred and retried.
#[tokio::test]
async fn configmap_over_the_message_limit_is_rejected_not_retried() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "toolarge").await;
    let mut broker = isolated_broker("toolarge");
    broker.max_message_bytes = 1024;
    let queue = broker.queue.clone();
    let op = start(&ns, broker, test_ops()).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    create_fixture(&api, "configmap-sbom.json", &ns.name).await;
    let reason = rejection(&api, "lagoon-insights-sbom-cli").await;
    assert!(reason.contains("limit of 1024 bytes"), "{reason}");
    let cm = api.get("lagoon-insights-sbom-cli").await.unwrap();
    assert!(!cm.labels().contains_key("lagoon.sh/insightsWriteDeferred"));
    assert_eq!(queue_depth(&queue).await, 0);
    op.stop().await;
    delete_queue(&queue).await;
    ns.cleanup().await;
}

/// Identity comes from the namespace (src/identity.rs): in tenant b's
/// namespace, a ConfigMap labelled with another tenant's project and
/// environment, or with a branch annotation naming another environment, is
/// rejected with an Event and never published; an honest branch build
/// (`feature/x` in the environment `feature-x`) is published with the
/// namespace's project, environment and type; in a namespace without
/// Lagoon's labels nothing is forwarded.
#[tokio::test]
async fn a_configmap_cannot_speak_for_another_environment() {
    let client = client().await;
    let labels = BTreeMap::from([
        ("lagoon.sh/project".to_string(), "tenant-b".to_string()),
        ("lagoon.sh/environment".to_string(), "feature-x".to_string()),
        ("lagoon.sh/environmentId".to_string(), "7".to_string()),
        (
            "lagoon.sh/environmentType".to_string(),
            "development".to_string(),
        ),
    ]);
    let ns = TestNamespace::with_labels(&client, "spoof", labels).await;
    let broker = isolated_broker("spoof");
    let queue = broker.queue.clone();
    let op = start(&ns, broker, test_ops()).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let sbom_gz = gzip(SBOM.as_bytes());
    let bin = Some(("a.json.gz", &sbom_gz[..]));
    let core = ("core.insights.lagoon.sh/enabled", "true");
    let sbom = ("lagoon.sh/insightsType", "sbom-gz");
    let spoofs = [
        (
            cm_with(
                "other-labels",
                &[
                    sbom,
                    ("lagoon.sh/project", "demo-project"),
                    ("lagoon.sh/environment", "main"),
                ],
                &[core],
                bin,
                None,
            ),
            "names another environment",
        ),
        (
            cm_with(
                "other-branch",
                &[
                    sbom,
                    ("lagoon.sh/project", "tenant-b"),
                    ("lagoon.sh/buildType", "branch"),
                ],
                &[core, ("lagoon.sh/branch", "main")],
                bin,
                None,
            ),
            "names environment \"main\"",
        ),
        (
            // Not an SBOM by its legacy label, an SBOM by the other: the
            // payload is checked all the same (this one is not JSON).
            cm_with(
                "unchecked-type",
                &[
                    ("lagoon.sh/insightsType", "other-gz"),
                    ("insights.lagoon.sh/type", "sbom"),
                ],
                &[core],
                Some(("a.json.gz", &gzip(b"not json")[..])),
                None,
            ),
            "a.json.gz",
        ),
    ];
    for (cm, _) in &spoofs {
        api.create(&PostParams::default(), cm).await.unwrap();
    }
    let honest = cm_with(
        "honest",
        &[
            sbom,
            ("lagoon.sh/buildType", "branch"),
            ("lagoon.sh/service", "cli"),
            ("lagoon.sh/environmentType", "production"),
        ],
        &[core, ("lagoon.sh/branch", "feature/x")],
        bin,
        None,
    );
    api.create(&PostParams::default(), &honest).await.unwrap();
    for (cm, why) in &spoofs {
        let name = cm.name_any();
        let reason = rejection(&api, &name).await;
        assert!(reason.contains(why), "{name}: {reason}");
        wait_rejected_event(&client, &ns.name, &name).await;
    }
    wait_processed(&api, "honest").await;
    // only the honest ConfigMap is published
    let got = drain_exactly(&queue, 1, Duration::from_secs(10)).await;
    let m = &got[0];
    assert_eq!(m["labels"]["lagoon.sh/project"], "tenant-b");
    assert_eq!(m["labels"]["lagoon.sh/environment"], "feature-x");
    assert_eq!(m["labels"]["lagoon.sh/environmentType"], "development");
    assert_eq!(m["annotations"]["lagoon.sh/branch"], "feature/x");
    assert_eq!(
        (m["project"].as_str(), m["environment"].as_str()),
        (Some("tenant-b"), Some("feature-x"))
    );
    finish(op, ns).await;

    // A namespace that is not a Lagoon environment forwards nothing.
    let plain = TestNamespace::with_labels(&client, "plain", BTreeMap::new()).await;
    let broker = isolated_broker("plain");
    let queue = broker.queue.clone();
    let op = start(&plain, broker, test_ops()).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &plain.name);
    let mut cm = fixture_cm("configmap-sbom.json", &plain.name);
    cm.metadata.name = Some("in-plain".into());
    api.create(&PostParams::default(), &cm).await.unwrap();
    let reason = rejection(&api, "in-plain").await;
    assert!(reason.contains("is not a Lagoon environment"), "{reason}");
    assert_eq!(queue_depth(&queue).await, 0);
    delete_queue(&queue).await;
    op.stop().await;
    plain.cleanup().await;
}
