//! The video encoder branch as built for a (decoder, encoder) pair: its
//! elements in order, the caps its encoder takes, and a real run on the
//! system-memory path.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::encoders::{encoder_candidates, memory::VA_MEMORY};

fn candidate(name: &str) -> Candidate {
    encoder_candidates()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap()
}

/// The factory names inside an encoder bin, from its input to its output.
fn chain(bin: &EncoderBin) -> Vec<String> {
    let ghost = bin.static_pad("sink").unwrap();
    let ghost = ghost.downcast_ref::<gst::GhostPad>().unwrap();
    let mut pad = ghost.target();
    let mut names = Vec::new();
    while let Some(sink) = pad {
        let Some(el) = sink.parent_element() else {
            break;
        };
        if el.parent().as_ref() != Some(bin.upcast_ref::<gst::Object>()) {
            break;
        }
        names.push(el.factory().unwrap().name().to_string());
        pad = el.static_pad("src").and_then(|s| s.peer());
    }
    names
}

#[test]
fn raw_caps_carry_the_memory_of_the_path() {
    crate::media::init().unwrap();
    let b = || gst::Caps::builder("video/x-raw").field("format", "NV12");
    let va = raw_caps(b(), Some(VA_MEMORY));
    assert_eq!(
        va.to_string(),
        "video/x-raw(memory:VAMemory), format=(string)NV12"
    );
    assert!(crate::encoders::memory::gpu_caps(&va));
    let system = raw_caps(b(), None);
    assert_eq!(system.to_string(), "video/x-raw, format=(string)NV12");
}

#[test]
fn a_software_pair_runs_on_the_system_memory_path() {
    crate::media::init().unwrap();
    let p = gst::Pipeline::new();
    let src = make("videotestsrc").unwrap();
    src.set_property("num-buffers", 40i32);
    let raw = tee().unwrap();
    p.add_many([&src, &raw]).unwrap();
    src.link(&raw).unwrap();
    let profile = crate::profiles::Profiles::builtin()
        .get("low")
        .unwrap()
        .clone();
    let counters = Arc::new(Counters::default());
    let x264 = candidate("x264");
    let encoded = video_encode(
        &p,
        &raw,
        Some("avdec_h264"),
        &profile,
        false,
        &counters,
        &x264,
    )
    .unwrap();
    let path = encoded.memory.clone().unwrap();
    assert_eq!(path, memory::plan(Some("avdec_h264"), &x264, |_| true));
    let bin = encoded.bin.clone().unwrap();
    assert_eq!(
        chain(&bin),
        [
            "queue",
            "deinterlace",
            "videoscale",
            "videorate",
            "videoconvert",
            "capsfilter",
            "x264enc",
            "capsfilter"
        ]
    );
    let sink = make("fakesink").unwrap();
    sink.set_property("sync", false);
    p.add(&sink).unwrap();
    encoded.out.link(&sink).unwrap();
    let made = Arc::new(AtomicUsize::new(0));
    let m = made.clone();
    sink.static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            m.fetch_add(1, Ordering::SeqCst);
            gst::PadProbeReturn::Ok
        });
    p.set_state(gst::State::Playing).unwrap();
    let bus = p.bus().unwrap();
    let msg = bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(30),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    let enc = encoded.encoder.as_ref().and_then(|e| e.upgrade()).unwrap();
    let caps = enc.static_pad("sink").unwrap().current_caps().unwrap();
    p.set_state(gst::State::Null).unwrap();
    assert!(
        matches!(
            msg.as_ref().map(|m| m.view()),
            Some(gst::MessageView::Eos(_))
        ),
        "{msg:?}"
    );
    assert!(
        made.load(Ordering::SeqCst) >= 30,
        "{made:?} pictures encoded"
    );
    assert!(!crate::encoders::memory::gpu_caps(&caps), "{caps}");
    let s = caps.structure(0).unwrap();
    assert_eq!(s.get::<&str>("format").unwrap(), "I420");
}
