//! Forwards insights ConfigMaps to the broker, then marks, defers, rejects or
//! burns them, following the contract's section 3.
//!
//! | file | holds |
//! | --- | --- |
//! | `plan.rs` | the decisions, pure, tested as tables: [`decide`] (ignore, burn, label, wait, forward) and [`settle`] (processed, recheck, retry, defer or give up) |
//! | `message.rs` | the message built from a ConfigMap and its namespace's identity, the content's [`fingerprint`] |
//! | `effects.rs` | publishing and the patches and deletes that carry a decision out |
//! | `mod.rs` | the controller and [`reconcile`], which only carries out the plan; which post-processors run is `postprocess::plan` |

mod effects;
mod message;
pub mod plan;
mod written;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::GetParams;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{now_unix, Context, Error, Result};
use crate::contract::{ANNOTATION_RETRIES, ANNOTATION_STEPS_FOR};
use crate::dependency_track::UploadStep;
use crate::postprocess::{self, Outcome, Step, Work};
use crate::settings::Operations;
use effects::{with, Deferral};
use message::build_message;
pub use message::fingerprint;
pub use plan::{decide, selector, settle, Decision, Settle, UPLOAD_POLL};
pub use written::Written;

pub const CONTROLLER: &str = "configmap";

/// The watch (and so the cache) holds metadata only: a burst of pending
/// 100 KiB SBOMs costs a few KiB each in memory until it is forwarded; the
/// payload is read when its turn comes.
/// A selector is fixed when a watch starts, so switching burn-after-reading
/// restarts the controller with the other selector.
pub async fn run(ctx: Arc<Context>, concurrency: u16, shutdown: CancellationToken) {
    let api: Api<PartialObjectMeta<ConfigMap>> = match &ctx.watch_namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    loop {
        let burn = ctx.ops.borrow().burn_after_reading;
        let selector = selector(burn);
        let wc = watcher::Config::default().labels(&selector).any_semantic();
        info!(%selector, concurrency, "forwarding insights ConfigMaps");
        let switched = ctx.until_settings(&shutdown, move |o| o.burn_after_reading != burn);
        let controller = Controller::new(api.clone(), wc);
        // A slot freed by an upload is held only for a ConfigMap still in
        // this watch (not deleted, processed or given up meanwhile).
        let store = controller.store();
        let alive = move |(ns, name): &(String, String)| {
            store.get(&ObjectRef::new(name).within(ns)).is_some()
        };
        let wakes = ctx
            .uploads
            .wakes(alive)
            .map(|(ns, name)| ObjectRef::new(&name).within(&ns));
        controller
            .with_config(ControllerConfig::default().concurrency(concurrency.max(1)))
            .reconcile_on(wakes)
            .graceful_shutdown_on(switched)
            .run(reconcile_observed, error_policy, ctx.clone())
            .for_each(|_| async {})
            .await;
        if shutdown.is_cancelled() {
            return;
        }
    }
}

async fn reconcile_observed(
    meta: Arc<PartialObjectMeta<ConfigMap>>,
    ctx: Arc<Context>,
) -> Result<Action> {
    let measure = ctx.measure(CONTROLLER);
    measure.outcome(fetch_and_reconcile(&meta, ctx.clone()).await)
}

/// Reads the whole ConfigMap only when there is work to do.
async fn fetch_and_reconcile(
    meta: &PartialObjectMeta<ConfigMap>,
    ctx: Arc<Context>,
) -> Result<Action> {
    // Deferred ConfigMaps cost no GET until their time.
    if let Some(wait) = plan::deferred_for(meta.labels(), now_unix()) {
        return Ok(Action::requeue(wait));
    }
    let api: Api<ConfigMap> =
        Api::namespaced(ctx.client.clone(), &meta.namespace().unwrap_or_default());
    // At least as new as the version the watch saw: the API server answers
    // from its watch cache instead of a quorum read from etcd.
    let params = match meta.resource_version() {
        Some(rv) => GetParams::at(&rv),
        None => GetParams::default(),
    };
    match api.get_with(&meta.name_any(), &params).await {
        Ok(cm) => reconcile(Arc::new(cm), ctx).await,
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

pub fn error_policy(
    cm: Arc<PartialObjectMeta<ConfigMap>>,
    err: &Error,
    _ctx: Arc<Context>,
) -> Action {
    match err {
        // The object changed under us: the watch brings the new version.
        Error::Kube(kube::Error::Api(s)) if s.is_conflict() => {
            Action::requeue(Duration::from_millis(200))
        }
        Error::Kube(kube::Error::Api(s)) if s.is_not_found() => Action::await_change(),
        _ => {
            warn!(namespace = cm.namespace().unwrap_or_default(), name = %cm.name_any(), error = %err, "ConfigMap reconcile failed");
            Action::requeue(Duration::from_secs(5))
        }
    }
}

/// Carries out [`decide`]'s decision for one ConfigMap. A version this
/// process already wrote over (the watch cache trailing our own write) is
/// read again from etcd first, so nothing is done twice on it.
pub async fn reconcile(cm: Arc<ConfigMap>, ctx: Arc<Context>) -> Result<Action> {
    let ops = ctx.ops.borrow().clone();
    let api: Api<ConfigMap> =
        Api::namespaced(ctx.client.clone(), &cm.namespace().unwrap_or_default());
    let stale = |cm: &ConfigMap| {
        let (uid, rv) = (&cm.metadata.uid, &cm.metadata.resource_version);
        uid.as_deref()
            .zip(rv.as_deref())
            .is_some_and(|(uid, rv)| ctx.written.is_superseded(uid, rv))
    };
    let cm = if stale(&cm) {
        debug!(namespace = cm.namespace().unwrap_or_default(), name = %cm.name_any(), "read a version this process wrote over; reading it again from etcd");
        match api.get_opt(&cm.name_any()).await? {
            // etcd's answer is the current version, whatever was recorded
            // (a write whose answer was lost and which did not land cannot
            // stall it).
            Some(fresh) => Arc::new(fresh),
            None => return Ok(Action::await_change()),
        }
    } else {
        cm
    };
    let fingerprint = fingerprint(&cm);
    match decide(&cm, &ops, &fingerprint, now_unix()) {
        Decision::Ignore => Ok(Action::await_change()),
        Decision::Burn => {
            effects::burn(&api, &cm, &ctx).await?;
            Ok(Action::await_change())
        }
        Decision::Label => {
            effects::label_processed(&api, &ctx.written, &cm).await?;
            Ok(Action::await_change())
        }
        Decision::Wait(wait) => Ok(Action::requeue(wait)),
        Decision::Forward => forward(&api, &cm, &ctx, &ops, &fingerprint).await,
    }
}

/// Builds the message, runs the post-processors `postprocess::plan` chose
/// and carries out [`settle`]'s verdict on their results.
async fn forward(
    api: &Api<ConfigMap>,
    cm: &ConfigMap,
    ctx: &Context,
    ops: &Operations,
    fingerprint: &str,
) -> Result<Action> {
    // An upload of this very content still runs: look again later without
    // decompressing and checking the payload again (a 30 MiB SBOM cost
    // about a quarter of a core while it waited on Dependency-Track).
    let uid = cm.metadata.uid.as_deref().unwrap_or_default();
    if ctx.uploads.running_for(uid, fingerprint) {
        // A slot held for it (it waited for one for its other upload) goes
        // on to the next in turn.
        ctx.uploads.decline(
            &(cm.namespace().unwrap_or_default(), cm.name_any()),
            &[Step::DependencyTrackDefault, Step::DependencyTrackCustom],
        );
        return Ok(Action::requeue(UPLOAD_POLL));
    }
    let ns_labels = ctx
        .cluster
        .identity_labels(&ctx.client, &cm.namespace().unwrap_or_default())
        .await?;
    let message = match build_message(cm, &ns_labels) {
        Ok(m) => m,
        Err(reason) => return effects::reject(api, cm, ctx, &reason, fingerprint).await,
    };
    // The labels as published: the namespace's environment (src/identity.rs).
    let labels = message.labels.clone();
    let annotations = cm.annotations();
    let dt = &ops.dependency_track;
    let enabled = postprocess::Enabled {
        core: ctx.publisher.is_some(),
        dt_default: dt.central_active(),
        dt_custom: dt.custom_active(),
    };
    let facts = postprocess::Facts {
        labels: &labels,
        annotations,
        is_sbom: message.insights_type == "sbom",
        require_core: ops.require_core_enabled,
        push_prod_only: dt.push_prod_only,
        statuses_current: annotations.get(ANNOTATION_STEPS_FOR).map(String::as_str)
            == Some(fingerprint),
    };
    let steps = postprocess::plan(enabled, &facts);
    match run_steps(ctx, cm, &labels, fingerprint, ops, steps, message).await {
        Ok(results) => carry_out(api, cm, ctx, ops, fingerprint, &results).await,
        // Too large for us or the broker: retrying cannot help.
        Err(reason) => effects::reject(api, cm, ctx, &reason, fingerprint).await,
    }
}

/// Runs each planned step in order: each step's outcome, or why the
/// ConfigMap must be rejected.
async fn run_steps(
    ctx: &Context,
    cm: &ConfigMap,
    labels: &BTreeMap<String, String>,
    fingerprint: &str,
    ops: &Operations,
    steps: Vec<(Step, Work)>,
    message: crate::contract::ConfigMapMessage,
) -> std::result::Result<Vec<(Step, Outcome)>, String> {
    let (ns, name) = (cm.namespace().unwrap_or_default(), cm.name_any());
    let mut message = Some(message);
    let mut results = Vec::with_capacity(steps.len());
    for (step, work) in steps {
        let custom_endpoint = match work {
            Work::Skip(why) => {
                debug!(namespace = %ns, %name, step = step.name(), %why, "nothing to do");
                count_step(ctx, step, "skipped");
                if step == Step::Core {
                    ctx.metrics.count_configmap("skipped");
                }
                results.push((step, Outcome::Success));
                continue;
            }
            Work::Publish => {
                let Some(m) = message.take() else { continue };
                let outcome = match effects::publish(ctx, &ns, &name, m).await {
                    Ok(()) => Outcome::Success,
                    Err(e @ crate::broker::PublishError::TooLarge { .. }) => {
                        return Err(e.to_string())
                    }
                    Err(e) => Outcome::Failure(e.to_string()),
                };
                results.push((step, counted(ctx, cm, step, outcome)));
                continue;
            }
            Work::Upload => None,
            Work::UploadCustom { endpoint } => Some(endpoint),
        };
        let s = UploadStep {
            cm,
            labels,
            step,
            fingerprint,
            custom_endpoint,
        };
        let outcome =
            crate::dependency_track::run_step(&ctx.uploads, &ctx.client, s, &ops.dependency_track)
                .await;
        if outcome != Outcome::Running {
            // Nothing started: a slot held for it goes on.
            ctx.uploads.decline(&(ns.clone(), name.clone()), &[step]);
        }
        results.push((step, counted(ctx, cm, step, outcome)));
    }
    Ok(results)
}

fn count_step(ctx: &Context, step: Step, result: &str) {
    ctx.counters.add_step(step.name(), result);
    ctx.metrics.count_step(step.name(), result);
}

/// Counts a finished step's outcome (and logs a failure).
fn counted(ctx: &Context, cm: &ConfigMap, step: Step, outcome: Outcome) -> Outcome {
    match &outcome {
        Outcome::Success => count_step(ctx, step, "success"),
        Outcome::Failure(e) => {
            warn!(namespace = cm.namespace().unwrap_or_default(), name = %cm.name_any(), step = step.name(), error = %e, "post-processor failed");
            count_step(ctx, step, "failure");
        }
        Outcome::Running => {}
    }
    outcome
}

/// Concludes the steps' results and carries out [`settle`]'s verdict.
async fn carry_out(
    api: &Api<ConfigMap>,
    cm: &ConfigMap,
    ctx: &Context,
    ops: &Operations,
    fingerprint: &str,
    results: &[(Step, Outcome)],
) -> Result<Action> {
    let retries: u32 = cm
        .annotations()
        .get(ANNOTATION_RETRIES)
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or(0);
    let done = postprocess::conclude(results, retries, ops.max_retries);
    let statuses = with(
        json!(done.annotations),
        ANNOTATION_STEPS_FOR,
        json!(fingerprint),
    );
    match settle(done.next, ops) {
        Settle::Processed { burn } => {
            effects::mark_processed(api, cm, ctx, burn, statuses).await?;
            Ok(Action::await_change())
        }
        Settle::Recheck(after) => {
            // Record what finished (so it is not repeated) and look again.
            if !done.annotations.is_empty() {
                effects::record(api, &ctx.written, cm, statuses).await?;
            }
            Ok(Action::requeue(after))
        }
        Settle::Retry { after, reason } => {
            warn!(namespace = cm.namespace().unwrap_or_default(), name = %cm.name_any(), error = %reason, "post-processing failed; will retry");
            effects::record(api, &ctx.written, cm, statuses).await?;
            Ok(Action::requeue(after))
        }
        Settle::Defer {
            retries,
            give_up,
            reason,
        } => {
            let d = Deferral {
                reason: &reason,
                retries,
                give_up,
                mins: ops.mins_between_retries,
                statuses,
            };
            effects::defer(api, cm, ctx, d).await
        }
    }
}
