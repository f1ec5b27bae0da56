//! Shared support for integration tests: a real sluice server on
//! 127.0.0.1:0 in its own temp data dir, media made on the spot, and an
//! independent decoder (ffprobe) to judge outputs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sluice::config::{Settings, TranscodeLimit};
use sluice::Server;

pub struct TestServer {
    pub server: Option<Server>,
    pub base: String,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn state(&self) -> &std::sync::Arc<sluice::AppState> {
        &self.server.as_ref().expect("server running").state
    }

    pub fn media_dir(&self) -> PathBuf {
        self.dir.path().join("media")
    }

    /// Stops the server and starts a new one on the same data dir (a new
    /// port); `tweak` adjusts the settings first.
    pub async fn restart(&mut self, tweak: impl FnOnce(&mut Settings)) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        let mut s = settings(self.dir.path());
        tweak(&mut s);
        let server = Server::start(s).await.expect("server restarts");
        self.base = format!("http://{}", server.addr);
        self.server = Some(server);
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

/// Settings for a test: temp data dir, a media dir, port 0, short timeouts.
pub fn settings(dir: &Path) -> Settings {
    let mut s = Settings::for_data_dir(dir.join("data"));
    s.port = 0;
    s.host = "127.0.0.1".parse().unwrap();
    s.profiles = dir.join("no-such-profiles.toml");
    let media = dir.join("media");
    std::fs::create_dir_all(&media).unwrap();
    s.media_dir = Some(media);
    s.start_timeout_ms = 20_000;
    // A channel stops as soon as its last viewer leaves, as a single
    // viewer's pipeline always did; tests of sharing and lingering set
    // their own linger.
    s.channel_linger_ms = 0;
    // A fixed encoder cap, so what a test admits does not depend on how
    // busy the machine running it is; tests of headroom admission set auto.
    s.max_transcodes = TranscodeLimit::Max(3);
    s
}

/// Starts a server; `tweak` adjusts the settings first.
pub async fn start_with(tweak: impl FnOnce(&mut Settings)) -> TestServer {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    tweak(&mut s);
    let server = Server::start(s).await.expect("server starts");
    let base = format!("http://{}", server.addr);
    TestServer {
        server: Some(server),
        base,
        dir,
    }
}

/// GETs `url`, expects 200 with a JSON content type, and parses the body.
pub async fn get_json(url: &str) -> serde_json::Value {
    let r = client().get(url).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "{url}"
    );
    let text = r.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {text}"))
}

pub async fn start() -> TestServer {
    start_with(|_| {}).await
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Reads a streaming response for `dur` (or `max_bytes`), then hangs up.
pub async fn read_for(resp: reqwest::Response, dur: Duration, max_bytes: usize) -> Vec<u8> {
    use futures::StreamExt;
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    let deadline = tokio::time::Instant::now() + dur;
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, stream.next()).await {
        out.extend_from_slice(&chunk);
        if out.len() >= max_bytes {
            break;
        }
    }
    out
}

/// Reads an HTTP request head from a test upstream's connection: its text,
/// or None if the peer closed first or sent more than 64 KiB.
pub async fn read_request_head(sock: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 * 1024 {
            return None;
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Requests `path` and reads the whole body, which must end within
/// `limit`; saves it as `file` in the test's dir and returns that path.
pub async fn fetch_to_end(ts: &TestServer, path: &str, file: &str, limit: Duration) -> PathBuf {
    let resp = client().get(ts.url(path)).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    let body = tokio::time::timeout(limit, resp.bytes())
        .await
        .unwrap_or_else(|_| panic!("{path}: the body did not end"))
        .unwrap();
    let out = ts.dir.path().join(file);
    std::fs::write(&out, &body).unwrap();
    out
}

/// Creates a catalog stream through the API (as loopback admin).
pub async fn add_stream(ts: &TestServer, id: &str, url: &str) {
    let r = client()
        .post(ts.url("/api/streams"))
        .json(&serde_json::json!({"id": id, "name": id, "url": url}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        201,
        "creating {id}: {}",
        r.text().await.unwrap_or_default()
    );
}

/// ffprobe's view of a file: streams and format, as JSON.
pub fn ffprobe(path: &Path) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_streams",
            "-show_format",
        ])
        .arg(path)
        .output()
        .expect("ffprobe runs (apt install ffmpeg)");
    assert!(
        out.status.success(),
        "ffprobe failed on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Decodes every frame with ffmpeg; returns (video frames decoded, error text).
pub fn decode_all(path: &Path) -> (u64, String) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    // MPEG-TS lists each stream under its program too: take the largest count.
    let frames = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    (frames, String::from_utf8_lossy(&out.stderr).to_string())
}

pub fn stream_of<'a>(probe: &'a serde_json::Value, kind: &str) -> Option<&'a serde_json::Value> {
    probe["streams"]
        .as_array()?
        .iter()
        .find(|s| s["codec_type"] == kind)
}

/// Writes a media file with ffmpeg from lavfi test sources.
pub fn make_media(
    path: &Path,
    seconds: u32,
    video_args: &[&str],
    audio_args: &[&str],
    extra: &[&str],
) {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-y", "-v", "error", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size=1280x720:rate=25:duration={seconds}"))
        .args(["-f", "lavfi", "-i"])
        .arg(format!(
            "sine=frequency=440:sample_rate=48000:duration={seconds}"
        ))
        .args(video_args)
        .args(audio_args)
        .args(extra)
        .arg(path);
    let out = cmd.output().expect("ffmpeg runs (apt install ffmpeg)");
    assert!(
        out.status.success(),
        "ffmpeg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The part of a stream cut mid-flight that holds only whole units: MP4 up
/// to the last complete top-level box, MPEG-TS up to the last packet that
/// starts a PES (the PES in flight at hang-up is incomplete).
pub fn complete_prefix(bytes: &[u8]) -> &[u8] {
    if bytes.first() == Some(&0x47) {
        let whole = bytes.len() / 188 * 188;
        let last_start = (0..whole)
            .step_by(188)
            .rfind(|&i| bytes[i + 1] & 0x40 != 0)
            .unwrap_or(whole);
        return &bytes[..last_start];
    }
    let mut end = 0;
    while end + 8 <= bytes.len() {
        let size = u32::from_be_bytes(bytes[end..end + 4].try_into().unwrap()) as usize;
        if size < 8 || end + size > bytes.len() {
            break;
        }
        end += size;
    }
    &bytes[..end]
}

/// Polls `cond` until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// Threads of this process (for leak checks).
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Open file descriptors of this process (for leak checks).
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The real `sluice` binary running on 127.0.0.1 (port 0), its stderr
/// (JSON log lines) collected as it comes. Killed with SIGKILL on drop.
pub struct BinServer {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    pub base: String,
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl BinServer {
    /// Starts the binary with `--data-dir data_dir`, extra `args` and `envs`;
    /// waits (60 s at most) for its "sluice listening" line (so `LOG_LEVEL`
    /// must let info lines through).
    pub fn start(data_dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> BinServer {
        Self::start_under(&[], data_dir, args, envs)
    }

    /// Like [`BinServer::start`], with the binary run by `wrapper` (e.g.
    /// `ip netns exec NAME`, which execs it: the child is still sluice).
    pub fn start_under(
        wrapper: &[&str],
        data_dir: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> BinServer {
        use std::io::BufRead;
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(env!("CARGO_BIN_EXE_sluice"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_sluice")),
        };
        cmd.args(["--host", "127.0.0.1", "--port", "0", "--data-dir"])
            .arg(data_dir)
            .args(["--profiles"])
            .arg(data_dir.join("no-such-profiles.toml"))
            .args(args)
            .env("LOG_FORMAT", "json")
            .envs(envs.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("the sluice binary starts");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<std::net::SocketAddr>();
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "sluice listening" {
                        if let Some(a) = v["addr"].as_str().and_then(|a| a.parse().ok()) {
                            let _ = tx.send(a);
                        }
                    }
                }
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("sluice did not start: {}", stderr.lock().unwrap());
            }
        };
        BinServer {
            child,
            addr,
            base: format!("http://{addr}"),
            stderr,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Resident memory of the server process, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait (30 s at most) for a clean exit; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the stderr reader drain the last lines.
                std::thread::sleep(Duration::from_millis(200));
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        false
    }
}

impl Drop for BinServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One `/metrics` scrape, checked as OpenMetrics and parsed by a
/// Prometheus text parser.
pub async fn scrape(ts: &TestServer) -> Vec<prometheus_parse::Sample> {
    let r = client().get(ts.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let text = r.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("metrics parse")
        .samples
}

/// The value of metric `name` with `labels` (among others) in a scrape.
pub fn metric(
    samples: &[prometheus_parse::Sample],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .and_then(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(*v),
            _ => None,
        })
}

/// ffmpeg writing a live HLS playlist of a `size` test pattern with a tone
/// (1 s segments, a keyframe each second, a rolling window of 5, old
/// segments deleted) into `dir`; killed on drop.
pub struct HlsWriter(std::process::Child);

impl HlsWriter {
    pub fn start(dir: &Path, size: &str) -> HlsWriter {
        Self::spawn(dir, size, &[])
    }

    /// A writer that stops after `seconds`: its playlist then ends
    /// (`#EXT-X-ENDLIST`), as a finished live event's does.
    pub fn start_ending(dir: &Path, size: &str, seconds: u32) -> HlsWriter {
        Self::spawn(dir, size, &["-t", &seconds.to_string()])
    }

    fn spawn(dir: &Path, size: &str, limit: &[&str]) -> HlsWriter {
        std::fs::create_dir_all(dir).unwrap();
        let child = Command::new("ffmpeg")
            .args(["-v", "error", "-re", "-f", "lavfi", "-i"])
            .arg(format!("testsrc2=size={size}:rate=25"))
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
            ])
            .args(limit)
            .args([
                "-f",
                "hls",
                "-hls_time",
                "1",
                "-hls_list_size",
                "5",
                "-hls_flags",
                "delete_segments",
            ])
            .arg(dir.join("index.m3u8"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("ffmpeg runs (apt install ffmpeg)");
        HlsWriter(child)
    }

    /// Waits until the writer has finished (a writer that ends).
    pub async fn finished(&mut self) {
        while matches!(self.0.try_wait(), Ok(None)) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the playlist lists a few segments.
    pub async fn ready(&self, dir: &Path) {
        let ok = eventually(Duration::from_secs(30), || {
            std::fs::read_to_string(dir.join("index.m3u8"))
                .map(|p| p.matches("#EXTINF").count() >= 3)
                .unwrap_or(false)
        })
        .await;
        assert!(ok, "ffmpeg did not write a live HLS playlist");
    }
}

impl Drop for HlsWriter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
