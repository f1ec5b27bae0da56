//! Process memory: RSS sampled once a second (sysinfo), classified against
//! the warning and critical thresholds, and handed back to the OS after
//! teardown. glibc keeps freed memory in per-thread arenas and every
//! pipeline brings new streaming threads, so without a bound on arenas and a
//! trim after teardown RSS ratchets up session after session.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

/// glibc malloc arenas at most: streaming threads share a few arenas
/// instead of each keeping its own high-water mark.
pub const MALLOC_ARENA_MAX: i32 = 2;
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryStatus {
    Ok,
    Warning,
    Critical,
}

impl MemoryStatus {
    fn from_u8(v: u8) -> Self {
        match v {
            2 => MemoryStatus::Critical,
            1 => MemoryStatus::Warning,
            _ => MemoryStatus::Ok,
        }
    }
}

/// JSON shape shared by status and health: `{status, rssBytes, warningBytes, criticalBytes}`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryReport {
    pub status: MemoryStatus,
    pub rss_bytes: u64,
    pub warning_bytes: u64,
    pub critical_bytes: u64,
}

/// The latest sample and the thresholds it is judged by.
pub struct MemoryMonitor {
    warning: u64,
    critical: u64,
    rss: AtomicU64,
    status: AtomicU8,
    /// CPU usage of this process in percent of one core, times 100.
    cpu_centi: AtomicU64,
}

impl MemoryMonitor {
    pub fn new(warning: u64, critical: u64) -> Arc<Self> {
        let m = Arc::new(Self {
            warning,
            critical,
            rss: AtomicU64::new(0),
            status: AtomicU8::new(0),
            cpu_centi: AtomicU64::new(0),
        });
        m.record(current_rss());
        m
    }

    /// Classifies a sample; logs once per threshold crossing.
    pub fn record(&self, rss: u64) -> MemoryStatus {
        self.rss.store(rss, Ordering::Relaxed);
        let status = if rss >= self.critical {
            MemoryStatus::Critical
        } else if rss >= self.warning {
            MemoryStatus::Warning
        } else {
            MemoryStatus::Ok
        };
        let before = MemoryStatus::from_u8(self.status.swap(status as u8, Ordering::Relaxed));
        if before != status {
            match status {
                MemoryStatus::Critical => tracing::error!(
                    rss_bytes = rss,
                    critical_bytes = self.critical,
                    "memory critical: new sessions are refused"
                ),
                MemoryStatus::Warning => tracing::warn!(
                    rss_bytes = rss,
                    warning_bytes = self.warning,
                    "memory above warning threshold: the most expensive profile is downgraded"
                ),
                MemoryStatus::Ok => {
                    tracing::info!(rss_bytes = rss, "memory back below warning threshold")
                }
            }
        }
        status
    }

    pub fn status(&self) -> MemoryStatus {
        MemoryStatus::from_u8(self.status.load(Ordering::Relaxed))
    }

    pub fn rss(&self) -> u64 {
        self.rss.load(Ordering::Relaxed)
    }

    pub fn cpu_percent(&self) -> f64 {
        self.cpu_centi.load(Ordering::Relaxed) as f64 / 100.0
    }

    pub fn report(&self) -> MemoryReport {
        MemoryReport {
            status: self.status(),
            rss_bytes: self.rss(),
            warning_bytes: self.warning,
            critical_bytes: self.critical,
        }
    }

    /// Samples RSS and CPU every second until the process ends.
    pub fn spawn_sampler(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let pid = sysinfo::Pid::from_u32(std::process::id());
            let mut sys = sysinfo::System::new();
            let kind = sysinfo::ProcessRefreshKind::nothing()
                .with_memory()
                .with_cpu();
            let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { break };
                sys.refresh_processes_specifics(
                    sysinfo::ProcessesToUpdate::Some(&[pid]),
                    true,
                    kind,
                );
                if let Some(p) = sys.process(pid) {
                    me.cpu_centi
                        .store((p.cpu_usage() as f64 * 100.0) as u64, Ordering::Relaxed);
                    me.record(p.memory());
                } else {
                    me.record(current_rss());
                }
            }
        });
    }
}

/// Resident set size of this process in bytes (from /proc; 0 if unknown).
pub fn current_rss() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(4096) as u64
}

/// Bounds glibc's arenas; call once at start-up before threads are spawned.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator tunables.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENA_MAX);
    }
}

/// Returns freed heap memory to the OS (after a pipeline is torn down).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_classify_samples() {
        let m = MemoryMonitor::new(100, 200);
        assert_eq!(m.record(50), MemoryStatus::Ok);
        assert_eq!(m.record(150), MemoryStatus::Warning);
        assert_eq!(m.record(250), MemoryStatus::Critical);
        assert_eq!(m.report().rss_bytes, 250);
        assert_eq!(m.record(10), MemoryStatus::Ok);
        assert!(current_rss() > 0);
    }
}
