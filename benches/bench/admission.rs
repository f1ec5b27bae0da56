//! The admission figure: how many distinct channels sluice admits with
//! `MAX_CONCURRENT_TRANSCODES=auto`, against the distinct-channel capacity
//! the capacity figure measured.
//!
//! Per profile, a server of its own runs with `auto` and no wait queue, so
//! a request the measured headroom does not admit is refused at once (503
//! `overloaded`). Distinct fresh channels are started one at a time, each to
//! its first fragment and [`PLAY_S`] of play, until one is refused or
//! [`bound`] run; then every admitted viewer's rates are read over the
//! capacity window, as the capacity figure reads them.

use std::fmt::Write;
use std::time::{Duration, Instant};

use crate::contenders::{Session, Sluice};
use crate::load::{CapacityRow, KEEPS_UP};
use crate::markdown::table;
use crate::viewer::{wait_for, Window};
use crate::Bench;

/// Seconds each admitted viewer plays before the next channel is asked
/// for: longer than an admitted encoder's warm-up, so each request is
/// judged on measured costs, as channels that start over minutes are.
pub const PLAY_S: f64 = 10.0;

/// The most channels asked for per profile.
pub fn bound(b: &Bench) -> usize {
    bound_of(b.cfg.full)
}

fn bound_of(full: bool) -> usize {
    if full {
        16
    } else {
        3
    }
}

/// Seconds of source material the ramp needs so that its first channel is
/// still on air when the last admitted viewer's window ends: a source that
/// ended would be reconnected during the ramp and skew what admission and
/// the viewers measure. Allows 3 s per channel to its first fragment.
pub fn material_needed(full: bool, window_s: f64) -> u32 {
    let ramp = bound_of(full) as f64 * (PLAY_S + 3.0) + window_s;
    (crate::hls::HEAD_START_S + ramp + f64::from(crate::hls::SEGMENT_S)).ceil() as u32
}

/// The 503 that ended the ramp: its `error` code and `message`.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct AdmissionRow {
    pub profile: String,
    /// Channels admitted and played before the refusal (or the bound).
    pub admitted: usize,
    pub bound: usize,
    /// None: the bound was reached with every channel admitted.
    pub refusal: Option<Refusal>,
    /// Each admitted viewer's window after the last admission (None: it
    /// delivered no two fragments in it).
    pub windows: Vec<Option<Window>>,
    /// The frame rate real time asks for.
    pub fps: f64,
    /// A failure that was not a refusal.
    pub error: Option<String>,
}

impl AdmissionRow {
    fn kept_up(&self, w: &Option<Window>) -> bool {
        w.is_some_and(|w| w.speed() >= KEEPS_UP && w.fps() >= KEEPS_UP * self.fps)
    }

    /// Admitted viewers below [`KEEPS_UP`] in media or frame rate.
    pub fn behind(&self) -> usize {
        self.windows.iter().filter(|w| !self.kept_up(w)).count()
    }

    /// The slowest admitted viewer's media rate (0 for one that delivered
    /// nothing in the window).
    pub fn slowest(&self) -> Option<f64> {
        self.windows
            .iter()
            .map(|w| w.map_or(0.0, |w| w.speed()))
            .reduce(f64::min)
    }
}

/// Splits a failed preview's error (`"503 Service Unavailable: {json}"`)
/// into a refusal when it is a 503.
fn refusal(error: &str) -> Option<Refusal> {
    let (status, body) = error.split_once(": ")?;
    if !status.starts_with("503") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    Some(Refusal {
        code: v["error"].as_str()?.to_string(),
        message: v["message"].as_str().unwrap_or_default().to_string(),
    })
}

async fn ramp(b: &Bench, server: &Sluice, row: &mut AdmissionRow) -> Vec<Session> {
    let profile = b.profile(&row.profile).clone();
    let mut sessions: Vec<Session> = Vec::new();
    while sessions.len() < row.bound {
        let (id, _) = match b.fresh_hls_on(server).await {
            Ok(c) => c,
            Err(e) => {
                row.error = Some(e);
                return sessions;
            }
        };
        let s = server.preview(&id, &profile.name, false);
        let started = wait_for(&s.progress, Duration::from_secs(30), |p| {
            p.first_fragment.is_some()
        })
        .await;
        if !started {
            let error = s
                .progress
                .lock()
                .expect("progress lock")
                .error
                .clone()
                .unwrap_or_else(|| "no video fragment within 30 s".into());
            s.stop().await;
            match refusal(&error) {
                Some(r) => row.refusal = Some(r),
                None => row.error = Some(format!("channel {}: {error}", sessions.len() + 1)),
            }
            return sessions;
        }
        sessions.push(s);
        row.admitted = sessions.len();
        tokio::time::sleep(Duration::from_secs_f64(PLAY_S)).await;
    }
    sessions
}

async fn one(b: &Bench, profile: &str) -> Result<AdmissionRow, String> {
    let server = Sluice::start_with(
        &b.binary,
        &crate::repo().join("pipelines/profiles.toml"),
        &[
            ("MAX_CONCURRENT_TRANSCODES", "auto"),
            ("MAX_QUEUED_REQUESTS", "0"),
        ],
    )?;
    let mut row = AdmissionRow {
        profile: profile.to_string(),
        admitted: 0,
        bound: bound(b),
        refusal: None,
        windows: Vec::new(),
        fps: b.material().fps as f64,
        error: None,
    };
    let sessions = ramp(b, &server, &mut row).await;
    if row.error.is_none() && !sessions.is_empty() {
        let from = Instant::now();
        let to = from + Duration::from_secs_f64(b.cfg.window_s);
        tokio::time::sleep_until((to + Duration::from_millis(50)).into()).await;
        row.windows = sessions
            .iter()
            .map(|s| {
                let p = s.progress.lock().expect("progress lock");
                p.window(from - s.t0, to - s.t0)
            })
            .collect();
    }
    for s in sessions {
        s.stop().await;
    }
    if let Err(e) = server.wait_idle(Duration::from_secs(10)).await {
        row.error.get_or_insert(e);
    }
    Ok(row)
}

pub async fn run(b: &Bench) -> Result<Vec<AdmissionRow>, String> {
    let mut rows = Vec::new();
    for name in &b.cfg.profiles {
        let row = one(b, name).await?;
        eprintln!(
            "bench: admission {name}: auto admitted {} ({}), slowest {:.2}x, {} behind{}",
            row.admitted,
            row.refusal
                .as_ref()
                .map_or("bound reached".into(), |r| format!(
                    "then {}: {}",
                    r.code, r.message
                )),
            row.slowest().unwrap_or(0.0),
            row.behind(),
            row.error
                .as_ref()
                .map(|e| format!("; failed: {e}"))
                .unwrap_or_default()
        );
        rows.push(row);
    }
    Ok(rows)
}

/// sluice's measured distinct-channel capacity at `profile`, if the
/// capacity figure ran: the count, and whether a step above it fell behind.
fn capacity(rows: &[CapacityRow], profile: &str) -> Option<(usize, bool)> {
    rows.iter()
        .find(|r| r.profile == profile)
        .map(|r| r.count(0))
}

/// The losses this figure shows: (profile, what happened).
pub fn losses(rows: &[AdmissionRow], cap: &[CapacityRow]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for r in rows {
        if r.behind() > 0 {
            out.push((
                r.profile.clone(),
                format!(
                    "auto admitted {} channel(s) and {} of their viewers fell below {KEEPS_UP:.2}× real time \
                     (slowest {:.2}x): the headroom it measured was not there.",
                    r.admitted,
                    r.behind(),
                    r.slowest().unwrap_or(0.0)
                ),
            ));
        } else if let Some((c, true)) = capacity(cap, &r.profile) {
            if r.refusal.is_some() && r.admitted + 1 < c {
                out.push((
                    r.profile.clone(),
                    format!(
                        "auto refused after {} channel(s) where {c} kept real time: admission left capacity \
                         unused.",
                        r.admitted
                    ),
                ));
            }
        }
    }
    out
}

/// The figure's heading and summary-line name in the losses list.
pub const HEADING: &str = "Admission by measured headroom";
pub const FIGURE: &str = "auto admission";

pub fn render(o: &mut String, b: &Bench, rows: &[AdmissionRow], cap: &[CapacityRow]) {
    let _ = writeln!(
        o,
        "## {HEADING} (`MAX_CONCURRENT_TRANSCODES=auto`, live HLS)\n"
    );
    let _ = writeln!(
        o,
        "Per profile a sluice of its own runs with `MAX_CONCURRENT_TRANSCODES=auto` and no wait queue \
         (`MAX_QUEUED_REQUESTS=0`: a request the measured headroom does not admit is refused at once), everything \
         else as above. Distinct fresh channels, one viewer each, are started one at a time, each to its first \
         fragment and {PLAY_S:.0} s of play, until one is refused (503 `overloaded`) or {} run; then every admitted \
         viewer's media rate and frame rate are read over {} s. *Capacity* is sluice's distinct-channel capacity \
         from the capacity figure (every viewer ≥ {KEEPS_UP:.2}× real time).\n",
        bound(b),
        b.cfg.window_s
    );
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let cap = capacity(cap, &r.profile);
            let stop = match (&r.error, &r.refusal) {
                (Some(e), _) => format!("failed: {e}"),
                (None, Some(x)) => format!("503 `{}`: {}", x.code, x.message),
                (None, None) => format!("none: the bound of {} was reached", r.bound),
            };
            vec![
                r.profile.clone(),
                r.admitted.to_string(),
                cap.map_or("not measured in this run".into(), |(c, exact)| {
                    format!("{}{c}", if exact { "" } else { "≥ " })
                }),
                cap.map_or("n/a".into(), |(c, exact)| {
                    let d = r.admitted as i64 - c as i64;
                    format!("{}{d:+}", if exact { "" } else { "≤ " })
                }),
                r.slowest().map_or("n/a".into(), |s| format!("{s:.2}x")),
                format!("{} of {}", r.behind(), r.windows.len()),
                stop,
            ]
        })
        .collect();
    table(
        o,
        &[
            "profile",
            "admitted by auto",
            "distinct-channel capacity",
            "admitted − capacity",
            "slowest admitted viewer",
            &format!("admitted viewers below {KEEPS_UP:.2}×"),
            "what stopped admission",
        ],
        &table_rows,
    );
}

/// After the brief run: the figure ran for every profile, admitted at
/// least one channel (the first always starts), read every admitted
/// viewer, and the report shows it.
pub fn check(rows: &[AdmissionRow], profiles: &[String], text: &str) {
    assert_eq!(rows.len(), profiles.len());
    for r in rows {
        assert!(r.error.is_none(), "admission {}: {:?}", r.profile, r.error);
        assert!(r.admitted >= 1 && r.admitted <= r.bound, "{r:?}");
        assert_eq!(r.windows.len(), r.admitted, "{r:?}");
        if let Some(x) = &r.refusal {
            assert_eq!(x.code, "overloaded", "{r:?}");
        } else {
            assert_eq!(r.admitted, r.bound, "{r:?}");
        }
    }
    assert!(text.contains(&format!("## {HEADING}")));
    assert!(text.contains("admitted by auto"));
}

/// The refusal parser, on the error texts a viewer records.
pub fn self_test() {
    assert_eq!(
        refusal(r#"503 Service Unavailable: {"error":"overloaded","message":"no CPU"}"#)
            .map(|r| (r.code, r.message)),
        Some(("overloaded".into(), "no CPU".into()))
    );
    assert!(refusal(r#"404 Not Found: {"error":"not_found","message":"x"}"#).is_none());
}
