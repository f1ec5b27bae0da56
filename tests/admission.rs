//! Admission by measured headroom, black-box: with
//! `MAX_CONCURRENT_TRANSCODES=auto`, medium transcodes of distinct live
//! channels are admitted one by one until the machine would fall behind,
//! and the next is refused with 503 `overloaded` while every running viewer
//! still gets real time; `/ready` is 503 `saturated` while no encoder can
//! start and the queue is full, and viewers can still join what runs.
//!
//! The tests measure delivery against real time, so they take turns.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use serde_json::Value;
use sluice::config::TranscodeLimit;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The real-time check `make bench`'s capacity search uses: a viewer keeps
/// up while it gets at least this share of real time.
const KEEPS_UP: f64 = 0.95;
/// Frame rate of the test channels.
const FPS: f64 = 30.0;

/// A preview read in the background until dropped.
struct Reader {
    bytes: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Reader {
    fn new(resp: reqwest::Response) -> Reader {
        let bytes = Arc::new(AtomicU64::new(0));
        let b = bytes.clone();
        let task = tokio::spawn(async move {
            let mut s = resp.bytes_stream();
            while let Some(Ok(chunk)) = s.next().await {
                b.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        });
        Reader { bytes, task }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn server(tweak: impl FnOnce(&mut sluice::config::Settings)) -> TestServer {
    start_with(|s| {
        let off = || sluice::http::ratelimit::Rate::parse("off").unwrap();
        s.rate_limit_preview = off();
        s.rate_limit_api = off();
        s.rate_limit_admin = off();
        s.max_sessions_per_client = 64;
        tweak(s)
    })
    .await
}

/// Runs `body`, then stops the server whether or not the body panicked.
async fn run(ts: TestServer, body: impl AsyncFnOnce(&TestServer)) {
    use futures::FutureExt;
    let outcome = std::panic::AssertUnwindSafe(body(&ts)).catch_unwind().await;
    ts.stop().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn status_of(v: &Value) -> Vec<(String, f64, f64, Option<f64>)> {
    v["channels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| {
            let id = c["streamId"].as_str().unwrap().to_string();
            c["renditions"].as_array().unwrap().iter().map(move |r| {
                (
                    id.clone(),
                    r["speed"].as_f64().unwrap(),
                    r["fps"].as_f64().unwrap(),
                    r["encodeSpeed"].as_f64(),
                )
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_admits_medium_channels_until_a_viewer_would_fall_behind() {
    let _turn = SERIAL.lock().await;
    let ts = server(|s| {
        s.max_transcodes = TranscodeLimit::Auto;
        // A refused request leaves at once rather than waiting.
        s.max_queued = 0;
    })
    .await;
    run(ts, async |ts| {
        let status = ts.url("/api/streams/transcoding/status");
        let v = get_json(&status).await;
        assert_eq!(v["headroom"]["mode"], "auto");
        assert!(v["headroom"]["cores"].as_f64().unwrap() > 0.0);
        let builtin = v["headroom"]["estimates"]["medium"]["coresPerStream"]
            .as_f64()
            .unwrap();
        assert!(builtin > 0.0);

        let mut readers = Vec::new();
        let refusal = loop {
            let n = readers.len();
            assert!(n < 16, "16 medium transcodes admitted on this machine");
            let id = format!("ch{n}");
            add_stream(
                ts,
                &id,
                &format!("test://smpte?size=1920x1080&rate=30&freq={}", 300 + n * 20),
            )
            .await;
            let resp = client()
                .get(ts.url(&format!(
                    "/streams/preview/{id}?quality=medium&format=mp4&timeout=30000"
                )))
                .send()
                .await
                .unwrap();
            if resp.status() == 503 {
                let retry = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                let body: Value = resp.json().await.unwrap();
                break (body, retry);
            }
            assert_eq!(resp.status(), 200, "{id}");
            readers.push(Reader::new(resp));
            // The new encoder settles: its cost shows in the measured CPU
            // and it has a full speed window before the next is asked for.
            tokio::time::sleep(Duration::from_secs(9)).await;
        };
        let (body, retry) = refusal;
        assert_eq!(body["error"], "overloaded", "{body}");
        assert!(retry.is_some_and(|s| s >= 1), "Retry-After");
        let admitted = readers.len();
        assert!(admitted >= 1, "the first encoder always starts");

        // No queue: nothing can start and nobody can wait, so a load
        // balancer is told to send new channels elsewhere. (The headroom
        // is measured afresh each second and sits at its edge here, so
        // /ready is asked until it says so.)
        let mut ready = Value::Null;
        for _ in 0..20 {
            let r = client().get(ts.url("/ready")).send().await.unwrap();
            if r.status() == 503 {
                ready = r.json().await.unwrap();
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(ready["error"], "saturated", "/ready after the refusal: {ready}");

        // At the refusal every running viewer still gets real time.
        let v = get_json(&status).await;
        let renditions = status_of(&v);
        eprintln!(
            "admitted {admitted} medium transcodes; refused: {}; renditions (stream, speed, fps, encodeSpeed): {renditions:?}; headroom: {}",
            body["message"], v["headroom"]
        );
        assert_eq!(renditions.len(), admitted);
        for (id, speed, fps, encode) in &renditions {
            assert!(
                *speed >= KEEPS_UP && *fps >= KEEPS_UP * FPS,
                "{id} fell behind at the refusal: {speed}x, {fps} fps"
            );
            assert!(encode.is_some_and(|e| e > 0.0), "{id}: encodeSpeed");
        }
        let before: Vec<u64> = readers
            .iter()
            .map(|r| r.bytes.load(Ordering::Relaxed))
            .collect();
        tokio::time::sleep(Duration::from_secs(2)).await;
        for (r, b) in readers.iter().zip(before) {
            assert!(r.bytes.load(Ordering::Relaxed) > b, "every viewer still gets media");
        }

        // Status and metrics say why, and what a medium encoder costs.
        let last = &v["headroom"]["lastRefusal"];
        assert!(
            ["no_cpu", "encoder_behind"].contains(&last["reason"].as_str().unwrap()),
            "{last}"
        );
        assert_eq!(
            last["message"].as_str().map(|m| body["message"]
                .as_str()
                .unwrap()
                .ends_with(m)),
            Some(true)
        );
        let learned = &v["headroom"]["estimates"]["medium"];
        assert!(learned["samples"].as_u64().unwrap() > 0, "{learned}");
        assert_eq!(v["headroom"]["canAdmit"], false);
        let m = scrape(ts).await;
        let refused: f64 = ["no_cpu", "encoder_behind"]
            .iter()
            .filter_map(|r| metric(&m, "sluice_admission_refusals_total", &[("reason", r)]))
            .sum();
        assert!(refused >= 1.0);
        assert!(metric(&m, "sluice_encoder_cost_cores", &[("quality", "medium")])
            .is_some_and(|c| c > 0.0));
        assert!(metric(&m, "sluice_headroom_cores", &[]).is_some_and(|c| c > 0.0));
        // At real time the process never uses more than it measurably does.
        let (used, steady) = (
            v["headroom"]["usedCores"].as_f64().unwrap(),
            v["headroom"]["steadyUsedCores"].as_f64().unwrap(),
        );
        assert!(steady > 0.0 && steady <= used + 0.01, "{}", v["headroom"]);
        assert!(metric(&m, "sluice_headroom_steady_used_cores", &[]).is_some());
        assert!(m
            .iter()
            .any(|s| s.metric == "sluice_admission_last_refusal_timestamp_seconds"));
        drop(readers);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_saturated_while_nothing_can_start_and_joins_still_work() {
    let _turn = SERIAL.lock().await;
    let ts = server(|s| {
        s.max_transcodes = TranscodeLimit::Max(1);
        s.max_queued = 0;
    })
    .await;
    run(ts, async |ts| {
        add_stream(ts, "a", "test://smpte?size=320x240&rate=30").await;
        add_stream(ts, "b", "test://ball?size=320x240&rate=30").await;
        let ready = || async {
            let r = client().get(ts.url("/ready")).send().await.unwrap();
            let code = r.status().as_u16();
            (code, r.json::<Value>().await.unwrap())
        };
        assert_eq!(ready().await.0, 200);
        let open = |id: &'static str| async move {
            client()
                .get(ts.url(&format!("/streams/preview/{id}?quality=low&format=ts")))
                .send()
                .await
                .unwrap()
        };
        let first = open("a").await;
        assert_eq!(first.status(), 200);
        let first = Reader::new(first);

        let (code, body) = ready().await;
        assert_eq!(code, 503, "{body}");
        assert_eq!(body["error"], "saturated");
        assert!(body["reasons"]
            .as_array()
            .unwrap()
            .contains(&Value::from("saturated")));
        let health = get_json(&ts.url("/health")).await;
        assert_eq!(health["services"]["transcoding"]["status"], "degraded");

        // A new channel cannot start, but a viewer joins the running one.
        let refused = open("b").await;
        assert_eq!(refused.status(), 503);
        let joined = open("a").await;
        assert_eq!(joined.status(), 200, "a join needs no encoder slot");
        let joined = Reader::new(joined);
        assert!(
            eventually(Duration::from_secs(10), || joined
                .bytes
                .load(Ordering::Relaxed)
                > 0)
            .await,
            "the joined viewer gets media"
        );
        drop((first, joined));
        let mut back = false;
        for _ in 0..100 {
            if ready().await.0 == 200 {
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(back, "/ready is 200 again once the encoder is free");
    })
    .await;
}
