//! One picture out of a running pipeline, for snapshots, without opening
//! anything new: a copy of the next decoded frame on a raw video tee, or
//! the latest keyframe that passed a compressed video tee (kept by a probe
//! that only holds a reference to it).
//!
//! ```text
//! es tee (sink pad)  -- probe: keep the last keyframe (+ the header buffers before it)
//! raw tee (sink pad) -- one-shot probe: copy the next frame, then remove itself
//! ```
//!
//! The probes hold no pipeline object; nothing here changes element states.

use std::sync::Arc;

use gst::prelude::*;
use parking_lot::Mutex;
use tokio::sync::oneshot;

/// A picture to encode: raw video, or a compressed keyframe preceded by
/// the stream's header buffers (parameter sets) when they travel apart.
#[derive(Debug, Clone)]
pub struct Frame {
    pub caps: gst::Caps,
    pub buffers: Vec<gst::Buffer>,
    /// `buffers` is one raw picture (no decoder needed).
    pub raw: bool,
}

/// Header buffers kept before a keyframe; parameter sets are a few.
const MAX_HEADERS: usize = 8;

#[derive(Default)]
struct Kept {
    frame: Option<Frame>,
    headers: Vec<gst::Buffer>,
    last_was_header: bool,
}

/// The latest keyframe of a compressed video stream.
#[derive(Default)]
pub struct KeyframeCache {
    kept: Mutex<Kept>,
    arrived: tokio::sync::Notify,
}

impl KeyframeCache {
    /// Keeps every keyframe that passes `tee`'s sink pad (a reference, not
    /// a copy). The probe lives as long as the pad.
    pub fn watch(self: &Arc<Self>, tee: &gst::Element) {
        let Some(pad) = tee.static_pad("sink") else {
            return;
        };
        let weak = Arc::downgrade(self);
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            let Some(cache) = weak.upgrade() else {
                return gst::PadProbeReturn::Remove;
            };
            if let Some(buffer) = info.buffer() {
                cache.offer(pad, buffer);
            }
            gst::PadProbeReturn::Ok
        });
    }

    fn offer(&self, pad: &gst::Pad, buffer: &gst::BufferRef) {
        let flags = buffer.flags();
        let key = !flags.intersects(gst::BufferFlags::DELTA_UNIT | gst::BufferFlags::GAP);
        let mut kept = self.kept.lock();
        // A parser flags whatever carries parameter sets as a header: a
        // whole keyframe access unit that holds them, or (one NAL per
        // buffer) the parameter sets alone, which then precede the keyframe.
        let header = flags.contains(gst::BufferFlags::HEADER);
        if header {
            if !kept.last_was_header {
                kept.headers.clear();
            }
            if kept.headers.len() < MAX_HEADERS {
                kept.headers.push(buffer.to_owned());
            }
        }
        kept.last_was_header = header;
        if !key {
            return;
        }
        let Some(caps) = pad.current_caps() else {
            return;
        };
        let mut buffers = kept.headers.clone();
        if !header {
            buffers.push(buffer.to_owned());
        }
        kept.frame = Some(Frame {
            caps,
            buffers,
            raw: false,
        });
        drop(kept);
        self.arrived.notify_waiters();
    }

    /// The latest keyframe, if one has passed.
    pub fn latest(&self) -> Option<Frame> {
        self.kept.lock().frame.clone()
    }

    /// The latest keyframe, or the next one to pass.
    pub async fn next(&self) -> Frame {
        loop {
            let arrived = self.arrived.notified();
            if let Some(f) = self.latest() {
                return f;
            }
            arrived.await;
        }
    }
}

/// A copy of the next picture that passes `tee`'s sink pad (raw video).
/// The probe removes itself once it has one.
pub fn next_raw(tee: &gst::Element) -> Option<oneshot::Receiver<Frame>> {
    let pad = tee.static_pad("sink")?;
    let (tx, rx) = oneshot::channel();
    let tx = Mutex::new(Some(tx));
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let (Some(buffer), Some(caps)) = (info.buffer(), pad.current_caps()) else {
            return gst::PadProbeReturn::Ok;
        };
        if buffer.flags().contains(gst::BufferFlags::GAP) {
            return gst::PadProbeReturn::Ok;
        }
        let Some(tx) = tx.lock().take() else {
            return gst::PadProbeReturn::Remove;
        };
        // A picture in GPU memory (VA surfaces kept for a VA encoder) is
        // copied out to system memory, where the snapshot encoder reads.
        let copied = if crate::encoders::memory::gpu_caps(&caps) {
            to_system_memory(buffer, &caps)
        } else {
            buffer
                .copy_deep()
                .ok()
                .or_else(|| Some(buffer.to_owned()))
                .map(|b| (b, caps))
        };
        if let Some((buffer, caps)) = copied {
            let _ = tx.send(Frame {
                caps,
                buffers: vec![buffer],
                raw: true,
            });
        }
        gst::PadProbeReturn::Remove
    });
    Some(rx)
}

/// A copy of the raw picture `buffer` (of `caps`, in any memory that maps)
/// in system memory, laid out as plain caps without a memory feature say.
fn to_system_memory(buffer: &gst::BufferRef, caps: &gst::Caps) -> Option<(gst::Buffer, gst::Caps)> {
    let info = gst_video::VideoInfo::from_caps(caps).ok()?;
    let plain = info.to_caps().ok()?;
    let src = gst_video::VideoFrame::from_buffer_readable(buffer.to_owned(), &info).ok()?;
    let out = gst::Buffer::with_size(info.size()).ok()?;
    let mut dest = gst_video::VideoFrame::from_buffer_writable(out, &info).ok()?;
    src.copy(&mut dest).ok()?;
    let mut out = dest.into_buffer();
    if let Some(b) = out.get_mut() {
        b.set_pts(buffer.pts());
    }
    Some((out, plain))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_picture_in_gpu_memory_is_copied_out_with_plain_caps_and_layout() {
        crate::media::init().unwrap();
        // 4x2 GRAY8 with rows padded to 8 bytes, as a GPU surface maps.
        let mut caps: gst::Caps = "video/x-raw, format=GRAY8, width=4, height=2, framerate=30/1"
            .parse()
            .unwrap();
        caps.make_mut()
            .set_features(0, Some(gst::CapsFeatures::new(["memory:VAMemory"])));
        let mut buffer =
            gst::Buffer::from_slice(vec![1u8, 2, 3, 4, 0, 0, 0, 0, 5, 6, 7, 8, 0, 0, 0, 0]);
        {
            let b = buffer.get_mut().unwrap();
            b.set_pts(gst::ClockTime::from_mseconds(40));
            gst_video::VideoMeta::add_full(
                b,
                gst_video::VideoFrameFlags::empty(),
                gst_video::VideoFormat::Gray8,
                4,
                2,
                &[0],
                &[8],
            )
            .unwrap();
        }
        let (out, plain) = to_system_memory(&buffer, &caps).unwrap();
        assert!(!crate::encoders::memory::gpu_caps(&plain), "{plain}");
        assert!(plain
            .to_string()
            .starts_with("video/x-raw, format=(string)GRAY8"));
        let info = gst_video::VideoInfo::from_caps(&plain).unwrap();
        let map = out.map_readable().unwrap();
        // GRAY8 rows are 4-byte aligned: 4 bytes a row, no padding.
        assert_eq!(info.stride()[0], 4);
        assert_eq!(map.as_slice(), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(out.pts(), Some(gst::ClockTime::from_mseconds(40)));
    }
}
