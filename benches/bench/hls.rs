//! The live HLS source both contenders read: segments written once by
//! ffmpeg (H.264 High + AAC, like an IPTV channel), served on loopback as a
//! live sliding-window playlist.
//!
//! Every channel `/ch/NAME/live.m3u8` has its own clock, started by its
//! first playlist request as if the channel had been on air for
//! [`HEAD_START_S`]: each trial gets a fresh channel, so sluice and ffmpeg
//! join an identical live edge (three segments published, as both start
//! three segments from the end of a live playlist).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use warp::Filter;

/// Segment length (s); the source's GOP is the same, so each segment opens
/// with a keyframe.
pub const SEGMENT_S: u32 = 2;
/// How long a channel has been "on air" when a client first asks for it.
pub const HEAD_START_S: f64 = 6.0;
/// Segments listed in the live window.
const WINDOW: usize = 5;

/// What the source material is: ffmpeg's encode of a moving test card.
#[derive(Debug, Clone, Copy)]
pub struct Material {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub seconds: u32,
    pub video_kbit: u32,
}

impl Material {
    pub fn describe(&self) -> String {
        format!(
            "{}x{} {} fps H.264 High {} kbit/s + AAC-LC 128 kbit/s 48 kHz stereo, {} s segments",
            self.width, self.height, self.fps, self.video_kbit, SEGMENT_S
        )
    }

    fn dir_name(&self) -> String {
        format!(
            "hls-{}x{}-{}fps-{}s-{}k",
            self.width, self.height, self.fps, self.seconds, self.video_kbit
        )
    }

    /// Writes the segments into `cache/<name>/` unless they are there.
    pub fn prepare(&self, cache: &Path) -> Result<Vec<Bytes>, String> {
        let dir = cache.join(self.dir_name());
        let done = dir.join("complete");
        if !done.exists() {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let gop = (self.fps * SEGMENT_S).to_string();
            let lavfi = format!(
                "testsrc2=size={}x{}:rate={}[out0];sine=frequency=440:sample_rate=48000[out1]",
                self.width, self.height, self.fps
            );
            let status = Command::new("ffmpeg")
                .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
                .args(["-f", "lavfi", "-i", &lavfi, "-t", &self.seconds.to_string()])
                .args(["-map", "0", "-c:v", "libx264", "-preset", "veryfast"])
                .args(["-profile:v", "high", "-pix_fmt", "yuv420p"])
                .args(["-b:v", &format!("{}k", self.video_kbit)])
                .args(["-maxrate", &format!("{}k", self.video_kbit)])
                .args(["-bufsize", &format!("{}k", self.video_kbit * 2)])
                .args(["-g", &gop, "-keyint_min", &gop, "-sc_threshold", "0"])
                .args(["-c:a", "aac", "-b:a", "128k", "-ac", "2"])
                .args(["-f", "hls", "-hls_time", &SEGMENT_S.to_string()])
                .args(["-hls_list_size", "0", "-hls_segment_filename"])
                .arg(dir.join("seg%04d.ts"))
                .arg(dir.join("index.m3u8"))
                .status()
                .map_err(|e| format!("cannot run ffmpeg: {e}"))?;
            if !status.success() {
                return Err(format!(
                    "ffmpeg could not write the HLS material ({status})"
                ));
            }
            std::fs::write(&done, b"").map_err(|e| e.to_string())?;
        }
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "ts"))
            .collect();
        names.sort();
        let segments: Vec<Bytes> = names
            .iter()
            .map(|p| std::fs::read(p).map(Bytes::from))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        if segments.len() < 4 {
            return Err(format!(
                "only {} HLS segments in {}",
                segments.len(),
                dir.display()
            ));
        }
        Ok(segments)
    }
}

#[derive(Clone)]
struct Live {
    segments: Arc<Vec<Bytes>>,
    clocks: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Live {
    fn playlist(&self, channel: &str) -> String {
        let started = *self
            .clocks
            .lock()
            .expect("clock lock")
            .entry(channel.to_string())
            .or_insert_with(Instant::now);
        let on_air = started.elapsed().as_secs_f64() + HEAD_START_S;
        let total = self.segments.len();
        let published = ((on_air / SEGMENT_S as f64) as usize).min(total);
        let first = published.saturating_sub(WINDOW);
        let mut m3u = format!(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{SEGMENT_S}\n#EXT-X-MEDIA-SEQUENCE:{first}\n"
        );
        for i in first..published {
            m3u.push_str(&format!("#EXTINF:{SEGMENT_S}.000,\nseg{i:04}.ts\n"));
        }
        if published == total {
            m3u.push_str("#EXT-X-ENDLIST\n");
        }
        m3u
    }
}

/// The running loopback HLS server.
pub struct HlsServer {
    pub addr: SocketAddr,
    pub segments: usize,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl HlsServer {
    pub async fn start(segments: Vec<Bytes>) -> HlsServer {
        let live = Live {
            segments: Arc::new(segments),
            clocks: Arc::default(),
        };
        let count = live.segments.len();
        let l = live.clone();
        let playlist = warp::path!("ch" / String / "live.m3u8").map(move |ch: String| {
            warp::http::Response::builder()
                .header("content-type", "application/vnd.apple.mpegurl")
                .header("cache-control", "no-cache")
                .body(l.playlist(&ch))
                .expect("playlist response")
        });
        let l = live.clone();
        let segment = warp::path!("ch" / String / String).map(move |_ch: String, name: String| {
            let seg = name
                .strip_prefix("seg")
                .and_then(|n| n.strip_suffix(".ts"))
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(|i| l.segments.get(i).cloned());
            let builder = warp::http::Response::builder();
            match seg {
                Some(body) => builder
                    .header("content-type", "video/mp2t")
                    .body(warp::reply::Response::new(body.into()).into_body()),
                None => builder
                    .status(404)
                    .body(warp::reply::Response::new(Bytes::new().into()).into_body()),
            }
            .expect("segment response")
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let routes = warp::get().and(playlist.or(segment));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("a loopback port for the HLS server");
        let addr = listener.local_addr().expect("bound address");
        let server = warp::serve(routes)
            .incoming(listener)
            .graceful(async {
                let _ = rx.await;
            })
            .run();
        tokio::spawn(server);
        HlsServer {
            addr,
            segments: count,
            shutdown: Some(tx),
        }
    }

    pub fn url(&self, channel: &str) -> String {
        format!("http://{}/ch/{channel}/live.m3u8", self.addr)
    }

    /// Seconds of material a channel carries.
    pub fn seconds(&self) -> u32 {
        self.segments as u32 * SEGMENT_S
    }
}

impl Drop for HlsServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
