//! When a source's streams are known well enough to choose the output
//! side: at once when every source pad is typed, or after the streams
//! found so far stayed the same for a settle period whose length depends
//! on what is still missing. [`super::running::Running::streams`] asks
//! [`Settle::check`] each time the source side changes.

use std::time::{Duration, Instant};

use super::pipeline::Opened;
use super::SourceStreams;

/// After the last new source pad, how long to wait for more before deciding.
const PAD_SETTLE: Duration = Duration::from_millis(400);
/// The same while some stream found so far is not typed yet.
const UNTYPED_SETTLE: Duration = Duration::from_secs(3);
/// The same while no video has been typed but one exists or may still
/// appear: a preview without its picture is the worst outcome, and a live
/// stream joined mid-GOP types its video only at the next keyframe (the
/// parser has no SPS before it).
const VIDEO_SETTLE: Duration = Duration::from_secs(10);

/// The wait for a source's streams to settle.
#[derive(Default)]
pub(super) struct Settle {
    /// Streams found, whether all were typed, and since when, as last seen.
    from: Option<(usize, bool, Instant)>,
}

impl Settle {
    /// The source's streams if they are known or have settled; otherwise
    /// notes what was found (lengthening the holds while video may still
    /// come) and returns `None`.
    pub(super) fn check(&mut self, o: &Opened) -> Option<SourceStreams> {
        if o.streams_known() {
            tracing::debug!(state = %o.pad_state(), "streams known");
            return Some(o.streams());
        }
        if o.any_stream() {
            let found = o.streams();
            // Only the first video and the first audio stream are
            // used: once both are typed, nothing that appears later
            // can change the decision. (A demuxer inside parsebin,
            // such as tsdemux, may never signal no-more-pads.)
            if found.video.is_some() && found.audio.is_some() {
                return Some(found);
            }
            let n = found.video.is_some() as usize + found.audio.is_some() as usize;
            let typed = o.streams_typed();
            let wait_for_video = found.video.is_none() && (!typed || o.video_stream_seen());
            if wait_for_video {
                o.lengthen_holds();
            }
            // The wait restarts whenever what was found changes, so
            // a decision always follows a whole settle period of
            // the same streams in the same state.
            match self.from {
                Some((seen, was_typed, at)) if seen == n && was_typed == typed => {
                    // Streams still being typed (rtspsrc adds its
                    // pads one by one) get longer to show up.
                    let settle = if wait_for_video {
                        VIDEO_SETTLE
                    } else if typed {
                        PAD_SETTLE
                    } else {
                        UNTYPED_SETTLE
                    };
                    if at.elapsed() >= settle {
                        tracing::debug!(state = %o.pad_state(), settle_ms = settle.as_millis() as u64, "streams settled");
                        return Some(o.streams());
                    }
                }
                _ => self.from = Some((n, typed, Instant::now())),
            }
        }
        None
    }
}
