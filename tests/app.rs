//! The process as `main` wires it: `App::build` from command-line settings,
//! then `App::serve` until shutdown. The same wiring the binary runs, in
//! process, so a test can end it and look at the outcome.

mod common;

use std::time::Duration;

use clap::Parser;
use common::cluster::wait_for;
use common::*;
use insights_remote::run::App;
use insights_remote::settings::{normalize_args, Cli, Settings};

fn args(broker: &insights_remote::broker::BrokerSettings, extra: &[&str]) -> Cli {
    // Port 0: the OS chooses, and the app says which.
    let mut a = vec!["insights-remote".to_string()];
    a.extend(api_args(0, broker));
    a.extend(
        ["--metrics-secure=false", "--insights-token-secret", KEY]
            .iter()
            .chain(extra)
            .map(|s| s.to_string()),
    );
    Cli::parse_from(normalize_args(a))
}

async fn post_fact(addr: std::net::SocketAddr, token: &str) -> Option<reqwest::StatusCode> {
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/facts"))
        .header("authorization", token)
        .body(r#"[{"name":"n","value":"v"}]"#)
        .send()
        .await
        .ok()?;
    Some(r.status())
}

#[tokio::test]
async fn built_app_serves_confirmed_facts_and_stops_on_shutdown() {
    let broker = isolated_broker("app");
    let app = App::build(Settings::from_args(&args(&broker, &[]).run).unwrap())
        .await
        .unwrap();
    let addr = app.ingestion_addr.expect("ingestion API enabled");
    assert_ne!(addr.port(), 0, "the OS chose a port, no bind-and-drop race");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(app.serve(async {
        let _ = stopped.await;
    }));
    let token = ring().mint(&claims("app-ns", "42")).unwrap();
    let status = wait_for("a confirmed fact", Duration::from_secs(20), || async {
        (post_fact(addr, &token).await? == 200).then_some(200)
    })
    .await;
    assert_eq!(status, 200);
    let got = drain(&broker.queue, 1, Duration::from_secs(10)).await;
    assert_eq!(got[0]["environment"], 42);
    stop.send(()).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), served)
        .await
        .expect("stops within the grace period")
        .unwrap();
    assert!(outcome.is_ok(), "a clean shutdown: {outcome:?}");
    assert!(
        reqwest::get(format!("http://{addr}/healthz"))
            .await
            .is_err(),
        "the listener is closed"
    );
    delete_queue(&broker.queue).await;
}

/// With a shutdown delay, SIGTERM takes the replica out of the Service
/// first: /readyz answers 503 "stopping" while posts are still answered
/// and confirmed, then the listener closes when the delay ends.
#[tokio::test]
async fn the_shutdown_delay_keeps_serving_while_readiness_fails() {
    let broker = isolated_broker("drain");
    let app =
        App::build(Settings::from_args(&args(&broker, &["--shutdown-delay", "4s"]).run).unwrap())
            .await
            .unwrap();
    let addr = app.ingestion_addr.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(app.serve(async {
        let _ = stopped.await;
    }));
    let token = ring().mint(&claims("drain-ns", "43")).unwrap();
    wait_for("a confirmed fact", Duration::from_secs(20), || async {
        (post_fact(addr, &token).await? == 200).then_some(())
    })
    .await;
    let ready = |addr| async move { reqwest::get(format!("http://{addr}/readyz")).await };
    assert_eq!(ready(addr).await.unwrap().status(), 200);
    stop.send(()).unwrap();
    let body = wait_for("readiness failing", Duration::from_secs(3), || async {
        let r = ready(addr).await.ok()?;
        (r.status() == 503).then_some(r.text().await.ok()?)
    })
    .await;
    assert!(body.contains("stopping"), "{body}");
    assert_eq!(
        post_fact(addr, &token).await,
        Some(reqwest::StatusCode::OK),
        "still served while draining"
    );
    let got = drain(&broker.queue, 2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2, "both posts confirmed in the queue");
    let outcome = tokio::time::timeout(Duration::from_secs(30), served)
        .await
        .expect("stops after the delay")
        .unwrap();
    assert!(outcome.is_ok(), "{outcome:?}");
    assert!(ready(addr).await.is_err(), "the listener is closed");
    delete_queue(&broker.queue).await;
}
