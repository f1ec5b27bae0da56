//! Health and readiness: what is checked, and the cache that keeps the
//! expensive checks (GStreamer registry, data-dir write probe, disk space)
//! off the request path. A background task refreshes them every few seconds.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::RwLock;
use serde::Serialize;

use crate::memory::{MemoryReport, MemoryStatus};
use crate::AppState;

pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// Free disk below this makes the disk check degraded.
pub const LOW_DISK_BYTES: u64 = 512 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Healthy,
    Degraded,
    Unhealthy,
}

/// `services.encoders`: degraded while a profile asks for an encoder that
/// is not available (its renditions run on x264) or one it would use
/// failed lately. A missing x264enc makes the GStreamer service unhealthy
/// already; here everything short of the asked-for encoders is degraded.
#[derive(Debug, Clone, Serialize)]
pub struct EncodersHealth {
    pub status: Status,
    #[serde(flatten)]
    pub report: crate::encoders::EncodersReport,
}

impl EncodersHealth {
    pub fn of(report: crate::encoders::EncodersReport) -> EncodersHealth {
        let ok =
            !report.available.is_empty() && report.missing.is_empty() && report.failed.is_empty();
        EncodersHealth {
            status: if ok {
                Status::Healthy
            } else {
                Status::Degraded
            },
            report,
        }
    }
}

/// Results of the checks that touch the system, refreshed in the background.
#[derive(Debug, Clone)]
pub struct Checks {
    pub gstreamer_version: String,
    pub missing_elements: Vec<String>,
    pub data_dir_writable: bool,
    pub disk_available: Option<u64>,
    pub at: Instant,
}

pub struct HealthCache {
    checks: RwLock<Checks>,
    started: Instant,
}

impl HealthCache {
    pub fn new(state_dir: &std::path::Path) -> Arc<Self> {
        Arc::new(Self {
            checks: RwLock::new(run_checks(state_dir)),
            started: Instant::now(),
        })
    }

    pub fn checks(&self) -> Checks {
        self.checks.read().clone()
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn spawn_refresher(self: &Arc<Self>, data_dir: std::path::PathBuf) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { break };
                let dir = data_dir.clone();
                if let Ok(c) = tokio::task::spawn_blocking(move || run_checks(&dir)).await {
                    *me.checks.write() = c;
                }
            }
        });
    }
}

fn run_checks(data_dir: &std::path::Path) -> Checks {
    Checks {
        gstreamer_version: crate::media::gstreamer_version(),
        missing_elements: crate::media::elements::missing_elements()
            .into_iter()
            .map(String::from)
            .collect(),
        data_dir_writable: crate::catalog::dir_writable(data_dir),
        disk_available: disk_available(data_dir),
        at: Instant::now(),
    }
}

fn disk_available(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// Reasons `/ready` is 503; empty when ready.
pub fn not_ready_reasons(state: &AppState) -> Vec<String> {
    let mut reasons = Vec::new();
    if state.shutdown.is_shutting_down() {
        reasons.push("shutting_down".to_string());
    }
    if state.memory.status() == MemoryStatus::Critical {
        reasons.push("memory_critical".to_string());
    }
    let checks = state.health.checks();
    if !checks.missing_elements.is_empty() {
        reasons.push(format!(
            "gstreamer_elements_missing: {}",
            checks.missing_elements.join(", ")
        ));
    }
    if !checks.data_dir_writable {
        reasons.push("data_dir_not_writable".to_string());
    }
    // No new encoder could start and nobody more can wait: a load balancer
    // should send new channels elsewhere (joins of running renditions
    // still succeed here).
    if state.pool.snapshot().saturated {
        reasons.push("saturated".to_string());
    }
    reasons
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GstreamerHealth {
    pub status: Status,
    pub version: String,
    pub missing_elements: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TranscodingHealth {
    pub status: Status,
    pub active_sessions: usize,
    pub max_concurrent: usize,
    pub queued: usize,
}

/// `services.memory`: one status like every other service, plus the
/// threshold level (`ok`, `warning`, `critical`) the sample falls in.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryHealth {
    pub status: Status,
    pub level: MemoryStatus,
    pub rss_bytes: u64,
    pub warning_bytes: u64,
    pub critical_bytes: u64,
}

impl MemoryHealth {
    fn new(status: Status, report: MemoryReport) -> Self {
        Self {
            status,
            level: report.status,
            rss_bytes: report.rss_bytes,
            warning_bytes: report.warning_bytes,
            critical_bytes: report.critical_bytes,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuHealth {
    pub usage_percent: f64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CatalogHealth {
    pub status: Status,
    pub streams: usize,
    pub writable: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskHealth {
    pub status: Status,
    pub available_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Services {
    pub gstreamer: GstreamerHealth,
    pub transcoding: TranscodingHealth,
    pub memory: MemoryHealth,
    pub cpu: CpuHealth,
    pub catalog: CatalogHealth,
    pub disk: DiskHealth,
    pub encoders: EncodersHealth,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthReport {
    pub status: Status,
    pub timestamp: String,
    pub version: &'static str,
    pub uptime_seconds: u64,
    pub response_time_ms: f64,
    pub services: Services,
}

/// The `/health` document; reads only cached or atomic values.
pub fn report(state: &AppState) -> HealthReport {
    let t0 = Instant::now();
    let checks = state.health.checks();
    let pool = state.pool.snapshot();
    let mem = state.memory.report();
    let gst_status = if checks.missing_elements.is_empty() {
        Status::Healthy
    } else {
        Status::Unhealthy
    };
    let mem_status = match mem.status {
        MemoryStatus::Ok => Status::Healthy,
        MemoryStatus::Warning => Status::Degraded,
        MemoryStatus::Critical => Status::Unhealthy,
    };
    let transcoding_status = if state.shutdown.is_shutting_down() {
        Status::Unhealthy
    } else if pool.saturated || (pool.transcodes >= pool.max_transcodes && !pool.queue.is_empty()) {
        Status::Degraded
    } else {
        Status::Healthy
    };
    let catalog_status = if checks.data_dir_writable {
        Status::Healthy
    } else {
        Status::Unhealthy
    };
    let disk_status = match checks.disk_available {
        Some(b) if b < LOW_DISK_BYTES => Status::Degraded,
        Some(_) => Status::Healthy,
        None => Status::Degraded,
    };
    let encoders = EncodersHealth::of(crate::encoders::table().report(&state.profiles));
    let all = [
        encoders.status,
        gst_status,
        mem_status,
        transcoding_status,
        catalog_status,
        disk_status,
    ];
    let status = if all.contains(&Status::Unhealthy) {
        Status::Unhealthy
    } else if all.contains(&Status::Degraded) {
        Status::Degraded
    } else {
        Status::Healthy
    };
    HealthReport {
        status,
        timestamp: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: state.health.uptime().as_secs(),
        response_time_ms: (t0.elapsed().as_secs_f64() * 1e6).round() / 1e3,
        services: Services {
            gstreamer: GstreamerHealth {
                status: gst_status,
                version: checks.gstreamer_version,
                missing_elements: checks.missing_elements,
            },
            transcoding: TranscodingHealth {
                status: transcoding_status,
                active_sessions: pool.transcodes + pool.remuxes,
                max_concurrent: pool.max_transcodes,
                queued: pool.queue.len(),
            },
            memory: MemoryHealth::new(mem_status, mem),
            cpu: CpuHealth {
                usage_percent: (state.memory.cpu_percent() * 10.0).round() / 10.0,
            },
            catalog: CatalogHealth {
                status: catalog_status,
                streams: state.catalog.len(),
                writable: checks.data_dir_writable,
            },
            disk: DiskHealth {
                status: disk_status,
                available_bytes: checks.disk_available,
            },
            encoders,
        },
    }
}
