//! Load generators and ceilings for insights-remote's benchmarks. Each
//! subcommand prints one JSON line of results; bench/run.sh assembles them
//! into the tables of bench/README.md.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::ByteString;
use kube::api::{GetParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::{reflector, watcher};
use kube::{Api, Client, ResourceExt};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::json;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The broker's ceiling: raw confirmed publishes, N in flight.
    AmqpCeiling {
        #[arg(long, default_value = "127.0.0.1:5672")]
        host: String,
        #[arg(long)]
        exchange: String,
        #[arg(long)]
        queue: String,
        #[arg(long, default_value = "64")]
        inflight: usize,
        #[arg(long, default_value = "15")]
        seconds: u64,
        #[arg(long)]
        body_file: String,
    },
    /// Create insights ConfigMaps and time their forwarding (operator
    /// running), or do the plain client's create + one patch each (ceiling).
    Configmaps {
        #[arg(long)]
        namespace: String,
        #[arg(long, default_value = "1000")]
        count: usize,
        #[arg(long, default_value = "8")]
        concurrency: usize,
        /// operator | ceiling | ceiling-read (create, GET, patch) | burn
        #[arg(long)]
        mode: String,
        /// Queue to read forwarded messages from (operator mode).
        #[arg(long, default_value = "")]
        queue: String,
        #[arg(long, default_value = "127.0.0.1:5672")]
        host: String,
    },
    /// Fill the cluster with unrelated ConfigMaps.
    Fill {
        #[arg(long, default_value = "1000")]
        namespaces: usize,
        #[arg(long, default_value = "10")]
        per_namespace: usize,
        #[arg(long, default_value = "102400")]
        bytes: usize,
        #[arg(long, default_value = "16")]
        concurrency: usize,
        #[arg(long, default_value = "fill")]
        prefix: String,
    },
    /// Create Lagoon namespaces and time their token Secrets (operator
    /// running), or the plain client's namespace + Secret create (ceiling).
    Tokens {
        #[arg(long, default_value = "1000")]
        count: usize,
        #[arg(long, default_value = "8")]
        concurrency: usize,
        #[arg(long)]
        prefix: String,
        /// operator | ceiling | precreate (namespaces only) | wait (Secrets
        /// only) | ceiling-secrets (the namespaces exist: a plain client's
        /// Secret create in each, named `bench-ceiling`) | rotated (until
        /// every token Secret holds a token signed with `--key`)
        #[arg(long)]
        mode: String,
        /// The new signing key (`rotated`).
        #[arg(long, default_value = "")]
        key: String,
    },
    /// A backlog as after an outage: `precreate` makes Lagoon namespaces
    /// and insights ConfigMaps spread over them; `drain` (started before the
    /// operator) follows them until every one is marked processed and counts
    /// what reached the queue; `ceiling` is a plain client's create + patch
    /// of as many ConfigMaps in the same namespaces.
    Backlog {
        #[arg(long)]
        prefix: String,
        #[arg(long, default_value = "100")]
        namespaces: usize,
        #[arg(long, default_value = "1000")]
        count: usize,
        #[arg(long, default_value = "8")]
        concurrency: usize,
        /// precreate | drain | ceiling
        #[arg(long)]
        mode: String,
        /// Exchange and queue to declare, bind and read (drain).
        #[arg(long, default_value = "lagoon-insights")]
        exchange: String,
        #[arg(long, default_value = "lagoon-insights:items")]
        queue: String,
        #[arg(long, default_value = "127.0.0.1:5672")]
        host: String,
    },
    /// CPU per payload of the forward's check and re-encode
    /// (`payload::prepare`) on the configmaps bench's own payloads, one
    /// thread, no I/O.
    Payload {
        #[arg(long, default_value = "200")]
        count: usize,
    },
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Pseudo-random, incompressible bytes (payloads are already gzip).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&[0x1f, 0x8b]);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().cmd {
        Cmd::AmqpCeiling {
            host,
            exchange,
            queue,
            inflight,
            seconds,
            body_file,
        } => {
            amqp_ceiling(
                &host,
                &exchange,
                &queue,
                inflight,
                seconds,
                &std::fs::read(body_file)?,
            )
            .await
        }
        Cmd::Configmaps {
            namespace,
            count,
            concurrency,
            mode,
            queue,
            host,
        } => configmaps(&namespace, count, concurrency, &mode, &queue, &host).await,
        Cmd::Fill {
            namespaces,
            per_namespace,
            bytes,
            concurrency,
            prefix,
        } => fill(namespaces, per_namespace, bytes, concurrency, &prefix).await,
        Cmd::Tokens {
            count,
            concurrency,
            prefix,
            mode,
            key,
        } => {
            if mode == "rotated" {
                rotated(count, &prefix, &key).await
            } else {
                tokens(count, concurrency, &prefix, &mode).await
            }
        }
        Cmd::Backlog {
            prefix,
            namespaces,
            count,
            concurrency,
            mode,
            exchange,
            queue,
            host,
        } => {
            let spread = Spread {
                prefix,
                namespaces,
                count,
            };
            match mode.as_str() {
                "precreate" => backlog_precreate(&spread, concurrency).await,
                "ceiling" => backlog_ceiling(&spread, concurrency).await,
                "drain" => backlog_drain(&spread, &host, &exchange, &queue).await,
                other => anyhow::bail!("unknown backlog mode {other}"),
            }
        }
        Cmd::Payload { count } => {
            payload_cpu(count);
            Ok(())
        }
    }
}

/// Times `payload::prepare` on the SBOM and image-inspect payloads the
/// configmaps bench creates; prints microseconds per payload.
fn payload_cpu(count: usize) {
    use insights_remote::payload::{prepare, Kind};
    for (kind, sbom, size, name) in [
        (Kind::Sbom, true, 100 * 1024, "sbom_100k_us"),
        (Kind::ImageInspect, false, 2 * 1024, "inspect_2k_us"),
    ] {
        let inputs: Vec<Vec<u8>> = (0..count)
            .map(|i| payload(sbom, size, i as u64 + 1))
            .collect();
        let bytes_in: usize = inputs.iter().map(Vec::len).sum();
        let started = Instant::now();
        let mut out = 0;
        for raw in &inputs {
            out += prepare(kind, raw).expect("a valid bench payload").len();
        }
        let us = started.elapsed().as_secs_f64() * 1e6 / count as f64;
        println!(
            "{}",
            json!({"bench": "payload", "case": name, "count": count, "us_per_payload": us, "bytes_in": bytes_in, "bytes_out": out})
        );
    }
}

/// Reads `queue` without acknowledgements, 500 messages in flight.
async fn consume(ch: &Channel, queue: &str, tag: &str) -> Result<lapin::Consumer> {
    ch.basic_qos(500, BasicQosOptions::default()).await?;
    Ok(ch
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?)
}

/// A channel on the local broker with `exchange` (direct, durable) and
/// `queue` (durable) declared and bound; the connection must be kept.
async fn bound_channel(host: &str, exchange: &str, queue: &str) -> Result<(Connection, Channel)> {
    let conn = Connection::connect(
        &format!("amqp://guest:guest@{host}/%2f"),
        ConnectionProperties::default(),
    )
    .await?;
    let ch = conn.create_channel().await?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Direct,
        durable,
        FieldTable::default(),
    )
    .await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), durable, FieldTable::default())
        .await?;
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok((conn, ch))
}

async fn amqp_ceiling(
    host: &str,
    exchange: &str,
    queue: &str,
    inflight: usize,
    seconds: u64,
    body: &[u8],
) -> Result<()> {
    let (_conn, ch) = bound_channel(host, exchange, queue).await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let lat = Arc::new(Mutex::new(Vec::<f64>::new()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..inflight {
        let (ch, lat, body, exchange) =
            (ch.clone(), lat.clone(), body.to_vec(), exchange.to_string());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let props = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into());
                ch.basic_publish(
                    exchange.as_str().into(),
                    "".into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &body,
                    props,
                )
                .await
                .unwrap()
                .await
                .unwrap();
                mine.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            lat.lock().unwrap().extend(mine);
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut l = lat.lock().unwrap().clone();
    l.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({"bench": "amqp-ceiling", "count": l.len(), "rps": l.len() as f64 / elapsed, "p50_ms": percentile(&l, 0.5), "p99_ms": percentile(&l, 0.99)})
    );
    let _ = ch
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await;
    let _ = ch
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = ch
        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await;
    Ok(())
}

/// Half image inspects (2 KiB), half SBOMs (100 KiB), as builds make them.
fn insights_cm(i: usize, with_type: bool) -> ConfigMap {
    let sbom = i.is_multiple_of(2);
    let (key, size, t) = if sbom {
        (format!("svc{i}.cyclonedx.json.gz"), 100 * 1024, "sbom-gz")
    } else {
        (
            format!("svc{i}.image-inspect.json.gz"),
            2 * 1024,
            "image-gz",
        )
    };
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(format!("lagoon-insights-{i}"));
    let mut labels = vec![
        ("bench-id".to_string(), i.to_string()),
        ("lagoon.sh/service".to_string(), format!("svc{i}")),
        ("lagoon.sh/project".to_string(), "bench".to_string()),
        ("lagoon.sh/environment".to_string(), "main".to_string()),
    ];
    if with_type {
        labels.push(("lagoon.sh/insightsType".to_string(), t.to_string()));
    }
    cm.metadata.labels = Some(labels.into_iter().collect());
    // As a build with core insights on marks it (the core gate is on by default).
    cm.metadata.annotations = Some(
        [
            ("lagoon.sh/branch".to_string(), "main".to_string()),
            (
                "core.insights.lagoon.sh/enabled".to_string(),
                "true".to_string(),
            ),
        ]
        .into(),
    );
    cm.binary_data = Some([(key, ByteString(payload(sbom, size, i as u64 + 1)))].into());
    cm
}

/// A gzipped SBOM or image inspect that Lagoon core's consumer can read
/// (the operator checks it), about `size` bytes compressed: the bulk is a
/// field of incompressible text.
fn payload(sbom: bool, size: usize, seed: u64) -> Vec<u8> {
    use base64::Engine;
    use std::io::Write;
    let filler = base64::engine::general_purpose::STANDARD.encode(&noise(size, seed)[2..]);
    let doc = if sbom {
        serde_json::json!({"bomFormat": "CycloneDX", "specVersion": "1.5",
            "metadata": {"component": {"type": "application", "name": "bench"}, "tools": {"components": [{"type": "application", "name": "bench"}]}},
            "components": [{"type": "library", "name": "filler", "description": filler}]})
    } else {
        serde_json::json!({"name": "bench", "env": ["A=b"], "labels": {"filler": filler}})
    };
    // The default level: its output is about the same size whichever
    // deflate backend flate2 is built with (the fastest level of zlib-rs
    // uses fixed Huffman codes and leaves base64 text a third larger than
    // miniz_oxide's did).
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(doc.to_string().as_bytes()).unwrap();
    gz.finish().unwrap()
}

async fn configmaps(
    ns: &str,
    count: usize,
    concurrency: usize,
    mode: &str,
    queue: &str,
    host: &str,
) -> Result<()> {
    let client = Client::try_default().await?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let created_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let arrived_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let started = Instant::now();

    // Consumer for operator mode: when each message lands.
    let consumer = if mode == "operator" || mode == "burn" {
        let conn = Connection::connect(
            &format!("amqp://guest:guest@{host}/%2f"),
            ConnectionProperties::default(),
        )
        .await?;
        let ch = conn.create_channel().await?;
        let mut c = consume(&ch, queue, "bench").await?;
        let arrived = arrived_at.clone();
        Some(tokio::spawn(async move {
            let _keep = conn;
            // Only the labels are read: the payload (about 135 KiB of
            // base64 per SBOM) is skipped, not built into a JSON tree, so
            // the consumer takes little of the CPU the operator needs.
            #[derive(serde::Deserialize)]
            struct Landed {
                labels: HashMap<String, String>,
            }
            while let Some(Ok(d)) = c.next().await {
                let v: Landed = serde_json::from_slice(&d.data).unwrap();
                if let Some(id) = v.labels.get("bench-id") {
                    let mut a = arrived.lock().unwrap();
                    a.entry(id.to_string()).or_insert_with(Instant::now);
                    if a.len() >= count {
                        break;
                    }
                }
            }
        }))
    } else {
        None
    };

    let ceiling = mode.starts_with("ceiling");
    let with_type = !ceiling;
    futures::stream::iter(0..count)
        .for_each_concurrent(concurrency, |i| {
            let (api, created_at) = (api.clone(), created_at.clone());
            async move {
                let cm = insights_cm(i, with_type);
                let made = api.create(&PostParams::default(), &cm).await.unwrap();
                created_at.lock().unwrap().insert(i.to_string(), Instant::now());
                if mode == "ceiling-read" {
                    // The payload read the operator makes (its watch holds
                    // metadata only), at the version just written.
                    let rv = made.metadata.resource_version.unwrap_or_default();
                    api.get_with(&format!("lagoon-insights-{i}"), &GetParams::at(&rv))
                        .await
                        .unwrap();
                }
                if ceiling {
                    // The one write the operator must make per ConfigMap.
                    let patch = json!({"metadata": {"labels": {"lagoon.sh/insightsProcessed": "1"}, "annotations": {"lagoon.sh/insightsProcessed": "2026-01-01T00:00:00Z"}}});
                    api.patch(&format!("lagoon-insights-{i}"), &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
                }
            }
        })
        .await;
    let created = started.elapsed().as_secs_f64();

    // Done when every ConfigMap is marked (or gone, with burn-after-reading).
    // Followed with a metadata watch started now: one list, then an event
    // per change. Polling a list every 50 ms cost the API server, on the
    // same two cores, CPU in the operator's runs only (the ceiling's first
    // list already finds everything done).
    let burn = mode == "burn";
    let meta_api: Api<PartialObjectMeta<ConfigMap>> = Api::namespaced(client.clone(), ns);
    let (store, writer) = reflector::store();
    let mut events = reflector::reflector(
        writer,
        watcher::watcher(meta_api, watcher::Config::default().labels("bench-id")),
    )
    .boxed();
    let finished = tokio::time::timeout(Duration::from_secs(600), async {
        // The store is complete from the first InitDone on.
        let mut listed = false;
        while let Some(ev) = events.next().await {
            listed |= matches!(ev?, watcher::Event::InitDone);
            if !listed {
                continue;
            }
            let all = store.state();
            let done = if burn {
                all.is_empty()
            } else {
                all.iter()
                    .filter(|m| m.labels().contains_key("lagoon.sh/insightsProcessed"))
                    .count()
                    >= count
            };
            if done {
                return Ok::<_, anyhow::Error>(());
            }
        }
        anyhow::bail!("the watch ended")
    })
    .await;
    match finished {
        Ok(r) => r?,
        Err(_) => anyhow::bail!("timed out after 600 s"),
    }
    let marked = started.elapsed().as_secs_f64();
    let mut delays = Vec::new();
    if let Some(c) = consumer {
        tokio::time::timeout(Duration::from_secs(120), c).await??;
        let (cr, ar) = (created_at.lock().unwrap(), arrived_at.lock().unwrap());
        for (id, t) in ar.iter() {
            if let Some(c) = cr.get(id) {
                delays.push(t.saturating_duration_since(*c).as_secs_f64() * 1000.0);
            }
        }
    }
    delays.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({"bench": "configmaps", "mode": mode, "count": count, "created_s": created, "done_s": marked,
               "published": delays.len(), "p50_ms": percentile(&delays, 0.5), "p99_ms": percentile(&delays, 0.99)})
    );
    Ok(())
}

async fn fill(
    namespaces: usize,
    per_ns: usize,
    bytes: usize,
    concurrency: usize,
    prefix: &str,
) -> Result<()> {
    let client = Client::try_default().await?;
    let started = Instant::now();
    let made = AtomicU64::new(0);
    futures::stream::iter(0..namespaces)
        .for_each_concurrent(concurrency, |n| {
            let (client, made) = (client.clone(), &made);
            async move {
                let name = format!("{prefix}-{n}");
                let ns = Namespace {
                    metadata: kube::api::ObjectMeta {
                        name: Some(name.clone()),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                let _ = Api::<Namespace>::all(client.clone())
                    .create(&PostParams::default(), &ns)
                    .await;
                let api: Api<ConfigMap> = Api::namespaced(client, &name);
                for i in 0..per_ns {
                    let mut cm = ConfigMap::default();
                    cm.metadata.name = Some(format!("unrelated-{i}"));
                    cm.binary_data = Some(
                        [(
                            "blob".to_string(),
                            ByteString(noise(bytes, (n * per_ns + i) as u64 + 7)),
                        )]
                        .into(),
                    );
                    if api.create(&PostParams::default(), &cm).await.is_ok() {
                        made.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
        .await;
    println!(
        "{}",
        json!({"bench": "fill", "configmaps": made.load(Ordering::Relaxed), "seconds": started.elapsed().as_secs_f64()})
    );
    Ok(())
}

/// The first environment id of the namespaces the tokens case creates.
const ENV_ID_BASE: usize = 1_000_000;
/// The label every namespace the tokens case creates carries.
const BENCH_TARGET_LABEL: &str = "insights-remote.bench/environment";

async fn tokens(count: usize, concurrency: usize, prefix: &str, mode: &str) -> Result<()> {
    let client = Client::try_default().await?;
    let started = Instant::now();
    // Ceiling: the Secret is written by a second client as soon as its
    // namespace exists, as the operator does, without holding a creation slot.
    let writes = Arc::new(Mutex::new(Vec::<tokio::task::JoinHandle<()>>::new()));
    // `wait` and `ceiling-secrets`: the namespaces exist already (made by
    // `precreate`).
    let to_create = if mode == "wait" || mode == "ceiling-secrets" {
        0
    } else {
        count
    };
    if mode == "ceiling-secrets" {
        // The API server's create ceiling for as many Secrets as the
        // operator mints, of the same size, `concurrency` at once; named so
        // the operator (started afterwards) ignores them.
        futures::stream::iter(0..count)
            .for_each_concurrent(concurrency, |i| {
                let api = Api::<Secret>::namespaced(client.clone(), &format!("{prefix}-{i}"));
                async move {
                    let s = Secret {
                        metadata: kube::api::ObjectMeta {
                            name: Some("bench-ceiling".into()),
                            ..Default::default()
                        },
                        string_data: Some([("INSIGHTS_TOKEN".to_string(), "x".repeat(300))].into()),
                        ..Default::default()
                    };
                    api.create(&PostParams::default(), &s).await.unwrap();
                }
            })
            .await;
        println!(
            "{}",
            json!({"bench": "tokens", "mode": mode, "count": count, "done_s": started.elapsed().as_secs_f64()})
        );
        return Ok(());
    }
    futures::stream::iter(0..to_create)
        .for_each_concurrent(concurrency, |i| {
            let (client, writes) = (client.clone(), writes.clone());
            async move {
                let name = format!("{prefix}-{i}");
                let ns = Namespace {
                    metadata: kube::api::ObjectMeta {
                        name: Some(name.clone()),
                        labels: Some(
                            [
                                ("lagoon.sh/project".to_string(), prefix.to_string()),
                                ("lagoon.sh/environment".to_string(), format!("env{i}")),
                                // Lagoon environment ids start at 1: an id of 0 is refused.
                                // Far from the tests' and the demo's ids: a namespace
                                // created earlier with the same id keeps it.
                                (
                                    "lagoon.sh/environmentId".to_string(),
                                    (ENV_ID_BASE + i).to_string(),
                                ),
                                // What the environments case targets (TOKEN_TARGET_LABEL),
                                // so its operator leaves other namespaces alone.
                                (BENCH_TARGET_LABEL.to_string(), "true".to_string()),
                            ]
                            .into(),
                        ),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                Api::<Namespace>::all(client.clone())
                    .create(&PostParams::default(), &ns)
                    .await
                    .unwrap();
                if mode == "ceiling" {
                    let s = Secret {
                        metadata: kube::api::ObjectMeta {
                            name: Some("insights-token".into()),
                            ..Default::default()
                        },
                        string_data: Some([("INSIGHTS_TOKEN".to_string(), "x".repeat(300))].into()),
                        ..Default::default()
                    };
                    let api = Api::<Secret>::namespaced(client, &name);
                    writes.lock().unwrap().push(tokio::spawn(async move {
                        api.create(&PostParams::default(), &s).await.unwrap();
                    }));
                }
            }
        })
        .await;
    let created = started.elapsed().as_secs_f64();
    if mode == "precreate" {
        println!(
            "{}",
            json!({"bench": "tokens", "mode": mode, "count": count, "created_s": created})
        );
        return Ok(());
    }
    let pending: Vec<_> = std::mem::take(&mut *writes.lock().unwrap());
    for w in pending {
        w.await?;
    }
    let secrets: Api<Secret> = Api::all(client.clone());
    // This client's own requests while waiting (the caller subtracts them
    // from the API server's count).
    let mine = format!("{prefix}-");
    let polls = poll_until(
        count,
        started,
        Duration::from_secs(600),
        Duration::from_millis(100),
        "Secrets",
        || async {
            let n = secrets
                .list_metadata(&ListParams::default().fields("metadata.name=insights-token"))
                .await?
                .items
                .iter()
                .filter(|s| {
                    s.metadata
                        .namespace
                        .as_deref()
                        .is_some_and(|n| n.starts_with(&mine))
                })
                .count();
            Ok((n, 1))
        },
    )
    .await?;
    println!(
        "{}",
        json!({"bench": "tokens", "mode": mode, "count": count, "created_s": created, "done_s": started.elapsed().as_secs_f64(), "polls": polls})
    );
    Ok(())
}

/// Where a backlog's ConfigMaps go: `count` of them, round robin over
/// `namespaces` Lagoon namespaces named `{prefix}-{j}`.
struct Spread {
    prefix: String,
    namespaces: usize,
    count: usize,
}

impl Spread {
    fn namespace(&self, i: usize) -> String {
        format!("{}-{}", self.prefix, i % self.namespaces)
    }
}

async fn backlog_precreate(spread: &Spread, concurrency: usize) -> Result<()> {
    let client = Client::try_default().await?;
    let started = Instant::now();
    futures::stream::iter(0..spread.namespaces)
        .for_each_concurrent(concurrency, |j| {
            let client = client.clone();
            let name = spread.namespace(j);
            async move {
                let ns = Namespace {
                    metadata: kube::api::ObjectMeta {
                        name: Some(name),
                        labels: Some(
                            [
                                ("lagoon.sh/project".to_string(), "bench-backlog".to_string()),
                                ("lagoon.sh/environment".to_string(), format!("env{j}")),
                                // What the operator believes (not the ConfigMap's
                                // own label): Dependency-Track takes production
                                // SBOMs only, upstream's default.
                                (
                                    "lagoon.sh/environmentType".to_string(),
                                    "production".to_string(),
                                ),
                            ]
                            .into(),
                        ),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                Api::<Namespace>::all(client)
                    .create(&PostParams::default(), &ns)
                    .await
                    .unwrap();
            }
        })
        .await;
    futures::stream::iter(0..spread.count)
        .for_each_concurrent(concurrency, |i| {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &spread.namespace(i));
            // Speaking for its own namespace's environment (a ConfigMap
            // naming another one is rejected, not forwarded).
            let mut cm = insights_cm(i, true);
            let labels = cm.metadata.labels.get_or_insert_default();
            labels.insert("lagoon.sh/project".into(), "bench-backlog".into());
            // As a build labels it (the namespace's label decides).
            labels.insert("lagoon.sh/environmentType".into(), "production".into());
            let env = format!("env{}", i % spread.namespaces);
            labels.insert("lagoon.sh/environment".into(), env.clone());
            cm.metadata
                .annotations
                .get_or_insert_default()
                .insert("lagoon.sh/branch".into(), env);
            async move {
                api.create(&PostParams::default(), &cm).await.unwrap();
            }
        })
        .await;
    println!(
        "{}",
        json!({"bench": "backlog", "mode": "precreate", "namespaces": spread.namespaces, "count": spread.count, "created_s": started.elapsed().as_secs_f64()})
    );
    Ok(())
}

/// The plain client's create + one patch per ConfigMap (the write the
/// operator must make), as many as the backlog, in the same namespaces,
/// without the insights type (nothing forwards them).
async fn backlog_ceiling(spread: &Spread, concurrency: usize) -> Result<()> {
    let client = Client::try_default().await?;
    let started = Instant::now();
    futures::stream::iter(0..spread.count)
        .for_each_concurrent(concurrency, |i| {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &spread.namespace(i));
            async move {
                let mut cm = insights_cm(i, false);
                let name = format!("bench-ceiling-{i}");
                cm.metadata.name = Some(name.clone());
                api.create(&PostParams::default(), &cm).await.unwrap();
                let patch = json!({"metadata": {"labels": {"lagoon.sh/insightsProcessed": "1"}, "annotations": {"lagoon.sh/insightsProcessed": "2026-01-01T00:00:00Z"}}});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .unwrap();
            }
        })
        .await;
    println!(
        "{}",
        json!({"bench": "backlog", "mode": "ceiling", "count": spread.count, "done_s": started.elapsed().as_secs_f64()})
    );
    Ok(())
}

/// Declares and binds the queue (the Go original publishes to its exchange
/// without declaring one), then reads every message while a metadata watch
/// over the backlog's ConfigMaps waits for each to carry the processed
/// annotation (both implementations write it). Counts every delivery and
/// every distinct ConfigMap, so a ConfigMap forwarded twice shows.
async fn backlog_drain(spread: &Spread, host: &str, exchange: &str, queue: &str) -> Result<()> {
    let client = Client::try_default().await?;
    let (_conn, ch) = bound_channel(host, exchange, queue).await?;
    let mut deliveries = consume(&ch, queue, "bench-backlog").await?;
    // The caller starts the operator once this line is out.
    eprintln!("listening");
    let started = Instant::now();
    let tally: Arc<Mutex<(u64, HashMap<String, u32>)>> = Arc::default();
    let counting = tally.clone();
    let reader = tokio::spawn(async move {
        // Only the labels are read (see `configmaps`).
        #[derive(serde::Deserialize)]
        struct Landed {
            labels: HashMap<String, String>,
        }
        while let Some(Ok(d)) = deliveries.next().await {
            let v: Landed = serde_json::from_slice(&d.data).unwrap();
            let mut t = counting.lock().unwrap();
            t.0 += 1;
            if let Some(id) = v.labels.get("bench-id") {
                *t.1.entry(id.clone()).or_default() += 1;
            }
        }
    });
    let meta_api: Api<PartialObjectMeta<ConfigMap>> = Api::all(client);
    let (store, writer) = reflector::store();
    let selector = "bench-id,lagoon.sh/insightsType";
    let mut events = reflector::reflector(
        writer,
        watcher::watcher(meta_api, watcher::Config::default().labels(selector)),
    )
    .boxed();
    let prefix = format!("{}-", spread.prefix);
    let mine =
        |m: &PartialObjectMeta<ConfigMap>| m.namespace().is_some_and(|n| n.starts_with(&prefix));
    tokio::time::timeout(Duration::from_secs(1800), async {
        let mut listed = false;
        while let Some(ev) = events.next().await {
            listed |= matches!(ev?, watcher::Event::InitDone);
            if listed
                && store
                    .state()
                    .iter()
                    .filter(|m| {
                        mine(m) && m.annotations().contains_key("lagoon.sh/insightsProcessed")
                    })
                    .count()
                    >= spread.count
            {
                return Ok::<_, anyhow::Error>(());
            }
        }
        anyhow::bail!("the watch ended")
    })
    .await
    .map_err(|_| anyhow::anyhow!("timed out after 1800 s"))??;
    let done = started.elapsed().as_secs_f64();
    // Every message published before its mark has reached the queue: read
    // until each ConfigMap has arrived and the broker holds none.
    let settled = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let arrived = tally.lock().unwrap().1.len();
            let waiting = ch
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions {
                        passive: true,
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?
                .message_count();
            if arrived >= spread.count && waiting == 0 {
                return Ok::<_, anyhow::Error>(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    reader.abort();
    let (deliveries, per_id) = {
        let t = tally.lock().unwrap();
        (t.0, t.1.clone())
    };
    let twice = per_id.values().filter(|&&n| n > 1).count();
    println!(
        "{}",
        json!({"bench": "backlog", "mode": "drain", "namespaces": spread.namespaces, "count": spread.count,
               "done_s": done, "deliveries": deliveries, "distinct": per_id.len(), "twice": twice,
               "settled": settled.is_ok()})
    );
    Ok(())
}

/// Polls the token Secrets of the namespaces `{prefix}-*` (a paged list of
/// the Secrets named `insights-token`, every 500 ms) until `count` of them
/// hold a token that verifies with `key` as the current key.
async fn rotated(count: usize, prefix: &str, key: &str) -> Result<()> {
    use insights_remote::token::KeyRing;
    let ring = KeyRing::with_previous(key, std::iter::empty::<&[u8]>())?;
    let client = Client::try_default().await?;
    let secrets: Api<Secret> = Api::all(client);
    let started = Instant::now();
    let mine = format!("{prefix}-");
    let polls = poll_until(
        count,
        started,
        Duration::from_secs(900),
        Duration::from_millis(500),
        "tokens signed with the new key",
        || async {
            let (mut signed, mut requests) = (0, 0);
            let mut params = ListParams::default()
                .fields("metadata.name=insights-token")
                .limit(500);
            loop {
                requests += 1;
                let page = secrets.list(&params).await?;
                signed += page
                    .items
                    .iter()
                    .filter(|s| s.namespace().is_some_and(|n| n.starts_with(&mine)))
                    .filter_map(|s| s.data.as_ref()?.get("INSIGHTS_TOKEN"))
                    .filter_map(|t| std::str::from_utf8(&t.0).ok())
                    .filter(|t| ring.verify_current(t).is_ok())
                    .count();
                match page.metadata.continue_ {
                    Some(c) if !c.is_empty() => params = params.continue_token(&c),
                    _ => return Ok((signed, requests)),
                }
            }
        },
    )
    .await?;
    println!(
        "{}",
        json!({"bench": "tokens", "mode": "rotated", "count": count, "done_s": started.elapsed().as_secs_f64(), "polls": polls})
    );
    Ok(())
}

/// Asks `count_now` (what is there now, and in how many requests) every
/// `every` until it reaches `target`; an error once `limit` has passed
/// since `started`. Returns the requests made.
async fn poll_until<F, Fut>(
    target: usize,
    started: Instant,
    limit: Duration,
    every: Duration,
    what: &str,
    mut count_now: F,
) -> Result<u64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(usize, u64)>>,
{
    let mut requests = 0;
    loop {
        let (n, made) = count_now().await?;
        requests += made;
        if n >= target {
            return Ok(requests);
        }
        if started.elapsed() > limit {
            anyhow::bail!("timed out after {} s with {n} {what}", limit.as_secs());
        }
        tokio::time::sleep(every).await;
    }
}
