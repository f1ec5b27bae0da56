//! Network sources: the headers and timeouts every HTTP source gets, and
//! HLS playlists, whose source and demuxer are built here rather than by
//! urisourcebin.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use gst::prelude::*;

use super::chains::make;
use super::parse::attach_parsebin;
use super::shared::{element_name, Shared};
use super::MediaError;

/// An HTTP(S) URL whose path names an HLS playlist.
pub(super) fn is_hls_playlist(uri: &str) -> bool {
    let Ok(u) = url::Url::parse(uri) else {
        return false;
    };
    matches!(u.scheme(), "http" | "https") && u.path().to_ascii_lowercase().ends_with(".m3u8")
}

/// HLS playlists get `souphttpsrc ! hlsdemux` built here rather than by
/// urisourcebin: in GStreamer 1.22 urisourcebin only takes the newer
/// `hlsdemux2`, which aborts the whole process on an internal assertion
/// when a live playlist update meets a segment download that failed (a
/// provider's segments answering 404 for a while is enough).
pub(super) fn add_hls_generation(
    pipeline: &gst::Pipeline,
    shared: &Arc<Shared>,
    headers: &BTreeMap<String, String>,
    connection_speed_kbps: u64,
    uri: &str,
    gen: u64,
) -> Result<(), MediaError> {
    let src = make("souphttpsrc")?;
    src.set_property("name", element_name(shared, gen, "source"));
    src.set_property("location", uri);
    configure_network_source(&src, headers);
    let demux = make("hlsdemux")?;
    demux.set_property("name", element_name(shared, gen, "hls"));
    if connection_speed_kbps > 0 {
        demux.set_property_from_str("connection-speed", &connection_speed_kbps.to_string());
    }
    let weak_pipeline = pipeline.downgrade();
    let sh = shared.clone();
    demux.connect_pad_added(move |_, pad| {
        let Some(pipeline) = weak_pipeline.upgrade() else {
            return;
        };
        if sh.generation.load(Ordering::Acquire) != gen {
            return;
        }
        if let Err(e) = attach_parsebin(&pipeline, pad, &sh, gen) {
            gst::element_error!(pipeline, gst::CoreError::Negotiation, ("{}", e));
        }
    });
    let sh = shared.clone();
    demux.connect_no_more_pads(move |_| {
        if sh.generation.load(Ordering::Acquire) == gen {
            sh.source_done.store(true, Ordering::Release);
        }
        sh.notify.notify_waiters();
    });
    pipeline.add_many([&src, &demux])?;
    shared.remember(gen, &src);
    shared.remember(gen, &demux);
    src.link(&demux)?;
    demux.sync_state_with_parent()?;
    src.sync_state_with_parent()?;
    Ok(())
}

/// Headers and timeouts for HTTP sources (souphttpsrc and friends).
pub(super) fn configure_network_source(el: &gst::Element, headers: &BTreeMap<String, String>) {
    if el.has_property("timeout") && el.property_type("timeout") == Some(u32::static_type()) {
        el.set_property("timeout", 15u32);
    }
    if headers.is_empty() {
        return;
    }
    if el.has_property("extra-headers") {
        let mut s = gst::Structure::new_empty("extra-headers");
        for (k, v) in headers {
            if k.eq_ignore_ascii_case("user-agent") && el.has_property("user-agent") {
                el.set_property("user-agent", v.as_str());
            } else {
                s.set(k.as_str(), v.as_str());
            }
        }
        el.set_property("extra-headers", s);
    } else if el.has_property("user-agent") {
        if let Some((_, ua)) = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("user-agent"))
        {
            el.set_property("user-agent", ua.as_str());
        }
    }
}
