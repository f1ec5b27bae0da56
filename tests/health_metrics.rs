//! Health, readiness, metrics and logging, against a real server: document
//! shapes and status codes (including the 503 cases driven by config),
//! `X-Request-Id` round trips, the `/metrics` text parsed by a Prometheus
//! parser with counters moving as a session runs and ends, JSON log lines
//! of the real binary, and DOT dumps of a failed pipeline.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// The `/health` document; serde refuses duplicate keys, so a second
/// `status` in `services.memory` fails to parse.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Health {
    status: String,
    timestamp: String,
    version: String,
    uptime_seconds: u64,
    response_time_ms: f64,
    services: Services,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Services {
    gstreamer: Value,
    transcoding: Value,
    memory: MemoryHealth,
    cpu: Value,
    catalog: Value,
    disk: Value,
    encoders: Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MemoryHealth {
    status: String,
    level: String,
    rss_bytes: u64,
    warning_bytes: u64,
    critical_bytes: u64,
}

async fn get(url: &str) -> reqwest::Response {
    common::client().get(url).send().await.unwrap()
}

async fn health(ts: &common::TestServer) -> (u16, Health) {
    let r = get(&ts.url("/health")).await;
    let code = r.status().as_u16();
    let text = r.text().await.unwrap();
    let doc = serde_json::from_str(&text).unwrap_or_else(|e| panic!("/health: {e}: {text}"));
    (code, doc)
}

#[tokio::test]
async fn health_documents_have_the_spec_shapes() {
    let ts = common::start().await;
    for path in ["/live", "/api/health/live"] {
        let r = get(&ts.url(path)).await;
        assert_eq!(r.status(), 200, "{path}");
    }
    for path in ["/ready", "/api/health/ready"] {
        let r = get(&ts.url(path)).await;
        assert_eq!(r.status(), 200, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v, serde_json::json!({"status": "ready"}));
    }
    for path in ["/health", "/api/health"] {
        let r = get(&ts.url(path)).await;
        assert_eq!(r.status(), 200, "{path}");
        let text = r.text().await.unwrap();
        let h: Health = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(
            ["healthy", "degraded"].contains(&h.status.as_str()),
            "{text}"
        );
        assert!(h.timestamp.ends_with('Z') && h.version == env!("CARGO_PKG_VERSION"));
        assert!(h.uptime_seconds < 3600 && h.response_time_ms >= 0.0);
        assert_eq!(h.services.gstreamer["status"], "healthy", "{text}");
        assert_eq!(
            h.services.gstreamer["missingElements"],
            serde_json::json!([])
        );
        assert!(h.services.gstreamer["version"]
            .as_str()
            .unwrap()
            .starts_with("1."));
        assert_eq!(h.services.transcoding["maxConcurrent"], 3);
        assert_eq!(h.services.transcoding["activeSessions"], 0);
        assert_eq!(h.services.transcoding["queued"], 0);
        assert_eq!(h.services.encoders["status"], "healthy", "{text}");
        assert_eq!(h.services.memory.status, "healthy");
        assert_eq!(h.services.memory.level, "ok");
        assert!(h.services.memory.rss_bytes > 0);
        assert!(h.services.memory.warning_bytes < h.services.memory.critical_bytes);
        assert!(h.services.cpu["usagePercent"].is_number());
        assert_eq!(h.services.catalog["status"], "healthy");
        assert_eq!(h.services.catalog["writable"], true);
        assert_eq!(h.services.catalog["streams"], 4, "the demo catalog");
        assert!(h.services.disk["availableBytes"].as_u64().unwrap() > 0);
    }
    ts.stop().await;
}

#[tokio::test]
async fn critical_memory_makes_the_server_not_ready_and_unhealthy() {
    let ts = common::start_with(|s| {
        s.memory_warning = 1;
        s.memory_critical = 2;
    })
    .await;
    let r = get(&ts.url("/ready")).await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "not_ready");
    assert!(
        v["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "memory_critical"),
        "{v}"
    );
    let (code, h) = health(&ts).await;
    assert_eq!(code, 503);
    assert_eq!(h.status, "unhealthy");
    assert_eq!(h.services.memory.status, "unhealthy");
    assert_eq!(h.services.memory.level, "critical");
    assert_eq!(h.services.memory.critical_bytes, 2);
    let r = get(&ts.url("/streams/preview/demo-smpte")).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "memory_critical");
    ts.stop().await;
}

#[tokio::test]
async fn an_unwritable_data_dir_makes_the_server_not_ready() {
    let ts = common::start().await;
    let data = ts.dir.path().join("data");
    // Root ignores permission bits, so take the directory away: a file now
    // stands where the data dir was, and nothing can be written there.
    std::fs::rename(&data, ts.dir.path().join("data-moved")).unwrap();
    std::fs::write(&data, b"not a directory").unwrap();
    let mut last = Value::Null;
    let mut ready = 0;
    for _ in 0..150 {
        let r = get(&ts.url("/ready")).await;
        ready = r.status().as_u16();
        last = r.json().await.unwrap();
        if ready == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        ready, 503,
        "the background check notices within 15 s: {last}"
    );
    assert!(
        last["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "data_dir_not_writable"),
        "{last}"
    );
    let (code, h) = health(&ts).await;
    assert_eq!(code, 503);
    assert_eq!(h.status, "unhealthy");
    assert_eq!(h.services.catalog["writable"], false);
    assert_eq!(h.services.catalog["status"], "unhealthy");
    std::fs::remove_file(&data).unwrap();
    std::fs::rename(ts.dir.path().join("data-moved"), &data).unwrap();
    ts.stop().await;
}

#[tokio::test]
async fn request_ids_round_trip_on_every_kind_of_response() {
    let ts = common::start().await;
    let c = common::client();
    // Accepted from the client.
    for path in ["/health", "/no/such/route", "/api/streams/nope"] {
        let r = c
            .get(ts.url(path))
            .header("X-Request-Id", "client-id_1.2")
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.headers()["x-request-id"],
            "client-id_1.2",
            "{path} ({})",
            r.status()
        );
    }
    // Invalid ids are replaced by a generated one.
    for bad in ["a".repeat(129), "has space".into(), "quote\"d".into()] {
        let r = c
            .get(ts.url("/live"))
            .header("X-Request-Id", bad.as_str())
            .send()
            .await
            .unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_ne!(id, bad);
        assert!(uuid_like(&id), "{id}");
    }
    // Generated when absent, unique per request.
    let a = c.get(ts.url("/live")).send().await.unwrap();
    let b = c.get(ts.url("/live")).send().await.unwrap();
    let (a, b) = (&a.headers()["x-request-id"], &b.headers()["x-request-id"]);
    assert!(uuid_like(a.to_str().unwrap()));
    assert_ne!(a, b);
    // Wrong method and a streaming preview response.
    let r = c
        .delete(ts.url("/health"))
        .header("X-Request-Id", "m-1")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    assert_eq!(r.headers()["x-request-id"], "m-1");
    let r = c
        .get(ts.url("/streams/preview/demo-smpte?quality=low&format=ts"))
        .header("X-Request-Id", "preview-7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "preview-7");
    drop(r);
    ts.stop().await;
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

fn sum(samples: &[prometheus_parse::Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.metric == name)
        .filter_map(|s| match &s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => Some(*v),
            _ => None,
        })
        .sum()
}

fn ttfb_count(samples: &[prometheus_parse::Sample]) -> f64 {
    common::metric(samples, "sluice_time_to_first_byte_seconds_count", &[]).unwrap_or(-1.0)
}

#[tokio::test]
async fn metrics_are_parsed_and_move_as_a_session_runs_and_ends() {
    let ts = common::start().await;
    let before = common::scrape(&ts).await;
    for name in [
        "sluice_sessions_active",
        "sluice_sessions_queued",
        "sluice_sessions_ended_total",
        "sluice_sessions_started_total",
        "sluice_bytes_sent_total",
        "sluice_pipeline_errors_total",
        "sluice_pipelines_live",
        "sluice_process_resident_memory_bytes",
        "sluice_process_cpu_usage_percent",
        "sluice_process_cpu_seconds_total",
        "sluice_time_to_first_byte_seconds_count",
    ] {
        assert!(before.iter().any(|s| s.metric == name), "{name} is exposed");
    }
    assert!(before.iter().all(|s| s.metric.starts_with("sluice_")));
    for mode in ["transcode", "remux"] {
        assert_eq!(
            common::metric(&before, "sluice_sessions_active", &[("mode", mode)]),
            Some(0.0)
        );
        assert_eq!(
            common::metric(&before, "sluice_sessions_queued", &[("mode", mode)]),
            Some(0.0)
        );
    }
    assert!(common::metric(&before, "sluice_process_resident_memory_bytes", &[]).unwrap() > 1e6);
    let ended = |s: &[prometheus_parse::Sample]| {
        common::metric(
            s,
            "sluice_sessions_ended_total",
            &[("reason", "client_disconnect")],
        )
        .unwrap()
    };

    // A session runs: active gauge, bytes and TTFB move.
    let r = common::client()
        .get(ts.url("/streams/preview/demo-smpte?quality=low&format=ts"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let during = common::scrape(&ts).await;
    assert_eq!(
        common::metric(&during, "sluice_sessions_active", &[("mode", "transcode")]),
        Some(1.0)
    );
    assert!(common::metric(&during, "sluice_pipelines_live", &[]).unwrap() >= 1.0);
    assert!(ttfb_count(&during) >= ttfb_count(&before) + 1.0);
    let body = common::read_for(r, Duration::from_secs(2), 2 << 20).await;
    assert!(!body.is_empty());

    // ... and ends (the client hangs up): ended counter, gauge back to 0.
    let mut after = Vec::new();
    let moved = async {
        for _ in 0..200 {
            after = common::scrape(&ts).await;
            if ended(&after) >= ended(&before) + 1.0
                && common::metric(&after, "sluice_sessions_active", &[("mode", "transcode")])
                    == Some(0.0)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    assert!(moved.await, "session end counted within 10 s");
    let delta = |name: &str| sum(&after, name) - sum(&before, name);
    assert!(delta("sluice_sessions_started_total") >= 1.0);
    assert!(delta("sluice_bytes_sent_total") >= body.len() as f64);
    // Requests are counted by route template, never by raw path.
    let _ = get(&ts.url("/no/such/thing")).await;
    let after = common::scrape(&ts).await;
    let preview_ok = [
        ("route", "/streams/preview/:id"),
        ("status", "200"),
        ("method", "GET"),
    ];
    assert!(common::metric(&after, "sluice_http_requests_total", &preview_ok).unwrap() >= 1.0);
    assert!(
        common::metric(
            &after,
            "sluice_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        )
        .unwrap()
            >= 1.0
    );
    assert!(after.iter().all(|s| !s
        .labels
        .values()
        .any(|v| v.contains("demo-smpte") || v.contains("/no/such"))));
    ts.stop().await;
}

#[tokio::test]
async fn a_failed_pipeline_is_counted_by_kind() {
    let ts = common::start().await;
    std::fs::write(ts.media_dir().join("garbage.ts"), vec![0x5a_u8; 64 * 1024]).unwrap();
    let url = format!("file://{}", ts.media_dir().join("garbage.ts").display());
    common::add_stream(&ts, "garbage", &url).await;
    let before = sum(&common::scrape(&ts).await, "sluice_pipeline_errors_total");
    let r = get(&ts.url("/streams/preview/garbage?timeout=20000")).await;
    assert_eq!(r.status(), 502, "{}", r.text().await.unwrap_or_default());
    let after = sum(&common::scrape(&ts).await, "sluice_pipeline_errors_total");
    assert!(after >= before + 1.0, "pipeline errors {before} -> {after}");
    ts.stop().await;
}

/// The real binary with `LOG_FORMAT=json LOG_LEVEL=debug`: every stderr line
/// is one JSON object; requests are logged once with their id; session lines
/// carry camelCase ids; a failed pipeline leaves a DOT graph in the data dir.
#[tokio::test]
async fn json_logs_of_the_binary_parse_and_failed_pipelines_are_dumped() {
    let dir = tempfile::tempdir().unwrap();
    let media = dir.path().join("media");
    std::fs::create_dir_all(&media).unwrap();
    std::fs::write(media.join("garbage.ts"), vec![0x5a_u8; 64 * 1024]).unwrap();
    let data = dir.path().join("data");
    let media_arg = media.display().to_string();
    let mut bin = common::BinServer::start(
        &data,
        &["--media-dir", &media_arg],
        &[("LOG_FORMAT", "json"), ("LOG_LEVEL", "debug")],
    );
    let c = common::client();
    let r = c
        .get(bin.url("/health"))
        .header("X-Request-Id", "log-test-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(bin.url("/api/streams"))
        .json(&serde_json::json!({"id": "garbage", "name": "garbage", "url": format!("file://{}/garbage.ts", media.display())}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .get(bin.url("/streams/preview/garbage"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let r = c
        .get(bin.url("/streams/preview/demo-smpte?quality=low&format=ts"))
        .header("X-Request-Id", "log-test-2")
        .send()
        .await
        .unwrap();
    let code = r.status();
    let sid = match r.headers().get("x-session-id") {
        Some(v) => v.to_str().unwrap().to_string(),
        None => panic!(
            "{code}: {}\n{}",
            r.text().await.unwrap_or_default(),
            bin.stderr_text()
        ),
    };
    let _ = common::read_for(r, Duration::from_secs(1), 1 << 20).await;

    let dumps = data.join("pipeline-dumps");
    let found = common::eventually(Duration::from_secs(10), || {
        std::fs::read_dir(&dumps)
            .map(|d| d.count() > 0)
            .unwrap_or(false)
    })
    .await;
    assert!(found, "a DOT file under {}", dumps.display());
    let dot_path = std::fs::read_dir(&dumps)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(dot_path.extension().and_then(|e| e.to_str()), Some("dot"));
    let dot = std::fs::read_to_string(&dot_path).unwrap();
    assert!(dot.starts_with("digraph"), "{}", &dot[..dot.len().min(200)]);

    let ended = common::eventually(Duration::from_secs(10), || {
        bin.stderr_text().contains("\"session ended\"")
    })
    .await;
    assert!(bin.terminate(), "exits 0 on SIGTERM");
    assert!(ended, "the session end is logged");
    let text = bin.stderr_text();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 5);
    for l in &lines {
        let o = l.as_object().unwrap();
        for key in ["timestamp", "level", "target", "message"] {
            assert!(o.contains_key(key), "{key} in {l}");
        }
        assert!(o.keys().all(|k| !k.contains('_')), "camelCase keys: {l}");
    }
    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "request" && l["requestId"] == "log-test-1")
        .collect();
    assert_eq!(access.len(), 1, "one access line per request");
    let a = access[0];
    assert_eq!(
        (
            a["method"].as_str(),
            a["route"].as_str(),
            a["status"].as_u64()
        ),
        (Some("GET"), Some("/health"), Some(200))
    );
    assert!(a["durationMs"].as_f64().is_some());
    let preview: Vec<&Value> = lines
        .iter()
        .filter(|l| l["requestId"] == "log-test-2")
        .collect();
    assert!(
        preview.iter().any(|l| l["message"] == "session started"
            && l["sessionId"] == sid.as_str()
            && l["streamId"] == "demo-smpte"),
        "session start carries requestId, sessionId and streamId"
    );
    assert!(preview.iter().any(|l| l["message"] == "request"
        && l["route"] == "/streams/preview/:id"
        && l["status"] == 200));
    let by_level: HashMap<&str, usize> = lines.iter().fold(HashMap::new(), |mut m, l| {
        *m.entry(l["level"].as_str().unwrap()).or_default() += 1;
        m
    });
    assert!(
        by_level.contains_key("DEBUG") && by_level.contains_key("INFO"),
        "{by_level:?}"
    );
    assert!(lines
        .iter()
        .any(|l| l["message"] == "session ended" && l["sessionId"] == sid.as_str()));
}
