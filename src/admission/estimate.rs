//! The built-in cost of a profile before any rendition of it was measured:
//! deliberately on the high side, so that a fresh server admits too few
//! rather than too many until it has learned.

use crate::profiles::Profile;

/// Cores a profile nobody knows costs (per 1080p source at real time).
pub const FALLBACK_COST: f64 = 1.0;
/// Decoding and scaling a 1080p H.264 source, shared by every profile.
const DECODE_COST: f64 = 0.25;
/// The output size preset costs are stated for: 720p30.
const PRESET_PIXELS_PER_S: f64 = 1280.0 * 720.0 * 30.0;

/// Cores an x264 encode at `preset` of 720p30 keeps busy, on the high side.
fn preset_cost(preset: &str) -> f64 {
    match preset {
        "ultrafast" => 0.35,
        "superfast" => 0.45,
        "veryfast" => 0.6,
        "faster" => 0.8,
        "fast" => 1.0,
        "medium" => 1.3,
        "slow" => 2.0,
        "slower" => 3.0,
        "veryslow" => 5.0,
        "placebo" => 10.0,
        _ => 1.3,
    }
}

/// The built-in estimate for `profile`: cores per encoder of a 1080p source
/// (the output is the profile's box at its frame-rate cap, or less).
pub fn builtin_cost(profile: &Profile) -> f64 {
    let (w, h) = profile.output_size(1920, 1080, (1, 1));
    let fps = f64::from(profile.max_framerate.min(30));
    let out = f64::from(w) * f64::from(h) * fps / PRESET_PIXELS_PER_S;
    DECODE_COST + preset_cost(&profile.preset) * out
}
