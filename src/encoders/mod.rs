//! The H.264 encoders sluice can use (SPEC §15): the candidate list
//! (hardware first, x264 last), what the start-up probe found for each
//! ([`probe`]), how a profile maps onto each element's own properties
//! ([`props`]), the bin a rendition's encoder lives in so its failures
//! stay inside the rendition ([`bin`]), where pictures live between
//! decoder and encoder ([`memory`]), and which encoder a rendition
//! uses now, next, and which failed recently.
//!
//! The table is process-wide: what the machine's hardware can do does not
//! change with the server's settings, so it is probed once. It holds no
//! pipeline objects.

pub mod bin;
pub mod memory;
pub mod probe;
pub mod props;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde::Serialize;

pub use crate::profiles::{AUTO_ENCODER as AUTO, ENCODER_NAMES as NAMES};
/// The software encoder every rendition ends on.
pub const X264: &str = "x264";
/// Default `ENCODER_RETRY` (ms): how long a failed encoder is left alone.
pub const DEFAULT_ENCODER_RETRY_MS: u64 = 600_000;

/// Which hardware API a candidate uses: decides where the probe looks for
/// a device and what it suggests when there is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Nvidia,
    /// VA-API through a DRM render node (`va`, `qsv`, `vaapi`).
    Dri,
    V4l2,
    Software,
}

/// Makes a candidate's encoder element(s) as one element.
pub type Maker = Arc<dyn Fn() -> Result<gst::Element, String> + Send + Sync>;

/// One encoder (or decoder) sluice may use.
#[derive(Clone)]
pub struct Candidate {
    /// Short name: `nvenc`, `va`, `qsv`, `vaapi`, `v4l2`, `x264`.
    pub name: String,
    /// GStreamer factory name.
    pub element: String,
    pub family: Family,
    /// Raw format the element takes from system memory.
    pub input_format: &'static str,
    /// Builds the element instead of the factory (a bin around it).
    pub maker: Option<Maker>,
}

impl std::fmt::Debug for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Candidate")
            .field("name", &self.name)
            .field("element", &self.element)
            .finish()
    }
}

impl Candidate {
    fn builtin(name: &str, element: &str, family: Family, input_format: &'static str) -> Self {
        Candidate {
            name: name.into(),
            element: element.into(),
            family,
            input_format,
            maker: None,
        }
    }

    /// A candidate whose element is built by `maker` (for instance a bin
    /// wrapping a factory element). It is probed like the built-in ones
    /// and is used only when named by `SLUICE_ENCODER` or a profile.
    pub fn custom(name: &str, element: &str, maker: Maker) -> Self {
        Candidate {
            name: name.into(),
            element: element.into(),
            family: Family::Software,
            input_format: "I420",
            maker: Some(maker),
        }
    }

    pub fn hardware(&self) -> bool {
        self.family != Family::Software
    }

    /// A new element for this candidate.
    pub fn make(&self) -> Result<gst::Element, String> {
        match &self.maker {
            Some(m) => m(),
            None => gst::ElementFactory::make(&self.element)
                .build()
                .map_err(|_| format!("element '{}' not found", self.element)),
        }
    }
}

/// The encoder candidates, in the order `auto` tries them.
pub fn encoder_candidates() -> Vec<Candidate> {
    vec![
        Candidate::builtin("nvenc", "nvh264enc", Family::Nvidia, "NV12"),
        Candidate::builtin("va", "vah264enc", Family::Dri, "NV12"),
        Candidate::builtin("qsv", "qsvh264enc", Family::Dri, "NV12"),
        Candidate::builtin("vaapi", "vaapih264enc", Family::Dri, "NV12"),
        Candidate::builtin("v4l2", "v4l2h264enc", Family::V4l2, "I420"),
        Candidate::builtin(X264, "x264enc", Family::Software, "I420"),
    ]
}

/// The hardware decoders matching the encoders.
pub fn decoder_candidates() -> Vec<Candidate> {
    vec![
        Candidate::builtin("nvenc", "nvh264dec", Family::Nvidia, "NV12"),
        Candidate::builtin("va", "vah264dec", Family::Dri, "NV12"),
        Candidate::builtin("qsv", "qsvh264dec", Family::Dri, "NV12"),
        Candidate::builtin("v4l2", "v4l2slh264dec", Family::V4l2, "NV12"),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Encoder,
    Decoder,
}

/// What the probe found for one candidate (`GET /api/encoders`).
#[derive(Debug, Clone, Serialize)]
pub struct Probed {
    pub name: String,
    pub element: String,
    pub kind: Kind,
    pub available: bool,
    /// Why it is not available, in plain words (None when it is).
    pub reason: Option<String>,
    /// The likely fix (None when available).
    pub fix: Option<String>,
}

/// The process's encoder table.
pub struct Encoders {
    encoders: Vec<Candidate>,
    probed: RwLock<Vec<Probed>>,
    /// Encoders that failed during a rendition, left alone until then.
    failed: Mutex<BTreeMap<String, Instant>>,
    retry: RwLock<Duration>,
    /// Live fallbacks so far, by (from, to).
    fallbacks: Mutex<BTreeMap<(String, String), u64>>,
    /// How long the start-up probe took.
    probe_took: Duration,
    /// The hardware H.264 decoder preferred over the software one.
    preferred_decoder: RwLock<Option<String>>,
}

static TABLE: OnceLock<Encoders> = OnceLock::new();
static EXTRA: Mutex<Vec<Candidate>> = Mutex::new(Vec::new());

/// Adds a custom candidate (see [`Candidate::custom`]). Must be called
/// before the table is first used (before the server starts).
pub fn register(candidate: Candidate) {
    EXTRA.lock().push(candidate);
}

/// The table, probing on first use (blocks up to [`probe::PROBE_BUDGET`];
/// call it off the async runtime).
pub fn table() -> &'static Encoders {
    TABLE.get_or_init(|| {
        let mut encoders = EXTRA.lock().clone();
        encoders.extend(encoder_candidates());
        let t0 = Instant::now();
        let probed = probe::probe_all(&encoders, &decoder_candidates());
        let took = t0.elapsed();
        for p in &probed {
            match (&p.reason, p.available) {
                (_, true) => tracing::info!(name = %p.name, element = %p.element, kind = ?p.kind, "encoder probe: available"),
                (Some(r), false) => tracing::debug!(name = %p.name, element = %p.element, kind = ?p.kind, reason = %r, "encoder probe: unavailable"),
                (None, false) => {}
            }
        }
        Encoders {
            encoders,
            probed: RwLock::new(probed),
            failed: Mutex::new(BTreeMap::new()),
            retry: RwLock::new(Duration::from_millis(DEFAULT_ENCODER_RETRY_MS)),
            fallbacks: Mutex::new(BTreeMap::new()),
            probe_took: took,
            preferred_decoder: RwLock::new(None),
        }
    })
}

impl Encoders {
    /// Sets how long a failed encoder is left alone (`ENCODER_RETRY`).
    pub fn set_retry(&self, retry: Duration) {
        *self.retry.write() = retry;
    }

    /// The probe results, encoders then decoders.
    pub fn probed(&self) -> Vec<Probed> {
        self.probed.read().clone()
    }

    /// How long the start-up probe took.
    pub fn probe_took(&self) -> Duration {
        self.probe_took
    }

    /// Whether `name` names a candidate (or `auto`).
    pub fn knows(&self, name: &str) -> bool {
        name == AUTO || self.encoders.iter().any(|c| c.name == name)
    }

    fn probed_ok(&self, name: &str) -> bool {
        self.probed
            .read()
            .iter()
            .any(|p| p.kind == Kind::Encoder && p.name == name && p.available)
    }

    /// Whether `name` can be used now: probed working and not failed recently.
    pub fn usable(&self, name: &str) -> bool {
        if !self.probed_ok(name) {
            return false;
        }
        let mut failed = self.failed.lock();
        match failed.get(name) {
            Some(until) if Instant::now() < *until => false,
            Some(_) => {
                failed.remove(name);
                true
            }
            None => true,
        }
    }

    /// Whether a request for `choice` is met (auto and x264 always are,
    /// while x264 works; a named hardware encoder only when it works).
    pub fn satisfied(&self, choice: &str) -> bool {
        match choice {
            AUTO => true,
            name => self.probed_ok(name),
        }
    }

    /// The encoders a rendition asking for `choice` tries, in order: the
    /// chosen one when usable (for `auto`, every usable built-in hardware
    /// encoder), then x264.
    pub fn order(&self, choice: &str) -> Vec<Candidate> {
        let builtin = encoder_candidates();
        let mut out: Vec<Candidate> = if choice == AUTO {
            self.encoders
                .iter()
                .filter(|c| c.hardware() && builtin.iter().any(|b| b.name == c.name))
                .filter(|c| self.usable(&c.name))
                .cloned()
                .collect()
        } else {
            self.encoders
                .iter()
                .filter(|c| c.name == choice && c.name != X264 && self.usable(&c.name))
                .cloned()
                .collect()
        };
        if let Some(x) = self.encoders.iter().find(|c| c.name == X264) {
            out.push(x.clone());
        }
        out
    }

    /// Records that `from` failed during a rendition and `to` took over:
    /// `from` is left alone for `ENCODER_RETRY`.
    pub fn fell_back(&self, from: &str, to: &str) {
        let retry = *self.retry.read();
        self.failed
            .lock()
            .insert(from.to_string(), Instant::now() + retry);
        *self
            .fallbacks
            .lock()
            .entry((from.to_string(), to.to_string()))
            .or_default() += 1;
    }

    /// Live fallbacks so far: ((from, to), count).
    pub fn fallbacks(&self) -> Vec<((String, String), u64)> {
        self.fallbacks
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// The hardware decoder to prefer when the encoders `choices` start on
    /// are hardware: the available decoder of the first one's family.
    pub fn hardware_decoder(&self, choices: &[&str]) -> Option<String> {
        let probed = self.probed();
        choices
            .iter()
            .filter_map(|c| self.order(c).into_iter().next())
            .filter(|c| c.hardware() && c.maker.is_none())
            .find_map(|c| {
                probed
                    .iter()
                    .find(|p| p.kind == Kind::Decoder && p.name == c.name && p.available)
                    .map(|p| p.element.clone())
            })
    }

    /// The decoder a compressed video stream of `caps` gets: the preferred
    /// hardware decoder for H.264, else None (a software decoder).
    pub fn expected_decoder(&self, caps: Option<&gst::CapsRef>) -> Option<String> {
        let h264 = caps
            .and_then(|c| c.structure(0))
            .is_some_and(|s| s.name() == "video/x-h264");
        self.preferred_decoder.read().clone().filter(|_| h264)
    }

    /// Whether `element` is one of the hardware decoders.
    pub fn is_hardware_decoder(element: &str) -> bool {
        decoder_candidates().iter().any(|c| c.element == element)
    }

    /// The encoder `auto` picks now.
    pub fn auto_pick(&self) -> Option<String> {
        self.order(AUTO).first().map(|c| c.name.clone())
    }
}

/// Checks the encoder `choice` (`SLUICE_ENCODER`) and every profile's
/// `encoder`, gives profiles without one `choice`, sets the retry delay,
/// and warns about each choice this machine cannot meet (those renditions
/// run on x264). Blocks for the probe on first use: call it off the async
/// runtime, or after [`table`] ran on a blocking thread.
pub fn configure(
    choice: &str,
    retry: Duration,
    profiles: &mut crate::profiles::Profiles,
) -> Result<(), String> {
    let t = table();
    t.set_retry(retry);
    let accepted = || {
        let mut names: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
        names.extend(t.encoders.iter().map(|c| c.name.clone()));
        names.dedup();
        names.join(", ")
    };
    if !t.knows(choice) {
        return Err(format!(
            "SLUICE_ENCODER: no encoder named '{choice}' (accepted: {})",
            accepted()
        ));
    }
    for p in profiles.all() {
        if let Some(e) = &p.encoder {
            if !t.knows(e) {
                return Err(format!(
                    "profile [{}]: no encoder named '{e}' (accepted: {})",
                    p.name,
                    accepted()
                ));
            }
        }
    }
    profiles.set_default_encoder(choice);
    let choices: Vec<&str> = profiles.all().iter().map(|p| p.encoder_choice()).collect();
    if let Some(dec) = t.hardware_decoder(&choices) {
        // Hardware decode where the encoder is hardware too: decodebin
        // takes the highest-ranked decoder that accepts the stream.
        if let Some(f) = gst::ElementFactory::find(&dec) {
            use gst::prelude::*;
            f.set_rank(gst::Rank::PRIMARY + 1);
            tracing::info!(decoder = %dec, "hardware decoding preferred");
            *t.preferred_decoder.write() = Some(dec);
        }
    }
    let mut warned = Vec::new();
    for p in profiles.all() {
        let c = p.encoder_choice();
        if !t.satisfied(c) && !warned.iter().any(|w: &String| w == c) {
            let why = t
                .probed()
                .into_iter()
                .find(|r| r.kind == Kind::Encoder && r.name == c)
                .and_then(|r| r.reason.zip(r.fix).map(|(r, f)| format!("{r} ({f})")))
                .unwrap_or_default();
            tracing::warn!(encoder = c, reason = %why, "the chosen encoder is not available here: transcodes use x264 instead");
            warned.push(c.to_string());
        }
    }
    tracing::info!(
        auto = %t.auto_pick().unwrap_or_else(|| "none".into()),
        probe_ms = t.probe_took().as_millis() as u64,
        "encoders probed"
    );
    Ok(())
}

/// What `services.encoders` in `/health` is judged on: the encoders
/// profiles ask for, which are available, which failed lately.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EncodersReport {
    /// The encoder `auto` picks now.
    pub selected: Option<String>,
    pub available: Vec<String>,
    /// Encoders profiles ask for that are not available.
    pub missing: Vec<String>,
    /// Encoders that failed during a rendition and are left alone for now.
    pub failed: Vec<String>,
}

impl Encoders {
    /// The state of the encoders `profiles` ask for.
    pub fn report(&self, profiles: &crate::profiles::Profiles) -> EncodersReport {
        let mut missing: Vec<String> = profiles
            .all()
            .iter()
            .map(|p| p.encoder_choice().to_string())
            .filter(|c| !self.satisfied(c))
            .collect();
        missing.sort();
        missing.dedup();
        let available: Vec<String> = self
            .probed()
            .into_iter()
            .filter(|p| p.kind == Kind::Encoder && p.available)
            .map(|p| p.name)
            .collect();
        // Failed encoders matter where a profile would use them.
        let builtin = encoder_candidates();
        let wanted = |name: &str| {
            profiles.all().iter().any(|p| match p.encoder_choice() {
                AUTO => builtin.iter().any(|b| b.name == name && b.hardware()),
                c => c == name,
            })
        };
        let now = Instant::now();
        let failed: Vec<String> = self
            .failed
            .lock()
            .iter()
            .filter(|(n, until)| now < **until && wanted(n))
            .map(|(n, _)| n.clone())
            .collect();
        EncodersReport {
            selected: self.auto_pick(),
            available,
            missing,
            failed,
        }
    }
}

#[cfg(test)]
mod tests;
