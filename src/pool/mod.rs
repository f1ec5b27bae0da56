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

mod slots;

pub use slots::{ClientSlot, Permit, Slot};
use slots::{SlotKind, WaitGuard};

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
                    (None, Some(_)) if mode == Mode::Transcode => AdmitError::Overloaded(format!(
                        "{limit} encoders run, the most measured admission ever starts on these cores"
                    )),
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

#[cfg(test)]
mod tests;
