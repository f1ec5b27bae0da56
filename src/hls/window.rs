//! The segment window of one rendition output: its chunks cut once into
//! segments (one keyframe interval each) and LL-HLS parts (whole fMP4
//! fragments), the last [`WINDOW_SEGMENTS`] kept in memory, and what the
//! playlists say about them. It is a [`Tap`] of the output's fan-out, so it
//! runs on the streaming thread under the fan-out's lock: it never blocks,
//! it only appends and wakes waiting requests.
//!
//! ```text
//! muxer -> Splitter -> Fanout::publish -> Window::chunk -> parts -> segments -> HTTP
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::boxes::{self, InitInfo, Track};
use crate::channels::fanout::{Chunk, Tap};
use crate::media::EndReason;

/// Complete segments kept (and listed).
pub const WINDOW_SEGMENTS: usize = 6;
/// The LL-HLS part duration aimed at (a part is one or more fragments).
pub const PART_TARGET_S: f64 = 0.25;
/// Segments whose parts are still listed, behind the one being built.
const PARTS_LISTED: usize = 2;
/// MPEG-TS timestamps: 90 kHz, 33 bits.
const TS_CLOCK: u32 = 90_000;
const TS_WRAP: u64 = 1 << 33;

/// The container segments are cut from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Container {
    Fmp4,
    Ts,
}

impl Container {
    pub fn as_str(self) -> &'static str {
        match self {
            Container::Fmp4 => "fmp4",
            Container::Ts => "ts",
        }
    }

    /// Segment file extension.
    pub fn ext(self) -> &'static str {
        match self {
            Container::Fmp4 => "m4s",
            Container::Ts => "ts",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Container::Fmp4 => "video/mp4",
            Container::Ts => "video/mp2t",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Part {
    pub data: Bytes,
    pub dur: f64,
    pub independent: bool,
}

#[derive(Debug)]
pub struct Segment {
    pub msn: u64,
    pub data: Bytes,
    pub dur: f64,
    pub parts: Vec<Part>,
    /// The source was reconnected (or the stream changed) before it.
    pub discontinuity: bool,
    /// Wall clock (ms since the epoch) of its first sample.
    pub pdt_ms: u64,
    pub init_id: u64,
}

/// The segment being cut.
struct Building {
    msn: u64,
    start: u64,
    parts: Vec<Part>,
    part_bufs: Vec<Bytes>,
    part_start: u64,
    part_independent: bool,
    frag_bufs: Vec<Bytes>,
    frag_start: Option<u64>,
    discontinuity: bool,
    pdt_ms: u64,
    init_id: u64,
    /// When its first chunk arrived.
    opened: std::time::Instant,
}

#[derive(Default)]
struct State {
    init: Option<(u64, Bytes, InitInfo)>,
    /// Init segments still referenced by a segment in the window.
    old_inits: Vec<(u64, Bytes)>,
    ts_header: Option<Bytes>,
    segments: VecDeque<Arc<Segment>>,
    building: Option<Building>,
    next_msn: u64,
    disc_seq: u64,
    /// Fixed by the first complete segment, then constant.
    target: Option<u32>,
    part_target: Option<f64>,
    /// Longest fragment seen before the part target was fixed (ticks).
    max_frag: u64,
    /// Next segment starts a discontinuity (new init, reconnect).
    pending_disc: bool,
    /// A new init arrived while a segment was being cut: the old init's
    /// clock. If the next chunk is a keyframe on the same clock, it ends
    /// that segment as usual; otherwise the segment is dropped.
    init_changed: Option<Track>,
    reconnects: u64,
    ended: Option<EndReason>,
    /// Wall clock of the end of the latest segment, for the next PDT.
    next_pdt: Option<u64>,
}

type ReconnectsFn = Box<dyn Fn() -> u64 + Send + Sync>;

pub struct Window {
    pub container: Container,
    /// Smallest target duration (s): the profile's keyframe interval.
    target_hint: u32,
    state: Mutex<State>,
    /// Bumped on every new part, segment or end.
    changed: watch::Sender<u64>,
    reconnects: ReconnectsFn,
    /// Segments cut, across every window (the one-cut-per-rendition proof).
    cut: Arc<AtomicU64>,
    parts_cut: Arc<AtomicU64>,
}

/// What a playlist writer needs, copied out under the lock.
pub struct Snapshot {
    pub target: u32,
    pub part_target: Option<f64>,
    pub first_msn: u64,
    pub disc_seq: u64,
    pub segments: Vec<Arc<Segment>>,
    /// The segment being built: its msn and parts so far (LL-HLS).
    pub building: Option<(u64, Vec<Part>, bool)>,
    pub init_ids: Vec<u64>,
    pub ended: bool,
    pub parts_listed_from: u64,
}

impl Window {
    pub fn new(
        container: Container,
        target_hint: u32,
        reconnects: ReconnectsFn,
        cut: Arc<AtomicU64>,
        parts_cut: Arc<AtomicU64>,
    ) -> Arc<Window> {
        let start = reconnects();
        Arc::new(Window {
            container,
            target_hint,
            state: Mutex::new(State {
                reconnects: start,
                ..State::default()
            }),
            changed: watch::channel(0).0,
            reconnects,
            cut,
            parts_cut,
        })
    }

    fn timescale(&self, st: &State) -> u64 {
        match self.container {
            Container::Ts => u64::from(TS_CLOCK),
            Container::Fmp4 => st
                .init
                .as_ref()
                .and_then(|(_, _, i)| i.clock())
                .map_or(1, |t| u64::from(t.timescale.max(1))),
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Waits for the next change (part, segment, end).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// What the playlists list now; None before the first segment.
    pub fn snapshot(&self) -> Option<Snapshot> {
        let st = self.state.lock();
        let target = st.target?;
        let segments: Vec<_> = st.segments.iter().cloned().collect();
        let first_msn = segments.first().map_or(st.next_msn, |s| s.msn);
        let building = st
            .building
            .as_ref()
            .map(|b| (b.msn, b.parts.clone(), b.discontinuity));
        let mut init_ids: Vec<u64> = st.old_inits.iter().map(|(id, _)| *id).collect();
        init_ids.extend(st.init.as_ref().map(|(id, _, _)| *id));
        let parts_listed_from = st.next_msn.saturating_sub(PARTS_LISTED as u64);
        Some(Snapshot {
            target,
            part_target: st.part_target,
            first_msn,
            disc_seq: st.disc_seq,
            segments,
            building,
            init_ids,
            ended: st.ended.is_some(),
            parts_listed_from,
        })
    }

    /// The init segment `id` while a segment in the window uses it.
    pub fn init(&self, id: u64) -> Option<Bytes> {
        let st = self.state.lock();
        match &st.init {
            Some((cur, b, _)) if *cur == id => Some(b.clone()),
            _ => (st.old_inits.iter())
                .find(|(i, _)| *i == id)
                .map(|(_, b)| b.clone()),
        }
    }

    /// The current init segment's media description (codecs, size).
    pub fn info(&self) -> Option<InitInfo> {
        self.state.lock().init.as_ref().map(|(_, _, i)| i.clone())
    }

    pub fn segment(&self, msn: u64) -> Option<Arc<Segment>> {
        let st = self.state.lock();
        st.segments.iter().find(|s| s.msn == msn).cloned()
    }

    /// Part `index` of segment `msn`, in the window or being built.
    pub fn part(&self, msn: u64, index: usize) -> Option<Bytes> {
        let st = self.state.lock();
        if let Some(b) = st.building.as_ref().filter(|b| b.msn == msn) {
            return b.parts.get(index).map(|p| p.data.clone());
        }
        let seg = st.segments.iter().find(|s| s.msn == msn)?;
        seg.parts.get(index).map(|p| p.data.clone())
    }

    /// Whether a playlist would list segment `msn` (complete) or, with
    /// `part`, that part of it.
    pub fn has(&self, msn: u64, part: Option<usize>) -> bool {
        let st = self.state.lock();
        if st.ended.is_some() || st.next_msn > msn {
            return true;
        }
        match (part, &st.building) {
            (Some(p), Some(b)) => b.msn == msn && b.parts.len() > p,
            _ => false,
        }
    }

    /// The msn of the segment being built (or next to be).
    pub fn live_msn(&self) -> u64 {
        let st = self.state.lock();
        st.building.as_ref().map_or(st.next_msn, |b| b.msn)
    }

    /// How long ago the segment being built started, once its first part
    /// (an independent one, where a player may start) is listed.
    pub fn edge_age(&self) -> Option<std::time::Duration> {
        let st = self.state.lock();
        let b = st.building.as_ref().filter(|b| !b.parts.is_empty())?;
        Some(b.opened.elapsed())
    }

    pub fn ended(&self) -> bool {
        self.state.lock().ended.is_some()
    }

    pub fn target(&self) -> Option<u32> {
        self.state.lock().target
    }

    fn start_segment(&self, st: &mut State, at: u64) {
        let reconnects = (self.reconnects)();
        let disc = std::mem::take(&mut st.pending_disc) || reconnects > st.reconnects;
        st.reconnects = reconnects;
        let now = crate::events::epoch_ms();
        let pdt_ms = match st.next_pdt {
            Some(p) if !disc => p,
            _ => now,
        };
        let init_id = st.init.as_ref().map_or(0, |(id, _, _)| *id);
        st.building = Some(Building {
            msn: st.next_msn,
            start: at,
            parts: Vec::new(),
            part_bufs: Vec::new(),
            part_start: at,
            part_independent: true,
            frag_bufs: Vec::new(),
            frag_start: None,
            discontinuity: disc,
            pdt_ms,
            init_id,
            opened: std::time::Instant::now(),
        });
    }

    fn close_part(&self, b: &mut Building, end: u64, ts: u64) {
        if b.part_bufs.is_empty() {
            return;
        }
        let data = concat(std::mem::take(&mut b.part_bufs));
        b.parts.push(Part {
            data,
            dur: end.saturating_sub(b.part_start) as f64 / ts as f64,
            independent: b.part_independent,
        });
        b.part_start = end;
        b.part_independent = false;
        self.parts_cut.fetch_add(1, Ordering::Relaxed);
    }

    /// Ends the fragment being gathered at `end`, placing it in a part.
    fn end_fragment(&self, st: &mut State, end: u64) {
        let ts = self.timescale(st);
        let ptarget = (st.part_target.unwrap_or(PART_TARGET_S) * ts as f64) as u64;
        let fixed = st.part_target.is_some();
        let Some(b) = st.building.as_mut() else {
            return;
        };
        let Some(fstart) = b.frag_start.take() else {
            return;
        };
        let fdur = end.saturating_sub(fstart);
        if !fixed {
            st.max_frag = st.max_frag.max(fdur);
        }
        if !b.part_bufs.is_empty() && end.saturating_sub(b.part_start) > ptarget {
            self.close_part(b, fstart, ts);
        }
        if b.part_bufs.is_empty() {
            b.part_start = fstart;
        }
        b.part_bufs.append(&mut b.frag_bufs);
        // Another fragment like this one would overrun the part target.
        if end.saturating_sub(b.part_start) + fdur > ptarget {
            self.close_part(b, end, ts);
        }
    }

    fn close_segment(&self, st: &mut State, end: u64) {
        let ts = self.timescale(st);
        self.end_fragment(st, end);
        let Some(mut b) = st.building.take() else {
            return;
        };
        self.close_part(&mut b, end, ts);
        if b.parts.is_empty() {
            return;
        }
        let dur = end.saturating_sub(b.start) as f64 / ts as f64;
        let data = concat(b.parts.iter().map(|p| p.data.clone()).collect());
        // The parts become views of the segment: its bytes are held once.
        let mut at = 0;
        for p in b.parts.iter_mut() {
            let len = p.data.len();
            p.data = data.slice(at..at + len);
            at += len;
        }
        if st.target.is_none() {
            let secs = (dur - 0.001).ceil().max(1.0) as u32;
            st.target = Some(secs.max(self.target_hint));
            let frag = st.max_frag as f64 / ts as f64;
            st.part_target = Some(((frag.max(PART_TARGET_S)) * 1000.0).ceil() / 1000.0);
        }
        st.next_pdt = Some(b.pdt_ms + (dur * 1000.0) as u64);
        st.segments.push_back(Arc::new(Segment {
            msn: b.msn,
            data,
            dur,
            parts: b.parts,
            discontinuity: b.discontinuity,
            pdt_ms: b.pdt_ms,
            init_id: b.init_id,
        }));
        st.next_msn = b.msn + 1;
        while st.segments.len() > WINDOW_SEGMENTS {
            if let Some(old) = st.segments.pop_front() {
                if old.discontinuity {
                    st.disc_seq += 1;
                }
            }
        }
        let first_init = st.segments.front().map_or(u64::MAX, |s| s.init_id);
        st.old_inits.retain(|(id, _)| *id >= first_init);
        self.cut.fetch_add(1, Ordering::Relaxed);
    }

    fn fmp4_chunk(&self, st: &mut State, chunk: &Chunk) {
        let Some(clock) = st.init.as_ref().and_then(|(_, _, i)| i.clock()) else {
            return;
        };
        let time = boxes::is_moof(&chunk.data)
            .then(|| boxes::moof_time(&chunk.data, clock.id))
            .flatten();
        if let Some(old) = st.init_changed.take() {
            // The new init came in the stream right before a keyframe whose
            // time goes on from the segment's (an encoder change under the
            // same muxer): that keyframe ends the segment. Fragments of a
            // restarted stream cannot finish it.
            let goes_on = match (time, st.building.as_ref()) {
                (Some(t), Some(b)) => chunk.keyframe && old == clock && t >= b.start,
                _ => false,
            };
            if !goes_on {
                st.building = None;
            }
        }
        match time {
            Some(t) if chunk.keyframe => {
                if st.building.is_some() {
                    self.close_segment(st, t);
                    self.bump();
                }
                self.start_segment(st, t);
                if let Some(b) = st.building.as_mut() {
                    b.frag_start = Some(t);
                    b.frag_bufs.push(chunk.data.clone());
                }
            }
            Some(t) => {
                let before = st.building.as_ref().map_or(0, |b| b.parts.len());
                self.end_fragment(st, t);
                if let Some(b) = st.building.as_mut() {
                    b.frag_start = Some(t);
                    b.frag_bufs.push(chunk.data.clone());
                    if b.parts.len() != before {
                        self.bump();
                    }
                }
            }
            None => {
                if let Some(b) = st.building.as_mut().filter(|b| b.frag_start.is_some()) {
                    b.frag_bufs.push(chunk.data.clone());
                }
            }
        }
    }

    fn ts_chunk(&self, st: &mut State, chunk: &Chunk) {
        if chunk.keyframe {
            let Some((_, pts)) = boxes::ts_first_pts(&chunk.data) else {
                return;
            };
            // Times are kept unwrapped: a 33-bit wrap continues upwards.
            let t = match &st.building {
                Some(b) => {
                    let last = b.start;
                    last + (pts.wrapping_sub(last % TS_WRAP) % TS_WRAP)
                }
                None => pts,
            };
            if st.building.is_some() {
                self.close_segment(st, t);
                self.bump();
            }
            self.start_segment(st, t);
            let header = st.ts_header.clone();
            if let Some(b) = st.building.as_mut() {
                b.frag_start = Some(t);
                b.frag_bufs.extend(header);
                b.frag_bufs.push(chunk.data.clone());
            }
        } else if let Some(b) = st.building.as_mut().filter(|b| b.frag_start.is_some()) {
            b.frag_bufs.push(chunk.data.clone());
        }
    }
}

impl Tap for Window {
    fn header(&self, header: &Bytes) {
        let mut st = self.state.lock();
        match self.container {
            Container::Ts => {
                // Changed tables (the fan-out hands on only real changes):
                // the next segment starts a discontinuity.
                if st.ts_header.is_some() {
                    st.pending_disc = true;
                }
                st.ts_header = Some(header.clone());
            }
            Container::Fmp4 => {
                if st.init.as_ref().is_some_and(|(_, b, _)| b == header) {
                    return;
                }
                let Some(info) = boxes::parse_init(header) else {
                    return;
                };
                let id = st.init.as_ref().map_or(0, |(id, _, _)| id + 1);
                if let Some((old, b, old_info)) = st.init.take() {
                    st.old_inits.push((old, b));
                    st.init_changed = old_info.clock().filter(|_| st.building.is_some());
                    st.pending_disc = true;
                }
                st.init = Some((id, header.clone(), info));
            }
        }
    }

    fn chunk(&self, chunk: &Chunk) {
        let mut st = self.state.lock();
        if st.ended.is_some() {
            return;
        }
        match self.container {
            Container::Fmp4 => self.fmp4_chunk(&mut st, chunk),
            Container::Ts => self.ts_chunk(&mut st, chunk),
        }
    }

    fn finish(&self, reason: EndReason) {
        self.state.lock().ended = Some(reason);
        self.bump();
    }
}

fn concat(parts: Vec<Bytes>) -> Bytes {
    if parts.len() == 1 {
        return parts.into_iter().next().unwrap_or_default();
    }
    let mut out = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
    parts.iter().for_each(|p| out.extend_from_slice(p));
    out.freeze()
}

#[cfg(test)]
mod tests;
