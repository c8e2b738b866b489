//! The InsightsRemoteConfig's status: built by a pure function from what
//! this process observed (configuration problems, the broker, counters),
//! and written by a small loop that batches changes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::controller::{ConfigHealth, Context, Counters};
use crate::crd::{InsightsRemoteConfig, InsightsRemoteConfigStatus, PostProcessorCounts};

/// The broker as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerView {
    /// `RABBITMQ_ENABLED=false`.
    Disabled,
    Connected {
        /// TLS without verifying the broker's certificate.
        unverified: bool,
    },
    /// Not connected, with the last error (or "connecting").
    Unreachable(String),
}

impl BrokerView {
    pub fn of(ctx: &Context) -> Self {
        match &ctx.publisher {
            None => BrokerView::Disabled,
            Some(p) => {
                let s = p.state();
                if s.connected {
                    BrokerView::Connected {
                        unverified: s.unverified,
                    }
                } else {
                    BrokerView::Unreachable(s.last_error.unwrap_or_else(|| "connecting".into()))
                }
            }
        }
    }
}

/// The running totals the status reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub forwarded: u64,
    pub deferred: u64,
    pub rejected: u64,
    pub burned: u64,
    pub tokens_issued: u64,
}

impl Totals {
    pub fn read(c: &Counters) -> Self {
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        Totals {
            forwarded: load(&c.forwarded),
            deferred: load(&c.deferred),
            rejected: load(&c.rejected),
            burned: load(&c.burned),
            tokens_issued: load(&c.tokens_issued),
        }
    }

    pub fn stored(s: &InsightsRemoteConfigStatus) -> Self {
        Totals {
            forwarded: s.forwarded,
            deferred: s.deferred,
            rejected: s.rejected,
            burned: s.burned,
            tokens_issued: s.tokens_issued,
        }
    }

    fn zip(self, o: Totals, f: impl Fn(u64, u64) -> u64) -> Totals {
        Totals {
            forwarded: f(self.forwarded, o.forwarded),
            deferred: f(self.deferred, o.deferred),
            rejected: f(self.rejected, o.rejected),
            burned: f(self.burned, o.burned),
            tokens_issued: f(self.tokens_issued, o.tokens_issued),
        }
    }

    pub fn plus(self, o: Totals) -> Totals {
        self.zip(o, u64::wrapping_add)
    }

    pub fn minus(self, o: Totals) -> Totals {
        self.zip(o, u64::wrapping_sub)
    }
}

/// Everything the status is built from, read at one instant.
#[derive(Debug, Clone)]
pub struct Observed {
    pub health: ConfigHealth,
    pub broker: BrokerView,
    /// Counted by this process.
    pub counted: Totals,
    pub last_forward: Option<String>,
    pub steps: BTreeMap<String, PostProcessorCounts>,
    pub now: Time,
}

impl Observed {
    pub fn of(ctx: &Context) -> Self {
        let c = &ctx.counters;
        Observed {
            health: ctx.health.lock().expect("health lock").clone(),
            broker: BrokerView::of(ctx),
            counted: Totals::read(c),
            last_forward: c.last_forward.lock().expect("counters lock").clone(),
            steps: c.steps.lock().expect("counters lock").clone(),
            now: Time(k8s_openapi::jiff::Timestamp::now()),
        }
    }
}

/// A status, and whether it says the broker is connected.
#[derive(Debug, Clone, PartialEq)]
pub struct Built {
    pub status: InsightsRemoteConfigStatus,
    pub connected: bool,
}

/// The status for what was observed. `base` is what the stored totals were
/// before this process counted anything (see [`term_base`]); `current` is
/// the stored status, whose transition times are kept while a condition
/// keeps its status.
pub fn build_status(obs: &Observed, base: Totals, current: &InsightsRemoteConfigStatus) -> Built {
    let health = &obs.health;
    let broker_msg = |m: &str| m.to_string();
    let (connected, broker_reason, broker_message) = match (&health.broker_problem, &obs.broker) {
        (Some(p), _) => (false, p.reason(), p.to_string()),
        (None, BrokerView::Disabled) => (
            false,
            "Disabled",
            broker_msg("RABBITMQ_ENABLED is false"),
        ),
        (None, BrokerView::Connected { unverified: true }) => (
            true,
            "ConnectedUnverified",
            broker_msg("publishing with confirms over TLS WITHOUT verifying the broker's certificate (RABBITMQ_VERIFY=false)"),
        ),
        (None, BrokerView::Connected { unverified: false }) => {
            (true, "Connected", broker_msg("publishing with confirms"))
        }
        (None, BrokerView::Unreachable(m)) => (false, "Unreachable", m.clone()),
    };
    let (key_ok, key_reason, key_message) = match &health.signing_key_problem {
        Some(p) => (false, p.reason(), p.to_string()),
        None => (
            true,
            "Loaded",
            format!(
                "signing key {}",
                health.key_fingerprint.clone().unwrap_or_default()
            ),
        ),
    };
    let ready = connected && key_ok && health.settings_problem.is_none();
    let (ready_reason, ready_message) = match &health.settings_problem {
        Some(p) => (p.reason(), p.to_string()),
        None if ready => (
            "Ready",
            "forwarding insights and minting tokens".to_string(),
        ),
        None if !connected => ("BrokerNotConnected", broker_message.clone()),
        None => ("SigningKeyNotReady", key_message.clone()),
    };
    let cond = |type_: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        // Keep the transition time while the status stays the same.
        let since = current
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| obs.now.clone());
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: since,
            observed_generation: health.observed_generation,
        }
    };
    let totals = base.plus(obs.counted);
    let status = InsightsRemoteConfigStatus {
        observed_generation: health.observed_generation,
        conditions: vec![
            cond("Ready", ready, ready_reason, ready_message),
            cond("BrokerConnected", connected, broker_reason, broker_message),
            cond("SigningKeyReady", key_ok, key_reason, key_message),
        ],
        forwarded: totals.forwarded,
        deferred: totals.deferred,
        rejected: totals.rejected,
        burned: totals.burned,
        tokens_issued: totals.tokens_issued,
        last_forward_time: obs
            .last_forward
            .clone()
            .or_else(|| current.last_forward_time.clone()),
        signing_key_fingerprint: health.key_fingerprint.clone(),
        post_processors: obs.steps.clone(),
    };
    Built { status, connected }
}

/// The totals stored before this process counted: the stored totals less
/// what it had counted (in earlier leadership terms, already written) when
/// the current term began.
pub fn term_base(stored: &InsightsRemoteConfigStatus, counted_at_start: Totals) -> Totals {
    Totals::stored(stored).minus(counted_at_start)
}

/// The Event for a change of the broker connection, if it changed.
pub fn connection_event(
    was: Option<bool>,
    connected: bool,
    broker: &BrokerView,
) -> Option<(EventType, &'static str, String)> {
    if was.is_none_or(|w| w == connected) {
        return None;
    }
    Some(if connected {
        (
            EventType::Normal,
            "BrokerConnected",
            "connected to the message broker".to_string(),
        )
    } else {
        let why = match broker {
            BrokerView::Disabled => "publishing is disabled".to_string(),
            BrokerView::Unreachable(m) => m.clone(),
            BrokerView::Connected { .. } => "the broker settings did not resolve".to_string(),
        };
        (
            EventType::Warning,
            "BrokerLost",
            format!("lost the message broker: {why}"),
        )
    })
}

/// The status this process wrote last, and the resource it was based on.
#[derive(Clone, Debug, PartialEq)]
pub struct Written {
    pub uid: Option<String>,
    /// The resourceVersion the cache showed when the write was decided.
    pub based_on: Option<String>,
    pub status: InsightsRemoteConfigStatus,
}

/// Whether `status` must be written, given the resource as the cache shows
/// it and what this process wrote last. The cache may lag this process's
/// own write: while it still shows the very version that write was based
/// on, the write stands. Any other version (another writer, the resource
/// re-created, an A-B-A change) is trusted as it is.
pub fn needs_write(
    uid: Option<&str>,
    resource_version: Option<&str>,
    stored: Option<&InsightsRemoteConfigStatus>,
    last: Option<&Written>,
    status: &InsightsRemoteConfigStatus,
) -> bool {
    if stored == Some(status) {
        return false;
    }
    let own_write_not_seen_yet = last.is_some_and(|w| {
        w.uid.as_deref() == uid && w.based_on.as_deref() == resource_version && w.status == *status
    });
    !own_write_not_seen_yet
}

/// Writes status: conditions when they change, counters batched (at most
/// one write every half second plus the API call, not one per ConfigMap).
/// Reads the resource from the config follower's cache, never with a GET.
pub async fn write_status(ctx: Arc<Context>, shutdown: CancellationToken) {
    let api: Api<InsightsRemoteConfig> = Api::all(ctx.client.clone());
    let key = ObjectRef::new(&ctx.config_name);
    let mut broker_rx = ctx.publisher.as_ref().map(|p| p.subscribe_state());
    let mut last: Option<Written> = None;
    let mut base: Option<(Option<String>, Totals)> = None;
    let mut was_connected: Option<bool> = None;
    // What earlier terms of this process counted (already in the status).
    let at_start = Totals::read(&ctx.counters);
    let stop = shutdown.cancelled_owned();
    tokio::pin!(stop);
    loop {
        let broker_changed = async {
            match broker_rx.as_mut() {
                Some(rx) => rx.changed().await.map_err(|_| ()),
                None => futures::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stop => return,
            _ = ctx.status_changed.notified() => {}
            _ = broker_changed => {}
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
        // Batch: let more changes gather before writing.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(irc) = ctx.config_store.get(&key) else {
            continue;
        };
        let uid = irc.metadata.uid.clone();
        let current = irc.status.clone().unwrap_or_default();
        // Per object: a re-created resource starts from its own totals.
        if base.as_ref().is_none_or(|(u, _)| *u != uid) {
            base = Some((uid.clone(), term_base(&current, at_start)));
        }
        let base = base.as_ref().map(|(_, t)| *t).unwrap_or_default();
        let obs = Observed::of(&ctx);
        let built = build_status(&obs, base, &current);
        if let Some((t, reason, note)) =
            connection_event(was_connected, built.connected, &obs.broker)
        {
            ctx.event(irc.as_ref(), t, reason, "Connect", note).await;
        }
        was_connected = Some(built.connected);
        let status = built.status;
        let rv = irc.metadata.resource_version.clone();
        if !needs_write(
            uid.as_deref(),
            rv.as_deref(),
            irc.status.as_ref(),
            last.as_ref(),
            &status,
        ) {
            continue;
        }
        let patch = json!({ "status": status });
        match api
            .patch_status(
                &irc.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                last = Some(Written {
                    uid,
                    based_on: rv,
                    status,
                })
            }
            Err(e) => warn!(error = %e, "writing InsightsRemoteConfig status"),
        }
    }
}

/// Writes the status once, now (the process is about to stop on a problem
/// the status names, before [`write_status`] runs): one GET, one patch.
pub async fn write_status_once(ctx: &Context) {
    let api: Api<InsightsRemoteConfig> = Api::all(ctx.client.clone());
    let Ok(Some(irc)) = api.get_opt(&ctx.config_name).await else {
        return;
    };
    let current = irc.status.clone().unwrap_or_default();
    let base = term_base(&current, Totals::read(&ctx.counters));
    let status = build_status(&Observed::of(ctx), base, &current).status;
    let patch = json!({ "status": status });
    if let Err(e) = api
        .patch_status(
            &irc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        warn!(error = %e, "writing InsightsRemoteConfig status");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::config::Problem;

    fn at(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    fn observed(health: ConfigHealth, broker: BrokerView) -> Observed {
        Observed {
            health,
            broker,
            counted: Totals::default(),
            last_forward: None,
            steps: BTreeMap::new(),
            now: at(1_000),
        }
    }

    fn healthy() -> ConfigHealth {
        ConfigHealth {
            key_fingerprint: Some("abc".into()),
            observed_generation: Some(3),
            ..Default::default()
        }
    }

    fn conditions(b: &Built) -> Vec<(String, String, String)> {
        b.status
            .conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect()
    }

    #[test]
    fn conditions_table() {
        let up = BrokerView::Connected { unverified: false };
        let down = BrokerView::Unreachable("connection refused".into());
        let secret = |m: &str| Some(Problem::SecretUnavailable(m.into()));
        // (health, broker) -> (Ready, BrokerConnected, SigningKeyReady) as
        // status/reason, and whether it counts as connected.
        let cases: Vec<(ConfigHealth, BrokerView, [&str; 3], bool)> = vec![
            (
                healthy(),
                up.clone(),
                ["True/Ready", "True/Connected", "True/Loaded"],
                true,
            ),
            (
                healthy(),
                BrokerView::Connected { unverified: true },
                ["True/Ready", "True/ConnectedUnverified", "True/Loaded"],
                true,
            ),
            (
                healthy(),
                down.clone(),
                [
                    "False/BrokerNotConnected",
                    "False/Unreachable",
                    "True/Loaded",
                ],
                false,
            ),
            (
                healthy(),
                BrokerView::Disabled,
                ["False/BrokerNotConnected", "False/Disabled", "True/Loaded"],
                false,
            ),
            (
                ConfigHealth {
                    broker_problem: secret("no credentials"),
                    ..healthy()
                },
                up.clone(),
                [
                    "False/BrokerNotConnected",
                    "False/SecretUnavailable",
                    "True/Loaded",
                ],
                false,
            ),
            (
                ConfigHealth {
                    signing_key_problem: Some(Problem::InvalidKey("short".into())),
                    ..healthy()
                },
                up.clone(),
                [
                    "False/SigningKeyNotReady",
                    "True/Connected",
                    "False/InvalidKey",
                ],
                true,
            ),
            (
                // A settings problem names the Ready reason, whatever else.
                ConfigHealth {
                    settings_problem: Some(Problem::InvalidSpec("bad template".into())),
                    signing_key_problem: Some(Problem::NoSigningKey("none".into())),
                    ..healthy()
                },
                down.clone(),
                [
                    "False/InvalidSpec",
                    "False/Unreachable",
                    "False/NoSigningKey",
                ],
                false,
            ),
        ];
        for (health, broker, want, connected) in cases {
            let built = build_status(
                &observed(health.clone(), broker.clone()),
                Totals::default(),
                &Default::default(),
            );
            let got: Vec<String> = conditions(&built)
                .into_iter()
                .map(|(_, s, r)| format!("{s}/{r}"))
                .collect();
            assert_eq!(got, want, "{health:?} {broker:?}");
            assert_eq!(built.connected, connected, "{health:?} {broker:?}");
            let types: Vec<_> = conditions(&built).into_iter().map(|c| c.0).collect();
            assert_eq!(types, ["Ready", "BrokerConnected", "SigningKeyReady"]);
            assert!(built
                .status
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(3)));
        }
    }

    #[test]
    fn messages_say_what_is_wrong_without_secrets() {
        let health = ConfigHealth {
            broker_problem: Some(Problem::SecretUnavailable(
                "Secret lagoon/rabbit not found".into(),
            )),
            ..healthy()
        };
        let built = build_status(
            &observed(health, BrokerView::Connected { unverified: false }),
            Totals::default(),
            &Default::default(),
        );
        let ready = &built.status.conditions[0];
        assert_eq!(ready.message, "Secret lagoon/rabbit not found");
        assert_eq!(built.status.conditions[2].message, "signing key abc");
        assert_eq!(built.status.signing_key_fingerprint.as_deref(), Some("abc"));
    }

    #[test]
    fn transition_times_stay_while_the_status_does() {
        let up = BrokerView::Connected { unverified: false };
        let first = build_status(
            &observed(healthy(), up.clone()),
            Totals::default(),
            &Default::default(),
        );
        assert!(first
            .status
            .conditions
            .iter()
            .all(|c| c.last_transition_time == at(1_000)));
        let mut later = observed(healthy(), up);
        later.now = at(2_000);
        let same = build_status(&later, Totals::default(), &first.status);
        assert!(same
            .status
            .conditions
            .iter()
            .all(|c| c.last_transition_time == at(1_000)));
        later.broker = BrokerView::Unreachable("gone".into());
        let flipped = build_status(&later, Totals::default(), &same.status);
        let times: Vec<_> = flipped
            .status
            .conditions
            .iter()
            .map(|c| c.last_transition_time.clone())
            .collect();
        // Ready and BrokerConnected flipped; SigningKeyReady did not.
        assert_eq!(times, [at(2_000), at(2_000), at(1_000)]);
    }

    #[test]
    fn totals_add_this_process_to_what_was_stored() {
        let stored = InsightsRemoteConfigStatus {
            forwarded: 100,
            tokens_issued: 7,
            last_forward_time: Some("2026-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        // This process had counted 10 forwards in an earlier term, already
        // in the stored 100.
        let at_start = Totals {
            forwarded: 10,
            ..Default::default()
        };
        let base = term_base(&stored, at_start);
        let mut obs = observed(healthy(), BrokerView::Disabled);
        obs.counted = Totals {
            forwarded: 15,
            burned: 2,
            ..Default::default()
        };
        let built = build_status(&obs, base, &stored);
        assert_eq!(built.status.forwarded, 105);
        assert_eq!(built.status.burned, 2);
        assert_eq!(built.status.tokens_issued, 7);
        assert_eq!(
            built.status.last_forward_time.as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
        obs.last_forward = Some("2026-02-02T00:00:00Z".into());
        let newer = build_status(&obs, base, &stored);
        assert_eq!(
            newer.status.last_forward_time.as_deref(),
            Some("2026-02-02T00:00:00Z")
        );
    }

    #[test]
    fn writes_unless_stored_or_own_write_not_yet_seen() {
        let s = |forwarded: u64| InsightsRemoteConfigStatus {
            forwarded,
            ..Default::default()
        };
        let wrote = |status: u64| Written {
            uid: Some("u1".into()),
            based_on: Some("10".into()),
            status: s(status),
        };
        // (uid, rv, stored, last written, to write) -> write?
        let cases = [
            ("u1", "11", Some(s(5)), Some(wrote(5)), 5, false),
            ("u1", "10", Some(s(4)), Some(wrote(5)), 5, false),
            ("u1", "12", Some(s(4)), Some(wrote(5)), 5, true),
            ("u2", "10", None, Some(wrote(5)), 5, true),
            ("u1", "10", Some(s(4)), None, 5, true),
            ("u1", "10", Some(s(4)), Some(wrote(5)), 6, true),
            ("u1", "3", None, None, 5, true),
        ];
        for (uid, rv, stored, last, status, want) in cases {
            assert_eq!(
                needs_write(
                    Some(uid),
                    Some(rv),
                    stored.as_ref(),
                    last.as_ref(),
                    &s(status)
                ),
                want,
                "{uid} {rv} {stored:?} {last:?} {status}"
            );
        }
    }

    #[test]
    fn connection_events_only_on_change() {
        let down = BrokerView::Unreachable("connection refused".into());
        let up = BrokerView::Connected { unverified: false };
        assert_eq!(connection_event(None, false, &down), None);
        assert_eq!(connection_event(Some(true), true, &up), None);
        let (t, reason, note) = connection_event(Some(true), false, &down).unwrap();
        assert_eq!((t, reason), (EventType::Warning, "BrokerLost"));
        assert_eq!(note, "lost the message broker: connection refused");
        let (t, reason, _) = connection_event(Some(false), true, &up).unwrap();
        assert_eq!((t, reason), (EventType::Normal, "BrokerConnected"));
    }
}
