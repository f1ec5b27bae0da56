//! Where a rendition's pictures live between its decoder and its encoder.
//! When both are VA (`vah264dec`, `vah264enc`) the pictures can stay in
//! GPU memory: the encoder branch deinterlaces, drops and scales with VA
//! filters (`vadeinterlace`, `vapostproc`) and the encoder takes
//! `video/x-raw(memory:VAMemory)`. Any other pair goes through system
//! memory (`deinterlace`, `videoscale`, `videoconvert`), and a hardware
//! element on either side says so in its status name.
//!
//! ```text
//! GPU:    queue -> vadeinterlace -> videorate -> vapostproc -> capsfilter(VAMemory) -> vah264enc
//! system: queue -> deinterlace -> videoscale -> videorate -> videoconvert -> capsfilter -> encoder
//! ```
//!
//! Pure decisions, no pipeline objects: the branch is built in
//! `media::encode`, and the names are given from what was negotiated.

use super::{Candidate, Encoders};

/// Caps feature of pictures in VA surfaces.
pub const VA_MEMORY: &str = "memory:VAMemory";
/// What status adds to a hardware element fed from, or feeding, system memory.
pub const SYSTEM_MEMORY_NOTE: &str = " (system memory)";

const VA_DECODER: &str = "vah264dec";
const VA_ENCODER: &str = "vah264enc";
const VA_FILTERS: [&str; 3] = ["vadeinterlace", "videorate", "vapostproc"];
const SYSTEM_FILTERS: [&str; 4] = ["deinterlace", "videoscale", "videorate", "videoconvert"];

/// The encoder branch's filters and the memory its pictures are in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPath {
    /// Factory names between the branch's queue and the encoder, in order.
    pub filters: Vec<&'static str>,
    /// Caps feature of the pictures the encoder takes; None: system memory.
    pub feature: Option<&'static str>,
    /// Why pictures pass through system memory on the way to a hardware
    /// encoder, or from a hardware decoder (None when they do not, or when
    /// both ends are software).
    pub system_step: Option<String>,
}

impl MemoryPath {
    pub fn in_gpu(&self) -> bool {
        self.feature.is_some()
    }
}

/// The path for pictures decoded by `decoder` (its factory name, None for
/// a software or unknown decoder) on their way to `encoder`; `exists` says
/// whether a factory is installed.
pub fn plan(
    decoder: Option<&str>,
    encoder: &Candidate,
    exists: impl Fn(&str) -> bool,
) -> MemoryPath {
    let system = |why: Option<String>| MemoryPath {
        filters: SYSTEM_FILTERS.to_vec(),
        feature: None,
        system_step: why,
    };
    let hw_decoder = decoder.filter(|d| Encoders::is_hardware_decoder(d));
    let hw_encoder = encoder.hardware() && encoder.maker.is_none();
    if !hw_encoder {
        return system(
            hw_decoder.map(|d| {
                format!("{d} hands its pictures to the software encoder in system memory")
            }),
        );
    }
    if encoder.element != VA_ENCODER {
        return system(Some(format!(
            "{} takes its pictures from system memory here",
            encoder.element
        )));
    }
    match hw_decoder {
        Some(VA_DECODER) => match VA_FILTERS.iter().find(|f| !exists(f)) {
            None => MemoryPath {
                filters: VA_FILTERS.to_vec(),
                feature: Some(VA_MEMORY),
                system_step: None,
            },
            Some(missing) => system(Some(format!(
                "{missing} is not installed: scaling runs in system memory"
            ))),
        },
        Some(d) => system(Some(format!("{d} and {VA_ENCODER} share no GPU memory"))),
        None => system(Some(format!(
            "the source is decoded in software before {VA_ENCODER}"
        ))),
    }
}

/// Whether caps carry pictures in GPU memory (a memory feature other than
/// system memory).
pub fn gpu_caps(caps: &gst::CapsRef) -> bool {
    caps.features(0).is_some_and(|f| {
        f.iter()
            .any(|name| name.starts_with("memory:") && name != "memory:SystemMemory")
    })
}

/// Status names of a rendition's decoder and encoder. `in_gpu`: the
/// encoder's input was negotiated in GPU memory (None before it was, when
/// the planned path counts). A hardware element says `(system memory)`
/// when pictures pass through system memory at its side; a custom encoder
/// goes by its own name.
pub fn status_names(
    decoder: Option<&str>,
    encoder: &Candidate,
    planned: &MemoryPath,
    in_gpu: Option<bool>,
) -> (Option<String>, String) {
    let gpu = in_gpu.unwrap_or(planned.in_gpu());
    let note = if gpu { "" } else { SYSTEM_MEMORY_NOTE };
    let enc = if encoder.maker.is_some() {
        encoder.name.clone()
    } else if encoder.hardware() {
        format!("{}{note}", encoder.element)
    } else {
        encoder.element.clone()
    };
    let dec = decoder.map(|d| {
        if Encoders::is_hardware_decoder(d) {
            format!("{d}{note}")
        } else {
            d.to_string()
        }
    });
    (dec, enc)
}

#[cfg(test)]
mod tests {
    use super::super::{decoder_candidates, encoder_candidates};
    use super::*;

    fn encoder(name: &str) -> Candidate {
        encoder_candidates()
            .into_iter()
            .find(|c| c.name == name)
            .unwrap()
    }

    fn all(_: &str) -> bool {
        true
    }

    #[test]
    fn only_the_va_pair_keeps_pictures_in_gpu_memory() {
        let va = plan(Some("vah264dec"), &encoder("va"), all);
        assert_eq!(va.filters, ["vadeinterlace", "videorate", "vapostproc"]);
        assert_eq!(va.feature, Some("memory:VAMemory"));
        assert_eq!(va.system_step, None);
        assert!(va.in_gpu());

        let system = ["deinterlace", "videoscale", "videorate", "videoconvert"];
        // Every other pair: system memory, and the reason.
        let decoders: Vec<Option<String>> = (decoder_candidates().into_iter())
            .map(|d| Some(d.element))
            .chain([Some("avdec_h264".into()), None])
            .collect();
        for enc in encoder_candidates() {
            for dec in &decoders {
                let p = plan(dec.as_deref(), &enc, all);
                if enc.element == "vah264enc" && dec.as_deref() == Some("vah264dec") {
                    continue;
                }
                assert_eq!(p.filters, system, "{dec:?} -> {}", enc.element);
                assert_eq!(p.feature, None, "{dec:?} -> {}", enc.element);
                let hw_dec = dec.as_deref().is_some_and(Encoders::is_hardware_decoder);
                assert_eq!(
                    p.system_step.is_some(),
                    enc.hardware() || hw_dec,
                    "{dec:?} -> {}: {:?}",
                    enc.element,
                    p.system_step
                );
            }
        }
        let soft = plan(Some("avdec_h264"), &encoder("va"), all);
        assert!(soft.system_step.unwrap().contains("software"));
        let cross = plan(Some("nvh264dec"), &encoder("va"), all);
        assert!(cross.system_step.unwrap().contains("nvh264dec"));
    }

    #[test]
    fn without_the_va_filters_the_va_pair_goes_through_system_memory() {
        for missing in ["vapostproc", "vadeinterlace"] {
            let p = plan(Some("vah264dec"), &encoder("va"), |f| f != missing);
            assert_eq!(p.feature, None);
            assert!(p.filters.contains(&"videoscale"));
            assert!(p.system_step.unwrap().contains(missing));
        }
    }

    #[test]
    fn status_names_say_system_memory_exactly_when_there_is_a_step() {
        let names = |dec: Option<&str>, enc: &str, in_gpu: Option<bool>| {
            let enc = encoder(enc);
            let planned = plan(dec, &enc, all);
            status_names(dec, &enc, &planned, in_gpu)
        };
        // Both VA, negotiated (or planned) in VA memory: no step.
        let gpu = (Some("vah264dec".to_string()), "vah264enc".to_string());
        assert_eq!(names(Some("vah264dec"), "va", Some(true)), gpu);
        assert_eq!(names(Some("vah264dec"), "va", None), gpu);
        // Planned in VA memory, but another user of the decoded pictures
        // took them to system memory: both say so.
        let sys = (
            Some("vah264dec (system memory)".to_string()),
            "vah264enc (system memory)".to_string(),
        );
        assert_eq!(names(Some("vah264dec"), "va", Some(false)), sys);
        // A software decoder feeding a hardware encoder.
        assert_eq!(
            names(Some("avdec_h264"), "va", None),
            (
                Some("avdec_h264".into()),
                "vah264enc (system memory)".into()
            )
        );
        assert_eq!(
            names(None, "nvenc", None),
            (None, "nvh264enc (system memory)".into())
        );
        // A hardware decoder feeding x264.
        assert_eq!(
            names(Some("vah264dec"), "x264", None),
            (Some("vah264dec (system memory)".into()), "x264enc".into())
        );
        // Software on both sides: nothing to say.
        assert_eq!(
            names(Some("avdec_h264"), "x264", None),
            (Some("avdec_h264".into()), "x264enc".into())
        );
        // A custom candidate goes by its own name.
        let custom = Candidate::custom("mine", "x264enc", std::sync::Arc::new(|| Err("no".into())));
        let planned = plan(None, &custom, all);
        assert_eq!(status_names(None, &custom, &planned, None).1, "mine");
    }

    #[test]
    fn gpu_caps_are_those_with_a_memory_feature_other_than_system() {
        gst::init().unwrap();
        let parse = |s: &str| s.parse::<gst::Caps>().unwrap();
        assert!(gpu_caps(&parse(
            "video/x-raw(memory:VAMemory), format=NV12"
        )));
        assert!(gpu_caps(&parse("video/x-raw(memory:CUDAMemory)")));
        assert!(!gpu_caps(&parse("video/x-raw, format=NV12")));
        assert!(!gpu_caps(&parse("video/x-raw(memory:SystemMemory)")));
    }
}
