//! Memory under load: the process's resident size is watched; above a high
//! mark (by default 80% of the container's memory limit) posts are answered
//! 503 with `Retry-After` until it falls again, and memory freed after a
//! burst is given back to the system (glibc keeps freed pages of its
//! per-thread arenas otherwise; bench/README.md has the measurements).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the resident size is read.
const TICK: Duration = Duration::from_millis(250);
/// Freed memory is given back at most this often, and only when the
/// resident size is this far above the lowest seen.
const TRIM_EVERY: Duration = Duration::from_secs(2);
const TRIM_ABOVE: u64 = 1024 * 1024;

pub struct Memory {
    /// Resident bytes above which posts are shed (`u64::MAX`: never).
    high: u64,
    shedding: AtomicBool,
    watching: AtomicBool,
    /// Resident bytes at the last reading.
    pub resident: AtomicU64,
}

impl Memory {
    /// `high`: resident bytes above which posts are shed; 0 for 80% of the
    /// container's memory limit, or never when there is none.
    pub fn new(high: u64) -> Arc<Self> {
        let high = match high {
            0 => container_limit().map_or(u64::MAX, |l| l / 10 * 8),
            h => h,
        };
        Arc::new(Self {
            high,
            shedding: AtomicBool::new(false),
            watching: AtomicBool::new(false),
            resident: AtomicU64::new(0),
        })
    }

    /// The high mark in bytes, if any.
    pub fn high(&self) -> Option<u64> {
        (self.high != u64::MAX).then_some(self.high)
    }

    /// Whether posts are being shed now.
    pub fn shedding(&self) -> bool {
        self.shedding.load(Ordering::Relaxed)
    }

    /// Starts watching (once) on the current Tokio runtime, if there is one.
    pub fn watch(self: Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.watching.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = Arc::downgrade(&self);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut lowest = u64::MAX;
            let mut last_trim = tokio::time::Instant::now();
            loop {
                tick.tick().await;
                let Some(me) = me.upgrade() else { return };
                let Some(rss) = resident() else { return };
                lowest = lowest.min(rss);
                if rss > lowest + TRIM_ABOVE && last_trim.elapsed() >= TRIM_EVERY {
                    give_back();
                    last_trim = tokio::time::Instant::now();
                }
                me.resident.store(rss, Ordering::Relaxed);
                me.shedding.store(rss > me.high, Ordering::Relaxed);
            }
        });
    }
}

/// The process's resident set size in bytes.
pub fn resident() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// The memory limit of the process's cgroup (v2, then v1), if any.
pub fn container_limit() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let v2 = read("/sys/fs/cgroup/memory.max").and_then(|s| s.trim().parse::<u64>().ok());
    let v1 = || {
        read("/sys/fs/cgroup/memory/memory.limit_in_bytes")
            .and_then(|s| s.trim().parse::<u64>().ok())
            // v1 reports "no limit" as a number near 2^63.
            .filter(|&l| l < 1 << 60)
    };
    v2.or_else(v1)
}

/// Gives freed heap pages back to the system.
fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}
