//! XMLTV times and filler programmes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{FillerChannel, FILLER_SPAN};

/// Parses an XMLTV time (`YYYYMMDDhhmmss +zzzz`; seconds, minutes and the
/// zone may be left out) into unix seconds.
pub fn parse_xmltv_time(s: &str) -> Option<i64> {
    let s = s.trim();
    let (digits, zone) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    };
    if digits.len() < 8 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| digits.get(r).and_then(|d| d.parse::<i64>().ok());
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let h = num(8..10).unwrap_or(0);
    let mi = num(10..12).unwrap_or(0);
    let sec = num(12..14).unwrap_or(0);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let offset = if zone.is_empty() {
        0
    } else {
        let (sign, z) = match zone.as_bytes()[0] {
            b'+' => (1, &zone[1..]),
            b'-' => (-1, &zone[1..]),
            _ => return None,
        };
        if z.len() != 4 || !z.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let zh: i64 = z[..2].parse().ok()?;
        let zm: i64 = z[2..].parse().ok()?;
        sign * (zh * 3600 + zm * 60)
    };
    Some(days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds as an XMLTV time in UTC.
pub fn xmltv_time(t: i64) -> String {
    let st = UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    let s = humantime::format_rfc3339_seconds(st).to_string();
    // 2026-12-06T01:00:00Z -> 20261206010000 +0000
    let digits: String = s.chars().filter(|c| c.is_ascii_digit()).collect();
    format!("{digits} +0000")
}

pub(super) fn rfc3339(t: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t.max(0) as u64)).to_string()
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Filler programmes of `hours` covering `now..now+48h` for each channel
/// from its `from` (or the current hour) on; channels whose guide data
/// already reaches that far get none.
pub fn filler_xml(channels: &[FillerChannel], now: i64, hours: u32) -> String {
    let step = i64::from(hours.max(1)) * 3600;
    let end = now + FILLER_SPAN.as_secs() as i64;
    let hour = now - now.rem_euclid(3600);
    let mut out = String::new();
    for c in channels {
        let mut t = match c.from {
            Some(from) if from >= end => continue,
            Some(from) => from.max(hour),
            None => hour,
        };
        let (ch, title) = (esc(&c.channel), esc(&c.name));
        while t < end {
            // Blocks end on whole hours that are multiples of `step` apart.
            let next = (t - t.rem_euclid(step) + step).max(t + 60);
            out.push_str(&format!(
                "  <programme start=\"{}\" stop=\"{}\" channel=\"{ch}\"><title>{title}</title></programme>\n",
                xmltv_time(t),
                xmltv_time(next)
            ));
            t = next;
        }
    }
    out
}

/// XML-escapes text and attribute values.
pub(super) fn esc(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xmltv_times_parse_with_zones_and_round_trip() {
        assert_eq!(parse_xmltv_time("19700101000000 +0000"), Some(0));
        assert_eq!(parse_xmltv_time("19700101010000 +0100"), Some(0));
        assert_eq!(parse_xmltv_time("19691231230000 -0100"), Some(0));
        assert_eq!(parse_xmltv_time("20261206"), Some(1_796_515_200));
        assert_eq!(
            parse_xmltv_time("202612061230"),
            Some(1_796_515_200 + 45_000)
        );
        for bad in [
            "",
            "2026",
            "20261306000000 +0000",
            "20261206000000 0100",
            "20261206250000",
        ] {
            assert_eq!(parse_xmltv_time(bad), None, "{bad}");
        }
        let t = 1_796_515_200 + 3 * 3600 + 7 * 60 + 9;
        assert_eq!(xmltv_time(t), "20261206030709 +0000");
        assert_eq!(parse_xmltv_time(&xmltv_time(t)), Some(t));
    }

    #[test]
    fn filler_covers_the_next_48_hours_in_aligned_blocks() {
        let now = 1_796_515_200 + 5 * 3600 + 1234;
        let chans = [
            FillerChannel {
                channel: "7".into(),
                name: "A & B".into(),
                from: None,
            },
            FillerChannel {
                channel: "8".into(),
                name: "Ends soon".into(),
                from: Some(now + 10 * 3600 + 1800),
            },
            FillerChannel {
                channel: "9".into(),
                name: "Full".into(),
                from: Some(now + 49 * 3600),
            },
        ];
        let xml = filler_xml(&chans, now, 2);
        let blocks = |ch: &str| -> Vec<(i64, i64)> {
            xml.lines()
                .filter(|l| l.contains(&format!("channel=\"{ch}\"")))
                .map(|l| {
                    let attr = |k: &str| {
                        let i = l.find(&format!("{k}=\"")).unwrap() + k.len() + 2;
                        parse_xmltv_time(&l[i..i + 20]).unwrap()
                    };
                    (attr("start"), attr("stop"))
                })
                .collect()
        };
        let a = blocks("7");
        assert_eq!(a[0].0, now - now % 3600);
        assert!(a.last().unwrap().1 >= now + 48 * 3600);
        assert!(a.windows(2).all(|w| w[0].1 == w[1].0));
        assert!(a.iter().all(|(s, e)| e - s <= 7200 && e % 7200 == 0));
        assert!(xml.contains("<title>A &amp; B</title>"));
        let b = blocks("8");
        assert_eq!(b[0].0, now + 10 * 3600 + 1800);
        assert!(b.last().unwrap().1 >= now + 48 * 3600);
        assert!(blocks("9").is_empty());
    }
}
