//! Shared channels, black-box: viewers of one catalog stream share one
//! upstream connection (counted at a live MPEG-TS server of the test's
//! own), one decode and one encoder per profile; a viewer joining a running
//! rendition starts on a decodable fragment; a client that stops reading
//! never slows the others and is ended as `slow_client`; a channel lingers
//! after its last viewer and can be stopped by an admin.
//!
//! The tests measure delivery against real time and the process's RSS, so
//! they take turns (one at a time in this binary) rather than share the
//! cores and the heap.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast::error::RecvError;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Upstream picture of most tests: small, so the encoders stay cheap.
const SMALL: &str = "320x240";

/// A live MPEG-TS channel over HTTP (H.264 + AAC, a keyframe a second),
/// encoded once by an `ffmpeg -re` child and sent to every connection from
/// the live edge. Counts the connections it accepted and those still open.
struct LiveUpstream {
    port: u16,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    _encoder: tokio::process::Child,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Counts a connection as open until dropped.
struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl LiveUpstream {
    /// Starts the encoder (`size`, extra x264 `video` arguments) and the
    /// server; returns once the encoder writes MPEG-TS.
    async fn start(size: &str, video: &[&str]) -> LiveUpstream {
        let mut encoder = tokio::process::Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-v", "error", "-re"])
            .args(["-f", "lavfi", "-i"])
            .arg(format!("testsrc2=size={size}:rate=25"))
            .args([
                "-re",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=48000",
            ])
            .args([
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-tune",
                "zerolatency",
            ])
            .args(["-g", "25", "-pix_fmt", "yuv420p"])
            .args(video)
            .args(["-c:a", "aac", "-b:a", "64k", "-flush_packets", "1"])
            .args(["-f", "mpegts", "pipe:1"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("ffmpeg runs (apt install ffmpeg)");
        let mut out = encoder.stdout.take().unwrap();
        let (tx, _) = tokio::sync::broadcast::channel::<Bytes>(4096);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let feed = tx.clone();
        let reader = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            // Whole TS packets, so a connection joins on a packet boundary.
            let mut buf = vec![0u8; 188 * 7];
            while out.read_exact(&mut buf).await.is_ok() {
                let _ = feed.send(Bytes::copy_from_slice(&buf));
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (acc, opn) = (accepted.clone(), open.clone());
        let acceptor = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                acc.fetch_add(1, Ordering::SeqCst);
                opn.fetch_add(1, Ordering::SeqCst);
                let counted = OpenConnection(opn.clone());
                let mut rx = tx.subscribe();
                tokio::spawn(async move {
                    let _counted = counted;
                    if read_request_head(&mut sock).await.is_none() {
                        return;
                    }
                    let head = "HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\n\
                                Cache-Control: no-cache\r\nConnection: close\r\n\r\n";
                    if sock.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    loop {
                        match rx.recv().await {
                            Ok(chunk) => {
                                if sock.write_all(&chunk).await.is_err() {
                                    return;
                                }
                            }
                            Err(RecvError::Lagged(_)) => continue,
                            Err(RecvError::Closed) => return,
                        }
                    }
                });
            }
        });
        tokio::time::timeout(Duration::from_secs(20), ready_rx)
            .await
            .expect("the test upstream's ffmpeg writes MPEG-TS within 20 s")
            .expect("the test upstream's ffmpeg writes MPEG-TS");
        LiveUpstream {
            port,
            accepted,
            open,
            _encoder: encoder,
            tasks: vec![reader, acceptor],
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/live.ts", self.port)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for LiveUpstream {
    fn drop(&mut self) {
        // Without their senders every connection task ends and hangs up.
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A server with the per-client, rate and pool limits out of the way of
/// ten viewers from one address; `tweak` adjusts the settings further.
async fn server(tweak: impl FnOnce(&mut sluice::config::Settings)) -> TestServer {
    sluice::memory::limit_arenas();
    start_with(|s| {
        let off = || sluice::http::ratelimit::Rate::parse("off").unwrap();
        s.rate_limit_preview = off();
        s.rate_limit_api = off();
        s.rate_limit_admin = off();
        s.max_sessions_per_client = 64;
        s.max_viewers = 64;
        s.max_transcodes = sluice::config::TranscodeLimit::Max(16);
        s.max_remux = 16;
        tweak(s)
    })
    .await
}

/// Runs `body` against `ts`, then stops the server whether or not the
/// body panicked (a server dropped without it leaves pipelines PLAYING),
/// and raises the panic again.
async fn run(ts: TestServer, body: impl AsyncFnOnce(&TestServer)) {
    use futures::FutureExt;
    let outcome = std::panic::AssertUnwindSafe(body(&ts)).catch_unwind().await;
    ts.stop().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// What a viewer received: the bytes, and (time since the request, bytes
/// so far) at each chunk.
#[derive(Default)]
struct Capture {
    bytes: Vec<u8>,
    arrivals: Vec<(Duration, usize)>,
    ended: bool,
}

/// One preview being read in the background.
struct Viewer {
    session_id: String,
    format: &'static str,
    capture: Arc<Mutex<Capture>>,
    task: tokio::task::JoinHandle<()>,
}

impl Viewer {
    /// Requests `path` (format `mp4` or `ts`), expects 200, reads on.
    async fn open(ts: &TestServer, path: &str) -> Viewer {
        let format = if path.contains("format=ts") {
            "ts"
        } else {
            "mp4"
        };
        let t0 = Instant::now();
        let resp = client().get(ts.url(path)).send().await.unwrap();
        if resp.status() != 200 {
            panic!(
                "{path}: {} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        let session_id = resp.headers()["x-session-id"].to_str().unwrap().to_string();
        let capture = Arc::new(Mutex::new(Capture::default()));
        let sink = capture.clone();
        let task = tokio::spawn(async move {
            let mut body = resp.bytes_stream();
            while let Some(Ok(chunk)) = body.next().await {
                let mut c = sink.lock().unwrap();
                c.bytes.extend_from_slice(&chunk);
                let len = c.bytes.len();
                c.arrivals.push((t0.elapsed(), len));
            }
            sink.lock().unwrap().ended = true;
        });
        Viewer {
            session_id,
            format,
            capture,
            task,
        }
    }

    fn received(&self) -> usize {
        self.capture.lock().unwrap().bytes.len()
    }

    fn ended(&self) -> bool {
        self.capture.lock().unwrap().ended
    }

    /// Hangs up; returns what was received.
    async fn stop(mut self) -> Capture {
        self.task.abort();
        let _ = (&mut self.task).await;
        std::mem::take(&mut *self.capture.lock().unwrap())
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until `v` has received some bytes, then `more` longer.
async fn read_on(v: &Viewer, more: Duration) {
    assert!(
        eventually(Duration::from_secs(20), || v.received() > 0).await,
        "viewer {} received nothing in 20 s",
        v.session_id
    );
    tokio::time::sleep(more).await;
}

/// Checks that `bytes` open with the container header (fMP4 `ftyp`; TS
/// PAT first), saves their whole units as `name`, and has ffmpeg decode
/// every frame from the first: no error at all, at least `min_frames`
/// video frames. Returns the saved file.
fn assert_decodes(
    dir: &Path,
    name: &str,
    format: &str,
    bytes: &[u8],
    min_frames: u64,
) -> std::path::PathBuf {
    match format {
        "mp4" => assert!(
            bytes.len() > 8 && &bytes[4..8] == b"ftyp",
            "{name}: fMP4 does not open with ftyp"
        ),
        _ => assert!(
            bytes.len() >= 188
                && bytes[0] == 0x47
                && ((bytes[1] as u16 & 0x1f) << 8 | bytes[2] as u16) == 0,
            "{name}: MPEG-TS does not open with the PAT"
        ),
    }
    let path = dir.join(name);
    std::fs::write(&path, complete_prefix(bytes)).unwrap();
    // Every stream decoded (audio too), not only the video decode_all counts.
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=nb_read_frames",
        ])
        .args(["-of", "csv=p=0"])
        .arg(&path)
        .output()
        .expect("ffprobe runs");
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && errors.trim().is_empty(),
        "{name}: ffprobe reported errors decoding it: {errors}"
    );
    let (frames, errors) = decode_all(&path);
    assert!(
        errors.trim().is_empty(),
        "{name}: ffprobe reported errors: {errors}"
    );
    assert!(
        frames >= min_frames,
        "{name}: {frames} video frames decoded, expected at least {min_frames}"
    );
    path
}

/// The shortest prefix of an fMP4 capture that ends with a fragment
/// carrying video (`ftyp`, `moov`, then `moof`+`mdat` pairs), checked to
/// decode with no error.
fn assert_first_fragment_decodes(dir: &Path, name: &str, bytes: &[u8]) {
    let mut end = 0;
    while end + 8 <= bytes.len() {
        let size = u32::from_be_bytes(bytes[end..end + 4].try_into().unwrap()) as usize;
        assert!(size >= 8, "{name}: a box of {size} bytes at {end}");
        if end + size > bytes.len() {
            break;
        }
        let kind = &bytes[end + 4..end + 8];
        end += size;
        if kind == b"mdat" {
            let path = dir.join(name);
            std::fs::write(&path, &bytes[..end]).unwrap();
            let (frames, errors) = decode_all(&path);
            if frames > 0 {
                assert_decodes(dir, name, "mp4", &bytes[..end], 1);
                return;
            }
            assert!(errors.trim().is_empty(), "{name}: {errors}");
        }
    }
    panic!(
        "{name}: no complete fragment with video in {} bytes",
        bytes.len()
    );
}

/// (byte position, pts in seconds) of every video packet of a file.
fn video_packets(path: &Path) -> Vec<(usize, f64)> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args(["packet=pos,pts_time", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.trim_end_matches(',').split(',');
            let pts = f.next()?.parse().ok()?;
            let pos = f.next()?.parse().ok()?;
            Some((pos, pts))
        })
        .collect()
}

/// Media seconds a viewer received per wall second over `[from, to]`
/// (times since its request), taken between the first and the last chunk
/// in the window that completed new video, as a player sees it. `file` is
/// the capture saved whole.
fn delivery_rate(cap: &Capture, file: &Path, from: Duration, to: Duration) -> Option<f64> {
    let packets = video_packets(file);
    let first_pts = packets.iter().map(|p| p.1).fold(f64::MAX, f64::min);
    // Media complete in the first `len` bytes: up to the last packet that starts before `len`.
    let media = |len: usize| {
        packets
            .iter()
            .filter(|(pos, _)| *pos < len)
            .map(|(_, pts)| pts - first_pts)
            .fold(0.0, f64::max)
    };
    let mut marks = Vec::new();
    let mut last = -1.0;
    for &(at, len) in &cap.arrivals {
        let m = media(len);
        if m > last {
            marks.push((at, m));
            last = m;
        }
    }
    let a = marks.iter().find(|(at, _)| *at >= from)?;
    let b = marks.iter().rev().find(|(at, _)| *at <= to)?;
    (b.0 > a.0).then(|| (b.1 - a.1) / (b.0 - a.0).as_secs_f64())
}

async fn status(ts: &TestServer) -> Value {
    get_json(&ts.url("/api/streams/transcoding/status")).await
}

/// The status document's `channels`.
fn channels(st: &Value) -> &Vec<Value> {
    st["channels"]
        .as_array()
        .unwrap_or_else(|| panic!("the status lists no `channels` array: {st}"))
}

/// Polls `cond` every 100 ms until it holds or `timeout` passes.
async fn until(timeout: Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cond().await
}

/// The status lists no channel (within 5 s).
async fn assert_no_channels(ts: &TestServer) {
    let gone = until(Duration::from_secs(5), async || {
        channels(&status(ts).await).is_empty()
    })
    .await;
    assert!(gone, "a channel is still listed: {}", status(ts).await);
}

/// The one channel the status lists.
fn only_channel(st: &Value) -> &Value {
    let ch = channels(st);
    assert_eq!(ch.len(), 1, "one channel expected: {st}");
    &ch[0]
}

fn renditions(channel: &Value) -> &Vec<Value> {
    channel["renditions"]
        .as_array()
        .unwrap_or_else(|| panic!("the channel lists no `renditions` array: {channel}"))
}

/// Resident memory of this process (the server runs in it), in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

const MIB: u64 = 1 << 20;

/// The SSE feed, collected in the background: (event, data) in order.
struct Events {
    seen: Arc<Mutex<Vec<(String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Events {
    /// Subscribes; returns once the first event (the 1 Hz stats) arrived.
    async fn subscribe(ts: &TestServer) -> Events {
        let resp = client()
            .get(ts.url("/api/streams/transcoding/events"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            let mut body = resp.bytes_stream();
            let mut buf = String::new();
            while let Some(Ok(chunk)) = body.next().await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let frame: String = buf.drain(..end + 2).collect();
                    let field = |name: &str| {
                        frame
                            .lines()
                            .find_map(|l| l.strip_prefix(name))
                            .map(|v| v.trim().to_string())
                    };
                    if let (Some(ev), Some(data)) = (field("event:"), field("data:")) {
                        let data = serde_json::from_str(&data).unwrap_or(Value::Null);
                        sink.lock().unwrap().push((ev, data));
                    }
                }
            }
        });
        let events = Events { seen, task };
        assert!(
            eventually(Duration::from_secs(5), || !events
                .seen
                .lock()
                .unwrap()
                .is_empty())
            .await,
            "no SSE event within 5 s"
        );
        events
    }

    /// The `session_ended` event of `session_id`, if it came.
    fn ended(&self, session_id: &str) -> Option<Value> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .find(|(ev, d)| ev == "session_ended" && d["sessionId"] == session_id)
            .map(|(_, d)| d.clone())
    }

    async fn wait_ended(&self, session_id: &str, timeout: Duration) -> Option<Value> {
        eventually(timeout, || self.ended(session_id).is_some()).await;
        self.ended(session_id)
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A client process that can be stopped; on drop it is continued,
/// killed and reaped.
struct Stoppable(std::process::Child);

impl Stoppable {
    fn signal(&self, sig: i32) {
        // SAFETY: a plain signal to our own child, not yet reaped.
        unsafe { libc::kill(self.0.id() as i32, sig) };
    }
}

impl Drop for Stoppable {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn preview(id: &str, query: &str) -> String {
    format!("/streams/preview/{id}?{query}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_viewers_of_one_profile_share_one_upstream_and_one_encoder() {
    let _turn = SERIAL.lock().await;
    let up = LiveUpstream::start(SMALL, &[]).await;
    let ts = server(|_| {}).await;
    run(ts, async |ts| {
        add_stream(ts, "ten", &up.url()).await;
        let mut viewers = Vec::new();
        for i in 0..10 {
            let format = if i % 2 == 0 { "mp4" } else { "ts" };
            let query = format!("quality=low&transcode=true&format={format}");
            viewers.push(Viewer::open(ts, &preview("ten", &query)).await);
        }
        read_on(viewers.last().unwrap(), Duration::from_secs(3)).await;
        let st = status(ts).await;
        let metrics = scrape(ts).await;
        let connections = up.accepted();
        let ids: Vec<String> = viewers.iter().map(|v| v.session_id.clone()).collect();
        for (i, v) in viewers.into_iter().enumerate() {
            let format = v.format;
            let cap = v.stop().await;
            let name = format!("viewer-{i}.{format}");
            assert_decodes(ts.dir.path(), &name, format, &cap.bytes, 50);
        }

        assert_eq!(
            connections, 1,
            "10 viewers of one channel opened {connections} upstream connections"
        );
        let ch = only_channel(&st);
        assert_eq!(ch["streamId"], "ten", "{ch}");
        let r = renditions(ch);
        assert_eq!(r.len(), 1, "one rendition (one encoder) expected: {ch}");
        assert_eq!(r[0]["mode"], "transcode", "{ch}");
        assert_eq!(r[0]["quality"], "low", "{ch}");
        assert_eq!(r[0]["viewers"], 10, "{ch}");
        let formats = r[0]["formats"].as_array().expect("formats listed");
        for f in ["mp4", "ts"] {
            assert!(formats.iter().any(|x| x == f), "{f} not in {formats:?}");
        }
        let sessions = st["sessions"].as_array().expect("sessions listed");
        assert_eq!(sessions.len(), 10, "{st}");
        for s in sessions {
            assert!(ids.iter().any(|id| s["sessionId"] == *id), "{s}");
            assert_eq!(s["channel"], "ten", "{s}");
            assert!(s["lagMs"].as_u64().is_some(), "lagMs: {s}");
        }
        let gauge = |name: &str, labels: &[(&str, &str)]| metric(&metrics, name, labels);
        assert_eq!(gauge("sluice_channels", &[]), Some(1.0));
        assert_eq!(gauge("sluice_upstream_connections", &[]), Some(1.0));
        assert_eq!(gauge("sluice_pipelines_live", &[]), Some(1.0));
        assert_eq!(gauge("sluice_viewers", &[]), Some(10.0));
        let low = [("mode", "transcode"), ("quality", "low")];
        assert_eq!(gauge("sluice_renditions", &low), Some(1.0));
        assert_eq!(gauge("sluice_decoders", &[("kind", "video")]), Some(1.0));
        // Nine viewers (at least) joined a rendition that was running.
        assert!(
            gauge("sluice_join_seconds_count", &[]).is_some_and(|n| n >= 9.0),
            "sluice_join_seconds counts the joins"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_profile_and_the_remux_of_one_channel_share_one_upstream_and_one_decoder() {
    let _turn = SERIAL.lock().await;
    let up = LiveUpstream::start(SMALL, &[]).await;
    let ts = server(|_| {}).await;
    run(ts, async |ts| {
        add_stream(ts, "four", &up.url()).await;
        let queries = [
            "quality=low&transcode=true&format=mp4",
            "quality=medium&transcode=true&format=ts",
            "quality=high&transcode=true&format=mp4",
            "transcode=false&format=ts",
        ];
        let mut viewers = Vec::new();
        for q in queries {
            viewers.push(Viewer::open(ts, &preview("four", q)).await);
        }
        read_on(viewers.last().unwrap(), Duration::from_secs(3)).await;
        let st = status(ts).await;
        let metrics = scrape(ts).await;
        let connections = up.accepted();
        for (i, v) in viewers.into_iter().enumerate() {
            let format = v.format;
            let cap = v.stop().await;
            assert_decodes(
                ts.dir.path(),
                &format!("profile-{i}.{format}"),
                format,
                &cap.bytes,
                50,
            );
        }

        assert_eq!(
            connections, 1,
            "low + medium + high + remux of one channel opened {connections} upstream connections"
        );
        assert_eq!(
            metric(&metrics, "sluice_decoders", &[("kind", "video")]),
            Some(1.0),
            "one video decoder for the three encodes (the remux decodes nothing)"
        );
        assert!(
            metric(&metrics, "sluice_decoders", &[("kind", "audio")]).is_some_and(|n| n <= 1.0),
            "at most one audio decoder"
        );
        assert_eq!(
            metric(&metrics, "sluice_upstream_connections", &[]),
            Some(1.0)
        );
        let ch = only_channel(&st);
        let r = renditions(ch);
        assert_eq!(r.len(), 4, "{ch}");
        let mut encoded: Vec<&str> = r
            .iter()
            .filter(|x| x["mode"] == "transcode")
            .map(|x| x["quality"].as_str().unwrap_or(""))
            .collect();
        encoded.sort();
        assert_eq!(encoded, ["high", "low", "medium"], "{ch}");
        assert_eq!(r.iter().filter(|x| x["mode"] == "remux").count(), 1, "{ch}");
        assert!(r.iter().all(|x| x["viewers"] == 1), "{ch}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_joining_a_running_rendition_starts_on_a_decodable_fragment() {
    let _turn = SERIAL.lock().await;
    let up = LiveUpstream::start(SMALL, &[]).await;
    let ts = server(|_| {}).await;
    run(ts, async |ts| {
        add_stream(ts, "join", &up.url()).await;
        let first = Viewer::open(ts, &preview("join", "quality=low&format=mp4")).await;
        read_on(&first, Duration::from_secs(2)).await;
        let running = status(ts).await;

        let mut joined = Vec::new();
        for (format, live) in [("mp4", false), ("mp4", true), ("ts", false), ("ts", true)] {
            let join = if live { "&join=live" } else { "" };
            let query = format!("quality=low&format={format}{join}");
            let v = Viewer::open(ts, &preview("join", &query)).await;
            read_on(&v, Duration::from_millis(1500)).await;
            let st = status(ts).await;
            let cap = v.stop().await;
            joined.push((format, live, cap, st));
        }
        first.stop().await;

        for (format, live, cap, _) in &joined {
            let name = format!("joined-live-{live}.{format}");
            if *format == "mp4" {
                assert_first_fragment_decodes(ts.dir.path(), &name, &cap.bytes);
            }
            assert_decodes(ts.dir.path(), &name, format, &cap.bytes, 10);
        }

        let started = renditions(only_channel(&running))[0]["startTime"].clone();
        assert!(started.as_u64().is_some(), "rendition startTime: {running}");
        for (format, live, _, st) in &joined {
            let r = renditions(only_channel(st));
            assert_eq!(r.len(), 1, "{format} join=live {live}: {st}");
            assert_eq!(
                r[0]["startTime"], started,
                "{format} join=live {live} did not join the running rendition: {st}"
            );
            assert_eq!(r[0]["viewers"], 2, "{format} join=live {live}: {st}");
        }
        assert_eq!(up.accepted(), 1, "joiners opened upstream connections");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_slows_no_one_and_ends_as_slow_client() {
    let _turn = SERIAL.lock().await;
    const STALL_MS: u64 = 3000;
    // About 4.6 Mbit/s, so the stopped client's socket buffers fill in seconds.
    let up = LiveUpstream::start("640x360", &["-crf", "4"]).await;
    let ts = server(|s| {
        s.stall_timeout_ms = STALL_MS;
        s.viewer_buffer_ms = 1000;
    })
    .await;
    run(ts, async |ts| {
        add_stream(ts, "slow", &up.url()).await;
        let events = Events::subscribe(ts).await;
        let remux = "transcode=false&format=ts";
        let good = [
            Viewer::open(
                ts,
                &preview("slow", "quality=low&transcode=true&format=mp4"),
            )
            .await,
            Viewer::open(ts, &preview("slow", remux)).await,
        ];
        for v in &good {
            read_on(v, Duration::ZERO).await;
        }
        let headers = ts.dir.path().join("slow.headers");
        let curl = Stoppable(
            Command::new("curl")
                .args(["-s", "-N", "-o", "/dev/null", "-D"])
                .arg(&headers)
                .arg(ts.url(&preview("slow", remux)))
                .spawn()
                .expect("curl runs (apt install curl)"),
        );
        let slow_id = {
            let read_id = || {
                std::fs::read_to_string(&headers).ok().and_then(|h| {
                    h.lines().find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("x-session-id:")
                            .map(|v| v.trim().to_string())
                    })
                })
            };
            assert!(
                eventually(Duration::from_secs(20), || read_id().is_some()).await,
                "curl got no preview response"
            );
            read_id().unwrap()
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        curl.signal(libc::SIGSTOP);
        let stopped = Instant::now();
        let rss_at_stop = rss();
        let t_stop = good.iter().map(|v| {
            let c = v.capture.lock().unwrap();
            c.arrivals.last().map(|a| a.0).unwrap_or_default()
        });
        let from: Vec<Duration> = t_stop.map(|t| t + Duration::from_secs(1)).collect();

        // While it hangs: others keep receiving, memory stays put.
        let mut rss_max = rss_at_stop;
        let mut ended = None;
        let deadline = stopped + Duration::from_secs(30);
        while Instant::now() < deadline {
            rss_max = rss_max.max(rss());
            if ended.is_none() {
                ended = events.ended(&slow_id).map(|e| (e, stopped.elapsed()));
            }
            if ended.is_some() && stopped.elapsed() > Duration::from_secs(STALL_MS / 1000 + 5) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let window = stopped.elapsed();
        drop(curl);
        let still_open: Vec<bool> = good.iter().map(|v| !v.ended()).collect();
        let mut rates = Vec::new();
        for (i, v) in good.into_iter().enumerate() {
            let format = v.format;
            let cap = v.stop().await;
            let file = assert_decodes(
                ts.dir.path(),
                &format!("good-{i}.{format}"),
                format,
                &cap.bytes,
                50,
            );
            let to = from[i] + window - Duration::from_secs(1);
            rates.push(delivery_rate(&cap, &file, from[i], to));
        }
        println!(
            "slow client: others' delivery {rates:?} of real time, RSS {} MiB at stop, max {} MiB, ended {:?}",
            rss_at_stop / MIB,
            rss_max / MIB,
            ended.as_ref().map(|e| e.1)
        );
        assert_eq!(still_open, [true, true], "a good viewer's body ended");
        for (i, r) in rates.iter().enumerate() {
            assert!(
                r.is_some_and(|r| r >= 0.95),
                "viewer {i} received {r:?} of real time while another client hung"
            );
        }
        assert!(
            rss_max < rss_at_stop + 32 * MIB,
            "RSS grew from {} to {} MiB while a client hung",
            rss_at_stop / MIB,
            rss_max / MIB
        );
        let (event, after) = ended.unwrap_or_else(|| {
            panic!("the stopped client's session {slow_id} did not end within 30 s")
        });
        assert_eq!(event["reason"], "slow_client", "{event}");
        assert!(
            after >= Duration::from_millis(STALL_MS),
            "ended {after:?} after the client stopped, before STALL_TIMEOUT"
        );
        let m = scrape(ts).await;
        assert!(
            metric(
                &m,
                "sluice_sessions_ended_total",
                &[("reason", "slow_client")]
            ) >= Some(1.0),
            "slow_client not counted in /metrics"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_back_within_the_linger_rejoins_and_the_channel_closes_after_it() {
    let _turn = SERIAL.lock().await;
    const LINGER_MS: u64 = 3000;
    let up = LiveUpstream::start(SMALL, &[]).await;
    let ts = server(|s| s.channel_linger_ms = LINGER_MS).await;
    run(ts, async |ts| {
        add_stream(ts, "linger", &up.url()).await;
        let path = preview("linger", "quality=low&format=mp4");
        // Warm up (the first pipeline loads the plugins), then the idle baseline.
        let warm = Viewer::open(ts, &path).await;
        read_on(&warm, Duration::from_millis(500)).await;
        warm.stop().await;
        assert!(
            eventually(Duration::from_millis(LINGER_MS + 10_000), || up.open() == 0).await,
            "the warm-up's upstream connection stayed open"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle_rss = rss();
        let before = up.accepted();

        let a = Viewer::open(ts, &path).await;
        read_on(&a, Duration::from_secs(2)).await;
        let first = status(ts).await;
        a.stop().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let b = Viewer::open(ts, &path).await;
        read_on(&b, Duration::from_millis(1500)).await;
        let back = status(ts).await;
        let b_cap = b.stop().await;
        let left = Instant::now();
        assert_decodes(ts.dir.path(), "back.mp4", "mp4", &b_cap.bytes, 25);

        assert_eq!(
            up.accepted() - before,
            1,
            "coming back within the linger opened a new upstream connection"
        );
        let start_of = |st: &Value| renditions(only_channel(st))[0]["startTime"].clone();
        assert!(start_of(&first).as_u64().is_some(), "{first}");
        assert_eq!(
            start_of(&back),
            start_of(&first),
            "not the same rendition: {back}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(up.open(), 1, "the upstream closed before the linger passed");
        assert!(
            eventually(Duration::from_millis(LINGER_MS + 5000), || up.open() == 0).await,
            "the upstream connection is still open {:?} after the last viewer left",
            left.elapsed()
        );
        assert!(
            until(Duration::from_secs(5), async || {
                metric(&scrape(ts).await, "sluice_pipelines_live", &[]) == Some(0.0)
            })
            .await,
            "sluice_pipelines_live is not 0 after the linger"
        );
        assert_no_channels(ts).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = rss();
        assert!(
            now < idle_rss + 64 * MIB,
            "RSS {} MiB after the linger, idle was {} MiB",
            now / MIB,
            idle_rss / MIB
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_channel_ends_its_viewers_as_admin_stop() {
    let _turn = SERIAL.lock().await;
    let up = LiveUpstream::start(SMALL, &[]).await;
    let ts = server(|_| {}).await;
    run(ts, async |ts| {
        add_stream(ts, "gone", &up.url()).await;
        let events = Events::subscribe(ts).await;
        let viewers = [
            Viewer::open(ts, &preview("gone", "quality=low&format=mp4")).await,
            Viewer::open(ts, &preview("gone", "transcode=false&format=ts")).await,
        ];
        for v in &viewers {
            read_on(v, Duration::from_millis(1000)).await;
        }
        let route = ts.url("/api/streams/transcoding/channels/gone");
        let r = client().delete(&route).send().await.unwrap();
        let code = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(code, 200, "DELETE {route}: {body}");
        assert!(body.is_object(), "a JSON object: {body}");
        assert!(
            eventually(Duration::from_secs(5), || viewers.iter().all(Viewer::ended)).await,
            "a viewer's body did not end after the channel was stopped"
        );
        for v in &viewers {
            let ev = events
                .wait_ended(&v.session_id, Duration::from_secs(5))
                .await;
            let ev = ev.unwrap_or_else(|| panic!("no session_ended for {}", v.session_id));
            assert_eq!(ev["reason"], "admin_stop", "{ev}");
        }
        assert!(
            eventually(Duration::from_secs(5), || up.open() == 0).await,
            "the upstream connection is still open after the channel was stopped"
        );
        assert_no_channels(ts).await;
        for id in ["gone", "never-ran"] {
            let url = ts.url(&format!("/api/streams/transcoding/channels/{id}"));
            let r = client().delete(&url).send().await.unwrap();
            assert_eq!(r.status(), 404, "DELETE {url}");
            let body: Value = r.json().await.expect("a JSON error");
            assert!(
                body["error"].is_string() && body["message"].is_string(),
                "{body}"
            );
        }
        for v in viewers {
            v.stop().await;
        }
    })
    .await;
}
