//! Follows the InsightsRemoteConfig named by `--config-name`: resolves it and
//! its Secrets into live settings (broker, signing key, behaviour), and writes
//! its status. Without the resource, the flags and environment apply.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{until_shutdown, ConfigHealth, Context};
use crate::broker::{BrokerSettings, TlsSettings};
use crate::crd::{
    BrokerSpec, InsightsRemoteConfig, InsightsRemoteConfigSpec, InsightsRemoteConfigStatus,
    SecretKeyRef,
};
use crate::settings::Operations;
use crate::token::KeyRing;

/// Re-reads the resource and its Secrets on every change, and at least this often.
const RESYNC: Duration = Duration::from_secs(30);

pub async fn run(ctx: Arc<Context>, shutdown: watch::Receiver<bool>) {
    let irc: Api<InsightsRemoteConfig> = Api::all(ctx.client.clone());
    let by_name = watcher::Config::default().fields(&format!("metadata.name={}", ctx.config_name));
    let mut irc_events = watch_config(irc, by_name).boxed();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.pod_namespace);
    // Backoff on errors: a missing CRD or denied RBAC must not become a hot
    // loop against the API server.
    let mut secret_events = watcher::watcher(secrets, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut tick = tokio::time::interval(RESYNC);
    let stop = until_shutdown(shutdown);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
            Some(ev) = irc_events.next() => if let Err(e) = ev {
                ctx.metrics.count_watch_error("config");
                warn!(error = %e, "watching InsightsRemoteConfig");
                continue;
            },
            Some(ev) = secret_events.next() => match ev {
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) => {}
                Ok(_) => continue,
                Err(e) => {
                    ctx.metrics.count_watch_error("secrets");
                    warn!(error = %e, "watching Secrets");
                    continue
                }
            },
        }
        sync(&ctx).await;
    }
}

fn watch_config(
    api: Api<InsightsRemoteConfig>,
    wc: watcher::Config,
) -> impl futures::Stream<Item = Result<(), watcher::Error>> {
    watcher::watcher(api, wc)
        .default_backoff()
        .map(|e| e.map(|_| ()))
}

/// Loads the resource (or the baseline) and applies it to the live context.
pub async fn sync(ctx: &Context) {
    let api: Api<InsightsRemoteConfig> = Api::all(ctx.client.clone());
    let irc = match api.get_opt(&ctx.config_name).await {
        Ok(irc) => irc,
        Err(e) => {
            ctx.report(
                "InsightsRemoteConfig",
                &e,
                "cannot read the InsightsRemoteConfig; keeping current settings",
            );
            return;
        }
    };
    let mut health = ConfigHealth::default();
    let (broker, keys, ops) = match &irc {
        None => (
            Some(ctx.baseline.broker.clone()),
            ctx.baseline.keys.clone(),
            ctx.baseline.ops.clone(),
        ),
        Some(irc) => {
            health.observed_generation = irc.metadata.generation;
            let spec = &irc.spec;
            let broker = match resolve_broker(ctx, spec).await {
                Ok(b) => Some(b),
                Err(msg) => {
                    health.broker_problem = Some(("SecretUnavailable".into(), msg));
                    None
                }
            };
            let keys = match resolve_keys(ctx, spec).await {
                Ok(k) => Some(k),
                Err((reason, msg)) => {
                    health.signing_key_problem = Some((reason, msg));
                    None
                }
            };
            let ops = match operations(&ctx.baseline.ops, spec) {
                Ok(mut ops) => match &spec.dependency_track.api_key_secret {
                    None => Some(ops),
                    Some(r) => match secret_ref(ctx, r).await {
                        Ok(k) => {
                            ops.dependency_track.api_key =
                                String::from_utf8_lossy(&k).trim().to_string();
                            Some(ops)
                        }
                        Err(msg) => {
                            health.settings_problem = Some((
                                "SecretUnavailable".into(),
                                format!("Dependency-Track API key: {msg}"),
                            ));
                            None
                        }
                    },
                },
                Err(msg) => {
                    health.settings_problem = Some(("InvalidSpec".into(), msg));
                    None
                }
            };
            (
                broker,
                keys,
                ops.unwrap_or_else(|| ctx.ops.borrow().clone()),
            )
        }
    };
    if let Some((_, msg)) = &health.settings_problem {
        warn!(problem = %msg, "InsightsRemoteConfig: keeping the current behaviour settings");
    }
    if let (Some(b), Some(p)) = (broker, &ctx.publisher) {
        p.reconfigure(b);
    }
    match keys {
        Some(k) => {
            let fp = k.fingerprint();
            let changed = ctx.keys.send_if_modified(|cur| {
                if cur.same_keys(&k) {
                    false
                } else {
                    *cur = k.clone();
                    true
                }
            });
            if changed {
                info!(key = %fp, "signing key changed; tokens will be re-minted");
                if let Some(irc) = &irc {
                    ctx.event(
                        irc,
                        EventType::Normal,
                        "KeyRotated",
                        "Rotate",
                        format!("signing key is now {fp}; re-minting tokens"),
                    )
                    .await;
                }
            }
            health.key_fingerprint = Some(fp);
        }
        None if health.signing_key_problem.is_none() => {
            health.signing_key_problem = Some((
                "NoSigningKey".into(),
                "no signing key: set spec.signingKey.secretRef or INSIGHTS_TOKEN_SECRET".into(),
            ));
        }
        None => {}
    }
    ctx.ops.send_if_modified(|cur| {
        if *cur == ops {
            false
        } else {
            info!(?ops, "settings changed");
            *cur = ops;
            true
        }
    });
    let changed = {
        let mut h = ctx.health.lock().expect("health lock");
        let changed = *h != health;
        *h = health;
        changed
    };
    if changed {
        ctx.status_changed.notify_one();
    }
}

/// The behaviour the resource asks for: each field it sets, else the value
/// from flags and environment.
pub fn operations(
    base: &Operations,
    spec: &InsightsRemoteConfigSpec,
) -> Result<Operations, String> {
    let f = &spec.forwarding;
    let d = &spec.dependency_track;
    let b = &base.dependency_track;
    let pick = |v: &Option<String>, base: &crate::dependency_track::Template| {
        v.clone().unwrap_or_else(|| base.source().to_string())
    };
    let templates = crate::dependency_track::Templates::parse(
        &pick(&d.root_project_name_template, &b.templates.root),
        &pick(&d.parent_project_name_template, &b.templates.parent),
        &pick(&d.project_name_template, &b.templates.project),
        &pick(&d.version_template, &b.templates.version),
    )
    .map_err(|e| format!("spec.dependencyTrack: {e}"))?;
    let bs = &spec.build_scanner;
    let mut extra_env = base.build_scanner.extra_env.clone();
    for (k, v) in &bs.extra_env {
        crate::settings::parse_env_pair(&format!("{k}={v}"))
            .map_err(|e| format!("spec.buildScanner.extraEnv: {e}"))?;
        extra_env.retain(|(key, _)| key != k);
        extra_env.push((k.clone(), v.clone()));
    }
    Ok(Operations {
        burn_after_reading: spec.burn_after_reading.unwrap_or(base.burn_after_reading),
        forwarding_enabled: f.enabled.unwrap_or(base.forwarding_enabled),
        deferred_enabled: base.deferred_enabled,
        mins_between_retries: f
            .minutes_between_retries
            .unwrap_or(base.mins_between_retries),
        max_retries: f.max_retries.unwrap_or(base.max_retries),
        require_core_enabled: f
            .require_core_insights_enabled
            .unwrap_or(base.require_core_enabled),
        tokens_enabled: spec.tokens.enabled.unwrap_or(base.tokens_enabled),
        target_label: match &spec.tokens.target_label {
            Some(l) if l.is_empty() => None,
            Some(l) => Some(l.clone()),
            None => base.target_label.clone(),
        },
        dependency_track: crate::dependency_track::Settings {
            enabled: d.enabled.unwrap_or(b.enabled),
            endpoint: d.api_endpoint.clone().unwrap_or_else(|| b.endpoint.clone()),
            // Resolved from the Secret by the caller when the resource names one.
            api_key: b.api_key.clone(),
            templates,
            push_prod_only: d.push_prod_only.unwrap_or(b.push_prod_only),
        },
        build_scanner: crate::controller::build::ScannerSettings {
            enabled: bs.enabled.unwrap_or(base.build_scanner.enabled),
            image: bs
                .image
                .clone()
                .filter(|i| !i.is_empty())
                .unwrap_or_else(|| base.build_scanner.image.clone()),
            extra_env,
        },
    })
}

/// The broker settings the resource asks for, Secrets aside: each field it
/// sets, else the value from flags and environment.
pub fn broker_settings(base: &BrokerSettings, spec: &BrokerSpec) -> BrokerSettings {
    let pick = |v: &Option<String>, b: &String| v.clone().unwrap_or_else(|| b.clone());
    BrokerSettings {
        host: pick(&spec.address, &base.host),
        vhost: pick(&spec.vhost, &base.vhost),
        exchange: pick(&spec.exchange, &base.exchange),
        queue: pick(&spec.queue, &base.queue),
        routing_key: pick(&spec.routing_key, &base.routing_key),
        ..base.clone()
    }
}

/// Secrets are read only from the operator's own namespace: a resource
/// naming another namespace's Secret is refused, so it cannot be used to
/// read (and send to a broker of one's choosing) any Secret in the cluster.
pub fn secret_namespace<'a>(asked: Option<&'a str>, own: &'a str) -> Result<&'a str, String> {
    match asked {
        None => Ok(own),
        Some(ns) if ns.is_empty() || ns == own => Ok(own),
        Some(ns) => Err(format!(
            "Secret references must be in the operator's namespace {own:?}, not {ns:?}"
        )),
    }
}

async fn secret_value(
    ctx: &Context,
    namespace: Option<&str>,
    name: &str,
    key: &str,
) -> Result<Vec<u8>, String> {
    let ns = secret_namespace(namespace, &ctx.pod_namespace)?;
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret = api
        .get_opt(name)
        .await
        .map_err(|e| format!("reading Secret {ns}/{name}: {e}"))?
        .ok_or_else(|| format!("Secret {ns}/{name} not found"))?;
    secret
        .data
        .and_then(|mut d| d.remove(key))
        .map(|b| b.0)
        .ok_or_else(|| format!("Secret {ns}/{name} has no key {key:?}"))
}

async fn secret_ref(ctx: &Context, r: &SecretKeyRef) -> Result<Vec<u8>, String> {
    secret_value(ctx, r.namespace.as_deref(), &r.name, &r.key).await
}

async fn resolve_broker(
    ctx: &Context,
    spec: &InsightsRemoteConfigSpec,
) -> Result<BrokerSettings, String> {
    let b = &spec.broker;
    let mut settings = broker_settings(&ctx.baseline.broker, b);
    if let Some(c) = &b.credentials_secret {
        let ns = c.namespace.as_deref();
        let text =
            |v: Vec<u8>| String::from_utf8(v).map_err(|_| "credentials are not UTF-8".to_string());
        settings.username = text(secret_value(ctx, ns, &c.name, &c.username_key).await?)?;
        settings.password = text(secret_value(ctx, ns, &c.name, &c.password_key).await?)?;
    }
    if let Some(tls) = &b.tls {
        let mut t = TlsSettings::default();
        if let Some(ca) = &tls.ca_secret {
            t.ca_pem = Some(String::from_utf8_lossy(&secret_ref(ctx, ca).await?).into_owned());
        }
        if let Some(name) = &tls.client_certificate_secret {
            t.client_cert_pem = Some(secret_value(ctx, None, name, "tls.crt").await?);
            t.client_key_pem = Some(secret_value(ctx, None, name, "tls.key").await?);
        }
        settings.tls = Some(t);
    }
    Ok(settings)
}

async fn resolve_keys(
    ctx: &Context,
    spec: &InsightsRemoteConfigSpec,
) -> Result<Arc<KeyRing>, (String, String)> {
    let Some(current_ref) = &spec.signing_key.secret_ref else {
        return ctx.baseline.keys.clone().ok_or_else(|| {
            (
                "NoSigningKey".into(),
                "spec.signingKey.secretRef is not set and INSIGHTS_TOKEN_SECRET is empty".into(),
            )
        });
    };
    let unavailable = |m: String| ("SecretUnavailable".to_string(), m);
    let current = secret_ref(ctx, current_ref).await.map_err(unavailable)?;
    let mut previous = Vec::new();
    for r in &spec.signing_key.previous_secret_refs {
        previous.push(secret_ref(ctx, r).await.map_err(unavailable)?);
    }
    let trim = |v: &[u8]| -> Vec<u8> { v.strip_suffix(b"\n").unwrap_or(v).to_vec() };
    KeyRing::with_previous(trim(&current), previous.iter().map(|p| trim(p)))
        .map(Arc::new)
        .map_err(|e| ("InvalidKey".into(), e.to_string()))
}

/// Writes status: conditions when they change, counters batched (at most
/// one write every two seconds, not one per ConfigMap).
pub async fn write_status(ctx: Arc<Context>, shutdown: watch::Receiver<bool>) {
    let api: Api<InsightsRemoteConfig> = Api::all(ctx.client.clone());
    let mut broker_rx = ctx.publisher.as_ref().map(|p| p.subscribe_state());
    let mut last_written: Option<InsightsRemoteConfigStatus> = None;
    // Totals already in the status when this process started counting.
    let mut base: Option<InsightsRemoteConfigStatus> = None;
    let mut was_connected: Option<bool> = None;
    // What earlier terms of this process counted (already in the status).
    let at_start = {
        let c = &ctx.counters;
        let load = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
        [
            load(&c.forwarded),
            load(&c.deferred),
            load(&c.rejected),
            load(&c.burned),
            load(&c.tokens_issued),
        ]
    };
    let stop = until_shutdown(shutdown);
    tokio::pin!(stop);
    loop {
        let broker_changed = async {
            match broker_rx.as_mut() {
                Some(rx) => rx.changed().await.map_err(|_| ()),
                None => futures::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stop => return,
            _ = ctx.status_changed.notified() => {}
            _ = broker_changed => {}
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
        // Batch: let more changes gather before writing.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let irc = match api.get_opt(&ctx.config_name).await {
            Ok(Some(irc)) => irc,
            Ok(None) => {
                base = None;
                last_written = None;
                continue;
            }
            Err(e) => {
                ctx.report(
                    "InsightsRemoteConfig status",
                    &e,
                    "reading the InsightsRemoteConfig for status",
                );
                continue;
            }
        };
        let current = irc.status.clone().unwrap_or_default();
        // Start from the stored totals (earlier processes and terms), and
        // add what this term counts from now on.
        let base = base.get_or_insert_with(|| {
            let mut b = current.clone();
            b.forwarded = b.forwarded.wrapping_sub(at_start[0]);
            b.deferred = b.deferred.wrapping_sub(at_start[1]);
            b.rejected = b.rejected.wrapping_sub(at_start[2]);
            b.burned = b.burned.wrapping_sub(at_start[3]);
            b.tokens_issued = b.tokens_issued.wrapping_sub(at_start[4]);
            b
        });
        let status = build_status(&ctx, base, &current);
        let connected = status
            .conditions
            .iter()
            .any(|c| c.type_ == "BrokerConnected" && c.status == "True");
        if was_connected.is_some_and(|w| w != connected) {
            let (reason, note) = if connected {
                (
                    "BrokerConnected",
                    "connected to the message broker".to_string(),
                )
            } else {
                (
                    "BrokerLost",
                    format!("lost the message broker: {}", broker_message(&ctx)),
                )
            };
            let t = if connected {
                EventType::Normal
            } else {
                EventType::Warning
            };
            ctx.event(&irc, t, reason, "Connect", note).await;
        }
        was_connected = Some(connected);
        if last_written.as_ref() == Some(&status) && irc.status.as_ref() == Some(&status) {
            continue;
        }
        let patch = json!({ "status": status });
        match api
            .patch_status(
                &irc.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => last_written = Some(status),
            Err(e) => warn!(error = %e, "writing InsightsRemoteConfig status"),
        }
    }
}

fn broker_message(ctx: &Context) -> String {
    match &ctx.publisher {
        None => "publishing is disabled".into(),
        Some(p) => p.state().last_error.unwrap_or_else(|| "connecting".into()),
    }
}

fn build_status(
    ctx: &Context,
    base: &InsightsRemoteConfigStatus,
    current: &InsightsRemoteConfigStatus,
) -> InsightsRemoteConfigStatus {
    let health = ctx.health.lock().expect("health lock").clone();
    let c = &ctx.counters;
    let broker_ok = ctx.publisher.as_ref().map(|p| p.state().connected);
    let unverified = ctx.publisher.as_ref().is_some_and(|p| p.state().unverified);
    let (broker_status, broker_reason, broker_msg) = match (&health.broker_problem, broker_ok) {
        (Some((reason, msg)), _) => ("False", reason.clone(), msg.clone()),
        (None, None) => (
            "False",
            "Disabled".into(),
            "RABBITMQ_ENABLED is false".into(),
        ),
        (None, Some(true)) if unverified => (
            "True",
            "ConnectedUnverified".into(),
            "publishing with confirms over TLS WITHOUT verifying the broker's certificate (RABBITMQ_VERIFY=false)".into(),
        ),
        (None, Some(true)) => (
            "True",
            "Connected".into(),
            "publishing with confirms".into(),
        ),
        (None, Some(false)) => ("False", "Unreachable".into(), broker_message(ctx)),
    };
    let (key_status, key_reason, key_msg) = match &health.signing_key_problem {
        Some((reason, msg)) => ("False", reason.clone(), msg.clone()),
        None => (
            "True",
            "Loaded".into(),
            format!(
                "signing key {}",
                health.key_fingerprint.clone().unwrap_or_default()
            ),
        ),
    };
    let ready =
        broker_status == "True" && key_status == "True" && health.settings_problem.is_none();
    let (ready_reason, ready_msg) = if let Some((reason, msg)) = &health.settings_problem {
        (reason.clone(), msg.clone())
    } else if ready {
        (
            "Ready".to_string(),
            "forwarding insights and minting tokens".to_string(),
        )
    } else if broker_status != "True" {
        ("BrokerNotConnected".into(), broker_msg.clone())
    } else {
        ("SigningKeyNotReady".into(), key_msg.clone())
    };
    let cond = |type_: &str, status: &str, reason: String, message: String| {
        // Keep the transition time while the status stays the same.
        let since = current
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason,
            message,
            last_transition_time: since,
            observed_generation: health.observed_generation,
        }
    };
    let total =
        |b: u64, n: &std::sync::atomic::AtomicU64| b.wrapping_add(n.load(Ordering::Relaxed));
    InsightsRemoteConfigStatus {
        observed_generation: health.observed_generation,
        conditions: vec![
            cond(
                "Ready",
                if ready { "True" } else { "False" },
                ready_reason,
                ready_msg,
            ),
            cond("BrokerConnected", broker_status, broker_reason, broker_msg),
            cond("SigningKeyReady", key_status, key_reason, key_msg),
        ],
        forwarded: total(base.forwarded, &c.forwarded),
        deferred: total(base.deferred, &c.deferred),
        rejected: total(base.rejected, &c.rejected),
        burned: total(base.burned, &c.burned),
        tokens_issued: total(base.tokens_issued, &c.tokens_issued),
        last_forward_time: c
            .last_forward
            .lock()
            .expect("counters lock")
            .clone()
            .or_else(|| current.last_forward_time.clone()),
        signing_key_fingerprint: health.key_fingerprint.clone(),
        post_processors: c.steps.lock().expect("counters lock").clone(),
    }
}

#[cfg(test)]
mod spec_tests {
    use super::*;
    use crate::crd::{ForwardingSpec, TokensSpec};

    fn base_ops() -> Operations {
        Operations {
            burn_after_reading: true,
            forwarding_enabled: true,
            deferred_enabled: true,
            mins_between_retries: 3,
            max_retries: 7,
            require_core_enabled: true,
            tokens_enabled: true,
            target_label: Some("from-flags".into()),
            dependency_track: Default::default(),
            build_scanner: Default::default(),
        }
    }

    #[test]
    fn unset_fields_keep_the_flag_values() {
        let base = base_ops();
        // (what the resource says, what must change)
        let cases: Vec<(InsightsRemoteConfigSpec, Operations)> = vec![
            (InsightsRemoteConfigSpec::default(), base.clone()),
            (
                InsightsRemoteConfigSpec {
                    tokens: TokensSpec {
                        target_label: Some("only-this".into()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
                Operations {
                    target_label: Some("only-this".into()),
                    ..base.clone()
                },
            ),
            (
                InsightsRemoteConfigSpec {
                    burn_after_reading: Some(false),
                    forwarding: ForwardingSpec {
                        max_retries: Some(1),
                        require_core_insights_enabled: Some(false),
                        ..Default::default()
                    },
                    ..Default::default()
                },
                Operations {
                    burn_after_reading: false,
                    max_retries: 1,
                    require_core_enabled: false,
                    ..base.clone()
                },
            ),
            (
                // An empty label clears the flag's.
                InsightsRemoteConfigSpec {
                    tokens: TokensSpec {
                        target_label: Some(String::new()),
                        enabled: Some(false),
                    },
                    ..Default::default()
                },
                Operations {
                    target_label: None,
                    tokens_enabled: false,
                    ..base.clone()
                },
            ),
        ];
        for (spec, want) in cases {
            assert_eq!(operations(&base, &spec), Ok(want), "{spec:?}");
        }
    }

    #[test]
    fn unset_broker_fields_keep_the_flag_values() {
        let base = BrokerSettings {
            host: "rabbit.lagoon:5672".into(),
            exchange: "x".into(),
            username: "flag-user".into(),
            tls: Some(crate::broker::TlsSettings::default()),
            ..Default::default()
        };
        let same = broker_settings(&base, &BrokerSpec::default());
        assert_eq!(same, base);
        let moved = broker_settings(
            &base,
            &BrokerSpec {
                vhost: Some("lagoon".into()),
                ..Default::default()
            },
        );
        assert_eq!(moved.vhost, "lagoon");
        assert_eq!(moved.host, "rabbit.lagoon:5672");
        assert_eq!(moved.username, "flag-user");
        assert!(moved.tls.is_some());
    }

    #[test]
    fn secret_references_stay_in_the_operators_namespace() {
        assert_eq!(secret_namespace(None, "lagoon"), Ok("lagoon"));
        assert_eq!(secret_namespace(Some("lagoon"), "lagoon"), Ok("lagoon"));
        assert_eq!(secret_namespace(Some(""), "lagoon"), Ok("lagoon"));
        assert!(secret_namespace(Some("kube-system"), "lagoon").is_err());
    }
}
