//! What an insights ConfigMap's payload must be before it is published, so
//! Lagoon core's consumer (insights-handler) neither drops nor crashes on it
//! (`../shared/lagoon-core/README.md`):
//!
//! - it reads image inspect data only as gzip, SBOMs as gzip or plain JSON:
//!   every payload is published gzipped (text entries are compressed here);
//! - it panics on an SBOM without `metadata.component` or a non-empty
//!   `metadata.tools.components`, and on an image inspect `Env` entry
//!   without `=`: such payloads are refused with the reason, except the
//!   CycloneDX 1.4 `tools` array, which is rewritten to the 1.5 object form.
//!
//! Checks stream the decompressed JSON and keep only `metadata` (SBOM) or
//! `env` (image inspect); decompression stops at [`MAX_DECOMPRESSED`].

use std::collections::BTreeMap;
use std::io::{Read, Write};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde_json::value::RawValue;
use serde_json::Value;

/// The largest decompressed payload looked at (a gzip bomb stops here).
pub const MAX_DECOMPRESSED: u64 = 64 * 1024 * 1024;

/// How the consumer will read the payload: from the `lagoon.sh/insightsType`
/// label, which is what drives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sbom,
    ImageInspect,
}

impl Kind {
    /// The consumer's reading of `lagoon.sh/insightsType`.
    pub fn from_label(value: Option<&str>) -> Option<Kind> {
        match value {
            Some("sbom-gz") => Some(Kind::Sbom),
            Some("image-gz") => Some(Kind::ImageInspect),
            _ => None,
        }
    }
}

fn is_gzip(b: &[u8]) -> bool {
    b.starts_with(&[0x1f, 0x8b])
}

/// A reader of the payload's JSON, decompressed if it is gzip, bounded.
fn json_reader(raw: &[u8]) -> Box<dyn Read + '_> {
    let limit = LIMIT.with(|l| l.get()) + 1;
    if is_gzip(raw) {
        Box::new(GzDecoder::new(raw).take(limit))
    } else {
        Box::new(raw.take(limit))
    }
}

thread_local! {
    /// [`MAX_DECOMPRESSED`], lowered by the unit test of the bound.
    static LIMIT: std::cell::Cell<u64> = const { std::cell::Cell::new(MAX_DECOMPRESSED) };
}

fn gzip(raw: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::with_capacity(raw.len() / 4 + 64), Default::default());
    enc.write_all(raw).expect("writing to memory");
    enc.finish().expect("writing to memory")
}

/// The bytes to publish for one payload entry, gzipped, or why it must not
/// be published.
pub fn prepare(kind: Kind, raw: &[u8]) -> Result<Vec<u8>, String> {
    let normalised = match kind {
        Kind::Sbom => check_sbom(raw)?,
        Kind::ImageInspect => {
            check_image_inspect(raw)?;
            None
        }
    };
    Ok(match normalised {
        Some(json) => gzip(&json),
        None if is_gzip(raw) => raw.to_vec(),
        None => gzip(raw),
    })
}

fn parse_error(what: &str, e: serde_json::Error) -> String {
    if e.is_io() {
        format!("the {what} could not be decompressed: {e}")
    } else if e.is_eof() {
        format!(
            "the {what} is truncated or larger than {} bytes decompressed",
            LIMIT.with(|l| l.get())
        )
    } else {
        format!("the {what} is not valid JSON: {e}")
    }
}

/// Only the fields the consumer needs to survive, read as a stream.
#[derive(serde::Deserialize)]
struct SbomHead {
    #[serde(default)]
    metadata: Option<Value>,
}

/// Checks an SBOM's metadata; returns the rewritten document when the 1.4
/// `tools` array had to be turned into the 1.5 object.
fn check_sbom(raw: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let head: SbomHead =
        serde_json::from_reader(json_reader(raw)).map_err(|e| parse_error("SBOM", e))?;
    let metadata = head
        .metadata
        .ok_or("the SBOM has no metadata (Lagoon core's consumer would crash on it)")?;
    if !metadata.get("component").is_some_and(Value::is_object) {
        return Err(
            "the SBOM has no metadata.component (Lagoon core's consumer would crash on it)".into(),
        );
    }
    match metadata.get("tools") {
        Some(Value::Object(tools))
            if tools
                .get("components")
                .and_then(Value::as_array)
                .is_some_and(|c| !c.is_empty()) =>
        {
            Ok(None)
        }
        Some(Value::Array(tools)) if !tools.is_empty() => {
            Ok(Some(rewrite_tools(raw, tools_as_components(tools))?))
        }
        _ => Err(
            "the SBOM has no metadata.tools.components (Lagoon core's consumer would crash on it)"
                .into(),
        ),
    }
}

/// CycloneDX 1.4 tools (`[{vendor, name, version, hashes, externalReferences}]`)
/// as 1.5 tool components.
fn tools_as_components(tools: &[Value]) -> Value {
    let components: Vec<Value> = tools
        .iter()
        .map(|t| {
            let mut c = serde_json::Map::new();
            c.insert("type".into(), "application".into());
            for (from, to) in [
                ("vendor", "publisher"),
                ("name", "name"),
                ("version", "version"),
                ("hashes", "hashes"),
                ("externalReferences", "externalReferences"),
            ] {
                if let Some(v) = t.get(from) {
                    c.insert(to.into(), v.clone());
                }
            }
            c.entry("name").or_insert_with(|| "unknown".into());
            Value::Object(c)
        })
        .collect();
    serde_json::json!({ "components": components })
}

/// The document with `metadata.tools` replaced; the other top-level fields
/// are carried as raw JSON text, never parsed.
fn rewrite_tools(raw: &[u8], tools: Value) -> Result<Vec<u8>, String> {
    let mut text = Vec::new();
    json_reader(raw)
        .read_to_end(&mut text)
        .map_err(|e| format!("the SBOM could not be decompressed: {e}"))?;
    let mut doc: BTreeMap<String, Box<RawValue>> =
        serde_json::from_slice(&text).map_err(|e| parse_error("SBOM", e))?;
    let mut metadata: serde_json::Map<String, Value> = doc
        .get("metadata")
        .map(|m| serde_json::from_str(m.get()))
        .transpose()
        .map_err(|e| parse_error("SBOM", e))?
        .unwrap_or_default();
    metadata.insert("tools".into(), tools);
    doc.insert(
        "metadata".into(),
        RawValue::from_string(Value::Object(metadata).to_string()).map_err(|e| e.to_string())?,
    );
    serde_json::to_vec(&doc).map_err(|e| e.to_string())
}

/// Checks that every `Env` entry of an image inspect has a `=` (field names
/// matched without regard to case, as Go's decoder does).
fn check_image_inspect(raw: &[u8]) -> Result<(), String> {
    let doc: BTreeMap<String, Value> =
        serde_json::from_reader(json_reader(raw)).map_err(|e| parse_error("image inspect", e))?;
    for (k, v) in &doc {
        if !k.eq_ignore_ascii_case("env") {
            continue;
        }
        if let Some(entries) = v.as_array() {
            if let Some(bad) = entries
                .iter()
                .filter_map(Value::as_str)
                .find(|e| !e.contains('='))
            {
                return Err(format!(
                    "the image inspect's Env has an entry without '=' ({:?}); Lagoon core's consumer would crash on it",
                    bad.chars().take(64).collect::<String>()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gunzip(b: &[u8]) -> Value {
        assert!(is_gzip(b), "published gzipped");
        serde_json::from_reader(GzDecoder::new(b)).unwrap()
    }

    const GOOD_SBOM: &str = r#"{"bomFormat":"CycloneDX","specVersion":"1.5","metadata":{"component":{"name":"img"},"tools":{"components":[{"type":"application","name":"syft"}]}},"components":[{"name":"php","version":"8.3"}]}"#;

    #[test]
    fn payloads_as_the_consumer_needs_them() {
        // (kind, payload, Ok(what the consumer reads) or Err(part of the reason))
        let cases: Vec<(Kind, Vec<u8>, Result<Value, &str>)> = vec![
            (
                Kind::Sbom,
                GOOD_SBOM.into(),
                Ok(serde_json::from_str(GOOD_SBOM).unwrap()),
            ),
            (
                Kind::Sbom,
                gzip(GOOD_SBOM.as_bytes()),
                Ok(serde_json::from_str(GOOD_SBOM).unwrap()),
            ),
            (
                Kind::Sbom,
                br#"{"components":[]}"#.to_vec(),
                Err("no metadata"),
            ),
            (
                Kind::Sbom,
                br#"{"metadata":{"tools":{"components":[{"name":"x"}]}}}"#.to_vec(),
                Err("no metadata.component"),
            ),
            (
                Kind::Sbom,
                br#"{"metadata":{"component":{"name":"i"}}}"#.to_vec(),
                Err("no metadata.tools.components"),
            ),
            (
                Kind::Sbom,
                br#"{"metadata":{"component":{"name":"i"},"tools":{"components":[]}}}"#.to_vec(),
                Err("no metadata.tools.components"),
            ),
            (Kind::Sbom, b"not json".to_vec(), Err("not valid JSON")),
            (
                Kind::ImageInspect,
                br#"{"name":"img","env":["PATH=/bin","A=b=c"]}"#.to_vec(),
                Ok(serde_json::json!({"name":"img","env":["PATH=/bin","A=b=c"]})),
            ),
            (
                Kind::ImageInspect,
                br#"{"Env":["PATH=/bin","BROKEN"]}"#.to_vec(),
                Err("without '='"),
            ),
            (
                Kind::ImageInspect,
                br#"{"env":null}"#.to_vec(),
                Ok(serde_json::json!({"env":null})),
            ),
        ];
        for (kind, raw, want) in cases {
            let got = prepare(kind, &raw);
            match want {
                Ok(v) => assert_eq!(gunzip(&got.unwrap()), v),
                Err(part) => {
                    let e = got.unwrap_err();
                    assert!(e.contains(part), "{e:?} should say {part:?}");
                }
            }
        }
    }

    #[test]
    fn cyclonedx_14_tools_array_becomes_the_15_object() {
        let sbom = r#"{"specVersion":"1.4","metadata":{"component":{"name":"img"},"tools":[{"vendor":"anchore","name":"syft","version":"1.0"}]},"components":[{"name":"php"}]}"#;
        let out = gunzip(&prepare(Kind::Sbom, &gzip(sbom.as_bytes())).unwrap());
        assert_eq!(
            out["metadata"]["tools"],
            serde_json::json!({"components":[{"type":"application","publisher":"anchore","name":"syft","version":"1.0"}]})
        );
        assert_eq!(out["components"], serde_json::json!([{"name":"php"}]));
        assert_eq!(out["metadata"]["component"]["name"], "img");
    }

    #[test]
    fn decompression_is_bounded() {
        // 4 MiB of spaces against a 1 MiB bound: refused, not inflated.
        LIMIT.with(|l| l.set(1 << 20));
        let mut enc = GzEncoder::new(Vec::new(), Default::default());
        enc.write_all(b"{\"metadata\":").unwrap();
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..4 {
            enc.write_all(&chunk).unwrap();
        }
        let bomb = enc.finish().unwrap();
        let e = prepare(Kind::Sbom, &bomb).unwrap_err();
        assert!(e.contains("larger than"), "{e}");
    }
}
