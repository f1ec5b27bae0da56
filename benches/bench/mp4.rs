//! A streaming reader of fragmented MP4 as a client receives it: finds
//! where each fragment (`moof` + its `mdat`) is complete and how much video
//! media time and how many video frames the stream has carried so far.
//! It buffers only `ftyp`/`moov`/`moof` boxes; `mdat` payloads are counted
//! and skipped. Both sluice and the ffmpeg baseline are read by this one
//! parser, so their figures are taken the same way.

use std::collections::HashMap;

/// Longest `moov`/`moof` buffered; anything larger is not a sane fMP4 stream.
const MAX_META_BOX: u64 = 16 << 20;

/// A fragment became complete (its `mdat` fully arrived).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fragment {
    /// Video media time carried up to the end of this fragment (s), from
    /// the first video sample of the stream.
    pub media_s: f64,
    /// Video frames carried up to the end of this fragment.
    pub frames: u64,
    /// Byte offset just past this fragment's `mdat`.
    pub end_offset: u64,
}

#[derive(Default)]
struct Track {
    timescale: u32,
    is_video: bool,
    trex_duration: u32,
}

#[derive(Default)]
pub struct Mp4Watch {
    /// Bytes of the box being buffered (header first).
    buf: Vec<u8>,
    /// Payload bytes still to skip in the current non-buffered box.
    skip_left: u64,
    skip_kind: [u8; 4],
    /// Bytes consumed so far.
    pos: u64,
    tracks: HashMap<u32, Track>,
    /// Video samples of the last `moof`, counted when its `mdat` completes:
    /// (decode time start, duration, samples), in the track's timescale.
    pending: Option<(u64, u64, u64)>,
    first_video_dts: Option<u64>,
    video_end_dts: u64,
    frames: u64,
    has_moov: bool,
    error: Option<String>,
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(((be32(b, at)? as u64) << 32) | be32(b, at + 4)? as u64)
}

/// Child boxes of a container payload: (type, payload).
fn children(payload: &[u8]) -> Vec<([u8; 4], &[u8])> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 8 <= payload.len() {
        let size = be32(payload, at).unwrap_or(0) as u64;
        let kind: [u8; 4] = payload[at + 4..at + 8].try_into().unwrap_or(*b"    ");
        let (header, size) = match size {
            1 => (16usize, be64(payload, at + 8).unwrap_or(0)),
            0 => (8usize, (payload.len() - at) as u64),
            s => (8usize, s),
        };
        let end = at as u64 + size;
        if size < header as u64 || end > payload.len() as u64 {
            break;
        }
        out.push((kind, &payload[at + header..end as usize]));
        at = end as usize;
    }
    out
}

fn child<'a>(payload: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    children(payload)
        .into_iter()
        .find(|(k, _)| k == kind)
        .map(|(_, p)| p)
}

impl Mp4Watch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds received bytes; returns the fragments they completed.
    pub fn feed(&mut self, mut data: &[u8]) -> Vec<Fragment> {
        let mut done = Vec::new();
        while !data.is_empty() && self.error.is_none() {
            if self.skip_left > 0 {
                let n = (self.skip_left.min(data.len() as u64)) as usize;
                self.skip_left -= n as u64;
                self.pos += n as u64;
                data = &data[n..];
                if self.skip_left == 0 {
                    let kind = self.skip_kind;
                    self.box_complete(&kind, &[], &mut done);
                }
                continue;
            }
            // Header: 8 bytes, or 16 with a 64-bit size.
            let need_header = if self.buf.len() >= 4 && be32(&self.buf, 0) == Some(1) {
                16
            } else {
                8
            };
            if self.buf.len() < need_header {
                let n = (need_header - self.buf.len()).min(data.len());
                self.buf.extend_from_slice(&data[..n]);
                self.pos += n as u64;
                data = &data[n..];
                continue;
            }
            let size = match be32(&self.buf, 0).unwrap_or(0) {
                1 => be64(&self.buf, 8).unwrap_or(0),
                0 => u64::MAX,
                s => s as u64,
            };
            let kind: [u8; 4] = self.buf[4..8].try_into().expect("4 bytes");
            if size < need_header as u64 {
                self.error = Some(format!("box '{}' has size {size}", show(&kind)));
                break;
            }
            let buffered = matches!(&kind, b"ftyp" | b"moov" | b"moof");
            if !buffered {
                self.skip_kind = kind;
                self.skip_left = size - need_header as u64;
                self.buf.clear();
                if self.skip_left == 0 {
                    self.box_complete(&kind, &[], &mut done);
                }
                continue;
            }
            if size > MAX_META_BOX {
                self.error = Some(format!("box '{}' of {size} bytes", show(&kind)));
                break;
            }
            let want = size as usize - self.buf.len();
            let n = want.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            self.pos += n as u64;
            data = &data[n..];
            if self.buf.len() as u64 == size {
                let whole = std::mem::take(&mut self.buf);
                self.box_complete(&kind, &whole[need_header..], &mut done);
            }
        }
        done
    }

    fn box_complete(&mut self, kind: &[u8; 4], payload: &[u8], done: &mut Vec<Fragment>) {
        match kind {
            b"moov" => {
                self.read_moov(payload);
                self.has_moov = true;
            }
            b"moof" => self.pending = self.read_moof(payload),
            b"mdat" => {
                if let Some((start, dur, samples)) = self.pending.take() {
                    let first = *self.first_video_dts.get_or_insert(start);
                    self.video_end_dts = self.video_end_dts.max(start + dur).max(first);
                    self.frames += samples;
                }
                done.push(Fragment {
                    media_s: self.media_s(),
                    frames: self.frames,
                    end_offset: self.pos,
                });
            }
            _ => {}
        }
    }

    fn read_moov(&mut self, moov: &[u8]) {
        for (k, trak) in children(moov) {
            if &k != b"trak" {
                continue;
            }
            let Some(tkhd) = child(trak, b"tkhd") else {
                continue;
            };
            let id_at = if tkhd.first() == Some(&1) {
                4 + 16
            } else {
                4 + 8
            };
            let Some(id) = be32(tkhd, id_at) else {
                continue;
            };
            let Some(mdia) = child(trak, b"mdia") else {
                continue;
            };
            let timescale = child(mdia, b"mdhd")
                .and_then(|m| be32(m, if m.first() == Some(&1) { 4 + 16 } else { 4 + 8 }))
                .unwrap_or(0);
            let is_video = child(mdia, b"hdlr").and_then(|h| h.get(8..12)) == Some(b"vide");
            let t = self.tracks.entry(id).or_default();
            t.timescale = timescale;
            t.is_video = is_video;
        }
        if let Some(mvex) = child(moov, b"mvex") {
            for (k, trex) in children(mvex) {
                if &k == b"trex" {
                    if let (Some(id), Some(dur)) = (be32(trex, 4), be32(trex, 12)) {
                        self.tracks.entry(id).or_default().trex_duration = dur;
                    }
                }
            }
        }
    }

    /// The video run of a `moof`: (decode time, total duration, samples).
    fn read_moof(&self, moof: &[u8]) -> Option<(u64, u64, u64)> {
        for (k, traf) in children(moof) {
            if &k != b"traf" {
                continue;
            }
            let tfhd = child(traf, b"tfhd")?;
            let flags = be32(tfhd, 0)? & 0xff_ffff;
            let id = be32(tfhd, 4)?;
            let track = self.tracks.get(&id)?;
            if !track.is_video {
                continue;
            }
            let mut at = 8;
            if flags & 0x01 != 0 {
                at += 8;
            }
            if flags & 0x02 != 0 {
                at += 4;
            }
            let default_dur = if flags & 0x08 != 0 {
                be32(tfhd, at)?
            } else {
                track.trex_duration
            };
            let dts = child(traf, b"tfdt").and_then(|t| {
                if t.first() == Some(&1) {
                    be64(t, 4)
                } else {
                    be32(t, 4).map(u64::from)
                }
            })?;
            let (mut dur, mut samples) = (0u64, 0u64);
            for (k, trun) in children(traf) {
                if &k != b"trun" {
                    continue;
                }
                let tflags = be32(trun, 0)? & 0xff_ffff;
                let count = be32(trun, 4)? as u64;
                let mut at = 8;
                if tflags & 0x01 != 0 {
                    at += 4;
                }
                if tflags & 0x04 != 0 {
                    at += 4;
                }
                let per_sample = [0x100, 0x200, 0x400, 0x800]
                    .iter()
                    .filter(|f| tflags & **f != 0)
                    .count()
                    * 4;
                for i in 0..count as usize {
                    dur += if tflags & 0x100 != 0 {
                        be32(trun, at + i * per_sample)? as u64
                    } else {
                        default_dur as u64
                    };
                }
                samples += count;
            }
            return Some((dts, dur, samples));
        }
        None
    }

    /// Video media time carried so far (s).
    pub fn media_s(&self) -> f64 {
        let ts = self
            .tracks
            .values()
            .find(|t| t.is_video)
            .map_or(0, |t| t.timescale);
        match (self.first_video_dts, ts) {
            (Some(first), ts) if ts > 0 => (self.video_end_dts - first) as f64 / ts as f64,
            _ => 0.0,
        }
    }

    pub fn has_moov(&self) -> bool {
        self.has_moov
    }

    /// Why the stream stopped parsing, if it did.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }
}

fn show(kind: &[u8; 4]) -> String {
    String::from_utf8_lossy(kind).into_owned()
}
