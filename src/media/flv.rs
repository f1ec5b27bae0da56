//! What the start of an FLV stream (RTMP sources, FLV over HTTP) says about
//! its streams, before the demuxer has exposed them.
//!
//! flvdemux creates its video pad only once it has the video's codec
//! headers, and a live RTMP server that does not wait for keyframes may send
//! a joining client its audio well before any usable video. The stream's
//! `onMetaData` (sent by the publisher and replayed by the server to each
//! client) and, without it, the FLV header's flags say whether video is
//! coming, so the start can wait for it.

/// Bytes of a stream's start read at most before deciding.
pub const MAX_LOOKAHEAD: usize = 256 * 1024;

const TAG_AUDIO: u8 = 8;
const TAG_VIDEO: u8 = 9;
const TAG_SCRIPT: u8 = 18;

/// Whether the FLV stream starting with `data` declares video: `Some` once
/// it can be told, `None` while more bytes are needed. The `onMetaData`
/// script tag decides when it comes before the first audio or video tag
/// (`videocodecid` or a width set); otherwise the header's video flag does.
/// Data that is not FLV declares nothing.
pub fn declares_video(data: &[u8]) -> Option<bool> {
    if data.len() < 9 {
        return (!b"FLV".starts_with(&data[..data.len().min(3)])).then_some(false);
    }
    if &data[..3] != b"FLV" {
        return Some(false);
    }
    let flagged = data[4] & 0x01 != 0;
    let header_len = u32::from_be_bytes([data[5], data[6], data[7], data[8]]) as usize;
    // Each tag is preceded by the size of the one before it (4 bytes).
    let mut pos = header_len.max(9) + 4;
    loop {
        let Some(tag) = data.get(pos..pos + 11) else {
            return (data.len() >= MAX_LOOKAHEAD).then_some(flagged);
        };
        let kind = tag[0] & 0x1f;
        let size = u32::from_be_bytes([0, tag[1], tag[2], tag[3]]) as usize;
        match kind {
            TAG_AUDIO | TAG_VIDEO => return Some(flagged),
            TAG_SCRIPT => {
                let Some(body) = data.get(pos + 11..pos + 11 + size) else {
                    return (data.len() >= MAX_LOOKAHEAD).then_some(flagged);
                };
                if let Some(video) = metadata_video(body) {
                    return Some(video);
                }
            }
            _ => {}
        }
        pos += 11 + size + 4;
    }
}

/// Whether an `onMetaData` script body names a video stream; `None` for
/// any other script data.
fn metadata_video(body: &[u8]) -> Option<bool> {
    let mut r = Amf { data: body, pos: 0 };
    if r.byte()? != 0x02 || r.string()? != b"onMetaData" {
        return None;
    }
    match r.byte()? {
        // ECMA array: a count (not to be trusted), then an object's pairs.
        0x08 => {
            r.take(4)?;
        }
        0x03 => {}
        _ => return Some(false),
    }
    let mut video = false;
    // The pairs run to the end marker (00 00 09) or to the end of the body.
    while let Ok(key) = r.string().ok_or(()) {
        if key.is_empty() && r.peek() == Some(0x09) {
            break;
        }
        let declares = match key {
            b"videocodecid" => match r.peek()? {
                0x00 => r.number().is_some_and(|n| n > 0.0),
                0x02 => {
                    r.byte()?;
                    r.string().is_some_and(|s| !s.is_empty())
                }
                _ => {
                    r.skip_value()?;
                    false
                }
            },
            b"width" if r.peek()? == 0x00 => r.number().is_some_and(|n| n > 0.0),
            _ => {
                r.skip_value()?;
                false
            }
        };
        video |= declares;
    }
    Some(video)
}

/// A reader of AMF0 values.
struct Amf<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Amf<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.data.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn peek(&self) -> Option<u8> {
        self.data.get(self.pos).copied()
    }

    /// A string without its type marker (16-bit length).
    fn string(&mut self) -> Option<&'a [u8]> {
        let len = self.take(2)?;
        self.take(u16::from_be_bytes([len[0], len[1]]) as usize)
    }

    /// A number value, marker included.
    fn number(&mut self) -> Option<f64> {
        if self.byte()? != 0x00 {
            return None;
        }
        let b = self.take(8)?;
        Some(f64::from_be_bytes(b.try_into().ok()?))
    }

    /// Skips one value, marker included.
    fn skip_value(&mut self) -> Option<()> {
        match self.byte()? {
            0x00 => self.take(8).map(drop),
            0x01 => self.take(1).map(drop),
            0x02 => self.string().map(drop),
            0x03 => self.skip_pairs(),
            0x05 | 0x06 => Some(()),
            0x07 => self.take(2).map(drop),
            0x08 => {
                self.take(4)?;
                self.skip_pairs()
            }
            0x0a => {
                let n = self.take(4)?;
                for _ in 0..u32::from_be_bytes([n[0], n[1], n[2], n[3]]) {
                    self.skip_value()?;
                }
                Some(())
            }
            0x0b => self.take(10).map(drop),
            0x0c => {
                let n = self.take(4)?;
                self.take(u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
                    .map(drop)
            }
            _ => None,
        }
    }

    /// Skips an object's pairs up to and including the end marker.
    fn skip_pairs(&mut self) -> Option<()> {
        loop {
            let key = self.string()?;
            if key.is_empty() && self.peek() == Some(0x09) {
                self.byte();
                return Some(());
            }
            self.skip_value()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(flags: u8) -> Vec<u8> {
        let mut v = b"FLV\x01".to_vec();
        v.push(flags);
        v.extend(9u32.to_be_bytes());
        v.extend(0u32.to_be_bytes());
        v
    }

    fn tag(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![kind];
        v.extend(&(body.len() as u32).to_be_bytes()[1..]);
        v.extend([0; 7]);
        v.extend(body);
        v.extend((11 + body.len() as u32).to_be_bytes());
        v
    }

    fn amf_string(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u16).to_be_bytes().to_vec();
        v.extend(s.as_bytes());
        v
    }

    fn metadata(pairs: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut v = vec![0x02];
        v.extend(amf_string("onMetaData"));
        v.push(0x08);
        v.extend((pairs.len() as u32).to_be_bytes());
        for (k, val) in pairs {
            v.extend(amf_string(k));
            v.extend(val);
        }
        v.extend([0, 0, 9]);
        v
    }

    fn number(n: f64) -> Vec<u8> {
        let mut v = vec![0x00];
        v.extend(n.to_be_bytes());
        v
    }

    fn string(s: &str) -> Vec<u8> {
        let mut v = vec![0x02];
        v.extend(amf_string(s));
        v
    }

    /// What nginx-rtmp replays to a joining client: a sample-access tag,
    /// then its own onMetaData.
    fn nginx_start(flags: u8, pairs: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut access = vec![0x02];
        access.extend(amf_string("|RtmpSampleAccess"));
        access.extend([0x01, 0x01, 0x01, 0x01]);
        let mut v = header(flags);
        v.extend(tag(TAG_SCRIPT, &access));
        v.extend(tag(TAG_SCRIPT, &metadata(pairs)));
        v
    }

    #[test]
    fn metadata_with_a_video_codec_declares_video() {
        let data = nginx_start(
            0x01,
            &[
                ("Server", string("NGINX RTMP")),
                ("width", number(320.0)),
                ("height", number(240.0)),
                ("videocodecid", number(7.0)),
                ("audiocodecid", number(10.0)),
            ],
        );
        assert_eq!(declares_video(&data), Some(true));
        // OBS names codecs as strings.
        let data = nginx_start(0x05, &[("videocodecid", string("avc1"))]);
        assert_eq!(declares_video(&data), Some(true));
    }

    #[test]
    fn metadata_without_video_declares_none_whatever_the_flags_say() {
        let data = nginx_start(
            0x05,
            &[
                ("Server", string("NGINX RTMP")),
                ("width", number(0.0)),
                ("videocodecid", number(0.0)),
                ("audiocodecid", number(10.0)),
                ("nested", {
                    let mut o = vec![0x03];
                    o.extend(amf_string("a"));
                    o.extend(number(1.0));
                    o.extend([0, 0, 9]);
                    o
                }),
            ],
        );
        assert_eq!(declares_video(&data), Some(false));
    }

    #[test]
    fn without_metadata_the_header_flags_decide() {
        let mut data = header(0x05);
        data.extend(tag(TAG_AUDIO, &[0xaf, 0x01, 0x21]));
        assert_eq!(declares_video(&data), Some(true));
        let mut data = header(0x04);
        data.extend(tag(TAG_AUDIO, &[0xaf, 0x01, 0x21]));
        assert_eq!(declares_video(&data), Some(false));
    }

    #[test]
    fn a_partial_start_waits_for_more() {
        let data = nginx_start(0x05, &[("videocodecid", number(7.0))]);
        for cut in [0, 2, 9, 13, 20, data.len() - 5] {
            assert_eq!(declares_video(&data[..cut]), None, "cut at {cut}");
        }
        assert_eq!(declares_video(b"MZ\x90"), Some(false));
        assert_eq!(
            declares_video(b"\x47\x40\x00\x10\x00\x00\x00\x00\x00\x00"),
            Some(false)
        );
    }
}
