//! Graceful shutdown of the real binary (SPEC §9): with two previews
//! playing (fMP4 and MPEG-TS), SIGTERM makes `/ready` 503 or closes the
//! listener at once, every client gets a properly finished stream (clean
//! end of the chunked body, a file ffmpeg decodes without a single error),
//! the catalog is intact, and the process exits 0 within `SHUTDOWN_GRACE`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::io::AsyncWriteExt;

const GRACE_MS: u64 = 8000;

/// How a client's download ended.
#[derive(Debug, PartialEq)]
enum End {
    /// The body ended cleanly (terminating chunk received).
    Clean,
    /// The connection broke mid-body.
    Broken(String),
}

/// Streams `url` into `path` until the server ends the body.
async fn download(url: String, path: PathBuf) -> (End, u64) {
    let client = reqwest::Client::builder().build().unwrap();
    let resp = client.get(&url).send().await.expect("preview request");
    assert_eq!(resp.status(), 200, "{url}");
    let mut file = tokio::fs::File::create(&path).await.unwrap();
    let mut body = resp.bytes_stream();
    let mut n = 0u64;
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(60), body.next()).await {
            Ok(Some(Ok(chunk))) => {
                n += chunk.len() as u64;
                file.write_all(&chunk).await.unwrap();
            }
            Ok(Some(Err(e))) => break End::Broken(format!("{e:?}")),
            Ok(None) => break End::Clean,
            Err(_) => break End::Broken("no end within 60 s".into()),
        }
    };
    file.flush().await.unwrap();
    (end, n)
}

/// `ffmpeg -v error -i f -f null -`: decodes everything; returns its stderr.
fn ffmpeg_errors(path: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg runs (apt install ffmpeg)");
    let mut text = String::from_utf8_lossy(&out.stderr).to_string();
    if !out.status.success() {
        text.push_str(&format!(" (exit {:?})", out.status.code()));
    }
    text
}

/// Video frames ffprobe decodes from `path`.
fn video_frames(path: &Path) -> u64 {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "json"])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["streams"][0]["nb_read_frames"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn sigterm_finishes_both_streams_and_exits_zero_within_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let grace = GRACE_MS.to_string();
    let mut bin = common::BinServer::start(&data, &["--shutdown-grace", &grace], &[]);
    let catalog_before = std::fs::read_to_string(data.join("streams.json")).unwrap();

    let mp4 = dir.path().join("out.mp4");
    let ts = dir.path().join("out.ts");
    let a = tokio::spawn(download(
        bin.url("/streams/preview/demo-smpte?format=mp4&quality=low"),
        mp4.clone(),
    ));
    let b = tokio::spawn(download(
        bin.url("/streams/preview/demo-ball?format=ts&quality=low"),
        ts.clone(),
    ));

    // Both sessions running and delivering for a few seconds.
    let status_url = bin.url("/api/streams/transcoding/status");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st: serde_json::Value = common::client()
            .get(&status_url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let sessions = st["sessions"].as_array().cloned().unwrap_or_default();
        let flowing = sessions
            .iter()
            .filter(|s| s["state"] == "running" && s["bytesSent"].as_u64().unwrap_or(0) > 100_000)
            .count();
        if flowing == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "two sessions running within 60 s: {st}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let pid = bin.child.id() as i32;
    let t0 = Instant::now();
    // SAFETY: plain signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);

    // Readiness drops at once (as soon as the signal is handled): 503 while
    // the listener still answers, then connections are refused.
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let dropped = loop {
        match probe.get(bin.url("/ready")).send().await {
            Err(_) => break true,
            Ok(r) if r.status() == 503 => {
                let v: serde_json::Value = r.json().await.unwrap();
                assert!(
                    v["reasons"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|r| r == "shutting_down"),
                    "{v}"
                );
                break true;
            }
            Ok(r) => assert_eq!(r.status(), 200),
        }
        if t0.elapsed() > Duration::from_secs(3) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(dropped, "/ready still 200 three seconds after SIGTERM");

    // Exit 0 within the grace (plus slack for a loaded machine to schedule us).
    let status = loop {
        if let Some(s) = bin.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_millis(GRACE_MS) + Duration::from_secs(10),
            "exits within the grace"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = t0.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let log = bin.stderr_text();
    assert!(status.success(), "exit status {status:?}\n{log}");
    assert!(
        took <= Duration::from_millis(GRACE_MS) + Duration::from_secs(2),
        "exited after {took:?} (grace {GRACE_MS} ms)\n{log}"
    );
    assert!(
        log.contains("shutdown complete"),
        "drained, not cut off by the watchdog:\n{log}"
    );
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("\"message\":\"session ended\"")
                && l.contains("\"reason\":\"shutdown\""))
            .count(),
        2,
        "both sessions ended for shutdown:\n{log}"
    );

    // Both clients saw a clean end of their chunked body ...
    let (end_a, n_a) = a.await.unwrap();
    let (end_b, n_b) = b.await.unwrap();
    assert_eq!(end_a, End::Clean, "fMP4 body");
    assert_eq!(end_b, End::Clean, "TS body");
    assert!(n_a > 100_000 && n_b > 100_000, "{n_a} / {n_b} bytes");
    // ... and hold streams an independent decoder reads without one error.
    for f in [&mp4, &ts] {
        let errors = ffmpeg_errors(f);
        assert!(errors.trim().is_empty(), "{}: {errors}", f.display());
        let probe = common::ffprobe(f);
        let v = common::stream_of(&probe, "video").expect("video stream");
        assert_eq!(v["codec_name"], "h264");
        assert!(
            common::stream_of(&probe, "audio").is_some(),
            "audio stream in {}",
            f.display()
        );
        let frames = video_frames(f);
        assert!(frames > 30, "{}: {frames} video frames", f.display());
    }
    // MPEG-TS: whole 188-byte packets, each starting with the sync byte.
    let raw = std::fs::read(&ts).unwrap();
    assert_eq!(raw.len() % 188, 0, "whole TS packets");
    assert!(raw.chunks(188).all(|p| p[0] == 0x47));
    // fMP4: the file ends exactly at the end of a complete box.
    let raw = std::fs::read(&mp4).unwrap();
    let (mut at, mut last) = (0usize, [0u8; 4]);
    while at + 8 <= raw.len() {
        let size = u32::from_be_bytes(raw[at..at + 4].try_into().unwrap()) as usize;
        assert!(size >= 8, "box size at {at}");
        last.copy_from_slice(&raw[at + 4..at + 8]);
        at += size;
    }
    assert_eq!(at, raw.len(), "fMP4 ends on a box boundary");
    assert_eq!(&last, b"mdat", "the last fragment is complete (moof+mdat)");

    // The catalog is intact JSON with the same streams.
    let after = std::fs::read_to_string(data.join("streams.json")).unwrap();
    let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).expect("catalog is JSON");
    assert_eq!(parse(&after), parse(&catalog_before));
}
