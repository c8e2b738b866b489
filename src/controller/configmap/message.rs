//! What is forwarded for a ConfigMap: the message built from it and the
//! namespace's identity, and the fingerprint of the content it was built
//! from.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;

use crate::contract::{
    self, infer_insights_type, ConfigMapMessage, LABEL_SERVICE, LABEL_WRITE_DEFERRED,
};
use crate::{identity, payload};

/// Builds the message, or says why this ConfigMap must not be forwarded.
pub fn build_message(
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
    use crate::contract::{LABEL_INSIGHTS_TYPE, LABEL_WRITE_DEFERRED};

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
}
