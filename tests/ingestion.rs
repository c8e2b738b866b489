//! The ingestion API against the real RabbitMQ: what lands in the queue for
//! every route, and what bad input gets.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use common::*;
use insights_remote::broker::BrokerSettings;
use serde_json::{json, Value};

const MIB: usize = 1024 * 1024;

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn token(ns: &str, env_id: &str) -> String {
    ring().mint(&claims(ns, env_id)).unwrap()
}

async fn post(
    api: &Api,
    path: &str,
    auth: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut req = client()
        .post(format!("{}{path}", api.url))
        .header("content-type", "application/json")
        .body(body);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn facts_array_publishes_the_contract_shape_with_identity_from_the_token() {
    let settings = isolated_broker("facts");
    let queue = settings.queue.clone();
    let api = start_api(settings, MIB, 0).await;
    let t = token("demo-project-main", "42");
    // The body claims another environment and project: ignored.
    let body = json!([
        {"name": "drupal-version", "value": "10.3.6", "source": "", "description": "Drupal core",
         "type": "SEMVER", "category": "Framework", "service": "cli",
         "environment": "999", "projectName": "evil", "environmentName": "other"},
        {"name": "php", "value": "8.3", "source": "lagoon-facts"}
    ]);
    let resp = post(&api, "/facts", Some(&t), body.to_string()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "application/json",
        "the answer is JSON, as the Go original's"
    );
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"message": "okay"})
    );

    // one message per request
    let got = drain_exactly(&queue, 1, Duration::from_secs(5)).await;
    assert_eq!(
        got[0],
        json!({
            "type": "direct.facts",
            "environment": 42,
            "projectName": "demo-project",
            "environmentName": "main",
            "facts": [
                {"environment": "42", "projectName": "demo-project", "environmentName": "main",
                 "name": "drupal-version", "value": "10.3.6", "source": "InsightsRemoteWebService",
                 "description": "Drupal core", "type": "SEMVER", "category": "Framework", "service": "cli"},
                {"environment": "42", "projectName": "demo-project", "environmentName": "main",
                 "name": "php", "value": "8.3", "source": "lagoon-facts",
                 "description": "", "type": "TEXT", "category": "", "service": ""}
            ]
        })
    );
    api.stop().await;
}

#[tokio::test]
async fn facts_object_body_and_bearer_token_are_accepted() {
    let settings = isolated_broker("factsobj");
    let queue = settings.queue.clone();
    let api = start_api(settings, MIB, 0).await;
    let t = format!("  Bearer {}  ", token("ns-a", "7"));
    let body = json!({"facts": [{"name": "n", "value": "v", "source": "s", "type": "URL"}], "extra": true});
    let resp = post(&api, "/facts", Some(&t), body.to_string()).await;
    assert_eq!(resp.status(), 200);
    let got = drain(&queue, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["environment"], json!(7));
    assert_eq!(got[0]["facts"][0]["environment"], json!("7"));
    assert_eq!(got[0]["facts"][0]["type"], json!("URL"));
    api.stop().await;
}

#[tokio::test]
async fn problems_publish_with_optional_fields_omitted() {
    let settings = isolated_broker("problems");
    let queue = settings.queue.clone();
    let api = start_api(settings, MIB, 0).await;
    let t = token("demo-project-main", "42");
    let body = json!([
        {"identifier": "CVE-2024-1", "version": "1.0", "fixedVersion": "1.1", "source": "trivy",
         "service": "cli", "data": "{}", "severity": "HIGH", "severityScore": 7.5,
         "associatedPackage": "openssl", "description": "bad", "links": "https://x", "environment": 5},
        {"identifier": "CVE-2024-2", "severity": "LOW"}
    ]);
    let resp = post(&api, "/problems", Some(&t), body.to_string()).await;
    assert_eq!(resp.status(), 200);
    let got = drain(&queue, 1, Duration::from_secs(5)).await;
    assert_eq!(
        got[0],
        json!({
            "type": "direct.problems",
            "environment": 42,
            "projectName": "demo-project",
            "environmentName": "main",
            "problems": [
                {"environment": 42, "identifier": "CVE-2024-1", "version": "1.0", "fixedVersion": "1.1",
                 "source": "trivy", "service": "cli", "data": "{}", "severity": "HIGH",
                 "severityScore": 7.5, "associatedPackage": "openssl", "description": "bad",
                 "links": "https://x"},
                {"environment": 42, "identifier": "CVE-2024-2", "source": "InsightsRemoteWebService",
                 "severity": "LOW"}
            ]
        })
    );
    api.stop().await;
}

#[tokio::test]
async fn deletes_publish_source_and_service() {
    let settings = isolated_broker("deletes");
    let queue = settings.queue.clone();
    let api = start_api(settings, MIB, 0).await;
    let t = token("demo-project-main", "42");
    for path in [
        "/facts/trivy",
        "/facts/trivy/cli",
        "/problems/drutiny",
        "/problems/drutiny/php",
    ] {
        let resp = client()
            .delete(format!("{}{path}", api.url))
            .header("authorization", &t)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    let got = drain(&queue, 4, Duration::from_secs(5)).await;
    assert_eq!(
        got,
        vec![
            json!({"type": "direct.delete.facts", "environment": 42, "source": "trivy", "service": ""}),
            json!({"type": "direct.delete.facts", "environment": 42, "source": "trivy", "service": "cli"}),
            json!({"type": "direct.delete.problems", "environment": 42, "source": "drutiny", "service": ""}),
            json!({"type": "direct.delete.problems", "environment": 42, "source": "drutiny", "service": "php"}),
        ]
    );
    api.stop().await;
}

/// The Go original signs with jwt-go: HS256, the four claims, no iat/exp.
fn go_original_token(key: &str) -> String {
    use josekit::jws::{JwsSigner, HS256};
    let header = B64.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = B64.encode(
        r#"{"EnvironmentId":"42","EnvironmentName":"main","Namespace":"demo-project-main","ProjectName":"demo-project"}"#,
    );
    let input = format!("{header}.{payload}");
    let sig = HS256
        .signer_from_bytes(key.as_bytes())
        .unwrap()
        .sign(input.as_bytes())
        .unwrap();
    format!("{input}.{}", B64.encode(sig))
}

#[tokio::test]
async fn go_original_token_is_accepted() {
    let settings = isolated_broker("gotoken");
    let queue = settings.queue.clone();
    let api = start_api(settings, MIB, 0).await;
    let resp = post(
        &api,
        "/facts",
        Some(&go_original_token(KEY)),
        r#"[{"name":"a","value":"b"}]"#,
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(drain(&queue, 1, Duration::from_secs(5)).await.len(), 1);
    api.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_publishes_nothing() {
    let settings = isolated_broker("badinput");
    let queue = settings.queue.clone();
    let api = start_api(settings, 4096, 0).await;
    let good = token("demo-project-main", "42");
    let alg_none = {
        let h = B64.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let p = B64.encode(
            r#"{"EnvironmentId":"42","EnvironmentName":"main","Namespace":"n","ProjectName":"p"}"#,
        );
        format!("{h}.{p}.")
    };
    let forged = go_original_token("a-different-key-that-is-long-enough!!");
    let not_int = ring().mint(&claims("ns", "forty-two")).unwrap();
    let facts = r#"[{"name":"a","value":"b"}]"#;
    let cases: Vec<(&str, Option<String>, String, u16)> = vec![
        ("no token", None, facts.into(), 401),
        ("empty token", Some("".into()), facts.into(), 401),
        ("alg none", Some(alg_none), facts.into(), 401),
        ("forged", Some(forged), facts.into(), 401),
        (
            "truncated",
            Some(good[..good.len() - 4].to_string()),
            facts.into(),
            401,
        ),
        ("long header", Some("x".repeat(6 * 1024)), facts.into(), 401),
        (
            "head over the 8 KiB limit",
            Some("x".repeat(16 * 1024)),
            facts.into(),
            431,
        ),
        (
            "malformed json",
            Some(good.clone()),
            "[{\"name\":".into(),
            400,
        ),
        ("not json", Some(good.clone()), "hello".into(), 400),
        (
            "value not a string",
            Some(good.clone()),
            r#"[{"name":"a","value":5}]"#.into(),
            400,
        ),
        // An unknown fact type is stored as TEXT, as Lagoon core's consumer
        // does (tests/consumer.rs), so it is no longer a 400.
        (
            "fact without name",
            Some(good.clone()),
            r#"[{"value":"b"}]"#.into(),
            400,
        ),
        (
            "object without facts",
            Some(good.clone()),
            r#"{"name":"a"}"#.into(),
            400,
        ),
        (
            "deep nesting",
            Some(good.clone()),
            format!("{}{}", "[".repeat(1500), "]".repeat(1500)),
            400,
        ),
        (
            "oversized",
            Some(good.clone()),
            format!("[{{\"name\":\"a\",\"value\":\"{}\"}}]", "x".repeat(5000)),
            413,
        ),
        ("env id not an integer", Some(not_int), facts.into(), 400),
    ];
    for (what, auth, body, want) in cases {
        let resp = post(&api, "/facts", auth.as_deref(), body).await;
        let status = resp.status().as_u16();
        let retry = resp.headers().get("retry-after").is_some();
        let text = resp.text().await.unwrap();
        assert_eq!(status, want, "{what}: {text}");
        assert!(!retry, "{what}");
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{what}: JSON error body, got {text}"));
        assert!(
            v["status"].is_string() && v["message"].is_string(),
            "{what}: {v}"
        );
        assert!(
            !text.contains(&good[20..60]),
            "{what}: the token must not be echoed"
        );
    }
    // Problems: wrong types and bad severity.
    for (body, want) in [
        (r#"[{"identifier":"x","severity":"SEVERE"}]"#, 400),
        (r#"[{"identifier":"x","severityScore":"high"}]"#, 400),
        (r#"{"identifier":"x"}"#, 400),
    ] {
        let resp = post(&api, "/problems", Some(&good), body).await;
        assert_eq!(resp.status().as_u16(), want, "{body}");
    }
    // Invalid UTF-8.
    let resp = post(&api, "/facts", Some(&good), vec![b'[', 0xff, 0xfe, b']']).await;
    assert_eq!(resp.status(), 400);
    // Unknown route and wrong method: JSON 404/405, never 500.
    let resp = client()
        .get(format!("{}/facts", api.url))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error());
    // Nothing reached the queue. A request is answered only after its
    // publish is confirmed (publish_confirmed), so the answers above are the
    // signal: anything published would be in the queue already.
    assert_eq!(queue_depth(&queue).await, 0);
    api.stop().await;
}

#[tokio::test]
async fn rate_limit_is_per_environment() {
    let settings = isolated_broker("ratelimit");
    let api = start_api(settings, MIB, 2).await;
    let a = token("ns-a", "1");
    let b = token("ns-b", "2");
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let r = post(&api, "/facts", Some(&a), r#"[{"name":"a","value":"b"}]"#).await;
        if r.status() == 429 {
            assert!(r.headers().get("retry-after").is_some());
        }
        statuses.push(r.status().as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        4,
        "burst is twice the rate: {statuses:?}"
    );
    let r = post(&api, "/facts", Some(&b), r#"[{"name":"a","value":"b"}]"#).await;
    assert_eq!(r.status(), 200, "another environment is not limited");
    api.stop().await;
}

/// With the contract's default names the message lands in
/// `lagoon-insights:items`, persistent, JSON, with a message id.
#[tokio::test]
async fn default_exchange_and_queue_receive_persistent_json() {
    let settings = BrokerSettings {
        host: broker_host(),
        reconnect_interval: Duration::from_millis(500),
        ..Default::default()
    };
    assert_eq!(settings.exchange, "lagoon-insights");
    assert_eq!(settings.queue, "lagoon-insights:items");
    let api = start_api(settings, MIB, 0).await;
    purge("lagoon-insights:items").await;
    let name = unique("fact");
    let body = json!([{"name": name, "value": "v"}]).to_string();
    let r = post(&api, "/facts", Some(&token("ns", "3")), body).await;
    assert_eq!(r.status(), 200);

    let conn = lapin::Connection::connect(&amqp_uri(), Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let msg = ch
        .basic_get("lagoon-insights:items".into(), Default::default())
        .await
        .unwrap()
        .expect("message in lagoon-insights:items");
    let props = &msg.delivery.properties;
    assert_eq!(*props.delivery_mode(), Some(2));
    assert_eq!(
        props.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert!(props.message_id().is_some());
    assert_eq!(msg.delivery.routing_key.as_str(), "");
    assert_eq!(msg.delivery.exchange.as_str(), "lagoon-insights");
    let v: Value = serde_json::from_slice(&msg.delivery.data).unwrap();
    assert_eq!(v["facts"][0]["name"], json!(name));
    msg.delivery.ack(Default::default()).await.unwrap();
    api.stop().await;
}

/// Readiness stays true while the broker is away (the replica keeps
/// answering, with 503 and Retry-After); the body says the broker's state.
#[tokio::test]
async fn readyz_stays_ready_and_reports_the_broker() {
    let settings = isolated_broker("ready");
    let api = start_api(settings, MIB, 0).await;
    let ready = || async {
        let r = client()
            .get(format!("{}/readyz", api.url))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(
        ready().await,
        (200, json!({"status": "ok", "broker": "connected"}))
    );
    // Point the publisher at a port where nothing listens: still ready, and
    // posts get 503 with Retry-After rather than hanging.
    api.publisher.reconfigure(BrokerSettings {
        host: "127.0.0.1:1".into(),
        ..isolated_broker("ready2")
    });
    let mut state = ready().await;
    for _ in 0..50 {
        if state.1["broker"] == "disconnected" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        state = ready().await;
    }
    assert_eq!(
        state,
        (200, json!({"status": "ok", "broker": "disconnected"}))
    );
    let r = post(
        &api,
        "/facts",
        Some(&token("ns", "1")),
        r#"[{"name":"a","value":"b"}]"#,
    )
    .await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "unavailable");
    assert!(
        !v["message"].as_str().unwrap().contains("127.0.0.1"),
        "internal detail stays in the log: {v}"
    );
    api.stop().await;
}

/// Publishes are mandatory: if no queue is bound (someone removed the
/// binding), the broker returns the message and the client gets 503, not a
/// 200 for a message that went nowhere.
#[tokio::test]
async fn unroutable_message_is_not_reported_as_sent() {
    let settings = isolated_broker("unroutable");
    let (exchange, queue) = (settings.exchange.clone(), settings.queue.clone());
    let api = start_api(settings, MIB, 0).await;
    let t = token("ns", "1");
    assert_eq!(
        post(&api, "/facts", Some(&t), r#"[{"name":"a","value":"b"}]"#)
            .await
            .status(),
        200
    );
    let conn = lapin::Connection::connect(&amqp_uri(), Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_unbind(
        queue.as_str().into(),
        exchange.as_str().into(),
        "".into(),
        Default::default(),
    )
    .await
    .unwrap();
    let r = post(&api, "/facts", Some(&t), r#"[{"name":"lost","value":"b"}]"#).await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert!(v["message"].as_str().unwrap().contains("refused"), "{v}");
    assert!(!v["message"].as_str().unwrap().contains("bound"), "{v}");
    let _ = conn.close(200, "done".into()).await;
    delete_queue(&queue).await;
    api.stop().await;
}
