//! Dependency-Track uploads run in the background, a bounded number at a
//! time, so waiting on Dependency-Track (up to minutes per BOM) never holds a
//! reconcile slot: the ConfigMap reconciler starts an upload, records the
//! other steps and looks again when the result is there.
//!
//! An upload that ends wakes its own ConfigMap (its result is ready) and a
//! ConfigMap waiting for a slot of its kind ([`Uploads::wakes`]): a slot is
//! taken again at once, and a backlog waiting on Dependency-Track costs no
//! reads while it waits (before, every waiting ConfigMap was read and
//! checked again every 2 s, and a freed slot stayed idle until the next
//! such look). Waiting namespaces take turns ([`Turns`]): a namespace whose
//! builds left many SBOMs does not keep another namespace's one SBOM
//! waiting behind all of them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

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

/// A ConfigMap to look at again: namespace and name.
pub type Who = (String, String);

/// Wakes not yet taken by the ConfigMap reconciler (when full, its
/// fallback recheck covers the rest).
const WAKES_WAITING: usize = 256;

/// Who waits for a slot, whom a freed slot is held for, and where wakes go.
/// Taken before `Uploads::custom_by_namespace` wherever both are.
#[derive(Default)]
struct Wakes {
    tx: Option<mpsc::Sender<Who>>,
    /// Whether a ConfigMap is still there to take a slot (the ConfigMap
    /// controller's cache); a waiter that is not is passed over.
    alive: Option<Alive>,
    /// Waiting for a central slot / a per-namespace slot; each ConfigMap
    /// once per kind of slot (the set: per-namespace or not, and who).
    central: Turns,
    custom: Turns,
    queued: HashSet<(bool, Who)>,
    /// Slots freed by an ended upload and held for the ConfigMap woken to
    /// take them: nobody else (a new ConfigMap, a waiter's 30 s look) takes
    /// a held slot, so turns are kept.
    held: Vec<Hold>,
    holds: u64,
}

type Alive = Box<dyn Fn(&Who) -> bool + Send + Sync>;

/// A slot held for `who` (per-namespace or not), named `id`.
struct Hold {
    custom: bool,
    who: Who,
    permit: OwnedSemaphorePermit,
    id: u64,
}

/// How long a slot is held for the woken ConfigMap before it goes to the
/// next in turn (the woken one was deleted, or its reconcile is slow).
const HOLD: Duration = Duration::from_secs(10);

/// ConfigMaps waiting for one kind of slot, served a namespace at a time:
/// a freed slot goes to the namespace whose turn it is (the one that has
/// waited longest since it was last served), to its ConfigMap that came
/// first, and that namespace's next turn is after every other waiting
/// namespace's. So one namespace's hundred SBOMs delay another
/// namespace's one SBOM by at most one upload per waiting namespace, not
/// by a hundred.
#[derive(Default)]
struct Turns {
    /// Namespaces with a ConfigMap waiting, whose turn first.
    order: VecDeque<String>,
    /// Each namespace's waiting ConfigMaps, in the order they came.
    waiting: HashMap<String, VecDeque<String>>,
}

impl Turns {
    fn push(&mut self, (ns, name): Who) {
        let names = self.waiting.entry(ns.clone()).or_default();
        if names.is_empty() {
            self.order.push_back(ns);
        }
        names.push_back(name);
    }

    /// `who` no longer waits (it started an upload on its own look): its
    /// namespace keeps its place in turn while others of it wait.
    fn remove(&mut self, (ns, name): &Who) {
        let Some(names) = self.waiting.get_mut(ns) else {
            return;
        };
        names.retain(|n| n != name);
        if names.is_empty() {
            self.waiting.remove(ns);
            self.order.retain(|n| n != ns);
        }
    }

    /// The next ConfigMap of the first namespace in turn that `may` take a
    /// slot; that namespace's turn goes to the back.
    fn next(&mut self, may: impl Fn(&str) -> bool) -> Option<Who> {
        let at = self.order.iter().position(|ns| may(ns))?;
        let ns = self.order.remove(at).expect("a position found");
        let names = self
            .waiting
            .get_mut(&ns)
            .expect("a namespace in turn waits");
        let name = names.pop_front().expect("a namespace in turn waits");
        if names.is_empty() {
            self.waiting.remove(&ns);
        } else {
            self.order.push_back(ns.clone());
        }
        Some((ns, name))
    }
}

impl Wakes {
    fn send(&self, who: Who) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(who);
        }
    }

    /// Hands a freed slot (`permit`) to the next ConfigMap waiting for a
    /// slot of this kind (for a per-namespace slot, the first in turn whose
    /// namespace is under its share of `counts`): holds it for that one and
    /// wakes it; the hold's id. With nobody waiting, the slot is free.
    fn hand_on(
        &mut self,
        custom: bool,
        permit: OwnedSemaphorePermit,
        counts: &Mutex<HashMap<String, usize>>,
        per_namespace: usize,
    ) -> Option<u64> {
        loop {
            let first = if custom {
                let counts = counts.lock().expect("uploads lock");
                self.custom
                    .next(|ns| counts.get(ns).copied().unwrap_or(0) < per_namespace)
            } else {
                self.central.next(|_| true)
            };
            let first = first?;
            // Started meanwhile (woken by its own recheck): not waiting.
            if !self.queued.remove(&(custom, first.clone())) {
                continue;
            }
            // Gone from the cluster, or no longer ours to forward.
            if self.alive.as_ref().is_some_and(|alive| !alive(&first)) {
                continue;
            }
            self.holds += 1;
            let id = self.holds;
            self.send(first.clone());
            self.held.push(Hold {
                custom,
                who: first,
                permit,
                id,
            });
            return Some(id);
        }
    }

    /// The slot held for `who`, if any.
    fn take_hold(&mut self, custom: bool, who: &Who) -> Option<OwnedSemaphorePermit> {
        let at = self
            .held
            .iter()
            .position(|h| h.custom == custom && h.who == *who)?;
        Some(self.held.swap_remove(at).permit)
    }
}

/// Waits out hold `hold` and each that follows it: a slot whose woken
/// ConfigMap did not take it within [`HOLD`] goes to the next in turn, until
/// one takes it or nobody waits (then it is free).
async fn keep_handing_on(
    wakes: Arc<Mutex<Wakes>>,
    custom: bool,
    mut hold: Option<u64>,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    per_namespace: usize,
) {
    while let Some(id) = hold {
        tokio::time::sleep(HOLD).await;
        let mut w = wakes.lock().expect("uploads lock");
        let Some(at) = w.held.iter().position(|h| h.id == id) else {
            return;
        };
        let permit = w.held.swap_remove(at).permit;
        hold = w.hand_on(custom, permit, &counts, per_namespace);
    }
}

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
    wakes: Arc<Mutex<Wakes>>,
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
            wakes: Arc::default(),
        }
    }

    /// The ConfigMaps to look at again (their upload ended, or a slot they
    /// wait for is free), for the ConfigMap reconciler; a new call replaces
    /// the last one's stream.
    ///
    /// `alive` says whether a ConfigMap is still there to take a slot (the
    /// controller's cache): a freed slot is not held for one that is gone.
    pub fn wakes(
        &self,
        alive: impl Fn(&Who) -> bool + Send + Sync + 'static,
    ) -> impl Stream<Item = Who> + Send + 'static {
        let (tx, rx) = mpsc::channel(WAKES_WAITING);
        let mut w = self.wakes.lock().expect("uploads lock");
        w.tx = Some(tx);
        w.alive = Some(Box::new(alive));
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    /// `who` was looked at and starts no upload of `steps` now (its other
    /// upload still runs, the step failed before it started): a slot held
    /// for it goes on to the next in turn at once.
    pub fn decline(&self, who: &Who, steps: &[Step]) {
        let mut w = self.wakes.lock().expect("uploads lock");
        for custom in steps.iter().map(|s| *s == Step::DependencyTrackCustom) {
            if let Some(permit) = w.take_hold(custom, who) {
                // The old hold's timer finds it gone and stops; the new
                // hold gets a timer of its own.
                let hold = w.hand_on(
                    custom,
                    permit,
                    &self.custom_by_namespace,
                    self.per_namespace,
                );
                tokio::spawn(keep_handing_on(
                    self.wakes.clone(),
                    custom,
                    hold,
                    self.custom_by_namespace.clone(),
                    self.per_namespace,
                ));
            }
        }
    }

    /// `who` found no free slot for `step`: it is woken when one frees and
    /// its namespace's turn comes ([`Turns`]; once, however often it asks).
    pub fn wait_for_slot(&self, step: Step, who: Who) {
        let custom = step == Step::DependencyTrackCustom;
        let mut w = self.wakes.lock().expect("uploads lock");
        if w.queued.insert((custom, who.clone())) {
            if custom {
                w.custom.push(who);
            } else {
                w.central.push(who);
            }
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

    /// Starts `upload` for ConfigMap `who` if a slot is free (for a
    /// per-namespace upload, one its namespace may take); returns whether
    /// it started. When none is free nothing is kept (the BOM is not held
    /// in memory while waiting): the caller waits for a slot
    /// ([`Uploads::wait_for_slot`]).
    pub fn try_start<F>(&self, key: Key, who: &Who, upload: F) -> bool
    where
        F: Future<Output = Result<(), super::Error>> + Send + 'static,
    {
        let owner = who.0.as_str();
        let custom = key.2 == Step::DependencyTrackCustom;
        // The namespace's share is checked and taken under one lock, so
        // concurrent reconciles cannot both take the last place. A slot
        // held for `who` is its own; a slot held for another, nobody
        // else's.
        let mut w = self.wakes.lock().expect("uploads lock");
        let mut by_namespace = self.custom_by_namespace.lock().expect("uploads lock");
        if custom && by_namespace.get(owner).copied().unwrap_or(0) >= self.per_namespace {
            return false;
        }
        let Some(permit) = w
            .take_hold(custom, who)
            .or_else(|| self.slots(key.2).clone().try_acquire_owned().ok())
        else {
            return false;
        };
        if w.queued.remove(&(custom, who.clone())) {
            if custom {
                w.custom.remove(who);
            } else {
                w.central.remove(who);
            }
        }
        drop(w);
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
        let (wakes, who) = (self.wakes.clone(), who.clone());
        let (custom_counts, per_namespace) = (self.custom_by_namespace.clone(), self.per_namespace);
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
            // Its result is there; and the slot it held goes to the
            // namespace whose turn it is, held for the ConfigMap woken to
            // take it. If that one does not come for it (deleted meanwhile,
            // its reconcile slow), it goes on to the next in turn.
            let hold = {
                let mut w = wakes.lock().expect("uploads lock");
                w.send(who);
                w.hand_on(custom, permit, &custom_counts, per_namespace)
            };
            keep_handing_on(wakes, custom, hold, custom_counts, per_namespace).await;
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

    /// Whether an upload of `step` for `who` could start now: a slot is
    /// held for it, or free (and for a per-namespace upload, its namespace
    /// is under its share).
    pub fn has_free_slot(&self, step: Step, who: &Who) -> bool {
        let custom = step == Step::DependencyTrackCustom;
        let held = {
            let w = self.wakes.lock().expect("uploads lock");
            w.held.iter().any(|h| h.custom == custom && h.who == *who)
        };
        (held || self.slots(step).available_permits() > 0)
            && (!custom || self.namespace_may_start(&who.0))
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

    /// ConfigMap `n` of namespace `ns`.
    fn cm(ns: &str, n: &str) -> Who {
        (ns.into(), n.into())
    }

    #[tokio::test]
    async fn bounded_and_each_result_handed_out_once() {
        let u = Uploads::new(1, Duration::from_secs(5));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        assert!(u.try_start(key("a"), &cm("ns", "a"), async move {
            let _ = rx.await;
            Err(super::super::Error::Request("down".into()))
        }));
        assert_eq!(u.poll(&key("a")), Some(Outcome::Running));
        assert!(u.running_for("a", "f") && !u.running_for("a", "other"));
        // The only slot is taken: the next one does not start (and keeps nothing).
        assert!(!u.has_free_slot(Step::DependencyTrackDefault, &cm("ns", "any")));
        assert!(!u.try_start(key("b"), &cm("ns", "b"), async { Ok(()) }));
        // A per-namespace upload has slots of its own.
        let custom = (
            "c".to_string(),
            "f".to_string(),
            Step::DependencyTrackCustom,
        );
        assert!(u.has_free_slot(Step::DependencyTrackCustom, &cm("ns", "any")));
        assert!(u.try_start(custom, &cm("ns", "c"), std::future::pending()));
        assert!(!u.has_free_slot(Step::DependencyTrackCustom, &cm("ns", "any")));
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
            u.try_start(key("b"), &cm("ns", "b"), async { Ok(()) }),
            "the slot is free again"
        );
    }

    #[tokio::test]
    async fn one_namespace_cannot_hold_every_per_namespace_slot() {
        let u = Uploads::new(4, Duration::from_secs(5));
        let custom = |n: &str| (n.to_string(), "f".to_string(), Step::DependencyTrackCustom);
        // A namespace whose endpoint never answers takes half the slots.
        assert!(u.try_start(
            custom("slow-1"),
            &cm("slow", "slow-1"),
            std::future::pending()
        ));
        assert!(u.try_start(
            custom("slow-2"),
            &cm("slow", "slow-2"),
            std::future::pending()
        ));
        assert!(!u.has_free_slot(Step::DependencyTrackCustom, &cm("slow", "any")));
        assert!(!u.try_start(
            custom("slow-3"),
            &cm("slow", "slow-3"),
            std::future::pending()
        ));
        // Others still start.
        assert!(u.has_free_slot(Step::DependencyTrackCustom, &cm("other", "any")));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        assert!(
            u.try_start(custom("other-1"), &cm("other", "other-1"), async move {
                let _ = rx.await;
                Ok(())
            })
        );
        tx.send(()).unwrap();
        loop {
            match u.poll(&custom("other-1")) {
                Some(Outcome::Running) => tokio::task::yield_now().await,
                other => break assert_eq!(other, Some(Outcome::Success)),
            }
        }
        assert!(
            u.has_free_slot(Step::DependencyTrackCustom, &cm("other", "any")),
            "given back"
        );
        // The central uploads have slots of their own.
        assert!(u.has_free_slot(Step::DependencyTrackDefault, &cm("slow", "any")));
    }

    /// Starts an upload for `who` that ends (successfully) when the
    /// returned sender fires.
    fn held(u: &Uploads, key: Key, who: Who) -> tokio::sync::oneshot::Sender<()> {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        assert!(u.try_start(key, &who, async move {
            let _ = rx.await;
            Ok(())
        }));
        tx
    }

    fn custom_key(n: &str) -> Key {
        (n.to_string(), "f".to_string(), Step::DependencyTrackCustom)
    }

    /// Waits for the next wake (or fails after a second).
    async fn woken(wakes: &mut (impl Stream<Item = Who> + Unpin)) -> Who {
        use futures::StreamExt;
        tokio::time::timeout(Duration::from_secs(1), wakes.next())
            .await
            .expect("a wake within a second")
            .expect("the stream is open")
    }

    /// An upload that ends wakes its own ConfigMap and the first one
    /// waiting for a slot of its kind, each waiter once and in order;
    /// nobody else.
    #[tokio::test]
    async fn an_ended_upload_wakes_its_configmap_and_the_first_waiting() {
        use futures::{FutureExt, StreamExt};
        let u = Uploads::new(1, Duration::from_secs(5));
        let mut wakes = Box::pin(u.wakes(|_| true));
        let tx = held(&u, key("a"), cm("ns", "a"));
        for who in ["b", "b", "c", "b"] {
            u.wait_for_slot(Step::DependencyTrackDefault, cm("ns", who));
        }
        // A per-namespace waiter is not woken by a central slot.
        u.wait_for_slot(Step::DependencyTrackCustom, cm("other", "d"));
        assert!(wakes.next().now_or_never().is_none(), "nothing ended yet");
        tx.send(()).unwrap();
        assert_eq!(
            woken(&mut wakes).await,
            cm("ns", "a"),
            "its result is there"
        );
        assert_eq!(woken(&mut wakes).await, cm("ns", "b"), "the first waiting");
        assert!(
            wakes.next().now_or_never().is_none(),
            "one slot, one waiter woken"
        );
        // b takes the slot; when its upload ends, c (not b again) is next.
        assert!(u.try_start(key("b"), &cm("ns", "b"), async { Ok(()) }));
        assert_eq!(woken(&mut wakes).await, cm("ns", "b"));
        assert_eq!(woken(&mut wakes).await, cm("ns", "c"));
        assert!(wakes.next().now_or_never().is_none());
    }

    /// A freed per-namespace slot goes to the first waiter whose namespace
    /// may take one, not to one of a namespace already at its share.
    #[tokio::test]
    async fn a_freed_per_namespace_slot_skips_a_namespace_at_its_share() {
        use futures::{FutureExt, StreamExt};
        let u = Uploads::new(2, Duration::from_secs(5));
        let mut wakes = Box::pin(u.wakes(|_| true));
        let custom = custom_key;
        // "slow" holds its share (one of the two) for good.
        assert!(u.try_start(custom("s1"), &cm("slow", "s1"), std::future::pending()));
        let tx = held(&u, custom_key("q1"), cm("quick", "q1"));
        u.wait_for_slot(Step::DependencyTrackCustom, cm("slow", "s2"));
        u.wait_for_slot(Step::DependencyTrackCustom, cm("quick", "q2"));
        tx.send(()).unwrap();
        assert_eq!(woken(&mut wakes).await, cm("quick", "q1"));
        assert_eq!(
            woken(&mut wakes).await,
            cm("quick", "q2"),
            "slow is at its share"
        );
        assert!(wakes.next().now_or_never().is_none());
    }

    /// Waiting namespaces take turns: a namespace that queued many SBOMs
    /// first does not keep a later namespace's one SBOM behind them all.
    #[tokio::test]
    async fn waiting_namespaces_take_turns_for_a_freed_slot() {
        use futures::{FutureExt, StreamExt};
        let u = Uploads::new(1, Duration::from_secs(5));
        let mut wakes = Box::pin(u.wakes(|_| true));
        let tx = held(&u, key("a"), cm("busy", "a"));
        for n in ["b1", "b2", "b3"] {
            u.wait_for_slot(Step::DependencyTrackDefault, cm("busy", n));
        }
        u.wait_for_slot(Step::DependencyTrackDefault, cm("quiet", "q1"));
        u.wait_for_slot(Step::DependencyTrackDefault, cm("other", "o1"));
        tx.send(()).unwrap();
        assert_eq!(woken(&mut wakes).await, cm("busy", "a"));
        assert_eq!(
            woken(&mut wakes).await,
            cm("busy", "b1"),
            "busy's turn first"
        );
        // b1 takes the slot; when it ends the next namespace's turn comes.
        let mut order = Vec::new();
        let mut next = cm("busy", "b1");
        for _ in 0..4 {
            let tx = held(&u, key(&next.1), next.clone());
            tx.send(()).unwrap();
            assert_eq!(woken(&mut wakes).await, next, "its own result");
            next = woken(&mut wakes).await;
            order.push(next.1.clone());
        }
        assert_eq!(order, ["q1", "o1", "b2", "b3"]);
        assert!(wakes.next().now_or_never().is_none());
    }

    #[test]
    fn turns_go_round_the_namespaces_and_skip_those_that_may_not() {
        let mut t = Turns::default();
        for (ns, n) in [("a", "1"), ("a", "2"), ("b", "1"), ("c", "1"), ("a", "3")] {
            t.push(cm(ns, n));
        }
        assert_eq!(t.next(|_| true), Some(cm("a", "1")));
        assert_eq!(t.next(|ns| ns != "b"), Some(cm("c", "1")), "b may not");
        assert_eq!(t.next(|_| true), Some(cm("b", "1")));
        assert_eq!(t.next(|_| true), Some(cm("a", "2")));
        assert_eq!(t.next(|ns| ns != "a"), None);
        assert_eq!(t.next(|_| true), Some(cm("a", "3")));
        assert_eq!(t.next(|_| true), None);
        assert!(
            t.order.is_empty() && t.waiting.is_empty(),
            "nothing left behind"
        );
        // One that stops waiting leaves no entry to spend its namespace's
        // turn on, and a namespace with nobody left waiting has no turn.
        for (ns, n) in [("a", "1"), ("a", "2"), ("b", "1")] {
            t.push(cm(ns, n));
        }
        t.remove(&cm("a", "1"));
        t.remove(&cm("b", "1"));
        assert_eq!(t.order, ["a"]);
        assert_eq!(t.next(|_| true), Some(cm("a", "2")));
        assert!(t.order.is_empty() && t.waiting.is_empty());
    }

    /// A freed slot is held for the ConfigMap woken to take it: nobody else
    /// takes it meanwhile (a new ConfigMap, a waiter's 30 s look). A waiter
    /// no longer in the controller's cache is passed over; one that does not
    /// come within HOLD loses the slot to the next in turn; one that takes
    /// it keeps it, and nobody else is woken until its upload ends. (The
    /// clock is paused: time only moves when every task waits on it.)
    #[tokio::test(start_paused = true)]
    async fn a_freed_slot_is_held_for_the_woken_and_goes_on_if_it_does_not_come() {
        use futures::{FutureExt, StreamExt};
        // The next wake, or None when none comes in a minute (of paused time).
        async fn next(wakes: &mut (impl Stream<Item = Who> + Unpin)) -> Option<Who> {
            tokio::time::timeout(Duration::from_secs(60), wakes.next())
                .await
                .ok()
                .flatten()
        }
        let u = Uploads::new(1, Duration::from_secs(5));
        let mut wakes = Box::pin(u.wakes(|(_, name): &Who| name != "deleted"));
        let tx = held(&u, key("a"), cm("ns", "a"));
        for n in ["deleted", "slow", "x", "y"] {
            u.wait_for_slot(Step::DependencyTrackDefault, cm("ns", n));
        }
        let start = tokio::time::Instant::now();
        tx.send(()).unwrap();
        assert_eq!(next(&mut wakes).await, Some(cm("ns", "a")));
        assert_eq!(
            next(&mut wakes).await,
            Some(cm("ns", "slow")),
            "the deleted one is passed over"
        );
        // Held for "slow": a newcomer finds no slot; "slow" would.
        let central = Step::DependencyTrackDefault;
        assert!(!u.has_free_slot(central, &cm("ns", "new")));
        assert!(!u.try_start(key("new"), &cm("ns", "new"), async { Ok(()) }));
        assert!(u.has_free_slot(central, &cm("ns", "slow")));
        // "slow" never comes: after HOLD the slot goes on to x.
        assert_eq!(next(&mut wakes).await, Some(cm("ns", "x")));
        assert!(start.elapsed() >= HOLD, "x was woken after HOLD");
        assert!(
            !u.has_free_slot(central, &cm("ns", "slow")),
            "no longer its"
        );
        // x takes it: y is not woken however long x's upload runs...
        let tx = held(&u, key("x"), cm("ns", "x"));
        tokio::time::advance(HOLD * 10).await;
        tokio::task::yield_now().await;
        assert!(
            wakes.next().now_or_never().is_none(),
            "y woken while x holds the slot"
        );
        // ...only when it ends; and the slot is free once y takes and
        // ends its upload with nobody waiting.
        tx.send(()).unwrap();
        assert_eq!(next(&mut wakes).await, Some(cm("ns", "x")));
        assert_eq!(next(&mut wakes).await, Some(cm("ns", "y")));
        let tx = held(&u, key("y"), cm("ns", "y"));
        tx.send(()).unwrap();
        assert_eq!(next(&mut wakes).await, Some(cm("ns", "y")));
        assert!(u.try_start(key("new"), &cm("ns", "new"), async { Ok(()) }));
    }

    /// A woken ConfigMap that starts no upload says so, and the slot held
    /// for it goes on at once (no HOLD to wait out).
    #[tokio::test]
    async fn a_declined_slot_goes_on_at_once() {
        use futures::{FutureExt, StreamExt};
        let u = Uploads::new(1, Duration::from_secs(5));
        let mut wakes = Box::pin(u.wakes(|_| true));
        let tx = held(&u, key("a"), cm("ns", "a"));
        u.wait_for_slot(Step::DependencyTrackDefault, cm("ns", "busy"));
        u.wait_for_slot(Step::DependencyTrackDefault, cm("other", "b"));
        tx.send(()).unwrap();
        assert_eq!(woken(&mut wakes).await, cm("ns", "a"));
        assert_eq!(woken(&mut wakes).await, cm("ns", "busy"));
        // A decline for the other kind of slot changes nothing.
        u.decline(&cm("ns", "busy"), &[Step::DependencyTrackCustom]);
        assert!(wakes.next().now_or_never().is_none());
        u.decline(&cm("ns", "busy"), &[Step::DependencyTrackDefault]);
        assert_eq!(woken(&mut wakes).await, cm("other", "b"));
        assert!(u.try_start(key("b"), &cm("other", "b"), async { Ok(()) }));
    }

    /// A ConfigMap waiting for both kinds of slot keeps its place for one
    /// kind when it starts an upload of the other.
    #[tokio::test]
    async fn a_place_is_kept_per_kind_of_slot() {
        use futures::{FutureExt, StreamExt};
        let u = Uploads::new(1, Duration::from_secs(5));
        let mut wakes = Box::pin(u.wakes(|_| true));
        let custom = custom_key;
        let tx = held(&u, key("a"), cm("ns", "a"));
        u.wait_for_slot(Step::DependencyTrackDefault, cm("ns", "x"));
        // x's per-namespace upload starts (never ends): its central place stays.
        assert!(u.try_start(custom("x"), &cm("ns", "x"), std::future::pending()));
        tx.send(()).unwrap();
        assert_eq!(woken(&mut wakes).await, cm("ns", "a"));
        assert_eq!(
            woken(&mut wakes).await,
            cm("ns", "x"),
            "still waiting for a central slot"
        );
        assert!(wakes.next().now_or_never().is_none());
    }
}
