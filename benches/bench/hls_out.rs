//! HLS output: sluice's segments (cut once per rendition, served to every
//! HLS client) against one `ffmpeg -f hls` per client at the same profile,
//! on identical fresh live sources.
//!
//! - Time to the first playable segment: sluice from the master playlist
//!   request to the first segment's last byte (playlist, init segment and
//!   segment fetched as a player would); ffmpeg from its start to the first
//!   segment listed in its playlist on disk.
//! - CPU at ten HLS clients: sluice's process, ten clients reloading and
//!   fetching every segment; ffmpeg's ten processes together.

use std::path::Path;
use std::time::{Duration, Instant};

use sluice::profiles::Profile;

use crate::contenders::{ffmpeg_args, Source};
use crate::stats::{median, ms, num};
use crate::Bench;

/// HLS clients of the CPU figure.
pub const CLIENTS: usize = 10;

#[derive(Debug, Clone)]
pub struct HlsOutRow {
    pub profile: String,
    /// Per trial: (sluice ms, ffmpeg ms) to the first playable segment.
    pub first: Vec<(Option<f64>, Option<f64>)>,
    /// CPU percent (of one core) at [`CLIENTS`] clients: sluice, ffmpeg.
    pub cpu: (Option<f64>, Option<f64>),
    pub errors: Vec<String>,
}

/// The baseline for one HLS client: the preview baseline's encode, muxed
/// as fMP4 HLS (2 s segments) into `dir`.
fn ffmpeg_hls_args(b: &Bench, profile: &Profile, source: &Source, dir: &Path) -> Vec<String> {
    let mut a = ffmpeg_args(profile, source, b.out_size(profile), b.material().fps);
    // Drop the progressive-fMP4 output (from -movflags on).
    if let Some(i) = a.iter().position(|x| x == "-movflags") {
        a.truncate(i);
    }
    a.extend(
        [
            "-f",
            "hls",
            "-hls_time",
            "2",
            "-hls_list_size",
            "6",
            "-hls_flags",
            "delete_segments",
            "-hls_segment_type",
            "fmp4",
        ]
        .map(String::from),
    );
    a.push(dir.join("index.m3u8").display().to_string());
    a
}

fn uris(playlist: &str) -> Vec<String> {
    playlist
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn map_uri(playlist: &str) -> Option<String> {
    let line = playlist.lines().find(|l| l.starts_with("#EXT-X-MAP:"))?;
    Some(line.split('"').nth(1)?.to_string())
}

async fn get_text(b: &Bench, url: &str) -> Result<String, String> {
    let r = b
        .sluice
        .client
        .get(url)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("{url}: {}", r.status()));
    }
    r.text().await.map_err(|e| e.to_string())
}

async fn get_len(b: &Bench, url: &str) -> Result<usize, String> {
    let r = b
        .sluice
        .client
        .get(url)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("{url}: {}", r.status()));
    }
    Ok(r.bytes().await.map_err(|e| e.to_string())?.len())
}

/// One sluice client: master, media playlist, init and first segment.
async fn sluice_first(b: &Bench, id: &str, profile: &str, sid: &str) -> Result<f64, String> {
    let t0 = Instant::now();
    let master = get_text(
        b,
        &format!(
            "{}/streams/hls/{id}/master.m3u8?quality={profile}&sid={sid}",
            b.sluice.base
        ),
    )
    .await?;
    let variant = uris(&master)
        .into_iter()
        .next()
        .ok_or("empty master playlist")?;
    let base = format!("{}/streams/hls/{id}", b.sluice.base);
    let media = get_text(b, &format!("{base}/{variant}")).await?;
    let dir = format!("{base}/{profile}");
    let init = map_uri(&media).ok_or("no EXT-X-MAP")?;
    get_len(b, &format!("{dir}/{init}")).await?;
    let seg = uris(&media).into_iter().next().ok_or("no segment")?;
    get_len(b, &format!("{dir}/{seg}")).await?;
    Ok(t0.elapsed().as_secs_f64() * 1000.0)
}

/// One sluice client reloading and fetching each new segment until `until`.
async fn sluice_client(b: &Bench, id: &str, profile: &str, sid: String, until: Instant) {
    let dir = format!("{}/streams/hls/{id}/{profile}", b.sluice.base);
    let mut seen = std::collections::HashSet::new();
    while Instant::now() < until {
        if let Ok(media) = get_text(b, &format!("{dir}/index.m3u8?sid={sid}")).await {
            for u in uris(&media) {
                if seen.insert(u.clone()) {
                    let _ = get_len(b, &format!("{dir}/{u}")).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
}

fn spawn_ffmpeg(args: &[String]) -> Result<std::process::Child, String> {
    std::process::Command::new("ffmpeg")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start ffmpeg: {e}"))
}

/// ffmpeg's time to a playlist on disk listing a segment.
async fn ffmpeg_first(b: &Bench, profile: &Profile, source: &Source) -> Result<f64, String> {
    let dir = tempfile::tempdir_in(b.scratch.path()).map_err(|e| e.to_string())?;
    let args = ffmpeg_hls_args(b, profile, source, dir.path());
    let t0 = Instant::now();
    let mut child = spawn_ffmpeg(&args)?;
    let playlist = dir.path().join("index.m3u8");
    let result = loop {
        if let Ok(text) = std::fs::read_to_string(&playlist) {
            if !uris(&text).is_empty() {
                break Ok(t0.elapsed().as_secs_f64() * 1000.0);
            }
        }
        if t0.elapsed() > Duration::from_secs(60) {
            break Err("ffmpeg wrote no segment within 60 s".to_string());
        }
        if let Ok(Some(st)) = child.try_wait() {
            break Err(format!("ffmpeg exited: {st}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|p| crate::procfs::cpu_seconds(*p))
        .sum()
}

pub async fn run(b: &Bench) -> Result<Vec<HlsOutRow>, String> {
    let mut rows = Vec::new();
    for profile in &b.profiles {
        let mut row = HlsOutRow {
            profile: profile.name.clone(),
            first: Vec::new(),
            cpu: (None, None),
            errors: Vec::new(),
        };
        for trial in 0..b.cfg.startup_pairs {
            let (id, _) = b.fresh_hls().await?;
            let s = sluice_first(b, &id, &profile.name, &format!("first{trial}")).await;
            // The session ends after three target durations unfetched.
            b.sluice.wait_idle(Duration::from_secs(20)).await?;
            let (_, source) = b.fresh_hls().await?;
            let f = ffmpeg_first(b, profile, &source).await;
            for e in [s.as_ref().err(), f.as_ref().err()].into_iter().flatten() {
                row.errors.push(e.clone());
            }
            row.first.push((s.ok(), f.ok()));
        }
        // CPU at ten clients: sluice.
        let (id, _) = b.fresh_hls().await?;
        let warm = Duration::from_secs_f64(b.cfg.warm_s);
        let window = Duration::from_secs_f64(b.cfg.window_s);
        let until = Instant::now() + warm + window + Duration::from_secs(4);
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| sluice_client(b, &id, &profile.name, format!("cpu{i}"), until))
            .collect();
        let measure = async {
            // Past the first segment and the warm-up.
            tokio::time::sleep(Duration::from_secs(4) + warm).await;
            let c0 = cpu_of(&[b.sluice.pid]);
            tokio::time::sleep(window).await;
            let c1 = cpu_of(&[b.sluice.pid]);
            (c1 - c0) / window.as_secs_f64() * 100.0
        };
        let (_, cpu) = tokio::join!(futures::future::join_all(clients), measure);
        row.cpu.0 = Some(cpu);
        b.sluice.wait_idle(Duration::from_secs(20)).await?;
        // CPU at ten clients: ffmpeg, one process each.
        let (_, source) = b.fresh_hls().await?;
        let dirs: Vec<_> = (0..CLIENTS)
            .map(|_| tempfile::tempdir_in(b.scratch.path()).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let mut children = Vec::new();
        for d in &dirs {
            children.push(spawn_ffmpeg(&ffmpeg_hls_args(
                b,
                profile,
                &source,
                d.path(),
            ))?);
        }
        let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
        tokio::time::sleep(Duration::from_secs(4) + warm).await;
        let c0 = cpu_of(&pids);
        tokio::time::sleep(window).await;
        let c1 = cpu_of(&pids);
        row.cpu.1 = Some((c1 - c0) / window.as_secs_f64() * 100.0);
        for mut c in children {
            let _ = c.kill();
            let _ = c.wait();
        }
        rows.push(row);
    }
    Ok(rows)
}

/// The report section.
pub fn render(o: &mut String, rows: &[HlsOutRow]) {
    use std::fmt::Write;
    let _ = writeln!(o, "## HLS output (live HLS source)\n");
    let _ = writeln!(
        o,
        "sluice cuts HLS segments once per rendition and serves them to every client; the \
         baseline runs one `ffmpeg -f hls` (fMP4 segments, 2 s) per client at the same profile. \
         First playable segment: sluice from the master playlist request to the first segment's \
         last byte (playlist, init segment, segment), ffmpeg from its start to its playlist on \
         disk listing a segment (median of the trials). CPU: percent of one core with {CLIENTS} \
         clients, sluice's process against the ten ffmpeg processes together.\n"
    );
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let s: Vec<f64> = r.first.iter().filter_map(|p| p.0).collect();
            let f: Vec<f64> = r.first.iter().filter_map(|p| p.1).collect();
            vec![
                r.profile.clone(),
                ms(median(&s)),
                ms(median(&f)),
                num(r.cpu.0, 0),
                num(r.cpu.1, 0),
                if r.errors.is_empty() {
                    "–".into()
                } else {
                    r.errors.join("; ")
                },
            ]
        })
        .collect();
    crate::markdown::table(
        o,
        &[
            "profile",
            "sluice first segment",
            "ffmpeg first segment",
            "sluice CPU % (10 clients)",
            "ffmpeg CPU % (10 clients)",
            "errors",
        ],
        &rows,
    );
}
