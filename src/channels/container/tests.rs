//! Hand-built boxes and packets, fed in every kind of split.

use super::ts::crc32_mpeg2;
use super::*;

mod muxers;

/// Feeds `stream` in pieces of the given sizes (cycled); returns the chunks.
fn feed(splitter: &mut Splitter, stream: &[u8], sizes: &[usize]) -> Vec<Chunk> {
    let mut out = Vec::new();
    let mut pos = 0;
    for size in sizes.iter().cycle() {
        if pos >= stream.len() {
            break;
        }
        let end = (pos + size).min(stream.len());
        splitter.push(&stream[pos..end], &mut out);
        pos = end;
    }
    out
}

const SPLITS: [&[usize]; 6] = [&[usize::MAX], &[1], &[3], &[7, 1, 13], &[188], &[500, 2, 9]];

fn concat(chunks: &[Chunk]) -> Vec<u8> {
    chunks.iter().flat_map(|c| c.data.iter().copied()).collect()
}

/// Offsets (in the chunk bytes) where keyframe chunks start.
fn key_offsets(chunks: &[Chunk]) -> Vec<usize> {
    let mut at = 0;
    let mut keys = Vec::new();
    for c in chunks {
        if c.keyframe {
            keys.push(at);
        }
        at += c.data.len();
    }
    keys
}

// ------------------------------------------------------------------ fMP4

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

struct Mp4Stream {
    bytes: Vec<u8>,
    header: Vec<u8>,
    /// Each moof and whether it is a keyframe.
    moofs: Vec<(Vec<u8>, bool)>,
}

/// ftyp, moov (video 1, audio 2) and fragments that start on sync samples
/// in every way flags can be given, and some that do not.
fn av_stream() -> Mp4Stream {
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

/// Deterministic pseudo-random bytes.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

#[test]
fn garbage_does_not_panic() {
    let stream = av_stream();
    for seed in 0..8 {
        let junk = noise(20_000, seed);
        // Noise with sync bytes and box names sprinkled in.
        let mut tricky = junk.clone();
        for i in (0..tricky.len()).step_by(97) {
            tricky[i] = 0x47;
        }
        for i in (5..tricky.len() - 8).step_by(331) {
            tricky[i..i + 4].copy_from_slice(if i % 2 == 0 { b"moof" } else { b"mdat" });
        }
        let broken = [&stream.bytes[..200], &junk[..500], &stream.bytes[100..]].concat();
        for format in [Format::Mp4, Format::Ts] {
            for input in [&junk, &tricky, &broken] {
                for splits in [&[usize::MAX][..], &[1, 5, 188, 1000]] {
                    let mut s = Splitter::new(format);
                    let chunks = feed(&mut s, input, splits);
                    assert!(concat(&chunks).len() <= input.len());
                    let _ = s.header();
                }
            }
        }
    }
}

// ------------------------------------------------------------------- TS

const VIDEO: u16 = 0x100;
const AUDIO: u16 = 0x101;
const PMT: u16 = 0x1000;

/// One packet; an adaptation field pads short payloads and carries `rai`.
fn packet(pid: u16, pusi: bool, rai: bool, cc: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x47, (u8::from(pusi) << 6) | (pid >> 8) as u8, pid as u8];
    if rai || payload.len() < 184 {
        let af_len = 183 - payload.len();
        p.push(0x30 | (cc & 0x0f));
        p.push(af_len as u8);
        if af_len > 0 {
            p.push(if rai { 0x40 } else { 0 });
            p.extend(vec![0xff; af_len - 1]);
        }
    } else {
        p.push(0x10 | (cc & 0x0f));
    }
    p.extend_from_slice(payload);
    assert_eq!(p.len(), 188);
    p
}

/// A PSI section with pointer field and CRC.
fn psi(table_id: u8, body: &[u8]) -> Vec<u8> {
    let len = 5 + body.len() + 4;
    let mut s = vec![
        table_id,
        0xb0 | (len >> 8) as u8,
        len as u8,
        0,
        1,
        0xc1,
        0,
        0,
    ];
    s.extend_from_slice(body);
    s.extend(crc32_mpeg2(&s).to_be_bytes());
    [vec![0], s].concat()
}

fn pat(cc: u8) -> Vec<u8> {
    packet(
        0,
        true,
        false,
        cc,
        &psi(0, &[0, 1, 0xe0 | (PMT >> 8) as u8, PMT as u8]),
    )
}

fn pmt(cc: u8, streams: &[(u8, u16)]) -> Vec<u8> {
    let mut body = vec![0xe1, 0x00, 0xf0, 0x00];
    for (kind, pid) in streams {
        body.extend([*kind, 0xe0 | (pid >> 8) as u8, *pid as u8, 0xf0, 0x00]);
    }
    packet(PMT, true, false, cc, &psi(2, &body))
}

fn pes(pid: u16, start: bool, rai: bool, cc: u8) -> Vec<u8> {
    let head: &[u8] = if start { &[0, 0, 1, 0xe0, 0, 0] } else { &[] };
    packet(pid, start, rai, cc, &[head, &[0x5a; 150]].concat())
}

#[test]
fn ts_chunks_start_at_video_random_access_points() {
    let av = [(0x1b, VIDEO), (0x0f, AUDIO)];
    let packets = [
        pat(0),
        pmt(0, &av),
        pes(VIDEO, true, true, 0), // keyframe
        pes(VIDEO, false, false, 1),
        pes(AUDIO, true, false, 0),
        pes(VIDEO, true, false, 2), // P frame
        pes(VIDEO, false, false, 3),
        pat(1),
        pmt(1, &av),
        pes(VIDEO, true, true, 4), // keyframe
        pes(VIDEO, false, false, 5),
    ];
    let bytes = packets.concat();
    for splits in SPLITS {
        let mut s = Splitter::new(Format::Ts);
        let chunks = feed(&mut s, &bytes, splits);
        assert_eq!(concat(&chunks), bytes, "PAT/PMT pass on too ({splits:?})");
        assert_eq!(key_offsets(&chunks), [2 * 188, 9 * 188], "{splits:?}");
        assert_eq!(s.header().unwrap()[..], [pat(1), pmt(1, &av)].concat()[..]);
    }
    let mut s = Splitter::new(Format::Ts);
    let chunks = feed(&mut s, &bytes, &[usize::MAX]);
    let sizes: Vec<_> = chunks
        .iter()
        .map(|c| (c.data.len() / 188, c.keyframe))
        .collect();
    assert_eq!(sizes, [(2, false), (7, true), (2, true)]);
}

#[test]
fn ts_header_waits_for_pat_and_pmt_and_nothing_is_key_before() {
    let mut s = Splitter::new(Format::Ts);
    let mut out = Vec::new();
    s.push(&pes(VIDEO, true, true, 0), &mut out);
    s.push(&pat(0), &mut out);
    assert!(s.header().is_none());
    s.push(&pes(VIDEO, true, true, 1), &mut out);
    s.push(&pmt(0, &[(0x24, VIDEO)]), &mut out);
    assert_eq!(
        s.header().unwrap()[..],
        [pat(0), pmt(0, &[(0x24, VIDEO)])].concat()[..]
    );
    s.push(&pes(VIDEO, true, true, 2), &mut out);
    let keys: Vec<_> = out.iter().map(|c| c.keyframe).collect();
    assert_eq!(keys, [false, false, false, false, true]);
}

#[test]
fn ts_without_video_each_audio_pes_start_is_a_keyframe() {
    let bytes = [
        pat(0),
        pmt(0, &[(0x06, 0x200), (0x0f, AUDIO)]),
        pes(AUDIO, true, false, 0),
        pes(AUDIO, false, false, 1),
        pes(0x200, true, false, 0),
        pes(AUDIO, true, false, 2),
    ]
    .concat();
    for splits in SPLITS {
        let mut s = Splitter::new(Format::Ts);
        let chunks = feed(&mut s, &bytes, splits);
        assert_eq!(key_offsets(&chunks), [2 * 188, 5 * 188], "{splits:?}");
    }
}

#[test]
fn ts_resyncs_and_drops_garbage() {
    let av = [(0x1b, VIDEO)];
    let good = [
        pat(0),
        pmt(0, &av),
        pes(VIDEO, true, true, 0),
        pes(VIDEO, false, false, 1),
    ];
    let mut junk = noise(300, 7);
    junk.iter_mut().filter(|b| **b == 0x47).for_each(|b| *b = 0);
    junk[100] = 0x47; // a false sync byte
    let bytes = [&good[..2].concat(), &junk, &good[2..].concat(), &junk[..50]].concat();
    for splits in SPLITS {
        let mut s = Splitter::new(Format::Ts);
        let chunks = feed(&mut s, &bytes, splits);
        assert_eq!(concat(&chunks), good.concat(), "{splits:?}");
        assert_eq!(key_offsets(&chunks), [2 * 188], "{splits:?}");
    }
    // A bad CRC leaves the tables alone.
    let mut bad_pat = pat(2);
    bad_pat[180] ^= 1; // inside the section
    let mut s = Splitter::new(Format::Ts);
    feed(&mut s, &[good.concat(), bad_pat].concat(), &[usize::MAX]);
    assert_eq!(s.header().unwrap()[..], good[..2].concat()[..]);
}
