//! The web page in a real browser (issue 7): headless Chromium (Debian
//! `chromium` + `chromium-driver`) driven over WebDriver by `fantoccini`,
//! against a real in-process server. One test walks the whole story: the
//! page loads without console errors, a catalog name full of HTML renders
//! as text, clicking `demo-smpte` really plays (currentTime past 3 s at the
//! chosen profile's width), switching to `low` restarts at 720 wide and ends
//! the old session, the dashboard shows and drops sessions within 2 s, and a
//! 360 px wide phone screen has no horizontal scroll. On failure a
//! screenshot is saved and its path printed.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const XSS_NAME: &str = "<img src=x onerror=alert(1)>";

type Check<T = ()> = Result<T, String>;

/// chromedriver on a free port; killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver(log: &Path) -> Driver {
    assert!(
        Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
        "browser tests need Debian's chromium and chromium-driver (packaging/debian-packages.txt, role test)"
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .arg(format!("--log-path={}", log.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let http = common::client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{}/status", driver.url)).send().await {
            if r.status().is_success() {
                return driver;
            }
        }
        assert!(
            Instant::now() < deadline,
            "chromedriver did not answer within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn open_browser(driver: &Driver, profile_dir: &Path) -> Client {
    let caps = json!({
        "browserName": "chrome",
        "goog:loggingPrefs": {"browser": "ALL"},
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--autoplay-policy=no-user-gesture-required",
                "--window-size=1280,1000",
                format!("--user-data-dir={}", profile_dir.display()),
            ],
        },
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session through chromedriver")
}

/// chromedriver's console log of the page (`goog:loggingPrefs`); each read
/// returns the entries since the previous one.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

/// A Chrome DevTools command through chromedriver.
#[derive(Debug)]
struct Cdp(&'static str, Value);

impl WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!(
            "session/{}/goog/cdp/execute",
            session.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        let body = json!({"cmd": self.0, "params": self.1});
        (http::Method::POST, Some(body.to_string()))
    }
}

/// Console errors (level SEVERE) logged since the last call.
async fn console_errors(c: &Client) -> Check<Vec<String>> {
    let log = c
        .issue_cmd(BrowserLog)
        .await
        .map_err(|e| format!("reading the browser log: {e}"))?;
    Ok(log
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect())
}

async fn js(c: &Client, script: &str) -> Check<Value> {
    c.execute(script, vec![])
        .await
        .map_err(|e| format!("script failed: {e}\n{script}"))
}

async fn click(c: &Client, css: &str) -> Check {
    c.find(Locator::Css(css))
        .await
        .map_err(|e| format!("no element {css}: {e}"))?
        .click()
        .await
        .map_err(|e| format!("clicking {css}: {e}"))
}

/// Polls `probe` until `done` holds for its value, or fails after `limit`.
async fn poll(
    c: &Client,
    limit: Duration,
    what: &str,
    probe: &str,
    done: impl Fn(&Value) -> bool,
) -> Check<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let v = js(c, probe).await?;
        if done(&v) {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("{what}: not within {limit:?}; last state {v}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const PLAYER_STATE: &str = "const v = document.getElementById('video');
  return {t: v.currentTime, w: v.videoWidth, h: v.videoHeight, paused: v.paused,
    session: document.getElementById('served-session').dataset.sessionId || '',
    mode: document.getElementById('served-mode').textContent,
    quality: document.getElementById('served-quality').textContent,
    msg: document.getElementById('player-msg').textContent};";

const DASHBOARD_ROWS: &str = "return [...document.querySelectorAll('#sessions-body tr')]
  .map(tr => tr.dataset.session);";

/// Session ids the server is running now.
async fn server_sessions(ts: &common::TestServer) -> Vec<String> {
    ts.state()
        .registry
        .all()
        .iter()
        .map(|e| e.id.clone())
        .collect()
}

async fn wait_server_sessions(
    ts: &common::TestServer,
    limit: Duration,
    ok: impl Fn(&[String]) -> bool,
) -> Check<Vec<String>> {
    let deadline = Instant::now() + limit;
    loop {
        let now = server_sessions(ts).await;
        if ok(&now) {
            return Ok(now);
        }
        if Instant::now() >= deadline {
            return Err(format!("server sessions still {now:?} after {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Plays `id` from the list at `quality` and waits until it really plays
/// (currentTime advanced by more than 3 s); returns the player state.
/// With `channel`, the channel is clicked after picking the quality;
/// without, picking the quality alone must restart the running preview.
async fn play_and_wait(
    c: &Client,
    channel: Option<&str>,
    quality: &str,
    width: u64,
    previous: &str,
) -> Check<Value> {
    let id = channel.unwrap_or("(running)");
    click(c, &format!("#quality option[value='{quality}']")).await?;
    if let Some(id) = channel {
        click(c, &format!("#channel-list button.channel[data-id='{id}']")).await?;
    }
    let first = poll(
        c,
        Duration::from_secs(60),
        &format!("{id}@{quality} starts playing"),
        PLAYER_STATE,
        |v| {
            let session = v["session"].as_str().unwrap_or("");
            v["t"].as_f64().unwrap_or(0.0) > 0.0 && !session.is_empty() && session != previous
        },
    )
    .await?;
    let t0 = first["t"].as_f64().unwrap_or(0.0);
    let v = poll(
        c,
        Duration::from_secs(60),
        &format!("{id}@{quality} plays past 3 s"),
        PLAYER_STATE,
        |v| {
            let t = v["t"].as_f64().unwrap_or(0.0);
            t > 3.0 && t - t0 > 3.0
        },
    )
    .await?;
    if v["w"].as_u64() != Some(width) {
        return Err(format!("{id}@{quality}: videoWidth should be {width}: {v}"));
    }
    if v["quality"] != quality || v["mode"] != "transcode" {
        return Err(format!("{id}@{quality}: served headers not shown: {v}"));
    }
    Ok(v)
}

/// The dashboard lists `session` within 2 s of the server running it.
async fn dashboard_shows(c: &Client, session: &str) -> Check {
    poll(
        c,
        Duration::from_secs(2),
        &format!("dashboard shows session {session}"),
        DASHBOARD_ROWS,
        |rows| {
            rows.as_array()
                .is_some_and(|r| r.iter().any(|x| x == session))
        },
    )
    .await
    .map(|_| ())
}

async fn story(ts: &common::TestServer, c: &Client) -> Check {
    c.goto(&ts.url("/"))
        .await
        .map_err(|e| format!("opening the page: {e}"))?;
    poll(
        c,
        Duration::from_secs(20),
        "channel list and profiles load",
        "return {ch: document.querySelectorAll('#channel-list button.channel').length,
                 q: document.querySelectorAll('#quality option').length,
                 conn: document.getElementById('conn').dataset.state};",
        |v| v["ch"].as_u64() >= Some(5) && v["q"].as_u64() == Some(3) && v["conn"] == "live",
    )
    .await?;
    let errors = console_errors(c).await?;
    if !errors.is_empty() {
        return Err(format!("console errors on load: {errors:?}"));
    }

    // A catalog name made of HTML is shown as text, nothing is injected.
    let xss = js(
        c,
        "const b = document.querySelector(\"#channel-list button.channel[data-id='xss']\");
         const name = b.querySelector('.ch-name');
         return {name: name.textContent, children: name.children.length,
                 imgs: document.querySelectorAll('img[src=\"x\"]').length};",
    )
    .await?;
    if xss["name"] != XSS_NAME || xss["children"] != 0 || xss["imgs"] != 0 {
        return Err(format!(
            "the XSS-named channel was not rendered as text: {xss}"
        ));
    }

    // medium: 1920x1080 source -> 1280x720.
    let medium = play_and_wait(c, Some("demo-smpte"), "medium", 1280, "").await?;
    let first_session = medium["session"].as_str().unwrap_or_default().to_string();
    dashboard_shows(c, &first_session).await?;
    if let Some(dir) = std::env::var_os("SLUICE_SCREENSHOTS") {
        save_screenshot(c, &PathBuf::from(dir).join("desktop.png")).await;
    }

    // low: restarts at 720 wide; the medium session ends at once.
    let low = play_and_wait(c, None, "low", 720, &first_session).await?;
    if low["h"].as_u64() != Some(404) {
        return Err(format!("low should be 720x404 for a 16:9 source: {low}"));
    }
    let second_session = low["session"].as_str().unwrap_or_default().to_string();
    if second_session == first_session {
        return Err("switching quality did not start a new session".into());
    }
    let only = wait_server_sessions(ts, Duration::from_secs(5), |s| s.len() == 1).await?;
    if only != [second_session.clone()] {
        return Err(format!("orphaned sessions after switching: {only:?}"));
    }
    dashboard_shows(c, &second_session).await?;

    // Stop: the server ends the session, the dashboard drops it within 2 s.
    click(c, "#stop-btn").await?;
    wait_server_sessions(ts, Duration::from_secs(5), |s| s.is_empty()).await?;
    poll(
        c,
        Duration::from_secs(2),
        "dashboard drops the stopped session",
        DASHBOARD_ROWS,
        |rows| rows.as_array().is_some_and(|r| r.is_empty()),
    )
    .await?;
    let errors = console_errors(c).await?;
    if !errors.is_empty() {
        return Err(format!("console errors while playing: {errors:?}"));
    }

    // A 360 px phone screen, with a session in the dashboard: no horizontal scroll.
    c.issue_cmd(Cdp(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 360, "height": 780, "deviceScaleFactor": 1, "mobile": true}),
    ))
    .await
    .map_err(|e| format!("emulating a phone: {e}"))?;
    let phone = play_and_wait(c, Some("demo-ball"), "low", 720, &second_session).await?;
    dashboard_shows(c, phone["session"].as_str().unwrap_or_default()).await?;
    let widths = js(
        c,
        "const d = document.documentElement;
         return {inner: window.innerWidth, scroll: d.scrollWidth, client: d.clientWidth};",
    )
    .await?;
    if widths["inner"] != 360 || widths["scroll"].as_u64() > widths["client"].as_u64() {
        return Err(format!("horizontal scroll at 360 px: {widths}"));
    }
    if let Some(dir) = std::env::var_os("SLUICE_SCREENSHOTS") {
        save_screenshot(c, &PathBuf::from(dir).join("phone.png")).await;
    }
    click(c, "#stop-btn").await?;
    wait_server_sessions(ts, Duration::from_secs(5), |s| s.is_empty()).await?;
    let errors = console_errors(c).await?;
    if !errors.is_empty() {
        return Err(format!("console errors at phone width: {errors:?}"));
    }
    Ok(())
}

async fn save_screenshot(c: &Client, path: &Path) {
    match c.screenshot().await {
        Ok(png) => match std::fs::write(path, png) {
            Ok(()) => eprintln!("screenshot saved: {}", path.display()),
            Err(e) => eprintln!("could not write {}: {e}", path.display()),
        },
        Err(e) => eprintln!("could not take a screenshot: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_page_plays_switches_and_shows_the_dashboard() {
    let ts = common::start().await;
    let r = common::client()
        .post(ts.url("/api/streams"))
        .json(&json!({"id": "xss", "name": XSS_NAME, "url": "test://smpte?size=640x360&rate=25"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "creating the XSS-named stream");

    let work = tempfile::Builder::new()
        .prefix("sluice-browser-")
        .tempdir()
        .unwrap();
    let driver = start_driver(&work.path().join("chromedriver.log")).await;
    let browser = open_browser(&driver, &work.path().join("profile")).await;
    let outcome = story(&ts, &browser).await;
    if let Err(why) = &outcome {
        let shot = work.path().join("failure.png");
        save_screenshot(&browser, &shot).await;
        // Keep the screenshot and driver log for the developer.
        let kept = work.keep();
        eprintln!("browser test failed; artefacts in {}", kept.display());
        let _ = browser.close().await;
        drop(driver);
        ts.stop().await;
        panic!("{why}");
    }
    let _ = browser.close().await;
    drop(driver);
    ts.stop().await;
}
