//! Channel snapshots (SPEC §16): from a running channel without a new
//! upstream connection, from an idle live HLS source with one keyframe and
//! the connection closed when it answers, bounded captures, cache, ETag,
//! and JSON errors. JPEGs are judged by ffprobe.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A test upstream on loopback: live MPEG-TS over HTTP (one ffmpeg per
/// connection) at `/live.ts`, and the files of an HLS directory, with
/// keep-alive. Counts the connections it accepted and those still open.
struct Upstream {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    async fn start(hls_dir: Option<PathBuf>) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (a, o) = (accepted.clone(), open.clone());
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let (o, dir) = (o.clone(), hls_dir.clone());
                tokio::spawn(async move {
                    serve(sock, dir).await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Upstream {
            addr,
            accepted,
            open,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves requests on one connection until the client closes it.
async fn serve(mut sock: TcpStream, dir: Option<PathBuf>) {
    loop {
        let Some(head) = read_request_head(&mut sock).await else {
            return;
        };
        let path = head
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .split('?')
            .next()
            .unwrap_or("/")
            .to_string();
        if path == "/live.ts" {
            live_ts(sock).await;
            return;
        }
        let name = path.trim_start_matches('/');
        let body = match &dir {
            Some(d) if !name.contains("..") => tokio::fs::read(d.join(name)).await.ok(),
            _ => None,
        };
        let resp = match body {
            Some(b) => {
                let ct = if name.ends_with(".m3u8") {
                    "application/vnd.apple.mpegurl"
                } else {
                    "video/mp2t"
                };
                let mut r = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\n\r\n",
                    b.len()
                )
                .into_bytes();
                r.extend_from_slice(&b);
                r
            }
            None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
        };
        if sock.write_all(&resp).await.is_err() {
            return;
        }
    }
}

/// Live H.264 + AAC in MPEG-TS until the client goes.
async fn live_ts(mut sock: TcpStream) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";
    if sock.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let mut child = tokio::process::Command::new("ffmpeg")
        .args(["-v", "error", "-re", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=320x240:rate=25")
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
            "-f",
            "mpegts",
            "pipe:1",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("ffmpeg runs (apt install ffmpeg)");
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match out.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if sock.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

async fn server(tweak: impl FnOnce(&mut sluice::config::Settings)) -> TestServer {
    start_with(|s| {
        let off = sluice::http::ratelimit::Rate::parse("off").unwrap();
        s.rate_limit_preview = off;
        s.rate_limit_api = off;
        tweak(s);
    })
    .await
}

/// The (width, height) ffprobe reads from a JPEG.
fn jpeg_size(ts: &TestServer, name: &str, jpeg: &[u8]) -> (u64, u64) {
    assert_eq!(&jpeg[..2], &[0xff, 0xd8], "{name}: not a JPEG");
    let path = ts.dir.path().join(name);
    std::fs::write(&path, jpeg).unwrap();
    let probe = ffprobe(&path);
    let v = stream_of(&probe, "video").unwrap_or_else(|| panic!("{name}: no picture: {probe}"));
    assert_eq!(v["codec_name"], "mjpeg", "{name}");
    (v["width"].as_u64().unwrap(), v["height"].as_u64().unwrap())
}

/// GETs a snapshot: (status, headers, body, elapsed).
async fn snap(
    ts: &TestServer,
    path: &str,
) -> (u16, reqwest::header::HeaderMap, bytes::Bytes, Duration) {
    let t0 = Instant::now();
    let r = client().get(ts.url(path)).send().await.unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    let body = r.bytes().await.unwrap();
    (status, headers, body, t0.elapsed())
}

async fn captures(ts: &TestServer, origin: &str) -> f64 {
    metric(
        &scrape(ts).await,
        "sluice_snapshot_captures_total",
        &[("origin", origin)],
    )
    .unwrap_or(0.0)
}

/// User + system CPU seconds of this process (the server runs in it).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_remux_channel_gives_its_picture_without_a_new_upstream_connection() {
    let up = Upstream::start(None).await;
    let ts = server(|_| {}).await;
    add_stream(&ts, "live", &up.url("/live.ts")).await;
    let resp = client()
        .get(ts.url("/streams/preview/live?transcode=false&format=ts"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-sluice-mode"], "remux");
    // Keep the preview reading while the snapshots are taken.
    let viewer = tokio::spawn(read_for(resp, Duration::from_secs(20), usize::MAX));
    // A keyframe has passed (one each second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        up.accepted(),
        1,
        "the channel opened one upstream connection"
    );

    let (status, h, body, took) = snap(&ts, "/streams/snapshot/live.jpg?width=200").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(h["content-type"], "image/jpeg");
    assert_eq!(jpeg_size(&ts, "live200.jpg", &body), (200, 150));
    assert!(
        took < Duration::from_millis(150),
        "a running channel's snapshot took {took:?}"
    );
    let (status, _, body, _) = snap(&ts, "/streams/snapshot/live.jpg").await;
    assert_eq!(status, 200);
    assert_eq!(jpeg_size(&ts, "live320.jpg", &body), (320, 240));
    assert_eq!(up.accepted(), 1, "a snapshot opened an upstream connection");
    // One capture per width, both from the running channel.
    assert_eq!(captures(&ts, "running").await, 2.0);
    assert_eq!(captures(&ts, "idle").await, 0.0);
    viewer.abort();
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_channel_that_decodes_gives_its_decoded_picture() {
    let up = Upstream::start(None).await;
    let ts = server(|_| {}).await;
    add_stream(&ts, "live", &up.url("/live.ts")).await;
    let resp = client()
        .get(ts.url("/streams/preview/live?quality=low"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-sluice-mode"], "transcode");
    let viewer = tokio::spawn(read_for(resp, Duration::from_secs(20), usize::MAX));
    assert_eq!(
        ts.state().channels.decoder_counts()[0],
        1,
        "the channel decodes"
    );
    let (status, h, body, took) = snap(&ts, "/streams/snapshot/live.jpg?width=160").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(h["x-sluice-source-size"], "320x240");
    assert_eq!(jpeg_size(&ts, "decoded.jpg", &body), (160, 120));
    assert!(took < Duration::from_millis(150), "took {took:?}");
    assert_eq!(up.accepted(), 1, "a snapshot opened an upstream connection");
    assert_eq!(captures(&ts, "running").await, 1.0);
    viewer.abort();
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_transcoded_channel_gives_a_decoded_frame() {
    let ts = server(|_| {}).await;
    add_stream(&ts, "pattern", "test://smpte?size=640x360&rate=25").await;
    let resp = client()
        .get(ts.url("/streams/preview/pattern?quality=low"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let viewer = tokio::spawn(read_for(resp, Duration::from_secs(20), usize::MAX));
    let started = ts.state().channels.started_total.load(Ordering::Relaxed);
    let (status, _, body, took) = snap(&ts, "/streams/snapshot/pattern.jpg?width=640").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(jpeg_size(&ts, "pattern.jpg", &body), (640, 360));
    assert!(took < Duration::from_millis(150), "took {took:?}");
    assert_eq!(
        ts.state().channels.started_total.load(Ordering::Relaxed),
        started,
        "no channel was opened for the snapshot"
    );
    assert_eq!(captures(&ts, "running").await, 1.0);
    viewer.abort();
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_live_hls_channel_answers_fast_and_cheaply_and_closes_its_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let hls = dir.path().join("hls");
    let writer = HlsWriter::start(&hls, "640x360");
    writer.ready(&hls).await;
    let up = Upstream::start(Some(hls.clone())).await;
    // Every request takes a new picture.
    let ts = server(|s| s.snapshot_ttl_ms = 1).await;
    add_stream(&ts, "hls", &up.url("/index.m3u8")).await;
    let (mut times, mut cpus) = (Vec::new(), Vec::new());
    for i in 0..5 {
        let before = up.accepted();
        let cpu0 = cpu_seconds();
        let (status, h, body, took) = snap(&ts, "/streams/snapshot/hls.jpg?width=320").await;
        let cpu = cpu_seconds() - cpu0;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert!(up.accepted() > before, "capture {i} read the source");
        // The pipeline reached NULL before the answer: nothing stays open.
        let closed = eventually(Duration::from_millis(100), || up.open() == 0).await;
        assert!(
            closed,
            "capture {i}: {} upstream connections still open",
            up.open()
        );
        assert_eq!(h["content-type"], "image/jpeg");
        assert_eq!(jpeg_size(&ts, &format!("hls{i}.jpg"), &body), (320, 180));
        eprintln!("idle HLS snapshot {i}: {took:?}, {cpu:.3} cpu-s");
        times.push(took.as_secs_f64());
        cpus.push(cpu);
    }
    let (t, c) = (median(times), median(cpus));
    assert!(t < 1.5, "median idle HLS snapshot {t:.3} s");
    assert!(c < 0.3, "median CPU of an idle HLS snapshot {c:.3} s");
    assert_eq!(captures(&ts, "idle").await, 5.0);
    assert_eq!(ts.state().channels.len(), 0, "a capture is not a channel");
    // Every capture pipeline was brought down and freed.
    let stats = ts.state().channels.stats().clone();
    let freed = eventually(Duration::from_secs(2), || stats.live_pipelines() == 0).await;
    assert!(
        freed,
        "{} capture pipelines still alive",
        stats.live_pipelines()
    );
    ts.stop().await;
}

/// Time to the first media bytes of a new transcoded preview of `id`.
async fn preview_start(ts: &TestServer, id: &str) -> Duration {
    use futures::StreamExt;
    let t0 = Instant::now();
    let resp = client()
        .get(ts.url(&format!("/streams/preview/{id}?quality=low")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "preview {id}");
    let mut body = resp.bytes_stream();
    let _ = body.next().await;
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_requests_for_ten_channels_make_ten_bounded_captures_and_never_delay_a_preview() {
    let ts = server(|s| s.max_sessions_per_client = 10).await;
    for i in 0..10 {
        add_stream(&ts, &format!("ch{i}"), "test://smpte?size=640x360&rate=25").await;
    }
    for i in 0..4 {
        add_stream(&ts, &format!("pv{i}"), "test://ball?size=640x360&rate=25").await;
    }
    let mut base = Vec::new();
    for i in 0..3 {
        base.push(preview_start(&ts, &format!("pv{i}")).await.as_secs_f64());
    }
    let baseline = median(base);
    let http = client();
    let burst: Vec<_> = (0..50)
        .map(|i| {
            let url = ts.url(&format!("/streams/snapshot/ch{}.jpg", i % 10));
            let http = http.clone();
            tokio::spawn(async move {
                let r = http.get(url).send().await.unwrap();
                (r.status().as_u16(), r.bytes().await.unwrap())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let during = preview_start(&ts, "pv3").await.as_secs_f64();
    for b in burst {
        let (status, body) = b.await.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(&body[..2], &[0xff, 0xd8]);
    }
    let m = scrape(&ts).await;
    assert_eq!(
        metric(&m, "sluice_snapshot_captures_total", &[("origin", "idle")]),
        Some(10.0),
        "one capture per channel"
    );
    let peak = metric(&m, "sluice_snapshot_captures_peak", &[]).unwrap();
    assert!((1.0..=2.0).contains(&peak), "peak captures at once {peak}");
    eprintln!("preview start: baseline {baseline:.3} s, during snapshots {during:.3} s");
    assert!(
        during - baseline <= 0.1,
        "a preview started during snapshots took {during:.3} s against {baseline:.3} s"
    );
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_pictures_carry_an_etag_and_errors_are_json() {
    let ts = server(|_| {}).await;
    add_stream(&ts, "pat", "test://smpte?size=320x240&rate=25").await;
    let (status, h, body, _) = snap(&ts, "/streams/snapshot/pat.jpg?width=160").await;
    assert_eq!(status, 200);
    assert_eq!(jpeg_size(&ts, "pat.jpg", &body), (160, 120));
    let etag = h["etag"].to_str().unwrap().to_string();
    let cc = h["cache-control"].to_str().unwrap();
    assert!(cc.starts_with("max-age="), "{cc}");
    let max_age: u64 = cc["max-age=".len()..].parse().unwrap();
    assert!((25..=30).contains(&max_age), "{cc}");
    assert!(h.contains_key("x-sluice-snapshot-age"));

    // The same picture again, from cache: same tag, no new capture.
    let (status, h2, body2, _) = snap(&ts, "/streams/snapshot/pat.jpg?width=160").await;
    assert_eq!(status, 200);
    assert_eq!(h2["etag"].to_str().unwrap(), etag);
    assert_eq!(body2, body);
    let r = client()
        .get(ts.url("/streams/snapshot/pat.jpg?width=160"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    assert!(r.bytes().await.unwrap().is_empty());
    assert_eq!(captures(&ts, "idle").await, 1.0);

    // Errors.
    let r = client()
        .post(ts.url("/api/streams"))
        .json(&serde_json::json!({"id": "off", "name": "off", "url": "test://smpte", "enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    add_stream(&ts, "gone", "http://viewer:s3cret@127.0.0.1:9/nothing.ts").await;
    // An upstream that takes the request and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}/live.ts", silent.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    add_stream(&ts, "silent", &silent_url).await;
    for (path, status, code) in [
        ("/streams/snapshot/nope.jpg", 404, "stream_not_found"),
        ("/streams/snapshot/off.jpg", 409, "stream_disabled"),
        ("/streams/snapshot/pat.jpg?width=5000", 400, "bad_request"),
        ("/streams/snapshot/pat.jpg?width=abc", 400, "bad_request"),
        ("/streams/snapshot/gone.jpg", 502, "source_failed"),
        (
            "/streams/snapshot/silent.jpg?timeout=500",
            504,
            "snapshot_timeout",
        ),
    ] {
        let r = client().get(ts.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
        assert_eq!(r.headers()["content-type"], "application/json", "{path}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"], code, "{path}: {v}");
        let message = v["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{path}: {v}");
        if status == 502 {
            assert!(message.contains("connection refused"), "{path}: {v}");
        }
        assert!(
            !message.contains("s3cret"),
            "{path}: a credential leaked: {v}"
        );
    }
    hold.abort();
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audio_only_stream_answers_no_video() {
    let dir = tempfile::tempdir().unwrap();
    let ts = server(|_| {}).await;
    // An audio-only MPEG-TS file served over HTTP.
    let file = dir.path().join("radio.ts");
    let ok = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=5",
        ])
        .args(["-c:a", "aac", "-f", "mpegts"])
        .arg(&file)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let up = Upstream::start(Some(dir.path().to_path_buf())).await;
    add_stream(&ts, "radio", &up.url("/radio.ts")).await;
    let r = client()
        .get(ts.url("/streams/snapshot/radio.jpg"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "no_video", "{v}");
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_picture_stands_in_when_the_source_cannot_be_opened() {
    let up = Upstream::start(None).await;
    let ts = server(|s| s.snapshot_ttl_ms = 200).await;
    add_stream(&ts, "live", &up.url("/live.ts")).await;
    let (status, h, body, _) = snap(&ts, "/streams/snapshot/live.jpg").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(h["x-sluice-source-size"], "320x240");
    // The upstream goes away: new connections are refused.
    drop(up);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, h2, body2, _) = snap(&ts, "/streams/snapshot/live.jpg").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body2));
    assert_eq!(body2, body, "the last picture is served");
    assert_eq!(h2["etag"], h["etag"]);
    assert_eq!(h2["cache-control"], "max-age=0", "a stand-in is not cached");
    let age: u64 = h2["x-sluice-snapshot-age"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(age < 5, "age {age}");
    let m = scrape(&ts).await;
    assert_eq!(
        metric(&m, "sluice_snapshot_stale_served_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "sluice_snapshot_capture_failures_total", &[]),
        Some(1.0)
    );
    ts.stop().await;
}
