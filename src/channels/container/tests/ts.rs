//! Hand-built MPEG-TS packets.

use super::super::ts::crc32_mpeg2;
use super::super::*;
use super::{concat, feed, key_offsets, noise, SPLITS};

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

#[test]
fn ts_a_changed_pmt_is_a_header_part_and_a_repeated_one_is_not() {
    let av = [(0x1b, VIDEO), (0x0f, AUDIO)];
    let changed = [(0x1b, VIDEO), (0x0f, AUDIO), (0x06, 0x102)];
    let packets = [
        pat(0),
        pmt(0, &av),
        pes(VIDEO, true, true, 0),
        pat(1),
        pmt(1, &av), // the same tables again
        pes(VIDEO, true, true, 1),
        pes(VIDEO, false, false, 2),
        pat(2),
        pmt(2, &changed),
        pes(VIDEO, true, true, 3),
    ];
    let bytes = packets.concat();
    for splits in SPLITS {
        let mut s = Splitter::new(Format::Ts);
        let mut parts = Vec::new();
        let mut pos = 0;
        for size in splits.iter().cycle() {
            if pos >= bytes.len() {
                break;
            }
            let end = (pos + size).min(bytes.len());
            s.push_parts(&bytes[pos..end], &mut parts);
            pos = end;
        }
        let mut seen = Vec::new();
        let mut at = 0;
        for p in &parts {
            match p {
                Part::Header(h) => seen.push((at, h.clone())),
                Part::Chunk(c) => at += c.data.len(),
            }
        }
        assert_eq!(seen.len(), 2, "{splits:?}");
        assert_eq!(seen[0].1[..], [pat(0), pmt(0, &av)].concat()[..]);
        assert_eq!(seen[1].1[..], [pat(2), pmt(2, &changed)].concat()[..]);
        // Each goes out no later than its PMT, and after the keyframe
        // before it.
        assert!(seen[0].0 <= 188, "{splits:?}: {}", seen[0].0);
        assert!(
            (5 * 188..=8 * 188).contains(&seen[1].0),
            "{splits:?}: {}",
            seen[1].0
        );
    }
}
