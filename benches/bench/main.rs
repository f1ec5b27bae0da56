//! sluice against the one-FFmpeg-process-per-viewer design, side by side
//! in one run on the same machine and the same sources.
//!
//! `cargo bench --bench bench` (`make bench`) runs every figure and writes
//! `BENCHMARKS.md`; run without `--bench` (as `cargo test` does) it checks
//! its own parts and runs each figure once, briefly, against the debug
//! build, writing nothing into the tree.
//!
//! ```text
//! ffmpeg (once) -> HLS segments -> loopback live HLS server -+-> sluice (HTTP preview) -> fMP4 reader
//!                                                            +-> ffmpeg subprocess (pipe) -> fMP4 reader
//! ```

mod admission;
mod contenders;
mod hls;
mod hls_out;
mod load;
mod markdown;
mod merge;
mod mp4;
mod procfs;
mod report;
mod selftest;
mod sharing;
mod sharing_report;
mod startup;
mod stats;
mod teardown;
mod viewer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sluice::profiles::{Profile, Profiles};

use contenders::{Session, Sluice, Source};
use hls::{HlsServer, Material};

/// How much of each figure a run measures.
#[derive(Debug, Clone)]
pub struct Config {
    pub full: bool,
    pub profiles: Vec<String>,
    /// A/B pairs for time to first byte/fragment, per source and profile.
    pub startup_pairs: usize,
    /// A/B pairs of the CPU and memory ramp, per profile.
    pub load_pairs: usize,
    /// Hang-ups per contender and profile.
    pub hangups: usize,
    /// Seconds after the first fragment before measuring.
    pub warm_s: f64,
    /// CPU and capacity measuring windows (s).
    pub window_s: f64,
    /// Seconds each added viewer runs before memory is read.
    pub settle_s: f64,
    pub status_requests: usize,
    pub capacity_steps: usize,
    pub material: Material,
    /// The figures to measure (see [`FIGURES`]).
    pub figures: Vec<String>,
    pub sharing: sharing::SharingConfig,
}

impl Config {
    fn full() -> Config {
        Config {
            full: true,
            profiles: vec!["low".into(), "medium".into(), "high".into()],
            startup_pairs: 3,
            load_pairs: 2,
            hangups: 100,
            warm_s: 2.0,
            window_s: 6.0,
            settle_s: 1.0,
            status_requests: 100,
            capacity_steps: 4,
            material: Material {
                width: 1920,
                height: 1080,
                fps: 30,
                // Long enough for the admission ramp (see
                // `admission::material_needed`); other figures use its start.
                seconds: 240,
                video_kbit: 5000,
            },
            figures: FIGURES.map(String::from).to_vec(),
            sharing: sharing::SharingConfig::full(),
        }
    }

    /// Whether the run leaves out a figure or a profile of the full run:
    /// it then rewrites only its parts of an existing report.
    fn is_partial(&self) -> bool {
        let full = Config::full();
        self.figures != full.figures || self.profiles != full.profiles
    }

    fn smoke() -> Config {
        Config {
            full: false,
            profiles: vec!["low".into()],
            startup_pairs: 1,
            load_pairs: 1,
            hangups: 3,
            warm_s: 1.0,
            // At least two of ffmpeg's 2 s fragments must land in a window.
            window_s: 5.0,
            settle_s: 1.0,
            status_requests: 20,
            capacity_steps: 1,
            material: Material {
                width: 640,
                height: 360,
                fps: 30,
                seconds: 56,
                video_kbit: 1000,
            },
            figures: FIGURES.map(String::from).to_vec(),
            sharing: sharing::SharingConfig::smoke(),
        }
    }
}

/// Which design serves a viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Sluice,
    Ffmpeg,
}

/// Everything a figure needs: the servers, the profiles, the material.
pub struct Bench {
    pub cfg: Config,
    /// The sluice binary under test.
    pub binary: PathBuf,
    pub sluice: Sluice,
    pub hls: HlsServer,
    pub profiles: Vec<Profile>,
    pub scratch: tempfile::TempDir,
    seq: AtomicU64,
}

/// sluice's catalog id of the generated-pattern stream.
pub const TEST_STREAM: &str = "bench-test";

impl Bench {
    pub fn material(&self) -> Material {
        self.cfg.material
    }

    pub fn test_source(&self) -> Source {
        let m = self.material();
        Source::Test {
            width: m.width,
            height: m.height,
            fps: m.fps,
        }
    }

    /// A new channel of the live HLS server, in sluice's catalog too.
    pub async fn fresh_hls(&self) -> Result<(String, Source), String> {
        self.fresh_hls_on(&self.sluice).await
    }

    /// A new channel of the live HLS server, in `server`'s catalog.
    pub async fn fresh_hls_on(&self, server: &Sluice) -> Result<(String, Source), String> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let id = format!("hls-{n}");
        let source = Source::Hls(self.hls.url(&id));
        server.add_stream(&id, &source).await?;
        Ok((id, source))
    }

    /// The output size sluice's `profile` gives the material.
    pub fn out_size(&self, profile: &Profile) -> (u32, u32) {
        let m = self.material();
        profile.output_size(m.width, m.height, (1, 1))
    }

    /// Starts one viewer of `stream_id` (sluice) / `source` (ffmpeg).
    pub fn start(
        &self,
        who: Who,
        profile: &Profile,
        stream_id: &str,
        source: &Source,
        capture: bool,
    ) -> Result<Session, String> {
        match who {
            Who::Sluice => Ok(self.sluice.preview(stream_id, &profile.name, capture)),
            Who::Ffmpeg => {
                let args = contenders::ffmpeg_args(
                    profile,
                    source,
                    self.out_size(profile),
                    self.material().fps,
                );
                contenders::ffmpeg(&args, capture)
            }
        }
    }

    /// Ends `sessions` and, for sluice, waits until the server lists none.
    pub async fn stop_all(&self, who: Who, sessions: Vec<Session>) -> Result<(), String> {
        for s in sessions {
            s.stop().await;
        }
        if who == Who::Sluice {
            self.sluice.wait_idle(Duration::from_secs(10)).await?;
        }
        Ok(())
    }

    pub fn profile(&self, name: &str) -> &Profile {
        self.profiles
            .iter()
            .find(|p| p.name == name)
            .expect("profile chosen from the loaded set")
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The sluice binary under test: this build's, or `SLUICE_BIN` (to compare
/// another commit's build on the same machine).
fn bench_binary() -> PathBuf {
    std::env::var_os("SLUICE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sluice")))
}

/// Every figure, in the order they run.
pub const FIGURES: [&str; 8] = [
    "startup",
    "load",
    "teardown",
    "capacity",
    "sharing",
    "status",
    "admission",
    "hls",
];

fn run(cfg: Config, out: &Path) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let started = Instant::now();
        let profiles_path = repo().join("pipelines/profiles.toml");
        let all = Profiles::load(&profiles_path).map_err(|e| e.to_string())?;
        let profiles: Vec<Profile> = cfg
            .profiles
            .iter()
            .map(|n| {
                all.get(n)
                    .cloned()
                    .ok_or_else(|| format!("no profile '{n}' in {}", profiles_path.display()))
            })
            .collect::<Result<_, _>>()?;
        let cache = repo().join("target/bench-media");
        eprintln!("bench: preparing {}", cfg.material.describe());
        let material = cfg.material;
        let segments = tokio::task::spawn_blocking(move || material.prepare(&cache))
            .await
            .map_err(|e| e.to_string())??;
        let hls = HlsServer::start(segments).await;
        let binary = bench_binary();
        let sluice = Sluice::start(&binary, &profiles_path)?;
        let bench = Bench {
            cfg,
            binary,
            sluice,
            hls,
            profiles,
            scratch: tempfile::tempdir().map_err(|e| e.to_string())?,
            seq: AtomicU64::new(0),
        };
        bench
            .sluice
            .add_stream(TEST_STREAM, &bench.test_source())
            .await?;
        let machine = procfs::Machine::describe();
        let only = |figure: &str| bench.cfg.figures.iter().any(|f| f == figure);
        let mut results = report::Results::default();
        if only("startup") {
            results.startup = startup::run(&bench).await?;
        }
        if only("load") {
            results.load = load::ramps(&bench).await?;
        }
        if only("teardown") {
            results.teardown = teardown::run(&bench).await?;
        }
        if only("capacity") {
            results.capacity = load::capacity(&bench, &results.load).await?;
        }
        if only("sharing") {
            results.sharing = Some(sharing::run(&bench, &bench.cfg.sharing).await?);
        }
        if only("status") {
            results.status = load::status_latency(&bench).await?;
        }
        if only("admission") {
            results.admission = admission::run(&bench).await?;
        }
        if only("hls") {
            results.hls = hls_out::run(&bench).await?;
        }
        results.elapsed = started.elapsed();
        let mut text = report::render(&bench, &machine, &results);
        if bench.cfg.full && bench.cfg.is_partial() {
            if let Ok(old) = std::fs::read_to_string(out) {
                let mut lines: Vec<String> = report::verdicts(&results)
                    .into_iter()
                    .map(|v| v.figure)
                    .collect();
                lines.push(admission::FIGURE.into());
                let ran = merge::Ran {
                    figures: &bench.cfg.figures,
                    profiles: &bench.cfg.profiles,
                    order: &Config::full().profiles,
                    lines: &lines,
                };
                text = merge::merge(&old, &text, &ran);
            }
        }
        std::fs::write(out, &text).map_err(|e| format!("{}: {e}", out.display()))?;
        if !bench.cfg.full {
            selftest::check_report(&results, &bench.cfg.profiles, &text);
        }
        eprintln!(
            "bench: wrote {} in {:.0} s",
            out.display(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    })
}

/// `BENCH_FIGURES=startup,load` measures only those figures, and
/// `BENCH_PROFILES=low` only those profiles; such a run rewrites only those
/// parts of an existing report and keeps the rest. `BENCH_OUT=FILE` writes
/// the report there instead of BENCHMARKS.md.
fn full_config() -> Result<(Config, PathBuf), String> {
    let mut cfg = Config::full();
    let list = |var: &str| {
        std::env::var(var).ok().map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
        })
    };
    if let Some(f) = list("BENCH_FIGURES") {
        if let Some(bad) = f.iter().find(|f| !FIGURES.contains(&f.as_str())) {
            return Err(format!(
                "BENCH_FIGURES: unknown figure '{bad}' (known: {})",
                FIGURES.join(", ")
            ));
        }
        cfg.figures = f;
    }
    if let Some(p) = list("BENCH_PROFILES") {
        cfg.profiles = p;
    }
    let out = std::env::var_os("BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("BENCHMARKS.md"));
    Ok((cfg, out))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let result = if full {
        full_config().and_then(|(cfg, out)| run(cfg, &out))
    } else {
        selftest::units();
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("BENCHMARKS.md");
        let r = run(Config::smoke(), &out);
        if r.is_ok() {
            println!("bench self-test: parts checked, every figure ran once");
        }
        r
    };
    if let Err(e) = result {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}
