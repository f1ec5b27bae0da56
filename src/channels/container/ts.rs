//! MPEG-TS: 188-byte packets; PAT and PMT tracked for the header and the
//! video PID; a chunk starts at each video random access point.

use bytes::Bytes;

use super::{be16, emit, same_tables, Chunk};

const PACKET: usize = 188;
const SYNC: u8 = 0x47;

#[derive(Default)]
pub(super) struct Ts {
    /// The start of a packet split over pushes (begins with the sync byte).
    carry: Vec<u8>,
    /// Packet boundaries are known: a packet is taken without waiting for
    /// the next one's sync byte. Cleared by garbage.
    locked: bool,
    pmt_pid: Option<u16>,
    video_pid: Option<u16>,
    audio_pid: Option<u16>,
    pat: Option<Bytes>,
    pmt: Option<Bytes>,
    /// The last inspected packet was a PAT or PMT.
    table: bool,
    /// The header last handed on.
    marked: Option<Bytes>,
    /// Headers that changed while pushing, each with the number of chunks
    /// that were out before it.
    pub(super) marks: Vec<(usize, Bytes)>,
}

impl Ts {
    pub(super) fn header(&self) -> Option<Bytes> {
        let (pat, pmt) = (self.pat.as_ref()?, self.pmt.as_ref()?);
        Some(Bytes::from([&pat[..], &pmt[..]].concat()))
    }

    pub(super) fn push(&mut self, input: &Bytes, out: &mut Vec<Chunk>) {
        let mut pos = 0;
        while !self.carry.is_empty() {
            let n = (PACKET - self.carry.len()).min(input.len() - pos);
            self.carry.extend_from_slice(&input[pos..pos + n]);
            pos += n;
            if self.carry.len() < PACKET {
                return;
            }
            if !self.locked {
                match input.get(pos) {
                    None => return,
                    Some(&SYNC) => self.locked = true,
                    Some(_) => {
                        // A false sync byte: look again from the next one.
                        let next = self.carry[1..].iter().position(|b| *b == SYNC);
                        self.carry.drain(..next.map_or(PACKET, |i| i + 1));
                        continue;
                    }
                }
            }
            let packet = Bytes::from(std::mem::take(&mut self.carry));
            let keyframe = self.inspect(&packet, 0);
            self.mark_change(out.len());
            emit(out, packet, keyframe);
        }
        let (mut run, mut run_key) = (pos, false);
        while pos < input.len() {
            let confirmed = match input.get(pos + PACKET) {
                _ if input[pos] != SYNC => Some(false),
                _ if self.locked => Some(true),
                Some(b) => Some(*b == SYNC),
                None => None,
            };
            match confirmed {
                Some(true) => self.locked = true,
                Some(false) => {
                    // Lost: drop bytes up to the next sync byte.
                    self.locked = false;
                    emit(out, input.slice(run..pos), run_key);
                    pos = input[pos + 1..]
                        .iter()
                        .position(|b| *b == SYNC)
                        .map_or(input.len(), |i| pos + 1 + i);
                    (run, run_key) = (pos, false);
                    continue;
                }
                // Kept until the next packet's sync byte confirms it.
                None => break,
            }
            if input.len() - pos < PACKET {
                break;
            }
            if self.inspect(input, pos) {
                emit(out, input.slice(run..pos), run_key);
                (run, run_key) = (pos, true);
            }
            // A changed table takes effect from the chunk it is in.
            self.mark_change(out.len());
            pos += PACKET;
        }
        emit(out, input.slice(run..pos), run_key);
        self.carry.extend_from_slice(&input[pos..]);
    }

    /// Whether the packet just inspected changed the PAT or PMT in a way
    /// that matters to a viewer (not merely its continuity counter).
    fn table_changed(&self) -> bool {
        self.table
            && self
                .header()
                .is_some_and(|h| !self.marked.as_ref().is_some_and(|m| same_tables(m, &h)))
    }

    /// Records a changed header before chunk `at`.
    fn mark_change(&mut self, at: usize) {
        if self.table_changed() {
            if let Some(h) = self.header() {
                self.marked = Some(h.clone());
                self.marks.push((at, h));
            }
        }
        self.table = false;
    }

    /// Tracks PAT/PMT; true when the packet at `at` starts a keyframe.
    fn inspect(&mut self, buf: &Bytes, at: usize) -> bool {
        self.table = false;
        let p = &buf[at..at + PACKET];
        if p[1] & 0x80 != 0 {
            return false; // transport_error_indicator
        }
        let pusi = p[1] & 0x40 != 0;
        let pid = u16::from(p[1] & 0x1f) << 8 | u16::from(p[2]);
        let afc = (p[3] >> 4) & 3;
        let (rai, payload_at) = if afc & 2 != 0 {
            let len = usize::from(p[4]);
            (len > 0 && p[5] & 0x40 != 0, 5 + len)
        } else {
            (false, 4)
        };
        if !pusi {
            return false;
        }
        let payload = match afc & 1 {
            1 => p.get(payload_at..).unwrap_or_default(),
            _ => &[],
        };
        if pid == 0 {
            if let Some(pmt_pid) = section(payload, 0x00).and_then(pat_pmt_pid) {
                if self.pmt_pid != Some(pmt_pid) {
                    self.pmt_pid = Some(pmt_pid);
                    (self.pmt, self.video_pid, self.audio_pid) = (None, None, None);
                }
                self.pat = Some(buf.slice(at..at + PACKET));
                self.table = true;
            }
            return false;
        }
        if Some(pid) == self.pmt_pid {
            if let Some((video, audio)) = section(payload, 0x02).map(pmt_streams) {
                (self.video_pid, self.audio_pid) = (video, audio);
                self.pmt = Some(buf.slice(at..at + PACKET));
                self.table = true;
            }
            return false;
        }
        match self.video_pid {
            Some(v) => pid == v && rai,
            None => self.pmt.is_some() && Some(pid) == self.audio_pid,
        }
    }
}

/// The PSI section of `table_id` starting in this payload, CRC checked,
/// without its CRC. Sections longer than one packet are not followed.
fn section(payload: &[u8], table_id: u8) -> Option<&[u8]> {
    let s = payload.get(1 + usize::from(*payload.first()?)..)?;
    let len = usize::from(be16(s, 1)? & 0x0fff);
    let s = s.get(..3 + len)?;
    if s[0] != table_id || len < 9 || crc32_mpeg2(s) != 0 {
        return None;
    }
    Some(&s[..s.len() - 4])
}

/// CRC-32/MPEG-2; zero over a section that ends with its correct CRC.
pub(super) fn crc32_mpeg2(data: &[u8]) -> u32 {
    data.iter().fold(0xffff_ffff, |mut crc, &b| {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                crc << 1 ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
        crc
    })
}

/// The PMT PID of the first program in a PAT section.
fn pat_pmt_pid(s: &[u8]) -> Option<u16> {
    (8..s.len().saturating_sub(3)).step_by(4).find_map(|i| {
        let program = be16(s, i)?;
        (program != 0).then_some(be16(s, i + 2)? & 0x1fff)
    })
}

/// The first video and first audio elementary PIDs of a PMT section.
fn pmt_streams(s: &[u8]) -> (Option<u16>, Option<u16>) {
    let (mut video, mut audio) = (None, None);
    let mut i = 12 + be16(s, 10).map_or(0, |n| usize::from(n & 0x0fff));
    while let (Some(&kind), Some(pid), Some(info)) = (s.get(i), be16(s, i + 1), be16(s, i + 3)) {
        let pid = pid & 0x1fff;
        match kind {
            0x1b | 0x24 | 0x02 | 0x01 => video = video.or(Some(pid)),
            0x0f | 0x11 | 0x03 | 0x04 | 0x81 | 0x87 => audio = audio.or(Some(pid)),
            _ => {}
        }
        i += 5 + usize::from(info & 0x0fff);
    }
    (video, audio)
}
