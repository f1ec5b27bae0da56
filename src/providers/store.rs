//! Provider records on disk: `<data dir>/providers.json`, written like the
//! catalog (temp file, fsync, rename, fsync dir; one writer at a time), so
//! a crash mid-write never leaves a truncated file. A corrupt file at
//! start-up is moved aside (`providers.json.corrupt-<ts>`), not overwritten.
//!
//! Holds the explicit providers and the limits set on implicit ones (by
//! their hashed id; never a credential).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

pub const PROVIDERS_FILE: &str = "providers.json";

/// One stored provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provider {
    pub id: String,
    pub name: String,
    /// Simultaneous upstream connections the account allows; None: no limit.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// A limit set on an implicit provider (keyed by its URLs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub implicit: bool,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("provider '{0}' not found")]
    NotFound(String),
    #[error("a provider with id '{0}' already exists")]
    Conflict(String),
    #[error("provider '{0}' is used by {1} stream(s); move them to another provider first")]
    InUse(String, usize),
    #[error("{0}")]
    Invalid(String),
    #[error("provider storage failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The stored records: an in-memory copy for reads, a serialized writer.
pub struct Store {
    path: PathBuf,
    records: RwLock<Arc<Vec<Provider>>>,
    write: tokio::sync::Mutex<()>,
}

impl Store {
    /// Reads `<data_dir>/providers.json` (none yet: no providers).
    pub fn open(data_dir: &Path) -> std::io::Result<Store> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(PROVIDERS_FILE);
        let records = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Vec<Provider>>(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    let ts = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    let aside = data_dir.join(format!("{PROVIDERS_FILE}.corrupt-{ts}"));
                    std::fs::rename(&path, &aside)?;
                    tracing::error!(moved_to = %aside.display(), reason = %e, "providers file was corrupt: moved it aside and started with no providers");
                    Vec::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(Store {
            path,
            records: RwLock::new(Arc::new(records)),
            write: tokio::sync::Mutex::new(()),
        })
    }

    pub fn snapshot(&self) -> Arc<Vec<Provider>> {
        self.records.read().clone()
    }

    pub fn get(&self, id: &str) -> Option<Provider> {
        self.records.read().iter().find(|p| p.id == id).cloned()
    }

    /// Applies `change` to a copy, persists it durably, then publishes it;
    /// nothing changes if the change or the write fails.
    pub async fn mutate<T>(
        &self,
        change: impl FnOnce(&mut Vec<Provider>) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        let _writer = self.write.lock().await;
        let mut next = (*self.snapshot()).clone();
        let out = change(&mut next)?;
        let next = Arc::new(next);
        let (path, to_write) = (self.path.clone(), next.clone());
        tokio::task::spawn_blocking(move || persist(&path, &to_write))
            .await
            .map_err(|e| ProviderError::Io(std::io::Error::other(e)))??;
        *self.records.write() = next;
        Ok(out)
    }
}

/// Atomic, durable write (see [`crate::durable`]).
fn persist(path: &Path, records: &[Provider]) -> std::io::Result<()> {
    crate::durable::write_json(path, &records)
}
