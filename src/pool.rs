//! Admission (SPEC §7): the bounded pipeline pool with one FIFO wait queue,
//! and per-client session counts. A [`Permit`] is a running slot; a
//! [`ClientSlot`] is one of a client's sessions. Both are RAII: dropping
//! them frees the slot exactly once, so concurrent end paths can never
//! double-free. A freed slot goes to the oldest waiter for that mode.
//!
//! With a [`Headroom`] gate (`MAX_CONCURRENT_TRANSCODES=auto`) an encoder
//! slot is also given only while the measured headroom allows one more; a
//! request it holds back waits in the same queue, and leaves with
//! `Overloaded` when the queue is full or its start timeout passes.
//!
//! Knows nothing of GStreamer or HTTP.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::admission::Headroom;
use crate::media::Mode;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error("the wait queue is full ({0} requests waiting)")]
    QueueFull(usize),
    #[error("no pipeline slot became free within the start timeout")]
    PoolFull,
    #[error("this client already holds {0} sessions")]
    TooManySessions(usize),
    #[error(
        "{0} channels are running, the most MAX_CHANNELS allows; a viewer can join one of them"
    )]
    TooManyChannels(usize),
    #[error("{0} viewers are watching, the most MAX_VIEWERS allows")]
    TooManyViewers(usize),
    #[error("no new encoder can start now: {0}")]
    Overloaded(String),
}

/// A request waiting for a slot, as status shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueEntry {
    pub stream_id: String,
    pub quality: String,
    #[serde(rename = "clientIP")]
    pub client_ip: String,
    pub waiting_ms: u64,
}

struct Waiter {
    id: u64,
    mode: Mode,
    tx: oneshot::Sender<()>,
    stream_id: String,
    quality: String,
    /// Pixels of the source picture, when known (what an encoder costs).
    pixels: Option<u64>,
    client_ip: IpAddr,
    since: Instant,
}

#[derive(Default)]
struct State {
    transcodes: usize,
    remuxes: usize,
    queue: VecDeque<Waiter>,
    next_id: u64,
    clients: HashMap<IpAddr, usize>,
    channels: usize,
    viewers: usize,
}

impl State {
    fn running(&mut self, mode: Mode) -> &mut usize {
        match mode {
            Mode::Transcode => &mut self.transcodes,
            Mode::Remux => &mut self.remuxes,
        }
    }
}

pub struct Pool {
    max_transcodes: usize,
    max_remux: usize,
    max_queued: usize,
    max_per_client: usize,
    max_channels: usize,
    max_viewers: usize,
    /// Admission by measured headroom for encoders, when `auto`.
    headroom: Option<Arc<Headroom>>,
    state: Mutex<State>,
}

/// The pool's bounds, as configured.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub transcodes: usize,
    pub remux: usize,
    pub queued: usize,
    pub per_client: usize,
    pub channels: usize,
    pub viewers: usize,
}

/// Snapshot of the pool for status and metrics.
#[derive(Debug, Clone)]
pub struct PoolSnapshot {
    pub transcodes: usize,
    pub remuxes: usize,
    /// The hard cap, or under `auto` the encoders running plus the ones of
    /// the default profile the measured headroom would still admit.
    pub max_transcodes: usize,
    pub max_remux: usize,
    pub max_queued: usize,
    /// Encoders are admitted by measured headroom.
    pub auto: bool,
    /// No new encoder can be admitted and the queue is full.
    pub saturated: bool,
    pub channels: usize,
    pub viewers: usize,
    pub queue: Vec<QueueEntry>,
}

impl Pool {
    pub fn new(limits: Limits) -> Arc<Self> {
        Self::with_headroom(limits, None)
    }

    /// A pool whose encoder slots are also bounded by `headroom` (`auto`);
    /// `limits.transcodes` stays a hard ceiling.
    pub fn with_headroom(limits: Limits, headroom: Option<Arc<Headroom>>) -> Arc<Self> {
        Arc::new(Self {
            headroom,
            max_transcodes: limits.transcodes,
            max_remux: limits.remux,
            max_queued: limits.queued,
            max_per_client: limits.per_client,
            max_channels: limits.channels,
            max_viewers: limits.viewers,
            state: Mutex::new(State::default()),
        })
    }

    /// Takes a channel (upstream connection) slot, or refuses at once.
    pub fn enter_channel(self: &Arc<Self>) -> Result<Slot, AdmitError> {
        let mut st = self.state.lock();
        if st.channels >= self.max_channels {
            return Err(AdmitError::TooManyChannels(st.channels));
        }
        st.channels += 1;
        Ok(Slot {
            pool: self.clone(),
            kind: SlotKind::Channel,
        })
    }

    /// Takes a viewer slot, or refuses at once.
    pub fn enter_viewer(self: &Arc<Self>) -> Result<Slot, AdmitError> {
        let mut st = self.state.lock();
        if st.viewers >= self.max_viewers {
            return Err(AdmitError::TooManyViewers(st.viewers));
        }
        st.viewers += 1;
        Ok(Slot {
            pool: self.clone(),
            kind: SlotKind::Viewer,
        })
    }

    /// A `mode` slot if one is free and nobody waits for one, at once.
    pub fn try_acquire(self: &Arc<Self>, mode: Mode) -> Option<Permit> {
        let mut st = self.state.lock();
        let ahead = st.queue.iter().any(|w| w.mode == mode);
        if ahead || *st.running(mode) >= self.limit(mode) {
            return None;
        }
        if let (Mode::Transcode, Some(h)) = (mode, &self.headroom) {
            h.admit(h.default_quality(), None, st.transcodes).ok()?;
        }
        *st.running(mode) += 1;
        Some(Permit {
            pool: self.clone(),
            mode,
        })
    }

    /// Whether the headroom gate lets one more `mode` slot start for a
    /// `quality` encode of a `pixels` source (remux is never gated).
    /// `waiting`: the request was refused before and waits in the queue.
    fn gate(
        &self,
        st: &State,
        mode: Mode,
        quality: &str,
        pixels: Option<u64>,
        waiting: bool,
    ) -> Result<(), String> {
        match (mode, &self.headroom) {
            (Mode::Transcode, Some(h)) if waiting => h
                .admit_waiting(quality, pixels, st.transcodes)
                .map_err(|r| r.message),
            (Mode::Transcode, Some(h)) => h
                .admit(quality, pixels, st.transcodes)
                .map_err(|r| r.message),
            _ => Ok(()),
        }
    }

    fn limit(&self, mode: Mode) -> usize {
        match mode {
            Mode::Transcode => self.max_transcodes,
            Mode::Remux => self.max_remux,
        }
    }

    /// Takes one of `ip`'s session slots, or refuses with `TooManySessions`.
    pub fn enter_client(self: &Arc<Self>, ip: IpAddr) -> Result<ClientSlot, AdmitError> {
        let mut st = self.state.lock();
        let n = st.clients.entry(ip).or_insert(0);
        if *n >= self.max_per_client {
            return Err(AdmitError::TooManySessions(*n));
        }
        *n += 1;
        Ok(ClientSlot {
            pool: self.clone(),
            ip,
        })
    }

    /// Waits in FIFO order for a `mode` slot until `deadline`. Dropping the
    /// returned future (client hung up) leaves the queue at once.
    /// `on_queued` runs if the request has to wait. `pixels` (of the
    /// source picture, when known) sizes what a new encoder costs.
    #[allow(clippy::too_many_arguments)]
    pub async fn acquire(
        self: &Arc<Self>,
        mode: Mode,
        stream_id: &str,
        quality: &str,
        pixels: Option<u64>,
        client_ip: IpAddr,
        deadline: tokio::time::Instant,
        on_queued: impl FnOnce(usize),
    ) -> Result<Permit, AdmitError> {
        let (rx, id) = {
            let mut st = self.state.lock();
            let ahead = st.queue.iter().any(|w| w.mode == mode);
            let limit = self.limit(mode);
            let mut held = None;
            if !ahead && *st.running(mode) < limit {
                match self.gate(&st, mode, quality, pixels, false) {
                    Ok(()) => {
                        *st.running(mode) += 1;
                        return Ok(Permit {
                            pool: self.clone(),
                            mode,
                        });
                    }
                    Err(why) => held = Some(why),
                }
            }
            if st.queue.len() >= self.max_queued {
                // Under the cap, what keeps the queue full is the headroom.
                let headroom_holds = mode == Mode::Transcode && *st.running(mode) < limit;
                return Err(match (held, &self.headroom) {
                    (Some(why), _) => AdmitError::Overloaded(why),
                    (None, Some(h)) if headroom_holds => {
                        AdmitError::Overloaded(h.last_refusal().map_or_else(
                            || "the measured headroom allows none".into(),
                            |r| r.message,
                        ))
                    }
                    (None, _) => AdmitError::QueueFull(st.queue.len()),
                });
            }
            let (tx, rx) = oneshot::channel();
            st.next_id += 1;
            let id = st.next_id;
            st.queue.push_back(Waiter {
                id,
                mode,
                tx,
                stream_id: stream_id.to_string(),
                quality: quality.to_string(),
                pixels,
                client_ip,
                since: Instant::now(),
            });
            let position = st.queue.len();
            drop(st);
            on_queued(position);
            (rx, id)
        };
        let mut guard = WaitGuard {
            pool: self.clone(),
            id,
            mode,
            rx: Some(rx),
        };
        let rx = guard.rx.as_mut().expect("receiver present");
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(())) => {
                guard.rx = None;
                Ok(Permit {
                    pool: self.clone(),
                    mode,
                })
            }
            // Sender dropped without a grant cannot happen while queued; treat as full.
            Ok(Err(_)) => Err(AdmitError::PoolFull),
            Err(_) => Err(self.timed_out(mode)),
        }
    }

    /// Why a waiter whose start timeout passed got no slot: the headroom,
    /// when a slot under the cap was free, or the full pool.
    fn timed_out(&self, mode: Mode) -> AdmitError {
        let st = self.state.lock();
        match (&self.headroom, mode) {
            (Some(h), Mode::Transcode) if st.transcodes < self.max_transcodes => {
                AdmitError::Overloaded(h.last_refusal().map_or_else(
                    || "the measured headroom allows none".to_string(),
                    |r| r.message,
                ))
            }
            _ => AdmitError::PoolFull,
        }
    }

    fn release(&self, mode: Mode) {
        let mut st = self.state.lock();
        *st.running(mode) -= 1;
        self.grant(&mut st, mode);
    }

    /// Hands free `mode` slots to the oldest live waiters, while the cap
    /// and the headroom allow.
    fn grant(&self, st: &mut State, mode: Mode) {
        while *st.running(mode) < self.limit(mode) {
            let Some(pos) = st.queue.iter().position(|w| w.mode == mode) else {
                return;
            };
            let (quality, pixels) = (st.queue[pos].quality.clone(), st.queue[pos].pixels);
            if self.gate(st, mode, &quality, pixels, true).is_err() {
                return;
            }
            let w = st.queue.remove(pos).expect("position is valid");
            *st.running(mode) += 1;
            if w.tx.send(()).is_err() {
                *st.running(mode) -= 1;
            }
        }
    }

    /// Offers waiting encoder requests what the headroom allows now (the
    /// headroom changes without any slot being freed).
    pub fn offer(&self) {
        if self.headroom.is_some() {
            let mut st = self.state.lock();
            self.grant(&mut st, Mode::Transcode);
        }
    }

    pub fn snapshot(&self) -> PoolSnapshot {
        let st = self.state.lock();
        let (max_transcodes, can_admit) = match &self.headroom {
            Some(h) => {
                let more = h.more(st.transcodes);
                (
                    self.max_transcodes.min(st.transcodes + more),
                    more > 0 && st.transcodes < self.max_transcodes,
                )
            }
            None => (self.max_transcodes, st.transcodes < self.max_transcodes),
        };
        PoolSnapshot {
            transcodes: st.transcodes,
            remuxes: st.remuxes,
            max_transcodes,
            max_remux: self.max_remux,
            max_queued: self.max_queued,
            auto: self.headroom.is_some(),
            saturated: !can_admit && st.queue.len() >= self.max_queued,
            channels: st.channels,
            viewers: st.viewers,
            queue: st
                .queue
                .iter()
                .map(|w| QueueEntry {
                    stream_id: w.stream_id.clone(),
                    quality: w.quality.clone(),
                    client_ip: w.client_ip.to_string(),
                    waiting_ms: w.since.elapsed().as_millis() as u64,
                })
                .collect(),
        }
    }

    /// The headroom gate, when encoders are admitted by it.
    pub fn headroom(&self) -> Option<&Arc<Headroom>> {
        self.headroom.as_ref()
    }

    /// Sessions currently held by `ip`.
    pub fn client_sessions(&self, ip: IpAddr) -> usize {
        self.state.lock().clients.get(&ip).copied().unwrap_or(0)
    }
}

#[derive(Debug, Clone, Copy)]
enum SlotKind {
    Channel,
    Viewer,
}

/// A channel or viewer slot; dropping it frees it.
#[must_use]
pub struct Slot {
    pool: Arc<Pool>,
    kind: SlotKind,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = self.pool.state.lock();
        match self.kind {
            SlotKind::Channel => st.channels -= 1,
            SlotKind::Viewer => st.viewers -= 1,
        }
    }
}

/// A running encoder (transcode rendition) or remux rendition slot;
/// dropping it frees the slot.
#[must_use]
pub struct Permit {
    pool: Arc<Pool>,
    mode: Mode,
}

impl Permit {
    pub fn mode(&self) -> Mode {
        self.mode
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.pool.release(self.mode);
    }
}

/// One of a client's sessions; dropping it frees it.
#[must_use]
pub struct ClientSlot {
    pool: Arc<Pool>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut st = self.pool.state.lock();
        if let Some(n) = st.clients.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                st.clients.remove(&self.ip);
            }
        }
    }
}

/// Removes an abandoned waiter, or returns a slot granted to nobody.
struct WaitGuard {
    pool: Arc<Pool>,
    id: u64,
    mode: Mode,
    rx: Option<oneshot::Receiver<()>>,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        let mut st = self.pool.state.lock();
        if let Some(pos) = st.queue.iter().position(|w| w.id == self.id) {
            st.queue.remove(pos);
            return;
        }
        drop(st);
        // Granted under the lock before we gave up: pass the slot on.
        if rx.try_recv().is_ok() {
            self.pool.release(self.mode);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(transcodes: usize, remux: usize, queued: usize, per_client: usize) -> Limits {
        Limits {
            transcodes,
            remux,
            queued,
            per_client,
            channels: 2,
            viewers: 3,
        }
    }

    #[test]
    fn channel_and_viewer_slots_are_bounded_and_freed_on_drop() {
        let pool = Pool::new(limits(1, 1, 1, 10));
        let a = pool.enter_channel().unwrap();
        let _b = pool.enter_channel().unwrap();
        assert_eq!(
            pool.enter_channel().err(),
            Some(AdmitError::TooManyChannels(2))
        );
        drop(a);
        let _c = pool.enter_channel().unwrap();
        let v: Vec<_> = (0..3).map(|_| pool.enter_viewer().unwrap()).collect();
        assert_eq!(
            pool.enter_viewer().err(),
            Some(AdmitError::TooManyViewers(3))
        );
        drop(v);
        assert_eq!(pool.snapshot().viewers, 0);
        assert_eq!(pool.snapshot().channels, 2);
    }
    use std::time::Duration;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    fn later(ms: u64) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(ms)
    }

    #[tokio::test(start_paused = true)]
    async fn third_request_waits_and_gets_the_freed_slot_fifo() {
        let pool = Pool::new(limits(2, 5, 10, 10));
        let a = pool
            .acquire(
                Mode::Transcode,
                "s",
                "medium",
                None,
                ip(1),
                later(10),
                |_| {},
            )
            .await
            .unwrap();
        let _b = pool
            .acquire(
                Mode::Transcode,
                "s",
                "medium",
                None,
                ip(1),
                later(10),
                |_| {},
            )
            .await
            .unwrap();
        let p1 = pool.clone();
        let first = tokio::spawn(async move {
            p1.acquire(
                Mode::Transcode,
                "first",
                "m",
                None,
                ip(2),
                later(60_000),
                |_| {},
            )
            .await
            .map(|_| "first")
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        let p2 = pool.clone();
        let second = tokio::spawn(async move {
            p2.acquire(
                Mode::Transcode,
                "second",
                "m",
                None,
                ip(3),
                later(60_000),
                |_| {},
            )
            .await
            .map(|_| "second")
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(pool.snapshot().queue.len(), 2);
        assert_eq!(pool.snapshot().queue[0].stream_id, "first");
        // Remux has its own bound and is not blocked by transcode waiters.
        let _r = pool
            .acquire(Mode::Remux, "r", "m", None, ip(4), later(10), |_| {})
            .await
            .unwrap();
        drop(a);
        // The freed slot went to the oldest waiter; the younger one still waits.
        let queue = pool.snapshot().queue;
        assert_eq!(queue.len(), 1);
        assert_eq!(queue[0].stream_id, "second");
        assert_eq!(pool.snapshot().transcodes, 2);
        assert_eq!(first.await.unwrap(), Ok("first"));
        second.abort();
        let _ = second.await;
        assert!(pool.snapshot().queue.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_and_timeouts_are_refused() {
        let pool = Pool::new(limits(1, 1, 1, 10));
        let _a = pool
            .acquire(Mode::Transcode, "s", "m", None, ip(1), later(10), |_| {})
            .await
            .unwrap();
        let p = pool.clone();
        let waiter = tokio::spawn(async move {
            p.acquire(Mode::Transcode, "s", "m", None, ip(1), later(500), |_| {})
                .await
                .err()
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        let full = pool
            .acquire(Mode::Transcode, "s", "m", None, ip(1), later(500), |_| {})
            .await
            .err();
        assert_eq!(full, Some(AdmitError::QueueFull(1)));
        assert_eq!(waiter.await.unwrap(), Some(AdmitError::PoolFull));
        assert!(pool.snapshot().queue.is_empty());
        assert_eq!(pool.snapshot().transcodes, 1);
    }

    #[tokio::test]
    async fn the_headroom_holds_encoders_back_and_a_freed_one_goes_to_the_waiter() {
        let headroom = Headroom::new(
            1.0,
            "medium",
            std::collections::BTreeMap::from([("medium".to_string(), 0.6)]),
        );
        let pool = Pool::with_headroom(limits(8, 1, 1, 10), Some(headroom.clone()));
        let wait = |ms| later(ms);
        // The first encoder always starts; the second would need 0.6 of the
        // 0.4 cores the first leaves, so it waits.
        let first = pool
            .acquire(
                Mode::Transcode,
                "a",
                "medium",
                None,
                ip(1),
                wait(10),
                |_| {},
            )
            .await
            .unwrap();
        let p = pool.clone();
        let waiter = tokio::spawn(async move {
            p.acquire(
                Mode::Transcode,
                "b",
                "medium",
                None,
                ip(1),
                wait(20_000),
                |_| {},
            )
            .await
        });
        assert!(crate::pool::tests::until(|| pool.snapshot().queue.len() == 1).await);
        // Remux is not gated; with the queue full an encoder is overloaded.
        assert!(pool
            .acquire(Mode::Remux, "r", "source", None, ip(2), wait(10), |_| {})
            .await
            .is_ok());
        let full = pool
            .acquire(
                Mode::Transcode,
                "c",
                "medium",
                None,
                ip(3),
                wait(10),
                |_| {},
            )
            .await
            .err();
        assert!(
            matches!(&full, Some(AdmitError::Overloaded(m)) if m.contains("0.40 of 1.00")),
            "{full:?}"
        );
        let snap = pool.snapshot();
        assert!(
            snap.auto && snap.saturated,
            "nothing can start, nobody can wait"
        );
        assert_eq!(snap.max_transcodes, 1);
        // The refusal of the waiter was counted once, not at every offer.
        pool.offer();
        pool.offer();
        assert_eq!(headroom.view("auto".into(), 1).refusals["no_cpu"], 1);
        drop(first);
        let granted = waiter.await.unwrap().expect("the freed encoder slot");
        assert_eq!(pool.snapshot().transcodes, 1);
        drop(granted);
    }

    #[tokio::test]
    async fn a_waiter_the_headroom_never_admits_leaves_overloaded() {
        let headroom = Headroom::new(
            1.0,
            "medium",
            std::collections::BTreeMap::from([("medium".to_string(), 0.6)]),
        );
        let pool = Pool::with_headroom(limits(8, 1, 4, 10), Some(headroom));
        let _first = pool
            .acquire(
                Mode::Transcode,
                "a",
                "medium",
                None,
                ip(1),
                later(10),
                |_| {},
            )
            .await
            .unwrap();
        let late = pool
            .acquire(
                Mode::Transcode,
                "b",
                "medium",
                None,
                ip(1),
                later(300),
                |_| {},
            )
            .await
            .err();
        assert!(matches!(late, Some(AdmitError::Overloaded(_))), "{late:?}");
        assert!(pool.snapshot().queue.is_empty());
        assert!(!pool.snapshot().saturated, "the queue has room");
    }

    /// Polls `cond` for up to a second.
    pub(super) async fn until(mut cond: impl FnMut() -> bool) -> bool {
        for _ in 0..100 {
            if cond() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cond()
    }

    #[tokio::test]
    async fn per_client_limit_and_release() {
        let pool = Pool::new(limits(1, 1, 1, 2));
        let a = pool.enter_client(ip(9)).unwrap();
        let _b = pool.enter_client(ip(9)).unwrap();
        assert_eq!(
            pool.enter_client(ip(9)).err(),
            Some(AdmitError::TooManySessions(2))
        );
        assert!(pool.enter_client(ip(8)).is_ok());
        drop(a);
        assert!(pool.enter_client(ip(9)).is_ok());
    }

    #[tokio::test]
    async fn many_concurrent_releases_never_double_free() {
        let pool = Pool::new(limits(4, 4, 200, 1000));
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let p = pool.clone();
            tasks.push(tokio::spawn(async move {
                let permit = p
                    .acquire(
                        Mode::Transcode,
                        "s",
                        "m",
                        None,
                        ip((i % 200) as u8),
                        later(30_000),
                        |_| {},
                    )
                    .await;
                tokio::task::yield_now().await;
                drop(permit);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let snap = pool.snapshot();
        assert_eq!((snap.transcodes, snap.queue.len()), (0, 0));
    }
}
