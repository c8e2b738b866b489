//! What an admin or a tool reads: the OpenAPI document matches the routes,
//! and /metrics moves after a forward and a request.

mod common;

use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use common::cluster::*;
use common::*;
use insights_remote::server::{self, ApiState};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use serde_json::Value;
use tokio::sync::watch;

#[tokio::test]
async fn openapi_document_matches_the_routes() {
    let api = start_api(isolated_broker("openapi"), 1 << 20, 0).await;
    let doc: Value = reqwest::get(format!("{}/openapi.json", api.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    assert_eq!(
        documented,
        [
            "DELETE /facts/{source}",
            "DELETE /facts/{source}/{service}",
            "DELETE /problems/{source}",
            "DELETE /problems/{source}/{service}",
            "GET /healthz",
            "GET /readyz",
            "POST /facts",
            "POST /problems",
        ]
    );
    // Every documented operation is served (no 404/405), and what is not
    // documented is not served.
    let http = reqwest::Client::new();
    for op in &documented {
        let (method, path) = op.split_once(' ').unwrap();
        let url = format!(
            "{}{}",
            api.url,
            path.replace("{source}", "src").replace("{service}", "svc")
        );
        let status = http
            .request(method.parse().unwrap(), &url)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert!(status != 404 && status != 405, "{op}: {status}");
    }
    for (method, path) in [
        ("GET", "/facts"),
        ("PUT", "/facts"),
        ("POST", "/facts/x"),
        ("GET", "/metrics"),
        ("DELETE", "/facts"),
    ] {
        let status = http
            .request(method.parse().unwrap(), format!("{}{path}", api.url))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert!(
            status == 404 || status == 405,
            "{method} {path} is not an API route: {status}"
        );
    }
    // The token scheme and the schemas are described.
    assert_eq!(
        doc["components"]["securitySchemes"]["token"]["name"],
        "Authorization"
    );
    for schema in ["Fact", "Problem", "FactsBody", "ErrorBody", "OkBody"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
    api.stop().await;
}

fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(labels) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_move_after_a_forward_and_a_request() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "metrics").await;
    let broker = isolated_broker("metrics");
    let op = Operator::start(
        &client,
        OperatorOptions::forwarding(&ns, broker.clone(), test_ops(), &unique("irc")).with_tokens(),
    )
    .await;
    // The operator's metrics behind the ops server and an ingestion server.
    let (_keys_tx, keys) = watch::channel(Arc::new(ring()));
    let state = web::Data::new(ApiState::new(
        keys,
        Some(op.publisher.clone()),
        op.metrics.clone(),
        Default::default(),
        0,
    ));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let ops_srv = server::ops_server(state.clone(), &[addr], true)
        .unwrap()
        .unwrap();
    let ops_handle = ops_srv.handle();
    tokio::spawn(ops_srv);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api_url = format!("http://{}", listener.local_addr().unwrap());
    let api_srv = server::ingestion_server(state, listener).unwrap();
    let api_handle = api_srv.handle();
    tokio::spawn(api_srv);

    let scrape = || async {
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let before = scrape().await;
    assert_eq!(
        metric(
            &before,
            "insights_remote_configmaps_total",
            "outcome=\"forwarded\""
        ),
        0.0
    );

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let cm = fixture_configmap("configmap-sbom.json", &ns.name);
    cms.create(&PostParams::default(), &cm).await.unwrap();
    wait_for("forwarded", Duration::from_secs(30), || async {
        cms.get(&cm.name_any())
            .await
            .ok()
            .filter(|c| c.labels().contains_key("lagoon.sh/insightsProcessed"))
    })
    .await;
    let token = ring().mint(&claims(&ns.name, "42")).unwrap();
    let r = reqwest::Client::new()
        .post(format!("{api_url}/facts"))
        .header("authorization", token)
        .body(r#"[{"name":"a","value":"b"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = reqwest::Client::new()
        .post(format!("{api_url}/facts"))
        .body("[]")
        .send()
        .await
        .unwrap();

    let after = wait_for("token counted", Duration::from_secs(20), || async {
        let t = scrape().await;
        (metric(&t, "insights_remote_tokens_minted_total", "") >= 1.0).then_some(t)
    })
    .await;
    assert_eq!(
        metric(
            &after,
            "insights_remote_configmaps_total",
            "outcome=\"forwarded\""
        ),
        1.0
    );
    assert_eq!(
        metric(
            &after,
            "insights_remote_publishes_total",
            "outcome=\"confirmed\""
        ),
        2.0
    );
    assert_eq!(
        metric(&after, "insights_remote_publish_duration_seconds_count", ""),
        2.0
    );
    assert_eq!(metric(&after, "insights_remote_broker_connected", ""), 1.0);
    assert_eq!(metric(&after, "insights_remote_confirms_pending", ""), 0.0);
    assert!(
        metric(
            &after,
            "insights_remote_reconciliations_total",
            "controller=\"configmap\""
        ) >= 1.0
    );
    assert!(
        metric(
            &after,
            "insights_remote_reconcile_duration_seconds_count",
            "controller=\"namespace\""
        ) >= 1.0
    );
    assert_eq!(
        metric(
            &after,
            "insights_remote_http_requests_total",
            "route=\"/facts\",status=\"200\""
        ),
        1.0
    );
    assert_eq!(
        metric(
            &after,
            "insights_remote_http_requests_total",
            "route=\"/facts\",status=\"401\""
        ),
        1.0
    );
    assert!(after.contains("insights_remote_http_request_duration_seconds_bucket"));
    let _ = drain_all(&broker.queue).await;
    api_handle.stop(true).await;
    ops_handle.stop(true).await;
    op.stop().await;
    ns.cleanup().await;
}
