//! The two contenders: the real `sluice` binary (one server, a viewer is
//! an HTTP preview), and one `ffmpeg` subprocess per viewer writing fMP4 to
//! a pipe, with the argument list FFmpeg-based IPTV servers use.

use std::collections::VecDeque;
use std::io::BufRead;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice::profiles::Profile;
use tokio::io::AsyncReadExt;

use crate::viewer::{Feed, Progress};

/// What a viewer watches.
#[derive(Debug, Clone)]
pub enum Source {
    /// A fresh channel of the loopback live HLS server (its playlist URL).
    Hls(String),
    /// A generated live pattern: sluice's `test://`, ffmpeg's `lavfi`
    /// paced by `-re`.
    Test { width: u32, height: u32, fps: u32 },
}

impl Source {
    pub fn sluice_url(&self) -> String {
        match self {
            Source::Hls(url) => url.clone(),
            Source::Test { width, height, fps } => {
                format!("test://smpte?size={width}x{height}&rate={fps}&freq=440")
            }
        }
    }
}

/// A viewer being served; [`Session::stop`] ends it.
pub struct Session {
    pub progress: Arc<Mutex<Progress>>,
    /// When the viewer was started; [`Progress`] times count from here.
    pub t0: Instant,
    inner: Inner,
}

enum Inner {
    Sluice(tokio::task::JoinHandle<()>),
    Ffmpeg {
        child: tokio::process::Child,
        pid: u32,
        reader: tokio::task::JoinHandle<()>,
    },
}

impl Session {
    /// The ffmpeg child's pid (sluice viewers share the server's).
    pub fn pid(&self) -> Option<u32> {
        match &self.inner {
            Inner::Ffmpeg { pid, .. } => Some(*pid),
            Inner::Sluice(_) => None,
        }
    }

    /// Ends the viewer the way each design does: sluice's client hangs up;
    /// ffmpeg gets SIGTERM. Returns when the hang-up was done (sluice) or
    /// the child has exited (ffmpeg), with the time that took.
    pub async fn stop(self) -> Duration {
        let t = Instant::now();
        match self.inner {
            Inner::Sluice(task) => {
                task.abort();
                let _ = task.await;
            }
            Inner::Ffmpeg {
                mut child,
                pid,
                reader,
            } => {
                // SAFETY: plain signal to our own child, not yet reaped.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                if tokio::time::timeout(Duration::from_secs(10), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
                let _ = reader.await;
            }
        }
        t.elapsed()
    }
}

/// The sluice server under test.
pub struct Sluice {
    child: std::process::Child,
    pub pid: u32,
    pub base: String,
    pub client: reqwest::Client,
    log_tail: Arc<Mutex<VecDeque<String>>>,
    _data: tempfile::TempDir,
}

impl Sluice {
    /// Starts `bin` on an ephemeral loopback port with limits out of the way
    /// of the measurements (pool, queue, per-client, rate limits, memory
    /// thresholds); everything else at its defaults.
    pub fn start(bin: &Path, profiles: &Path) -> Result<Sluice, String> {
        Sluice::start_with(bin, profiles, &[])
    }

    /// [`Sluice::start`] with `env` set over those limits (the admission
    /// figure runs a server with `MAX_CONCURRENT_TRANSCODES=auto`).
    pub fn start_with(bin: &Path, profiles: &Path, env: &[(&str, &str)]) -> Result<Sluice, String> {
        let data = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut child = std::process::Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", "0", "--data-dir"])
            .arg(data.path())
            .arg("--profiles")
            .arg(profiles)
            .env("LOG_FORMAT", "json")
            .env("LOG_LEVEL", "info")
            .env("MAX_CONCURRENT_TRANSCODES", "24")
            .env("MAX_QUEUED_REQUESTS", "64")
            .env("MAX_SESSIONS_PER_CLIENT", "64")
            .env("MAX_VIEWERS", "256")
            // A channel stops with its last viewer, so no trial pays for
            // the previous one's lingering encode.
            .env("CHANNEL_LINGER", "0")
            .env("MEMORY_WARNING_THRESHOLD", "16GB")
            .env("MEMORY_CRITICAL_THRESHOLD", "20GB")
            .env("RATE_LIMIT_PREVIEW", "off")
            .env("RATE_LIMIT_ADMIN", "off")
            .env("RATE_LIMIT_API", "off")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let pid = child.id();
        let log_tail = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let pipe = child.stderr.take().expect("stderr piped");
        let tail = log_tail.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "sluice listening" {
                        if let Some(a) = v["addr"].as_str() {
                            let _ = tx.send(a.to_string());
                        }
                    }
                }
                let mut t = tail.lock().expect("log lock");
                t.push_back(line);
                if t.len() > 50 {
                    t.pop_front();
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let tail: Vec<String> =
                    log_tail.lock().expect("log lock").iter().cloned().collect();
                return Err(format!("sluice did not start:\n{}", tail.join("\n")));
            }
        };
        Ok(Sluice {
            child,
            pid,
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            log_tail,
            _data: data,
        })
    }

    /// The server's last log lines, for error reports.
    pub fn log_tail(&self) -> String {
        let t = self.log_tail.lock().expect("log lock");
        t.iter()
            .rev()
            .take(8)
            .rev()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub async fn add_stream(&self, id: &str, source: &Source) -> Result<(), String> {
        let body = serde_json::json!({"id": id, "name": id, "url": source.sluice_url()});
        let resp = self
            .client
            .post(format!("{}/api/streams", self.base))
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status().as_u16() != 201 {
            let status = resp.status();
            return Err(format!(
                "adding stream {id}: {status} {}",
                resp.text().await.unwrap_or_default()
            ));
        }
        Ok(())
    }

    /// Opens a preview of `stream_id` at `quality` as fMP4.
    pub fn preview(&self, stream_id: &str, quality: &str, capture: bool) -> Session {
        self.preview_query(stream_id, &format!("quality={quality}&format=mp4"), capture)
    }

    /// Opens a preview of `stream_id` with the query string `query` (fMP4).
    pub fn preview_query(&self, stream_id: &str, query: &str, capture: bool) -> Session {
        let url = format!("{}/streams/preview/{stream_id}?{query}", self.base);
        let progress = Arc::new(Mutex::new(Progress::default()));
        let t0 = Instant::now();
        let mut feed = Feed::new(t0, progress.clone(), self.pid, capture);
        let client = self.client.clone();
        let p = progress.clone();
        let task = tokio::spawn(async move {
            let mut resp = match client.get(&url).send().await {
                Ok(r) => r,
                Err(e) => return feed.end(Some(e.to_string())),
            };
            if resp.status() != 200 {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                return feed.end(Some(format!("{status}: {text}")));
            }
            p.lock().expect("progress lock").session_id = resp
                .headers()
                .get("x-session-id")
                .and_then(|v| v.to_str().ok())
                .map(String::from);
            loop {
                match resp.chunk().await {
                    Ok(Some(c)) => feed.push(&c),
                    Ok(None) => return feed.end(None),
                    Err(e) => return feed.end(Some(e.to_string())),
                }
            }
        });
        Session {
            progress,
            t0,
            inner: Inner::Sluice(task),
        }
    }

    pub async fn status(&self) -> Result<serde_json::Value, String> {
        self.client
            .get(format!("{}/api/streams/transcoding/status", self.base))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())
    }

    /// Whether the status route still lists session `id`.
    pub async fn lists_session(&self, id: &str) -> Result<bool, String> {
        let s = self.status().await?;
        Ok(s["sessions"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["sessionId"] == id)))
    }

    /// Waits until no session (and no channel) is listed: the previous
    /// trial is fully torn down.
    pub async fn wait_idle(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status().await?;
            let none = |key: &str| s[key].as_array().is_none_or(|a| a.is_empty());
            if s["sessions"].is_array() && none("sessions") && none("channels") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("sessions still running after {timeout:?}: {s}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn rss(&self) -> u64 {
        crate::procfs::rss_bytes(self.pid).unwrap_or(0)
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The baseline's argument list for `profile` on `source`, scaled to the
/// size sluice's profile gives that source.
pub fn ffmpeg_args(profile: &Profile, source: &Source, out: (u32, u32), fps: u32) -> Vec<String> {
    let mut a: Vec<String> = ["-hide_banner", "-nostdin", "-loglevel", "error"]
        .map(String::from)
        .to_vec();
    // Input options go before -i, where ffmpeg applies them to probing.
    let probe = ["-probesize", "10M", "-analyzeduration", "5000000"].map(String::from);
    match source {
        Source::Hls(url) => {
            a.extend(probe);
            a.extend(["-i".into(), url.clone()]);
        }
        Source::Test { width, height, fps } => {
            a.push("-re".into());
            a.extend(probe);
            a.extend(["-f".into(), "lavfi".into(), "-i".into()]);
            a.push(format!(
                "smptebars=size={width}x{height}:rate={fps}[out0];sine=frequency=440:sample_rate=48000[out1]"
            ));
        }
    }
    let b = profile.video_bitrate;
    let level = &profile.level;
    let gop = profile.keyframe_interval(fps as i32, 1).to_string();
    let scale = format!("scale={}:{}", out.0, out.1);
    let rest: Vec<String> = [
        "-map",
        "0",
        "-vf",
        &scale,
        "-c:v",
        "libx264",
        "-preset",
        &profile.preset,
        "-profile:v",
        "baseline",
        "-level",
        level,
        "-b:v",
        &format!("{b}k"),
        "-maxrate",
        &format!("{b}k"),
        "-bufsize",
        &format!("{}k", 2 * b),
        "-g",
        &gop,
        "-c:a",
        "aac",
        "-b:a",
        &format!("{}k", profile.audio_bitrate),
        "-ar",
        "48000",
        "-ac",
        "2",
        "-movflags",
        "frag_keyframe+empty_moov",
        "-f",
        "mp4",
        "pipe:1",
    ]
    .map(String::from)
    .to_vec();
    a.extend(rest);
    a
}

/// Starts one ffmpeg viewer with `args`, reading its stdout.
pub fn ffmpeg(args: &[String], capture: bool) -> Result<Session, String> {
    let progress = Arc::new(Mutex::new(Progress::default()));
    let t0 = Instant::now();
    let mut child = tokio::process::Command::new("ffmpeg")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start ffmpeg: {e}"))?;
    let pid = child.id().ok_or("ffmpeg exited at once")?;
    let mut out = child.stdout.take().expect("stdout piped");
    let mut feed = Feed::new(t0, progress.clone(), pid, capture);
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match out.read(&mut buf).await {
                Ok(0) => return feed.end(None),
                Ok(n) => feed.push(&buf[..n]),
                Err(e) => return feed.end(Some(e.to_string())),
            }
        }
    });
    Ok(Session {
        progress,
        t0,
        inner: Inner::Ffmpeg { child, pid, reader },
    })
}
