//! Figure 3: how fast work stops when a viewer goes. sluice: the client
//! hangs up, and the clock runs until the status route no longer lists the
//! session (it is removed after its pipeline reached NULL and its slot was
//! freed). ffmpeg: SIGTERM, and the clock runs until the child has exited.
//! Both are stopped once their first bytes arrived, on the generated
//! pattern (quick to start, so 100 cycles fit the run).

use std::time::{Duration, Instant};

use sluice::profiles::Profile;

use crate::viewer::wait_for;
use crate::{Bench, Who, TEST_STREAM};

#[derive(Debug, Clone)]
pub struct TeardownRow {
    pub profile: String,
    /// Milliseconds per hang-up: sluice, ffmpeg.
    pub sluice: Vec<f64>,
    pub ffmpeg: Vec<f64>,
    /// Cycles that did not start (no first byte) per contender.
    pub failed: [usize; 2],
}

/// How often the status route is polled while a session goes.
const POLL: Duration = Duration::from_millis(2);

async fn sluice_cycle(b: &Bench, profile: &Profile) -> Result<Option<f64>, String> {
    let source = b.test_source();
    let s = b.start(Who::Sluice, profile, TEST_STREAM, &source, false)?;
    let started = wait_for(&s.progress, Duration::from_secs(20), |p| {
        p.first_byte.is_some() && p.session_id.is_some()
    })
    .await;
    let id = s.progress.lock().expect("progress lock").session_id.clone();
    let hung_up = Instant::now();
    s.stop().await;
    let (true, Some(id)) = (started, id) else {
        b.sluice.wait_idle(Duration::from_secs(10)).await?;
        return Ok(None);
    };
    let deadline = hung_up + Duration::from_secs(10);
    while b.sluice.lists_session(&id).await? {
        if Instant::now() > deadline {
            return Err(format!(
                "session {id} still listed 10 s after its client hung up"
            ));
        }
        tokio::time::sleep(POLL).await;
    }
    let gone = hung_up.elapsed();
    b.sluice.wait_idle(Duration::from_secs(10)).await?;
    Ok(Some(gone.as_secs_f64() * 1000.0))
}

async fn ffmpeg_cycle(b: &Bench, profile: &Profile) -> Result<Option<f64>, String> {
    let source = b.test_source();
    let s = b.start(Who::Ffmpeg, profile, TEST_STREAM, &source, false)?;
    let started = wait_for(&s.progress, Duration::from_secs(20), |p| {
        p.first_byte.is_some()
    })
    .await;
    let exit = s.stop().await;
    Ok(started.then_some(exit.as_secs_f64() * 1000.0))
}

pub async fn run(b: &Bench) -> Result<Vec<TeardownRow>, String> {
    let mut rows = Vec::new();
    for name in &b.cfg.profiles {
        let profile = b.profile(name).clone();
        let mut row = TeardownRow {
            profile: name.clone(),
            sluice: Vec::new(),
            ffmpeg: Vec::new(),
            failed: [0, 0],
        };
        for _ in 0..b.cfg.hangups {
            match sluice_cycle(b, &profile).await? {
                Some(ms) => row.sluice.push(ms),
                None => row.failed[0] += 1,
            }
            match ffmpeg_cycle(b, &profile).await? {
                Some(ms) => row.ffmpeg.push(ms),
                None => row.failed[1] += 1,
            }
        }
        eprintln!(
            "bench: teardown {name}: sluice p50 {:?} ms, ffmpeg p50 {:?} ms",
            crate::stats::median(&row.sluice),
            crate::stats::median(&row.ffmpeg)
        );
        rows.push(row);
    }
    Ok(rows)
}
