//! The rendition's pace window.

use super::*;

#[test]
fn pace_is_measured_over_the_window_and_counts_pictures_against_the_rate() {
    let profile = crate::profiles::Profiles::builtin()
        .get("medium")
        .unwrap()
        .clone();
    let config = FanoutConfig {
        buffer: Duration::from_secs(4),
        stall: Duration::from_secs(15),
    };
    let key = |mode| RenditionKey {
        mode,
        quality: "medium".into(),
    };
    let r = Rendition::new(key(Mode::Transcode), profile.clone(), None, config);
    r.counters.set_frame_rate(30.0);
    // Before the encoder ran long ago: 100 pictures, then a pause.
    for i in 0..100u64 {
        r.counters
            .note_encoded(gst::ClockTime::from_mseconds(i * 33), 10_000_000);
    }
    r.sample();
    assert_eq!(r.pace(), None, "one sample is no window");
    std::thread::sleep(Duration::from_millis(1100));
    // In the window: 15 of 33 pictures a second made (a full queue
    // dropped the rest), each taking 40 ms of the encoder's time.
    let t0 = 100 * 33;
    for i in 0..17u64 {
        r.counters
            .note_encoded(gst::ClockTime::from_mseconds(t0 + i * 66), 40_000_000);
    }
    r.sample();
    let p = r.pace().expect("a window of over a second");
    let secs = p.span.as_secs_f64();
    assert!((1.09..1.5).contains(&secs), "{secs}");
    assert!((p.fps - 17.0 / secs).abs() < 0.01, "{p:?}");
    // 17 pictures in 0.68 s of work: 25 a second, under the 30 meant.
    let encode = p.encode_speed.unwrap();
    assert!((encode - 25.0 / 30.0).abs() < 0.01, "{p:?}");
    // Media time carried: from the last picture before the window
    // (99 x 33 ms) to the last in it; about half the pictures meant.
    let media_s = (t0 + 16 * 66 - 99 * 33) as f64 / 1000.0;
    assert!((p.frame_share.unwrap() - 17.0 / media_s / 30.0).abs() < 0.01);
    // Status shows the window, not the average since the start.
    let v = r.view(None);
    assert_eq!(v.encode_speed, Some((encode * 100.0).round() / 100.0));
    assert!((v.fps - 17.0 / secs).abs() < 0.01, "{}", v.fps);

    // A remux has no encoder to judge.
    let remux = Rendition::new(key(Mode::Remux), profile, None, config);
    remux
        .counters
        .note_encoded(gst::ClockTime::from_mseconds(0), 0);
    remux.sample();
    std::thread::sleep(Duration::from_millis(1050));
    remux
        .counters
        .note_encoded(gst::ClockTime::from_mseconds(1000), 0);
    remux.sample();
    let p = remux.pace().unwrap();
    assert_eq!(p.encode_speed, None);
    assert!((p.speed - 1.0 / p.span.as_secs_f64()).abs() < 0.01, "{p:?}");
}
