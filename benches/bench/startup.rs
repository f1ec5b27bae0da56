//! Figure 1: time to first byte and to the first fMP4 fragment (`moof`
//! plus its `mdat`, carrying video) a client can decode. Each pair runs
//! sluice then ffmpeg on identical fresh sources; the first pair of every
//! row keeps both prefixes up to that fragment and has ffprobe decode them.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sluice::profiles::Profile;

use crate::viewer::wait_for;
use crate::{Bench, Who, TEST_STREAM};

/// One viewer's start-up.
#[derive(Debug, Clone, Default)]
pub struct Start {
    pub ttfb_ms: Option<f64>,
    pub fragment_ms: Option<f64>,
    pub error: Option<String>,
}

/// What an independent decoder made of a first-fragment prefix.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub ok: bool,
    pub text: String,
}

#[derive(Debug, Clone)]
pub struct StartRow {
    pub source: &'static str,
    pub profile: String,
    /// (sluice, ffmpeg), in the order they ran.
    pub pairs: Vec<(Start, Start)>,
    /// sluice's and ffmpeg's first-fragment prefix, decoded.
    pub decoded: [Decoded; 2],
}

pub const SOURCE_HLS: &str = "live HLS";
pub const SOURCE_TEST: &str = "test pattern";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn trial(
    b: &Bench,
    who: Who,
    profile: &Profile,
    hls: bool,
    capture: bool,
) -> Result<(Start, Option<Vec<u8>>), String> {
    let (id, source) = if hls {
        b.fresh_hls().await?
    } else {
        (TEST_STREAM.to_string(), b.test_source())
    };
    let s = b.start(who, profile, &id, &source, capture)?;
    wait_for(&s.progress, Duration::from_secs(30), |p| {
        p.first_fragment.is_some()
    })
    .await;
    let (start, prefix) = {
        let p = s.progress.lock().expect("progress lock");
        let error = match (&p.error, p.first_fragment) {
            (Some(e), _) => Some(e.clone()),
            (None, None) => Some("no video fragment within 30 s".into()),
            _ => None,
        };
        (
            Start {
                ttfb_ms: p.first_byte.map(ms),
                fragment_ms: p.first_fragment.map(ms),
                error,
            },
            p.prefix.clone(),
        )
    };
    b.stop_all(who, vec![s]).await?;
    Ok((start, prefix))
}

/// ffprobe's reading of the first video stream of `path`, every frame decoded.
pub fn ffprobe_video(path: &Path) -> Decoded {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=codec_name,profile,level,width,height,nb_read_frames",
        ])
        .args(["-of", "json"])
        .arg(path)
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            return Decoded {
                ok: false,
                text: format!("ffprobe did not run: {e}"),
            }
        }
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let s = &v["streams"][0];
    let frames: u64 = s["nb_read_frames"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let errors = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if frames == 0 || !out.status.success() {
        return Decoded {
            ok: false,
            text: format!("no frame decoded ({errors})"),
        };
    }
    let level = s["level"].as_i64().unwrap_or(0);
    Decoded {
        ok: true,
        text: format!(
            "{} {} {}.{}, {}x{}, {frames} frames",
            s["codec_name"].as_str().unwrap_or("?"),
            s["profile"].as_str().unwrap_or("?"),
            level / 10,
            level % 10,
            s["width"],
            s["height"],
        ),
    }
}

fn decode_prefix(b: &Bench, name: &str, prefix: Option<Vec<u8>>) -> Decoded {
    let Some(bytes) = prefix else {
        return Decoded {
            ok: false,
            text: "no first fragment captured".into(),
        };
    };
    let path = b.scratch.path().join(format!("{name}.mp4"));
    if let Err(e) = std::fs::write(&path, bytes) {
        return Decoded {
            ok: false,
            text: format!("cannot write {}: {e}", path.display()),
        };
    }
    ffprobe_video(&path)
}

pub async fn run(b: &Bench) -> Result<Vec<StartRow>, String> {
    let mut rows = Vec::new();
    for (source, hls) in [(SOURCE_HLS, true), (SOURCE_TEST, false)] {
        for name in &b.cfg.profiles {
            let profile = b.profile(name).clone();
            let mut pairs = Vec::new();
            let mut decoded = None;
            for i in 0..b.cfg.startup_pairs {
                let capture = i == 0;
                let (a, pa) = trial(b, Who::Sluice, &profile, hls, capture).await?;
                let (f, pf) = trial(b, Who::Ffmpeg, &profile, hls, capture).await?;
                if capture {
                    let tag = format!("{}-{name}", if hls { "hls" } else { "test" });
                    decoded = Some([
                        decode_prefix(b, &format!("sluice-{tag}"), pa),
                        decode_prefix(b, &format!("ffmpeg-{tag}"), pf),
                    ]);
                }
                eprintln!(
                    "bench: start-up {source} {name}: sluice {:?}/{:?} ms, ffmpeg {:?}/{:?} ms",
                    a.ttfb_ms.map(|v| v.round()),
                    a.fragment_ms.map(|v| v.round()),
                    f.ttfb_ms.map(|v| v.round()),
                    f.fragment_ms.map(|v| v.round())
                );
                pairs.push((a, f));
            }
            rows.push(StartRow {
                source,
                profile: name.clone(),
                pairs,
                decoded: decoded.expect("at least one pair"),
            });
        }
    }
    Ok(rows)
}
