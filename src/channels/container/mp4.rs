//! fMP4: top-level boxes followed across buffers; the header is everything
//! before the first `moof`; each `moof` is a chunk, `mdat` bytes pass on.

use std::collections::VecDeque;

use bytes::Bytes;

use super::{be32, be64, emit, init, Chunk};

/// The largest box held whole (header boxes, `moof`); a larger one is taken
/// for garbage. mp4mux's `moov` and `moof` are a few kilobytes.
const MAX_HELD: u64 = 16 << 20;

/// Top-level boxes trusted when resynchronising after garbage.
const KNOWN: [&[u8; 4]; 8] = [
    b"ftyp", b"styp", b"moov", b"moof", b"mdat", b"free", b"skip", b"sidx",
];

pub(super) struct Mp4 {
    /// Bytes of a box header or held box split over pushes.
    pending: Vec<u8>,
    step: Step,
    /// Garbage was skipped: only a known box type ends the search.
    lost: bool,
    /// Before the first `moof` (or after a new `ftyp`): boxes are header.
    in_header: bool,
    /// Header boxes other than `moov`, in order (`ftyp`).
    pre: Vec<u8>,
    moov: Option<Bytes>,
    pub(super) header: Option<Bytes>,
    video: Option<VideoTrack>,
    /// Video keyframe fragments passed so far.
    keyframes: u64,
    /// New video configurations (`avcC` payloads), each for the keyframe
    /// fragment of this index (counted from 0) and after.
    configs: VecDeque<(u64, Bytes)>,
    /// Headers made while pushing, each with the number of chunks that
    /// were out before it.
    pub(super) marks: Vec<(usize, Bytes)>,
}

impl Default for Mp4 {
    fn default() -> Self {
        Mp4 {
            pending: Vec::new(),
            step: Step::Head,
            lost: false,
            in_header: true,
            pre: Vec::new(),
            moov: None,
            header: None,
            video: None,
            keyframes: 0,
            configs: VecDeque::new(),
            marks: Vec::new(),
        }
    }
}

#[derive(Clone, Copy)]
enum Step {
    /// At a box header.
    Head,
    /// Gathering a whole box of this size in `pending`.
    Hold(usize),
    /// Passing on this many more bytes of the current box; None: to the end.
    Pass(Option<u64>),
}

/// What to do at a box header.
enum Open {
    More,
    /// Not a box: drop a byte and look again.
    Skip,
    Hold(usize),
    /// Pass the header (this many bytes) and then the body as it comes.
    Pass(usize, Option<u64>),
}

#[derive(Clone, Copy)]
struct VideoTrack {
    id: u32,
    /// `trex` default_sample_flags, used when the fragment sets none.
    trex_flags: u32,
}

impl Mp4 {
    pub(super) fn push(&mut self, input: &Bytes, out: &mut Vec<Chunk>) {
        let mut pos = 0;
        while pos < input.len() {
            let rest = &input[pos..];
            match self.step {
                Step::Pass(left) => {
                    let n = left.map_or(rest.len(), |l| l.min(rest.len() as u64) as usize);
                    emit(out, input.slice(pos..pos + n), false);
                    pos += n;
                    self.step = match left {
                        Some(l) if l > n as u64 => Step::Pass(Some(l - n as u64)),
                        Some(_) => Step::Head,
                        None => Step::Pass(None),
                    };
                }
                Step::Hold(size) => {
                    let n = (size - self.pending.len()).min(rest.len());
                    self.pending.extend_from_slice(&rest[..n]);
                    pos += n;
                    self.finish_pending(size, out);
                }
                Step::Head if self.pending.is_empty() => match self.open(rest) {
                    Open::More => {
                        self.pending.extend_from_slice(rest);
                        pos = input.len();
                    }
                    Open::Skip => {
                        self.lost = true;
                        pos += 1;
                    }
                    Open::Hold(size) if rest.len() >= size => {
                        self.finish(input.slice(pos..pos + size), out);
                        pos += size;
                    }
                    Open::Hold(size) => {
                        self.pending.extend_from_slice(rest);
                        self.step = Step::Hold(size);
                        pos = input.len();
                    }
                    Open::Pass(hdr, left) => {
                        self.lost = false;
                        emit(out, input.slice(pos..pos + hdr), false);
                        pos += hdr;
                        self.step = pass(left);
                    }
                },
                Step::Head => {
                    // A header split over pushes: top it up to 8 (or 16) bytes.
                    let want: usize = if be32(&self.pending, 0) == Some(1) {
                        16
                    } else {
                        8
                    };
                    let n = want.saturating_sub(self.pending.len()).min(rest.len());
                    self.pending.extend_from_slice(&rest[..n]);
                    pos += n;
                    match self.open(&self.pending) {
                        Open::More => {}
                        Open::Skip => {
                            // Look again from the next byte, as fresh input.
                            self.lost = true;
                            let again = Bytes::copy_from_slice(&self.pending[1..]);
                            self.pending.clear();
                            self.push(&again, out);
                        }
                        Open::Hold(size) => {
                            self.step = Step::Hold(size);
                            self.finish_pending(size, out);
                        }
                        Open::Pass(_, left) => {
                            self.lost = false;
                            emit(out, Bytes::from(std::mem::take(&mut self.pending)), false);
                            self.step = pass(left);
                        }
                    }
                }
            }
        }
    }

    fn open(&self, b: &[u8]) -> Open {
        let (Some(size32), Some(typ)) = (be32(b, 0), b.get(4..8)) else {
            return Open::More;
        };
        let typ = [typ[0], typ[1], typ[2], typ[3]];
        if !typ.iter().all(|c| c.is_ascii_alphanumeric() || *c == b' ') {
            return Open::Skip;
        }
        if self.lost && !KNOWN.contains(&&typ) {
            return Open::Skip;
        }
        let (hdr, size) = match size32 {
            0 => (8, None),
            1 => match be64(b, 8) {
                Some(s) => (16, Some(s)),
                None => return Open::More,
            },
            s => (8, Some(u64::from(s))),
        };
        if size.is_some_and(|s| s < hdr as u64) {
            return Open::Skip;
        }
        if self.in_header || matches!(&typ, b"ftyp" | b"moov" | b"moof") {
            match size {
                Some(s) if s <= MAX_HELD => Open::Hold(s as usize),
                _ => Open::Skip,
            }
        } else {
            Open::Pass(hdr, size.map(|s| s - hdr as u64))
        }
    }

    fn finish_pending(&mut self, size: usize, out: &mut Vec<Chunk>) {
        if self.pending.len() == size {
            self.step = Step::Head;
            let b = Bytes::from(std::mem::take(&mut self.pending));
            self.finish(b, out);
        }
    }

    /// A whole held box.
    fn finish(&mut self, b: Bytes, out: &mut Vec<Chunk>) {
        self.lost = false;
        let hdr = if be32(&b, 0) == Some(1) { 16 } else { 8 };
        match &b[4..8] {
            b"moof" => {
                self.in_header = false;
                let keyframe = match self.video {
                    Some(v) => {
                        let key = starts_on_sync(&b[hdr..], v);
                        if key {
                            self.keyframe(v, out.len());
                        }
                        key
                    }
                    None => true,
                };
                emit(out, b, keyframe);
            }
            b"moov" => {
                self.video = video_track(&b[hdr..]);
                self.moov = Some(b);
                self.rebuild_header(out.len());
            }
            b"ftyp" if !self.in_header => {
                // A new presentation: its header builds up until its `moov`.
                self.in_header = true;
                self.pre = b.to_vec();
                self.moov = None;
            }
            // Other header boxes, up to a bound: a stream that never
            // reaches a `moof` must not grow the header without end.
            _ if self.pre.len() + b.len() <= MAX_HELD as usize => {
                self.pre.extend_from_slice(&b);
                self.rebuild_header(out.len());
            }
            _ => {}
        }
    }

    fn rebuild_header(&mut self, at: usize) {
        if let Some(moov) = &self.moov {
            let header = Bytes::from([&self.pre[..], &moov[..]].concat());
            self.marks.push((at, header.clone()));
            self.header = Some(header);
        }
    }

    /// The video configuration changes from keyframe fragment `at` (its
    /// index among the video keyframe fragments, from 0): from there on
    /// the header carries `avcc`.
    pub(super) fn set_video_config(&mut self, at: u64, avcc: Bytes) {
        self.configs.push_back((at, avcc));
    }

    /// A video keyframe fragment is about to go out as chunk `at`: a new
    /// configuration due here goes into the header first.
    fn keyframe(&mut self, video: VideoTrack, at: usize) {
        let index = self.keyframes;
        self.keyframes += 1;
        let mut due = None;
        while self.configs.front().is_some_and(|(k, _)| *k <= index) {
            due = self.configs.pop_front();
        }
        let (Some((_, avcc)), Some(moov)) = (due, &self.moov) else {
            return;
        };
        if let Some(moov) = init::with_avcc(moov, video.id, &avcc) {
            self.moov = Some(Bytes::from(moov));
            self.rebuild_header(at);
        }
    }
}

fn pass(left: Option<u64>) -> Step {
    match left {
        Some(0) => Step::Head,
        l => Step::Pass(l),
    }
}

/// The boxes in `body` as (type, payload); stops at the first malformed one.
fn boxes(mut body: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    std::iter::from_fn(move || {
        let (hdr, size) = match be32(body, 0)? {
            0 => (8, body.len() as u64),
            1 => (16, be64(body, 8)?),
            s => (8, u64::from(s)),
        };
        if size < hdr || size > body.len() as u64 {
            return None;
        }
        let (this, rest) = body.split_at(size as usize);
        body = rest;
        Some((&this[4..8], &this[hdr as usize..]))
    })
}

fn child<'a>(body: &'a [u8], typ: &[u8; 4]) -> Option<&'a [u8]> {
    boxes(body).find(|(t, _)| t == typ).map(|(_, b)| b)
}

/// The first track whose handler is `vide`, from a `moov` payload.
fn video_track(moov: &[u8]) -> Option<VideoTrack> {
    let id = boxes(moov)
        .filter(|(t, _)| t == b"trak")
        .find_map(|(_, trak)| {
            let hdlr = child(child(trak, b"mdia")?, b"hdlr")?;
            if hdlr.get(8..12)? != b"vide" {
                return None;
            }
            let tkhd = child(trak, b"tkhd")?;
            be32(tkhd, if *tkhd.first()? == 1 { 20 } else { 12 })
        })?;
    let trex_flags = child(moov, b"mvex")
        .and_then(|mvex| {
            boxes(mvex)
                .filter(|(t, _)| t == b"trex")
                .find(|(_, trex)| be32(trex, 4) == Some(id))
        })
        .and_then(|(_, trex)| be32(trex, 20))
        .unwrap_or(0);
    Some(VideoTrack { id, trex_flags })
}

/// Whether a `moof` payload has a fragment of the video track that starts on
/// a sync sample (`sample_is_non_sync_sample` clear).
fn starts_on_sync(moof: &[u8], video: VideoTrack) -> bool {
    boxes(moof)
        .filter(|(t, _)| t == b"traf")
        .any(|(_, traf)| first_sample_flags(traf, video).is_some_and(|f| f & 0x1_0000 == 0))
}

fn first_sample_flags(traf: &[u8], video: VideoTrack) -> Option<u32> {
    let tfhd = child(traf, b"tfhd")?;
    if be32(tfhd, 4)? != video.id {
        return None;
    }
    let tf = be32(tfhd, 0)?;
    let skip = |bit: u32, n: usize| if tf & bit != 0 { n } else { 0 };
    // base-data-offset, sample-description-index, duration, size.
    let at = 8 + skip(0x01, 8) + skip(0x02, 4) + skip(0x08, 4) + skip(0x10, 4);
    let default = if tf & 0x20 != 0 {
        be32(tfhd, at)?
    } else {
        video.trex_flags
    };
    let (_, trun) = boxes(traf)
        .filter(|(t, _)| t == b"trun")
        .find(|(_, trun)| be32(trun, 4).is_some_and(|n| n > 0))?;
    let rf = be32(trun, 0)?;
    let at = 8 + if rf & 0x01 != 0 { 4 } else { 0 };
    if rf & 0x04 != 0 {
        be32(trun, at)
    } else if rf & 0x400 != 0 {
        let sample = at + if rf & 0x100 != 0 { 4 } else { 0 } + if rf & 0x200 != 0 { 4 } else { 0 };
        be32(trun, sample)
    } else {
        Some(default)
    }
}
