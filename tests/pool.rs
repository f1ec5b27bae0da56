//! Admission and session lifecycle over real HTTP (SPEC §6 status, §7):
//! bounded pool with a FIFO queue, per-client limits, memory thresholds,
//! stalls, admin stop, the SSE narration, and concurrent hang-ups.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use sluice::config::{Settings, TranscodeLimit};
use sluice::http::ratelimit::Rate;

const TINY: &str = "test://smpte?size=320x240&rate=30";
const PREVIEW: &str = "/streams/preview/tiny?quality=low";

async fn server(tweak: impl FnOnce(&mut Settings)) -> TestServer {
    let ts = start_with(|s| {
        s.rate_limit_preview = Rate::parse("off").unwrap();
        s.rate_limit_api = Rate::parse("off").unwrap();
        s.rate_limit_admin = Rate::parse("off").unwrap();
        tweak(s)
    })
    .await;
    // Viewers of one stream share its channel and take one slot: the
    // slot tests fill the pool with distinct streams of the same source.
    for id in ["tiny", "tiny2", "tiny3", "tiny4", "tiny5"] {
        add_stream(&ts, id, TINY).await;
    }
    ts
}

async fn status(ts: &TestServer) -> serde_json::Value {
    client()
        .get(ts.url("/api/streams/transcoding/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Opens a preview and waits for its first bytes.
async fn running(
    ts: &TestServer,
    path: &str,
) -> futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>> {
    let r = client().get(ts.url(path)).send().await.unwrap();
    assert_eq!(r.status(), 200, "{path}");
    let mut body = r.bytes_stream().boxed();
    body.next().await.unwrap().unwrap();
    body
}

fn spawn_get(ts: &TestServer, path: &str) -> tokio::task::JoinHandle<reqwest::Response> {
    let url = ts.url(path);
    tokio::spawn(async move { client().get(url).send().await.unwrap() })
}

async fn wait_queued(ts: &TestServer, n: u64) {
    for _ in 0..200 {
        if status(ts).await["queuedSessions"] == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("queue never reached {n}: {}", status(ts).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_request_waits_fifo_then_plays_and_limits_answer_503() {
    let ts = server(|s| {
        s.max_transcodes = TranscodeLimit::Max(2);
        s.max_queued = 2;
        s.max_sessions_per_client = 10;
    })
    .await;
    let a = running(&ts, PREVIEW).await;
    let _b = running(&ts, "/streams/preview/tiny2?quality=low").await;
    let st = status(&ts).await;
    assert_eq!(
        (st["activeSessions"].as_u64(), st["maxConcurrent"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(st["utilizationPercentage"].as_f64(), Some(100.0));
    assert_eq!(st["sessions"].as_array().unwrap().len(), 2);

    // Two waiters queue in order; a third finds the queue full.
    let first = spawn_get(&ts, "/streams/preview/tiny3?quality=low&timeout=60000");
    wait_queued(&ts, 1).await;
    let second = spawn_get(&ts, "/streams/preview/tiny4?quality=low&timeout=60000");
    wait_queued(&ts, 2).await;
    let st = status(&ts).await;
    assert_eq!(st["queue"][0]["streamId"], "tiny3");
    assert!(
        st["queue"][0]["waitingMs"].as_u64().unwrap()
            >= st["queue"][1]["waitingMs"].as_u64().unwrap()
    );
    let full = client()
        .get(ts.url("/streams/preview/tiny5?quality=low"))
        .send()
        .await
        .unwrap();
    assert_eq!(full.status(), 503);
    assert!(full.headers().contains_key("retry-after"));
    assert_eq!(
        full.json::<serde_json::Value>().await.unwrap()["error"],
        "queue_full"
    );

    // Freeing a slot starts the oldest waiter; the younger still waits.
    drop(a);
    let first = tokio::time::timeout(Duration::from_secs(20), first)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.status(), 200);
    assert!(!second.is_finished());
    assert_eq!(status(&ts).await["queuedSessions"], 1);
    second.abort();
    let _ = second.await;
    drop(first);
    wait_queued(&ts, 0).await;

    // A waiter past its start timeout leaves with pool_full.
    let _c = running(&ts, PREVIEW).await;
    let r = client()
        .get(ts.url("/streams/preview/tiny5?quality=low&timeout=800"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "pool_full"
    );
    assert_eq!(status(&ts).await["queuedSessions"], 0);
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_hangs_up_leaves_the_queue_at_once() {
    let ts = server(|s| s.max_transcodes = TranscodeLimit::Max(1)).await;
    let _a = running(&ts, PREVIEW).await;
    let waiter = spawn_get(&ts, "/streams/preview/tiny2?quality=low&timeout=60000");
    wait_queued(&ts, 1).await;
    waiter.abort();
    let _ = waiter.await;
    wait_queued(&ts, 0).await;
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_limit_gives_429() {
    let ts = server(|s| {
        s.max_sessions_per_client = 1;
        s.trust_proxy = sluice::config::TrustProxy::Hops(1);
    })
    .await;
    let get = |ip: &'static str| {
        client()
            .get(ts.url(PREVIEW))
            .header("x-forwarded-for", ip)
            .send()
    };
    let first = get("198.51.100.7").await.unwrap();
    assert_eq!(first.status(), 200);
    let mut body = first.bytes_stream();
    body.next().await.unwrap().unwrap();
    let second = get("198.51.100.7").await.unwrap();
    assert_eq!(second.status(), 429);
    assert!(second.headers().contains_key("retry-after"));
    assert_eq!(
        second.json::<serde_json::Value>().await.unwrap()["error"],
        "too_many_sessions"
    );
    // Another client is unaffected, and the client IP shows in status.
    let other = get("198.51.100.8").await.unwrap();
    assert_eq!(other.status(), 200);
    let st = status(&ts).await;
    let ips: Vec<_> = st["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["clientIP"].as_str().unwrap().to_string())
        .collect();
    assert!(ips.contains(&"198.51.100.7".to_string()), "{ips:?}");
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_warning_downgrades_and_critical_refuses() {
    let ts = server(|s| {
        s.memory_warning = 1_000;
        s.memory_critical = 1 << 50;
    })
    .await;
    let health: serde_json::Value = client()
        .get(ts.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "degraded", "{health}");
    let r = client()
        .get(ts.url("/streams/preview/tiny?quality=high"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-sluice-quality"],
        "medium",
        "the most expensive profile is served one lower"
    );
    drop(r);
    let r = client()
        .get(ts.url("/streams/preview/tiny?quality=low"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-sluice-quality"], "low");
    drop(r);
    ts.stop().await;

    let ts = server(|s| {
        s.memory_warning = 1_000;
        s.memory_critical = 2_000;
    })
    .await;
    let r = client().get(ts.url(PREVIEW)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "memory_critical"
    );
    let ready = client().get(ts.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let st = status(&ts).await;
    assert_eq!(st["memory"]["status"], "critical");
    ts.stop().await;
}

/// Serves `head` of a TS file once per connection, then keeps the
/// connection open and silent.
async fn trickle_server(head: Vec<u8>) -> (u16, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut sock, _)) = l.accept().await {
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            let hdr = "HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\n\r\n";
            let _ = sock.write_all(hdr.as_bytes()).await;
            let _ = sock.write_all(&head).await;
            held.push(sock);
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_falls_silent_ends_as_stalled() {
    let ts = server(|s| s.stall_timeout_ms = 1500).await;
    let file = ts.dir.path().join("src.ts");
    make_media(
        &file,
        6,
        &["-c:v", "libx264", "-g", "25", "-preset", "ultrafast"],
        &["-c:a", "aac"],
        &["-f", "mpegts"],
    );
    let data = std::fs::read(&file).unwrap();
    let (port, upstream) = trickle_server(data[..data.len() / 2].to_vec()).await;
    add_stream(&ts, "trickle", &format!("http://127.0.0.1:{port}/live.ts")).await;
    let mut events = client()
        .get(ts.url("/api/streams/transcoding/events"))
        .send()
        .await
        .unwrap()
        .bytes_stream();

    let r = client()
        .get(ts.url("/streams/preview/trickle?transcode=true&quality=low"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t0 = std::time::Instant::now();
    let body = read_for(r, Duration::from_secs(30), usize::MAX).await;
    assert!(!body.is_empty());
    assert!(
        t0.elapsed() < Duration::from_secs(25),
        "the body should end once the session stalls"
    );
    let ended = next_event(&mut events, "session_ended").await;
    assert_eq!(ended["reason"], "stalled", "{ended}");
    assert!(eventually(Duration::from_secs(5), || ts.state().registry.is_empty()).await);
    upstream.abort();
    ts.stop().await;
}

/// Reads SSE frames until an event named `name`; returns its data.
async fn next_event(
    events: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    name: &str,
) -> serde_json::Value {
    let mut buf = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let ev = frame
                .lines()
                .find_map(|l| l.strip_prefix("event:"))
                .map(str::trim);
            let data = frame
                .lines()
                .find_map(|l| l.strip_prefix("data:"))
                .map(str::trim);
            if ev == Some(name) {
                return serde_json::from_str(data.unwrap_or("null")).unwrap();
            }
        }
        let chunk = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("event in time")
            .unwrap()
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_stop_ends_the_body_and_events_narrate_the_life() {
    let ts = server(|s| s.max_transcodes = TranscodeLimit::Max(1)).await;
    let mut events = client()
        .get(ts.url("/api/streams/transcoding/events"))
        .send()
        .await
        .unwrap()
        .bytes_stream();
    let stats = next_event(&mut events, "stats").await;
    assert_eq!(stats["maxConcurrent"], 1);

    let r = client().get(ts.url(PREVIEW)).send().await.unwrap();
    let sid = r.headers()["x-session-id"].to_str().unwrap().to_string();
    let started = next_event(&mut events, "session_started").await;
    assert_eq!(started["sessionId"], sid.as_str());
    assert_eq!(
        (started["streamId"].as_str(), started["mode"].as_str()),
        (Some("tiny"), Some("transcode"))
    );

    // A request for another stream queues behind it.
    let waiter = spawn_get(&ts, "/streams/preview/tiny2?quality=low&timeout=60000");
    let queued = next_event(&mut events, "session_queued").await;
    assert_eq!(queued["streamId"], "tiny2");

    let body = tokio::spawn(read_for(r, Duration::from_secs(30), usize::MAX));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = status(&ts).await;
    let s0 = &st["sessions"][0];
    assert_eq!(s0["sessionId"], sid.as_str());
    assert_eq!(s0["state"], "running");
    assert!(
        s0["bytesSent"].as_u64().unwrap() > 0 && s0["framesOut"].as_u64().unwrap() > 0,
        "{s0}"
    );
    for key in [
        "streamName",
        "quality",
        "format",
        "mode",
        "clientIP",
        "startTime",
        "duration",
        "fps",
        "speed",
    ] {
        assert!(!s0[key].is_null(), "status session lacks {key}");
    }
    assert!(
        !st.to_string().contains("test://"),
        "status must not show source URLs"
    );

    let del = client()
        .delete(ts.url(&format!("/api/streams/transcoding/sessions/{sid}")))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    let bytes = tokio::time::timeout(Duration::from_secs(10), body)
        .await
        .expect("body ends after admin stop")
        .unwrap();
    assert!(!bytes.is_empty());
    let ended = next_event(&mut events, "session_ended").await;
    assert_eq!(
        (ended["sessionId"].as_str(), ended["reason"].as_str()),
        (Some(sid.as_str()), Some("admin_stop"))
    );
    // The freed slot goes to the waiter.
    let w = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(w.status(), 200);
    let again = client()
        .delete(ts.url(&format!("/api/streams/transcoding/sessions/{sid}")))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
    drop(w);
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_hangups_leave_the_pool_empty() {
    let ts = server(|s| {
        s.max_transcodes = TranscodeLimit::Max(2);
        s.max_queued = 200;
        s.max_sessions_per_client = 1000;
    })
    .await;
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let url = ts.url("/streams/preview/tiny?quality=low&timeout=30000");
        tasks.push(tokio::spawn(async move {
            let c = client();
            let hang_after = Duration::from_millis((i * 37) % 1500);
            let _ = tokio::time::timeout(hang_after, async {
                if let Ok(r) = c.get(url).send().await {
                    let mut s = r.bytes_stream();
                    while s.next().await.is_some() {}
                }
            })
            .await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let state = ts.state().clone();
    let settled = eventually(Duration::from_secs(30), || {
        let p = state.pool.snapshot();
        p.transcodes == 0 && p.remuxes == 0 && p.queue.is_empty() && state.registry.is_empty()
    })
    .await;
    let p = state.pool.snapshot();
    assert!(
        settled,
        "pool {} running, {} queued, {} sessions",
        p.transcodes,
        p.queue.len(),
        state.registry.len()
    );
    // And it still serves.
    let _ok = running(&ts, PREVIEW).await;
    ts.stop().await;
}
