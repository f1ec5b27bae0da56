//! BENCHMARKS.md: the machine, the method, and every figure as tables,
//! with sluice ÷ ffmpeg ratios taken pair by pair.

use std::fmt::Write;
use std::time::Duration;

use crate::contenders::{ffmpeg_args, Source};
use crate::load::{CapacityRow, LoadRow, StatusRow, KEEPS_UP, RAMP_MAX};
use crate::markdown::{table, Verdict};
use crate::procfs::Machine;
use crate::startup::{Start, StartRow};
use crate::stats::{median, mib, ms, num, paired_ratio, quantile, ratio};
use crate::teardown::TeardownRow;
use crate::{hls, Bench};

#[derive(Default)]
pub struct Results {
    pub startup: Vec<StartRow>,
    pub load: Vec<LoadRow>,
    pub teardown: Vec<TeardownRow>,
    pub capacity: Vec<CapacityRow>,
    pub status: Vec<StatusRow>,
    pub sharing: Option<crate::sharing::Sharing>,
    pub hls: Vec<crate::hls_out::HlsOutRow>,
    pub admission: Vec<crate::admission::AdmissionRow>,
    pub elapsed: Duration,
}

fn start_ratio(row: &StartRow, pick: fn(&Start) -> Option<f64>) -> Option<f64> {
    let pairs: Vec<_> = row.pairs.iter().map(|(a, f)| (pick(a), pick(f))).collect();
    paired_ratio(&pairs)
}

fn start_median(row: &StartRow, sluice: bool, pick: fn(&Start) -> Option<f64>) -> Option<f64> {
    let v: Vec<f64> = row
        .pairs
        .iter()
        .filter_map(|(a, f)| pick(if sluice { a } else { f }))
        .collect();
    median(&v)
}

fn mem_at(row: &LoadRow, sluice: bool, n: usize, pss: bool) -> Option<f64> {
    let v: Vec<f64> = row
        .pairs
        .iter()
        .filter_map(|(a, f)| (if sluice { a } else { f }).mem.get(n - 1))
        .map(|m| if pss { m.pss } else { m.rss })
        .collect();
    median(&v)
}

fn mem_ratio(row: &LoadRow, n: usize) -> Option<f64> {
    let pairs: Vec<_> = row
        .pairs
        .iter()
        .map(|(a, f)| {
            (
                a.mem.get(n - 1).map(|m| m.rss),
                f.mem.get(n - 1).map(|m| m.rss),
            )
        })
        .collect();
    paired_ratio(&pairs)
}

fn cpu_ratio(row: &LoadRow) -> Option<f64> {
    let pairs: Vec<_> = row
        .pairs
        .iter()
        .map(|(a, f)| (a.cpu_per_media_s, f.cpu_per_media_s))
        .collect();
    paired_ratio(&pairs)
}

fn cpu_median(row: &LoadRow, sluice: bool) -> Option<f64> {
    let v: Vec<f64> = row
        .pairs
        .iter()
        .filter_map(|(a, f)| (if sluice { a } else { f }).cpu_per_media_s)
        .collect();
    median(&v)
}

/// sluice's `q` quantile of teardown times over ffmpeg's.
fn teardown_ratio(row: &TeardownRow, q: f64) -> Option<f64> {
    match (quantile(&row.sluice, q), quantile(&row.ffmpeg, q)) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The capacity figure's summary line.
pub const CAPACITY: &str = "capacity, distinct channels (viewers at real time, higher is better)";

/// Every figure's ratio, for the summary and the "where sluice loses" list.
pub fn verdicts(r: &Results) -> Vec<Verdict> {
    let mut v = Vec::new();
    let mut push = |figure: String, profile: &str, ratio: Option<f64>, lower: bool| {
        v.push(Verdict {
            figure,
            profile: profile.to_string(),
            ratio,
            lower_is_better: lower,
        })
    };
    for row in &r.startup {
        push(
            format!("time to first byte ({})", row.source),
            &row.profile,
            start_ratio(row, |s| s.ttfb_ms),
            true,
        );
        push(
            format!("time to first fragment ({})", row.source),
            &row.profile,
            start_ratio(row, |s| s.fragment_ms),
            true,
        );
    }
    for row in &r.load {
        push(
            "CPU per media second".into(),
            &row.profile,
            cpu_ratio(row),
            true,
        );
        for n in 1..=RAMP_MAX {
            push(
                format!("memory with {n} viewer(s)"),
                &row.profile,
                mem_ratio(row, n),
                true,
            );
        }
    }
    for row in &r.teardown {
        push(
            "teardown p50".into(),
            &row.profile,
            teardown_ratio(row, 0.5),
            true,
        );
        push(
            "teardown p99".into(),
            &row.profile,
            teardown_ratio(row, 0.99),
            true,
        );
    }
    for row in &r.capacity {
        let (s, f) = (row.result[0].0 as f64, row.result[1].0 as f64);
        push(
            CAPACITY.into(),
            &row.profile,
            (f > 0.0)
                .then(|| s / f)
                .or((s > 0.0).then_some(f64::INFINITY)),
            false,
        );
    }
    if let Some(s) = &r.sharing {
        v.extend(crate::sharing_report::verdicts(s, &r.capacity));
    }
    v
}

/// Which encoder sluice's transcodes used in this run: the first working
/// hardware encoder of the start-up probe, or plainly none.
fn hardware_encoder() -> String {
    if gst::init().is_err() {
        return "unknown: GStreamer did not initialise".into();
    }
    let table = sluice::encoders::table();
    let found: Vec<String> = table
        .probed()
        .into_iter()
        .filter(|p| p.available && p.kind == sluice::encoders::Kind::Encoder && p.name != "x264")
        .map(|p| p.element)
        .collect();
    if found.is_empty() {
        "none on this machine (no GPU render node or encoder device): every sluice figure is x264, no hardware figures".into()
    } else {
        format!(
            "{}: sluice's transcodes ran on it (SLUICE_ENCODER=auto), so its figures are hardware figures",
            found.join(", ")
        )
    }
}

pub fn render(b: &Bench, m: &Machine, r: &Results) -> String {
    let mut o = String::new();
    let profiles = b.cfg.profiles.clone();
    let _ = writeln!(
        o,
        "# Benchmarks: sluice against one ffmpeg process per viewer\n"
    );
    let _ = writeln!(
        o,
        "Written by `make bench` (`cargo bench --bench bench`, source in `benches/bench/`) in {:.1} min at commit `{}`. \
         Do not edit by hand: run `make bench` again. Ratios are sluice ÷ ffmpeg, taken pair by pair \
         (sluice, then ffmpeg, on identical fresh sources) and then the median of the pairs, so drift \
         of the machine during the run cancels. Below 1.00x sluice needs less (time, CPU, memory).\n",
        r.elapsed.as_secs_f64() / 60.0,
        m.commit
    );
    let _ = writeln!(o, "## Machine\n");
    table(
        &mut o,
        &["", ""],
        &[
            vec!["CPU".into(), m.cpu.clone()],
            vec!["cores".into(), m.cores.to_string()],
            vec!["memory".into(), format!("{:.1} GiB", m.memory_gib)],
            vec!["kernel".into(), m.kernel.clone()],
            vec!["GStreamer".into(), m.gstreamer.clone()],
            vec!["ffmpeg".into(), m.ffmpeg.clone()],
            vec!["hardware encoder".into(), hardware_encoder()],
            vec![
                "sluice".into(),
                if std::env::var_os("SLUICE_BIN").is_some() {
                    format!("`{}` (SLUICE_BIN)", b.binary.display())
                } else {
                    format!("this commit's build (`{}`)", m.commit)
                },
            ],
        ],
    );

    let _ = writeln!(o, "## Summary\n");
    let verdicts = verdicts(r);
    let mut figures: Vec<String> = Vec::new();
    for v in &verdicts {
        if !figures.contains(&v.figure) {
            figures.push(v.figure.clone());
        }
    }
    let mut head = vec!["figure (sluice ÷ ffmpeg)"];
    head.extend(profiles.iter().map(String::as_str));
    let rows: Vec<Vec<String>> = figures
        .iter()
        .map(|f| {
            let mut row = vec![f.clone()];
            for p in &profiles {
                let v = verdicts.iter().find(|v| &v.figure == f && &v.profile == p);
                row.push(v.map_or("n/a".into(), |v| ratio(v.ratio)));
            }
            row
        })
        .collect();
    table(&mut o, &head, &rows);

    method(&mut o, b);
    figures_detail(&mut o, b, r);
    if let Some(s) = &r.sharing {
        crate::sharing_report::render(&mut o, s, &r.capacity);
    }
    if !r.hls.is_empty() {
        crate::hls_out::render(&mut o, &r.hls);
        let _ = writeln!(o);
    }
    if ran(b, "admission") {
        crate::admission::render(&mut o, b, &r.admission, &r.capacity);
    }
    losses(
        &mut o,
        &verdicts,
        &crate::admission::losses(&r.admission, &r.capacity),
    );
    o.push_str(CHANGES);
    o
}

/// What these figures led to, with the before/after runs that showed it
/// (kept by hand in `benches/bench/changes.md`; the runs it quotes are
/// reproducible with `SLUICE_BIN`).
const CHANGES: &str = include_str!("changes.md");

fn method(o: &mut String, b: &Bench) {
    let mat = b.material();
    let medium = b
        .profiles
        .iter()
        .find(|p| p.name == "medium")
        .unwrap_or(&b.profiles[0]);
    let args = ffmpeg_args(
        medium,
        &Source::Hls("http://127.0.0.1:PORT/ch/NAME/live.m3u8".into()),
        b.out_size(medium),
        mat.fps,
    );
    let _ = writeln!(o, "## Method\n");
    let _ = writeln!(
        o,
        "- **Sources.** *Live HLS*: ffmpeg encodes {} once (cached in `target/bench-media/`); the harness serves it on \
         loopback as a live sliding-window playlist ({} s segments, 5 listed). Every trial gets a fresh channel that has \
         been on air {} s when first asked for, so both contenders join the same live edge. *Test pattern*: sluice's \
         `test://smpte?size={}x{}&rate={}` against ffmpeg's `lavfi` `smptebars` + `sine`, paced with `-re`.",
        mat.describe(),
        hls::SEGMENT_S,
        hls::HEAD_START_S,
        mat.width,
        mat.height,
        mat.fps
    );
    let _ = writeln!(
        o,
        "- **sluice** is the release binary, started once with the repository's `pipelines/profiles.toml`; a viewer is \
         `GET /streams/preview/ID?quality=P&format=mp4`. Pool, per-client and rate limits are raised out of the way \
         and a channel stops with its last viewer (`CHANNEL_LINGER=0`, so no trial pays for the one before); \
         everything else is at its defaults."
    );
    let _ = writeln!(
        o,
        "- **ffmpeg** is one subprocess per viewer writing fMP4 to a pipe, with the same profile values and output size \
         (`{}`):\n\n  ```\n  ffmpeg {}\n  ```\n",
        medium.name,
        args.join(" ")
    );
    let _ = writeln!(
        o,
        "- Both outputs are read by one fMP4 parser. *First fragment* = the first `moof` with video samples and its \
         whole `mdat` received; the first pair of each row keeps that prefix and ffprobe decodes it. *CPU per media \
         second* = CPU seconds of the serving process (sluice: the whole server; ffmpeg: the child) between two \
         fragment arrivals, divided by the video media time those fragments carried, from {} s after the first \
         fragment over {} s. *Memory* = server RSS minus its idle RSS (sluice) against the sum of the children's RSS \
         (ffmpeg), read {} s after each added viewer's first fragment; PSS, which splits shared library pages among \
         processes, is shown too. *Capacity* = the most distinct channels, one viewer each, started together that \
         all deliver ≥ {:.2}× real time in media time and frame rate over a {} s window. *Teardown* = client hang-up until the status route no longer \
         lists the session (its pipeline reached NULL and its slot was freed), against SIGTERM until ffmpeg exited.\n",
        b.cfg.warm_s, b.cfg.window_s, b.cfg.settle_s, KEEPS_UP, b.cfg.window_s
    );
}

type Section = fn(&mut String, &Bench, &Results);

/// The sections of the figures this run measured, in order.
fn figures_detail(o: &mut String, b: &Bench, r: &Results) {
    let sections: [(&str, Section); 5] = [
        ("startup", startup_detail),
        ("load", load_detail),
        ("teardown", teardown_detail),
        ("capacity", capacity_detail),
        ("status", status_detail),
    ];
    for (figure, section) in sections {
        if ran(b, figure) {
            section(o, b, r);
        }
    }
}

/// Whether this run measured `figure`.
pub fn ran(b: &Bench, figure: &str) -> bool {
    b.cfg.figures.iter().any(|f| f == figure)
}

fn startup_detail(o: &mut String, b: &Bench, r: &Results) {
    let _ = writeln!(o, "## Time to first byte and first fragment\n");
    let _ = writeln!(o, "Medians of {} pairs per row.\n", b.cfg.startup_pairs);
    let rows: Vec<Vec<String>> = r
        .startup
        .iter()
        .map(|row| {
            vec![
                row.source.to_string(),
                row.profile.clone(),
                ms(start_median(row, true, |s| s.ttfb_ms)),
                ms(start_median(row, false, |s| s.ttfb_ms)),
                ratio(start_ratio(row, |s| s.ttfb_ms)),
                ms(start_median(row, true, |s| s.fragment_ms)),
                ms(start_median(row, false, |s| s.fragment_ms)),
                ratio(start_ratio(row, |s| s.fragment_ms)),
            ]
        })
        .collect();
    table(
        o,
        &[
            "source",
            "profile",
            "sluice TTFB",
            "ffmpeg TTFB",
            "ratio",
            "sluice 1st fragment",
            "ffmpeg 1st fragment",
            "ratio",
        ],
        &rows,
    );
    let rows: Vec<Vec<String>> = r
        .startup
        .iter()
        .map(|row| {
            let failed = row
                .pairs
                .iter()
                .map(|(a, f)| a.error.is_some() as usize + f.error.is_some() as usize)
                .sum::<usize>();
            vec![
                row.source.to_string(),
                row.profile.clone(),
                row.decoded[0].text.clone(),
                row.decoded[1].text.clone(),
                failed.to_string(),
            ]
        })
        .collect();
    if let Some((first, _)) = r.startup.first().and_then(|row| row.pairs.first()) {
        let _ = writeln!(
            o,
            "The first of these was the server's first viewer since it started: {} to the first byte, {} to the first fragment.\n",
            ms(first.ttfb_ms),
            ms(first.fragment_ms)
        );
    }
    let _ = writeln!(o, "What ffprobe decoded from each first-fragment prefix:\n");
    table(
        o,
        &["source", "profile", "sluice", "ffmpeg", "failed trials"],
        &rows,
    );
}

fn load_detail(o: &mut String, _b: &Bench, r: &Results) {
    let _ = writeln!(o, "## CPU per media second (one viewer, live HLS)\n");
    let rows: Vec<Vec<String>> = r
        .load
        .iter()
        .map(|row| {
            let speed = |sluice: bool| {
                let v: Vec<f64> = row
                    .pairs
                    .iter()
                    .filter_map(|(a, f)| (if sluice { a } else { f }).window.map(|w| w.speed()))
                    .collect();
                num(median(&v), 2)
            };
            vec![
                row.profile.clone(),
                num(cpu_median(row, true), 3),
                num(cpu_median(row, false), 3),
                ratio(cpu_ratio(row)),
                format!("{} / {}", speed(true), speed(false)),
            ]
        })
        .collect();
    table(
        o,
        &[
            "profile",
            "sluice cpu-s per media-s",
            "ffmpeg cpu-s per media-s",
            "ratio",
            "media rate in the window (sluice / ffmpeg)",
        ],
        &rows,
    );

    let _ = writeln!(o, "## Memory added per concurrent viewer (live HLS)\n");
    let mut rows = Vec::new();
    for row in &r.load {
        for n in 1..=RAMP_MAX {
            let per = |v: Option<f64>| v.map(|x| x / n as f64);
            rows.push(vec![
                row.profile.clone(),
                n.to_string(),
                mib(mem_at(row, true, n, false)),
                mib(mem_at(row, false, n, false)),
                ratio(mem_ratio(row, n)),
                format!(
                    "{} / {}",
                    mib(per(mem_at(row, true, n, false))),
                    mib(per(mem_at(row, false, n, false)))
                ),
                format!(
                    "{} / {}",
                    mib(mem_at(row, true, n, true)),
                    mib(mem_at(row, false, n, true))
                ),
            ]);
        }
    }
    table(
        o,
        &[
            "profile",
            "viewers",
            "sluice RSS added",
            "ffmpeg RSS (sum)",
            "ratio",
            "per viewer (sluice / ffmpeg)",
            "PSS (sluice / ffmpeg)",
        ],
        &rows,
    );
}

fn teardown_detail(o: &mut String, _b: &Bench, r: &Results) {
    let _ = writeln!(o, "## Teardown\n");
    let rows: Vec<Vec<String>> = r
        .teardown
        .iter()
        .map(|row| {
            let q = |v: &[f64], q: f64| quantile(v, q);
            let rt = |x: f64| teardown_ratio(row, x);
            vec![
                row.profile.clone(),
                format!("{} / {}", row.sluice.len(), row.ffmpeg.len()),
                ms(q(&row.sluice, 0.5)),
                ms(q(&row.ffmpeg, 0.5)),
                ratio(rt(0.5)),
                ms(q(&row.sluice, 0.99)),
                ms(q(&row.ffmpeg, 0.99)),
                ratio(rt(0.99)),
            ]
        })
        .collect();
    table(
        o,
        &[
            "profile",
            "hang-ups (sluice / ffmpeg)",
            "sluice p50",
            "ffmpeg p50",
            "ratio",
            "sluice p99",
            "ffmpeg p99",
            "ratio",
        ],
        &rows,
    );
}

fn capacity_detail(o: &mut String, b: &Bench, r: &Results) {
    let _ = writeln!(o, "## Capacity, distinct channels (live HLS)\n");
    let _ = writeln!(
        o,
        "N distinct fresh channels with one viewer each, started together: sluice runs N channels, N decodes and \
         N encodes; ffmpeg runs N processes. A step keeps up when every viewer delivers ≥ {KEEPS_UP:.2}× real time \
         in media time and frame rate over {} s. (Viewers of one channel are a figure of their own below.)\n",
        b.cfg.window_s
    );
    let rows: Vec<Vec<String>> = r
        .capacity
        .iter()
        .map(|row| {
            let steps = |i: usize| {
                row.result[i]
                    .1
                    .iter()
                    .map(|s| match &s.note {
                        Some(note) => format!("{}: behind ({note})", s.n),
                        None => format!(
                            "{}: {} ({:.2}x, {:.1} fps)",
                            s.n,
                            if s.ok { "ok" } else { "behind" },
                            s.min_speed,
                            s.min_fps
                        ),
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            // A count is exact when one more viewer was seen to fall behind
            // (or even one did); otherwise the search stopped short of it.
            let count = |i: usize| match row.count(i) {
                (best, true) => best.to_string(),
                (best, false) => format!("≥ {best}"),
            };
            vec![row.profile.clone(), count(0), count(1), steps(0), steps(1)]
        })
        .collect();
    table(
        o,
        &[
            "profile",
            "sluice channels",
            "ffmpeg processes",
            "sluice steps (slowest viewer)",
            "ffmpeg steps (slowest viewer)",
        ],
        &rows,
    );
}

fn status_detail(o: &mut String, b: &Bench, r: &Results) {
    let _ = writeln!(o, "## Status route latency (sluice)\n");
    let _ = writeln!(
        o,
        "`GET /api/streams/transcoding/status`, {} sequential requests idle and with {RAMP_MAX} transcodes of the profile running.\n",
        b.cfg.status_requests
    );
    let rows: Vec<Vec<String>> = r
        .status
        .iter()
        .map(|row| {
            let (i50, i99) = (quantile(&row.idle, 0.5), quantile(&row.idle, 0.99));
            let (l50, l99) = (quantile(&row.loaded, 0.5), quantile(&row.loaded, 0.99));
            let rt = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
            vec![
                row.profile.clone(),
                ms(i50),
                ms(i99),
                ms(l50),
                ms(l99),
                ratio(rt(l50, i50)),
                ratio(rt(l99, i99)),
            ]
        })
        .collect();
    table(
        o,
        &[
            "profile",
            "idle p50",
            "idle p99",
            "loaded p50",
            "loaded p99",
            "loaded ÷ idle p50",
            "loaded ÷ idle p99",
        ],
        &rows,
    );
}

/// The losses section: every ratio that favours ffmpeg, and each profile
/// where `auto` admission let a viewer fall behind or left capacity unused.
fn losses(o: &mut String, verdicts: &[Verdict], admission: &[(String, String)]) {
    let _ = writeln!(o, "## Where sluice loses\n");
    let lost: Vec<&Verdict> = verdicts.iter().filter(|v| v.sluice_loses()).collect();
    if lost.is_empty() && admission.is_empty() {
        let _ = writeln!(o, "Nowhere in this run: every ratio favours sluice.\n");
    }
    for v in lost {
        let _ = writeln!(
            o,
            "- **{}**, {}: {}. {}",
            v.figure,
            v.profile,
            ratio(v.ratio),
            why(&v.figure)
        );
    }
    for (profile, what) in admission {
        let _ = writeln!(o, "- **{}**, {profile}: {what}", crate::admission::FIGURE);
    }
    o.push('\n');
}

/// What makes sluice lose on a figure, as far as the design explains it.
fn why(figure: &str) -> &'static str {
    if figure.starts_with(crate::sharing_report::PREFIX) {
        crate::sharing_report::WHY
    } else if figure.starts_with("memory") {
        "A sluice session shares the process, its libraries and the GStreamer registry with every other, but its \
         decoder pictures, scaler and encoder are its own, as in an ffmpeg process; the PSS column, which splits \
         shared library pages among ffmpeg processes, is the fairer comparison for one viewer."
    } else if figure.starts_with("teardown") {
        "sluice's figure runs from the hang-up until the status route, polled every 2 ms, stops listing the session: \
         the server must notice the closed connection, bring the pipeline to NULL on a blocking thread and free its \
         slot, while the 1080p encoder of the profile keeps both cores busy until it stops; ffmpeg's is the signal \
         and the exit alone."
    } else if figure.starts_with("CPU") {
        "Both run the same libavcodec H.264 decoder and the same x264 preset, which are nearly all of the work; \
         sluice's figure is the whole server (HTTP, status, bus watch) against the child alone."
    } else if figure.starts_with("capacity") {
        "Capacity is one trial per step with every viewer starting together; both contenders run the same decoder \
         and encoder, so it follows CPU per media second and moves by a viewer or two between runs on a busy \
         machine (the steps column shows how close each step was)."
    } else {
        "Start-up is probing the source and filling the first fragment; the first-fragment prefix is decoded by \
         ffprobe for both."
    }
}
