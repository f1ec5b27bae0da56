//! The GStreamer elements sluice's pipelines are built from, in one place:
//! the pipeline builder makes only these, and the health check reports any
//! that the installed plugins lack. Packaging maps each to its Debian package.

/// (element factory, Debian package that ships it).
pub const REQUIRED_ELEMENTS: &[(&str, &str)] = &[
    ("videotestsrc", "gstreamer1.0-plugins-base"),
    ("audiotestsrc", "gstreamer1.0-plugins-base"),
    ("urisourcebin", "gstreamer1.0-plugins-base"),
    ("parsebin", "gstreamer1.0-plugins-base"),
    ("decodebin", "gstreamer1.0-plugins-base"),
    ("queue", "libgstreamer1.0-0"),
    ("capsfilter", "libgstreamer1.0-0"),
    ("fakesink", "libgstreamer1.0-0"),
    ("videoconvert", "gstreamer1.0-plugins-base"),
    ("videoscale", "gstreamer1.0-plugins-base"),
    ("videorate", "gstreamer1.0-plugins-base"),
    ("audioconvert", "gstreamer1.0-plugins-base"),
    ("audioresample", "gstreamer1.0-plugins-base"),
    ("appsink", "gstreamer1.0-plugins-base"),
    ("deinterlace", "gstreamer1.0-plugins-good"),
    ("mp4mux", "gstreamer1.0-plugins-good"),
    ("mpegtsmux", "gstreamer1.0-plugins-bad"),
    ("h264parse", "gstreamer1.0-plugins-bad"),
    ("aacparse", "gstreamer1.0-plugins-good"),
    ("x264enc", "gstreamer1.0-plugins-ugly"),
    ("avenc_aac", "gstreamer1.0-libav"),
    ("avdec_h264", "gstreamer1.0-libav"),
    ("avdec_aac", "gstreamer1.0-libav"),
    ("souphttpsrc", "gstreamer1.0-plugins-good"),
    ("hlsdemux", "gstreamer1.0-plugins-bad"),
    ("tsdemux", "gstreamer1.0-plugins-bad"),
    ("qtdemux", "gstreamer1.0-plugins-good"),
];

/// Required elements the running GStreamer installation does not provide.
pub fn missing_elements() -> Vec<&'static str> {
    REQUIRED_ELEMENTS
        .iter()
        .filter(|(name, _)| gst::ElementFactory::find(name).is_none())
        .map(|(name, _)| *name)
        .collect()
}

/// Loads the plugin behind every required element now, at start-up, so the
/// first viewer does not wait for shared libraries (libav, x264, the
/// demuxers) to be opened and initialised by their first pipeline.
pub fn preload() {
    use gst::prelude::*;
    for (name, _) in REQUIRED_ELEMENTS {
        if let Some(factory) = gst::ElementFactory::find(name) {
            if let Err(e) = factory.load() {
                tracing::warn!(element = name, error = %e, "could not load GStreamer plugin");
            }
        }
    }
}
