//! A profile mapped onto each encoder's own properties: bitrate, VBV
//! (buffer), constrained baseline (no B-frames, CAVLC where it is a
//! switch), level, keyframe interval and low-latency tuning. The profile
//! itself (and the level, where the element has no property for it) is
//! also asked of the encoder through the caps after it.

use gst::prelude::*;

use crate::profiles::Profile;

/// (property, value as `gst-launch` would write it) for `element` (a
/// factory name) at `profile`, output rate `fps_n/fps_d`.
pub fn settings(
    element: &str,
    profile: &Profile,
    fps_n: i32,
    fps_d: i32,
) -> Vec<(&'static str, String)> {
    let kbps = profile.video_bitrate;
    let gop = profile.keyframe_interval(fps_n, fps_d);
    // VBV / CPB size in kbit from the buffer length in ms.
    let vbv_kbit = (kbps as u64 * profile.vbv_buffer_ms as u64 / 1000).max(1);
    let s = |v: &dyn ToString| v.to_string();
    match element {
        "x264enc" => vec![
            ("bitrate", s(&kbps)),
            ("vbv-buf-capacity", s(&profile.vbv_buffer_ms)),
            ("speed-preset", profile.preset.clone()),
            ("tune", "zerolatency".into()),
            ("bframes", "0".into()),
            ("key-int-max", s(&gop)),
            ("option-string", format!("level={}:scenecut=0", profile.level)),
        ],
        "nvh264enc" => vec![
            ("bitrate", s(&kbps)),
            ("max-bitrate", s(&kbps)),
            ("vbv-buffer-size", s(&vbv_kbit)),
            ("rc-mode", "cbr".into()),
            ("gop-size", s(&gop)),
            ("bframes", "0".into()),
            ("zerolatency", "true".into()),
            ("preset", "low-latency-hq".into()),
        ],
        "vah264enc" => vec![
            ("bitrate", s(&kbps)),
            ("cpb-size", s(&vbv_kbit)),
            ("rate-control", "cbr".into()),
            ("key-int-max", s(&gop)),
            ("b-frames", "0".into()),
            ("cabac", "false".into()),
            ("target-usage", "7".into()),
        ],
        "qsvh264enc" => vec![
            ("bitrate", s(&kbps)),
            ("max-bitrate", s(&kbps)),
            ("rate-control", "cbr".into()),
            ("gop-size", s(&gop)),
            ("b-frames", "0".into()),
            ("cabac", "off".into()),
            ("target-usage", "7".into()),
        ],
        "vaapih264enc" => vec![
            ("bitrate", s(&kbps)),
            ("cpb-length", s(&profile.vbv_buffer_ms)),
            ("rate-control", "cbr".into()),
            ("keyframe-period", s(&gop)),
            ("max-bframes", "0".into()),
            ("cabac", "false".into()),
            ("quality-level", "7".into()),
        ],
        "v4l2h264enc" => vec![(
            "extra-controls",
            format!(
                "controls,video_bitrate={},video_bitrate_mode=1,h264_i_frame_period={gop},h264_profile=1,h264_level={},repeat_sequence_header=1",
                kbps as u64 * 1000,
                v4l2_level(&profile.level),
            ),
        )],
        _ => Vec::new(),
    }
}

/// The V4L2 H.264 level control's value for a level name.
fn v4l2_level(level: &str) -> u32 {
    const ORDER: &[&str] = &[
        "1", "1b", "1.1", "1.2", "1.3", "2", "2.1", "2.2", "3", "3.1", "3.2", "4", "4.1", "4.2",
        "5", "5.1", "5.2",
    ];
    let l = level.strip_suffix(".0").unwrap_or(level);
    ORDER.iter().position(|x| *x == l).unwrap_or(9) as u32
}

/// The keyframe-interval setting alone, for when the output rate is known.
pub fn keyframe_setting(
    element: &str,
    profile: &Profile,
    fps_n: i32,
    fps_d: i32,
) -> Option<(&'static str, String)> {
    settings(element, profile, fps_n, fps_d)
        .into_iter()
        .find(|(n, _)| matches!(*n, "key-int-max" | "gop-size" | "keyframe-period"))
}

/// The element inside `el` (or `el`) made by `factory`.
pub fn configured(el: &gst::Element, factory: &str) -> Option<gst::Element> {
    target(el, factory)
}

/// The element that takes the settings: `el` itself, or inside a bin the
/// child made by `factory`.
fn target(el: &gst::Element, factory: &str) -> Option<gst::Element> {
    let is = |e: &gst::Element| e.factory().is_some_and(|f| f.name() == factory);
    if is(el) {
        return Some(el.clone());
    }
    let bin = el.downcast_ref::<gst::Bin>()?;
    bin.iterate_recurse().into_iter().flatten().find(is)
}

/// Sets the profile on `el` (a `factory` element, or a bin holding one).
/// Returns the properties it could not set, each with the reason.
pub fn apply(
    el: &gst::Element,
    factory: &str,
    profile: &Profile,
    fps_n: i32,
    fps_d: i32,
) -> Vec<String> {
    let Some(target) = target(el, factory) else {
        return vec![format!("no {factory} element to configure")];
    };
    let mut failed = Vec::new();
    for (name, value) in settings(factory, profile, fps_n, fps_d) {
        if let Err(e) = set(&target, name, &value) {
            tracing::warn!(element = factory, property = name, value = %value, error = %e, "encoder property not set");
            failed.push(format!("{name}: {e}"));
        }
    }
    failed
}

/// Sets one property from its text form, checking it exists and parses.
pub fn set(el: &gst::Element, name: &str, value: &str) -> Result<(), String> {
    let pspec = el
        .find_property(name)
        .ok_or_else(|| "no such property".to_string())?;
    let v = gst::glib::Value::deserialize_with_pspec(value, &pspec)
        .map_err(|_| format!("'{value}' is not a valid {}", pspec.value_type().name()))?;
    el.set_property_from_value(name, &v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Profile {
        crate::profiles::Profiles::builtin()
            .get("high")
            .cloned()
            .unwrap()
    }

    /// Every candidate's mapping against the element's real properties,
    /// read through the registry; skipped for plugins not installed here.
    #[test]
    fn every_mapping_matches_the_elements_real_properties() {
        gst::init().unwrap();
        let p = profile();
        let mut checked = 0;
        for c in super::super::encoder_candidates() {
            let map = settings(&c.element, &p, 30, 1);
            assert!(!map.is_empty(), "{} has no mapping", c.element);
            let Some(factory) = gst::ElementFactory::find(&c.element) else {
                eprintln!("skipped {}: its plugin is not installed here", c.element);
                continue;
            };
            let el = factory.create().build().unwrap();
            for (name, value) in &map {
                set(&el, name, value)
                    .unwrap_or_else(|e| panic!("{}.{name}={value}: {e}", c.element));
            }
            assert!(apply(&el, &c.element, &p, 30, 1).is_empty());
            checked += 1;
        }
        assert!(checked >= 1, "x264enc at least must be installed");
    }

    #[test]
    fn x264_gets_the_profile_values() {
        gst::init().unwrap();
        if gst::ElementFactory::find("x264enc").is_none() {
            eprintln!("skipped: x264enc is not installed");
            return;
        }
        let el = gst::ElementFactory::make("x264enc").build().unwrap();
        let p = profile();
        assert!(apply(&el, "x264enc", &p, 25, 1).is_empty());
        assert_eq!(el.property::<u32>("bitrate"), 5000);
        assert_eq!(el.property::<u32>("vbv-buf-capacity"), p.vbv_buffer_ms);
        assert_eq!(el.property::<u32>("key-int-max"), 50);
        assert_eq!(el.property::<u32>("bframes"), 0);
        assert_eq!(
            el.property::<String>("option-string"),
            "level=4.0:scenecut=0"
        );
    }

    #[test]
    fn hardware_mappings_carry_the_profile() {
        let p = profile();
        let find = |el: &str, name: &str| {
            settings(el, &p, 30, 1)
                .into_iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v)
        };
        assert_eq!(find("vah264enc", "bitrate").as_deref(), Some("5000"));
        assert_eq!(find("vah264enc", "cpb-size").as_deref(), Some("5000"));
        assert_eq!(find("nvh264enc", "gop-size").as_deref(), Some("60"));
        assert_eq!(find("qsvh264enc", "b-frames").as_deref(), Some("0"));
        assert_eq!(
            find("vaapih264enc", "keyframe-period").as_deref(),
            Some("60")
        );
        let v4l2 = find("v4l2h264enc", "extra-controls").unwrap();
        assert!(v4l2.contains("video_bitrate=5000000"), "{v4l2}");
        assert!(v4l2.contains("h264_level=11"), "{v4l2}");
        assert!(v4l2.contains("h264_i_frame_period=60"), "{v4l2}");
    }

    #[test]
    fn unknown_properties_are_refused() {
        gst::init().unwrap();
        let el = gst::ElementFactory::make("identity").build().unwrap();
        assert!(set(&el, "no-such-thing", "1").is_err());
        assert!(set(&el, "sync", "maybe").is_err());
        assert!(set(&el, "sync", "true").is_ok());
    }
}
