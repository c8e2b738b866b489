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
use std::io::{BufReader, Read, Write};

use flate2::read::MultiGzDecoder as GzDecoder;
use flate2::write::GzEncoder;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// The largest decompressed payload looked at (a gzip bomb stops here).
pub const MAX_DECOMPRESSED: u64 = 32 * 1024 * 1024;

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

/// A reader of the payload's JSON, decompressed if it is gzip, bounded,
/// and buffered: serde_json reads a reader one byte at a time, and through
/// the gzip decoder each of those reads was a call into the inflater
/// (`irbench payload`: most of the forward's CPU). The buffer is the
/// outermost layer so the standard library's fast path for reading bytes
/// from a `BufReader` applies.
fn json_reader(raw: &[u8]) -> BufReader<Box<dyn Read + '_>> {
    let limit = LIMIT.with(|l| l.get()) + 1;
    let inner: Box<dyn Read + '_> = if is_gzip(raw) {
        Box::new(GzDecoder::new(raw).take(limit))
    } else {
        Box::new(raw.take(limit))
    };
    BufReader::with_capacity(JSON_READ_BUFFER, inner)
}

/// The read buffer of [`json_reader`].
const JSON_READ_BUFFER: usize = 32 * 1024;

thread_local! {
    /// [`MAX_DECOMPRESSED`], lowered by the unit test of the bound.
    static LIMIT: std::cell::Cell<u64> = const { std::cell::Cell::new(MAX_DECOMPRESSED) };
}

/// The most a payload may decompress to ([`MAX_DECOMPRESSED`]).
pub fn decompressed_limit() -> u64 {
    LIMIT.with(|l| l.get())
}

/// The payload's bytes, decompressed if gzip, or why they cannot be read;
/// stops at [`MAX_DECOMPRESSED`].
pub fn decompressed(raw: &[u8]) -> Result<Vec<u8>, String> {
    let limit = LIMIT.with(|l| l.get());
    if !is_gzip(raw) {
        return Ok(raw.to_vec());
    }
    let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(limit as usize));
    GzDecoder::new(raw)
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("the payload could not be decompressed: {e}"))?;
    if out.len() as u64 > limit {
        return Err(format!(
            "the payload is larger than {limit} bytes decompressed"
        ));
    }
    Ok(out)
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

/// Whether `key` names `field` for Go's JSON decoder, which matches field
/// names case-insensitively with Unicode simple folding (`ſ` is an `s`,
/// the Kelvin sign a `k`).
fn go_fold_eq(key: &str, field: &str) -> bool {
    let fold = |c: char| match c {
        'ſ' => 's',
        '\u{212A}' => 'k',
        c => c.to_ascii_lowercase(),
    };
    key.chars().map(fold).eq(field.chars().map(fold))
}

/// Reads a JSON object, handing the value of each key that Go would match
/// to one of `fields` to `seen`, skipping every other value without keeping
/// it. Two keys matching the same field are refused: the consumer would
/// keep one of them, not necessarily the one checked here.
fn visit_fields<'de, A: MapAccess<'de>>(
    mut map: A,
    fields: &[&str],
    mut seen: impl FnMut(usize, &mut A) -> Result<(), A::Error>,
) -> Result<(), A::Error> {
    let mut found = vec![false; fields.len()];
    while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
        match fields.iter().position(|f| go_fold_eq(&key, f)) {
            Some(i) if found[i] => {
                return Err(serde::de::Error::custom(format!(
                    "two fields named {:?} (in any case): ambiguous for Lagoon core's consumer",
                    fields[i]
                )))
            }
            Some(i) => {
                found[i] = true;
                seen(i, &mut map)?;
            }
            None => {
                map.next_value::<IgnoredAny>()?;
            }
        }
    }
    Ok(())
}

/// Any JSON value reduced to its kind (and an array's length); every
/// element and member is read and skipped, not kept.
enum Shape {
    Object,
    Array(usize),
    Scalar,
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Shape;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Shape, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Shape::Object)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Shape, A::Error> {
                let mut n = 0;
                while s.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(Shape::Array(n))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }
            fn visit_str<E>(self, _: &str) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }
            fn visit_unit<E>(self) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }
        }
        d.deserialize_any(V)
    }
}

/// A CycloneDX 1.4 tool; the other fields are not carried.
#[derive(Deserialize, Serialize)]
struct LegacyTool {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename(serialize = "publisher")
    )]
    vendor: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
}

/// `metadata.tools`, as far as the consumer cares.
enum Tools {
    /// 1.5 object form: how many `components` it lists.
    Components(usize),
    /// 1.4 array form.
    Legacy(Vec<LegacyTool>),
    Other,
}

impl<'de> Deserialize<'de> for Tools {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Tools;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("CycloneDX tools")
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<Tools, A::Error> {
                let mut count = 0;
                visit_fields(m, &["components"], |_, m| {
                    if let Shape::Array(n) = m.next_value::<Shape>()? {
                        count = n;
                    }
                    Ok(())
                })?;
                Ok(Tools::Components(count))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Tools, A::Error> {
                let mut tools = Vec::new();
                while let Some(t) = s.next_element::<Option<LegacyTool>>()? {
                    tools.extend(t);
                }
                Ok(Tools::Legacy(tools))
            }
            fn visit_unit<E>(self) -> Result<Tools, E> {
                Ok(Tools::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// The SBOM's `metadata`, read field by field.
#[derive(Default)]
struct SbomCheck {
    metadata: bool,
    component: bool,
    tools: Option<Tools>,
}

impl<'de> Deserialize<'de> for SbomCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Top;
        impl<'de> Visitor<'de> for Top {
            type Value = SbomCheck;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a CycloneDX JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<SbomCheck, A::Error> {
                let mut out = SbomCheck::default();
                visit_fields(m, &["metadata"], |_, m| {
                    let meta = m.next_value::<MetadataCheck>()?;
                    out.metadata = meta.is_object;
                    out.component = meta.component;
                    out.tools = meta.tools;
                    Ok(())
                })?;
                Ok(out)
            }
        }
        d.deserialize_map(Top)
    }
}

#[derive(Default)]
struct MetadataCheck {
    is_object: bool,
    component: bool,
    tools: Option<Tools>,
}

impl<'de> Deserialize<'de> for MetadataCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MetadataCheck;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("CycloneDX metadata")
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<MetadataCheck, A::Error> {
                let mut out = MetadataCheck {
                    is_object: true,
                    ..Default::default()
                };
                visit_fields(m, &["component", "tools"], |i, m| {
                    if i == 0 {
                        out.component = matches!(m.next_value::<Shape>()?, Shape::Object);
                    } else {
                        out.tools = Some(m.next_value::<Tools>()?);
                    }
                    Ok(())
                })?;
                Ok(out)
            }
            fn visit_unit<E>(self) -> Result<MetadataCheck, E> {
                Ok(MetadataCheck::default())
            }
        }
        d.deserialize_any(V)
    }
}

/// Reads one JSON value from the payload (what follows it is ignored, as
/// Go's decoder does).
///
/// A payload of up to [`IN_MEMORY_CHECK`] bytes decompressed is parsed from
/// memory, which serde_json does several times faster than from a reader;
/// a larger one streams, holding at most that much besides the buffer.
fn read_json<T: serde::de::DeserializeOwned>(raw: &[u8], what: &str) -> Result<T, String> {
    let mut reader = json_reader(raw);
    let mut head = Vec::new();
    let read = (&mut reader)
        .take(IN_MEMORY_CHECK as u64 + 1)
        .read_to_end(&mut head);
    let parsed = match read {
        Ok(_) if head.len() <= IN_MEMORY_CHECK => {
            T::deserialize(&mut serde_json::Deserializer::from_slice(&head))
        }
        Ok(_) => T::deserialize(&mut serde_json::Deserializer::from_reader(
            BufReader::with_capacity(JSON_READ_BUFFER, std::io::Cursor::new(head).chain(reader)),
        )),
        // A decompression error may come after the JSON value (a bad
        // checksum at the end): read as a stream, as before, which stops
        // at the value's end as Go's decoder does.
        Err(_) => {
            drop(head);
            T::deserialize(&mut serde_json::Deserializer::from_reader(json_reader(raw)))
        }
    };
    parsed.map_err(|e| parse_error(what, e))
}

/// Largest decompressed payload [`read_json`] parses from memory.
const IN_MEMORY_CHECK: usize = 1024 * 1024;

/// Checks an SBOM's metadata; returns the rewritten document when the 1.4
/// `tools` array had to be turned into the 1.5 object.
fn check_sbom(raw: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let check: SbomCheck = read_json(raw, "SBOM")?;
    if !check.metadata {
        return Err("the SBOM has no metadata (Lagoon core's consumer would crash on it)".into());
    }
    if !check.component {
        return Err(
            "the SBOM has no metadata.component (Lagoon core's consumer would crash on it)".into(),
        );
    }
    match check.tools {
        Some(Tools::Components(n)) if n > 0 => Ok(None),
        Some(Tools::Legacy(tools)) if !tools.is_empty() => {
            Ok(Some(rewrite_tools(raw, tools_as_components(tools))?))
        }
        _ => Err(
            "the SBOM has no metadata.tools.components (Lagoon core's consumer would crash on it)"
                .into(),
        ),
    }
}

/// CycloneDX 1.4 tools (`[{vendor, name, version, ...}]`) as 1.5 tool
/// components (`vendor` becomes `publisher`; hashes and references are not
/// carried).
fn tools_as_components(tools: Vec<LegacyTool>) -> Value {
    let components: Vec<Value> = tools
        .into_iter()
        .map(|mut t| {
            t.name.get_or_insert_with(|| "unknown".into());
            let mut c = serde_json::to_value(t).expect("plain strings");
            c["type"] = "application".into();
            c
        })
        .collect();
    serde_json::json!({ "components": components })
}

/// The document with `metadata.tools` replaced; the other top-level fields
/// are carried as raw JSON text, never parsed.
fn rewrite_tools(raw: &[u8], tools: Value) -> Result<Vec<u8>, String> {
    // The one step that holds the whole document: one at a time.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
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

/// An image inspect's `Env`, as far as the consumer cares: whether some
/// entry is not a string with a `=` (the consumer indexes `split("=")[1]`;
/// a `null` entry becomes "" for it), with that entry's text if any.
#[derive(Default)]
struct EnvCheck {
    bad: Option<String>,
}

impl<'de> Deserialize<'de> for EnvCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Top;
        impl<'de> Visitor<'de> for Top {
            type Value = EnvCheck;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an image inspect JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<EnvCheck, A::Error> {
                let mut out = EnvCheck::default();
                visit_fields(m, &["env"], |_, m| {
                    out.bad = m.next_value::<EnvEntries>()?.0;
                    Ok(())
                })?;
                Ok(out)
            }
        }
        d.deserialize_map(Top)
    }
}

/// The first bad entry of an `Env` array.
struct EnvEntries(Option<String>);

impl<'de> Deserialize<'de> for EnvEntries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EnvEntries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an Env array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<EnvEntries, A::Error> {
                let mut bad = None;
                while let Some(entry) = s.next_element::<EnvEntry>()? {
                    if bad.is_none() {
                        bad = entry.0;
                    }
                }
                Ok(EnvEntries(bad))
            }
            // Not an array: the consumer fails to decode it, without a crash.
            fn visit_unit<E>(self) -> Result<EnvEntries, E> {
                Ok(EnvEntries(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<EnvEntries, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(EnvEntries(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<EnvEntries, E> {
                Ok(EnvEntries(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<EnvEntries, E> {
                Ok(EnvEntries(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<EnvEntries, E> {
                Ok(EnvEntries(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<EnvEntries, E> {
                Ok(EnvEntries(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<EnvEntries, E> {
                Ok(EnvEntries(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// One `Env` entry: `None` when it is a string with a `=`.
struct EnvEntry(Option<String>);

impl<'de> Deserialize<'de> for EnvEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EnvEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an Env entry")
            }
            fn visit_str<E>(self, v: &str) -> Result<EnvEntry, E> {
                Ok(EnvEntry(
                    (!v.contains('=')).then(|| v.chars().take(64).collect()),
                ))
            }
            fn visit_unit<E>(self) -> Result<EnvEntry, E> {
                Ok(EnvEntry(Some("null".into())))
            }
            fn visit_bool<E>(self, _: bool) -> Result<EnvEntry, E> {
                Ok(EnvEntry(Some("a boolean".into())))
            }
            fn visit_i64<E>(self, _: i64) -> Result<EnvEntry, E> {
                Ok(EnvEntry(Some("a number".into())))
            }
            fn visit_u64<E>(self, _: u64) -> Result<EnvEntry, E> {
                Ok(EnvEntry(Some("a number".into())))
            }
            fn visit_f64<E>(self, _: f64) -> Result<EnvEntry, E> {
                Ok(EnvEntry(Some("a number".into())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<EnvEntry, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(EnvEntry(Some("an array".into())))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<EnvEntry, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(EnvEntry(Some("an object".into())))
            }
        }
        d.deserialize_any(V)
    }
}

/// Checks that every `Env` entry of an image inspect is a string with a
/// `=` (the field name matched as Go's decoder matches it).
fn check_image_inspect(raw: &[u8]) -> Result<(), String> {
    let check: EnvCheck = read_json(raw, "image inspect")?;
    match check.bad {
        None => Ok(()),
        Some(bad) => Err(format!(
            "the image inspect's Env has an entry that is not KEY=VALUE ({bad:?}); Lagoon core's consumer would crash on it"
        )),
    }
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
                Err("not KEY=VALUE"),
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
                Ok(v) => {
                    let out = got.unwrap();
                    let first: Value =
                        serde_json::Deserializer::from_reader(GzDecoder::new(&out[..]))
                            .into_iter()
                            .next()
                            .unwrap()
                            .unwrap();
                    assert_eq!(first, v)
                }
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
    fn large_values_are_skipped_not_kept() {
        // 2 MiB of numbers in fields the checks skip: read, not stored.
        let numbers = vec!["0"; 1 << 20].join(",");
        let inspect = format!(r#"{{"layers":[{numbers}],"env":["A=b"]}}"#);
        assert!(prepare(Kind::ImageInspect, &gzip(inspect.as_bytes())).is_ok());
        let sbom = format!(
            r#"{{"metadata":{{"component":{{"x":[{numbers}]}},"tools":{{"components":[{numbers}]}}}}}}"#
        );
        assert!(prepare(Kind::Sbom, &gzip(sbom.as_bytes())).is_ok());
    }

    #[test]
    fn a_bad_checksum_after_the_value_is_ignored_as_go_does() {
        // Go's decoder stops at the value's end and never sees the trailer;
        // reading the whole stream into memory must not refuse it either.
        let mut bad = gzip(br#"{"env":["A=b"]}"#);
        let n = bad.len();
        bad[n - 8] ^= 0xff; // the CRC-32 of the trailer
        assert!(decompressed(&bad).is_err(), "the checksum is wrong");
        assert!(prepare(Kind::ImageInspect, &bad).is_ok());
        let mut sbom = gzip(
            br#"{"metadata":{"component":{"name":"i"},"tools":{"components":[{"name":"t"}]}}}"#,
        );
        let n = sbom.len();
        sbom[n - 8] ^= 0xff;
        assert!(prepare(Kind::Sbom, &sbom).is_ok());
    }

    #[test]
    fn multi_member_gzip_is_read_whole() {
        let mut two = gzip(br#"{"env":["A=b","#);
        two.extend(gzip(br#""C=d"]}"#));
        assert!(prepare(Kind::ImageInspect, &two).is_ok());
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
