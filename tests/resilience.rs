//! Sources that drop: reconnect with backoff while the client stays
//! connected, backup URLs before and during a session, HLS segments that
//! 404 for a while, and a reconnect budget that runs out. Upstreams are real
//! HTTP servers on 127.0.0.1 that the tests stop and start again.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// What an upstream serves on each connection.
#[derive(Clone)]
enum Content {
    /// A live MPEG-TS made by a fresh ffmpeg per connection (its
    /// timestamps restart each time, as a restarted encoder's do).
    LiveTs,
    /// Files from a directory (an HLS playlist being written by ffmpeg).
    Dir(PathBuf),
}

/// An HTTP upstream that can be stopped (listener closed, every
/// connection cut) and started again on the same port.
struct Upstream {
    port: u16,
    content: Content,
    /// Connections accepted so far.
    connections: Arc<AtomicUsize>,
    /// Answer 404 for media segments (HLS) while set.
    segments_404: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Upstream {
    async fn start(content: Content) -> Upstream {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut u = Upstream {
            port,
            content,
            connections: Arc::new(AtomicUsize::new(0)),
            segments_404: Arc::new(AtomicBool::new(false)),
            task: None,
        };
        u.resume().await;
        u
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Listens again on the same port.
    async fn resume(&mut self) {
        let listener = {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match TcpListener::bind(("127.0.0.1", self.port)).await {
                    Ok(l) => break l,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("cannot listen on port {} again: {e}", self.port),
                }
            }
        };
        let content = self.content.clone();
        let connections = self.connections.clone();
        let segments_404 = self.segments_404.clone();
        self.task = Some(tokio::spawn(async move {
            // Dropping the set (when this task is aborted) cuts every
            // connection and kills every encoder.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    break;
                };
                connections.fetch_add(1, Ordering::SeqCst);
                conns.spawn(serve(sock, content.clone(), segments_404.clone()));
                while conns.try_join_next().is_some() {}
            }
        }));
    }

    /// Closes the listener and cuts every connection.
    async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn serve(mut sock: TcpStream, content: Content, segments_404: Arc<AtomicBool>) {
    let Some(line) = read_request_head(&mut sock).await else {
        return;
    };
    let path = line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/")
        .to_string();
    match content {
        Content::LiveTs => {
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
                    "-tune",
                    "zerolatency",
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
            let _ = tokio::io::copy(&mut out, &mut sock).await;
        }
        Content::Dir(dir) => {
            let name = path.trim_start_matches('/');
            let file = dir.join(name);
            let is_segment = name.ends_with(".ts");
            let body = if name.contains("..") || (is_segment && segments_404.load(Ordering::SeqCst))
            {
                None
            } else {
                tokio::fs::read(&file).await.ok()
            };
            let resp = match body {
                Some(b) => {
                    let ctype = if name.ends_with(".m3u8") {
                        "application/vnd.apple.mpegurl"
                    } else {
                        "video/mp2t"
                    };
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
                        b.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(&b);
                    r
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = sock.write_all(&resp).await;
        }
    }
    let _ = sock.shutdown().await;
}

async fn server(reconnect_ms: u64) -> TestServer {
    start_with(|s| {
        s.rate_limit_preview = sluice::http::ratelimit::Rate::parse("off").unwrap();
        s.reconnect_timeout_ms = reconnect_ms;
    })
    .await
}

async fn add_with_backups(ts: &TestServer, id: &str, url: &str, backups: &[String]) {
    let r = client()
        .post(ts.url("/api/streams"))
        .json(&serde_json::json!({"id": id, "name": id, "url": url, "backupUrls": backups}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
}

/// Video packet timestamps (dts, else pts) in seconds, in file order.
fn video_timestamps(path: &Path) -> Vec<f64> {
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=pts_time,dts_time",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split(',');
            let pts = f.next().and_then(|v| v.trim().parse::<f64>().ok());
            let dts = f.next().and_then(|v| v.trim().parse::<f64>().ok());
            dts.or(pts)
        })
        .collect()
}

/// The output is one valid stream: H.264 that decodes cleanly, at least
/// `min_seconds` of it, timestamps strictly increasing.
fn assert_one_stream(data: &[u8], min_seconds: f64, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.mp4");
    std::fs::write(&path, data).unwrap();
    let probe = ffprobe(&path);
    let video = stream_of(&probe, "video").unwrap_or_else(|| panic!("{what}: no video"));
    assert_eq!(video["codec_name"], "h264", "{what}");
    let ts = video_timestamps(&path);
    assert!(!ts.is_empty(), "{what}: no video packets");
    for w in ts.windows(2) {
        assert!(
            w[1] > w[0],
            "{what}: timestamps go back or repeat ({} then {})",
            w[0],
            w[1]
        );
    }
    let span = ts.last().unwrap() - ts.first().unwrap();
    assert!(
        span >= min_seconds,
        "{what}: {span:.2} s of media, wanted at least {min_seconds} s"
    );
    let (frames, errors) = decode_all(&path);
    assert!(
        frames as f64 >= min_seconds * 20.0,
        "{what}: {frames} frames decoded over {span:.2} s"
    );
    assert!(
        !errors.contains("error while decoding") && !errors.contains("Invalid data"),
        "{what}: decode errors: {errors}"
    );
}

async fn active_sessions(ts: &TestServer) -> usize {
    let v: serde_json::Value = client()
        .get(ts.url("/api/streams/transcoding/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["sessions"].as_array().map_or(0, |a| a.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_ts_source_that_drops_for_3_s_is_reconnected_into_one_stream() {
    let ts = server(20_000).await;
    let mut up = Upstream::start(Content::LiveTs).await;
    add_stream(&ts, "drop", &up.url("/live.ts")).await;
    let resp = client()
        .get(ts.url("/streams/preview/drop?quality=low"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let started = Instant::now();
    let reader = tokio::spawn(read_for(resp, Duration::from_secs(17), 64 << 20));
    tokio::time::sleep(Duration::from_secs(5)).await;
    up.stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The session is still there while its source is away.
    assert_eq!(
        active_sessions(&ts).await,
        1,
        "the session ended during the outage"
    );
    up.resume().await;
    let data = reader.await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(16),
        "the body ended early, after {:?}",
        started.elapsed()
    );
    assert!(
        up.connections.load(Ordering::SeqCst) >= 2,
        "the source was never reconnected"
    );
    // ~4.5 s before the outage, at least 4 s after it.
    assert_one_stream(&data, 8.0, "reconnected live TS");
    let metrics = client()
        .get(ts.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let reconnects = metrics
        .lines()
        .find(|l| l.starts_with("sluice_source_reconnects_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(reconnects >= 1.0, "no reconnect counted in /metrics");
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_hls_source_survives_its_server_stopping_for_3_s() {
    let ts = server(20_000).await;
    let dir = tempfile::tempdir().unwrap();
    let writer = HlsWriter::start(dir.path(), "320x240");
    writer.ready(dir.path()).await;
    let mut up = Upstream::start(Content::Dir(dir.path().to_path_buf())).await;
    add_stream(&ts, "hls", &up.url("/index.m3u8")).await;
    let resp = client()
        .get(ts.url("/streams/preview/hls?quality=low"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let started = Instant::now();
    let reader = tokio::spawn(read_for(resp, Duration::from_secs(18), 64 << 20));
    tokio::time::sleep(Duration::from_secs(5)).await;
    up.stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    up.resume().await;
    let data = reader.await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(17),
        "the body ended early, after {:?}",
        started.elapsed()
    );
    // Longer than the outage, and longer than what came before it.
    assert_one_stream(&data, 7.0, "HLS across a server outage");
    drop(writer);
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_segments_that_404_for_a_while_recover() {
    let ts = server(20_000).await;
    let dir = tempfile::tempdir().unwrap();
    let writer = HlsWriter::start(dir.path(), "320x240");
    writer.ready(dir.path()).await;
    let up = Upstream::start(Content::Dir(dir.path().to_path_buf())).await;
    add_stream(&ts, "hls404", &up.url("/index.m3u8")).await;
    let resp = client()
        .get(ts.url("/streams/preview/hls404?quality=low"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let reader = tokio::spawn(read_for(resp, Duration::from_secs(18), 64 << 20));
    tokio::time::sleep(Duration::from_secs(5)).await;
    up.segments_404.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(4)).await;
    up.segments_404.store(false, Ordering::SeqCst);
    let data = reader.await.unwrap();
    assert_one_stream(&data, 7.0, "HLS after segment 404s");
    drop(writer);
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_primary_falls_over_to_the_backup_before_the_session_starts() {
    let ts = server(20_000).await;
    let backup = Upstream::start(Content::LiveTs).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    add_with_backups(
        &ts,
        "fallback",
        &format!("http://127.0.0.1:{dead}/gone.ts"),
        &[backup.url("/live.ts")],
    )
    .await;
    let resp = client()
        .get(ts.url("/streams/preview/fallback?quality=low"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    let data = read_for(resp, Duration::from_secs(5), 64 << 20).await;
    assert_eq!(backup.connections.load(Ordering::SeqCst), 1);
    assert_one_stream(&data, 2.0, "backup before start");
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_dies_mid_session_is_replaced_by_the_backup() {
    let ts = server(20_000).await;
    let mut primary = Upstream::start(Content::LiveTs).await;
    let backup = Upstream::start(Content::LiveTs).await;
    add_with_backups(
        &ts,
        "failover",
        &primary.url("/live.ts"),
        &[backup.url("/live.ts")],
    )
    .await;
    let resp = client()
        .get(ts.url("/streams/preview/failover?quality=low&format=ts"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let reader = tokio::spawn(read_for(resp, Duration::from_secs(13), 64 << 20));
    tokio::time::sleep(Duration::from_secs(4)).await;
    primary.stop().await; // for good
    let data = reader.await.unwrap();
    assert!(
        backup.connections.load(Ordering::SeqCst) >= 1,
        "the backup was never used"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.ts");
    std::fs::write(&path, &data).unwrap();
    let ts_stamps = video_timestamps(&path);
    assert!(
        ts_stamps.windows(2).all(|w| w[1] > w[0]),
        "timestamps go back across the failover"
    );
    let span = ts_stamps.last().unwrap() - ts_stamps.first().unwrap();
    assert!(span >= 7.0, "only {span:.2} s of media across the failover");
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hls_event_that_ended_for_good_ends_the_session_within_the_budget() {
    // The stall timeout is out of the way: only the reconnect budget may
    // end the session once the playlist has ended.
    let ts = start_with(|s| {
        s.rate_limit_preview = sluice::http::ratelimit::Rate::parse("off").unwrap();
        s.reconnect_timeout_ms = 3_000;
        s.stall_timeout_ms = 120_000;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut writer = HlsWriter::start_ending(dir.path(), "320x240", 8);
    writer.ready(dir.path()).await;
    let up = Upstream::start(Content::Dir(dir.path().to_path_buf())).await;
    add_stream(&ts, "event", &up.url("/index.m3u8")).await;
    let resp = client()
        .get(ts.url("/streams/preview/event?quality=low"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let reader = tokio::spawn(read_for(resp, Duration::from_secs(60), 64 << 20));
    writer.finished().await;
    let ended = Instant::now();
    let data = reader.await.unwrap();
    // Each reconnect finds the same ended playlist, replays its window and
    // ends again: that is one outage, ended when its 3 s budget is spent
    // (the replays and the backoff take a few seconds more), never a loop.
    let after = ended.elapsed();
    assert!(
        after < Duration::from_secs(20),
        "the session went on {after:?} after its source ended for good"
    );
    assert!(!data.is_empty());
    let metrics = reqwest::get(ts.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let reconnects: f64 = metrics
        .lines()
        .find(|l| l.starts_with("sluice_source_reconnects_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(
        reconnects <= 10.0,
        "{reconnects} reconnects to an ended playlist"
    );
    let gone = eventually(Duration::from_secs(5), || {
        ts.state().registry.all().is_empty()
    })
    .await;
    assert!(gone, "the session outlived its source");
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_gives_up_when_its_budget_runs_out() {
    let ts = server(3_000).await;
    let mut up = Upstream::start(Content::LiveTs).await;
    add_stream(&ts, "gone", &up.url("/live.ts")).await;
    let resp = client()
        .get(ts.url("/streams/preview/gone?quality=low"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let reader = tokio::spawn(read_for(resp, Duration::from_secs(30), 64 << 20));
    tokio::time::sleep(Duration::from_secs(3)).await;
    up.stop().await; // for good
    let stopped = Instant::now();
    let data = reader.await.unwrap();
    let ended_after = stopped.elapsed();
    assert!(
        ended_after < Duration::from_secs(10),
        "the body should end once the 3 s budget is spent, ended after {ended_after:?}"
    );
    assert!(
        ended_after >= Duration::from_millis(2_500),
        "the body ended before the budget was spent ({ended_after:?})"
    );
    assert!(!data.is_empty());
    let gone = eventually(Duration::from_secs(5), || {
        ts.state().registry.all().is_empty()
    })
    .await;
    assert!(gone, "the session outlived its source");
    ts.stop().await;
}
