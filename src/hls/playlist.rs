//! Playlist text (RFC 8216 and its low-latency additions): the media
//! playlist of one segment window, and the multivariant playlist of a
//! stream's variants. Pure formatting: what to list comes in, text goes
//! out.

use std::fmt::Write;

use super::window::{Container, Snapshot};

/// Protocol version: `EXT-X-MAP` in a media playlist needs 6 and up.
pub const VERSION: u32 = 7;

/// How URIs inside a playlist carry the client's session.
#[derive(Debug, Clone)]
pub struct UriQuery(pub String);

impl UriQuery {
    fn join(&self, path: &str) -> String {
        if self.0.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{}", self.0)
        }
    }
}

/// The media playlist of a window. Low-latency tags (parts, preload hint,
/// blocking reload) when `ll` and the window has a part target.
pub fn media(snap: &Snapshot, container: Container, q: &UriQuery, ll: bool) -> String {
    let ll = ll && container == Container::Fmp4 && snap.part_target.is_some();
    let mut out = String::with_capacity(2048);
    let _ = writeln!(out, "#EXTM3U");
    let _ = writeln!(out, "#EXT-X-VERSION:{VERSION}");
    let _ = writeln!(out, "#EXT-X-TARGETDURATION:{}", snap.target);
    if let (true, Some(pt)) = (ll, snap.part_target) {
        let _ = writeln!(
            out,
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={:.3}",
            pt * 3.0
        );
        let _ = writeln!(out, "#EXT-X-PART-INF:PART-TARGET={pt:.3}");
    }
    let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{}", snap.first_msn);
    let _ = writeln!(out, "#EXT-X-DISCONTINUITY-SEQUENCE:{}", snap.disc_seq);
    let _ = writeln!(out, "#EXT-X-INDEPENDENT-SEGMENTS");
    let ext = container.ext();
    let mut init: Option<u64> = None;
    let mut map = |out: &mut String, id: u64| {
        if container == Container::Fmp4 && init != Some(id) {
            init = Some(id);
            let _ = writeln!(
                out,
                "#EXT-X-MAP:URI=\"{}\"",
                q.join(&format!("init-{id}.mp4"))
            );
        }
    };
    for seg in &snap.segments {
        if seg.discontinuity {
            let _ = writeln!(out, "#EXT-X-DISCONTINUITY");
        }
        map(&mut out, seg.init_id);
        let _ = writeln!(out, "#EXT-X-PROGRAM-DATE-TIME:{}", rfc3339_ms(seg.pdt_ms));
        if ll && seg.msn >= snap.parts_listed_from {
            for (i, p) in seg.parts.iter().enumerate() {
                part_line(&mut out, q, seg.msn, i, p.dur, p.independent);
            }
        }
        let _ = writeln!(out, "#EXTINF:{:.3},", seg.dur);
        let _ = writeln!(out, "{}", q.join(&format!("seg-{}.{ext}", seg.msn)));
    }
    if let (true, Some((msn, parts, disc))) = (ll && !snap.ended, &snap.building) {
        if *disc {
            let _ = writeln!(out, "#EXT-X-DISCONTINUITY");
        }
        if let Some(id) = snap.init_ids.last() {
            map(&mut out, *id);
        }
        for (i, p) in parts.iter().enumerate() {
            part_line(&mut out, q, *msn, i, p.dur, p.independent);
        }
        let _ = writeln!(
            out,
            "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{}\"",
            q.join(&format!("part-{msn}.{}.{ext}", parts.len()))
        );
    }
    if snap.ended {
        let _ = writeln!(out, "#EXT-X-ENDLIST");
    }
    out
}

fn part_line(out: &mut String, q: &UriQuery, msn: u64, i: usize, dur: f64, independent: bool) {
    let uri = q.join(&format!("part-{msn}.{i}.m4s"));
    let ind = if independent { ",INDEPENDENT=YES" } else { "" };
    let _ = writeln!(out, "#EXT-X-PART:DURATION={dur:.3},URI=\"{uri}\"{ind}");
}

/// One variant of a multivariant playlist.
#[derive(Debug, Clone)]
pub struct Variant {
    /// Peak and average bits per second.
    pub bandwidth: u64,
    pub average_bandwidth: u64,
    pub resolution: Option<(u32, u32)>,
    pub frame_rate: Option<f64>,
    pub codecs: Vec<String>,
    pub uri: String,
}

pub fn master(variants: &[Variant]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "#EXTM3U");
    let _ = writeln!(out, "#EXT-X-VERSION:{VERSION}");
    let _ = writeln!(out, "#EXT-X-INDEPENDENT-SEGMENTS");
    for v in variants {
        let mut attrs = format!(
            "BANDWIDTH={},AVERAGE-BANDWIDTH={}",
            v.bandwidth, v.average_bandwidth
        );
        if let Some((w, h)) = v.resolution {
            let _ = write!(attrs, ",RESOLUTION={w}x{h}");
        }
        if let Some(f) = v.frame_rate {
            let _ = write!(attrs, ",FRAME-RATE={f:.3}");
        }
        if !v.codecs.is_empty() {
            let _ = write!(attrs, ",CODECS=\"{}\"", v.codecs.join(","));
        }
        let _ = writeln!(out, "#EXT-X-STREAM-INF:{attrs}");
        let _ = writeln!(out, "{}", v.uri);
    }
    out
}

/// `2026-12-06T05:00:00.123Z` for ms since the epoch.
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_007), "2000-02-29T00:00:00.007Z");
        assert_eq!(rfc3339_ms(1_796_533_200_500), "2026-12-06T05:00:00.500Z");
    }

    #[test]
    fn master_lists_each_variant_with_its_attributes() {
        let v = Variant {
            bandwidth: 1_400_000,
            average_bandwidth: 1_200_000,
            resolution: Some((640, 360)),
            frame_rate: Some(30.0),
            codecs: vec!["avc1.42E01E".into(), "mp4a.40.2".into()],
            uri: "low/index.m3u8?sid=a".into(),
        };
        let text = master(&[v]);
        assert!(text.starts_with("#EXTM3U\n"));
        assert!(text.contains("#EXT-X-STREAM-INF:BANDWIDTH=1400000,AVERAGE-BANDWIDTH=1200000,RESOLUTION=640x360,FRAME-RATE=30.000,CODECS=\"avc1.42E01E,mp4a.40.2\"\nlow/index.m3u8?sid=a\n"));
    }
}

#[cfg(test)]
mod media_tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::hls::window::{Part, Segment};

    fn seg(msn: u64, discontinuity: bool, init_id: u64) -> Arc<Segment> {
        let part = Part {
            data: Bytes::from_static(b"x"),
            dur: 0.2,
            independent: true,
        };
        Arc::new(Segment {
            msn,
            data: Bytes::from_static(b"x"),
            dur: 2.0,
            parts: vec![part; 10],
            discontinuity,
            pdt_ms: 0,
            init_id,
        })
    }

    #[test]
    fn discontinuities_and_init_changes_are_tagged_before_their_segment() {
        let snap = Snapshot {
            target: 2,
            part_target: Some(0.25),
            first_msn: 4,
            disc_seq: 1,
            segments: vec![seg(4, false, 0), seg(5, true, 1)],
            building: Some((6, Vec::new(), false)),
            init_ids: vec![0, 1],
            ended: false,
            parts_listed_from: 5,
        };
        let text = media(&snap, Container::Fmp4, &UriQuery("sid=s".into()), true);
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:4\n#EXT-X-DISCONTINUITY-SEQUENCE:1\n"));
        assert!(text.contains(
            "#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"init-1.mp4?sid=s\"\n#EXT-X-PROGRAM-DATE-TIME"
        ));
        assert_eq!(
            text.matches("#EXT-X-PART:").count(),
            10,
            "parts of recent segments only"
        );
        assert!(text.ends_with("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-6.0.m4s?sid=s\"\n"));
        let plain = media(&snap, Container::Fmp4, &UriQuery(String::new()), false);
        assert!(!plain.contains("PART") && !plain.contains("SERVER-CONTROL"));
    }
}
