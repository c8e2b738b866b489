//! The `InsightsRemoteConfig` custom resource: one cluster-scoped object that
//! configures the operator, and in whose status it reports what it does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::contract;

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
    /// Where Lagoon core's broker is.
    #[serde(default)]
    pub broker: BrokerSpec,
    /// The key that signs environment tokens.
    #[serde(default)]
    pub signing_key: SigningKeySpec,
    /// Delete insights ConfigMaps once they are forwarded.
    #[serde(default)]
    pub burn_after_reading: bool,
    #[serde(default)]
    pub forwarding: ForwardingSpec,
    #[serde(default)]
    pub tokens: TokensSpec,
    #[serde(default)]
    pub ingestion: IngestionSpec,
}

/// A key of a Secret. The namespace defaults to the operator's own.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub key: String,
}

/// A Secret holding a username and a password.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsRef {
    pub name: String,
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

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerSpec {
    /// host or host:port of RabbitMQ.
    #[serde(default = "default_address")]
    pub address: String,
    #[serde(default = "default_vhost")]
    pub vhost: String,
    /// Username and password; guest/guest when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<CredentialsRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    #[serde(default = "default_exchange")]
    pub exchange: String,
    #[serde(default = "default_queue")]
    pub queue: String,
    #[serde(default)]
    pub routing_key: String,
}

fn default_address() -> String {
    "localhost".into()
}
fn default_vhost() -> String {
    "/".into()
}
fn default_exchange() -> String {
    contract::DEFAULT_EXCHANGE.into()
}
fn default_queue() -> String {
    contract::DEFAULT_QUEUE.into()
}

impl Default for BrokerSpec {
    fn default() -> Self {
        Self {
            address: default_address(),
            vhost: default_vhost(),
            credentials_secret: None,
            tls: None,
            exchange: default_exchange(),
            queue: default_queue(),
            routing_key: String::new(),
        }
    }
}

/// amqps. Certificates are always verified.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// PEM CA bundle for a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<SecretKeyRef>,
    /// A kubernetes.io/tls Secret (tls.crt, tls.key) for client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_secret: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SigningKeySpec {
    /// The current key (at least 32 bytes). When absent, INSIGHTS_TOKEN_SECRET is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// Keys still accepted from workloads while tokens are re-minted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_secret_refs: Vec<SecretKeyRef>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForwardingSpec {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_mins_between_retries")]
    pub minutes_between_retries: u32,
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Forward only ConfigMaps annotated core.insights.lagoon.sh/enabled=true;
    /// others are marked processed without publishing.
    #[serde(default)]
    pub require_core_insights_enabled: bool,
    /// ConfigMaps forwarded at once (read at start-up).
    #[serde(default = "default_concurrency")]
    pub concurrency: u16,
}

fn yes() -> bool {
    true
}
fn default_mins_between_retries() -> u32 {
    5
}
fn default_max_retries() -> u32 {
    3
}
fn default_concurrency() -> u16 {
    8
}

impl Default for ForwardingSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            minutes_between_retries: default_mins_between_retries(),
            max_retries: default_max_retries(),
            require_core_insights_enabled: false,
            concurrency: default_concurrency(),
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokensSpec {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Only namespaces that also carry this label get a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_label: Option<String>,
}

impl Default for TokensSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            target_label: None,
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngestionSpec {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_body_limit")]
    pub body_limit_bytes: u64,
}

fn default_body_limit() -> u64 {
    1024 * 1024
}

impl Default for IngestionSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            body_limit_bytes: default_body_limit(),
        }
    }
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_forward_time: Option<String>,
    /// Fingerprint of the signing key in use (not the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key_fingerprint: Option<String>,
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
        let committed = include_str!("../crds/insightsremoteconfig.yaml");
        assert!(
            committed == crd_yaml(),
            "crds/insightsremoteconfig.yaml is stale: run `cargo run -- crd > crds/insightsremoteconfig.yaml`"
        );
    }

    #[test]
    fn empty_spec_takes_go_defaults() {
        let spec: InsightsRemoteConfigSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec.forwarding.max_retries, 3);
        assert_eq!(spec.forwarding.minutes_between_retries, 5);
        assert!(spec.forwarding.enabled && spec.tokens.enabled && spec.ingestion.enabled);
        assert_eq!(spec.broker.exchange, "lagoon-insights");
        assert_eq!(spec.broker.queue, "lagoon-insights:items");
        assert!(!spec.burn_after_reading);
    }
}
