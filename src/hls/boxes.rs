//! What the segmenter reads of the media it cuts: fMP4 `moov` (each
//! track's id, handler, timescale; the video's size and avcC profile and
//! level; whether there is AAC), `moof` (each track's `tfdt`), and MPEG-TS
//! PES timestamps. Pure parsing of bytes sluice's own muxers wrote; bad
//! input gives `None`, never a panic.

/// One track of an fMP4 init segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Track {
    pub id: u32,
    pub video: bool,
    pub timescale: u32,
}

/// What an fMP4 init segment (`ftyp`+`moov`) says about its media.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InitInfo {
    pub tracks: Vec<Track>,
    /// Video width and height (from `tkhd`).
    pub size: Option<(u32, u32)>,
    /// RFC 6381 codec strings: `avc1.PPCCLL`, `mp4a.40.2`.
    pub codecs: Vec<String>,
}

impl InitInfo {
    /// The track timing is read from: video if there is one.
    pub fn clock(&self) -> Option<Track> {
        (self.tracks.iter().find(|t| t.video))
            .or(self.tracks.first())
            .copied()
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from(be32(b, at)?) << 32 | u64::from(be32(b, at + 4)?))
}

/// The boxes directly inside `b`: (type, payload).
pub fn boxes(b: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let size = be32(b, pos)? as usize;
        let typ = b.get(pos + 4..pos + 8)?;
        let (hdr, size) = match size {
            1 => (16, usize::try_from(be64(b, pos + 8)?).ok()?),
            0 => (8, b.len() - pos),
            s => (8, s),
        };
        if size < hdr {
            return None;
        }
        let body = b.get(pos + hdr..pos.checked_add(size)?)?;
        pos += size;
        Some((typ, body))
    })
}

fn child<'a>(b: &'a [u8], typ: &[u8]) -> Option<&'a [u8]> {
    boxes(b).find(|(t, _)| *t == typ).map(|(_, body)| body)
}

/// Reads an init segment (`ftyp` + `moov`).
pub fn parse_init(init: &[u8]) -> Option<InitInfo> {
    let moov = child(init, b"moov")?;
    let mut info = InitInfo::default();
    for (typ, trak) in boxes(moov) {
        if typ != b"trak" {
            continue;
        }
        let tkhd = child(trak, b"tkhd")?;
        let v1 = *tkhd.first()? == 1;
        let id = be32(tkhd, if v1 { 20 } else { 12 })?;
        let mdia = child(trak, b"mdia")?;
        let mdhd = child(mdia, b"mdhd")?;
        let timescale = be32(mdhd, if *mdhd.first()? == 1 { 20 } else { 12 })?;
        let hdlr = child(mdia, b"hdlr")?;
        let handler = hdlr.get(8..12)?;
        let video = handler == b"vide";
        if handler != b"vide" && handler != b"soun" {
            continue;
        }
        if video {
            let at = tkhd.len().checked_sub(8)?;
            info.size = Some((be32(tkhd, at)? >> 16, be32(tkhd, at + 4)? >> 16));
        }
        let stsd = child(mdia, b"minf")
            .and_then(|m| child(m, b"stbl"))
            .and_then(|s| child(s, b"stsd"));
        if let Some(codec) = stsd.and_then(|s| sample_codec(s, video)) {
            info.codecs.push(codec);
        }
        info.tracks.push(Track {
            id,
            video,
            timescale,
        });
    }
    (!info.tracks.is_empty()).then_some(info)
}

/// The RFC 6381 string of the first sample entry of an `stsd`.
fn sample_codec(stsd: &[u8], video: bool) -> Option<String> {
    let (typ, entry) = boxes(stsd.get(8..)?).next()?;
    match typ {
        b"avc1" | b"avc3" if video => {
            // VisualSampleEntry: 78 bytes before its child boxes.
            let avcc = child(entry.get(78..)?, b"avcC")?;
            Some(format!(
                "{}.{:02X}{:02X}{:02X}",
                String::from_utf8_lossy(typ),
                avcc.get(1)?,
                avcc.get(2)?,
                avcc.get(3)?
            ))
        }
        b"mp4a" => Some("mp4a.40.2".to_string()),
        _ => None,
    }
}

/// The `tfdt` decode time of `track` in a whole `moof` box (with header).
pub fn moof_time(moof: &[u8], track: u32) -> Option<u64> {
    let body = moof.get(8..)?;
    for (typ, traf) in boxes(body) {
        if typ != b"traf" {
            continue;
        }
        let tfhd = child(traf, b"tfhd")?;
        if be32(tfhd, 4)? != track {
            continue;
        }
        let tfdt = child(traf, b"tfdt")?;
        return match *tfdt.first()? {
            1 => be64(tfdt, 4),
            _ => be32(tfdt, 4).map(u64::from),
        };
    }
    None
}

/// Whether `data` is exactly one whole `moof` box.
pub fn is_moof(data: &[u8]) -> bool {
    data.get(4..8) == Some(b"moof") && be32(data, 0).is_some_and(|s| s as usize == data.len())
}

/// The first PES presentation time (90 kHz) in whole 188-byte TS packets,
/// and the PID carrying it.
pub fn ts_first_pts(data: &[u8]) -> Option<(u16, u64)> {
    for pkt in data.chunks_exact(188) {
        if pkt[0] != 0x47 || pkt[1] & 0x40 == 0 {
            continue;
        }
        let pid = u16::from_be_bytes([pkt[1] & 0x1f, pkt[2]]);
        if pid < 0x20 {
            continue;
        }
        if let Some(pts) = pes_pts(pkt) {
            return Some((pid, pts));
        }
    }
    None
}

/// The PES PTS of a packet that starts a PES packet.
fn pes_pts(pkt: &[u8]) -> Option<u64> {
    let mut at = 4;
    if pkt[3] & 0x20 != 0 {
        at += 1 + usize::from(*pkt.get(4)?);
    }
    let pes = pkt.get(at..)?;
    if pes.get(..3)? != [0, 0, 1] || pes.get(7)? & 0x80 == 0 {
        return None;
    }
    let p = pes.get(9..14)?;
    Some(
        (u64::from(p[0] >> 1) & 0x07) << 30
            | u64::from(p[1]) << 22
            | (u64::from(p[2]) >> 1) << 15
            | u64::from(p[3]) << 7
            | u64::from(p[4]) >> 1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bx(typ: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(typ);
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn moof_time_reads_the_tracks_tfdt() {
        let mut tfhd = vec![0, 0, 0, 0];
        tfhd.extend_from_slice(&2u32.to_be_bytes());
        let mut tfdt = vec![1, 0, 0, 0];
        tfdt.extend_from_slice(&123_456u64.to_be_bytes());
        let traf = bx(b"traf", &[bx(b"tfhd", &tfhd), bx(b"tfdt", &tfdt)].concat());
        let moof = bx(b"moof", &[bx(b"mfhd", &[0; 8]), traf].concat());
        assert!(is_moof(&moof));
        assert_eq!(moof_time(&moof, 2), Some(123_456));
        assert_eq!(moof_time(&moof, 1), None);
        assert!(!is_moof(&moof[..moof.len() - 1]));
    }

    #[test]
    fn pes_pts_is_decoded() {
        let mut pkt = vec![0x47, 0x41, 0x00, 0x10, 0, 0, 1, 0xe0, 0, 0, 0x80, 0x80, 5];
        // PTS 900000 = 0x0DBBA0
        let pts: u64 = 900_000;
        pkt.extend_from_slice(&[
            0x21 | (((pts >> 30) & 7) << 1) as u8,
            (pts >> 22) as u8,
            (((pts >> 15) & 0x7f) << 1) as u8 | 1,
            (pts >> 7) as u8,
            ((pts & 0x7f) << 1) as u8 | 1,
        ]);
        pkt.resize(188, 0xff);
        assert_eq!(ts_first_pts(&pkt), Some((0x100, 900_000)));
        assert_eq!(ts_first_pts(&pkt[..100]), None);
    }
}
