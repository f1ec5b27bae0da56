//! The browser harness: Debian's chromedriver on a free port, one headless
//! Chromium session with a fresh profile, and the few WebDriver calls the
//! tests need, each returning a `Check` so a failed step can still save a
//! screenshot before the test panics.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub type Check<T = ()> = Result<T, String>;

/// chromedriver, killed when dropped.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A headless Chromium driven over WebDriver.
pub struct Browser {
    client: Client,
    _driver: Driver,
    work: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a Chromium session (1280x1000 window).
    pub async fn open() -> Browser {
        assert!(
            Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
            "browser tests need Debian's chromium and chromium-driver \
             (packaging/debian-packages.txt, role test)"
        );
        let work = tempfile::Builder::new()
            .prefix("sluice-browser-")
            .tempdir()
            .unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Driver(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .arg(format!(
                    "--log-path={}",
                    work.path().join("chromedriver.log").display()
                ))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver starts"),
        );
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(http.get(format!("{url}/status")).send().await, Ok(r) if r.status().is_success())
        {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
                    format!("--user-data-dir={}", work.path().join("profile").display()),
                ],
            },
        });
        let Value::Object(caps) = caps else {
            unreachable!("a JSON object")
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("a Chromium session through chromedriver");
        Browser {
            client,
            _driver: driver,
            work,
        }
    }

    /// Ends the session. On failure, saves a screenshot and keeps the temp
    /// dir (screenshot, chromedriver log), naming it in the error.
    pub async fn finish(self, outcome: Check) -> Check {
        let outcome = match outcome {
            Ok(()) => Ok(()),
            Err(why) => {
                let shot = self.work.path().join("failure.png");
                self.screenshot(&shot).await;
                Err(format!(
                    "{why}\n(screenshot and chromedriver log in {})",
                    self.work.path().display()
                ))
            }
        };
        let keep = outcome.is_err();
        let Browser {
            client,
            _driver,
            work,
        } = self;
        let _ = client.close().await;
        drop(_driver);
        if keep {
            let _ = work.keep();
        }
        outcome
    }

    pub async fn goto(&self, url: &str) -> Check {
        self.client
            .goto(url)
            .await
            .map_err(|e| format!("opening {url}: {e}"))
    }

    pub async fn js(&self, script: &str) -> Check<Value> {
        self.client
            .execute(script, vec![])
            .await
            .map_err(|e| format!("script failed: {e}\n{script}"))
    }

    pub async fn click(&self, css: &str) -> Check {
        self.find(css)
            .await?
            .click()
            .await
            .map_err(|e| format!("clicking {css}: {e}"))
    }

    /// Types `text` into a field (or a file path into a file input).
    pub async fn type_into(&self, css: &str, text: &str) -> Check {
        let el = self.find(css).await?;
        el.clear()
            .await
            .map_err(|e| format!("clearing {css}: {e}"))?;
        el.send_keys(text)
            .await
            .map_err(|e| format!("typing into {css}: {e}"))
    }

    async fn find(&self, css: &str) -> Check<fantoccini::elements::Element> {
        self.client
            .find(Locator::Css(css))
            .await
            .map_err(|e| format!("no element {css}: {e}"))
    }

    /// Accepts the open `confirm()` dialog.
    pub async fn accept_dialog(&self) -> Check {
        self.client
            .accept_alert()
            .await
            .map_err(|e| format!("no dialog to accept: {e}"))
    }

    /// Polls `probe` until `done` holds for its value, or fails after `limit`.
    pub async fn poll(
        &self,
        limit: Duration,
        what: &str,
        probe: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Check<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.js(probe).await?;
            if done(&v) {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                return Err(format!("{what}: not within {limit:?}; last state {v}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Console messages of level SEVERE since the previous call.
    pub async fn console_errors(&self) -> Check<Vec<String>> {
        let log = self
            .client
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

    /// Fails when the console logged errors since the previous call.
    pub async fn no_console_errors(&self, when: &str) -> Check {
        let errors = self.console_errors().await?;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!("console errors {when}: {errors:?}"))
        }
    }

    /// Emulates a phone screen `width` CSS pixels wide.
    pub async fn phone(&self, width: u32, height: u32) -> Check {
        self.client
            .issue_cmd(Cdp(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": true}),
            ))
            .await
            .map(|_| ())
            .map_err(|e| format!("emulating a phone: {e}"))
    }

    pub async fn screenshot(&self, path: &Path) {
        match self.client.screenshot().await {
            Ok(png) => match std::fs::write(path, png) {
                Ok(()) => eprintln!("screenshot saved: {}", path.display()),
                Err(e) => eprintln!("could not write {}: {e}", path.display()),
            },
            Err(e) => eprintln!("could not take a screenshot: {e}"),
        }
    }

    /// With `SLUICE_SCREENSHOTS=<dir>`, saves `<dir>/<name>.png` (for people
    /// reviewing the page; tests never depend on it).
    pub async fn review_screenshot(&self, name: &str) {
        if let Some(dir) = std::env::var_os("SLUICE_SCREENSHOTS") {
            self.screenshot(&PathBuf::from(dir).join(format!("{name}.png")))
                .await;
        }
    }
}

/// chromedriver's console log of the page (`goog:loggingPrefs`).
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

/// A Chrome DevTools Protocol command through chromedriver.
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
