//! Real mp4mux and mpegtsmux output, configured as sluice configures them,
//! split and then checked with ffprobe from the second keyframe chunk on.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use gst::prelude::*;

use super::super::*;

const FRAMES: usize = 90;
const KEY_INT: usize = 15;

struct Run {
    chunks: Vec<Chunk>,
    header: Option<Bytes>,
    /// Keyframes x264enc produced.
    keyframes: usize,
}

fn video(mux_link: &str, ts: bool) -> String {
    // Sluice's TS branch repeats SPS/PPS at every keyframe.
    let parse = if ts {
        "h264parse config-interval=-1"
    } else {
        "h264parse"
    };
    format!(
        "videotestsrc num-buffers={FRAMES} pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! x264enc name=venc key-int-max={KEY_INT} bframes=0 tune=zerolatency speed-preset=ultrafast \
           option-string=scenecut=0 ! {parse} ! {mux_link}"
    )
}

const AUDIO: &str =
    "audiotestsrc num-buffers=130 samplesperbuffer=1024 ! audioconvert ! avenc_aac ! aacparse ! mux.";

fn mux(format: Format) -> &'static str {
    match format {
        Format::Mp4 | Format::Hls => "mp4mux name=mux fragment-duration=250 streamable=true",
        Format::Ts => "mpegtsmux name=mux alignment=7",
    }
}

/// Runs the pipeline to EOS, feeding every appsink buffer to a splitter.
fn run(format: Format, with_audio: bool) -> Run {
    crate::media::init().expect("GStreamer");
    let desc = format!(
        "{} ! appsink name=sink sync=false {}",
        video(mux(format), format == Format::Ts),
        if with_audio { AUDIO } else { "" }
    );
    let pipeline = gst::parse::launch(&desc)
        .expect("pipeline")
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
    let keyframes = Arc::new(AtomicUsize::new(0));
    let counted = keyframes.clone();
    let enc_src = pipeline.by_name("venc").and_then(|e| e.static_pad("src"));
    enc_src
        .expect("x264enc src")
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(buf) = info.buffer() {
                if !buf.flags().contains(gst::BufferFlags::DELTA_UNIT) {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
            }
            gst::PadProbeReturn::Ok
        });
    let sink = pipeline
        .by_name("sink")
        .and_then(|s| s.downcast::<gst_app::AppSink>().ok())
        .expect("appsink");
    pipeline.set_state(gst::State::Playing).expect("playing");
    let mut splitter = Splitter::new(format);
    let mut chunks = Vec::new();
    while let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_seconds(20)) {
        let buf = sample.buffer().expect("buffer");
        let map = buf.map_readable().expect("readable");
        splitter.push(&map, &mut chunks);
    }
    let eos = sink.is_eos();
    let error = pipeline
        .bus()
        .and_then(|b| b.pop_filtered(&[gst::MessageType::Error]));
    pipeline.set_state(gst::State::Null).expect("null");
    assert!(error.is_none(), "{error:?}");
    assert!(eos, "the pipeline reached EOS");
    Run {
        chunks,
        header: splitter.header(),
        keyframes: keyframes.load(Ordering::SeqCst),
    }
}

/// Header + chunks from the second keyframe chunk on, through ffprobe:
/// returns the video frames' key flags and the count of audio frames.
/// Fails on any error output.
fn probe_from_second_keyframe(run: &Run, ext: &str) -> (Vec<bool>, usize) {
    let second = run
        .chunks
        .iter()
        .enumerate()
        .filter(|(_, c)| c.keyframe)
        .nth(1)
        .map(|(i, _)| i)
        .expect("a second keyframe chunk");
    let mut bytes = run.header.clone().expect("a header").to_vec();
    for c in &run.chunks[second..] {
        bytes.extend_from_slice(&c.data);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(format!("joined.{ext}"));
    std::fs::write(&path, &bytes).expect("write");
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "frame=media_type,key_frame"])
        .args(["-of", "csv=p=0"])
        .arg(&path)
        .output()
        .expect("ffprobe runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "ffprobe: {stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let video = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("video,"))
        .map(|k| k.trim().starts_with('1'))
        .collect();
    (
        video,
        stdout.lines().filter(|l| l.starts_with("audio")).count(),
    )
}

fn check(format: Format, with_audio: bool) {
    let run = run(format, with_audio);
    assert_eq!(run.keyframes, FRAMES / KEY_INT, "x264enc keyframes");
    let keys = run.chunks.iter().filter(|c| c.keyframe).count();
    assert_eq!(keys, run.keyframes, "one keyframe chunk per keyframe");
    let ext = if format == Format::Mp4 { "mp4" } else { "ts" };
    let (frames, audio) = probe_from_second_keyframe(&run, ext);
    assert_eq!(audio > 0, with_audio, "audio frames decoded: {audio}");
    assert_eq!(
        frames.len(),
        FRAMES - KEY_INT,
        "every frame from the 2nd keyframe on"
    );
    assert!(frames[0], "the first decoded frame is a keyframe");
    assert_eq!(frames.iter().filter(|k| **k).count(), run.keyframes - 1);
}

#[test]
fn mp4mux_video_and_audio() {
    check(Format::Mp4, true);
}

#[test]
fn mp4mux_video_only() {
    check(Format::Mp4, false);
}

#[test]
fn mpegtsmux_video_and_audio() {
    check(Format::Ts, true);
}

#[test]
fn mpegtsmux_video_only() {
    check(Format::Ts, false);
}
