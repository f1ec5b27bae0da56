//! hls.js in Chromium: a pinned hls.js release, fetched once from the npm
//! registry (checked against its SHA-256, cached under `target/`), loaded
//! by a page this test serves itself from another origin (so sluice's CORS
//! headers are exercised), plays sluice's master playlist for 20 s in
//! low-latency and in plain mode.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::driver::{Browser, Check};

const HLS_JS_VERSION: &str = "1.7.4";
const HLS_JS_SHA256: &str = "e4ab3d5d13f7cca9ef241d098f39686e19fd451831ba07dc9943482fd5ff75c7";

/// `dist/hls.min.js` of the pinned release, fetched on first use.
pub fn hls_js() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(format!("hls.js-{HLS_JS_VERSION}"));
    let js = dir.join("package/dist/hls.min.js");
    if js.exists() {
        return js;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let tgz = dir.join("hls.js.tgz");
    let url = format!("https://registry.npmjs.org/hls.js/-/hls.js-{HLS_JS_VERSION}.tgz");
    let ok = Command::new("curl")
        .args(["-sfL", "--retry", "3", "-o"])
        .arg(&tgz)
        .arg(&url)
        .status()
        .expect("curl runs");
    assert!(ok.success(), "fetching {url}");
    let sum = Command::new("sha256sum").arg(&tgz).output().unwrap();
    let sum = String::from_utf8_lossy(&sum.stdout);
    assert_eq!(
        sum.split_whitespace().next(),
        Some(HLS_JS_SHA256),
        "{url} is not the pinned release"
    );
    let ok = Command::new("tar")
        .arg("xzf")
        .arg(&tgz)
        .arg("-C")
        .arg(&dir)
        .arg("package/dist/hls.min.js")
        .status()
        .unwrap();
    assert!(ok.success() && js.exists(), "unpacking hls.js");
    js
}

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>hls.js</title></head>
<body><video id="v" muted autoplay playsinline></video>
<script src="/hls.min.js"></script>
<script>
const q = new URLSearchParams(location.search);
window.result = { fatal: null, errors: [] };
const v = document.getElementById('v');
const hls = new Hls({ lowLatencyMode: q.get('ll') === '1' });
hls.on(Hls.Events.ERROR, (_, d) => {
  if (d.fatal) window.result.fatal = d.type + ': ' + d.details;
  else window.result.errors.push(d.details);
});
hls.on(Hls.Events.MANIFEST_PARSED, () => v.play().catch(() => {}));
// How long the player took from loading to its first picture: it starts
// at its chosen hold-back behind the live edge and stays that far behind.
const loaded = performance.now();
v.addEventListener('playing', () => {
  if (window.result.startup === undefined) window.result.startup = (performance.now() - loaded) / 1000;
}, { once: true });
hls.loadSource(q.get('src'));
hls.attachMedia(v);
window.hls = hls;
</script></body></html>"#;

/// Serves the page and hls.js on 127.0.0.1 (another origin than sluice).
pub async fn page_server(js: Vec<u8>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let js = std::sync::Arc::new(js);
        while let Ok((mut sock, _)) = listener.accept().await {
            let js = js.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]);
                let path = head.split_whitespace().nth(1).unwrap_or("/");
                let (ctype, body): (&str, &[u8]) = if path.starts_with("/hls.min.js") {
                    ("text/javascript", &js)
                } else if path == "/" || path.starts_with("/?") {
                    ("text/html; charset=utf-8", PAGE.as_bytes())
                } else {
                    ("text/plain", b"not found")
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (base, task)
}

const PROBE: &str = "const v = document.getElementById('v');
  const lvl = hls.levels[hls.currentLevel];
  const d = lvl && lvl.details;
  return {t: v.currentTime, fatal: result.fatal, latency: hls.latency, startup: result.startup,
          hold: hls.targetLatency,
          target: d ? d.targetduration : null, parts: d && d.partList ? d.partList.length : 0};";

/// What a 20 s play measured.
pub struct Played {
    /// `hls.latency` samples of the second half.
    pub latencies: Vec<f64>,
    pub target: f64,
    /// Seconds from loading the playlist to the first picture.
    pub startup: f64,
    /// The latency hls.js aims at (its hold-back from the live edge).
    pub hold: f64,
}

/// Plays `src` for 20 s.
pub async fn play_20s(b: &Browser, page: &str, src: &str, ll: bool) -> Check<Played> {
    let mode = if ll { "low-latency" } else { "plain" };
    let url = format!(
        "{page}/?ll={}&src={}",
        u8::from(ll),
        url::form_urlencoded::byte_serialize(src.as_bytes()).collect::<String>()
    );
    b.goto(&url).await?;
    let first = b
        .poll(
            Duration::from_secs(60),
            &format!("hls.js ({mode}) starts"),
            PROBE,
            |v| v["t"].as_f64().unwrap_or(0.0) > 0.0 || !v["fatal"].is_null(),
        )
        .await?;
    if !first["fatal"].is_null() {
        return Err(format!("hls.js ({mode}) fatal error: {first}"));
    }
    let t0 = first["t"].as_f64().unwrap_or(0.0);
    let start = Instant::now();
    let mut latencies = Vec::new();
    let mut last = Value::Null;
    while start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        last = b.js(PROBE).await?;
        if !last["fatal"].is_null() {
            return Err(format!("hls.js ({mode}) fatal error: {last}"));
        }
        if start.elapsed() > Duration::from_secs(10) {
            latencies.extend(last["latency"].as_f64());
        }
    }
    let played = last["t"].as_f64().unwrap_or(0.0) - t0;
    if played < 17.0 {
        return Err(format!(
            "hls.js ({mode}) played {played:.1} s of 20: {last}"
        ));
    }
    if ll && last["parts"].as_u64().unwrap_or(0) == 0 {
        return Err(format!("hls.js saw no LL-HLS parts: {last}"));
    }
    Ok(Played {
        latencies,
        target: last["target"].as_f64().unwrap_or(f64::MAX),
        startup: last["startup"].as_f64().unwrap_or(f64::MAX),
        hold: last["hold"].as_f64().unwrap_or(f64::MAX),
    })
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::MAX)
}
