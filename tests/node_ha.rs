//! Two replicas on the real node (hack/node.sh) under a steady load of
//! posts and insights ConfigMaps: the leader pod force-deleted, then a
//! `helm upgrade` that rolls both pods. Every post is answered 200, every
//! ConfigMap is forwarded and burnt, and what arrived twice is counted.
//! Prints the hand-over time and the counts (bench/run.sh nodeha reads
//! them).
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{client, numbered_insights_cm, wait_for};
use common::drain_all;
use common::node::{environment_token, helm, node_environment, Release};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};

#[derive(Default)]
struct Outcomes {
    ok: usize,
    /// (phase, what happened) for every post not answered 200.
    failed: Vec<(&'static str, String)>,
}

async fn leader(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("ac8a682b.lagoon.sh")
        .await
        .ok()??
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

#[tokio::test]
async fn two_replicas_lose_nothing_when_the_leader_dies_or_both_roll() {
    let client = client().await;
    tokio::task::spawn_blocking(common::node::node)
        .await
        .unwrap();
    let (env, _) = node_environment(&client, "ha").await;
    let release = Release::install(
        &client,
        &env.name,
        &["--set".into(), "replicaCount=2".into()],
    )
    .await;
    let url = format!("{}/facts", release.service_url().await);
    let token = environment_token(&client, &env.name).await;

    // The Service answers (kube-proxy has the endpoints) before the load.
    let probe = reqwest::Client::new();
    wait_for("the Service to answer", Duration::from_secs(30), || async {
        let r = probe.post(&url).body("[]").send().await.ok()?;
        (r.status() == 401).then_some(())
    })
    .await;

    // The load: a post every 20 ms on a fresh connection (as a workload's
    // one-shot client does), a ConfigMap every 100 ms.
    let phase = Arc::new(Mutex::new("steady"));
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let poster = tokio::spawn({
        let (phase, stop, outcomes) = (phase.clone(), stop.clone(), outcomes.clone());
        async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let body =
                    format!(r#"[{{"name":"n{i}","value":"v","source":"ha","type":"TEXT"}}]"#);
                let r = http
                    .post(&url)
                    .header("Authorization", format!("Bearer {token}"))
                    .header("Content-Type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let failure = match r {
                    Ok(r) if r.status() == 200 => None,
                    Ok(r) => Some(format!("status {}", r.status())),
                    Err(e) => Some(format!("{e:?}")),
                };
                {
                    let p = *phase.lock().unwrap();
                    let mut o = outcomes.lock().unwrap();
                    match failure {
                        None => o.ok += 1,
                        Some(f) => o.failed.push((p, f)),
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let cms = Api::<ConfigMap>::namespaced(client.clone(), &env.name);
    let writer = tokio::spawn({
        let (stop, cms) = (stop.clone(), cms.clone());
        async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                cms.create(&PostParams::default(), &numbered_insights_cm(n))
                    .await
                    .unwrap();
                n += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            n
        }
    });

    // 1. The leader pod force-deleted: the other replica takes the Lease.
    let leases = Api::<Lease>::namespaced(client.clone(), &release.ns.name);
    let pods = Api::<Pod>::namespaced(client.clone(), &release.ns.name);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let old = wait_for("a leader", Duration::from_secs(30), || leader(&leases)).await;
    let victim = release
        .pods()
        .await
        .into_iter()
        .map(|p| p.name_any())
        .find(|n| old.starts_with(&format!("{n}-")))
        .expect("the leader's pod");
    *phase.lock().unwrap() = "leader force-deleted";
    let killed = Instant::now();
    pods.delete(&victim, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let new = wait_for("another leader", Duration::from_secs(60), || async {
        leader(&leases).await.filter(|h| *h != old)
    })
    .await;
    let handover = killed.elapsed();
    assert!(!new.starts_with(&format!("{victim}-")));
    tokio::time::sleep(Duration::from_secs(5)).await;

    // 2. A rolling upgrade of both pods (a new pod annotation).
    *phase.lock().unwrap() = "rolling upgrade";
    let (name, ns) = (release.name.clone(), release.ns.name.clone());
    let rolled = Instant::now();
    tokio::task::spawn_blocking(move || {
        helm(&[
            "upgrade",
            &name,
            "charts/insights-remote",
            "--namespace",
            &ns,
            "--reuse-values",
            "--set",
            "podAnnotations.rolled=yes",
            "--wait",
            "--timeout",
            "180s",
        ])
    })
    .await
    .unwrap();
    let roll_time = rolled.elapsed();
    *phase.lock().unwrap() = "after";
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    poster.await.unwrap();
    let created = writer.await.unwrap();

    // Every ConfigMap forwarded and burnt; every message in the queue.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = cms
            .list(&ListParams::default().labels("lagoon.sh/insightsType"))
            .await
            .unwrap();
        if left.items.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            for cm in left.items.iter().take(3) {
                eprintln!(
                    "left: {} {:?} {:?}",
                    cm.name_any(),
                    cm.labels(),
                    cm.annotations()
                );
            }
            for p in release.pods().await {
                let log = pods
                    .logs(&p.name_any(), &Default::default())
                    .await
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!("--- {} ---\n{}", p.name_any(), tail.join("\n"));
            }
            panic!("{} ConfigMaps not burnt after 120 s", left.items.len());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (ok, failed) = {
        let o = outcomes.lock().unwrap();
        (o.ok, o.failed.clone())
    };
    let got = drain_all(&release.queue).await;
    let facts = got.iter().filter(|m| m["type"] == "direct.facts").count();
    let mut per_cm: BTreeMap<String, usize> = BTreeMap::new();
    for m in got.iter().filter(|m| m["type"] == "inspect") {
        *per_cm
            .entry(m["labels"]["test-id"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    let twice = per_cm.values().filter(|n| **n > 1).count();
    println!(
        "nodeha: handover_ms={} roll_ms={} posts_ok={ok} posts_failed={} configmaps={created} forwarded={} forwarded_twice={twice} facts_messages={facts}",
        handover.as_millis(),
        roll_time.as_millis(),
        failed.len(),
        per_cm.len(),
    );
    assert!(failed.is_empty(), "posts not answered 200: {failed:#?}");
    assert_eq!(twice, 0, "ConfigMaps forwarded twice: {per_cm:?}");
    assert_eq!(per_cm.len(), created, "every ConfigMap's message arrived");
    assert!(
        facts >= ok,
        "every answered post's message arrived ({facts} of {ok})"
    );
    // Two new pods, no old one left.
    let now = wait_for(
        "two pods, the old ones gone",
        Duration::from_secs(60),
        || async {
            let names: Vec<String> = release.pods().await.iter().map(|p| p.name_any()).collect();
            (names.len() == 2).then_some(names)
        },
    )
    .await;
    assert!(!now.contains(&victim));

    release.uninstall().await;
    env.cleanup().await;
}

/// The pod under the earlier benchmark's hostile load (32 clients posting
/// 1 MiB bodies, bench/hostile.py) at the chart's memory limit: it is never
/// OOMKilled or restarted; its cgroup's peak memory is printed.
#[tokio::test]
async fn the_pod_stays_under_its_memory_limit_under_hostile_load() {
    let client = client().await;
    tokio::task::spawn_blocking(common::node::node)
        .await
        .unwrap();
    let (env, _) = node_environment(&client, "hm").await;
    let release = Release::install(&client, &env.name, &[]).await;
    let pod = release.pods().await.pop().unwrap();
    let ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
    let limit = pod.spec.as_ref().unwrap().containers[0]
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
        .map(|q| q.0.clone())
        .expect("the chart sets a memory limit");
    let token = environment_token(&client, &env.name).await;

    let out = tokio::task::spawn_blocking(move || {
        common::run_ok(
            "bench/hostile.py",
            std::process::Command::new("python3")
                .arg(common::node::root().join("bench/hostile.py"))
                .args(["8888", &token, &token, "32", "20", "full"])
                .env("HOST", &ip),
        )
    })
    .await
    .unwrap();
    let load: serde_json::Value = serde_json::from_str(out.trim()).unwrap();

    let pods = Api::<Pod>::namespaced(client.clone(), &release.ns.name);
    let now = pods.get(&pod.name_any()).await.unwrap();
    let status = now.status.unwrap();
    let cs = &status.container_statuses.unwrap()[0];
    assert_eq!(cs.restart_count, 0, "restarted: {:?}", cs.last_state);
    assert!(
        cs.state.as_ref().unwrap().running.is_some(),
        "{:?}",
        cs.state
    );
    let id = cs
        .container_id
        .as_ref()
        .unwrap()
        .trim_start_matches("containerd://")
        .to_string();
    let uid = now.metadata.uid.unwrap();
    let cgroup =
        format!("/sys/fs/cgroup/memory/kubepods/burstable/pod{uid}/{id}/memory.max_usage_in_bytes");
    let peak: u64 = std::fs::read_to_string(&cgroup)
        .unwrap_or_else(|e| panic!("{cgroup}: {e}"))
        .trim()
        .parse()
        .unwrap();
    let accepted = load["hostile"]["200"].as_u64().unwrap_or(0);
    println!(
        "nodehostile: peak_mib={:.1} limit={limit} hostile={} tenant={} restarts=0",
        peak as f64 / 1048576.0,
        load["hostile"],
        load["tenant"],
    );
    assert!(accepted > 0, "the hostile load reached the pod: {load}");

    release.uninstall().await;
    env.cleanup().await;
}
