//! Follows the InsightsRemoteConfig named by `--config-name`: resolves it and
//! its Secrets into live settings (broker, signing key, behaviour), and writes
//! its status. Without the resource, the flags and environment apply.
//!
//! - [`spec`]: what a spec asks for on top of flags and environment, and the
//!   typed [`Problem`]s (pure, tested as tables);
//! - [`resolve`]: reads the Secrets the spec names (the API calls);
//! - this file: the follower's loop, and applying a resolved spec to the
//!   live [`Context`];
//! - [`status`]: the status, built by a pure function and written in batches.

mod resolve;
/// The custom resource as an overlay on the settings (pure; in `settings`).
pub use crate::settings::overlay as spec;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::Api;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{ConfigHealth, Context};
use crate::crd::InsightsRemoteConfig;
pub use spec::{broker_settings, operations, referenced_secrets, secret_namespace, Problem};
pub use status::write_status;

/// Re-reads the resource's Secrets on every change, and at least this often.
const RESYNC: Duration = Duration::from_secs(30);

/// Follows the resource through a cache (a reflector the status writer
/// reads too) and the names of the Secrets in the operator's namespace
/// (metadata only); re-resolves when the resource or a Secret it names
/// changes, and every [`RESYNC`].
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let Some(writer) = ctx.config_writer.lock().expect("writer lock").take() else {
        warn!("the InsightsRemoteConfig follower already runs in this process");
        return;
    };
    let key = ObjectRef::new(&ctx.config_name);
    let irc: Api<InsightsRemoteConfig> = Api::all(ctx.client.clone());
    let by_name = watcher::Config::default().fields(&format!("metadata.name={}", ctx.config_name));
    // Backoff on errors: a missing CRD or denied RBAC must not become a hot
    // loop against the API server.
    let mut irc_events = reflector(writer, watcher::watcher(irc, by_name))
        .default_backoff()
        .boxed();
    // Each Secret the resource names is watched by name (metadata only), so
    // the operator's Role may grant exactly those names (resourceNames):
    // it never lists the other Secrets of its namespace.
    let secrets: Api<PartialObjectMeta<Secret>> =
        Api::namespaced(ctx.client.clone(), &ctx.pod_namespace);
    let mut watched = std::collections::BTreeSet::new();
    let mut secret_events = futures::stream::SelectAll::new();
    // Until the cache is filled, the settings loaded at start-up stay.
    let mut cached = false;
    let mut tick = tokio::time::interval(RESYNC);
    let stop = shutdown.cancelled_owned();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
            Some(ev) = irc_events.next() => match ev {
                Ok(watcher::Event::InitDone) => cached = true,
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {}
                Ok(_) => continue,
                Err(e) => {
                    ctx.metrics.count_watch_error("config");
                    warn!(error = %e, "watching InsightsRemoteConfig");
                    continue;
                }
            },
            Some(ev) = secret_events.next() => match ev {
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {}
                Ok(_) => continue,
                Err(e) => {
                    ctx.metrics.count_watch_error("secrets");
                    warn!(error = %e, "watching Secrets");
                    continue
                }
            },
        }
        if cached {
            let irc = ctx.config_store.get(&key);
            let names = irc
                .as_deref()
                .map(|irc| referenced_secrets(&irc.spec, &ctx.pod_namespace))
                .unwrap_or_default();
            if names != watched {
                secret_events = futures::stream::SelectAll::new();
                for name in &names {
                    let by_name =
                        watcher::Config::default().fields(&format!("metadata.name={name}"));
                    secret_events.push(
                        watcher::watcher(secrets.clone(), by_name)
                            .default_backoff()
                            .boxed(),
                    );
                }
                watched = names;
            }
            apply_resource(&ctx, irc.as_deref()).await;
        }
    }
}

/// Reads the resource once (at start-up, before anything reconciles) and
/// applies it, or the baseline when there is none; afterwards [`run`]
/// follows it through its cache.
pub async fn sync(ctx: &Context) {
    let api: Api<InsightsRemoteConfig> = Api::all(ctx.client.clone());
    match api.get_opt(&ctx.config_name).await {
        Ok(irc) => apply_resource(ctx, irc.as_ref()).await,
        Err(e) => ctx.report(
            "InsightsRemoteConfig",
            &e,
            "cannot read the InsightsRemoteConfig; keeping current settings",
        ),
    }
}

/// Applies the resource (or the baseline) to the live context: the broker,
/// the key ring and the behaviour settings, each kept as it is when its
/// part did not resolve; the problems go to the status.
async fn apply_resource(ctx: &Context, irc: Option<&InsightsRemoteConfig>) {
    let mut health = ConfigHealth::default();
    let (broker, keys, ops) = match irc {
        None => (
            Some(ctx.baseline.broker.clone()),
            ctx.baseline.keys.clone(),
            ctx.baseline.ops.clone(),
        ),
        Some(irc) => {
            health.observed_generation = irc.metadata.generation;
            let r = resolve::resolve(ctx, &irc.spec).await;
            let broker = r.broker.map_err(|p| health.broker_problem = Some(p)).ok();
            let keys = r
                .keys
                .map_err(|p| health.signing_key_problem = Some(p))
                .ok();
            let ops = r.ops.map_err(|p| health.settings_problem = Some(p)).ok();
            (
                broker,
                keys,
                ops.unwrap_or_else(|| ctx.ops.borrow().clone()),
            )
        }
    };
    if let Some(p) = &health.settings_problem {
        warn!(problem = %p, "InsightsRemoteConfig: keeping the current behaviour settings");
    }
    if let (Some(b), Some(p)) = (broker, &ctx.publisher) {
        p.reconfigure(b);
    }
    match keys {
        Some(k) => health.key_fingerprint = Some(apply_keys(ctx, irc, k).await),
        None if health.signing_key_problem.is_none() => {
            health.signing_key_problem = Some(Problem::NoSigningKey(
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
        std::mem::replace(&mut *h, health) != *h
    };
    if changed {
        ctx.status_changed.notify_one();
    }
}

/// Makes `keys` the signing keys (said in an Event on the resource when
/// they changed); their fingerprint.
async fn apply_keys(
    ctx: &Context,
    irc: Option<&InsightsRemoteConfig>,
    keys: std::sync::Arc<crate::token::KeyRing>,
) -> String {
    let fp = keys.fingerprint();
    let changed = ctx.keys.send_if_modified(|cur| {
        if cur.same_keys(&keys) {
            false
        } else {
            *cur = keys.clone();
            true
        }
    });
    if changed {
        info!(key = %fp, "signing key changed; tokens will be re-minted");
        if let Some(irc) = irc {
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
    fp
}
