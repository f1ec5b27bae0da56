//! The preview route end to end (issue: core preview): every profile in both
//! containers judged by ffprobe, remux, and each error status of SPEC §6.

mod common;

use std::time::Duration;

use common::*;

const READ: Duration = Duration::from_millis(3500);

async fn fetch(
    ts: &TestServer,
    path: &str,
    file: &str,
) -> (reqwest::header::HeaderMap, std::path::PathBuf) {
    let resp = client().get(ts.url(path)).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{path}: {:?}", resp.headers());
    let headers = resp.headers().clone();
    let bytes = read_for(resp, READ, 8 << 20).await;
    assert!(bytes.len() > 10_000, "{path}: only {} bytes", bytes.len());
    let out = ts.dir.path().join(file);
    std::fs::write(&out, complete_prefix(&bytes)).unwrap();
    (headers, out)
}

fn check_transcode(probe: &serde_json::Value, level: i64, w: i64, h: i64) {
    let v = stream_of(probe, "video").expect("video stream");
    assert_eq!(v["codec_name"], "h264");
    assert_eq!(v["profile"], "Constrained Baseline");
    assert_eq!(v["level"], level);
    assert_eq!(
        (v["width"].as_i64().unwrap(), v["height"].as_i64().unwrap()),
        (w, h)
    );
    // Scaling keeps the source's colours (these sources are HD, BT.709)
    // rather than converting to the small size's default.
    assert_eq!(v["color_space"], "bt709", "{v}");
    let a = stream_of(probe, "audio").expect("audio stream");
    assert_eq!(a["codec_name"], "aac");
    assert_eq!(a["profile"], "LC");
    assert_eq!(a["sample_rate"], "48000");
    assert_eq!(a["channels"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_profile_in_both_formats_is_valid() {
    let ts = start().await;
    for (quality, level, w, h) in [
        ("low", 30, 720, 404),
        ("medium", 31, 1280, 720),
        ("high", 40, 1920, 1080),
    ] {
        for format in ["mp4", "ts"] {
            let path = format!("/streams/preview/demo-smpte?quality={quality}&format={format}");
            let (headers, file) = fetch(&ts, &path, &format!("{quality}.{format}")).await;
            let ct = if format == "mp4" {
                "video/mp4"
            } else {
                "video/mp2t"
            };
            assert_eq!(headers["content-type"], ct);
            assert_eq!(headers["cache-control"], "no-store");
            assert_eq!(headers["x-sluice-mode"], "transcode");
            assert_eq!(headers["x-sluice-quality"], quality);
            assert!(!headers["x-session-id"].is_empty());
            let bytes = std::fs::read(&file).unwrap();
            if format == "mp4" {
                assert_eq!(&bytes[4..8], b"ftyp", "fMP4 starts with ftyp");
                let moov = u32::from_be_bytes(bytes[0..4].try_into().unwrap()) as usize;
                assert_eq!(&bytes[moov + 4..moov + 8], b"moov", "then moov");
            } else {
                assert_eq!(bytes[0], 0x47, "TS sync byte");
                let pid = (((bytes[1] & 0x1f) as u16) << 8) | bytes[2] as u16;
                assert_eq!(pid, 0, "TS starts with the PAT");
            }
            check_transcode(&ffprobe(&file), level, w, h);
            let (frames, errors) = decode_all(&file);
            // Decodability, not speed (benchmarks measure speed): the 1080p
            // `high` preset may run below real time on a busy 2-core machine.
            assert!(frames >= 15, "{path}: {frames} frames decoded");
            assert!(
                !errors.to_lowercase().contains("error"),
                "{path}: decoder errors: {errors}"
            );
        }
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remux_keeps_the_source_and_auto_mode_follows_the_spec() {
    let ts = start().await;
    let media = ts.media_dir();
    make_media(
        &media.join("high.ts"),
        12,
        &["-c:v", "libx264", "-profile:v", "high", "-g", "25"],
        &["-c:a", "aac", "-b:a", "96k"],
        &[],
    );
    make_media(
        &media.join("mpeg2.ts"),
        6,
        &["-c:v", "mpeg2video"],
        &["-c:a", "mp2"],
        &[],
    );
    add_stream(
        &ts,
        "high",
        &format!("file://{}", media.join("high.ts").display()),
    )
    .await;
    add_stream(
        &ts,
        "mpeg2",
        &format!("file://{}", media.join("mpeg2.ts").display()),
    )
    .await;

    for (path, mode) in [
        ("/streams/preview/high", "remux"),
        ("/streams/preview/high?format=ts", "remux"),
        ("/streams/preview/high?transcode=false", "remux"),
    ] {
        let (headers, file) = fetch(&ts, path, "remux.out").await;
        assert_eq!(headers["x-sluice-mode"], mode, "{path}");
        assert_eq!(headers["x-sluice-quality"], "source");
        let probe = ffprobe(&file);
        let v = stream_of(&probe, "video").unwrap();
        assert_eq!(
            (v["codec_name"].as_str(), v["profile"].as_str()),
            (Some("h264"), Some("High")),
            "{path}"
        );
        assert_eq!(
            (v["width"].as_i64(), v["height"].as_i64()),
            (Some(1280), Some(720))
        );
        assert_eq!(stream_of(&probe, "audio").unwrap()["codec_name"], "aac");
    }
    // Asking for a quality, or transcode=true, transcodes an H.264 source.
    let (headers, file) = fetch(&ts, "/streams/preview/high?quality=low", "q.mp4").await;
    assert_eq!(headers["x-sluice-mode"], "transcode");
    check_transcode(&ffprobe(&file), 30, 720, 404);
    let (headers, _) = fetch(&ts, "/streams/preview/high?transcode=true", "t.mp4").await;
    assert_eq!(headers["x-sluice-mode"], "transcode");
    assert_eq!(headers["x-sluice-quality"], "medium");

    // MPEG-2 + MP2: auto transcodes, transcode=false is refused naming the codecs.
    let (headers, file) = fetch(&ts, "/streams/preview/mpeg2", "m.mp4").await;
    assert_eq!(headers["x-sluice-mode"], "transcode");
    check_transcode(&ffprobe(&file), 31, 1280, 720);
    let r = client()
        .get(ts.url("/streams/preview/mpeg2?transcode=false"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "incompatible_source");
    let msg = body["message"].as_str().unwrap();
    assert!(msg.contains("mpeg2video") && msg.contains("mp2"), "{msg}");
    ts.stop().await;
}

/// A second audio track (a typical multi-language channel) is typed after
/// the output side was chosen from the first two streams: it must be
/// discarded, not held, or its queue fills and stalls the demuxer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_audio_tracks_are_dropped_without_stalling() {
    let ts = start().await;
    let media = ts.media_dir();
    make_media(
        &media.join("two-audio.ts"),
        8,
        &["-map", "0:v", "-c:v", "libx264", "-g", "25"],
        &["-map", "1:a", "-map", "1:a", "-c:a", "aac"],
        &[],
    );
    let url = format!("file://{}", media.join("two-audio.ts").display());
    add_stream(&ts, "two-audio", &url).await;
    for (query, file) in [
        ("transcode=false", "two.mp4"),
        ("quality=low", "two-low.ts"),
    ] {
        let format = if file.ends_with(".ts") {
            "&format=ts"
        } else {
            ""
        };
        let path = format!("/streams/preview/two-audio?{query}{format}");
        // The whole file arrives and the body ends: nothing stalled.
        let out = fetch_to_end(&ts, &path, file, Duration::from_secs(40)).await;
        let (frames, errors) = decode_all(&out);
        assert!(frames >= 195, "{path}: {frames} of 200 frames ({errors})");
        assert!(stream_of(&ffprobe(&out), "audio").is_some(), "{path}");
    }
    ts.stop().await;
}

/// A clip shorter than what each stream may hold before the output side
/// exists is read to its end first: that end is real, not a failed source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clip_read_to_its_end_before_the_output_exists_still_plays() {
    let ts = start().await;
    let media = ts.media_dir();
    make_media(
        &media.join("short.ts"),
        1,
        &["-c:v", "libx264", "-g", "25"],
        &["-c:a", "aac"],
        &[],
    );
    let url = format!("file://{}", media.join("short.ts").display());
    add_stream(&ts, "short", &url).await;
    for (query, file) in [
        ("transcode=false", "short.mp4"),
        ("quality=low", "short-low.mp4"),
    ] {
        let path = format!("/streams/preview/short?{query}");
        let out = fetch_to_end(&ts, &path, file, Duration::from_secs(20)).await;
        let (frames, errors) = decode_all(&out);
        assert!(frames >= 24, "{path}: {frames} of 25 frames ({errors})");
        assert!(stream_of(&ffprobe(&out), "audio").is_some(), "{path}");
    }
    ts.stop().await;
}

/// A file plays at its own pace, like a live channel: a preview of a 6 s
/// clip lasts about 6 s (it used to arrive as fast as it could be read and
/// converted, and end at once), in remux and in transcode, with every frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_paced_like_a_live_channel() {
    let ts = start().await;
    let media = ts.media_dir();
    let seconds = 6;
    make_media(
        &media.join("paced.ts"),
        seconds,
        &[
            "-s",
            "640x360",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
        ],
        &["-c:a", "aac"],
        &[],
    );
    let url = format!("file://{}", media.join("paced.ts").display());
    add_stream(&ts, "paced", &url).await;
    for (query, file) in [
        ("transcode=false&format=ts", "paced.ts"),
        ("quality=low", "paced-low.mp4"),
    ] {
        let path = format!("/streams/preview/paced?{query}");
        let t0 = std::time::Instant::now();
        let out = fetch_to_end(&ts, &path, file, Duration::from_secs(40)).await;
        let took = t0.elapsed();
        println!("{path}: {seconds} s of media took {took:?}");
        assert!(
            took >= Duration::from_secs_f64(0.8 * f64::from(seconds)),
            "{path}: {seconds} s of media arrived in {took:?}"
        );
        let (frames, errors) = decode_all(&out);
        assert!(frames >= 145, "{path}: {frames} of 150 frames ({errors})");
        assert!(stream_of(&ffprobe(&out), "audio").is_some(), "{path}");
    }
    ts.stop().await;
}

/// Serves `file` over HTTP from byte `offset` at its own byte rate (its
/// size over `seconds`), the way a live channel reaches a client that
/// joins mid-stream. One client per connection; returns the port.
async fn paced_ts_server(file: std::path::PathBuf, offset: usize, seconds: f64) -> u16 {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let data = std::sync::Arc::new(std::fs::read(&file).unwrap());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let data = data.clone();
            tokio::spawn(async move {
                if read_request_head(&mut sock).await.is_none() {
                    return;
                }
                let head =
                    "HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nConnection: close\r\n\r\n";
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let per_tick = ((data.len() as f64 / seconds / 50.0) as usize / 188).max(1) * 188;
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                for chunk in data[offset..].chunks(per_tick) {
                    tick.tick().await;
                    if sock.write_all(chunk).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A live channel joined mid-GOP: audio is typed at once, but the video
/// parser has no SPS until the next keyframe, seconds later. The output
/// must wait for the picture rather than settle for audio alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_channel_joined_mid_gop_keeps_its_video() {
    let ts = start().await;
    let file = ts.dir.path().join("long-gop.ts");
    // A keyframe every 4 s (SPS and PPS only with it) and two audio
    // languages, as many IPTV channels send. Every audio queue must outlast
    // the wait, or a full one blocks the demuxer before the keyframe.
    make_media(
        &file,
        12,
        &[
            "-map",
            "0:v",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "100",
            "-keyint_min",
            "100",
            "-sc_threshold",
            "0",
        ],
        &["-map", "1:a", "-map", "1:a", "-c:a", "aac"],
        &["-f", "mpegts"],
    );
    // Join 0.5 s in: past the first keyframe, 3.5 s before the next.
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v", "-show_entries"])
        .args(["packet=pos,pts_time", "-of", "csv=p=0"])
        .arg(&file)
        .output()
        .unwrap();
    let packets: Vec<(f64, usize)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (t, pos) = l.split_once(',')?;
            Some((t.parse().ok()?, pos.trim_end_matches(',').parse().ok()?))
        })
        .collect();
    let start = packets.first().expect("ffprobe lists the video packets").0;
    let offset = packets
        .iter()
        .find(|(t, _)| *t >= start + 0.5)
        .map(|(_, pos)| pos / 188 * 188)
        .expect("the clip is longer than 0.5 s");
    let port = paced_ts_server(file, offset, 12.0).await;
    add_stream(&ts, "mid-gop", &format!("http://127.0.0.1:{port}/live.ts")).await;
    let resp = client()
        .get(ts.url("/streams/preview/mid-gop"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-sluice-mode"], "remux");
    let bytes = read_for(resp, Duration::from_secs(3), 8 << 20).await;
    let saved = ts.dir.path().join("mid-gop.mp4");
    std::fs::write(&saved, complete_prefix(&bytes)).unwrap();
    let probe = ffprobe(&saved);
    assert!(stream_of(&probe, "video").is_some(), "no video: {probe}");
    assert!(stream_of(&probe, "audio").is_some(), "no audio: {probe}");
    let (frames, errors) = decode_all(&saved);
    assert!(frames >= 25, "{frames} frames decoded ({errors})");
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_only_sources_give_video_only_output() {
    let ts = start().await;
    let (_, file) = fetch(&ts, "/streams/preview/demo-video-only?quality=low", "v.mp4").await;
    let probe = ffprobe(&file);
    assert!(stream_of(&probe, "video").is_some());
    assert!(stream_of(&probe, "audio").is_none());
    ts.stop().await;
}

async fn error_of(
    ts: &TestServer,
    path: &str,
) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
    let r = client().get(ts.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    assert_eq!(headers["content-type"], "application/json", "{path}");
    (status, r.json().await.unwrap(), headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_spec_errors() {
    let ts = start().await;
    let cases = [
        ("/streams/preview/no-such-stream", 404, "stream_not_found"),
        (
            "/streams/preview/demo-smpte?quality=ultra",
            400,
            "bad_request",
        ),
        (
            "/streams/preview/demo-smpte?quality=Bad!",
            400,
            "bad_request",
        ),
        ("/streams/preview/demo-smpte?format=avi", 400, "bad_request"),
        (
            "/streams/preview/demo-smpte?transcode=maybe",
            400,
            "bad_request",
        ),
        ("/streams/preview/demo-smpte?timeout=50", 400, "bad_request"),
        (
            "/streams/preview/demo-smpte?timeout=999999",
            400,
            "bad_request",
        ),
        (
            "/streams/preview/demo-smpte?timeout=abc",
            400,
            "bad_request",
        ),
        (
            "/streams/preview/demo-smpte?transcode=false",
            422,
            "incompatible_source",
        ),
    ];
    for (path, status, code) in cases {
        let (s, body, _) = error_of(&ts, path).await;
        assert_eq!(
            (s, body["error"].as_str().unwrap()),
            (status, code),
            "{path}: {body}"
        );
        assert!(!body["message"].as_str().unwrap().is_empty());
    }
    let r = client()
        .put(ts.url("/api/streams/demo-ball"))
        .json(&serde_json::json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, body, _) = error_of(&ts, "/streams/preview/demo-ball").await;
    assert_eq!(
        (s, body["error"].as_str().unwrap()),
        (409, "stream_disabled")
    );
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_silent_sources_fail_promptly() {
    let ts = start().await;
    // A port with nothing listening: 502 well before the start timeout.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    add_stream(
        &ts,
        "refused",
        &format!("http://127.0.0.1:{closed_port}/live.ts"),
    )
    .await;
    let t0 = std::time::Instant::now();
    let (s, body, _) = error_of(&ts, "/streams/preview/refused?timeout=15000").await;
    assert_eq!(
        (s, body["error"].as_str().unwrap()),
        (502, "source_failed"),
        "{body}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "502 took {:?}",
        t0.elapsed()
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("refused"),
        "{body}"
    );

    // A server that accepts and never answers: 504 after the asked timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    add_stream(
        &ts,
        "silent",
        &format!("http://127.0.0.1:{silent_port}/live.ts"),
    )
    .await;
    let t0 = std::time::Instant::now();
    let (s, body, _) = error_of(&ts, "/streams/preview/silent?timeout=1500").await;
    assert_eq!(
        (s, body["error"].as_str().unwrap()),
        (504, "start_timeout"),
        "{body}"
    );
    assert!(t0.elapsed() >= Duration::from_millis(1400));
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "504 took {:?}",
        t0.elapsed()
    );
    holder.abort();
    // Nothing is left running after either failure.
    let state = ts.state().clone();
    assert!(
        eventually(Duration::from_secs(5), || state.registry.is_empty()
            && state.pool.snapshot().transcodes == 0
            && state.pool.snapshot().remuxes == 0)
        .await
    );
    ts.stop().await;
}
