//! The session registry: every viewer (a session, to status and clients)
//! with what status shows of it, and the event feed (`session_queued`,
//! `session_started`, `session_ended`, `channel_started`,
//! `channel_ended`). Entries leave the registry when their viewer ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::channels::fanout::ViewerHandle;
use crate::channels::Rendition;
use crate::events::Events;
pub use crate::events::{epoch_ms, SessionEvent};
use crate::media::{EndReason, Format, Mode};

/// One viewer of a rendition.
pub struct SessionEntry {
    pub id: String,
    pub stream_id: String,
    pub stream_name: String,
    pub quality: String,
    pub format: Format,
    pub mode: Mode,
    pub client_ip: String,
    pub start_ms: u64,
    pub started_at: std::time::Instant,
    pub viewer: ViewerHandle,
    pub rendition: Arc<Rendition>,
}

/// A session as `/api/streams/transcoding/status` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    pub session_id: String,
    pub stream_id: String,
    pub stream_name: String,
    pub quality: String,
    pub format: Format,
    pub mode: Mode,
    #[serde(rename = "clientIP")]
    pub client_ip: String,
    pub start_time: u64,
    pub duration: u64,
    pub bytes_sent: u64,
    pub frames_out: u64,
    pub fps: f64,
    pub speed: f64,
    pub state: &'static str,
    /// The channel (stream id) it watches.
    pub channel: String,
    /// Age of the oldest media queued for it: how far behind live it is.
    pub lag_ms: u64,
}

impl SessionEntry {
    pub fn view(&self) -> SessionView {
        let elapsed = self.started_at.elapsed().as_millis() as u64;
        let r = self.rendition.view(None);
        let state = match self.viewer.reason() {
            Some(EndReason::Shutdown) => "draining",
            Some(_) => "stopping",
            None => "running",
        };
        SessionView {
            session_id: self.id.clone(),
            stream_id: self.stream_id.clone(),
            stream_name: self.stream_name.clone(),
            quality: self.quality.clone(),
            format: self.format,
            mode: self.mode,
            client_ip: self.client_ip.clone(),
            start_time: self.start_ms,
            duration: elapsed,
            bytes_sent: self.viewer.bytes_sent(),
            frames_out: self.rendition.counters.frames.load(Ordering::Relaxed),
            fps: r.fps,
            speed: r.speed,
            state,
            channel: self.stream_id.clone(),
            lag_ms: self.viewer.lag_ms(),
        }
    }
}

pub struct Registry {
    sessions: RwLock<HashMap<String, Arc<SessionEntry>>>,
    events: Arc<Events>,
    ended: RwLock<HashMap<EndReason, u64>>,
    pub started_total: AtomicU64,
    /// Bytes sent by viewers that have ended.
    bytes_done: AtomicU64,
}

impl Registry {
    pub fn new() -> Arc<Self> {
        let events = Arc::new(Events::new());
        Arc::new(Self {
            sessions: RwLock::new(HashMap::new()),
            events,
            ended: RwLock::new(HashMap::new()),
            started_total: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
        })
    }

    /// The feed channels report to as well.
    pub fn events(&self) -> &Arc<Events> {
        &self.events
    }

    pub fn subscribe(&self) -> broadcast::Receiver<SessionEvent> {
        self.events.subscribe()
    }

    pub fn emit(&self, event: SessionEvent) {
        self.events.emit(event);
    }

    /// Adds a session; it is removed (and `session_ended` sent) once its
    /// viewer has ended.
    pub fn insert(self: &Arc<Self>, entry: SessionEntry) -> Arc<SessionEntry> {
        let entry = Arc::new(entry);
        self.sessions
            .write()
            .insert(entry.id.clone(), entry.clone());
        self.started_total.fetch_add(1, Ordering::Relaxed);
        let weak = Arc::downgrade(self);
        let id = entry.id.clone();
        let stream_id = entry.stream_id.clone();
        entry.viewer.on_end(Box::new(move |ended| {
            let Some(reg) = weak.upgrade() else { return };
            reg.sessions.write().remove(&id);
            reg.bytes_done.fetch_add(ended.bytes_sent, Ordering::Relaxed);
            let reason = ended.reason;
            *reg.ended.write().entry(reason).or_insert(0) += 1;
            let (duration, bytes_sent) = (ended.duration.as_millis() as u64, ended.bytes_sent);
            tracing::info!(session_id = %id, stream_id = %stream_id, reason = reason.as_str(), duration_ms = duration, bytes_sent, "session ended");
            reg.emit(SessionEvent::SessionEnded { session_id: id, stream_id, reason, duration, bytes_sent });
        }));
        entry
    }

    pub fn get(&self, id: &str) -> Option<Arc<SessionEntry>> {
        self.sessions.read().get(id).cloned()
    }

    pub fn all(&self) -> Vec<Arc<SessionEntry>> {
        let mut v: Vec<_> = self.sessions.read().values().cloned().collect();
        v.sort_by_key(|e| e.start_ms);
        v
    }

    pub fn len(&self) -> usize {
        self.sessions.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sessions ended so far, by reason.
    pub fn ended_counts(&self) -> HashMap<EndReason, u64> {
        self.ended.read().clone()
    }

    /// Media bytes handed to viewers so far.
    pub fn bytes_sent_total(&self) -> u64 {
        self.bytes_done.load(Ordering::Relaxed)
            + self
                .sessions
                .read()
                .values()
                .map(|e| e.viewer.bytes_sent())
                .sum::<u64>()
    }
}
