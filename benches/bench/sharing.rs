//! Figure 6, viewers of one channel (live HLS), side by side with one
//! ffmpeg per viewer:
//! - CPU per media second and memory added with 1, 5, 10 and 20 viewers of
//!   one channel at one profile;
//! - join time: a viewer joining a rendition that already runs, to its
//!   first video fragment (cached GOP, and `join=live`), against an ffmpeg
//!   viewer started on the same channel;
//! - capacity: the most viewers of one channel that all keep real time;
//! - two profiles of one channel against the same two as separate
//!   sessions (two catalog streams with the same source).

use std::time::{Duration, Instant};

use sluice::profiles::{Profile, Profiles};

use crate::contenders::{Session, Source};
use crate::load::{first_fragment, step, Step, KEEPS_UP};
use crate::viewer::Window;
use crate::{procfs, Bench, Who};

/// What one group of viewers cost over the measuring window.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// CPU core-seconds of the serving side per media second of the
    /// channel (sluice: the server; ffmpeg: the sum over the children).
    pub cpu_per_media_s: Option<f64>,
    /// Memory the serving side added (sluice: RSS over idle; ffmpeg: the
    /// children's RSS summed).
    pub rss: Option<f64>,
    /// The slowest viewer's media rate over the window.
    pub min_speed: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Level {
    pub n: usize,
    /// (sluice, ffmpeg).
    pub runs: [Run; 2],
}

/// Milliseconds from request to the first video fragment.
#[derive(Debug, Clone, Default)]
pub struct Joins {
    pub cached: Vec<f64>,
    pub live: Vec<f64>,
    pub ffmpeg: Vec<f64>,
    pub error: Option<String>,
}

/// The two profiles of one channel, and as two separate channels.
#[derive(Debug, Clone, Default)]
pub struct PairRun {
    pub shared: Run,
    pub separate: Run,
}

#[derive(Debug, Clone, Default)]
pub struct Sharing {
    pub profile: String,
    /// The shortest measuring window (s).
    pub window_s: f64,
    pub levels: Vec<Level>,
    pub joins: Joins,
    /// sluice's steps, up while every viewer keeps real time.
    pub capacity: Vec<Step>,
    pub pair_profiles: [String; 2],
    pub pairs: Vec<PairRun>,
}

/// How much of the figure a run measures.
#[derive(Debug, Clone)]
pub struct SharingConfig {
    pub profile: String,
    pub viewers: Vec<usize>,
    pub joins: usize,
    pub capacity_steps: Vec<usize>,
    pub pair: [String; 2],
    pub pair_runs: usize,
    /// Measuring window (s) of a group, at least (it grows until every
    /// viewer delivered two fragments).
    pub window_s: f64,
}

impl SharingConfig {
    pub fn full() -> SharingConfig {
        SharingConfig {
            profile: "medium".into(),
            viewers: vec![1, 5, 10, 20],
            joins: 10,
            capacity_steps: vec![10, 20, 30, 40, 50, 60],
            pair: ["low".into(), "medium".into()],
            pair_runs: 2,
            window_s: 6.0,
        }
    }

    pub fn smoke() -> SharingConfig {
        SharingConfig {
            profile: "low".into(),
            viewers: vec![1, 2],
            joins: 1,
            capacity_steps: vec![2],
            pair: ["low".into(), "medium".into()],
            pair_runs: 1,
            window_s: 2.0,
        }
    }
}

fn profile(name: &str) -> Result<Profile, String> {
    let path = crate::repo().join("pipelines/profiles.toml");
    let all = Profiles::load(&path).map_err(|e| e.to_string())?;
    all.get(name)
        .cloned()
        .ok_or_else(|| format!("no profile '{name}' in {}", path.display()))
}

/// How much longer than the set window a group may take to deliver two
/// fragments per viewer.
const LONGEST_WAIT: Duration = Duration::from_secs(60);

/// Runs `viewers` (catalog id, profile) of `who` together on `source`:
/// every one to its first fragment, then the warm-up, then the window.
async fn group(
    b: &Bench,
    c: &SharingConfig,
    who: Who,
    viewers: &[(String, Profile)],
    source: &Source,
) -> Run {
    let idle = b.sluice.rss() as f64;
    let mut sessions: Vec<Session> = Vec::new();
    let mut run = Run::default();
    let result: Result<(), String> = async {
        for (id, p) in viewers {
            sessions.push(b.start(who, p, id, source, false)?);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for s in &sessions {
            first_fragment(s, Duration::from_secs(60)).await?;
        }
        let from = Instant::now() + Duration::from_secs_f64(b.cfg.warm_s);
        let to = from + Duration::from_secs_f64(c.window_s);
        tokio::time::sleep_until((to + Duration::from_millis(50)).into()).await;
        // Viewers that fall behind deliver a fragment seldom: the window
        // grows (a minute at most) until each has two in it.
        let windows: Vec<Window> = loop {
            let now = Instant::now();
            let w: Option<Vec<Window>> = sessions
                .iter()
                .map(|s| {
                    let p = s.progress.lock().expect("progress lock");
                    p.window(from - s.t0, now - s.t0)
                })
                .collect();
            match w {
                Some(w) => break w,
                None if now > to + LONGEST_WAIT => {
                    return Err(format!(
                        "a viewer delivered fewer than two fragments in {:?}",
                        now - from
                    ))
                }
                None => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        };
        run.min_speed = windows.iter().map(Window::speed).reduce(f64::min);
        run.cpu_per_media_s = Some(match who {
            // Every window reads the whole server: one of them is the channel's cost.
            Who::Sluice => windows[0].cpu_s / windows[0].media_s,
            Who::Ffmpeg => windows.iter().map(|w| w.cpu_s / w.media_s).sum(),
        });
        run.rss = Some(match who {
            Who::Sluice => b.sluice.rss() as f64 - idle,
            Who::Ffmpeg => sessions
                .iter()
                .filter_map(|s| s.pid())
                .filter_map(procfs::rss_bytes)
                .sum::<u64>() as f64,
        });
        Ok(())
    }
    .await;
    run.error = result.err();
    if let Err(e) = b.stop_all(who, sessions).await {
        run.error.get_or_insert(e);
    }
    run
}

async fn levels(b: &Bench, c: &SharingConfig, p: &Profile) -> Result<Vec<Level>, String> {
    let mut out = Vec::new();
    for &n in &c.viewers {
        let mut runs: [Run; 2] = Default::default();
        for (i, who) in [Who::Sluice, Who::Ffmpeg].into_iter().enumerate() {
            let (id, source) = b.fresh_hls().await?;
            let viewers = vec![(id, p.clone()); n];
            runs[i] = group(b, c, who, &viewers, &source).await;
        }
        eprintln!(
            "bench: sharing {} x{n}: cpu/media-s sluice {:?} ffmpeg {:?}; MiB sluice {:?} ffmpeg {:?}",
            p.name,
            runs[0].cpu_per_media_s,
            runs[1].cpu_per_media_s,
            runs[0].rss.map(|r| (r / 1048576.0).round()),
            runs[1].rss.map(|r| (r / 1048576.0).round()),
        );
        out.push(Level { n, runs });
    }
    Ok(out)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn joins(b: &Bench, c: &SharingConfig, p: &Profile) -> Result<Joins, String> {
    let (id, source) = b.fresh_hls().await?;
    let mut j = Joins::default();
    let anchor = b.start(Who::Sluice, p, &id, &source, false)?;
    let result: Result<(), String> = async {
        first_fragment(&anchor, Duration::from_secs(60)).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        for live in [false, true] {
            for _ in 0..c.joins {
                let join = if live { "&join=live" } else { "" };
                let query = format!("quality={}&format=mp4{join}", p.name);
                let s = b.sluice.preview_query(&id, &query, false);
                let t = first_fragment(&s, Duration::from_secs(30)).await;
                s.stop().await;
                let v = if live { &mut j.live } else { &mut j.cached };
                v.push(ms(t?));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }
    .await;
    j.error = result.err();
    b.stop_all(Who::Sluice, vec![anchor]).await?;
    for _ in 0..c.joins {
        let s = b.start(Who::Ffmpeg, p, &id, &source, false)?;
        let t = first_fragment(&s, Duration::from_secs(30)).await;
        s.stop().await;
        match t {
            Ok(t) => j.ffmpeg.push(ms(t)),
            Err(e) => {
                j.error.get_or_insert(e);
            }
        }
    }
    eprintln!(
        "bench: sharing joins (ms): cached {:?} live {:?} ffmpeg {:?}",
        j.cached, j.live, j.ffmpeg
    );
    Ok(j)
}

async fn capacity(b: &Bench, c: &SharingConfig, p: &Profile) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    for &n in &c.capacity_steps {
        let s = step(b, Who::Sluice, p, n).await?;
        eprintln!(
            "bench: sharing capacity {} n={n}: {} (slowest {:.2}x)",
            p.name,
            if s.ok { "keeps up" } else { "falls behind" },
            s.min_speed
        );
        let ok = s.ok;
        steps.push(s);
        if !ok {
            break;
        }
    }
    Ok(steps)
}

async fn pairs(b: &Bench, c: &SharingConfig) -> Result<Vec<PairRun>, String> {
    let ps = [profile(&c.pair[0])?, profile(&c.pair[1])?];
    let mut out = Vec::new();
    for _ in 0..c.pair_runs {
        let (id, source) = b.fresh_hls().await?;
        let one: Vec<_> = ps.iter().map(|p| (id.clone(), p.clone())).collect();
        let shared = group(b, c, Who::Sluice, &one, &source).await;
        let (id, source) = b.fresh_hls().await?;
        let twin = format!("{id}-twin");
        b.sluice.add_stream(&twin, &source).await?;
        let two = vec![(id, ps[0].clone()), (twin, ps[1].clone())];
        let separate = group(b, c, Who::Sluice, &two, &source).await;
        eprintln!(
            "bench: sharing {} + {}: cpu/media-s one channel {:?}, two sessions {:?}",
            c.pair[0], c.pair[1], shared.cpu_per_media_s, separate.cpu_per_media_s
        );
        out.push(PairRun { shared, separate });
    }
    Ok(out)
}

pub async fn run(b: &Bench, c: &SharingConfig) -> Result<Sharing, String> {
    let p = profile(&c.profile)?;
    Ok(Sharing {
        profile: c.profile.clone(),
        window_s: c.window_s,
        levels: levels(b, c, &p).await?,
        joins: joins(b, c, &p).await?,
        capacity: capacity(b, c, &p).await?,
        pair_profiles: c.pair.clone(),
        pairs: pairs(b, c).await?,
    })
}

/// Whether a run's slowest viewer kept real time.
pub fn keeps_up(r: &Run) -> bool {
    r.error.is_none() && r.min_speed.is_some_and(|s| s >= KEEPS_UP)
}
