//! The domain checks, pure and without I/O: a body becomes the
//! `direct.facts` or `direct.problems` message, or the reason it is refused;
//! a path segment is decoded as the Go original does. The fuzz target
//! `body` drives these.

use serde_json::value::RawValue;

use super::auth::environment_id;
use super::ApiError;
#[cfg(doc)]
use crate::contract::FactsBody;
use crate::contract::{
    DirectFacts, DirectProblems, Fact, Problem, DEFAULT_SEVERITY, DEFAULT_SOURCE,
    TYPE_DIRECT_FACTS, TYPE_DIRECT_PROBLEMS,
};
use crate::token::Claims;

/// Refuses a request with more items than allowed, before any is parsed.
/// Most bytes a message may be per byte of the body it was built from, on
/// top of [`MESSAGE_ALLOWANCE`]: the fields filled into every item (the
/// environment, defaults) make a message of many tiny items many times
/// its body (10,000 `{}` problems: 29 KiB of body, 920 KB of message).
/// Honest items carry their own text and grow far less (about 3 times
/// for Lagoon's fact collectors' facts; 14 times for `{"name":"a"}`).
pub const MAX_EXPANSION: usize = 8;
/// Bytes of message allowed for any body, beyond [`MAX_EXPANSION`] times it.
pub const MESSAGE_ALLOWANCE: usize = 64 * 1024;
/// Fewest bytes one fact or problem takes in a message (its environment,
/// source and field names; see the test): the count of items alone can
/// show a message over [`message_limit`] before any item is parsed.
pub const MIN_ITEM_MESSAGE_BYTES: usize = 64;

/// The largest message a body of `body_bytes` may become.
pub fn message_limit(body_bytes: usize) -> usize {
    body_bytes
        .saturating_mul(MAX_EXPANSION)
        .saturating_add(MESSAGE_ALLOWANCE)
}

/// The item count within the limit, and not so many tiny items that the
/// message would be many times the body: refused before the items are
/// parsed.
fn check_count(count: usize, max: usize, what: &str, body: &[u8]) -> Result<(), ApiError> {
    check_items(count, max, what)?;
    let (at_least, limit) = (
        count.saturating_mul(MIN_ITEM_MESSAGE_BYTES),
        message_limit(body.len()),
    );
    if at_least > limit {
        return Err(ApiError::Expanded {
            qualifier: "at least ",
            size: at_least,
            limit,
        });
    }
    Ok(())
}

fn check_items(count: usize, max: usize, what: &str) -> Result<(), ApiError> {
    if count > max {
        return Err(ApiError::TooMuch(format!(
            "{count} {what} in one request, over the limit of {max} (--webservice-max-items)"
        )));
    }
    Ok(())
}

fn parse_json<'a, T: serde::Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("{what}: {e}")))
}

/// The raw items of a facts body: a bare array, or `{"facts": [...]}`
/// (see [`FactsBody`]).
fn facts_items(body: &[u8]) -> Result<Vec<&RawValue>, ApiError> {
    #[derive(serde::Deserialize)]
    struct Wrapped<'a> {
        #[serde(borrow)]
        facts: Vec<&'a RawValue>,
    }
    const WHAT: &str = "expected a JSON array of facts or an object with a \"facts\" array";
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(parse_json::<Wrapped>(body, WHAT)?.facts),
        _ => parse_json(body, WHAT),
    }
}

/// Each item must be a JSON object: serde would otherwise take an array as
/// a struct's fields in order.
fn objects<'a, T: serde::Deserialize<'a>>(
    items: Vec<&'a RawValue>,
    what: &str,
) -> Result<Vec<T>, ApiError> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            if !raw.get().starts_with('{') {
                return Err(ApiError::BadRequest(format!(
                    "{what} {i}: expected a JSON object"
                )));
            }
            serde_json::from_str(raw.get())
                .map_err(|e| ApiError::BadRequest(format!("{what} {i}: {e}")))
        })
        .collect()
}

fn default_source(s: &mut String) {
    if s.trim().is_empty() {
        *s = DEFAULT_SOURCE.to_string();
    }
}

/// The `direct.facts` message for a body, or why the body is refused.
/// Identity comes from the token, never from the body.
pub fn facts_message(
    claims: &Claims,
    body: &[u8],
    max_items: usize,
) -> Result<DirectFacts, ApiError> {
    let env_id = environment_id(claims)?;
    let items = facts_items(body)?;
    check_count(items.len(), max_items, "facts", body)?;
    let facts: Vec<Fact> = objects(items, "fact")?;
    let facts = facts
        .into_iter()
        .enumerate()
        .map(|(i, mut f)| {
            f.environment = env_id.to_string();
            f.project_name = claims.project_name.clone();
            f.environment_name = claims.environment_name.clone();
            default_source(&mut f.source);
            if f.name.is_empty() {
                return Err(ApiError::BadRequest(format!("fact {i}: name is required")));
            }
            Ok(f)
        })
        .collect::<Result<Vec<Fact>, _>>()?;
    Ok(DirectFacts {
        message_type: TYPE_DIRECT_FACTS.into(),
        environment: env_id,
        project_name: claims.project_name.clone(),
        environment_name: claims.environment_name.clone(),
        facts,
    })
}

/// The `direct.problems` message for a body, or why the body is refused.
pub fn problems_message(
    claims: &Claims,
    body: &[u8],
    max_items: usize,
) -> Result<DirectProblems, ApiError> {
    let env_id = environment_id(claims)?;
    let items: Vec<&RawValue> = parse_json(body, "expected a JSON array of problems")?;
    check_count(items.len(), max_items, "problems", body)?;
    let problems: Vec<Problem> = objects(items, "problem")?;
    let problems = problems
        .into_iter()
        .enumerate()
        .map(|(i, mut p)| {
            p.environment = env_id;
            default_source(&mut p.source);
            p.severity.get_or_insert(DEFAULT_SEVERITY);
            if !p.severity_score.is_finite() {
                return Err(ApiError::BadRequest(format!(
                    "problem {i}: severityScore must be a number"
                )));
            }
            Ok(p)
        })
        .collect::<Result<Vec<Problem>, _>>()?;
    Ok(DirectProblems {
        message_type: TYPE_DIRECT_PROBLEMS.into(),
        environment: env_id,
        project_name: claims.project_name.clone(),
        environment_name: claims.environment_name.clone(),
        problems,
    })
}

/// A path segment fully decoded, as the Go original sees it: actix decodes
/// every escape except `%2F`, `%2B` and `%25`, which it leaves as they are.
pub fn decode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3).unwrap_or("");
        let decoded = match code.to_ascii_uppercase().as_str() {
            "2F" => Some('/'),
            "2B" => Some('+'),
            "25" => Some('%'),
            _ => None,
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[i + 3..];
            }
            None => {
                out.push('%');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest fact and problem still take [`MIN_ITEM_MESSAGE_BYTES`]
    /// each in a message, so counting items never refuses a body whose
    /// message would fit; 10,000 `{}` are refused before they are parsed.
    #[test]
    fn items_take_at_least_the_minimum_in_a_message() {
        let claims = Claims {
            namespace: "n".into(),
            environment_id: "1".into(),
            project_name: String::new(),
            environment_name: String::new(),
        };
        let n = 100;
        let facts = format!("[{}]", vec![r#"{"name":"a"}"#; n].join(","));
        let problems = format!("[{}]", vec!["{}"; n].join(","));
        let f = serde_json::to_vec(&facts_message(&claims, facts.as_bytes(), n).unwrap()).unwrap();
        let p = serde_json::to_vec(&problems_message(&claims, problems.as_bytes(), n).unwrap())
            .unwrap();
        for (what, len) in [("facts", f.len()), ("problems", p.len())] {
            assert!(
                len / n >= MIN_ITEM_MESSAGE_BYTES,
                "{what}: {} bytes an item",
                len / n
            );
        }
    }

    #[test]
    fn path_segments_are_decoded_like_go() {
        assert_eq!(decode_segment("a%2Bb"), "a+b");
        assert_eq!(decode_segment("a%2fb%2F"), "a/b/");
        assert_eq!(decode_segment("100%25"), "100%");
        // Decoded once: a literal "%2B" arrives as %252B.
        assert_eq!(decode_segment("%252B"), "%2B");
        assert_eq!(decode_segment("50%"), "50%");
        assert_eq!(decode_segment("plain"), "plain");
    }

    #[test]
    fn fact_types_and_severities_are_what_the_api_takes() {
        let claims = Claims {
            namespace: "ns".into(),
            environment_id: "42".into(),
            project_name: "p".into(),
            environment_name: "e".into(),
        };
        let m = facts_message(
            &claims,
            br#"[{"name":"a","type":"semver"},{"name":"b","type":"Url"},{"name":"c","type":"other"},{"name":"d"}]"#,
            10,
        )
        .unwrap();
        let types: Vec<_> = m.facts.iter().map(|f| f.fact_type.as_str()).collect();
        assert_eq!(types, ["SEMVER", "URL", "TEXT", "TEXT"]);
        let p = problems_message(&claims, br#"[{"identifier":"x"}]"#, 10).unwrap();
        assert_eq!(p.problems[0].severity.map(|s| s.as_str()), Some("UNKNOWN"));
        assert!(
            problems_message(&claims, br#"[{"identifier":"x","severity":"SEVERE"}]"#, 10).is_err()
        );
    }
    #[test]
    fn facts_carry_the_canonical_environment_id() {
        let claims = Claims {
            namespace: "ns".into(),
            environment_id: "42".into(),
            project_name: "p".into(),
            environment_name: "e".into(),
        };
        let m = facts_message(&claims, br#"[{"name":"a"}]"#, 10).unwrap();
        assert_eq!(m.environment, 42);
        assert_eq!(m.facts[0].environment, "42");
        let plus = Claims {
            environment_id: "+42".into(),
            ..claims
        };
        assert!(facts_message(&plus, br#"[{"name":"a"}]"#, 10).is_err());
    }
}
