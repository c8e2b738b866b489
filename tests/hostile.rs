//! The ingestion listener under hostile connections (real sockets, the real
//! broker): a client that stops reading is closed, an unfinished or
//! oversized head is refused, connections are capped in total and per
//! client address while another tenant and the probes are served, a
//! message cannot be many times its body, the memory budget is charged as
//! bytes arrive and shared fairly, posts are shed above the memory mark.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cluster::wait_for;
use common::*;
use insights_remote::server::{ConnLimits, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn token(ns: &str, env_id: &str) -> String {
    ring().mint(&claims(ns, env_id)).unwrap()
}

fn addr(api: &Api) -> SocketAddr {
    api.url.trim_start_matches("http://").parse().unwrap()
}

/// A connection from the loopback address `from` (127.0.0.x), as a pod
/// connects from its own address.
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

fn facts_request(t: &str, body: &str) -> String {
    format!(
        "POST /facts HTTP/1.1\r\nhost: x\r\nauthorization: {t}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Reads until the peer closes (or `within` passes); what arrived.
async fn read_all(s: &mut TcpStream, within: Duration) -> String {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(within, s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// One request on a fresh connection from `from`; the status line.
async fn status_from(from: &str, to: SocketAddr, request: &str) -> String {
    let mut s = connect_from(from, to).await;
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("an answer within 10 s")
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A child process killed when the test ends, also by a failed assertion.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn counter(api: &Api, family: &str, outcome: &str) -> u64 {
    let text = api.metrics.render();
    let prefix = format!("insights_remote_{family}_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// A client that pipelines requests and never reads an answer: once its
/// answers fill the socket, nothing more is read from it and it is closed
/// at the write timeout (actix alone kept such a connection spinning a
/// core for as long as the client held it). Another client is served
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_closed() {
    let settings = isolated_broker("noread");
    let queue = settings.queue.clone();
    let limits = Limits {
        conn: ConnLimits {
            write_timeout: Duration::from_secs(1),
            ..Default::default()
        },
        ..Default::default()
    };
    let api = start_api_with(settings, limits, 0).await;
    let to = addr(&api);
    let s = connect_from("127.0.0.2", to).await;
    let std = s.into_std().unwrap();
    std.set_nonblocking(false).unwrap();
    std.set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut std = std;
        let batch = b"GET /openapi.json HTTP/1.1\r\nhost: x\r\n\r\n".repeat(1000);
        let started = Instant::now();
        let mut sent = 0usize;
        loop {
            match std.write_all(&batch) {
                Ok(()) => sent += batch.len(),
                Err(e) => return (sent, started.elapsed(), e.kind()),
            }
        }
    });
    // Served meanwhile.
    let t = token("ns", "1");
    assert!(
        status_from("127.0.0.3", to, &facts_request(&t, r#"[{"name":"n"}]"#))
            .await
            .starts_with("HTTP/1.1 200"),
    );
    let (sent, took, kind) = tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    println!("sent {sent} bytes in {took:?}, then {kind:?}");
    assert!(
        matches!(
            kind,
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "the server closed the connection (not the client's own 20 s timeout): {kind:?}"
    );
    assert_eq!(counter(&api, "http_connections_closed", "write_timeout"), 1);
    delete_queue(&queue).await;
    api.stop().await;
}

/// A client that pipelines and reads slowly gets every answer, in order:
/// reading ahead is paused, never stuck.
#[tokio::test]
async fn pipelined_requests_all_answered_when_the_client_reads() {
    let settings = isolated_broker("pipeline");
    let queue = settings.queue.clone();
    let api = start_api_with(settings, Limits::default(), 0).await;
    let t = token("ns", "1");
    let mut s = TcpStream::connect(addr(&api)).await.unwrap();
    let n = 60;
    let mut batch = String::new();
    for i in 0..n {
        if i % 3 == 0 {
            batch += &facts_request(&t, &format!(r#"[{{"name":"n{i}"}}]"#));
        } else {
            batch += "GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";
        }
    }
    batch += "GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    let (mut rd, mut wr) = s.split();
    let (_, text) = tokio::join!(
        async { wr.write_all(batch.as_bytes()).await.unwrap() },
        async {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 512];
            loop {
                // Slowly, so the answers back up.
                tokio::time::sleep(Duration::from_millis(2)).await;
                match tokio::time::timeout(Duration::from_secs(20), rd.read(&mut chunk)).await {
                    Ok(Ok(0)) | Err(_) => break,
                    Ok(Ok(k)) => buf.extend_from_slice(&chunk[..k]),
                    Ok(Err(e)) => panic!("{e}"),
                }
            }
            String::from_utf8_lossy(&buf).into_owned()
        }
    );
    assert_eq!(text.matches("HTTP/1.1 200").count(), n + 1, "{text}");
    let got = drain(&queue, n / 3, Duration::from_secs(10)).await;
    assert_eq!(got.len(), n / 3);
    delete_queue(&queue).await;
    api.stop().await;
}

/// A request head over the limit is answered 431 at once and the
/// connection closed, without waiting for (or buffering) the rest; one
/// within the limit is served.
#[tokio::test]
async fn an_oversized_head_is_refused_early() {
    let settings = isolated_broker("head");
    let queue = settings.queue.clone();
    let api = start_api_with(settings, Limits::default(), 0).await;
    let mut s = TcpStream::connect(addr(&api)).await.unwrap();
    // 9 KiB of one header, never finished.
    s.write_all(format!("GET /healthz HTTP/1.1\r\nx-pad: {}", "a".repeat(9 * 1024)).as_bytes())
        .await
        .unwrap();
    let started = Instant::now();
    let text = read_all(&mut s, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 431"), "{text:?}");
    assert!(
        text.contains("larger than the limit of 8192 bytes"),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        counter(&api, "http_connections_closed", "head_too_large"),
        1
    );

    // 7 KiB of headers is fine.
    let mut s = TcpStream::connect(addr(&api)).await.unwrap();
    s.write_all(
        format!(
            "GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-pad: {}\r\n\r\n",
            "a".repeat(7 * 1024)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let text = read_all(&mut s, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    delete_queue(&queue).await;
    api.stop().await;
}

/// DELETE paths name a source and a service: longer than Lagoon stores is
/// refused with 400, nothing published.
#[tokio::test]
async fn a_long_delete_path_is_refused() {
    let settings = isolated_broker("longpath");
    let queue = settings.queue.clone();
    let api = start_api_with(settings, Limits::default(), 0).await;
    let t = token("ns", "1");
    let c = reqwest::Client::new();
    let r = c
        .delete(format!("{}/facts/{}", api.url, "s".repeat(301)))
        .header("authorization", &t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("longer than 300 bytes"));
    let r = c
        .delete(format!("{}/facts/{}/svc", api.url, "s".repeat(300)))
        .header("authorization", &t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drain_exactly(&queue, 1, Duration::from_secs(5)).await;
    delete_queue(&queue).await;
    api.stop().await;
}

/// Connections are capped per client address and in total: beyond either,
/// 503 with Retry-After; another address is still served up to the total,
/// and the probes (their own server) answer throughout.
#[tokio::test]
async fn connection_caps_leave_room_for_others_and_the_probes() {
    let broker = isolated_broker("caps");
    let (port, probes) = (free_port(), free_port());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_insights-remote"));
    let mut args = api_args(port, &broker);
    let at = args
        .iter()
        .position(|a| a == "--health-probe-bind-address")
        .unwrap();
    args.drain(at..at + 2);
    child
        .args(args)
        .env("INSIGHTS_TOKEN_SECRET", KEY)
        .args([
            "--webservice-max-connections",
            "6",
            "--webservice-max-connections-per-client",
            "4",
            "--health-probe-bind-address",
            &format!("127.0.0.1:{probes}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    let child = ChildGuard(child.spawn().unwrap());
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let ready = format!("http://127.0.0.1:{probes}/readyz");
    // Ready, and connected to the broker (a post before would be 503).
    wait_for("the API", Duration::from_secs(20), || async {
        let r = reqwest::get(&ready).await.ok()?;
        let body = r.text().await.ok()?;
        body.contains(r#""broker":"connected""#).then_some(())
    })
    .await;
    wait_for("the ingestion port", Duration::from_secs(20), || async {
        TcpStream::connect(to).await.ok()
    })
    .await;
    let t = token("ns", "1");
    let get = "GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";

    // Four held open from one address (each answered once, kept alive).
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = connect_from("127.0.0.2", to).await;
        s.write_all(get.as_bytes()).await.unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    let mut fifth = connect_from("127.0.0.2", to).await;
    fifth.write_all(get.as_bytes()).await.unwrap();
    let text = read_all(&mut fifth, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 503"), "{text:?}");
    assert!(text.contains("retry-after: 1"), "{text}");
    assert!(
        text.contains("too many connections from this address"),
        "{text}"
    );

    // Another tenant's address is served.
    let served =
        facts_request(&t, r#"[{"name":"n"}]"#).replace("host: x", "host: x\r\nconnection: close");
    let ok = status_from("127.0.0.3", to, &served).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    // Up to the total: two more from elsewhere, then the next is refused.
    // (The tenant's connection above is given back once the server saw it
    // close: retried until then.)
    for from in ["127.0.0.4", "127.0.0.5"] {
        let s = wait_for("a place", Duration::from_secs(10), || async {
            let mut s = connect_from(from, to).await;
            s.write_all(get.as_bytes()).await.ok()?;
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).await.ok()?;
            buf[..n].starts_with(b"HTTP/1.1 200").then_some(s)
        })
        .await;
        held.push(s);
    }
    let refused = status_from("127.0.0.6", to, get).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    // The probes answer while the listener is full.
    for _ in 0..5 {
        assert_eq!(reqwest::get(&ready).await.unwrap().status(), 200);
    }
    // A place given back is taken again.
    drop(held.pop());
    wait_for("a freed place", Duration::from_secs(10), || async {
        status_from("127.0.0.6", to, get)
            .await
            .starts_with("HTTP/1.1 200")
            .then_some(())
    })
    .await;
    drop(child);
    delete_queue(&broker.queue).await;
}

/// A message may not be many times its body: 10,000 empty problems (29 KiB
/// of body, 920 KB of message) are refused with 413 and nothing published;
/// an honest body is published.
#[tokio::test]
async fn messages_cannot_be_many_times_their_body() {
    let settings = isolated_broker("amplify");
    let queue = settings.queue.clone();
    let api = start_api_with(settings, Limits::default(), 0).await;
    let t = token("ns", "1");
    let c = reqwest::Client::new();
    let empty = format!("[{}]", vec!["{}"; 10_000].join(","));
    let r = c
        .post(format!("{}/problems", api.url))
        .header("authorization", &t)
        .body(empty)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["message"].as_str().unwrap().contains("8 times the body"),
        "{v}"
    );
    let honest = serde_json::json!([{
        "identifier": "CVE-2024-0001", "version": "1.0", "fixedVersion": "1.1",
        "source": "trivy", "service": "cli", "data": "{}", "severity": "HIGH",
        "severityScore": 0.7, "associatedPackage": "openssl", "description": "d", "links": "l"
    }])
    .to_string();
    let r = c
        .post(format!("{}/problems", api.url))
        .header("authorization", &t)
        .body(honest)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // only the honest message was published
    drain_exactly(&queue, 1, Duration::from_secs(5)).await;
    assert_eq!(counter(&api, "requests_refused", "expansion"), 1);
    delete_queue(&queue).await;
    api.stop().await;
}

/// Eight connections of one tenant that declare 1 MiB bodies and send
/// none hold nothing of the memory budget: another tenant's posts are all
/// served. And one tenant sending large bodies cannot hold more than its
/// share: another tenant's large post fits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_is_charged_as_bytes_arrive_and_shared_fairly() {
    let settings = isolated_broker("fair");
    let queue = settings.queue.clone();
    let limits = Limits {
        body_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let api = start_api_with(settings, limits, 0).await;
    let to = addr(&api);
    let (a, b) = (token("a", "1"), token("b", "2"));
    let head = |len: usize| {
        format!(
            "POST /facts HTTP/1.1\r\nhost: x\r\nauthorization: {a}\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
        )
    };
    let mut declared = Vec::new();
    for _ in 0..8 {
        let mut s = connect_from("127.0.0.2", to).await;
        s.write_all(head(1 << 20).as_bytes()).await.unwrap();
        declared.push(s);
    }
    for i in 0..20 {
        let st = status_from(
            "127.0.0.3",
            to,
            &facts_request(&b, &format!(r#"[{{"name":"b{i}"}}]"#)),
        )
        .await;
        assert!(st.starts_with("HTTP/1.1 200"), "small post {i}: {st}");
    }
    // Tenant a now sends 900 KiB into each: at most its share (a quarter
    // of the budget, here one largest body) is charged, the rest refused.
    let mut refused = 0;
    for s in declared.iter_mut() {
        let _ = s.write_all(&vec![b' '; 900 * 1024]).await;
    }
    for s in declared.iter_mut() {
        let mut buf = [0u8; 64];
        // Refused: the 503, or the connection closed under the client.
        match tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
            Ok(Ok(n)) if n == 0 || buf[..n].starts_with(b"HTTP/1.1 503") => refused += 1,
            Ok(Err(_)) => refused += 1,
            _ => {}
        }
    }
    assert!(
        refused >= 6,
        "only {refused} of tenant a's 8 large bodies refused"
    );
    let big = format!(
        "[{}]",
        (0..5_000)
            .map(|i| format!(r#"{{"name":"module-{i}","value":"1.2.3","source":"drush-pml","description":"a Drupal module","category":"Drupal"}}"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    let st = status_from("127.0.0.3", to, &facts_request(&b, &big)).await;
    assert!(
        st.starts_with("HTTP/1.1 200"),
        "tenant b's large post: {st}"
    );
    drop(declared);
    purge(&queue).await;
    delete_queue(&queue).await;
    api.stop().await;
}

/// Above the memory mark posts are answered 503 with Retry-After (the
/// mark here is 1 byte, so always above); probes still answer.
#[tokio::test]
async fn posts_are_shed_above_the_memory_mark() {
    let settings = isolated_broker("shed");
    let queue = settings.queue.clone();
    let limits = Limits {
        memory_high: 1,
        ..Default::default()
    };
    let api = start_api_with(settings, limits, 0).await;
    let t = token("ns", "1");
    let c = reqwest::Client::new();
    let r = wait_for("a shed post", Duration::from_secs(5), || async {
        let r = c
            .post(format!("{}/facts", api.url))
            .header("authorization", &t)
            .body(r#"[{"name":"n"}]"#)
            .send()
            .await
            .unwrap();
        (r.status() == 503).then_some(r)
    })
    .await;
    assert_eq!(r.headers()["retry-after"], "5");
    assert!(counter(&api, "requests_refused", "memory") >= 1);
    let health = reqwest::get(format!("{}/healthz", api.url)).await.unwrap();
    assert_eq!(health.status(), 200);
    delete_queue(&queue).await;
    api.stop().await;
}

/// The budget's share per environment does not limit honest concurrency:
/// one tenant with 60 small posts in flight at once (under the 64
/// connections allowed from one address) gets 200 for every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_posts_of_one_tenant_all_fit_its_share() {
    let settings = isolated_broker("manysmall");
    let queue = settings.queue.clone();
    let api = start_api_with(settings, Limits::default(), 0).await;
    let t = token("ns", "1");
    let c = reqwest::Client::new();
    let posts = (0..60).map(|i| {
        let (c, url, t) = (c.clone(), api.url.clone(), t.clone());
        tokio::spawn(async move {
            c.post(format!("{url}/facts"))
                .header("authorization", t)
                .body(format!(r#"[{{"name":"n{i}"}}]"#))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    });
    let statuses = futures::future::join_all(posts).await;
    assert!(
        statuses.iter().all(|s| *s.as_ref().unwrap() == 200),
        "{statuses:?}"
    );
    assert_eq!(drain(&queue, 60, Duration::from_secs(10)).await.len(), 60);
    delete_queue(&queue).await;
    api.stop().await;
}

/// Issue 22, point 3: one environment holds at most a quarter of the
/// connections, from however many addresses (its pods); past that its next
/// connection is answered 503 and closed, another environment is served,
/// and a place it gives back is its own again.
#[tokio::test]
async fn one_environment_holds_at_most_its_share_of_connections() {
    let settings = isolated_broker("envshare");
    let queue = settings.queue.clone();
    let limits = Limits {
        conn: ConnLimits {
            max_connections: 16,
            ..Default::default()
        },
        ..Default::default()
    };
    let api = start_api_with(settings, limits, 0).await;
    let to = addr(&api);
    let (a, b) = (token("env-a", "1"), token("env-b", "2"));
    let keep = |t: &str| facts_request(t, r#"[{"name":"n"}]"#);
    // Four connections of A, each from its own address (a pod each), kept
    // open after their answer.
    let mut held = Vec::new();
    for i in 0..4 {
        let mut s = connect_from(&format!("127.0.0.{}", 10 + i), to).await;
        s.write_all(keep(&a).as_bytes()).await.unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        held.push(s);
    }
    // A fifth from yet another address: refused, and closed.
    let mut fifth = connect_from("127.0.0.20", to).await;
    fifth.write_all(keep(&a).as_bytes()).await.unwrap();
    let text = read_all(&mut fifth, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.contains("too many connections for this environment"),
        "{text}"
    );
    assert!(text.contains("retry-after"), "{text}");
    // B is served.
    let ok = status_from("127.0.0.21", to, &keep(&b)).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    // A place given back is A's again (once the server saw it close).
    drop(held.pop());
    wait_for("A's place back", Duration::from_secs(10), || async {
        let line = status_from("127.0.0.22", to, &keep(&a)).await;
        line.starts_with("HTTP/1.1 200").then_some(())
    })
    .await;
    let refused = api
        .metrics
        .http_connections_refused
        .get_or_create(&insights_remote::metrics::OutcomeLabels {
            outcome: "max_per_environment".into(),
        })
        .get();
    assert!(refused >= 1, "{refused}");
    drain(&queue, 6, Duration::from_secs(5)).await;
    delete_queue(&queue).await;
    drop(held);
    api.stop().await;
}
