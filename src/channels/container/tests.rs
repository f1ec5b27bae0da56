//! The splitter on hand-built boxes and packets fed in every kind of split
//! (`mp4`, `ts`), on garbage (here), and on real muxer output (`muxers`).

use super::*;

mod mp4;
mod muxers;
mod ts;

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
    let stream = mp4::av_stream();
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
#[test]
fn repeated_ts_tables_are_the_same_header_and_a_new_pmt_is_not() {
    let mut a = vec![0u8; 376];
    a[0] = 0x47;
    a[188] = 0x47;
    let mut b = a.clone();
    // Only the continuity counters (low nibble of byte 3) differ.
    b[3] = 0x0b;
    b[188 + 3] = 0x0f;
    assert!(same_header(Format::Ts, &a, &b));
    b[188 + 20] = 1;
    assert!(!same_header(Format::Ts, &a, &b));
    assert!(!same_header(Format::Mp4, &a, &b));
    assert!(same_header(Format::Mp4, &a, &a.clone()));
}
