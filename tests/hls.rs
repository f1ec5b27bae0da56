//! HLS (SPEC §12), black-box: playlists checked against RFC 8216 and the
//! low-latency additions by a checker of this test's own, read by ffmpeg
//! (`-c copy`, then decoded by ffprobe) and GStreamer's `hlsdemux`; ten
//! clients share one encoder and each segment is cut once; two variants run
//! two encoders on one decode and the idle one stops; a source reconnect is
//! a discontinuity; blocking reload, expired segments, caching and CORS.
//!
//! The tests measure media against real time, so they take turns.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SRC: &str = "test://smpte?size=320x240&rate=30";

/// A playlist checker written from RFC 8216 (media and multivariant
/// playlists) and its low-latency additions (parts, preload hints,
/// server control).
mod checker {
    use std::collections::HashMap;

    /// One segment as a media playlist lists it.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Seg {
        pub msn: u64,
        pub uri: String,
        pub dur: f64,
        pub discontinuity: bool,
        pub parts: Vec<(f64, String)>,
    }

    #[derive(Debug, Clone, Default)]
    pub struct Media {
        pub target: u64,
        pub media_sequence: u64,
        pub disc_sequence: u64,
        pub part_target: Option<f64>,
        pub segments: Vec<Seg>,
        /// Parts of the segment in progress (after the last EXTINF).
        pub open_parts: Vec<(f64, String)>,
        pub preload_hint: Option<String>,
        pub can_block_reload: bool,
        pub map: Option<String>,
        pub endlist: bool,
    }

    fn attrs(s: &str) -> HashMap<String, String> {
        // Attribute lists: KEY=value, quoted strings may hold commas.
        let mut out = HashMap::new();
        let mut rest = s;
        while !rest.is_empty() {
            let (k, v) = rest.split_once('=').expect("attribute has =");
            let (val, next) = if let Some(q) = v.strip_prefix('"') {
                let end = q.find('"').expect("closing quote");
                (q[..end].to_string(), &q[end + 1..])
            } else {
                match v.find(',') {
                    Some(i) => (v[..i].to_string(), &v[i..]),
                    None => (v.to_string(), ""),
                }
            };
            assert!(
                k.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-'),
                "attribute name {k:?}"
            );
            out.insert(k.to_string(), val);
            rest = next.strip_prefix(',').unwrap_or(next);
        }
        out
    }

    fn pdt_ok(s: &str) -> bool {
        // YYYY-MM-DDThh:mm:ss(.sss)Z or with an offset.
        let b = s.as_bytes();
        b.len() >= 20
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && (s.ends_with('Z') || s[19..].contains('+') || s[19..].contains('-'))
    }

    const MEDIA_TAGS: &[&str] = &[
        "#EXT-X-VERSION",
        "#EXT-X-TARGETDURATION",
        "#EXT-X-MEDIA-SEQUENCE",
        "#EXT-X-DISCONTINUITY-SEQUENCE",
        "#EXT-X-INDEPENDENT-SEGMENTS",
        "#EXT-X-MAP",
        "#EXT-X-PROGRAM-DATE-TIME",
        "#EXTINF",
        "#EXT-X-DISCONTINUITY",
        "#EXT-X-ENDLIST",
        "#EXT-X-PART-INF",
        "#EXT-X-PART",
        "#EXT-X-PRELOAD-HINT",
        "#EXT-X-SERVER-CONTROL",
    ];

    /// Parses and checks one media playlist; panics saying what is wrong.
    pub fn media(text: &str) -> Media {
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("#EXTM3U"), "first line\n{text}");
        let mut m = Media::default();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut extinf: Option<f64> = None;
        let mut disc = false;
        let mut msn: Option<u64> = None;
        let mut parts: Vec<(f64, String)> = Vec::new();
        let mut independent_segments = false;
        for line in lines {
            if line.is_empty() {
                continue;
            }
            if !line.starts_with('#') {
                let dur = extinf
                    .take()
                    .unwrap_or_else(|| panic!("URI {line} without EXTINF"));
                let n = *msn.get_or_insert(m.media_sequence);
                m.segments.push(Seg {
                    msn: n,
                    uri: line.to_string(),
                    dur,
                    discontinuity: std::mem::take(&mut disc),
                    parts: std::mem::take(&mut parts),
                });
                msn = Some(n + 1);
                continue;
            }
            if !line.starts_with("#EXT") {
                continue; // a comment
            }
            let (tag, value) = line.split_once(':').unwrap_or((line, ""));
            assert!(MEDIA_TAGS.contains(&tag), "unknown or misplaced tag {tag}");
            *seen.entry(tag).or_default() += 1;
            match tag {
                "#EXT-X-TARGETDURATION" => m.target = value.parse().expect("integer target"),
                "#EXT-X-MEDIA-SEQUENCE" => {
                    assert!(m.segments.is_empty(), "MEDIA-SEQUENCE after a segment");
                    m.media_sequence = value.parse().expect("integer sequence")
                }
                "#EXT-X-DISCONTINUITY-SEQUENCE" => {
                    assert!(
                        m.segments.is_empty(),
                        "DISCONTINUITY-SEQUENCE after a segment"
                    );
                    m.disc_sequence = value.parse().expect("integer")
                }
                "#EXT-X-VERSION" => {
                    let v: u32 = value.parse().expect("integer version");
                    assert!(v >= 6, "EXT-X-MAP in a media playlist needs version 6+");
                }
                "#EXT-X-INDEPENDENT-SEGMENTS" => independent_segments = true,
                "#EXTINF" => {
                    let d = value.split(',').next().unwrap();
                    let d: f64 = d.parse().expect("EXTINF duration");
                    assert!(d > 0.0, "EXTINF {d}");
                    extinf = Some(d);
                }
                "#EXT-X-DISCONTINUITY" => disc = true,
                "#EXT-X-MAP" => {
                    let a = attrs(value);
                    m.map.get_or_insert(a["URI"].clone());
                }
                "#EXT-X-PROGRAM-DATE-TIME" => assert!(pdt_ok(value), "PDT {value}"),
                "#EXT-X-ENDLIST" => m.endlist = true,
                "#EXT-X-PART-INF" => {
                    m.part_target = Some(attrs(value)["PART-TARGET"].parse().expect("part target"))
                }
                "#EXT-X-PART" => {
                    let a = attrs(value);
                    let d: f64 = a["DURATION"].parse().expect("part duration");
                    assert!(!a["URI"].is_empty());
                    parts.push((d, a["URI"].clone()));
                }
                "#EXT-X-PRELOAD-HINT" => {
                    let a = attrs(value);
                    assert_eq!(a["TYPE"], "PART");
                    m.preload_hint = Some(a["URI"].clone());
                }
                "#EXT-X-SERVER-CONTROL" => {
                    let a = attrs(value);
                    m.can_block_reload =
                        a.get("CAN-BLOCK-RELOAD").map(String::as_str) == Some("YES");
                    if let Some(phb) = a.get("PART-HOLD-BACK") {
                        let phb: f64 = phb.parse().unwrap();
                        let pt = m.part_target.unwrap_or(0.0);
                        // PART-HOLD-BACK comes before PART-INF here; checked below.
                        let _ = pt;
                        assert!(phb > 0.0);
                    }
                }
                _ => {}
            }
        }
        m.open_parts = parts;
        assert!(extinf.is_none(), "EXTINF without URI");
        for once in [
            "#EXT-X-TARGETDURATION",
            "#EXT-X-MEDIA-SEQUENCE",
            "#EXT-X-VERSION",
            "#EXT-X-PART-INF",
            "#EXT-X-SERVER-CONTROL",
            "#EXT-X-DISCONTINUITY-SEQUENCE",
        ] {
            assert!(seen.get(once).copied().unwrap_or(0) <= 1, "{once} twice");
        }
        assert_eq!(
            seen.get("#EXT-X-TARGETDURATION"),
            Some(&1),
            "TARGETDURATION is required"
        );
        assert!(independent_segments, "EXT-X-INDEPENDENT-SEGMENTS");
        for s in &m.segments {
            // RFC 8216 4.3.3.1: EXTINF rounded to the nearest integer <= target.
            assert!(
                s.dur.round() as u64 <= m.target,
                "segment {} lasts {} > target {}",
                s.msn,
                s.dur,
                m.target
            );
        }
        let all_parts = m
            .segments
            .iter()
            .flat_map(|s| &s.parts)
            .chain(&m.open_parts);
        if let Some(pt) = m.part_target {
            for (d, uri) in all_parts {
                assert!(*d <= pt + 1e-9, "part {uri} lasts {d} > PART-TARGET {pt}");
            }
            let sc = text
                .lines()
                .find(|l| l.starts_with("#EXT-X-SERVER-CONTROL:"))
                .expect("LL-HLS needs EXT-X-SERVER-CONTROL");
            let phb: f64 = attrs(sc.split_once(':').unwrap().1)["PART-HOLD-BACK"]
                .parse()
                .unwrap();
            assert!(
                phb >= 2.0 * pt,
                "PART-HOLD-BACK {phb} < 2 x PART-TARGET {pt}"
            );
            // Parts of a segment add up to the segment.
            for s in m.segments.iter().filter(|s| !s.parts.is_empty()) {
                let sum: f64 = s.parts.iter().map(|p| p.0).sum();
                assert!(
                    (sum - s.dur).abs() < 0.01,
                    "parts {sum} vs segment {}",
                    s.dur
                );
            }
        } else {
            assert!(all_parts.count() == 0, "EXT-X-PART without EXT-X-PART-INF");
            assert!(m.preload_hint.is_none(), "preload hint without parts");
        }
        m
    }

    /// Checks a playlist reloaded after `prev`: the sequence only moves
    /// forward, a segment keeps its URI and duration, and discontinuities
    /// that left the window are counted.
    pub fn reload(prev: &Media, next: &Media) {
        assert!(
            next.media_sequence >= prev.media_sequence,
            "media sequence went back"
        );
        assert_eq!(next.target, prev.target, "target duration changed");
        let removed: Vec<_> = prev
            .segments
            .iter()
            .filter(|s| s.msn < next.media_sequence)
            .collect();
        let disc_removed = removed.iter().filter(|s| s.discontinuity).count() as u64;
        assert_eq!(
            next.disc_sequence,
            prev.disc_sequence + disc_removed,
            "discontinuity sequence"
        );
        for s in &next.segments {
            if let Some(p) = prev.segments.iter().find(|p| p.msn == s.msn) {
                assert_eq!(p.uri, s.uri, "segment {} changed URI", s.msn);
                assert_eq!(p.dur, s.dur, "segment {} changed duration", s.msn);
                assert_eq!(p.discontinuity, s.discontinuity);
            }
        }
    }

    /// One variant of a multivariant playlist.
    #[derive(Debug, Clone)]
    pub struct Variant {
        pub attrs: HashMap<String, String>,
        pub uri: String,
    }

    pub fn master(text: &str) -> Vec<Variant> {
        let mut lines = text.lines().filter(|l| !l.is_empty());
        assert_eq!(lines.next(), Some("#EXTM3U"));
        let mut out = Vec::new();
        let mut pending: Option<HashMap<String, String>> = None;
        for line in lines {
            if let Some(v) = line.strip_prefix("#EXT-X-STREAM-INF:") {
                let a = attrs(v);
                let bw: u64 = a["BANDWIDTH"].parse().expect("BANDWIDTH");
                assert!(bw > 0);
                if let Some(avg) = a.get("AVERAGE-BANDWIDTH") {
                    assert!(avg.parse::<u64>().unwrap() <= bw, "average above peak");
                }
                if let Some(r) = a.get("RESOLUTION") {
                    let (w, h) = r.split_once('x').expect("WxH");
                    assert!(w.parse::<u32>().unwrap() > 0 && h.parse::<u32>().unwrap() > 0);
                }
                if let Some(c) = a.get("CODECS") {
                    for codec in c.split(',') {
                        assert!(
                            codec.starts_with("avc1.") && codec.len() == 11 || codec == "mp4a.40.2",
                            "codec {codec}"
                        );
                    }
                }
                assert!(pending.replace(a).is_none(), "STREAM-INF without URI");
            } else if line.starts_with('#') {
                let tag = line.split(':').next().unwrap();
                assert!(
                    ["#EXT-X-VERSION", "#EXT-X-INDEPENDENT-SEGMENTS"].contains(&tag),
                    "unexpected tag in a multivariant playlist: {tag}"
                );
            } else {
                let a = pending.take().expect("URI after STREAM-INF");
                out.push(Variant {
                    attrs: a,
                    uri: line.to_string(),
                });
            }
        }
        assert!(pending.is_none());
        out
    }

    #[test]
    fn the_checker_rejects_what_rfc_8216_forbids() {
        let good = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:3\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXTINF:2.000,\ns3\n";
        assert_eq!(media(good).segments[0].msn, 3);
        let long = good.replace("#EXTINF:2.000", "#EXTINF:2.600");
        assert!(std::panic::catch_unwind(|| media(&long)).is_err());
        let no_target = good.replace("#EXT-X-TARGETDURATION:2\n", "");
        assert!(std::panic::catch_unwind(|| media(&no_target)).is_err());
        let part = good.replace(
            "#EXTINF",
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.75\n#EXT-X-PART-INF:PART-TARGET=0.25\n#EXT-X-PART:DURATION=0.3,URI=\"p\"\n#EXTINF",
        );
        assert!(std::panic::catch_unwind(|| media(&part)).is_err());
        let a = media(good);
        let mut b = a.clone();
        b.media_sequence = 2;
        assert!(std::panic::catch_unwind(|| reload(&a, &b)).is_err());
    }
}

/// GETs `path`; status, headers and body text.
async fn get(ts: &TestServer, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let r = client().get(ts.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

async fn get_bytes(ts: &TestServer, path: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let r = client().get(ts.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.unwrap().to_vec())
}

/// `base/uri` for a URI relative to the playlist at `base/index.m3u8`.
fn under(base: &str, uri: &str) -> String {
    format!("{base}/{uri}")
}

async fn status(ts: &TestServer) -> Value {
    get_json(&ts.url("/api/streams/transcoding/status")).await
}

fn hls_sessions(st: &Value) -> usize {
    st["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["format"] == "hls")
        .count()
}

fn renditions(st: &Value) -> Vec<String> {
    st["channels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["renditions"].as_array().unwrap().clone())
        .map(|r| r["quality"].as_str().unwrap().to_string())
        .collect()
}

/// A 40 s H.264 + AAC file (played in real time, as a live channel).
fn h264_file(ts: &TestServer) -> String {
    let path = ts.media_dir().join("h264.ts");
    make_media(
        &path,
        40,
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-s",
            "320x240",
        ],
        &["-c:a", "aac", "-b:a", "64k"],
        &[],
    );
    format!("file://{}", path.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playlists_pass_the_checker_and_the_window_slides() {
    let _turn = SERIAL.lock().await;
    let ts = start().await;
    add_stream(&ts, "a", SRC).await;
    let (code, h, text) = get(&ts, "/streams/hls/a/master.m3u8").await;
    assert_eq!(code, 200, "{text}");
    assert_eq!(h["content-type"], "application/vnd.apple.mpegurl");
    assert_eq!(h["cache-control"], "no-cache");
    let variants = checker::master(&text);
    let names: Vec<_> = variants
        .iter()
        .map(|v| v.uri.split('/').next().unwrap())
        .collect();
    assert_eq!(names, ["low", "medium", "high"], "{text}");
    for v in &variants {
        for k in [
            "BANDWIDTH",
            "AVERAGE-BANDWIDTH",
            "RESOLUTION",
            "FRAME-RATE",
            "CODECS",
        ] {
            assert!(v.attrs.contains_key(k), "{k} missing: {text}");
        }
        assert!(
            v.uri.contains("sid="),
            "the session rides in the URI: {}",
            v.uri
        );
    }
    let one = checker::master(&get(&ts, "/streams/hls/a/master.m3u8?quality=low").await.2);
    assert_eq!(one.len(), 1);
    let base = "/streams/hls/a/low";
    let index = format!("{base}/index.m3u8?sid=checker");
    let (code, h, text) = get(&ts, &index).await;
    assert_eq!(code, 200, "{text}");
    assert_eq!(h["cache-control"], "no-cache");
    let mut prev = checker::media(&text);
    assert!(
        !prev.segments.is_empty(),
        "the first playlist has a segment"
    );
    assert!(prev.can_block_reload && prev.part_target.is_some());
    let first_uri = prev.segments[0].uri.clone();
    let map = prev.map.clone().expect("EXT-X-MAP");
    let (code, h, init) = get_bytes(&ts, &under(base, &map)).await;
    assert_eq!(code, 200);
    assert_eq!(&init[4..8], b"ftyp");
    assert!(h["cache-control"].to_str().unwrap().contains("immutable"));
    // Reload as a player would, for longer than the window (6 segments).
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(17) {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let (code, _, text) = get(&ts, &index).await;
        assert_eq!(code, 200);
        let next = checker::media(&text);
        checker::reload(&prev, &next);
        assert!(next.segments.len() <= 6, "a window of 6 segments");
        prev = next;
    }
    assert!(prev.media_sequence > 0, "the window slid");
    let seg = prev.segments.last().unwrap();
    let (code, h, body) = get_bytes(&ts, &under(base, &seg.uri)).await;
    assert_eq!(code, 200);
    assert_eq!(h["content-type"], "video/mp4");
    assert!(h["cache-control"].to_str().unwrap().contains("immutable"));
    assert_eq!(&body[4..8], b"moof", "a segment starts with its fragment");
    // The first segment has left the window: 404 JSON.
    let (code, h, text) = get(&ts, &under(base, &first_uri)).await;
    assert_eq!(code, 404, "{text}");
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"], "segment_not_found");
    ts.stop().await;
}

/// Runs `cmd` for at most `limit`; whether it succeeded, and its stderr.
fn run(cmd: &mut Command, limit: Duration) -> (bool, String) {
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tool runs");
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (st.success(), err);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return (false, format!("timed out after {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_and_hlsdemux_read_the_master_playlist() {
    let _turn = SERIAL.lock().await;
    let ts = start().await;
    add_stream(&ts, "a", SRC).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("copy.mp4");
    let master = ts.url("/streams/hls/a/master.m3u8?quality=low");
    let (m2, out2) = (master.clone(), out.clone());
    let (ok, err) = tokio::task::spawn_blocking(move || {
        run(
            Command::new("ffmpeg")
                .args(["-hide_banner", "-nostdin", "-v", "error", "-y", "-i", &m2])
                .args(["-t", "20", "-c", "copy"])
                .arg(&out2),
            Duration::from_secs(60),
        )
    })
    .await
    .unwrap();
    assert!(ok, "ffmpeg: {err}");
    let probe = ffprobe(&out);
    let v = stream_of(&probe, "video").expect("video");
    assert_eq!(v["codec_name"], "h264");
    assert_eq!(v["profile"], "Constrained Baseline");
    assert_eq!(
        stream_of(&probe, "audio").expect("audio")["codec_name"],
        "aac"
    );
    let dur: f64 = probe["format"]["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(dur >= 19.0, "20 s read, got {dur}");
    let (frames, errors) = decode_all(&out);
    assert!(errors.trim().is_empty(), "ffprobe decode errors: {errors}");
    assert!(frames >= 19 * 30, "{frames} frames");

    // GStreamer's hlsdemux, for 12 s: decoded pictures reach the sink
    // (one line each) and nothing posts an error.
    let out = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args(["12", "gst-launch-1.0", "-v", "souphttpsrc"])
            .arg(format!("location={master}"))
            .args(["!", "hlsdemux", "!", "decodebin", "!", "video/x-raw", "!"])
            .args(["fakesink", "sync=false", "silent=false"])
            .output()
            .expect("gst-launch-1.0 runs")
    })
    .await
    .unwrap();
    let pictures = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("fakesink0: last-message = chain"))
        .count();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("ERROR"), "hlsdemux: {stderr}");
    assert!(
        pictures >= 150,
        "hlsdemux decoded {pictures} pictures: {stderr}"
    );
    ts.stop().await;
}

/// One HLS client: reloads the playlist and fetches each new segment
/// once, for `dur`; returns the segments it got (msn -> bytes).
async fn play(ts: &TestServer, base: &str, sid: &str, dur: Duration) -> HashMap<u64, Vec<u8>> {
    let mut got = HashMap::new();
    let t0 = Instant::now();
    while t0.elapsed() < dur {
        let (code, _, text) = get(ts, &format!("{base}/index.m3u8?sid={sid}")).await;
        assert_eq!(code, 200, "{text}");
        let m = checker::media(&text);
        for s in &m.segments {
            if let std::collections::hash_map::Entry::Vacant(e) = got.entry(s.msn) {
                let (code, _, body) = get_bytes(ts, &under(base, &s.uri)).await;
                assert_eq!(code, 200, "segment {}", s.msn);
                e.insert(body);
            }
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_clients_share_one_encoder_and_each_segment_is_cut_once() {
    let _turn = SERIAL.lock().await;
    let ts = start_with(|s| s.max_sessions_per_client = 20).await;
    add_stream(&ts, "a", SRC).await;
    let base = "/streams/hls/a/low";
    let clients: Vec<_> = (0..10)
        .map(|i| {
            let ts = &ts;
            async move { play(ts, base, &format!("client{i}"), Duration::from_secs(10)).await }
        })
        .collect();
    let watch = async {
        tokio::time::sleep(Duration::from_secs(6)).await;
        status(&ts).await
    };
    let (got, st) = tokio::join!(futures::future::join_all(clients), watch);
    assert_eq!(hls_sessions(&st), 10, "{st:#}");
    assert_eq!(renditions(&st), ["low"], "one encoder: {st:#}");
    assert_eq!(st["channels"].as_array().unwrap().len(), 1, "one channel");
    assert_eq!(st["activeSessions"], 1, "one pipeline slot: {st:#}");
    // Every client got the very same bytes for a segment.
    let mut all: HashMap<u64, &Vec<u8>> = HashMap::new();
    for g in &got {
        for (msn, body) in g {
            let first = all.entry(*msn).or_insert(body);
            assert!(*first == body, "segment {msn} differs between clients");
        }
    }
    let last = *all.keys().max().unwrap();
    let cut = metric(&scrape(&ts).await, "sluice_hls_segments_total", &[]).unwrap() as u64;
    // Segments 0..=last were cut; one more may have closed since.
    assert!(
        (last + 1..=last + 2).contains(&cut),
        "{cut} segments cut for {} segments served to 10 clients",
        last + 1
    );
    // Clients that stop fetching end after 3 target durations.
    assert!(
        eventually(Duration::from_secs(12), || {
            ts.state().registry.is_empty()
        })
        .await,
        "idle HLS sessions end"
    );
    let samples = scrape(&ts).await;
    assert_eq!(
        metric(
            &samples,
            "sluice_sessions_ended_total",
            &[("reason", "client_disconnect")]
        ),
        Some(10.0)
    );
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_variants_run_two_encoders_on_one_decode_and_the_idle_one_stops() {
    let _turn = SERIAL.lock().await;
    let ts = start_with(|s| s.channel_linger_ms = 1000).await;
    let url = h264_file(&ts);
    add_stream(&ts, "f", &url).await;
    for q in ["low", "medium"] {
        let (code, _, text) = get(&ts, &format!("/streams/hls/f/{q}/index.m3u8?sid=s")).await;
        assert_eq!(code, 200, "{text}");
        checker::media(&text);
    }
    let st = status(&ts).await;
    let mut r = renditions(&st);
    r.sort();
    assert_eq!(r, ["low", "medium"], "{st:#}");
    assert_eq!(hls_sessions(&st), 2);
    let samples = scrape(&ts).await;
    assert_eq!(
        metric(&samples, "sluice_decoders", &[("kind", "video")]),
        Some(1.0)
    );
    assert_eq!(
        metric(&samples, "sluice_upstream_connections", &[]),
        Some(1.0)
    );
    // The running source is H.264 + AAC: the remux variant is offered too.
    let variants = checker::master(&get(&ts, "/streams/hls/f/master.m3u8").await.2);
    assert!(
        variants.iter().any(|v| v.uri.starts_with("source/")),
        "{variants:?}"
    );
    // Only low is fetched: medium ends after 3 target durations and its
    // rendition stops after the linger.
    let t0 = Instant::now();
    let mut stopped = None;
    while t0.elapsed() < Duration::from_secs(14) {
        play(&ts, "/streams/hls/f/low", "s", Duration::from_millis(900)).await;
        let st = status(&ts).await;
        if renditions(&st) == ["low"] {
            stopped = Some(t0.elapsed());
            assert_eq!(hls_sessions(&st), 1, "{st:#}");
            break;
        }
    }
    let after = stopped.expect("the unwatched variant stopped");
    assert!(
        after >= Duration::from_secs(5),
        "medium stopped too soon: {after:?}"
    );
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_reload_hints_caching_and_cors() {
    let _turn = SERIAL.lock().await;
    let ts =
        start_with(|s| s.cors_origin = Some(sluice::http::cors::CorsOrigins::parse("*").unwrap()))
            .await;
    add_stream(&ts, "a", SRC).await;
    let base = "/streams/hls/a/low";
    let m = checker::media(&get(&ts, &format!("{base}/index.m3u8?sid=b")).await.2);
    let hint = m.preload_hint.clone().expect("a preload hint");
    let (msn, part) = hint
        .strip_prefix("part-")
        .and_then(|h| h.split('?').next())
        .and_then(|h| h.strip_suffix(".m4s"))
        .and_then(|h| h.split_once('.'))
        .map(|(a, b)| (a.parse::<u64>().unwrap(), b.parse::<usize>().unwrap()))
        .expect("part-M.P.m4s");
    // The playlist that holds the hinted part: answered once it exists.
    let t0 = Instant::now();
    let (code, _, text) = get(
        &ts,
        &format!("{base}/index.m3u8?sid=b&_HLS_msn={msn}&_HLS_part={part}"),
    )
    .await;
    let waited = t0.elapsed();
    assert_eq!(code, 200, "{text}");
    let next = checker::media(&text);
    let listed = next
        .segments
        .iter()
        .filter(|s| s.msn == msn)
        .flat_map(|s| s.parts.clone())
        .chain(next.open_parts.clone())
        .any(|(_, uri)| uri.starts_with(&format!("part-{msn}.{part}.m4s")));
    assert!(
        listed,
        "part {msn}.{part} listed after the blocking reload:\n{text}"
    );
    assert!(
        waited < Duration::from_secs(2),
        "answered as soon as the part was cut: {waited:?}"
    );
    // The hinted part after that one, fetched before it exists.
    let hint = next.preload_hint.clone().unwrap();
    let r = client()
        .get(ts.url(&under(base, &hint)))
        .header("origin", "http://player.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().contains_key("access-control-allow-origin"),
        "CORS"
    );
    assert!(r.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));
    assert_eq!(&r.bytes().await.unwrap()[4..8], b"moof");
    // Too far ahead: 400 JSON.
    let (code, _, text) = get(
        &ts,
        &format!("{base}/index.m3u8?sid=b&_HLS_msn={}", msn + 50),
    )
    .await;
    assert_eq!(code, 400, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["error"],
        "bad_request"
    );
    // Playlists: CORS and no-cache.
    let r = client()
        .get(ts.url(&format!("{base}/index.m3u8?sid=b")))
        .header("origin", "http://player.test")
        .send()
        .await
        .unwrap();
    assert!(
        r.headers().contains_key("access-control-allow-origin"),
        "CORS"
    );
    assert_eq!(r.headers()["cache-control"], "no-cache");
    // A segment that never existed: 404 JSON.
    let (code, h, text) = get(&ts, &format!("{base}/seg-999999.m4s?sid=b")).await;
    assert_eq!(code, 404);
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["error"],
        "segment_not_found"
    );
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ts_segments_start_with_pat_pmt_and_decode() {
    let _turn = SERIAL.lock().await;
    let ts = start().await;
    add_stream(&ts, "a", SRC).await;
    let base = "/streams/hls/a/low";
    let (code, _, text) = get(&ts, &format!("{base}/index.m3u8?sid=t&container=ts")).await;
    assert_eq!(code, 200, "{text}");
    let m = checker::media(&text);
    assert!(
        m.map.is_none() && m.part_target.is_none(),
        "plain HLS for TS:\n{text}"
    );
    let seg = &m.segments[0];
    assert!(
        seg.uri.contains(".ts?") && seg.uri.contains("container=ts"),
        "{}",
        seg.uri
    );
    let (code, h, body) = get_bytes(&ts, &under(base, &seg.uri)).await;
    assert_eq!(code, 200);
    assert_eq!(h["content-type"], "video/mp2t");
    assert_eq!(body[0], 0x47);
    let pid = |p: &[u8]| u16::from_be_bytes([p[1] & 0x1f, p[2]]);
    assert_eq!(pid(&body[..188]), 0, "PAT first");
    assert_eq!(body[188], 0x47);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seg.ts");
    std::fs::write(&file, &body).unwrap();
    let (frames, errors) = decode_all(&file);
    assert!(errors.trim().is_empty(), "{errors}");
    assert!(
        frames as f64 >= seg.dur * 30.0 - 2.0,
        "{frames} frames in {} s",
        seg.dur
    );
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_start_answers_the_playlist_like_a_preview() {
    let _turn = SERIAL.lock().await;
    let ts = start_with(|s| s.max_sessions_per_client = 1).await;
    add_stream(&ts, "a", SRC).await;
    let (code, _, text) = get(&ts, "/streams/hls/nope/low/index.m3u8").await;
    assert_eq!(code, 404);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["error"],
        "stream_not_found"
    );
    let (code, _, text) = get(&ts, "/streams/hls/a/nosuch/index.m3u8").await;
    assert_eq!(code, 400, "{text}");
    let (code, _, _) = get(&ts, "/streams/hls/a/low/index.m3u8?sid=one").await;
    assert_eq!(code, 200);
    // The client's one session is taken: the second variant is refused
    // as a second preview would be.
    let (code, h, text) = get(&ts, "/streams/hls/a/medium/index.m3u8?sid=one").await;
    assert_eq!(code, 429, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["error"],
        "too_many_sessions"
    );
    assert!(h.contains_key("retry-after"));
    let r = client()
        .get(ts.url("/streams/preview/a?quality=medium"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_exports_master_playlist_urls() {
    let ts = start().await;
    add_stream(&ts, "a", SRC).await;
    let r = client()
        .get(ts.url("/playlist.m3u?format=hls"))
        .header("host", "tv.example:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("\nhttp://tv.example:8080/streams/hls/a/master.m3u8\n"),
        "{text}"
    );
    let (_, _, text) = get(&ts, "/playlist.m3u?format=hls&quality=low").await;
    let url = text
        .lines()
        .find(|l| l.contains("/streams/hls/a/"))
        .expect("the stream is exported");
    assert!(
        url.ends_with("/streams/hls/a/master.m3u8?quality=low"),
        "{url}"
    );
    let master = client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(checker::master(&master).len(), 1);
    ts.stop().await;
}

/// A live MPEG-TS upstream on a fixed port (an `ffmpeg -re` per
/// connection) that can be cut and brought back.
struct DroppingUpstream {
    port: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl DroppingUpstream {
    async fn start() -> DroppingUpstream {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut u = DroppingUpstream { port, task: None };
        u.resume().await;
        u
    }

    async fn resume(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(Instant::now() < deadline, "port {}: {e}", self.port);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        self.task = Some(tokio::spawn(async move {
            // Aborting this task drops the set: every connection is cut.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut sock, _)) = listener.accept().await {
                conns.spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    let _ = read_request_head(&mut sock).await;
                    let head =
                        "HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nConnection: close\r\n\r\n";
                    if sock.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let mut child = tokio::process::Command::new("ffmpeg")
                        .args(["-v", "error", "-re", "-f", "lavfi", "-i"])
                        .arg("testsrc2=size=320x240:rate=25")
                        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
                        .args([
                            "-c:v",
                            "libx264",
                            "-preset",
                            "ultrafast",
                            "-tune",
                            "zerolatency",
                        ])
                        .args([
                            "-g", "25", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k",
                        ])
                        .args(["-f", "mpegts", "pipe:1"])
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::piped())
                        .stderr(std::process::Stdio::null())
                        .kill_on_drop(true)
                        .spawn()
                        .expect("ffmpeg runs");
                    let mut out = child.stdout.take().unwrap();
                    let _ = tokio::io::copy(&mut out, &mut sock).await;
                });
                while conns.try_join_next().is_some() {}
            }
        }));
    }

    async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for DroppingUpstream {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_reconnect_is_a_discontinuity() {
    let _turn = SERIAL.lock().await;
    let ts = start_with(|s| s.reconnect_timeout_ms = 20_000).await;
    let mut up = DroppingUpstream::start().await;
    add_stream(
        &ts,
        "drop",
        &format!("http://127.0.0.1:{}/live.ts", up.port),
    )
    .await;
    let index = "/streams/hls/drop/low/index.m3u8?sid=d";
    let (code, _, text) = get(&ts, index).await;
    assert_eq!(code, 200, "{text}");
    let mut prev = checker::media(&text);
    assert!(prev.segments.iter().all(|s| !s.discontinuity));
    let reload = |prev: &checker::Media| {
        let ts = &ts;
        let prev_copy = prev.clone();
        async move {
            let (code, _, text) = get(ts, index).await;
            assert_eq!(code, 200, "{text}");
            let next = checker::media(&text);
            checker::reload(&prev_copy, &next);
            next
        }
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    prev = reload(&prev).await;
    up.stop().await;
    // The client keeps reloading through the outage (its session stays).
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        prev = reload(&prev).await;
    }
    up.resume().await;
    let t0 = Instant::now();
    let mut found = None;
    while t0.elapsed() < Duration::from_secs(20) && found.is_none() {
        tokio::time::sleep(Duration::from_millis(800)).await;
        prev = reload(&prev).await;
        found = prev.segments.iter().find(|s| s.discontinuity).cloned();
    }
    let disc = found.expect("a segment after the reconnect is marked EXT-X-DISCONTINUITY");
    // Segments before it stay as they were; it plays on from there.
    assert!(disc.msn > 0);
    let seg = get_bytes(&ts, &under("/streams/hls/drop/low", &disc.uri)).await;
    assert_eq!(seg.0, 200);
    ts.stop().await;
}
