//! The ConfigMap versions this process wrote over (patched or deleted).
//!
//! A ConfigMap is read from the API server's watch cache, which can trail
//! our own last write by a few milliseconds. When a reconcile follows
//! straight on the one that wrote (an upload that ends wakes its
//! ConfigMap at once), that read can still be the version before the write
//! and say Lagoon core was not yet published to: publishing again on it
//! would send the message twice (seen in CI: the Dependency-Track outage
//! test got two messages). A version listed here is known to be old, so
//! the reconciler reads the ConfigMap again from etcd instead.
//!
//! Only the last few versions per ConfigMap are kept, and only for
//! [`KEEP`]: a watch cache trails by milliseconds, not minutes, and
//! ConfigMaps that leave the watch (processed, burnt) are never looked at
//! again to clear their entry.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a written-over version is remembered.
pub const KEEP: Duration = Duration::from_secs(300);

/// Versions remembered per ConfigMap (one per write; a reconcile writes
/// once, so a few cover a ConfigMap retried while the cache trails).
const PER_CONFIGMAP: usize = 4;

#[derive(Default)]
pub struct Written {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// By uid: the versions written over, oldest first.
    by_uid: HashMap<String, VecDeque<String>>,
    /// When each (uid, version) was written over, oldest first.
    order: VecDeque<(Instant, String, String)>,
}

impl Written {
    /// This process wrote over `resource_version` of ConfigMap `uid` (or
    /// may have: a write whose answer was lost counts).
    pub fn wrote_over(&self, uid: &str, resource_version: &str) {
        self.wrote_over_at(uid, resource_version, Instant::now());
    }

    fn wrote_over_at(&self, uid: &str, resource_version: &str, now: Instant) {
        if uid.is_empty() || resource_version.is_empty() {
            return;
        }
        let mut w = self.inner.lock().expect("written lock");
        w.expire(now);
        let versions = w.by_uid.entry(uid.to_string()).or_default();
        if versions.iter().any(|v| v == resource_version) {
            return;
        }
        if versions.len() == PER_CONFIGMAP {
            versions.pop_front();
        }
        versions.push_back(resource_version.to_string());
        w.order
            .push_back((now, uid.to_string(), resource_version.to_string()));
    }

    /// Whether `resource_version` of ConfigMap `uid` is one this process
    /// wrote over: a read that returned it is stale.
    pub fn is_superseded(&self, uid: &str, resource_version: &str) -> bool {
        self.is_superseded_at(uid, resource_version, Instant::now())
    }

    fn is_superseded_at(&self, uid: &str, resource_version: &str, now: Instant) -> bool {
        let mut w = self.inner.lock().expect("written lock");
        w.expire(now);
        w.by_uid
            .get(uid)
            .is_some_and(|vs| vs.iter().any(|v| v == resource_version))
    }

    /// How many versions are remembered.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("written lock").order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn expire(&mut self, now: Instant) {
        while let Some((at, ..)) = self.order.front() {
            if now.duration_since(*at) < KEEP {
                break;
            }
            let (_, uid, rv) = self.order.pop_front().expect("front exists");
            if let Some(vs) = self.by_uid.get_mut(&uid) {
                vs.retain(|v| *v != rv);
                if vs.is_empty() {
                    self.by_uid.remove(&uid);
                }
            }
        }
        // Versions dropped per ConfigMap (over PER_CONFIGMAP) leave their
        // entry in `order` until it expires: at most KEEP's worth of writes.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_written_over_is_stale_and_others_are_not() {
        let w = Written::default();
        w.wrote_over("u1", "10");
        assert!(w.is_superseded("u1", "10"));
        assert!(!w.is_superseded("u1", "11"), "the version our write made");
        assert!(!w.is_superseded("u2", "10"), "another ConfigMap");
        // Nothing is recorded without a uid or version.
        w.wrote_over("", "10");
        w.wrote_over("u3", "");
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn versions_are_forgotten_after_keep_and_bounded_per_configmap() {
        let w = Written::default();
        let t0 = Instant::now();
        for rv in 1..=6 {
            w.wrote_over_at("u", &rv.to_string(), t0);
        }
        // The last PER_CONFIGMAP versions are kept.
        assert!(!w.is_superseded_at("u", "1", t0));
        assert!(!w.is_superseded_at("u", "2", t0));
        for rv in 3..=6 {
            assert!(w.is_superseded_at("u", &rv.to_string(), t0));
        }
        w.wrote_over_at("v", "1", t0 + KEEP / 2);
        let later = t0 + KEEP;
        assert!(!w.is_superseded_at("u", "6", later), "expired");
        assert!(w.is_superseded_at("v", "1", later), "not yet");
        assert_eq!(w.len(), 1, "expired entries are dropped");
        assert!(!w.is_superseded_at("v", "1", t0 + KEEP / 2 + KEEP));
        assert!(w.is_empty());
    }

    #[test]
    fn the_same_version_twice_is_one_entry() {
        let w = Written::default();
        w.wrote_over("u", "7");
        w.wrote_over("u", "7");
        assert_eq!(w.len(), 1);
    }
}
