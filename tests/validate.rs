//! `POST /api/streams/validate` end to end (issue 6, item 2): real media
//! made by ffmpeg and served over HTTP by a small server in the test, a
//! file:// source in the media dir, dead, hanging and garbage sources, the
//! test:// scheme, credential redaction, and no probe outliving its request.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

/// Tests here run one at a time: the leak check counts the process's
/// threads and file descriptors, which a concurrent test would disturb.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A tiny HTTP/1.1 server on 127.0.0.1: fixed bodies by path, 404 otherwise.
async fn serve(files: Vec<(&str, &str, Vec<u8>)>) -> SocketAddr {
    let files: Arc<HashMap<String, (String, Vec<u8>)>> = Arc::new(
        files
            .into_iter()
            .map(|(p, ct, body)| (p.to_string(), (ct.to_string(), body)))
            .collect(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let files = files.clone();
            tokio::spawn(async move {
                let Some(text) = read_request_head(&mut tcp).await else {
                    return;
                };
                let path = text.split_whitespace().nth(1).unwrap_or("/");
                let path = path.split('?').next().unwrap_or(path);
                let (status, ct, body) = match files.get(path) {
                    Some((ct, body)) => ("200 OK", ct.as_str(), body.as_slice()),
                    None => ("404 Not Found", "text/plain", &b"not found"[..]),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tcp.write_all(head.as_bytes()).await;
                let _ = tcp.write_all(body).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}

/// A port on 127.0.0.1 where nothing listens.
async fn dead_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

async fn validate(ts: &TestServer, body: Value) -> (u16, Value) {
    let r = client()
        .post(ts.url("/api/streams/validate"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn ts_file(dir: &std::path::Path) -> Vec<u8> {
    let path = dir.join("src.ts");
    make_media(
        &path,
        2,
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ],
        &["-c:a", "aac", "-ac", "2", "-ar", "48000"],
        &["-f", "mpegts"],
    );
    std::fs::read(&path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_ts_source_is_described_in_full() {
    let _serial = SERIAL.lock().await;
    let ts = start().await;
    let upstream = serve(vec![(
        "/live/channel.ts",
        "video/mp2t",
        ts_file(ts.dir.path()),
    )])
    .await;
    let url = format!("http://{upstream}/live/channel.ts");
    let (status, r) = validate(&ts, json!({ "url": url })).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["valid"], true, "{r}");
    assert_eq!(r["error"], Value::Null);
    assert_eq!(r["protocol"], "http");
    assert_eq!(r["live"], false);
    assert_eq!(r["container"], "mpegts");
    assert_eq!(r["video"]["codec"], "h264");
    assert_eq!(r["video"]["width"], 1280);
    assert_eq!(r["video"]["height"], 720);
    assert_eq!(r["video"]["framerate"], 25.0);
    assert_eq!(r["video"]["interlaced"], false);
    assert_eq!(r["audio"]["codec"], "aac");
    assert_eq!(r["audio"]["channels"], 2);
    assert_eq!(r["audio"]["sampleRate"], 48000);
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hls_playlist_is_recognised_as_hls() {
    let _serial = SERIAL.lock().await;
    let ts = start().await;
    let dir = ts.dir.path().join("hls");
    std::fs::create_dir_all(&dir).unwrap();
    make_media(
        &dir.join("index.m3u8"),
        4,
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-g",
            "25",
        ],
        &["-c:a", "aac", "-ac", "2", "-ar", "48000"],
        &["-f", "hls", "-hls_time", "1", "-hls_playlist_type", "vod"],
    );
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let ct = if name.ends_with(".m3u8") {
            "application/vnd.apple.mpegurl"
        } else {
            "video/mp2t"
        };
        files.push((format!("/hls/{name}"), ct, std::fs::read(&path).unwrap()));
    }
    let upstream = serve(
        files
            .iter()
            .map(|(p, ct, b)| (p.as_str(), *ct, b.clone()))
            .collect(),
    )
    .await;
    let (status, r) = validate(
        &ts,
        json!({"url": format!("http://{upstream}/hls/index.m3u8")}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["valid"], true, "{r}");
    assert_eq!(r["protocol"], "hls");
    assert_eq!(r["container"], "hls");
    assert_eq!(r["video"]["codec"], "h264");
    assert_eq!(r["video"]["width"], 1280);
    assert_eq!(r["audio"]["codec"], "aac");
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_in_the_media_dir_and_a_video_only_mp4() {
    let _serial = SERIAL.lock().await;
    let ts = start().await;
    let path = ts.media_dir().join("clip.mp4");
    make_media(
        &path,
        1,
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ],
        &["-an"],
        &["-movflags", "+faststart"],
    );
    let (status, r) = validate(&ts, json!({ "url": format!("file://{}", path.display()) })).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["valid"], true, "{r}");
    assert_eq!(r["protocol"], "file");
    assert_eq!(r["live"], false, "a file has an end: {r}");
    assert_eq!(r["container"], "mp4");
    assert_eq!(r["video"]["codec"], "h264");
    assert_eq!(r["audio"], Value::Null, "no audio stream: null");
    // Outside the media dir: refused like the catalog refuses it.
    let outside = ts.dir.path().join("outside.mp4");
    std::fs::copy(&path, &outside).unwrap();
    let (status, r) = validate(
        &ts,
        json!({ "url": format!("file://{}", outside.display()) }),
    )
    .await;
    assert_eq!(status, 400, "{r}");
    assert_eq!(r["error"], "bad_request");
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_sources_are_described_from_their_parameters() {
    let _serial = SERIAL.lock().await;
    let ts = start().await;
    let (_, r) = validate(
        &ts,
        json!({"url": "test://smpte?size=1920x1080&rate=30000/1001&interlaced=1"}),
    )
    .await;
    assert_eq!(r["valid"], true, "{r}");
    assert_eq!(
        (r["protocol"].as_str(), r["live"].as_bool()),
        (Some("test"), Some(true))
    );
    assert_eq!(r["video"]["codec"], "raw");
    assert_eq!(
        (r["video"]["width"].as_u64(), r["video"]["height"].as_u64()),
        (Some(1920), Some(1080))
    );
    assert_eq!(r["video"]["framerate"], 29.97);
    assert_eq!(r["video"]["interlaced"], true);
    assert_eq!(r["audio"]["sampleRate"], 48000);
    assert_eq!(r["audio"]["channels"], 2);
    let (_, r) = validate(&ts, json!({"url": "test://ball?audio=none"})).await;
    assert_eq!(r["audio"], Value::Null, "{r}");
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_garbage_and_hanging_sources_answer_invalid_within_the_deadline() {
    let _serial = SERIAL.lock().await;
    let ts = start().await;
    let port = dead_port().await;
    let t = Instant::now();
    let (status, r) = validate(&ts, json!({"url": format!("http://127.0.0.1:{port}/x.ts")})).await;
    println!("dead port answered in {:?}: {r}", t.elapsed());
    assert_eq!(status, 200);
    assert_eq!(r["valid"], false, "{r}");
    assert_eq!(r["protocol"], "http");
    assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    assert_eq!(r["video"], Value::Null);
    assert!(t.elapsed() < Duration::from_secs(12), "{:?}", t.elapsed());

    let garbage: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let upstream = serve(vec![("/garbage.ts", "application/octet-stream", garbage)]).await;
    let (status, r) = validate(
        &ts,
        json!({"url": format!("http://{upstream}/garbage.ts"), "timeout": 5000}),
    )
    .await;
    println!("garbage: {r}");
    assert_eq!(status, 200);
    assert_eq!(r["valid"], false, "{r}");
    assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");

    // Accepts the connection, never answers: the deadline decides.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = hang.accept().await {
            conns.push(c);
        }
    });
    let t = Instant::now();
    let (status, r) = validate(
        &ts,
        json!({"url": format!("http://{hang_addr}/slow.ts"), "timeout": 1500}),
    )
    .await;
    let took = t.elapsed();
    println!("hanging source answered in {took:?}: {r}");
    assert_eq!(status, 200);
    assert_eq!(r["valid"], false, "{r}");
    assert!(r["error"].as_str().unwrap().contains("1500 ms"), "{r}");
    assert!(took >= Duration::from_millis(1400), "{took:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    held.abort();
    ts.stop().await;
}

/// A server that answers 403 to requests without `X-Token: abc` and 404 to
/// the others, keeping every request head it was sent.
async fn gatekeeper() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let heads: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let kept = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let Some(head) = read_request_head(&mut tcp).await else {
                    return;
                };
                let allowed = head
                    .lines()
                    .any(|l| l.to_ascii_lowercase().replace(' ', "") == "x-token:abc");
                kept.lock().unwrap().push(head);
                let status = if allowed {
                    "404 Not Found"
                } else {
                    "403 Forbidden"
                };
                let answer =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = tcp.write_all(answer.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    (addr, heads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_source_is_explained_with_the_streams_own_headers() {
    let _serial = SERIAL.lock().await;
    let ts = start().await;
    let (upstream, heads) = gatekeeper().await;
    let (status, r) = validate(
        &ts,
        json!({
            "url": format!("http://{upstream}/gone.ts"),
            "headers": {"X-Token": "abc"},
            "timeout": 5000
        }),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(r["valid"], false, "{r}");
    let error = r["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("HTTP 404") && !error.contains("403"),
        "the check must be asked as the source was: {r}"
    );
    let heads = heads.lock().unwrap().clone();
    let check = heads
        .iter()
        .find(|h| h.to_ascii_lowercase().contains("user-agent: sluice/"))
        .unwrap_or_else(|| panic!("no request from the check: {heads:?}"));
    assert!(
        check.to_ascii_lowercase().contains("x-token: abc"),
        "{check}"
    );
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_appear_in_the_answer() {
    let _serial = SERIAL.lock().await;
    let ts = start().await;
    let upstream = serve(vec![]).await;
    let port = dead_port().await;
    for url in [
        format!("http://admin:S3cretPw@127.0.0.1:{port}/live/user/S3cretPw/42.ts?token=S3cretTok"),
        format!("http://admin:S3cretPw@{upstream}/get.php?username=u&password=S3cretPw"),
        format!("http://{upstream}/live/someone/S3cretPw/42.ts"),
    ] {
        let r = client()
            .post(ts.url("/api/streams/validate"))
            .json(&json!({"url": url, "timeout": 5000}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        println!("{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["valid"], false, "{text}");
        assert!(!v["error"].as_str().unwrap_or("").is_empty(), "{text}");
        assert!(!text.contains("S3cret"), "credential leaked: {text}");
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_and_callers_without_admin_rights_are_refused() {
    let _serial = SERIAL.lock().await;
    let ts = start().await;
    for (body, want) in [
        (json!({"url": "ftp://h/x.ts"}), 400),
        (json!({"url": "not a url"}), 400),
        (json!({"url": "test://smpte", "timeout": 100}), 400),
        (json!({"url": "test://smpte", "timeout": 60000}), 400),
        (
            json!({"url": "http://h/x", "headers": {"Bad Header": "x"}}),
            400,
        ),
        (json!({"nope": 1}), 400),
    ] {
        let (status, r) = validate(&ts, body.clone()).await;
        assert_eq!(status, want, "{body}: {r}");
        assert!(r["error"].is_string() && r["message"].is_string(), "{r}");
    }
    ts.stop().await;
    let keyed = start_with(|s| s.admin_api_key = Some("k3y".into())).await;
    let (status, r) = validate(&keyed, json!({"url": "test://smpte"})).await;
    assert_eq!(status, 401, "{r}");
    let r = client()
        .post(keyed.url("/api/streams/validate"))
        .header("x-admin-key", "k3y")
        .json(&json!({"url": "test://smpte"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    keyed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_dead_probes_leave_no_threads_or_discoverers_behind() {
    let _serial = SERIAL.lock().await;
    let ts = start().await;
    let port = dead_port().await;
    let url = format!("http://127.0.0.1:{port}/x.ts");
    let upstream = serve(vec![("/ok.ts", "video/mp2t", ts_file(ts.dir.path()))]).await;
    let good = format!("http://{upstream}/ok.ts");
    // Warm-up: GStreamer's plugin registry and thread pools.
    for _ in 0..2 {
        let (_, r) = validate(&ts, json!({ "url": url })).await;
        assert_eq!(r["valid"], false);
        let (_, r) = validate(&ts, json!({ "url": good })).await;
        assert_eq!(r["valid"], true, "{r}");
    }
    assert!(
        eventually(
            Duration::from_secs(20),
            || sluice::media::probe::running_probes() == 0
        )
        .await
    );
    let (threads, fds) = (thread_count(), fd_count());
    let t = Instant::now();
    for _ in 0..30 {
        let (status, r) = validate(&ts, json!({ "url": url })).await;
        assert_eq!((status, r["valid"].as_bool()), (200, Some(false)), "{r}");
    }
    println!("30 dead probes took {:?}", t.elapsed());
    // And sources that open a whole pipeline (souphttpsrc, tsdemux, parsers).
    for _ in 0..10 {
        let (_, r) = validate(&ts, json!({ "url": good })).await;
        assert_eq!(r["valid"], true, "{r}");
    }
    assert!(
        eventually(
            Duration::from_secs(20),
            || sluice::media::probe::running_probes() == 0
        )
        .await
    );
    assert_eq!(
        sluice::media::probe::leaked_probes(),
        0,
        "a discoverer outlived its probe"
    );
    let settled = eventually(Duration::from_secs(20), || {
        thread_count() <= threads + 4 && fd_count() <= fds + 8
    })
    .await;
    println!(
        "threads {threads} -> {}, fds {fds} -> {}",
        thread_count(),
        fd_count()
    );
    assert!(
        settled,
        "threads {threads} -> {}, fds {fds} -> {}",
        thread_count(),
        fd_count()
    );
    ts.stop().await;
}
