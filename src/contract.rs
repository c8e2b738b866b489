//! The Lagoon wire contract in code: label and annotation names, broker
//! defaults, and the JSON shapes Lagoon core's consumer (insights-handler)
//! decodes. See `CONTRACT.md` in the shared folder for the reasons behind each.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_with::DefaultOnNull;
use utoipa::ToSchema;

/// On an SBOM ConfigMap: upload (also) to this Dependency-Track, with the
/// key from the namespace's `lagoon-env` Secret.
pub const ANNOTATION_CUSTOM_ENDPOINT: &str = "dependencytrack.insights.lagoon.sh/custom-endpoint";

/// Exchange, queue and routing key the consumer reads from (defined with
/// the other defaults in [`crate::settings`]).
pub use crate::settings::{DEFAULT_EXCHANGE, DEFAULT_QUEUE, DEFAULT_ROUTING_KEY};

/// Source given to facts and problems that name none.
pub const DEFAULT_SOURCE: &str = "InsightsRemoteWebService";

// Namespace labels set by Lagoon.
pub const LABEL_PROJECT: &str = "lagoon.sh/project";
pub const LABEL_ENVIRONMENT: &str = "lagoon.sh/environment";
pub const LABEL_ENVIRONMENT_ID: &str = "lagoon.sh/environmentId";
pub const LABEL_ENVIRONMENT_TYPE: &str = "lagoon.sh/environmentType";

// ConfigMap labels and annotations.
pub const LABEL_INSIGHTS_TYPE: &str = "lagoon.sh/insightsType";
pub const LABEL_TYPE: &str = "insights.lagoon.sh/type";
pub const LABEL_SERVICE: &str = "lagoon.sh/service";
pub const LABEL_PROCESSED: &str = "lagoon.sh/insightsProcessed";
pub const ANNOTATION_PROCESSED: &str = "lagoon.sh/insightsProcessed";
pub const LABEL_WRITE_DEFERRED: &str = "lagoon.sh/insightsWriteDeferred";
pub const ANNOTATION_RETRIES: &str = "insights.lagoon.sh/retries";
/// The content (fingerprint) the post-processor statuses were recorded for.
pub const ANNOTATION_STEPS_FOR: &str = "insights.lagoon.sh/steps-for";
pub const LABEL_MAX_RETRY_EXCEEDED: &str = "insights.lagoon.sh/max-retry-exceeded";
pub const MAX_RETRY_EXCEEDED_VALUE: &str = "MAX_RETRY_EXCEEDED";
pub const ANNOTATION_CORE_ENABLED: &str = "core.insights.lagoon.sh/enabled";
/// Ours: why a ConfigMap was not forwarded, and the resourceVersion it was
/// judged at, so it is looked at again only when it changes.
pub const ANNOTATION_REJECTED: &str = "insights.lagoon.sh/rejected";
pub const ANNOTATION_REJECTED_VERSION: &str = "insights.lagoon.sh/rejected-generation";

// The token Secret.
pub const TOKEN_SECRET_NAME: &str = "insights-token";
/// On an `insights-token` Secret, written by this operator: tokens of the
/// namespace issued before this instant (RFC 3339) are refused.
pub const ANNOTATION_VALID_FROM: &str = "insights.lagoon.sh/tokens-valid-from";
/// On an `insights-token` Secret, set by an admin (any value): revoke every
/// token of the namespace now. The operator mints a new token, moves
/// [`ANNOTATION_VALID_FROM`] to now and removes this annotation.
pub const ANNOTATION_REVOKE: &str = "insights.lagoon.sh/revoke-tokens";
pub const TOKEN_SECRET_KEY: &str = "INSIGHTS_TOKEN";
pub const LABEL_INSIGHTS_TOKEN: &str = "lagoon.sh/insights-token";
pub const LABEL_DYNAMIC_SECRET: &str = "lagoon.sh/dynamic-secret";

/// A fact as the consumer takes it. Every field is always present; identity
/// fields are overwritten from the caller's token.
#[serde_with::serde_as]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Fact {
    /// The environment id, as a string (unlike the envelope's integer).
    /// Ignored on input: it comes from the token.
    #[serde(default, rename = "environment", deserialize_with = "lenient_id")]
    #[schema(value_type = Option<serde_json::Value>)]
    pub environment: String,
    #[serde_as(as = "DefaultOnNull")]
    #[serde(default, rename = "projectName")]
    #[schema(nullable)]
    pub project_name: String,
    #[serde_as(as = "DefaultOnNull")]
    #[serde(default, rename = "environmentName")]
    #[schema(nullable)]
    pub environment_name: String,
    /// Required, non-empty.
    #[serde_as(as = "DefaultOnNull")]
    #[schema(min_length = 1)]
    pub name: String,
    #[serde_as(as = "DefaultOnNull")]
    #[serde(default)]
    #[schema(nullable)]
    pub value: String,
    #[serde_as(as = "DefaultOnNull")]
    #[serde(default)]
    #[schema(nullable)]
    pub source: String,
    #[serde_as(as = "DefaultOnNull")]
    #[serde(default)]
    #[schema(nullable)]
    pub description: String,
    #[serde(default, rename = "type")]
    #[schema(value_type = Option<FactType>)]
    pub fact_type: FactType,
    #[serde_as(as = "DefaultOnNull")]
    #[serde(default)]
    #[schema(nullable)]
    pub category: String,
    #[serde_as(as = "DefaultOnNull")]
    #[serde(default)]
    #[schema(nullable)]
    pub service: String,
}

/// A fact type Lagoon's API accepts. Read leniently, as Lagoon core's
/// consumer does: any case, and anything else (or nothing) is TEXT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FactType {
    #[default]
    Text,
    Url,
    Semver,
}

impl FactType {
    pub const ALL: [FactType; 3] = [FactType::Text, FactType::Url, FactType::Semver];

    pub fn as_str(self) -> &'static str {
        match self {
            FactType::Text => "TEXT",
            FactType::Url => "URL",
            FactType::Semver => "SEMVER",
        }
    }

    /// A known type in any case; anything else TEXT.
    pub fn lenient(t: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(t.trim()))
            .unwrap_or_default()
    }
}

impl<'de> Deserialize<'de> for FactType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::lenient(&null_as_empty(d)?))
    }
}

/// A problem severity Lagoon's API accepts (exactly, in capitals).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    None,
    Unknown,
    Negligible,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 7] = [
        Severity::None,
        Severity::Unknown,
        Severity::Negligible,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::None => "NONE",
            Severity::Unknown => "UNKNOWN",
            Severity::Negligible => "NEGLIGIBLE",
            Severity::Low => "LOW",
            Severity::Medium => "MEDIUM",
            Severity::High => "HIGH",
            Severity::Critical => "CRITICAL",
        }
    }
}

/// null, empty or absent: None; one of [`Severity::ALL`]; else an error
/// naming the accepted values.
fn severity_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Severity>, D::Error> {
    let s = null_as_empty(d)?;
    if s.is_empty() {
        return Ok(None);
    }
    Severity::ALL
        .into_iter()
        .find(|v| v.as_str() == s)
        .map(Some)
        .ok_or_else(|| {
            let all: Vec<_> = Severity::ALL.iter().map(|v| v.as_str()).collect();
            serde::de::Error::custom(format!("severity {s:?} is not one of {}", all.join(", ")))
        })
}

fn string_enum(
    values: &[&str],
    description: &str,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.iter().map(|v| v.to_string())))
        .description(Some(description))
        .into()
}

// The schemas are built from the enums' variants; the input they describe
// is what the readers above accept (any fact type; an empty severity).
impl utoipa::PartialSchema for FactType {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let known: Vec<_> = Self::ALL.iter().map(|t| t.as_str()).collect();
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(format!(
                "Fact type: {} in any case; empty, absent or anything else is stored as TEXT, as Lagoon core's consumer does.",
                known.join(", ")
            )))
            .into()
    }
}
impl ToSchema for FactType {}

impl utoipa::PartialSchema for Severity {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let mut values = vec![""];
        values.extend(Self::ALL.iter().map(|v| v.as_str()));
        string_enum(
            &values,
            "Severity; empty or absent means UNKNOWN (the Lagoon API refuses a problem without one).",
        )
    }
}
impl ToSchema for Severity {}

/// The severity sent for a problem that gives none: the API's enum has no
/// empty value, and the consumer would delete the source's problems and
/// then lose this one.
pub const DEFAULT_SEVERITY: Severity = Severity::Unknown;

/// A problem as the consumer takes it; optional fields are omitted when empty.
#[serde_with::serde_as]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// The environment id, as an integer. Ignored on input: it comes from
    /// the token.
    #[serde(default, deserialize_with = "lenient_int_id")]
    #[schema(value_type = Option<serde_json::Value>)]
    pub environment: i64,
    #[serde_as(as = "DefaultOnNull")]
    #[serde(default)]
    #[schema(nullable)]
    pub identifier: String,
    #[serde_as(as = "DefaultOnNull")]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schema(nullable)]
    pub version: String,
    #[serde_as(as = "DefaultOnNull")]
    #[serde(
        default,
        rename = "fixedVersion",
        skip_serializing_if = "String::is_empty"
    )]
    #[schema(nullable)]
    pub fixed_version: String,
    #[serde_as(as = "DefaultOnNull")]
    #[serde(default)]
    #[schema(nullable)]
    pub source: String,
    #[serde_as(as = "DefaultOnNull")]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schema(nullable)]
    pub service: String,
    #[serde_as(as = "DefaultOnNull")]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schema(nullable)]
    pub data: String,
    /// None for null, empty or absent (the API sends UNKNOWN then).
    #[serde(
        default,
        deserialize_with = "severity_or_none",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<Severity>)]
    pub severity: Option<Severity>,
    #[serde_as(as = "DefaultOnNull")]
    #[serde(default, rename = "severityScore", skip_serializing_if = "is_zero")]
    #[schema(nullable)]
    pub severity_score: f64,
    #[serde_as(as = "DefaultOnNull")]
    #[serde(
        default,
        rename = "associatedPackage",
        skip_serializing_if = "String::is_empty"
    )]
    #[schema(nullable)]
    pub associated_package: String,
    #[serde_as(as = "DefaultOnNull")]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schema(nullable)]
    pub description: String,
    #[serde_as(as = "DefaultOnNull")]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schema(nullable)]
    pub links: String,
}

/// Go's JSON decoding leaves a string empty when the value is null; so do
/// we, so that clients of the Go original keep working.
fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// The body's `environment` is ignored (identity comes from the token), but a
/// client may send it as a number or a string; accept either shape.
fn lenient_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(match v {
        serde_json::Value::String(s) => s,
        serde_json::Value::Number(n) => n.to_string(),
        _ => String::new(),
    })
}

fn lenient_int_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(match v {
        serde_json::Value::Number(n) => n.as_i64().unwrap_or_default(),
        serde_json::Value::String(s) => s.parse().unwrap_or_default(),
        _ => 0,
    })
}

/// `POST /facts` accepts a bare array or an object with a `facts` array.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum FactsBody {
    List(Vec<Fact>),
    Wrapped(WrappedFacts),
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct WrappedFacts {
    pub facts: Vec<Fact>,
}

impl FactsBody {
    pub fn into_facts(self) -> Vec<Fact> {
        match self {
            FactsBody::List(f) => f,
            FactsBody::Wrapped(w) => w.facts,
        }
    }
}

pub const TYPE_DIRECT_FACTS: &str = "direct.facts";
pub const TYPE_DIRECT_PROBLEMS: &str = "direct.problems";
pub const TYPE_DELETE_FACTS: &str = "direct.delete.facts";
pub const TYPE_DELETE_PROBLEMS: &str = "direct.delete.problems";

/// `{"type":"direct.facts","environment":<int>,...,"facts":[...]}`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DirectFacts {
    #[serde(rename = "type")]
    pub message_type: String,
    pub environment: i64,
    #[serde(rename = "projectName")]
    pub project_name: String,
    #[serde(rename = "environmentName")]
    pub environment_name: String,
    pub facts: Vec<Fact>,
}

/// `{"type":"direct.problems","environment":<int>,...,"problems":[...]}`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DirectProblems {
    #[serde(rename = "type")]
    pub message_type: String,
    pub environment: i64,
    #[serde(rename = "projectName")]
    pub project_name: String,
    #[serde(rename = "environmentName")]
    pub environment_name: String,
    pub problems: Vec<Problem>,
}

/// `{"type":"direct.delete.facts|problems","environment":<int>,"source","service"}`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DirectDelete {
    #[serde(rename = "type")]
    pub message_type: String,
    pub environment: i64,
    pub source: String,
    pub service: String,
}

/// The message for one insights ConfigMap.
///
/// `payload` is always `null`: the consumer expects an array or null there and
/// drops the whole message on an object. Every payload, text or binary, goes
/// base64-encoded in `binaryPayload`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigMapMessage {
    pub payload: Option<Vec<serde_json::Value>>,
    #[serde(rename = "binaryPayload")]
    pub binary_payload: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub namespace: String,
    pub environment: String,
    pub service: String,
    pub project: String,
    #[serde(rename = "type")]
    pub insights_type: String,
}

/// The two insights types the consumer handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsightsType {
    Sbom,
    Inspect,
}

impl InsightsType {
    pub fn as_str(self) -> &'static str {
        match self {
            InsightsType::Sbom => "sbom",
            InsightsType::Inspect => "inspect",
        }
    }
}

/// Works out the type of an insights ConfigMap from its labels, or says why
/// it must not be forwarded.
pub fn infer_insights_type(labels: &BTreeMap<String, String>) -> Result<InsightsType, String> {
    let legacy = labels.get(LABEL_INSIGHTS_TYPE).map(String::as_str);
    // These legacy values stall or crash the consumer, whatever the other label says.
    if let Some(v @ ("sbom" | "image" | "direct")) = legacy {
        return Err(format!(
            "{LABEL_INSIGHTS_TYPE}={v:?} is not forwarded: Lagoon core's consumer cannot process it"
        ));
    }
    let explicit = labels.get(LABEL_TYPE).map(String::as_str);
    let t = match (explicit, legacy) {
        (Some(t), _) => t,
        (None, Some("sbom-gz")) => "sbom",
        (None, Some("image-gz")) => "inspect",
        (None, Some(other)) => {
            return Err(format!(
                "unknown {LABEL_INSIGHTS_TYPE} {other:?} and no {LABEL_TYPE} label; expected sbom-gz or image-gz"
            ))
        }
        (None, None) => return Err(format!("no {LABEL_INSIGHTS_TYPE} label")),
    };
    match t {
        "sbom" => Ok(InsightsType::Sbom),
        "inspect" => Ok(InsightsType::Inspect),
        other => Err(format!(
            "insights type {other:?} is not forwarded; only \"sbom\" and \"inspect\" are"
        )),
    }
}

/// A Lagoon environment id as Lagoon can store it: canonical digits (no
/// sign, no leading zero) from 1 to 2^31-1, the API's 32-bit `Int`.
pub fn lagoon_environment_id(id: &str) -> Option<i64> {
    let canonical = !id.is_empty()
        && id.len() <= 10
        && id.bytes().all(|b| b.is_ascii_digit())
        && !id.starts_with('0');
    id.parse::<i64>()
        .ok()
        .filter(|n| canonical && *n <= i64::from(i32::MAX))
}

/// Everything but RFC 3986's unreserved characters.
const NOT_UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes everything outside RFC 3986's unreserved set.
pub fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, NOT_UNRESERVED).to_string()
}

/// Owned string pairs as a map: labels and annotations in tests.
#[cfg(test)]
pub(crate) fn string_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_keeps_only_unreserved() {
        for (raw, want) in [
            ("guest", "guest"),
            ("a-b.c_d~e", "a-b.c_d~e"),
            ("p@ss/w:rd%", "p%40ss%2Fw%3Ard%25"),
            ("/", "%2F"),
            ("é", "%C3%A9"),
            (" +", "%20%2B"),
        ] {
            assert_eq!(percent_encode(raw), want, "{raw}");
        }
    }

    use crate::contract::string_map as labels;

    #[test]
    fn type_inference_follows_the_contract() {
        assert_eq!(
            infer_insights_type(&labels(&[(LABEL_INSIGHTS_TYPE, "sbom-gz")])),
            Ok(InsightsType::Sbom)
        );
        assert_eq!(
            infer_insights_type(&labels(&[(LABEL_INSIGHTS_TYPE, "image-gz")])),
            Ok(InsightsType::Inspect)
        );
        assert_eq!(
            infer_insights_type(&labels(&[
                (LABEL_INSIGHTS_TYPE, "image-gz"),
                (LABEL_TYPE, "sbom")
            ])),
            Ok(InsightsType::Sbom)
        );
        for bad in ["sbom", "image", "direct"] {
            assert!(infer_insights_type(&labels(&[
                (LABEL_INSIGHTS_TYPE, bad),
                (LABEL_TYPE, "sbom")
            ]))
            .is_err());
        }
        assert!(infer_insights_type(&labels(&[(LABEL_INSIGHTS_TYPE, "other-gz")])).is_err());
        assert!(infer_insights_type(&labels(&[
            (LABEL_INSIGHTS_TYPE, "sbom-gz"),
            (LABEL_TYPE, "facts")
        ]))
        .is_err());
    }

    #[test]
    fn severities_are_exact_and_fact_types_lenient() {
        let sev = |json: &str| serde_json::from_str::<Problem>(json).map(|p| p.severity);
        assert_eq!(sev(r#"{"severity":"HIGH"}"#).unwrap(), Some(Severity::High));
        for empty in [r#"{}"#, r#"{"severity":null}"#, r#"{"severity":""}"#] {
            assert_eq!(sev(empty).unwrap(), None, "{empty}");
        }
        let e = sev(r#"{"severity":"high"}"#).unwrap_err().to_string();
        assert!(
            e.contains("severity \"high\" is not one of NONE, UNKNOWN, NEGLIGIBLE"),
            "{e}"
        );
        let ty = |json: &str| serde_json::from_str::<Fact>(json).unwrap().fact_type;
        for (json, want) in [
            (r#"{"name":"a","type":"semver"}"#, FactType::Semver),
            (r#"{"name":"a","type":" Url "}"#, FactType::Url),
            (r#"{"name":"a","type":"other"}"#, FactType::Text),
            (r#"{"name":"a","type":null}"#, FactType::Text),
            (r#"{"name":"a"}"#, FactType::Text),
        ] {
            assert_eq!(ty(json), want, "{json}");
        }
        let wire = serde_json::to_value(Severity::Negligible).unwrap();
        assert_eq!(wire, "NEGLIGIBLE");
        assert_eq!(serde_json::to_value(FactType::Semver).unwrap(), "SEMVER");
    }

    #[test]
    fn problem_omits_empty_optional_fields() {
        let p = Problem {
            environment: 42,
            identifier: "CVE-1".into(),
            source: "s".into(),
            ..Default::default()
        };
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"environment": 42, "identifier": "CVE-1", "source": "s"})
        );
    }

    #[test]
    fn fact_serializes_every_field() {
        let v = serde_json::to_value(Fact::default()).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "category",
                "description",
                "environment",
                "environmentName",
                "name",
                "projectName",
                "service",
                "source",
                "type",
                "value"
            ]
        );
    }

    #[test]
    fn configmap_message_payload_is_null() {
        let m = ConfigMapMessage {
            payload: None,
            binary_payload: BTreeMap::new(),
            annotations: BTreeMap::new(),
            labels: BTreeMap::new(),
            namespace: "ns".into(),
            environment: "main".into(),
            service: "cli".into(),
            project: "p".into(),
            insights_type: "sbom".into(),
        };
        let v = serde_json::to_value(&m).unwrap();
        assert!(v["payload"].is_null());
        assert_eq!(v["type"], "sbom");
        assert!(v["binaryPayload"].is_object());
    }
}
