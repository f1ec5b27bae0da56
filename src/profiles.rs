//! Quality profiles (SPEC §4): loading `pipelines/profiles.toml`, validating
//! it, and the output geometry rules (bounding box, even sizes, no upscale,
//! frame-rate cap). Owns nothing that runs: the media engine reads a
//! [`Profile`] to configure its encoder.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// `SLUICE_ENCODER` default: the first working hardware encoder, else x264.
pub const AUTO_ENCODER: &str = "auto";
/// Encoder names `SLUICE_ENCODER` and a profile's `encoder` accept.
pub const ENCODER_NAMES: &[&str] = &["auto", "x264", "nvenc", "va", "qsv", "vaapi", "v4l2"];

/// The shipped profiles file, used when the configured file is absent.
pub const BUILTIN_PROFILES: &str = include_str!("../pipelines/profiles.toml");

pub const DEFAULT_KEYFRAME_SECONDS: u32 = 2;
pub const DEFAULT_MAX_FRAMERATE: u32 = 30;
pub const DEFAULT_VBV_BUFFER_MS: u32 = 1000;
/// Audio output is always AAC-LC stereo at this rate.
pub const AUDIO_RATE: u32 = 48_000;
pub const AUDIO_CHANNELS: u32 = 2;

const X264_PRESETS: &[&str] = &[
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
];

/// H.264 levels with their frame-size (macroblocks) and rate (MB/s) limits.
const LEVELS: &[(&str, u32, u32)] = &[
    ("1", 99, 1_485),
    ("1b", 99, 1_485),
    ("1.1", 396, 3_000),
    ("1.2", 396, 6_000),
    ("1.3", 396, 11_880),
    ("2", 396, 11_880),
    ("2.0", 396, 11_880),
    ("2.1", 792, 19_800),
    ("2.2", 1_620, 20_250),
    ("3", 1_620, 40_500),
    ("3.0", 1_620, 40_500),
    ("3.1", 3_600, 108_000),
    ("3.2", 5_120, 216_000),
    ("4", 8_192, 245_760),
    ("4.0", 8_192, 245_760),
    ("4.1", 8_192, 245_760),
    ("4.2", 8_704, 522_240),
    ("5", 22_080, 589_824),
    ("5.0", 22_080, 589_824),
    ("5.1", 36_864, 983_040),
    ("5.2", 36_864, 2_073_600),
];

/// One quality profile as written in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(skip_deserializing, default)]
    pub name: String,
    /// Bounding box width; output never exceeds it.
    pub width: u32,
    /// Bounding box height.
    pub height: u32,
    /// Target (and VBV-capped maximum) video bitrate in kbit/s.
    pub video_bitrate: u32,
    /// x264 speed preset: cheaper presets for smaller boxes keep CPU per session low.
    pub preset: String,
    /// H.264 level written in the SPS; must admit the box at `max_framerate`.
    pub level: String,
    /// AAC-LC bitrate in kbit/s.
    pub audio_bitrate: u32,
    #[serde(default = "default_keyframe")]
    pub keyframe_seconds: u32,
    #[serde(default = "default_max_framerate")]
    pub max_framerate: u32,
    /// VBV buffer size in ms of `video_bitrate`: the CBR-ish cap live players need.
    #[serde(default = "default_vbv")]
    pub vbv_buffer_ms: u32,
    /// Encoder this profile asks for (`auto`, `x264`, `nvenc`, `va`, `qsv`,
    /// `vaapi`, `v4l2`); unset: `SLUICE_ENCODER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<String>,
}

fn default_keyframe() -> u32 {
    DEFAULT_KEYFRAME_SECONDS
}
fn default_max_framerate() -> u32 {
    DEFAULT_MAX_FRAMERATE
}
fn default_vbv() -> u32 {
    DEFAULT_VBV_BUFFER_MS
}

/// Valid profile (and stream group) names: `[a-z0-9_-]+`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl Profile {
    /// Output size for a source of `src_w` x `src_h` with pixel aspect `par`:
    /// fits the box, keeps the display aspect, even dimensions, never upscales.
    pub fn output_size(&self, src_w: u32, src_h: u32, par: (i32, i32)) -> (u32, u32) {
        let (pn, pd) = if par.0 > 0 && par.1 > 0 {
            (par.0 as f64, par.1 as f64)
        } else {
            (1.0, 1.0)
        };
        // Display size in square pixels.
        let disp_w = (src_w.max(2) as f64) * pn / pd;
        let disp_h = src_h.max(2) as f64;
        let scale = (self.width as f64 / disp_w)
            .min(self.height as f64 / disp_h)
            .min(1.0);
        let even = |v: f64| ((v.floor() as u32) & !1).max(2);
        (even(disp_w * scale), even(disp_h * scale))
    }

    /// Output frame rate for a source rate `num/den`: at most `max_framerate`.
    pub fn output_framerate(&self, num: i32, den: i32) -> (i32, i32) {
        let max = self.max_framerate as i32;
        if num <= 0 || den <= 0 || (num as i64) > (max as i64) * (den as i64) {
            (max, 1)
        } else {
            (num, den)
        }
    }

    /// The encoder this profile asks for (`auto` when it names none).
    pub fn encoder_choice(&self) -> &str {
        self.encoder.as_deref().unwrap_or(AUTO_ENCODER)
    }

    /// Keyframe interval in frames for an output rate.
    pub fn keyframe_interval(&self, num: i32, den: i32) -> u32 {
        let fps = if num > 0 && den > 0 {
            num as f64 / den as f64
        } else {
            self.max_framerate as f64
        };
        ((fps * self.keyframe_seconds as f64).round() as u32).max(1)
    }

    fn validate(&self) -> Result<(), String> {
        if !valid_name(&self.name) {
            return Err("profile names must match [a-z0-9_-]+".into());
        }
        if self.width < 16 || self.height < 16 || self.width > 7680 || self.height > 4320 {
            return Err("width and height must be between 16 and 7680x4320".into());
        }
        if !self.width.is_multiple_of(2) || !self.height.is_multiple_of(2) {
            return Err("width and height must be even".into());
        }
        if !(50..=100_000).contains(&self.video_bitrate) {
            return Err("video_bitrate must be between 50 and 100000 kbit/s".into());
        }
        if !X264_PRESETS.contains(&self.preset.as_str()) {
            return Err(format!(
                "preset '{}' is not an x264 preset ({})",
                self.preset,
                X264_PRESETS.join(", ")
            ));
        }
        if !(16..=512).contains(&self.audio_bitrate) {
            return Err("audio_bitrate must be between 16 and 512 kbit/s".into());
        }
        if !(1..=10).contains(&self.keyframe_seconds) {
            return Err("keyframe_seconds must be between 1 and 10".into());
        }
        if !(1..=60).contains(&self.max_framerate) {
            return Err("max_framerate must be between 1 and 60".into());
        }
        if !(100..=10_000).contains(&self.vbv_buffer_ms) {
            return Err("vbv_buffer_ms must be between 100 and 10000".into());
        }
        if let Some(e) = &self.encoder {
            if !valid_name(e) {
                return Err(format!(
                    "encoder '{e}' is not an encoder name ({})",
                    ENCODER_NAMES.join(", ")
                ));
            }
        }
        let Some(&(_, max_fs, max_mbps)) = LEVELS.iter().find(|(l, _, _)| *l == self.level) else {
            return Err(format!(
                "level '{}' is not an H.264 level (e.g. 3.0, 3.1, 4.0)",
                self.level
            ));
        };
        let mbs = self.width.div_ceil(16) * self.height.div_ceil(16);
        if mbs > max_fs || mbs * self.max_framerate > max_mbps {
            return Err(format!(
                "level {} cannot carry {}x{} at {} fps; use a higher level",
                self.level, self.width, self.height, self.max_framerate
            ));
        }
        Ok(())
    }

    /// Cost used to order profiles (the memory downgrade goes one step down).
    fn cost(&self) -> (u64, u32) {
        (self.width as u64 * self.height as u64, self.video_bitrate)
    }
}

/// The loaded set of profiles, ordered from cheapest to most expensive.
#[derive(Debug, Clone)]
pub struct Profiles {
    ordered: Vec<Profile>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfilesError {
    #[error("cannot read profiles file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("profiles file {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Profiles {
    /// Loads the file at `path`, or the built-in defaults when it does not exist.
    pub fn load(path: &Path) -> Result<Self, ProfilesError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).map_err(|message| ProfilesError::Invalid {
                path: path.display().to_string(),
                message,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::builtin()),
            Err(source) => Err(ProfilesError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    pub fn builtin() -> Self {
        Self::parse(BUILTIN_PROFILES).expect("built-in profiles are valid")
    }

    /// Parses profiles TOML; errors name the line and the reason.
    pub fn parse(text: &str) -> Result<Self, String> {
        let table: BTreeMap<String, toml::Spanned<Profile>> =
            toml::from_str(text).map_err(|e| describe_toml_error(text, &e))?;
        if table.is_empty() {
            return Err("no profiles defined".into());
        }
        let mut ordered = Vec::with_capacity(table.len());
        for (name, spanned) in table {
            let line = line_of(text, spanned.span().start);
            let mut profile = spanned.into_inner();
            profile.name = name.clone();
            profile
                .validate()
                .map_err(|reason| format!("line {line}: profile [{name}]: {reason}"))?;
            ordered.push(profile);
        }
        ordered.sort_by_key(|p| p.cost());
        Ok(Self { ordered })
    }

    /// Gives every profile that names no encoder `choice` (`SLUICE_ENCODER`).
    pub fn set_default_encoder(&mut self, choice: &str) {
        for p in &mut self.ordered {
            p.encoder.get_or_insert_with(|| choice.to_string());
        }
    }

    pub fn get(&self, name: &str) -> Option<&Profile> {
        self.ordered.iter().find(|p| p.name == name)
    }

    /// All profiles, cheapest first.
    pub fn all(&self) -> &[Profile] {
        &self.ordered
    }

    pub fn names(&self) -> Vec<String> {
        self.ordered.iter().map(|p| p.name.clone()).collect()
    }

    /// The most expensive profile (the one memory pressure downgrades).
    pub fn most_expensive(&self) -> &Profile {
        self.ordered.last().expect("at least one profile")
    }

    /// The profile one step cheaper than `name`, if any.
    pub fn one_lower(&self, name: &str) -> Option<&Profile> {
        let idx = self.ordered.iter().position(|p| p.name == name)?;
        idx.checked_sub(1).map(|i| &self.ordered[i])
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let reason = e.message().trim().to_string();
    match e.span() {
        Some(span) => format!("line {}: {}", line_of(text, span.start), reason),
        None => reason,
    }
}

#[cfg(test)]
mod tests;
