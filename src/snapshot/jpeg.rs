//! One picture to one JPEG, in a small pipeline of its own:
//!
//! ```text
//! appsrc(frame caps) -> decodebin -> videoconvert -> videoscale
//!   -> capsfilter(width, square pixels) -> jpegenc -> appsink
//! ```
//!
//! A compressed keyframe is decoded (the end of stream drains the decoder,
//! so a stream with B-frames gives its picture too); a raw picture passes
//! decodebin untouched. Runs on a blocking thread and always brings the
//! pipeline to NULL before it returns.

use std::time::{Duration, Instant};

use bytes::Bytes;
use gst::prelude::*;

use crate::channels::frame::Frame;

/// Encodes `frame` as a JPEG `width` pixels wide, the height following
/// the picture's display aspect ratio. Blocking.
pub fn encode(frame: &Frame, width: u32, limit: Duration) -> Result<Bytes, String> {
    let pipeline = gst::parse::launch(
        "appsrc name=src format=time ! decodebin ! videoconvert ! videoscale \
         ! capsfilter name=size ! jpegenc ! appsink name=sink sync=false max-buffers=1",
    )
    .map_err(|e| format!("the JPEG encoder could not be built: {e}"))?
    .downcast::<gst::Pipeline>()
    .map_err(|_| "the JPEG encoder is not a pipeline".to_string())?;
    let result = run(&pipeline, frame, width, limit);
    let _ = pipeline.set_state(gst::State::Null);
    result
}

fn run(
    pipeline: &gst::Pipeline,
    frame: &Frame,
    width: u32,
    limit: Duration,
) -> Result<Bytes, String> {
    let deadline = Instant::now() + limit;
    let src = pipeline
        .by_name("src")
        .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
        .ok_or("no appsrc")?;
    let sink = pipeline
        .by_name("sink")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .ok_or("no appsink")?;
    let size = pipeline.by_name("size").ok_or("no capsfilter")?;
    size.set_property(
        "caps",
        gst::Caps::builder("video/x-raw")
            .field("width", width as i32)
            .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
            .build(),
    );
    src.set_caps(Some(&frame.caps));
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("the JPEG encoder did not start: {e}"))?;
    for (i, b) in frame.buffers.iter().enumerate() {
        let mut b = b.copy();
        {
            let b = b.make_mut();
            b.set_pts(gst::ClockTime::from_mseconds(i as u64));
            b.set_dts(gst::ClockTime::from_mseconds(i as u64));
            b.set_duration(gst::ClockTime::NONE);
        }
        if src.push_buffer(b).is_err() {
            break;
        }
    }
    let _ = src.end_of_stream();
    let left = deadline.saturating_duration_since(Instant::now());
    if let Some(sample) =
        sink.try_pull_sample(gst::ClockTime::from_nseconds(left.as_nanos() as u64))
    {
        let buffer = sample.buffer().ok_or("the JPEG encoder gave no data")?;
        let map = buffer.map_readable().map_err(|e| e.to_string())?;
        return Ok(Bytes::copy_from_slice(map.as_slice()));
    }
    let bus = pipeline.bus().ok_or("no bus")?;
    while let Some(msg) = bus.pop() {
        if let gst::MessageView::Error(err) = msg.view() {
            return Err(format!("the picture could not be decoded: {}", err.error()));
        }
    }
    Err("the picture could not be decoded in time".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A raw 640x360 picture becomes a JPEG 160 wide and 90 high.
    #[test]
    fn a_raw_picture_is_scaled_keeping_its_aspect() {
        crate::media::init().unwrap();
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, 640, 360)
            .fps(gst::Fraction::new(25, 1))
            .build()
            .unwrap();
        let buffer = gst::Buffer::with_size(info.size()).unwrap();
        let frame = Frame {
            caps: info.to_caps().unwrap(),
            buffers: vec![buffer],
            raw: true,
        };
        let jpeg = encode(&frame, 160, Duration::from_secs(10)).unwrap();
        assert_eq!(&jpeg[..2], &[0xff, 0xd8], "a JPEG starts with SOI");
        // The SOF0 segment holds height then width.
        let sof = jpeg
            .windows(2)
            .position(|w| w == [0xff, 0xc0])
            .expect("a baseline JPEG has SOF0");
        let h = u16::from_be_bytes([jpeg[sof + 5], jpeg[sof + 6]]);
        let w = u16::from_be_bytes([jpeg[sof + 7], jpeg[sof + 8]]);
        assert_eq!((w, h), (160, 90));
    }
}
