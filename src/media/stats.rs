//! The media engine's counters, owned by the app (one set per server, so
//! two servers in one process, as in tests, never mix their figures).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

/// GStreamer error domains, as counted in [`MediaStats::pipeline_errors`].
const ERROR_KINDS: [&str; 5] = ["core", "library", "resource", "stream", "other"];

#[derive(Default)]
pub struct MediaStats {
    live: AtomicU64,
    errors: [AtomicU64; 5],
    reconnects: AtomicU64,
    /// Where a failing pipeline's graph is dumped (DOT) when debug logging is on.
    dot_dir: RwLock<Option<PathBuf>>,
}

impl MediaStats {
    /// Pipelines built and not yet torn down to NULL.
    pub fn live_pipelines(&self) -> u64 {
        self.live.load(Ordering::SeqCst)
    }

    /// Failed pipelines so far, by the error domain of their first error.
    pub fn pipeline_errors(&self) -> [(&'static str, u64); 5] {
        std::array::from_fn(|i| (ERROR_KINDS[i], self.errors[i].load(Ordering::Relaxed)))
    }

    /// Live sources that dropped and were reconnected (or replaced by a backup).
    pub fn reconnects_total(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Sets the directory for DOT dumps of failing pipelines (debug level only).
    pub fn set_dot_dump_dir(&self, dir: Option<PathBuf>) {
        *self.dot_dir.write() = dir;
    }

    pub(super) fn dot_dir(&self) -> Option<PathBuf> {
        self.dot_dir.read().clone()
    }

    pub(super) fn pipeline_built(&self) {
        self.live.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn pipeline_freed(&self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }

    pub(super) fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_error(&self, err: &gst::glib::Error) {
        let i = if err.is::<gst::CoreError>() {
            0
        } else if err.is::<gst::LibraryError>() {
            1
        } else if err.is::<gst::ResourceError>() {
            2
        } else if err.is::<gst::StreamError>() {
            3
        } else {
            4
        };
        self.errors[i].fetch_add(1, Ordering::Relaxed);
    }
}
