//! Where a channel's pipeline meets the async runtime: it is opened on a
//! blocking thread ([`open_off_runtime`]) and its bus messages are carried
//! to the runtime ([`forward_bus`]), for [`super::running::Running`].

use std::sync::Arc;

use gst::prelude::*;

use super::ingest::{self, SourcePlan};
use super::pipeline::{self, Opened};
use super::stats::MediaStats;
use super::MediaError;

/// Takes one pipeline off the live count when dropped.
struct Uncount(Arc<MediaStats>);

impl Drop for Uncount {
    fn drop(&mut self) {
        self.0.pipeline_freed();
    }
}

/// Opens the source part of a pipeline on a blocking thread, counted as a
/// live pipeline until it is freed.
pub(super) async fn open_off_runtime(
    name: String,
    plan: SourcePlan,
    stats: Arc<MediaStats>,
) -> Result<Opened, MediaError> {
    // The opened pipeline is handed over through a channel: if the
    // caller is gone by then (the client hung up), the blocking task
    // itself brings it back to NULL and uncounts it.
    let (tx, rx) = tokio::sync::oneshot::channel::<Result<Opened, MediaError>>();
    let counter = stats.clone();
    tokio::task::spawn_blocking(move || {
        counter.pipeline_built();
        let counted = Uncount(counter.clone());
        match pipeline::open(&name, plan, counter) {
            Ok(opened) => {
                if let Err(Ok(opened)) = tx.send(Ok(opened)) {
                    let _ = opened.pipeline.set_state(gst::State::Null);
                } else {
                    std::mem::forget(counted);
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    });
    match rx.await {
        Ok(opened) => opened,
        Err(_) => Err(MediaError::SourceFailed("pipeline set-up panicked".into())),
    }
}

/// Forwards the bus's errors and application messages to the runtime.
pub(super) fn forward_bus(
    bus: &gst::Bus,
) -> tokio::sync::mpsc::UnboundedReceiver<(gst::Message, Option<u64>)> {
    // Errors are tagged with their source generation where they are
    // posted, while the posting element is still in the pipeline.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(gst::Message, Option<u64>)>();
    let forward = move |msg: &gst::Message| match msg.view() {
        gst::MessageView::Error(err) => {
            let gen = err.src().and_then(ingest::generation_of);
            let _ = tx.send((msg.clone(), gen));
        }
        gst::MessageView::Application(_) => {
            let _ = tx.send((msg.clone(), None));
        }
        _ => {}
    };
    let forward = Arc::new(forward);
    let f = forward.clone();
    bus.set_sync_handler(move |_, msg| {
        f(msg);
        gst::BusSyncReply::Drop
    });
    // Messages posted while the source was opening, before the handler.
    while let Some(msg) = bus.pop() {
        forward(&msg);
    }
    drop(forward);
    rx
}
