//! End to end through Lagoon core's real consumer: what we publish is read
//! by insights-handler (built from ../shared/lagoon-core) and turned into
//! Lagoon API calls, which a stand-in executes against the real schema.

mod common;

use common::cluster::*;
use common::consumer::{name, Consumer};
use common::*;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::PostParams;
use kube::Api;
use serde_json::{json, Value};

const ENV_ID: i64 = 42;

fn facts_of(m: &Value) -> Vec<Value> {
    m["input"]["facts"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_ends_in_the_expected_api_calls() {
    let mut consumer = Consumer::start("routes").await;
    consumer
        .seed(ENV_ID, (7, "demo-project"), "main", "demo-project-main")
        .await;
    let api = start_api(consumer.broker(), 1 << 20, 0).await;
    let token = ring()
        .mint(&claims("demo-project-main", &ENV_ID.to_string()))
        .unwrap();
    let http = reqwest::Client::new();
    let send = |method: reqwest::Method, path: &str, body: &str| {
        http.request(method, format!("{}{path}", api.url))
            .header("authorization", &token)
            .body(body.to_string())
            .send()
    };

    // Facts: a lower-case type is stored as the API's enum value.
    let r = send(
        reqwest::Method::POST,
        "/facts",
        r#"[{"name":"php-version","value":"8.3.13","source":"e2e","type":"semver","category":"Language","description":"PHP"},
            {"name":"site","value":"https://example.com","source":"e2e","type":"URL"}]"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let added = consumer
        .wait_mutations("addFacts", 1, |m| name(m) == "addFacts")
        .await;
    let facts = facts_of(&added[0]);
    assert_eq!(facts.len(), 2);
    assert_eq!(facts[0]["environment"], ENV_ID);
    assert_eq!(facts[0]["name"], "php-version");
    assert_eq!(facts[0]["value"], "8.3.13");
    assert_eq!(facts[0]["source"], "e2e");
    assert_eq!(facts[0]["type"], "SEMVER");
    assert_eq!(facts[1]["type"], "URL");
    let deleted = consumer
        .wait_mutations("deleteFactsFromSource e2e", 1, |m| {
            name(m) == "deleteFactsFromSource" && m["input"]["source"] == "e2e"
        })
        .await;
    assert_eq!(deleted[0]["input"]["environment"], ENV_ID);

    // Problems: one without severity is stored as UNKNOWN, not refused
    // after the old ones were deleted.
    let r = send(
        reqwest::Method::POST,
        "/problems",
        r#"[{"identifier":"CVE-2026-1","source":"trivy","service":"cli","severity":"HIGH","severityScore":7.5,"associatedPackage":"openssl","version":"3.0","data":"{}"},
            {"identifier":"CVE-2026-2","source":"trivy","service":"cli"}]"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let problems = consumer
        .wait_mutations("two addProblem", 2, |m| name(m) == "addProblem")
        .await;
    let by_id = |id: &str| {
        problems
            .iter()
            .find(|p| p["input"]["identifier"] == id)
            .unwrap_or_else(|| panic!("{id} stored"))["input"]
            .clone()
    };
    let p1 = by_id("CVE-2026-1");
    assert_eq!(p1["environment"], ENV_ID);
    assert_eq!(p1["severity"], "HIGH");
    assert_eq!(p1["severityScore"], 7.5);
    assert_eq!(p1["service"], "cli");
    assert_eq!(p1["source"], "trivy");
    assert_eq!(p1["associatedPackage"], "openssl");
    assert_eq!(by_id("CVE-2026-2")["severity"], "UNKNOWN");
    consumer
        .wait_mutations("deleteProblemsFromSource trivy/cli", 1, |m| {
            name(m) == "deleteProblemsFromSource"
                && m["input"] == json!({"environment": ENV_ID, "source": "trivy", "service": "cli"})
        })
        .await;

    // Deletes, with an escaped '+' and '/' decoded as the Go original does.
    for (path, source) in [("/facts/a%2Bb%2Fc", "a+b/c"), ("/facts/plain/cli", "plain")] {
        let r = send(reqwest::Method::DELETE, path, "").await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        consumer
            .wait_mutations(&format!("deleteFactsFromSource {source}"), 1, |m| {
                name(m) == "deleteFactsFromSource"
                    && m["input"] == json!({"environment": ENV_ID, "source": source})
            })
            .await;
    }
    let r = send(reqwest::Method::DELETE, "/problems/scanner%25x/php", "")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    consumer
        .wait_mutations("deleteProblemsFromSource scanner%x/php", 1, |m| {
            name(m) == "deleteProblemsFromSource"
                && m["input"]
                    == json!({"environment": ENV_ID, "source": "scanner%x", "service": "php"})
        })
        .await;

    let (_, errors) = consumer.recorded().await;
    assert!(errors.is_empty(), "the API refused nothing: {errors:?}");
    assert!(consumer.alive(), "the handler is still running");
    api.stop().await;
}

fn insights_cm(
    name: &str,
    ns: &str,
    kind: &str,
    env_label: &str,
    build: Option<(&str, &str)>,
    binary: Option<Vec<u8>>,
    text: Option<&str>,
) -> ConfigMap {
    let (file, insights_type) = match kind {
        "sbom" => ("cli.cyclonedx.json.gz", "sbom-gz"),
        _ => ("cli.image-inspect.json.gz", "image-gz"),
    };
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {
                "lagoon.sh/insightsType": insights_type,
                "insights.lagoon.sh/type": kind,
                "lagoon.sh/project": "demo-project",
                "lagoon.sh/environment": env_label,
                "lagoon.sh/service": "cli",
                "lagoon.sh/buildType": build.map_or("branch", |b| b.0),
            },
            "annotations": build.map(|b| json!({"lagoon.sh/branch": b.1})).unwrap_or(json!({})),
        },
        "binaryData": binary.map(|b| json!({ file: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b) })),
        "data": text.map(|t| json!({ file.trim_end_matches(".gz"): t })),
    }))
    .unwrap()
}

/// An SBOM ConfigMap carrying `sbom` as binary gzip (the usual case).
fn sbom_gz_cm(
    name: &str,
    ns: &str,
    env_label: &str,
    build: Option<(&str, &str)>,
    sbom: &[u8],
) -> ConfigMap {
    insights_cm(name, ns, "sbom", env_label, build, Some(gzip(sbom)), None)
}

/// Every ConfigMap kind the builds create, forwarded by the operator and
/// processed by the handler: SBOM and image inspect, branch and
/// pull-request builds, binary and text data, a CycloneDX 1.4 SBOM; and an
/// image inspect that would crash the handler is never published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_configmap_kind_ends_in_the_expected_api_calls() {
    let mut consumer = Consumer::start("cms").await;
    consumer
        .seed(ENV_ID, (7, "demo-project"), "main", "demo-project-main")
        .await;
    consumer
        .seed(43, (7, "demo-project"), "pr-5", "demo-project-pr-5")
        .await;
    consumer
        .seed(44, (7, "demo-project"), "feature", "demo-project-feature")
        .await;
    // One namespace per environment, as Lagoon makes them; an operator per
    // namespace (each test's operator is scoped to one).
    let client = client().await;
    let env_ns = |env: &str, id: &str| {
        let mut l = lagoon_labels(id);
        l.insert("lagoon.sh/environment".into(), env.into());
        l
    };
    let ns = TestNamespace::with_labels(&client, "e2e", env_ns("main", "42")).await;
    let ns_pr = TestNamespace::with_labels(&client, "e2e-pr", env_ns("pr-5", "43")).await;
    let ns_feature = TestNamespace::with_labels(&client, "e2e-ft", env_ns("feature", "44")).await;
    let mut ops = Vec::new();
    for n in [&ns, &ns_pr, &ns_feature] {
        ops.push(
            Operator::start(
                &client,
                OperatorOptions::forwarding(n, consumer.broker(), test_ops(), &unique("absent")),
            )
            .await,
        );
    }
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let cms_pr: Api<ConfigMap> = Api::namespaced(client.clone(), &ns_pr.name);
    let cms_feature: Api<ConfigMap> = Api::namespaced(client.clone(), &ns_feature.name);

    let fixture = std::fs::read(format!(
        "{}/../shared/fixtures/sbom.cyclonedx.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let image = std::fs::read(format!(
        "{}/../shared/fixtures/image-inspect.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mut sbom14: Value = serde_json::from_slice(&fixture).unwrap();
    sbom14["specVersion"] = json!("1.4");
    sbom14["metadata"]["tools"] =
        json!([{"vendor": "aquasecurity", "name": "trivy", "version": "0.50.0"}]);
    let mut broken_image: Value = serde_json::from_slice(&image).unwrap();
    broken_image["Env"] = json!(["PATH=/bin", "NO_EQUALS_SIGN"]);

    let cases = [
        // Branch build, SBOM as binary gzip (the usual case).
        (
            &cms,
            sbom_gz_cm("sbom-branch", &ns.name, "main", None, &fixture),
        ),
        // Pull-request build: the environment label names it, not the branch.
        (
            &cms_pr,
            insights_cm(
                "inspect-pr",
                &ns_pr.name,
                "inspect",
                "pr-5",
                Some(("pullrequest", "feature/x")),
                Some(gzip(&image)),
                None,
            ),
        ),
        // Branch build: the branch annotation names the environment.
        (
            &cms_feature,
            insights_cm(
                "inspect-branch-text",
                &ns_feature.name,
                "inspect",
                "feature",
                Some(("branch", "feature")),
                None,
                Some(std::str::from_utf8(&image).unwrap()),
            ),
        ),
        // CycloneDX 1.4 tools array, as text: normalised, not a crash loop.
        (
            &cms_pr,
            insights_cm(
                "sbom-14-text",
                &ns_pr.name,
                "sbom",
                "pr-5",
                Some(("pullrequest", "pr-5")),
                None,
                Some(&sbom14.to_string()),
            ),
        ),
    ];
    for (api, cm) in &cases {
        api.create(&PostParams::default(), cm).await.unwrap();
    }
    // Spoofs in main's namespace: the pull request's environment by label,
    // the feature branch's by annotation. Refused (src/identity.rs): the
    // consumer never writes them to those environments (checked below).
    let spoofs = [
        sbom_gz_cm(
            "spoof-label",
            &ns.name,
            "pr-5",
            Some(("pullrequest", "pr-5")),
            &fixture,
        ),
        sbom_gz_cm(
            "spoof-branch",
            &ns.name,
            "main",
            Some(("branch", "feature")),
            &fixture,
        ),
    ];
    for cm in &spoofs {
        cms.create(&PostParams::default(), cm).await.unwrap();
    }
    let broken = insights_cm(
        "inspect-broken",
        &ns.name,
        "inspect",
        "main",
        None,
        Some(gzip(broken_image.to_string().as_bytes())),
        None,
    );
    cms.create(&PostParams::default(), &broken).await.unwrap();
    // Two payload entries: the consumer would read one at random.
    let mut two = sbom_gz_cm("sbom-two", &ns.name, "main", None, &fixture);
    two.binary_data.as_mut().unwrap().insert(
        "other.cyclonedx.json.gz".into(),
        k8s_openapi::ByteString(gzip(&fixture)),
    );
    cms.create(&PostParams::default(), &two).await.unwrap();

    let added = |source: &'static str, env: i64| {
        move |m: &Value| {
            name(m) == "addFacts"
                && facts_of(m)
                    .first()
                    .is_some_and(|f| f["source"] == source && f["environment"] == env)
        }
    };
    let sbom_main = consumer
        .wait_mutations("SBOM facts for main", 1, added("insights:sbom:cli", ENV_ID))
        .await;
    assert!(
        facts_of(&sbom_main[0])
            .iter()
            .all(|f| f["environment"] == ENV_ID),
        "{sbom_main:?}"
    );
    consumer
        .wait_mutations("image facts for pr-5", 1, added("insights:image:cli", 43))
        .await;
    consumer
        .wait_mutations(
            "image facts from text data for the branch",
            1,
            added("insights:image:cli", 44),
        )
        .await;
    consumer
        .wait_mutations("SBOM 1.4 facts for pr-5", 1, added("insights:sbom:cli", 43))
        .await;
    // Each source's old facts were deleted first, with a real source name.
    let (mutations, errors) = consumer.recorded().await;
    let deletes: Vec<&Value> = mutations
        .iter()
        .filter(|m| name(m) == "deleteFactsFromSource")
        .collect();
    assert!(
        deletes.iter().all(|m| m["input"]["source"] != ""),
        "no delete with an empty source: {deletes:?}"
    );
    assert!(errors.is_empty(), "the API refused nothing: {errors:?}");

    // The crashing image inspect was refused, not published.
    let got = rejection(&cms, "inspect-broken").await;
    assert!(got.contains("not KEY=VALUE"), "{got}");
    let got = rejection(&cms, "sbom-two").await;
    assert!(got.contains("2 payload entries"), "{got}");
    let got = rejection(&cms, "spoof-label").await;
    assert!(got.contains("names another environment"), "{got}");
    let got = rejection(&cms, "spoof-branch").await;
    assert!(got.contains("names environment \"feature\""), "{got}");
    // None was published: only the four good ones reached the consumer
    // (it writes an image inspect's facts twice, so count destinations).
    let (mutations, _) = consumer.recorded().await;
    let destinations: std::collections::BTreeSet<(String, i64)> = mutations
        .iter()
        .filter(|m| name(m) == "addFacts")
        .flat_map(facts_of)
        .map(|f| {
            (
                f["source"].as_str().unwrap().to_string(),
                f["environment"].as_i64().unwrap(),
            )
        })
        .collect();
    let want: std::collections::BTreeSet<(String, i64)> = [
        ("insights:sbom:cli", ENV_ID),
        ("insights:image:cli", 43),
        ("insights:image:cli", 44),
        ("insights:sbom:cli", 43),
    ]
    .into_iter()
    .map(|(s, e)| (s.to_string(), e))
    .collect();
    assert_eq!(destinations, want, "{mutations:?}");
    assert!(consumer.alive(), "the handler did not crash");
    for op in ops {
        op.stop().await;
    }
    for n in [ns, ns_pr, ns_feature] {
        n.cleanup().await;
    }
}
