//! The ConfigMap path's decisions, pure and tested as tables: what to do
//! with a ConfigMap before anything is read ([`decide`]), and what the
//! post-processors' results mean for it ([`settle`]). The reconciler in
//! `mod.rs` only carries them out.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;

use crate::contract::{
    ANNOTATION_PROCESSED, ANNOTATION_REJECTED_VERSION, LABEL_INSIGHTS_TYPE,
    LABEL_MAX_RETRY_EXCEEDED, LABEL_PROCESSED, LABEL_WRITE_DEFERRED,
};
use crate::postprocess::Next;
use crate::settings::Operations;

/// Only insights ConfigMaps with work left, selected by the API server, so
/// the cluster's other ConfigMaps never reach this process: unprocessed
/// ones, and with burn-after-reading on also processed ones (which it
/// deletes, whoever processed them and whenever it was switched on).
pub fn selector(burn_after_reading: bool) -> String {
    if burn_after_reading {
        format!("{LABEL_INSIGHTS_TYPE},!{LABEL_MAX_RETRY_EXCEEDED}")
    } else {
        format!("{LABEL_INSIGHTS_TYPE},!{LABEL_PROCESSED},!{LABEL_MAX_RETRY_EXCEEDED}")
    }
}

/// How long a ConfigMap deferred until a time still waits (the
/// `lagoon.sh/insightsWriteDeferred` label, ours or the Go original's).
pub fn deferred_for(labels: &BTreeMap<String, String>, now: u64) -> Option<Duration> {
    let until: u64 = labels
        .get(LABEL_WRITE_DEFERRED)?
        .trim()
        .parse()
        .unwrap_or(0);
    (until > now).then(|| Duration::from_secs(until - now))
}

/// How often a ConfigMap waiting on a Dependency-Track upload (or for a
/// slot to start one) is looked at if nothing wakes it first: an upload
/// that ends wakes its own ConfigMap and the next waiting one
/// (crate::dependency_track::Uploads::wakes), so this only covers a wake
/// that was lost.
pub const UPLOAD_POLL: Duration = Duration::from_secs(30);

/// What to do with a ConfigMap before anything is read or built for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing: being deleted, forwarding off, not an insights ConfigMap,
    /// given up, or this very content was rejected already.
    Ignore,
    /// Processed already and burn-after-reading is on: delete it.
    Burn,
    /// Processed already (only annotated, by the Go original): add the
    /// label, so the watch's selector drops it.
    Label,
    /// Deferred until a time still ahead.
    Wait(Duration),
    /// Build the message and run the post-processors.
    Forward,
}

/// The decision, from the ConfigMap, the settings, its content's
/// fingerprint and the time (seconds since the epoch). Pure: a table test
/// covers it.
pub fn decide(cm: &ConfigMap, ops: &Operations, fingerprint: &str, now: u64) -> Decision {
    let labels = cm.labels();
    let annotations = cm.annotations();
    if cm.metadata.deletion_timestamp.is_some()
        || !ops.forwarding_enabled
        || !labels.contains_key(LABEL_INSIGHTS_TYPE)
        || labels.contains_key(LABEL_MAX_RETRY_EXCEEDED)
    {
        return Decision::Ignore;
    }
    // Processed already (by us, or only annotated by the Go original).
    if labels.contains_key(LABEL_PROCESSED) || annotations.contains_key(ANNOTATION_PROCESSED) {
        return if ops.burn_after_reading {
            Decision::Burn
        } else if !labels.contains_key(LABEL_PROCESSED) {
            Decision::Label
        } else {
            Decision::Ignore
        };
    }
    // Deferred: wait for its time (also for ConfigMaps deferred by the Go original).
    if let Some(wait) = deferred_for(labels, now) {
        return Decision::Wait(wait);
    }
    if annotations
        .get(ANNOTATION_REJECTED_VERSION)
        .map(String::as_str)
        == Some(fingerprint)
    {
        return Decision::Ignore;
    }
    Decision::Forward
}

/// What the post-processors' conclusion means for the ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Mark it processed (or delete it when burning).
    Processed { burn: bool },
    /// Some step still runs: record what finished, look again after this.
    Recheck(Duration),
    /// A failure, with deferring off: record it and retry after a while.
    Retry { after: Duration, reason: String },
    /// A failure: defer it (or give up after the last retry).
    Defer {
        retries: u32,
        give_up: bool,
        reason: String,
    },
}

/// From [`crate::postprocess::conclude`]'s next step and the settings. Pure.
pub fn settle(next: Next, ops: &Operations) -> Settle {
    match next {
        Next::Processed => Settle::Processed {
            burn: ops.burn_after_reading,
        },
        Next::Wait => Settle::Recheck(UPLOAD_POLL),
        Next::Defer { reason, .. } if !ops.deferred_enabled => Settle::Retry {
            after: Duration::from_secs(30),
            reason,
        },
        Next::Defer {
            retries,
            give_up,
            reason,
        } => Settle::Defer {
            retries,
            give_up,
            reason,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{ANNOTATION_PROCESSED, LABEL_PROCESSED};

    fn ops(burn: bool, forwarding: bool, deferred: bool) -> Operations {
        Operations {
            burn_after_reading: burn,
            forwarding_enabled: forwarding,
            deferred_enabled: deferred,
            mins_between_retries: 3,
            max_retries: 3,
            require_core_enabled: true,
            tokens_enabled: true,
            target_label: None,
            dependency_track: Default::default(),
            build_scanner: Default::default(),
        }
    }

    fn meta(labels: &[(&str, &str)], annotations: &[(&str, &str)], deleting: bool) -> ConfigMap {
        let map = |p: &[(&str, &str)]| {
            Some(
                p.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let mut cm = ConfigMap::default();
        cm.metadata.labels = map(labels);
        cm.metadata.annotations = map(annotations);
        if deleting {
            cm.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ));
        }
        cm
    }

    #[test]
    fn decide_table() {
        const T: (&str, &str) = (LABEL_INSIGHTS_TYPE, "sbom-gz");
        const NOW: u64 = 1_000_000;
        let on = ops(false, true, true);
        let burning = ops(true, true, true);
        let off = ops(false, false, true);
        #[rustfmt::skip]
        let table: Vec<(&str, ConfigMap, &Operations, Decision)> = vec![
            ("a new insights ConfigMap", meta(&[T], &[], false), &on, Decision::Forward),
            ("being deleted", meta(&[T], &[], true), &on, Decision::Ignore),
            ("forwarding off", meta(&[T], &[], false), &off, Decision::Ignore),
            ("not an insights ConfigMap", meta(&[], &[], false), &on, Decision::Ignore),
            ("given up", meta(&[T, (LABEL_MAX_RETRY_EXCEEDED, "MAX_RETRY_EXCEEDED")], &[], false), &on, Decision::Ignore),
            ("processed, kept", meta(&[T, (LABEL_PROCESSED, "1")], &[], false), &on, Decision::Ignore),
            ("processed, burning", meta(&[T, (LABEL_PROCESSED, "1")], &[], false), &burning, Decision::Burn),
            ("annotated by Go only", meta(&[T], &[(ANNOTATION_PROCESSED, "x")], false), &on, Decision::Label),
            ("annotated by Go, burning", meta(&[T], &[(ANNOTATION_PROCESSED, "x")], false), &burning, Decision::Burn),
            ("deferred ahead", meta(&[T, (LABEL_WRITE_DEFERRED, "1000060")], &[], false), &on, Decision::Wait(Duration::from_secs(60))),
            ("deferred, time come", meta(&[T, (LABEL_WRITE_DEFERRED, "999999")], &[], false), &on, Decision::Forward),
            ("deferred, unreadable", meta(&[T, (LABEL_WRITE_DEFERRED, "soon")], &[], false), &on, Decision::Forward),
            ("this content rejected", meta(&[T], &[(ANNOTATION_REJECTED_VERSION, "fp")], false), &on, Decision::Ignore),
            ("other content rejected", meta(&[T], &[(ANNOTATION_REJECTED_VERSION, "old")], false), &on, Decision::Forward),
        ];
        for (what, cm, o, want) in table {
            assert_eq!(decide(&cm, o, "fp", NOW), want, "{what}");
        }
    }

    #[test]
    fn settle_table() {
        let defer = || Next::Defer {
            retries: 2,
            give_up: false,
            reason: "down".into(),
        };
        assert_eq!(
            settle(Next::Processed, &ops(true, true, true)),
            Settle::Processed { burn: true }
        );
        assert_eq!(
            settle(Next::Processed, &ops(false, true, true)),
            Settle::Processed { burn: false }
        );
        assert_eq!(
            settle(Next::Wait, &ops(false, true, true)),
            Settle::Recheck(UPLOAD_POLL)
        );
        assert_eq!(
            settle(defer(), &ops(false, true, true)),
            Settle::Defer {
                retries: 2,
                give_up: false,
                reason: "down".into()
            }
        );
        assert_eq!(
            settle(defer(), &ops(false, true, false)),
            Settle::Retry {
                after: Duration::from_secs(30),
                reason: "down".into()
            },
            "deferring off: retried without the deferred label"
        );
    }

    #[test]
    fn selector_excludes_processed_and_exhausted() {
        assert_eq!(
            selector(false),
            "lagoon.sh/insightsType,!lagoon.sh/insightsProcessed,!insights.lagoon.sh/max-retry-exceeded"
        );
        // Burning: processed ones too, whoever processed them.
        assert_eq!(
            selector(true),
            "lagoon.sh/insightsType,!insights.lagoon.sh/max-retry-exceeded"
        );
    }
}
