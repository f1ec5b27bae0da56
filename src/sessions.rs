//! The session registry: every running session with what status shows of
//! it, the event feed (`session_queued`, `session_started`,
//! `session_ended`), and the stall watchdog. Entries leave the registry
//! when their pipeline has reached NULL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::media::session::MediaSession;
use crate::media::{EndReason, Format, Mode};

/// One running (or starting) session.
pub struct SessionEntry {
    pub id: String,
    pub stream_id: String,
    pub stream_name: String,
    pub quality: String,
    pub format: Format,
    pub mode: Mode,
    pub client_ip: String,
    pub start_ms: u64,
    pub media: Arc<MediaSession>,
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
}

impl SessionEntry {
    pub fn view(&self) -> SessionView {
        let elapsed = self.media.started_at.elapsed().as_secs_f64();
        let frames = self.media.shared.frames.load(Ordering::Relaxed);
        let media_s = self.media.shared.media_ns() as f64 / 1e9;
        let round2 = |v: f64| (v * 100.0).round() / 100.0;
        let state = match (self.media.reason(), self.media.is_started()) {
            (Some(EndReason::Shutdown), _) => "draining",
            (Some(_), _) => "stopping",
            (None, true) => "running",
            (None, false) => "starting",
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
            duration: (elapsed * 1000.0) as u64,
            bytes_sent: self.media.bytes_sent.load(Ordering::Relaxed),
            frames_out: frames,
            fps: if elapsed > 0.0 {
                round2(frames as f64 / elapsed)
            } else {
                0.0
            },
            speed: if elapsed > 0.0 {
                round2(media_s / elapsed)
            } else {
                0.0
            },
            state,
        }
    }
}

/// Events for the SSE feed.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SessionEvent {
    #[serde(rename_all = "camelCase")]
    SessionQueued {
        stream_id: String,
        quality: String,
        #[serde(rename = "clientIP")]
        client_ip: String,
        position: usize,
    },
    #[serde(rename_all = "camelCase")]
    SessionStarted {
        session_id: String,
        stream_id: String,
        quality: String,
        format: Format,
        mode: Mode,
        #[serde(rename = "clientIP")]
        client_ip: String,
    },
    #[serde(rename_all = "camelCase")]
    SessionEnded {
        session_id: String,
        stream_id: String,
        reason: EndReason,
        duration: u64,
        bytes_sent: u64,
    },
}

impl SessionEvent {
    pub fn name(&self) -> &'static str {
        match self {
            SessionEvent::SessionQueued { .. } => "session_queued",
            SessionEvent::SessionStarted { .. } => "session_started",
            SessionEvent::SessionEnded { .. } => "session_ended",
        }
    }
}

pub struct Registry {
    sessions: RwLock<HashMap<String, Arc<SessionEntry>>>,
    events: broadcast::Sender<SessionEvent>,
    ended: RwLock<HashMap<EndReason, u64>>,
    pub started_total: AtomicU64,
}

pub fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Registry {
    pub fn new() -> Arc<Self> {
        let (events, _) = broadcast::channel(1024);
        Arc::new(Self {
            sessions: RwLock::new(HashMap::new()),
            events,
            ended: RwLock::new(HashMap::new()),
            started_total: AtomicU64::new(0),
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<SessionEvent> {
        self.events.subscribe()
    }

    pub fn emit(&self, event: SessionEvent) {
        let _ = self.events.send(event);
    }

    /// Adds a session; it is removed (and `session_ended` sent) once its
    /// pipeline has been torn down.
    pub fn insert(self: &Arc<Self>, entry: SessionEntry) -> Arc<SessionEntry> {
        let entry = Arc::new(entry);
        self.sessions
            .write()
            .insert(entry.id.clone(), entry.clone());
        self.started_total.fetch_add(1, Ordering::Relaxed);
        let weak = Arc::downgrade(self);
        let id = entry.id.clone();
        let stream_id = entry.stream_id.clone();
        entry.media.on_teardown(Box::new(move |ended| {
            let Some(reg) = weak.upgrade() else { return };
            reg.sessions.write().remove(&id);
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

    /// Ends sessions whose pipeline produced nothing for `stall` (checked
    /// twice a second) until the registry is dropped.
    pub fn spawn_stall_watchdog(self: &Arc<Self>, stall: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let Some(reg) = weak.upgrade() else { break };
                for e in reg.all() {
                    if e.media.is_started()
                        && e.media.reason().is_none()
                        && !e.media.shared.reconnecting.load(Ordering::Acquire)
                        && e.media.idle_ms() >= stall.as_millis() as u64
                    {
                        tracing::warn!(session_id = %e.id, stream_id = %e.stream_id, idle_ms = e.media.idle_ms(), "session stalled");
                        e.media.end(EndReason::Stalled);
                    }
                }
            }
        });
    }
}
