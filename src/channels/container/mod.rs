//! Cuts a rendition's muxer output into chunks a viewer may join at.
//!
//! ```text
//! mp4mux | mpegtsmux -> appsink -> Splitter::push -> [Chunk] -> fan-out -> viewers
//!                                   Splitter::header() -> what every viewer gets first
//! ```
//!
//! fMP4: everything before the first `moof` (`ftyp`, `moov`) is the header;
//! each `moof` is one chunk, a keyframe when it starts the video track on a
//! sync sample; `mdat` bytes are passed on as they arrive, without waiting for
//! the box to end. MPEG-TS: 188-byte packets; PAT and PMT are tracked for the
//! header and the video PID; a chunk starts at each video random access point.
//!
//! Pure byte parsing: no GStreamer, no I/O, no locks, no panics on bad input.
//! It knows nothing of viewers or timing; the fan-out decides who gets what.
//! Each push copies its input once into a `Bytes` and chunks are slices of
//! it; only a box or packet split over pushes is gathered in its own buffer.

use bytes::Bytes;

use crate::media::Format;

mod init;
mod mp4;
mod ts;

pub use init::video_avcc;

use mp4::Mp4;
use ts::Ts;

/// One piece of a rendition's container output.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub data: Bytes,
    /// A viewer may start here.
    pub keyframe: bool,
}

/// What a splitter hands on, in stream order.
#[derive(Debug, Clone)]
pub enum Part {
    /// The container header from here on (the first one, or a change).
    Header(Bytes),
    Chunk(Chunk),
}

/// Splits one rendition's container output; one per muxer.
pub struct Splitter {
    inner: Inner,
    /// The header last handed on by [`Splitter::push_parts`].
    handed: Option<Bytes>,
}

enum Inner {
    Mp4(Mp4),
    Ts(Ts),
}

impl Splitter {
    pub fn new(format: Format) -> Self {
        let inner = match format {
            // HLS segments are cut from fMP4.
            Format::Mp4 | Format::Hls => Inner::Mp4(Mp4::default()),
            Format::Ts => Inner::Ts(Ts::default()),
        };
        Splitter {
            inner,
            handed: None,
        }
    }

    /// Feeds one muxer output buffer (in order); appends the chunks it
    /// can hand on now to `out`. Never blocks, never panics on bad input.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Chunk>) {
        self.push_inner(data, out);
        self.take_marks();
    }

    fn push_inner(&mut self, data: &[u8], out: &mut Vec<Chunk>) {
        if data.is_empty() {
            return;
        }
        let input = Bytes::copy_from_slice(data);
        match &mut self.inner {
            Inner::Mp4(m) => m.push(&input, out),
            Inner::Ts(t) => t.push(&input, out),
        }
    }

    fn take_marks(&mut self) -> Vec<(usize, Bytes)> {
        match &mut self.inner {
            Inner::Mp4(m) => std::mem::take(&mut m.marks),
            Inner::Ts(t) => std::mem::take(&mut t.marks),
        }
    }

    /// As [`Splitter::push`], with each header change placed in the
    /// stream where it takes effect (a header equal to the last one handed
    /// on is left out).
    pub fn push_parts(&mut self, data: &[u8], out: &mut Vec<Part>) {
        let mut chunks = Vec::new();
        self.push_inner(data, &mut chunks);
        let mut marks = self.take_marks().into_iter().peekable();
        for (i, chunk) in chunks.into_iter().enumerate() {
            while let Some((_, h)) = marks.next_if(|(at, _)| *at <= i) {
                self.header_part(h, out);
            }
            out.push(Part::Chunk(chunk));
        }
        for (_, h) in marks {
            self.header_part(h, out);
        }
    }

    fn header_part(&mut self, header: Bytes, out: &mut Vec<Part>) {
        let format = match self.inner {
            Inner::Mp4(_) => Format::Mp4,
            Inner::Ts(_) => Format::Ts,
        };
        if self
            .handed
            .as_ref()
            .is_some_and(|h| same_header(format, h, &header))
        {
            return;
        }
        self.handed = Some(header.clone());
        out.push(Part::Header(header));
    }

    /// The muxer's video input changed configuration (a new encoder): the
    /// `avcC` of the header becomes `avcc` from the `at`-th video keyframe
    /// fragment on (counted from 0, as they reach the muxer). fMP4 only.
    pub fn set_video_config(&mut self, at: u64, avcc: Bytes) {
        if let Inner::Mp4(m) = &mut self.inner {
            m.set_video_config(at, avcc);
        }
    }

    /// What every viewer gets first: fMP4 `ftyp`+`moov` bytes; TS the
    /// latest PAT packet followed by the latest PMT packet. None until seen.
    pub fn header(&self) -> Option<Bytes> {
        match &self.inner {
            Inner::Mp4(m) => m.header.clone(),
            Inner::Ts(t) => t.header(),
        }
    }
}

fn emit(out: &mut Vec<Chunk>, data: Bytes, keyframe: bool) {
    if !data.is_empty() {
        out.push(Chunk { data, keyframe });
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from(be32(b, at)?) << 32 | u64::from(be32(b, at + 4)?))
}

/// Whether two container headers say the same: MPEG-TS tables repeat with
/// a new continuity counter each time, which changes nothing for a viewer.
pub fn same_header(format: Format, a: &[u8], b: &[u8]) -> bool {
    match format {
        Format::Mp4 | Format::Hls => a == b,
        Format::Ts => same_tables(a, b),
    }
}

fn same_tables(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).enumerate().all(|(i, (x, y))| {
            if i % 188 == 3 {
                x & 0xf0 == y & 0xf0
            } else {
                x == y
            }
        })
}

#[cfg(test)]
mod tests;
