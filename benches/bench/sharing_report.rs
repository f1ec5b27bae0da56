//! The sharing figure in BENCHMARKS.md: its summary lines, its section,
//! and the self-check that the brief run measured all of it.

use std::fmt::Write;

use crate::load::{CapacityRow, KEEPS_UP};
use crate::markdown::{table, Verdict};
use crate::sharing::{keeps_up, Run, Sharing};
use crate::stats::{median, mib, ms, num, paired_ratio, quantile, ratio};

/// Every summary line of this figure starts with this.
pub const PREFIX: &str = "one channel";

fn over(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// sluice's capacity at the figure's profile: the most viewers that kept
/// up, and whether a step above it was seen to fall behind.
fn capacity(s: &Sharing) -> (usize, bool) {
    let best = s
        .capacity
        .iter()
        .filter(|x| x.ok)
        .map(|x| x.n)
        .max()
        .unwrap_or(0);
    (best, s.capacity.iter().any(|x| !x.ok))
}

/// ffmpeg's capacity at `profile` from the capacity figure, if it ran.
fn ffmpeg_capacity(rows: &[CapacityRow], profile: &str) -> Option<usize> {
    rows.iter()
        .find(|r| r.profile == profile)
        .map(|r| r.result[1].0)
}

pub fn verdicts(s: &Sharing, cap_rows: &[CapacityRow]) -> Vec<Verdict> {
    let mut v = Vec::new();
    let mut push = |figure: String, r: Option<f64>, lower: bool| {
        v.push(Verdict {
            figure: format!("{PREFIX}: {figure}"),
            profile: s.profile.clone(),
            ratio: r,
            lower_is_better: lower,
        })
    };
    for l in &s.levels {
        let [a, f] = &l.runs;
        push(
            format!("CPU per media second, {} viewer(s)", l.n),
            over(a.cpu_per_media_s, f.cpu_per_media_s),
            true,
        );
        push(
            format!("memory added, {} viewer(s)", l.n),
            over(a.rss, f.rss),
            true,
        );
    }
    let j = &s.joins;
    push(
        "join, cached GOP (vs an ffmpeg start)".into(),
        over(median(&j.cached), median(&j.ffmpeg)),
        true,
    );
    push(
        "join, join=live (vs an ffmpeg start)".into(),
        over(median(&j.live), median(&j.ffmpeg)),
        true,
    );
    if let Some(f) = ffmpeg_capacity(cap_rows, &s.profile) {
        let (best, _) = capacity(s);
        push(
            "capacity (higher is better)".into(),
            (f > 0)
                .then(|| best as f64 / f as f64)
                .or((best > 0).then_some(f64::INFINITY)),
            false,
        );
    }
    v
}

/// What the sharing figures depend on, for the "where sluice loses" list.
pub const WHY: &str = "With N viewers of one channel sluice runs one upstream, one decode and one encode per \
     profile plus a fan-out per viewer, where the baseline runs N whole ffmpeg processes; at one viewer sluice's \
     figure is the whole server (HTTP, status, bus watch) against the child alone, and a join is a subscription \
     to what runs against a process start.";

fn cost(r: &Run, pick: fn(&Run) -> Option<f64>, digits: usize) -> String {
    match (&r.error, pick(r)) {
        (Some(e), _) => format!("failed ({e})"),
        (None, v) => num(v, digits),
    }
}

fn speed(r: &Run) -> String {
    let s = num(r.min_speed, 2);
    if keeps_up(r) {
        s
    } else {
        format!("{s} (behind)")
    }
}

pub fn render(o: &mut String, s: &Sharing, cap_rows: &[CapacityRow]) {
    let _ = writeln!(o, "## Viewers of one channel (live HLS, {})\n", s.profile);
    let _ = writeln!(
        o,
        "N viewers of one fresh channel started together (sluice: N previews of one catalog stream; ffmpeg: N \
         processes). Once every viewer has its first fragment and the warm-up has passed, CPU per media second is \
         taken as in the CPU figure over at least {:.0} s (longer for a group that falls behind, until every viewer \
         delivered two fragments), and memory at the end of it. *× one viewer* is each contender's cost at N over \
         its own cost at 1.\n",
        s.window_s
    );
    let one = s.levels.iter().find(|l| l.n == 1);
    let base = |i: usize| one.and_then(|l| l.runs[i].cpu_per_media_s);
    let rows: Vec<Vec<String>> = s
        .levels
        .iter()
        .map(|l| {
            let [a, f] = &l.runs;
            let extra = |r: &Run, i: usize| {
                let first = one.and_then(|o| o.runs[i].rss);
                match (r.rss, first) {
                    (Some(x), Some(y)) if l.n > 1 => mib(Some((x - y) / (l.n - 1) as f64)),
                    _ => "n/a".into(),
                }
            };
            vec![
                l.n.to_string(),
                cost(a, |r| r.cpu_per_media_s, 3),
                cost(f, |r| r.cpu_per_media_s, 3),
                ratio(over(a.cpu_per_media_s, f.cpu_per_media_s)),
                format!(
                    "{} / {}",
                    ratio(over(a.cpu_per_media_s, base(0))),
                    ratio(over(f.cpu_per_media_s, base(1)))
                ),
                format!("{} / {}", mib(a.rss), mib(f.rss)),
                format!("{} / {}", extra(a, 0), extra(f, 1)),
                format!("{} / {}", speed(a), speed(f)),
            ]
        })
        .collect();
    table(
        o,
        &[
            "viewers",
            "sluice cpu-s per media-s",
            "ffmpeg cpu-s per media-s",
            "ratio",
            "× one viewer (sluice / ffmpeg)",
            "memory added (sluice / ffmpeg)",
            "per extra viewer (sluice / ffmpeg)",
            "slowest viewer (sluice / ffmpeg)",
        ],
        &rows,
    );

    let j = &s.joins;
    let _ = writeln!(
        o,
        "**Join time**: request to the first video fragment of a viewer joining a rendition that already runs \
         (sluice, {} joins each way), against an ffmpeg viewer started on the same channel.{}\n",
        j.cached.len(),
        j.error
            .as_ref()
            .map(|e| format!(" A join failed: {e}."))
            .unwrap_or_default()
    );
    let row = |what: &str, v: &[f64]| {
        vec![
            what.to_string(),
            v.len().to_string(),
            ms(median(v)),
            ms(quantile(v, 0.9)),
        ]
    };
    table(
        o,
        &["viewer", "joins", "median", "p90"],
        &[
            row("sluice, cached GOP (default)", &j.cached),
            row("sluice, `join=live`", &j.live),
            row("ffmpeg, a new process", &j.ffmpeg),
        ],
    );

    let (best, exact) = capacity(s);
    let steps = s
        .capacity
        .iter()
        .map(|x| match &x.note {
            Some(note) => format!("{}: behind ({note})", x.n),
            None => format!(
                "{}: {} ({:.2}x, {:.1} fps)",
                x.n,
                if x.ok { "ok" } else { "behind" },
                x.min_speed,
                x.min_fps
            ),
        })
        .collect::<Vec<_>>()
        .join("; ");
    let _ = writeln!(
        o,
        "**Capacity**: viewers of one channel that all deliver ≥ {KEEPS_UP:.2}× real time: sluice {}{best}, \
         ffmpeg {} (one process per viewer, from the capacity figure). Steps: {steps}.\n",
        if exact { "" } else { "≥ " },
        ffmpeg_capacity(cap_rows, &s.profile).map_or("not measured".into(), |n| n.to_string()),
    );

    let pairs: Vec<_> = s
        .pairs
        .iter()
        .map(|p| (p.shared.cpu_per_media_s, p.separate.cpu_per_media_s))
        .collect();
    let med = |shared: bool| {
        let v: Vec<f64> = pairs
            .iter()
            .filter_map(|p| if shared { p.0 } else { p.1 })
            .collect();
        median(&v)
    };
    let [p0, p1] = &s.pair_profiles;
    let _ = writeln!(
        o,
        "**Two profiles of one channel**: {p0} + {p1} viewers of one catalog stream against the same two as \
         separate sessions (two catalog streams with the same source), sluice CPU per media second, median of {} \
         pair(s).\n",
        pairs.len()
    );
    table(
        o,
        &["one channel", "two sessions", "ratio"],
        &[vec![
            num(med(true), 3),
            num(med(false), 3),
            ratio(paired_ratio(&pairs)),
        ]],
    );
}

/// After the brief run: every part of the figure was measured.
pub fn check(s: &Sharing, text: &str) {
    assert!(!s.levels.is_empty());
    for l in &s.levels {
        for r in &l.runs {
            assert!(r.error.is_none(), "{} viewers: {:?}", l.n, r.error);
            assert!(r.cpu_per_media_s.is_some_and(|c| c > 0.0), "{r:?}");
            assert!(r.rss.is_some() && r.min_speed.is_some(), "{r:?}");
        }
    }
    let j = &s.joins;
    assert!(j.error.is_none(), "joins: {:?}", j.error);
    assert!(!j.cached.is_empty() && !j.live.is_empty() && !j.ffmpeg.is_empty());
    assert!(!s.capacity.is_empty());
    assert!(!s.pairs.is_empty());
    for p in &s.pairs {
        for r in [&p.shared, &p.separate] {
            assert!(r.error.is_none(), "pair: {:?}", r.error);
            assert!(r.cpu_per_media_s.is_some_and(|c| c > 0.0), "{r:?}");
        }
    }
    assert!(text.contains("## Viewers of one channel"));
}
