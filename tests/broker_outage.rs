//! RabbitMQ stopped and started again under load: clients get 503 with
//! Retry-After meanwhile, the publisher recovers by itself, and every request
//! that got 200 is in the queue. Runs alone in its own test binary because it
//! stops the shared broker.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::cluster::*;
use common::*;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ListParams, PostParams};
use kube::Api;
use serde_json::json;

fn rabbitmqctl(arg: &str) {
    let out = Command::new("rabbitmqctl")
        .arg(arg)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {arg}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_loses_nothing_that_got_200() {
    let mut settings = isolated_broker("outage");
    // Shorter than the outage, so in-flight requests give up with 503
    // instead of riding the outage out.
    settings.confirm_timeout = Duration::from_secs(2);
    let queue = settings.queue.clone();
    let api = start_api(settings, 1 << 20, 0).await;
    let token = ring().mint(&claims("demo-project-main", "42")).unwrap();
    let url = format!("{}/facts", api.url);
    let stop = Arc::new(AtomicBool::new(false));

    // The operator forwards ConfigMaps created all through the outage.
    let client = client().await;
    let ns = TestNamespace::new(&client, "outage").await;
    let mut op_broker = isolated_broker("outage-cm");
    op_broker.confirm_timeout = Duration::from_secs(2);
    let cm_queue = op_broker.queue.clone();
    let mut ops = test_ops();
    ops.mins_between_retries = 0;
    ops.max_retries = 1000;
    let op = Operator::start(
        &client,
        OperatorOptions {
            broker: op_broker,
            ops,
            namespace: ns.name.clone(),
            config_name: unique("irc"),
            forward: true,
            tokens: false,
        },
    )
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let creator = {
        let (cms, stop) = (cms.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let cm = numbered_insights_cm(n);
                cms.create(&PostParams::default(), &cm).await.unwrap();
                n += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            n
        })
    };

    let mut clients = Vec::new();
    for c in 0..4 {
        let (url, token, stop) = (url.clone(), token.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let (mut ok, mut unavailable, mut other) = (Vec::new(), 0u32, Vec::new());
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let name = format!("c{c}-{i}");
                let r = http
                    .post(&url)
                    .header("authorization", &token)
                    .body(json!([{"name": name, "value": "v"}]).to_string())
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                    .unwrap();
                match r.status().as_u16() {
                    200 => ok.push(name),
                    503 => {
                        assert_eq!(r.headers()["retry-after"], "5");
                        unavailable += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    s => other.push(s),
                }
            }
            (ok, unavailable, other)
        }));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbitmqctl("stop_app");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let down_ready = reqwest::get(format!("{}/readyz", api.url)).await.unwrap();
    let down_ready = (
        down_ready.status(),
        down_ready.json::<serde_json::Value>().await.unwrap(),
    );
    rabbitmqctl("start_app");
    // Recovery must happen by itself.
    assert!(
        api.publisher.wait_connected(Duration::from_secs(60)).await,
        "publisher reconnects after the broker returns"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);

    let created = creator.await.unwrap();
    wait_for(
        "every ConfigMap processed",
        Duration::from_secs(90),
        || async {
            let n = cms
                .list_metadata(&ListParams::default().labels("lagoon.sh/insightsProcessed"))
                .await
                .ok()?
                .items
                .len();
            (n == created).then_some(())
        },
    )
    .await;
    let forwarded = drain_all(&cm_queue).await;
    let ids: HashSet<&str> = forwarded
        .iter()
        .map(|m| m["labels"]["test-id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids.len(),
        created,
        "every ConfigMap marked processed is in the queue"
    );
    let deferred = op.ctx.counters.deferred.load(Ordering::Relaxed);
    println!("outage: {created} ConfigMaps created, all processed and queued ({} messages); {deferred} deferrals during the outage", forwarded.len());
    assert!(
        deferred > 0,
        "ConfigMaps were deferred while the broker was down"
    );
    op.stop().await;
    delete_queue(&cm_queue).await;
    ns.cleanup().await;

    let mut ok = Vec::new();
    let mut unavailable = 0;
    for c in clients {
        let (o, u, other) = c.await.unwrap();
        assert!(other.is_empty(), "only 200 or 503 expected, got {other:?}");
        ok.extend(o);
        unavailable += u;
    }
    println!(
        "outage: {} requests got 200, {unavailable} got 503",
        ok.len()
    );
    // Readiness keeps the replica in the Service: callers get 503 with
    // Retry-After from it rather than connection errors.
    assert_eq!(down_ready.0, 200, "still ready while the broker is down");
    assert_eq!(down_ready.1["broker"], "disconnected");
    assert!(unavailable > 0, "clients saw 503 during the outage");

    let got = drain_all(&queue).await;
    let names: HashSet<String> = got
        .iter()
        .map(|m| m["facts"][0]["name"].as_str().unwrap().to_string())
        .collect();
    let missing: Vec<_> = ok.iter().filter(|n| !names.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "{} confirmed requests missing from the queue: {missing:?}",
        missing.len()
    );
    println!(
        "queue held {} messages ({} duplicates allowed)",
        got.len(),
        got.len() - names.len()
    );
    // And the service works again after recovery.
    let r = reqwest::Client::new()
        .post(&url)
        .header("authorization", &token)
        .body(r#"[{"name":"after","value":"v"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    delete_queue(&queue).await;
    api.stop().await;
}
