//! A message over the broker's `max_message_size` (lowered here for the
//! whole broker, so this file holds a single test): the sender gets 413, the
//! broker's limit is learned so later ones are refused before publishing,
//! and the connection other tenants use is never dropped.

mod common;

use std::time::Duration;

use common::*;
use insights_remote::server::Limits;

const BROKER_MAX: usize = 1024 * 1024;

/// Restores the broker's default limit however the test ends.
struct RestoreLimit;

impl Drop for RestoreLimit {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args([
                "eval",
                "application:set_env(rabbit, max_message_size, 134217728).",
            ])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_refused_without_disturbing_others() {
    rabbitmqctl(&[
        "eval",
        &format!("application:set_env(rabbit, max_message_size, {BROKER_MAX})."),
    ]);
    let _restore = RestoreLimit;
    let mut settings = isolated_broker("brokermax");
    // Our own limit is above the broker's: only the broker can refuse.
    settings.max_message_bytes = 16 * 1024 * 1024;
    let queue = settings.queue.clone();
    let limits = Limits {
        body_bytes: 4 * 1024 * 1024,
        // Room for the three concurrent 1.5 MiB bodies (16x each) within
        // one environment's quarter of the budget, so only the broker's
        // limit refuses them.
        inflight_bytes: 320 * 1024 * 1024,
        ..Default::default()
    };
    let api = start_api_with(settings, limits, 0).await;
    let hostile = ring().mint(&claims("hostile", "1")).unwrap();
    let good = ring().mint(&claims("good", "2")).unwrap();
    let http = reqwest::Client::new();

    // A well-behaved tenant posts throughout.
    let tenant = tokio::spawn({
        let (http, url, good) = (http.clone(), api.url.clone(), good.clone());
        async move {
            let mut statuses = Vec::new();
            for i in 0..150 {
                let r = http
                    .post(format!("{url}/facts"))
                    .header("authorization", &good)
                    .body(format!(r#"[{{"name":"good-{i}"}}]"#))
                    .send()
                    .await
                    .unwrap();
                statuses.push(r.status().as_u16());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            statuses
        }
    });
    // 1.5 MiB messages, several at once.
    let big = format!(
        "[{}]",
        vec![format!(r#"{{"name":"big","value":"{}"}}"#, "x".repeat(1000)); 1500].join(",")
    );
    let mut hostile_statuses = Vec::new();
    for _ in 0..10 {
        let mut batch = Vec::new();
        for _ in 0..3 {
            batch.push(
                http.post(format!("{}/facts", api.url))
                    .header("authorization", &hostile)
                    .body(big.clone())
                    .send(),
            );
        }
        for r in futures::future::join_all(batch).await {
            let r = r.unwrap();
            let status = r.status().as_u16();
            let v: serde_json::Value = r.json().await.unwrap();
            if status == 413 {
                assert!(
                    v["message"].as_str().unwrap().contains("limit of 1048576"),
                    "{v}"
                );
            }
            hostile_statuses.push(status);
        }
    }
    let statuses = tenant.await.unwrap();
    assert!(
        hostile_statuses.iter().all(|s| *s == 413),
        "every oversized message gets 413: {hostile_statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200),
        "the other tenant is served throughout: {statuses:?}"
    );
    let got = drain(&queue, 151, Duration::from_secs(10)).await;
    let names: std::collections::HashSet<_> = got
        .iter()
        .map(|m| m["facts"][0]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 150, "every 200 is in the queue");
    assert!(!names.contains("big"));
    assert_eq!(
        api.metrics.broker_connections.get(),
        1,
        "the connection was never dropped"
    );
    // Only the first concurrent batch (3 messages, sent before the limit
    // was known) can close a channel; every later one is refused here.
    assert!(api.metrics.broker_channels.get() <= 4);
    println!(
        "oversized: {} refused with 413; channels opened: {}",
        hostile_statuses.len(),
        api.metrics.broker_channels.get()
    );
    delete_queue(&queue).await;
    api.stop().await;
}
