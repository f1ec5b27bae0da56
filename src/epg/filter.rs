//! Filtering a raw XMLTV guide to the catalog in one streaming pass: guide
//! channels are matched to streams, the matched programmes are copied with
//! their channel renamed to the stream's channel id, and the catalog's own
//! `<channel>` elements are written. Memory stays flat whatever the guide's
//! size: nothing but the current element is held.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use super::xmltv::{esc, parse_xmltv_time};
use super::{FillerChannel, Slot, MAX_GUIDE_BYTES, MAX_LISTED, RENDERED_FILE, XMLTV_HEAD};
use crate::catalog::Stream;

/// The channel id of a stream in `/epg.xml`: its number, else its id.
pub fn channel_id(s: &Stream) -> String {
    s.number.clone().unwrap_or_else(|| s.id.clone())
}

/// The names a guide channel's display names are compared with.
fn match_names(s: &Stream) -> Vec<&str> {
    let mut names = vec![s.name.as_str()];
    names.extend(s.attributes.get("tvg-name").map(String::as_str));
    names
}

/// Lowercase, accents removed, letters and digits only.
pub fn fold_name(name: &str) -> String {
    name.chars()
        .flat_map(char::to_lowercase)
        .filter_map(|c| {
            if c.is_ascii_alphanumeric() {
                return Some(c);
            }
            let base = strip_accent(c);
            base.is_alphanumeric().then_some(base)
        })
        .collect()
}

/// The base letter of common accented Latin letters.
fn strip_accent(c: char) -> char {
    const FROM: &str =
        "àáâãäåāăąçćĉċčďđèéêëēĕėęěĝğġģĥìíîïĩīĭįıĵķĺļľłñńņňòóôõöøōŏőŕŗřśŝşšţťŧùúûüũūŭůűųŵýÿŷźżž";
    const TO: &str =
        "aaaaaaaaacccccddeeeeeeeeeggggghiiiiiiiiijklllllnnnnoooooooooorrrssssttttuuuuuuuuuuwyyyzzz";
    FROM.chars()
        .position(|f| f == c)
        .and_then(|i| TO.chars().nth(i))
        .unwrap_or(c)
}

/// What a render produced, besides the file.
pub(super) struct Rendered {
    pub(super) channels: usize,
    pub(super) matched: usize,
    pub(super) guide_channels: usize,
    pub(super) programmes: u64,
    pub(super) filler: Vec<FillerChannel>,
    pub(super) listings: Vec<(String, Vec<Slot>)>,
}

/// A reader that fails once more than `left` bytes came through.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(std::io::Error::other(format!(
                "the guide is larger than {} MiB uncompressed: it was not loaded",
                MAX_GUIDE_BYTES / (1024 * 1024)
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Opens a raw guide, gunzipping it when it starts with the gzip magic.
fn open_raw(path: &Path) -> std::io::Result<Box<dyn BufRead>> {
    let mut file = BufReader::with_capacity(64 * 1024, std::fs::File::open(path)?);
    let gz = file.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let inner: Box<dyn Read> = if gz {
        Box::new(flate2::bufread::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    Ok(Box::new(BufReader::with_capacity(
        64 * 1024,
        Capped {
            inner,
            left: MAX_GUIDE_BYTES,
        },
    )))
}

/// Writes `<dir>/.epg.xml.part.tmp` (installed by [`publish`]) for `streams` from the raw guide (none:
/// channels only); keeps now/next listings for `now..until`.
pub(super) fn render(
    dir: &Path,
    raw: Option<&Path>,
    streams: &[Stream],
    now: i64,
    until: i64,
) -> Result<Rendered, String> {
    let tmp = dir.join(format!(".{RENDERED_FILE}.tmp"));
    let file = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    let io = |e: std::io::Error| e.to_string();
    out.write_all(XMLTV_HEAD.as_bytes()).map_err(io)?;
    for s in streams {
        let id = esc(&channel_id(s));
        write!(
            out,
            "  <channel id=\"{id}\">\n    <display-name>{}</display-name>\n",
            esc(&s.name)
        )
        .map_err(io)?;
        if let Some(n) = &s.number {
            writeln!(out, "    <display-name>{}</display-name>", esc(n)).map_err(io)?;
        }
        if let Some(logo) = s.logo.as_deref().filter(|l| !l.is_empty()) {
            writeln!(out, "    <icon src=\"{}\"/>", esc(logo)).map_err(io)?;
        }
        out.write_all(b"  </channel>\n").map_err(io)?;
    }
    let mut filter = Filter::new(streams, now, until);
    if let Some(raw) = raw {
        let reader = open_raw(raw).map_err(|e| format!("cannot read the cached guide: {e}"))?;
        filter
            .run(reader, &mut out)
            .map_err(|e| format!("the guide is not valid XMLTV: {e}"))?;
    }
    out.flush().map_err(io)?;
    let file = out.into_inner().map_err(|e| e.to_string())?;
    file.sync_all().map_err(io)?;
    drop(file);
    Ok(filter.finish(streams))
}

/// The streaming filter: matches guide channels to streams, then copies
/// the matched programmes with their channel renamed.
struct Filter<'a> {
    streams: &'a [Stream],
    by_tvg: HashMap<String, Vec<usize>>,
    by_name: HashMap<String, Vec<usize>>,
    /// Per stream, the guide channel matched by tvg id / by name.
    id_match: Vec<Option<String>>,
    name_match: Vec<Option<String>>,
    /// Guide channel id -> streams, once the channel list is over.
    targets: Option<HashMap<String, Vec<usize>>>,
    /// Streams that have their guide channel in `targets`.
    assigned: Vec<bool>,
    guide_channels: usize,
    programmes: u64,
    /// Per stream: programmes written, last stop, now/next listing.
    written: Vec<u64>,
    last_stop: Vec<Option<i64>>,
    listings: Vec<Vec<Slot>>,
    now: i64,
    until: i64,
}

impl<'a> Filter<'a> {
    fn new(streams: &'a [Stream], now: i64, until: i64) -> Self {
        let mut by_tvg: HashMap<String, Vec<usize>> = HashMap::new();
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, s) in streams.iter().enumerate() {
            if let Some(t) = s.tvg_id.as_deref().filter(|t| !t.trim().is_empty()) {
                by_tvg.entry(t.trim().to_lowercase()).or_default().push(i);
            }
            for name in match_names(s) {
                let folded = fold_name(name);
                if !folded.is_empty() && !by_name.get(&folded).is_some_and(|l| l.contains(&i)) {
                    by_name.entry(folded).or_default().push(i);
                }
            }
        }
        let n = streams.len();
        Filter {
            streams,
            by_tvg,
            by_name,
            id_match: vec![None; n],
            name_match: vec![None; n],
            targets: None,
            assigned: vec![false; n],
            guide_channels: 0,
            programmes: 0,
            written: vec![0; n],
            last_stop: vec![None; n],
            listings: vec![Vec::new(); n],
            now,
            until,
        }
    }

    fn channel(&mut self, id: &str, names: &[String]) {
        self.guide_channels += 1;
        if let Some(list) = self.by_tvg.get(&id.trim().to_lowercase()) {
            for &i in list {
                self.id_match[i].get_or_insert_with(|| id.to_string());
            }
        }
        for n in names {
            if let Some(list) = self.by_name.get(&fold_name(n)) {
                for &i in list {
                    self.name_match[i].get_or_insert_with(|| id.to_string());
                }
            }
        }
    }

    /// A channel listed after programmes (some guides interleave them):
    /// it can still take the streams that matched nothing so far.
    fn late_channel(&mut self, id: &str, names: &[String]) {
        self.guide_channels += 1;
        let mut takers: Vec<usize> = self
            .by_tvg
            .get(&id.trim().to_lowercase())
            .cloned()
            .unwrap_or_default();
        if takers.is_empty() {
            takers = names
                .iter()
                .find_map(|n| self.by_name.get(&fold_name(n)).cloned())
                .unwrap_or_default();
        }
        let targets = self.targets.get_or_insert_with(HashMap::new);
        for i in takers {
            if !self.assigned[i] {
                self.assigned[i] = true;
                targets.entry(id.to_string()).or_default().push(i);
            }
        }
    }

    fn targets(&mut self) -> &HashMap<String, Vec<usize>> {
        if self.targets.is_none() {
            let mut t: HashMap<String, Vec<usize>> = HashMap::new();
            for i in 0..self.streams.len() {
                if let Some(g) = self.id_match[i].clone().or(self.name_match[i].clone()) {
                    t.entry(g).or_default().push(i);
                    self.assigned[i] = true;
                }
            }
            self.targets = Some(t);
        }
        self.targets.as_ref().expect("set above")
    }

    fn run(&mut self, src: Box<dyn BufRead>, out: &mut impl Write) -> Result<(), String> {
        let mut reader = Reader::from_reader(src);
        let mut buf = Vec::with_capacity(4096);
        let mut inner = Vec::with_capacity(4096);
        let mut saw_tv = false;
        loop {
            let ev = reader
                .read_event_into(&mut buf)
                .map_err(|e| xml_error(&reader, e))?;
            match ev {
                Event::Start(e) if e.name().as_ref() == b"tv" => saw_tv = true,
                Event::Start(e) if e.name().as_ref() == b"channel" => {
                    let id = attr(&e, b"id")?.unwrap_or_default();
                    let names = read_names(&mut reader, &mut inner)?;
                    if self.targets.is_none() {
                        self.channel(&id, &names);
                    } else {
                        self.late_channel(&id, &names);
                    }
                }
                Event::Start(e) if e.name().as_ref() == b"programme" => {
                    let e = e.into_owned();
                    self.programme(&mut reader, &e, &mut inner, out)?;
                }
                Event::Eof => break,
                _ => {}
            }
            buf.clear();
        }
        if !saw_tv {
            return Err("no <tv> element".into());
        }
        Ok(())
    }

    fn programme(
        &mut self,
        reader: &mut Reader<Box<dyn BufRead>>,
        start: &BytesStart<'_>,
        inner: &mut Vec<u8>,
        out: &mut impl Write,
    ) -> Result<(), String> {
        let channel = attr(start, b"channel")?.unwrap_or_default();
        let targets = self.targets().get(&channel).cloned();
        let Some(targets) = targets else {
            reader
                .read_to_end_into(start.name(), inner)
                .map_err(|e| xml_error(reader, e))?;
            inner.clear();
            return Ok(());
        };
        let mut attrs = String::new();
        let (mut begins, mut ends) = (None, None);
        for a in start.attributes().with_checks(false) {
            let a = a.map_err(|e| e.to_string())?;
            let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
            if key == "channel" {
                continue;
            }
            let value = a.unescape_value().map_err(|e| e.to_string())?;
            match key.as_str() {
                "start" => begins = parse_xmltv_time(&value),
                "stop" => ends = parse_xmltv_time(&value),
                _ => {}
            }
            attrs.push_str(&format!(" {key}=\"{}\"", esc(&value)));
        }
        let mut body = quick_xml::Writer::new(Vec::with_capacity(512));
        let mut title: Option<String> = None;
        let mut in_title = false;
        loop {
            let ev = reader
                .read_event_into(inner)
                .map_err(|e| xml_error(reader, e))?;
            match &ev {
                Event::End(e) if e.name().as_ref() == b"programme" => break,
                Event::Eof => return Err("the guide ends inside a <programme>".into()),
                Event::Start(e) if e.name().as_ref() == b"title" && title.is_none() => {
                    in_title = true;
                    title = Some(String::new());
                }
                Event::End(e) if e.name().as_ref() == b"title" => in_title = false,
                Event::Text(t) if in_title => {
                    if let (Some(s), Ok(text)) = (title.as_mut(), t.unescape()) {
                        s.push_str(&text);
                    }
                }
                Event::CData(t) if in_title => {
                    if let Some(s) = title.as_mut() {
                        s.push_str(&String::from_utf8_lossy(t));
                    }
                }
                _ => {}
            }
            body.write_event(ev).map_err(|e| e.to_string())?;
            inner.clear();
        }
        inner.clear();
        let body = body.into_inner();
        for i in targets {
            let ch = esc(&channel_id(&self.streams[i]));
            write!(out, "  <programme{attrs} channel=\"{ch}\">")
                .and_then(|_| out.write_all(&body))
                .and_then(|_| out.write_all(b"</programme>\n"))
                .map_err(|e| e.to_string())?;
            self.programmes += 1;
            self.written[i] += 1;
            if let Some(stop) = ends {
                let last = self.last_stop[i].get_or_insert(stop);
                *last = (*last).max(stop);
            }
            if let (Some(b), Some(e), Some(t)) = (begins, ends, title.as_ref()) {
                let list = &mut self.listings[i];
                if e > self.now && b < self.until && list.len() < MAX_LISTED {
                    list.push(Slot {
                        title: t.trim().to_string(),
                        start: b,
                        stop: e,
                    });
                }
            }
        }
        Ok(())
    }

    fn finish(mut self, streams: &[Stream]) -> Rendered {
        let mut filler = Vec::new();
        let mut listings = Vec::new();
        let mut matched = 0;
        for (i, s) in streams.iter().enumerate() {
            let has = self.written[i] > 0;
            if has {
                matched += 1;
                let mut l = std::mem::take(&mut self.listings[i]);
                l.sort_by_key(|x| x.start);
                listings.push((s.id.clone(), l));
            }
            filler.push(FillerChannel {
                channel: channel_id(s),
                name: s.name.clone(),
                from: if has { self.last_stop[i] } else { None },
            });
        }
        // Channels whose guide data reaches past a request's 48 h get no
        // filler then ([`filler_xml`]).
        Rendered {
            channels: streams.len(),
            matched,
            guide_channels: self.guide_channels,
            programmes: self.programmes,
            filler,
            listings,
        }
    }
}

fn xml_error(reader: &Reader<Box<dyn BufRead>>, e: quick_xml::Error) -> String {
    format!("{e} (at byte {})", reader.buffer_position())
}

/// The unescaped value of attribute `key`.
fn attr(e: &BytesStart<'_>, key: &[u8]) -> Result<Option<String>, String> {
    for a in e.attributes().with_checks(false) {
        let a = a.map_err(|e| e.to_string())?;
        if a.key.as_ref() == key {
            return a
                .unescape_value()
                .map(|v| Some(v.into_owned()))
                .map_err(|e| e.to_string());
        }
    }
    Ok(None)
}

/// Reads a `<channel>`'s children; returns its display names.
fn read_names(
    reader: &mut Reader<Box<dyn BufRead>>,
    buf: &mut Vec<u8>,
) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut current: Option<String> = None;
    loop {
        let ev = reader
            .read_event_into(buf)
            .map_err(|e| xml_error(reader, e))?;
        match ev {
            Event::Start(e) if e.name().as_ref() == b"display-name" => {
                current = Some(String::new())
            }
            Event::Text(t) => {
                if let (Some(s), Ok(text)) = (current.as_mut(), t.unescape()) {
                    s.push_str(&text);
                }
            }
            Event::End(e) if e.name().as_ref() == b"display-name" => {
                if let Some(n) = current.take() {
                    names.push(n);
                }
            }
            Event::End(e) if e.name().as_ref() == b"channel" => break,
            Event::Eof => return Err("the guide ends inside a <channel>".into()),
            _ => {}
        }
        buf.clear();
    }
    buf.clear();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fold_case_accents_and_punctuation() {
        assert_eq!(fold_name("Télé Été HD"), "teleetehd");
        assert_eq!(fold_name("TF1-Séries"), "tf1series");
        assert_eq!(fold_name("  ÇA  "), "ca");
    }

    fn stream(id: &str, name: &str, tvg: Option<&str>, number: Option<&str>) -> Stream {
        Stream {
            id: id.into(),
            name: name.into(),
            url: "test://smpte".into(),
            backup_urls: vec![],
            group: None,
            logo: None,
            tvg_id: tvg.map(Into::into),
            provider: None,
            number: number.map(Into::into),
            headers: Default::default(),
            attributes: Default::default(),
            enabled: true,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    #[test]
    fn a_stream_matches_by_its_playlist_tvg_name_too() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw.xml");
        std::fs::write(
            &raw,
            "<tv><channel id=\"f24\"><display-name>France 24</display-name></channel>\n\
             <programme start=\"20261206000000 +0000\" channel=\"f24\"><title>Journal</title></programme>\n\
             </tv>\n",
        )
        .unwrap();
        let mut named = stream("f24", "France 24 (1080p)", None, Some("7"));
        let out = render(dir.path(), Some(&raw), std::slice::from_ref(&named), 0, 0).unwrap();
        assert_eq!(
            (out.matched, out.programmes),
            (0, 0),
            "the display name alone differs"
        );
        named
            .attributes
            .insert("tvg-name".into(), "France 24".into());
        let out = render(dir.path(), Some(&raw), &[named], 0, 0).unwrap();
        assert_eq!((out.matched, out.programmes), (1, 1));
    }

    #[test]
    fn filtering_keeps_matched_channels_under_their_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw.xml");
        std::fs::write(
            &raw,
            "\u{feff}<?xml version=\"1.0\"?>\n<tv>\n\
             <channel id=\"one.uk\"><display-name>One</display-name></channel>\n\
             <channel id=\"two.uk\"><display-name>Deux Été</display-name></channel>\n\
             <channel id=\"three.uk\"><display-name>Three</display-name></channel>\n\
             <programme start=\"20261206000000 +0000\" stop=\"20261206010000 +0000\" channel=\"one.uk\"><title>A &lt;1&gt;</title></programme>\n\
             <programme start='20261206010000 +0000' stop='20261206020000 +0000' channel='two.uk' clumpidx='0/1'><title>B \"q\"</title><desc>d</desc></programme>\n\
             <programme start=\"20261206000000 +0000\" stop=\"20261206010000 +0000\" channel=\"three.uk\"><title>C</title></programme>\n\
             </tv>\n",
        )
        .unwrap();
        let streams = vec![
            stream("s1", "Whatever", Some("ONE.uk"), Some("101")),
            stream("s2", "deux ete", Some("missing.uk"), None),
            stream("s3", "Unmatched", None, None),
        ];
        let out = render(dir.path(), Some(&raw), &streams, 0, i64::MAX).unwrap();
        assert_eq!(
            (
                out.channels,
                out.matched,
                out.guide_channels,
                out.programmes
            ),
            (3, 2, 3, 2)
        );
        let xml =
            std::fs::read_to_string(dir.path().join(format!(".{RENDERED_FILE}.tmp"))).unwrap();
        assert!(xml.contains("<channel id=\"101\">"), "{xml}");
        assert!(xml.contains("<display-name>101</display-name>"));
        assert!(
            xml.contains("channel=\"101\"><title>A &lt;1&gt;</title>"),
            "{xml}"
        );
        assert!(
            xml.contains("clumpidx=\"0/1\" channel=\"s2\"><title>B \"q\"</title><desc>d</desc>"),
            "{xml}"
        );
        assert!(!xml.contains("three.uk") && !xml.contains(">C<"));
        assert_eq!(out.filler.iter().filter(|f| f.from.is_none()).count(), 1);
        assert_eq!(out.listings[0].1[0].title, "A <1>");
        // Without a guide: every channel, no programmes.
        let out = render(dir.path(), None, &streams, 0, 0).unwrap();
        assert_eq!((out.channels, out.matched, out.programmes), (3, 0, 0));
    }

    #[test]
    fn channels_listed_after_programmes_still_match() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw.xml");
        std::fs::write(
            &raw,
            "<tv><channel id=\"a\"><display-name>A</display-name></channel>\n\
             <programme start=\"20261206000000 +0000\" channel=\"a\"><title>PA</title></programme>\n\
             <channel id=\"b\"><display-name>B</display-name></channel>\n\
             <channel id=\"a2\"><display-name>A</display-name></channel>\n\
             <programme start=\"20261206000000 +0000\" channel=\"b\"><title>PB</title></programme>\n\
             <programme start=\"20261206000000 +0000\" channel=\"a2\"><title>PA2</title></programme>\n\
             </tv>\n",
        )
        .unwrap();
        let streams = vec![
            stream("sa", "A", Some("a"), None),
            stream("sb", "Bee", Some("b"), None),
        ];
        let out = render(dir.path(), Some(&raw), &streams, 0, 0).unwrap();
        assert_eq!((out.matched, out.programmes, out.guide_channels), (2, 2, 3));
        let xml =
            std::fs::read_to_string(dir.path().join(format!(".{RENDERED_FILE}.tmp"))).unwrap();
        assert!(xml.contains("channel=\"sb\"><title>PB</title>"), "{xml}");
        assert!(!xml.contains("PA2"), "{xml}");
    }

    #[test]
    fn a_guide_beyond_the_cap_or_broken_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw.xml");
        std::fs::write(
            &raw,
            "<tv><channel id=\"a\"><display-name>A</display-name></tv>",
        )
        .unwrap();
        let streams = vec![stream("a", "A", Some("a"), None)];
        let err = render(dir.path(), Some(&raw), &streams, 0, 0)
            .err()
            .unwrap();
        assert!(err.contains("not valid XMLTV"), "{err}");
        let mut capped = Capped {
            inner: std::io::repeat(b'x'),
            left: 10,
        };
        let mut buf = [0u8; 8];
        assert!(capped.read(&mut buf).is_ok());
        let err = capped.read(&mut buf).unwrap_err();
        assert!(err.to_string().contains("larger than 512 MiB"), "{err}");
    }
}
