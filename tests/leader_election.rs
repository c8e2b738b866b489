//! Two operator processes (the real binary) against the real API server and
//! RabbitMQ: one leads; a clean handover (SIGTERM) forwards nothing twice; an
//! unclean one (SIGKILL) hands over within the lease duration and misses
//! nothing.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::PostParams;
use kube::Api;

const LEASE_SECS: u64 = 6;

struct Proc {
    name: &'static str,
    child: Child,
}

fn spawn(
    name: &'static str,
    ns: &str,
    lease: &str,
    broker: &insights_remote::broker::BrokerSettings,
) -> Proc {
    let log =
        std::fs::File::create(std::env::temp_dir().join(format!("{lease}-{name}.log"))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_insights-remote"))
        .args([
            "--leader-elect",
            "--leader-election-id",
            lease,
            "--leader-election-lease-duration",
            &format!("{LEASE_SECS}s"),
            "--watch-namespace",
            ns,
            "--pod-namespace",
            ns,
            "--config-name",
            &unique("absent"),
            "--rabbitmq-reconnect-retry-interval",
            "1",
            "--enable-webservice=false",
            "--enable-configmap-reconciler=true",
            "--enable-namespace-reconciler=false",
            "--health-probe-bind-address",
            &format!("127.0.0.1:{}", free_port()),
            "--metrics-bind-address",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .args(broker_args(broker))
        .env("KUBECONFIG", kubeconfig_path())
        .env("INSIGHTS_TOKEN_SECRET", KEY)
        .env("HOSTNAME", name)
        .env("RUST_LOG", "info")
        .stdout(log)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Proc { name, child }
}

async fn holder(client: &kube::Client, ns: &str, lease: &str) -> Option<String> {
    let l = Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt(lease)
        .await
        .ok()??;
    l.spec?.holder_identity
}

async fn create_batch(api: &Api<ConfigMap>, from: usize, n: usize) {
    for i in from..from + n {
        let cm = numbered_insights_cm(i);
        api.create(&PostParams::default(), &cm).await.unwrap();
    }
}

async fn wait_all_processed(api: &Api<ConfigMap>, n: usize) {
    wait_for(
        &format!("{n} ConfigMaps processed"),
        Duration::from_secs(90),
        || async {
            let list = api
                .list(&kube::api::ListParams::default().labels("lagoon.sh/insightsProcessed"))
                .await
                .ok()?;
            (list.items.len() >= n).then_some(())
        },
    )
    .await;
}

fn count_ids(msgs: &[serde_json::Value]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for msg in msgs {
        *m.entry(msg["labels"]["test-id"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    m
}

#[tokio::test]
async fn one_leader_clean_and_unclean_handover() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "ha").await;
    let broker = isolated_broker("ha");
    let lease = unique("lease");
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let mut a = spawn("op-a", &ns.name, &lease, &broker);
    // The second process starts once the first holds the Lease.
    let first = wait_for("a leader", Duration::from_secs(30), || {
        holder(&client, &ns.name, &lease)
    })
    .await;
    let mut b = spawn("op-b", &ns.name, &lease, &broker);
    assert!(
        first.starts_with("op-a"),
        "the first process leads: {first}"
    );

    // Phase 1: one leader forwards each ConfigMap once.
    create_batch(&api, 0, 20).await;
    wait_all_processed(&api, 20).await;

    // Clean handover: SIGTERM releases the Lease; the other takes over at once.
    let t = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &a.child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let ((second, clean_handover), ()) = tokio::join!(
        async {
            let h = wait_for("the follower leads", Duration::from_secs(30), || async {
                holder(&client, &ns.name, &lease)
                    .await
                    .filter(|h| h.starts_with("op-b"))
            })
            .await;
            (h, t.elapsed())
        },
        create_batch(&api, 20, 20)
    );
    assert!(
        a.child.wait().unwrap().success(),
        "graceful exit on SIGTERM"
    );
    wait_all_processed(&api, 40).await;
    let msgs = drain_all(&broker.queue).await;
    let counts = count_ids(&msgs);
    assert_eq!(counts.len(), 40, "every ConfigMap forwarded");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "forwarded twice during a clean handover: {twice:?}"
    );

    // Unclean handover: a new follower, then SIGKILL the leader.
    a = spawn("op-c", &ns.name, &lease, &broker);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = Instant::now();
    b.child.kill().unwrap();
    let _ = b.child.wait();
    let ((third, unclean_handover), ()) = tokio::join!(
        async {
            let h = wait_for(
                "op-c leads",
                Duration::from_secs(LEASE_SECS * 4),
                || async {
                    holder(&client, &ns.name, &lease)
                        .await
                        .filter(|h| h.starts_with("op-c"))
                },
            )
            .await;
            (h, t.elapsed())
        },
        create_batch(&api, 40, 20)
    );
    wait_all_processed(&api, 60).await;
    let msgs = drain_all(&broker.queue).await;
    let counts = count_ids(&msgs);
    for i in 40..60 {
        assert!(
            counts.contains_key(&i.to_string()),
            "ConfigMap {i} missed after the unclean handover"
        );
    }
    println!(
        "leaders: {first} -> {second} -> {third}; clean handover {:.1}s, unclean (SIGKILL) handover {:.1}s with a {LEASE_SECS}s lease",
        clean_handover.as_secs_f64(),
        unclean_handover.as_secs_f64()
    );
    assert!(
        unclean_handover < Duration::from_secs(LEASE_SECS * 2 + 2),
        "handover took {unclean_handover:?}"
    );
    let _ = a.child.kill();
    let _ = a.child.wait();
    let _ = b.name;
    delete_queue(&broker.queue).await;
    ns.cleanup().await;
}

/// Leader election that cannot be set up (here: the Lease's namespace does
/// not exist) stops the process with a message, instead of leaving a
/// replica that serves and looks healthy but never reconciles.
#[tokio::test]
async fn failed_leader_election_stops_the_process() {
    let broker = isolated_broker("nolease");
    let mut child = Command::new(env!("CARGO_BIN_EXE_insights-remote"))
        .args([
            "--leader-elect",
            "--pod-namespace",
            &unique("no-such-namespace"),
            "--config-name",
            &unique("absent"),
            "--rabbitmq-hostname",
            &broker.host,
            "--enable-webservice=false",
            "--health-probe-bind-address",
            "0",
            "--metrics-bind-address",
            "0",
        ])
        .env("INSIGHTS_TOKEN_SECRET", KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for("the process exits", Duration::from_secs(30), || {
        let s = child.try_wait().unwrap();
        async move { s }
    })
    .await;
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("leader election"), "stderr: {err}");
}

/// A Go replica holding upstream's Lease (as client-go writes it) keeps
/// ours from leading during a rolling switch: nothing is forwarded while the
/// Go replica renews; once it stops, ours takes the Lease and forwards.
#[tokio::test]
async fn a_go_replica_holding_upstreams_lease_excludes_ours() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    let client = client().await;
    let ns = TestNamespace::new(&client, "golease").await;
    let broker = isolated_broker("golease");
    let lease_name = insights_remote::settings::UPSTREAM_LEASE;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let renew = || async {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let lease = serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": lease_name},
            "spec": {"holderIdentity": "go-replica_0123", "leaseDurationSeconds": 15,
                     "acquireTime": now, "renewTime": now, "leaseTransitions": 0}});
        leases
            .patch(
                lease_name,
                &kube::api::PatchParams::apply("go-replica").force(),
                &kube::api::Patch::Apply(lease),
            )
            .await
            .unwrap();
    };
    renew().await;
    // Ours, with the default Lease name (no --leader-election-id).
    let log = std::env::temp_dir().join(format!("{}-ours.log", ns.name));
    let mut ours = Command::new(env!("CARGO_BIN_EXE_insights-remote"))
        .args([
            "--leader-elect",
            "--leader-election-lease-duration",
            "15s",
            "--watch-namespace",
            &ns.name,
            "--pod-namespace",
            &ns.name,
            "--config-name",
            &unique("absent"),
            "--enable-webservice=false",
            "--enable-configmap-reconciler=true",
            "--enable-namespace-reconciler=false",
            "--health-probe-bind-address",
            "0",
        ])
        .args(broker_args(&broker))
        .env("KUBECONFIG", kubeconfig_path())
        .env("INSIGHTS_TOKEN_SECRET", KEY)
        .env("HOSTNAME", "rust-replica")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    create_batch(&api, 0, 1).await;
    // The Go replica renews for 8 s; every observation sees it hold the
    // Lease and the ConfigMap unprocessed.
    for _ in 0..4 {
        renew().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            holder(&client, &ns.name, lease_name).await.as_deref(),
            Some("go-replica_0123")
        );
        let cm = api.get("cm-0").await.unwrap();
        assert!(
            !cm.metadata
                .labels
                .unwrap_or_default()
                .contains_key("lagoon.sh/insightsProcessed"),
            "nothing forwarded while the Go replica leads"
        );
    }
    // The Go replica is gone: ours takes over after the Lease expires.
    let took = wait_for("ours leads", Duration::from_secs(40), || async {
        holder(&client, &ns.name, lease_name)
            .await
            .filter(|h| h.starts_with("rust-replica"))
    })
    .await;
    assert!(took.starts_with("rust-replica"));
    wait_all_processed(&api, 1).await;
    let _ = Command::new("kill")
        .args(["-TERM", &ours.id().to_string()])
        .status();
    let _ = ours.wait();
    delete_queue(&broker.queue).await;
    ns.cleanup().await;
}
