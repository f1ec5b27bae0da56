//! Providers, black-box: upstream accounts with a connection limit, counted
//! at a live MPEG-TS server of the test's own that records how many
//! connections it has open at once (a connection is open from its accept
//! until the client's FIN). A client that asks for a second channel of a
//! provider at its limit is switched off its first one; another client is
//! refused with `provider_busy`; an Xtream account imported without a
//! provider is one implicit provider whose limit holds under load; validate
//! probes count too.

mod common;

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast::error::RecvError;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A live MPEG-TS source over HTTP (H.264 + AAC, 320x240, a keyframe a
/// second) on every path, encoded once by an `ffmpeg -re` child. Counts the
/// connections it accepted, those open now, and the most open at once.
struct CountingUpstream {
    port: u16,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    _encoder: tokio::process::Child,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl CountingUpstream {
    async fn start() -> CountingUpstream {
        let mut encoder = tokio::process::Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-v", "error", "-re"])
            .args(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25"])
            .args([
                "-re",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=48000",
            ])
            .args(["-c:v", "libx264", "-preset", "ultrafast", "-tune"])
            .args(["zerolatency", "-g", "25", "-pix_fmt", "yuv420p"])
            .args(["-c:a", "aac", "-b:a", "64k", "-flush_packets", "1"])
            .args(["-f", "mpegts", "pipe:1"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("ffmpeg runs (apt install ffmpeg)");
        let mut out = encoder.stdout.take().unwrap();
        let (tx, _) = tokio::sync::broadcast::channel::<Bytes>(4096);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let feed = tx.clone();
        let reader = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut buf = vec![0u8; 188 * 7];
            while out.read_exact(&mut buf).await.is_ok() {
                let _ = feed.send(Bytes::copy_from_slice(&buf));
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (acc, opn, top) = (accepted.clone(), open.clone(), peak.clone());
        let acceptor = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                acc.fetch_add(1, Ordering::SeqCst);
                let now = opn.fetch_add(1, Ordering::SeqCst) + 1;
                top.fetch_max(now, Ordering::SeqCst);
                let counted = OpenConnection(opn.clone());
                let mut rx = tx.subscribe();
                tokio::spawn(async move {
                    let _counted = counted;
                    if read_request_head(&mut sock).await.is_none() {
                        return;
                    }
                    let (mut rd, mut wr) = sock.into_split();
                    let head = "HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\n\
                                Cache-Control: no-cache\r\nConnection: close\r\n\r\n";
                    if wr.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    // The connection is closed when the client's FIN comes
                    // (a read of 0), not when a later write fails.
                    let mut sink = [0u8; 512];
                    loop {
                        tokio::select! {
                            n = rd.read(&mut sink) => match n {
                                Ok(0) | Err(_) => return,
                                Ok(_) => continue,
                            },
                            chunk = rx.recv() => match chunk {
                                Ok(chunk) => {
                                    if wr.write_all(&chunk).await.is_err() {
                                        return;
                                    }
                                }
                                Err(RecvError::Lagged(_)) => continue,
                                Err(RecvError::Closed) => return,
                            },
                        }
                    }
                });
            }
        });
        tokio::time::timeout(Duration::from_secs(20), ready_rx)
            .await
            .expect("the test upstream's ffmpeg writes MPEG-TS within 20 s")
            .expect("the test upstream's ffmpeg writes MPEG-TS");
        CountingUpstream {
            port,
            accepted,
            open,
            peak,
            _encoder: encoder,
            tasks: vec![reader, acceptor],
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

impl Drop for CountingUpstream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A server with the per-client and rate limits out of the way.
async fn server() -> TestServer {
    server_with(|_| {}).await
}

async fn server_with(tweak: impl FnOnce(&mut sluice::config::Settings)) -> TestServer {
    sluice::memory::limit_arenas();
    start_with(|s| {
        let off = || sluice::http::ratelimit::Rate::parse("off").unwrap();
        s.rate_limit_preview = off();
        s.rate_limit_api = off();
        s.rate_limit_admin = off();
        s.max_sessions_per_client = 64;
        s.max_viewers = 64;
        s.max_remux = 16;
        tweak(s)
    })
    .await
}

/// Stops the server whether or not `body` panicked, then raises the panic.
async fn run(ts: TestServer, body: impl AsyncFnOnce(&TestServer)) {
    use futures::FutureExt;
    let outcome = std::panic::AssertUnwindSafe(body(&ts)).catch_unwind().await;
    ts.stop().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// An HTTP client whose connections come from `ip` (any 127.x address
/// reaches the server on loopback), so the server sees another client.
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// A remuxed TS preview of `id` (cheap: no encoder).
fn remux(id: &str) -> String {
    format!("/streams/preview/{id}?format=ts&transcode=false")
}

/// A response read in the background: the bytes so far, and whether its
/// body has ended.
struct Reading {
    bytes: Arc<std::sync::Mutex<Vec<u8>>>,
    ended: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Reading {
    fn start(resp: reqwest::Response) -> Reading {
        let bytes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (b, e) = (bytes.clone(), ended.clone());
        let task = tokio::spawn(async move {
            let mut body = resp.bytes_stream();
            while let Some(Ok(chunk)) = body.next().await {
                b.lock().unwrap().extend_from_slice(&chunk);
            }
            e.store(true, Ordering::SeqCst);
        });
        Reading { bytes, ended, task }
    }

    fn received(&self) -> usize {
        self.bytes.lock().unwrap().len()
    }

    fn ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn open_ok(c: &reqwest::Client, ts: &TestServer, id: &str) -> Reading {
    let resp = c.get(ts.url(&remux(id))).send().await.unwrap();
    let status = resp.status();
    if status != 200 {
        panic!("{id}: {status} {}", resp.text().await.unwrap_or_default());
    }
    let r = Reading::start(resp);
    assert!(
        eventually(Duration::from_secs(20), || r.received() > 0).await,
        "{id}: no media within 20 s"
    );
    r
}

/// Expects 503 `provider_busy` with Retry-After; returns the message.
async fn expect_busy(resp: reqwest::Response) -> String {
    assert_eq!(resp.status(), 503);
    let retry = resp
        .headers()
        .get("retry-after")
        .expect("Retry-After on provider_busy")
        .to_str()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert!(retry >= 1);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "provider_busy", "{body}");
    body["message"].as_str().unwrap().to_string()
}

async fn providers(ts: &TestServer) -> Vec<Value> {
    get_json(&ts.url("/api/providers"))
        .await
        .as_array()
        .unwrap()
        .clone()
}

async fn provider(ts: &TestServer, id: &str) -> Value {
    get_json(&ts.url(&format!("/api/providers/{id}"))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_switching_channels_at_the_limit_never_holds_two_connections() {
    let _turn = SERIAL.lock().await;
    let up = CountingUpstream::start().await;
    let ts = server().await;
    run(ts, async |ts| {
        let r = client()
            .post(ts.url("/api/providers"))
            .json(&json!({"id": "acme", "name": "Acme IPTV", "maxConnections": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        for id in ["ch1", "ch2"] {
            let r = client()
                .post(ts.url("/api/streams"))
                .json(&json!({"id": id, "name": id, "url": up.url(&format!("/{id}.ts")), "provider": "acme"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        }
        let (a, b) = (client_from("127.0.0.1"), client_from("127.0.0.2"));

        let a1 = open_ok(&a, ts, "ch1").await;
        assert_eq!(provider(ts, "acme").await["connections"], 1);
        // A asks for ch2 while still holding ch1: ch1 makes way.
        let a2 = open_ok(&a, ts, "ch2").await;
        assert!(
            eventually(Duration::from_secs(10), || a1.ended()).await,
            "ch1's viewer ends when A switched"
        );
        let switched = ts
            .state()
            .registry
            .ended_counts()
            .get(&sluice::media::EndReason::Switched)
            .copied();
        assert_eq!(switched, Some(1), "ch1's viewer ended as switched");
        assert!(ts.state().channels.get("ch1").is_none());
        let before = a2.received();
        assert!(
            eventually(Duration::from_secs(10), || a2.received() > before + 50_000).await,
            "ch2 plays on"
        );

        // B wants ch1: the one connection is A's ch2, which B does not hold.
        let msg = expect_busy(b.get(ts.url(&remux("ch1"))).send().await.unwrap()).await;
        assert!(msg.contains("Acme IPTV") && msg.contains("limit of 1"), "{msg}");
        assert!(!msg.contains("127.0.0.1:") && !msg.contains("http"), "{msg}");
        // B wants ch2: joins A's channel, no new connection.
        let b2 = open_ok(&b, ts, "ch2").await;
        assert_eq!(up.accepted(), 2, "ch1, then ch2");
        assert_eq!(provider(ts, "acme").await["connections"], 1);
        let metrics = scrape(ts).await;
        assert_eq!(
            metric(&metrics, "sluice_provider_connections", &[("provider", "acme")]),
            Some(1.0)
        );
        assert_eq!(
            metric(&metrics, "sluice_provider_max_connections", &[("provider", "acme")]),
            Some(1.0)
        );

        let status = get_json(&ts.url("/api/streams/transcoding/status")).await;
        let running = status["channels"].as_array().unwrap();
        assert_eq!(running.len(), 1, "{status}");
        assert_eq!(running[0]["upstream"]["provider"], "acme", "{status}");
        let listed = status["providers"].as_array().unwrap();
        assert!(
            listed
                .iter()
                .any(|p| p["id"] == "acme" && p["connections"] == 1 && p["maxConnections"] == 1),
            "{status}"
        );

        // ch2 now has viewers of two clients: A asking for ch1 is refused.
        expect_busy(a.get(ts.url(&remux("ch1"))).send().await.unwrap()).await;

        // What A's ch2 got decodes.
        let bytes = a2.bytes.lock().unwrap().clone();
        let file = ts.dir.path().join("a2.ts");
        std::fs::write(&file, complete_prefix(&bytes)).unwrap();
        let probe = ffprobe(&file);
        assert_eq!(stream_of(&probe, "video").expect("video")["codec_name"], "h264");
        drop((a2, b2));
        assert!(
            eventually(Duration::from_secs(20), || up.open() == 0).await,
            "the upstream connection closes after the last viewer and the linger"
        );
        assert_eq!(provider(ts, "acme").await["connections"], 0);
    })
    .await;
    assert_eq!(up.peak(), 1, "the upstream saw two connections at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_xtream_account_is_one_implicit_provider_that_holds_its_limit_under_load() {
    let _turn = SERIAL.lock().await;
    let up = CountingUpstream::start().await;
    let ts = server().await;
    run(ts, async |ts| {
        let mut m3u = String::from("#EXTM3U\n");
        for n in 1..=5 {
            m3u.push_str(&format!(
                "#EXTINF:-1 tvg-id=\"x{n}\",Xtream {n}\n{}\n",
                up.url(&format!("/live/xuser/xsecret/{n}.ts"))
            ));
        }
        let r = client()
            .post(ts.url("/api/streams/import"))
            .header("content-type", "audio/x-mpegurl")
            .body(m3u)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let list = providers(ts).await;
        let shown = serde_json::to_string(&list).unwrap();
        assert!(
            !shown.contains("xuser") && !shown.contains("xsecret"),
            "{shown}"
        );
        let xtream: Vec<&Value> = list.iter().filter(|p| p["implicit"] == true).collect();
        assert_eq!(xtream.len(), 1, "one account, one provider: {shown}");
        let p = xtream[0];
        assert_eq!(p["streams"], 5, "{p}");
        assert_eq!(p["host"], format!("127.0.0.1:{}", up.port), "{p}");
        assert!(p["maxConnections"].is_null(), "no limit until one is set");
        let id = p["id"].as_str().unwrap().to_string();
        let r = client()
            .put(ts.url(&format!("/api/providers/{id}")))
            .json(&json!({"maxConnections": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        assert_eq!(provider(ts, &id).await["maxConnections"], 2);

        let ids: Vec<String> = ts
            .state()
            .catalog
            .snapshot()
            .iter()
            .filter(|s| s.url.contains("/live/"))
            .map(|s| s.id.clone())
            .collect();
        assert_eq!(ids.len(), 5);
        // Ten viewers of ten clients, two per channel, all at once.
        let asks = (0..10).map(|i| {
            let c = client_from(&format!("127.0.0.{}", 10 + i));
            let url = ts.url(&remux(&ids[i % 5]));
            async move { (i % 5, c.get(url).send().await.unwrap()) }
        });
        let answers = futures::future::join_all(asks).await;
        let mut playing = Vec::new();
        let mut busy = 0;
        let mut channels = std::collections::BTreeSet::new();
        for (ch, resp) in answers {
            match resp.status().as_u16() {
                200 => {
                    channels.insert(ch);
                    playing.push(Reading::start(resp));
                }
                503 => {
                    let msg = expect_busy(resp).await;
                    assert!(msg.contains("limit of 2"), "{msg}");
                    assert!(!msg.contains("xuser") && !msg.contains("xsecret"), "{msg}");
                    busy += 1;
                }
                s => panic!("{s}: {}", resp.text().await.unwrap_or_default()),
            }
        }
        assert_eq!(channels.len(), 2, "two channels run");
        assert_eq!(
            playing.len(),
            4,
            "both viewers of each running channel play"
        );
        assert_eq!(
            busy, 6,
            "the viewers of the other three channels are refused"
        );
        for r in &playing {
            assert!(eventually(Duration::from_secs(20), || r.received() > 0).await);
        }
        assert_eq!(provider(ts, &id).await["connections"], 2);
        assert_eq!(up.accepted(), 2);
        drop(playing);
    })
    .await;
    assert_eq!(
        up.peak(),
        2,
        "the upstream saw more than two connections at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lingering_channel_nobody_watches_makes_way_for_another_client() {
    let _turn = SERIAL.lock().await;
    let up = CountingUpstream::start().await;
    let ts = server_with(|s| s.channel_linger_ms = 30_000).await;
    run(ts, async |ts| {
        let r = client()
            .post(ts.url("/api/providers"))
            .json(&json!({"id": "one", "name": "One", "maxConnections": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        for id in ["a", "b"] {
            let r = client()
                .post(ts.url("/api/streams"))
                .json(&json!({"id": id, "name": id, "url": up.url(&format!("/{id}.ts")), "provider": "one"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
        let (a, b) = (client_from("127.0.0.1"), client_from("127.0.0.2"));
        let watching = open_ok(&a, ts, "a").await;
        // Watched by A: B is refused.
        expect_busy(b.get(ts.url(&remux("b"))).send().await.unwrap()).await;
        drop(watching);
        assert!(
            eventually(Duration::from_secs(10), || ts.state().registry.is_empty()).await,
            "A's viewer ends when A hangs up"
        );
        assert!(
            ts.state().channels.get("a").is_some(),
            "the channel lingers after its last viewer"
        );
        // Nobody watches it now: B's request switches it off.
        let _b = open_ok(&b, ts, "b").await;
        assert!(ts.state().channels.get("a").is_none());
        assert_eq!(up.accepted(), 2);
        assert_eq!(ts.state().providers.connections("one"), 1);
    })
    .await;
    assert_eq!(up.peak(), 1, "the upstream saw two connections at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_probes_count_against_the_provider_and_are_refused_at_its_limit() {
    let _turn = SERIAL.lock().await;
    let up = CountingUpstream::start().await;
    let ts = server().await;
    run(ts, async |ts| {
        let url = up.url("/probe.ts");
        let r = client()
            .post(ts.url("/api/providers"))
            .json(&json!({"id": "one", "name": "One", "maxConnections": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let r = client()
            .post(ts.url("/api/streams"))
            .json(&json!({"id": "p", "name": "P", "url": url, "provider": "one"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let validate = || {
            client()
                .post(ts.url("/api/streams/validate"))
                .json(&json!({"url": url, "timeout": 8000}))
                .send()
        };
        // Free: the probe runs, and gives its connection back.
        let r = validate().await.unwrap();
        assert_eq!(r.status(), 200);
        let report: Value = r.json().await.unwrap();
        assert_eq!(report["valid"], true, "{report}");
        assert_eq!(up.accepted(), 1, "the probe connected");
        assert!(
            eventually(Duration::from_secs(10), || ts
                .state()
                .providers
                .connections("one")
                == 0)
            .await
        );
        // At the limit (a channel holds the one connection): refused,
        // without connecting.
        let viewer = open_ok(&client(), ts, "p").await;
        let accepted = up.accepted();
        let msg = expect_busy(validate().await.unwrap()).await;
        assert!(msg.contains("One") && msg.contains("limit of 1"), "{msg}");
        assert_eq!(up.accepted(), accepted, "a refused probe opens nothing");
        // And a probe in flight holds the connection a channel would need.
        drop(viewer);
        assert!(
            eventually(Duration::from_secs(20), || ts
                .state()
                .providers
                .connections("one")
                == 0)
            .await
        );
        let probe = tokio::spawn(validate());
        assert!(
            eventually(Duration::from_secs(5), || ts
                .state()
                .providers
                .connections("one")
                == 1)
            .await,
            "the probe counts while it runs"
        );
        let during = client().get(ts.url(&remux("p"))).send().await.unwrap();
        expect_busy(during).await;
        assert_eq!(probe.await.unwrap().unwrap().status(), 200);
    })
    .await;
    assert_eq!(up.peak(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_routes_validate_need_admin_and_imports_assign_a_provider() {
    let ts = start_with(|s| s.admin_api_key = Some("k".into())).await;
    let admin = |r: reqwest::RequestBuilder| r.header("x-admin-key", "k");
    let c = client();
    // Writes need the key; reads do not.
    let r = c
        .post(ts.url("/api/providers"))
        .json(&json!({"name": "Acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        c.get(ts.url("/api/providers"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = admin(c.post(ts.url("/api/providers")))
        .json(&json!({"name": "Acme TV", "maxConnections": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let made: Value = r.json().await.unwrap();
    assert_eq!(made["id"], "acme-tv");
    assert_eq!(made["implicit"], false);
    assert_eq!(made["connections"], 0);
    for (body, code) in [
        (json!({"name": "Acme TV"}), "provider_exists"),
        (
            json!({"id": "x", "name": "X", "maxConnections": 0}),
            "bad_request",
        ),
        (json!({"id": "implicit-1", "name": "X"}), "bad_request"),
        (
            json!({"id": "x", "name": "X", "password": "p"}),
            "bad_request",
        ),
    ] {
        let r = admin(c.post(ts.url("/api/providers")))
            .json(&body)
            .send()
            .await
            .unwrap();
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"], code, "{body}: {e}");
    }
    // A stream may only name a provider that exists.
    let r = admin(c.post(ts.url("/api/streams")))
        .json(&json!({"id": "s", "name": "S", "url": "http://h.example/s.ts", "provider": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // An import with a provider object creates it and assigns every stream.
    let m3u =
        "#EXTM3U\n#EXTINF:-1,One\nhttp://a.example/1.ts\n#EXTINF:-1,Two\nhttp://b.example/2.ts\n";
    let r = admin(c.post(ts.url("/api/streams/import?provider=nope")))
        .header("content-type", "audio/x-mpegurl")
        .body(m3u)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "an unknown provider id is refused");
    let r = admin(c.post(ts.url("/api/streams/import?provider=acme-tv")))
        .header("content-type", "audio/x-mpegurl")
        .body(m3u)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let acme = get_json(&ts.url("/api/providers/acme-tv")).await;
    assert_eq!(acme["streams"], 2, "{acme}");
    // The JSON form takes an object, made on the fly.
    let list = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = list.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut sock, _) = list.accept().await.unwrap();
        read_request_head(&mut sock).await;
        let body = "#EXTM3U\n#EXTINF:-1,Three\nhttp://c.example/3.ts\n";
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: audio/x-mpegurl\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        sock.write_all(head.as_bytes()).await.unwrap();
        sock.write_all(body.as_bytes()).await.unwrap();
    });
    let r = admin(c.post(ts.url("/api/streams/import")))
        .json(&json!({
            "url": format!("http://127.0.0.1:{port}/list.m3u"),
            "provider": {"id": "other", "name": "Other", "maxConnections": 1}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    server.await.unwrap();
    let other = get_json(&ts.url("/api/providers/other")).await;
    assert_eq!(other["maxConnections"], 1, "{other}");
    assert_eq!(other["streams"], 1, "{other}");
    let three = ts
        .state()
        .catalog
        .snapshot()
        .iter()
        .find(|s| s.name == "Three")
        .cloned()
        .unwrap();
    assert_eq!(three.provider.as_deref(), Some("other"));
    // In use: not deleted. Emptied: deleted, and gone from disk.
    let r = admin(c.delete(ts.url("/api/providers/other")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = admin(c.put(ts.url(&format!("/api/streams/{}", three.id))))
        .json(&json!({"provider": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = admin(c.delete(ts.url("/api/providers/other")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = c.get(ts.url("/api/providers/other")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let stored: Value = serde_json::from_slice(
        &std::fs::read(ts.dir.path().join("data").join("providers.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(stored.as_array().unwrap().len(), 1, "{stored}");
    // PUT of a GET answer is accepted unchanged.
    let r = admin(c.put(ts.url("/api/providers/acme-tv")))
        .json(&acme)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_count_against_the_provider_and_stand_in_with_the_last_picture_at_its_limit() {
    let _turn = SERIAL.lock().await;
    let up = CountingUpstream::start().await;
    let ts = server_with(|s| s.snapshot_ttl_ms = 300).await;
    run(ts, async |ts| {
        let r = client()
            .post(ts.url("/api/providers"))
            .json(&json!({"id": "one", "name": "One", "maxConnections": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        for id in ["p", "q"] {
            let r = client()
                .post(ts.url("/api/streams"))
                .json(&json!({"id": id, "name": id, "url": up.url(&format!("/{id}.ts")), "provider": "one"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
        let snap = |path: &str| client().get(ts.url(path)).send();
        // Idle and free: the capture connects once and gives the connection back.
        let r = snap("/streams/snapshot/p.jpg").await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.bytes().await.unwrap().starts_with(&[0xff, 0xd8]), "a JPEG");
        assert_eq!(up.accepted(), 1, "the capture connected");
        assert!(
            eventually(Duration::from_secs(10), || ts
                .state()
                .providers
                .connections("one")
                == 0)
            .await,
            "the capture gives its connection back"
        );
        // Channel q holds the one connection.
        let viewer = open_ok(&client(), ts, "q").await;
        let accepted = up.accepted();
        tokio::time::sleep(Duration::from_millis(400)).await;
        // p's picture is stale: the last one stands in, nothing connects.
        let r = snap("/streams/snapshot/p.jpg").await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers().contains_key("x-sluice-snapshot-age"),
            "{:?}",
            r.headers()
        );
        // A width never taken has nothing to stand in: provider_busy.
        let msg = expect_busy(snap("/streams/snapshot/p.jpg?width=160").await.unwrap()).await;
        assert!(msg.contains("limit of 1"), "{msg}");
        // The running channel gives its picture without connecting.
        let r = snap("/streams/snapshot/q.jpg").await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(up.accepted(), accepted, "no capture connected at the limit");
        drop(viewer);
    })
    .await;
    assert_eq!(up.peak(), 1);
}
