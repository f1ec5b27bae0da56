//! The forms a setting's value may take, each parser naming the form it
//! expects when the value is not one.

use std::time::Duration;

/// An encoder name: one of [`crate::encoders::NAMES`], or the name of a
/// candidate registered by the embedding program (checked at start-up).
pub(super) fn parse_encoder(s: &str) -> Result<String, String> {
    let s = s.trim().to_ascii_lowercase();
    if crate::profiles::valid_name(&s) {
        Ok(s)
    } else {
        Err(format!(
            "expected one of {}",
            crate::encoders::NAMES.join(", ")
        ))
    }
}

/// `true`/`false` (also `yes`/`no`, `on`/`off`, `1`/`0`).
pub(super) fn parse_switch(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// An absolute http(s) URL without query or fragment; a trailing `/` is dropped.
pub(super) fn parse_base_url(s: &str) -> Result<String, String> {
    let s = s.trim().trim_end_matches('/');
    let u =
        url::Url::parse(s).map_err(|e| format!("expected http(s)://host[:port][/prefix]: {e}"))?;
    if !matches!(u.scheme(), "http" | "https")
        || u.host_str().is_none()
        || u.query().is_some()
        || u.fragment().is_some()
        || !u.username().is_empty()
        || u.password().is_some()
    {
        return Err(
            "expected http(s)://host[:port][/prefix], without credentials, query or fragment"
                .into(),
        );
    }
    Ok(s.to_string())
}

/// `EPG_REFRESH`: a humantime duration of at least a minute.
pub(super) fn parse_epg_refresh(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e}: expected a duration such as 6h, 90min or 1day"))?;
    if d < Duration::from_secs(60) {
        return Err("must be at least 1min".into());
    }
    Ok(d)
}

/// `EPG_URL`: an absolute http:// or https:// URL.
pub(super) fn parse_epg_url(s: &str) -> Result<String, String> {
    let t = s.trim();
    match url::Url::parse(t) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Ok(t.to_string()),
        Ok(_) => Err("expected an http:// or https:// URL".into()),
        Err(e) => Err(format!("{e}: expected an http:// or https:// URL")),
    }
}

/// How many encoders may run at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TranscodeLimit {
    /// Admit while the machine measurably keeps up (see `admission`).
    Auto,
    /// At most this many, whatever the load.
    Max(usize),
}

impl std::fmt::Display for TranscodeLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TranscodeLimit::Auto => f.write_str("auto"),
            TranscodeLimit::Max(n) => write!(f, "{n}"),
        }
    }
}

/// `MAX_CONCURRENT_TRANSCODES`: `auto` or a whole number of at least 1.
pub(super) fn parse_transcode_limit(s: &str) -> Result<TranscodeLimit, String> {
    if s.trim().eq_ignore_ascii_case("auto") {
        return Ok(TranscodeLimit::Auto);
    }
    positive_usize(s)
        .map(TranscodeLimit::Max)
        .map_err(|_| "expected auto or a whole number of at least 1".into())
}

pub(super) fn positive_usize(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a whole number of at least 1".into()),
    }
}

pub(super) fn positive_u64(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a whole number of milliseconds, at least 1".into()),
    }
}

/// Parses a size: `512MB`, `1GB`, `1.5GiB`, `64KiB` or plain bytes.
/// Decimal units (KB, MB, GB) are powers of 1000; binary (KiB, MiB, GiB) of 1024.
pub fn parse_size(s: &str) -> Result<u64, String> {
    const FORM: &str = "expected a size such as 512MB, 1GB, 1.5GiB or plain bytes";
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    if num.is_empty() || num.matches('.').count() > 1 || num.starts_with('.') || num.ends_with('.')
    {
        return Err(FORM.into());
    }
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "tb" | "t" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(FORM.into()),
    };
    let value: f64 = num.parse().map_err(|_| FORM.to_string())?;
    let bytes = value * mult;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 / 2.0 {
        return Err(FORM.into());
    }
    if unit.is_empty() && num.contains('.') {
        return Err(FORM.into());
    }
    Ok(bytes.round() as u64)
}
