//! Forwards insights ConfigMaps to the broker, then marks, defers, rejects or
//! burns them, following the contract's section 3.

use crate::settings::Operations;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, GetParams, Patch, PatchParams, Preconditions};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{now_rfc3339, now_unix, until_shutdown, Context, Error, Result};
use crate::contract::{
    self, infer_insights_type, ConfigMapMessage, ANNOTATION_PROCESSED, ANNOTATION_REJECTED,
    ANNOTATION_REJECTED_VERSION, ANNOTATION_RETRIES, ANNOTATION_STEPS_FOR, LABEL_INSIGHTS_TYPE,
    LABEL_MAX_RETRY_EXCEEDED, LABEL_PROCESSED, LABEL_SERVICE, LABEL_WRITE_DEFERRED,
    MAX_RETRY_EXCEEDED_VALUE,
};
use crate::dependency_track;
use crate::identity;
use crate::payload;
use crate::postprocess::{self, Next, Outcome, Step, Work};

pub const CONTROLLER: &str = "configmap";

/// Only insights ConfigMaps with work left, selected by the API server, so
/// the cluster's other ConfigMaps never reach this process: unprocessed
/// ones, and with burn-after-reading on also processed ones (which it
/// deletes, whoever processed them and whenever it was switched on).
pub fn selector(burn_after_reading: bool) -> String {
    if burn_after_reading {
        format!("{LABEL_INSIGHTS_TYPE},!{LABEL_MAX_RETRY_EXCEEDED}")
    } else {
        format!("{LABEL_INSIGHTS_TYPE},!{LABEL_PROCESSED},!{LABEL_MAX_RETRY_EXCEEDED}")
    }
}

/// The watch (and so the cache) holds metadata only: a burst of pending
/// 100 KiB SBOMs costs a few KiB each in memory until it is forwarded; the
/// payload is read when its turn comes.
/// A selector is fixed when a watch starts, so switching burn-after-reading
/// restarts the controller with the other selector.
pub async fn run(ctx: Arc<Context>, concurrency: u16, shutdown: watch::Receiver<bool>) {
    let api: Api<PartialObjectMeta<ConfigMap>> = match &ctx.watch_namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    loop {
        let burn = ctx.ops.borrow().burn_after_reading;
        let mut ops = ctx.ops.subscribe();
        let selector = selector(burn);
        let wc = watcher::Config::default().labels(&selector).any_semantic();
        info!(%selector, concurrency, "forwarding insights ConfigMaps");
        let switched = {
            let shutdown = shutdown.clone();
            async move {
                tokio::select! {
                    _ = until_shutdown(shutdown) => {}
                    _ = ops.wait_for(|o| o.burn_after_reading != burn) => {}
                }
            }
        };
        Controller::new(api.clone(), wc)
            .with_config(ControllerConfig::default().concurrency(concurrency.max(1)))
            .graceful_shutdown_on(switched)
            .run(reconcile_observed, error_policy, ctx.clone())
            .for_each(|_| async {})
            .await;
        if super::stopping(&shutdown) {
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
    if let Some(wait) = deferred_for(meta.labels(), now_unix()) {
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

/// How long a ConfigMap deferred until a time still waits (the
/// `lagoon.sh/insightsWriteDeferred` label, ours or the Go original's).
fn deferred_for(labels: &std::collections::BTreeMap<String, String>, now: u64) -> Option<Duration> {
    let until: u64 = labels
        .get(LABEL_WRITE_DEFERRED)?
        .trim()
        .parse()
        .unwrap_or(0);
    (until > now).then(|| Duration::from_secs(until - now))
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

/// What happens to one ConfigMap.
/// What to do with a ConfigMap before anything is read or built for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing: being deleted, forwarding off, not an insights ConfigMap,
    /// given up, or this very content was rejected already.
    Ignore,
    /// Processed already and burn-after-reading is on: delete it.
    Burn,
    /// Processed already (only annotated, by the Go original): add the
    /// label, so the watch's selector drops it.
    Label,
    /// Deferred until a time still ahead.
    Wait(Duration),
    /// Build the message and run the post-processors.
    Forward,
}

/// The decision, from the ConfigMap, the settings, its content's
/// fingerprint and the time (seconds since the epoch). Pure: a table test
/// covers it.
pub fn decide(cm: &ConfigMap, ops: &Operations, fingerprint: &str, now: u64) -> Decision {
    let labels = cm.labels();
    let annotations = cm.annotations();
    if cm.metadata.deletion_timestamp.is_some()
        || !ops.forwarding_enabled
        || !labels.contains_key(LABEL_INSIGHTS_TYPE)
        || labels.contains_key(LABEL_MAX_RETRY_EXCEEDED)
    {
        return Decision::Ignore;
    }
    // Processed already (by us, or only annotated by the Go original).
    if labels.contains_key(LABEL_PROCESSED) || annotations.contains_key(ANNOTATION_PROCESSED) {
        return if ops.burn_after_reading {
            Decision::Burn
        } else if !labels.contains_key(LABEL_PROCESSED) {
            Decision::Label
        } else {
            Decision::Ignore
        };
    }
    // Deferred: wait for its time (also for ConfigMaps deferred by the Go original).
    if let Some(wait) = deferred_for(labels, now) {
        return Decision::Wait(wait);
    }
    if annotations
        .get(ANNOTATION_REJECTED_VERSION)
        .map(String::as_str)
        == Some(fingerprint)
    {
        return Decision::Ignore;
    }
    Decision::Forward
}

/// What the post-processors' conclusion means for the ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Mark it processed (or delete it when burning).
    Processed { burn: bool },
    /// Some step still runs: record what finished, look again after this.
    Recheck(Duration),
    /// A failure, with deferring off: record it and retry after a while.
    Retry { after: Duration, reason: String },
    /// A failure: defer it (or give up after the last retry).
    Defer {
        retries: u32,
        give_up: bool,
        reason: String,
    },
}

/// From [`postprocess::conclude`]'s next step and the settings. Pure.
pub fn settle(next: Next, ops: &Operations) -> Settle {
    match next {
        Next::Processed => Settle::Processed {
            burn: ops.burn_after_reading,
        },
        Next::Wait => Settle::Recheck(UPLOAD_POLL),
        Next::Defer { reason, .. } if !ops.deferred_enabled => Settle::Retry {
            after: Duration::from_secs(30),
            reason,
        },
        Next::Defer {
            retries,
            give_up,
            reason,
        } => Settle::Defer {
            retries,
            give_up,
            reason,
        },
    }
}

pub async fn reconcile(cm: Arc<ConfigMap>, ctx: Arc<Context>) -> Result<Action> {
    let ops = ctx.ops.borrow().clone();
    let ns = cm.namespace().unwrap_or_default();
    let name = cm.name_any();
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let annotations = cm.annotations();
    let fingerprint = fingerprint(&cm);
    match decide(&cm, &ops, &fingerprint, now_unix()) {
        Decision::Ignore => return Ok(Action::await_change()),
        Decision::Burn => {
            burn(&api, &cm, &ctx).await?;
            return Ok(Action::await_change());
        }
        Decision::Label => {
            patch_meta(
                &api,
                &name,
                None,
                json!({ LABEL_PROCESSED: now_unix().to_string() }),
                json!({}),
            )
            .await?;
            return Ok(Action::await_change());
        }
        Decision::Wait(wait) => return Ok(Action::requeue(wait)),
        Decision::Forward => {}
    }
    // An upload of this very content still runs: look again later without
    // decompressing and checking the payload again (a 30 MiB SBOM cost
    // about a quarter of a core while it waited on Dependency-Track).
    let uid = cm.metadata.uid.as_deref().unwrap_or_default();
    if ctx.uploads.running_for(uid, &fingerprint) {
        return Ok(Action::requeue(UPLOAD_POLL));
    }

    let ns_labels = super::namespaces::labels_of(&ctx, &ns).await?;
    let message = match build_message(&cm, &ns_labels) {
        Ok(m) => m,
        Err(reason) => return reject(&api, &cm, &ctx, &reason, &fingerprint).await,
    };
    // The labels as published: the namespace's environment (src/identity.rs).
    let labels = &message.labels.clone();
    let dt = &ops.dependency_track;
    let enabled = postprocess::Enabled {
        core: ctx.publisher.is_some(),
        dt_default: dt.central_active(),
        dt_custom: dt.custom_active(),
    };
    let facts = postprocess::Facts {
        labels,
        annotations,
        is_sbom: message.insights_type == "sbom",
        require_core: ops.require_core_enabled,
        push_prod_only: dt.push_prod_only,
        statuses_current: annotations.get(ANNOTATION_STEPS_FOR) == Some(&fingerprint),
    };
    let steps = postprocess::plan(enabled, &facts);
    let mut message = Some(message);
    let mut results = Vec::with_capacity(steps.len());
    for (step, work) in steps {
        let outcome = match work {
            Work::Skip(why) => {
                debug!(namespace = %ns, %name, step = step.name(), %why, "nothing to do");
                ctx.counters.add_step(step.name(), "skipped");
                ctx.metrics.count_step(step.name(), "skipped");
                if step == Step::Core {
                    ctx.metrics.count_configmap("skipped");
                }
                results.push((step, Outcome::Success));
                continue;
            }
            Work::Publish => {
                let Some(m) = message.take() else {
                    continue;
                };
                match publish(&ctx, &ns, &name, m).await {
                    Ok(()) => Outcome::Success,
                    // Too large for us or the broker: retrying cannot help.
                    Err(e @ crate::broker::PublishError::TooLarge { .. }) => {
                        return reject(&api, &cm, &ctx, &e.to_string(), &fingerprint).await
                    }
                    Err(e) => Outcome::Failure(e.to_string()),
                }
            }
            Work::Upload => upload(&ctx, &cm, labels, step, &fingerprint, None, dt).await,
            Work::UploadCustom { endpoint } => {
                upload(&ctx, &cm, labels, step, &fingerprint, Some(endpoint), dt).await
            }
        };
        match &outcome {
            Outcome::Success => {
                ctx.counters.add_step(step.name(), "success");
                ctx.metrics.count_step(step.name(), "success");
            }
            Outcome::Failure(e) => {
                warn!(namespace = %ns, %name, step = step.name(), error = %e, "post-processor failed");
                ctx.counters.add_step(step.name(), "failure");
                ctx.metrics.count_step(step.name(), "failure");
            }
            Outcome::Running => {}
        }
        results.push((step, outcome));
    }
    drop(message);
    let retries: u32 = annotations
        .get(ANNOTATION_RETRIES)
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or(0);
    let done = postprocess::conclude(&results, retries, ops.max_retries);
    let statuses = with(
        json!(done.annotations),
        ANNOTATION_STEPS_FOR,
        json!(fingerprint),
    );
    match settle(done.next, &ops) {
        Settle::Processed { burn } => {
            mark_processed(&api, &cm, &ctx, burn, statuses).await?;
            Ok(Action::await_change())
        }
        Settle::Recheck(after) => {
            // Record what finished (so it is not repeated) and look again.
            if !done.annotations.is_empty() {
                record(&api, &cm, statuses).await?;
            }
            Ok(Action::requeue(after))
        }
        Settle::Retry { after, reason } => {
            warn!(namespace = %ns, %name, error = %reason, "post-processing failed; will retry");
            record(&api, &cm, statuses).await?;
            Ok(Action::requeue(after))
        }
        Settle::Defer {
            retries,
            give_up,
            reason,
        } => {
            defer(
                &api,
                &cm,
                &ctx,
                Deferral {
                    reason: &reason,
                    retries,
                    give_up,
                    mins: ops.mins_between_retries,
                    statuses,
                },
            )
            .await
        }
    }
}

/// Records the steps' statuses on exactly the version that was looked at.
async fn record(api: &Api<ConfigMap>, cm: &ConfigMap, statuses: serde_json::Value) -> Result<()> {
    patch_meta(
        api,
        &cm.name_any(),
        cm.metadata.resource_version.as_deref(),
        json!({}),
        statuses,
    )
    .await
    .map(|_| ())
}

/// How often a ConfigMap waiting on a Dependency-Track upload is looked at.
const UPLOAD_POLL: Duration = Duration::from_secs(2);

async fn publish(
    ctx: &Context,
    ns: &str,
    name: &str,
    message: ConfigMapMessage,
) -> std::result::Result<(), crate::broker::PublishError> {
    let Some(publisher) = &ctx.publisher else {
        return Ok(());
    };
    let body = serde_json::to_vec(&message).expect("the message serializes");
    drop(message);
    // Right after start-up, or during a reconnect, give the connection a
    // moment rather than deferring for minutes.
    if !publisher.is_connected() {
        publisher.wait_connected(publisher.confirm_timeout()).await;
    }
    publisher.publish_confirmed(&body).await?;
    info!(namespace = %ns, %name, bytes = body.len(), "insights ConfigMap forwarded");
    ctx.counters.add(&ctx.counters.forwarded);
    *ctx.counters.last_forward.lock().expect("counters lock") = Some(now_rfc3339());
    ctx.metrics.count_configmap("forwarded");
    ctx.status_changed.notify_one();
    Ok(())
}

/// One Dependency-Track step: its finished result, or Running once the
/// upload is started (or waiting for a free slot).
async fn upload(
    ctx: &Context,
    cm: &ConfigMap,
    labels: &BTreeMap<String, String>,
    step: Step,
    fingerprint: &str,
    custom_endpoint: Option<String>,
    dt: &dependency_track::Settings,
) -> Outcome {
    let key = (
        cm.metadata.uid.clone().unwrap_or_default(),
        fingerprint.to_string(),
        step,
    );
    if let Some(o) = ctx.uploads.poll(&key) {
        return o;
    }
    // No free slot: look again later, without reading or decompressing anything.
    let ns = cm.namespace().unwrap_or_default();
    if !ctx.uploads.has_free_slot(step, &ns) {
        return Outcome::Running;
    }
    let info = match dependency_track::WriteInfo::from_labels(labels) {
        Ok(i) => i,
        Err(e) => return Outcome::Failure(e),
    };
    let (endpoint, key_value) = match custom_endpoint {
        None => (dt.endpoint.clone(), dt.api_key.clone()),
        Some(endpoint) => {
            // The admin's policy first: nothing is read for an endpoint
            // that may not be called.
            if let Err(e) = ctx.uploads.policy.check_url(&endpoint) {
                return Outcome::Failure(e);
            }
            let env = match dependency_track::lagoon_env(&ctx.client, &ns).await {
                Ok(env) => env,
                Err(e) => return Outcome::Failure(e),
            };
            let (prod_only, warning) = dependency_track::prod_only_override(
                dt.push_prod_only,
                env.get(dependency_track::KEY_PUSH_PROD_ONLY)
                    .map(String::as_str),
            );
            if let Some(w) = warning {
                warn!(namespace = %ns, "{w}");
            }
            if let Some(why) = dependency_track::skip_reason(prod_only, labels) {
                debug!(namespace = %ns, name = %cm.name_any(), %why, "per-namespace upload skipped");
                return Outcome::Success;
            }
            match env
                .get(dependency_track::KEY_API_KEY)
                .filter(|k| !k.is_empty())
            {
                Some(k) => (endpoint, k.clone()),
                None => {
                    return Outcome::Failure(format!(
                        "no {} in Secret {}",
                        dependency_track::KEY_API_KEY,
                        dependency_track::LAGOON_ENV_SECRET
                    ))
                }
            }
        }
    };
    let client = if step == Step::DependencyTrackCustom {
        dependency_track::Client::custom(
            ctx.uploads.custom_http.clone(),
            &ctx.uploads.policy,
            &endpoint,
            &key_value,
        )
    } else {
        dependency_track::Client::new(ctx.uploads.http.clone(), &endpoint, &key_value)
    };
    let client = match client {
        Ok(c) => c,
        Err(e) => return Outcome::Failure(e),
    };
    let Some(bom) = payload_of(cm) else {
        return Outcome::Failure("the ConfigMap has no payload".into());
    };
    let limit = payload::decompressed_limit();
    let target = dependency_track::target(&dt.templates, &info, labels);
    let wait = ctx.uploads.timeout;
    let (owner, name) = (ns.clone(), cm.name_any());
    let started = ctx.uploads.try_start(key, &owner, async move {
        let res = client.upload(&target, bom, limit, wait).await;
        match &res {
            Ok(()) => info!(namespace = %ns, %name, project = %target.project, step = step.name(), "SBOM uploaded to Dependency-Track"),
            Err(e) => warn!(namespace = %ns, %name, project = %target.project, step = step.name(), error = %e, "Dependency-Track upload failed"),
        }
        res
    });
    if !started {
        debug!(
            step = step.name(),
            "all Dependency-Track upload slots busy; waiting"
        );
    }
    Outcome::Running
}

/// The SBOM as the ConfigMap holds it (the only payload entry, checked
/// when the message was built; gzip or plain), decompressed as it is
/// uploaded.
fn payload_of(cm: &ConfigMap) -> Option<Vec<u8>> {
    cm.binary_data
        .iter()
        .flatten()
        .map(|(_, v)| v.0.clone())
        .chain(cm.data.iter().flatten().map(|(_, v)| v.as_bytes().to_vec()))
        .next()
}

/// Builds the message, or says why this ConfigMap must not be forwarded.
fn build_message(
    cm: &ConfigMap,
    ns_labels: &BTreeMap<String, String>,
) -> std::result::Result<ConfigMapMessage, String> {
    let labels = cm.labels();
    let insights_type = infer_insights_type(labels)?;
    let entries: Vec<(&String, &[u8])> = cm
        .binary_data
        .iter()
        .flatten()
        .map(|(k, v)| (k, v.0.as_slice()))
        .chain(cm.data.iter().flatten().map(|(k, v)| (k, v.as_bytes())))
        .collect();
    let (key, raw) = match entries.as_slice() {
        [] => return Err("the ConfigMap has no payload (neither data nor binaryData)".into()),
        [one] => *one,
        many => {
            return Err(format!(
                "the ConfigMap has {} payload entries; Lagoon core's consumer reads only one, chosen at random: keep one entry",
                many.len()
            ))
        }
    };
    let ns_name = cm.namespace().unwrap_or_default();
    // Identity from the namespace, never from the ConfigMap.
    let labels = identity::published(&ns_name, ns_labels, labels, cm.annotations())?;
    // Every payload is checked, and gzipped as the consumer needs it
    // (src/payload.rs), by the type it is forwarded as.
    let kind = match insights_type {
        contract::InsightsType::Sbom => payload::Kind::Sbom,
        contract::InsightsType::Inspect => payload::Kind::ImageInspect,
    };
    let payload = payload::prepare(kind, raw).map_err(|reason| format!("{key}: {reason}"))?;
    let binary_payload = BTreeMap::from([(key.clone(), STANDARD.encode(&payload))]);
    Ok(ConfigMapMessage {
        payload: None,
        binary_payload,
        annotations: cm.annotations().clone(),
        namespace: ns_name,
        environment: labels[contract::LABEL_ENVIRONMENT].clone(),
        service: labels.get(LABEL_SERVICE).cloned().unwrap_or_default(),
        project: labels[contract::LABEL_PROJECT].clone(),
        labels,
        insights_type: insights_type.as_str().into(),
    })
}

/// A merge patch of our labels and annotations only. With `resource_version`
/// set, it fails with 409 if the build replaced the ConfigMap meanwhile, so
/// new content is never marked as forwarded. The answer is the metadata
/// only: the API server does not send the payload back (up to 1 MiB per
/// ConfigMap) for us to parse and drop.
async fn patch_meta(
    api: &Api<ConfigMap>,
    name: &str,
    resource_version: Option<&str>,
    labels: serde_json::Value,
    annotations: serde_json::Value,
) -> Result<PartialObjectMeta<ConfigMap>> {
    let mut meta = json!({ "labels": labels, "annotations": annotations });
    if let Some(rv) = resource_version {
        meta["resourceVersion"] = json!(rv);
    }
    Ok(api
        .patch_metadata(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": meta })),
        )
        .await?)
}

/// Marks a ConfigMap processed with the steps' statuses (or burns it).
async fn mark_processed(
    api: &Api<ConfigMap>,
    cm: &ConfigMap,
    ctx: &Context,
    burn_after: bool,
    statuses: serde_json::Value,
) -> Result<()> {
    if burn_after {
        // One call: delete exactly the version that was forwarded.
        match delete_version(api, cm).await {
            Ok(()) => {
                ctx.counters.add(&ctx.counters.burned);
                ctx.metrics.count_configmap("burned");
                return Ok(());
            }
            Err(e @ Error::Kube(kube::Error::Api(_))) if e.metric_label() == "conflict" => {
                return Err(e)
            }
            Err(e) => warn!(error = %e, "burn after reading failed; marking processed instead"),
        }
    }
    patch_meta(
        api,
        &cm.name_any(),
        cm.metadata.resource_version.as_deref(),
        json!({ LABEL_PROCESSED: now_unix().to_string(), LABEL_WRITE_DEFERRED: null }),
        with(statuses, ANNOTATION_PROCESSED, json!(now_rfc3339())),
    )
    .await?;
    Ok(())
}

/// `obj` (a JSON object) with one more entry.
fn with(mut obj: serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
    if let Some(m) = obj.as_object_mut() {
        m.insert(key.to_string(), value);
    }
    obj
}

/// A failed attempt: what failed, the attempt's number, whether that was
/// the last allowed, and the steps' statuses to record.
struct Deferral<'a> {
    reason: &'a str,
    retries: u32,
    give_up: bool,
    mins: u32,
    statuses: serde_json::Value,
}

async fn delete_version(api: &Api<ConfigMap>, cm: &ConfigMap) -> Result<()> {
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: cm.metadata.resource_version.clone(),
            uid: cm.metadata.uid.clone(),
        }),
        ..Default::default()
    };
    match api.delete(&cm.name_any(), &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn burn(api: &Api<ConfigMap>, cm: &ConfigMap, ctx: &Context) -> Result<()> {
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: None,
            uid: cm.metadata.uid.clone(),
        }),
        ..Default::default()
    };
    match api.delete(&cm.name_any(), &dp).await {
        Ok(_) => {
            ctx.counters.add(&ctx.counters.burned);
            ctx.metrics.count_configmap("burned");
            ctx.status_changed.notify_one();
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn defer(
    api: &Api<ConfigMap>,
    cm: &ConfigMap,
    ctx: &Context,
    d: Deferral<'_>,
) -> Result<Action> {
    let Deferral {
        reason,
        retries,
        give_up,
        mins,
        statuses,
    } = d;
    let name = cm.name_any();
    let ns = cm.namespace().unwrap_or_default();
    ctx.counters.add(&ctx.counters.deferred);
    ctx.metrics.count_configmap("deferred");
    ctx.status_changed.notify_one();
    let annotations = with(statuses, ANNOTATION_RETRIES, json!(retries.to_string()));
    if give_up {
        warn!(namespace = %ns, %name, retries, "insights ConfigMap exceeded its retries; giving up");
        patch_meta(
            api,
            &name,
            cm.metadata.resource_version.as_deref(),
            json!({ LABEL_MAX_RETRY_EXCEEDED: MAX_RETRY_EXCEEDED_VALUE, LABEL_WRITE_DEFERRED: null }),
            annotations,
        )
        .await?;
        ctx.event(
            cm,
            EventType::Warning,
            "MaxRetriesExceeded",
            "Forward",
            format!("not processed after {retries} attempts: {reason}"),
        )
        .await;
        return Ok(Action::await_change());
    }
    let wait = u64::from(mins) * 60;
    let until = now_unix() + wait;
    warn!(namespace = %ns, %name, retries, retry_in_s = wait, error = %reason, "post-processing failed; deferred");
    patch_meta(
        api,
        &name,
        cm.metadata.resource_version.as_deref(),
        json!({ LABEL_WRITE_DEFERRED: until.to_string() }),
        annotations,
    )
    .await?;
    ctx.event(
        cm,
        EventType::Warning,
        "Deferred",
        "Forward",
        format!("attempt {retries} failed, retrying in {wait}s: {reason}"),
    )
    .await;
    Ok(Action::requeue(Duration::from_secs(wait.max(1))))
}

async fn reject(
    api: &Api<ConfigMap>,
    cm: &ConfigMap,
    ctx: &Context,
    reason: &str,
    fingerprint: &str,
) -> Result<Action> {
    warn!(namespace = cm.namespace().unwrap_or_default(), name = %cm.name_any(), %reason, "insights ConfigMap rejected");
    patch_meta(
        api,
        &cm.name_any(),
        cm.metadata.resource_version.as_deref(),
        json!({}),
        json!({ ANNOTATION_REJECTED: reason, ANNOTATION_REJECTED_VERSION: fingerprint }),
    )
    .await?;
    ctx.counters.add(&ctx.counters.rejected);
    ctx.metrics.count_configmap("rejected");
    ctx.status_changed.notify_one();
    ctx.event(
        cm,
        EventType::Warning,
        "Rejected",
        "Forward",
        reason.to_string(),
    )
    .await;
    Ok(Action::await_change())
}

/// A stable digest of what decides whether a ConfigMap can be forwarded:
/// payload and labels, without the marks we write ourselves. A rejected
/// ConfigMap is looked at again only when this changes.
pub fn fingerprint(cm: &ConfigMap) -> String {
    let mut h = Fnv::default();
    for (k, v) in cm.labels() {
        if k != LABEL_WRITE_DEFERRED {
            h.write(k.as_bytes());
            h.write(v.as_bytes());
        }
    }
    for (k, v) in cm.data.iter().flatten() {
        h.write(k.as_bytes());
        h.write(v.as_bytes());
    }
    for (k, v) in cm.binary_data.iter().flatten() {
        h.write(k.as_bytes());
        h.write(&v.0);
    }
    format!("{:016x}", h.finish())
}

/// FNV-1a (the `fnv` crate): small, and stable across builds and versions,
/// since the digest is stored in annotations. Each field is followed by a
/// 0xff byte so ("ab","c") and ("a","bc") differ.
#[derive(Default)]
struct Fnv(fnv::FnvHasher);

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        use std::hash::Hasher;
        self.0.write(bytes);
        self.0.write_u8(0xff);
    }

    fn finish(&self) -> u64 {
        std::hash::Hasher::finish(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(burn: bool, forwarding: bool, deferred: bool) -> Operations {
        Operations {
            burn_after_reading: burn,
            forwarding_enabled: forwarding,
            deferred_enabled: deferred,
            mins_between_retries: 3,
            max_retries: 3,
            require_core_enabled: true,
            tokens_enabled: true,
            target_label: None,
            dependency_track: Default::default(),
            build_scanner: Default::default(),
        }
    }

    fn meta(labels: &[(&str, &str)], annotations: &[(&str, &str)], deleting: bool) -> ConfigMap {
        let map = |p: &[(&str, &str)]| {
            Some(
                p.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let mut cm = ConfigMap::default();
        cm.metadata.labels = map(labels);
        cm.metadata.annotations = map(annotations);
        if deleting {
            cm.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ));
        }
        cm
    }

    #[test]
    fn decide_table() {
        const T: (&str, &str) = (LABEL_INSIGHTS_TYPE, "sbom-gz");
        const NOW: u64 = 1_000_000;
        let on = ops(false, true, true);
        let burning = ops(true, true, true);
        let off = ops(false, false, true);
        #[rustfmt::skip]
        let table: Vec<(&str, ConfigMap, &Operations, Decision)> = vec![
            ("a new insights ConfigMap", meta(&[T], &[], false), &on, Decision::Forward),
            ("being deleted", meta(&[T], &[], true), &on, Decision::Ignore),
            ("forwarding off", meta(&[T], &[], false), &off, Decision::Ignore),
            ("not an insights ConfigMap", meta(&[], &[], false), &on, Decision::Ignore),
            ("given up", meta(&[T, (LABEL_MAX_RETRY_EXCEEDED, "MAX_RETRY_EXCEEDED")], &[], false), &on, Decision::Ignore),
            ("processed, kept", meta(&[T, (LABEL_PROCESSED, "1")], &[], false), &on, Decision::Ignore),
            ("processed, burning", meta(&[T, (LABEL_PROCESSED, "1")], &[], false), &burning, Decision::Burn),
            ("annotated by Go only", meta(&[T], &[(ANNOTATION_PROCESSED, "x")], false), &on, Decision::Label),
            ("annotated by Go, burning", meta(&[T], &[(ANNOTATION_PROCESSED, "x")], false), &burning, Decision::Burn),
            ("deferred ahead", meta(&[T, (LABEL_WRITE_DEFERRED, "1000060")], &[], false), &on, Decision::Wait(Duration::from_secs(60))),
            ("deferred, time come", meta(&[T, (LABEL_WRITE_DEFERRED, "999999")], &[], false), &on, Decision::Forward),
            ("deferred, unreadable", meta(&[T, (LABEL_WRITE_DEFERRED, "soon")], &[], false), &on, Decision::Forward),
            ("this content rejected", meta(&[T], &[(ANNOTATION_REJECTED_VERSION, "fp")], false), &on, Decision::Ignore),
            ("other content rejected", meta(&[T], &[(ANNOTATION_REJECTED_VERSION, "old")], false), &on, Decision::Forward),
        ];
        for (what, cm, o, want) in table {
            assert_eq!(decide(&cm, o, "fp", NOW), want, "{what}");
        }
    }

    #[test]
    fn settle_table() {
        let defer = || Next::Defer {
            retries: 2,
            give_up: false,
            reason: "down".into(),
        };
        assert_eq!(
            settle(Next::Processed, &ops(true, true, true)),
            Settle::Processed { burn: true }
        );
        assert_eq!(
            settle(Next::Processed, &ops(false, true, true)),
            Settle::Processed { burn: false }
        );
        assert_eq!(
            settle(Next::Wait, &ops(false, true, true)),
            Settle::Recheck(UPLOAD_POLL)
        );
        assert_eq!(
            settle(defer(), &ops(false, true, true)),
            Settle::Defer {
                retries: 2,
                give_up: false,
                reason: "down".into()
            }
        );
        assert_eq!(
            settle(defer(), &ops(false, true, false)),
            Settle::Retry {
                after: Duration::from_secs(30),
                reason: "down".into()
            },
            "deferring off: retried without the deferred label"
        );
    }

    const GOLDEN_FINGERPRINT: &str = "5f1ee74ab85c347f";

    /// The digest is stored in annotations: it must not change with the
    /// hash's implementation (this value is the hand-written FNV-1a's).
    #[test]
    fn fingerprint_is_stable() {
        let mut cm = ConfigMap::default();
        cm.metadata.labels = Some(
            [
                ("lagoon.sh/insightsType", "sbom-gz"),
                ("lagoon.sh/service", "cli"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        );
        cm.data = Some([("sbom".to_string(), "{}".to_string())].into());
        assert_eq!(fingerprint(&cm), GOLDEN_FINGERPRINT);
    }
    use k8s_openapi::ByteString;

    fn cm(labels: &[(&str, &str)], bin: &[(&str, &[u8])]) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        c.binary_data = Some(
            bin.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                .collect(),
        );
        c
    }

    #[test]
    fn fingerprint_changes_with_content_not_with_our_marks() {
        let a = cm(&[(LABEL_INSIGHTS_TYPE, "sbom")], &[("x", b"1")]);
        let mut b = a.clone();
        b.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(LABEL_WRITE_DEFERRED.into(), "1".into());
        assert_eq!(fingerprint(&a), fingerprint(&b));
        let c = cm(&[(LABEL_INSIGHTS_TYPE, "sbom-gz")], &[("x", b"1")]);
        assert_ne!(fingerprint(&a), fingerprint(&c));
        let d = cm(&[(LABEL_INSIGHTS_TYPE, "sbom")], &[("x", b"2")]);
        assert_ne!(fingerprint(&a), fingerprint(&d));
    }

    #[test]
    fn selector_excludes_processed_and_exhausted() {
        assert_eq!(
            selector(false),
            "lagoon.sh/insightsType,!lagoon.sh/insightsProcessed,!insights.lagoon.sh/max-retry-exceeded"
        );
        // Burning: processed ones too, whoever processed them.
        assert_eq!(
            selector(true),
            "lagoon.sh/insightsType,!insights.lagoon.sh/max-retry-exceeded"
        );
    }
}
