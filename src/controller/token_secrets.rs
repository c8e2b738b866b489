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

    /// Applies a watch event; returns the namespace to re-check when a
    /// Secret changed in a way this process did not verify.
    fn apply(
        &self,
        ev: watcher::Event<PartialObjectMeta<Secret>>,
        pending: &mut HashMap<String, String>,
    ) -> Option<String> {
        let mut listed = self.listed.write().expect("token cache lock");
        let rv = |s: &PartialObjectMeta<Secret>| s.resource_version().unwrap_or_default();
        match ev {
            watcher::Event::Apply(s) => {
                let ns = s.namespace()?;
                let rv = rv(&s);
                let ours = self
                    .verified
                    .lock()
                    .expect("token cache lock")
                    .get(&ns)
                    .is_some_and(|v| v.resource_version == rv);
                if let Some(m) = listed.as_mut() {
                    m.insert(ns.clone(), rv);
                }
                (!ours).then_some(ns)
            }
            watcher::Event::Delete(s) => {
                let ns = s.namespace()?;
                if let Some(m) = listed.as_mut() {
                    m.remove(&ns);
                }
                self.verified.lock().expect("token cache lock").remove(&ns);
                Some(ns)
            }
            watcher::Event::Init => {
                pending.clear();
                None
            }
            watcher::Event::InitApply(s) => {
                if let Some(ns) = s.namespace() {
                    pending.insert(ns, rv(&s));
                }
                None
            }
            watcher::Event::InitDone => {
                *listed = Some(std::mem::take(pending));
                None
            }
        }
    }
}

/// Keeps `ctx.token_secrets` current until shutdown, sending the namespaces
/// whose Secret changed behind this process's back to `recheck`.
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
    ctx.token_secrets.reset();
    let fallback = "falling back to a GET per check";
    follow(&ctx, api, wc, "token-secrets", fallback, shutdown, |ev| {
        if let Some(ns) = ctx.token_secrets.apply(ev, &mut pending) {
            // Full: the periodic re-check covers it.
            let _ = recheck.try_send(ObjectRef::new(&ns));
        }
    })
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
            (Some(None), Some(&v), "k1", &c, Known::Absent),
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
        assert_eq!(c.known("a", "k", &main), Known::Unknown, "not listed yet");
        assert_eq!(c.apply(watcher::Event::Init, &mut pending), None);
        c.apply(watcher::Event::InitApply(secret("a", "5")), &mut pending);
        c.apply(watcher::Event::InitDone, &mut pending);
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
            c.apply(watcher::Event::Apply(secret("b", "9")), &mut pending),
            None
        );
        assert_eq!(c.known("b", "k", &main), Known::Good);
        // Edited by hand: re-check, and no longer good.
        assert_eq!(
            c.apply(watcher::Event::Apply(secret("a", "6")), &mut pending),
            Some("a".to_string())
        );
        assert_eq!(c.known("a", "k", &main), Known::Unknown);
        // Deleted: re-check, and absent.
        assert_eq!(
            c.apply(watcher::Event::Delete(secret("b", "10")), &mut pending),
            Some("b".to_string())
        );
        assert_eq!(c.known("b", "k", &main), Known::Absent);
        c.reset();
        assert_eq!(c.known("b", "k", &main), Known::Unknown);
    }
}
