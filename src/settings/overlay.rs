//! The pure part of following the InsightsRemoteConfig: what a spec asks
//! for on top of the flags and environment, which Secrets it names, and the
//! typed problems that become status conditions, Events and log lines.

use std::collections::BTreeSet;

use super::crd::{BrokerSpec, InsightsRemoteConfigSpec};
use super::BrokerSettings;
use super::Operations;

/// What is wrong with the configuration. The variant is the reason shown in
/// the status conditions; the text says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// A Secret the resource names is missing, lacks the key, is outside
    /// the operator's namespace, or cannot be read.
    #[error("{0}")]
    SecretUnavailable(String),
    /// The spec asks for something that cannot work (e.g. a bad template).
    #[error("{0}")]
    InvalidSpec(String),
    /// No signing key from the resource, flags or environment.
    #[error("{0}")]
    NoSigningKey(String),
    /// The signing key is unusable (e.g. too short).
    #[error("{0}")]
    InvalidKey(String),
    /// Waiting for the resource's signing key at start-up.
    #[error("{0}")]
    Loading(String),
}

impl Problem {
    /// The condition reason (CamelCase, as Kubernetes conditions have it).
    pub fn reason(&self) -> &'static str {
        match self {
            Problem::SecretUnavailable(_) => "SecretUnavailable",
            Problem::InvalidSpec(_) => "InvalidSpec",
            Problem::NoSigningKey(_) => "NoSigningKey",
            Problem::InvalidKey(_) => "InvalidKey",
            Problem::Loading(_) => "Loading",
        }
    }
}

/// The Secrets in the operator's namespace `own` that the resource names:
/// their change must re-resolve it, and they are watched by name. A
/// reference to another namespace is refused, so it is not watched either.
pub fn referenced_secrets(spec: &InsightsRemoteConfigSpec, own: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let here = |ns: &Option<String>| secret_namespace(ns.as_deref(), own).is_ok();
    let b = &spec.broker;
    if let Some(c) = b.credentials_secret.as_ref().filter(|c| here(&c.namespace)) {
        names.insert(c.name.clone());
    }
    if let Some(tls) = &b.tls {
        if let Some(ca) = tls.ca_secret.as_ref().filter(|c| here(&c.namespace)) {
            names.insert(ca.name.clone());
        }
        if let Some(name) = &tls.client_certificate_secret {
            names.insert(name.clone());
        }
    }
    let k = &spec.signing_key;
    names.extend(
        k.secret_ref
            .iter()
            .chain(&k.previous_secret_refs)
            .filter(|r| here(&r.namespace))
            .map(|r| r.name.clone()),
    );
    if let Some(r) = spec
        .dependency_track
        .api_key_secret
        .as_ref()
        .filter(|r| here(&r.namespace))
    {
        names.insert(r.name.clone());
    }
    names
}

/// The behaviour the resource asks for: each field it sets, else the value
/// from flags and environment.
pub fn operations(
    base: &Operations,
    spec: &InsightsRemoteConfigSpec,
) -> Result<Operations, Problem> {
    let f = &spec.forwarding;
    let d = &spec.dependency_track;
    let b = &base.dependency_track;
    let pick = |v: &Option<String>, base: &super::dependency_track::Template| {
        v.clone().unwrap_or_else(|| base.source().to_string())
    };
    let templates = super::dependency_track::Templates::parse(
        &pick(&d.root_project_name_template, &b.templates.root),
        &pick(&d.parent_project_name_template, &b.templates.parent),
        &pick(&d.project_name_template, &b.templates.project),
        &pick(&d.version_template, &b.templates.version),
    )
    .map_err(|e| Problem::InvalidSpec(format!("spec.dependencyTrack: {e}")))?;
    let bs = &spec.build_scanner;
    let mut extra_env = base.build_scanner.extra_env.clone();
    for (k, v) in &bs.extra_env {
        super::parse_env_pair(&format!("{k}={v}"))
            .map_err(|e| Problem::InvalidSpec(format!("spec.buildScanner.extraEnv: {e}")))?;
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
        dependency_track: super::dependency_track::Settings {
            enabled: d.enabled.unwrap_or(b.enabled),
            endpoint: d.api_endpoint.clone().unwrap_or_else(|| b.endpoint.clone()),
            // Resolved from the Secret by the caller when the resource names one.
            api_key: b.api_key.clone(),
            templates,
            push_prod_only: d.push_prod_only.unwrap_or(b.push_prod_only),
        },
        build_scanner: super::ScannerSettings {
            enabled: bs.enabled.unwrap_or(base.build_scanner.enabled),
            image: bs
                .image
                .clone()
                .filter(|i| !i.is_empty())
                .unwrap_or_else(|| base.build_scanner.image.clone()),
            extra_env,
            run_as_user: base.build_scanner.run_as_user,
            pull_policy: base.build_scanner.pull_policy.clone(),
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
pub fn secret_namespace<'a>(asked: Option<&'a str>, own: &'a str) -> Result<&'a str, Problem> {
    match asked {
        None => Ok(own),
        Some(ns) if ns.is_empty() || ns == own => Ok(own),
        Some(ns) => Err(Problem::SecretUnavailable(format!(
            "Secret references must be in the operator's namespace {own:?}, not {ns:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::crd::{ForwardingSpec, TokensSpec};

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
            tls: Some(crate::settings::TlsSettings::default()),
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

    #[test]
    fn only_the_named_secrets_matter() {
        use crate::settings::crd::SecretKeyRef;
        let r = |name: &str| SecretKeyRef {
            name: name.into(),
            key: "k".into(),
            namespace: None,
        };
        assert!(referenced_secrets(&InsightsRemoteConfigSpec::default(), "own").is_empty());
        let mut spec = InsightsRemoteConfigSpec::default();
        spec.signing_key.secret_ref = Some(r("key"));
        spec.signing_key.previous_secret_refs = vec![r("old-key")];
        spec.dependency_track.api_key_secret = Some(r("dt"));
        let names: Vec<_> = referenced_secrets(&spec, "own").into_iter().collect();
        assert_eq!(names, ["dt", "key", "old-key"]);
        // A foreign reference is refused, never watched.
        spec.signing_key.previous_secret_refs[0].namespace = Some("kube-system".into());
        spec.dependency_track
            .api_key_secret
            .as_mut()
            .unwrap()
            .namespace = Some("own".into());
        let names: Vec<_> = referenced_secrets(&spec, "own").into_iter().collect();
        assert_eq!(names, ["dt", "key"]);
    }

    #[test]
    fn problems_carry_their_condition_reason() {
        let cases = [
            (Problem::SecretUnavailable("m".into()), "SecretUnavailable"),
            (Problem::InvalidSpec("m".into()), "InvalidSpec"),
            (Problem::NoSigningKey("m".into()), "NoSigningKey"),
            (Problem::InvalidKey("m".into()), "InvalidKey"),
            (Problem::Loading("m".into()), "Loading"),
        ];
        for (p, reason) in cases {
            assert_eq!(p.reason(), reason);
            assert_eq!(p.to_string(), "m");
        }
    }
}
