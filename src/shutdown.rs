//! Shutdown (SPEC §9): the shutting-down flag that `/ready` and admission
//! read, and the drain sequence: every session gets EOS so its client
//! receives a finished stream, the catalog is flushed, and anything not
//! drained within the grace period is forced to NULL.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::media::EndReason;
use crate::AppState;

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

/// Drains every session within `grace` and flushes the catalog.
pub async fn drain(state: &Arc<AppState>, grace: Duration) {
    let sessions = state.registry.all();
    tracing::info!(
        sessions = sessions.len(),
        grace_ms = grace.as_millis() as u64,
        "draining sessions"
    );
    let drains = sessions.iter().map(|e| {
        let media = e.media.clone();
        async move { media.drain(EndReason::Shutdown, grace).await }
    });
    futures::future::join_all(drains).await;
    // Wait (bounded) for teardown hooks to have run.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !state.registry.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Err(e) = state.catalog.flush().await {
        tracing::error!(error = %e, "catalog flush at shutdown failed");
    }
}
