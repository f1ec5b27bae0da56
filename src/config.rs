//! Settings: what the operator configured, from CLI flags and environment
//! variables (SPEC §3). Parsed once at start-up; invalid values stop start-up
//! with a message naming the variable and the accepted form.
//!
//! This module owns parsing and validation only. It never looks at running
//! state (that lives in the pool, the session registry and the memory monitor).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

pub const DEFAULT_PORT: u16 = 3000;
pub const DEFAULT_HOST: &str = "127.0.0.1";
pub const DEFAULT_DATA_DIR: &str = "./data";
pub const DEFAULT_PROFILES: &str = "./pipelines/profiles.toml";
/// `MAX_CONCURRENT_TRANSCODES` unless set: admission by measured headroom.
pub const DEFAULT_MAX_TRANSCODES: &str = "auto";
pub const DEFAULT_MAX_REMUX: usize = 20;
pub const DEFAULT_MAX_QUEUED: usize = 10;
pub const DEFAULT_MAX_SESSIONS_PER_CLIENT: usize = 3;
pub const DEFAULT_START_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_QUALITY: &str = "medium";
pub const DEFAULT_STALL_TIMEOUT_MS: u64 = 15_000;
pub const DEFAULT_MAX_CHANNELS: usize = 20;
pub const DEFAULT_MAX_VIEWERS: usize = 200;
pub const DEFAULT_CHANNEL_LINGER_MS: u64 = 5_000;
pub const DEFAULT_VIEWER_BUFFER_MS: u64 = 4_000;
pub const DEFAULT_SNAPSHOT_TTL_MS: u64 = 30_000;
pub const DEFAULT_MAX_SNAPSHOTS: usize = 2;
pub const DEFAULT_RECONNECT_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_MEMORY_WARNING: &str = "512MB";
pub const DEFAULT_MEMORY_CRITICAL: &str = "1GB";
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 10_000;
pub const DEFAULT_RATE_LIMIT_PREVIEW: &str = "60/min";
pub const DEFAULT_RATE_LIMIT_ADMIN: &str = "30/15min";
pub const DEFAULT_RATE_LIMIT_API: &str = "300/min";
pub const DEFAULT_EPG_REFRESH: &str = "6h";
pub const DEFAULT_EPG_FILLER_HOURS: u32 = 2;

/// Bounds for the per-request `timeout` query parameter (SPEC §6).
pub const MIN_REQUEST_TIMEOUT_MS: u64 = 100;
pub const MAX_REQUEST_TIMEOUT_MS: u64 = 120_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Everything the operator can configure. Field docs are the `--help` text.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "sluice",
    version,
    about = "In-process GStreamer transcoding server: live IPTV previews as fMP4 or MPEG-TS over HTTP",
    long_about = None
)]
pub struct Settings {
    /// TCP port to listen on.
    #[arg(long, env = "PORT", value_name = "PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// Address to listen on (use 0.0.0.0 to serve the network).
    #[arg(long, env = "HOST", value_name = "HOST", default_value = DEFAULT_HOST)]
    pub host: IpAddr,

    /// Directory holding the stream catalog (streams.json) and state.
    #[arg(long = "data-dir", env = "SLUICE_DATA_DIR", value_name = "SLUICE_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,

    /// Quality profiles file; built-in defaults are used when it is absent.
    #[arg(long, env = "SLUICE_PROFILES", value_name = "SLUICE_PROFILES", default_value = DEFAULT_PROFILES)]
    pub profiles: PathBuf,

    /// The only directory file:// sources may point into (unset: file:// refused).
    #[arg(
        long = "media-dir",
        env = "SLUICE_MEDIA_DIR",
        value_name = "SLUICE_MEDIA_DIR"
    )]
    pub media_dir: Option<PathBuf>,

    /// Running encoders (transcode renditions): `auto` admits a new one
    /// while the measured CPU headroom and every running encoder's speed
    /// allow it; a number is a hard cap.
    #[arg(long = "max-concurrent-transcodes", env = "MAX_CONCURRENT_TRANSCODES", value_name = "MAX_CONCURRENT_TRANSCODES",
          default_value = DEFAULT_MAX_TRANSCODES, value_parser = parse_transcode_limit)]
    pub max_transcodes: TranscodeLimit,

    /// Running remux (no re-encode) pipelines at most.
    #[arg(long = "max-concurrent-remux", env = "MAX_CONCURRENT_REMUX", value_name = "MAX_CONCURRENT_REMUX",
          default_value_t = DEFAULT_MAX_REMUX, value_parser = positive_usize)]
    pub max_remux: usize,

    /// Requests that may wait for a free pipeline slot.
    #[arg(long = "max-queued-requests", env = "MAX_QUEUED_REQUESTS", value_name = "MAX_QUEUED_REQUESTS",
          default_value_t = DEFAULT_MAX_QUEUED)]
    pub max_queued: usize,

    /// Sessions one client IP may hold at once.
    #[arg(long = "max-sessions-per-client", env = "MAX_SESSIONS_PER_CLIENT", value_name = "MAX_SESSIONS_PER_CLIENT",
          default_value_t = DEFAULT_MAX_SESSIONS_PER_CLIENT, value_parser = positive_usize)]
    pub max_sessions_per_client: usize,

    /// Default start timeout in ms: queue wait plus time to the first media byte.
    #[arg(long = "transcode-timeout", env = "TRANSCODE_TIMEOUT", value_name = "TRANSCODE_TIMEOUT",
          default_value_t = DEFAULT_START_TIMEOUT_MS, value_parser = positive_u64)]
    pub start_timeout_ms: u64,

    /// Profile used when a request names none.
    #[arg(long = "quality", env = "TRANSCODE_QUALITY_PROFILE", value_name = "TRANSCODE_QUALITY_PROFILE", default_value = DEFAULT_QUALITY)]
    pub default_quality: String,

    /// Ms without output before a running session is ended as stalled.
    #[arg(long = "stall-timeout", env = "STALL_TIMEOUT", value_name = "STALL_TIMEOUT",
          default_value_t = DEFAULT_STALL_TIMEOUT_MS, value_parser = positive_u64)]
    pub stall_timeout_ms: u64,

    /// Channels running at once: each is one upstream connection.
    #[arg(long = "max-channels", env = "MAX_CHANNELS", value_name = "MAX_CHANNELS",
          default_value_t = DEFAULT_MAX_CHANNELS, value_parser = positive_usize)]
    pub max_channels: usize,

    /// Viewers (HTTP responses reading a channel) at once.
    #[arg(long = "max-viewers", env = "MAX_VIEWERS", value_name = "MAX_VIEWERS",
          default_value_t = DEFAULT_MAX_VIEWERS, value_parser = positive_usize)]
    pub max_viewers: usize,

    /// Ms a rendition (and its channel) keeps running after its last viewer
    /// left, so a viewer who comes back joins at once; 0 stops at once.
    #[arg(long = "channel-linger", env = "CHANNEL_LINGER", value_name = "CHANNEL_LINGER",
          default_value_t = DEFAULT_CHANNEL_LINGER_MS)]
    pub channel_linger_ms: u64,

    /// Ms of media queued for one viewer before it skips ahead to the next
    /// keyframe (a viewer that stays behind for STALL_TIMEOUT is ended).
    #[arg(long = "viewer-buffer", env = "VIEWER_BUFFER", value_name = "VIEWER_BUFFER",
          default_value_t = DEFAULT_VIEWER_BUFFER_MS, value_parser = positive_u64)]
    pub viewer_buffer_ms: u64,

    /// Ms a channel snapshot is served from cache before a new picture is taken.
    #[arg(long = "snapshot-ttl", env = "SNAPSHOT_TTL", value_name = "SNAPSHOT_TTL",
          default_value_t = DEFAULT_SNAPSHOT_TTL_MS, value_parser = positive_u64)]
    pub snapshot_ttl_ms: u64,

    /// Snapshot captures taking a picture at once; more wait in a queue.
    #[arg(long = "max-concurrent-snapshots", env = "MAX_CONCURRENT_SNAPSHOTS",
          value_name = "MAX_CONCURRENT_SNAPSHOTS",
          default_value_t = DEFAULT_MAX_SNAPSHOTS, value_parser = positive_usize)]
    pub max_snapshots: usize,

    /// H.264 encoder: auto (the first working hardware encoder, else x264), x264, nvenc, va, qsv, vaapi or v4l2; a profile's `encoder` overrides it.
    #[arg(long = "encoder", env = "SLUICE_ENCODER", value_name = "SLUICE_ENCODER",
          default_value = crate::encoders::AUTO, value_parser = parse_encoder)]
    pub encoder: String,

    /// Ms a hardware encoder that failed during a rendition is left alone before it is tried again.
    #[arg(long = "encoder-retry", env = "ENCODER_RETRY", value_name = "ENCODER_RETRY",
          default_value_t = crate::encoders::DEFAULT_ENCODER_RETRY_MS)]
    pub encoder_retry_ms: u64,

    /// Ms a running session may spend reconnecting a live source that
    /// dropped (primary, then each backup URL, with backoff); 0 disables.
    #[arg(long = "reconnect-timeout", env = "RECONNECT_TIMEOUT", value_name = "RECONNECT_TIMEOUT",
          default_value_t = DEFAULT_RECONNECT_TIMEOUT_MS)]
    pub reconnect_timeout_ms: u64,

    /// Process RSS above which health is degraded (e.g. 512MB, 1.5GiB, bytes).
    #[arg(long = "memory-warning", env = "MEMORY_WARNING_THRESHOLD", value_name = "MEMORY_WARNING_THRESHOLD",
          default_value = DEFAULT_MEMORY_WARNING, value_parser = parse_size)]
    pub memory_warning: u64,

    /// Process RSS at which new sessions are refused (e.g. 1GB).
    #[arg(long = "memory-critical", env = "MEMORY_CRITICAL_THRESHOLD", value_name = "MEMORY_CRITICAL_THRESHOLD",
          default_value = DEFAULT_MEMORY_CRITICAL, value_parser = parse_size)]
    pub memory_critical: u64,

    /// Key required for mutating routes (X-Admin-Key or Authorization: Bearer).
    #[arg(
        long = "admin-api-key",
        env = "ADMIN_API_KEY",
        value_name = "ADMIN_API_KEY",
        hide_env_values = true
    )]
    pub admin_api_key: Option<String>,

    /// Proxies in front of sluice whose forwarding headers (X-Forwarded-For, Forwarded, X-Real-IP) are believed: false, true (1 hop), a hop count, or a comma list of proxy addresses/CIDRs such as 10.0.0.0/8,127.0.0.1.
    #[arg(long = "trust-proxy", env = "TRUST_PROXY", value_name = "TRUST_PROXY", default_value = "false",
          value_parser = TrustProxy::parse)]
    pub trust_proxy: TrustProxy,

    /// Log filter: error, warn, info, debug, trace (or a tracing filter).
    #[arg(
        long = "log-level",
        env = "LOG_LEVEL",
        value_name = "LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,

    /// Log output: pretty, or json for one JSON object per line.
    #[arg(long = "log-format", env = "LOG_FORMAT", value_name = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,

    /// Ms to drain sessions on SIGTERM before forcing pipelines down.
    #[arg(long = "shutdown-grace", env = "SHUTDOWN_GRACE", value_name = "SHUTDOWN_GRACE",
          default_value_t = DEFAULT_SHUTDOWN_GRACE_MS)]
    pub shutdown_grace_ms: u64,

    /// Origins allowed by CORS: a comma list, `https://*.example.com` for subdomains, `*` for any (unset: no CORS headers).
    #[arg(long = "cors-origin", env = "CORS_ORIGIN", value_name = "CORS_ORIGIN",
          value_parser = crate::http::cors::CorsOrigins::parse)]
    pub cors_origin: Option<crate::http::cors::CorsOrigins>,

    /// XMLTV guide to serve at /epg.xml, http(s), gzip accepted (unset: the `x-tvg-url` / `url-tvg` of the last imported playlist).
    #[arg(long = "epg-url", env = "EPG_URL", value_name = "EPG_URL", value_parser = parse_epg_url)]
    pub epg_url: Option<String>,

    /// How often the guide is fetched again, e.g. 6h, 90min, 1day (at least 1min).
    #[arg(long = "epg-refresh", env = "EPG_REFRESH", value_name = "EPG_REFRESH",
          default_value = DEFAULT_EPG_REFRESH, value_parser = parse_epg_refresh)]
    pub epg_refresh: Duration,

    /// Length in hours (1-24) of the placeholder programmes given to channels the guide has no programmes for.
    #[arg(long = "epg-filler-hours", env = "EPG_FILLER_HOURS", value_name = "EPG_FILLER_HOURS",
          default_value_t = DEFAULT_EPG_FILLER_HOURS, value_parser = clap::value_parser!(u32).range(1..=24))]
    pub epg_filler_hours: u32,

    /// Preview requests per client: N/min, N/15min, N/s, N/h, or off.
    #[arg(long = "rate-limit-preview", env = "RATE_LIMIT_PREVIEW", value_name = "RATE_LIMIT_PREVIEW",
          default_value = DEFAULT_RATE_LIMIT_PREVIEW, value_parser = crate::http::ratelimit::Rate::parse)]
    pub rate_limit_preview: crate::http::ratelimit::Rate,

    /// Mutating (admin) requests per client: N/min, N/15min, N/s, N/h, or off.
    #[arg(long = "rate-limit-admin", env = "RATE_LIMIT_ADMIN", value_name = "RATE_LIMIT_ADMIN",
          default_value = DEFAULT_RATE_LIMIT_ADMIN, value_parser = crate::http::ratelimit::Rate::parse)]
    pub rate_limit_admin: crate::http::ratelimit::Rate,

    /// Other API requests per client: N/min, N/15min, N/s, N/h, or off.
    #[arg(long = "rate-limit-api", env = "RATE_LIMIT_API", value_name = "RATE_LIMIT_API",
          default_value = DEFAULT_RATE_LIMIT_API, value_parser = crate::http::ratelimit::Rate::parse)]
    pub rate_limit_api: crate::http::ratelimit::Rate,

    // HDHomeRun tuner emulation (SPEC §14).
    /// Serve the HDHomeRun tuner routes (/discover.json, /lineup.json, ...) for Plex, Jellyfin and Emby: true or false.
    #[arg(long = "hdhr-enabled", env = "HDHR_ENABLED", value_name = "HDHR_ENABLED",
          default_value_t = true, action = clap::ArgAction::Set, value_parser = parse_switch)]
    pub hdhr_enabled: bool,

    /// The tuner's base URL as media servers reach sluice (http(s)://host[:port][/prefix]); unset: from the request's Host.
    #[arg(long = "hdhr-base-url", env = "HDHR_BASE_URL", value_name = "HDHR_BASE_URL",
          value_parser = parse_base_url)]
    pub hdhr_base_url: Option<String>,

    /// Quality profile the tuner's channels are transcoded to; unset: remux where the source allows.
    #[arg(
        long = "hdhr-quality",
        env = "HDHR_QUALITY",
        value_name = "HDHR_QUALITY"
    )]
    pub hdhr_quality: Option<String>,

    /// Announce the tuner by SSDP on the LAN (UDP 239.255.255.250:1900) so media servers find it by themselves: true or false.
    #[arg(long = "hdhr-ssdp", env = "HDHR_SSDP", value_name = "HDHR_SSDP",
          default_value_t = false, action = clap::ArgAction::Set, value_parser = parse_switch)]
    pub hdhr_ssdp: bool,
}

/// An encoder name: one of [`crate::encoders::NAMES`], or the name of a
/// candidate registered by the embedding program (checked at start-up).
fn parse_encoder(s: &str) -> Result<String, String> {
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
fn parse_switch(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// An absolute http(s) URL without query or fragment; a trailing `/` is dropped.
fn parse_base_url(s: &str) -> Result<String, String> {
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

impl Settings {
    /// Checks that relate several settings; returns a message naming the variable.
    pub fn validate(&self) -> Result<(), String> {
        if self.memory_warning > self.memory_critical {
            return Err(format!(
                "MEMORY_WARNING_THRESHOLD ({}) must not exceed MEMORY_CRITICAL_THRESHOLD ({})",
                self.memory_warning, self.memory_critical
            ));
        }
        if !crate::profiles::valid_name(&self.default_quality) {
            return Err(format!(
                "TRANSCODE_QUALITY_PROFILE: '{}' is not a profile name ([a-z0-9_-]+)",
                self.default_quality
            ));
        }
        if self.hdhr_ssdp && !self.hdhr_enabled {
            return Err("HDHR_SSDP: announces the tuner, so it needs HDHR_ENABLED=true".into());
        }
        if let Some(q) = &self.hdhr_quality {
            if !crate::profiles::valid_name(q) {
                return Err(format!(
                    "HDHR_QUALITY: '{q}' is not a profile name ([a-z0-9_-]+)"
                ));
            }
        }
        if let Some(key) = &self.admin_api_key {
            if key.trim().is_empty() {
                return Err("ADMIN_API_KEY: must not be empty when set".into());
            }
        }
        Ok(())
    }

    pub fn start_timeout(&self) -> Duration {
        Duration::from_millis(self.start_timeout_ms)
    }

    pub fn stall_timeout(&self) -> Duration {
        Duration::from_millis(self.stall_timeout_ms)
    }

    pub fn channel_linger(&self) -> Duration {
        Duration::from_millis(self.channel_linger_ms)
    }

    pub fn viewer_buffer(&self) -> Duration {
        Duration::from_millis(self.viewer_buffer_ms)
    }

    pub fn snapshot_ttl(&self) -> Duration {
        Duration::from_millis(self.snapshot_ttl_ms)
    }

    pub fn encoder_retry(&self) -> Duration {
        Duration::from_millis(self.encoder_retry_ms)
    }

    pub fn reconnect_timeout(&self) -> Duration {
        Duration::from_millis(self.reconnect_timeout_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// Settings for tests and embedding: every default, with a given data dir.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let mut s = Settings::parse_from(["sluice"]);
        s.data_dir = data_dir.into();
        s
    }
}

/// `EPG_REFRESH`: a humantime duration of at least a minute.
fn parse_epg_refresh(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e}: expected a duration such as 6h, 90min or 1day"))?;
    if d < Duration::from_secs(60) {
        return Err("must be at least 1min".into());
    }
    Ok(d)
}

/// `EPG_URL`: an absolute http:// or https:// URL.
fn parse_epg_url(s: &str) -> Result<String, String> {
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
fn parse_transcode_limit(s: &str) -> Result<TranscodeLimit, String> {
    if s.trim().eq_ignore_ascii_case("auto") {
        return Ok(TranscodeLimit::Auto);
    }
    positive_usize(s)
        .map(TranscodeLimit::Max)
        .map_err(|_| "expected auto or a whole number of at least 1".into())
}

fn positive_usize(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a whole number of at least 1".into()),
    }
}

fn positive_u64(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a whole number of milliseconds, at least 1".into()),
    }
}

/// Which proxies in front of sluice are believed when they name the client
/// (SPEC §8). The client is the rightmost forwarded address that is not a
/// trusted proxy, as nginx's realip (`real_ip_recursive on`) and Express's
/// `trust proxy` find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustProxy {
    /// Forwarding headers are ignored: the client is the TCP peer.
    Off,
    /// This many proxies (counted from sluice outwards, the TCP peer first)
    /// are trusted, whatever their addresses.
    Hops(u32),
    /// Proxies at these addresses are trusted.
    Networks(Vec<IpNet>),
}

impl TrustProxy {
    /// Parses `false`, `true` (1 hop), a hop count, or a comma list of
    /// addresses and CIDRs (`10.0.0.0/8,127.0.0.1,fd00::/8`).
    pub fn parse(s: &str) -> Result<TrustProxy, String> {
        const FORM: &str = "expected false, true (1 hop), a hop count such as 2, \
                            or a comma list of proxy addresses/CIDRs such as 10.0.0.0/8,127.0.0.1";
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "false" | "no" | "off" | "0" | "" => return Ok(TrustProxy::Off),
            "true" | "yes" | "on" => return Ok(TrustProxy::Hops(1)),
            _ => {}
        }
        if t.bytes().all(|b| b.is_ascii_digit()) {
            return t
                .parse::<u32>()
                .map(TrustProxy::Hops)
                .map_err(|_| FORM.to_string());
        }
        t.split(',')
            .map(|part| {
                IpNet::parse(part.trim()).ok_or_else(|| format!("'{}': {FORM}", part.trim()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TrustProxy::Networks)
    }

    /// Whether forwarding headers are looked at at all.
    pub fn enabled(&self) -> bool {
        !matches!(self, TrustProxy::Off)
    }

    /// Whether the address `hop` proxies away from sluice (0: the TCP peer)
    /// is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr, hop: usize) -> bool {
        match self {
            TrustProxy::Off => false,
            TrustProxy::Hops(n) => hop < *n as usize,
            TrustProxy::Networks(nets) => nets.iter().any(|n| n.contains(ip)),
        }
    }
}

/// An address block: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `addr/prefix` or a bare address; IPv4-mapped IPv6 becomes IPv4.
    pub fn parse(s: &str) -> Option<IpNet> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().ok()?;
        let mapped = matches!(addr, IpAddr::V6(_)) && addr.to_canonical().is_ipv4();
        let addr = addr.to_canonical();
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                let p: u8 = p.parse().ok()?;
                // ::ffff:10.0.0.0/104 is 10.0.0.0/8.
                let p = if mapped { p.checked_sub(96)? } else { p };
                (p <= max).then_some(p)?
            }
            Some(_) => return None,
        };
        Some(IpNet { addr, prefix })
    }

    /// Whether `ip` (canonicalised) lies in the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcode_limit_is_auto_by_default_or_a_hard_cap() {
        assert_eq!(
            Settings::parse_from(["sluice"]).max_transcodes,
            TranscodeLimit::Auto
        );
        let n = Settings::parse_from(["sluice", "--max-concurrent-transcodes", "4"]);
        assert_eq!(n.max_transcodes, TranscodeLimit::Max(4));
        assert_eq!(parse_transcode_limit(" AUTO "), Ok(TranscodeLimit::Auto));
        for bad in ["0", "-1", "two", ""] {
            let arg = format!("--max-concurrent-transcodes={bad}");
            let e = Settings::try_parse_from(["sluice", arg.as_str()])
                .unwrap_err()
                .to_string();
            assert!(e.contains("expected auto or a whole number"), "{bad}: {e}");
        }
    }

    #[test]
    fn hdhr_settings_parse_and_are_checked() {
        let s = Settings::parse_from(["sluice"]);
        assert!(s.hdhr_enabled);
        assert!(s.hdhr_base_url.is_none() && s.hdhr_quality.is_none());
        assert!(!s.hdhr_ssdp);
        assert!(Settings::parse_from(["sluice", "--hdhr-ssdp", "true"]).hdhr_ssdp);
        let s = Settings::parse_from([
            "sluice",
            "--hdhr-enabled",
            "false",
            "--hdhr-base-url",
            "http://nas.lan:3000/",
            "--hdhr-quality",
            "low",
        ]);
        assert!(!s.hdhr_enabled);
        assert_eq!(s.hdhr_base_url.as_deref(), Some("http://nas.lan:3000"));
        assert_eq!(s.hdhr_quality.as_deref(), Some("low"));
        assert_eq!(
            parse_base_url("https://tv.example/sluice").as_deref(),
            Ok("https://tv.example/sluice")
        );
        for bad in [
            "nas:3000",
            "ftp://nas",
            "http://u:p@nas",
            "http://nas/?a=1",
            "http://nas/#x",
        ] {
            assert!(parse_base_url(bad).is_err(), "{bad} should be refused");
        }
        for bad in ["maybe", "", "2"] {
            assert!(parse_switch(bad).is_err(), "{bad} should be refused");
        }
        assert!(Settings::try_parse_from(["sluice", "--hdhr-enabled", "perhaps"]).is_err());
        let mut s = Settings::parse_from(["sluice"]);
        s.hdhr_quality = Some("Not A Name".into());
        assert!(s.validate().unwrap_err().contains("HDHR_QUALITY"));
    }

    #[test]
    fn sizes_parse_in_every_spec_form() {
        assert_eq!(parse_size("512MB"), Ok(512_000_000));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("1.5GiB"), Ok(1_610_612_736));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("123456"), Ok(123_456));
        assert_eq!(parse_size(" 2 mib "), Ok(2 * 1024 * 1024));
        for bad in ["", "MB", "1.2.3GB", "12XB", "-5MB", ".5GB", "1.5", "0"] {
            assert!(parse_size(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn bad_environment_names_the_variable() {
        let err = Settings::try_parse_from(["sluice", "--memory-warning", "lots"]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("MEMORY_WARNING_THRESHOLD"), "{text}");
        assert!(text.contains("512MB"), "{text}");
    }

    #[test]
    fn bad_rate_limits_and_origins_name_the_variable() {
        for (flag, var) in [
            ("--rate-limit-preview", "RATE_LIMIT_PREVIEW"),
            ("--rate-limit-admin", "RATE_LIMIT_ADMIN"),
            ("--rate-limit-api", "RATE_LIMIT_API"),
            ("--cors-origin", "CORS_ORIGIN"),
        ] {
            let err = Settings::try_parse_from(["sluice", flag, "lots"]).unwrap_err();
            assert!(err.to_string().contains(var), "{err}");
        }
        let s = Settings::for_data_dir("/tmp/x");
        assert_eq!(s.rate_limit_admin.to_string(), "30/900s");
        assert!(s.cors_origin.is_none());
    }

    #[test]
    fn trust_proxy_takes_booleans_hops_and_networks() {
        assert_eq!(TrustProxy::parse("false"), Ok(TrustProxy::Off));
        assert_eq!(TrustProxy::parse("0"), Ok(TrustProxy::Off));
        assert_eq!(TrustProxy::parse("true"), Ok(TrustProxy::Hops(1)));
        assert_eq!(TrustProxy::parse("1"), Ok(TrustProxy::Hops(1)));
        assert_eq!(TrustProxy::parse(" 3 "), Ok(TrustProxy::Hops(3)));
        let TrustProxy::Networks(nets) =
            TrustProxy::parse("10.0.0.0/8, 127.0.0.1,fd00::/8").unwrap()
        else {
            panic!("a network list");
        };
        assert_eq!(nets.len(), 3);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(nets[0].contains(ip("10.200.3.4")));
        assert!(!nets[0].contains(ip("11.0.0.1")));
        assert!(
            nets[0].contains(ip("::ffff:10.9.9.9")),
            "mapped IPv4 is IPv4"
        );
        assert!(nets[1].contains(ip("127.0.0.1")));
        assert!(!nets[1].contains(ip("127.0.0.2")));
        assert!(nets[2].contains(ip("fd12::1")));
        assert!(!nets[2].contains(ip("2001:db8::1")));
        assert!(!nets[2].contains(ip("10.0.0.1")));
        let mapped = IpNet::parse("::ffff:192.168.0.0/112").unwrap();
        assert!(mapped.contains(ip("192.168.7.7")));
        assert!(IpNet::parse("0.0.0.0/0")
            .unwrap()
            .contains(ip("203.0.113.9")));
        for bad in [
            "maybe",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0/8",
            "1,2",
            "-1",
            "::1/129",
            "10.0.0.1,",
        ] {
            assert!(TrustProxy::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn bad_trust_proxy_names_the_variable_and_the_forms() {
        let err = Settings::try_parse_from(["sluice", "--trust-proxy", "sometimes"]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("TRUST_PROXY"), "{text}");
        assert!(text.contains("hop count"), "{text}");
        assert!(text.contains("10.0.0.0/8"), "{text}");
    }

    #[test]
    fn thresholds_must_be_ordered() {
        let mut s = Settings::for_data_dir("/tmp/x");
        s.memory_warning = 2_000;
        s.memory_critical = 1_000;
        assert!(s
            .validate()
            .unwrap_err()
            .contains("MEMORY_WARNING_THRESHOLD"));
    }
}
