//! The stream catalog (`<data dir>/streams.json`, SPEC §5): the streams a
//! client may preview, their validation, and crash-safe persistence.
//! Writes are serialized and atomic (temp file, fsync, rename, fsync dir);
//! a write is acknowledged only once it is on disk. A corrupt catalog at
//! start-up is moved aside, never overwritten.
//!
//! This module knows nothing of HTTP or GStreamer; it vets URLs through
//! [`crate::media::source::SourceUri`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::RwLock;

pub const CATALOG_FILE: &str = "streams.json";
pub const MAX_NAME_LEN: usize = 200;
pub const MAX_BACKUP_URLS: usize = 8;
pub const MAX_HEADERS: usize = 16;
pub const MAX_ATTRIBUTES: usize = 64;

mod demo;
mod import;
mod stream;

pub use demo::demo_streams;
pub use import::{ImportEntry, ImportError, ImportOutcome};
pub use stream::*;

use import::{apply_import, unique_id};
use stream::assign_numbers;

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

#[cfg(test)]
mod tests;
