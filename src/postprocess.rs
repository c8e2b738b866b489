//! The post-processor pipeline's decisions, as pure functions: which steps
//! an insights ConfigMap still needs, and what to record and do once they
//! have run. The ConfigMap reconciler executes them
//! (`controller::configmap`).
//!
//! Steps run in upstream v0.0.19's order (Lagoon core, Dependency-Track
//! central, Dependency-Track per namespace), each recording
//! `<status key>: success|failure` and `<status key>-error`. A step already
//! at `success` is not run again when the ConfigMap is retried.

use std::collections::BTreeMap;

use crate::contract::{
    ANNOTATION_CORE_ENABLED, ANNOTATION_CUSTOM_ENDPOINT, LABEL_ENVIRONMENT_TYPE,
};

pub const SUCCESS: &str = "success";
pub const FAILURE: &str = "failure";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    Core,
    DependencyTrackDefault,
    DependencyTrackCustom,
}

impl Step {
    pub const ALL: [Step; 3] = [
        Step::Core,
        Step::DependencyTrackDefault,
        Step::DependencyTrackCustom,
    ];

    /// Upstream's annotation for the step's status.
    pub fn status_key(self) -> &'static str {
        match self {
            Step::Core => "core.insights.lagoon.sh/status",
            Step::DependencyTrackDefault => "dependencytrack.insights.lagoon.sh/default-status",
            Step::DependencyTrackCustom => "dependencytrack.insights.lagoon.sh/custom-status",
        }
    }

    pub fn error_key(self) -> &'static str {
        match self {
            Step::Core => "core.insights.lagoon.sh/status-error",
            Step::DependencyTrackDefault => {
                "dependencytrack.insights.lagoon.sh/default-status-error"
            }
            Step::DependencyTrackCustom => "dependencytrack.insights.lagoon.sh/custom-status-error",
        }
    }

    /// The name in metrics and status.
    pub fn name(self) -> &'static str {
        match self {
            Step::Core => "core",
            Step::DependencyTrackDefault => "dependencytrack-default",
            Step::DependencyTrackCustom => "dependencytrack-custom",
        }
    }
}

/// Which steps are switched on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Enabled {
    /// Publishing to Lagoon core (off with RABBITMQ_ENABLED=false).
    pub core: bool,
    /// Dependency-Track with the central endpoint and key.
    pub dt_default: bool,
    /// Dependency-Track with an endpoint from the ConfigMap's annotation.
    pub dt_custom: bool,
}

/// What one ConfigMap looks like to the pipeline.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    pub labels: &'a BTreeMap<String, String>,
    pub annotations: &'a BTreeMap<String, String>,
    /// An SBOM (Dependency-Track takes nothing else).
    pub is_sbom: bool,
    /// Publish only ConfigMaps annotated core.insights.lagoon.sh/enabled=true.
    pub require_core: bool,
    /// The central push-prod-only.
    pub push_prod_only: bool,
    /// The recorded statuses are for this content (the fingerprint stored
    /// with them matches); statuses of other content are ignored.
    pub statuses_current: bool,
}

/// What a step has to do for one ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Work {
    /// Publish to the broker.
    Publish,
    /// Upload to the central Dependency-Track.
    Upload,
    /// Upload to this endpoint with the namespace's key (whose push-prod-only
    /// override is applied once the Secret is read).
    UploadCustom { endpoint: String },
    /// Nothing to do; recorded as success (upstream does the same).
    Skip(String),
}

/// The steps still to run, in order, with what each has to do. Steps
/// switched off and steps already at `success` are left out.
pub fn plan(enabled: Enabled, f: &Facts) -> Vec<(Step, Work)> {
    Step::ALL
        .into_iter()
        .filter(|s| match s {
            Step::Core => enabled.core,
            Step::DependencyTrackDefault => enabled.dt_default,
            Step::DependencyTrackCustom => enabled.dt_custom,
        })
        .filter(|s| {
            !f.statuses_current
                || f.annotations.get(s.status_key()).map(String::as_str) != Some(SUCCESS)
        })
        .map(|s| (s, work(s, f)))
        .collect()
}

fn work(step: Step, f: &Facts) -> Work {
    match step {
        Step::Core => {
            let annotated = f
                .annotations
                .get(ANNOTATION_CORE_ENABLED)
                .map(String::as_str)
                == Some("true");
            if f.require_core && !annotated {
                Work::Skip(format!("not annotated {ANNOTATION_CORE_ENABLED}=true"))
            } else {
                Work::Publish
            }
        }
        _ if !f.is_sbom => Work::Skip("not an SBOM".into()),
        Step::DependencyTrackDefault => match skip_reason(f.push_prod_only, f.labels) {
            Some(why) => Work::Skip(why),
            None => Work::Upload,
        },
        Step::DependencyTrackCustom => {
            match f
                .annotations
                .get(ANNOTATION_CUSTOM_ENDPOINT)
                .map(|e| e.trim())
                .filter(|e| !e.is_empty())
            {
                Some(endpoint) => Work::UploadCustom {
                    endpoint: endpoint.to_string(),
                },
                None => Work::Skip(format!("no {ANNOTATION_CUSTOM_ENDPOINT} annotation")),
            }
        }
    }
}

/// How a step went this time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure(String),
    /// Still running in the background (a Dependency-Track upload).
    Running,
}

/// What happens to the ConfigMap next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Every step succeeded: mark processed (or burn).
    Processed,
    /// A step is still running: record what finished, look again soon.
    Wait,
    /// A step failed: record it and retry after `mins` minutes, or give up.
    Defer {
        retries: u32,
        give_up: bool,
        reason: String,
    },
}

/// The annotations to set (Some) or remove (None), and what comes next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conclusion {
    pub annotations: BTreeMap<&'static str, Option<String>>,
    pub next: Next,
}

/// Upstream's rule: any failure defers the ConfigMap (and counts a retry;
/// past `max_retries` it gives up); all successes mark it processed.
pub fn conclude(results: &[(Step, Outcome)], retries_so_far: u32, max_retries: u32) -> Conclusion {
    let mut annotations = BTreeMap::new();
    let mut failures = Vec::new();
    let mut running = false;
    for (step, outcome) in results {
        match outcome {
            Outcome::Success => {
                annotations.insert(step.status_key(), Some(SUCCESS.to_string()));
                annotations.insert(step.error_key(), None);
            }
            Outcome::Failure(e) => {
                annotations.insert(step.status_key(), Some(FAILURE.to_string()));
                annotations.insert(step.error_key(), Some(e.clone()));
                failures.push(format!("{}: {e}", step.name()));
            }
            Outcome::Running => running = true,
        }
    }
    // A failure defers at once, even while an upload still runs (its result
    // is picked up on the retry): no step is re-run every poll meanwhile.
    let next = if failures.is_empty() && running {
        Next::Wait
    } else if failures.is_empty() {
        Next::Processed
    } else {
        let retries = retries_so_far.saturating_add(1);
        Next::Defer {
            retries,
            give_up: retries > max_retries,
            reason: failures.join("; "),
        }
    };
    Conclusion { annotations, next }
}

/// Why an SBOM is not uploaded, if it is not: with push-prod-only, only
/// ConfigMaps labelled `lagoon.sh/environmentType: production` go.
pub fn skip_reason(push_prod_only: bool, cm_labels: &BTreeMap<String, String>) -> Option<String> {
    let env_type = cm_labels
        .get(LABEL_ENVIRONMENT_TYPE)
        .map(String::as_str)
        .unwrap_or("");
    (push_prod_only && env_type != "production")
        .then(|| format!("push-prod-only: environment type {env_type:?} is not production"))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::contract::string_map as map;

    const CORE_ONLY: Enabled = Enabled {
        core: true,
        dt_default: false,
        dt_custom: false,
    };
    const NOTHING_ON: Enabled = Enabled {
        core: false,
        dt_default: false,
        dt_custom: false,
    };
    const ALL_ON: Enabled = Enabled {
        core: true,
        dt_default: true,
        dt_custom: true,
    };

    /// Published, uploaded centrally, no per-namespace endpoint.
    fn published_and_uploaded() -> Vec<(Step, Work)> {
        vec![
            (Step::Core, Work::Publish),
            (Step::DependencyTrackDefault, Work::Upload),
            (
                Step::DependencyTrackCustom,
                Work::Skip(
                    "no dependencytrack.insights.lagoon.sh/custom-endpoint annotation".into(),
                ),
            ),
        ]
    }

    #[test]
    fn plan_table() {
        let prod = map(&[("lagoon.sh/environmentType", "production")]);
        let dev = map(&[("lagoon.sh/environmentType", "development")]);
        let core_on = map(&[("core.insights.lagoon.sh/enabled", "true")]);
        let custom = map(&[
            ("core.insights.lagoon.sh/enabled", "true"),
            (
                "dependencytrack.insights.lagoon.sh/custom-endpoint",
                "http://dt.example",
            ),
        ]);
        let core_done = map(&[
            ("core.insights.lagoon.sh/enabled", "true"),
            ("core.insights.lagoon.sh/status", "success"),
            (
                "dependencytrack.insights.lagoon.sh/default-status",
                "failure",
            ),
        ]);
        let core_failed = map(&[
            ("core.insights.lagoon.sh/enabled", "true"),
            ("core.insights.lagoon.sh/status", "failure"),
        ]);
        let none = map(&[]);
        use Work::*;
        let skip = |s: &str| Skip(s.to_string());
        #[allow(clippy::type_complexity)]
        let cases: Vec<(
            &str,
            Enabled,
            &BTreeMap<String, String>,
            &BTreeMap<String, String>,
            bool,
            bool,
            bool,
            Vec<(Step, Work)>,
        )> = vec![
            (
                "gate: annotated is published",
                CORE_ONLY,
                &prod,
                &core_on,
                true,
                true,
                true,
                vec![(Step::Core, Publish)],
            ),
            (
                "gate: not annotated is skipped",
                CORE_ONLY,
                &prod,
                &none,
                true,
                true,
                true,
                vec![(
                    Step::Core,
                    skip("not annotated core.insights.lagoon.sh/enabled=true"),
                )],
            ),
            (
                "gate off: everything is published",
                CORE_ONLY,
                &prod,
                &none,
                true,
                false,
                true,
                vec![(Step::Core, Publish)],
            ),
            (
                "RABBITMQ_ENABLED=false: no core step",
                NOTHING_ON,
                &prod,
                &core_on,
                true,
                true,
                true,
                vec![],
            ),
            (
                "all on, production SBOM",
                ALL_ON,
                &prod,
                &core_on,
                true,
                true,
                true,
                published_and_uploaded(),
            ),
            (
                "image data never goes to Dependency-Track",
                ALL_ON,
                &prod,
                &custom,
                false,
                true,
                true,
                vec![
                    (Step::Core, Publish),
                    (Step::DependencyTrackDefault, skip("not an SBOM")),
                    (Step::DependencyTrackCustom, skip("not an SBOM")),
                ],
            ),
            (
                "push-prod-only skips development centrally; custom decides after lagoon-env",
                ALL_ON,
                &dev,
                &custom,
                true,
                true,
                true,
                vec![
                    (Step::Core, Publish),
                    (
                        Step::DependencyTrackDefault,
                        skip("push-prod-only: environment type \"development\" is not production"),
                    ),
                    (
                        Step::DependencyTrackCustom,
                        UploadCustom {
                            endpoint: "http://dt.example".into(),
                        },
                    ),
                ],
            ),
            (
                "push-prod-only off uploads development",
                ALL_ON,
                &dev,
                &core_on,
                true,
                true,
                false,
                published_and_uploaded(),
            ),
            (
                "retry: a step at success is not run again",
                ALL_ON,
                &prod,
                &core_done,
                true,
                true,
                true,
                vec![
                    (Step::DependencyTrackDefault, Upload),
                    (
                        Step::DependencyTrackCustom,
                        skip("no dependencytrack.insights.lagoon.sh/custom-endpoint annotation"),
                    ),
                ],
            ),
            (
                "retry: a failed step runs again",
                CORE_ONLY,
                &prod,
                &core_failed,
                true,
                true,
                true,
                vec![(Step::Core, Publish)],
            ),
        ];
        for (what, enabled, labels, annotations, is_sbom, require_core, push_prod_only, want) in
            cases
        {
            let f = Facts {
                labels,
                annotations,
                is_sbom,
                require_core,
                push_prod_only,
                statuses_current: true,
            };
            assert_eq!(plan(enabled, &f), want, "{what}");
        }
    }

    #[test]
    fn statuses_of_other_content_are_ignored() {
        let labels = map(&[("lagoon.sh/environmentType", "production")]);
        let annotations = map(&[
            ("core.insights.lagoon.sh/enabled", "true"),
            ("core.insights.lagoon.sh/status", "success"),
        ]);
        let f = |statuses_current| Facts {
            labels: &labels,
            annotations: &annotations,
            is_sbom: true,
            require_core: true,
            push_prod_only: true,
            statuses_current,
        };
        let core = Enabled {
            core: true,
            ..Default::default()
        };
        assert_eq!(plan(core, &f(true)), vec![]);
        assert_eq!(
            plan(core, &f(false)),
            vec![(Step::Core, Work::Publish)],
            "replaced in place: published again"
        );
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn conclude_table() {
        let ok = |s| (s, Outcome::Success);
        let fail = |s, e: &str| (s, Outcome::Failure(e.to_string()));
        let cases: Vec<(&str, Vec<(Step, Outcome)>, u32, Next)> = vec![
            (
                "all succeed",
                vec![ok(Step::Core), ok(Step::DependencyTrackDefault)],
                0,
                Next::Processed,
            ),
            ("nothing left to run", vec![], 2, Next::Processed),
            (
                "one running",
                vec![
                    ok(Step::Core),
                    (Step::DependencyTrackDefault, Outcome::Running),
                ],
                0,
                Next::Wait,
            ),
            (
                "one fails",
                vec![ok(Step::Core), fail(Step::DependencyTrackDefault, "down")],
                0,
                Next::Defer {
                    retries: 1,
                    give_up: false,
                    reason: "dependencytrack-default: down".into(),
                },
            ),
            (
                "fails at the last retry",
                vec![fail(Step::Core, "nack")],
                2,
                Next::Defer {
                    retries: 3,
                    give_up: false,
                    reason: "core: nack".into(),
                },
            ),
            (
                "fails past the last retry",
                vec![
                    fail(Step::Core, "nack"),
                    fail(Step::DependencyTrackCustom, "401"),
                ],
                3,
                Next::Defer {
                    retries: 4,
                    give_up: true,
                    reason: "core: nack; dependencytrack-custom: 401".into(),
                },
            ),
        ];
        for (what, results, retries, want) in cases {
            assert_eq!(conclude(&results, retries, 3).next, want, "{what}");
        }
        let c = conclude(
            &[
                ok(Step::Core),
                fail(Step::DependencyTrackDefault, "down"),
                (Step::DependencyTrackCustom, Outcome::Running),
            ],
            0,
            3,
        );
        assert_eq!(
            c.annotations["core.insights.lagoon.sh/status"].as_deref(),
            Some("success")
        );
        assert_eq!(
            c.annotations["core.insights.lagoon.sh/status-error"], None,
            "a stale error is removed"
        );
        assert_eq!(
            c.annotations["dependencytrack.insights.lagoon.sh/default-status"].as_deref(),
            Some("failure")
        );
        assert_eq!(
            c.annotations["dependencytrack.insights.lagoon.sh/default-status-error"].as_deref(),
            Some("down")
        );
        assert!(
            !c.annotations
                .contains_key("dependencytrack.insights.lagoon.sh/custom-status"),
            "running: nothing recorded yet"
        );
    }
}
