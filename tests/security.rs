//! Security over real HTTP (SPEC §8): admin key, rate limits, CORS, body
//! limits and deadlines, JSON for every rejection, the source allowlist, and
//! credentials that never leave the process (logs, reads, status, events,
//! errors, metrics) — the last one against the real binary and its stderr.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sluice::config::TrustProxy;
use sluice::http::cors::CorsOrigins;
use sluice::http::ratelimit::Rate;

async fn json_error(resp: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(ct.as_deref(), Some("application/json"));
    let body: Value = resp.json().await.expect("a JSON body");
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test]
async fn admin_key_guards_every_write() {
    let ts = common::start_with(|s| s.admin_api_key = Some("k3y-for-tests".into())).await;
    let c = common::client();
    let body = json!({"id": "a", "name": "A", "url": "test://smpte"});
    let r = c
        .post(ts.url("/api/streams"))
        .json(&body)
        .send()
        .await
        .unwrap();
    json_error(r, 401, "unauthorized").await;
    let r = c
        .post(ts.url("/api/streams"))
        .header("x-admin-key", "wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    json_error(r, 401, "unauthorized").await;
    let r = c
        .post(ts.url("/api/streams"))
        .header("x-admin-key", "k3y-for-tests")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .delete(ts.url("/api/streams/a"))
        .header("authorization", "Bearer k3y-for-tests")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = c
        .delete(ts.url("/api/streams/transcoding/sessions/nope"))
        .send()
        .await
        .unwrap();
    json_error(r, 401, "unauthorized").await;
    ts.stop().await;
}

#[tokio::test]
async fn rate_limits_refuse_with_429_and_headers() {
    let ts = common::start_with(|s| {
        s.trust_proxy = TrustProxy::Hops(1);
        s.admin_api_key = Some("rate-key".into());
        s.rate_limit_api = Rate::parse("3/min").unwrap();
        s.rate_limit_admin = Rate::parse("2/15min").unwrap();
        s.rate_limit_preview = Rate::parse("1/min").unwrap();
    })
    .await;
    let c = common::client();
    let get = |ip: &'static str| {
        c.get(ts.url("/api/streams"))
            .header("x-forwarded-for", ip)
            .send()
    };
    for left in [2, 1, 0] {
        let r = get("198.51.100.1").await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-limit").as_deref(), Some("3"));
        assert_eq!(header(&r, "x-ratelimit-remaining"), Some(left.to_string()));
        assert!(header(&r, "x-ratelimit-reset").is_some());
    }
    let r = get("198.51.100.1").await.unwrap();
    let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    assert_eq!(header(&r, "x-ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(header(&r, "x-ratelimit-limit").as_deref(), Some("3"));
    json_error(r, 429, "rate_limited").await;
    // Another client has its own bucket.
    assert_eq!(get("198.51.100.2").await.unwrap().status(), 200);

    // Health, status, events and metrics are never limited.
    for path in [
        "/live",
        "/ready",
        "/health",
        "/api/health",
        "/api/health/live",
        "/api/streams/transcoding/status",
    ] {
        for _ in 0..10 {
            let r = c
                .get(ts.url(path))
                .header("x-forwarded-for", "198.51.100.1")
                .send()
                .await
                .unwrap();
            assert_ne!(r.status(), 429, "{path}");
            assert!(header(&r, "x-ratelimit-limit").is_none(), "{path}");
        }
    }
    let events = c
        .get(ts.url("/api/streams/transcoding/events"))
        .header("x-forwarded-for", "198.51.100.1")
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    drop(events);

    // Mutations draw from their own, stricter bucket (the key gives the
    // rights: a forwarded request is never a loopback admin).
    let post = |id: &str| {
        c.post(ts.url("/api/streams"))
            .header("x-forwarded-for", "198.51.100.4")
            .header("x-admin-key", "rate-key")
            .json(&json!({"id": id, "name": id, "url": "test://smpte"}))
            .send()
    };
    assert_eq!(post("r1").await.unwrap().status(), 201);
    assert_eq!(post("r2").await.unwrap().status(), 201);
    json_error(post("r3").await.unwrap(), 429, "rate_limited").await;

    // Preview: one per minute here; a 404 still draws a token.
    let pv = || {
        c.get(ts.url("/streams/preview/no-such-stream"))
            .header("x-forwarded-for", "198.51.100.3")
            .send()
    };
    json_error(pv().await.unwrap(), 404, "stream_not_found").await;
    json_error(pv().await.unwrap(), 429, "rate_limited").await;
    ts.stop().await;
}

#[tokio::test]
async fn cors_is_silent_when_unset() {
    let ts = common::start().await;
    let c = common::client();
    let r = c
        .get(ts.url("/api/streams"))
        .header("origin", "https://tv.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        !r.headers()
            .keys()
            .any(|k| k.as_str().starts_with("access-control-")),
        "{:?}",
        r.headers()
    );
    let r = c
        .request(Method::OPTIONS, ts.url("/api/streams"))
        .header("origin", "https://tv.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(header(&r, "access-control-allow-origin").is_none());
    json_error(r, 405, "method_not_allowed").await;
    ts.stop().await;
}

#[tokio::test]
async fn cors_allows_listed_origins_and_wildcard_subdomains_only() {
    let ts = common::start_with(|s| {
        s.cors_origin =
            Some(CorsOrigins::parse("https://*.example.com, http://localhost:5173").unwrap())
    })
    .await;
    let c = common::client();
    let preflight = |origin: &'static str| {
        c.request(Method::OPTIONS, ts.url("/api/streams"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "x-admin-key, content-type",
            )
            .send()
    };
    for origin in ["https://tv.example.com", "http://localhost:5173"] {
        let r = preflight(origin).await.unwrap();
        assert_eq!(r.status(), 204, "{origin}");
        assert_eq!(
            header(&r, "access-control-allow-origin").as_deref(),
            Some(origin)
        );
        let methods = header(&r, "access-control-allow-methods").unwrap();
        assert!(
            methods.contains("POST") && methods.contains("DELETE"),
            "{methods}"
        );
        let allowed = header(&r, "access-control-allow-headers")
            .unwrap()
            .to_lowercase();
        for h in [
            "x-admin-key",
            "authorization",
            "content-type",
            "x-request-id",
        ] {
            assert!(allowed.contains(h), "{allowed}");
        }
        let max_age: u64 = header(&r, "access-control-max-age")
            .unwrap()
            .parse()
            .unwrap();
        assert!(max_age >= 600);
        assert!(header(&r, "vary").unwrap().contains("Origin"));
    }
    for origin in [
        "https://example.com",
        "https://example.com.evil.test",
        "https://evilexample.com",
        "http://tv.example.com",
        "null",
    ] {
        let r = preflight(origin).await.unwrap();
        assert!(
            header(&r, "access-control-allow-origin").is_none(),
            "{origin}"
        );
        assert_ne!(r.status(), 204, "{origin}");
    }
    let r = c
        .get(ts.url("/api/streams"))
        .header("origin", "https://a.b.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some("https://a.b.example.com")
    );
    let expose = header(&r, "access-control-expose-headers").unwrap();
    for h in [
        "X-Session-Id",
        "X-Sluice-Mode",
        "X-Sluice-Quality",
        "X-Request-Id",
        "Retry-After",
        "X-RateLimit-Remaining",
    ] {
        assert!(expose.contains(h), "{expose}");
    }
    assert!(r
        .headers()
        .get_all("vary")
        .iter()
        .any(|v| v.to_str().unwrap().contains("Origin")));
    let r = c
        .get(ts.url("/api/streams"))
        .header("origin", "https://example.com.evil.test")
        .send()
        .await
        .unwrap();
    assert!(header(&r, "access-control-allow-origin").is_none());
    assert!(header(&r, "access-control-expose-headers").is_none());
    // Errors are readable cross-origin too.
    let r = c
        .get(ts.url("/no/such/route"))
        .header("origin", "https://tv.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some("https://tv.example.com")
    );
    json_error(r, 404, "not_found").await;
    ts.stop().await;
}

#[tokio::test]
async fn every_rejection_is_json() {
    let ts = common::start().await;
    let c = common::client();
    let r = c.get(ts.url("/no/such/route")).send().await.unwrap();
    json_error(r, 404, "not_found").await;
    let r = c.patch(ts.url("/api/streams")).send().await.unwrap();
    json_error(r, 405, "method_not_allowed").await;
    let r = c
        .request(Method::OPTIONS, ts.url("/api/streams"))
        .send()
        .await
        .unwrap();
    json_error(r, 405, "method_not_allowed").await;
    let odd = Method::from_bytes(b"BREW").unwrap();
    let r = c.request(odd, ts.url("/api/streams")).send().await.unwrap();
    json_error(r, 405, "method_not_allowed").await;
    // HEAD has no body, but the status and type are those of the error.
    let r = c.head(ts.url("/api/streams")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("application/json")
    );
    let r = c.head(ts.url("/nothing-here")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .get(ts.url("/streams/preview/demo-smpte?timeout=soon"))
        .send()
        .await
        .unwrap();
    json_error(r, 400, "bad_request").await;
    let r = c
        .get(ts.url("/streams/preview/demo-smpte?format=avi"))
        .send()
        .await
        .unwrap();
    json_error(r, 400, "bad_request").await;
    let r = c
        .post(ts.url("/api/streams"))
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    json_error(r, 400, "bad_request").await;
    let r = c
        .post(ts.url("/api/streams"))
        .header("content-type", "application/json")
        .body(vec![0xff, 0xfe, b'{'])
        .send()
        .await
        .unwrap();
    json_error(r, 400, "bad_request").await;
    let r = c
        .post(ts.url("/api/streams"))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    json_error(r, 415, "unsupported_media_type").await;
    let big = vec![b' '; 1024 * 1024 + 1];
    let r = c
        .post(ts.url("/api/streams"))
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    let body = json_error(r, 413, "payload_too_large").await;
    assert!(
        body["message"].as_str().unwrap().contains("1 MiB"),
        "{body}"
    );
    // The same without Content-Length (chunked): counted while it arrives.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let r = c
        .post(ts.url("/api/streams"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    json_error(r, 413, "payload_too_large").await;
    // M3U imports may be larger, up to 50 MiB.
    let r = c
        .post(ts.url("/api/streams/import"))
        .header("content-type", "audio/x-mpegurl")
        .body(vec![b'#'; 50 * 1024 * 1024 + 1])
        .send()
        .await
        .unwrap();
    let body = json_error(r, 413, "payload_too_large").await;
    assert!(
        body["message"].as_str().unwrap().contains("50 MiB"),
        "{body}"
    );
    // A small chunked body is fine.
    let small = br#"{"id":"chunky","name":"Chunky","url":"test://ball"}"#.to_vec();
    let r = c
        .post(ts.url("/api/streams"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(vec![
            Ok::<_, std::io::Error>(small),
        ])))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    ts.stop().await;
}

/// Writes `request` on a raw connection and returns what comes back until
/// the server closes or `wait` passes.
fn raw_exchange(addr: std::net::SocketAddr, request: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test]
async fn a_half_sent_body_times_out_with_408() {
    let ts = common::start().await;
    let addr = ts.server.as_ref().unwrap().addr;
    let started = std::time::Instant::now();
    let reply = tokio::task::spawn_blocking(move || {
        raw_exchange(
            addr,
            b"POST /api/streams HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"name\":",
            Duration::from_secs(60),
        )
    })
    .await
    .unwrap();
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("\"request_timeout\""), "{reply}");
    // Answered at the 10 s deadline, and the connection closed by the
    // server then (not by the 60 s read timeout of this client).
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(9), "{took:?}");
    assert!(
        took < Duration::from_secs(45),
        "connection left open: {took:?}"
    );
    // The server still answers.
    let r = common::client().get(ts.url("/live")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    ts.stop().await;
}

#[tokio::test]
async fn source_allowlist_refuses_bad_urls_with_the_reason() {
    let ts = common::start().await;
    let c = common::client();
    let outside = ts.dir.path().join("outside.ts");
    std::fs::write(&outside, b"not media").unwrap();
    let inside = ts.media_dir().join("clip.ts");
    std::fs::write(&inside, b"not media either").unwrap();
    let link = ts.media_dir().join("escape.ts");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let long = format!("http://example.test/{}", "a".repeat(5000));
    let dotdot = format!("file://{}/../outside.ts", ts.media_dir().display());
    let cases: Vec<(String, &str)> = vec![
        ("ftp://example.test/x.ts".into(), "scheme"),
        ("javascript:alert(1)".into(), "scheme"),
        ("gopher://example.test/".into(), "scheme"),
        ("http://example.test/a b.ts".into(), "spaces or control"),
        ("http://example.test/a\u{7}.ts".into(), "spaces or control"),
        (
            "http://example.test/\r\nX-Evil: 1".into(),
            "spaces or control",
        ),
        ("http://example.test/a\u{0}b".into(), "spaces or control"),
        (long, "longer than"),
        (format!("file://{}", outside.display()), "outside"),
        (dotdot, "outside"),
        (format!("file://{}", link.display()), "outside"),
        ("file:///etc/passwd".into(), "outside"),
    ];
    for (i, (url, reason)) in cases.iter().enumerate() {
        let r = c
            .post(ts.url("/api/streams"))
            .json(&json!({"id": format!("bad{i}"), "name": "bad", "url": url}))
            .send()
            .await
            .unwrap();
        let body = json_error(r, 400, "bad_request").await;
        let msg = body["message"].as_str().unwrap();
        assert!(msg.contains(reason), "{url:?}: {msg}");
    }
    // Imports are vetted entry by entry, with the line and the reason.
    let playlist = format!(
        "#EXTM3U\n#EXTINF:-1,Good\ntest://ball\n#EXTINF:-1,Ftp\nftp://example.test/x.ts\n\
         #EXTINF:-1,Outside\nfile://{}\n#EXTINF:-1,Long\nhttp://example.test/{}\n",
        outside.display(),
        "b".repeat(5000)
    );
    let r = c
        .post(ts.url("/api/streams/import"))
        .header("content-type", "audio/x-mpegurl")
        .body(playlist)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.unwrap();
    assert_eq!(report["imported"], 1, "{report}");
    assert_eq!(report["skipped"], 3, "{report}");
    let errors = report["errors"].to_string();
    for reason in ["scheme", "outside", "longer than"] {
        assert!(errors.contains(reason), "{errors}");
    }
    // Updates are vetted the same way.
    let r = c
        .put(ts.url("/api/streams/demo-smpte"))
        .json(&json!({"url": "ftp://example.test/x"}))
        .send()
        .await
        .unwrap();
    json_error(r, 400, "bad_request").await;
    let r = c
        .post(ts.url("/api/streams"))
        .json(&json!({"id": "ok", "name": "ok", "url": format!("file://{}", inside.display())}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    ts.stop().await;
}

/// A port on 127.0.0.1 nobody listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

const SECRETS: &[&str] = &["S3cretPw0rd", "Tok3nValue", "xtr3amPass", "C00kieVal"];

fn assert_clean(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{what} leaks {s}: {text}");
    }
}

#[tokio::test]
async fn credentials_never_leave_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = common::BinServer::start(
        &dir.path().join("data"),
        &[],
        &[("LOG_LEVEL", "debug"), ("TRUST_PROXY", "true")],
    );
    let c = common::client();
    let port = closed_port();
    let streams = [
        (
            "userinfo",
            format!("http://alice:S3cretPw0rd@127.0.0.1:{port}/live.ts"),
        ),
        (
            "query",
            format!("http://127.0.0.1:{port}/get.php?username=alice&token=Tok3nValue"),
        ),
        (
            "xtream",
            format!("http://127.0.0.1:{port}/live/alice/xtr3amPass/1234.ts"),
        ),
        (
            "short",
            format!("http://127.0.0.1:{port}/alice/xtr3amPass/99"),
        ),
    ];
    for (id, url) in &streams {
        let r = c
            .post(srv.url("/api/streams"))
            .json(
                &json!({"id": id, "name": id, "url": url, "headers": {"Cookie": "sid=C00kieVal"}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    // The admin (loopback, no key configured) sees the real URL: the secret is there to leak.
    let admin = c
        .get(srv.url("/api/streams/userinfo"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(admin.contains("S3cretPw0rd"), "{admin}");

    let events = c
        .get(srv.url("/api/streams/transcoding/events"))
        .send()
        .await
        .unwrap();
    for (id, _) in &streams {
        let r = c
            .get(srv.url(&format!("/streams/preview/{id}?timeout=15000")))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{id}: {body}");
        assert!(body.contains("source_failed"), "{body}");
        assert_clean("preview error", &body);
    }
    let feed = common::read_for(events, Duration::from_secs(2), 1 << 20).await;
    let feed = String::from_utf8_lossy(&feed);
    assert!(feed.contains("event:"), "{feed}");
    assert_clean("events", &feed);

    let outsider = |path: &str| {
        c.get(srv.url(path))
            .header("x-forwarded-for", "203.0.113.9")
            .send()
    };
    let list = outsider("/api/streams")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(list.contains("userinfo") && list.contains("***"), "{list}");
    assert_clean("catalog list", &list);
    for (id, _) in &streams {
        let one = outsider(&format!("/api/streams/{id}"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_clean("catalog read", &one);
    }
    let status = outsider("/api/streams/transcoding/status")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_clean("status", &status);
    let metrics = outsider("/metrics").await.unwrap().text().await.unwrap();
    assert_clean("metrics", &metrics);
    let health = outsider("/health").await.unwrap().text().await.unwrap();
    assert_clean("health", &health);
    // A bad update's error message does not echo the URL either.
    let r = c
        .put(srv.url("/api/streams/userinfo"))
        .json(&json!({"url": "ftp://bob:S3cretPw0rd@example.test/x"}))
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    assert_clean("validation error", &body);

    assert!(srv.terminate(), "clean exit");
    let logs = srv.stderr_text();
    assert!(logs.contains("stream created"), "{logs}");
    assert!(logs.lines().count() > 10, "{logs}");
    assert_clean("server logs", &logs);
}

fn trust(s: &str) -> TrustProxy {
    TrustProxy::parse(s).unwrap()
}

/// A catalog write from this (loopback) test client with extra headers.
async fn post_stream(
    ts: &common::TestServer,
    id: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = common::client()
        .post(ts.url("/api/streams"))
        .json(&json!({"id": id, "name": id, "url": "http://u:S3cretPw0rd@192.0.2.1/x.ts"}));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn forwarded_requests_from_loopback_are_never_keyless_admins() {
    for setting in ["false", "true", "2", "127.0.0.1,10.0.0.0/8"] {
        let ts = common::start_with(|s| {
            s.trust_proxy = trust(setting);
            s.rate_limit_admin = Rate::Off;
        })
        .await;
        // What a proxy on the same host sends for an internet client, and
        // what a client spoofing loopback sends through it.
        let forwarded: [&[(&str, &str)]; 6] = [
            &[("x-forwarded-for", "198.51.100.7")],
            &[("x-forwarded-for", "127.0.0.1")],
            &[("x-forwarded-for", "127.0.0.1, 198.51.100.7")],
            &[("forwarded", "for=127.0.0.1")],
            &[("forwarded", "for=198.51.100.7;proto=https")],
            &[("x-real-ip", "127.0.0.1")],
        ];
        for (i, headers) in forwarded.iter().enumerate() {
            let r = post_stream(&ts, &format!("f{i}"), headers).await;
            let body = json_error(r, 401, "unauthorized").await;
            assert!(
                body["message"].as_str().unwrap().contains("ADMIN_API_KEY"),
                "{setting}: {body}"
            );
        }
        // Reads through the proxy see redacted sources; a direct loopback
        // client is still the admin.
        assert_eq!(
            post_stream(&ts, "direct", &[]).await.status(),
            201,
            "{setting}"
        );
        let c = common::client();
        let via_proxy = c
            .get(ts.url("/api/streams/direct"))
            .header("x-forwarded-for", "127.0.0.1")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!via_proxy.contains("S3cretPw0rd"), "{setting}: {via_proxy}");
        let direct = c.get(ts.url("/api/streams/direct")).send().await.unwrap();
        assert!(
            direct.text().await.unwrap().contains("S3cretPw0rd"),
            "{setting}"
        );
        ts.stop().await;
    }
}

#[tokio::test]
async fn the_key_still_works_through_a_proxy() {
    let ts = common::start_with(|s| {
        s.trust_proxy = trust("true");
        s.admin_api_key = Some("proxied-key".into());
    })
    .await;
    let xff = ("x-forwarded-for", "127.0.0.1, 198.51.100.7");
    json_error(post_stream(&ts, "a", &[xff]).await, 401, "unauthorized").await;
    let r = post_stream(&ts, "a", &[xff, ("x-admin-key", "proxied-key")]).await;
    assert_eq!(r.status(), 201);
    ts.stop().await;
}

/// Sends `GET /api/streams` with `headers`; returns the status.
async fn api_get(ts: &common::TestServer, headers: &[(&str, &str)]) -> u16 {
    let mut req = common::client().get(ts.url("/api/streams"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap().status().as_u16()
}

/// A server that allows one API request per client and minute, so the
/// bucket a request drew from tells who sluice took the client to be.
async fn one_per_client(setting: &str) -> common::TestServer {
    common::start_with(|s| {
        s.trust_proxy = trust(setting);
        s.rate_limit_api = Rate::parse("1/min").unwrap();
    })
    .await
}

#[tokio::test]
async fn a_spoofed_leftmost_entry_does_not_dodge_rate_limits() {
    let ts = one_per_client("true").await;
    let xff = |v: &'static str| [("x-forwarded-for", v)];
    assert_eq!(api_get(&ts, &xff("127.0.0.1, 198.51.100.7")).await, 200);
    // The same client, whatever it writes on the left.
    for spoof in [
        "10.0.0.9, 198.51.100.7",
        "203.0.113.1, 198.51.100.7",
        "198.51.100.7",
    ] {
        assert_eq!(api_get(&ts, &xff(spoof)).await, 429, "{spoof}");
    }
    // Another client behind the same proxy has its own bucket.
    assert_eq!(api_get(&ts, &xff("127.0.0.1, 198.51.100.8")).await, 200);
    ts.stop().await;

    // Without trust, every forwarded request is the proxy's (the TCP peer).
    let ts = one_per_client("false").await;
    assert_eq!(api_get(&ts, &xff("198.51.100.7")).await, 200);
    assert_eq!(api_get(&ts, &xff("198.51.100.8")).await, 429);
    assert_eq!(api_get(&ts, &[]).await, 429);
    ts.stop().await;
}

#[tokio::test]
async fn hop_counts_skip_that_many_proxies_from_the_right() {
    let ts = one_per_client("2").await;
    let xff = |v: &'static str| [("x-forwarded-for", v)];
    // Peer (hop 1) and 10.0.0.2 (hop 2) are the proxies; 198.51.100.7 the client.
    assert_eq!(
        api_get(&ts, &xff("6.6.6.6, 198.51.100.7, 10.0.0.2")).await,
        200
    );
    assert_eq!(
        api_get(&ts, &xff("7.7.7.7, 198.51.100.7, 10.0.0.3")).await,
        429
    );
    assert_eq!(api_get(&ts, &xff("198.51.100.7, 10.0.0.2")).await, 429);
    assert_eq!(api_get(&ts, &xff("198.51.100.8, 10.0.0.2")).await, 200);
    // Fewer entries than hops: the leftmost.
    assert_eq!(api_get(&ts, &xff("198.51.100.9")).await, 200);
    assert_eq!(api_get(&ts, &xff("198.51.100.9")).await, 429);
    ts.stop().await;
}

#[tokio::test]
async fn proxy_networks_are_skipped_and_the_first_outsider_is_the_client() {
    let ts = one_per_client("10.0.0.0/8,127.0.0.1").await;
    let xff = |v: &'static str| [("x-forwarded-for", v)];
    assert_eq!(
        api_get(&ts, &xff("6.6.6.6, 198.51.100.7, 10.1.1.1, 10.2.2.2")).await,
        200
    );
    assert_eq!(api_get(&ts, &xff("198.51.100.7")).await, 429);
    assert_eq!(
        api_get(&ts, &xff("127.0.0.1, 198.51.100.7, 10.3.3.3")).await,
        429
    );
    // An untrusted address right of the client is the client.
    assert_eq!(api_get(&ts, &xff("198.51.100.7, 203.0.113.5")).await, 200);
    assert_eq!(api_get(&ts, &xff("203.0.113.5")).await, 429);
    // A malformed entry ends the walk at the last good address.
    assert_eq!(
        api_get(&ts, &xff("198.51.100.7, junk, 10.4.4.4")).await,
        200
    );
    assert_eq!(api_get(&ts, &xff("10.4.4.4")).await, 429);
    ts.stop().await;
}

#[tokio::test]
async fn forwarded_and_x_real_ip_name_the_client_too() {
    let ts = one_per_client("127.0.0.1").await;
    let fwd = [(
        "forwarded",
        "for=127.0.0.1, for=\"[2001:db8::7]:4711\";proto=https",
    )];
    assert_eq!(api_get(&ts, &fwd).await, 200);
    // The same IPv6 client (its /64) through X-Forwarded-For.
    assert_eq!(
        api_get(&ts, &[("x-forwarded-for", "2001:db8::8")]).await,
        429
    );
    assert_eq!(api_get(&ts, &[("x-real-ip", "198.51.100.21")]).await, 200);
    assert_eq!(
        api_get(&ts, &[("forwarded", "for=198.51.100.21")]).await,
        429
    );
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_session_limits_follow_the_real_client() {
    let ts = common::start_with(|s| {
        s.trust_proxy = trust("true");
        s.max_sessions_per_client = 1;
        s.rate_limit_preview = Rate::Off;
    })
    .await;
    common::add_stream(&ts, "tiny", "test://smpte?size=320x240&rate=30").await;
    let get = |xff: &'static str| {
        common::client()
            .get(ts.url("/streams/preview/tiny?quality=low"))
            .header("x-forwarded-for", xff)
            .send()
    };
    let first = get("127.0.0.1, 198.51.100.7").await.unwrap();
    assert_eq!(first.status(), 200);
    let mut body = first.bytes_stream();
    futures::StreamExt::next(&mut body).await.unwrap().unwrap();
    let spoofed = get("10.20.30.40, 198.51.100.7").await.unwrap();
    json_error(spoofed, 429, "too_many_sessions").await;
    let status = common::get_json(&ts.url("/api/streams/transcoding/status")).await;
    assert_eq!(
        status["sessions"][0]["clientIP"], "198.51.100.7",
        "{status}"
    );
    drop(body);
    ts.stop().await;
}

/// Runs the binary with `envs` and `--port 0`; returns its stderr once it
/// listens (then stops it) or exits.
fn binary_start_log(host: &str, envs: &[(&str, &str)]) -> (Option<i32>, String) {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--host", host, "--port", "0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("LOG_FORMAT", "json")
        .env_remove("ADMIN_API_KEY")
        .env_remove("TRUST_PROXY")
        .envs(envs.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = String::new();
    for line in std::io::BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        log.push_str(&line);
        log.push('\n');
        if line.contains("sluice listening") {
            let _ = child.kill();
            let _ = child.wait();
            return (None, log);
        }
    }
    (child.wait().unwrap().code(), log)
}

#[test]
fn an_invalid_trust_proxy_stops_start_up_naming_the_forms() {
    for bad in ["sometimes", "10.0.0.0/33", "10.0.0.1,,"] {
        let (code, log) = binary_start_log("127.0.0.1", &[("TRUST_PROXY", bad)]);
        assert!(code.is_some_and(|c| c != 0), "{bad}: {code:?} {log}");
        assert!(log.contains("TRUST_PROXY"), "{bad}: {log}");
        assert!(
            log.contains("hop count") && log.contains("10.0.0.0/8"),
            "{bad}: {log}"
        );
    }
}

#[test]
fn start_up_warns_beyond_loopback_without_a_key() {
    let warned = |log: &str, what: &str| {
        log.lines().any(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_default();
            v["level"] == "WARN" && v["message"].as_str().is_some_and(|m| m.contains(what))
        })
    };
    let (code, log) = binary_start_log("0.0.0.0", &[("TRUST_PROXY", "1")]);
    assert_eq!(code, None, "{log}");
    assert!(warned(&log, "without ADMIN_API_KEY"), "{log}");
    assert!(warned(&log, "openssl rand"), "{log}");
    assert!(warned(&log, "TRUST_PROXY trusts hops"), "{log}");
    let (code, quiet) = binary_start_log("127.0.0.1", &[("TRUST_PROXY", "1")]);
    assert_eq!(code, None, "{quiet}");
    assert!(!warned(&quiet, "ADMIN_API_KEY"), "{quiet}");
    assert!(!warned(&quiet, "TRUST_PROXY"), "{quiet}");
}

#[tokio::test]
async fn every_route_in_the_table_is_served_and_labelled() {
    let ts = common::start_with(|s| s.rate_limit_api = Rate::Off).await;
    let c = common::client();
    for route in sluice::http::routes::ROUTES {
        let path = route
            .template
            .split('/')
            .map(|seg| if seg.starts_with(':') { "x" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        let path = if path.is_empty() {
            "/".to_string()
        } else {
            path
        };
        assert_eq!(
            sluice::http::log::route_template(&path),
            Some(route.template),
            "{path}"
        );
        let r = c.get(ts.url(&path)).send().await.unwrap();
        let status = r.status();
        if status == StatusCode::NOT_FOUND {
            let body: Value = r.json().await.unwrap();
            assert_ne!(body["message"], "no such route", "{path}: {body}");
        }
    }
    ts.stop().await;
}

#[tokio::test]
async fn only_a_trusted_proxy_may_say_the_client_came_over_https() {
    for (setting, scheme) in [
        ("false", "http"),
        ("127.0.0.1", "https"),
        ("10.0.0.0/8", "http"),
    ] {
        let ts = common::start_with(|s| s.trust_proxy = trust(setting)).await;
        let text = common::client()
            .get(ts.url("/playlist.m3u"))
            .header("x-forwarded-proto", "https")
            .header("host", "tv.example.com")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            text.contains(&format!("\n{scheme}://tv.example.com/streams/preview/")),
            "{setting}: {text}"
        );
        ts.stop().await;
    }
}
