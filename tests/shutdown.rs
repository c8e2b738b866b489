//! SIGTERM: in-flight requests finish and get their confirms before the
//! process exits; nothing answered 200 is missing from the queue.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[tokio::test]
async fn sigterm_finishes_in_flight_requests() {
    let broker = isolated_broker("shutdown");
    let port = free_port();
    let mut child = api_binary(port, &broker)
        .args(["--log-level", "warn"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..100 {
        let state = match http.get(format!("{url}/readyz")).send().await {
            Ok(r) => r.json::<serde_json::Value>().await.ok(),
            Err(_) => None,
        };
        if state.is_some_and(|s| s["broker"] == "connected") {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "server ready");
    let token = ring().mint(&claims("ns", "7")).unwrap();
    let mut requests = Vec::new();
    for i in 0..40 {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        requests.push(tokio::spawn(async move {
            let body = serde_json::json!([{ "name": format!("f{i}"), "value": "v" }]).to_string();
            http.post(format!("{url}/facts"))
                .header("authorization", token)
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    // Let the requests reach the server, then ask it to stop.
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let (mut ok, mut refused) = (0, 0);
    for r in requests {
        match r.await.unwrap() {
            Ok(200) => ok += 1,
            Ok(s) => panic!("unexpected status {s}"),
            // Not yet read when the listener closed: refused, the client
            // retries; never an error status.
            Err(_) => refused += 1,
        }
    }
    println!("{ok} answered 200, {refused} refused before being read");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "clean exit: {status:?}");
    assert!(ok > 0, "requests in flight at SIGTERM were answered");
    let msgs = drain_all(&broker.queue).await;
    assert!(
        msgs.len() >= ok,
        "every 200 is in the queue: {} < {ok}",
        msgs.len()
    );
    println!(
        "{ok} in-flight requests answered 200 during shutdown, {} messages queued",
        msgs.len()
    );
    delete_queue(&broker.queue).await;
}
