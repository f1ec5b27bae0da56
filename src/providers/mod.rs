//! Providers (SPEC §13): the upstream accounts streams come from, and the
//! count of connections open to each against its `maxConnections`.
//!
//! A stream belongs to the provider its `provider` field names, or else to
//! the implicit provider of its URL ([`implicit`]: scheme, host, port and
//! URL credential). `test://` and `file://` sources belong to none.
//!
//! # Counting connections
//!
//! Whatever opens an upstream connection first takes a [`ProviderLease`]
//! and keeps it until that connection is closed; dropping the lease gives
//! the connection back (and wakes whoever waits for one):
//!
//! ```ignore
//! let lease = state.providers.try_open(&stream)?; // Err(ProviderBusy) at the limit
//! // ... open the source, use it, close it ...
//! drop(lease);
//! ```
//!
//! - a channel takes its lease when it is created and its teardown drops it
//!   after the pipeline reached NULL, so a reconnect or a switch to a
//!   backup URL happens under the same lease (never two connections for one
//!   channel) and a new channel never opens before the old one closed;
//! - a validate probe takes one for its URL ([`Providers::try_open_url`]);
//! - a snapshot of a stream with no running channel takes one with
//!   [`Providers::try_open`] and drops it once its decode is done.
//!
//! [`Providers::open_within`] waits (until a deadline) for a connection
//! someone else is giving back. [`ProviderBusy`] names the provider and its
//! limit, never a URL or credential.
//!
//! This module does not open or stop anything itself: what to stop when a
//! provider is at its limit is decided in [`crate::preview`].

pub mod implicit;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::catalog::Stream;
pub use implicit::{key_of, ImplicitKey, IMPLICIT_PREFIX};
pub use store::{Provider, ProviderError, PROVIDERS_FILE};

/// Largest `maxConnections` accepted.
pub const MAX_CONNECTIONS_LIMIT: u32 = 10_000;

/// Which provider a connection counts against, with its limit now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub id: String,
    pub name: String,
    pub limit: Option<u32>,
}

/// Refusal: the provider has `limit` connections open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("provider '{name}' ({id}) is at its limit of {limit} connection(s)")]
pub struct ProviderBusy {
    pub id: String,
    pub name: String,
    pub limit: u32,
}

/// Open connections per provider, and a wake-up for waiters.
#[derive(Default)]
struct Counts {
    open: Mutex<HashMap<String, usize>>,
    /// Of those, connections being closed (their lease is marked closing).
    closing: Mutex<HashMap<String, usize>>,
    released: tokio::sync::Notify,
}

/// One open upstream connection counted against a provider; dropping it
/// gives the connection back. A lease of a source with no provider counts
/// nothing.
#[must_use = "the connection is given back when the lease is dropped"]
pub struct ProviderLease {
    held: Option<(Arc<Counts>, String)>,
    closing: std::sync::atomic::AtomicBool,
}

impl ProviderLease {
    /// A lease that counts against no provider.
    pub fn none() -> ProviderLease {
        ProviderLease {
            held: None,
            closing: Default::default(),
        }
    }

    /// Says the connection is being closed (it is given back when the
    /// lease is dropped): a request at the provider's limit waits for it
    /// rather than being refused.
    pub fn mark_closing(&self) {
        use std::sync::atomic::Ordering;
        if let Some((counts, id)) = &self.held {
            if !self.closing.swap(true, Ordering::AcqRel) {
                *counts.closing.lock().entry(id.clone()).or_insert(0) += 1;
            }
        }
    }

    /// The provider the connection counts against.
    pub fn provider(&self) -> Option<&str> {
        self.held.as_ref().map(|(_, id)| id.as_str())
    }
}

impl std::fmt::Debug for ProviderLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderLease")
            .field("provider", &self.provider())
            .finish()
    }
}

impl Drop for ProviderLease {
    fn drop(&mut self) {
        if let Some((counts, id)) = self.held.take() {
            if *self.closing.get_mut() {
                let mut closing = counts.closing.lock();
                if let Some(n) = closing.get_mut(&id) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        closing.remove(&id);
                    }
                }
            }
            {
                let mut open = counts.open.lock();
                if let Some(n) = open.get_mut(&id) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        open.remove(&id);
                    }
                }
            }
            counts.released.notify_waiters();
        }
    }
}

/// A provider as `GET /api/providers` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderView {
    pub id: String,
    pub name: String,
    /// None: no limit.
    pub max_connections: Option<u32>,
    pub implicit: bool,
    /// `host[:port]` of an implicit provider (never its credential).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Catalog streams that belong to it.
    pub streams: usize,
    /// Upstream connections open now.
    pub connections: usize,
}

/// What a client sends to create or change a provider. `maxConnections`
/// absent keeps the current limit; `null` removes it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderInput {
    pub id: Option<String>,
    pub name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub max_connections: Option<Option<u32>>,
    // Accepted (and ignored) so a GET result can be PUT back unchanged.
    #[serde(default)]
    pub implicit: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub host: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub streams: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub connections: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub created_at: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub updated_at: Option<serde::de::IgnoredAny>,
}

/// A field that is present (even as `null`) is `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
    Option::<u32>::deserialize(d).map(Some)
}

/// The providers: stored records and open connections.
pub struct Providers {
    store: store::Store,
    counts: Arc<Counts>,
}

impl Providers {
    pub fn open(data_dir: &Path) -> std::io::Result<Providers> {
        Ok(Providers {
            store: store::Store::open(data_dir)?,
            counts: Arc::new(Counts::default()),
        })
    }

    /// Whether an explicit provider with this id exists.
    pub fn exists(&self, id: &str) -> bool {
        self.store.get(id).is_some_and(|p| !p.implicit)
    }

    /// The stored record with this id (explicit, or an implicit one's limit).
    pub fn get(&self, id: &str) -> Option<Provider> {
        self.store.get(id)
    }

    /// The provider `stream`'s connections count against, if any.
    pub fn assigned(&self, stream: &Stream) -> Option<Assigned> {
        match &stream.provider {
            Some(id) => Some(match self.store.get(id) {
                Some(p) => Assigned {
                    id: p.id,
                    name: p.name,
                    limit: p.max_connections,
                },
                // A name no record has (a hand-edited catalog): no limit.
                None => Assigned {
                    id: id.clone(),
                    name: id.clone(),
                    limit: None,
                },
            }),
            None => self.assigned_implicit(&stream.url),
        }
    }

    fn assigned_implicit(&self, url: &str) -> Option<Assigned> {
        let key = key_of(url)?;
        let id = key.id();
        let stored = self.store.get(&id);
        Some(Assigned {
            name: stored
                .as_ref()
                .map(|p| p.name.clone())
                .unwrap_or_else(|| key.host_port()),
            limit: stored.and_then(|p| p.max_connections),
            id,
        })
    }

    /// The provider a URL counts against: that of a catalog stream with the
    /// URL (primary or backup) and an explicit provider, else its implicit one.
    pub fn assigned_url(&self, url: &str, streams: &[Stream]) -> Option<Assigned> {
        let url = url.trim();
        streams
            .iter()
            .find(|s| {
                s.provider.is_some() && (s.url == url || s.backup_urls.iter().any(|b| b == url))
            })
            .and_then(|s| self.assigned(s))
            .or_else(|| self.assigned_implicit(url))
    }

    /// Takes a connection of `assigned` if it is below its limit.
    pub fn take(&self, assigned: Option<Assigned>) -> Result<ProviderLease, ProviderBusy> {
        let Some(a) = assigned else {
            return Ok(ProviderLease::none());
        };
        let mut open = self.counts.open.lock();
        let n = open.entry(a.id.clone()).or_insert(0);
        if let Some(limit) = a.limit {
            if *n >= limit as usize {
                if *n == 0 {
                    open.remove(&a.id);
                }
                return Err(ProviderBusy {
                    id: a.id,
                    name: a.name,
                    limit,
                });
            }
        }
        *n += 1;
        Ok(ProviderLease {
            held: Some((self.counts.clone(), a.id)),
            closing: Default::default(),
        })
    }

    /// A connection for `stream`, or [`ProviderBusy`] at once.
    pub fn try_open(&self, stream: &Stream) -> Result<ProviderLease, ProviderBusy> {
        self.take(self.assigned(stream))
    }

    /// A connection for a URL (a validate probe), or [`ProviderBusy`].
    pub fn try_open_url(
        &self,
        url: &str,
        streams: &[Stream],
    ) -> Result<ProviderLease, ProviderBusy> {
        self.take(self.assigned_url(url, streams))
    }

    /// A connection for `stream`, waiting for one to be given back until
    /// `deadline`.
    pub async fn open_within(
        &self,
        stream: &Stream,
        deadline: tokio::time::Instant,
    ) -> Result<ProviderLease, ProviderBusy> {
        loop {
            let released = self.counts.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            match self.try_open(stream) {
                Ok(lease) => return Ok(lease),
                Err(busy) => {
                    if tokio::time::timeout_at(deadline, released).await.is_err() {
                        return Err(busy);
                    }
                }
            }
        }
    }

    /// Connections to provider `id` being closed now (given back soon).
    pub fn closing(&self, id: &str) -> usize {
        self.counts.closing.lock().get(id).copied().unwrap_or(0)
    }

    /// Connections open now to provider `id`.
    pub fn connections(&self, id: &str) -> usize {
        self.counts.open.lock().get(id).copied().unwrap_or(0)
    }

    /// Open connections of every provider that has some.
    pub fn all_connections(&self) -> BTreeMap<String, usize> {
        self.counts
            .open
            .lock()
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| (k.clone(), *n))
            .collect()
    }

    /// New connections the providers of `streams` still allow together:
    /// None when one of the streams has no provider or its provider no
    /// limit (nothing bounds it then).
    pub fn room(&self, streams: &[Stream]) -> Option<usize> {
        let mut limited: BTreeMap<String, u32> = BTreeMap::new();
        for s in streams {
            let a = self.assigned(s)?;
            limited.insert(a.id, a.limit?);
        }
        let open = self.counts.open.lock();
        Some(
            limited
                .iter()
                .map(|(id, limit)| {
                    (*limit as usize).saturating_sub(open.get(id).copied().unwrap_or(0))
                })
                .sum(),
        )
    }

    /// Every provider: the explicit ones, the implicit ones of the catalog's
    /// streams and those with a stored limit, each with its streams and
    /// open connections.
    pub fn list(&self, streams: &[Stream]) -> Vec<ProviderView> {
        let records = self.store.snapshot();
        let mut views: BTreeMap<String, ProviderView> = BTreeMap::new();
        for p in records.iter() {
            views.insert(
                p.id.clone(),
                ProviderView {
                    id: p.id.clone(),
                    name: p.name.clone(),
                    max_connections: p.max_connections,
                    implicit: p.implicit,
                    host: None,
                    streams: 0,
                    connections: 0,
                },
            );
        }
        for s in streams {
            let (id, host) = match &s.provider {
                Some(id) => (id.clone(), None),
                None => match key_of(&s.url) {
                    Some(k) => (k.id(), Some(k.host_port())),
                    None => continue,
                },
            };
            let v = views.entry(id.clone()).or_insert_with(|| ProviderView {
                name: host.clone().unwrap_or_else(|| id.clone()),
                id,
                max_connections: None,
                implicit: s.provider.is_none(),
                host: None,
                streams: 0,
                connections: 0,
            });
            v.streams += 1;
            if v.implicit && v.host.is_none() {
                v.host = host;
            }
        }
        let open = self.all_connections();
        let mut out: Vec<ProviderView> = views
            .into_values()
            .map(|mut v| {
                v.connections = open.get(&v.id).copied().unwrap_or(0);
                v
            })
            .collect();
        // Explicit providers first, each kind by name.
        out.sort_by(|a, b| (a.implicit, &a.name, &a.id).cmp(&(b.implicit, &b.name, &b.id)));
        out
    }

    /// The providers with a limit or open connections (what status shows);
    /// cheap when there are none.
    pub fn active(&self, streams: &[Stream]) -> Vec<ProviderView> {
        let limited = self
            .store
            .snapshot()
            .iter()
            .any(|p| p.max_connections.is_some());
        if !limited && self.counts.open.lock().is_empty() {
            return Vec::new();
        }
        self.list(streams)
            .into_iter()
            .filter(|p| p.connections > 0 || p.max_connections.is_some())
            .collect()
    }

    /// One provider's view (explicit, implicit of the catalog, or stored).
    pub fn view(&self, id: &str, streams: &[Stream]) -> Option<ProviderView> {
        self.list(streams).into_iter().find(|v| v.id == id)
    }

    /// Creates an explicit provider (id from the input or the name).
    pub async fn create(&self, input: ProviderInput) -> Result<Provider, ProviderError> {
        let name = input.name.clone().unwrap_or_default();
        check_name(&name)?;
        let id = match &input.id {
            Some(id) => id.clone(),
            None => crate::catalog::slugify(&name),
        };
        check_id(&id)?;
        let max = check_limit(input.max_connections.flatten())?;
        let now = crate::catalog::now_rfc3339();
        self.store
            .mutate(move |records| {
                if records.iter().any(|p| p.id == id) {
                    return Err(ProviderError::Conflict(id));
                }
                let p = Provider {
                    id,
                    name,
                    max_connections: max,
                    implicit: false,
                    created_at: now.clone(),
                    updated_at: now,
                };
                records.push(p.clone());
                Ok(p)
            })
            .await
    }

    /// Changes a provider: an explicit one's name and limit, or an implicit
    /// one's (`known` says whether the catalog has streams of that id).
    pub async fn update(
        &self,
        id: &str,
        input: ProviderInput,
        streams: &[Stream],
    ) -> Result<Provider, ProviderError> {
        if let Some(body_id) = &input.id {
            if body_id != id {
                return Err(ProviderError::Invalid(format!(
                    "id in the body ('{body_id}') differs from the path ('{id}')"
                )));
            }
        }
        if let Some(n) = &input.name {
            check_name(n)?;
        }
        let max = match input.max_connections {
            Some(m) => Some(check_limit(m)?),
            None => None,
        };
        // An implicit provider not stored yet is made from the catalog.
        let implicit_host = streams
            .iter()
            .filter(|s| s.provider.is_none())
            .filter_map(|s| key_of(&s.url))
            .find(|k| k.id() == id)
            .map(|k| k.host_port());
        let (id, name, now) = (id.to_string(), input.name, crate::catalog::now_rfc3339());
        self.store
            .mutate(move |records| {
                if let Some(p) = records.iter_mut().find(|p| p.id == id) {
                    if let Some(n) = name {
                        p.name = n;
                    }
                    if let Some(m) = max {
                        p.max_connections = m;
                    }
                    p.updated_at = now;
                    return Ok(p.clone());
                }
                let host = implicit_host.ok_or_else(|| ProviderError::NotFound(id.clone()))?;
                let p = Provider {
                    id,
                    name: name.unwrap_or(host),
                    max_connections: max.flatten(),
                    implicit: true,
                    created_at: now.clone(),
                    updated_at: now,
                };
                records.push(p.clone());
                Ok(p)
            })
            .await
    }

    /// Deletes an explicit provider no stream uses, or the stored limit of
    /// an implicit one (it has none again).
    pub async fn delete(&self, id: &str, streams: &[Stream]) -> Result<(), ProviderError> {
        let users = streams
            .iter()
            .filter(|s| s.provider.as_deref() == Some(id))
            .count();
        let id = id.to_string();
        self.store
            .mutate(move |records| {
                let p = records
                    .iter()
                    .find(|p| p.id == id)
                    .ok_or_else(|| ProviderError::NotFound(id.clone()))?;
                if !p.implicit && users > 0 {
                    return Err(ProviderError::InUse(id, users));
                }
                records.retain(|p| p.id != id);
                Ok(())
            })
            .await
    }

    /// The provider an import names (`provider` as an id, or an object):
    /// an id must exist; an object creates the provider or updates the
    /// name and limit it gives. Returns the id.
    pub async fn for_import(&self, spec: ImportProvider) -> Result<String, ProviderError> {
        match spec {
            ImportProvider::Id(id) => {
                if self.exists(&id) {
                    Ok(id)
                } else {
                    Err(ProviderError::NotFound(id))
                }
            }
            ImportProvider::Spec(input) => {
                let id = input
                    .id
                    .clone()
                    .ok_or_else(|| ProviderError::Invalid("provider.id is required".into()))?;
                if self.exists(&id) {
                    self.update(&id, input, &[]).await.map(|p| p.id)
                } else {
                    self.create(input).await.map(|p| p.id)
                }
            }
        }
    }
}

/// `provider` of an M3U import: an id, or `{id, name, maxConnections}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ImportProvider {
    Id(String),
    Spec(ProviderInput),
}

fn check_id(id: &str) -> Result<(), ProviderError> {
    if !crate::catalog::valid_id(id) {
        return Err(ProviderError::Invalid(
            "id must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'".into(),
        ));
    }
    if id.starts_with(IMPLICIT_PREFIX) {
        return Err(ProviderError::Invalid(format!(
            "ids starting with '{IMPLICIT_PREFIX}' are those of implicit providers"
        )));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), ProviderError> {
    if name.trim().is_empty()
        || name.chars().count() > crate::catalog::MAX_NAME_LEN
        || name.chars().any(|c| c.is_control())
    {
        return Err(ProviderError::Invalid(format!(
            "name must be 1-{} printable characters",
            crate::catalog::MAX_NAME_LEN
        )));
    }
    Ok(())
}

fn check_limit(max: Option<u32>) -> Result<Option<u32>, ProviderError> {
    match max {
        Some(m) if !(1..=MAX_CONNECTIONS_LIMIT).contains(&m) => Err(ProviderError::Invalid(
            format!("maxConnections must be 1-{MAX_CONNECTIONS_LIMIT}, or null for no limit"),
        )),
        m => Ok(m),
    }
}

#[cfg(test)]
mod tests;
