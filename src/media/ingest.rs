//! The source side of a pipeline, built as numbered *generations*.
//!
//! A generation is one attempt at reading one URI: `urisourcebin`, a
//! `parsebin` per source pad and a queue per elementary stream, all named
//! `g<N>-…` so that an error posted anywhere inside them can be traced back
//! to the generation (see [`generation_of`]). Each queue's output pad is held
//! at its first buffer until the output side links it: at commit time for
//! the first generation, after a reconnect for later ones (see
//! [`super::reconnect`]).
//!
//! This file builds and removes whole generations; the parts live below
//! it: HTTP sources and HLS playlists in `netsrc`, the parsebins in
//! `parse`, the held streams and their probes in `held`, the bookkeeping
//! they share in `shared`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use gst::prelude::*;

use super::netsrc::{add_hls_generation, configure_network_source, is_hls_playlist};
use super::parse::attach_parsebin;
use super::shared::{element_name, Shared};
use super::source::SourceUri;
use super::MediaError;

/// Where a session's media comes from.
#[derive(Debug, Clone)]
pub struct SourcePlan {
    /// The primary URI, then the backups in the order they are tried.
    pub uris: Vec<SourceUri>,
    /// HTTP headers for HTTP(S)/HLS/DASH sources.
    pub headers: BTreeMap<String, String>,
    /// Bandwidth (kbit/s) adaptive sources (HLS, DASH) choose a variant
    /// for: the highest one whose bitrate fits, else the lowest.
    pub connection_speed_kbps: u64,
    /// Total time a running session may spend reconnecting a dropped live
    /// source; zero disables reconnecting.
    pub reconnect_budget: std::time::Duration,
}

impl SourcePlan {
    /// A plan for one URI with no backups and no reconnecting.
    pub fn single(uri: SourceUri) -> Self {
        SourcePlan {
            uris: vec![uri],
            headers: BTreeMap::new(),
            connection_speed_kbps: 0,
            reconnect_budget: std::time::Duration::ZERO,
        }
    }

    pub fn primary(&self) -> &SourceUri {
        &self.uris[0]
    }
}

/// The generation an object belongs to: the `g<N>-` prefix of its
/// top-level ancestor under the pipeline. Only meaningful while the object
/// is still in the pipeline (call it where the message is posted).
pub fn generation_of(obj: &gst::Object) -> Option<u64> {
    let mut cur = obj.clone();
    loop {
        let parent = cur.parent()?;
        if parent.is::<gst::Pipeline>() {
            break;
        }
        cur = parent;
    }
    let name = cur.name();
    let rest = name.strip_prefix('g')?;
    let digits = rest.split('-').next()?;
    if rest.len() == digits.len() {
        return None;
    }
    digits.parse().ok()
}

/// Builds generation `gen` reading `plan.uris[index]` and brings it to the
/// pipeline's state. Must run off the async runtime.
pub(super) fn add_generation(
    pipeline: &gst::Pipeline,
    shared: &Arc<Shared>,
    plan: &SourcePlan,
    index: usize,
    gen: u64,
) -> Result<(), MediaError> {
    let SourceUri::Uri { uri, .. } = &plan.uris[index] else {
        return Err(MediaError::SourceFailed(
            "a test:// source has nothing to reconnect".into(),
        ));
    };
    shared.source_done.store(false, Ordering::Release);
    shared.parsers_open.store(0, Ordering::Release);
    shared.parsers_silent.store(0, Ordering::Release);
    shared.video_parsers.store(0, Ordering::Release);
    shared.video_declared.store(false, Ordering::Release);
    shared.long_holds.store(false, Ordering::Release);
    shared.source_pads_expected.store(0, Ordering::Release);
    shared.source_pads_seen.store(0, Ordering::Release);
    shared.uri_index.store(index, Ordering::Release);
    shared.generation.store(gen, Ordering::Release);
    if is_hls_playlist(uri) {
        return add_hls_generation(
            pipeline,
            shared,
            &plan.headers,
            plan.connection_speed_kbps,
            uri,
            gen,
        );
    }
    let src = gst::ElementFactory::make("urisourcebin")
        .name(element_name(shared, gen, "source"))
        .property("uri", uri.as_str())
        .build()
        .map_err(|_| {
            MediaError::SourceFailed("GStreamer element 'urisourcebin' is not installed".into())
        })?;
    if plan.connection_speed_kbps > 0 && src.has_property("connection-speed") {
        src.set_property_from_str("connection-speed", &plan.connection_speed_kbps.to_string());
    }
    let headers = plan.headers.clone();
    let weak = Arc::downgrade(shared);
    src.connect("source-setup", false, move |values| {
        if let Ok(el) = values[1].get::<gst::Element>() {
            configure_network_source(&el, &headers);
            // rtspsrc adds its pads one by one and urisourcebin never says
            // it is done: count on the SDP's streams instead.
            if el.factory().is_some_and(|f| f.name() == "rtspsrc") {
                if let Some(sh) = weak.upgrade() {
                    sh.source_pads_expected.store(usize::MAX, Ordering::Release);
                }
                let weak = weak.clone();
                el.connect_no_more_pads(move |el| {
                    if let Some(sh) = weak.upgrade() {
                        if sh.generation.load(Ordering::Acquire) == gen {
                            sh.source_pads_expected
                                .store(el.num_src_pads() as usize, Ordering::Release);
                        }
                        sh.notify.notify_waiters();
                    }
                });
            }
        }
        None
    });
    let weak_pipeline = pipeline.downgrade();
    let sh = shared.clone();
    src.connect_pad_added(move |_, pad| {
        let Some(pipeline) = weak_pipeline.upgrade() else {
            return;
        };
        if sh.generation.load(Ordering::Acquire) != gen {
            return;
        }
        sh.source_pads_seen.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = attach_parsebin(&pipeline, pad, &sh, gen) {
            gst::element_error!(pipeline, gst::CoreError::Negotiation, ("{}", e));
        }
    });
    let sh = shared.clone();
    src.connect_no_more_pads(move |_| {
        if sh.generation.load(Ordering::Acquire) == gen {
            sh.source_done.store(true, Ordering::Release);
        }
        sh.notify.notify_waiters();
    });
    pipeline.add(&src)?;
    shared.remember(gen, &src);
    src.sync_state_with_parent()?;
    Ok(())
}

/// Sets every element of generation `gen` to NULL, unlinks it from the
/// output side and removes it. Must run off the async runtime and off
/// streaming threads.
pub(super) fn remove_generation(pipeline: &gst::Pipeline, shared: &Shared, gen: u64) {
    let elements = shared.take_generation(gen);
    for e in &elements {
        let _ = e.set_state(gst::State::Null);
    }
    for e in &elements {
        if let Some(src) = e.static_pad("src") {
            if let Some(peer) = src.peer() {
                let _ = src.unlink(&peer);
            }
        }
        let _ = pipeline.remove(e);
    }
    shared.pending.lock().retain(|p| p.gen != gen);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_read_from_the_top_level_element() {
        crate::media::init().unwrap();
        let pipeline = gst::Pipeline::new();
        let bin = gst::Bin::builder().name("g12-source3").build();
        let inner = gst::ElementFactory::make("identity")
            .name("source")
            .build()
            .unwrap();
        bin.add(&inner).unwrap();
        pipeline.add(&bin).unwrap();
        let other = gst::ElementFactory::make("identity")
            .name("deinterlace0")
            .build()
            .unwrap();
        pipeline.add(&other).unwrap();
        assert_eq!(generation_of(inner.upcast_ref()), Some(12));
        assert_eq!(generation_of(bin.upcast_ref()), Some(12));
        assert_eq!(generation_of(other.upcast_ref()), None);
        let loose = gst::ElementFactory::make("identity").build().unwrap();
        assert_eq!(generation_of(loose.upcast_ref()), None);
    }
}
