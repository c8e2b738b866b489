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

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, store::Writer, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::contract::{
    ANNOTATION_REVOKE, ANNOTATION_VALID_FROM, LABEL_ENVIRONMENT, LABEL_ENVIRONMENT_TYPE,
    LABEL_PROJECT, TOKEN_SECRET_NAME,
};

pub type NamespaceMeta = PartialObjectMeta<Namespace>;
pub type SecretMeta = PartialObjectMeta<Secret>;

/// The stores, readable from the start (empty and not ready until the
/// first list).
pub struct Cluster {
    pub namespaces: Store<NamespaceMeta>,
    pub token_secrets: Store<SecretMeta>,
    /// False from a failed token Secret watch until its next event.
    secrets_current: AtomicBool,
    /// How many complete lists of the namespaces arrived.
    namespace_lists: tokio::sync::watch::Sender<u64>,
    writers: Mutex<Option<(Writer<NamespaceMeta>, Writer<SecretMeta>)>>,
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
            writers: Mutex::new(Some((ns_writer, secret_writer))),
        }
    }
}

/// What to do beside filling the stores: each event once it is in its
/// store, and each watch error (named `namespaces` or `token-secrets`).
pub trait Observer: Send {
    fn namespace(&mut self, _event: &watcher::Event<NamespaceMeta>) {}
    fn token_secret(&mut self, _event: &watcher::Event<SecretMeta>) {}
    fn error(&mut self, watch: &'static str, error: &watcher::Error);
}

impl Cluster {
    /// Whether both stores hold a complete list.
    pub fn ready(&self) -> bool {
        listed(&self.namespaces) && listed(&self.token_secrets)
    }

    /// Resolves once both stores hold a complete list.
    pub async fn wait_ready(&self) {
        let _ = self.namespaces.wait_until_ready().await;
        let _ = self.token_secrets.wait_until_ready().await;
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
    pub fn token_secret(&self, namespace: &str) -> Option<std::sync::Arc<SecretMeta>> {
        self.token_secrets
            .get(&ObjectRef::new(TOKEN_SECRET_NAME).within(namespace))
    }

    /// Whether the token Secret store can be trusted: listed, and its watch
    /// not failing since its last event.
    pub fn token_secrets_current(&self) -> bool {
        self.secrets_current.load(Ordering::Relaxed) && listed(&self.token_secrets)
    }

    /// A token Secret event arrived: a change or a complete list shows the
    /// watch works (and missed nothing: it resumes where it stopped, or
    /// lists again).
    fn secret_event(&self, ev: &watcher::Event<SecretMeta>) {
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
        let namespaces = narrow(
            watcher::watcher(Api::<NamespaceMeta>::all(client), ns_config),
            keep_namespace,
        );
        let secrets = narrow(
            watcher::watcher(secret_api, secret_config),
            keep_token_secret,
        );
        let mut namespaces = reflector::reflector(ns_writer, namespaces).boxed();
        let mut secrets = reflector::reflector(secret_writer, secrets).boxed();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                Some(ev) = namespaces.next() => match ev {
                    Ok(ev) => {
                        if matches!(ev, watcher::Event::InitDone) {
                            self.namespace_lists.send_modify(|n| *n += 1);
                        }
                        observer.namespace(&ev);
                    }
                    Err(e) => observer.error("namespaces", &e),
                },
                Some(ev) = secrets.next() => match ev {
                    Ok(ev) => {
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
        if matches!(ev, watcher::Event::InitDone) {
            self.namespace_lists.send_modify(|n| *n += 1);
        }
    }

    /// Applies an event as the token Secret watch would (unit tests).
    pub fn feed_token_secret(&self, ev: &watcher::Event<SecretMeta>) {
        let mut w = self.writers.lock().unwrap();
        w.as_mut().unwrap().1.apply_watcher_event(ev);
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

/// Whether a store holds a complete list.
fn listed<K: kube::runtime::reflector::Lookup + Clone>(store: &Store<K>) -> bool
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store.wait_until_ready().now_or_never().is_some()
}

/// A watch that restarts with kube's default backoff, its objects kept
/// with only what this process reads (`keep`): at 10,000 environments the
/// stores hold 20,000 objects, and every map kept costs a node of about
/// half a KiB each (`bash bench/profile.sh heap`).
fn narrow<K: Resource + Clone + Send + 'static>(
    events: impl futures::Stream<Item = watcher::Result<watcher::Event<PartialObjectMeta<K>>>>
        + Send
        + 'static,
    keep: fn(&mut ObjectMeta),
) -> impl futures::Stream<Item = watcher::Result<watcher::Event<PartialObjectMeta<K>>>> + Send
where
    PartialObjectMeta<K>: Clone,
{
    events
        .default_backoff()
        .modify(move |o| keep(&mut o.metadata))
}

/// What is read of a namespace: its name, labels (the environment, and
/// whatever label the settings target), uid (Events name it), creation
/// and deletion times. `managedFields` alone is most of its metadata.
fn keep_namespace(m: &mut ObjectMeta) {
    m.managed_fields = None;
    m.annotations = None;
    m.owner_references = None;
    m.finalizers = None;
}

/// What is read of a token Secret: its namespace, version and the two
/// revocation annotations (not its labels, nor what kubectl or others
/// annotate it with).
fn keep_token_secret(m: &mut ObjectMeta) {
    m.managed_fields = None;
    m.labels = None;
    m.uid = None;
    m.owner_references = None;
    m.finalizers = None;
    if let Some(a) = m.annotations.as_mut() {
        a.retain(|k, _| k == ANNOTATION_REVOKE || k == ANNOTATION_VALID_FROM);
        if a.is_empty() {
            m.annotations = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // A token Secret: the revocation marks and the version stay.
        let mut s = meta(
            &[(LABEL_PROJECT, "demo")],
            &[
                (ANNOTATION_VALID_FROM, "2026-12-07T00:00:00Z"),
                (ANNOTATION_REVOKE, "x"),
                last_applied,
            ],
        );
        keep_token_secret(&mut s);
        assert_eq!(
            s.annotations.as_ref().unwrap().keys().collect::<Vec<_>>(),
            [ANNOTATION_REVOKE, ANNOTATION_VALID_FROM]
        );
        assert_eq!(s.resource_version.as_deref(), Some("42"));
        assert_eq!(s.namespace.as_deref(), Some("demo-main"));
        assert!(s.labels.is_none() && s.uid.is_none() && s.managed_fields.is_none());
        // No mark at all: no map.
        let mut plain = meta(&[], &[last_applied]);
        keep_token_secret(&mut plain);
        assert!(plain.annotations.is_none());
        // A namespace: every label (a target label is a setting) and the uid
        // (Events name it) stay; annotations go.
        let mut n = meta(
            &[(LABEL_PROJECT, "demo"), ("any/target", "true")],
            &[last_applied],
        );
        keep_namespace(&mut n);
        assert_eq!(n.labels.as_ref().unwrap().len(), 2);
        assert!(n.uid.is_some());
        assert!(n.annotations.is_none() && n.managed_fields.is_none());
    }
}
