//! The ConfigMap path's effects: publishing, and the patches and deletes
//! that mark, record, defer, reject or burn a ConfigMap. Each is one call
//! on exactly the version that was looked at.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::super::{now_rfc3339, now_unix, Context, Error, Result};
use super::written::Written;
use crate::contract::{
    ConfigMapMessage, ANNOTATION_PROCESSED, ANNOTATION_REJECTED, ANNOTATION_REJECTED_VERSION,
    ANNOTATION_RETRIES, LABEL_MAX_RETRY_EXCEEDED, LABEL_PROCESSED, LABEL_WRITE_DEFERRED,
    MAX_RETRY_EXCEEDED_VALUE,
};

/// Records the steps' statuses on exactly the version that was looked at.
pub async fn record(
    api: &Api<ConfigMap>,
    written: &Written,
    cm: &ConfigMap,
    statuses: serde_json::Value,
) -> Result<()> {
    patch_meta(api, written, cm, true, json!({}), statuses)
        .await
        .map(|_| ())
}

/// Adds the processed label to a ConfigMap the Go original only annotated,
/// so the watch's selector drops it.
pub async fn label_processed(
    api: &Api<ConfigMap>,
    written: &Written,
    cm: &ConfigMap,
) -> Result<()> {
    patch_meta(
        api,
        written,
        cm,
        false,
        json!({ LABEL_PROCESSED: now_unix().to_string() }),
        json!({}),
    )
    .await
    .map(|_| ())
}

pub async fn publish(
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

/// A merge patch of our labels and annotations only. With `pin` set, it
/// fails with 409 if the build replaced the ConfigMap meanwhile, so new
/// content is never marked as forwarded. The version looked at is recorded
/// as written over ([`Written`]) unless the answer says it was not. The answer is
/// the metadata only: the API server does not send the payload back (up to
/// 1 MiB per ConfigMap) for us to parse and drop.
async fn patch_meta(
    api: &Api<ConfigMap>,
    written: &Written,
    cm: &ConfigMap,
    pin: bool,
    labels: serde_json::Value,
    annotations: serde_json::Value,
) -> Result<PartialObjectMeta<ConfigMap>> {
    let mut meta = json!({ "labels": labels, "annotations": annotations });
    let rv = cm.metadata.resource_version.as_deref();
    if let Some(rv) = rv.filter(|_| pin) {
        meta["resourceVersion"] = json!(rv);
    }
    let res = api
        .patch_metadata(
            &cm.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": meta })),
        )
        .await;
    let landed = match &res {
        // A patch that changed nothing leaves the version as it was.
        Ok(m) => m.metadata.resource_version != cm.metadata.resource_version,
        Err(e) => !refused(e),
    };
    note_write(written, cm, landed);
    Ok(res?)
}

/// Whether the API server answered that it did not carry out the write.
fn refused(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(_))
}

/// Records that the version of `cm` looked at was written over, unless
/// the write did not land. A write whose answer was lost may have landed,
/// so it counts (a later read of that version then costs one read from
/// etcd); a version recorded that is still current costs the same and
/// nothing more (the reconciler uses etcd's answer).
fn note_write(written: &Written, cm: &ConfigMap, landed: bool) {
    if let (true, Some(uid), Some(rv)) = (landed, &cm.metadata.uid, &cm.metadata.resource_version) {
        written.wrote_over(uid, rv);
    }
}

/// Marks a ConfigMap processed with the steps' statuses (or burns it).
pub async fn mark_processed(
    api: &Api<ConfigMap>,
    cm: &ConfigMap,
    ctx: &Context,
    burn_after: bool,
    statuses: serde_json::Value,
) -> Result<()> {
    if burn_after {
        // One call: delete exactly the version that was forwarded.
        match delete_version(api, &ctx.written, cm).await {
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
        &ctx.written,
        cm,
        true,
        json!({ LABEL_PROCESSED: now_unix().to_string(), LABEL_WRITE_DEFERRED: null }),
        with(statuses, ANNOTATION_PROCESSED, json!(now_rfc3339())),
    )
    .await?;
    Ok(())
}

/// `obj` (a JSON object) with one more entry.
pub fn with(mut obj: serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
    if let Some(m) = obj.as_object_mut() {
        m.insert(key.to_string(), value);
    }
    obj
}

/// A failed attempt: what failed, the attempt's number, whether that was
/// the last allowed, and the steps' statuses to record.
pub struct Deferral<'a> {
    pub reason: &'a str,
    pub retries: u32,
    pub give_up: bool,
    pub mins: u32,
    pub statuses: serde_json::Value,
}

async fn delete_version(api: &Api<ConfigMap>, written: &Written, cm: &ConfigMap) -> Result<()> {
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: cm.metadata.resource_version.clone(),
            uid: cm.metadata.uid.clone(),
        }),
        ..Default::default()
    };
    let res = api.delete(&cm.name_any(), &dp).await;
    note_write(
        written,
        cm,
        res.as_ref().map_or_else(|e| !refused(e), |_| true),
    );
    match res {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub async fn burn(api: &Api<ConfigMap>, cm: &ConfigMap, ctx: &Context) -> Result<()> {
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: None,
            uid: cm.metadata.uid.clone(),
        }),
        ..Default::default()
    };
    let res = api.delete(&cm.name_any(), &dp).await;
    note_write(
        &ctx.written,
        cm,
        res.as_ref().map_or_else(|e| !refused(e), |_| true),
    );
    match res {
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

pub async fn defer(
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
            &ctx.written,
            cm,
            true,
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
        &ctx.written,
        cm,
        true,
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

pub async fn reject(
    api: &Api<ConfigMap>,
    cm: &ConfigMap,
    ctx: &Context,
    reason: &str,
    fingerprint: &str,
) -> Result<Action> {
    warn!(namespace = cm.namespace().unwrap_or_default(), name = %cm.name_any(), %reason, "insights ConfigMap rejected");
    patch_meta(
        api,
        &ctx.written,
        cm,
        true,
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
