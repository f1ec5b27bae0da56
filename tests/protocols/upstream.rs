//! The upstreams of the protocol tests: child processes killed on drop,
//! free loopback ports, the live ffmpeg source, a static file server with an
//! access log, and a network namespace of the test's own.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

/// Longest wait for an upstream to be ready to serve.
pub const UPSTREAM_READY: Duration = Duration::from_secs(20);
/// Upstream picture size: small, so the encoders stay cheap.
pub const SIZE: &str = "320x240";

/// A child process (server or sender) with its output in a log file;
/// killed and reaped on drop.
pub struct Upstream {
    what: String,
    pub child: Child,
    log: PathBuf,
}

impl Upstream {
    pub fn spawn(what: &str, cmd: &mut Command, dir: &Path) -> Upstream {
        let log = dir.join(format!("{}.log", what.replace(['/', ' '], "-")));
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));
        Upstream {
            what: what.to_string(),
            child,
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}):\n{}", self.what, self.log());
        }
    }

    /// Waits until `ready` holds, failing early if the process dies.
    pub async fn wait_until(&mut self, what: &str, mut ready: impl FnMut(&Upstream) -> bool) {
        let start = Instant::now();
        while !ready(self) {
            self.assert_running();
            assert!(
                start.elapsed() < UPSTREAM_READY,
                "{}: not ready ({what}) after {UPSTREAM_READY:?}:\n{}",
                self.what,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fails (never skips) when a tool the protocol needs is missing.
pub fn require(program: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`{program}` is missing: install the Debian package {package} \
         (./packaging/install-deps.sh test)"
    );
}

pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An even UDP port whose successor is free too (RTP, then RTCP).
pub fn free_rtp_port() -> u16 {
    loop {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port.is_multiple_of(2)
            && port < u16::MAX
            && UdpSocket::bind(("127.0.0.1", port + 1)).is_ok()
        {
            return port;
        }
    }
}

pub fn tcp_port_taken(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_err()
}

pub fn udp_port_taken(port: u16) -> bool {
    UdpSocket::bind(("127.0.0.1", port)).is_err()
}

/// ffmpeg arguments reading a live test pattern (25 fps) and a tone in real time.
pub fn live_input(size: &str) -> Vec<String> {
    [
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "warning",
        "-re",
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc2=size={size}:rate=25"),
        "-re",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
    ]
    .map(String::from)
    .to_vec()
}

pub fn ffmpeg_live(size: &str) -> Command {
    require("ffmpeg", "ffmpeg");
    let mut c = Command::new("ffmpeg");
    c.args(live_input(size));
    c
}

/// Cheap H.264 (a keyframe every second) + AAC.
pub const ENCODE: &[&str] = &[
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
    "-b:v",
    "300k",
    "-c:a",
    "aac",
    "-b:a",
    "64k",
];

/// ffmpeg sending the live source, encoded, as `format` to `url`.
pub fn ffmpeg_send(what: &str, dir: &Path, format: &str, url: &str) -> Upstream {
    Upstream::spawn(
        what,
        ffmpeg_live(SIZE).args(ENCODE).args(["-f", format, url]),
        dir,
    )
}

/// A static file server over a directory that ffmpeg keeps rewriting (HLS,
/// DASH): content types by extension, no caching, and an access log of
/// every path asked for.
pub struct FileServer {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FileServer {
    pub async fn start(root: PathBuf) -> FileServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let access = log.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve_file(tcp, root.clone(), access.clone()));
            }
        });
        FileServer { addr, log, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn clear_log(&self) {
        self.log.lock().unwrap().clear();
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_file(mut tcp: tokio::net::TcpStream, root: PathBuf, log: Arc<Mutex<Vec<String>>>) {
    let Some(text) = crate::common::read_request_head(&mut tcp).await else {
        return;
    };
    let path = text.split_whitespace().nth(1).unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path).to_string();
    log.lock().unwrap().push(path.clone());
    let rel = path.trim_start_matches('/');
    let body = if rel.split('/').any(|p| p == ".." || p.is_empty()) {
        None
    } else {
        tokio::fs::read(root.join(rel)).await.ok()
    };
    let (status, body) = match body {
        Some(b) => ("200 OK", b),
        None => ("404 Not Found", b"not found".to_vec()),
    };
    let ct = match rel.rsplit('.').next() {
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("ts") => "video/mp2t",
        Some("mpd") => "application/dash+xml",
        Some("m4s") | Some("mp4") => "video/mp4",
        _ => "application/octet-stream",
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\
         Cache-Control: no-cache\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = tcp.write_all(head.as_bytes()).await;
    let _ = tcp.write_all(&body).await;
    let _ = tcp.shutdown().await;
}

/// A network namespace of the test's own, deleted on drop (even when the
/// test fails). Only its loopback is used: the machine's interfaces are
/// never touched.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create() -> Netns {
        require("ip", "iproute2");
        let name = format!("sluice-test-{}", std::process::id());
        // A namespace left by a crashed earlier run with the same pid.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        run_ok(&mut ns.ip(&["link", "set", "lo", "up"]));
        run_ok(&mut ns.ip(&["link", "set", "lo", "multicast", "on"]));
        run_ok(&mut ns.ip(&["route", "add", "224.0.0.0/4", "dev", "lo"]));
        ns
    }

    pub fn ip(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["-n", &self.name]).args(args);
        c
    }

    /// `program` run inside the namespace.
    pub fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}
