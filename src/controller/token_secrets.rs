//! What the token reconciler knows about the `insights-token` Secrets
//! without asking the API server: their resourceVersions, from a watch
//! narrowed to that one name and to metadata (RBAC allows list and watch
//! only with that name), and which of them this process verified or wrote.
//!
//! A namespace whose Secret is unchanged since this process verified it for
//! the same claims and key costs no API call; a namespace without one is
//! minted without a GET; a Secret edited or deleted by hand is put right at
//! once (the watch triggers its namespace). Without the watch (denied, or
//! not listed yet) every check falls back to a GET.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::cluster::NamespaceMeta;
use futures::{Stream, StreamExt};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use tokio::sync::mpsc;

use crate::cluster::{Cluster, TokenSecret};
use crate::token::Claims;

/// A token Secret this process verified or wrote: its resourceVersion and
/// a digest of the key fingerprint and claims it was verified for (one
/// entry per Lagoon namespace: 16 bytes instead of five strings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub resource_version: Box<str>,
    digest: [u8; 16],
}

impl Verified {
    /// `key` is the fingerprint of the key that signed it.
    pub fn new(resource_version: &str, key: &str, claims: &Claims) -> Self {
        Verified {
            resource_version: resource_version.into(),
            digest: digest(key, claims),
        }
    }
}

/// SHA-256 (first 128 bits) of the key fingerprint and the claims, each
/// length-prefixed so no two different inputs share a byte string.
fn digest(key: &str, claims: &Claims) -> [u8; 16] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [
        key,
        &claims.namespace,
        &claims.environment_id,
        &claims.project_name,
        &claims.environment_name,
    ] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part.as_bytes());
    }
    let mut out = [0; 16];
    out.copy_from_slice(&ctx.finish().as_ref()[..16]);
    out
}

/// What the cache says about one namespace's token Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Known {
    /// Unchanged since verified for these claims and this key.
    Good,
    /// There is none: mint without looking.
    Absent,
    /// Look (GET) and check.
    Unknown,
    /// Unchanged since this process verified or wrote it, but for another
    /// key or other claims (a rotation, a renamed environment): its
    /// content is known, so a new token is written without looking; the
    /// revocation marks as listed.
    Stale {
        revoke: bool,
        valid_from: Option<String>,
    },
}

/// The decision, from the Secret as listed (`None` before the first list,
/// `Some(None)` when listed and absent) and what was verified.
pub fn judge(
    listed: Option<Option<&TokenSecret>>,
    verified: Option<&Verified>,
    key: &str,
    claims: &Claims,
) -> Known {
    match listed {
        None => Known::Unknown,
        // Listed as absent, but this process wrote or verified one: the
        // watch has not brought our write yet, so look rather than mint
        // again.
        Some(None) if verified.is_some() => Known::Unknown,
        Some(None) => Known::Absent,
        Some(Some(s)) => match verified {
            // A revocation asked for: look (the write must see it).
            Some(_) if s.revoke => Known::Unknown,
            Some(v) if *v.resource_version == *s.resource_version => {
                if v.digest == digest(key, claims) {
                    Known::Good
                } else {
                    Known::Stale {
                        revoke: s.revoke,
                        valid_from: s.valid_from.clone(),
                    }
                }
            }
            _ => Known::Unknown,
        },
    }
}

/// Re-checks waiting for the token reconciler, at most this many distinct
/// namespaces (one namespace holds at most one place, however often its
/// Secret changes; when full, the periodic pass covers the rest).
pub const RECHECKS_WAITING: usize = 1024;

/// What this process verified or wrote, beside the cluster's store of the
/// Secrets ([`Cluster::token_secrets`]); and where to send the namespaces
/// whose Secret changed behind its back (the token reconciler of the
/// current leadership term, if any).
#[derive(Default)]
pub struct TokenSecrets {
    verified: Mutex<HashMap<String, Verified>>,
    recheck: Mutex<Option<mpsc::Sender<ObjectRef<NamespaceMeta>>>>,
    /// The namespaces sent and not yet taken: a tenant that rewrites its
    /// own Secret as fast as it can holds one place in the queue, not all
    /// of them, so another namespace's hand-edited Secret is still put
    /// right at once.
    waiting: Arc<Mutex<HashSet<String>>>,
}

impl TokenSecrets {
    pub fn known(&self, cluster: &Cluster, namespace: &str, key: &str, claims: &Claims) -> Known {
        let listed = cluster
            .token_secrets_current()
            .then(|| cluster.token_secret(namespace));
        let verified = self.verified.lock().expect("token cache lock");
        judge(
            listed.as_ref().map(|l| l.as_deref()),
            verified.get(namespace),
            key,
            claims,
        )
    }

    /// Records a Secret as verified (or just written) for these claims.
    pub fn verified(&self, namespace: &str, v: Verified) {
        self.verified
            .lock()
            .expect("token cache lock")
            .insert(namespace.to_string(), v);
    }

    /// A leadership term starts: what an earlier term verified is not
    /// trusted, and the namespaces to re-check come out of the stream
    /// returned (until [`TokenSecrets::term_ends`]).
    pub fn term_starts(&self) -> impl Stream<Item = ObjectRef<NamespaceMeta>> + Send + 'static {
        let (tx, rx) = mpsc::channel(RECHECKS_WAITING);
        self.verified.lock().expect("token cache lock").clear();
        self.waiting.lock().expect("token cache lock").clear();
        *self.recheck.lock().expect("token cache lock") = Some(tx);
        let waiting = self.waiting.clone();
        tokio_stream::wrappers::ReceiverStream::new(rx).map(move |r: ObjectRef<NamespaceMeta>| {
            waiting.lock().expect("token cache lock").remove(&r.name);
            r
        })
    }

    /// The term ends: nothing it verified is trusted, nothing is sent.
    pub fn term_ends(&self) {
        self.verified.lock().expect("token cache lock").clear();
        *self.recheck.lock().expect("token cache lock") = None;
        self.waiting.lock().expect("token cache lock").clear();
    }

    /// Sends a namespace to the current term's token reconciler, if any,
    /// unless it is already waiting there (when the queue is full, the
    /// periodic re-check covers it).
    pub fn recheck(&self, namespace: &str) {
        let recheck = self.recheck.lock().expect("token cache lock");
        let Some(tx) = recheck.as_ref() else { return };
        let mut waiting = self.waiting.lock().expect("token cache lock");
        if waiting.insert(namespace.to_string()) && tx.try_send(ObjectRef::new(namespace)).is_err()
        {
            waiting.remove(namespace);
        }
    }

    /// Follows an event already in the store: the namespaces whose Secret
    /// changed or went away behind this process's back (also while the
    /// watch was down, found when a new full list arrives) are sent to the
    /// token reconciler, and returned.
    pub fn observe(&self, cluster: &Cluster, ev: &watcher::Event<TokenSecret>) -> Vec<String> {
        let changed = {
            let mut verified = self.verified.lock().expect("token cache lock");
            changed(cluster, &mut verified, ev)
        };
        for ns in &changed {
            self.recheck(ns);
        }
        changed
    }
}

/// Which namespaces an event shows changed behind our back (and forgets
/// what was verified of the Secrets that are gone).
fn changed(
    cluster: &Cluster,
    verified: &mut HashMap<String, Verified>,
    ev: &watcher::Event<TokenSecret>,
) -> Vec<String> {
    match ev {
        watcher::Event::Apply(s) => {
            let ours = verified
                .get(&s.namespace)
                .is_some_and(|v| *v.resource_version == *s.resource_version);
            if ours {
                vec![]
            } else {
                vec![s.namespace.clone()]
            }
        }
        watcher::Event::Delete(s) => {
            verified.remove(&s.namespace);
            vec![s.namespace.clone()]
        }
        watcher::Event::Init | watcher::Event::InitApply(_) => vec![],
        watcher::Event::InitDone => {
            let now = |ns: &str| cluster.token_secret(ns).map(|s| s.resource_version.clone());
            let changed: Vec<String> = verified
                .iter()
                .filter(|(ns, v)| now(ns).as_deref() != Some(&*v.resource_version))
                .map(|(ns, _)| ns.clone())
                .collect();
            for ns in &changed {
                if now(ns).is_none() {
                    verified.remove(ns);
                }
            }
            changed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(env: &str) -> Claims {
        Claims {
            namespace: "demo-main".into(),
            environment_id: "42".into(),
            project_name: "demo".into(),
            environment_name: env.into(),
        }
    }

    fn verified(rv: &str, key: &str, env: &str) -> Verified {
        Verified::new(rv, key, &claims(env))
    }

    type Case<'a> = (
        Option<Option<&'a TokenSecret>>,
        Option<&'a Verified>,
        &'a str,
        &'a Claims,
        Known,
    );

    #[test]
    fn judge_table() {
        let v = verified("7", "k1", "main");
        let c = claims("main");
        let dev = claims("dev");
        let other_id = Claims {
            environment_id: "43".into(),
            ..claims("main")
        };
        let other_project = Claims {
            project_name: "demo2".into(),
            ..claims("main")
        };
        let at7 = secret("demo-main", "7");
        let at8 = secret("demo-main", "8");
        let marked = TokenSecret {
            valid_from: Some("2026-12-01T00:00:00Z".into()),
            ..secret("demo-main", "7")
        };
        let revoked = TokenSecret {
            revoke: true,
            ..secret("demo-main", "7")
        };
        // Ours, unchanged, but for another key or claims: rewrite without
        // looking, keeping the listed marks.
        let stale = |t: &TokenSecret| Known::Stale {
            revoke: t.revoke,
            valid_from: t.valid_from.clone(),
        };
        // (listed, verified, key, claims) -> decision
        let cases: Vec<Case> = vec![
            (None, Some(&v), "k1", &c, Known::Unknown),
            // Our write not yet seen by the watch: look, do not mint again.
            (Some(None), Some(&v), "k1", &c, Known::Unknown),
            (Some(None), None, "k1", &c, Known::Absent),
            (Some(Some(&at7)), Some(&v), "k1", &c, Known::Good),
            // Changed since: look.
            (Some(Some(&at8)), Some(&v), "k1", &c, Known::Unknown),
            (Some(Some(&at8)), Some(&v), "k2", &c, Known::Unknown),
            (Some(Some(&at7)), Some(&v), "k2", &c, stale(&at7)),
            (Some(Some(&marked)), Some(&v), "k2", &c, stale(&marked)),
            // A revocation asked for, whatever was verified: look.
            (Some(Some(&revoked)), Some(&v), "k1", &c, Known::Unknown),
            (Some(Some(&revoked)), Some(&v), "k2", &c, Known::Unknown),
            (Some(Some(&at7)), Some(&v), "k1", &dev, stale(&at7)),
            (Some(Some(&at7)), Some(&v), "k1", &other_id, stale(&at7)),
            (
                Some(Some(&at7)),
                Some(&v),
                "k1",
                &other_project,
                stale(&at7),
            ),
            // Never verified by this process: look.
            (Some(Some(&at7)), None, "k1", &c, Known::Unknown),
            (Some(Some(&at7)), None, "k2", &c, Known::Unknown),
            // Not listed yet: look, whatever was verified.
            (None, Some(&v), "k2", &c, Known::Unknown),
        ];
        for (listed, ver, key, cl, want) in cases {
            assert_eq!(
                judge(listed, ver, key, cl),
                want,
                "{listed:?} {ver:?} {key}"
            );
        }
    }

    fn secret(ns: &str, rv: &str) -> TokenSecret {
        TokenSecret {
            namespace: ns.into(),
            resource_version: rv.into(),
            ..Default::default()
        }
    }

    /// Feeds an event as the watch does: into the store, then observed.
    fn feed(cluster: &Cluster, c: &TokenSecrets, ev: watcher::Event<TokenSecret>) -> Vec<String> {
        cluster.feed_token_secret(&ev);
        c.observe(cluster, &ev)
    }

    #[test]
    fn events_keep_versions_and_name_what_changed_behind_our_back() {
        let cluster = Cluster::default();
        let c = TokenSecrets::default();
        let main = claims("main");
        let none: Vec<String> = vec![];
        let known = |ns: &str| c.known(&cluster, ns, "k", &main);
        assert_eq!(known("a"), Known::Unknown, "not listed yet");
        assert_eq!(feed(&cluster, &c, watcher::Event::Init), none);
        feed(&cluster, &c, watcher::Event::InitApply(secret("a", "5")));
        assert_eq!(feed(&cluster, &c, watcher::Event::InitDone), none);
        assert_eq!(known("a"), Known::Unknown, "listed, not verified");
        assert_eq!(known("b"), Known::Absent);
        c.verified("a", verified("5", "k", "main"));
        assert_eq!(known("a"), Known::Good);
        // Our own write arriving: nothing to re-check.
        c.verified("b", verified("9", "k", "main"));
        assert_eq!(known("b"), Known::Unknown, "write not seen yet");
        assert_eq!(
            feed(&cluster, &c, watcher::Event::Apply(secret("b", "9"))),
            none
        );
        assert_eq!(known("b"), Known::Good);
        // Edited by hand: re-check, and no longer good.
        assert_eq!(
            feed(&cluster, &c, watcher::Event::Apply(secret("a", "6"))),
            ["a"]
        );
        assert_eq!(known("a"), Known::Unknown);
        // Deleted: re-check, and absent.
        assert_eq!(
            feed(&cluster, &c, watcher::Event::Delete(secret("b", "10"))),
            ["b"]
        );
        assert_eq!(known("b"), Known::Absent);
        // A new term trusts nothing the last one verified.
        c.term_ends();
        assert_eq!(known("a"), Known::Unknown);
    }

    /// One tenant rewriting its own Secret faster than anything is taken
    /// holds one place among the waiting re-checks: another namespace's
    /// hand edit still gets through (without the per-namespace check, the
    /// tenant's 5,000 edits filled all 1,024 places and it was dropped).
    #[test]
    fn a_tenant_rewriting_its_secret_holds_one_place_in_the_queue() {
        use futures::FutureExt;
        let cluster = Cluster::default();
        let c = TokenSecrets::default();
        let mut rechecks = Box::pin(c.term_starts());
        feed(&cluster, &c, watcher::Event::Init);
        feed(&cluster, &c, watcher::Event::InitDone);
        for rv in 0..5 * RECHECKS_WAITING {
            let rv = rv.to_string();
            assert_eq!(
                feed(&cluster, &c, watcher::Event::Apply(secret("noisy", &rv))),
                ["noisy"]
            );
        }
        assert_eq!(
            feed(&cluster, &c, watcher::Event::Apply(secret("quiet", "1"))),
            ["quiet"]
        );
        let mut next = || rechecks.next().now_or_never().flatten().map(|r| r.name);
        assert_eq!(next().as_deref(), Some("noisy"));
        assert_eq!(next().as_deref(), Some("quiet"));
        assert_eq!(next(), None, "nothing else waits");
        // Once taken, the next edit is sent again.
        feed(&cluster, &c, watcher::Event::Apply(secret("noisy", "x")));
        assert_eq!(next().as_deref(), Some("noisy"));
        // After the term, nothing is sent.
        c.term_ends();
        feed(&cluster, &c, watcher::Event::Apply(secret("quiet", "2")));
        assert_eq!(next(), None);
    }

    /// A failing watch vouches for nothing until its next event, and a new
    /// full list names what changed while the watch was down.
    #[test]
    fn a_broken_watch_vouches_for_nothing_and_the_relist_names_the_changes() {
        let cluster = Cluster::default();
        let c = TokenSecrets::default();
        let main = claims("main");
        let known = |ns: &str| c.known(&cluster, ns, "k", &main);
        feed(&cluster, &c, watcher::Event::Init);
        for (ns, rv) in [("kept", "1"), ("edited", "2"), ("deleted", "3")] {
            feed(&cluster, &c, watcher::Event::InitApply(secret(ns, rv)));
            c.verified(ns, verified(rv, "k", "main"));
        }
        feed(&cluster, &c, watcher::Event::InitDone);
        assert_eq!(known("kept"), Known::Good);
        // The watch fails: every check looks.
        cluster.feed_token_secret_error();
        for ns in ["kept", "edited", "deleted"] {
            assert_eq!(known(ns), Known::Unknown, "{ns}");
        }
        // The new list: the changes are named once it is complete.
        feed(&cluster, &c, watcher::Event::Init);
        feed(&cluster, &c, watcher::Event::InitApply(secret("kept", "1")));
        assert_eq!(known("kept"), Known::Unknown, "listing");
        feed(
            &cluster,
            &c,
            watcher::Event::InitApply(secret("edited", "7")),
        );
        let mut changed = feed(&cluster, &c, watcher::Event::InitDone);
        changed.sort();
        assert_eq!(changed, ["deleted", "edited"]);
        assert_eq!(known("kept"), Known::Good);
        assert_eq!(known("edited"), Known::Unknown);
        assert_eq!(known("deleted"), Known::Absent, "mint again");
    }
}
