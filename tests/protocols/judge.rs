//! Asking sluice for a preview and judging what comes back: time to first
//! byte, headers, and the container, codecs and frames as ffprobe sees them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::common::*;
use crate::upstream::Netns;

/// Longest wait for a preview's first byte (a loaded 2-core machine).
pub const FIRST_BYTE: Duration = Duration::from_secs(20);
/// How much of each preview is read after its first byte.
pub const READ: Duration = Duration::from_secs(4);
/// Fewest decodable frames in a preview read for [`READ`] (25 fps sources).
pub const MIN_FRAMES: u64 = 20;

/// A sluice server with the preview rate limit off: these tests are not about it.
pub async fn server() -> TestServer {
    start_with(|s| s.rate_limit_preview = sluice::http::ratelimit::Rate::parse("off").unwrap())
        .await
}

/// One preview read: time to first byte, response headers, and the whole
/// container units received, saved to a file for ffprobe.
pub struct Preview {
    pub ttfb: Duration,
    pub headers: reqwest::header::HeaderMap,
    pub file: PathBuf,
}

/// Requests `/streams/preview/ID?QUERY`, waits for the first byte, reads
/// for [`READ`], hangs up.
pub async fn preview(ts: &TestServer, id: &str, query: &str) -> Preview {
    let path = format!("/streams/preview/{id}?timeout=30000&{query}");
    let started = Instant::now();
    let resp = tokio::time::timeout(FIRST_BYTE, client().get(ts.url(&path)).send())
        .await
        .unwrap_or_else(|_| panic!("{path}: no response within {FIRST_BYTE:?}"))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = resp.status();
    if status != 200 {
        panic!(
            "{path}: {status}: {}",
            resp.text().await.unwrap_or_default()
        );
    }
    let headers = resp.headers().clone();
    let mut body = resp.bytes_stream();
    let first = tokio::time::timeout(FIRST_BYTE, body.next())
        .await
        .unwrap_or_else(|_| panic!("{path}: no body byte within {FIRST_BYTE:?}"))
        .unwrap_or_else(|| panic!("{path}: empty body"))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let ttfb = started.elapsed();
    let mut bytes = first.to_vec();
    let deadline = tokio::time::Instant::now() + READ;
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, body.next()).await {
        bytes.extend_from_slice(&chunk);
    }
    drop(body);
    let ext = if query.contains("format=ts") {
        "ts"
    } else {
        "mp4"
    };
    let file = ts
        .dir
        .path()
        .join(format!("{id}-{}.{ext}", query.replace(['&', '='], "-")));
    std::fs::write(&file, complete_prefix(&bytes)).unwrap();
    Preview {
        ttfb,
        headers,
        file,
    }
}

/// What ffprobe saw in a preview.
pub struct Checked {
    pub width: i64,
    pub height: i64,
}

/// Judges a preview with ffprobe and a full decode: the container asked
/// for, H.264 video, AAC audio, enough frames, no decoder errors.
pub fn check(what: &str, p: &Preview, mode: &str) -> Checked {
    let ts = p.file.extension().is_some_and(|e| e == "ts");
    let (ct, format_name) = if ts {
        ("video/mp2t", "mpegts")
    } else {
        ("video/mp4", "mp4")
    };
    assert_eq!(p.headers["content-type"], ct, "{what}");
    assert_eq!(p.headers["x-sluice-mode"], mode, "{what}");
    let probe = ffprobe(&p.file);
    assert!(
        probe["format"]["format_name"]
            .as_str()
            .is_some_and(|f| f.contains(format_name)),
        "{what}: container {}",
        probe["format"]
    );
    let v = stream_of(&probe, "video").unwrap_or_else(|| panic!("{what}: no video: {probe}"));
    assert_eq!(v["codec_name"], "h264", "{what}: {v}");
    let a = stream_of(&probe, "audio").unwrap_or_else(|| panic!("{what}: no audio: {probe}"));
    assert_eq!(a["codec_name"], "aac", "{what}: {a}");
    let (frames, errors) = decode_all(&p.file);
    assert!(
        frames >= MIN_FRAMES,
        "{what}: {frames} frames decoded in {READ:?}"
    );
    assert!(
        !errors.to_lowercase().contains("error"),
        "{what}: decoder errors: {errors}"
    );
    Checked {
        width: v["width"].as_i64().unwrap_or(0),
        height: v["height"].as_i64().unwrap_or(0),
    }
}

pub fn report(protocol: &str, p: &Preview) {
    println!("protocol {protocol} ttfb_ms={}", p.ttfb.as_millis());
}

/// The usual proof for a protocol: an fMP4 preview with the default mode
/// (remux: every source here is H.264 + AAC) and an MPEG-TS preview
/// transcoded to the low profile, side by side.
pub async fn prove(protocol: &str, ts: &TestServer, mp4_id: &str, ts_id: &str) {
    let (mp4, mpegts) = tokio::join!(
        preview(ts, mp4_id, "format=mp4"),
        preview(ts, ts_id, "format=ts&quality=low"),
    );
    check(&format!("{protocol} mp4"), &mp4, "remux");
    check(&format!("{protocol} ts"), &mpegts, "transcode");
    report(protocol, &mp4);
}

/// [`preview`] with curl run inside `ns`: reads the body until
/// [`FIRST_BYTE`] + [`READ`] have passed (curl's --max-time), keeps the
/// response headers and curl's time to first byte.
pub async fn curl_preview(
    ns: &Netns,
    bin: &BinServer,
    id: &str,
    query: &str,
    dir: &Path,
) -> Preview {
    let file = dir.join(format!("{id}.mp4"));
    let head = dir.join(format!("{id}.headers"));
    let mut cmd = ns.exec("curl");
    cmd.args([
        "-sS",
        "-o",
        &file.display().to_string(),
        "-D",
        &head.display().to_string(),
        "-w",
        "%{http_code} %{time_starttransfer}",
        "--max-time",
        &(FIRST_BYTE + READ).as_secs().to_string(),
        &bin.url(&format!("/streams/preview/{id}?timeout=30000&{query}")),
    ]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stats = String::from_utf8_lossy(&out.stdout).to_string();
    let (code, ttfb) = stats.split_once(' ').unwrap_or((&stats, ""));
    assert_eq!(
        code,
        "200",
        "{id}: curl says {stats} {}\nsluice log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        bin.stderr_text()
    );
    let ttfb = Duration::from_secs_f64(ttfb.parse().expect("curl's time_starttransfer"));
    let mut headers = reqwest::header::HeaderMap::new();
    for line in std::fs::read_to_string(&head).unwrap().lines() {
        if let Some((k, v)) = line.split_once(':') {
            if let (Ok(k), Ok(v)) = (
                reqwest::header::HeaderName::from_bytes(k.trim().as_bytes()),
                v.trim().parse(),
            ) {
                headers.insert(k, v);
            }
        }
    }
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, complete_prefix(&bytes)).unwrap();
    Preview {
        ttfb,
        headers,
        file,
    }
}
