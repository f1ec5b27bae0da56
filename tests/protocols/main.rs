//! Every IPTV protocol sluice accepts, proven against a real server on
//! 127.0.0.1 (issue 6, item 1): HTTP progressive MPEG-TS, HLS (a live
//! media playlist, and a master playlist whose variant must follow the asked
//! profile), DASH, RTSP over TCP and over UDP, RTMP, UDP unicast and
//! multicast, RTP, SRT and file://.
//!
//! Each upstream is a real server or sender from Debian packages (ffmpeg,
//! gst-rtsp-server, nginx's rtmp module), run as a child process that is
//! killed on drop; HLS and DASH files ffmpeg writes are served by a static
//! file server inside the test that logs every path asked for. Multicast
//! runs in a network namespace of the test's own. Every preview is judged by
//! ffprobe and a full decode: H.264 video and AAC audio. With `--nocapture`
//! each protocol prints its time to first byte: `protocol NAME ttfb_ms=N`.
//! A missing tool fails the test with the package to install; nothing is
//! skipped.

#[path = "../common/mod.rs"]
mod common;
mod judge;
mod upstream;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use judge::*;
use upstream::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_progressive_mpeg_ts() {
    let ts = server().await;
    let dir = ts.dir.path().to_path_buf();
    // ffmpeg's own HTTP server serves one client: one per preview.
    let (a, b) = (free_tcp_port(), free_tcp_port());
    let mut ups = Vec::new();
    for (name, port) in [("http-a", a), ("http-b", b)] {
        let mut up = Upstream::spawn(
            name,
            ffmpeg_live(SIZE).args(ENCODE).args([
                "-f",
                "mpegts",
                "-listen",
                "1",
                &format!("http://127.0.0.1:{port}/live.ts"),
            ]),
            &dir,
        );
        up.wait_until("listening", |_| tcp_port_taken(port)).await;
        ups.push(up);
    }
    add_stream(&ts, "http-a", &format!("http://127.0.0.1:{a}/live.ts")).await;
    add_stream(&ts, "http-b", &format!("http://127.0.0.1:{b}/live.ts")).await;
    prove("http", &ts, "http-a", "http-b").await;
    ts.stop().await;
}

/// ffmpeg writing a live HLS rendition (1 s segments, a rolling window of
/// 5, old segments deleted) under `dir/name/index.m3u8`.
fn hls_args(dir: &Path, name: &str) -> Vec<String> {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    [
        "-f",
        "hls",
        "-hls_time",
        "1",
        "-hls_list_size",
        "5",
        "-hls_flags",
        "delete_segments+temp_file",
        "-hls_segment_filename",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        out.join("seg%05d.ts").display().to_string(),
        out.join("index.m3u8").display().to_string(),
    ])
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_live_playlist() {
    let ts = server().await;
    let root = ts.dir.path().join("hls");
    let mut up = Upstream::spawn(
        "hls",
        ffmpeg_live(SIZE).args(ENCODE).args(hls_args(&root, "live")),
        ts.dir.path(),
    );
    let files = FileServer::start(root.clone()).await;
    let playlist = root.join("live/index.m3u8");
    up.wait_until("two segments listed", |_| {
        std::fs::read_to_string(&playlist).is_ok_and(|p| p.matches("#EXTINF").count() >= 2)
    })
    .await;
    add_stream(&ts, "hls", &files.url("live/index.m3u8")).await;
    // The hls:// spelling of the same playlist.
    let hls_url = format!("hls://{}/live/index.m3u8", files.addr);
    add_stream(&ts, "hls-scheme", &hls_url).await;
    prove("hls", &ts, "hls", "hls-scheme").await;
    assert!(
        files.requests().iter().any(|r| r.ends_with(".ts")),
        "segments were fetched: {:?}",
        files.requests()
    );
    ts.stop().await;
}

/// Variants of the master playlist: (directory, size, BANDWIDTH). The big
/// one is listed first, so picking the first variant is wrong for `low`.
const VARIANTS: [(&str, &str, u32); 2] =
    [("big", "480x270", 4_000_000), ("small", "320x180", 800_000)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_master_playlist_variant_follows_the_profile() {
    let ts = server().await;
    let root = ts.dir.path().join("hls");
    std::fs::create_dir_all(&root).unwrap();
    // One encoder, two renditions of the same live source.
    let mut cmd = ffmpeg_live(VARIANTS[0].1);
    let (w, h) = VARIANTS[1].1.split_once('x').unwrap();
    cmd.args([
        "-filter_complex",
        &format!("[0:v]split=2[big][s];[s]scale={w}:{h}[small]"),
    ]);
    for (name, _, _) in VARIANTS {
        cmd.args(["-map", &format!("[{name}]"), "-map", "1:a"])
            .args(ENCODE)
            .args(hls_args(&root, name));
    }
    let mut up = Upstream::spawn("hls-variants", &mut cmd, ts.dir.path());
    let mut master = String::from("#EXTM3U\n#EXT-X-VERSION:3\n");
    for (name, size, bandwidth) in VARIANTS {
        master.push_str(&format!(
            "#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},RESOLUTION={size}\n{name}/index.m3u8\n"
        ));
    }
    std::fs::write(root.join("master.m3u8"), master).unwrap();
    let files = FileServer::start(root.clone()).await;
    up.wait_until("both renditions list two segments", |_| {
        VARIANTS.iter().all(|(name, _, _)| {
            std::fs::read_to_string(root.join(name).join("index.m3u8"))
                .is_ok_and(|p| p.matches("#EXTINF").count() >= 2)
        })
    })
    .await;
    add_stream(&ts, "master", &files.url("master.m3u8")).await;

    // low: 1096 kbit/s fits only the small variant; high: 5128 kbit/s fits both,
    // the biggest that fits wins. Each profile keeps the variant's size
    // (neither downscales these), so the output size shows the variant too.
    let mut ttfb = None;
    for (quality, want) in [("low", "small"), ("high", "big")] {
        files.clear_log();
        let p = preview(&ts, "master", &format!("format=mp4&quality={quality}")).await;
        let got = check(&format!("hls master quality={quality}"), &p, "transcode");
        let segments = |variant: &str| {
            files
                .requests()
                .iter()
                .filter(|r| r.starts_with(&format!("/{variant}/")) && r.ends_with(".ts"))
                .count()
        };
        let other = if want == "big" { "small" } else { "big" };
        assert!(
            segments(want) > 0 && segments(other) == 0,
            "quality={quality} must play the {want} variant only; requests: {:?}",
            files.requests()
        );
        let size = VARIANTS.iter().find(|v| v.0 == want).unwrap().1;
        assert_eq!(
            format!("{}x{}", got.width, got.height),
            size,
            "quality={quality}: output size shows the variant played"
        );
        ttfb.get_or_insert(p.ttfb);
    }
    println!("protocol hls-master ttfb_ms={}", ttfb.unwrap().as_millis());
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dash_live_manifest() {
    let ts = server().await;
    let root = ts.dir.path().join("dash");
    std::fs::create_dir_all(&root).unwrap();
    let mut up = Upstream::spawn(
        "dash",
        ffmpeg_live(SIZE).args(ENCODE).args([
            "-f",
            "dash",
            "-seg_duration",
            "1",
            "-window_size",
            "5",
            "-extra_window_size",
            "5",
            "-use_template",
            "1",
            "-use_timeline",
            "1",
            "-adaptation_sets",
            "id=0,streams=v id=1,streams=a",
            &root.join("manifest.mpd").display().to_string(),
        ]),
        ts.dir.path(),
    );
    let files = FileServer::start(root.clone()).await;
    let manifest = root.join("manifest.mpd");
    up.wait_until("a live manifest with segments", |_| {
        std::fs::read_to_string(&manifest)
            .is_ok_and(|m| m.contains("type=\"dynamic\"") && m.matches("<S ").count() >= 2)
    })
    .await;
    add_stream(&ts, "dash", &files.url("manifest.mpd")).await;
    add_stream(&ts, "dash-ts", &files.url("manifest.mpd")).await;
    prove("dash", &ts, "dash", "dash-ts").await;
    assert!(
        files.requests().iter().any(|r| r.ends_with(".m4s")),
        "segments were fetched: {:?}",
        files.requests()
    );
    ts.stop().await;
}

/// gst-rtsp-server (tests/fixtures/rtsp_server.py) offering only `transport`.
async fn rtsp_server(dir: &Path, transport: &str) -> (Upstream, u16) {
    rtsp_server_with(dir, transport, &[]).await
}

/// [`rtsp_server`] with the fixture's extra arguments (`slices`).
async fn rtsp_server_with(dir: &Path, transport: &str, extra: &[&str]) -> (Upstream, u16) {
    let python = "/usr/bin/python3";
    assert!(
        Path::new(python).exists(),
        "{python} is missing: install the Debian packages python3, python3-gi and \
         gir1.2-gst-rtsp-server-1.0 (./packaging/install-deps.sh test)"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rtsp_server.py");
    let port = free_tcp_port();
    let mut up = Upstream::spawn(
        &format!("rtsp-{transport}"),
        Command::new(python)
            .arg(script)
            .args([&port.to_string(), "live", transport])
            .args(extra),
        dir,
    );
    up.wait_until("ready", |u| u.log().lines().any(|l| l == "ready"))
        .await;
    (up, port)
}

/// The transports the RTSP server accepted in SETUP requests.
fn rtsp_setups(up: &Upstream) -> Vec<String> {
    up.log()
        .lines()
        .filter_map(|l| l.strip_prefix("setup "))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtsp_over_tcp() {
    let ts = server().await;
    let (up, port) = rtsp_server(ts.dir.path(), "tcp").await;
    let url = format!("rtsp://127.0.0.1:{port}/live");
    add_stream(&ts, "rtsp-tcp", &url).await;
    add_stream(&ts, "rtsp-tcp-ts", &url).await;
    prove("rtsp-tcp", &ts, "rtsp-tcp", "rtsp-tcp-ts").await;
    // The server refuses UDP, so the media came interleaved on the RTSP connection.
    assert!(
        rtsp_setups(&up)
            .iter()
            .any(|t| t.starts_with("RTP/AVP/TCP")),
        "no TCP SETUP: {}",
        up.log()
    );
    ts.stop().await;
}

/// A camera-like stream: each picture coded as 4 slices, SPS/PPS repeated
/// in front of the slices. The depayloader hands such a picture on in
/// pieces of which only the first has a timestamp; remuxed, the preview
/// must still have its video, whole and decodable, in both containers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtsp_h264_in_slices_with_repeated_headers_remuxes_with_its_video() {
    let ts = server().await;
    let (_up, port) = rtsp_server_with(ts.dir.path(), "tcp", &["slices"]).await;
    let url = format!("rtsp://127.0.0.1:{port}/live");
    add_stream(&ts, "slices", &url).await;
    add_stream(&ts, "slices-ts", &url).await;
    let (mp4, mpegts) = tokio::join!(
        preview(&ts, "slices", "format=mp4"),
        preview(&ts, "slices-ts", "format=ts&transcode=false"),
    );
    check("rtsp slices mp4", &mp4, "remux");
    check("rtsp slices ts", &mpegts, "remux");
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtsp_over_udp() {
    let ts = server().await;
    let (up, port) = rtsp_server(ts.dir.path(), "udp").await;
    let url = format!("rtsp://127.0.0.1:{port}/live");
    add_stream(&ts, "rtsp-udp", &url).await;
    add_stream(&ts, "rtsp-udp-ts", &url).await;
    prove("rtsp-udp", &ts, "rtsp-udp", "rtsp-udp-ts").await;
    let setups = rtsp_setups(&up);
    assert!(
        setups
            .iter()
            .any(|t| t.contains("unicast") && t.contains("client_port="))
            && !setups.iter().any(|t| t.contains("TCP")),
        "UDP SETUPs only: {}",
        up.log()
    );
    ts.stop().await;
}

/// nginx with the rtmp module, its `live` application configured with
/// `directives`, listening on 127.0.0.1; returns it, its port and the path
/// of its error log (where it logs each publisher and player).
async fn nginx_rtmp(ts: &TestServer, directives: &str) -> (Upstream, u16, std::path::PathBuf) {
    require("nginx", "nginx");
    let module = "/usr/lib/nginx/modules/ngx_rtmp_module.so";
    assert!(
        Path::new(module).exists(),
        "{module} is missing: install the Debian package libnginx-mod-rtmp \
         (./packaging/install-deps.sh test)"
    );
    let dir = ts.dir.path().join("nginx");
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_tcp_port();
    let conf = dir.join("nginx.conf");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "load_module {module};\n\
             daemon off;\nmaster_process off;\nworker_processes 1;\n\
             pid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             rtmp {{ server {{ listen 127.0.0.1:{port};\n\
               application live {{ live on; {directives} }} }} }}\n"
        ),
    )
    .unwrap();
    let mut nginx = Upstream::spawn(
        "nginx",
        Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log")),
        ts.dir.path(),
    );
    nginx
        .wait_until("listening", |_| tcp_port_taken(port))
        .await;
    (nginx, port, dir.join("error.log"))
}

/// Waits until nginx's error log shows the publisher of stream `name`.
async fn wait_for_publisher(publisher: &mut Upstream, error_log: &Path, name: &str) {
    let line = format!("publish: name='{name}'");
    publisher
        .wait_until("nginx accepted the publisher", |_| {
            std::fs::read_to_string(error_log).is_ok_and(|l| l.contains(&line))
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_through_nginx() {
    let ts = server().await;
    let (mut nginx, port, error_log) = nginx_rtmp(&ts, "wait_key on; wait_video on;").await;
    let url = format!("rtmp://127.0.0.1:{port}/live/x");
    let mut publisher = ffmpeg_send("rtmp-publisher", ts.dir.path(), "flv", &url);
    wait_for_publisher(&mut publisher, &error_log, "x").await;
    add_stream(&ts, "rtmp", &url).await;
    add_stream(&ts, "rtmp-ts", &url).await;
    prove("rtmp", &ts, "rtmp", "rtmp-ts").await;
    nginx.assert_running();
    ts.stop().await;
}

/// nginx-rtmp as most people run it (`live on;` and nothing else: no
/// wait_key, no wait_video) hands a player that joins between keyframes
/// the audio at once and the video's codec headers only later. A file with
/// a keyframe every 2 s is published as is; players join 1 s, 5 s and 30 s
/// after the publisher started, and each preview has its video.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_with_default_nginx_settings_joined_between_keyframes() {
    let ts = server().await;
    let (mut nginx, port, error_log) = nginx_rtmp(&ts, "").await;
    let clip = ts.dir.path().join("gop2.flv");
    make_media(
        &clip,
        10,
        &[
            "-s",
            SIZE,
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-g",
            "50",
            "-keyint_min",
            "50",
            "-sc_threshold",
            "0",
        ],
        &["-c:a", "aac", "-b:a", "64k"],
        &[],
    );
    let url = format!("rtmp://127.0.0.1:{port}/live/d");
    let mut publisher = Upstream::spawn(
        "rtmp-publisher",
        Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-loglevel", "warning", "-re"])
            .args(["-stream_loop", "-1", "-i"])
            .arg(&clip)
            .args(["-c", "copy", "-f", "flv", &url]),
        ts.dir.path(),
    );
    wait_for_publisher(&mut publisher, &error_log, "d").await;
    let published = Instant::now();
    add_stream(&ts, "rtmp-default", &url).await;
    for (after, query, mode) in [
        (1, "format=ts&quality=low", "transcode"),
        (5, "format=mp4", "remux"),
        (30, "format=ts&quality=low", "transcode"),
    ] {
        let join = published + Duration::from_secs(after);
        tokio::time::sleep_until(join.into()).await;
        let p = preview(&ts, "rtmp-default", query).await;
        check(&format!("rtmp joined after {after} s ({query})"), &p, mode);
        println!(
            "rtmp default settings: joined after {after} s, ttfb_ms={}",
            p.ttfb.as_millis()
        );
    }
    publisher.assert_running();
    nginx.assert_running();
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_unicast_mpeg_ts() {
    let ts = server().await;
    let (a, b) = (free_udp_port(), free_udp_port());
    let target = |p: u16| format!("udp://127.0.0.1:{p}?pkt_size=1316");
    let _senders = [
        ffmpeg_send("udp-a", ts.dir.path(), "mpegts", &target(a)),
        ffmpeg_send("udp-b", ts.dir.path(), "mpegts", &target(b)),
    ];
    add_stream(&ts, "udp-a", &format!("udp://127.0.0.1:{a}")).await;
    add_stream(&ts, "udp-b", &format!("udp://127.0.0.1:{b}")).await;
    prove("udp", &ts, "udp-a", "udp-b").await;
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtp_mpeg_ts() {
    let ts = server().await;
    let a = free_rtp_port();
    let mut b = free_rtp_port();
    while b.abs_diff(a) < 2 {
        b = free_rtp_port();
    }
    let _senders = [
        ffmpeg_send(
            "rtp-a",
            ts.dir.path(),
            "rtp_mpegts",
            &format!("rtp://127.0.0.1:{a}"),
        ),
        ffmpeg_send(
            "rtp-b",
            ts.dir.path(),
            "rtp_mpegts",
            &format!("rtp://127.0.0.1:{b}"),
        ),
    ];
    add_stream(&ts, "rtp-a", &format!("rtp://127.0.0.1:{a}")).await;
    add_stream(&ts, "rtp-b", &format!("rtp://127.0.0.1:{b}")).await;
    prove("rtp", &ts, "rtp-a", "rtp-b").await;
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srt_caller_to_a_listener() {
    let ts = server().await;
    // ffmpeg's SRT listener serves one caller: one per preview.
    let mut ups = Vec::new();
    let mut ports = Vec::new();
    for name in ["srt-a", "srt-b"] {
        let port = free_udp_port();
        let mut up = ffmpeg_send(
            name,
            ts.dir.path(),
            "mpegts",
            &format!("srt://127.0.0.1:{port}?mode=listener&pkt_size=1316"),
        );
        up.wait_until("listening", |_| udp_port_taken(port)).await;
        ups.push(up);
        ports.push(port);
    }
    add_stream(
        &ts,
        "srt-a",
        &format!("srt://127.0.0.1:{}?mode=caller", ports[0]),
    )
    .await;
    add_stream(
        &ts,
        "srt-b",
        &format!("srt://127.0.0.1:{}?mode=caller", ports[1]),
    )
    .await;
    prove("srt", &ts, "srt-a", "srt-b").await;
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_in_the_media_dir() {
    // Remux, transcode and confinement of file:// are covered in tests/preview.rs
    // and src/media/source.rs; this measures its time to first byte.
    let ts = server().await;
    let media = ts.media_dir().join("clip.ts");
    make_media(
        &media,
        8,
        &[
            "-s",
            SIZE,
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
        ],
        &["-c:a", "aac", "-b:a", "64k"],
        &[],
    );
    add_stream(&ts, "file", &format!("file://{}", media.display())).await;
    let p = preview(&ts, "file", "format=mp4").await;
    check("file mp4", &p, "remux");
    report("file", &p);
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_multicast_in_a_network_namespace() {
    require("ffmpeg", "ffmpeg");
    require("curl", "curl");
    let ns = Netns::create();
    let dir = tempfile::tempdir().unwrap();
    let group = "239.255.42.42";
    let port = free_udp_port();
    let _sender = Upstream::spawn(
        "multicast-sender",
        ns.exec("ffmpeg").args(live_input(SIZE)).args(ENCODE).args([
            "-f",
            "mpegts",
            &format!("udp://{group}:{port}?pkt_size=1316&ttl=1&localaddr=127.0.0.1"),
        ]),
        dir.path(),
    );

    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let ns_name = ns.name.clone();
    let bin = tokio::task::spawn_blocking(move || {
        BinServer::start_under(
            &["ip", "netns", "exec", &ns_name],
            &data,
            &[],
            &[("RATE_LIMIT_PREVIEW", "off"), ("LOG_LEVEL", "info")],
        )
    })
    .await
    .unwrap();
    // The server listens on the namespace's loopback: talk to it from inside.
    let created = run_ok(
        ns.exec("curl").args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Content-Type: application/json",
            "-d",
            &serde_json::json!({"id": "mc", "name": "mc", "url": format!("udp://@{group}:{port}")})
                .to_string(),
            &bin.url("/api/streams"),
        ]),
    );
    assert_eq!(created, "201", "creating the multicast stream");
    let p = curl_preview(&ns, &bin, "mc", "format=mp4", dir.path()).await;
    check("udp-multicast mp4", &p, "remux");
    report("udp-multicast", &p);
}

#[test]
fn an_upstream_guard_kills_and_reaps_its_child() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = Upstream::spawn(
        "sleeper",
        Command::new("sh").args(["-c", "echo out; echo err >&2; exec sleep 60"]),
        dir.path(),
    );
    let start = Instant::now();
    while !(up.log().contains("out") && up.log().contains("err")) {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", up.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    up.assert_running();
    let pid = up.child.id();
    drop(up);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the guard killed and reaped its child"
    );
}
