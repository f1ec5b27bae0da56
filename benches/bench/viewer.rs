//! One viewer of either contender: the bytes it receives, timed as they
//! arrive and read by [`Mp4Watch`], and the CPU the serving process had
//! used at each fragment, so CPU per media second is taken between two
//! fragment arrivals for both contenders alike.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::mp4::Mp4Watch;
use crate::procfs;

/// One completed fragment as the client saw it.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    pub at: Duration,
    pub media_s: f64,
    pub frames: u64,
    /// CPU seconds of the serving process when the fragment arrived.
    pub cpu_s: f64,
}

#[derive(Debug, Default)]
pub struct Progress {
    pub first_byte: Option<Duration>,
    /// The first fragment that carries video frames.
    pub first_fragment: Option<Duration>,
    pub bytes: u64,
    pub marks: Vec<Mark>,
    pub ended: Option<Duration>,
    pub error: Option<String>,
    /// The bytes up to the end of the first video fragment, when asked for.
    pub prefix: Option<Vec<u8>>,
    /// sluice's `X-Session-Id`.
    pub session_id: Option<String>,
}

/// Figures between two instants of a viewer's life.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub wall_s: f64,
    pub media_s: f64,
    pub frames: u64,
    pub cpu_s: f64,
}

impl Window {
    /// Media seconds delivered per wall second.
    pub fn speed(&self) -> f64 {
        self.media_s / self.wall_s
    }

    pub fn fps(&self) -> f64 {
        self.frames as f64 / self.wall_s
    }
}

impl Progress {
    /// From the first fragment at or after `from` to the last at or before `to`.
    pub fn window(&self, from: Duration, to: Duration) -> Option<Window> {
        let a = self.marks.iter().find(|m| m.at >= from)?;
        let b = self.marks.iter().rev().find(|m| m.at <= to)?;
        (b.at > a.at && b.media_s > a.media_s).then(|| Window {
            wall_s: (b.at - a.at).as_secs_f64(),
            media_s: b.media_s - a.media_s,
            frames: b.frames - a.frames,
            cpu_s: b.cpu_s - a.cpu_s,
        })
    }

    pub fn media_s(&self) -> f64 {
        self.marks.last().map_or(0.0, |m| m.media_s)
    }
}

/// Turns received bytes into [`Progress`].
pub struct Feed {
    t0: Instant,
    watch: Mp4Watch,
    progress: Arc<Mutex<Progress>>,
    /// Process whose CPU is read at each fragment.
    cpu_pid: u32,
    capture: Option<Vec<u8>>,
}

impl Feed {
    pub fn new(t0: Instant, progress: Arc<Mutex<Progress>>, cpu_pid: u32, capture: bool) -> Feed {
        Feed {
            t0,
            watch: Mp4Watch::new(),
            progress,
            cpu_pid,
            capture: capture.then(Vec::new),
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        let at = self.t0.elapsed();
        if let Some(c) = self.capture.as_mut() {
            c.extend_from_slice(data);
        }
        let frags = self.watch.feed(data);
        let cpu_s = if frags.is_empty() {
            0.0
        } else {
            procfs::cpu_seconds(self.cpu_pid).unwrap_or(0.0)
        };
        let mut p = self.progress.lock().expect("progress lock");
        p.first_byte.get_or_insert(at);
        p.bytes += data.len() as u64;
        for f in frags {
            p.marks.push(Mark {
                at,
                media_s: f.media_s,
                frames: f.frames,
                cpu_s,
            });
            if f.frames > 0 && p.first_fragment.is_none() {
                p.first_fragment = Some(at);
                if let Some(mut c) = self.capture.take() {
                    c.truncate(f.end_offset as usize);
                    p.prefix = Some(c);
                }
            }
        }
        if let Some(e) = self.watch.error() {
            p.error
                .get_or_insert_with(|| format!("unreadable fMP4: {e}"));
        }
    }

    pub fn end(&mut self, error: Option<String>) {
        let mut p = self.progress.lock().expect("progress lock");
        p.ended.get_or_insert(self.t0.elapsed());
        if let Some(e) = error {
            p.error.get_or_insert(e);
        }
    }
}

/// Polls `cond` on a viewer's progress every 10 ms until it holds or
/// `timeout` passes; returns whether it held.
pub async fn wait_for(
    progress: &Arc<Mutex<Progress>>,
    timeout: Duration,
    cond: impl Fn(&Progress) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        {
            let p = progress.lock().expect("progress lock");
            if cond(&p) {
                return true;
            }
            if p.ended.is_some() {
                return false;
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
