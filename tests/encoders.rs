//! Encoders, black-box (SPEC §15): the start-up probe on this machine
//! (no GPU: every hardware candidate unavailable with its reason, x264
//! picked), a missing hardware choice that degrades health while previews
//! run on x264, and a live fallback: a rendition whose encoder fails
//! mid-stream moves to x264 while its fMP4 and TS viewers stay connected.
//!
//! The failing encoder is a custom candidate registered through the same
//! candidate list the built-in ones are in ([`sluice::encoders::register`]):
//! a bin wrapping x264enc that, once this test arms it, posts an encoder
//! error after a set number of pictures and then gives no more output.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use common::*;
use gst::prelude::*;
use serde_json::Value;

/// Name of the failing candidate.
const FAILING: &str = "x264-fails";
/// Pictures the failing encoder makes before it fails (0 = it never fails).
static FAIL_AFTER: AtomicU64 = AtomicU64::new(0);
/// Name of a second failing candidate, for the HLS client (a candidate
/// that failed is left alone for `ENCODER_RETRY` by the tests after it).
const FAILING_HLS: &str = "x264-fails-hls";
static FAIL_HLS_AFTER: AtomicU64 = AtomicU64::new(0);
/// Name of the candidate that stops giving output without an error.
const STALLING: &str = "x264-stalls";
static STALL_AFTER: AtomicU64 = AtomicU64::new(0);

/// A bin around x264enc that, after `after` pictures (0 = never), posts an
/// encoder error (when `error`) and gives no more output.
fn failing_x264(after: &'static AtomicU64, error: bool) -> Result<gst::Element, String> {
    let enc = gst::ElementFactory::make("x264enc")
        .build()
        .map_err(|e| e.to_string())?;
    // Four reference pictures where the fallback x264 has one: the
    // parameter sets (and an MP4's codec data) change at the switch, as
    // they do when a hardware encoder hands over to x264.
    enc.set_property("ref", 4u32);
    let bin = gst::Bin::new();
    bin.add(&enc).map_err(|e| e.to_string())?;
    let sink = gst::GhostPad::with_target(&enc.static_pad("sink").unwrap()).unwrap();
    let src = gst::GhostPad::with_target(&enc.static_pad("src").unwrap()).unwrap();
    bin.add_pad(&sink).unwrap();
    bin.add_pad(&src).unwrap();
    let made = AtomicU64::new(0);
    let weak = enc.downgrade();
    enc.static_pad("src")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            let limit = after.load(Ordering::SeqCst);
            let n = made.fetch_add(1, Ordering::SeqCst) + 1;
            if limit == 0 || n <= limit {
                return gst::PadProbeReturn::Ok;
            }
            if error && n == limit + 1 {
                if let Some(enc) = weak.upgrade() {
                    gst::element_error!(
                        enc,
                        gst::LibraryError::Encode,
                        ("the test encoder failed on purpose")
                    );
                }
            }
            gst::PadProbeReturn::Drop
        });
    Ok(bin.upcast())
}

/// The tests take turns: each runs real encodes, and the probe's own
/// 5 s bound is checked on the first.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Registers the failing candidates once, before anything uses the table.
fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        sluice::encoders::register(sluice::encoders::Candidate::custom(
            FAILING,
            "x264enc",
            Arc::new(|| failing_x264(&FAIL_AFTER, true)),
        ));
        sluice::encoders::register(sluice::encoders::Candidate::custom(
            FAILING_HLS,
            "x264enc",
            Arc::new(|| failing_x264(&FAIL_HLS_AFTER, true)),
        ));
        sluice::encoders::register(sluice::encoders::Candidate::custom(
            STALLING,
            "x264enc",
            Arc::new(|| failing_x264(&STALL_AFTER, false)),
        ));
    });
}

async fn encoders(ts: &TestServer) -> Vec<Value> {
    get_json(&ts.url("/api/encoders"))
        .await
        .as_array()
        .expect("an array")
        .clone()
}

fn rendition_encoders(status: &Value) -> Vec<String> {
    status["channels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["renditions"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["encoder"].as_str().map(String::from))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_probe_lists_every_candidate_with_a_reason_and_picks_x264() {
    let _turn = SERIAL.lock().await;
    setup();
    let ts = start().await;
    assert!(
        sluice::encoders::table().probe_took() < Duration::from_secs(5),
        "the probe took {:?}",
        sluice::encoders::table().probe_took()
    );
    let list = encoders(&ts).await;
    let find = |name: &str, kind: &str| {
        list.iter()
            .find(|e| e["name"] == name && e["kind"] == kind)
            .unwrap_or_else(|| panic!("{name} {kind} missing from {list:?}"))
            .clone()
    };
    for (name, element) in [
        ("nvenc", "nvh264enc"),
        ("va", "vah264enc"),
        ("qsv", "qsvh264enc"),
        ("vaapi", "vaapih264enc"),
        ("v4l2", "v4l2h264enc"),
        ("x264", "x264enc"),
    ] {
        let e = find(name, "encoder");
        assert_eq!(e["element"], element);
        for field in ["available", "reason", "fix"] {
            assert!(e.get(field).is_some(), "{name}: no {field}");
        }
    }
    for (name, element) in [
        ("nvenc", "nvh264dec"),
        ("va", "vah264dec"),
        ("qsv", "qsvh264dec"),
        ("v4l2", "v4l2slh264dec"),
    ] {
        assert_eq!(find(name, "decoder")["element"], element);
    }
    let x264 = find("x264", "encoder");
    assert_eq!(x264["available"], true, "{x264}");
    assert!(x264["reason"].is_null());
    // This machine has no GPU: each hardware candidate says why, and how
    // to fix it.
    if !Path::new("/dev/dri").exists() {
        for e in list.iter().filter(|e| {
            !["x264", FAILING, FAILING_HLS, STALLING].contains(&e["name"].as_str().unwrap())
        }) {
            assert_eq!(e["available"], false, "{e}");
            let reason = e["reason"].as_str().unwrap();
            assert!(!reason.is_empty() && !e["fix"].as_str().unwrap().is_empty());
        }
        let va = find("va", "encoder");
        assert!(
            va["reason"].as_str().unwrap().contains("/dev/dri/renderD"),
            "{va}"
        );
        assert!(va["fix"].as_str().unwrap().contains("/dev/dri"), "{va}");
        let health = get_json(&ts.url("/health")).await;
        let enc = &health["services"]["encoders"];
        assert_eq!(enc["selected"], "x264", "{health}");
        assert_eq!(enc["status"], "healthy", "{health}");
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_hardware_choice_degrades_health_and_previews_run_on_x264() {
    let _turn = SERIAL.lock().await;
    setup();
    if Path::new("/dev/dri").exists() {
        eprintln!("skipped: this machine has a render node, so VA may work");
        return;
    }
    let ts = start_with(|s| s.encoder = "va".into()).await;
    let health = get_json(&ts.url("/health")).await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["services"]["encoders"]["status"], "degraded");
    assert_eq!(health["services"]["encoders"]["missing"][0], "va");
    add_stream(&ts, "bars", "test://smpte?size=320x240").await;
    let resp = client()
        .get(ts.url("/streams/preview/bars?quality=low&transcode=true&format=mp4"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let status_during = tokio::spawn({
        let url = ts.url("/api/streams/transcoding/status");
        async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            get_json(&url).await
        }
    });
    let body = read_for(resp, Duration::from_secs(3), 8 << 20).await;
    let status = status_during.await.unwrap();
    assert_eq!(rendition_encoders(&status), ["x264enc"], "{status}");
    let file = ts.dir.path().join("va.mp4");
    std::fs::write(&file, complete_prefix(&body)).unwrap();
    let probe = ffprobe(&file);
    let video = stream_of(&probe, "video").expect("a video stream");
    assert_eq!(video["codec_name"], "h264");
    assert_eq!(video["profile"], "Constrained Baseline");
    ts.stop().await;
}

/// The boxes of `b` as (type, payload); the payload starts `skip` bytes in.
fn mp4_boxes(b: &[u8]) -> Vec<([u8; 4], &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 8 <= b.len() {
        let size = u32::from_be_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        if size < 8 || at + size > b.len() {
            break;
        }
        out.push((b[at + 4..at + 8].try_into().unwrap(), &b[at + 8..at + size]));
        at += size;
    }
    out
}

/// The SPS in the `avcC` of each top-level `moov` of an fMP4 stream, in
/// order, with the number of `moof`s before it and where the box starts
/// and ends.
fn moov_sps(stream: &[u8]) -> Vec<(usize, Vec<u8>, std::ops::Range<usize>)> {
    let child = |b: &[u8], typ: &[u8; 4], skip: usize| -> Option<Vec<u8>> {
        mp4_boxes(b)
            .into_iter()
            .find(|(t, _)| t == typ)
            .and_then(|(_, p)| p.get(skip..).map(<[u8]>::to_vec))
    };
    let mut moofs = 0;
    let mut found = Vec::new();
    for (typ, moov) in mp4_boxes(stream) {
        let payload = moov.as_ptr() as usize - stream.as_ptr() as usize;
        let span = payload - 8..payload + moov.len();
        match &typ {
            b"moof" => moofs += 1,
            b"moov" => {
                let avcc = mp4_boxes(moov)
                    .into_iter()
                    .filter(|(t, _)| t == b"trak")
                    .find_map(|(_, trak)| {
                        let b = child(trak, b"mdia", 0)?;
                        let b = child(&b, b"minf", 0)?;
                        let b = child(&b, b"stbl", 0)?;
                        let b = child(&b, b"stsd", 8)?;
                        let b = child(&b, b"avc1", 78)?;
                        child(&b, b"avcC", 0)
                    })
                    .expect("a moov with an avcC");
                // AVCDecoderConfigurationRecord: 5 bytes, the SPS count,
                // then the first SPS's length and bytes.
                let len = u16::from_be_bytes([avcc[6], avcc[7]]) as usize;
                found.push((moofs, avcc[8..8 + len].to_vec(), span));
            }
            _ => {}
        }
    }
    found
}

/// Video packet times of a file, in seconds, in decode order.
fn packet_times(path: &Path) -> Vec<f64> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=pts_time",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse::<f64>().ok())
        .collect()
}

/// A server whose encoder is the failing test candidate `name`, armed to
/// fail after about 2 s of pictures at 30 fps. The probe's test encode
/// runs (and passes) before the candidate is armed.
async fn armed(name: &'static str, fail_after: &'static AtomicU64) -> TestServer {
    setup();
    tokio::task::spawn_blocking(|| {
        gst::init().unwrap();
        sluice::encoders::table();
    })
    .await
    .unwrap();
    let probed = sluice::encoders::table().probed();
    assert!(
        probed.iter().any(|p| p.name == name && p.available),
        "the probe did not pass the test candidate: {probed:?}"
    );
    fail_after.store(60, Ordering::SeqCst);
    start_with(|s| s.encoder = name.into()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_encoder_falls_back_to_x264_without_dropping_viewers() {
    let _turn = SERIAL.lock().await;
    let ts = armed(FAILING, &FAIL_AFTER).await;
    add_stream(&ts, "bars", "test://smpte?size=320x240").await;
    let url = |format: &str| {
        ts.url(&format!(
            "/streams/preview/bars?quality=low&transcode=true&format={format}"
        ))
    };
    let read = Duration::from_secs(6);
    let mut viewers = Vec::new();
    for format in ["mp4", "ts", "mp4"] {
        let resp = client().get(url(format)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{format}");
        viewers.push((format, tokio::spawn(read_for(resp, read, 32 << 20))));
    }
    let status_url = ts.url("/api/streams/transcoding/status");
    let before = get_json(&status_url).await;
    assert_eq!(rendition_encoders(&before), [FAILING], "{before}");
    // Past the failure (2 s of pictures) and the switch, while every
    // viewer still reads.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let after = get_json(&status_url).await;
    assert_eq!(rendition_encoders(&after), ["x264enc"], "{after}");
    let viewing = after["sessions"].as_array().map_or(0, Vec::len);
    assert_eq!(viewing, 3, "{after}");
    let mut outputs = Vec::new();
    for (i, (format, task)) in viewers.into_iter().enumerate() {
        let body = task.await.unwrap();
        let file = ts.dir.path().join(format!("viewer{i}.{format}"));
        std::fs::write(&file, complete_prefix(&body)).unwrap();
        outputs.push((format, file));
    }
    let samples = scrape(&ts).await;
    assert_eq!(
        metric(
            &samples,
            "sluice_encoder_fallbacks_total",
            &[("from", FAILING), ("to", "x264")]
        ),
        Some(1.0)
    );
    let health = get_json(&ts.url("/health")).await;
    assert_eq!(
        health["services"]["encoders"]["failed"][0], FAILING,
        "{health}"
    );
    for (format, file) in outputs.iter().filter(|(f, _)| *f == "mp4") {
        // A new init segment, once, after the switch: the encoders' SPS
        // differ, and the viewer's decoder is told.
        let stream = std::fs::read(file).unwrap();
        let moovs = moov_sps(&stream);
        assert_eq!(
            moovs.len(),
            2,
            "{format}: one init segment before, one after the switch"
        );
        assert_eq!(moovs[0].0, 0);
        assert!(moovs[1].0 > 10, "after the first fragments: {}", moovs[1].0);
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        eprintln!(
            "{format}: SPS {} then, after {} fragments, {}",
            hex(&moovs[0].1),
            moovs[1].0,
            hex(&moovs[1].1)
        );
        let (old, new) = (&moovs[0].1, &moovs[1].1);
        assert_ne!(old, new, "the SPS changed with the encoder");
        // The pictures carry their SPS in-band too: every one before the
        // new init segment is the old encoder's, every one after it the
        // new encoder's (no old picture follows it, it comes at a keyframe).
        let has = |b: &[u8], sps: &[u8]| b.windows(sps.len()).any(|w| w == sps);
        let (first, second) = (&moovs[0].2, &moovs[1].2);
        let (before, after) = (&stream[first.end..second.start], &stream[second.end..]);
        assert!(has(before, old), "{format}: old SPS in-band");
        assert!(
            !has(before, new),
            "{format}: a new picture before the new header"
        );
        assert!(has(after, new), "{format}: new SPS in-band");
        assert!(
            !has(after, old),
            "{format}: an old picture after the new header"
        );
    }
    for (format, file) in &outputs {
        let (frames, errors) = decode_all(file);
        // Well past the 60 pictures made before the failure.
        assert!(frames > 100, "{format}: {frames} frames decoded; {errors}");
        assert!(
            !errors.to_lowercase().contains("error"),
            "{format}: decode errors: {errors}"
        );
        let times = packet_times(file);
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        let gap = sorted
            .windows(2)
            .map(|w| w[1] - w[0])
            .fold(0.0f64, f64::max);
        eprintln!("{format}: {frames} frames decoded, largest gap between pictures {gap:.3} s");
        assert!(
            gap < 1.0,
            "{format}: {gap:.3} s of media lost at the switch"
        );
    }
    ts.stop().await;
    FAIL_AFTER.store(0, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_encoder_that_stops_giving_output_is_replaced_after_2_s() {
    let _turn = SERIAL.lock().await;
    setup();
    tokio::task::spawn_blocking(|| {
        gst::init().unwrap();
        sluice::encoders::table();
    })
    .await
    .unwrap();
    // About 2 s of pictures, then silence: no error, no output.
    let probed = sluice::encoders::table().probed();
    assert!(
        probed.iter().any(|p| p.name == STALLING && p.available),
        "the probe did not pass the test candidate: {probed:?}"
    );
    STALL_AFTER.store(60, Ordering::SeqCst);
    let ts = start_with(|s| s.encoder = STALLING.into()).await;
    add_stream(&ts, "bars", "test://smpte?size=320x240").await;
    let resp = client()
        .get(ts.url("/streams/preview/bars?quality=low&transcode=true&format=ts"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let reading = tokio::spawn(read_for(resp, Duration::from_secs(8), 32 << 20));
    let status_url = ts.url("/api/streams/transcoding/status");
    tokio::time::sleep(Duration::from_millis(6500)).await;
    let after = get_json(&status_url).await;
    assert_eq!(rendition_encoders(&after), ["x264enc"], "{after}");
    assert_eq!(
        after["sessions"].as_array().map_or(0, Vec::len),
        1,
        "{after}"
    );
    let body = reading.await.unwrap();
    let samples = scrape(&ts).await;
    assert_eq!(
        metric(
            &samples,
            "sluice_encoder_fallbacks_total",
            &[("from", STALLING), ("to", "x264")]
        ),
        Some(1.0)
    );
    let file = ts.dir.path().join("stalled.ts");
    std::fs::write(&file, complete_prefix(&body)).unwrap();
    let (frames, errors) = decode_all(&file);
    assert!(frames > 100, "{frames} frames decoded; {errors}");
    let mut times = packet_times(&file);
    times.sort_by(f64::total_cmp);
    let gap = times.windows(2).map(|w| w[1] - w[0]).fold(0.0f64, f64::max);
    eprintln!("ts: {frames} frames decoded, largest gap between pictures {gap:.3} s");
    // The 2 s of silence the watchdog waits for, and the switch.
    assert!(gap < 3.0, "{gap:.3} s of media lost at the switch");
    ts.stop().await;
    STALL_AFTER.store(0, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_encoder_stops_start_up_naming_the_variable() {
    let _turn = SERIAL.lock().await;
    setup();
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.encoder = "quantum".into();
    let err = match sluice::Server::start(s).await {
        Ok(_) => panic!("a server started with SLUICE_ENCODER=quantum"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("SLUICE_ENCODER") && err.contains("quantum"),
        "{err}"
    );
    assert!(err.contains("nvenc") && err.contains("x264"), "{err}");
}

/// The bytes at `path` (relative to the server), or a panic naming it.
async fn fetch(ts: &TestServer, path: &str) -> Vec<u8> {
    let resp = client().get(ts.url(path)).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    resp.bytes().await.unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_hls_client_gets_a_discontinuity_and_a_new_map_after_a_fallback() {
    let _turn = SERIAL.lock().await;
    let ts = armed(FAILING_HLS, &FAIL_HLS_AFTER).await;
    add_stream(&ts, "bars", "test://smpte?size=320x240").await;
    let base = "/streams/hls/bars/low/";
    // Segment msn -> (its map, bytes), and each map's bytes, as a client
    // reloading the playlist fetches them.
    let mut segments: std::collections::BTreeMap<u64, (String, Vec<u8>, bool)> = Default::default();
    let mut maps: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    let t0 = std::time::Instant::now();
    let done = |segs: &std::collections::BTreeMap<u64, (String, Vec<u8>, bool)>| {
        let disc = segs.values().position(|s| s.2);
        disc.is_some_and(|i| segs.len() > i + 1)
    };
    while !done(&segments) && t0.elapsed() < Duration::from_secs(20) {
        let text = String::from_utf8(fetch(&ts, &format!("{base}index.m3u8?sid=h")).await).unwrap();
        let (mut map, mut disc) = (String::new(), false);
        let mut msn = text
            .lines()
            .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        for line in text.lines() {
            if let Some(uri) = line.strip_prefix("#EXT-X-MAP:URI=\"") {
                map = uri.trim_end_matches('"').to_string();
                if !maps.contains_key(&map) {
                    let bytes = fetch(&ts, &format!("{base}{map}")).await;
                    maps.insert(map.clone(), bytes);
                }
            } else if line == "#EXT-X-DISCONTINUITY" {
                disc = true;
            } else if !line.starts_with('#') && !line.is_empty() {
                if let std::collections::btree_map::Entry::Vacant(e) = segments.entry(msn) {
                    let bytes = fetch(&ts, &format!("{base}{line}")).await;
                    e.insert((map.clone(), bytes, disc));
                }
                msn += 1;
                disc = false;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    FAIL_HLS_AFTER.store(0, Ordering::SeqCst);
    assert!(
        done(&segments),
        "no discontinuity within 20 s: {:?}",
        segments.keys()
    );
    let msns: Vec<u64> = segments.keys().copied().collect();
    assert!(
        msns.windows(2).all(|w| w[1] == w[0] + 1),
        "no segment lost at the switch: {msns:?}"
    );
    let at = segments.values().position(|s| s.2).unwrap();
    let list: Vec<&(String, Vec<u8>, bool)> = segments.values().collect();
    let (old_map, new_map) = (&list[at - 1].0, &list[at].0);
    assert_ne!(old_map, new_map, "a new EXT-X-MAP with the discontinuity");
    let sps = |map: &str| moov_sps(&maps[map])[0].1.clone();
    assert_ne!(
        sps(old_map),
        sps(new_map),
        "the new map has the new encoder's SPS"
    );
    // Each map with its own segments decodes without an error.
    for (map, range) in [(old_map, 0..at), (new_map, at..list.len())] {
        let mut bytes = maps[map].clone();
        for s in &list[range] {
            bytes.extend_from_slice(&s.1);
        }
        let file = ts
            .dir
            .path()
            .join(format!("{}.mp4", map.split('?').next().unwrap()));
        std::fs::write(&file, &bytes).unwrap();
        let (frames, errors) = decode_all(&file);
        eprintln!("{map}: {frames} frames decoded");
        assert!(frames > 0, "{map}: nothing decoded; {errors}");
        assert!(!errors.to_lowercase().contains("error"), "{map}: {errors}");
    }
    ts.stop().await;
}

/// With a VA device, `vah264dec` feeding sluice's `va` encoder branch keeps
/// the pictures in VA memory (the encoder takes `memory:VAMemory`), the
/// stream decodes, and status names neither side `(system memory)`.
/// Without one (the `va` plugin then registers no elements) it says so and
/// checks nothing.
#[test]
fn va_pictures_stay_in_va_memory_from_vah264dec_to_vah264enc() {
    use sluice::encoders::memory;
    gst::init().unwrap();
    let missing: Vec<&str> = ["vah264dec", "vah264enc", "vapostproc", "vadeinterlace"]
        .into_iter()
        .filter(|f| gst::ElementFactory::find(f).is_none())
        .collect();
    if !missing.is_empty() {
        eprintln!("skipped: {missing:?} not registered here (no VA device)");
        return;
    }
    let p = gst::parse::launch(
        "videotestsrc num-buffers=90 pattern=ball ! video/x-raw,width=1280,height=720,framerate=30/1 \
         ! x264enc tune=zerolatency key-int-max=30 ! h264parse ! vah264dec ! tee name=raw",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let raw = p.by_name("raw").unwrap();
    let profile = sluice::profiles::Profiles::builtin()
        .get("low")
        .unwrap()
        .clone();
    let counters = Arc::new(sluice::media::chains::Counters::default());
    let va = sluice::encoders::encoder_candidates()
        .into_iter()
        .find(|c| c.name == "va")
        .unwrap();
    let encoded = sluice::media::chains::video_encode(
        &p,
        &raw,
        Some("vah264dec"),
        &profile,
        false,
        &counters,
        &va,
    )
    .expect("the VA encoder branch builds");
    let path = encoded.memory.clone().unwrap();
    assert!(path.in_gpu(), "{path:?}");
    let parse = gst::ElementFactory::make("h264parse").build().unwrap();
    let sink = gst_app::AppSink::builder().sync(false).build();
    p.add_many([&parse, sink.upcast_ref()]).unwrap();
    gst::Element::link_many([&encoded.out, &parse, sink.upcast_ref()]).unwrap();
    p.set_state(gst::State::Playing).unwrap();
    let mut bytes = Vec::new();
    while let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_seconds(20)) {
        let buf = sample.buffer().unwrap();
        bytes.extend_from_slice(&buf.map_readable().unwrap());
    }
    let error = p
        .bus()
        .and_then(|b| b.pop_filtered(&[gst::MessageType::Error]));
    let enc = encoded.encoder.as_ref().and_then(|e| e.upgrade()).unwrap();
    let caps = enc.static_pad("sink").and_then(|pad| pad.current_caps());
    p.set_state(gst::State::Null).unwrap();
    assert!(error.is_none(), "{error:?}");
    let caps = caps.expect("the encoder negotiated");
    assert!(memory::gpu_caps(&caps), "the encoder takes {caps}");
    let (dec, enc) = memory::status_names(Some("vah264dec"), &va, &path, Some(true));
    assert_eq!(
        (dec.as_deref(), enc.as_str()),
        (Some("vah264dec"), "vah264enc")
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("va.h264");
    std::fs::write(&file, &bytes).unwrap();
    let (frames, errors) = decode_all(&file);
    assert!(frames >= 80, "{frames} frames decoded; {errors}");
    assert!(!errors.to_lowercase().contains("error"), "{errors}");
}
