//! Reads the Secrets an InsightsRemoteConfig names and resolves the spec
//! into settings: the only part of following the resource that calls the
//! API server. What the spec means is decided in [`super::spec`].

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::spec::{broker_settings, operations, secret_namespace, Problem};
use crate::broker::{BrokerSettings, TlsSettings};
use crate::controller::Context;
use crate::crd::{InsightsRemoteConfigSpec, SecretKeyRef};
use crate::settings::Operations;
use crate::token::KeyRing;

/// A spec resolved: each part, or the problem that kept it from resolving
/// (the caller keeps that part's current value).
pub struct Resolved {
    pub broker: Result<BrokerSettings, Problem>,
    pub keys: Result<Arc<KeyRing>, Problem>,
    pub ops: Result<Operations, Problem>,
}

pub async fn resolve(ctx: &Context, spec: &InsightsRemoteConfigSpec) -> Resolved {
    Resolved {
        broker: broker(ctx, spec).await,
        keys: keys(ctx, spec).await,
        ops: ops(ctx, spec).await,
    }
}

async fn secret_value(
    ctx: &Context,
    namespace: Option<&str>,
    name: &str,
    key: &str,
) -> Result<Vec<u8>, Problem> {
    let ns = secret_namespace(namespace, &ctx.pod_namespace).map_err(|p| {
        Problem::SecretUnavailable(format!(
            "Secret {}/{name} (key {key:?}) refused: {p}",
            namespace.unwrap_or_default()
        ))
    })?;
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let unavailable = Problem::SecretUnavailable;
    let secret = api
        .get_opt(name)
        .await
        .map_err(|e| unavailable(format!("reading Secret {ns}/{name}: {e}")))?
        .ok_or_else(|| unavailable(format!("Secret {ns}/{name} not found")))?;
    secret
        .data
        .and_then(|mut d| d.remove(key))
        .map(|b| b.0)
        .ok_or_else(|| unavailable(format!("Secret {ns}/{name} has no key {key:?}")))
}

async fn secret_ref(ctx: &Context, r: &SecretKeyRef) -> Result<Vec<u8>, Problem> {
    secret_value(ctx, r.namespace.as_deref(), &r.name, &r.key).await
}

async fn broker(ctx: &Context, spec: &InsightsRemoteConfigSpec) -> Result<BrokerSettings, Problem> {
    let b = &spec.broker;
    let mut settings = broker_settings(&ctx.baseline.broker, b);
    if let Some(c) = &b.credentials_secret {
        let ns = c.namespace.as_deref();
        let text = |v: Vec<u8>| {
            String::from_utf8(v)
                .map_err(|_| Problem::SecretUnavailable("credentials are not UTF-8".into()))
        };
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

async fn keys(ctx: &Context, spec: &InsightsRemoteConfigSpec) -> Result<Arc<KeyRing>, Problem> {
    let Some(current_ref) = &spec.signing_key.secret_ref else {
        return ctx.baseline.keys.clone().ok_or_else(|| {
            Problem::NoSigningKey(
                "spec.signingKey.secretRef is not set and INSIGHTS_TOKEN_SECRET is empty".into(),
            )
        });
    };
    let named = |at: String| {
        move |p: Problem| Problem::SecretUnavailable(format!("spec.signingKey.{at}: {p}"))
    };
    let current = secret_ref(ctx, current_ref)
        .await
        .map_err(named("secretRef".into()))?;
    let mut previous = Vec::new();
    for (i, r) in spec.signing_key.previous_secret_refs.iter().enumerate() {
        previous.push(
            secret_ref(ctx, r)
                .await
                .map_err(named(format!("previousSecretRefs[{i}]")))?,
        );
    }
    let trim = |v: &[u8]| -> Vec<u8> { v.strip_suffix(b"\n").unwrap_or(v).to_vec() };
    KeyRing::with_previous(trim(&current), previous.iter().map(|p| trim(p)))
        .map(Arc::new)
        .map_err(|e| Problem::InvalidKey(e.to_string()))
}

async fn ops(ctx: &Context, spec: &InsightsRemoteConfigSpec) -> Result<Operations, Problem> {
    let mut ops = operations(&ctx.baseline.ops, spec)?;
    if let Some(r) = &spec.dependency_track.api_key_secret {
        let key = secret_ref(ctx, r)
            .await
            .map_err(|p| Problem::SecretUnavailable(format!("Dependency-Track API key: {p}")))?;
        ops.dependency_track.api_key = String::from_utf8_lossy(&key).trim().to_string();
    }
    Ok(ops)
}
