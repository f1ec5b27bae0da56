//! The slots the pool hands out, each given back when dropped: a channel
//! or viewer slot, an encoder or remux permit, a client's session, and a
//! waiter's place in the queue.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::Pool;
use crate::media::Mode;

#[derive(Debug, Clone, Copy)]
pub(super) enum SlotKind {
    Channel,
    Viewer,
}

/// A channel or viewer slot; dropping it frees it.
#[must_use]
pub struct Slot {
    pub(super) pool: Arc<Pool>,
    pub(super) kind: SlotKind,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = self.pool.state.lock();
        match self.kind {
            SlotKind::Channel => st.channels -= 1,
            SlotKind::Viewer => st.viewers -= 1,
        }
    }
}

/// A running encoder (transcode rendition) or remux rendition slot;
/// dropping it frees the slot.
#[must_use]
pub struct Permit {
    pub(super) pool: Arc<Pool>,
    pub(super) mode: Mode,
}

impl Permit {
    pub fn mode(&self) -> Mode {
        self.mode
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.pool.release(self.mode);
    }
}

/// One of a client's sessions; dropping it frees it.
#[must_use]
pub struct ClientSlot {
    pub(super) pool: Arc<Pool>,
    pub(super) ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut st = self.pool.state.lock();
        if let Some(n) = st.clients.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                st.clients.remove(&self.ip);
            }
        }
    }
}

/// Removes an abandoned waiter, or returns a slot granted to nobody.
pub(super) struct WaitGuard {
    pub(super) pool: Arc<Pool>,
    pub(super) id: u64,
    pub(super) mode: Mode,
    pub(super) rx: Option<oneshot::Receiver<()>>,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        let mut st = self.pool.state.lock();
        if let Some(pos) = st.queue.iter().position(|w| w.id == self.id) {
            st.queue.remove(pos);
            return;
        }
        drop(st);
        // Granted under the lock before we gave up: pass the slot on.
        if rx.try_recv().is_ok() {
            self.pool.release(self.mode);
        }
    }
}
