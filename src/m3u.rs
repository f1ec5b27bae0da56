//! Extended M3U playlists (SPEC §5): parsing what IPTV providers really send
//! and writing what VLC and IPTV players read back.
//!
//! Pure text in, text out: no HTTP, no GStreamer, no catalog. The parser
//! never fails as a whole; it yields one result per entry, so a bad line is
//! reported with its line number while the rest of the playlist still counts.
//! Deciding whether a URL's scheme is allowed is the catalog's job
//! ([`crate::catalog::validate`]); this module only reads the syntax.
//!
//! Quirks handled: a UTF-8 BOM, CRLF line ends, attributes in any order and
//! quoted with `"` or `'` (or not at all), commas inside quoted values and in
//! names (the name starts after the first comma outside quotes, as VLC reads
//! it), `#EXTINF` without attributes, bare URL lines without `#EXTINF`,
//! `#EXTGRP`, `#EXTVLCOPT:http-user-agent=` / `http-referrer=` and
//! `#EXTHTTP:{json}` request headers.

use std::collections::BTreeMap;

/// Longest name kept (the catalog's limit); longer titles are cut.
pub const MAX_NAME_CHARS: usize = crate::catalog::MAX_NAME_LEN;

/// One playlist entry: an `#EXTINF` block and its URL.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct M3uEntry {
    /// 1-based line of the URL (the line errors about the entry point at).
    pub line: usize,
    /// The display name: the `#EXTINF` title, else `tvg-name`, else derived
    /// from the URL.
    pub name: String,
    pub url: String,
    pub tvg_id: Option<String>,
    pub tvg_name: Option<String>,
    pub tvg_logo: Option<String>,
    /// `group-title`, else `#EXTGRP`.
    pub group: Option<String>,
    /// Request headers the provider asks for (`User-Agent`, `Referer`, ...).
    pub headers: BTreeMap<String, String>,
    /// Every `#EXTINF` attribute with a value (`tvg-name`, `tvg-language`,
    /// `tvg-country`, `tvg-chno`, ...), keys lowercased, values cleaned.
    pub attributes: BTreeMap<String, String>,
}

/// A line the parser could not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    pub message: String,
}

/// Attributes and title of the `#EXTINF` awaiting its URL.
#[derive(Default)]
struct Pending {
    line: usize,
    title: String,
    attrs: BTreeMap<String, String>,
    group: Option<String>,
    headers: BTreeMap<String, String>,
}

/// Parses a playlist into entries (in order) and per-line errors.
pub fn parse(text: &str) -> Vec<Result<M3uEntry, LineError>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    let mut pending: Option<Pending> = None;
    // Options seen before any #EXTINF of the entry apply to the next URL too.
    let mut loose = Pending::default();
    for (i, raw) in text.split('\n').enumerate() {
        let line_no = i + 1;
        let line = raw.trim_end_matches('\r').trim();
        if line.is_empty() {
            continue;
        }
        let target = pending.as_mut().unwrap_or(&mut loose);
        if let Some(rest) = strip_tag(line, "#EXTINF:") {
            if let Some(p) = pending.take() {
                out.push(Err(LineError {
                    line: p.line,
                    message: "#EXTINF is not followed by a URL".into(),
                }));
            }
            let (attrs, title) = parse_extinf(rest);
            let carried = std::mem::take(&mut loose);
            pending = Some(Pending {
                line: line_no,
                title,
                attrs,
                group: carried.group,
                headers: carried.headers,
            });
        } else if let Some(opt) = strip_tag(line, "#EXTVLCOPT:") {
            if let Some((k, v)) = vlc_option(opt) {
                target.headers.insert(k.into(), v);
            }
        } else if let Some(json) = strip_tag(line, "#EXTHTTP:") {
            match serde_json::from_str::<BTreeMap<String, serde_json::Value>>(json) {
                Ok(map) => {
                    for (k, v) in map {
                        if let (Some(name), Some(v)) = (header_name(&k), v.as_str()) {
                            target.headers.insert(name, v.trim().to_string());
                        }
                    }
                }
                Err(_) => out.push(Err(LineError {
                    line: line_no,
                    message: "#EXTHTTP must be a JSON object of header names to strings".into(),
                })),
            }
        } else if let Some(g) = strip_tag(line, "#EXTGRP:") {
            let g = clean(g);
            if !g.is_empty() {
                target.group = Some(g);
            }
        } else if line.starts_with('#') {
            // #EXTM3U, #KODIPROP, #EXT-X-..., plain comments: nothing to keep.
        } else {
            let p = pending.take().unwrap_or_else(|| std::mem::take(&mut loose));
            out.push(Ok(entry(p, line, line_no)));
        }
    }
    if let Some(p) = pending {
        out.push(Err(LineError {
            line: p.line,
            message: "#EXTINF is not followed by a URL".into(),
        }));
    }
    out
}

/// Case-insensitive tag prefix.
fn strip_tag<'a>(line: &'a str, tag: &str) -> Option<&'a str> {
    let head = line.get(..tag.len())?;
    head.eq_ignore_ascii_case(tag).then(|| &line[tag.len()..])
}

fn entry(p: Pending, url: &str, line: usize) -> M3uEntry {
    let attr = |k: &str| p.attrs.get(k).map(|v| clean(v)).filter(|v| !v.is_empty());
    let tvg_name = attr("tvg-name");
    let title = clean(&p.title);
    let name = if !title.is_empty() {
        title
    } else if let Some(n) = &tvg_name {
        n.clone()
    } else if let Some(id) = attr("tvg-id") {
        id
    } else {
        name_from_url(url)
    };
    M3uEntry {
        line,
        name: name.chars().take(MAX_NAME_CHARS).collect(),
        url: url.to_string(),
        tvg_id: attr("tvg-id"),
        tvg_name,
        tvg_logo: attr("tvg-logo"),
        group: attr("group-title").or(p.group),
        headers: p.headers,
        attributes: p
            .attrs
            .iter()
            .map(|(k, v)| (k.clone(), clean(v)))
            .filter(|(_, v)| !v.is_empty())
            .collect(),
    }
}

/// Control characters out, runs of whitespace collapsed, ends trimmed.
fn clean(s: &str) -> String {
    s.split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A credential-free name for an entry without a title: the last path
/// segment without its extension, else the host.
fn name_from_url(url: &str) -> String {
    let no_query = url.split(['?', '#']).next().unwrap_or(url);
    let after_scheme = no_query.split_once("://").map_or(no_query, |(_, r)| r);
    let (authority, path) = after_scheme.split_once('/').unwrap_or((after_scheme, ""));
    let host = authority.rsplit('@').next().unwrap_or(authority);
    let last = path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("");
    let stem = last.split('.').next().unwrap_or("");
    let decoded = percent_encoding::percent_decode_str(stem).decode_utf8_lossy();
    let name = clean(&decoded);
    if name.is_empty() {
        clean(host)
    } else {
        name
    }
}

/// Splits `-1 tvg-id="a" group-title="b, c",Title, with comma` into its
/// attributes and title. The title starts after the first comma outside
/// quotes; with unbalanced quotes, after the last comma.
fn parse_extinf(rest: &str) -> (BTreeMap<String, String>, String) {
    let mut quote: Option<char> = None;
    let mut split = None;
    for (i, c) in rest.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            // A quote opens only as an attribute value (right after '=').
            (None, '"' | '\'') if rest[..i].ends_with('=') => quote = Some(c),
            (None, ',') => {
                split = Some(i);
                break;
            }
            _ => {}
        }
    }
    let split = split.or_else(|| rest.rfind(','));
    let (head, title) = match split {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    (parse_attrs(head), title.to_string())
}

/// `key="value"`, `key='value'` or `key=value` pairs, in any order; the
/// leading duration and anything else without `=` is skipped. Keys are
/// lowercased.
fn parse_attrs(head: &str) -> BTreeMap<String, String> {
    let mut attrs = BTreeMap::new();
    let mut rest = head.trim_start();
    while !rest.is_empty() {
        let word_end = rest
            .find(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or(rest.len());
        let key = &rest[..word_end];
        rest = &rest[word_end..];
        if !rest.starts_with('=') {
            rest = rest.trim_start();
            continue;
        }
        rest = &rest[1..];
        let value;
        match rest.chars().next() {
            Some(q @ ('"' | '\'')) => {
                let body = &rest[1..];
                let end = body.find(q).unwrap_or(body.len());
                value = &body[..end];
                rest = body.get(end + 1..).unwrap_or("");
            }
            _ => {
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                value = &rest[..end];
                rest = &rest[end..];
            }
        }
        if !key.is_empty() {
            attrs.insert(key.to_ascii_lowercase(), value.to_string());
        }
        rest = rest.trim_start();
    }
    attrs
}

/// `http-user-agent=VLC/3` -> (`User-Agent`, `VLC/3`); other options are not
/// request headers and are ignored.
fn vlc_option(opt: &str) -> Option<(&'static str, String)> {
    let (k, v) = opt.split_once('=')?;
    let name = match k.trim().to_ascii_lowercase().as_str() {
        "http-user-agent" => "User-Agent",
        "http-referrer" | "http-referer" => "Referer",
        _ => return None,
    };
    let v = v.trim().trim_matches('"').trim();
    (!v.is_empty()).then(|| (name, v.to_string()))
}

/// Canonical spelling of a header named in `#EXTHTTP` (`user-agent` ->
/// `User-Agent`); `None` for names that are not HTTP tokens.
fn header_name(k: &str) -> Option<String> {
    let k = k.trim();
    if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return None;
    }
    Some(
        k.split('-')
            .map(|w| {
                let mut c = w.chars();
                c.next().map_or(String::new(), |f| {
                    f.to_ascii_uppercase().to_string() + &c.as_str().to_ascii_lowercase()
                })
            })
            .collect::<Vec<_>>()
            .join("-"),
    )
}

/// One entry of an exported playlist.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportEntry<'a> {
    pub name: &'a str,
    pub url: &'a str,
    pub tvg_id: Option<&'a str>,
    /// The channel number, written as `tvg-chno`.
    pub number: Option<&'a str>,
    pub tvg_logo: Option<&'a str>,
    pub group: Option<&'a str>,
    /// The attributes the stream was imported with, written back unchanged
    /// (the fields above take precedence for their own attributes).
    pub attributes: &'a BTreeMap<String, String>,
}

/// Attributes [`export`] writes from [`ExportEntry`] fields, not from its map.
const FIELD_ATTRIBUTES: &[&str] = &["tvg-id", "tvg-name", "tvg-chno", "tvg-logo", "group-title"];

/// Writes an extended M3U playlist: `#EXTM3U`, then per entry an `#EXTINF:-1`
/// line with `tvg-id`, `tvg-name` (the imported one, else the name),
/// `tvg-chno`, `tvg-logo`, `group-title` (those present), the stream's other
/// imported attributes in key order (an imported `channel-number` carries
/// the current number), and the name, then the URL. Lines end with `\n`.
pub fn export<'a>(entries: impl IntoIterator<Item = ExportEntry<'a>>) -> String {
    let mut out = String::from("#EXTM3U\n");
    for e in entries {
        out.push_str("#EXTINF:-1");
        let tvg_name = e
            .attributes
            .get("tvg-name")
            .map(String::as_str)
            .unwrap_or(e.name);
        let fields = [
            ("tvg-id", e.tvg_id),
            ("tvg-name", Some(tvg_name)),
            ("tvg-chno", e.number),
            ("tvg-logo", e.tvg_logo),
            ("group-title", e.group),
        ];
        let rest = e
            .attributes
            .iter()
            .filter(|(k, _)| !FIELD_ATTRIBUTES.contains(&k.as_str()) && plain_key(k))
            .map(|(k, v)| match (k.as_str(), e.number) {
                ("channel-number", Some(n)) => (k.as_str(), Some(n)),
                _ => (k.as_str(), Some(v.as_str())),
            });
        for (k, v) in fields.into_iter().chain(rest) {
            if let Some(v) = v.map(attr_value).filter(|v| !v.is_empty()) {
                out.push_str(&format!(" {k}=\"{v}\""));
            }
        }
        out.push(',');
        out.push_str(&clean(e.name));
        out.push('\n');
        out.push_str(e.url.trim());
        out.push('\n');
    }
    out
}

/// Whether an attribute key can be written as is (and parsed back).
fn plain_key(k: &str) -> bool {
    !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// An attribute value safe inside double quotes (M3U has no escapes).
fn attr_value(v: &str) -> String {
    clean(v).replace('"', "'")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Vec<M3uEntry> {
        parse(text).into_iter().map(|r| r.expect("entry")).collect()
    }

    #[test]
    fn bom_crlf_and_attributes_in_any_order() {
        let text = "\u{feff}#EXTM3U url-tvg=\"http://epg/x.xml\"\r\n\
            #EXTINF:-1 group-title=\"News\" tvg-logo=\"http://l/a.png\" tvg-id=\"a.uk\" tvg-name=\"A\",Channel A\r\n\
            http://h/a.ts\r\n\
            #EXTINF:-1 tvg-id=b.uk tvg-name='B B',Channel B\r\n\
            http://h/b.ts\r\n";
        let e = ok(text);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].name, "Channel A");
        assert_eq!(e[0].url, "http://h/a.ts");
        assert_eq!(e[0].line, 3);
        assert_eq!(e[0].tvg_id.as_deref(), Some("a.uk"));
        assert_eq!(e[0].tvg_name.as_deref(), Some("A"));
        assert_eq!(e[0].tvg_logo.as_deref(), Some("http://l/a.png"));
        assert_eq!(e[0].group.as_deref(), Some("News"));
        assert_eq!(e[1].tvg_id.as_deref(), Some("b.uk"));
        assert_eq!(e[1].tvg_name.as_deref(), Some("B B"));
        assert_eq!(e[1].line, 5);
    }

    #[test]
    fn commas_in_quoted_values_and_in_names() {
        let e = ok("#EXTM3U\n#EXTINF:-1 tvg-name=\"News, Weather\" group-title=\"UK, Local\",News, Weather & Sport\nhttp://h/n.ts\n");
        assert_eq!(e[0].name, "News, Weather & Sport");
        assert_eq!(e[0].tvg_name.as_deref(), Some("News, Weather"));
        assert_eq!(e[0].group.as_deref(), Some("UK, Local"));
        // Unbalanced quote: fall back to the last comma.
        let e = ok("#EXTINF:-1 tvg-name=\"Broken,Name\nhttp://h/x.ts\n");
        assert_eq!(e[0].name, "Name");
    }

    #[test]
    fn entries_without_attributes_or_extinf() {
        let e = ok("#EXTM3U\n#EXTINF:0,Plain Name\nrtsp://cam/1\n\nhttp://u:p@h/live/Movie%20One.m3u8?token=x\n");
        assert_eq!(e[0].name, "Plain Name");
        assert_eq!(e[0].tvg_id, None);
        assert_eq!(
            e[1].name, "Movie One",
            "derived from the URL, no credentials"
        );
        assert_eq!(e[1].line, 5);
        let e = ok("#EXTINF:-1,\nhttp://provider.example/\n");
        assert_eq!(e[0].name, "provider.example");
    }

    #[test]
    fn tvg_name_is_the_name_when_the_title_is_empty() {
        let e = ok("#EXTINF:-1 tvg-id=\"x\" tvg-name=\"From Tvg\",  \nhttp://h/x\n");
        assert_eq!(e[0].name, "From Tvg");
        let e = ok("#EXTINF:-1 tvg-id=\"only.id\",\nhttp://h/x\n");
        assert_eq!(e[0].name, "only.id");
    }

    #[test]
    fn vlc_options_and_exthttp_become_headers() {
        let text = "#EXTM3U\n#EXTINF:-1,A\n#EXTVLCOPT:http-user-agent=Mozilla/5.0 (X11)\n#EXTVLCOPT:http-referrer=http://ref.example/\n#EXTVLCOPT:network-caching=1000\nhttp://h/a\n\
            #EXTVLCOPT:http-user-agent=Before/1\n#EXTINF:-1,B\n#EXTHTTP:{\"cookie\":\"sid=1\",\"user-agent\":\"X/2\"}\nhttp://h/b\n#EXTINF:-1,C\nhttp://h/c\n";
        let e = ok(text);
        assert_eq!(
            e[0].headers.get("User-Agent").map(String::as_str),
            Some("Mozilla/5.0 (X11)")
        );
        assert_eq!(
            e[0].headers.get("Referer").map(String::as_str),
            Some("http://ref.example/")
        );
        assert_eq!(e[0].headers.len(), 2);
        assert_eq!(
            e[1].headers.get("Cookie").map(String::as_str),
            Some("sid=1")
        );
        assert_eq!(
            e[1].headers.get("User-Agent").map(String::as_str),
            Some("X/2")
        );
        assert!(
            e[2].headers.is_empty(),
            "options do not leak into later entries"
        );
    }

    #[test]
    fn extgrp_is_the_group_when_group_title_is_absent() {
        let e = ok("#EXTINF:-1,A\n#EXTGRP:Sports\nhttp://h/a\n#EXTINF:-1 group-title=\"Movies\",B\n#EXTGRP:Ignored\nhttp://h/b\n");
        assert_eq!(e[0].group.as_deref(), Some("Sports"));
        assert_eq!(e[1].group.as_deref(), Some("Movies"));
    }

    #[test]
    fn problems_are_reported_per_line_and_the_rest_is_kept() {
        let r = parse("#EXTM3U\n#EXTINF:-1,Lost\n#EXTINF:-1,Kept\nftp://h/x\n#EXTHTTP:{bad\n#EXTINF:-1,Dangling\n");
        assert_eq!(r.len(), 4);
        assert_eq!(
            r[0],
            Err(LineError {
                line: 2,
                message: "#EXTINF is not followed by a URL".into()
            })
        );
        let kept = r[1].as_ref().unwrap();
        assert_eq!(
            (kept.name.as_str(), kept.url.as_str(), kept.line),
            ("Kept", "ftp://h/x", 4)
        );
        assert_eq!(r[2].as_ref().unwrap_err().line, 5);
        assert_eq!(r[3].as_ref().unwrap_err().line, 6);
    }

    #[test]
    fn long_names_are_cut_and_control_characters_removed() {
        let long = "x".repeat(300);
        let e = ok(&format!(
            "#EXTINF:-1,{long}\nhttp://h/a\n#EXTINF:-1,Tab\there\nhttp://h/b\n"
        ));
        assert_eq!(e[0].name.chars().count(), MAX_NAME_CHARS);
        assert_eq!(e[1].name, "Tab here");
    }

    #[test]
    fn export_is_standard_and_reads_back() {
        let none = BTreeMap::new();
        let text = export([
            ExportEntry {
                name: "News, Weather",
                url: "http://s:3000/streams/preview/news?format=ts",
                tvg_id: Some("news.uk"),
                number: Some("101"),
                tvg_logo: Some("http://l/n.png"),
                group: Some("UK \"Local\""),
                attributes: &none,
            },
            ExportEntry {
                name: "Bare",
                url: "http://s:3000/streams/preview/bare?format=ts",
                tvg_id: None,
                number: None,
                tvg_logo: None,
                group: None,
                attributes: &none,
            },
        ]);
        assert_eq!(
            text,
            "#EXTM3U\n\
             #EXTINF:-1 tvg-id=\"news.uk\" tvg-name=\"News, Weather\" tvg-chno=\"101\" tvg-logo=\"http://l/n.png\" group-title=\"UK 'Local'\",News, Weather\n\
             http://s:3000/streams/preview/news?format=ts\n\
             #EXTINF:-1 tvg-name=\"Bare\",Bare\n\
             http://s:3000/streams/preview/bare?format=ts\n"
        );
        let back = ok(&text);
        assert_eq!(back[0].name, "News, Weather");
        assert_eq!(back[0].tvg_id.as_deref(), Some("news.uk"));
        assert_eq!(back[0].group.as_deref(), Some("UK 'Local'"));
        assert_eq!(back[1].url, "http://s:3000/streams/preview/bare?format=ts");
    }

    #[test]
    fn every_attribute_is_kept_and_exported_unchanged() {
        let e = ok("#EXTM3U\n#EXTINF:-1 tvg-id=\"a.fr\" tvg-name=\"A_Info\" tvg-language=\"French;English\" tvg-country=FR tvg-chno=\"7\" catchup-days='3' tvg-url=\"\" group-title=\"News\",A Info HD\nhttp://h/a.m3u8\n");
        let attrs = &e[0].attributes;
        assert_eq!(attrs["tvg-name"], "A_Info");
        assert_eq!(attrs["tvg-language"], "French;English");
        assert_eq!(attrs["tvg-country"], "FR");
        assert_eq!(attrs["tvg-chno"], "7");
        assert_eq!(attrs["catchup-days"], "3");
        assert!(!attrs.contains_key("tvg-url"), "empty values carry nothing");
        assert_eq!(e[0].name, "A Info HD");
        let text = export([ExportEntry {
            name: &e[0].name,
            url: "http://s/streams/preview/a-fr?format=ts",
            tvg_id: e[0].tvg_id.as_deref(),
            number: Some("7"),
            tvg_logo: None,
            group: Some("World"),
            attributes: attrs,
        }]);
        assert_eq!(
            text,
            "#EXTM3U\n\
             #EXTINF:-1 tvg-id=\"a.fr\" tvg-name=\"A_Info\" tvg-chno=\"7\" group-title=\"World\" catchup-days=\"3\" tvg-country=\"FR\" tvg-language=\"French;English\",A Info HD\n\
             http://s/streams/preview/a-fr?format=ts\n"
        );
        let back = ok(&text);
        assert_eq!(back[0].attributes["tvg-language"], "French;English");
        assert_eq!(back[0].attributes["tvg-name"], "A_Info");
    }
}
