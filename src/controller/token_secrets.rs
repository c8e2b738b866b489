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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::{mpsc, watch};

use super::{follow, Context};
use crate::contract::TOKEN_SECRET_NAME;
use crate::token::Claims;

/// A token Secret this process verified or wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub resource_version: String,
    /// Fingerprint of the key that signed it.
    pub key: String,
    pub claims: Claims,
}

/// What the cache says about one namespace's token Secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known {
    /// Unchanged since verified for these claims and this key.
    Good,
    /// There is none: mint without looking.
    Absent,
    /// Look (GET) and check.
    Unknown,
}

/// The decision, from the listed resourceVersion (`None` before the first
/// list, `Some(None)` when listed and absent) and what was verified.
pub fn judge(
    listed: Option<Option<&str>>,
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
        Some(Some(rv)) => match verified {
            Some(v) if v.resource_version == rv && v.key == key && v.claims == *claims => {
                Known::Good
            }
            _ => Known::Unknown,
        },
    }
}

#[derive(Default)]
pub struct TokenSecrets {
    /// namespace -> resourceVersion; None until the first list.
    listed: RwLock<Option<HashMap<String, String>>>,
    verified: Mutex<HashMap<String, Verified>>,
}

impl TokenSecrets {
    pub fn known(&self, namespace: &str, key: &str, claims: &Claims) -> Known {
        let listed = self.listed.read().expect("token cache lock");
        let listed = listed
            .as_ref()
            .map(|m| m.get(namespace).map(String::as_str));
        let verified = self.verified.lock().expect("token cache lock");
        judge(listed, verified.get(namespace), key, claims)
    }

    /// Records a Secret as verified (or just written) for these claims.
    pub fn verified(&self, namespace: &str, v: Verified) {
        self.verified
            .lock()
            .expect("token cache lock")
            .insert(namespace.to_string(), v);
    }

    /// Forget everything (a new leadership term lists again).
    pub fn reset(&self) {
        *self.listed.write().expect("token cache lock") = None;
        self.verified.lock().expect("token cache lock").clear();
    }

    /// Stops vouching for anything until the next full list (the watch
    /// failed: events may have been missed). Every check looks meanwhile.
    pub fn invalidate(&self) {
        *self.listed.write().expect("token cache lock") = None;
    }

    /// Applies a watch event; returns the namespaces to re-check: a Secret
    /// changed or deleted behind this process's back, also while the watch
    /// was down (found when the new full list arrives).
    fn apply(
        &self,
        ev: watcher::Event<PartialObjectMeta<Secret>>,
        pending: &mut HashMap<String, String>,
    ) -> Vec<String> {
        let mut listed = self.listed.write().expect("token cache lock");
        let mut verified = self.verified.lock().expect("token cache lock");
        let rv = |s: &PartialObjectMeta<Secret>| s.resource_version().unwrap_or_default();
        match ev {
            watcher::Event::Apply(s) => {
                let Some(ns) = s.namespace() else {
                    return vec![];
                };
                let rv = rv(&s);
                let ours = verified.get(&ns).is_some_and(|v| v.resource_version == rv);
                if let Some(m) = listed.as_mut() {
                    m.insert(ns.clone(), rv);
                }
                if ours {
                    vec![]
                } else {
                    vec![ns]
                }
            }
            watcher::Event::Delete(s) => {
                let Some(ns) = s.namespace() else {
                    return vec![];
                };
                if let Some(m) = listed.as_mut() {
                    m.remove(&ns);
                }
                verified.remove(&ns);
                vec![ns]
            }
            watcher::Event::Init => {
                // Stale until the list is complete.
                *listed = None;
                pending.clear();
                vec![]
            }
            watcher::Event::InitApply(s) => {
                if let Some(ns) = s.namespace() {
                    pending.insert(ns, rv(&s));
                }
                vec![]
            }
            watcher::Event::InitDone => {
                let now = std::mem::take(pending);
                let changed: Vec<String> = verified
                    .iter()
                    .filter(|(ns, v)| now.get(*ns) != Some(&v.resource_version))
                    .map(|(ns, _)| ns.clone())
                    .collect();
                for ns in &changed {
                    if !now.contains_key(ns) {
                        verified.remove(ns);
                    }
                }
                *listed = Some(now);
                changed
            }
        }
    }
}

/// Keeps `ctx.token_secrets` current until shutdown, sending the namespaces
/// whose Secret changed behind this process's back to `recheck`. The caller
/// resets the cache before starting it (a new term must not trust the last
/// one's view).
pub async fn run(
    ctx: Arc<Context>,
    recheck: mpsc::Sender<ObjectRef<Namespace>>,
    shutdown: watch::Receiver<bool>,
) {
    let api: Api<PartialObjectMeta<Secret>> = match &ctx.watch_namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let wc = watcher::Config::default().fields(&format!("metadata.name={TOKEN_SECRET_NAME}"));
    let mut pending = HashMap::new();
    let fallback = "falling back to a GET per check";
    follow(
        &ctx,
        api,
        wc,
        "token-secrets",
        fallback,
        shutdown,
        |ev| {
            for ns in ctx.token_secrets.apply(ev, &mut pending) {
                // Full: the periodic re-check covers it.
                let _ = recheck.try_send(ObjectRef::new(&ns));
            }
        },
        || ctx.token_secrets.invalidate(),
    )
    .await;
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
        Verified {
            resource_version: rv.into(),
            key: key.into(),
            claims: claims(env),
        }
    }

    type Case<'a> = (
        Option<Option<&'a str>>,
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
        // (listed, verified, key, claims) -> decision
        let cases: Vec<Case> = vec![
            (None, Some(&v), "k1", &c, Known::Unknown),
            // Our write not yet seen by the watch: look, do not mint again.
            (Some(None), Some(&v), "k1", &c, Known::Unknown),
            (Some(None), None, "k1", &c, Known::Absent),
            (Some(Some("7")), Some(&v), "k1", &c, Known::Good),
            (Some(Some("8")), Some(&v), "k1", &c, Known::Unknown),
            (Some(Some("7")), Some(&v), "k2", &c, Known::Unknown),
            (Some(Some("7")), Some(&v), "k1", &dev, Known::Unknown),
            (Some(Some("7")), None, "k1", &c, Known::Unknown),
        ];
        for (listed, ver, key, cl, want) in cases {
            assert_eq!(
                judge(listed, ver, key, cl),
                want,
                "{listed:?} {ver:?} {key}"
            );
        }
    }

    fn secret(ns: &str, rv: &str) -> PartialObjectMeta<Secret> {
        let mut s = PartialObjectMeta::<Secret>::default();
        s.metadata.name = Some(TOKEN_SECRET_NAME.into());
        s.metadata.namespace = Some(ns.into());
        s.metadata.resource_version = Some(rv.into());
        s
    }

    #[test]
    fn events_keep_versions_and_name_what_changed_behind_our_back() {
        let c = TokenSecrets::default();
        let mut pending = HashMap::new();
        let main = claims("main");
        let none: Vec<String> = vec![];
        assert_eq!(c.known("a", "k", &main), Known::Unknown, "not listed yet");
        assert_eq!(c.apply(watcher::Event::Init, &mut pending), none);
        c.apply(watcher::Event::InitApply(secret("a", "5")), &mut pending);
        assert_eq!(c.apply(watcher::Event::InitDone, &mut pending), none);
        assert_eq!(
            c.known("a", "k", &main),
            Known::Unknown,
            "listed, not verified"
        );
        assert_eq!(c.known("b", "k", &main), Known::Absent);
        c.verified("a", verified("5", "k", "main"));
        assert_eq!(c.known("a", "k", &main), Known::Good);
        // Our own write arriving: nothing to re-check.
        c.verified("b", verified("9", "k", "main"));
        assert_eq!(
            c.known("b", "k", &main),
            Known::Unknown,
            "write not seen yet"
        );
        assert_eq!(
            c.apply(watcher::Event::Apply(secret("b", "9")), &mut pending),
            none
        );
        assert_eq!(c.known("b", "k", &main), Known::Good);
        // Edited by hand: re-check, and no longer good.
        assert_eq!(
            c.apply(watcher::Event::Apply(secret("a", "6")), &mut pending),
            ["a"]
        );
        assert_eq!(c.known("a", "k", &main), Known::Unknown);
        // Deleted: re-check, and absent.
        assert_eq!(
            c.apply(watcher::Event::Delete(secret("b", "10")), &mut pending),
            ["b"]
        );
        assert_eq!(c.known("b", "k", &main), Known::Absent);
        c.reset();
        assert_eq!(c.known("b", "k", &main), Known::Unknown);
    }

    /// A failed watch vouches for nothing until a new full list, and that
    /// list names what changed while the watch was down.
    #[test]
    fn a_broken_watch_vouches_for_nothing_and_the_relist_names_the_changes() {
        let c = TokenSecrets::default();
        let mut pending = HashMap::new();
        let main = claims("main");
        c.apply(watcher::Event::Init, &mut pending);
        for (ns, rv) in [("kept", "1"), ("edited", "2"), ("deleted", "3")] {
            c.apply(watcher::Event::InitApply(secret(ns, rv)), &mut pending);
            c.verified(ns, verified(rv, "k", "main"));
        }
        c.apply(watcher::Event::InitDone, &mut pending);
        assert_eq!(c.known("kept", "k", &main), Known::Good);
        // The watch fails: every check looks.
        c.invalidate();
        for ns in ["kept", "edited", "deleted"] {
            assert_eq!(c.known(ns, "k", &main), Known::Unknown, "{ns}");
        }
        // The new list: stale until complete; then the changes are named.
        c.apply(watcher::Event::Init, &mut pending);
        c.apply(watcher::Event::InitApply(secret("kept", "1")), &mut pending);
        assert_eq!(c.known("kept", "k", &main), Known::Unknown, "listing");
        c.apply(
            watcher::Event::InitApply(secret("edited", "7")),
            &mut pending,
        );
        let mut changed = c.apply(watcher::Event::InitDone, &mut pending);
        changed.sort();
        assert_eq!(changed, ["deleted", "edited"]);
        assert_eq!(c.known("kept", "k", &main), Known::Good);
        assert_eq!(c.known("edited", "k", &main), Known::Unknown);
        assert_eq!(c.known("deleted", "k", &main), Known::Absent, "mint again");
    }
}
