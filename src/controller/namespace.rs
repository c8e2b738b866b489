//! Keeps a valid `insights-token` Secret in every Lagoon environment
//! namespace (contract section 2).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tracing::{info, warn};

use super::{until_shutdown, Context, Error, Result};
use crate::contract::{
    LABEL_DYNAMIC_SECRET, LABEL_ENVIRONMENT, LABEL_ENVIRONMENT_ID, LABEL_INSIGHTS_TOKEN,
    LABEL_PROJECT, TOKEN_SECRET_KEY, TOKEN_SECRET_NAME,
};
use crate::token::Claims;

pub const CONTROLLER: &str = "namespace";
const FIELD_MANAGER: &str = "insights-remote";

pub async fn run(ctx: Arc<Context>, shutdown: watch::Receiver<bool>) {
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let mut ns_config = watcher::Config::default().labels(LABEL_PROJECT);
    if let Some(ns) = &ctx.watch_namespace {
        ns_config = ns_config.fields(&format!("metadata.name={ns}"));
    }
    // A new key or new token settings re-check every namespace.
    let keys_changed = WatchStream::from_changes(ctx.keys.subscribe()).map(|_| ());
    let ops_changed = WatchStream::from_changes(ctx.ops.subscribe()).map(|_| ());
    let trigger = futures::stream::select(keys_changed, ops_changed);
    info!(resync = ?ctx.token_resync, "keeping environment token Secrets");
    // No watch on Secrets: that would need list/watch of every Secret in the
    // cluster. Each namespace is re-checked (one GET of its token Secret)
    // every `token_resync`, so a Secret edited or deleted by hand is put
    // right within that time.
    Controller::new(namespaces, ns_config.any_semantic())
        .reconcile_all_on(trigger)
        .graceful_shutdown_on(until_shutdown(shutdown))
        .run(reconcile_observed, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

async fn reconcile_observed(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let res = reconcile(ns, ctx.clone()).await;
    ctx.observe_reconcile(CONTROLLER, started.elapsed(), res.as_ref().err());
    res
}

pub fn error_policy(ns: Arc<Namespace>, err: &Error, _ctx: Arc<Context>) -> Action {
    warn!(namespace = %ns.name_any(), error = %err, "token reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

/// The claims a namespace's token must carry, or the labels it lacks.
pub fn desired_claims(ns: &Namespace) -> std::result::Result<Claims, Vec<&'static str>> {
    let labels = ns.labels();
    let missing: Vec<&'static str> = [LABEL_ENVIRONMENT_ID, LABEL_PROJECT, LABEL_ENVIRONMENT]
        .into_iter()
        .filter(|l| labels.get(*l).is_none_or(|v| v.is_empty()))
        .collect();
    if !missing.is_empty() {
        return Err(missing);
    }
    Ok(Claims {
        namespace: ns.name_any(),
        environment_id: labels[LABEL_ENVIRONMENT_ID].clone(),
        project_name: labels[LABEL_PROJECT].clone(),
        environment_name: labels[LABEL_ENVIRONMENT].clone(),
    })
}

pub async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action> {
    let ops = ctx.ops.borrow().clone();
    if !ops.tokens_enabled {
        return Ok(Action::await_change());
    }
    // Terminating namespaces reject new objects: leave them alone.
    let terminating = ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    if terminating {
        return Ok(Action::await_change());
    }
    if let Some(target) = &ops.target_label {
        if !ns.labels().contains_key(target) {
            return Ok(Action::await_change());
        }
    }
    let claims = match desired_claims(&ns) {
        Ok(c) => c,
        Err(missing) => {
            ctx.event(
                ns.as_ref(),
                EventType::Warning,
                "MissingLabels",
                "MintToken",
                format!(
                    "no insights token: the namespace lacks label(s) {}",
                    missing.join(", ")
                ),
            )
            .await;
            return Ok(Action::await_change());
        }
    };
    let name = ns.name_any();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &name);
    let keys = ctx.keys.borrow().clone();
    let existing = api.get_opt(TOKEN_SECRET_NAME).await?;
    if let Some(s) = &existing {
        let token = s
            .data
            .as_ref()
            .and_then(|d| d.get(TOKEN_SECRET_KEY))
            .and_then(|b| std::str::from_utf8(&b.0).ok());
        let labelled = s.labels().get(LABEL_INSIGHTS_TOKEN).map(String::as_str) == Some("true")
            && s.labels().get(LABEL_DYNAMIC_SECRET).map(String::as_str) == Some(TOKEN_SECRET_NAME);
        let valid = token
            .is_some_and(|t| !t.ends_with('\n') && keys.verify_current(t).as_ref() == Ok(&claims));
        if valid && labelled {
            return Ok(Action::requeue(ctx.token_resync));
        }
    }
    let token = keys.mint(&claims)?;
    // Server-side apply updates in place: never delete first, since Lagoon
    // mounts this Secret with optional: false and a pod starting in the gap
    // would fail.
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(TOKEN_SECRET_NAME.into()),
            namespace: Some(name.clone()),
            labels: Some(BTreeMap::from([
                (LABEL_INSIGHTS_TOKEN.to_string(), "true".to_string()),
                (
                    LABEL_DYNAMIC_SECRET.to_string(),
                    TOKEN_SECRET_NAME.to_string(),
                ),
            ])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            TOKEN_SECRET_KEY.to_string(),
            ByteString(token.into_bytes()),
        )])),
        ..Default::default()
    };
    let mut value = serde_json::to_value(&secret)?;
    value["apiVersion"] = "v1".into();
    value["kind"] = "Secret".into();
    api.patch(
        TOKEN_SECRET_NAME,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(value),
    )
    .await?;
    info!(namespace = %name, renewed = existing.is_some(), "environment token written");
    ctx.counters.add(&ctx.counters.tokens_issued);
    ctx.metrics.tokens_minted.inc();
    ctx.status_changed.notify_one();
    Ok(Action::requeue(ctx.token_resync))
}
