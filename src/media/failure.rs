//! Words and pictures for a failing pipeline: the credential-free text of
//! a GStreamer error ([`describe_error`]) and, at debug level, a dump of
//! the pipeline graph ([`dump_dot`]).

use gst::prelude::*;

use super::shared::now_ms;
use super::stats::MediaStats;
use crate::redact;

/// Writes the pipeline graph to `<dot dir>/<pipeline>-<ms>.dot` off the runtime.
pub(super) fn dump_dot(pipeline: gst::Pipeline, stats: &MediaStats) {
    let Some(dir) = stats.dot_dir() else {
        return;
    };
    tokio::task::spawn_blocking(move || {
        let dot = pipeline.debug_to_dot_data(gst::DebugGraphDetails::all());
        let path = dir.join(format!("{}-{}.dot", pipeline.name(), now_ms()));
        let written = std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::write(&path, redact::redact_text(dot.as_str())));
        match written {
            Ok(()) => tracing::debug!(path = %path.display(), "pipeline graph dumped"),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not dump the pipeline graph")
            }
        }
    });
}

/// The text of a GStreamer error: its message and the last line of its
/// debug text, credential-free.
pub(super) fn describe_error(err: &gst::glib::Error, debug: Option<&str>) -> String {
    let mut text = err.message().to_string();
    if let Some(d) = debug {
        // The last line of GStreamer's debug text is usually the useful reason.
        if let Some(reason) = d.lines().map(str::trim).rfind(|l| !l.is_empty()) {
            let reason: String = reason.chars().take(300).collect();
            if !text.contains(&reason) {
                text = format!("{text} ({reason})");
            }
        }
    }
    redact::redact_text(&text)
}
