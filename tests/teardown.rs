//! Teardown and leak checks: a client hanging up stops its pipeline (state
//! NULL, slot freed) promptly, and nothing — pipeline, thread, file
//! descriptor, memory — outlives its session. One test function: it reads
//! process-wide counters, so nothing else may run beside it in this binary.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;

const TINY: &str = "test://smpte?size=320x240&rate=30";

/// The tests count the process's threads, fds and memory: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Starts a preview, waits for its first bytes, returns the response.
async fn open(ts: &TestServer, path: &str) -> reqwest::Response {
    let resp = client().get(ts.url(path)).send().await.unwrap();
    if resp.status() != 200 {
        panic!(
            "{path}: {} {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
    }
    resp
}

fn idle(ts: &TestServer) -> bool {
    let st = ts.state();
    let pool = st.pool.snapshot();
    st.registry.is_empty()
        && st.channels.is_empty()
        && pool.transcodes == 0
        && pool.remuxes == 0
        && st.channels.stats().live_pipelines() == 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangups_stop_pipelines_and_leak_nothing() {
    let _serial = SERIAL.lock().await;
    sluice::memory::limit_arenas();
    let ts =
        start_with(|s| s.rate_limit_preview = sluice::http::ratelimit::Rate::parse("off").unwrap())
            .await;
    add_stream(&ts, "tiny", TINY).await;
    let path = "/streams/preview/tiny?quality=low";

    // Warm up (first pipeline loads plugins), then take baselines.
    for _ in 0..3 {
        let mut body = open(&ts, path).await.bytes_stream();
        body.next().await.unwrap().unwrap();
    }
    assert!(eventually(Duration::from_secs(10), || idle(&ts)).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds_before = fd_count();

    // Hang-up to teardown: the session leaves status once its pipeline is NULL.
    let mut latencies = Vec::new();
    for _ in 0..10 {
        let mut body = open(&ts, path).await.bytes_stream();
        body.next().await.unwrap().unwrap();
        let weak = ts
            .state()
            .channels
            .get("tiny")
            .and_then(|c| c.pipeline_weak())
            .expect("pipeline present");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t0 = Instant::now();
        drop(body);
        assert!(
            eventually(Duration::from_secs(5), || idle(&ts)).await,
            "session did not end after hang-up"
        );
        latencies.push(t0.elapsed());
        assert!(
            weak.upgrade().is_none(),
            "pipeline still referenced after teardown"
        );
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    let worst = *latencies.last().unwrap();
    println!("hang-up -> pipeline NULL and session gone: median {median:?}, worst {worst:?}");
    assert!(worst < Duration::from_secs(2), "teardown took {worst:?}");
    assert!(
        median < Duration::from_secs(1),
        "median teardown {median:?}"
    );

    // 100 connect/disconnect cycles, some hanging up before the first byte.
    let rss_before = sluice::memory::current_rss();
    let mut weak_refs = Vec::new();
    for i in 0..100u32 {
        if i % 10 == 9 {
            // Hang up while the session is still starting.
            let c = client();
            let url = ts.url(path);
            let req = tokio::spawn(async move { c.get(url).send().await });
            tokio::time::sleep(Duration::from_millis(20 + (i as u64 % 7) * 15)).await;
            req.abort();
            let _ = req.await;
            continue;
        }
        let mut body = open(&ts, path).await.bytes_stream();
        body.next().await.unwrap().unwrap();
        if let Some(w) = ts
            .state()
            .channels
            .get("tiny")
            .and_then(|c| c.pipeline_weak())
        {
            weak_refs.push(w);
        }
        drop(body);
    }
    assert!(
        eventually(Duration::from_secs(15), || idle(&ts)).await,
        "sessions left after 100 cycles: {}",
        ts.state().registry.len()
    );
    assert!(
        weak_refs.iter().all(|w| w.upgrade().is_none()),
        "a pipeline outlived its session"
    );
    assert!(weak_refs.len() >= 80);

    // A source that fails on its way to PLAYING (udpsrc cannot bind an
    // address this host does not have): a JSON 502 that says why, and no
    // pipeline left counted or running.
    add_stream(&ts, "unbindable", "udp://203.0.113.1:5000").await;
    for _ in 0..5 {
        let resp = client()
            .get(ts.url("/streams/preview/unbindable?quality=low"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 502);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "source_failed", "{body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("203.0.113.1")),
            "{body}"
        );
    }
    assert!(
        eventually(Duration::from_secs(5), || idle(&ts)).await,
        "a failed start left {} pipelines",
        ts.state().channels.stats().live_pipelines()
    );

    // Streaming threads end with their pipelines; tokio's idle blocking
    // threads retire after 10 s, so allow that long for the count to settle.
    let threads_ok = eventually(Duration::from_secs(20), || thread_count() <= 40).await;
    let fds_ok = eventually(Duration::from_secs(10), || fd_count() <= fds_before + 4).await;
    println!(
        "threads now {}, fds {} (before {fds_before})",
        thread_count(),
        fd_count()
    );
    assert!(threads_ok, "threads: {}", thread_count());
    assert!(fds_ok, "fds: {} vs {fds_before}", fd_count());

    // Memory comes back: 100 sessions later RSS is within 64 MiB of before.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = sluice::memory::current_rss();
    println!(
        "RSS before cycles {} MiB, after {} MiB",
        rss_before >> 20,
        rss_after >> 20
    );
    assert!(
        rss_after < rss_before + (64 << 20),
        "RSS grew from {rss_before} to {rss_after}"
    );
    ts.stop().await;
}

/// A rendition whose last viewer leaves comes off the running channel:
/// every one of its elements is freed while the channel's other rendition
/// keeps delivering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwatched_rendition_leaves_nothing_behind_on_a_running_channel() {
    let _serial = SERIAL.lock().await;
    let ts =
        start_with(|s| s.rate_limit_preview = sluice::http::ratelimit::Rate::parse("off").unwrap())
            .await;
    add_stream(&ts, "tiny", TINY).await;
    let mut low = open(&ts, "/streams/preview/tiny?quality=low")
        .await
        .bytes_stream();
    low.next().await.unwrap().unwrap();
    let mut medium = open(&ts, "/streams/preview/tiny?quality=medium&format=ts")
        .await
        .bytes_stream();
    medium.next().await.unwrap().unwrap();
    let ch = ts.state().channels.get("tiny").expect("the channel runs");
    let renditions = ch.renditions();
    assert_eq!(renditions.len(), 2, "one rendition per profile");
    let gone = renditions
        .iter()
        .find(|r| r.key.quality == "medium")
        .expect("the medium rendition")
        .element_refs();
    assert!(
        gone.len() >= 10,
        "the medium rendition's elements: {}",
        gone.len()
    );
    drop(renditions);
    let pipeline = ch.pipeline_weak().expect("pipeline present");
    drop(ch);

    drop(medium);
    let st = ts.state().clone();
    assert!(
        eventually(Duration::from_secs(5), || {
            st.channels
                .get("tiny")
                .is_some_and(|c| c.renditions().len() == 1)
                && gone.iter().all(|w| w.upgrade().is_none())
        })
        .await,
        "{} of the medium rendition's {} elements are still alive",
        gone.iter().filter(|w| w.upgrade().is_some()).count(),
        gone.len()
    );
    // The channel and its other rendition go on.
    assert!(
        pipeline.upgrade().is_some(),
        "the channel's pipeline is gone"
    );
    let more = tokio::time::timeout(Duration::from_secs(5), low.next())
        .await
        .expect("the low rendition keeps delivering");
    assert!(more.is_some_and(|b| b.is_ok_and(|b| !b.is_empty())));
    drop(low);
    assert!(eventually(Duration::from_secs(5), || idle(&ts)).await);
    assert!(
        pipeline.upgrade().is_none(),
        "the pipeline outlived its channel"
    );
    ts.stop().await;
}
