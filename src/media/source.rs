//! What a catalog URL means to the engine: the scheme allowlist (SPEC §8),
//! sluice's own `test://` scheme (a live test pattern with a tone), and
//! whether a source is live. Pure parsing: no GStreamer objects here.

use std::path::{Path, PathBuf};

/// Longest source URL accepted.
pub const MAX_URL_LEN: usize = 4096;

pub const ALLOWED_SCHEMES: &[&str] = &[
    "http", "https", "hls", "rtsp", "rtsps", "rtmp", "rtmps", "udp", "rtp", "srt", "test", "file",
];

/// videotestsrc patterns a `test://` URL may name.
pub const TEST_PATTERNS: &[&str] = &[
    "smpte",
    "snow",
    "black",
    "white",
    "red",
    "green",
    "blue",
    "checkers-1",
    "checkers-2",
    "checkers-4",
    "checkers-8",
    "circular",
    "blink",
    "smpte75",
    "zone-plate",
    "gamut",
    "chroma-zone-plate",
    "solid-color",
    "ball",
    "smpte100",
    "bar",
    "pinwheel",
    "spokes",
    "gradient",
    "colors",
];

/// Audio of a `test://` source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestAudio {
    /// A sine tone at `freq` Hz.
    Tone,
    Silence,
    /// No audio stream at all (video-only output).
    None,
}

/// A parsed `test://PATTERN?size=WxH&rate=N[/D]&audio=tone|silence|none&freq=HZ&interlaced=1`.
#[derive(Debug, Clone, PartialEq)]
pub struct TestSource {
    pub pattern: String,
    pub width: u32,
    pub height: u32,
    pub rate: (i32, i32),
    pub audio: TestAudio,
    pub freq: f64,
    pub interlaced: bool,
}

/// A source the engine can open.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceUri {
    Test(TestSource),
    /// A URI for urisourcebin (http, rtsp, file, ...), already vetted.
    Uri {
        uri: String,
        scheme: String,
    },
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SourceUriError {
    #[error("URL is empty")]
    Empty,
    #[error("URL is longer than {MAX_URL_LEN} characters")]
    TooLong,
    #[error("URL contains spaces or control characters")]
    BadCharacters,
    #[error("URL has no scheme (expected e.g. http://, rtsp://, test://)")]
    NoScheme,
    #[error("scheme '{0}' is not allowed (allowed: http, https, hls, rtsp, rtsps, rtmp, rtmps, udp, rtp, srt, test, file)")]
    SchemeNotAllowed(String),
    #[error("URL is malformed: {0}")]
    Malformed(String),
    #[error("file:// sources are disabled (set SLUICE_MEDIA_DIR to allow a directory)")]
    FileDisabled,
    #[error("file:// source is outside SLUICE_MEDIA_DIR")]
    FileOutsideMediaDir,
    #[error("file:// source does not exist or cannot be read")]
    FileMissing,
    #[error("test:// source: {0}")]
    BadTest(String),
}

impl SourceUri {
    /// Parses and vets a catalog URL. `media_dir` is `SLUICE_MEDIA_DIR`.
    pub fn parse(url: &str, media_dir: Option<&Path>) -> Result<Self, SourceUriError> {
        let url = url.trim();
        if url.is_empty() {
            return Err(SourceUriError::Empty);
        }
        if url.len() > MAX_URL_LEN {
            return Err(SourceUriError::TooLong);
        }
        if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(SourceUriError::BadCharacters);
        }
        let Some((scheme, _)) = url.split_once("://") else {
            return Err(SourceUriError::NoScheme);
        };
        let scheme = scheme.to_ascii_lowercase();
        if !ALLOWED_SCHEMES.contains(&scheme.as_str()) {
            return Err(SourceUriError::SchemeNotAllowed(scheme));
        }
        let parsed = url::Url::parse(url).map_err(|e| SourceUriError::Malformed(e.to_string()))?;
        match scheme.as_str() {
            "test" => Ok(SourceUri::Test(parse_test(&parsed)?)),
            "file" => {
                let dir = media_dir.ok_or(SourceUriError::FileDisabled)?;
                let path = parsed
                    .to_file_path()
                    .map_err(|_| SourceUriError::Malformed("not a local file path".into()))?;
                let resolved = confine(&path, dir)?;
                let uri = url::Url::from_file_path(&resolved)
                    .map_err(|_| SourceUriError::Malformed("not a local file path".into()))?;
                Ok(SourceUri::Uri {
                    uri: uri.to_string(),
                    scheme,
                })
            }
            "hls" => {
                // hls://host/path means the HLS playlist at http://host/path;
                // hls+https is not a URL scheme, so hls://https://... is accepted too.
                let rest = &url["hls://".len()..];
                let inner = if rest.starts_with("http://") || rest.starts_with("https://") {
                    rest.to_string()
                } else {
                    format!("http://{rest}")
                };
                url::Url::parse(&inner).map_err(|e| SourceUriError::Malformed(e.to_string()))?;
                Ok(SourceUri::Uri { uri: inner, scheme })
            }
            _ => {
                if parsed.host_str().is_none_or(|h| h.is_empty())
                    && scheme != "udp"
                    && scheme != "rtp"
                {
                    return Err(SourceUriError::Malformed("missing host".into()));
                }
                Ok(SourceUri::Uri {
                    uri: url.to_string(),
                    scheme,
                })
            }
        }
    }

    /// Live sources produce in real time; the engine lets a leaky queue drop
    /// frames for them rather than stall the source behind a slow client.
    pub fn is_live(&self) -> bool {
        match self {
            SourceUri::Test(_) => true,
            SourceUri::Uri { scheme, .. } => matches!(
                scheme.as_str(),
                "rtsp" | "rtsps" | "rtmp" | "rtmps" | "udp" | "rtp" | "srt"
            ),
        }
    }

    /// The URI as given to GStreamer (`test://…` for test sources).
    pub fn display(&self) -> &str {
        match self {
            SourceUri::Test(_) => "test://",
            SourceUri::Uri { uri, .. } => uri,
        }
    }

    pub fn scheme(&self) -> &str {
        match self {
            SourceUri::Test(_) => "test",
            SourceUri::Uri { scheme, .. } => scheme,
        }
    }
}

/// Resolves `path` (following `..` and symlinks) and checks it lies inside `dir`.
fn confine(path: &Path, dir: &Path) -> Result<PathBuf, SourceUriError> {
    let dir = dir
        .canonicalize()
        .map_err(|_| SourceUriError::FileOutsideMediaDir)?;
    let resolved = path.canonicalize().map_err(|_| {
        // A missing file whose lexical path is outside is still "outside".
        if lexically_inside(path, &dir) {
            SourceUriError::FileMissing
        } else {
            SourceUriError::FileOutsideMediaDir
        }
    })?;
    if !resolved.starts_with(&dir) {
        return Err(SourceUriError::FileOutsideMediaDir);
    }
    if !resolved.is_file() {
        return Err(SourceUriError::FileMissing);
    }
    Ok(resolved)
}

fn lexically_inside(path: &Path, dir: &Path) -> bool {
    let mut parts: Vec<std::path::Component> = Vec::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::CurDir => {}
            other => parts.push(other),
        }
    }
    parts.iter().collect::<PathBuf>().starts_with(dir)
}

fn parse_test(url: &url::Url) -> Result<TestSource, SourceUriError> {
    let bad = |m: String| SourceUriError::BadTest(m);
    let pattern = url.host_str().unwrap_or("smpte").to_ascii_lowercase();
    let pattern = if pattern.is_empty() {
        "smpte".to_string()
    } else {
        pattern
    };
    if !TEST_PATTERNS.contains(&pattern.as_str()) {
        return Err(bad(format!(
            "unknown pattern '{pattern}' (e.g. smpte, ball, snow, bar)"
        )));
    }
    let mut src = TestSource {
        pattern,
        width: 1280,
        height: 720,
        rate: (30, 1),
        audio: TestAudio::Tone,
        freq: 440.0,
        interlaced: false,
    };
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "size" => {
                let (w, h) = v
                    .split_once('x')
                    .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
                    .filter(|(w, h)| (16..=7680).contains(w) && (16..=4320).contains(h))
                    .ok_or_else(|| {
                        bad(format!(
                            "size '{v}' must be WIDTHxHEIGHT within 16x16..7680x4320"
                        ))
                    })?;
                src.width = w;
                src.height = h;
            }
            "rate" => {
                let (n, d) = match v.split_once('/') {
                    Some((n, d)) => (n.parse::<i32>().ok(), d.parse::<i32>().ok()),
                    None => (v.parse::<i32>().ok(), Some(1)),
                };
                match (n, d) {
                    (Some(n), Some(d)) if n > 0 && d > 0 && n / d <= 120 => src.rate = (n, d),
                    _ => {
                        return Err(bad(format!(
                            "rate '{v}' must be N or N/D frames per second, at most 120"
                        )))
                    }
                }
            }
            "audio" => {
                src.audio = match v.as_ref() {
                    "tone" | "sine" => TestAudio::Tone,
                    "silence" => TestAudio::Silence,
                    "none" | "off" => TestAudio::None,
                    _ => return Err(bad(format!("audio '{v}' must be tone, silence or none"))),
                }
            }
            "freq" => {
                src.freq = v
                    .parse::<f64>()
                    .ok()
                    .filter(|f| (20.0..=20_000.0).contains(f))
                    .ok_or_else(|| bad(format!("freq '{v}' must be 20..20000 Hz")))?;
            }
            "interlaced" => src.interlaced = matches!(v.as_ref(), "1" | "true" | "yes"),
            other => return Err(bad(format!("unknown parameter '{other}'"))),
        }
    }
    Ok(src)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_scheme_parses() {
        let s = SourceUri::parse("test://smpte?size=1920x1080&rate=30", None).unwrap();
        let SourceUri::Test(t) = s else { panic!() };
        assert_eq!((t.width, t.height, t.rate), (1920, 1080, (30, 1)));
        assert_eq!(t.audio, TestAudio::Tone);
        let SourceUri::Test(t) =
            SourceUri::parse("test://ball?audio=none&rate=30000/1001", None).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (t.pattern.as_str(), t.audio, t.rate),
            ("ball", TestAudio::None, (30000, 1001))
        );
        assert!(SourceUri::parse("test://nope", None).is_err());
        assert!(SourceUri::parse("test://smpte?size=big", None).is_err());
    }

    #[test]
    fn schemes_outside_the_allowlist_are_refused() {
        for bad in [
            "ftp://x/y",
            "javascript://alert(1)",
            "data://x",
            "gopher://h/",
        ] {
            assert!(
                matches!(
                    SourceUri::parse(bad, None),
                    Err(SourceUriError::SchemeNotAllowed(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(
            SourceUri::parse("http://a b/", None),
            Err(SourceUriError::BadCharacters)
        );
        assert_eq!(
            SourceUri::parse("http://a/\u{7}", None),
            Err(SourceUriError::BadCharacters)
        );
        assert_eq!(
            SourceUri::parse("nothing", None),
            Err(SourceUriError::NoScheme)
        );
        assert!(SourceUri::parse(&format!("http://h/{}", "a".repeat(5000)), None).is_err());
        for ok in [
            "http://h/a.ts",
            "https://h/a.m3u8",
            "rtsp://h:554/x",
            "udp://@239.0.0.1:1234",
            "srt://h:9000",
            "rtmp://h/app/key",
        ] {
            assert!(SourceUri::parse(ok, None).is_ok(), "{ok}");
        }
    }

    #[test]
    fn file_sources_stay_inside_the_media_dir() {
        let dir = tempfile::tempdir().unwrap();
        let media = dir.path().join("media");
        std::fs::create_dir(&media).unwrap();
        std::fs::write(media.join("a.ts"), b"x").unwrap();
        std::fs::write(dir.path().join("secret.ts"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret.ts"), media.join("link.ts")).unwrap();
        let url = |p: &Path| format!("file://{}", p.display());
        assert_eq!(
            SourceUri::parse(&url(&media.join("a.ts")), None),
            Err(SourceUriError::FileDisabled)
        );
        assert!(SourceUri::parse(&url(&media.join("a.ts")), Some(&media)).is_ok());
        assert_eq!(
            SourceUri::parse(
                &format!("file://{}/../secret.ts", media.display()),
                Some(&media)
            ),
            Err(SourceUriError::FileOutsideMediaDir)
        );
        assert_eq!(
            SourceUri::parse(&url(&media.join("link.ts")), Some(&media)),
            Err(SourceUriError::FileOutsideMediaDir)
        );
        assert_eq!(
            SourceUri::parse(&url(&media.join("missing.ts")), Some(&media)),
            Err(SourceUriError::FileMissing)
        );
    }
}
