//! The XMLTV guide (SPEC §14): `GET /epg.xml` for Plex, Jellyfin and
//! other DVR front ends, and now/next for the web page.
//!
//! The guide named by `EPG_URL` (else by the `x-tvg-url` / `url-tvg` of the
//! last imported playlist) is fetched in the background every
//! `EPG_REFRESH`, gzip accepted (by `Content-Encoding` or a gzip body),
//! streamed to `<data dir>/epg/guide.raw` (never held in memory, at most
//! [`MAX_GUIDE_BYTES`] compressed or not). It is then read once, as a
//! stream, and filtered to the catalog's enabled streams: a guide channel
//! matches a stream by its `tvgId`, else by the stream's name against the
//! channel's display names (case and accent insensitive). The result is
//! rendered to `<data dir>/epg/epg.xml.part`: the catalog's channels, with
//! ids equal to the stream's channel number (else its id), and the matched
//! programmes. A request answers with that file and filler programmes
//! computed on the spot ([`Guide::filler_xml`]): `EPG_FILLER_HOURS` blocks
//! titled with the channel name covering now..now+48h for channels without
//! guide data, so front ends show every channel.
//!
//! When the catalog changes, the guide is filtered again from the cached
//! raw file, without fetching it. What a restart needs (status, filler
//! channels, now/next listings) is kept in `epg/meta.json`, so a restart
//! serves the last guide at once and fetches only when it is due.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use serde::{Deserialize, Serialize};

use crate::catalog::Stream;
use crate::redact::{redact_text, redact_url};
use crate::AppState;

/// Sub-directory of the data dir holding the guide's files.
pub const DIR: &str = "epg";
/// Largest guide accepted, compressed as downloaded and uncompressed as read.
pub const MAX_GUIDE_BYTES: u64 = 512 * 1024 * 1024;
/// How far ahead filler programmes reach.
pub const FILLER_SPAN: Duration = Duration::from_secs(48 * 3600);
/// Time allowed to download the guide.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(600);
/// Wait before fetching again after a failed fetch (or `EPG_REFRESH` if shorter).
pub const RETRY_AFTER: Duration = Duration::from_secs(300);
/// How often the catalog is compared with the one the guide was filtered for.
const CATALOG_POLL: Duration = Duration::from_secs(2);
/// Programmes kept per channel for now/next.
const MAX_LISTED: usize = 64;

/// How `/epg.xml` starts; the DOCTYPE names the XMLTV DTD.
pub const XMLTV_HEAD: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE tv SYSTEM \"xmltv.dtd\">\n<tv generator-info-name=\"sluice\">\n";

const RAW_FILE: &str = "guide.raw";
const RENDERED_FILE: &str = "epg.xml.part";
const META_FILE: &str = "meta.json";
const PLAYLIST_FILE: &str = "playlist.json";

/// `GET /api/epg/status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The guide's URL (credentials masked), `null` when none is configured.
    pub url: Option<String>,
    /// When the guide was last fetched successfully (RFC 3339).
    pub last_fetch: Option<String>,
    /// Size of that download in bytes (as transferred: compressed if gzip).
    pub bytes: u64,
    /// Channels in `/epg.xml` (the catalog's enabled streams).
    pub channels: usize,
    /// Of those, channels the guide has data for.
    pub channels_matched: usize,
    /// Channels the guide lists in all.
    pub guide_channels: usize,
    /// Guide programmes in `/epg.xml` (filler not counted).
    pub programmes: u64,
    /// Why the last fetch or filtering failed; `null` after a success.
    pub error: Option<String>,
}

/// One programme for now/next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slot {
    pub title: String,
    /// Unix seconds.
    pub start: i64,
    pub stop: i64,
}

/// A channel that gets filler programmes, from `from` (unix seconds) or
/// from now when it has no guide data at all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FillerChannel {
    pub channel: String,
    pub name: String,
    pub from: Option<i64>,
}

/// What the rendered file holds, besides the file itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    status: Status,
    /// The unredacted URL the raw file came from.
    source: Option<String>,
    /// Unix seconds of the last successful fetch.
    fetched_at: Option<u64>,
    /// [`fingerprint`] of the catalog the file was rendered for.
    fingerprint: u64,
    filler: Vec<FillerChannel>,
    /// Per stream id, programmes from the render time on, for now/next.
    listings: Vec<(String, Vec<Slot>)>,
}

/// `GET /api/epg/now` item.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NowNext {
    pub stream_id: String,
    pub now: Option<SlotJson>,
    pub next: Option<SlotJson>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlotJson {
    pub title: String,
    pub start: String,
    pub stop: String,
}

impl SlotJson {
    fn of(s: &Slot) -> SlotJson {
        SlotJson {
            title: s.title.clone(),
            start: rfc3339(s.start),
            stop: rfc3339(s.stop),
        }
    }
}

/// The guide: its files, its state, and a wake-up for the refresher.
pub struct Guide {
    dir: PathBuf,
    configured_url: Option<String>,
    refresh: Duration,
    filler_hours: u32,
    meta: RwLock<Arc<Meta>>,
    wake: tokio::sync::Notify,
}

impl Guide {
    /// Opens `<data_dir>/epg`, loading what a previous run rendered.
    pub fn open(
        data_dir: &Path,
        configured_url: Option<String>,
        refresh: Duration,
        filler_hours: u32,
    ) -> Guide {
        let dir = data_dir.join(DIR);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot create the guide directory");
        }
        let meta = std::fs::read(dir.join(META_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<Meta>(&b).ok())
            .filter(|_| dir.join(RENDERED_FILE).is_file())
            .unwrap_or_default();
        Guide {
            dir,
            configured_url,
            refresh,
            filler_hours,
            meta: RwLock::new(Arc::new(meta)),
            wake: tokio::sync::Notify::new(),
        }
    }

    pub fn status(&self) -> Status {
        let mut st = self.meta.read().status.clone();
        if st.url.is_none() {
            st.url = self.wanted_url().map(|u| redact_url(&u));
        }
        st
    }

    /// The rendered guide (once a render has happened) and the filler
    /// programmes that go with it, taken together so they always match.
    pub fn for_request(&self, now: i64) -> (Option<std::fs::File>, String) {
        let (file, meta) = {
            let meta = self.meta.read();
            let file = (meta.fingerprint != 0)
                .then(|| std::fs::File::open(self.dir.join(RENDERED_FILE)).ok())
                .flatten();
            (file, meta.clone())
        };
        (file, filler_xml(&meta.filler, now, self.filler_hours))
    }

    /// The URL the guide comes from: `EPG_URL`, else the last imported
    /// playlist's.
    pub fn wanted_url(&self) -> Option<String> {
        self.configured_url.clone().or_else(|| {
            std::fs::read(self.dir.join(PLAYLIST_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice::<PlaylistGuide>(&b).ok())
                .map(|p| p.url)
        })
    }

    /// Records the guide URL an imported playlist names (if any) and wakes
    /// the refresher (the import changed the catalog too).
    pub fn playlist_imported(&self, url: Option<String>) {
        if let Some(url) = url {
            let body = serde_json::to_vec(&PlaylistGuide { url }).unwrap_or_default();
            if let Err(e) = write_atomic(&self.dir.join(PLAYLIST_FILE), &body) {
                tracing::warn!(error = %e, "cannot record the playlist's guide URL");
            }
        }
        self.wake.notify_one();
    }

    /// What is on now and next on each channel the guide has data for.
    pub fn now_next(&self, now: i64) -> Vec<NowNext> {
        let meta = self.meta.read().clone();
        meta.listings
            .iter()
            .map(|(id, slots)| {
                let cur = slots.iter().find(|s| s.start <= now && now < s.stop);
                let after = cur.map(|c| c.stop).unwrap_or(now);
                let next = slots.iter().find(|s| s.start >= after);
                NowNext {
                    stream_id: id.clone(),
                    now: cur.map(SlotJson::of),
                    next: next.map(SlotJson::of),
                }
            })
            .collect()
    }
}

#[derive(Serialize, Deserialize)]
struct PlaylistGuide {
    url: String,
}

/// The guide URL in a playlist's `#EXTM3U` line (`x-tvg-url`, else
/// `url-tvg`; the first of a comma list), if it is an http(s) URL.
pub fn playlist_guide_url(playlist: &str) -> Option<String> {
    let first = playlist
        .trim_start_matches('\u{feff}')
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())?;
    if !first
        .get(..7)
        .is_some_and(|h| h.eq_ignore_ascii_case("#EXTM3U"))
    {
        return None;
    }
    let attrs = &first[7..];
    ["x-tvg-url", "url-tvg"].iter().find_map(|key| {
        let value = header_attr(attrs, key)?;
        let url = value.split(',').next()?.trim().to_string();
        url::Url::parse(&url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .map(|_| url)
    })
}

/// The value of `key=` in an `#EXTM3U` line, quoted with `"` or `'` or bare.
fn header_attr(line: &str, key: &str) -> Option<String> {
    let lower = line.to_ascii_lowercase();
    let mut from = 0;
    while let Some(pos) = lower[from..].find(key) {
        let at = from + pos;
        from = at + key.len();
        let before_ok = at == 0 || lower.as_bytes()[at - 1].is_ascii_whitespace();
        let rest = &line[from..];
        if !before_ok || !rest.starts_with('=') {
            continue;
        }
        let rest = &rest[1..];
        return Some(match rest.chars().next() {
            Some(q @ ('"' | '\'')) => rest[1..].split(q).next().unwrap_or("").to_string(),
            _ => rest.split_whitespace().next().unwrap_or("").to_string(),
        });
    }
    None
}

/// Starts the refresher: fetches when due, filters again when the catalog
/// changes; stops at shutdown.
pub fn spawn(state: Arc<AppState>) {
    tokio::spawn(async move {
        let stop = state.shutdown.clone();
        tokio::select! {
            _ = refresher(state) => {}
            _ = stop.wait() => {}
        }
    });
}

async fn refresher(state: Arc<AppState>) {
    let guide = &state.guide;
    // After a failed fetch or read, no new attempt before this.
    let mut retry_at: Option<SystemTime> = None;
    loop {
        let wanted = guide.wanted_url();
        let meta = guide.meta.read().clone();
        let streams = enabled(&state.catalog.snapshot());
        let print = fingerprint(&streams);
        let now = SystemTime::now();
        let due = match (&wanted, &meta.source) {
            (None, _) => false,
            (Some(w), Some(s)) if w == s => meta
                .fetched_at
                .map(|t| UNIX_EPOCH + Duration::from_secs(t) + guide.refresh)
                .is_none_or(|next| next <= now),
            (Some(_), _) => true,
        } && retry_at.is_none_or(|r| r <= now);
        if let (true, Some(url)) = (due, wanted.clone()) {
            let outcome = match fetch(&guide.dir, &url).await {
                Ok(bytes) => {
                    let fetched = FetchInfo {
                        url: url.clone(),
                        at: now,
                        bytes,
                    };
                    render_now(guide, streams, print, Some(fetched)).await
                }
                Err(e) => {
                    tracing::warn!(url = %redact_url(&url), error = %e, "fetching the guide failed");
                    if meta.fingerprint != print {
                        let _ = render_now(guide, streams, print, None).await;
                    }
                    let mut m = (**guide.meta.read()).clone();
                    m.status.url = Some(redact_url(&url));
                    m.status.error = Some(e);
                    publish(guide, m, false);
                    Err(())
                }
            };
            retry_at = outcome
                .is_err()
                .then(|| now + RETRY_AFTER.min(guide.refresh));
        } else if meta.fingerprint != print || wanted.is_none() && meta.source.is_some() {
            let _ = render_now(guide, streams, print, None).await;
        }
        tokio::select! {
            _ = guide.wake.notified() => {}
            _ = tokio::time::sleep(CATALOG_POLL) => {}
        }
    }
}

struct FetchInfo {
    url: String,
    at: SystemTime,
    bytes: u64,
}

/// Filters the raw guide (the fresh download in `fetched`, else the cached
/// one while it is still the wanted guide) for `streams` and publishes the
/// result. On failure the previous render stays (or, when there is none,
/// the catalog's channels are rendered with filler only).
async fn render_now(
    guide: &Guide,
    streams: Vec<Stream>,
    print: u64,
    fetched: Option<FetchInfo>,
) -> Result<(), ()> {
    let dir = guide.dir.clone();
    let old = guide.meta.read().clone();
    let wanted = guide.wanted_url();
    let new_raw = dir.join(format!("{RAW_FILE}.new"));
    let use_raw = fetched.is_some() || (old.source.is_some() && old.source == wanted);
    let raw = match &fetched {
        Some(_) => new_raw.clone(),
        None => dir.join(RAW_FILE),
    };
    let raw = use_raw.then_some(raw).filter(|p| p.is_file());
    let refresh = guide.refresh;
    let for_render = streams;
    let joined = tokio::task::spawn_blocking(move || {
        let now = unix_now();
        let until = now + (refresh + Duration::from_secs(12 * 3600)).as_secs() as i64;
        let out = render(&dir, raw.as_deref(), &for_render, now, until);
        match out {
            Err(e) if old_render_missing(&dir) => {
                // Nothing to fall back on: serve the channels with filler.
                render(&dir, None, &for_render, now, until).map(|o| (o, Some(e)))
            }
            other => other.map(|o| (o, None)),
        }
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    let mut meta = (*old).clone();
    meta.status.url = wanted.as_deref().map(redact_url);
    let rendered = joined.is_ok();
    let result = match joined {
        Ok((out, failure)) => {
            match (&fetched, &failure) {
                (Some(f), None) => {
                    if let Err(e) = std::fs::rename(&new_raw, guide.dir.join(RAW_FILE)) {
                        // The guide is served; a catalog change re-fetches it.
                        tracing::warn!(error = %e, "cannot keep the fetched guide");
                    }
                    meta.source = Some(f.url.clone());
                    meta.fetched_at = f.at.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs());
                    meta.status.last_fetch =
                        Some(humantime::format_rfc3339_seconds(f.at).to_string());
                    meta.status.bytes = f.bytes;
                }
                _ if !use_raw || failure.is_some() => {
                    meta.source = None;
                    meta.fetched_at = None;
                    meta.status.last_fetch = None;
                    meta.status.bytes = 0;
                }
                _ => {}
            }
            meta.status.channels = out.channels;
            meta.status.channels_matched = out.matched;
            meta.status.guide_channels = out.guide_channels;
            meta.status.programmes = out.programmes;
            meta.status.error = failure.clone();
            meta.fingerprint = print;
            meta.filler = out.filler;
            meta.listings = out.listings;
            tracing::info!(
                channels = out.channels,
                matched = out.matched,
                programmes = out.programmes,
                fetched = fetched.is_some(),
                "guide filtered for the catalog"
            );
            if failure.is_some() {
                Err(())
            } else {
                Ok(())
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "the guide could not be read: serving the previous one");
            meta.status.error = Some(e);
            Err(())
        }
    };
    if result.is_err() {
        let _ = std::fs::remove_file(&new_raw);
    }
    publish(guide, meta, rendered);
    result
}

fn old_render_missing(dir: &Path) -> bool {
    !dir.join(RENDERED_FILE).is_file()
}

/// Makes `meta` current; with `rendered`, installs the new rendered file
/// with it (under the same lock, so requests see the file and its filler
/// together).
fn publish(guide: &Guide, meta: Meta, rendered: bool) {
    let body = serde_json::to_vec(&meta);
    {
        let mut slot = guide.meta.write();
        if rendered {
            let tmp = guide.dir.join(format!(".{RENDERED_FILE}.tmp"));
            if let Err(e) = std::fs::rename(&tmp, guide.dir.join(RENDERED_FILE)) {
                tracing::warn!(error = %e, "cannot install the filtered guide");
                return;
            }
        }
        *slot = Arc::new(meta);
    }
    if let Ok(body) = body {
        if let Err(e) = write_atomic(&guide.dir.join(META_FILE), &body) {
            tracing::warn!(error = %e, "cannot save the guide state");
        }
    }
}

/// Downloads `url` to `<dir>/guide.raw.new`; returns the bytes transferred.
async fn fetch(dir: &Path, url: &str) -> Result<u64, String> {
    use tokio::io::AsyncWriteExt;
    let client = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::limited(5))
        .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| redact_text(&e.to_string()))?;
    let mut resp = client
        .get(url)
        .header(http::header::ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .map_err(|e| redact_text(&describe(&e)))?;
    if !resp.status().is_success() {
        return Err(format!("the guide server answered {}", resp.status()));
    }
    if resp.content_length().is_some_and(|n| n > MAX_GUIDE_BYTES) {
        return Err(too_large());
    }
    let tmp = dir.join(format!("{RAW_FILE}.new"));
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    let mut total = 0u64;
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(redact_text(&describe(&e)));
            }
        };
        total += chunk.len() as u64;
        if total > MAX_GUIDE_BYTES {
            drop(file);
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(too_large());
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    }
    file.sync_all().await.map_err(|e| e.to_string())?;
    Ok(total)
}

fn too_large() -> String {
    format!(
        "the guide is larger than {} MiB: it was not loaded",
        MAX_GUIDE_BYTES / (1024 * 1024)
    )
}

fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        src = s.source();
    }
    parts.join(": ")
}

/// The streams that appear in the guide: the enabled ones.
fn enabled(streams: &[Stream]) -> Vec<Stream> {
    streams.iter().filter(|s| s.enabled).cloned().collect()
}

/// What the rendered guide depends on in the catalog (never 0).
fn fingerprint(streams: &[Stream]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for s in streams {
        (&s.id, &s.name, &s.number, &s.tvg_id, &s.logo).hash(&mut h);
    }
    h.finish().max(1)
}

/// The channel id of a stream in `/epg.xml`: its number, else its id.
pub fn channel_id(s: &Stream) -> String {
    s.number.clone().unwrap_or_else(|| s.id.clone())
}

/// Lowercase, accents removed, letters and digits only.
pub fn fold_name(name: &str) -> String {
    name.chars()
        .flat_map(char::to_lowercase)
        .filter_map(|c| {
            if c.is_ascii_alphanumeric() {
                return Some(c);
            }
            let base = strip_accent(c);
            base.is_alphanumeric().then_some(base)
        })
        .collect()
}

/// The base letter of common accented Latin letters.
fn strip_accent(c: char) -> char {
    const FROM: &str =
        "àáâãäåāăąçćĉċčďđèéêëēĕėęěĝğġģĥìíîïĩīĭįıĵķĺļľłñńņňòóôõöøōŏőŕŗřśŝşšţťŧùúûüũūŭůűųŵýÿŷźżž";
    const TO: &str =
        "aaaaaaaaacccccddeeeeeeeeeggggghiiiiiiiiijklllllnnnnoooooooooorrrssssttttuuuuuuuuuuwyyyzzz";
    FROM.chars()
        .position(|f| f == c)
        .and_then(|i| TO.chars().nth(i))
        .unwrap_or(c)
}

struct Rendered {
    channels: usize,
    matched: usize,
    guide_channels: usize,
    programmes: u64,
    filler: Vec<FillerChannel>,
    listings: Vec<(String, Vec<Slot>)>,
}

/// A reader that fails once more than `left` bytes came through.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(std::io::Error::other(format!(
                "the guide is larger than {} MiB uncompressed: it was not loaded",
                MAX_GUIDE_BYTES / (1024 * 1024)
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Opens a raw guide, gunzipping it when it starts with the gzip magic.
fn open_raw(path: &Path) -> std::io::Result<Box<dyn BufRead>> {
    let mut file = BufReader::with_capacity(64 * 1024, std::fs::File::open(path)?);
    let gz = file.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let inner: Box<dyn Read> = if gz {
        Box::new(flate2::bufread::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    Ok(Box::new(BufReader::with_capacity(
        64 * 1024,
        Capped {
            inner,
            left: MAX_GUIDE_BYTES,
        },
    )))
}

/// Writes `<dir>/.epg.xml.part.tmp` (installed by [`publish`]) for `streams` from the raw guide (none:
/// channels only); keeps now/next listings for `now..until`.
fn render(
    dir: &Path,
    raw: Option<&Path>,
    streams: &[Stream],
    now: i64,
    until: i64,
) -> Result<Rendered, String> {
    let tmp = dir.join(format!(".{RENDERED_FILE}.tmp"));
    let file = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    let io = |e: std::io::Error| e.to_string();
    out.write_all(XMLTV_HEAD.as_bytes()).map_err(io)?;
    for s in streams {
        let id = esc(&channel_id(s));
        write!(
            out,
            "  <channel id=\"{id}\">\n    <display-name>{}</display-name>\n",
            esc(&s.name)
        )
        .map_err(io)?;
        if let Some(n) = &s.number {
            writeln!(out, "    <display-name>{}</display-name>", esc(n)).map_err(io)?;
        }
        if let Some(logo) = s.logo.as_deref().filter(|l| !l.is_empty()) {
            writeln!(out, "    <icon src=\"{}\"/>", esc(logo)).map_err(io)?;
        }
        out.write_all(b"  </channel>\n").map_err(io)?;
    }
    let mut filter = Filter::new(streams, now, until);
    if let Some(raw) = raw {
        let reader = open_raw(raw).map_err(|e| format!("cannot read the cached guide: {e}"))?;
        filter
            .run(reader, &mut out)
            .map_err(|e| format!("the guide is not valid XMLTV: {e}"))?;
    }
    out.flush().map_err(io)?;
    let file = out.into_inner().map_err(|e| e.to_string())?;
    file.sync_all().map_err(io)?;
    drop(file);
    Ok(filter.finish(streams))
}

/// The streaming filter: matches guide channels to streams, then copies
/// the matched programmes with their channel renamed.
struct Filter<'a> {
    streams: &'a [Stream],
    by_tvg: HashMap<String, Vec<usize>>,
    by_name: HashMap<String, Vec<usize>>,
    /// Per stream, the guide channel matched by tvg id / by name.
    id_match: Vec<Option<String>>,
    name_match: Vec<Option<String>>,
    /// Guide channel id -> streams, once the channel list is over.
    targets: Option<HashMap<String, Vec<usize>>>,
    guide_channels: usize,
    programmes: u64,
    /// Per stream: programmes written, last stop, now/next listing.
    written: Vec<u64>,
    last_stop: Vec<Option<i64>>,
    listings: Vec<Vec<Slot>>,
    now: i64,
    until: i64,
}

impl<'a> Filter<'a> {
    fn new(streams: &'a [Stream], now: i64, until: i64) -> Self {
        let mut by_tvg: HashMap<String, Vec<usize>> = HashMap::new();
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, s) in streams.iter().enumerate() {
            if let Some(t) = s.tvg_id.as_deref().filter(|t| !t.trim().is_empty()) {
                by_tvg.entry(t.trim().to_lowercase()).or_default().push(i);
            }
            let folded = fold_name(&s.name);
            if !folded.is_empty() {
                by_name.entry(folded).or_default().push(i);
            }
        }
        let n = streams.len();
        Filter {
            streams,
            by_tvg,
            by_name,
            id_match: vec![None; n],
            name_match: vec![None; n],
            targets: None,
            guide_channels: 0,
            programmes: 0,
            written: vec![0; n],
            last_stop: vec![None; n],
            listings: vec![Vec::new(); n],
            now,
            until,
        }
    }

    fn channel(&mut self, id: &str, names: &[String]) {
        self.guide_channels += 1;
        if let Some(list) = self.by_tvg.get(&id.trim().to_lowercase()) {
            for &i in list {
                self.id_match[i].get_or_insert_with(|| id.to_string());
            }
        }
        for n in names {
            if let Some(list) = self.by_name.get(&fold_name(n)) {
                for &i in list {
                    self.name_match[i].get_or_insert_with(|| id.to_string());
                }
            }
        }
    }

    fn targets(&mut self) -> &HashMap<String, Vec<usize>> {
        if self.targets.is_none() {
            let mut t: HashMap<String, Vec<usize>> = HashMap::new();
            for i in 0..self.streams.len() {
                if let Some(g) = self.id_match[i].clone().or(self.name_match[i].clone()) {
                    t.entry(g).or_default().push(i);
                }
            }
            self.by_tvg.clear();
            self.by_name.clear();
            self.targets = Some(t);
        }
        self.targets.as_ref().expect("set above")
    }

    fn run(&mut self, src: Box<dyn BufRead>, out: &mut impl Write) -> Result<(), String> {
        let mut reader = Reader::from_reader(src);
        let mut buf = Vec::with_capacity(4096);
        let mut inner = Vec::with_capacity(4096);
        let mut saw_tv = false;
        loop {
            let ev = reader
                .read_event_into(&mut buf)
                .map_err(|e| xml_error(&reader, e))?;
            match ev {
                Event::Start(e) if e.name().as_ref() == b"tv" => saw_tv = true,
                Event::Start(e) if e.name().as_ref() == b"channel" => {
                    let id = attr(&e, b"id")?.unwrap_or_default();
                    let names = read_names(&mut reader, &mut inner)?;
                    if self.targets.is_none() {
                        self.channel(&id, &names);
                    }
                }
                Event::Start(e) if e.name().as_ref() == b"programme" => {
                    let e = e.into_owned();
                    self.programme(&mut reader, &e, &mut inner, out)?;
                }
                Event::Eof => break,
                _ => {}
            }
            buf.clear();
        }
        if !saw_tv {
            return Err("no <tv> element".into());
        }
        Ok(())
    }

    fn programme(
        &mut self,
        reader: &mut Reader<Box<dyn BufRead>>,
        start: &BytesStart<'_>,
        inner: &mut Vec<u8>,
        out: &mut impl Write,
    ) -> Result<(), String> {
        let channel = attr(start, b"channel")?.unwrap_or_default();
        let targets = self.targets().get(&channel).cloned();
        let Some(targets) = targets else {
            reader
                .read_to_end_into(start.name(), inner)
                .map_err(|e| xml_error(reader, e))?;
            inner.clear();
            return Ok(());
        };
        let mut attrs = String::new();
        let (mut begins, mut ends) = (None, None);
        for a in start.attributes().with_checks(false) {
            let a = a.map_err(|e| e.to_string())?;
            let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
            if key == "channel" {
                continue;
            }
            let value = a.unescape_value().map_err(|e| e.to_string())?;
            match key.as_str() {
                "start" => begins = parse_xmltv_time(&value),
                "stop" => ends = parse_xmltv_time(&value),
                _ => {}
            }
            attrs.push_str(&format!(" {key}=\"{}\"", esc(&value)));
        }
        let mut body = quick_xml::Writer::new(Vec::with_capacity(512));
        let mut title: Option<String> = None;
        let mut in_title = false;
        loop {
            let ev = reader
                .read_event_into(inner)
                .map_err(|e| xml_error(reader, e))?;
            match &ev {
                Event::End(e) if e.name().as_ref() == b"programme" => break,
                Event::Eof => return Err("the guide ends inside a <programme>".into()),
                Event::Start(e) if e.name().as_ref() == b"title" && title.is_none() => {
                    in_title = true;
                    title = Some(String::new());
                }
                Event::End(e) if e.name().as_ref() == b"title" => in_title = false,
                Event::Text(t) if in_title => {
                    if let (Some(s), Ok(text)) = (title.as_mut(), t.unescape()) {
                        s.push_str(&text);
                    }
                }
                Event::CData(t) if in_title => {
                    if let Some(s) = title.as_mut() {
                        s.push_str(&String::from_utf8_lossy(t));
                    }
                }
                _ => {}
            }
            body.write_event(ev).map_err(|e| e.to_string())?;
            inner.clear();
        }
        inner.clear();
        let body = body.into_inner();
        for i in targets {
            let ch = esc(&channel_id(&self.streams[i]));
            write!(out, "  <programme{attrs} channel=\"{ch}\">")
                .and_then(|_| out.write_all(&body))
                .and_then(|_| out.write_all(b"</programme>\n"))
                .map_err(|e| e.to_string())?;
            self.programmes += 1;
            self.written[i] += 1;
            if let Some(stop) = ends {
                let last = self.last_stop[i].get_or_insert(stop);
                *last = (*last).max(stop);
            }
            if let (Some(b), Some(e), Some(t)) = (begins, ends, title.as_ref()) {
                let list = &mut self.listings[i];
                if e > self.now && b < self.until && list.len() < MAX_LISTED {
                    list.push(Slot {
                        title: t.trim().to_string(),
                        start: b,
                        stop: e,
                    });
                }
            }
        }
        Ok(())
    }

    fn finish(mut self, streams: &[Stream]) -> Rendered {
        let mut filler = Vec::new();
        let mut listings = Vec::new();
        let mut matched = 0;
        for (i, s) in streams.iter().enumerate() {
            let has = self.written[i] > 0;
            if has {
                matched += 1;
                let mut l = std::mem::take(&mut self.listings[i]);
                l.sort_by_key(|x| x.start);
                listings.push((s.id.clone(), l));
            }
            filler.push(FillerChannel {
                channel: channel_id(s),
                name: s.name.clone(),
                from: if has { self.last_stop[i] } else { None },
            });
        }
        // Channels whose guide data reaches past a request's 48 h get no
        // filler then ([`filler_xml`]).
        Rendered {
            channels: streams.len(),
            matched,
            guide_channels: self.guide_channels,
            programmes: self.programmes,
            filler,
            listings,
        }
    }
}

fn xml_error(reader: &Reader<Box<dyn BufRead>>, e: quick_xml::Error) -> String {
    format!("{e} (at byte {})", reader.buffer_position())
}

/// The unescaped value of attribute `key`.
fn attr(e: &BytesStart<'_>, key: &[u8]) -> Result<Option<String>, String> {
    for a in e.attributes().with_checks(false) {
        let a = a.map_err(|e| e.to_string())?;
        if a.key.as_ref() == key {
            return a
                .unescape_value()
                .map(|v| Some(v.into_owned()))
                .map_err(|e| e.to_string());
        }
    }
    Ok(None)
}

/// Reads a `<channel>`'s children; returns its display names.
fn read_names(
    reader: &mut Reader<Box<dyn BufRead>>,
    buf: &mut Vec<u8>,
) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut current: Option<String> = None;
    loop {
        let ev = reader
            .read_event_into(buf)
            .map_err(|e| xml_error(reader, e))?;
        match ev {
            Event::Start(e) if e.name().as_ref() == b"display-name" => {
                current = Some(String::new())
            }
            Event::Text(t) => {
                if let (Some(s), Ok(text)) = (current.as_mut(), t.unescape()) {
                    s.push_str(&text);
                }
            }
            Event::End(e) if e.name().as_ref() == b"display-name" => {
                if let Some(n) = current.take() {
                    names.push(n);
                }
            }
            Event::End(e) if e.name().as_ref() == b"channel" => break,
            Event::Eof => return Err("the guide ends inside a <channel>".into()),
            _ => {}
        }
        buf.clear();
    }
    buf.clear();
    Ok(names)
}

/// XML-escapes text and attribute values.
fn esc(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// Parses an XMLTV time (`YYYYMMDDhhmmss +zzzz`; seconds, minutes and the
/// zone may be left out) into unix seconds.
pub fn parse_xmltv_time(s: &str) -> Option<i64> {
    let s = s.trim();
    let (digits, zone) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    };
    if digits.len() < 8 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| digits.get(r).and_then(|d| d.parse::<i64>().ok());
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let h = num(8..10).unwrap_or(0);
    let mi = num(10..12).unwrap_or(0);
    let sec = num(12..14).unwrap_or(0);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let offset = if zone.is_empty() {
        0
    } else {
        let (sign, z) = match zone.as_bytes()[0] {
            b'+' => (1, &zone[1..]),
            b'-' => (-1, &zone[1..]),
            _ => return None,
        };
        if z.len() != 4 || !z.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let zh: i64 = z[..2].parse().ok()?;
        let zm: i64 = z[2..].parse().ok()?;
        sign * (zh * 3600 + zm * 60)
    };
    Some(days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds as an XMLTV time in UTC.
pub fn xmltv_time(t: i64) -> String {
    let st = UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    let s = humantime::format_rfc3339_seconds(st).to_string();
    // 2026-12-06T01:00:00Z -> 20261206010000 +0000
    let digits: String = s.chars().filter(|c| c.is_ascii_digit()).collect();
    format!("{digits} +0000")
}

fn rfc3339(t: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t.max(0) as u64)).to_string()
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Filler programmes of `hours` covering `now..now+48h` for each channel
/// from its `from` (or the current hour) on; channels whose guide data
/// already reaches that far get none.
pub fn filler_xml(channels: &[FillerChannel], now: i64, hours: u32) -> String {
    let step = i64::from(hours.max(1)) * 3600;
    let end = now + FILLER_SPAN.as_secs() as i64;
    let hour = now - now.rem_euclid(3600);
    let mut out = String::new();
    for c in channels {
        let mut t = match c.from {
            Some(from) if from >= end => continue,
            Some(from) => from.max(hour),
            None => hour,
        };
        let (ch, title) = (esc(&c.channel), esc(&c.name));
        while t < end {
            // Blocks end on whole hours that are multiples of `step` apart.
            let next = (t - t.rem_euclid(step) + step).max(t + 60);
            out.push_str(&format!(
                "  <programme start=\"{}\" stop=\"{}\" channel=\"{ch}\"><title>{title}</title></programme>\n",
                xmltv_time(t),
                xmltv_time(next)
            ));
            t = next;
        }
    }
    out
}

/// Atomic write: temp file, fsync, rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xmltv_times_parse_with_zones_and_round_trip() {
        assert_eq!(parse_xmltv_time("19700101000000 +0000"), Some(0));
        assert_eq!(parse_xmltv_time("19700101010000 +0100"), Some(0));
        assert_eq!(parse_xmltv_time("19691231230000 -0100"), Some(0));
        assert_eq!(parse_xmltv_time("20261206"), Some(1_796_515_200));
        assert_eq!(
            parse_xmltv_time("202612061230"),
            Some(1_796_515_200 + 45_000)
        );
        for bad in [
            "",
            "2026",
            "20261306000000 +0000",
            "20261206000000 0100",
            "20261206250000",
        ] {
            assert_eq!(parse_xmltv_time(bad), None, "{bad}");
        }
        let t = 1_796_515_200 + 3 * 3600 + 7 * 60 + 9;
        assert_eq!(xmltv_time(t), "20261206030709 +0000");
        assert_eq!(parse_xmltv_time(&xmltv_time(t)), Some(t));
    }

    #[test]
    fn filler_covers_the_next_48_hours_in_aligned_blocks() {
        let now = 1_796_515_200 + 5 * 3600 + 1234;
        let chans = [
            FillerChannel {
                channel: "7".into(),
                name: "A & B".into(),
                from: None,
            },
            FillerChannel {
                channel: "8".into(),
                name: "Ends soon".into(),
                from: Some(now + 10 * 3600 + 1800),
            },
            FillerChannel {
                channel: "9".into(),
                name: "Full".into(),
                from: Some(now + 49 * 3600),
            },
        ];
        let xml = filler_xml(&chans, now, 2);
        let blocks = |ch: &str| -> Vec<(i64, i64)> {
            xml.lines()
                .filter(|l| l.contains(&format!("channel=\"{ch}\"")))
                .map(|l| {
                    let attr = |k: &str| {
                        let i = l.find(&format!("{k}=\"")).unwrap() + k.len() + 2;
                        parse_xmltv_time(&l[i..i + 20]).unwrap()
                    };
                    (attr("start"), attr("stop"))
                })
                .collect()
        };
        let a = blocks("7");
        assert_eq!(a[0].0, now - now % 3600);
        assert!(a.last().unwrap().1 >= now + 48 * 3600);
        assert!(a.windows(2).all(|w| w[0].1 == w[1].0));
        assert!(a.iter().all(|(s, e)| e - s <= 7200 && e % 7200 == 0));
        assert!(xml.contains("<title>A &amp; B</title>"));
        let b = blocks("8");
        assert_eq!(b[0].0, now + 10 * 3600 + 1800);
        assert!(b.last().unwrap().1 >= now + 48 * 3600);
        assert!(blocks("9").is_empty());
    }

    #[test]
    fn the_playlist_names_its_guide_in_the_header() {
        let g = |p: &str| playlist_guide_url(p);
        assert_eq!(
            g("#EXTM3U x-tvg-url=\"http://a.example/g.xml.gz,http://b.example/x\"\n#EXTINF:-1,A\nhttp://s/1\n"),
            Some("http://a.example/g.xml.gz".into())
        );
        assert_eq!(
            g("\u{feff}#EXTM3U tvg-shift=0 url-tvg='https://e.example/epg.xml'\r\n"),
            Some("https://e.example/epg.xml".into())
        );
        assert_eq!(
            g("#EXTM3U URL-TVG=http://e.example/x.xml refresh=3600\n"),
            Some("http://e.example/x.xml".into())
        );
        assert_eq!(
            g("#EXTM3U\n#EXTINF:-1 x-tvg-url=\"http://a/b\",A\nhttp://s\n"),
            None
        );
        assert_eq!(g("#EXTM3U x-tvg-url=\"file:///etc/passwd\"\n"), None);
        assert_eq!(g("#EXTM3U my-x-tvg-url=\"http://a/b\"\n"), None);
        assert_eq!(g("http://s/1\n"), None);
    }

    #[test]
    fn names_fold_case_accents_and_punctuation() {
        assert_eq!(fold_name("Télé Été HD"), "teleetehd");
        assert_eq!(fold_name("TF1-Séries"), "tf1series");
        assert_eq!(fold_name("  ÇA  "), "ca");
    }

    fn stream(id: &str, name: &str, tvg: Option<&str>, number: Option<&str>) -> Stream {
        Stream {
            id: id.into(),
            name: name.into(),
            url: "test://smpte".into(),
            backup_urls: vec![],
            group: None,
            logo: None,
            tvg_id: tvg.map(Into::into),
            number: number.map(Into::into),
            headers: Default::default(),
            enabled: true,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    #[test]
    fn filtering_keeps_matched_channels_under_their_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw.xml");
        std::fs::write(
            &raw,
            "<?xml version=\"1.0\"?>\n<tv>\n\
             <channel id=\"one.uk\"><display-name>One</display-name></channel>\n\
             <channel id=\"two.uk\"><display-name>Deux Été</display-name></channel>\n\
             <channel id=\"three.uk\"><display-name>Three</display-name></channel>\n\
             <programme start=\"20261206000000 +0000\" stop=\"20261206010000 +0000\" channel=\"one.uk\"><title>A &lt;1&gt;</title></programme>\n\
             <programme start='20261206010000 +0000' stop='20261206020000 +0000' channel='two.uk' clumpidx='0/1'><title>B \"q\"</title><desc>d</desc></programme>\n\
             <programme start=\"20261206000000 +0000\" stop=\"20261206010000 +0000\" channel=\"three.uk\"><title>C</title></programme>\n\
             </tv>\n",
        )
        .unwrap();
        let streams = vec![
            stream("s1", "Whatever", Some("ONE.uk"), Some("101")),
            stream("s2", "deux ete", Some("missing.uk"), None),
            stream("s3", "Unmatched", None, None),
        ];
        let out = render(dir.path(), Some(&raw), &streams, 0, i64::MAX).unwrap();
        assert_eq!(
            (
                out.channels,
                out.matched,
                out.guide_channels,
                out.programmes
            ),
            (3, 2, 3, 2)
        );
        let xml =
            std::fs::read_to_string(dir.path().join(format!(".{RENDERED_FILE}.tmp"))).unwrap();
        assert!(xml.contains("<channel id=\"101\">"), "{xml}");
        assert!(xml.contains("<display-name>101</display-name>"));
        assert!(
            xml.contains("channel=\"101\"><title>A &lt;1&gt;</title>"),
            "{xml}"
        );
        assert!(
            xml.contains("clumpidx=\"0/1\" channel=\"s2\"><title>B \"q\"</title><desc>d</desc>"),
            "{xml}"
        );
        assert!(!xml.contains("three.uk") && !xml.contains(">C<"));
        assert_eq!(out.filler.iter().filter(|f| f.from.is_none()).count(), 1);
        assert_eq!(out.listings[0].1[0].title, "A <1>");
        // Without a guide: every channel, no programmes.
        let out = render(dir.path(), None, &streams, 0, 0).unwrap();
        assert_eq!((out.channels, out.matched, out.programmes), (3, 0, 0));
    }

    #[test]
    fn a_guide_beyond_the_cap_or_broken_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw.xml");
        std::fs::write(
            &raw,
            "<tv><channel id=\"a\"><display-name>A</display-name></tv>",
        )
        .unwrap();
        let streams = vec![stream("a", "A", Some("a"), None)];
        let err = render(dir.path(), Some(&raw), &streams, 0, 0)
            .err()
            .unwrap();
        assert!(err.contains("not valid XMLTV"), "{err}");
        let mut capped = Capped {
            inner: std::io::repeat(b'x'),
            left: 10,
        };
        let mut buf = [0u8; 8];
        assert!(capped.read(&mut buf).is_ok());
        let err = capped.read(&mut buf).unwrap_err();
        assert!(err.to_string().contains("larger than 512 MiB"), "{err}");
    }
}
