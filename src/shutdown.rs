//! Shutdown (SPEC §9): the shutting-down flag that `/ready` and admission
//! read, and the sequence run on SIGTERM/SIGINT, all within one deadline
//! (`SHUTDOWN_GRACE` from the signal):
//!
//! 1. the flag is set (`/ready` answers 503 at once, new previews are
//!    refused) and the listener is closed (no new connections);
//! 2. the catalog is flushed;
//! 3. every session gets EOS, so its client receives a finished stream (the
//!    muxer closes its last fragment / packet, the chunked body ends); a
//!    session that does not drain before the EOS deadline is forced to NULL;
//! 4. open connections get a short linger to hand over the tail of their
//!    body, then the server task is dropped;
//! 5. in the binary, a watchdog thread exits the process with 0 at the
//!    deadline whatever is still running (see [`exit_at`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::AppState;

/// What the deadline keeps back after the EOS wait: time to force NULL,
/// run teardown hooks and let the last bytes leave (at most this, and at
/// most a quarter of the grace).
pub const RESERVE: Duration = Duration::from_millis(1500);
/// How long connections may still hand over data once every session ended.
pub const LINGER: Duration = Duration::from_secs(2);
/// The hard exit happens this much before the grace ends.
pub const EXIT_MARGIN: Duration = Duration::from_millis(100);

#[derive(Default)]
pub struct Shutdown {
    flag: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Shutdown {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn is_shutting_down(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Marks shutdown; returns false if it had already begun.
    pub fn begin(&self) -> bool {
        let first = !self.flag.swap(true, Ordering::AcqRel);
        self.notify.notify_waiters();
        first
    }

    /// Resolves once shutdown has begun.
    pub async fn wait(&self) {
        loop {
            let n = self.notify.notified();
            if self.is_shutting_down() {
                return;
            }
            n.await;
        }
    }
}

/// The whole sequence: `serving` is the accept loop, which stops accepting
/// when the flag is set and then waits for its open connections.
pub async fn run(state: &Arc<AppState>, mut serving: tokio::task::JoinHandle<()>) {
    let grace = state.settings.shutdown_grace();
    let deadline = Instant::now() + grace;
    state.shutdown.begin();
    if let Err(e) = state.catalog.flush().await {
        tracing::error!(error = %e, "catalog flush at shutdown failed");
    }
    drain(state, deadline).await;
    let linger = (Instant::now() + LINGER).min(deadline);
    if tokio::time::timeout_at(linger, &mut serving).await.is_err() {
        tracing::info!("connections still open after every session ended: closing them");
        serving.abort();
    }
}

/// Drains every channel: EOS through every output first, forced NULL at
/// the EOS deadline; then waits for snapshot captures in flight. Returns
/// when every viewer has ended, every channel is gone and no capture
/// runs, or at `deadline`.
pub async fn drain(state: &Arc<AppState>, deadline: Instant) {
    let now = Instant::now();
    let total = deadline.saturating_duration_since(now);
    let eos_deadline = deadline - RESERVE.min(total / 4);
    tracing::info!(
        channels = state.channels.len(),
        sessions = state.registry.len(),
        grace_ms = total.as_millis() as u64,
        "draining sessions"
    );
    // Channels that were starting when the signal came may register late:
    // keep sweeping until none is left.
    loop {
        if (state.channels.is_empty() && state.registry.is_empty()) || Instant::now() >= deadline {
            break;
        }
        state.channels.drain(eos_deadline.max(Instant::now())).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    state.snapshots.drain(deadline).await;
    let left = state.registry.len();
    if left > 0 {
        tracing::warn!(
            sessions = left,
            "sessions still ending at the shutdown deadline"
        );
    } else {
        tracing::info!("sessions drained");
    }
}

/// Starts a watchdog thread that exits the process with status 0 just before
/// `grace` has passed, whatever is still running (a pipeline stuck in a state
/// change, a client that never reads). Only for the binary: it ends the
/// whole process.
pub fn exit_at(grace: Duration) {
    let at = std::time::Instant::now() + grace.saturating_sub(EXIT_MARGIN);
    let spawned = std::thread::Builder::new()
        .name("shutdown-watchdog".into())
        .spawn(move || {
            std::thread::sleep(at.saturating_duration_since(std::time::Instant::now()));
            tracing::warn!("shutdown grace is over: exiting now");
            std::process::exit(0);
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the shutdown watchdog");
    }
}
