//! A rendition's video encoder: the first of the profile's choice that
//! builds, the watch on it (an error inside its bin, or no output for
//! [`ENCODER_SILENCE`]), the move to the next encoder without ending any
//! viewer, and the names status gives the encoder and its decoder.

use std::sync::Arc;
use std::time::Duration;

use gst::prelude::*;

use super::{Rendition, ENCODER_SILENCE};
use crate::encoders::bin::EncoderBin;
use crate::encoders::memory::{self, MemoryPath};
use crate::media::chains::{self, Encoded};
use crate::media::MediaError;

/// What a replacement video encoder branch is built from.
#[derive(Clone)]
pub(super) struct Rebuild {
    pub(super) pipeline: gst::glib::WeakRef<gst::Pipeline>,
    /// The raw video tee.
    pub(super) raw: gst::Element,
    /// The decoder expected to feed it (None: software, or a test source).
    pub(super) decoder: Option<String>,
    pub(super) live: bool,
}

/// The video encoder in use, for keyframe requests and status.
pub(super) struct Current {
    encoder: gst::glib::WeakRef<gst::Element>,
    candidate: crate::encoders::Candidate,
    memory: MemoryPath,
}

/// How often the no-output watchdog looks.
const WATCHDOG_PERIOD: Duration = Duration::from_millis(250);

impl Rendition {
    /// The video encoder branch on the first encoder of the profile's
    /// choice that builds (blocking thread).
    pub(super) fn first_video_encoder(
        &self,
        p: &gst::Pipeline,
        b: &Rebuild,
    ) -> Result<Encoded, MediaError> {
        let table = crate::encoders::table();
        let mut last = None;
        let mut failed: Option<String> = None;
        let decoder = b.decoder.as_deref();
        for c in table.order(self.profile.encoder_choice()) {
            match chains::video_encode(
                p,
                &b.raw,
                decoder,
                &self.profile,
                b.live,
                &self.counters,
                &c,
            ) {
                Ok(e) => {
                    // One that could not start (a session cap, a driver
                    // gone since the probe) is left alone like one that
                    // failed while running.
                    if let Some(from) = failed {
                        table.fell_back(&from, &c.name);
                    }
                    return Ok(e);
                }
                Err(e) => {
                    tracing::warn!(encoder = %c.name, error = %e, "encoder could not be set up; trying the next");
                    failed.get_or_insert_with(|| c.name.clone());
                    last = Some(e);
                }
            }
        }
        Err(last
            .unwrap_or_else(|| MediaError::SourceFailed("no H.264 encoder is available".into())))
    }

    /// Watches the video encoder branch `v`: its failure (an error inside
    /// it, or no output for [`ENCODER_SILENCE`]) moves the rendition to the
    /// next encoder.
    pub(super) fn arm(self: &Arc<Self>, v: &Encoded) {
        let (Some(bin), Some(c)) = (&v.bin, &v.candidate) else {
            return;
        };
        *self.current_encoder.lock() = v.encoder.clone().map(|encoder| Current {
            encoder,
            candidate: c.clone(),
            memory: v
                .memory
                .clone()
                .unwrap_or_else(|| memory::plan(None, c, |_| false)),
        });
        let weak = Arc::downgrade(self);
        let weak_bin = bin.downgrade();
        bin.on_failure(Box::new(move |why| {
            let (weak, weak_bin) = (weak.clone(), weak_bin.clone());
            // Off the streaming thread: replacing the branch changes states.
            let spawned = std::thread::Builder::new()
                .name("encoder-fallback".into())
                .spawn(move || {
                    if let (Some(r), Some(bin)) = (weak.upgrade(), weak_bin.upgrade()) {
                        r.fall_back(&bin, &why);
                    }
                });
            if spawned.is_err() {
                tracing::error!("no thread for an encoder fallback");
            }
        }));
        // x264 is the last resort: a slow x264 on a busy machine is left to
        // the channel's own stall timeout rather than ending the rendition.
        if c.name == crate::encoders::X264 && c.maker.is_none() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (weak_bin, activity) = (bin.downgrade(), bin.activity());
        rt.spawn(async move {
            loop {
                tokio::time::sleep(WATCHDOG_PERIOD).await;
                let Some(bin) = weak_bin.upgrade() else { break };
                if bin.failed() || bin.parent().is_none() {
                    break;
                }
                if activity.silent_ms() >= ENCODER_SILENCE.as_millis() as u64 {
                    bin.fail(format!("no output for {} s", ENCODER_SILENCE.as_secs()));
                    break;
                }
            }
        });
    }

    /// Replaces the failed encoder branch `failed` by the next encoder
    /// (finally x264) without ending any viewer: the outputs keep their
    /// tee, and the new encoder starts at a keyframe. Blocking thread.
    fn fall_back(self: &Arc<Self>, failed: &EncoderBin, why: &str) {
        let mut graph = self.graph.lock();
        let Some(rebuild) = graph.rebuild.clone() else {
            return;
        };
        let Some(p) = rebuild.pipeline.upgrade() else {
            return;
        };
        let Some(v) = graph.encoded[0].as_mut() else {
            return;
        };
        if v.bin.as_ref() != Some(failed) {
            return;
        }
        let from = v
            .candidate
            .as_ref()
            .map(|c| c.name.clone())
            .unwrap_or_default();
        let table = crate::encoders::table();
        let next = table
            .order(self.profile.encoder_choice())
            .into_iter()
            .find(|c| c.name != from);
        let Some(next) = next else {
            tracing::error!(encoder = %from, reason = %why, quality = %self.key.quality,
                "the encoder failed and no other is left: the rendition ends");
            drop(graph);
            self.finish(crate::media::EndReason::SourceError);
            return;
        };
        table.fell_back(&from, &next.name);
        tracing::warn!(from = %from, to = %next.name, reason = %why, quality = %self.key.quality,
            "encoder failed: the rendition continues on the next encoder");
        let (raw, decoder) = (&rebuild.raw, rebuild.decoder.as_deref());
        let (profile, live, counters) = (&self.profile, rebuild.live, &self.counters);
        match chains::replace_video_encoder(&p, v, raw, decoder, profile, live, counters, &next) {
            Ok(()) => {
                let v = graph.encoded[0].as_ref().expect("the video branch");
                self.arm(v);
            }
            Err(e) => {
                tracing::error!(to = %next.name, error = %e, "the replacement encoder could not be set up: the rendition ends");
                drop(graph);
                self.finish(crate::media::EndReason::SourceError);
            }
        }
    }

    pub(super) fn encoder(&self) -> Option<gst::glib::WeakRef<gst::Element>> {
        self.current_encoder
            .lock()
            .as_ref()
            .map(|c| c.encoder.clone())
    }

    /// Status names of the decoder (`decoder`, the channel's) and of the
    /// encoder: a hardware one says `(system memory)` unless the pictures
    /// reached the encoder in GPU memory, as negotiated (before that, as
    /// planned).
    pub(super) fn names(&self, decoder: Option<String>) -> (Option<String>, Option<String>) {
        let current = self.current_encoder.lock();
        let Some(c) = current.as_ref() else {
            return (decoder, None);
        };
        let in_gpu = (c.encoder.upgrade())
            .and_then(|e| e.static_pad("sink"))
            .and_then(|pad| pad.current_caps())
            .map(|caps| memory::gpu_caps(&caps));
        let (dec, enc) = memory::status_names(decoder.as_deref(), &c.candidate, &c.memory, in_gpu);
        (dec, Some(enc))
    }
}
