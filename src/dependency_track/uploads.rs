//! Dependency-Track uploads run in the background, a bounded number at a
//! time, so waiting on Dependency-Track (up to minutes per BOM) never holds a
//! reconcile slot: the ConfigMap reconciler starts an upload, records the
//! other steps and looks again until the result is there.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::{EndpointPolicy, GuardedResolver};
use crate::postprocess::{Outcome, Step};

/// One upload: a ConfigMap (uid), the content it had (fingerprint), the step.
pub type Key = (String, String, Step);

enum Job {
    Running,
    Done(Result<(), super::Error>, Instant),
}

/// Results nobody came back for (the ConfigMap was deleted) are dropped
/// after this long.
const KEEP_DONE: Duration = Duration::from_secs(600);

pub struct Uploads {
    pub http: reqwest::Client,
    /// For per-namespace endpoints: names resolve through the policy's
    /// resolver (no internal addresses).
    pub custom_http: reqwest::Client,
    pub policy: Arc<EndpointPolicy>,
    pub timeout: Duration,
    /// Slots for the central Dependency-Track; per-namespace endpoints
    /// (chosen by the namespace's workloads) have slots of their own, so a
    /// slow one never holds up the central uploads.
    central: Arc<Semaphore>,
    custom: Arc<Semaphore>,
    /// Per-namespace uploads running, by namespace: one namespace holds at
    /// most [`Uploads::per_namespace`] of the custom slots, so its slow
    /// endpoint cannot hold them all.
    custom_by_namespace: Arc<Mutex<HashMap<String, usize>>>,
    per_namespace: usize,
    jobs: Arc<Mutex<HashMap<Key, Job>>>,
}

impl Uploads {
    pub fn new(max_concurrent: u16, timeout: Duration) -> Self {
        Self::with_policy(max_concurrent, timeout, EndpointPolicy::default())
    }

    /// With the admin's policy for per-namespace endpoints.
    pub fn with_policy(max_concurrent: u16, timeout: Duration, policy: EndpointPolicy) -> Self {
        let slots = usize::from(max_concurrent.max(1));
        let policy = Arc::new(policy);
        Uploads {
            http: crate::dependency_track::Client::http(),
            custom_http: crate::dependency_track::Client::http_resolving_with(Arc::new(
                GuardedResolver(policy.clone()),
            )),
            policy,
            timeout,
            central: Arc::new(Semaphore::new(slots)),
            custom: Arc::new(Semaphore::new(slots)),
            custom_by_namespace: Arc::default(),
            // Half the slots, at least one.
            per_namespace: (slots / 2).max(1),
            jobs: Arc::default(),
        }
    }

    /// The finished result for `key` (handed out once), Running while it
    /// runs, None when no upload was started.
    pub fn poll(&self, key: &Key) -> Option<Outcome> {
        let mut jobs = self.jobs.lock().expect("uploads lock");
        jobs.retain(|_, j| !matches!(j, Job::Done(_, at) if at.elapsed() > KEEP_DONE));
        match jobs.get(key)? {
            Job::Running => Some(Outcome::Running),
            Job::Done(..) => match jobs.remove(key) {
                Some(Job::Done(Ok(()), _)) => Some(Outcome::Success),
                Some(Job::Done(Err(e), _)) => Some(Outcome::Failure(e.to_string())),
                _ => None,
            },
        }
    }

    /// Starts `upload` if a slot is free (for a per-namespace upload, one
    /// its namespace `owner` may take); returns whether it started. When
    /// none is free nothing is kept (the BOM is not held in memory while
    /// waiting): the caller looks again later.
    pub fn try_start<F>(&self, key: Key, owner: &str, upload: F) -> bool
    where
        F: Future<Output = Result<(), super::Error>> + Send + 'static,
    {
        let custom = key.2 == Step::DependencyTrackCustom;
        // The namespace's share is checked and taken under one lock, so
        // concurrent reconciles cannot both take the last place.
        let mut by_namespace = self.custom_by_namespace.lock().expect("uploads lock");
        if custom && by_namespace.get(owner).copied().unwrap_or(0) >= self.per_namespace {
            return false;
        }
        let Ok(permit) = self.slots(key.2).clone().try_acquire_owned() else {
            return false;
        };
        let held_by = custom.then(|| {
            *by_namespace.entry(owner.to_string()).or_default() += 1;
            (self.custom_by_namespace.clone(), owner.to_string())
        });
        drop(by_namespace);
        self.jobs
            .lock()
            .expect("uploads lock")
            .insert(key.clone(), Job::Running);
        let jobs = self.jobs.clone();
        // The upload's own requests time out; this bounds the whole job.
        let limit = self.timeout + Duration::from_secs(120);
        tokio::spawn(async move {
            use futures::FutureExt;
            // A panic in the upload is a failed upload, not a job that runs forever.
            let guarded = std::panic::AssertUnwindSafe(upload).catch_unwind();
            let res = match tokio::time::timeout(limit, guarded).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(super::Error::Panicked),
                Err(_) => Err(super::Error::Unfinished(limit.as_secs())),
            };
            drop(permit);
            if let Some((counts, ns)) = held_by {
                let mut counts = counts.lock().expect("uploads lock");
                if let Some(n) = counts.get_mut(&ns) {
                    *n -= 1;
                    if *n == 0 {
                        counts.remove(&ns);
                    }
                }
            }
            jobs.lock()
                .expect("uploads lock")
                .insert(key, Job::Done(res, Instant::now()));
        });
        true
    }

    fn namespace_may_start(&self, owner: &str) -> bool {
        self.custom_by_namespace
            .lock()
            .expect("uploads lock")
            .get(owner)
            .copied()
            .unwrap_or(0)
            < self.per_namespace
    }

    fn slots(&self, step: Step) -> &Arc<Semaphore> {
        match step {
            Step::DependencyTrackCustom => &self.custom,
            _ => &self.central,
        }
    }

    /// Whether an upload of `step` for namespace `owner` could start now.
    pub fn has_free_slot(&self, step: Step, owner: &str) -> bool {
        self.slots(step).available_permits() > 0
            && (step != Step::DependencyTrackCustom || self.namespace_may_start(owner))
    }

    /// Whether an upload of this ConfigMap's content (uid, fingerprint)
    /// still runs: its reconcile can wait without building anything.
    pub fn running_for(&self, uid: &str, fingerprint: &str) -> bool {
        self.jobs
            .lock()
            .expect("uploads lock")
            .iter()
            .any(|((u, f, _), j)| u == uid && f == fingerprint && matches!(j, Job::Running))
    }

    pub fn running(&self) -> usize {
        self.jobs
            .lock()
            .expect("uploads lock")
            .values()
            .filter(|j| matches!(j, Job::Running))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: &str) -> Key {
        (n.into(), "f".into(), Step::DependencyTrackDefault)
    }

    #[tokio::test]
    async fn bounded_and_each_result_handed_out_once() {
        let u = Uploads::new(1, Duration::from_secs(5));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        assert!(u.try_start(key("a"), "ns", async move {
            let _ = rx.await;
            Err(super::super::Error::Request("down".into()))
        }));
        assert_eq!(u.poll(&key("a")), Some(Outcome::Running));
        assert!(u.running_for("a", "f") && !u.running_for("a", "other"));
        // The only slot is taken: the next one does not start (and keeps nothing).
        assert!(!u.has_free_slot(Step::DependencyTrackDefault, "ns"));
        assert!(!u.try_start(key("b"), "ns", async { Ok(()) }));
        // A per-namespace upload has slots of its own.
        let custom = (
            "c".to_string(),
            "f".to_string(),
            Step::DependencyTrackCustom,
        );
        assert!(u.has_free_slot(Step::DependencyTrackCustom, "ns"));
        assert!(u.try_start(custom, "ns", std::future::pending()));
        assert!(!u.has_free_slot(Step::DependencyTrackCustom, "ns"));
        assert_eq!(u.poll(&key("b")), None);
        tx.send(()).unwrap();
        let got = loop {
            match u.poll(&key("a")) {
                Some(Outcome::Running) => tokio::task::yield_now().await,
                other => break other,
            }
        };
        assert_eq!(got, Some(Outcome::Failure("down".into())));
        assert_eq!(u.poll(&key("a")), None, "handed out once");
        assert!(
            u.try_start(key("b"), "ns", async { Ok(()) }),
            "the slot is free again"
        );
    }

    #[tokio::test]
    async fn one_namespace_cannot_hold_every_per_namespace_slot() {
        let u = Uploads::new(4, Duration::from_secs(5));
        let custom = |n: &str| (n.to_string(), "f".to_string(), Step::DependencyTrackCustom);
        // A namespace whose endpoint never answers takes half the slots.
        assert!(u.try_start(custom("slow-1"), "slow", std::future::pending()));
        assert!(u.try_start(custom("slow-2"), "slow", std::future::pending()));
        assert!(!u.has_free_slot(Step::DependencyTrackCustom, "slow"));
        assert!(!u.try_start(custom("slow-3"), "slow", std::future::pending()));
        // Others still start.
        assert!(u.has_free_slot(Step::DependencyTrackCustom, "other"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        assert!(u.try_start(custom("other-1"), "other", async move {
            let _ = rx.await;
            Ok(())
        }));
        tx.send(()).unwrap();
        loop {
            match u.poll(&custom("other-1")) {
                Some(Outcome::Running) => tokio::task::yield_now().await,
                other => break assert_eq!(other, Some(Outcome::Success)),
            }
        }
        assert!(
            u.has_free_slot(Step::DependencyTrackCustom, "other"),
            "given back"
        );
        // The central uploads have slots of their own.
        assert!(u.has_free_slot(Step::DependencyTrackDefault, "slow"));
    }
}
