//! The event feed (`GET /api/streams/transcoding/events`): what happens to
//! sessions and channels, for anyone subscribed; and wall-clock time as
//! status shows it.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::media::{EndReason, Format, Mode};

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
    #[serde(rename_all = "camelCase")]
    ChannelStarted {
        stream_id: String,
        stream_name: String,
    },
    #[serde(rename_all = "camelCase")]
    ChannelEnded {
        stream_id: String,
        reason: EndReason,
        duration: u64,
    },
}

impl SessionEvent {
    pub fn name(&self) -> &'static str {
        match self {
            SessionEvent::SessionQueued { .. } => "session_queued",
            SessionEvent::SessionStarted { .. } => "session_started",
            SessionEvent::SessionEnded { .. } => "session_ended",
            SessionEvent::ChannelStarted { .. } => "channel_started",
            SessionEvent::ChannelEnded { .. } => "channel_ended",
        }
    }
}

/// The broadcaster; a slow subscriber misses events, never slows anyone.
pub struct Events {
    tx: broadcast::Sender<SessionEvent>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(1024);
        Events { tx }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<SessionEvent> {
        self.tx.subscribe()
    }

    pub fn emit(&self, event: SessionEvent) {
        let _ = self.tx.send(event);
    }
}

/// Milliseconds since the Unix epoch.
pub fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
