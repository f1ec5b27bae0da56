//! From a rendition's muxer to its fan-out: the muxer's bytes are cut into
//! chunks, and each header change is handed to the fan-out where it takes
//! effect in the stream, so viewers get it right before the media it
//! describes.
//!
//! ```text
//! muxer -> appsink -> Publisher::data -> Splitter -> [Header | Chunk] -> Fanout
//! muxer's video input caps -> Publisher::video_config -> Splitter (new avcC)
//! ```

use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::Mutex;

use super::container::{Part, Splitter};
use super::fanout::Fanout;
use crate::media::Format;

pub(super) struct Publisher {
    fanout: Weak<Fanout>,
    /// The splitter, and a buffer for its parts (kept to reuse).
    splitter: Mutex<(Splitter, Vec<Part>)>,
}

impl Publisher {
    pub(super) fn new(format: Format, fanout: &Arc<Fanout>) -> Arc<Publisher> {
        Arc::new(Publisher {
            fanout: Arc::downgrade(fanout),
            splitter: Mutex::new((Splitter::new(format), Vec::new())),
        })
    }

    /// One muxer output buffer (streaming thread; never blocks).
    pub(super) fn data(&self, data: &[u8]) {
        let Some(fanout) = self.fanout.upgrade() else {
            return;
        };
        let mut guard = self.splitter.lock();
        let (splitter, parts) = &mut *guard;
        splitter.push_parts(data, parts);
        for part in parts.drain(..) {
            match part {
                Part::Header(h) => fanout.set_header(h),
                Part::Chunk(c) => fanout.publish(c),
            }
        }
    }

    /// The video reaching the muxer has a new configuration from its
    /// `at`-th keyframe on (streaming thread, before that keyframe reaches
    /// the muxer).
    pub(super) fn video_config(&self, at: u64, codec_data: Bytes) {
        tracing::debug!(
            keyframe = at,
            "the video configuration changed: a new header follows"
        );
        self.splitter.lock().0.set_video_config(at, codec_data);
    }
}
