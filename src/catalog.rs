//! The stream catalog (`<data dir>/streams.json`, SPEC §5): the streams a
//! client may preview, their validation, and crash-safe persistence.
//! Writes are serialized and atomic (temp file, fsync, rename, fsync dir);
//! a write is acknowledged only once it is on disk. A corrupt catalog at
//! start-up is moved aside, never overwritten.
//!
//! This module knows nothing of HTTP or GStreamer; it vets URLs through
//! [`crate::media::source::SourceUri`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::media::source::SourceUri;
use crate::redact;

pub const CATALOG_FILE: &str = "streams.json";
pub const MAX_NAME_LEN: usize = 200;
pub const MAX_BACKUP_URLS: usize = 8;
pub const MAX_HEADERS: usize = 16;
pub const MAX_ATTRIBUTES: usize = 64;

/// One previewable stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stream {
    pub id: String,
    pub name: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backup_urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tvg_id: Option<String>,
    /// The provider (upstream account) the stream's connections count
    /// against; none: the implicit provider of its URL (see [`crate::providers`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Channel number (GuideNumber for tuners and guides): from tvg-chno /
    /// channel-number on import, otherwise assigned in catalog order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    /// Request headers for HTTP(S)/HLS/DASH sources (User-Agent, Referer, Cookie).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The playlist attributes the stream was imported with (`tvg-name`,
    /// `tvg-language`, `tvg-country`, ...), exported unchanged.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    pub created_at: String,
    pub updated_at: String,
}

fn yes() -> bool {
    true
}

impl Stream {
    /// The same stream with credentials masked in URLs and secret headers.
    pub fn redacted(&self) -> Stream {
        let mut s = self.clone();
        s.url = redact::redact_url(&s.url);
        s.backup_urls = s
            .backup_urls
            .iter()
            .map(|u| redact::redact_url(u))
            .collect();
        for (k, v) in s.headers.iter_mut() {
            if redact::is_secret_header(k) {
                *v = redact::MASK.to_string();
            }
        }
        for v in s.attributes.values_mut() {
            if v.contains("://") {
                *v = redact::redact_url(v);
            }
        }
        s
    }
}

/// Fields a client sends to create or update a stream.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StreamInput {
    pub id: Option<String>,
    pub name: Option<String>,
    pub url: Option<String>,
    pub backup_urls: Option<Vec<String>>,
    pub group: Option<String>,
    pub logo: Option<String>,
    pub tvg_id: Option<String>,
    /// A provider id; `""` clears it.
    pub provider: Option<String>,
    pub number: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub attributes: Option<BTreeMap<String, String>>,
    pub enabled: Option<bool>,
    // Accepted (and ignored) so a GET result can be PUT back unchanged.
    #[serde(default)]
    pub created_at: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub updated_at: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("stream '{0}' not found")]
    NotFound(String),
    #[error("a stream with id '{0}' already exists")]
    Conflict(String),
    #[error("channel number '{0}' is already used by stream '{1}'")]
    NumberTaken(String, String),
    #[error("{0}")]
    Invalid(String),
    #[error("catalog storage failed: {0}")]
    Io(#[from] std::io::Error),
}

pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Derives an id from a name: lowercase ASCII letters/digits, dashes between.
pub fn slugify(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
        if out.len() >= 56 {
            break;
        }
    }
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() {
        "stream".into()
    } else {
        out
    }
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Whether a channel number is well formed: 1-6 digits, optionally a dot
/// and 1-3 more (`7`, `101`, `5.1`), as tuners and guides number channels.
pub fn valid_number(n: &str) -> bool {
    let (major, minor) = n.split_once('.').unwrap_or((n, "1"));
    let digits =
        |s: &str, max: usize| (1..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    digits(major, 6) && digits(minor, 3)
}

/// The next channel number to hand out: one past the highest whole number
/// in use (1 for an empty catalog).
pub fn next_number<'a>(numbers: impl IntoIterator<Item = &'a str>) -> String {
    let max = numbers
        .into_iter()
        .filter_map(|n| n.split('.').next()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    (max + 1).to_string()
}

/// Gives every stream without a number (or with one an earlier stream
/// already holds) the next free number, in catalog order. Whether any
/// stream changed.
fn assign_numbers(streams: &mut [Stream]) -> bool {
    use std::collections::HashSet;
    let mut used: HashSet<String> = HashSet::new();
    let mut missing = Vec::new();
    for (i, s) in streams.iter().enumerate() {
        match &s.number {
            Some(n) if valid_number(n) && used.insert(n.clone()) => {}
            _ => missing.push(i),
        }
    }
    let first: u64 = next_number(used.iter().map(String::as_str))
        .parse()
        .expect("a whole number");
    for (n, &i) in (first..).zip(&missing) {
        streams[i].number = Some(n.to_string());
    }
    !missing.is_empty()
}

/// The stream other than `except` that holds channel number `n`.
fn number_holder<'a>(streams: &'a [Stream], n: &str, except: &str) -> Option<&'a Stream> {
    streams
        .iter()
        .find(|s| s.id != except && s.number.as_deref() == Some(n))
}

/// Whether a playlist attribute can be stored and written back: a key of
/// 1-64 ASCII letters, digits, `-`, `_`, `.` or `:`, a printable value of at
/// most 2048 bytes.
pub fn valid_attribute(key: &str, value: &str) -> bool {
    (1..=64).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        && value.len() <= 2048
        && !value.chars().any(|c| c.is_control())
}

/// Validates a stream's fields; `media_dir` governs file:// sources.
pub fn validate(stream: &Stream, media_dir: Option<&Path>) -> Result<(), CatalogError> {
    let inv = |m: String| Err(CatalogError::Invalid(m));
    if !valid_id(&stream.id) {
        return inv("id must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'".into());
    }
    let name = stream.name.trim();
    if name.is_empty()
        || stream.name.chars().count() > MAX_NAME_LEN
        || stream.name.chars().any(|c| c.is_control())
    {
        return inv(format!(
            "name must be 1-{MAX_NAME_LEN} printable characters"
        ));
    }
    SourceUri::parse(&stream.url, media_dir)
        .map_err(|e| CatalogError::Invalid(format!("url: {e}")))?;
    if let Some(p) = &stream.provider {
        if !valid_id(p) {
            return inv(
                "provider must be a provider id (1-64 characters of A-Z, a-z, 0-9, '_' or '-')"
                    .into(),
            );
        }
    }
    if let Some(n) = &stream.number {
        if !valid_number(n) {
            return inv(format!(
                "number '{n}' must be 1-6 digits, optionally followed by '.' and 1-3 digits (e.g. 7, 101, 5.1)"
            ));
        }
    }
    if stream.backup_urls.len() > MAX_BACKUP_URLS {
        return inv(format!("at most {MAX_BACKUP_URLS} backupUrls"));
    }
    for (i, u) in stream.backup_urls.iter().enumerate() {
        SourceUri::parse(u, media_dir)
            .map_err(|e| CatalogError::Invalid(format!("backupUrls[{i}]: {e}")))?;
    }
    for (label, v) in [
        ("group", &stream.group),
        ("logo", &stream.logo),
        ("tvgId", &stream.tvg_id),
    ] {
        if let Some(v) = v {
            if v.len() > 2048 || v.chars().any(|c| c.is_control()) {
                return inv(format!("{label} must be at most 2048 printable characters"));
            }
        }
    }
    if stream.attributes.len() > MAX_ATTRIBUTES {
        return inv(format!("at most {MAX_ATTRIBUTES} attributes"));
    }
    if let Some((k, _)) = stream
        .attributes
        .iter()
        .find(|(k, v)| !valid_attribute(k, v))
    {
        return inv(format!(
            "attribute '{k}' must have a key of 1-64 characters of A-Z, a-z, 0-9, '-', '_', '.' or ':' and a printable value of at most 2048 bytes"
        ));
    }
    if stream.headers.len() > MAX_HEADERS {
        return inv(format!("at most {MAX_HEADERS} headers"));
    }
    for (k, v) in &stream.headers {
        let token = !k.is_empty()
            && k.len() <= 128
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b));
        if !token || v.len() > 4096 || v.chars().any(|c| c.is_control()) {
            return inv(format!("header '{k}' is not a valid HTTP header"));
        }
    }
    Ok(())
}

/// The catalog: an in-memory copy for reads, a serialized writer for changes.
pub struct Catalog {
    path: PathBuf,
    media_dir: Option<PathBuf>,
    streams: RwLock<Arc<Vec<Stream>>>,
    /// Serializes writers across the read-modify-persist sequence.
    write: tokio::sync::Mutex<()>,
}

/// What start-up found on disk.
#[derive(Debug, PartialEq)]
pub enum Opened {
    Loaded(usize),
    CreatedDemo(usize),
    /// The old file was moved to this path and an empty catalog started.
    MovedCorrupt(PathBuf, String),
}

impl Catalog {
    /// Opens `<data_dir>/streams.json`, creating the demo catalog on first start.
    pub fn open(
        data_dir: &Path,
        media_dir: Option<PathBuf>,
    ) -> Result<(Self, Opened), CatalogError> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(CATALOG_FILE);
        let (streams, opened) = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Vec<Stream>>(&bytes) {
                Ok(mut streams) => {
                    let n = streams.len();
                    if assign_numbers(&mut streams) {
                        persist(&path, &streams)?;
                    }
                    (streams, Opened::Loaded(n))
                }
                Err(e) => {
                    let ts = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    let aside = data_dir.join(format!("{CATALOG_FILE}.corrupt-{ts}"));
                    std::fs::rename(&path, &aside)?;
                    (Vec::new(), Opened::MovedCorrupt(aside, e.to_string()))
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let demo = demo_streams();
                let n = demo.len();
                (demo, Opened::CreatedDemo(n))
            }
            Err(e) => return Err(e.into()),
        };
        let catalog = Catalog {
            path,
            media_dir,
            streams: RwLock::new(Arc::new(streams)),
            write: tokio::sync::Mutex::new(()),
        };
        if !matches!(opened, Opened::Loaded(_)) {
            persist(&catalog.path, &catalog.snapshot())?;
        }
        Ok((catalog, opened))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn media_dir(&self) -> Option<&Path> {
        self.media_dir.as_deref()
    }

    /// A consistent view of every stream, cheap to take.
    pub fn snapshot(&self) -> Arc<Vec<Stream>> {
        self.streams.read().clone()
    }

    pub fn get(&self, id: &str) -> Option<Stream> {
        self.streams.read().iter().find(|s| s.id == id).cloned()
    }

    pub fn len(&self) -> usize {
        self.streams.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies `change` to a copy of the catalog, persists it durably, then
    /// publishes it. Nothing changes in memory if the change or the write fails.
    pub async fn mutate<T, F>(&self, change: F) -> Result<T, CatalogError>
    where
        F: FnOnce(&mut Vec<Stream>) -> Result<T, CatalogError>,
    {
        let _writer = self.write.lock().await;
        let mut next = (*self.snapshot()).clone();
        let out = change(&mut next)?;
        let path = self.path.clone();
        let next = Arc::new(next);
        let to_write = next.clone();
        tokio::task::spawn_blocking(move || persist(&path, &to_write))
            .await
            .map_err(|e| CatalogError::Io(std::io::Error::other(e)))??;
        *self.streams.write() = next;
        Ok(out)
    }

    /// Creates a stream from client input (201 on success).
    pub async fn create(&self, input: StreamInput) -> Result<Stream, CatalogError> {
        let now = now_rfc3339();
        let name = input.name.clone().unwrap_or_default();
        let mut stream = Stream {
            id: String::new(),
            name,
            url: input
                .url
                .clone()
                .ok_or_else(|| CatalogError::Invalid("url is required".into()))?,
            backup_urls: input.backup_urls.clone().unwrap_or_default(),
            group: input.group.clone(),
            logo: input.logo.clone(),
            tvg_id: input.tvg_id.clone(),
            provider: input.provider.clone().filter(|p| !p.is_empty()),
            number: input.number.clone(),
            headers: input.headers.clone().unwrap_or_default(),
            attributes: input.attributes.clone().unwrap_or_default(),
            enabled: input.enabled.unwrap_or(true),
            created_at: now.clone(),
            updated_at: now,
        };
        let explicit_id = input.id.clone();
        self.mutate(move |streams| {
            stream.id = match explicit_id {
                Some(id) => {
                    if streams.iter().any(|s| s.id == id) {
                        return Err(CatalogError::Conflict(id));
                    }
                    id
                }
                None => unique_id(streams, &slugify(&stream.name)),
            };
            validate(&stream, self.media_dir())?;
            match &stream.number {
                Some(n) => {
                    if let Some(other) = number_holder(streams, n, &stream.id) {
                        return Err(CatalogError::NumberTaken(n.clone(), other.id.clone()));
                    }
                }
                None => {
                    stream.number = Some(next_number(
                        streams.iter().filter_map(|s| s.number.as_deref()),
                    ))
                }
            }
            streams.push(stream.clone());
            Ok(stream)
        })
        .await
    }

    /// Updates the fields present in `input`.
    pub async fn update(&self, id: &str, input: StreamInput) -> Result<Stream, CatalogError> {
        if let Some(body_id) = &input.id {
            if body_id != id {
                return Err(CatalogError::Invalid(format!(
                    "id in the body ('{body_id}') differs from the path ('{id}')"
                )));
            }
        }
        let id = id.to_string();
        self.mutate(move |streams| {
            let s = streams
                .iter()
                .find(|s| s.id == id)
                .ok_or_else(|| CatalogError::NotFound(id.clone()))?;
            let mut next = s.clone();
            if let Some(v) = input.name {
                next.name = v;
            }
            if let Some(v) = input.url {
                next.url = v;
            }
            if let Some(v) = input.backup_urls {
                next.backup_urls = v;
            }
            if let Some(v) = input.group {
                next.group = Some(v).filter(|g| !g.is_empty());
            }
            if let Some(v) = input.logo {
                next.logo = Some(v).filter(|g| !g.is_empty());
            }
            if let Some(v) = input.tvg_id {
                next.tvg_id = Some(v).filter(|g| !g.is_empty());
            }
            if let Some(v) = input.provider {
                next.provider = Some(v).filter(|p| !p.is_empty());
            }
            if let Some(v) = input.number {
                next.number = Some(v);
            }
            if let Some(v) = input.headers {
                next.headers = v;
            }
            if let Some(v) = input.attributes {
                next.attributes = v;
            }
            if let Some(v) = input.enabled {
                next.enabled = v;
            }
            next.updated_at = now_rfc3339();
            validate(&next, self.media_dir())?;
            if let Some(n) = &next.number {
                if let Some(other) = number_holder(streams, n, &id) {
                    return Err(CatalogError::NumberTaken(n.clone(), other.id.clone()));
                }
            }
            let s = streams
                .iter_mut()
                .find(|s| s.id == id)
                .expect("found above");
            *s = next.clone();
            Ok(next)
        })
        .await
    }

    pub async fn delete(&self, id: &str) -> Result<(), CatalogError> {
        let id = id.to_string();
        self.mutate(move |streams| {
            let before = streams.len();
            streams.retain(|s| s.id != id);
            if streams.len() == before {
                return Err(CatalogError::NotFound(id));
            }
            Ok(())
        })
        .await
    }

    /// Upserts many streams (an M3U import) in one durable write. An entry
    /// updates the stream with the same `tvgId` and URL, else the same URL
    /// (each existing stream matched at most once per import, so channels
    /// sharing an EPG id stay apart); its URL already being a backup URL of
    /// the stream with its `tvgId` leaves that stream unchanged. A different
    /// URL under the `tvgId` and name of a stream becomes a backup URL of
    /// that stream (a mirror), never a replacement of its URL. Otherwise the
    /// entry creates a stream whose id comes from its `tvgId` or name.
    /// Invalid entries and repeats of an earlier entry are skipped and
    /// reported by line; the rest still lands.
    pub async fn import(&self, entries: Vec<ImportEntry>) -> Result<ImportOutcome, CatalogError> {
        let media_dir = self.media_dir.clone();
        self.mutate(move |streams| Ok(apply_import(streams, entries, media_dir.as_deref())))
            .await
    }

    /// Writes the current catalog to disk again (used at shutdown).
    pub async fn flush(&self) -> Result<(), CatalogError> {
        self.mutate(|_| Ok(())).await
    }
}

/// One stream offered by a playlist import.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportEntry {
    /// Playlist line the entry came from, for error reports.
    pub line: usize,
    pub name: String,
    pub url: String,
    pub tvg_id: Option<String>,
    /// The playlist's channel number (`tvg-chno` / `channel-number`).
    pub number: Option<String>,
    pub group: Option<String>,
    pub logo: Option<String>,
    /// Overlaid on the stream's headers (others the operator set are kept).
    pub headers: BTreeMap<String, String>,
    /// Every playlist attribute; overlaid on the stream's like `headers`
    /// (those that cannot be stored are left out).
    pub attributes: BTreeMap<String, String>,
    /// The provider the import assigns (replaces the stream's).
    pub provider: Option<String>,
}

/// Why one playlist line was not imported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportError {
    pub line: usize,
    pub message: String,
}

/// What an import did, one count per entry: `imported` (a new stream),
/// `updated` (a stream changed), `unchanged` (matched, nothing to change),
/// `mergedAsBackup` (the URL joined a stream as a mirror), `skipped` (the
/// entries listed in `errors`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportOutcome {
    pub imported: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub merged_as_backup: usize,
    pub skipped: usize,
    pub errors: Vec<ImportError>,
}

impl ImportOutcome {
    /// Records an entry that was not applied.
    pub fn skip(&mut self, line: usize, message: impl Into<String>) {
        self.skipped += 1;
        self.errors.push(ImportError {
            line,
            message: message.into(),
        });
    }
}

/// The import's matching and merging, on the catalog copy `mutate` hands out.
fn apply_import(
    streams: &mut Vec<Stream>,
    entries: Vec<ImportEntry>,
    media_dir: Option<&Path>,
) -> ImportOutcome {
    use std::collections::{HashMap, HashSet};
    let now = now_rfc3339();
    let mut out = ImportOutcome::default();
    let name_key = |n: &str| n.trim().to_lowercase();
    let mut by_pair: HashMap<(String, String), Vec<usize>> = HashMap::new();
    let mut by_url: HashMap<String, Vec<usize>> = HashMap::new();
    let mut by_backup: HashMap<(String, String), usize> = HashMap::new();
    let mut by_tvg_name: HashMap<(String, String), usize> = HashMap::new();
    for (i, s) in streams.iter().enumerate() {
        let tvg = s.tvg_id.clone().unwrap_or_default();
        by_pair
            .entry((tvg.clone(), s.url.clone()))
            .or_default()
            .push(i);
        by_url.entry(s.url.clone()).or_default().push(i);
        if !tvg.is_empty() {
            for b in &s.backup_urls {
                by_backup.entry((tvg.clone(), b.clone())).or_insert(i);
            }
            by_tvg_name
                .entry((tvg.clone(), name_key(&s.name)))
                .or_insert(i);
        }
    }
    let mut claimed = vec![false; streams.len()];
    let mut ids: HashSet<String> = streams.iter().map(|s| s.id.clone()).collect();
    // Channel numbers in use (number -> stream id) and the highest whole one.
    let mut numbers: HashMap<String, String> = streams
        .iter()
        .filter_map(|s| Some((s.number.clone()?, s.id.clone())))
        .collect();
    let whole = |n: &str| n.split('.').next().and_then(|w| w.parse::<u64>().ok());
    let mut top = numbers.keys().filter_map(|n| whole(n)).max().unwrap_or(0);
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    for mut e in entries {
        let tvg = e.tvg_id.clone().unwrap_or_default();
        let key = (tvg.clone(), e.url.clone());
        if let Some(first) = seen.get(&key) {
            out.skip(e.line, format!("same tvg-id and URL as line {first}"));
            continue;
        }
        e.attributes.retain(|k, v| valid_attribute(k, v));
        while e.attributes.len() > MAX_ATTRIBUTES {
            e.attributes.pop_last();
        }
        let free =
            |list: Option<&Vec<usize>>| list.and_then(|l| l.iter().copied().find(|&i| !claimed[i]));
        let found = free(by_pair.get(&key)).or_else(|| free(by_url.get(&e.url)));
        if found.is_none() && !tvg.is_empty() {
            if by_backup.contains_key(&key) {
                seen.insert(key, e.line);
                out.unchanged += 1;
                continue;
            }
            if let Some(&i) = by_tvg_name.get(&(tvg.clone(), name_key(&e.name))) {
                let mut next = streams[i].clone();
                if next.backup_urls.len() >= MAX_BACKUP_URLS {
                    out.skip(
                        e.line,
                        format!(
                            "stream '{}' already has {MAX_BACKUP_URLS} backup URLs; this mirror was not added",
                            next.id
                        ),
                    );
                    continue;
                }
                next.backup_urls.push(e.url.clone());
                for (k, v) in e.attributes {
                    next.attributes.entry(k).or_insert(v);
                }
                if let Err(err) = validate(&next, media_dir) {
                    out.skip(e.line, err.to_string());
                    continue;
                }
                next.updated_at = now.clone();
                streams[i] = next;
                by_backup.insert(key.clone(), i);
                seen.insert(key, e.line);
                out.merged_as_backup += 1;
                continue;
            }
        }
        let mut next = match found {
            Some(i) => streams[i].clone(),
            None => Stream {
                id: String::new(),
                name: String::new(),
                url: e.url.clone(),
                backup_urls: vec![],
                group: None,
                logo: None,
                tvg_id: None,
                provider: None,
                number: None,
                headers: BTreeMap::new(),
                attributes: BTreeMap::new(),
                enabled: true,
                created_at: now.clone(),
                updated_at: now.clone(),
            },
        };
        next.name = e.name;
        next.tvg_id = e.tvg_id.or(next.tvg_id);
        next.group = e.group.or(next.group);
        next.logo = e.logo.or(next.logo);
        next.provider = e.provider.or(next.provider);
        next.headers.extend(e.headers);
        next.attributes.extend(e.attributes);
        if found.is_none() {
            let base = slugify(next.tvg_id.as_deref().unwrap_or(&next.name));
            next.id = (1..)
                .map(|n| {
                    if n == 1 {
                        base.clone()
                    } else {
                        format!("{base}-{n}")
                    }
                })
                .find(|c| !ids.contains(c))
                .expect("an unused id exists");
        }
        // The playlist's number when it is free (or already this stream's);
        // otherwise the stream keeps its number, or a new one gets the next.
        let wanted = e
            .number
            .filter(|n| valid_number(n) && numbers.get(n).is_none_or(|holder| *holder == next.id));
        let old_number = next.number.clone();
        if let Some(n) = wanted {
            next.number = Some(n);
        } else if next.number.is_none() {
            next.number = Some((top + 1).to_string());
        }
        if let Err(err) = validate(&next, media_dir) {
            out.skip(e.line, err.to_string());
            continue;
        }
        if next.number != old_number {
            if let Some(old) = &old_number {
                numbers.remove(old);
            }
            let n = next.number.clone().expect("set above");
            top = top.max(whole(&n).unwrap_or(0));
            numbers.insert(n, next.id.clone());
        }
        seen.insert(key, e.line);
        match found {
            Some(i) => {
                claimed[i] = true;
                if streams[i] != next {
                    next.updated_at = now.clone();
                    streams[i] = next;
                    out.updated += 1;
                } else {
                    out.unchanged += 1;
                }
            }
            None => {
                ids.insert(next.id.clone());
                if !tvg.is_empty() {
                    by_tvg_name
                        .entry((tvg, name_key(&next.name)))
                        .or_insert(streams.len());
                }
                streams.push(next);
                claimed.push(true);
                out.imported += 1;
            }
        }
    }
    out
}

fn unique_id(streams: &[Stream], base: &str) -> String {
    if !streams.iter().any(|s| s.id == base) {
        return base.to_string();
    }
    (2..)
        .map(|n| format!("{base}-{n}"))
        .find(|c| !streams.iter().any(|s| s.id == *c))
        .expect("an unused id exists")
}

/// Atomic, durable write (see [`crate::durable`]).
fn persist(path: &Path, records: &[Stream]) -> std::io::Result<()> {
    crate::durable::write_json(path, &records)
}

/// Whether the data dir accepts writes (health/readiness).
pub fn dir_writable(dir: &Path) -> bool {
    let probe = dir.join(format!(".write-probe-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"ok").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// The offline demo catalog created on first start: sluice's own `test://`
/// sources, so a new user can preview at once with no network.
pub fn demo_streams() -> Vec<Stream> {
    let now = now_rfc3339();
    let mk = |id: &str, name: &str, url: &str| Stream {
        id: id.into(),
        name: name.into(),
        url: url.into(),
        backup_urls: vec![],
        group: Some("Demo".into()),
        logo: None,
        tvg_id: Some(id.into()),
        provider: None,
        number: None,
        headers: BTreeMap::new(),
        attributes: BTreeMap::new(),
        enabled: true,
        created_at: now.clone(),
        updated_at: now.clone(),
    };
    let mut demo = vec![
        mk(
            "demo-smpte",
            "SMPTE bars 1080p30 with tone",
            "test://smpte?size=1920x1080&rate=30",
        ),
        mk(
            "demo-ball",
            "Bouncing ball 720p25",
            "test://ball?size=1280x720&rate=25&freq=660",
        ),
        mk(
            "demo-snow",
            "Snow 480p30",
            "test://snow?size=854x480&rate=30&audio=silence",
        ),
        mk(
            "demo-video-only",
            "Colour bars, no audio 720p30",
            "test://smpte75?size=1280x720&rate=30&audio=none",
        ),
    ];
    assign_numbers(&mut demo);
    demo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_start_creates_a_demo_catalog_with_demo_smpte() {
        let dir = tempfile::tempdir().unwrap();
        let (cat, opened) = Catalog::open(dir.path(), None).unwrap();
        assert!(matches!(opened, Opened::CreatedDemo(n) if n >= 2));
        assert!(cat
            .get("demo-smpte")
            .unwrap()
            .url
            .starts_with("test://smpte"));
        for s in cat.snapshot().iter() {
            validate(s, None).unwrap();
        }
        let (again, opened) = Catalog::open(dir.path(), None).unwrap();
        assert_eq!(opened, Opened::Loaded(cat.len()));
        assert_eq!(again.snapshot(), cat.snapshot());
    }

    #[tokio::test]
    async fn crud_persists_and_validates() {
        let dir = tempfile::tempdir().unwrap();
        let (cat, _) = Catalog::open(dir.path(), None).unwrap();
        let s = cat
            .create(StreamInput {
                name: Some("News HD!".into()),
                url: Some("http://u:p@example.test/live.ts".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(s.id, "news-hd");
        let s2 = cat
            .create(StreamInput {
                name: Some("News HD".into()),
                url: Some("rtsp://cam/x".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(s2.id, "news-hd-2");
        let err = cat
            .create(StreamInput {
                name: Some("x".into()),
                url: Some("ftp://x/y".into()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(err, CatalogError::Invalid(m) if m.contains("ftp")));
        let up = cat
            .update(
                "news-hd",
                StreamInput {
                    enabled: Some(false),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(!up.enabled);
        cat.delete("news-hd-2").await.unwrap();
        assert!(matches!(
            cat.delete("news-hd-2").await,
            Err(CatalogError::NotFound(_))
        ));
        let (reopened, _) = Catalog::open(dir.path(), None).unwrap();
        assert_eq!(reopened.snapshot(), cat.snapshot());
        assert_eq!(
            reopened.get("news-hd").unwrap().redacted().url,
            "http://***@example.test/live.ts"
        );
    }

    #[tokio::test]
    async fn import_matches_on_tvg_id_then_url_and_never_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let (cat, _) = Catalog::open(dir.path(), None).unwrap();
        let demo = cat.len();
        let e = |line, tvg: Option<&str>, name: &str, url: &str| ImportEntry {
            line,
            name: name.into(),
            url: url.into(),
            tvg_id: tvg.map(Into::into),
            ..Default::default()
        };
        let first = vec![
            e(2, Some("One.uk"), "One HD", "http://h/1?token=a"),
            e(4, Some("One.uk"), "One SD", "http://h/1sd?token=a"),
            e(6, None, "Radio", "http://h/radio"),
            e(8, None, "Bad", "ftp://h/x"),
            e(10, None, "Radio again", "http://h/radio"),
        ];
        let out = cat.import(first).await.unwrap();
        assert_eq!((out.imported, out.updated, out.skipped), (3, 0, 2));
        assert_eq!(out.errors[0].line, 8);
        assert!(out.errors[0].message.contains("ftp"), "{:?}", out.errors);
        assert!(out.errors[1].message.contains("line 6"), "{:?}", out.errors);
        assert_eq!(cat.get("one-uk").unwrap().name, "One HD");
        assert_eq!(cat.get("one-uk-2").unwrap().name, "One SD");
        assert_eq!(cat.get("radio").unwrap().url, "http://h/radio");
        // Another URL under the same tvg-id and name is a mirror: it joins the
        // stream as a backup, the URL stays. The radio is matched by URL.
        let again = vec![
            e(2, Some("One.uk"), "One HD", "http://h/1?token=b"),
            e(4, Some("One.uk"), "One SD", "http://h/1sd?token=b"),
            e(6, None, "Radio 1", "http://h/radio"),
        ];
        let out = cat.import(again.clone()).await.unwrap();
        assert_eq!(
            (
                out.imported,
                out.updated,
                out.unchanged,
                out.merged_as_backup,
                out.skipped
            ),
            (0, 1, 0, 2, 0)
        );
        assert_eq!(cat.len(), demo + 3);
        let one = cat.get("one-uk").unwrap();
        assert_eq!(one.url, "http://h/1?token=a");
        assert_eq!(one.backup_urls, ["http://h/1?token=b"]);
        assert_eq!(
            cat.get("one-uk-2").unwrap().backup_urls,
            ["http://h/1sd?token=b"]
        );
        assert_eq!(cat.get("radio").unwrap().name, "Radio 1");
        // The same entries again: every one matched, nothing changes.
        let before = cat.snapshot();
        let out = cat.import(again).await.unwrap();
        assert_eq!(
            (
                out.imported,
                out.updated,
                out.unchanged,
                out.merged_as_backup
            ),
            (0, 0, 3, 0)
        );
        assert_eq!(cat.snapshot(), before);
        // Same tvg-id, another name: another channel, never a replacement.
        let out = cat
            .import(vec![e(2, Some("One.uk"), "One +1", "http://h/1plus1")])
            .await
            .unwrap();
        assert_eq!((out.imported, out.merged_as_backup), (1, 0));
        assert_eq!(cat.get("one-uk").unwrap().url, "http://h/1?token=a");
        let (reopened, _) = Catalog::open(dir.path(), None).unwrap();
        assert_eq!(reopened.snapshot(), cat.snapshot());
    }

    #[tokio::test]
    async fn an_import_assigns_its_provider_to_new_and_matched_streams() {
        let dir = tempfile::tempdir().unwrap();
        let (cat, _) = Catalog::open(dir.path(), None).unwrap();
        let e = |line, url: &str, provider: Option<&str>| ImportEntry {
            line,
            name: format!("S{line}"),
            url: url.into(),
            provider: provider.map(Into::into),
            ..Default::default()
        };
        let out = cat
            .import(vec![e(2, "http://h/1", None), e(4, "http://h/2", None)])
            .await
            .unwrap();
        assert_eq!(out.imported, 2);
        let out = cat
            .import(vec![
                e(2, "http://h/1", Some("acme")),
                e(4, "http://h/3", Some("acme")),
            ])
            .await
            .unwrap();
        assert_eq!((out.imported, out.updated), (1, 1));
        let provider_of = |url: &str| {
            cat.snapshot()
                .iter()
                .find(|s| s.url == url)
                .and_then(|s| s.provider.clone())
        };
        assert_eq!(provider_of("http://h/1").as_deref(), Some("acme"));
        assert_eq!(provider_of("http://h/2"), None, "not in this import");
        assert_eq!(provider_of("http://h/3").as_deref(), Some("acme"));
        // An import without a provider keeps the one a stream has.
        cat.import(vec![e(2, "http://h/1", None)]).await.unwrap();
        assert_eq!(provider_of("http://h/1").as_deref(), Some("acme"));
    }

    #[tokio::test]
    async fn mirrors_merge_up_to_the_backup_limit_and_attributes_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (cat, _) = Catalog::open(dir.path(), None).unwrap();
        let mut entries = Vec::new();
        for i in 0..=MAX_BACKUP_URLS + 1 {
            let mut attributes = BTreeMap::new();
            attributes.insert("tvg-name".to_string(), "News_Int".to_string());
            attributes.insert(format!("x-mirror-{i}"), i.to_string());
            attributes.insert("bad key".to_string(), "dropped".to_string());
            entries.push(ImportEntry {
                line: 2 * i + 2,
                name: "News".into(),
                url: format!("http://mirror{i}.example/news.m3u8"),
                tvg_id: Some("News.int".into()),
                attributes,
                ..Default::default()
            });
        }
        let out = cat.import(entries).await.unwrap();
        assert_eq!(
            (out.imported, out.merged_as_backup, out.skipped),
            (1, MAX_BACKUP_URLS, 1),
            "{out:?}"
        );
        assert!(out.errors[0].message.contains("backup URLs"), "{out:?}");
        let s = cat.get("news-int").unwrap();
        assert_eq!(s.url, "http://mirror0.example/news.m3u8");
        assert_eq!(s.backup_urls.len(), MAX_BACKUP_URLS);
        assert_eq!(s.attributes["tvg-name"], "News_Int");
        assert_eq!(s.attributes["x-mirror-0"], "0");
        assert_eq!(s.attributes["x-mirror-3"], "3", "a mirror adds what is new");
        assert!(!s.attributes.contains_key("bad key"));
    }

    #[tokio::test]
    async fn channel_numbers_are_assigned_kept_and_unique() {
        let dir = tempfile::tempdir().unwrap();
        let (cat, _) = Catalog::open(dir.path(), None).unwrap();
        let numbers: Vec<Option<String>> =
            cat.snapshot().iter().map(|s| s.number.clone()).collect();
        assert_eq!(numbers, ["1", "2", "3", "4"].map(|n| Some(n.to_string())));
        let input = |name: &str, number: Option<&str>| StreamInput {
            name: Some(name.into()),
            url: Some(format!("http://h/{name}")),
            number: number.map(Into::into),
            ..Default::default()
        };
        let a = cat.create(input("a", None)).await.unwrap();
        assert_eq!(a.number.as_deref(), Some("5"));
        let b = cat.create(input("b", Some("20.1"))).await.unwrap();
        assert_eq!(b.number.as_deref(), Some("20.1"));
        let err = cat.create(input("c", Some("5"))).await.unwrap_err();
        assert!(
            matches!(&err, CatalogError::NumberTaken(n, id) if n == "5" && id == "a"),
            "{err}"
        );
        let err = cat.create(input("c", Some("five"))).await.unwrap_err();
        assert!(matches!(err, CatalogError::Invalid(m) if m.contains("number")));
        let c = cat.create(input("c", None)).await.unwrap();
        assert_eq!(c.number.as_deref(), Some("21"));
        let err = cat.update("c", input("c", Some("1"))).await.unwrap_err();
        assert!(matches!(err, CatalogError::NumberTaken(..)));
        let c = cat.update("c", input("c", Some("30"))).await.unwrap();
        assert_eq!(c.number.as_deref(), Some("30"));
        // Edits without a number keep it.
        let c = cat
            .update(
                "c",
                StreamInput {
                    enabled: Some(false),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(c.number.as_deref(), Some("30"));

        // Import: tvg-chno when free, the next number otherwise, and a
        // re-import without numbers keeps them.
        let e = |line, name: &str, number: Option<&str>| ImportEntry {
            line,
            name: name.into(),
            url: format!("http://h/imp/{name}"),
            tvg_id: Some(format!("{name}.tv")),
            number: number.map(Into::into),
            ..Default::default()
        };
        let out = cat
            .import(vec![
                e(2, "x", Some("101")),
                e(4, "y", Some("101")),
                e(6, "z", None),
            ])
            .await
            .unwrap();
        assert_eq!(out.imported, 3, "{out:?}");
        let num = |id: &str| cat.get(id).unwrap().number.unwrap();
        assert_eq!(
            (num("x-tv"), num("y-tv"), num("z-tv")),
            ("101".into(), "102".into(), "103".into())
        );
        let out = cat
            .import(vec![e(2, "x", None), e(4, "y", None), e(6, "z", None)])
            .await
            .unwrap();
        assert_eq!(out.unchanged, 3, "{out:?}");
        let out = cat.import(vec![e(2, "z", Some("7"))]).await.unwrap();
        assert_eq!(out.updated, 1, "{out:?}");
        assert_eq!(num("z-tv"), "7");
        let (reopened, _) = Catalog::open(dir.path(), None).unwrap();
        assert_eq!(reopened.snapshot(), cat.snapshot());
    }

    #[test]
    fn a_catalog_without_numbers_gets_them_at_load_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let old = r#"[
            {"id": "b", "name": "B", "url": "http://h/b", "createdAt": "t", "updatedAt": "t"},
            {"id": "a", "name": "A", "url": "http://h/a", "number": "9", "createdAt": "t", "updatedAt": "t"},
            {"id": "c", "name": "C", "url": "http://h/c", "number": "9", "createdAt": "t", "updatedAt": "t"}
        ]"#;
        std::fs::write(dir.path().join(CATALOG_FILE), old).unwrap();
        let (cat, opened) = Catalog::open(dir.path(), None).unwrap();
        assert_eq!(opened, Opened::Loaded(3));
        let numbers: Vec<String> = cat
            .snapshot()
            .iter()
            .map(|s| s.number.clone().unwrap())
            .collect();
        assert_eq!(
            numbers,
            ["10", "9", "11"],
            "kept where unique, assigned in order otherwise"
        );
        let on_disk: Vec<Stream> =
            serde_json::from_slice(&std::fs::read(dir.path().join(CATALOG_FILE)).unwrap()).unwrap();
        assert_eq!(on_disk, *cat.snapshot());
        let (again, _) = Catalog::open(dir.path(), None).unwrap();
        assert_eq!(again.snapshot(), cat.snapshot());
    }

    #[test]
    fn redaction_masks_credentials_in_url_attributes_only() {
        let mut s = demo_streams().remove(0);
        s.attributes
            .insert("tvg-name".into(), "Bars://not a url".into());
        s.attributes.insert(
            "catchup-source".into(),
            "http://user:pw@cdn.example/x?token=abc".into(),
        );
        s.attributes.insert("tvg-language".into(), "English".into());
        let r = s.redacted();
        assert_eq!(r.attributes["tvg-language"], "English");
        let c = &r.attributes["catchup-source"];
        assert!(!c.contains("user:pw") && !c.contains("abc"), "{c}");
        assert!(
            c.starts_with("http://") && c.contains("cdn.example/x"),
            "{c}"
        );
    }

    #[test]
    fn channel_number_syntax() {
        for good in ["1", "007", "101", "5.1", "999999.999"] {
            assert!(valid_number(good), "{good}");
        }
        for bad in [
            "", "a", "1.", ".1", "1.2.3", "-1", "1234567", "1.1234", " 1",
        ] {
            assert!(!valid_number(bad), "{bad}");
        }
        assert_eq!(next_number(["3", "10.2", "x"]), "11");
        assert_eq!(next_number([]), "1");
    }

    #[test]
    fn corrupt_catalog_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CATALOG_FILE), b"[{\"id\": trunc").unwrap();
        let (cat, opened) = Catalog::open(dir.path(), None).unwrap();
        let Opened::MovedCorrupt(aside, _) = opened else {
            panic!("{opened:?}")
        };
        assert_eq!(std::fs::read(&aside).unwrap(), b"[{\"id\": trunc");
        assert!(cat.is_empty());
    }
}
