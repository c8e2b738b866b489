//! Which Lagoon environment an insights ConfigMap speaks for: always the
//! one its namespace belongs to, never what the ConfigMap says of itself.
//!
//! Lagoon core's consumer (insights-handler) writes a ConfigMap's insights
//! to the environment named by the message's labels `lagoon.sh/project` and
//! `lagoon.sh/environment`, or by the annotation `lagoon.sh/branch` when the
//! label `lagoon.sh/buildType` is not `pullrequest` (a branch environment's
//! Lagoon name is the branch itself, `feature/x`, while the namespace's
//! label holds its safe form, `feature-x`). Anyone who can create a
//! ConfigMap in a namespace chooses those, so [`published`] takes them from
//! the namespace: labels that name another environment, or a branch whose
//! safe form is not the namespace's environment, are refused; missing ones
//! are filled in; a namespace without Lagoon's labels forwards nothing.

use std::collections::BTreeMap;

use crate::contract::{LABEL_ENVIRONMENT, LABEL_ENVIRONMENT_TYPE, LABEL_PROJECT};

/// The annotation the consumer reads the environment name from for branch builds.
pub const ANNOTATION_BRANCH: &str = "lagoon.sh/branch";
/// The label saying which kind of build made the ConfigMap.
pub const LABEL_BUILD_TYPE: &str = "lagoon.sh/buildType";

/// Lagoon's safe form of an environment name (machinery's `MakeSafe`):
/// lower case, every character outside `[0-9a-z-]` a dash.
pub fn make_safe(name: &str) -> String {
    name.chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_digit() || c.is_ascii_lowercase() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Lagoon's shortened environment name (machinery's `ShortenEnvironment`):
/// a safe name longer than `58 - len(project)` bytes is cut and suffixed
/// with the first 4 hex digits of its SHA-1.
pub fn shorten_environment(project: &str, safe_env: &str) -> String {
    let room = 58usize.saturating_sub(project.len());
    if safe_env.len() <= room || room < 5 {
        return safe_env.to_string();
    }
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, safe_env.as_bytes());
    let hex: String = digest.as_ref()[..2]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // A safe name is ASCII, so any byte index is a character boundary.
    format!("{}-{hex}", &safe_env[..room - 5])
}

/// The labels a ConfigMap's message is published with: its own, with the
/// environment they name taken from the namespace; or why it must not be
/// forwarded.
pub fn published(
    namespace: &str,
    ns_labels: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    let own = |key: &str| ns_labels.get(key).filter(|v| !v.is_empty());
    let (Some(project), Some(environment)) = (own(LABEL_PROJECT), own(LABEL_ENVIRONMENT)) else {
        return Err(format!(
            "namespace {namespace} is not a Lagoon environment (it has no {LABEL_PROJECT} and \
             {LABEL_ENVIRONMENT} labels): its insights are not forwarded"
        ));
    };
    for (key, theirs) in [(LABEL_PROJECT, project), (LABEL_ENVIRONMENT, environment)] {
        if let Some(mine) = labels.get(key).filter(|v| !v.is_empty()) {
            if mine != theirs {
                return Err(format!(
                    "label {key}={mine:?} names another environment than namespace {namespace}'s \
                     ({key}={theirs:?}): not forwarded"
                ));
            }
        }
    }
    let pull_request = labels.get(LABEL_BUILD_TYPE).map(String::as_str) == Some("pullrequest");
    if let Some(branch) = annotations.get(ANNOTATION_BRANCH).filter(|_| !pull_request) {
        let safe = shorten_environment(project, &make_safe(branch));
        if &safe != environment {
            return Err(format!(
                "annotation {ANNOTATION_BRANCH}={branch:?} names environment {safe:?}, not namespace \
                 {namespace}'s {environment:?}: not forwarded"
            ));
        }
    }
    let mut out = labels.clone();
    out.insert(LABEL_PROJECT.into(), project.clone());
    out.insert(LABEL_ENVIRONMENT.into(), environment.clone());
    match own(LABEL_ENVIRONMENT_TYPE) {
        Some(t) => out.insert(LABEL_ENVIRONMENT_TYPE.into(), t.clone()),
        None => out.remove(LABEL_ENVIRONMENT_TYPE),
    };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::contract::string_map as map;

    #[test]
    fn safe_and_short_names_as_lagoon_makes_them() {
        // machinery's own test cases.
        assert_eq!(make_safe("Feature/Branch"), "feature-branch");
        assert_eq!(
            shorten_environment(
                "this-is-my-project",
                &make_safe("Feature/Really-Exceedingly-Long-Environment-Name-For-A-Branch")
            ),
            "feature-really-exceedingly-long-env-dc8c"
        );
        assert_eq!(
            shorten_environment("this-is-my-project", "feature-branch"),
            "feature-branch"
        );
        assert_eq!(make_safe("a_b.c ü"), "a-b-c--");
    }

    #[test]
    fn the_namespace_decides_the_environment() {
        let ns = map(&[
            (LABEL_PROJECT, "a"),
            (LABEL_ENVIRONMENT, "feature-x"),
            (LABEL_ENVIRONMENT_TYPE, "development"),
        ]);
        let honest = map(&[
            (LABEL_PROJECT, "a"),
            (LABEL_ENVIRONMENT, "feature-x"),
            (LABEL_ENVIRONMENT_TYPE, "development"),
            (LABEL_BUILD_TYPE, "branch"),
        ]);
        let branch = |b: &str| map(&[(ANNOTATION_BRANCH, b)]);
        let none = BTreeMap::new();
        let with = |base: &BTreeMap<String, String>, k: &str, v: &str| {
            let mut m = base.clone();
            m.insert(k.into(), v.into());
            m
        };
        let ok = |l: &BTreeMap<String, String>, a: &BTreeMap<String, String>| {
            published("b-ns", &ns, l, a)
        };
        // (what, result: Ok(project, environment, type) or Err(part of the reason))
        type Case = (
            &'static str,
            Result<BTreeMap<String, String>, String>,
            Result<[&'static str; 3], &'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "honest branch build",
                ok(&honest, &branch("feature/x")),
                Ok(["a", "feature-x", "development"]),
            ),
            (
                "honest, no annotation",
                ok(&honest, &none),
                Ok(["a", "feature-x", "development"]),
            ),
            (
                "labels missing: filled in",
                ok(&map(&[]), &none),
                Ok(["a", "feature-x", "development"]),
            ),
            (
                "type from the namespace",
                ok(&with(&honest, LABEL_ENVIRONMENT_TYPE, "production"), &none),
                Ok(["a", "feature-x", "development"]),
            ),
            (
                "another project",
                ok(&with(&honest, LABEL_PROJECT, "victim"), &none),
                Err("names another environment"),
            ),
            (
                "another environment",
                ok(&with(&honest, LABEL_ENVIRONMENT, "main"), &none),
                Err("names another environment"),
            ),
            (
                "a branch naming another environment",
                ok(&honest, &branch("main")),
                Err("names environment \"main\""),
            ),
            (
                "pull request: the branch is not read",
                ok(
                    &with(&honest, LABEL_BUILD_TYPE, "pullrequest"),
                    &branch("main"),
                ),
                Ok(["a", "feature-x", "development"]),
            ),
            (
                "not a Lagoon namespace",
                published("plain", &map(&[]), &honest, &none),
                Err("not a Lagoon environment"),
            ),
        ];
        for (what, got, want) in cases {
            match (got, want) {
                (Ok(l), Ok([p, e, t])) => {
                    assert_eq!(
                        (
                            l[LABEL_PROJECT].as_str(),
                            l[LABEL_ENVIRONMENT].as_str(),
                            l[LABEL_ENVIRONMENT_TYPE].as_str()
                        ),
                        (p, e, t),
                        "{what}"
                    );
                }
                (Err(reason), Err(part)) => assert!(reason.contains(part), "{what}: {reason}"),
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
    }
}
