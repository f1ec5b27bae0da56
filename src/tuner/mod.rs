//! HDHomeRun network tuner emulation (SPEC §14): what Plex, Jellyfin and
//! Emby read to use sluice as a live TV tuner. This module builds the
//! documents (`discover.json`, `lineup_status.json`, `lineup.json`,
//! `device.xml`) and keeps the device identity; the routes live in
//! [`crate::http::tuner`].
//!
//! The identity (`DeviceID`, `DeviceAuth`) is made once and kept in
//! `<data dir>/hdhomerun.json`, so a media server that added the tuner finds
//! the same device after a restart. The DeviceID carries the check digit of
//! real HDHomeRun IDs (the last hex digit makes the XOR checksum of the
//! nibbles, with every other one from the even positions passed through a
//! lookup table, come out 0), which media servers verify.

pub mod ssdp;

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::catalog::Stream;
use crate::memory::MemoryStatus;

pub const IDENTITY_FILE: &str = "hdhomerun.json";
pub const FRIENDLY_NAME: &str = "sluice";
pub const MANUFACTURER: &str = "Silicondust";
pub const MODEL_NUMBER: &str = "HDTC-2US";
pub const FIRMWARE_NAME: &str = "hdhomeruntc_atsc";
pub const FIRMWARE_VERSION: &str = "20200101";

/// Nibble substitution of the HDHomeRun DeviceID checksum.
const CHECK_TABLE: [u8; 16] = [
    0xA, 0x5, 0xF, 0x6, 0x7, 0xC, 0x1, 0xB, 0x9, 0x2, 0x8, 0xD, 0x4, 0x3, 0xE, 0x0,
];

/// The XOR checksum of a DeviceID's nibbles (0 for a valid ID).
fn checksum(id: u32) -> u8 {
    (0..8).fold(0u8, |acc, i| {
        let nibble = ((id >> (28 - 4 * i)) & 0xF) as u8;
        acc ^ if i % 2 == 0 {
            CHECK_TABLE[nibble as usize]
        } else {
            nibble
        }
    })
}

/// Whether an 8-hex-digit DeviceID is valid (its check digit matches).
pub fn valid_device_id(id: &str) -> bool {
    id.len() == 8
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && u32::from_str_radix(id, 16).is_ok_and(|n| checksum(n) == 0)
}

/// A DeviceID from 28 random bits plus the check digit, upper-case hex.
pub fn device_id_from(bits: u32) -> String {
    let head = bits << 4;
    format!("{:08X}", head | checksum(head) as u32)
}

/// The tuner's identity, kept in the data dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub device_id: String,
    pub device_auth: String,
}

impl Identity {
    fn generate() -> Identity {
        let bits = uuid::Uuid::new_v4().as_u128();
        Identity {
            device_id: device_id_from((bits >> 96) as u32),
            device_auth: format!("{:024x}", bits & ((1u128 << 96) - 1)),
        }
    }

    /// Reads `<data_dir>/hdhomerun.json`, or makes and stores a new identity
    /// when there is none (or it is unreadable, which is logged).
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<Identity> {
        let path = data_dir.join(IDENTITY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Identity>(&bytes) {
                Ok(id) if valid_device_id(&id.device_id) && !id.device_auth.is_empty() => {
                    return Ok(id)
                }
                _ => tracing::warn!(
                    path = %path.display(),
                    "the HDHomeRun identity file is not valid: a new DeviceID is made, media servers will see a new tuner"
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let id = Identity::generate();
        std::fs::create_dir_all(data_dir)?;
        let tmp = data_dir.join(format!(".{IDENTITY_FILE}.tmp-{}", std::process::id()));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&id).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(data_dir)?.sync_all()?;
        Ok(id)
    }
}

/// `GET /discover.json`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Discover {
    pub friendly_name: &'static str,
    pub manufacturer: &'static str,
    pub model_number: &'static str,
    pub firmware_name: &'static str,
    pub firmware_version: &'static str,
    #[serde(rename = "DeviceID")]
    pub device_id: String,
    pub device_auth: String,
    #[serde(rename = "BaseURL")]
    pub base_url: String,
    #[serde(rename = "LineupURL")]
    pub lineup_url: String,
    pub tuner_count: usize,
}

pub fn discover(identity: &Identity, base_url: &str, tuner_count: usize) -> Discover {
    Discover {
        friendly_name: FRIENDLY_NAME,
        manufacturer: MANUFACTURER,
        model_number: MODEL_NUMBER,
        firmware_name: FIRMWARE_NAME,
        firmware_version: FIRMWARE_VERSION,
        device_id: identity.device_id.clone(),
        device_auth: identity.device_auth.clone(),
        base_url: base_url.to_string(),
        lineup_url: format!("{base_url}/lineup.json"),
        tuner_count,
    }
}

/// `GET /lineup_status.json`: never scanning, always able to.
pub fn lineup_status() -> serde_json::Value {
    serde_json::json!({
        "ScanInProgress": 0,
        "ScanPossible": 1,
        "Source": "Cable",
        "SourceList": ["Cable"],
    })
}

/// One channel of `GET /lineup.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LineupEntry {
    #[serde(rename = "GuideNumber")]
    pub guide_number: String,
    #[serde(rename = "GuideName")]
    pub guide_name: String,
    #[serde(rename = "URL")]
    pub url: String,
    #[serde(rename = "HD")]
    pub hd: u8,
}

/// Sort key of a channel number: numeric major, then minor (`5.1` < `5.2`
/// < `10`); numbers that do not parse sort last.
fn number_key(n: Option<&str>) -> (u64, u64) {
    let n = n.unwrap_or("");
    let (major, minor) = n.split_once('.').unwrap_or((n, "0"));
    match (major.parse(), minor.parse()) {
        (Ok(a), Ok(b)) => (a, b),
        _ => (u64::MAX, u64::MAX),
    }
}

/// Every enabled stream in channel-number order, its URL a TS preview of
/// this server (with `quality` when the tuner transcodes to a profile; else
/// sluice remuxes where the source allows).
pub fn lineup(streams: &[Stream], base_url: &str, quality: Option<&str>) -> Vec<LineupEntry> {
    let mut enabled: Vec<&Stream> = streams.iter().filter(|s| s.enabled).collect();
    enabled.sort_by_key(|s| number_key(s.number.as_deref()));
    let query = match quality {
        Some(q) => format!("format=ts&quality={q}"),
        None => "format=ts".to_string(),
    };
    enabled
        .into_iter()
        .map(|s| LineupEntry {
            guide_number: s.number.clone().unwrap_or_else(|| s.id.clone()),
            guide_name: s.name.clone(),
            url: format!("{base_url}/streams/preview/{}?{query}", s.id),
            hd: 1,
        })
        .collect()
}

/// How many channels a media server may still open: the free transcode
/// slots, none while memory is critical or sluice shuts down.
pub fn tuner_count(
    max_transcodes: usize,
    running_transcodes: usize,
    memory: MemoryStatus,
    shutting_down: bool,
) -> usize {
    if shutting_down || memory == MemoryStatus::Critical {
        return 0;
    }
    max_transcodes.saturating_sub(running_transcodes)
}

/// How many more channels sluice may open: its free channel slots (one
/// upstream connection each), bounded by the connections the providers of
/// the lineup still allow (None: one of them has no limit).
pub fn channel_room(free_channels: usize, provider_room: Option<usize>) -> usize {
    provider_room.map_or(free_channels, |p| p.min(free_channels))
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// `GET /device.xml`: the UPnP MediaServer description HDHomeRun devices
/// serve, with the same DeviceID.
pub fn device_xml(identity: &Identity, base_url: &str) -> String {
    let base = xml_escape(base_url);
    let id = xml_escape(&identity.device_id);
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<root xmlns="urn:schemas-upnp-org:device-1-0">
  <specVersion>
    <major>1</major>
    <minor>0</minor>
  </specVersion>
  <URLBase>{base}</URLBase>
  <device>
    <deviceType>urn:schemas-upnp-org:device:MediaServer:1</deviceType>
    <friendlyName>{FRIENDLY_NAME}</friendlyName>
    <manufacturer>{MANUFACTURER}</manufacturer>
    <modelName>{MODEL_NUMBER}</modelName>
    <modelNumber>{MODEL_NUMBER}</modelNumber>
    <serialNumber>{id}</serialNumber>
    <UDN>uuid:{id}</UDN>
  </device>
</root>
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_carry_the_hdhomerun_check_digit() {
        // libhdhomerun's hdhomerun_discover_validate_device_id, unrolled.
        let reference = |id: u32| {
            let t = |n: u32| CHECK_TABLE[(n & 0xF) as usize];
            let n = |n: u32| (n & 0xF) as u8;
            t(id >> 28)
                ^ n(id >> 24)
                ^ t(id >> 20)
                ^ n(id >> 16)
                ^ t(id >> 12)
                ^ n(id >> 8)
                ^ t(id >> 4)
                ^ n(id)
                == 0
        };
        for bits in [0u32, 1, 0x0ABC_DEF1, 0x0FFF_FFFF, 0x0123_4567, 0x0101_0A7B] {
            let id = device_id_from(bits);
            let n = u32::from_str_radix(&id, 16).unwrap();
            assert_eq!(n >> 4, bits, "{id}");
            assert!(reference(n) && valid_device_id(&id), "{id}");
            for flip in [1u32, 0x10, 0x1000_0000] {
                assert!(!reference(n ^ flip));
                assert!(!valid_device_id(&format!("{:08X}", n ^ flip)));
            }
        }
        assert!(!valid_device_id("xyz"));
        assert!(!valid_device_id("1010A7BD0"));
    }

    #[test]
    fn the_identity_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        assert!(valid_device_id(&a.device_id), "{a:?}");
        assert_eq!(a.device_auth.len(), 24);
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a, b);
        std::fs::write(dir.path().join(IDENTITY_FILE), b"{broken").unwrap();
        let c = Identity::load_or_create(dir.path()).unwrap();
        assert!(valid_device_id(&c.device_id));
        assert_eq!(Identity::load_or_create(dir.path()).unwrap(), c);
    }

    #[test]
    fn the_lineup_is_in_number_order_with_enabled_streams_only() {
        let mk = |id: &str, number: &str, enabled: bool| Stream {
            id: id.into(),
            name: format!("Name {id}"),
            url: "http://h/x".into(),
            backup_urls: vec![],
            group: None,
            logo: None,
            tvg_id: None,
            provider: None,
            number: Some(number.into()),
            headers: Default::default(),
            attributes: Default::default(),
            enabled,
            created_at: String::new(),
            updated_at: String::new(),
        };
        let streams = [
            mk("ten", "10", true),
            mk("five-two", "5.2", true),
            mk("off", "1", false),
            mk("five-one", "5.1", true),
            mk("two", "2", true),
        ];
        let l = lineup(&streams, "http://tv:3000", None);
        let order: Vec<&str> = l.iter().map(|e| e.guide_number.as_str()).collect();
        assert_eq!(order, ["2", "5.1", "5.2", "10"]);
        assert_eq!(l[0].url, "http://tv:3000/streams/preview/two?format=ts");
        assert_eq!(l[0].guide_name, "Name two");
        let l = lineup(&streams, "http://tv:3000", Some("low"));
        assert_eq!(
            l[3].url,
            "http://tv:3000/streams/preview/ten?format=ts&quality=low"
        );
    }

    #[test]
    fn tuner_count_is_free_slots_and_none_under_pressure() {
        assert_eq!(tuner_count(3, 0, MemoryStatus::Ok, false), 3);
        assert_eq!(tuner_count(3, 1, MemoryStatus::Warning, false), 2);
        assert_eq!(tuner_count(3, 5, MemoryStatus::Ok, false), 0);
        assert_eq!(tuner_count(3, 0, MemoryStatus::Critical, false), 0);
        assert_eq!(tuner_count(3, 0, MemoryStatus::Ok, true), 0);
    }

    #[test]
    fn channel_room_is_the_smaller_of_slots_and_provider_connections() {
        assert_eq!(channel_room(20, None), 20);
        assert_eq!(channel_room(20, Some(2)), 2);
        assert_eq!(channel_room(1, Some(2)), 1);
        assert_eq!(channel_room(20, Some(0)), 0);
    }

    #[test]
    fn device_xml_escapes_the_base_url() {
        let id = Identity {
            device_id: "1010A7BD".into(),
            device_auth: "x".into(),
        };
        let xml = device_xml(&id, "http://tv/?a=1&b=<2>");
        assert!(xml.contains("<URLBase>http://tv/?a=1&amp;b=&lt;2&gt;</URLBase>"));
        assert!(xml.contains("<UDN>uuid:1010A7BD</UDN>"));
    }
}
