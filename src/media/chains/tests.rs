use super::*;

fn h264(w: i32, h: i32, fps: Option<(i32, i32)>) -> gst::Caps {
    let mut b = gst::Caps::builder("video/x-h264")
        .field("width", w)
        .field("height", h);
    if let Some((n, d)) = fps {
        b = b.field("framerate", gst::Fraction::new(n, d));
    }
    b.build()
}

#[test]
fn one_decoder_thread_up_to_1080p30() {
    gst::init().unwrap();
    let threads = |c: gst::Caps| decoder_threads(Some(c.as_ref()));
    assert_eq!(threads(h264(1920, 1080, Some((30, 1)))), 1);
    assert_eq!(threads(h264(1920, 1080, Some((30000, 1001)))), 1);
    assert_eq!(threads(h264(1280, 720, Some((50, 1)))), 1);
    assert_eq!(threads(h264(1920, 1080, Some((50, 1)))), 0);
    assert_eq!(threads(h264(3840, 2160, Some((25, 1)))), 0);
    // Nothing stated: the decoder chooses.
    assert_eq!(threads(h264(1920, 1080, None)), 0);
    assert_eq!(threads(h264(1920, 1080, Some((0, 1)))), 0);
    assert_eq!(decoder_threads(None), 0);
}
