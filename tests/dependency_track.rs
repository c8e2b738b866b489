//! The post-processor pipeline against a real Dependency-Track API server
//! (`../shared/dependency-track/run.sh`, started by `hack/test.sh`), the
//! real API server and RabbitMQ: the hierarchy and upload, push-prod-only
//! and its per-namespace override, the per-namespace endpoint and key, and
//! an outage deferring the ConfigMap without publishing it twice.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster::*;
use common::*;
use insights_remote::crd::InsightsRemoteConfig;
use insights_remote::dependency_track::{Settings, Templates};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{json, Value};

/// The running Dependency-Track: `DT_BASE_URL` and `DT_API_KEY`, else what
/// run.sh wrote to `$DT_WORK/dt.env`.
fn dt() -> (String, String) {
    if let (Ok(u), Ok(k)) = (std::env::var("DT_BASE_URL"), std::env::var("DT_API_KEY")) {
        return (u, k);
    }
    let work = std::env::var("DT_WORK")
        .unwrap_or_else(|_| format!("{}/.cache/dependency-track", std::env::var("HOME").unwrap()));
    let env = std::fs::read_to_string(format!("{work}/dt.env"))
        .expect("no dt.env: run ../shared/dependency-track/run.sh (hack/test.sh does)");
    let get = |k: &str| {
        env.lines()
            .filter_map(|l| l.strip_prefix(&format!("{k}=")))
            .next_back()
            .unwrap_or_else(|| panic!("{k} missing in dt.env"))
            .to_string()
    };
    (get("DT_BASE_URL"), get("DT_API_KEY"))
}

async fn dt_get(path: &str) -> (u16, Value) {
    let (base, key) = dt();
    let r = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .header("X-Api-Key", key)
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The project `name` (any version) with its parent, if it exists.
async fn project(name: &str) -> Option<Value> {
    let (st, found) = dt_get(&format!("/api/v1/project?name={name}")).await;
    assert_eq!(st, 200, "{found}");
    let uuid = found.as_array()?.iter().find(|p| p["name"] == name)?["uuid"]
        .as_str()?
        .to_string();
    Some(dt_get(&format!("/api/v1/project/{uuid}")).await.1)
}

fn dt_ops(
    endpoint: &str,
    key: &str,
    push_prod_only: bool,
) -> insights_remote::settings::Operations {
    let mut ops = test_ops();
    ops.require_core_enabled = true;
    ops.mins_between_retries = 0;
    ops.max_retries = 1000;
    ops.dependency_track = Settings {
        enabled: true,
        endpoint: endpoint.into(),
        api_key: key.into(),
        templates: Templates::default(),
        push_prod_only,
    };
    ops
}

/// The shared SBOM fixture as its build writes it in a namespace of
/// `project` (see [`namespace`]), for `service`.
fn sbom_cm(
    name: &str,
    project: &str,
    env_type: &str,
    service: &str,
    annotations: &[(&str, &str)],
) -> ConfigMap {
    let mut cm = fixture_configmap("configmap-sbom.json", "");
    cm.metadata.name = Some(name.into());
    cm.metadata.namespace = None;
    let labels = cm.metadata.labels.get_or_insert_with(Default::default);
    labels.insert("lagoon.sh/project".into(), project.into());
    labels.insert("lagoon.sh/environmentType".into(), env_type.into());
    labels.insert("lagoon.sh/service".into(), service.into());
    let a = cm.metadata.annotations.get_or_insert_with(Default::default);
    for (k, v) in annotations {
        a.insert(k.to_string(), v.to_string());
    }
    cm
}

async fn create_sbom(
    api: &Api<ConfigMap>,
    name: &str,
    project: &str,
    env_type: &str,
    service: &str,
    annotations: &[(&str, &str)],
) {
    api.create(
        &PostParams::default(),
        &sbom_cm(name, project, env_type, service, annotations),
    )
    .await
    .unwrap();
}

fn tag_names(project: &Value) -> Vec<&str> {
    project["tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect()
}

/// A Lagoon environment namespace of `project` (unique to the test, so
/// Dependency-Track's projects do not collide), environment `main`, of type
/// `env_type`: the ConfigMap's project, environment and type are its
/// namespace's (src/identity.rs).
async fn namespace(
    client: &kube::Client,
    tag: &str,
    project: &str,
    env_type: &str,
) -> TestNamespace {
    let mut labels = lagoon_labels("42");
    labels.insert("lagoon.sh/project".into(), project.into());
    labels.insert("lagoon.sh/environmentType".into(), env_type.into());
    TestNamespace::with_labels(client, tag, labels).await
}

/// A forwarding operator for `ns` with its own broker (tagged `tag`), the
/// Dependency-Track settings in `ops`, the admin's endpoint list `hosts`
/// (`127.0.0.1` lets a namespace's own endpoint be the test's
/// Dependency-Track) and `slots` uploads of each kind at once.
async fn dt_operator(
    client: &kube::Client,
    ns: &TestNamespace,
    tag: &str,
    ops: insights_remote::settings::Operations,
    hosts: &str,
    slots: u16,
) -> Operator {
    let options = OperatorOptions::forwarding(ns, isolated_broker(tag), ops, &unique("irc"));
    Operator::start_with(client, options, |s| {
        s.uploads.custom_endpoint_hosts = hosts.to_string();
        s.uploads.max_concurrent = slots;
    })
    .await
}

/// [`dt_operator`] letting a namespace's own endpoint be the test's
/// Dependency-Track (`127.0.0.1`), 2 uploads at once; and `ns`'s ConfigMaps.
async fn local_dt_operator(
    client: &kube::Client,
    ns: &TestNamespace,
    tag: &str,
    ops: insights_remote::settings::Operations,
) -> (Operator, Api<ConfigMap>) {
    let op = dt_operator(client, ns, tag, ops, "127.0.0.1", 2).await;
    (op, Api::namespaced(client.clone(), &ns.name))
}

/// Creates the Secret `lagoon-env` of `ns` with `string_data`.
async fn create_lagoon_env(client: &kube::Client, ns: &str, string_data: Value) -> Api<Secret> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "lagoon-env"}, "stringData": string_data}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    secrets
}

/// Creates SBOM ConfigMap `name` (service `service`) for the namespace's
/// own endpoint `endpoint`.
async fn create_custom_sbom(
    api: &Api<ConfigMap>,
    name: &str,
    proj: &str,
    env_type: &str,
    service: &str,
    endpoint: &str,
) {
    create_sbom(
        api,
        name,
        proj,
        env_type,
        service,
        &[(
            "dependencytrack.insights.lagoon.sh/custom-endpoint",
            endpoint,
        )],
    )
    .await;
}

/// Creates SBOM ConfigMap `name` for the namespace's own endpoint
/// `endpoint`; the failure its custom step records.
async fn custom_sbom_failure(
    api: &Api<ConfigMap>,
    name: &str,
    proj: &str,
    endpoint: &str,
) -> String {
    create_custom_sbom(api, name, proj, "production", name, endpoint).await;
    custom_failure(api, name).await
}

async fn processed(api: &Api<ConfigMap>, name: &str) -> BTreeMap<String, String> {
    wait_for(
        &format!("{name} processed"),
        Duration::from_secs(90),
        || async {
            api.get_opt(name)
                .await
                .unwrap()
                .filter(|cm| cm.labels().contains_key("lagoon.sh/insightsProcessed"))
                .map(|cm| cm.annotations().clone())
        },
    )
    .await
}

#[tokio::test]
async fn central_upload_builds_the_hierarchy_and_waits_until_processed() {
    let (base, key) = dt();
    let client = client().await;
    let proj = unique("dtp");
    let ns = namespace(&client, "dtcentral", &proj, "production").await;
    let broker = isolated_broker("dtcentral");
    let queue = broker.queue.clone();
    let op = Operator::start(
        &client,
        OperatorOptions::forwarding(&ns, broker, dt_ops(&base, &key, true), &unique("irc")),
    )
    .await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    create_sbom(&api, "sbom", &proj, "production", "cli", &[]).await;
    let a = processed(&api, "sbom").await;
    assert_eq!(a["core.insights.lagoon.sh/status"], "success");
    assert_eq!(
        a["dependencytrack.insights.lagoon.sh/default-status"],
        "success"
    );
    assert_eq!(
        a["dependencytrack.insights.lagoon.sh/custom-status"], "success",
        "nothing to do: no custom endpoint"
    );
    assert!(!a.contains_key("dependencytrack.insights.lagoon.sh/default-status-error"));

    // The hierarchy: <project> (top) > <project>-main > <project>-main-cli.
    let root = project(&proj).await.expect("root project");
    assert_eq!(root["collectionLogic"], "AGGREGATE_DIRECT_CHILDREN");
    assert!(root["parent"].is_null(), "the root is at the top: {root}");
    let parent = project(&format!("{proj}-main"))
        .await
        .expect("parent project");
    assert_eq!(parent["collectionLogic"], "AGGREGATE_DIRECT_CHILDREN");
    assert_eq!(parent["parent"]["uuid"], root["uuid"]);
    let leaf = project(&format!("{proj}-main-cli"))
        .await
        .expect("the SBOM's project");
    assert_eq!(leaf["parent"]["uuid"], parent["uuid"]);
    assert_eq!(leaf["version"], "unset");
    let tags = tag_names(&leaf);
    assert!(
        tags.contains(&"lagoon-environmenttype-production"),
        "{tags:?}"
    );
    assert!(
        leaf["lastBomImport"].is_number(),
        "processed before marked: {leaf}"
    );
    let (_, comps) = dt_get(&format!(
        "/api/v1/component/project/{}",
        leaf["uuid"].as_str().unwrap()
    ))
    .await;
    assert!(!comps.as_array().unwrap().is_empty(), "components present");
    // And Lagoon core got it once.
    drain_exactly(&queue, 1, Duration::from_secs(3)).await;
    let counts = op.ctx.counters.steps.lock().unwrap().clone();
    assert_eq!(counts["dependencytrack-default"].succeeded, 1);
    op.stop().await;
    ns.cleanup().await;
}

#[tokio::test]
async fn prod_only_skips_development_and_lagoon_env_overrides_it_for_the_custom_endpoint() {
    let (base, key) = dt();
    let client = client().await;
    // A development environment: its type is the namespace's, whatever a
    // ConfigMap's label says (a production label here changes nothing).
    let proj = unique("dtdev");
    let ns = namespace(&client, "dtprod", &proj, "development").await;
    // Central upload is on with push-prod-only; per-namespace too.
    let (op, api) = local_dt_operator(&client, &ns, "dtprod", dt_ops(&base, &key, true)).await;
    let secrets = create_lagoon_env(
        &client,
        &ns.name,
        json!({
            "LAGOON_FEATURE_FLAG_INSIGHTS_DEPENDENCY_TRACK_API_KEY": key,
            "LAGOON_FEATURE_FLAG_INSIGHTS_DEPENDENCY_TRACK_PUSH_PROD_ONLY": "false",
        }),
    )
    .await;
    // A development SBOM without a custom endpoint: skipped (recorded
    // success), though it claims to be production.
    create_sbom(&api, "dev", &proj, "production", "skipped", &[]).await;
    let a = processed(&api, "dev").await;
    assert_eq!(
        a["dependencytrack.insights.lagoon.sh/default-status"],
        "success"
    );
    assert!(project(&proj).await.is_none(), "not even the parents");
    // A development SBOM for the namespace's own Dependency-Track, whose
    // lagoon-env says push-prod-only=false: uploaded there.
    create_custom_sbom(&api, "dev-custom", &proj, "development", "custom", &base).await;
    let b = processed(&api, "dev-custom").await;
    assert_eq!(
        b["dependencytrack.insights.lagoon.sh/custom-status"],
        "success"
    );
    let leaf = project(&format!("{proj}-main-custom"))
        .await
        .expect("uploaded with the namespace's key");
    assert!(leaf["lastBomImport"].is_number());
    let tags = tag_names(&leaf);
    assert!(
        tags.contains(&"lagoon-environmenttype-development"),
        "{tags:?}"
    );
    assert!(
        project(&format!("{proj}-main-skipped")).await.is_none(),
        "push-prod-only skipped it"
    );

    // An invalid override falls back to the global push-prod-only: skipped.
    secrets
        .patch(
            "lagoon-env",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"LAGOON_FEATURE_FLAG_INSIGHTS_DEPENDENCY_TRACK_PUSH_PROD_ONLY": "maybe"}})),
        )
        .await
        .unwrap();
    create_custom_sbom(
        &api,
        "dev-fallback",
        &proj,
        "development",
        "fallback",
        &base,
    )
    .await;
    let c = processed(&api, "dev-fallback").await;
    assert_eq!(
        c["dependencytrack.insights.lagoon.sh/custom-status"],
        "success"
    );
    assert!(
        project(&format!("{proj}-main-fallback")).await.is_none(),
        "global push-prod-only applied"
    );
    op.stop().await;
    ns.cleanup().await;
}

#[tokio::test]
async fn custom_endpoint_without_a_key_fails_and_records_why() {
    let (base, key) = dt();
    let client = client().await;
    let proj = unique("dtnokey");
    let ns = namespace(&client, "dtnokey", &proj, "production").await;
    let (op, api) = local_dt_operator(&client, &ns, "dtnokey", dt_ops(&base, &key, false)).await;
    create_custom_sbom(&api, "sbom", &proj, "production", "cli", &base).await;
    // The central upload may fail for a while too (a loaded server times
    // out and the step is retried): wait for its success, not its first
    // outcome.
    let status = |a: &std::collections::BTreeMap<String, String>, k: &str| {
        a.get(&format!("dependencytrack.insights.lagoon.sh/{k}"))
            .cloned()
    };
    let a = wait_for(
        "custom step failed, central upload done",
        Duration::from_secs(120),
        || async {
            api.get_opt("sbom")
                .await
                .unwrap()
                .map(|cm| cm.annotations().clone())
                .filter(|a| {
                    status(a, "custom-status").as_deref() == Some("failure")
                        && status(a, "default-status").as_deref() == Some("success")
                })
        },
    )
    .await;
    assert!(
        a["dependencytrack.insights.lagoon.sh/custom-status-error"].contains("lagoon-env"),
        "{a:?}"
    );
    // The other steps went through.
    assert_eq!(a["core.insights.lagoon.sh/status"], "success");
    op.stop().await;
    ns.cleanup().await;
}

/// Dependency-Track away: the ConfigMap is deferred with `failure` and the
/// error recorded, Lagoon core is not published to again on retry, and the
/// upload is done once Dependency-Track is back (through the custom
/// resource, with the key from a Secret).
#[tokio::test]
async fn outage_defers_then_uploads_once_back_without_publishing_twice() {
    let (base, key) = dt();
    let client = client().await;
    ensure_crd(&client).await;
    let proj = unique("dtout");
    let ns = namespace(&client, "dtoutage", &proj, "production").await;
    let broker = isolated_broker("dtoutage");
    let queue = broker.queue.clone();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "dt-key"}, "stringData": {"key": key}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let config_name = unique("irc-dt");
    let spec = |endpoint: &str| {
        json!({"dependencyTrack": {
            "enabled": true,
            "apiEndpoint": endpoint,
            "apiKeySecret": {"name": "dt-key", "key": "key"},
        }})
    };
    apply_config(&client, &config_name, spec("http://127.0.0.1:1")).await;
    let mut ops = dt_ops("", "", true);
    ops.dependency_track.enabled = false;
    let op = Operator::start(
        &client,
        OperatorOptions::forwarding(&ns, broker, ops, &config_name),
    )
    .await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    create_sbom(&api, "sbom", &proj, "production", "cli", &[]).await;
    let deferred = wait_for(
        "deferred with a failure",
        Duration::from_secs(60),
        || async {
            api.get_opt("sbom").await.unwrap().filter(|cm| {
                cm.labels().contains_key("lagoon.sh/insightsWriteDeferred")
                    && cm
                        .annotations()
                        .get("dependencytrack.insights.lagoon.sh/default-status")
                        .map(String::as_str)
                        == Some("failure")
            })
        },
    )
    .await;
    let a = deferred.annotations();
    assert!(!a["dependencytrack.insights.lagoon.sh/default-status-error"].is_empty());
    assert_eq!(a["core.insights.lagoon.sh/status"], "success");
    assert!(a["insights.lagoon.sh/retries"].parse::<u32>().unwrap() >= 1);
    assert!(!deferred
        .labels()
        .contains_key("lagoon.sh/insightsProcessed"));
    // Back: the resource now points at the live server.
    apply_config(&client, &config_name, spec(&base)).await;
    let done = processed(&api, "sbom").await;
    assert_eq!(
        done["dependencytrack.insights.lagoon.sh/default-status"],
        "success"
    );
    assert!(
        !done.contains_key("dependencytrack.insights.lagoon.sh/default-status-error"),
        "the stale error is removed"
    );
    let leaf = project(&format!("{proj}-main-cli"))
        .await
        .expect("uploaded once back");
    assert!(leaf["lastBomImport"].is_number());
    // Lagoon core got it once, not once per retry.
    drain_exactly(&queue, 1, Duration::from_secs(3)).await;
    // The resource's status counts the step's failures and its success.
    let irc: Api<InsightsRemoteConfig> = Api::all(client.clone());
    wait_for("status.postProcessors", Duration::from_secs(30), || async {
        let status = irc.get(&config_name).await.ok()?.status?;
        let dt = status
            .post_processors
            .get("dependencytrack-default")?
            .clone();
        (dt.failed >= 1 && dt.succeeded == 1).then_some(())
    })
    .await;
    op.stop().await;
    let _ = Api::<InsightsRemoteConfig>::all(client.clone())
        .delete(&config_name, &Default::default())
        .await;
    ns.cleanup().await;
}

/// The failure recorded for the custom step of ConfigMap `name`.
async fn custom_failure(api: &Api<ConfigMap>, name: &str) -> String {
    wait_for(
        &format!("{name}: custom step failed"),
        Duration::from_secs(60),
        || async {
            let a = api.get_opt(name).await.unwrap()?.annotations().clone();
            (a.get("dependencytrack.insights.lagoon.sh/custom-status")? == "failure")
                .then(|| a["dependencytrack.insights.lagoon.sh/custom-status-error"].clone())
        },
    )
    .await
}

/// A server on 127.0.0.1 that answers every request with 500 and words a
/// tenant must not be able to read back through us (the answering
/// server's body); also `{"version": ...}` of a made-up build on
/// /api/version when `version` is set.
async fn chatty_server(version: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let _ = c.read(&mut buf).await;
                let (status, body) = if version {
                    ("200 OK", r#"{"version":"3.2.1-internal-build-7f3a"}"#)
                } else {
                    ("500 Oops", "internal-secret-detail: db=10.0.0.9 user=admin")
                };
                let _ = c
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    url
}

/// Issue 22, point 4: a namespace's own endpoint is held to the admin's
/// policy (by default no loopback, link-local or API server address, also
/// through a name that resolves there), nothing is read or sent for a
/// refused one, and what the tenant sees of a failure is the status or
/// the class of error, never what the answering server wrote.
#[tokio::test]
async fn a_tenants_endpoint_is_held_to_the_policy_and_learns_nothing_from_answers() {
    let (base, key) = dt();
    let port = base.rsplit(':').next().unwrap().to_string();
    let client = client().await;
    let proj = unique("dtpolicy");
    let ns = namespace(&client, "dtpolicy", &proj, "production").await;
    create_lagoon_env(
        &client,
        &ns.name,
        json!({"LAGOON_FEATURE_FLAG_INSIGHTS_DEPENDENCY_TRACK_API_KEY": key}),
    )
    .await;
    // The default policy (no list): only the custom step runs.
    let op = dt_operator(&client, &ns, "dtpolicy", dt_ops("", "", false), "", 2).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    for (name, endpoint, says) in [
        ("loopback", format!("http://127.0.0.1:{port}"), "loopback"),
        (
            "by-name",
            format!("http://localhost:{port}"),
            "does not allow",
        ),
        (
            "metadata",
            "http://169.254.169.254".to_string(),
            "link-local",
        ),
        ("fragment", "http://[::1]:1/#".to_string(), "loopback"),
    ] {
        let why = custom_sbom_failure(&api, name, &proj, &endpoint).await;
        assert!(why.contains(says), "{name}: {why}");
    }
    assert!(
        project(&proj).await.is_none(),
        "Dependency-Track never called"
    );
    op.stop().await;

    // The admin allows 127.0.0.1: a server there that talks too much.
    let (op, _) = local_dt_operator(&client, &ns, "dtpolicy2", dt_ops("", "", false)).await;
    for (name, endpoint, says, never) in [
        (
            "chatty",
            chatty_server(false).await,
            "status 500",
            "internal-secret",
        ),
        (
            "old",
            chatty_server(true).await,
            "older than 4.11.0",
            "internal-build",
        ),
    ] {
        let why = custom_sbom_failure(&api, name, &proj, &endpoint).await;
        assert!(why.contains(says) && !why.contains(never), "{name}: {why}");
    }
    op.stop().await;
    ns.cleanup().await;
}

/// Issue 22, point 2: many SBOMs of one project uploaded at once (8 slots)
/// create the project hierarchy once, and every upload succeeds.
#[tokio::test]
async fn concurrent_uploads_of_one_project_create_its_hierarchy_once() {
    let (base, key) = dt();
    let client = client().await;
    let proj = unique("dtrace");
    let ns = namespace(&client, "dtrace", &proj, "production").await;
    let op = dt_operator(&client, &ns, "dtrace", dt_ops(&base, &key, false), "", 8).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let services: Vec<String> = (0..6).map(|i| format!("svc{i}")).collect();
    futures::future::join_all(
        services
            .iter()
            .map(|s| create_sbom(&api, s, &proj, "production", s, &[])),
    )
    .await;
    for s in &services {
        let a = processed(&api, s).await;
        assert_eq!(
            a["dependencytrack.insights.lagoon.sh/default-status"], "success",
            "{s}: {a:?}"
        );
    }
    let named = |name: String| async move {
        let (_, found) = dt_get(&format!(
            "/api/v1/project?name={name}&excludeInactive=false&onlyRoot=false"
        ))
        .await;
        found
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["name"].as_str() == Some(name.as_str()))
            .count()
    };
    assert_eq!(named(proj.clone()).await, 1, "the root once");
    assert_eq!(named(format!("{proj}-main")).await, 1, "the parent once");
    for s in &services {
        assert_eq!(named(format!("{proj}-main-{s}")).await, 1, "{s} once");
    }
    op.stop().await;
    ns.cleanup().await;
}
