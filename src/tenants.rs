//! Which environments may post right now: every replica reads the Lagoon
//! environment namespaces (their id, project and environment labels) and
//! the revocation marks of their `insights-token` Secrets from the
//! cluster's stores ([`crate::cluster`]), and keeps an index of which
//! namespaces carry each environment id, so a token is checked against the
//! cluster as it is, without an API call per request.
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

use k8s_openapi::jiff::Timestamp;
use kube::runtime::watcher;
use kube::ResourceExt;

use crate::cluster::{Cluster, NamespaceMeta};
use crate::contract::{LABEL_ENVIRONMENT, LABEL_ENVIRONMENT_ID, LABEL_PROJECT};
use crate::token::Claims;

pub use crate::contract::{ANNOTATION_REVOKE, ANNOTATION_VALID_FROM};

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
    pub fn of(ns: &NamespaceMeta) -> Option<Env> {
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
        Self::from_marks(
            annotations.contains_key(ANNOTATION_REVOKE),
            annotations.get(ANNOTATION_VALID_FROM).map(String::as_str),
        )
    }

    /// From whether [`ANNOTATION_REVOKE`] is there and the value of
    /// [`ANNOTATION_VALID_FROM`].
    pub fn from_marks(revoke: bool, valid_from: Option<&str>) -> Mark {
        if revoke {
            return Mark::All;
        }
        match valid_from {
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

/// Which namespaces carry each environment id: derived from the namespace
/// store's events (the store holds the namespaces themselves).
#[derive(Default)]
struct Index {
    /// Namespace -> the environment id it carries.
    ids: HashMap<String, String>,
    /// Environment id -> namespaces carrying it.
    by_id: HashMap<String, Vec<String>>,
    /// The list being received (`Init` .. `InitDone`).
    pending: Option<HashMap<String, String>>,
}

impl Index {
    /// Records `name`'s id (None: gone or no id), one entry per event.
    fn set(&mut self, name: &str, id: Option<String>) {
        let old = match &id {
            Some(id) => self.ids.insert(name.to_string(), id.clone()),
            None => self.ids.remove(name),
        };
        if old == id {
            return;
        }
        if let Some(old) = old {
            if let Some(names) = self.by_id.get_mut(&old) {
                names.retain(|n| n != name);
                if names.is_empty() {
                    self.by_id.remove(&old);
                }
            }
        }
        if let Some(id) = id {
            self.by_id.entry(id).or_default().push(name.to_string());
        }
    }

    fn apply(&mut self, ev: &watcher::Event<NamespaceMeta>) {
        let id = |ns: &NamespaceMeta| Env::of(ns).map(|e| e.environment_id);
        match ev {
            watcher::Event::Apply(ns) => self.set(&ns.name_any(), id(ns)),
            watcher::Event::Delete(ns) => self.set(&ns.name_any(), None),
            watcher::Event::Init => self.pending = Some(HashMap::new()),
            watcher::Event::InitApply(ns) => {
                if let (Some(p), Some(id)) = (self.pending.as_mut(), id(ns)) {
                    p.insert(ns.name_any(), id);
                }
            }
            watcher::Event::InitDone => {
                self.ids = self.pending.take().unwrap_or_default();
                self.by_id.clear();
                for (name, id) in &self.ids {
                    self.by_id.entry(id.clone()).or_default().push(name.clone());
                }
            }
        }
    }
}

/// The registry; shared by the ingestion API and the namespace reconciler.
pub struct Tenants {
    cluster: Arc<Cluster>,
    index: RwLock<Index>,
    /// Whether this process mints tokens (then a missing Secret means its
    /// tokens were revoked).
    minting: AtomicBool,
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
    pub fn new(cluster: Arc<Cluster>) -> Arc<Self> {
        Arc::new(Self {
            cluster,
            index: Default::default(),
            minting: AtomicBool::new(false),
        })
    }

    /// Whether both lists arrived once.
    pub fn ready(&self) -> bool {
        self.cluster.ready()
    }

    /// Whether a missing Secret means revoked (this process mints tokens).
    pub fn set_minting(&self, on: bool) {
        self.minting.store(on, Ordering::Relaxed);
    }

    /// Follows a namespace event (the store already holds it).
    pub fn observe(&self, ev: &watcher::Event<NamespaceMeta>) {
        self.index.write().expect("tenants lock").apply(ev);
    }

    fn env(&self, namespace: &str) -> Option<Env> {
        Env::of(&*self.cluster.namespace(namespace)?)
    }

    /// Checks a token whose signature is good.
    pub fn admit(&self, claims: &Claims, iat: Option<f64>) -> Result<(), Refusal> {
        if !self.ready() {
            return Err(Refusal::NotReady);
        }
        let mark = self
            .cluster
            .token_secret(&claims.namespace)
            .map(|s| Mark::from_marks(s.revoke, s.valid_from.as_deref()));
        judge(
            self.env(&claims.namespace).as_ref(),
            self.owner(&claims.environment_id).as_deref(),
            mark,
            self.minting.load(Ordering::Relaxed),
            claims,
            iat,
        )
    }

    /// The oldest namespace carrying an environment id (by creation, then
    /// name).
    fn owner(&self, id: &str) -> Option<String> {
        let index = self.index.read().expect("tenants lock");
        index
            .by_id
            .get(id)?
            .iter()
            .filter_map(|n| self.env(n).map(|e| (e.created, n)))
            .min()
            .map(|(_, n)| n.clone())
    }

    /// The namespace that holds an environment id: None before the first
    /// list, `Some(None)` when no namespace carries it.
    pub fn owner_of(&self, id: &str) -> Option<Option<String>> {
        if !self.cluster.ready() {
            return None;
        }
        Some(self.owner(id))
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
        let cluster = Arc::new(Cluster::default());
        let t = Tenants::new(cluster.clone());
        let feed = |ev: watcher::Event<NamespaceMeta>| {
            cluster.feed_namespace(&ev);
            t.observe(&ev);
        };
        let ns = |name: &str, id: &str, created: i64| {
            let mut m = NamespaceMeta::default();
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
        feed(watcher::Event::Init);
        feed(watcher::Event::InitApply(ns("b", "7", 20)));
        feed(watcher::Event::InitApply(ns("a", "7", 10)));
        feed(watcher::Event::InitDone);
        assert!(!t.ready(), "Secrets not listed yet");
        assert_eq!(t.owner_of("7"), None, "not ready");
        cluster.feed_token_secret(&watcher::Event::Init);
        cluster.feed_token_secret(&watcher::Event::InitDone);
        assert!(t.ready());
        assert_eq!(t.owner_of("7"), Some(Some("a".into())));
        assert_eq!(t.owner_of("8"), Some(None));
        assert_eq!(t.admit(&claims("a", "7"), None), Ok(()));
        assert_eq!(t.admit(&claims("b", "7"), None), Err(Refusal::Duplicate));
        feed(watcher::Event::Delete(ns("a", "7", 10)));
        assert_eq!(t.owner_of("7"), Some(Some("b".into())));
        assert_eq!(t.admit(&claims("a", "7"), None), Err(Refusal::Gone));
        assert_eq!(t.admit(&claims("b", "7"), None), Ok(()));
        // Relabelled to another id: the index follows, one entry per event.
        feed(watcher::Event::Apply(ns("b", "8", 20)));
        assert_eq!(t.owner_of("7"), Some(None));
        assert_eq!(t.owner_of("8"), Some(Some("b".into())));
        feed(watcher::Event::Apply(ns("c", "8", 5)));
        assert_eq!(t.owner_of("8"), Some(Some("c".into())), "older");
        feed(watcher::Event::Apply(ns("c", "8", 5)));
        assert_eq!(
            t.index.read().unwrap().by_id["8"].len(),
            2,
            "no duplicate entry"
        );
    }
}
