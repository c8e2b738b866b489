//! Data integrity under load and hostile clients, against the real broker:
//! a 200 means the broker confirmed that very message, one tenant cannot
//! exhaust memory or connections for the others.

mod common;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::wait_for;
use common::*;
use futures::StreamExt;
use insights_remote::server::Limits;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

fn token(ns: &str, env_id: &str) -> String {
    ring().mint(&claims(ns, env_id)).unwrap()
}

async fn post(url: &str, token: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{url}/facts"))
        .header("authorization", token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// An API with `limits` publishing to a queue of its own (tagged `tag`);
/// the API and the queue's name.
async fn api_with(tag: &str, limits: Limits) -> (Api, String) {
    let settings = isolated_broker(tag);
    let queue = settings.queue.clone();
    (start_api_with(settings, limits, 0).await, queue)
}

/// Deletes the test's queue and stops its API.
async fn finish(api: Api, queue: &str) {
    delete_queue(queue).await;
    api.stop().await;
}

/// Reads the answer on `rd` until the server closes the connection (within
/// 5 s, or the test fails), then stops `writer`; the answer.
async fn answer_before_close(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    writer: tokio::task::JoinHandle<()>,
) -> String {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut buf)).await;
    writer.abort();
    let text = String::from_utf8_lossy(&buf).into_owned();
    assert!(read.is_ok(), "connection closed within 5 s; got {text:?}");
    text
}

/// A full queue nacks (`overflow: reject-publish`); with many clients
/// publishing at once on the shared channel, every 200 must be in the queue
/// and no 503 may be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacks_and_acks_reach_their_own_request() {
    let settings = isolated_broker("nack");
    let queue = settings.queue.clone();
    let policy = unique("reject");
    rabbitmqctl(&[
        "set_policy",
        "--apply-to",
        "queues",
        &policy,
        &format!("^{queue}$"),
        r#"{"max-length":50,"overflow":"reject-publish"}"#,
    ]);
    let api = start_api(settings, 1 << 20, 0).await;
    let t = token("ns", "1");

    // A slow consumer keeps the queue at its limit, so acks and nacks
    // alternate on the channel.
    let conn = lapin::Connection::connect(&amqp_uri(), Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "integrity".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let reader = tokio::spawn({
        let seen = seen.clone();
        async move {
            while let Some(Ok(d)) = consumer.next().await {
                let v: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
                seen.lock()
                    .await
                    .insert(v["facts"][0]["value"].as_str().unwrap().to_string());
                d.ack(BasicAckOptions::default()).await.unwrap();
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        }
    });

    let mut clients = Vec::new();
    for c in 0..16 {
        let (url, t) = (api.url.clone(), t.clone());
        clients.push(tokio::spawn(async move {
            let (mut ok, mut refused) = (Vec::new(), Vec::new());
            for i in 0..250 {
                let value = format!("c{c}-{i}");
                let body = format!(r#"[{{"name":"n","value":"{value}"}}]"#);
                match post(&url, &t, body).await.status().as_u16() {
                    200 => ok.push(value),
                    503 => refused.push(value),
                    s => panic!("unexpected status {s}"),
                }
            }
            (ok, refused)
        }));
    }
    let (mut ok, mut refused) = (Vec::new(), Vec::new());
    for c in clients {
        let (o, r) = c.await.unwrap();
        ok.extend(o);
        refused.extend(r);
    }
    // Everything confirmed arrives; then nothing refused may be there.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = seen.lock().await;
        if ok.iter().all(|v| got.contains(v)) || Instant::now() > deadline {
            break;
        }
        drop(got);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = conn.close(200, "done".into()).await;
    reader.abort();
    rabbitmqctl(&["clear_policy", &policy]);
    let got = seen.lock().await;
    let lost: Vec<_> = ok.iter().filter(|v| !got.contains(*v)).collect();
    let stored_refused: Vec<_> = refused.iter().filter(|v| got.contains(*v)).collect();
    println!(
        "{} answered 200, {} answered 503, {} in the queue",
        ok.len(),
        refused.len(),
        got.len()
    );
    assert!(
        !ok.is_empty() && !refused.is_empty(),
        "the policy made the broker both ack and nack"
    );
    assert!(lost.is_empty(), "answered 200 but not stored: {lost:?}");
    assert!(
        stored_refused.is_empty(),
        "answered 503 but stored: {stored_refused:?}"
    );
    finish(api, &queue).await;
}

/// Checks that `r` is a 413 whose message says `says`.
async fn assert_413(r: reqwest::Response, says: &str) {
    assert_eq!(r.status(), 413);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["message"].as_str().unwrap().contains(says), "{v}");
}

/// Too many items, or a message over the publish limit: 413 naming the
/// limit, nothing published, and the channel stays open for others.
#[tokio::test]
async fn item_and_message_limits_answer_413() {
    let mut settings = isolated_broker("limits");
    settings.max_message_bytes = 64 * 1024;
    let queue = settings.queue.clone();
    let limits = Limits {
        max_items: 1000,
        ..Default::default()
    };
    let api = start_api_with(settings, limits, 0).await;
    let t = token("ns", "1");

    // 80,000 minimal facts in under 1 MiB: refused before they are parsed.
    let many = format!("[{}]", vec![r#"{"name":"a"}"#; 80_000].join(","));
    assert!(many.len() < 1 << 20);
    assert_413(
        post(&api.url, &t, many).await,
        "80000 facts in one request, over the limit of 1000",
    )
    .await;

    // 500 facts with long values: fine as a body, too large as a message.
    let big = format!(
        "[{}]",
        vec![format!(r#"{{"name":"a","value":"{}"}}"#, "x".repeat(200)); 500].join(",")
    );
    assert_413(post(&api.url, &t, big).await, "limit of 65536 bytes").await;
    // The next tenant is served on the same channel.
    assert_eq!(post(&api.url, &t, r#"[{"name":"ok"}]"#).await.status(), 200);
    // only the accepted message was published
    let got = drain_exactly(&queue, 1, Duration::from_secs(5)).await;
    assert_eq!(got[0]["facts"][0]["name"], "ok");
    assert_eq!(api.metrics.broker_channels.get(), 1);
    finish(api, &queue).await;
}

/// The in-flight budget: large requests beyond it get 503 with
/// Retry-After at once, while a small request is still served.
#[tokio::test]
async fn inflight_budget_refuses_large_requests_but_serves_small_ones() {
    let limits = Limits {
        // Room for one 1 MiB body (16 MiB reserved) and small requests.
        inflight_bytes: 17 * 1024 * 1024,
        body_timeout: Duration::from_secs(20),
        ..Default::default()
    };
    let (api, queue) = api_with("budget", limits).await;
    let t = token("ns", "1");
    let port = api.url.rsplit(':').next().unwrap().to_string();

    // One client sends 600 KiB of a 1 MiB body, then waits: it holds the
    // budget for what arrived (a declared length alone holds nothing, see
    // tests/hostile.rs).
    let mut slow = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    slow.write_all(
        format!(
            "POST /facts HTTP/1.1\r\nhost: x\r\nauthorization: {t}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n[{}",
            1 << 20,
            " ".repeat(600 * 1024)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // Wait until the server holds it (its budget shows the 600 KiB, 16
    // bytes a byte), then a large request is refused and a small one served.
    wait_for("the slow body charged", Duration::from_secs(20), || async {
        (api.state.budget_held() >= 600 * 1024 * 16).then_some(())
    })
    .await;
    let big_body = || format!("[{}]", vec![r#"{"name":"a"}"#; 60_000].join(","));
    let mut refused = None;
    for _ in 0..50 {
        let r = post(&api.url, &t, big_body()).await;
        if r.status() == 503 {
            refused = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = refused.expect("a second large request is refused while the first holds the budget");
    assert_eq!(r.headers()["retry-after"], "5");
    assert_eq!(
        post(&api.url, &t, r#"[{"name":"small"}]"#).await.status(),
        200,
        "a small request still fits"
    );
    drop(slow);
    purge(&queue).await;
    finish(api, &queue).await;
}

/// A body sent a byte at a time is cut off at the body timeout with 408,
/// and the connection is closed.
#[tokio::test]
async fn slow_body_gets_408_and_the_connection_closes() {
    let limits = Limits {
        body_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let (api, queue) = api_with("slowbody", limits).await;
    let t = token("ns", "1");
    let addr = api.url.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        format!(
            "POST /facts HTTP/1.1\r\nhost: x\r\nauthorization: {t}\r\ncontent-length: 100\r\n\r\n["
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (rd, mut wr) = s.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if wr.write_all(b" ").await.is_err() {
                break;
            }
        }
    });
    let text = answer_before_close(rd, trickle).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert_eq!(
        api.metrics
            .publishes
            .get_or_create(&insights_remote::metrics::OutcomeLabels {
                outcome: "confirmed".into()
            })
            .get(),
        0
    );
    finish(api, &queue).await;
}

/// A request refused before its body is read (bad token) does not keep
/// the connection open while the client goes on sending a chunked body.
#[tokio::test]
async fn refused_request_closes_a_never_ending_body() {
    let settings = isolated_broker("endless");
    let queue = settings.queue.clone();
    let api = start_api(settings, 1 << 20, 0).await;
    let addr = api.url.trim_start_matches("http://").to_string();
    let s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (rd, mut wr) = s.into_split();
    wr.write_all(
        b"POST /facts HTTP/1.1\r\nhost: x\r\nauthorization: not-a-token\r\ntransfer-encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    let writer = tokio::spawn(async move {
        for _ in 0..200 {
            let data = r#"[{"name":"a"}, "#;
            let chunk = format!("{:x}\r\n{data}\r\n", data.len());
            if wr.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let text = answer_before_close(rd, writer).await;
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    finish(api, &queue).await;
}

/// The ingestion listener's accept backlog is 1024 (ss shows it as Send-Q
/// of a listening socket).
#[test]
fn listeners_have_a_backlog_of_1024() {
    let l = insights_remote::server::listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = l.local_addr().unwrap().port();
    let out = Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let cols: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(cols.get(2), Some(&"1024"), "ss: {text}");
}

/// A port already in use stops start-up with a message naming the address.
#[test]
fn port_in_use_names_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = api_binary(port, &isolated_broker("inuse"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("listening on 127.0.0.1:{port}")),
        "stderr: {err}"
    );
}
