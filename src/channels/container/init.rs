//! fMP4 init segments: the H.264 configuration (`avcC`) of a `moov`, read
//! and replaced. When a rendition's encoder is replaced mid-stream the
//! muxer keeps its `moov`; the new encoder's configuration is written into
//! a copy of it, so viewers can be handed a header that matches the media.

use super::{be32, be64};

/// A box at the start of `b`: (type, header length, whole length).
fn head(b: &[u8]) -> Option<([u8; 4], usize, usize)> {
    let t = b.get(4..8)?;
    let (hdr, size) = match be32(b, 0)? {
        0 => (8, b.len() as u64),
        1 => (16, be64(b, 8)?),
        s => (8, u64::from(s)),
    };
    if size < hdr as u64 || size > b.len() as u64 {
        return None;
    }
    Some(([t[0], t[1], t[2], t[3]], hdr, size as usize))
}

/// Every box in `body`, whole; stops at the first malformed one.
fn whole_boxes(mut body: &[u8]) -> impl Iterator<Item = ([u8; 4], usize, &[u8])> {
    std::iter::from_fn(move || {
        let (typ, hdr, size) = head(body)?;
        let (this, rest) = body.split_at(size);
        body = rest;
        Some((typ, hdr, this))
    })
}

/// A box of `typ` around `payload`.
fn make_box(typ: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(payload.len() + 16);
    match u32::try_from(payload.len() + 8) {
        Ok(size) => b.extend_from_slice(&size.to_be_bytes()),
        Err(_) => {
            b.extend_from_slice(&1u32.to_be_bytes());
            b.extend_from_slice(typ);
            b.extend_from_slice(&(payload.len() as u64 + 16).to_be_bytes());
            b.extend_from_slice(payload);
            return b;
        }
    }
    b.extend_from_slice(typ);
    b.extend_from_slice(payload);
    b
}

/// One level of the path to `avcC`: the box types that match, and how many
/// payload bytes come before its children (a full box's version and flags,
/// `stsd`'s entry count, a visual sample entry's fields).
struct Level(&'static [&'static [u8; 4]], usize);

const TO_AVCC: [Level; 6] = [
    Level(&[b"mdia"], 0),
    Level(&[b"minf"], 0),
    Level(&[b"stbl"], 0),
    Level(&[b"stsd"], 8),
    Level(&[b"avc1", b"avc3"], 78),
    Level(&[b"avcC"], 0),
];

/// `body` (a box payload's children) with the first box on `path` replaced
/// by `payload` at its end; None if the path is not there.
fn replace(body: &[u8], path: &[Level], payload: &[u8]) -> Option<Vec<u8>> {
    let (level, rest) = path.split_first()?;
    let mut out = Vec::with_capacity(body.len() + payload.len());
    let mut done = false;
    for (typ, hdr, whole) in whole_boxes(body) {
        if done || !level.0.contains(&&typ) {
            out.extend_from_slice(whole);
            continue;
        }
        let inner = &whole[hdr..];
        let new_payload = if rest.is_empty() {
            payload.to_vec()
        } else {
            let (pre, children) = inner.split_at(level.1.min(inner.len()));
            let mut p = pre.to_vec();
            p.extend(replace(children, rest, payload)?);
            p
        };
        out.extend(make_box(&typ, &new_payload));
        done = true;
    }
    done.then_some(out)
}

/// The track_ID of a `trak` payload.
fn track_id(trak: &[u8]) -> Option<u32> {
    let (_, hdr, tkhd) = whole_boxes(trak).find(|(t, _, _)| t == b"tkhd")?;
    let tkhd = &tkhd[hdr..];
    be32(tkhd, if *tkhd.first()? == 1 { 20 } else { 12 })
}

/// A copy of the whole `moov` box with the `avcC` of track `track` set to
/// `avcc` (an AVCDecoderConfigurationRecord, as in H.264 caps'
/// `codec_data`); None if that track has no `avcC`.
pub(super) fn with_avcc(moov: &[u8], track: u32, avcc: &[u8]) -> Option<Vec<u8>> {
    let (typ, hdr, size) = head(moov)?;
    if &typ != b"moov" {
        return None;
    }
    let mut payload = Vec::with_capacity(size + avcc.len());
    let mut done = false;
    for (typ, thdr, whole) in whole_boxes(&moov[hdr..size]) {
        if !done && &typ == b"trak" && track_id(&whole[thdr..]) == Some(track) {
            payload.extend(make_box(&typ, &replace(&whole[thdr..], &TO_AVCC, avcc)?));
            done = true;
        } else {
            payload.extend_from_slice(whole);
        }
    }
    done.then(|| make_box(b"moov", &payload))
}

/// The `avcC` payload of the first video track of an init segment
/// (`ftyp` + `moov`, or a `moov` alone).
pub fn video_avcc(init: &[u8]) -> Option<&[u8]> {
    let (_, hdr, moov) = whole_boxes(init).find(|(t, _, _)| t == b"moov")?;
    whole_boxes(&moov[hdr..])
        .filter(|(t, _, _)| t == b"trak")
        .find_map(|(_, hdr, trak)| {
            let mut body = &trak[hdr..];
            for level in &TO_AVCC {
                let (_, hdr, b) = whole_boxes(body).find(|(t, _, _)| level.0.contains(&t))?;
                body = b.get(hdr + level.1..)?;
            }
            Some(body)
        })
}
