//! A catalog stream: its fields, what a client sends, and the checks a
//! stream passes before it is stored (ids, channel numbers, attributes,
//! URLs vetted through [`SourceUri`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{MAX_ATTRIBUTES, MAX_BACKUP_URLS, MAX_HEADERS, MAX_NAME_LEN};
use crate::media::source::SourceUri;
use crate::redact;

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
pub(super) fn assign_numbers(streams: &mut [Stream]) -> bool {
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
pub(super) fn number_holder<'a>(
    streams: &'a [Stream],
    n: &str,
    except: &str,
) -> Option<&'a Stream> {
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
