//! The `InsightsRemoteConfig` custom resource: one cluster-scoped object that
//! configures the operator, and in whose status it reports what it does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Every field is optional: a field left out keeps the value from the
/// operator's flags and environment (which have the Go original's
/// defaults), so an object that sets one thing changes only that thing.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "insights.lagoon.sh",
    version = "v1alpha1",
    kind = "InsightsRemoteConfig",
    shortname = "irc",
    status = "InsightsRemoteConfigStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Broker","type":"string","jsonPath":".status.conditions[?(@.type==\"BrokerConnected\")].status"}"#,
    printcolumn = r#"{"name":"Forwarded","type":"integer","jsonPath":".status.forwarded"}"#,
    printcolumn = r#"{"name":"Deferred","type":"integer","jsonPath":".status.deferred"}"#,
    printcolumn = r#"{"name":"Tokens","type":"integer","jsonPath":".status.tokensIssued"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct InsightsRemoteConfigSpec {
    /// Where to publish (RABBITMQ_* when unset).
    #[serde(default)]
    pub broker: BrokerSpec,
    /// The token signing key (INSIGHTS_TOKEN_SECRET when unset).
    #[serde(default)]
    pub signing_key: SigningKeySpec,
    /// Delete insights ConfigMaps once processed (BURN_AFTER_READING).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burn_after_reading: Option<bool>,
    #[serde(default)]
    pub forwarding: ForwardingSpec,
    #[serde(default)]
    pub tokens: TokensSpec,
    /// SBOM uploads to Dependency-Track (the DEPENDENCY_TRACK_* settings).
    #[serde(default)]
    pub dependency_track: DependencyTrackSpec,
    /// The post-build image scanner (ENABLE_BUILD_SCANNING and its settings).
    #[serde(default)]
    pub build_scanner: BuildScannerSpec,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildScannerSpec {
    /// (ENABLE_BUILD_SCANNING)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// (BUILD_SCANNER_IMAGE)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Added to the scanner pod's environment, over the flag's and the
    /// copied values (BUILD_SCANNER_EXTRA_ENV_VARS); keys must be
    /// [A-Za-z_][A-Za-z0-9_]*.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub extra_env: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DependencyTrackSpec {
    /// (ENABLE_DEPENDENCY_TRACK_INTEGRATION)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The central API server, e.g. https://dtrack.example.com
    /// (DEPENDENCY_TRACK_API_ENDPOINT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_endpoint: Option<String>,
    /// Its API key, from a Secret in the operator's namespace
    /// (DEPENDENCY_TRACK_API_KEY).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret: Option<SecretKeyRef>,
    /// Upload only production environments' SBOMs
    /// (--dependency-track-push-prod-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_prod_only: Option<bool>,
    /// Name templates: literal text and {{ .ProjectName }},
    /// {{ .EnvironmentName }}, {{ .ServiceName }}, {{ .EnvironmentType }}.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_project_name_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_project_name_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_name_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_template: Option<String>,
}

/// A key of a Secret in the operator's own namespace (POD_NAMESPACE).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    /// Only the operator's own namespace is accepted; any other is refused
    /// (a condition says so), so the resource cannot read other Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub key: String,
}

/// Broker credentials from a Secret in the operator's own namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsRef {
    pub name: String,
    /// Only the operator's own namespace is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default = "default_username_key")]
    pub username_key: String,
    #[serde(default = "default_password_key")]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".into()
}
fn default_password_key() -> String {
    "password".into()
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerSpec {
    /// host or host:port (RABBITMQ_ADDRESS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// (RABBITMQ_VHOST)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<String>,
    /// Username and password (RABBITMQ_USERNAME / RABBITMQ_PASSWORD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<CredentialsRef>,
    /// amqps with these certificates (RABBITMQ_TLS and its files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// (RABBITMQ_EXCHANGE)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<String>,
    /// (RABBITMQ_QUEUE)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// (RABBITMQ_ROUTING_KEY)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_key: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// The CA that signed the broker's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<SecretKeyRef>,
    /// A kubernetes.io/tls Secret (tls.crt, tls.key) in the operator's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_secret: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SigningKeySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// Keys still accepted during a rotation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_secret_refs: Vec<SecretKeyRef>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForwardingSpec {
    /// Forward insights ConfigMaps at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// (CONFIGMAP_RECONCILER_MINS_BETWEEN_RETRIES)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minutes_between_retries: Option<u32>,
    /// (CONFIGMAP_RECONCILER_MAX_RETRIES)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Publish only ConfigMaps annotated core.insights.lagoon.sh/enabled=true
    /// (REQUIRE_CORE_INSIGHTS_ENABLED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_core_insights_enabled: Option<bool>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokensSpec {
    /// Keep insights-token Secrets in environment namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Only namespaces with this label get a token (TOKEN_TARGET_LABEL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_label: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InsightsRemoteConfigStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, BrokerConnected, SigningKeyReady.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub forwarded: u64,
    #[serde(default)]
    pub deferred: u64,
    #[serde(default)]
    pub rejected: u64,
    #[serde(default)]
    pub burned: u64,
    #[serde(default)]
    pub tokens_issued: u64,
    /// Per post-processor (core, dependencytrack-default,
    /// dependencytrack-custom): steps that succeeded, were skipped (nothing to
    /// do) or failed since start-up.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub post_processors: std::collections::BTreeMap<String, PostProcessorCounts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_forward_time: Option<String>,
    /// Fingerprint of the signing key in use (not the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key_fingerprint: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostProcessorCounts {
    #[serde(default)]
    pub succeeded: u64,
    #[serde(default)]
    pub skipped: u64,
    #[serde(default)]
    pub failed: u64,
}

/// The CRD as YAML, as committed under `crds/`.
pub fn crd_yaml() -> String {
    serde_yaml::to_string(&InsightsRemoteConfig::crd()).expect("the CRD serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_crd_matches_the_rust_type() {
        let committed = include_str!("../../crds/insightsremoteconfig.yaml");
        assert!(
            committed == crd_yaml(),
            "crds/insightsremoteconfig.yaml is stale: run `cargo run -- crd > crds/insightsremoteconfig.yaml`"
        );
    }

    #[test]
    fn empty_spec_sets_nothing() {
        let spec: InsightsRemoteConfigSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec, InsightsRemoteConfigSpec::default());
        assert_eq!(spec.forwarding.max_retries, None);
        assert_eq!(spec.broker.address, None);
        assert_eq!(spec.burn_after_reading, None);
        // Fields this version no longer has are ignored, not an error.
        let old: InsightsRemoteConfigSpec = serde_json::from_str(
            r#"{"ingestion":{"enabled":false},"forwarding":{"concurrency":2}}"#,
        )
        .unwrap();
        assert_eq!(old, InsightsRemoteConfigSpec::default());
    }
}
