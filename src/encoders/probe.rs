//! The start-up probe: for every candidate, is its element there, does
//! it reach READY, and (encoders) does a 30-frame 1280x720
//! constrained-baseline encode of `videotestsrc` give valid H.264, checked
//! by `h264parse`. Candidates are probed in parallel on their own threads,
//! all within [`PROBE_BUDGET`]; a probe that overruns is abandoned (its
//! thread still takes its pipeline to NULL when it returns) and reported
//! as timed out.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gst::prelude::*;

use super::{Candidate, Family, Kind, Probed};
use crate::profiles::Profile;

/// The whole probe finishes within this.
pub const PROBE_BUDGET: Duration = Duration::from_secs(5);
const TEST_FRAMES: i32 = 30;
const TEST_SIZE: (i32, i32) = (1280, 720);

/// Probes every encoder and decoder; results in list order.
pub fn probe_all(encoders: &[Candidate], decoders: &[Candidate]) -> Vec<Probed> {
    let deadline = Instant::now() + PROBE_BUDGET;
    let jobs: Vec<(Candidate, Kind)> = encoders
        .iter()
        .map(|c| (c.clone(), Kind::Encoder))
        .chain(decoders.iter().map(|c| (c.clone(), Kind::Decoder)))
        .collect();
    let (tx, rx) = mpsc::channel::<(usize, Probed)>();
    for (i, (c, kind)) in jobs.iter().cloned().enumerate() {
        let tx = tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("probe-{}", c.element))
            .spawn(move || {
                let _ = tx.send((i, probe_one(&c, kind, deadline)));
            });
        if spawned.is_err() {
            tracing::warn!(element = %jobs[i].0.element, "could not start a probe thread");
        }
    }
    drop(tx);
    let mut results: Vec<Option<Probed>> = vec![None; jobs.len()];
    while results.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, p)) => results[i] = Some(p),
            Err(_) => break,
        }
    }
    results
        .into_iter()
        .zip(jobs)
        .map(|(r, (c, kind))| {
            r.unwrap_or_else(|| {
                unavailable(
                    &c,
                    kind,
                    "probe timed out".into(),
                    "the driver did not answer within 5 s: check the kernel log (dmesg) and the driver installation".into(),
                )
            })
        })
        .collect()
}

fn unavailable(c: &Candidate, kind: Kind, reason: String, fix: String) -> Probed {
    Probed {
        name: c.name.clone(),
        element: c.element.clone(),
        kind,
        available: false,
        reason: Some(reason),
        fix: Some(fix),
    }
}

/// Probes one candidate (on its own thread).
pub fn probe_one(c: &Candidate, kind: Kind, deadline: Instant) -> Probed {
    match check(c, kind, deadline) {
        Ok(()) => Probed {
            name: c.name.clone(),
            element: c.element.clone(),
            kind,
            available: true,
            reason: None,
            fix: None,
        },
        Err((reason, fix)) => unavailable(c, kind, reason, fix),
    }
}

type Why = (String, String);

fn check(c: &Candidate, kind: Kind, deadline: Instant) -> Result<(), Why> {
    device_check(c, kind)?;
    let element = c.make().map_err(|e| (e, missing_fix(c)))?;
    // READY opens the device (and, for NVENC, the encode library).
    let ready = element.set_state(gst::State::Ready);
    let _ = element.set_state(gst::State::Null);
    if ready.is_err() {
        return Err((
            format!("{} refused to start (state READY failed)", c.element),
            ready_fix(c),
        ));
    }
    drop(element);
    if kind == Kind::Decoder {
        return Ok(());
    }
    test_encode(c, deadline).map_err(|e| {
        (
            format!("the test encode produced no valid H.264: {e}"),
            ready_fix(c),
        )
    })
}

/// The device a hardware family needs, readable and writable by us.
fn device_check(c: &Candidate, kind: Kind) -> Result<(), Why> {
    let uid = unsafe { libc::geteuid() };
    match c.family {
        Family::Dri => {
            let nodes = devices(Path::new("/dev/dri"), "renderD");
            let Some(first) = nodes.first() else {
                return Err((
                    "no /dev/dri/renderD* render node".into(),
                    "give sluice the GPU: in Docker `devices: [/dev/dri:/dev/dri]` (see compose.yaml)".into(),
                ));
            };
            if !nodes.iter().any(|n| accessible(n)) {
                return Err((
                    format!("{} not readable by uid {uid}", first.display()),
                    "add the container to group 'render' (`group_add: [render]`), or the user to the render group".into(),
                ));
            }
            Ok(())
        }
        Family::Nvidia => {
            // NVENC needs the driver's encode library, NVDEC its cuvid one.
            let lib = match kind {
                Kind::Encoder => "libnvidia-encode",
                Kind::Decoder => "libnvcuvid",
            };
            if gst::ElementFactory::find(&c.element).is_none()
                && !library_present(&format!("{lib}.so.1"))
            {
                return Err((
                    format!("{lib} not found"),
                    "install the NVIDIA driver; in a container set NVIDIA_DRIVER_CAPABILITIES=video (or all) with the NVIDIA container toolkit".into(),
                ));
            }
            Ok(())
        }
        Family::V4l2 => {
            let nodes = devices(Path::new("/dev"), "video");
            if nodes.is_empty() {
                return Err((
                    "no /dev/video* device".into(),
                    "give sluice the encoder device (a Raspberry Pi's /dev/video11): `devices: [/dev/video11]`".into(),
                ));
            }
            if !nodes.iter().any(|n| accessible(n)) {
                return Err((
                    format!("/dev/video* not readable by uid {uid}"),
                    "add the container to group 'video' (`group_add: [video]`)".into(),
                ));
            }
            Ok(())
        }
        Family::Software => Ok(()),
    }
}

fn devices(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

fn accessible(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: c is a valid NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::R_OK | libc::W_OK) == 0 }
}

fn library_present(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: dlopen with a valid C string; the handle is closed at once.
    unsafe {
        let h = libc::dlopen(c.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
        if h.is_null() {
            false
        } else {
            libc::dlclose(h);
            true
        }
    }
}

fn missing_fix(c: &Candidate) -> String {
    match c.name.as_str() {
        "nvenc" => "gstreamer1.0-plugins-bad has no nvcodec element here: install gstreamer1.0-plugins-bad and the NVIDIA driver (libnvidia-encode)".into(),
        "va" => "install gstreamer1.0-plugins-bad (va) and a VA driver: intel-media-va-driver(-non-free) or mesa-va-drivers".into(),
        "qsv" => "install gstreamer1.0-plugins-bad built with Quick Sync (qsv) and intel-media-va-driver-non-free with libvpl/onevpl".into(),
        "vaapi" => "install gstreamer1.0-vaapi and a VA driver: intel-media-va-driver(-non-free) or mesa-va-drivers".into(),
        "v4l2" => "install gstreamer1.0-plugins-good (video4linux2) on a board with a V4L2 H.264 encoder".into(),
        "x264" => "install gstreamer1.0-plugins-ugly (x264enc)".into(),
        _ => format!("install the GStreamer plugin that provides {}", c.element),
    }
}

fn ready_fix(c: &Candidate) -> String {
    match c.family {
        Family::Nvidia => "check the NVIDIA driver (nvidia-smi); in a container set NVIDIA_DRIVER_CAPABILITIES=video; consumer cards allow a few encode sessions at once".into(),
        Family::Dri => "check the VA driver with vainfo; set LIBVA_DRIVER_NAME (iHD for recent Intel, i965 for older, radeonsi for AMD)".into(),
        Family::V4l2 => "check the V4L2 encoder device (v4l2-ctl --list-devices)".into(),
        Family::Software => "reinstall gstreamer1.0-plugins-ugly (x264enc)".into(),
    }
}

/// The profile the test encode uses: 720p at 2.5 Mbit/s, level 3.1, with
/// x264's cheapest preset (the probe checks the output, not the speed, and
/// must stay quick on a busy machine).
fn probe_profile() -> Profile {
    let mut p = crate::profiles::Profiles::builtin()
        .get("medium")
        .cloned()
        .expect("the built-in medium profile");
    p.preset = "ultrafast".into();
    p
}

/// Encodes 30 frames of 1280x720 test video and checks what comes out.
fn test_encode(c: &Candidate, deadline: Instant) -> Result<(), String> {
    let p = gst::Pipeline::builder()
        .name(format!("probe-{}", c.name))
        .build();
    let result = run_test_encode(&p, c, deadline);
    if p.set_state(gst::State::Null).is_err() {
        tracing::warn!(element = %c.element, "a probe pipeline did not reach NULL cleanly");
    }
    result
}

fn run_test_encode(p: &gst::Pipeline, c: &Candidate, deadline: Instant) -> Result<(), String> {
    let make = |f: &str| {
        gst::ElementFactory::make(f)
            .build()
            .map_err(|_| format!("element '{f}' not found"))
    };
    let src = make("videotestsrc")?;
    src.set_property("num-buffers", TEST_FRAMES);
    let convert = make("videoconvert")?;
    let raw = make("capsfilter")?;
    raw.set_property(
        "caps",
        gst::Caps::builder("video/x-raw")
            .field("format", c.input_format)
            .field("width", TEST_SIZE.0)
            .field("height", TEST_SIZE.1)
            .field("framerate", gst::Fraction::new(30, 1))
            .build(),
    );
    let enc = c.make()?;
    let profile = probe_profile();
    super::props::apply(&enc, &c.name, &profile, 30, 1);
    let enc_caps = make("capsfilter")?;
    enc_caps.set_property(
        "caps",
        gst::Caps::builder("video/x-h264")
            .field("profile", "constrained-baseline")
            .build(),
    );
    let parse = make("h264parse")?;
    let sink = gst_app::AppSink::builder().sync(false).build();
    let sink_el: gst::Element = sink.clone().upcast();
    let chain = [&src, &convert, &raw, &enc, &enc_caps, &parse, &sink_el];
    p.add_many(chain).map_err(|e| e.to_string())?;
    gst::Element::link_many(chain).map_err(|e| e.to_string())?;
    p.set_state(gst::State::Playing)
        .map_err(|_| format!("{} refused to start", c.element))?;
    let bus = p.bus().expect("pipeline bus");
    let mut frames = 0u32;
    let mut caps: Option<gst::Caps> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out".into());
        }
        if let Some(s) = sink.try_pull_sample(gst::ClockTime::from_mseconds(50)) {
            frames += 1;
            if caps.is_none() {
                caps = s.caps_owned();
            }
            continue;
        }
        if sink.is_eos() {
            break;
        }
        if let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
            if let gst::MessageView::Error(e) = msg.view() {
                return Err(e.error().to_string());
            }
        }
    }
    if frames == 0 {
        return Err("no frames came out".into());
    }
    let caps = caps.ok_or("no caps on the output")?;
    let s = caps.structure(0).ok_or("empty caps")?;
    let (w, h) = (
        s.get::<i32>("width").unwrap_or(0),
        s.get::<i32>("height").unwrap_or(0),
    );
    if (w, h) != TEST_SIZE {
        return Err(format!("the parser found {w}x{h}, not 1280x720"));
    }
    match s.get::<&str>("profile") {
        Ok("constrained-baseline") | Ok("baseline") => Ok(()),
        Ok(other) => Err(format!("profile {other}, not constrained-baseline")),
        Err(_) => Err("the parser found no H.264 profile".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x264_passes_the_test_encode() {
        gst::init().unwrap();
        let x264 = super::super::encoder_candidates().pop().unwrap();
        if gst::ElementFactory::find("x264enc").is_none() {
            eprintln!("skipped: x264enc is not installed");
            return;
        }
        let p = probe_one(&x264, Kind::Encoder, Instant::now() + PROBE_BUDGET);
        assert!(p.available, "{p:?}");
    }

    #[test]
    fn a_missing_element_is_reported_with_a_fix() {
        gst::init().unwrap();
        let c = Candidate::custom(
            "nothing",
            "nosuchh264enc",
            std::sync::Arc::new(|| Err("element 'nosuchh264enc' not found".into())),
        );
        let p = probe_one(&c, Kind::Encoder, Instant::now() + PROBE_BUDGET);
        assert!(!p.available);
        assert_eq!(
            p.reason.as_deref(),
            Some("element 'nosuchh264enc' not found")
        );
        assert!(p.fix.unwrap().contains("nosuchh264enc"));
    }

    #[test]
    fn the_whole_probe_is_bounded_and_names_a_reason_for_each() {
        gst::init().unwrap();
        let t0 = Instant::now();
        let all = probe_all(
            &super::super::encoder_candidates(),
            &super::super::decoder_candidates(),
        );
        assert!(t0.elapsed() < PROBE_BUDGET + Duration::from_millis(500));
        assert_eq!(all.len(), 10);
        for p in all.iter().filter(|p| !p.available) {
            let reason = p.reason.as_deref().unwrap();
            assert!(!reason.is_empty() && p.fix.as_deref().is_some_and(|f| !f.is_empty()));
        }
    }
}
