//! One Dependency-Track step of a ConfigMap's post-processing: the
//! endpoint and key (central, or the namespace's own under the admin's
//! policy), the project names, and the upload started in the background.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use tracing::{debug, info, warn};

use super::{Client, Settings, Uploads};
use crate::payload;
use crate::postprocess::{Outcome, Step};

/// What one step works on.
pub struct UploadStep<'a> {
    pub cm: &'a ConfigMap,
    /// The labels as published (the namespace's identity).
    pub labels: &'a BTreeMap<String, String>,
    pub step: Step,
    /// The content's fingerprint: an upload is kept per content.
    pub fingerprint: &'a str,
    /// The namespace's own endpoint, for the per-namespace step.
    pub custom_endpoint: Option<String>,
}

/// One Dependency-Track step: its finished result, or Running once the
/// upload is started (or waiting for a free slot).
pub async fn run_step(
    uploads: &Uploads,
    client: &kube::Client,
    s: UploadStep<'_>,
    dt: &Settings,
) -> Outcome {
    let UploadStep {
        cm,
        labels,
        step,
        fingerprint,
        custom_endpoint,
    } = s;
    let key = (
        cm.metadata.uid.clone().unwrap_or_default(),
        fingerprint.to_string(),
        step,
    );
    if let Some(o) = uploads.poll(&key) {
        return o;
    }
    // No free slot: wait to be woken, without reading or decompressing anything.
    let ns = cm.namespace().unwrap_or_default();
    let who = (ns.clone(), cm.name_any());
    if !uploads.has_free_slot(step, &who) {
        uploads.wait_for_slot(step, who.clone());
        // An upload that ended between the look and the registration
        // woke nobody: look once more.
        if !uploads.has_free_slot(step, &who) {
            return Outcome::Running;
        }
    }
    let info = match super::WriteInfo::from_labels(labels) {
        Ok(i) => i,
        Err(e) => return Outcome::Failure(e.to_string()),
    };
    let (endpoint, key_value) = match custom_endpoint {
        None => (dt.endpoint.clone(), dt.api_key.clone()),
        Some(endpoint) => {
            // The admin's policy first: nothing is read for an endpoint
            // that may not be called.
            if let Err(e) = uploads.policy.check_url(&endpoint) {
                return Outcome::Failure(e);
            }
            let env = match super::lagoon_env(client, &ns).await {
                Ok(env) => env,
                Err(e) => return Outcome::Failure(e.to_string()),
            };
            let (prod_only, warning) = super::prod_only_override(
                dt.push_prod_only,
                env.get(super::KEY_PUSH_PROD_ONLY).map(String::as_str),
            );
            if let Some(w) = warning {
                warn!(namespace = %ns, "{w}");
            }
            if let Some(why) = super::skip_reason(prod_only, labels) {
                debug!(namespace = %ns, name = %cm.name_any(), %why, "per-namespace upload skipped");
                return Outcome::Success;
            }
            match env.get(super::KEY_API_KEY).filter(|k| !k.is_empty()) {
                Some(k) => (endpoint, k.clone()),
                None => {
                    return Outcome::Failure(format!(
                        "no {} in Secret {}",
                        super::KEY_API_KEY,
                        super::LAGOON_ENV_SECRET
                    ))
                }
            }
        }
    };
    let client = if step == Step::DependencyTrackCustom {
        Client::custom(
            uploads.custom_http.clone(),
            &uploads.policy,
            &endpoint,
            &key_value,
        )
    } else {
        Client::new(uploads.http.clone(), &endpoint, &key_value)
    };
    let client = match client {
        Ok(c) => c,
        Err(e) => return Outcome::Failure(e.to_string()),
    };
    let Some(bom) = payload_of(cm) else {
        return Outcome::Failure("the ConfigMap has no payload".into());
    };
    let limit = payload::decompressed_limit();
    let target = super::target(&dt.templates, &info, labels);
    let wait = uploads.timeout;
    let name = cm.name_any();
    let started = uploads.try_start(key, &who, async move {
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
        uploads.wait_for_slot(step, who);
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
