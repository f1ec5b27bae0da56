use super::*;

#[test]
fn builtin_profiles_match_the_spec() {
    let p = Profiles::builtin();
    assert_eq!(p.names(), vec!["low", "medium", "high"]);
    let low = p.get("low").unwrap();
    assert_eq!((low.width, low.height, low.video_bitrate), (720, 480, 1000));
    assert_eq!(
        (low.preset.as_str(), low.level.as_str()),
        ("ultrafast", "3.0")
    );
    assert_eq!(low.audio_bitrate, 96);
    let med = p.get("medium").unwrap();
    assert_eq!(
        (med.width, med.height, med.video_bitrate),
        (1280, 720, 2500)
    );
    assert_eq!(
        (med.preset.as_str(), med.level.as_str()),
        ("veryfast", "3.1")
    );
    let high = p.get("high").unwrap();
    assert_eq!(
        (high.width, high.height, high.video_bitrate),
        (1920, 1080, 5000)
    );
    assert_eq!((high.preset.as_str(), high.level.as_str()), ("fast", "4.0"));
    assert_eq!(p.most_expensive().name, "high");
    assert_eq!(p.one_lower("high").unwrap().name, "medium");
    assert!(p.one_lower("low").is_none());
}

#[test]
fn geometry_keeps_aspect_even_and_never_upscales() {
    let p = Profiles::builtin();
    let low = p.get("low").unwrap();
    assert_eq!(low.output_size(1920, 1080, (1, 1)), (720, 404));
    assert_eq!(low.output_size(640, 360, (1, 1)), (640, 360));
    assert_eq!(low.output_size(641, 361, (1, 1)), (640, 360));
    // 4:3 source fits by height.
    assert_eq!(low.output_size(1440, 1080, (1, 1)), (640, 480));
    // Anamorphic DVD PAL 16:9 (720x576, PAR 64:45) becomes square pixels.
    assert_eq!(low.output_size(720, 576, (64, 45)), (720, 404));
    let high = p.get("high").unwrap();
    assert_eq!(high.output_size(1920, 1080, (1, 1)), (1920, 1080));
    assert_eq!(high.output_framerate(60, 1), (30, 1));
    assert_eq!(high.output_framerate(25, 1), (25, 1));
    assert_eq!(high.output_framerate(30000, 1001), (30000, 1001));
    assert_eq!(high.keyframe_interval(25, 1), 50);
    assert_eq!(high.keyframe_interval(30, 1), 60);
}

#[test]
fn user_profiles_are_accepted_and_ordered() {
    let text = format!(
        "{BUILTIN_PROFILES}\n[mobile]\nwidth = 640\nheight = 360\nvideo_bitrate = 700\n\
         preset = \"ultrafast\"\nlevel = \"3.0\"\naudio_bitrate = 64\n"
    );
    let p = Profiles::parse(&text).unwrap();
    assert_eq!(p.names(), vec!["mobile", "low", "medium", "high"]);
}

#[test]
fn a_profile_may_name_its_encoder() {
    let text = format!(
        "{BUILTIN_PROFILES}\n[gpu]\nwidth = 640\nheight = 360\nvideo_bitrate = 700\n\
         preset = \"ultrafast\"\nlevel = \"3.0\"\naudio_bitrate = 64\nencoder = \"va\"\n"
    );
    let mut p = Profiles::parse(&text).unwrap();
    assert_eq!(p.get("gpu").unwrap().encoder.as_deref(), Some("va"));
    assert_eq!(p.get("low").unwrap().encoder_choice(), "auto");
    p.set_default_encoder("x264");
    assert_eq!(p.get("gpu").unwrap().encoder_choice(), "va");
    assert_eq!(p.get("low").unwrap().encoder_choice(), "x264");
    let err = Profiles::parse(&text.replace("\"va\"", "\"VA API\"")).unwrap_err();
    assert!(err.contains("[gpu]") && err.contains("encoder"), "{err}");
}

#[test]
fn malformed_files_name_the_line_and_reason() {
    let err = Profiles::parse("[low]\nwidth = 720\nheight = \"tall\"\n").unwrap_err();
    assert!(err.starts_with("line 3"), "{err}");
    let err = Profiles::parse("[low]\nwidth = 720\nheight = 480\nvideo_bitrate = 1000\npreset = \"ultrafast\"\nlevel = \"3.0\"\naudio_bitrate = 96\nbogus = 1\n").unwrap_err();
    assert!(err.contains("line 8") && err.contains("bogus"), "{err}");
    let err = Profiles::parse("\n\n[big]\nwidth = 1920\nheight = 1080\nvideo_bitrate = 5000\npreset = \"fast\"\nlevel = \"3.1\"\naudio_bitrate = 128\n").unwrap_err();
    assert!(err.contains("line 3") && err.contains("level 3.1"), "{err}");
    let err = Profiles::parse("[Bad]\nwidth = 720\nheight = 480\nvideo_bitrate = 1000\npreset = \"ultrafast\"\nlevel = \"3.0\"\naudio_bitrate = 96\n").unwrap_err();
    assert!(err.contains("[a-z0-9_-]+"), "{err}");
    let err = Profiles::parse("[low\nwidth=1").unwrap_err();
    assert!(err.starts_with("line 1"), "{err}");
}
