//! The process as `main` wires it: `App::build` from command-line settings,
//! then `App::serve` until shutdown. The same wiring the binary runs, in
//! process, so a test can end it and look at the outcome.

mod common;

use std::time::Duration;

use clap::Parser;
use common::cluster::wait_for;
use common::*;
use insights_remote::run::App;
use insights_remote::settings::{normalize_args, Cli};

fn args(broker: &insights_remote::broker::BrokerSettings) -> Cli {
    // Port 0: the OS chooses, and the app says which.
    let mut a = vec!["insights-remote".to_string()];
    a.extend(api_args(0, broker));
    a.extend(
        ["--metrics-secure=false", "--insights-token-secret", KEY]
            .iter()
            .map(|s| s.to_string()),
    );
    Cli::parse_from(normalize_args(a))
}

#[tokio::test]
async fn built_app_serves_confirmed_facts_and_stops_on_shutdown() {
    let broker = isolated_broker("app");
    let app = App::build(&args(&broker).run).await.unwrap();
    let addr = app.ingestion_addr.expect("ingestion API enabled");
    assert_ne!(addr.port(), 0, "the OS chose a port, no bind-and-drop race");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(app.serve(async {
        let _ = stopped.await;
    }));
    let token = ring().mint(&claims("app-ns", "42")).unwrap();
    let status = wait_for("a confirmed fact", Duration::from_secs(20), || async {
        let r = reqwest::Client::new()
            .post(format!("http://{addr}/facts"))
            .header("authorization", &token)
            .body(r#"[{"name":"n","value":"v"}]"#)
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(200)
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
