//! HLS output (SPEC §12): segments cut once per rendition output, served
//! to every HLS client of it.
//!
//! ```text
//! rendition fMP4|TS output -> Fanout --tap--> Window (6 segments + parts, in memory)
//!                                 \-- passive viewer per HLS session (counted, fed nothing)
//! ```
//!
//! [`Hls`] owns the windows (one per fan-out, made on first use) and the
//! sessions: one per client (`sid`) and variant, each a viewer of the
//! rendition in status (`format: "hls"`), ended (`client_disconnect`) after
//! [`IDLE_TARGETS`] target durations without a request. It knows nothing
//! of warp; `http::hls` serves what it holds.

pub mod boxes;
pub mod playlist;
pub mod window;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::channels::fanout::{Fanout, Viewer, ViewerHandle};
pub use window::{Container, Window};

/// A session ends after this many target durations without a request.
pub const IDLE_TARGETS: u32 = 3;
/// How often idle sessions are looked for.
const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// Which session a request belongs to: one per client and variant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub sid: String,
    pub stream_id: String,
    pub quality: String,
    pub container: Container,
}

/// One HLS client of one variant.
pub struct Session {
    /// The id status and admin know it by.
    pub session_id: String,
    pub window: Arc<Window>,
    handle: ViewerHandle,
    /// Dropping it ends the viewer (`client_disconnect`).
    viewer: Mutex<Option<Viewer>>,
    last: Mutex<Instant>,
}

impl Session {
    /// Marks a request; counts what was sent.
    pub fn touch(&self, bytes: u64) {
        *self.last.lock() = Instant::now();
        self.handle.add_sent(bytes);
    }

    pub fn alive(&self) -> bool {
        self.handle.reason().is_none() && self.viewer.lock().is_some()
    }

    fn end(&self) {
        self.viewer.lock().take();
    }
}

/// A window and the fan-out it taps, keyed by that fan-out's address.
type Windows = HashMap<usize, (Weak<Fanout>, Arc<Window>)>;

#[derive(Default)]
pub struct Hls {
    windows: Mutex<Windows>,
    sessions: Mutex<HashMap<SessionKey, Arc<Session>>>,
    /// Segments cut, every window together (muxer output, not responses).
    pub segments_cut: Arc<AtomicU64>,
    pub parts_cut: Arc<AtomicU64>,
    sweeping: AtomicBool,
}

impl Hls {
    pub fn new() -> Arc<Hls> {
        Arc::new(Hls::default())
    }

    /// The window of `output`, made (and tapped) on first use.
    pub fn window(
        &self,
        output: &Arc<Fanout>,
        container: Container,
        target_hint: u32,
        reconnects: Box<dyn Fn() -> u64 + Send + Sync>,
    ) -> Arc<Window> {
        let key = Arc::as_ptr(output) as usize;
        let mut map = self.windows.lock();
        map.retain(|_, (f, w)| f.strong_count() > 0 && !w.ended());
        if let Some((f, w)) = map.get(&key) {
            if f.upgrade().is_some_and(|f| Arc::ptr_eq(&f, output)) {
                return w.clone();
            }
        }
        let w = Window::new(
            container,
            target_hint,
            reconnects,
            self.segments_cut.clone(),
            self.parts_cut.clone(),
        );
        output.add_tap(w.clone());
        // A transcode starts its first segment at once, not a GOP later.
        output.request_keyframe_now();
        map.insert(key, (Arc::downgrade(output), w.clone()));
        w
    }

    /// The window of a running output, if one was made.
    pub fn window_of(&self, output: &Arc<Fanout>) -> Option<Arc<Window>> {
        let key = Arc::as_ptr(output) as usize;
        let map = self.windows.lock();
        let (f, w) = map.get(&key)?;
        f.upgrade()
            .is_some_and(|f| Arc::ptr_eq(&f, output))
            .then(|| w.clone())
    }

    /// The live session of `key`, touched.
    pub fn session(&self, key: &SessionKey) -> Option<Arc<Session>> {
        let mut map = self.sessions.lock();
        match map.get(key) {
            Some(s) if s.alive() => {
                s.touch(0);
                Some(s.clone())
            }
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    /// Registers a new session holding `viewer`; starts the idle sweep.
    pub fn add_session(
        self: &Arc<Self>,
        key: SessionKey,
        session_id: String,
        viewer: Viewer,
        window: Arc<Window>,
    ) -> Arc<Session> {
        let s = Arc::new(Session {
            session_id,
            window,
            handle: viewer.handle(),
            viewer: Mutex::new(Some(viewer)),
            last: Mutex::new(Instant::now()),
        });
        if let Some(old) = self.sessions.lock().insert(key, s.clone()) {
            old.end();
        }
        if !self.sweeping.swap(true, Ordering::AcqRel) {
            let weak = Arc::downgrade(self);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SWEEP_EVERY);
                loop {
                    tick.tick().await;
                    let Some(me) = weak.upgrade() else { break };
                    me.sweep();
                }
            });
        }
        s
    }

    /// Ends sessions idle for [`IDLE_TARGETS`] target durations, and drops
    /// those that ended otherwise.
    pub fn sweep(&self) {
        let now = Instant::now();
        let gone: Vec<Arc<Session>> = {
            let mut map = self.sessions.lock();
            let mut gone = Vec::new();
            map.retain(|_, s| {
                let target = s.window.target().unwrap_or(2).max(1);
                let idle = now.duration_since(*s.last.lock());
                let keep =
                    s.alive() && idle < Duration::from_secs(u64::from(target * IDLE_TARGETS));
                if !keep {
                    gone.push(s.clone());
                }
                keep
            });
            gone
        };
        for s in gone {
            s.end();
        }
    }

    /// Ends the session of `key` now (its start failed).
    pub fn sweep_key(&self, key: &SessionKey) {
        let s = self.sessions.lock().remove(key);
        if let Some(s) = s {
            s.end();
        }
    }

    /// Sessions running now.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().values().filter(|s| s.alive()).count()
    }
}
