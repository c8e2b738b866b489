//! What this process sees of the cluster without asking: kube's reflector
//! stores, each filled by one narrow, metadata-only watch that every replica
//! runs from start-up to shutdown.
//!
//! - [`Cluster::namespaces`]: the Lagoon namespaces (labelled
//!   `lagoon.sh/project`). The ingestion API checks tokens against them
//!   (the tenants registry); the token reconciler reconciles them (it has
//!   no watch of its own); the ConfigMap and build reconcilers read a
//!   namespace's identity from them instead of a GET.
//! - [`Cluster::token_secrets`]: the `insights-token` Secrets (watched by
//!   name, which is all the chart's RBAC allows). Their revocation marks are
//!   checked per request; the token reconciler mints without a GET where
//!   none exists and leaves alone what it verified.
//!
//! The watches restart by themselves with kube's default backoff, resuming
//! from the last version seen, so no event is missed (a version too old
//! makes them list again). While a token Secret watch is failing its store
//! may be stale: [`Cluster::token_secrets_current`] says so, and the token
//! reconciler then looks with a GET.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use std::borrow::Cow;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, store::Writer, Lookup, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};

use crate::contract::{
    ANNOTATION_REVOKE, ANNOTATION_VALID_FROM, LABEL_ENVIRONMENT, LABEL_ENVIRONMENT_TYPE,
    LABEL_PROJECT, TOKEN_SECRET_NAME,
};

pub type NamespaceMeta = PartialObjectMeta<Namespace>;
pub type SecretMeta = PartialObjectMeta<Secret>;

/// A token Secret as its store keeps it: where it is, its version and its
/// revocation annotations. At 10,000 environments the Secrets' metadata
/// (a map node of about half a KiB per map, and `ObjectMeta` itself) was
/// the largest part of the heap (`bash bench/profile.sh heap`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenSecret {
    pub namespace: String,
    pub resource_version: String,
    /// It carries [`ANNOTATION_REVOKE`].
    pub revoke: bool,
    /// Its [`ANNOTATION_VALID_FROM`].
    pub valid_from: Option<String>,
}

impl From<SecretMeta> for TokenSecret {
    fn from(s: SecretMeta) -> Self {
        let mut m = s.metadata;
        let mut annotations = m.annotations.take().unwrap_or_default();
        TokenSecret {
            namespace: m.namespace.take().unwrap_or_default(),
            resource_version: m.resource_version.take().unwrap_or_default(),
            revoke: annotations.contains_key(ANNOTATION_REVOKE),
            valid_from: annotations.remove(ANNOTATION_VALID_FROM),
        }
    }
}

impl Lookup for TokenSecret {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        "Secret".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "secrets".into()
    }
    fn name(&self) -> Option<Cow<'_, str>> {
        Some(TOKEN_SECRET_NAME.into())
    }
    fn namespace(&self) -> Option<Cow<'_, str>> {
        Some(self.namespace.as_str().into())
    }
    fn resource_version(&self) -> Option<Cow<'_, str>> {
        Some(self.resource_version.as_str().into())
    }
    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }
}

/// The token Secret watch's events, each Secret kept as a [`TokenSecret`].
fn compact(ev: watcher::Event<SecretMeta>) -> watcher::Event<TokenSecret> {
    use watcher::Event as E;
    match ev {
        E::Apply(s) => E::Apply(s.into()),
        E::Delete(s) => E::Delete(s.into()),
        E::Init => E::Init,
        E::InitApply(s) => E::InitApply(s.into()),
        E::InitDone => E::InitDone,
    }
}

/// The stores, readable from the start (empty and not ready until the
/// first list).
pub struct Cluster {
    pub namespaces: Store<NamespaceMeta>,
    pub token_secrets: Store<TokenSecret>,
    /// False from a failed token Secret watch until its next event.
    secrets_current: AtomicBool,
    /// How many complete lists of the namespaces arrived.
    namespace_lists: tokio::sync::watch::Sender<u64>,
    /// Whether the namespaces and the token Secrets have had a complete
    /// list. Kept here rather than asked of the stores: a store's
    /// `wait_until_ready` keeps one waker only, so a check that polls it
    /// (`now_or_never`, as on every probe) takes the place of the
    /// controller waiting on it, which is then never woken.
    listed: tokio::sync::watch::Sender<(bool, bool)>,
    writers: Mutex<Option<(Writer<NamespaceMeta>, Writer<TokenSecret>)>>,
}

impl Default for Cluster {
    fn default() -> Self {
        let (namespaces, ns_writer) = reflector::store();
        let (token_secrets, secret_writer) = reflector::store();
        Self {
            namespaces,
            token_secrets,
            secrets_current: AtomicBool::new(true),
            namespace_lists: tokio::sync::watch::Sender::new(0),
            listed: tokio::sync::watch::Sender::new((false, false)),
            writers: Mutex::new(Some((ns_writer, secret_writer))),
        }
    }
}

/// What to do beside filling the stores: each event once it is in its
/// store, and each watch error (named `namespaces` or `token-secrets`).
pub trait Observer: Send {
    fn namespace(&mut self, _event: &watcher::Event<NamespaceMeta>) {}
    fn token_secret(&mut self, _event: &watcher::Event<TokenSecret>) {}
    fn error(&mut self, watch: &'static str, error: &watcher::Error);
}

impl Cluster {
    /// Whether both stores hold a complete list.
    pub fn ready(&self) -> bool {
        *self.listed.borrow() == (true, true)
    }

    /// Resolves once both stores hold a complete list.
    pub async fn wait_ready(&self) {
        let _ = self
            .listed
            .subscribe()
            .wait_for(|l| *l == (true, true))
            .await;
    }

    /// A watch event was applied to its store: a complete list makes the
    /// store listed (namespaces: `.0`, Secrets: `.1`).
    fn listed_if<K>(&self, ev: &watcher::Event<K>, which: fn(&mut (bool, bool)) -> &mut bool) {
        if matches!(ev, watcher::Event::InitDone) {
            self.listed
                .send_if_modified(|l| !std::mem::replace(which(l), true));
        }
    }

    /// Counts the complete lists of the namespaces: after a new one the
    /// store may hold changes no event showed (the watch was down).
    pub fn namespace_lists(&self) -> tokio::sync::watch::Receiver<u64> {
        self.namespace_lists.subscribe()
    }

    /// A Lagoon namespace, if listed.
    pub fn namespace(&self, name: &str) -> Option<std::sync::Arc<NamespaceMeta>> {
        self.namespaces.get(&ObjectRef::new(name))
    }

    /// A namespace's identity labels (project, environment, type): from the
    /// store, or one GET for a namespace it does not hold (not listed yet,
    /// created a moment ago, or without an environment id); empty when
    /// there is no such namespace.
    pub async fn identity_labels(&self, client: &Client, ns: &str) -> Result<Labels, kube::Error> {
        if let Some(n) = self.namespace(ns) {
            return Ok(identity_of(n.labels()));
        }
        Ok(Api::<NamespaceMeta>::all(client.clone())
            .get_metadata_opt(ns)
            .await?
            .map(|n| identity_of(n.labels()))
            .unwrap_or_default())
    }

    /// A namespace's token Secret, if listed.
    pub fn token_secret(&self, namespace: &str) -> Option<std::sync::Arc<TokenSecret>> {
        self.token_secrets
            .get(&ObjectRef::new(TOKEN_SECRET_NAME).within(namespace))
    }

    /// Whether the token Secret store can be trusted: listed, and its watch
    /// not failing since its last event.
    pub fn token_secrets_current(&self) -> bool {
        self.secrets_current.load(Ordering::Relaxed) && self.listed.borrow().1
    }

    /// A token Secret event arrived: a change or a complete list shows the
    /// watch works (and missed nothing: it resumes where it stopped, or
    /// lists again).
    fn secret_event(&self, ev: &watcher::Event<TokenSecret>) {
        if !matches!(ev, watcher::Event::Init | watcher::Event::InitApply(_)) {
            self.secrets_current.store(true, Ordering::Relaxed);
        }
    }

    /// Runs both watches until `stop` resolves; called once per process
    /// (a second call returns at once). `scope`: only this namespace.
    pub async fn run(
        &self,
        client: Client,
        scope: Option<&str>,
        mut observer: impl Observer,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let Some((ns_writer, secret_writer)) = self.writers.lock().expect("writers lock").take()
        else {
            return;
        };
        let mut ns_config = watcher::Config::default().labels(LABEL_PROJECT);
        let secret_api: Api<SecretMeta> = match scope {
            Some(ns) => {
                ns_config = ns_config.fields(&format!("metadata.name={ns}"));
                Api::namespaced(client.clone(), ns)
            }
            None => Api::all(client.clone()),
        };
        let secret_config =
            watcher::Config::default().fields(&format!("metadata.name={TOKEN_SECRET_NAME}"));
        let namespaces = narrow(watcher::watcher(
            Api::<NamespaceMeta>::all(client),
            ns_config,
        ));
        let secrets = watcher::watcher(secret_api, secret_config)
            .default_backoff()
            .map_ok(compact);
        let mut namespaces = reflector::reflector(ns_writer, namespaces).boxed();
        let mut secrets = reflector::reflector(secret_writer, secrets).boxed();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                Some(ev) = namespaces.next() => match ev {
                    Ok(ev) => {
                        self.listed_if(&ev, |l| &mut l.0);
                        if matches!(ev, watcher::Event::InitDone) {
                            self.namespace_lists.send_modify(|n| *n += 1);
                        }
                        observer.namespace(&ev);
                    }
                    Err(e) => observer.error("namespaces", &e),
                },
                Some(ev) = secrets.next() => match ev {
                    Ok(ev) => {
                        self.listed_if(&ev, |l| &mut l.1);
                        self.secret_event(&ev);
                        observer.token_secret(&ev);
                    }
                    Err(e) => {
                        self.secrets_current.store(false, Ordering::Relaxed);
                        observer.error("token-secrets", &e);
                    }
                },
            }
        }
    }
}

#[cfg(test)]
impl Cluster {
    /// Applies an event as the namespace watch would (unit tests).
    pub fn feed_namespace(&self, ev: &watcher::Event<NamespaceMeta>) {
        let mut w = self.writers.lock().unwrap();
        w.as_mut().unwrap().0.apply_watcher_event(ev);
        self.listed_if(ev, |l| &mut l.0);
        if matches!(ev, watcher::Event::InitDone) {
            self.namespace_lists.send_modify(|n| *n += 1);
        }
    }

    /// Applies an event as the token Secret watch would (unit tests).
    pub fn feed_token_secret(&self, ev: &watcher::Event<TokenSecret>) {
        let mut w = self.writers.lock().unwrap();
        w.as_mut().unwrap().1.apply_watcher_event(ev);
        self.listed_if(ev, |l| &mut l.1);
        self.secret_event(ev);
    }

    /// As a failing token Secret watch would (unit tests).
    pub fn feed_token_secret_error(&self) {
        self.secrets_current.store(false, Ordering::Relaxed);
    }
}

type Labels = BTreeMap<String, String>;

/// The labels that name a namespace's environment.
fn identity_of(labels: &Labels) -> Labels {
    [LABEL_PROJECT, LABEL_ENVIRONMENT, LABEL_ENVIRONMENT_TYPE]
        .into_iter()
        .filter_map(|k| labels.get(k).map(|v| (k.to_string(), v.clone())))
        .collect()
}

/// Whether labels name a Lagoon environment (a project and an environment).
pub fn is_lagoon_environment(labels: &Labels) -> bool {
    [LABEL_PROJECT, LABEL_ENVIRONMENT]
        .iter()
        .all(|k| labels.get(*k).is_some_and(|v| !v.is_empty()))
}

/// The namespace watch, restarting with kube's default backoff, each
/// namespace kept with only what is read: its name, labels (the
/// environment, and whatever label the settings target), uid (Events name
/// it), creation and deletion times. `managedFields` alone is most of its
/// metadata, and every map kept costs a node of about half a KiB.
fn narrow(
    events: impl futures::Stream<Item = watcher::Result<watcher::Event<NamespaceMeta>>> + Send + 'static,
) -> impl futures::Stream<Item = watcher::Result<watcher::Event<NamespaceMeta>>> + Send {
    events.default_backoff().modify(|o| {
        let m = &mut o.metadata;
        m.managed_fields = None;
        m.annotations = None;
        m.owner_references = None;
        m.finalizers = None;
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    /// Waiting for both lists is woken when they arrive, however often
    /// `ready` is asked meanwhile (as every probe and request does). Asked
    /// of the stores' own readiness, each such check took the waiter's
    /// place and the wait was never woken: the token reconciler's first
    /// pass then came only with the periodic one, 300 s later.
    #[tokio::test]
    async fn waiting_for_the_lists_is_woken_whatever_checks_readiness() {
        let cluster = std::sync::Arc::new(Cluster::default());
        let waiting = tokio::spawn({
            let c = cluster.clone();
            async move { c.wait_ready().await }
        });
        tokio::task::yield_now().await;
        assert!(!cluster.ready());
        cluster.feed_namespace(&watcher::Event::Init);
        cluster.feed_namespace(&watcher::Event::InitDone);
        assert!(!cluster.ready(), "the Secrets are not listed yet");
        assert!(!cluster.token_secrets_current());
        cluster.feed_token_secret(&watcher::Event::Init);
        assert!(!cluster.ready());
        cluster.feed_token_secret(&watcher::Event::InitDone);
        assert!(cluster.ready() && cluster.token_secrets_current());
        tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
            .await
            .expect("woken")
            .unwrap();
        // A relist keeps what was listed: still ready.
        cluster.feed_namespace(&watcher::Event::Init);
        assert!(cluster.ready());
    }

    fn meta(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ObjectMeta {
        let map = |kv: &[(&str, &str)]| {
            Some(
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        ObjectMeta {
            name: Some("insights-token".into()),
            namespace: Some("demo-main".into()),
            uid: Some("0d4e3a0e-1111-2222-3333-444455556666".into()),
            resource_version: Some("42".into()),
            labels: map(labels),
            annotations: map(annotations),
            managed_fields: Some(vec![Default::default()]),
            ..Default::default()
        }
    }

    #[test]
    fn stores_keep_what_is_read() {
        let last_applied = ("kubectl.kubernetes.io/last-applied-configuration", "{}");
        // A token Secret: its place, version and revocation marks.
        let mut s = SecretMeta {
            metadata: meta(
                &[(LABEL_PROJECT, "demo")],
                &[
                    (ANNOTATION_VALID_FROM, "2026-12-07T00:00:00Z"),
                    (ANNOTATION_REVOKE, "x"),
                    last_applied,
                ],
            ),
            ..Default::default()
        };
        let kept = TokenSecret::from(s.clone());
        assert_eq!(
            kept,
            TokenSecret {
                namespace: "demo-main".into(),
                resource_version: "42".into(),
                revoke: true,
                valid_from: Some("2026-12-07T00:00:00Z".into()),
            }
        );
        // Found in its store by the Secret's own reference.
        let (store, mut writer) = reflector::store::<TokenSecret>();
        writer.apply_watcher_event(&watcher::Event::Apply(kept.clone()));
        let by_ref = ObjectRef::<TokenSecret>::new(TOKEN_SECRET_NAME).within("demo-main");
        assert_eq!(store.get(&by_ref).as_deref(), Some(&kept));
        s.metadata.annotations = None;
        let plain = TokenSecret::from(s);
        assert!(!plain.revoke && plain.valid_from.is_none());
        // A namespace: every label (a target label is a setting) and the uid
        // (Events name it) stay; annotations go.
        let n = NamespaceMeta {
            metadata: meta(
                &[(LABEL_PROJECT, "demo"), ("any/target", "true")],
                &[last_applied],
            ),
            ..Default::default()
        };
        let ev = futures::executor::block_on(
            Box::pin(narrow(futures::stream::iter([Ok(watcher::Event::Apply(
                n,
            ))])))
            .next(),
        );
        let Some(Ok(watcher::Event::Apply(n))) = ev else {
            panic!("{ev:?}")
        };
        assert_eq!(n.metadata.labels.as_ref().unwrap().len(), 2);
        assert!(n.metadata.uid.is_some());
        assert!(n.metadata.annotations.is_none() && n.metadata.managed_fields.is_none());
    }
}
