//! When a channel's parts stop: a rendition nobody watches lingers for
//! `CHANNEL_LINGER`, then its branch comes off the running pipeline (the
//! decoders with the last transcode rendition); the last one closes the
//! channel.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::channel::Channel;
use super::rendition::{Rendition, RenditionKey};
use crate::media::chains::Branch;
use crate::media::{EndReason, Mode};

impl Channel {
    /// A request that joined `r` is done joining (it has subscribed, or
    /// failed); an unwatched rendition then starts its linger.
    pub fn unpin(&self, r: &Arc<Rendition>) {
        r.unpin();
        if r.idle() {
            self.linger(&r.key);
        }
    }

    /// Stops the rendition `key` after the linger unless a viewer comes.
    pub(super) fn linger(&self, key: &RenditionKey) {
        let Some(me) = self.me.upgrade() else { return };
        let epoch = match self.state.lock().renditions.get(key) {
            Some(r) => r.epoch.load(Ordering::Acquire),
            None => return,
        };
        let key = key.clone();
        let linger = self.linger;
        let reap = async move {
            tokio::time::sleep(linger).await;
            me.reap(&key, epoch).await;
        };
        self.runtime.spawn(reap);
    }

    async fn reap(self: &Arc<Self>, key: &RenditionKey, epoch: u64) {
        let _build = self.build.lock().await;
        let gone = {
            let mut st = self.state.lock();
            let idle = st
                .renditions
                .get(key)
                .is_some_and(|r| r.idle() && r.epoch.load(Ordering::Acquire) == epoch);
            if st.closed || !idle {
                return;
            }
            // The last rendition closes the channel, unless a request is
            // joining it (it entered under this lock): then the channel
            // stays open for it, and closes when it leaves without a
            // rendition.
            if st.renditions.len() == 1 && self.users.load(Ordering::Acquire) == 0 {
                None
            } else {
                st.renditions.remove(key)
            }
        };
        let Some(r) = gone else {
            tracing::info!(stream_id = %self.stream_id, "channel unwatched: closing it");
            self.stop(EndReason::ClientDisconnect);
            return;
        };
        tracing::info!(stream_id = %self.stream_id, quality = %r.key.quality, mode = r.key.mode.as_str(), "rendition unwatched: stopping it");
        if let Some(owner) = self.owner.upgrade() {
            owner.rendition_gone(&r);
        }
        let Some(running) = self.running.get().cloned() else {
            r.release();
            return;
        };
        let me = self.clone();
        let r2 = r.clone();
        let removed = running
            .build(move |p, _| {
                r2.remove(p);
                me.drop_unused_decoders(p);
                Ok(())
            })
            .await;
        if removed.is_err() {
            r.release();
        }
    }

    /// Takes the decoders down when no transcode rendition is left.
    fn drop_unused_decoders(&self, p: &gst::Pipeline) {
        let taken: Vec<Branch> = {
            let mut st = self.state.lock();
            if st.renditions.keys().any(|k| k.mode == Mode::Transcode) {
                return;
            }
            st.decoders
                .iter_mut()
                .filter_map(|d| d.take().map(|(b, _)| b))
                .collect()
        };
        for b in taken {
            b.remove(p);
        }
    }
}
