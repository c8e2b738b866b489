//! Which environments may post right now: every replica keeps the Lagoon
//! environment namespaces (their id, project and environment labels) and
//! the revocation marks of their `insights-token` Secrets, from two
//! metadata-only watches, so a token is checked against the cluster as it
//! is, without an API call per request.
//!
//! A token whose signature is good is still refused when
//! - its namespace is gone, being deleted, or no longer a Lagoon
//!   environment (no `lagoon.sh/environmentId` label);
//! - its claims no longer match the namespace's labels (id, project,
//!   environment);
//! - another namespace created earlier holds the same environment id (the
//!   first one keeps it; the namespace reconciler mints nothing for the
//!   other);
//! - it was issued before the namespace's Secret says tokens are valid from
//!   ([`ANNOTATION_VALID_FROM`]), or the Secret asks for a revocation
//!   ([`ANNOTATION_REVOKE`]), or the Secret is gone while this process
//!   mints tokens (deleting it revokes every token of the namespace; the
//!   reconciler writes a new one at once).
//!
//! Tokens minted by the Go original (no `iat`) keep working until their
//! namespace's tokens are revoked once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::watch;

use crate::contract::{LABEL_ENVIRONMENT, LABEL_ENVIRONMENT_ID, LABEL_PROJECT, TOKEN_SECRET_NAME};
use crate::token::Claims;

/// On an `insights-token` Secret, written by this operator: tokens of the
/// namespace issued before this instant (RFC 3339) are refused.
pub const ANNOTATION_VALID_FROM: &str = "insights.lagoon.sh/tokens-valid-from";
/// On an `insights-token` Secret, set by an admin (any value): revoke every
/// token of the namespace now. The operator mints a new token, moves
/// [`ANNOTATION_VALID_FROM`] to now and removes this annotation.
pub const ANNOTATION_REVOKE: &str = "insights.lagoon.sh/revoke-tokens";

/// Why a token with a good signature is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the environment list is still loading")]
    NotReady,
    #[error("the token's namespace does not exist or is not a Lagoon environment")]
    Gone,
    #[error("the token's namespace is being deleted")]
    Terminating,
    #[error("the token does not match its namespace's environment labels")]
    Mismatch,
    #[error("the token's environment id belongs to another namespace")]
    Duplicate,
    #[error("the token has been revoked")]
    Revoked,
}

/// What is kept of one environment namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    pub environment_id: String,
    pub project: String,
    pub environment: String,
    /// Seconds since the epoch (the namespace's creationTimestamp).
    pub created: i64,
    pub terminating: bool,
}

impl Env {
    fn of(ns: &PartialObjectMeta<Namespace>) -> Option<Env> {
        let labels = ns.labels();
        let get = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
        Some(Env {
            environment_id: get(LABEL_ENVIRONMENT_ID)?,
            project: get(LABEL_PROJECT).unwrap_or_default(),
            environment: get(LABEL_ENVIRONMENT).unwrap_or_default(),
            created: ns
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(0, |t| t.0.as_second()),
            terminating: ns.metadata.deletion_timestamp.is_some(),
        })
    }
}

/// What an `insights-token` Secret says about revocation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mark {
    /// No revocation ever: every token with a good signature.
    None,
    /// Tokens issued at or after this instant (seconds since the epoch).
    From(f64),
    /// Every token refused (a revocation asked for, or a mark that does not
    /// parse, until the reconciler writes a new one).
    All,
}

impl Mark {
    pub fn of(annotations: &std::collections::BTreeMap<String, String>) -> Mark {
        if annotations.contains_key(ANNOTATION_REVOKE) {
            return Mark::All;
        }
        match annotations.get(ANNOTATION_VALID_FROM) {
            None => Mark::None,
            Some(v) => match v.parse::<Timestamp>() {
                Ok(t) => Mark::From(t.as_millisecond() as f64 / 1000.0),
                Err(_) => Mark::All,
            },
        }
    }

    /// Whether a token issued at `iat` (none: the Go original's) passes.
    pub fn admits(self, iat: Option<f64>) -> bool {
        match self {
            Mark::None => true,
            Mark::All => false,
            // Compared in milliseconds, the mark's precision.
            Mark::From(from) => {
                iat.is_some_and(|i| (i * 1000.0).floor() >= (from * 1000.0).floor())
            }
        }
    }
}

/// The annotation value that makes every token issued before `now` invalid.
pub fn valid_from_now() -> (String, f64) {
    let now = Timestamp::now();
    // Milliseconds, rounded down: a token minted after this call has an
    // `iat` at or after it.
    let ms = now.as_millisecond();
    let t = Timestamp::from_millisecond(ms).unwrap_or(now);
    (t.to_string(), ms as f64 / 1000.0)
}

#[derive(Default)]
struct State {
    /// None until the first full list.
    namespaces: Option<HashMap<String, Env>>,
    /// Namespace -> its token Secret's mark; None until the first list.
    secrets: Option<HashMap<String, Mark>>,
    /// Environment id -> namespaces carrying it.
    by_id: HashMap<String, Vec<String>>,
}

impl State {
    /// Records `name`'s environment (None: gone) in the namespaces and the
    /// id index, without rebuilding the index (one event, one entry).
    fn set(&mut self, name: String, env: Option<Env>) {
        let Some(m) = self.namespaces.as_mut() else {
            return;
        };
        let old = match env {
            Some(env) => {
                let id = env.environment_id.clone();
                let old = m.insert(name.clone(), env);
                if old.as_ref().map(|o| &o.environment_id) != Some(&id) {
                    self.by_id.entry(id).or_default().push(name.clone());
                }
                old.filter(|o| o.environment_id != m[&name].environment_id)
            }
            None => m.remove(&name),
        };
        if let Some(old) = old {
            if let Some(names) = self.by_id.get_mut(&old.environment_id) {
                names.retain(|n| n != &name);
                if names.is_empty() {
                    self.by_id.remove(&old.environment_id);
                }
            }
        }
    }

    /// Rebuilds the id index after a full list.
    fn index(&mut self) {
        self.by_id.clear();
        if let Some(m) = &self.namespaces {
            for (name, env) in m {
                self.by_id
                    .entry(env.environment_id.clone())
                    .or_default()
                    .push(name.clone());
            }
        }
    }

    fn owner(&self, id: &str) -> Option<&str> {
        let m = self.namespaces.as_ref()?;
        self.by_id
            .get(id)?
            .iter()
            .filter_map(|n| m.get(n).map(|e| (e.created, n.as_str())))
            .min()
            .map(|(_, n)| n)
    }
}

/// The registry; shared by the ingestion API and the namespace reconciler.
#[derive(Default)]
pub struct Tenants {
    state: RwLock<State>,
    /// Whether this process mints tokens (then a missing Secret means its
    /// tokens were revoked).
    minting: AtomicBool,
    ready: watch::Sender<bool>,
}

/// The decision for one token, from what the registry holds.
pub fn judge(
    env: Option<&Env>,
    owner: Option<&str>,
    mark: Option<Mark>,
    minting: bool,
    claims: &Claims,
    iat: Option<f64>,
) -> Result<(), Refusal> {
    let env = env.ok_or(Refusal::Gone)?;
    if env.terminating {
        return Err(Refusal::Terminating);
    }
    if env.environment_id != claims.environment_id
        || env.project != claims.project_name
        || env.environment != claims.environment_name
    {
        return Err(Refusal::Mismatch);
    }
    if owner != Some(claims.namespace.as_str()) {
        return Err(Refusal::Duplicate);
    }
    match mark {
        Some(m) if m.admits(iat) => Ok(()),
        Some(_) => Err(Refusal::Revoked),
        None if minting => Err(Refusal::Revoked),
        None => Ok(()),
    }
}

impl Tenants {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Whether both lists arrived once.
    pub fn ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Resolves once both lists arrived.
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Checks a token whose signature is good.
    pub fn admit(&self, claims: &Claims, iat: Option<f64>) -> Result<(), Refusal> {
        let st = self.state.read().expect("tenants lock");
        let (Some(namespaces), Some(secrets)) = (&st.namespaces, &st.secrets) else {
            return Err(Refusal::NotReady);
        };
        judge(
            namespaces.get(&claims.namespace),
            st.owner(&claims.environment_id),
            secrets.get(&claims.namespace).copied(),
            self.minting.load(Ordering::Relaxed),
            claims,
            iat,
        )
    }

    /// The namespace that holds an environment id: None before the first
    /// list, `Some(None)` when no namespace carries it.
    pub fn owner_of(&self, id: &str) -> Option<Option<String>> {
        let st = self.state.read().expect("tenants lock");
        st.namespaces.as_ref()?;
        Some(st.owner(id).map(str::to_string))
    }

    fn set_ready(&self, st: &State) {
        let ready = st.namespaces.is_some() && st.secrets.is_some();
        self.ready
            .send_if_modified(|r| std::mem::replace(r, ready) != ready);
    }

    fn apply_namespace(
        &self,
        ev: watcher::Event<PartialObjectMeta<Namespace>>,
        pending: &mut HashMap<String, Env>,
    ) {
        let mut st = self.state.write().expect("tenants lock");
        match ev {
            watcher::Event::Apply(ns) => st.set(ns.name_any(), Env::of(&ns)),
            watcher::Event::Delete(ns) => st.set(ns.name_any(), None),
            watcher::Event::Init => pending.clear(),
            watcher::Event::InitApply(ns) => {
                if let Some(env) = Env::of(&ns) {
                    pending.insert(ns.name_any(), env);
                }
            }
            watcher::Event::InitDone => {
                st.namespaces = Some(std::mem::take(pending));
                st.index();
            }
        }
        self.set_ready(&st);
    }

    fn apply_secret(
        &self,
        ev: watcher::Event<PartialObjectMeta<Secret>>,
        pending: &mut HashMap<String, Mark>,
    ) {
        let mut st = self.state.write().expect("tenants lock");
        match ev {
            watcher::Event::Apply(s) => {
                if let (Some(m), Some(ns)) = (st.secrets.as_mut(), s.namespace()) {
                    m.insert(ns, Mark::of(s.annotations()));
                }
            }
            watcher::Event::Delete(s) => {
                if let (Some(m), Some(ns)) = (st.secrets.as_mut(), s.namespace()) {
                    m.remove(&ns);
                }
            }
            watcher::Event::Init => pending.clear(),
            watcher::Event::InitApply(s) => {
                if let Some(ns) = s.namespace() {
                    pending.insert(ns, Mark::of(s.annotations()));
                }
            }
            watcher::Event::InitDone => st.secrets = Some(std::mem::take(pending)),
        }
        self.set_ready(&st);
    }
}

/// Keeps `ctx.tenants` current until shutdown, on every replica (the
/// ingestion API of each one checks tokens). A watch that fails keeps the
/// last complete view until it lists again. `reconciler`: whether this
/// process runs the token reconciler at all (a missing Secret means
/// revoked only when it mints, by flag and by the resource).
pub async fn run(
    ctx: Arc<crate::controller::Context>,
    reconciler: bool,
    shutdown: watch::Receiver<bool>,
) {
    use crate::controller::follow;
    let tenants = ctx.tenants.clone();
    let minting = {
        let tenants = tenants.clone();
        let mut ops = ctx.ops.subscribe();
        async move {
            loop {
                let on = reconciler && ops.borrow_and_update().tokens_enabled;
                tenants.minting.store(on, Ordering::Relaxed);
                if ops.changed().await.is_err() {
                    break;
                }
            }
        }
    };
    let (ns_api, secret_api): (
        Api<PartialObjectMeta<Namespace>>,
        Api<PartialObjectMeta<Secret>>,
    ) = match &ctx.watch_namespace {
        Some(ns) => (
            Api::all(ctx.client.clone()),
            Api::namespaced(ctx.client.clone(), ns),
        ),
        None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
    };
    let mut ns_config = watcher::Config::default().labels(LABEL_ENVIRONMENT_ID);
    if let Some(ns) = &ctx.watch_namespace {
        ns_config = ns_config.fields(&format!("metadata.name={ns}"));
    }
    let secret_config =
        watcher::Config::default().fields(&format!("metadata.name={TOKEN_SECRET_NAME}"));
    let fallback = "tokens are checked against the last complete list";
    let mut ns_pending = HashMap::new();
    let mut secret_pending = HashMap::new();
    let namespaces = follow(
        &ctx,
        ns_api,
        ns_config,
        "tenant-namespaces",
        fallback,
        shutdown.clone(),
        |ev| tenants.apply_namespace(ev, &mut ns_pending),
        || {},
    );
    let secrets = follow(
        &ctx,
        secret_api,
        secret_config,
        "tenant-token-secrets",
        fallback,
        shutdown,
        |ev| tenants.apply_secret(ev, &mut secret_pending),
        || {},
    );
    tokio::select! {
        _ = futures::future::join(namespaces, secrets) => {}
        _ = minting => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(ns: &str, id: &str) -> Claims {
        Claims {
            namespace: ns.into(),
            environment_id: id.into(),
            project_name: "p".into(),
            environment_name: "e".into(),
        }
    }

    fn env(id: &str, created: i64) -> Env {
        Env {
            environment_id: id.into(),
            project: "p".into(),
            environment: "e".into(),
            created,
            terminating: false,
        }
    }

    #[test]
    fn decisions() {
        let good = env("7", 10);
        let c = claims("a", "7");
        let from = |s: f64| Some(Mark::From(s));
        type Row<'a> = (
            &'a str,
            Option<Env>,
            Option<&'a str>,
            Option<Mark>,
            bool,
            Option<f64>,
            Result<(), Refusal>,
        );
        #[rustfmt::skip]
        let table: Vec<Row> = vec![
            ("all good, never revoked", Some(good.clone()), Some("a"), Some(Mark::None), true, Some(5.0), Ok(())),
            ("Go token, never revoked", Some(good.clone()), Some("a"), Some(Mark::None), true, None, Ok(())),
            ("namespace gone", None, None, Some(Mark::None), true, Some(5.0), Err(Refusal::Gone)),
            ("terminating", Some(Env { terminating: true, ..good.clone() }), Some("a"), Some(Mark::None), true, Some(5.0), Err(Refusal::Terminating)),
            ("other id now", Some(env("8", 10)), Some("a"), Some(Mark::None), true, Some(5.0), Err(Refusal::Mismatch)),
            ("project renamed", Some(Env { project: "q".into(), ..good.clone() }), Some("a"), Some(Mark::None), true, Some(5.0), Err(Refusal::Mismatch)),
            ("id held by an older namespace", Some(good.clone()), Some("b"), Some(Mark::None), true, Some(5.0), Err(Refusal::Duplicate)),
            ("issued after the mark", Some(good.clone()), Some("a"), from(100.0), true, Some(100.0005), Ok(())),
            ("issued at the mark", Some(good.clone()), Some("a"), from(100.0), true, Some(100.0), Ok(())),
            ("issued before the mark", Some(good.clone()), Some("a"), from(100.0), true, Some(99.999), Err(Refusal::Revoked)),
            ("Go token after a revocation", Some(good.clone()), Some("a"), from(100.0), true, None, Err(Refusal::Revoked)),
            ("revocation asked for", Some(good.clone()), Some("a"), Some(Mark::All), true, Some(1e12), Err(Refusal::Revoked)),
            ("Secret deleted while minting", Some(good.clone()), Some("a"), None, true, Some(5.0), Err(Refusal::Revoked)),
            ("no Secret, tokens minted elsewhere", Some(good.clone()), Some("a"), None, false, Some(5.0), Ok(())),
        ];
        for (name, env, owner, mark, minting, iat, want) in table {
            assert_eq!(
                judge(env.as_ref(), owner, mark, minting, &c, iat),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn marks_from_annotations() {
        let a = |pairs: &[(&str, &str)]| {
            Mark::of(
                &pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        assert_eq!(a(&[]), Mark::None);
        assert_eq!(
            a(&[(ANNOTATION_VALID_FROM, "2026-12-06T19:00:00.250Z")]),
            Mark::From(1_796_583_600.25)
        );
        assert_eq!(a(&[(ANNOTATION_VALID_FROM, "yesterday")]), Mark::All);
        assert_eq!(
            a(&[
                (ANNOTATION_VALID_FROM, "2026-12-06T19:00:00Z"),
                (ANNOTATION_REVOKE, "")
            ]),
            Mark::All
        );
        let (text, secs) = valid_from_now();
        assert_eq!(a(&[(ANNOTATION_VALID_FROM, &text)]), Mark::From(secs));
    }

    #[test]
    fn the_oldest_namespace_owns_an_id() {
        let t = Tenants::default();
        let mut pending = HashMap::new();
        let ns = |name: &str, id: &str, created: i64| {
            let mut m = PartialObjectMeta::<Namespace>::default();
            m.metadata.name = Some(name.into());
            m.metadata.labels = Some(
                [
                    (LABEL_ENVIRONMENT_ID, id),
                    (LABEL_PROJECT, "p"),
                    (LABEL_ENVIRONMENT, "e"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            );
            m.metadata.creation_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    Timestamp::from_second(created).unwrap(),
                ));
            m
        };
        assert_eq!(t.owner_of("7"), None, "not listed yet");
        assert_eq!(t.admit(&claims("a", "7"), None), Err(Refusal::NotReady));
        t.apply_namespace(watcher::Event::Init, &mut pending);
        t.apply_namespace(watcher::Event::InitApply(ns("b", "7", 20)), &mut pending);
        t.apply_namespace(watcher::Event::InitApply(ns("a", "7", 10)), &mut pending);
        t.apply_namespace(watcher::Event::InitDone, &mut pending);
        assert_eq!(t.owner_of("7"), Some(Some("a".into())));
        assert_eq!(t.owner_of("8"), Some(None));
        assert!(!t.ready(), "Secrets not listed yet");
        let mut sp = HashMap::new();
        t.apply_secret(watcher::Event::Init, &mut sp);
        t.apply_secret(watcher::Event::InitDone, &mut sp);
        assert!(t.ready());
        assert_eq!(t.admit(&claims("a", "7"), None), Ok(()));
        assert_eq!(t.admit(&claims("b", "7"), None), Err(Refusal::Duplicate));
        t.apply_namespace(watcher::Event::Delete(ns("a", "7", 10)), &mut pending);
        assert_eq!(t.owner_of("7"), Some(Some("b".into())));
        assert_eq!(t.admit(&claims("a", "7"), None), Err(Refusal::Gone));
        assert_eq!(t.admit(&claims("b", "7"), None), Ok(()));
        // Relabelled to another id: the index follows, one entry per event.
        t.apply_namespace(watcher::Event::Apply(ns("b", "8", 20)), &mut pending);
        assert_eq!(t.owner_of("7"), Some(None));
        assert_eq!(t.owner_of("8"), Some(Some("b".into())));
        t.apply_namespace(watcher::Event::Apply(ns("c", "8", 5)), &mut pending);
        assert_eq!(t.owner_of("8"), Some(Some("c".into())), "older");
        t.apply_namespace(watcher::Event::Apply(ns("c", "8", 5)), &mut pending);
        assert_eq!(
            t.state.read().unwrap().by_id["8"].len(),
            2,
            "no duplicate entry"
        );
    }
}
