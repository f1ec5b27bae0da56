//! Figures 2, 4 and 5, all on the live HLS source:
//! - the ramp: one viewer's CPU per media second (after a warm-up, between
//!   two fragment arrivals), then memory with 1, 2 and 3 viewers;
//! - capacity: the most distinct channels, one viewer each, that all keep
//!   real time (sluice: a channel, a decode and an encode per viewer;
//!   ffmpeg: a process per viewer);
//! - status-route latency while 3 transcodes run, against idle.

use std::time::{Duration, Instant};

use sluice::profiles::Profile;

use crate::contenders::Session;
use crate::viewer::{wait_for, Window};
use crate::{procfs, stats, Bench, Who};

/// Viewers the memory ramp goes up to.
pub const RAMP_MAX: usize = 3;
/// A viewer keeps real time when its media and frame rates over the
/// window are at least this fraction of real time. Not 1.0: ffmpeg's
/// fragments are whole 2 s GOPs and arrive when a segment has been fetched,
/// so a viewer that is keeping up still reads 0.96x over a window now and
/// then; one that is not falls well below (0.9x and less).
pub const KEEPS_UP: f64 = 0.95;

/// Memory the serving side added, with `n` viewers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    pub rss: f64,
    pub pss: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Ramp {
    /// CPU core-seconds per media second of the first viewer.
    pub cpu_per_media_s: Option<f64>,
    /// The first viewer's window.
    pub window: Option<Window>,
    /// Memory added with 1, 2, 3 viewers.
    pub mem: Vec<Mem>,
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct LoadRow {
    pub profile: String,
    /// (sluice, ffmpeg) ramps, in the order they ran.
    pub pairs: Vec<(Ramp, Ramp)>,
}

fn mem_now(b: &Bench, who: Who, sessions: &[Session], idle: Mem) -> Mem {
    match who {
        Who::Sluice => Mem {
            rss: b.sluice.rss() as f64 - idle.rss,
            pss: procfs::pss_bytes(b.sluice.pid).unwrap_or(0) as f64 - idle.pss,
        },
        Who::Ffmpeg => sessions
            .iter()
            .filter_map(|s| s.pid())
            .fold(Mem::default(), |m, pid| Mem {
                rss: m.rss + procfs::rss_bytes(pid).unwrap_or(0) as f64,
                pss: m.pss + procfs::pss_bytes(pid).unwrap_or(0) as f64,
            }),
    }
}

pub async fn first_fragment(s: &Session, timeout: Duration) -> Result<Duration, String> {
    wait_for(&s.progress, timeout, |p| p.first_fragment.is_some()).await;
    let p = s.progress.lock().expect("progress lock");
    p.first_fragment.ok_or_else(|| {
        p.error
            .clone()
            .unwrap_or_else(|| format!("no video fragment within {timeout:?}"))
    })
}

async fn sleep_s(s: f64) {
    tokio::time::sleep(Duration::from_secs_f64(s)).await;
}

async fn ramp(b: &Bench, who: Who, profile: &Profile) -> Result<Ramp, String> {
    let (id, source) = b.fresh_hls().await?;
    let idle = match who {
        Who::Sluice => Mem {
            rss: b.sluice.rss() as f64,
            pss: procfs::pss_bytes(b.sluice.pid).unwrap_or(0) as f64,
        },
        Who::Ffmpeg => Mem::default(),
    };
    let mut sessions = vec![b.start(who, profile, &id, &source, false)?];
    let mut out = Ramp::default();
    let result: Result<(), String> = async {
        let ff = first_fragment(&sessions[0], Duration::from_secs(30)).await?;
        let from = ff + Duration::from_secs_f64(b.cfg.warm_s);
        let to = from + Duration::from_secs_f64(b.cfg.window_s);
        let t0 = sessions[0].t0;
        let wait = to.saturating_sub(t0.elapsed()) + Duration::from_millis(50);
        tokio::time::sleep(wait).await;
        out.window = sessions[0]
            .progress
            .lock()
            .expect("progress lock")
            .window(from, to);
        out.cpu_per_media_s = out.window.map(|w| w.cpu_s / w.media_s);
        out.mem.push(mem_now(b, who, &sessions, idle));
        while sessions.len() < RAMP_MAX {
            sessions.push(b.start(who, profile, &id, &source, false)?);
            first_fragment(sessions.last().expect("pushed"), Duration::from_secs(30)).await?;
            sleep_s(b.cfg.settle_s).await;
            out.mem.push(mem_now(b, who, &sessions, idle));
        }
        Ok(())
    }
    .await;
    out.error = result.err();
    b.stop_all(who, sessions).await?;
    Ok(out)
}

pub async fn ramps(b: &Bench) -> Result<Vec<LoadRow>, String> {
    let mut rows = Vec::new();
    for name in &b.cfg.profiles {
        let profile = b.profile(name).clone();
        let mut pairs = Vec::new();
        for _ in 0..b.cfg.load_pairs {
            let a = ramp(b, Who::Sluice, &profile).await?;
            let f = ramp(b, Who::Ffmpeg, &profile).await?;
            eprintln!(
                "bench: ramp {name}: cpu/media-s sluice {:?} ffmpeg {:?}; MiB sluice {:?} ffmpeg {:?}",
                a.cpu_per_media_s,
                f.cpu_per_media_s,
                a.mem.iter().map(|m| (m.rss / 1048576.0).round()).collect::<Vec<_>>(),
                f.mem.iter().map(|m| (m.rss / 1048576.0).round()).collect::<Vec<_>>(),
            );
            pairs.push((a, f));
        }
        rows.push(LoadRow {
            profile: name.clone(),
            pairs,
        });
    }
    Ok(rows)
}

/// One capacity step: whether `n` concurrent viewers all kept real time.
#[derive(Debug, Clone)]
pub struct Step {
    pub n: usize,
    pub ok: bool,
    /// Slowest viewer's media rate and frame rate over the window.
    pub min_speed: f64,
    pub min_fps: f64,
    pub note: Option<String>,
}

#[derive(Debug, Clone)]
pub struct CapacityRow {
    pub profile: String,
    /// (sluice, ffmpeg): the most distinct channels (one viewer each) that
    /// kept up, and the steps tried.
    pub result: [(usize, Vec<Step>); 2],
}

/// How a capacity step spreads its viewers over channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spread {
    /// Every viewer on one fresh channel (sluice shares its rendition).
    OneChannel,
    /// Every viewer on a fresh channel of its own.
    Distinct,
}

impl CapacityRow {
    /// Contender `i`'s count (0 sluice, 1 ffmpeg), and whether it is exact:
    /// one more viewer was seen to fall behind (otherwise the search
    /// stopped short of it).
    pub fn count(&self, i: usize) -> (usize, bool) {
        let (best, steps) = &self.result[i];
        (*best, steps.iter().any(|s| !s.ok && s.n == best + 1))
    }
}

/// `n` viewers of one fresh channel, started together.
pub async fn step(b: &Bench, who: Who, profile: &Profile, n: usize) -> Result<Step, String> {
    step_spread(b, who, profile, n, Spread::OneChannel).await
}

/// `n` viewers started together, spread over channels as `spread` says.
pub async fn step_spread(
    b: &Bench,
    who: Who,
    profile: &Profile,
    n: usize,
    spread: Spread,
) -> Result<Step, String> {
    let mut channels = vec![b.fresh_hls().await?];
    if spread == Spread::Distinct {
        for _ in 1..n {
            channels.push(b.fresh_hls().await?);
        }
    }
    let mut sessions = Vec::new();
    for i in 0..n {
        let (id, source) = &channels[i % channels.len()];
        sessions.push(b.start(who, profile, id, source, false)?);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut note = None;
    for s in &sessions {
        if let Err(e) = first_fragment(s, Duration::from_secs(30)).await {
            note = Some(e);
        }
    }
    let (mut min_speed, mut min_fps) = (0.0, 0.0);
    if note.is_none() {
        let from = Instant::now() + Duration::from_secs_f64(b.cfg.warm_s);
        let to = from + Duration::from_secs_f64(b.cfg.window_s);
        tokio::time::sleep_until((to + Duration::from_millis(50)).into()).await;
        let windows: Vec<Option<Window>> = sessions
            .iter()
            .map(|s| {
                let p = s.progress.lock().expect("progress lock");
                p.window(from - s.t0, to - s.t0)
            })
            .collect();
        min_speed = f64::MAX;
        min_fps = f64::MAX;
        for w in windows {
            match w {
                Some(w) => {
                    min_speed = min_speed.min(w.speed());
                    min_fps = min_fps.min(w.fps());
                }
                None => {
                    min_speed = 0.0;
                    min_fps = 0.0;
                    note = Some("a viewer delivered no fragment in the window".into());
                }
            }
        }
    }
    b.stop_all(who, sessions).await?;
    let fps = b.material().fps as f64;
    Ok(Step {
        n,
        ok: note.is_none() && min_speed >= KEEPS_UP && min_fps >= KEEPS_UP * fps,
        min_speed,
        min_fps,
        note,
    })
}

/// Searches over distinct channels from an estimate (the cores over the
/// measured CPU per media second) up while all keep up, down while they do
/// not.
async fn search(
    b: &Bench,
    who: Who,
    profile: &Profile,
    cpu: Option<f64>,
) -> Result<(usize, Vec<Step>), String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut n = cpu
        .filter(|c| *c > 0.0)
        .map_or(1, |c| (cores / c).round() as usize)
        .clamp(1, 16);
    let mut steps: Vec<Step> = Vec::new();
    let mut best = 0usize;
    for _ in 0..b.cfg.capacity_steps {
        if steps.iter().any(|s| s.n == n) {
            break;
        }
        let s = step_spread(b, who, profile, n, Spread::Distinct).await?;
        eprintln!(
            "bench: capacity {} {who:?} {n} distinct channels: {} (slowest {:.2}x, {:.1} fps)",
            profile.name,
            if s.ok { "keeps up" } else { "falls behind" },
            s.min_speed,
            s.min_fps
        );
        // CPU-bound viewers share the throughput: n viewers at speed s
        // are worth about n * s viewers at real time.
        let worth = (n as f64 * s.min_speed).floor() as usize;
        let ok = s.ok;
        steps.push(s);
        let lowest_failing = steps.iter().filter(|s| !s.ok).map(|s| s.n).min();
        if ok {
            best = best.max(n);
            let ceiling = lowest_failing.map_or(usize::MAX, |f| f - 1);
            if n >= ceiling {
                break;
            }
            n = worth.clamp(n + 1, ceiling);
        } else {
            if n == 1 || steps.iter().any(|s| s.n == n - 1 && s.ok) {
                break;
            }
            n = ((worth as f64 * KEEPS_UP) as usize).clamp(best + 1, n - 1);
        }
    }
    Ok((best, steps))
}

pub async fn capacity(b: &Bench, load: &[LoadRow]) -> Result<Vec<CapacityRow>, String> {
    let mut rows = Vec::new();
    for name in &b.cfg.profiles {
        let profile = b.profile(name).clone();
        let cpu = |pick: fn(&(Ramp, Ramp)) -> &Ramp| {
            let v: Vec<f64> = load
                .iter()
                .filter(|r| &r.profile == name)
                .flat_map(|r| r.pairs.iter().filter_map(|p| pick(p).cpu_per_media_s))
                .collect();
            stats::median(&v)
        };
        let s = search(b, Who::Sluice, &profile, cpu(|p| &p.0)).await?;
        let f = search(b, Who::Ffmpeg, &profile, cpu(|p| &p.1)).await?;
        rows.push(CapacityRow {
            profile: name.clone(),
            result: [s, f],
        });
    }
    Ok(rows)
}

#[derive(Debug, Clone)]
pub struct StatusRow {
    pub profile: String,
    /// Latencies (ms) idle and with 3 transcodes running.
    pub idle: Vec<f64>,
    pub loaded: Vec<f64>,
}

async fn status_times(b: &Bench, n: usize) -> Result<Vec<f64>, String> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        b.sluice.status().await?;
        v.push(t.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(v)
}

pub async fn status_latency(b: &Bench) -> Result<Vec<StatusRow>, String> {
    let mut rows = Vec::new();
    for name in &b.cfg.profiles {
        let profile = b.profile(name).clone();
        let idle = status_times(b, b.cfg.status_requests).await?;
        let (id, source) = b.fresh_hls().await?;
        let mut sessions = Vec::new();
        for _ in 0..RAMP_MAX {
            sessions.push(b.start(Who::Sluice, &profile, &id, &source, false)?);
        }
        let mut started = Ok(());
        for s in &sessions {
            if let Err(e) = first_fragment(s, Duration::from_secs(30)).await {
                started = Err(e);
            }
        }
        let loaded = match started {
            Ok(()) => {
                sleep_s(1.0).await;
                status_times(b, b.cfg.status_requests).await
            }
            Err(e) => Err(e),
        };
        b.stop_all(Who::Sluice, sessions).await?;
        rows.push(StatusRow {
            profile: name.clone(),
            idle,
            loaded: loaded?,
        });
    }
    Ok(rows)
}
