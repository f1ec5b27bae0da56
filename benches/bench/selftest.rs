//! The harness checks its own parts (run by `cargo test`, i.e. `make test`):
//! the fMP4 reader against files written by ffmpeg and by GStreamer, the
//! statistics, /proc readings, windows; and after the brief run, that
//! every figure was measured.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::mp4::Mp4Watch;
use crate::report::{verdicts, Results};
use crate::viewer::{Feed, Progress};
use crate::{procfs, stats};

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("tool runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `seconds` of a `lavfi` graph as fragmented MP4, as the baseline
/// does: a keyframe and so a fragment every second (30 frames).
fn ffmpeg_fmp4(path: &Path, lavfi: &str, seconds: u32) {
    run(Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin"])
        .args(["-f", "lavfi", "-i", lavfi, "-t", &seconds.to_string()])
        .args([
            "-map",
            "0",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "30",
        ])
        .args([
            "-c:a",
            "aac",
            "-movflags",
            "frag_keyframe+empty_moov",
            "-f",
            "mp4",
        ])
        .arg(path));
}

/// Parses `bytes` fed in pieces of `chunk` bytes; returns (fragments with
/// video, frames, media seconds).
fn parse(bytes: &[u8], chunk: usize) -> (usize, u64, f64) {
    let mut w = Mp4Watch::new();
    let mut video_frags = 0;
    let mut last_frames = 0;
    for c in bytes.chunks(chunk) {
        for f in w.feed(c) {
            if f.frames > last_frames {
                video_frags += 1;
                last_frames = f.frames;
            }
        }
    }
    assert!(w.error().is_none(), "parse error: {:?}", w.error());
    assert!(w.has_moov());
    (video_frags, last_frames, w.media_s())
}

fn check_file(path: &Path, frames: u64, seconds: f64, min_frags: usize) {
    let bytes = std::fs::read(path).expect("fMP4 written");
    for chunk in [bytes.len(), 4096, 997, 7] {
        let (frags, n, media) = parse(&bytes, chunk);
        assert_eq!(n, frames, "{}: frames (chunk {chunk})", path.display());
        assert!(
            (media - seconds).abs() < 0.05,
            "{}: media {media} s, expected {seconds}",
            path.display()
        );
        assert!(
            frags >= min_frags,
            "{}: {frags} video fragments",
            path.display()
        );
    }
}

fn mp4_reader() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ff = dir.path().join("ffmpeg.mp4");
    ffmpeg_fmp4(
        &ff,
        "testsrc=size=320x240:rate=30[out0];sine=sample_rate=48000[out1]",
        3,
    );
    check_file(&ff, 90, 3.0, 3);
    let gst = dir.path().join("gst.mp4");
    run(Command::new("gst-launch-1.0")
        .args(["-q", "videotestsrc", "num-buffers=60", "!"])
        .args([
            "video/x-raw,width=320,height=240,framerate=30/1",
            "!",
            "x264enc",
            "key-int-max=15",
            "!",
        ])
        .args([
            "mp4mux",
            "fragment-duration=250",
            "streamable=true",
            "!",
            "filesink",
        ])
        .arg(format!("location={}", gst.display())));
    check_file(&gst, 60, 2.0, 4);

    // A box smaller than its own header is reported, not looped on.
    let mut w = Mp4Watch::new();
    w.feed(&[0, 0, 0, 3, b'm', b'o', b'o', b'f', 1, 2, 3]);
    assert!(w.error().is_some());
    // A prefix cut inside an mdat completes no fragment.
    let bytes = std::fs::read(&ff).expect("written");
    let all = Mp4Watch::new().feed(&bytes);
    let last_end = all.last().expect("fragments").end_offset as usize;
    let cut = Mp4Watch::new().feed(&bytes[..last_end - 1]);
    assert_eq!(cut.len() + 1, all.len());
}

fn procfs_readings() {
    let pid = std::process::id();
    // Spin until the kernel has counted some CPU (a busy machine may give
    // this thread little of the wall time), at most 10 s.
    let before = procfs::cpu_seconds(pid).expect("own stat");
    let t = Instant::now();
    let mut x = 0u64;
    let mut after = before;
    while after - before < 0.05 && t.elapsed() < Duration::from_secs(10) {
        for _ in 0..1_000_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        after = procfs::cpu_seconds(pid).expect("own stat");
    }
    std::hint::black_box(x);
    assert!(after - before >= 0.05, "cpu {before} -> {after}");
    assert!(procfs::rss_bytes(pid).expect("rss") > 1 << 20);
    assert!(procfs::pss_bytes(pid).expect("pss") > 0);
    assert!(procfs::threads(pid).expect("threads") >= 1);
    assert!(procfs::cpu_seconds(u32::MAX).is_none());
}

fn windows() {
    // The ffmpeg file's fragments, arriving one every 100 ms.
    let dir = tempfile::tempdir().expect("temp dir");
    let ff = dir.path().join("w.mp4");
    ffmpeg_fmp4(&ff, "testsrc=size=160x120:rate=30", 4);
    let bytes = std::fs::read(&ff).expect("written");
    let progress = Arc::new(Mutex::new(Progress::default()));
    let mut feed = Feed::new(Instant::now(), progress.clone(), std::process::id(), true);
    for c in bytes.chunks(bytes.len() / 20 + 1) {
        feed.push(c);
        std::thread::sleep(Duration::from_millis(20));
    }
    feed.end(None);
    let p = progress.lock().expect("lock");
    assert!(p.first_byte.is_some() && p.first_fragment.is_some() && p.ended.is_some());
    assert!(p.first_byte <= p.first_fragment);
    assert_eq!(p.bytes, bytes.len() as u64);
    let prefix = p.prefix.as_ref().expect("prefix kept");
    assert!(prefix.len() < bytes.len());
    let (frags, frames, _) = parse(prefix, 512);
    assert_eq!(
        (frags, frames),
        (1, 30),
        "the prefix is exactly the first fragment"
    );
    let w = p
        .window(Duration::ZERO, Duration::from_secs(60))
        .expect("window");
    assert!((w.media_s - 3.0).abs() < 0.05, "window media {}", w.media_s);
    assert_eq!(w.frames, 90);
    assert!(w.wall_s > 0.1 && w.speed() > 0.0);
    assert!(p
        .window(Duration::from_secs(60), Duration::from_secs(61))
        .is_none());
    assert!((p.media_s() - 4.0).abs() < 0.05);
}

/// Checks of the harness's own parts; panics on the first that fails.
pub fn units() {
    for cfg in [crate::Config::full(), crate::Config::smoke()] {
        let needed = crate::admission::material_needed(cfg.full, cfg.window_s);
        assert!(
            cfg.material.seconds >= needed,
            "{} s of material; the admission ramp needs {needed} s on air",
            cfg.material.seconds
        );
    }
    stats::self_test();
    crate::admission::self_test();
    crate::merge::self_test();
    procfs_readings();
    mp4_reader();
    windows();
}

/// After the brief run: every figure measured, for both contenders, and
/// the report shows them.
pub fn check_report(r: &Results, profiles: &[String], text: &str) {
    for row in &r.startup {
        for (a, f) in &row.pairs {
            for s in [a, f] {
                assert!(
                    s.error.is_none(),
                    "{} {}: {:?}",
                    row.source,
                    row.profile,
                    s.error
                );
                assert!(s.ttfb_ms.is_some() && s.fragment_ms >= s.ttfb_ms);
            }
        }
        assert!(row.decoded.iter().all(|d| d.ok), "{:?}", row.decoded);
    }
    for row in &r.load {
        for (a, f) in &row.pairs {
            for x in [a, f] {
                assert!(x.error.is_none(), "ramp {}: {:?}", row.profile, x.error);
                assert!(x.cpu_per_media_s.is_some_and(|c| c > 0.0), "{x:?}");
                assert_eq!(x.mem.len(), crate::load::RAMP_MAX);
            }
            assert!(f.mem.iter().all(|m| m.rss > 0.0), "{f:?}");
        }
    }
    for row in &r.teardown {
        assert_eq!(row.failed, [0, 0]);
        assert!(!row.sluice.is_empty() && !row.ffmpeg.is_empty());
        assert!(row.sluice.iter().chain(&row.ffmpeg).all(|ms| *ms >= 0.0));
    }
    assert!(r
        .capacity
        .iter()
        .all(|c| c.result.iter().all(|(_, steps)| !steps.is_empty())));
    assert!(r
        .status
        .iter()
        .all(|s| !s.idle.is_empty() && !s.loaded.is_empty()));
    assert!(!r.capacity.is_empty() && !r.status.is_empty());
    crate::sharing_report::check(r.sharing.as_ref().expect("sharing measured"), text);
    for row in &r.hls {
        assert!(
            row.errors.is_empty(),
            "hls {}: {:?}",
            row.profile,
            row.errors
        );
        assert!(row.first.iter().all(|(s, f)| s.is_some() && f.is_some()));
        assert!(row.cpu.0.is_some_and(|c| c > 0.0) && row.cpu.1.is_some_and(|c| c > 0.0));
    }
    assert!(!r.hls.is_empty(), "hls measured");
    assert!(text.contains("## HLS output"));
    crate::admission::check(&r.admission, profiles, text);
    for v in verdicts(r) {
        // Capacity ratios may be 0 or ∞ (one side kept up with none).
        if !v.figure.contains("capacity") {
            assert!(
                v.ratio.is_some_and(|x| x.is_finite() && x > 0.0),
                "{}: {:?}",
                v.figure,
                v.ratio
            );
        }
    }
    for heading in [
        "## Machine",
        "## Summary",
        "## Method",
        "## Teardown",
        "## Capacity, distinct channels",
        "## Where sluice loses",
    ] {
        assert!(text.contains(heading), "report lacks {heading}");
    }
    assert!(text.contains("-profile:v baseline") && text.contains("frag_keyframe+empty_moov"));
}
