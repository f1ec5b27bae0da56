//! A counted upstream connection: the lease that holds it and the counts
//! it is taken from.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

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
pub(super) struct Counts {
    pub(super) open: Mutex<HashMap<String, usize>>,
    /// Of those, connections being closed (their lease is marked closing).
    pub(super) closing: Mutex<HashMap<String, usize>>,
    pub(super) released: tokio::sync::Notify,
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
    /// A lease of one connection of provider `id`, already counted in `counts`.
    pub(super) fn held(counts: Arc<Counts>, id: String) -> ProviderLease {
        ProviderLease {
            held: Some((counts, id)),
            closing: Default::default(),
        }
    }

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
