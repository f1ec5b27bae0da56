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
//! computed on the spot ([`Guide::for_request`]): `EPG_FILLER_HOURS` blocks
//! titled with the channel name covering now..now+48h for channels without
//! guide data, so front ends show every channel.
//!
//! When the catalog changes, the guide is filtered again from the cached
//! raw file, without fetching it. What a restart needs (status, filler
//! channels, now/next listings) is kept in `epg/meta.json`, so a restart
//! serves the last guide at once and fetches only when it is due.

mod filter;
mod refresh;
mod xmltv;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::redact::redact_url;

pub use filter::{channel_id, fold_name};
pub use refresh::spawn;
use xmltv::rfc3339;
pub use xmltv::{filler_xml, parse_xmltv_time, unix_now, xmltv_time};

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
}
