use super::*;

#[test]
fn every_hardware_encoder_comes_before_x264() {
    let list = encoder_candidates();
    assert_eq!(list.last().unwrap().name, X264);
    let names: Vec<_> = list.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["nvenc", "va", "qsv", "vaapi", "v4l2", "x264"]);
    for n in &names {
        assert!(NAMES.contains(n));
    }
    assert!(list[..5].iter().all(Candidate::hardware));
}

fn table_with(available: &[(&str, Kind)]) -> Encoders {
    let probed = encoder_candidates()
        .into_iter()
        .map(|c| (c, Kind::Encoder))
        .chain(decoder_candidates().into_iter().map(|c| (c, Kind::Decoder)))
        .map(|(c, kind)| Probed {
            available: available.contains(&(c.name.as_str(), kind)),
            name: c.name,
            element: c.element,
            kind,
            reason: None,
            fix: None,
        })
        .collect();
    Encoders {
        encoders: encoder_candidates(),
        probed: RwLock::new(probed),
        failed: Mutex::new(BTreeMap::new()),
        retry: RwLock::new(Duration::from_secs(600)),
        fallbacks: Mutex::new(BTreeMap::new()),
        probe_took: Duration::ZERO,
        preferred_decoder: RwLock::new(None),
    }
}

#[test]
fn auto_takes_the_first_working_hardware_encoder_and_its_decoder() {
    let t = table_with(&[
        ("va", Kind::Encoder),
        ("va", Kind::Decoder),
        ("v4l2", Kind::Encoder),
        ("x264", Kind::Encoder),
    ]);
    let names = |v: Vec<Candidate>| v.into_iter().map(|c| c.name).collect::<Vec<_>>();
    assert_eq!(names(t.order(AUTO)), ["va", "v4l2", "x264"]);
    assert_eq!(names(t.order("nvenc")), ["x264"]);
    assert_eq!(names(t.order("v4l2")), ["v4l2", "x264"]);
    assert_eq!(t.hardware_decoder(&[AUTO]).as_deref(), Some("vah264dec"));
    // v4l2 has no working decoder here; x264 needs none.
    assert_eq!(t.hardware_decoder(&["v4l2", "x264"]), None);
    // A failed encoder is left alone, and the next one takes over.
    t.fell_back("va", "v4l2");
    assert_eq!(names(t.order(AUTO)), ["v4l2", "x264"]);
    assert_eq!(t.fallbacks(), [(("va".into(), "v4l2".into()), 1)]);
    assert!(!t.satisfied("nvenc") && t.satisfied("va") && t.satisfied(AUTO));
}

#[test]
fn a_failed_encoder_is_tried_again_after_the_retry_delay() {
    let t = table_with(&[("va", Kind::Encoder), ("x264", Kind::Encoder)]);
    t.set_retry(Duration::ZERO);
    t.fell_back("va", "x264");
    assert!(t.usable("va"));
    t.set_retry(Duration::from_secs(600));
    t.fell_back("va", "x264");
    assert!(!t.usable("va"));
}

#[test]
fn only_h264_is_expected_on_the_preferred_hardware_decoder() {
    gst::init().unwrap();
    let t = table_with(&[("va", Kind::Encoder), ("va", Kind::Decoder)]);
    let h264 = gst::Caps::builder("video/x-h264").build();
    let mpeg2 = gst::Caps::builder("video/mpeg").build();
    assert_eq!(t.expected_decoder(Some(&h264)), None, "none preferred yet");
    *t.preferred_decoder.write() = Some("vah264dec".into());
    assert_eq!(
        t.expected_decoder(Some(&h264)).as_deref(),
        Some("vah264dec")
    );
    assert_eq!(t.expected_decoder(Some(&mpeg2)), None);
    assert_eq!(t.expected_decoder(None), None);
}
