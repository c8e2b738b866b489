//! A small cache of Lagoon namespaces' identity labels, so
//! forwarding a ConfigMap costs no GET of its Namespace. Only namespaces
//! labelled `lagoon.sh/project` are watched (metadata only), and only the
//! labels that name the environment are kept (project, environment, type).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::watch;

use super::{follow, Context};
use crate::contract::{LABEL_ENVIRONMENT, LABEL_ENVIRONMENT_TYPE, LABEL_PROJECT};

type Labels = BTreeMap<String, String>;

#[derive(Default)]
pub struct NamespaceCache {
    /// None until the first full list arrived.
    inner: RwLock<Option<HashMap<String, Labels>>>,
}

/// The labels kept for one namespace.
fn kept(labels: &BTreeMap<String, String>) -> Labels {
    [LABEL_PROJECT, LABEL_ENVIRONMENT, LABEL_ENVIRONMENT_TYPE]
        .into_iter()
        .filter_map(|k| labels.get(k).map(|v| (k.to_string(), v.clone())))
        .collect()
}

impl NamespaceCache {
    /// The namespace's project and environment labels when the cache knows
    /// it; None for a namespace not (yet) seen or before the first list
    /// (ask the API server: a namespace created a moment ago may not have
    /// arrived yet).
    pub fn labels(&self, ns: &str) -> Option<Labels> {
        let inner = self.inner.read().expect("namespace cache lock");
        inner.as_ref()?.get(ns).cloned()
    }

    /// Forget everything (a new leadership term lists again).
    pub fn reset(&self) {
        *self.inner.write().expect("namespace cache lock") = None;
    }

    fn apply(
        &self,
        ev: watcher::Event<kube::core::PartialObjectMeta<Namespace>>,
        pending: &mut HashMap<String, Labels>,
    ) {
        let mut inner = self.inner.write().expect("namespace cache lock");
        match ev {
            watcher::Event::Apply(ns) => {
                if let Some(m) = inner.as_mut() {
                    m.insert(ns.name_any(), kept(ns.labels()));
                }
            }
            watcher::Event::Delete(ns) => {
                if let Some(m) = inner.as_mut() {
                    m.remove(&ns.name_any());
                }
            }
            watcher::Event::Init => pending.clear(),
            watcher::Event::InitApply(ns) => {
                pending.insert(ns.name_any(), kept(ns.labels()));
            }
            watcher::Event::InitDone => *inner = Some(std::mem::take(pending)),
        }
    }
}

/// A namespace's identity labels: from the cache, or one GET for a
/// namespace it does not know (empty when there is no such namespace).
pub async fn labels_of(ctx: &Context, ns: &str) -> Result<Labels, kube::Error> {
    if let Some(labels) = ctx.namespaces.labels(ns) {
        return Ok(labels);
    }
    Ok(Api::<Namespace>::all(ctx.client.clone())
        .get_opt(ns)
        .await?
        .map(|n| kept(n.labels()))
        .unwrap_or_default())
}

/// Whether labels name a Lagoon environment (a project and an environment).
pub fn is_lagoon_environment(labels: &Labels) -> bool {
    [LABEL_PROJECT, LABEL_ENVIRONMENT]
        .iter()
        .all(|k| labels.get(*k).is_some_and(|v| !v.is_empty()))
}

/// Keeps `ctx.namespaces` current until shutdown.
pub async fn run(ctx: Arc<Context>, shutdown: watch::Receiver<bool>) {
    let api: Api<PartialObjectMeta<Namespace>> = Api::all(ctx.client.clone());
    let wc = watcher::Config::default().labels(LABEL_PROJECT);
    let mut pending = HashMap::new();
    ctx.namespaces.reset();
    let fallback = "falling back to a GET per ConfigMap";
    follow(
        &ctx,
        api,
        wc,
        "namespaces",
        fallback,
        shutdown,
        |ev| ctx.namespaces.apply(ev, &mut pending),
        || ctx.namespaces.reset(),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(name: &str, labels: &[(&str, &str)]) -> PartialObjectMeta<Namespace> {
        let mut m = PartialObjectMeta::<Namespace>::default();
        m.metadata.name = Some(name.into());
        m.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        m
    }

    #[test]
    fn answers_only_once_complete_and_keeps_the_identity_labels() {
        let c = NamespaceCache::default();
        let mut pending = HashMap::new();
        assert_eq!(c.labels("a"), None, "not listed yet: ask the API server");
        c.apply(watcher::Event::Init, &mut pending);
        c.apply(
            watcher::Event::InitApply(ns(
                "a",
                &[
                    ("lagoon.sh/project", "p"),
                    ("lagoon.sh/environment", "e"),
                    ("lagoon.sh/environmentType", "production"),
                    ("other", "x"),
                ],
            )),
            &mut pending,
        );
        assert_eq!(c.labels("a"), None);
        c.apply(watcher::Event::InitDone, &mut pending);
        let a = c.labels("a").unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(a["lagoon.sh/project"], "p");
        assert_eq!(c.labels("unknown"), None, "not seen: ask the API server");
        c.apply(
            watcher::Event::Apply(ns("b", &[("lagoon.sh/project", "q")])),
            &mut pending,
        );
        assert_eq!(c.labels("b").unwrap()["lagoon.sh/project"], "q");
        c.apply(watcher::Event::Delete(ns("a", &[])), &mut pending);
        assert_eq!(c.labels("a"), None);
        c.reset();
        assert_eq!(c.labels("b"), None);
    }
}
