//! Hostile input against the real binary over raw TCP: thousands of
//! generated malformed requests (odd methods, `..`/`%00`/very long paths,
//! junk queries, random bodies, invalid UTF-8, huge headers) while 50
//! half-open connections trickle their headers a byte at a time.
//!
//! The server must never answer 5xx other than 503, never panic, keep `/live`
//! answering, close the slow connections itself, and keep its memory flat.
//! Deterministic: a fixed seed drives the generator.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SEED: u64 = 0x5eed_0f51;
const REQUESTS: usize = 3000;
const WORKERS: usize = 6;
const SLOW_CONNECTIONS: usize = 50;

/// xorshift64*: small, deterministic, good enough to pick test cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T: ?Sized>(&mut self, items: &'a [&'a T]) -> &'a T {
        items[self.below(items.len())]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const METHODS: &[&str] = &[
    "GET", "GET", "GET", "POST", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE",
    "BREW", "PROPFIND", "get", "M-SEARCH", "X",
];

const PATHS: &[&str] = &[
    "/",
    "/live",
    "/api/streams",
    "/api/streams/",
    "/api/streams/demo-smpte",
    "/api/streams/import",
    "/api/streams/validate",
    "/api/streams/transcoding/status",
    "/api/streams/transcoding/sessions/abc",
    "/streams/preview/nope",
    "/streams/preview/",
    "/streams/preview/%00",
    "/streams/preview/..%2f..%2fetc%2fpasswd",
    "/../../etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/api/streams/%00",
    "/api/streams/%ff%fe%fd",
    "/api/streams/a%",
    "//api//streams",
    "/playlist.m3u",
    "/metrics",
    "/health",
    "/index.html",
    "/assets/../../Cargo.toml",
];

const QUERIES: &[&str] = &[
    "",
    "?",
    "?&&&==&",
    "?quality=../../etc&format=avi",
    "?timeout=-1",
    "?timeout=99999999999999999999",
    "?transcode=maybe",
    "?%zz=%",
    "?a=%00&b=%ff",
    "?url=file:///etc/passwd",
];

const CONTENT_TYPES: &[&str] = &[
    "application/json",
    "text/plain",
    "application/x-mpegurl",
    "multipart/form-data; boundary=x",
    "application/json; charset=utf-7",
    "",
];

/// One generated request, as bytes on the wire. Content-Length always
/// matches the body, so no request waits for bytes that never come.
fn generate(rng: &mut Rng) -> Vec<u8> {
    let method = match rng.below(20) {
        0 => String::from_utf8_lossy(&rng.bytes(6)).replace(['\r', '\n', ' '], "x"),
        _ => rng.pick(METHODS).to_string(),
    };
    let mut path: Vec<u8> = rng.pick(PATHS).as_bytes().to_vec();
    match rng.below(12) {
        0 => path.extend(std::iter::repeat_n(b'a', 1000 + rng.below(12_000))),
        1 => path.extend([0xff, 0xfe, b'/', 0xc3, 0x28]),
        2 => path.extend(b"/..".repeat(1 + rng.below(50))),
        3 => path = b"*".to_vec(),
        4 => path = b"http://evil.test/api/streams".to_vec(),
        _ => {}
    }
    path.extend(rng.pick(QUERIES).as_bytes());
    if rng.below(8) == 0 {
        path.extend(b"&junk=");
        let n = 1 + rng.below(40);
        path.extend(rng.bytes(n).iter().map(|b| b'!' + b % 90));
    }
    let mut req = Vec::new();
    req.extend(method.as_bytes());
    req.push(b' ');
    req.extend(&path);
    req.extend(if rng.below(30) == 0 {
        &b" HTTP/9.9\r\n"[..]
    } else {
        &b" HTTP/1.1\r\n"[..]
    });
    req.extend(b"Host: sluice.test\r\nConnection: close\r\n");
    let ct = rng.pick(CONTENT_TYPES);
    if !ct.is_empty() {
        req.extend(format!("Content-Type: {ct}\r\n").as_bytes());
    }
    match rng.below(14) {
        0 => req.extend(format!("X-Huge: {}\r\n", "h".repeat(70 * 1024)).as_bytes()),
        1 => {
            for i in 0..150 {
                req.extend(format!("X-Many-{i}: {i}\r\n").as_bytes());
            }
        }
        2 => {
            req.extend(b"X-Bin: ");
            req.extend(rng.bytes(30).iter().map(|b| b | 0x80));
            req.extend(b"\r\n");
        }
        3 => req.extend(b"X-Forwarded-For: \xff\xfe, not-an-ip\r\n"),
        4 => req.extend(b"Origin: https://example.com.evil.test\r\n"),
        5 => req.extend(b"X-Admin-Key: \x01\x02\r\nAuthorization: Bearer \r\n"),
        6 => req.extend(b"Bad Header Name: x\r\n"),
        _ => {}
    }
    let body: Vec<u8> = match rng.below(6) {
        0 if rng.below(10) == 0 => vec![b'['; 1024 * 1024 + 1 + rng.below(100_000)],
        0 => Vec::new(),
        1 => {
            let n = rng.below(4096);
            rng.bytes(n)
        }
        2 => br#"{"id":"x","name":"x","url":"ftp://u:p@h/x"}"#.to_vec(),
        3 => br#"{"url": "http://"#.to_vec(),
        4 => {
            let mut b = b"#EXTM3U\n#EXTINF:-1 tvg-id=\"".to_vec();
            b.extend(rng.bytes(200));
            b.extend(b"\nhttp://a/b\n");
            b
        }
        _ => format!("{{\"name\": \"{}\"}}", "n".repeat(rng.below(3000))).into_bytes(),
    };
    if !body.is_empty() || rng.below(2) == 0 {
        req.extend(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    req.extend(b"\r\n");
    req.extend(body);
    req
}

/// Sends one request; returns the status code, or `None` when the server
/// closed without answering.
fn exchange(addr: SocketAddr, req: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(addr).expect("the server accepts connections");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    // The server may answer (and close) before it has read everything.
    let _ = s.write_all(req);
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(2).any(|w| w == b"\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend(&buf[..n]),
        }
        if head.len() > 64 * 1024 {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head);
    line.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
}

/// `/live` over a fresh connection; returns how long it took.
fn probe_live(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let status = exchange(
        addr,
        b"GET /live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, Some(200), "/live must keep answering");
    started.elapsed()
}

#[test]
fn hostile_requests_and_slow_connections_do_not_hurt_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("streams.json"), b"[]").unwrap();
    let off = [
        ("RATE_LIMIT_PREVIEW", "off"),
        ("RATE_LIMIT_ADMIN", "off"),
        ("RATE_LIMIT_API", "off"),
        ("LOG_LEVEL", "info"),
    ];
    let srv = common::BinServer::start(&data, &[], &off);
    let addr = srv.addr;

    // Warm-up, then the memory baseline.
    let mut rng = Rng(SEED);
    for _ in 0..300 {
        exchange(addr, &generate(&mut rng));
    }
    let rss_before = srv.rss_bytes();

    // 50 half-open connections: a request head sent one byte at a time.
    let stop = Arc::new(AtomicBool::new(false));
    let closed_after: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let slow: Vec<_> = (0..SLOW_CONNECTIONS)
        .map(|i| {
            let (stop, closed_after) = (stop.clone(), closed_after.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
                let head = format!("GET /api/streams?slow={i} HTTP/1.1\r\nHost: x\r\nX-Pad: ");
                let trickle = head.bytes().chain(std::iter::repeat(b'z'));
                let mut buf = [0u8; 1024];
                for byte in trickle {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    // Any answer (or EOF, or a reset) means the server is
                    // ending this connection; a read timeout means still open.
                    let gone = s.write_all(&[byte]).is_err()
                        || match s.read(&mut buf) {
                            Ok(_) => true,
                            Err(e) => !matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ),
                        };
                    if gone {
                        closed_after.lock().unwrap().push(started.elapsed());
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(300));
                }
            })
        })
        .collect();

    // Keep probing /live while the flood runs.
    let probe_stop = Arc::new(AtomicBool::new(false));
    let probe = {
        let probe_stop = probe_stop.clone();
        std::thread::spawn(move || {
            let mut worst = Duration::ZERO;
            let mut n = 0;
            while !probe_stop.load(Ordering::Relaxed) {
                worst = worst.max(probe_live(addr));
                n += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            (n, worst)
        })
    };

    let bad: Arc<Mutex<Vec<String>>> = Arc::default();
    let codes: Arc<Mutex<std::collections::BTreeMap<u16, usize>>> = Arc::default();
    let unanswered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (bad, unanswered, codes) = (bad.clone(), unanswered.clone(), codes.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(SEED ^ (w as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                for _ in 0..REQUESTS / WORKERS {
                    let req = generate(&mut rng);
                    let answer = exchange(addr, &req);
                    if let Some(code) = answer {
                        *codes.lock().unwrap().entry(code).or_default() += 1;
                    }
                    match answer {
                        Some(code) if code >= 500 && code != 503 => {
                            let shown = String::from_utf8_lossy(&req[..req.len().min(300)]);
                            bad.lock().unwrap().push(format!("{code} for {shown:?}"));
                        }
                        Some(_) => {}
                        None => {
                            unanswered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let flood_took = started.elapsed();

    // The slow connections are closed by the server (request head timeout),
    // not left to pile up.
    let all_closed = {
        let deadline = Instant::now() + Duration::from_secs(45);
        while closed_after.lock().unwrap().len() < SLOW_CONNECTIONS && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        closed_after.lock().unwrap().len()
    };
    stop.store(true, Ordering::Relaxed);
    probe_stop.store(true, Ordering::Relaxed);
    for s in slow {
        s.join().unwrap();
    }
    let (probes, worst_live) = probe.join().unwrap();
    let rss_after = srv.rss_bytes();

    let bad = bad.lock().unwrap();
    assert!(
        bad.is_empty(),
        "{} 5xx answers other than 503: {:#?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    let codes = codes.lock().unwrap().clone();
    // The generator reaches the routes, not only the request parser.
    for code in [200, 400, 404, 405, 413, 415] {
        assert!(codes.contains_key(&code), "no {code} among {codes:?}");
    }
    let logs = srv.stderr_text();
    assert!(!logs.contains("panicked"), "the server panicked: {logs}");
    probe_live(addr);
    assert!(probes > 5, "/live probed only {probes} times");
    // Generous: /live answers within a few seconds even under the flood.
    assert!(
        worst_live < Duration::from_secs(5),
        "/live took {worst_live:?}"
    );
    assert_eq!(all_closed, SLOW_CONNECTIONS, "slow connections left open");
    let growth = rss_after.saturating_sub(rss_before);
    assert!(
        growth < 64 * 1024 * 1024,
        "RSS grew by {} MiB ({} -> {})",
        growth >> 20,
        rss_before,
        rss_after
    );
    eprintln!(
        "hostile: {REQUESTS} requests in {flood_took:?} (status counts {codes:?}), {} closed \
         without an answer, /live worst {worst_live:?} over {probes} probes, RSS {} -> {} MiB",
        unanswered.load(Ordering::Relaxed),
        rss_before >> 20,
        rss_after >> 20
    );
}

/// One response read off a raw connection: status, lower-cased head, body
/// (by `Content-Length`).
async fn read_response(s: &mut tokio::net::TcpStream) -> (u16, String, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut chunk))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(
            n > 0,
            "closed without an answer: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "body cut short");
        body.extend(&chunk[..n]);
    }
    (status, head, body)
}

/// Asserts a JSON error answer that closes the connection.
async fn assert_json_close(s: &mut tokio::net::TcpStream, status: u16, code: &str) {
    use tokio::io::AsyncReadExt;
    let (got, head, body) = read_response(s).await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(got, status, "{head}{text}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("a JSON body");
    assert_eq!(v["error"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    // And the server closes the connection.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "connection left open: {rest:?}"
    );
}

fn head_with_pad(path: &str, total: usize) -> Vec<u8> {
    let start = format!("GET {path} HTTP/1.1\r\nHost: sluice.test\r\nX-Pad: ");
    let mut head = start.into_bytes();
    head.extend(std::iter::repeat_n(b'p', total - head.len() - 4));
    head.extend(b"\r\n\r\n");
    assert_eq!(head.len(), total);
    head
}

async fn connect(ts: &common::TestServer) -> tokio::net::TcpStream {
    let addr = ts.base.strip_prefix("http://").unwrap();
    tokio::net::TcpStream::connect(addr).await.unwrap()
}

#[tokio::test]
async fn request_heads_are_capped_at_64_kib_with_a_json_431() {
    use tokio::io::AsyncWriteExt;
    let ts = common::start().await;
    let cap = sluice::http::MAX_HEADER_BYTES;
    assert_eq!(cap, 64 * 1024);
    // One long header of 100 KB.
    let mut s = connect(&ts).await;
    let _ = s.write_all(&head_with_pad("/api/streams", 100_000)).await;
    assert_json_close(&mut s, 431, "request_header_too_large").await;
    // One byte over the cap.
    let mut s = connect(&ts).await;
    let _ = s.write_all(&head_with_pad("/api/streams", cap + 1)).await;
    assert_json_close(&mut s, 431, "request_header_too_large").await;
    // Just under (and at) the cap is served.
    for size in [cap - 100, cap] {
        let mut s = connect(&ts).await;
        s.write_all(&head_with_pad("/api/streams", size))
            .await
            .unwrap();
        let (status, head, _) = read_response(&mut s).await;
        assert_eq!(status, 200, "{size}: {head}");
    }
    // Too many header lines.
    let many: String = (0..150).map(|i| format!("X-Many-{i}: {i}\r\n")).collect();
    let mut s = connect(&ts).await;
    s.write_all(format!("GET /live HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes())
        .await
        .unwrap();
    assert_json_close(&mut s, 431, "request_header_too_large").await;
    ts.stop().await;
}

#[tokio::test]
async fn a_broken_request_line_gets_a_json_400() {
    use tokio::io::AsyncWriteExt;
    let ts = common::start().await;
    for junk in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /live\r\n\r\n",
        b"GET /live HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /li\xffve HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /live HTTP/1.1\r\nBad Header Name: x\r\n\r\n",
    ] {
        let mut s = connect(&ts).await;
        s.write_all(junk).await.unwrap();
        assert_json_close(&mut s, 400, "bad_request").await;
    }
    ts.stop().await;
}

#[tokio::test]
async fn later_requests_on_a_keep_alive_connection_are_capped_too() {
    use tokio::io::AsyncWriteExt;
    let ts = common::start().await;
    let mut s = connect(&ts).await;
    // Two ordinary requests on one connection, the second after a body.
    s.write_all(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, head, _) = read_response(&mut s).await;
    assert_eq!(status, 200, "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    let body = br#"{"url": "ftp://example.test/x"}"#;
    s.write_all(
        format!(
            "POST /api/streams/validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(body).await.unwrap();
    let (status, head, _) = read_response(&mut s).await;
    assert_eq!(status, 400, "{head}");
    // A near-cap head is still served on the same connection...
    s.write_all(&head_with_pad("/live", sluice::http::MAX_HEADER_BYTES - 10))
        .await
        .unwrap();
    let (status, head, _) = read_response(&mut s).await;
    assert_eq!(status, 200, "{head}");
    // ...and a huge one gets the JSON 431.
    let _ = s.write_all(&head_with_pad("/live", 200_000)).await;
    assert_json_close(&mut s, 431, "request_header_too_large").await;
    // A broken request line later on is a JSON 400 as well.
    let mut s = connect(&ts).await;
    s.write_all(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s).await.0, 200);
    s.write_all(b"GARBAGE\r\n\r\n").await.unwrap();
    assert_json_close(&mut s, 400, "bad_request").await;
    ts.stop().await;
}

#[tokio::test]
async fn pipelined_requests_are_capped_one_by_one() {
    use tokio::io::AsyncWriteExt;
    let ts = common::start().await;
    let mut s = connect(&ts).await;
    let body = br#"{"url": "ftp://example.test/x"}"#;
    let mut wire = b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    wire.extend(
        format!(
            "POST /api/streams/validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    wire.extend(body);
    wire.extend(head_with_pad("/live", 100_000));
    let _ = s.write_all(&wire).await;
    // Three answers in order, then the server closes.
    let mut all = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(20),
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut all),
    )
    .await
    .expect("the server closes after the 431")
    .unwrap();
    let text = String::from_utf8_lossy(&all);
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "400", "431"], "{text}");
    let last = &text[text.rfind("HTTP/1.1 ").unwrap()..];
    assert!(last.contains("connection: close"), "{last}");
    assert!(last.contains("application/json"), "{last}");
    assert!(
        last.contains(r#""error":"request_header_too_large""#),
        "{last}"
    );
    ts.stop().await;
}

#[tokio::test]
async fn heads_after_a_chunked_body_are_capped_too() {
    use tokio::io::AsyncWriteExt;
    let ts = common::start().await;
    let mut s = connect(&ts).await;
    let body = br#"{"url": "ftp://example.test/x"}"#;
    let mut wire = b"POST /api/streams/validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    wire.extend(format!("{:x}\r\n", 10).as_bytes());
    wire.extend(&body[..10]);
    wire.extend(format!("\r\n{:x};note=rest\r\n", body.len() - 10).as_bytes());
    wire.extend(&body[10..]);
    wire.extend(b"\r\n0\r\n\r\n");
    s.write_all(&wire).await.unwrap();
    let (status, head, answer) = read_response(&mut s).await;
    assert_eq!(status, 400, "{head}{}", String::from_utf8_lossy(&answer));
    assert!(
        String::from_utf8_lossy(&answer).contains("ftp"),
        "the body arrived whole"
    );
    let _ = s.write_all(&head_with_pad("/live", 100_000)).await;
    assert_json_close(&mut s, 431, "request_header_too_large").await;
    ts.stop().await;
}
