//! Playlist import into the catalog: each entry is matched to a stream,
//! updated, merged as a backup URL, or added under a fresh id.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::{
    now_rfc3339, slugify, valid_attribute, valid_number, validate, Stream, MAX_ATTRIBUTES,
    MAX_BACKUP_URLS,
};

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
pub(super) fn apply_import(
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

pub(super) fn unique_id(streams: &[Stream], base: &str) -> String {
    if !streams.iter().any(|s| s.id == base) {
        return base.to_string();
    }
    (2..)
        .map(|n| format!("{base}-{n}"))
        .find(|c| !streams.iter().any(|s| s.id == *c))
        .expect("an unused id exists")
}
