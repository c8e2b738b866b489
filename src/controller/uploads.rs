//! Dependency-Track uploads run in the background, a bounded number at a
//! time, so waiting on Dependency-Track (up to minutes per BOM) never holds a
//! reconcile slot: the ConfigMap reconciler starts an upload, records the
//! other steps and looks again until the result is there.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::postprocess::{Outcome, Step};

/// One upload: a ConfigMap (uid), the content it had (fingerprint), the step.
pub type Key = (String, String, Step);

enum Job {
    Running,
    Done(Result<(), String>, Instant),
}

/// Results nobody came back for (the ConfigMap was deleted) are dropped
/// after this long.
const KEEP_DONE: Duration = Duration::from_secs(600);

pub struct Uploads {
    pub http: reqwest::Client,
    pub timeout: Duration,
    /// Slots for the central Dependency-Track; per-namespace endpoints
    /// (chosen by the namespace's workloads) have slots of their own, so a
    /// slow one never holds up the central uploads.
    central: Arc<Semaphore>,
    custom: Arc<Semaphore>,
    jobs: Arc<Mutex<HashMap<Key, Job>>>,
}

impl Uploads {
    pub fn new(max_concurrent: u16, timeout: Duration) -> Self {
        Uploads {
            http: crate::dependency_track::Client::http(),
            timeout,
            central: Arc::new(Semaphore::new(usize::from(max_concurrent.max(1)))),
            custom: Arc::new(Semaphore::new(usize::from(max_concurrent.max(1)))),
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
                Some(Job::Done(Err(e), _)) => Some(Outcome::Failure(e)),
                _ => None,
            },
        }
    }

    /// Starts `upload` if a slot is free; returns whether it started. When
    /// none is free nothing is kept (the BOM is not held in memory while
    /// waiting): the caller looks again later.
    pub fn try_start<F>(&self, key: Key, upload: F) -> bool
    where
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        let Ok(permit) = self.slots(key.2).clone().try_acquire_owned() else {
            return false;
        };
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
                Ok(Err(_)) => Err("the upload failed unexpectedly (a bug: see the log)".into()),
                Err(_) => Err(format!(
                    "the upload did not finish within {}s",
                    limit.as_secs()
                )),
            };
            drop(permit);
            jobs.lock()
                .expect("uploads lock")
                .insert(key, Job::Done(res, Instant::now()));
        });
        true
    }

    fn slots(&self, step: Step) -> &Arc<Semaphore> {
        match step {
            Step::DependencyTrackCustom => &self.custom,
            _ => &self.central,
        }
    }

    pub fn has_free_slot(&self, step: Step) -> bool {
        self.slots(step).available_permits() > 0
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
        assert!(u.try_start(key("a"), async move {
            let _ = rx.await;
            Err("down".to_string())
        }));
        assert_eq!(u.poll(&key("a")), Some(Outcome::Running));
        // The only slot is taken: the next one does not start (and keeps nothing).
        assert!(!u.has_free_slot(Step::DependencyTrackDefault));
        assert!(!u.try_start(key("b"), async { Ok(()) }));
        // A per-namespace upload has slots of its own.
        let custom = (
            "c".to_string(),
            "f".to_string(),
            Step::DependencyTrackCustom,
        );
        assert!(u.has_free_slot(Step::DependencyTrackCustom));
        assert!(u.try_start(custom, std::future::pending()));
        assert!(!u.has_free_slot(Step::DependencyTrackCustom));
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
            u.try_start(key("b"), async { Ok(()) }),
            "the slot is free again"
        );
    }
}
