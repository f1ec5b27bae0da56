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

mod edit;
pub mod implicit;
mod lease;
pub mod store;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::catalog::Stream;
pub use edit::{ImportProvider, ProviderInput};
pub use implicit::{key_of, ImplicitKey, IMPLICIT_PREFIX};
pub use lease::{ProviderBusy, ProviderLease};
pub use store::{Provider, ProviderError, PROVIDERS_FILE};

use lease::Counts;

/// Largest `maxConnections` accepted.
pub const MAX_CONNECTIONS_LIMIT: u32 = 10_000;

/// Which provider a connection counts against, with its limit now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub id: String,
    pub name: String,
    pub limit: Option<u32>,
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
        Ok(ProviderLease::held(self.counts.clone(), a.id))
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
}

#[cfg(test)]
mod tests;
