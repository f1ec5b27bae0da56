//! Hand-built fMP4 boxes.

use super::super::*;
use super::{concat, feed, SPLITS};

fn bx(typ: &[u8; 4], parts: &[&[u8]]) -> Vec<u8> {
    let body = parts.concat();
    let mut b = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    b.extend_from_slice(typ);
    b.extend(body);
    b
}

fn full(typ: &[u8; 4], version: u8, flags: u32, parts: &[&[u8]]) -> Vec<u8> {
    let vf = (u32::from(version) << 24 | flags).to_be_bytes();
    bx(typ, &[&vf, &parts.concat()])
}

fn u32s(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_be_bytes()).collect()
}

const SYNC_FLAGS: u32 = 0x0200_0000;
const NON_SYNC: u32 = 0x0101_0000;

fn ftyp() -> Vec<u8> {
    bx(b"ftyp", &[b"iso6", &[0, 0, 2, 0], b"iso6mp41"])
}

/// A `moov` with these (track_ID, handler) tracks and `trex` flags for each.
fn moov(tracks: &[(u32, &[u8; 4])], trex_flags: u32) -> Vec<u8> {
    let mut parts = vec![full(b"mvhd", 0, 0, &[&[0; 96]])];
    let mut mvex = Vec::new();
    for (id, handler) in tracks {
        // tkhd version 1: 64-bit times before track_ID.
        let tkhd = full(b"tkhd", 1, 7, &[&[0; 16], &u32s(&[*id]), &[0; 72]]);
        let hdlr = full(b"hdlr", 0, 0, &[&[0; 4], *handler, &[0; 13]]);
        parts.push(bx(b"trak", &[&tkhd, &bx(b"mdia", &[&hdlr])]));
        mvex.extend(full(b"trex", 0, 0, &[&u32s(&[*id, 1, 0, 0, trex_flags])]));
    }
    parts.push(bx(b"mvex", &[&mvex]));
    let parts: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
    bx(b"moov", &parts)
}

fn moof(trafs: &[Vec<u8>]) -> Vec<u8> {
    bx(
        b"moof",
        &[&full(b"mfhd", 0, 0, &[&u32s(&[1])]), &trafs.concat()],
    )
}

/// A `traf`; `default` goes in tfhd default_sample_flags.
fn traf(id: u32, default: Option<u32>, trun: Vec<u8>) -> Vec<u8> {
    let tfhd = match default {
        // default-base-is-moof, duration and default flags.
        Some(f) => full(b"tfhd", 0, 0x02_0028, &[&u32s(&[id, 1024, f])]),
        None => full(b"tfhd", 0, 0x02_0000, &[&u32s(&[id])]),
    };
    bx(b"traf", &[&tfhd, &trun])
}

/// trun with data-offset and first-sample-flags.
fn trun_first(flags: u32) -> Vec<u8> {
    full(b"trun", 0, 0x205, &[&u32s(&[2, 100, flags, 10, 20])])
}

/// trun with data-offset and per-sample duration, size and flags.
fn trun_each(flags: [u32; 2]) -> Vec<u8> {
    full(
        b"trun",
        0,
        0x701,
        &[&u32s(&[2, 100, 33, 10, flags[0], 33, 20, flags[1]])],
    )
}

/// trun with data-offset and sizes only: flags come from tfhd or trex.
fn trun_plain() -> Vec<u8> {
    full(b"trun", 0, 0x201, &[&u32s(&[1, 100, 10])])
}

fn mdat(n: usize) -> Vec<u8> {
    bx(b"mdat", &[&vec![0xab; n]])
}

/// mdat with a 64-bit size.
fn mdat_large(n: usize) -> Vec<u8> {
    let mut b = u32s(&[1]);
    b.extend_from_slice(b"mdat");
    b.extend(((n + 16) as u64).to_be_bytes());
    b.extend(vec![0xcd; n]);
    b
}

pub(super) struct Mp4Stream {
    pub(super) bytes: Vec<u8>,
    header: Vec<u8>,
    /// Each moof and whether it is a keyframe.
    moofs: Vec<(Vec<u8>, bool)>,
}

/// ftyp, moov (video 1, audio 2) and fragments that start on sync samples
/// in every way flags can be given, and some that do not.
pub(super) fn av_stream() -> Mp4Stream {
    let header = [ftyp(), moov(&[(1, b"vide"), (2, b"soun")], NON_SYNC)].concat();
    let moofs = vec![
        (moof(&[traf(1, None, trun_first(SYNC_FLAGS))]), true),
        (moof(&[traf(2, None, trun_first(SYNC_FLAGS))]), false),
        (moof(&[traf(1, None, trun_first(NON_SYNC))]), false),
        (
            moof(&[traf(1, Some(NON_SYNC), trun_each([0, NON_SYNC]))]),
            true,
        ),
        (
            moof(&[traf(1, Some(SYNC_FLAGS), trun_each([NON_SYNC, 0]))]),
            false,
        ),
        (moof(&[traf(1, Some(SYNC_FLAGS), trun_plain())]), true),
        (moof(&[traf(1, Some(NON_SYNC), trun_plain())]), false),
        // No tfhd default: trex says non-sync.
        (moof(&[traf(1, None, trun_plain())]), false),
        (
            moof(&[traf(2, None, trun_plain()), traf(1, None, trun_first(0))]),
            true,
        ),
    ];
    let mut bytes = header.clone();
    for (i, (m, _)) in moofs.iter().enumerate() {
        bytes.extend(m);
        bytes.extend(if i % 2 == 0 {
            mdat(300 + i)
        } else {
            mdat_large(40)
        });
    }
    Mp4Stream {
        bytes,
        header,
        moofs,
    }
}

fn check_mp4(stream: &Mp4Stream, splits: &[usize]) {
    let mut s = Splitter::new(Format::Mp4);
    let chunks = feed(&mut s, &stream.bytes, splits);
    assert_eq!(
        s.header().as_deref(),
        Some(&stream.header[..]),
        "{splits:?}"
    );
    assert_eq!(concat(&chunks), stream.bytes[stream.header.len()..]);
    for (moof, key) in &stream.moofs {
        let found: Vec<_> = chunks.iter().filter(|c| c.data[..] == moof[..]).collect();
        assert_eq!(found.len(), 1, "each moof is one whole chunk ({splits:?})");
        assert_eq!(found[0].keyframe, *key, "{splits:?}");
    }
    let keys = chunks.iter().filter(|c| c.keyframe).count();
    assert_eq!(keys, stream.moofs.iter().filter(|m| m.1).count());
}

#[test]
fn mp4_boxes_split_across_pushes_and_shared_in_one() {
    let stream = av_stream();
    for splits in SPLITS {
        check_mp4(&stream, splits);
    }
}

#[test]
fn mp4_media_bytes_pass_on_before_the_box_ends() {
    let stream = av_stream();
    let mut s = Splitter::new(Format::Mp4);
    let mut out = Vec::new();
    // The header, the first moof and half the first mdat.
    let first_moof = stream.moofs[0].0.len();
    let half = stream.header.len() + first_moof + 150;
    s.push(&stream.bytes[..half], &mut out);
    assert_eq!(concat(&out).len(), first_moof + 150);
    assert!(out[0].keyframe && !out[1..].iter().any(|c| c.keyframe));
}

#[test]
fn mp4_without_video_track_every_moof_is_a_keyframe() {
    let header = [ftyp(), moov(&[(2, b"soun")], NON_SYNC)].concat();
    let mut bytes = header.clone();
    for _ in 0..4 {
        bytes.extend(moof(&[traf(2, None, trun_first(NON_SYNC))]));
        bytes.extend(mdat(50));
    }
    for splits in SPLITS {
        let mut s = Splitter::new(Format::Mp4);
        let chunks = feed(&mut s, &bytes, splits);
        assert_eq!(s.header().as_deref(), Some(&header[..]));
        assert_eq!(chunks.iter().filter(|c| c.keyframe).count(), 4);
        assert_eq!(concat(&chunks), bytes[header.len()..]);
    }
}

#[test]
fn mp4_second_moov_replaces_the_header() {
    let stream = av_stream();
    let audio_moov = moov(&[(2, b"soun")], 0);
    let later = moof(&[traf(1, None, trun_first(NON_SYNC))]);
    let bytes = [stream.bytes.clone(), audio_moov.clone(), later.clone()].concat();
    let mut s = Splitter::new(Format::Mp4);
    let chunks = feed(&mut s, &bytes, &[61]);
    assert_eq!(s.header().unwrap()[..], [ftyp(), audio_moov].concat()[..]);
    // No video track any more: the moof is a place to start.
    let last = chunks.last().unwrap();
    assert_eq!(last.data[..], later[..]);
    assert!(last.keyframe);
}

#[test]
fn mp4_resyncs_after_garbage() {
    let stream = av_stream();
    let bytes = [vec![0xff; 37], stream.bytes.clone()].concat();
    for splits in SPLITS {
        let mut s = Splitter::new(Format::Mp4);
        let chunks = feed(&mut s, &bytes, splits);
        assert_eq!(s.header().as_deref(), Some(&stream.header[..]));
        assert_eq!(concat(&chunks), stream.bytes[stream.header.len()..]);
    }
}

#[test]
fn mp4_box_of_size_zero_runs_to_the_end() {
    let stream = av_stream();
    let open_ended = [&[0, 0, 0, 0][..], b"mdat", &[0x11; 900]].concat();
    let bytes = [&stream.bytes[..], &open_ended].concat();
    for splits in SPLITS {
        let mut s = Splitter::new(Format::Mp4);
        let chunks = feed(&mut s, &bytes, splits);
        assert_eq!(concat(&chunks), bytes[stream.header.len()..], "{splits:?}");
        assert!(!chunks.last().unwrap().keyframe);
    }
}

/// A `moov` whose video track 1 has a sample description with this
/// `avcC` payload, and an audio track 2.
fn moov_with_avcc(avcc: &[u8]) -> Vec<u8> {
    let avc1 = bx(
        b"avc1",
        &[&[0; 78], &bx(b"avcC", &[avcc]), &bx(b"pasp", &[&[0; 8]])],
    );
    let stsd = full(b"stsd", 0, 0, &[&u32s(&[1]), &avc1]);
    let stbl = bx(b"stbl", &[&stsd, &full(b"stts", 0, 0, &[&u32s(&[0])])]);
    let minf = bx(b"minf", &[&full(b"vmhd", 0, 1, &[&[0; 8]]), &stbl]);
    let trak = |id: u32, handler: &[u8; 4], minf: &[u8]| {
        let tkhd = full(b"tkhd", 0, 7, &[&[0; 8], &u32s(&[id]), &[0; 68]]);
        let hdlr = full(b"hdlr", 0, 0, &[&[0; 4], handler, &[0; 13]]);
        bx(b"trak", &[&tkhd, &bx(b"mdia", &[&hdlr, minf])])
    };
    let mvex = bx(
        b"mvex",
        &[
            &full(b"trex", 0, 0, &[&u32s(&[1, 1, 0, 0, NON_SYNC])]),
            &full(b"trex", 0, 0, &[&u32s(&[2, 1, 0, 0, 0])]),
        ],
    );
    bx(
        b"moov",
        &[
            &full(b"mvhd", 0, 0, &[&[0; 96]]),
            &trak(2, b"soun", &bx(b"minf", &[])),
            &trak(1, b"vide", &minf),
            &mvex,
        ],
    )
}

fn parts_of(s: &mut Splitter, bytes: &[u8], splits: &[usize]) -> Vec<Part> {
    let mut out = Vec::new();
    let mut pos = 0;
    for size in splits.iter().cycle() {
        if pos >= bytes.len() {
            break;
        }
        let end = (pos + size).min(bytes.len());
        s.push_parts(&bytes[pos..end], &mut out);
        pos = end;
    }
    out
}

#[test]
fn mp4_a_new_video_config_goes_out_as_a_header_right_before_its_keyframe() {
    let (old, new) = (
        b"\x01\x42\xc0\x1eOLD".to_vec(),
        b"\x01\x4d\x40\x1fNEWER".to_vec(),
    );
    let header = [ftyp(), moov_with_avcc(&old)].concat();
    assert_eq!(video_avcc(&header), Some(&old[..]));
    let key = || moof(&[traf(1, None, trun_first(SYNC_FLAGS))]);
    let fragments = [
        key(),
        moof(&[traf(2, None, trun_first(SYNC_FLAGS))]),
        moof(&[traf(1, None, trun_first(NON_SYNC))]),
        key(),
        moof(&[traf(1, None, trun_first(NON_SYNC))]),
        key(),
    ];
    let mut bytes = header.clone();
    for f in &fragments {
        bytes.extend(f);
        bytes.extend(mdat(40));
    }
    for splits in SPLITS {
        let mut s = Splitter::new(Format::Mp4);
        // Known before the muxer's output reaches the splitter: from the
        // second video keyframe on.
        s.set_video_config(1, Bytes::from(new.clone()));
        let parts = parts_of(&mut s, &bytes, splits);
        let headers: Vec<(usize, &Bytes)> = (parts.iter().enumerate())
            .filter_map(|(i, p)| match p {
                Part::Header(h) => Some((i, h)),
                Part::Chunk(_) => None,
            })
            .collect();
        assert_eq!(headers.len(), 2, "{splits:?}");
        assert_eq!(headers[0].1[..], header[..]);
        let (at, changed) = headers[1];
        assert_eq!(video_avcc(changed), Some(&new[..]), "{splits:?}");
        assert_eq!(changed.len(), header.len() + new.len() - old.len());
        assert!(changed.starts_with(&ftyp()));
        // Right before the second keyframe fragment, which is whole.
        let keys: Vec<usize> = (parts.iter().enumerate())
            .filter(|(_, p)| matches!(p, Part::Chunk(c) if c.keyframe))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(keys.len(), 3, "{splits:?}");
        assert_eq!(at + 1, keys[1], "{splits:?}");
        let Part::Chunk(c) = &parts[keys[1]] else {
            unreachable!()
        };
        assert_eq!(c.data[..], key()[..]);
        assert_eq!(s.header().as_deref(), Some(&changed[..]));
        // The media bytes are untouched.
        let media: Vec<u8> = (parts.iter())
            .filter_map(|p| match p {
                Part::Chunk(c) => Some(c.data.to_vec()),
                Part::Header(_) => None,
            })
            .flatten()
            .collect();
        assert_eq!(media, bytes[header.len()..]);
    }
}

#[test]
fn mp4_the_same_or_an_unplaceable_video_config_changes_no_header() {
    let avcc = b"\x01\x42\xc0\x1eSAME".to_vec();
    let header = [ftyp(), moov_with_avcc(&avcc)].concat();
    let key = moof(&[traf(1, None, trun_first(SYNC_FLAGS))]);
    let bytes = [header.clone(), key.clone(), mdat(10), key, mdat(10)].concat();
    let mut s = Splitter::new(Format::Mp4);
    s.set_video_config(1, Bytes::from(avcc));
    let parts = parts_of(&mut s, &bytes, &[usize::MAX]);
    assert_eq!(
        parts
            .iter()
            .filter(|p| matches!(p, Part::Header(_)))
            .count(),
        1
    );
    // A video track without an avcC keeps its header.
    let plain = av_stream();
    let mut s = Splitter::new(Format::Mp4);
    s.set_video_config(1, Bytes::from_static(b"\x01NEW"));
    let parts = parts_of(&mut s, &plain.bytes, &[usize::MAX]);
    let headers: Vec<&Part> = parts
        .iter()
        .filter(|p| matches!(p, Part::Header(_)))
        .collect();
    assert!(matches!(headers[..], [Part::Header(h)] if h[..] == plain.header[..]));
}
