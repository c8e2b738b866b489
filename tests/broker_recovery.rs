//! The broker going away and coming back, or hanging: the API answers 503
//! with Retry-After quickly, and serves again soon after the broker returns.
//! Each test stops the whole broker, so they run one at a time.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use tokio::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

async fn post(url: &str, token: &str, name: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{url}/facts"))
        .header("authorization", token)
        .body(format!(r#"[{{"name":"{name}"}}]"#))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap()
}

/// After a 10 s outage the first 200 comes within 2 s of the broker's
/// return (an exponential backoff would be sleeping for several seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_again_soon_after_the_broker_returns() {
    let _one = ONE_AT_A_TIME.lock().await;
    let settings = isolated_broker("recovery");
    let queue = settings.queue.clone();
    let api = start_api(settings, 1 << 20, 0).await;
    let t = ring().mint(&claims("ns", "1")).unwrap();
    assert_eq!(post(&api.url, &t, "before").await.status(), 200);
    rabbitmqctl(&["stop_app"]);
    let down = Instant::now();
    // 503 with Retry-After while it is away.
    let r = post(&api.url, &t, "during").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v["message"], "the message broker is unavailable; retry later",
        "no internal detail in the answer"
    );
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(down.elapsed())).await;
    rabbitmqctl(&["start_app"]);
    let back = Instant::now();
    let mut recovered = None;
    while back.elapsed() < Duration::from_secs(30) {
        if post(&api.url, &t, "after").await.status() == 200 {
            recovered = Some(back.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovered = recovered.expect("serves again after the broker returns");
    println!("recovery: first 200 {recovered:?} after start_app returned");
    assert!(recovered < Duration::from_secs(2), "took {recovered:?}");
    purge(&queue).await;
    delete_queue(&queue).await;
    api.stop().await;
}

fn broker_pids() -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-f", "beam.smp"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn signal(sig: &str, pids: &[String]) {
    for p in pids {
        let _ = Command::new("kill").args([sig, p]).status();
    }
}

/// Resumes the broker however the test ends.
struct Resume(Vec<String>);

impl Drop for Resume {
    fn drop(&mut self) {
        signal("-CONT", &self.0);
    }
}

/// A hung broker (SIGSTOP): the first request gets 503 at the confirm
/// timeout, the ones after it at once; after SIGCONT it serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_broker_is_answered_quickly() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut settings = isolated_broker("hung");
    settings.confirm_timeout = Duration::from_secs(2);
    let queue = settings.queue.clone();
    let api = start_api(settings, 1 << 20, 0).await;
    let t = ring().mint(&claims("ns", "1")).unwrap();
    assert_eq!(post(&api.url, &t, "before").await.status(), 200);
    let pids = broker_pids();
    assert!(!pids.is_empty(), "found the broker's process");
    signal("-STOP", &pids);
    let resume = Resume(pids);

    let started = Instant::now();
    let first = post(&api.url, &t, "hung-1").await;
    let first_took = started.elapsed();
    assert_eq!(first.status(), 503);
    assert_eq!(first.headers()["retry-after"], "5");
    assert!(
        first_took < Duration::from_secs(4),
        "first 503 after {first_took:?}"
    );
    // The connection was dropped as hung: the next request is answered at once.
    let mut quick = None;
    for _ in 0..50 {
        let s = Instant::now();
        let r = post(&api.url, &t, "hung-2").await;
        assert_eq!(r.status(), 503);
        if s.elapsed() < Duration::from_millis(500) {
            quick = Some(s.elapsed());
            break;
        }
    }
    let quick = quick.expect("later requests are answered without waiting for a confirm");
    println!("hung broker: first 503 after {first_took:?}, then {quick:?}");
    drop(resume);
    let mut ok = false;
    for _ in 0..300 {
        if post(&api.url, &t, "after").await.status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "serves again once the broker resumes");
    purge(&queue).await;
    delete_queue(&queue).await;
    api.stop().await;
}
