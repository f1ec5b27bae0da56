//! Type finding sluice adds to GStreamer's own: a DASH manifest detector.
//!
//! GStreamer 1.22's `application/dash+xml` finder needs the whole `<MPD ...>`
//! start tag, up to its `>`, inside the prefix it peeks, and when the stream
//! length is unknown (push mode: urisourcebin types every HTTP source that
//! way) that prefix can be as short as 512 bytes. ffmpeg's live manifests
//! have a root start tag of more than 600 bytes (namespaces, schema location,
//! availability and publish times), so they are typed `application/xml`, no
//! DASH demuxer is plugged and the source fails. The finder registered here
//! only needs the root element's name: an XML document whose root element is
//! `MPD` (any case, any namespace prefix) is `application/dash+xml`.
//!
//! It owns nothing else: no pipeline objects, no demuxer choice.

use std::sync::OnceLock;

/// Registered name; also what a pipeline dump shows as the finder.
pub const NAME: &str = "sluice-dash-mpd";
/// Caps suggested for an MPD.
pub const DASH_CAPS: &str = "application/dash+xml";
/// Above the stock finder (PRIMARY), so ours runs first.
const RANK_ABOVE_PRIMARY: i32 = 1;
/// How far into the stream the root element may start.
const MAX_PEEK: u32 = 4096;
/// Smallest window worth a look: `<MPD ` plus a short XML declaration.
const MIN_PEEK: u32 = 16;

/// Registers the finder with GStreamer, once per process. GStreamer must be
/// initialized. A failure is logged, not fatal: DASH sources then depend on
/// the stock finder alone.
pub fn register() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let caps = gst::Caps::new_empty_simple(DASH_CAPS);
        if let Err(e) = gst::TypeFind::register(
            None,
            NAME,
            gst::Rank::PRIMARY + RANK_ABOVE_PRIMARY,
            Some("mpd,MPD"),
            Some(&caps),
            find_mpd,
        ) {
            tracing::warn!(error = %e, "cannot register the DASH manifest typefinder");
        }
    });
}

fn find_mpd(tf: &mut gst::TypeFind) {
    let Some(size) = window(tf) else {
        return;
    };
    let is_mpd = tf.peek(0, size).is_some_and(root_is_mpd);
    if is_mpd {
        tf.suggest(
            gst::TypeFindProbability::Maximum,
            &gst::Caps::new_empty_simple(DASH_CAPS),
        );
    }
}

/// The largest prefix (at most [`MAX_PEEK`] bytes) that can be peeked. The
/// length, when reported, is only an upper bound (an unknown length may be
/// reported as 0 or as `u64::MAX`).
fn window(tf: &mut gst::TypeFind) -> Option<u32> {
    let mut size = tf
        .length()
        .map_or(MAX_PEEK, |len| len.min(MAX_PEEK as u64) as u32);
    while size >= MIN_PEEK {
        if tf.peek(0, size).is_some() {
            return Some(size);
        }
        size /= 2;
    }
    None
}

/// Whether `data` starts an XML document whose root element is `MPD`
/// (case-insensitive, with or without a namespace prefix). Only the
/// element's name has to be inside `data`.
pub fn root_is_mpd(data: &[u8]) -> bool {
    let mut rest = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    loop {
        rest = skip_whitespace(rest);
        if rest.starts_with(b"<?") {
            // XML declaration or processing instruction.
            match find(rest, b"?>") {
                Some(end) => rest = &rest[end + 2..],
                None => return false,
            }
        } else if rest.starts_with(b"<!--") {
            match find(&rest[4..], b"-->") {
                Some(end) => rest = &rest[4 + end + 3..],
                None => return false,
            }
        } else if rest.starts_with(b"<!") {
            // DOCTYPE (MPDs carry no internal subset worth parsing).
            match rest.iter().position(|&b| b == b'>') {
                Some(end) => rest = &rest[end + 1..],
                None => return false,
            }
        } else if let Some(tag) = rest.strip_prefix(b"<") {
            let Some(end) = tag
                .iter()
                .position(|&b| b.is_ascii_whitespace() || b == b'>' || b == b'/')
            else {
                // The name runs past the data: cannot tell `<MPD` from `<MPDX`.
                return false;
            };
            let name = &tag[..end];
            let local = match name.iter().rposition(|&b| b == b':') {
                Some(colon) => &name[colon + 1..],
                None => name,
            };
            return local.eq_ignore_ascii_case(b"mpd");
        } else {
            return false;
        }
    }
}

fn skip_whitespace(data: &[u8]) -> &[u8] {
    let start = data
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(data.len());
    &data[start..]
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gst::prelude::*;

    /// The head of a live manifest as ffmpeg's DASH muxer writes it: a root
    /// start tag of more than 600 bytes.
    const FFMPEG_LIVE_MPD: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<MPD xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
	xmlns="urn:mpeg:dash:schema:mpd:2011"
	xmlns:xlink="http://www.w3.org/1999/xlink"
	xsi:schemaLocation="urn:mpeg:DASH:schema:MPD:2011 http://standards.iso.org/ittf/PubliclyAvailableStandards/MPEG-DASH_schema_files/DASH-MPD.xsd"
	profiles="urn:mpeg:dash:profile:isoff-live:2011"
	type="dynamic"
	minimumUpdatePeriod="PT1S"
	suggestedPresentationDelay="PT1S"
	availabilityStartTime="2024-01-01T00:00:00.000Z"
	publishTime="2024-01-01T00:00:10.000Z"
	timeShiftBufferDepth="PT5.0S"
	maxSegmentDuration="PT1.0S"
	minBufferTime="PT2.0S">
	<ProgramInformation>
	</ProgramInformation>
	<ServiceDescription id="0">
	</ServiceDescription>
	<Period id="0" start="PT0.0S">
		<AdaptationSet id="0" contentType="video" startWithSAP="1" segmentAlignment="true" bitstreamSwitching="true" frameRate="25/1" maxWidth="320" maxHeight="240" par="4:3">
			<Representation id="0" mimeType="video/mp4" codecs="avc1.42c00d" bandwidth="400000" width="320" height="240" sar="1:1">
				<SegmentTemplate timescale="12800" initialization="init-stream$RepresentationID$.m4s" media="chunk-stream$RepresentationID$-$Number%05d$.m4s" startNumber="1">
"#;

    const STANDARD_MPD: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- packaged for a test -->
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT10S" minBufferTime="PT2S" profiles="urn:mpeg:dash:profile:isoff-on-demand:2011">
  <Period><AdaptationSet mimeType="video/mp4"/></Period>
</MPD>
"#;

    #[test]
    fn mpd_roots_are_recognised_in_any_case_and_prefix() {
        assert!(root_is_mpd(FFMPEG_LIVE_MPD.as_bytes()));
        assert!(root_is_mpd(STANDARD_MPD.as_bytes()));
        // Only the name must be in view, not the whole start tag.
        assert!(root_is_mpd(&FFMPEG_LIVE_MPD.as_bytes()[..64]));
        for doc in [
            "<mpd/>",
            "<Mpd type=\"static\">",
            "\u{feff}<?xml version=\"1.0\"?><MPD>",
            "<?xml version=\"1.0\"?>\n<!DOCTYPE MPD>\n<dash:MPD xmlns:dash=\"urn:mpeg:DASH:schema:MPD:2011\">",
        ] {
            assert!(root_is_mpd(doc.as_bytes()), "{doc}");
        }
    }

    #[test]
    fn other_documents_are_not_mpds() {
        for doc in [
            "<?xml version=\"1.0\"?><smil><body/></smil>",
            "<?xml version=\"1.0\"?><root><MPD/></root>",
            "<MPDX/>",
            "<?xml version=\"1.0\"?><MP",
            "<?xml version=\"1.0\"?><!-- <MPD> --><tt xmlns=\"http://www.w3.org/ns/ttml\"/>",
            "<html><body>MPD</body></html>",
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n",
            "MPD",
            "",
        ] {
            assert!(!root_is_mpd(doc.as_bytes()), "{doc}");
        }
        assert!(!root_is_mpd(&[0x47, 0x40, 0x00, 0x10, 0x00, 0x00, 0xb0]));
    }

    /// What a typefind element sees: bytes, with or without a known length.
    struct Bytes<'a> {
        data: &'a [u8],
        known_length: bool,
        best: Option<(gst::TypeFindProbability, gst::Caps)>,
    }

    impl gst::TypeFindImpl for Bytes<'_> {
        fn peek(&mut self, offset: i64, size: u32) -> Option<&[u8]> {
            let start = usize::try_from(offset).ok()?;
            self.data.get(start..start.checked_add(size as usize)?)
        }
        fn suggest(&mut self, probability: gst::TypeFindProbability, caps: &gst::Caps) {
            self.best = Some((probability, caps.clone()));
        }
        fn length(&self) -> Option<u64> {
            self.known_length.then_some(self.data.len() as u64)
        }
    }

    fn run_finder(data: &[u8], known_length: bool) -> Option<(gst::TypeFindProbability, String)> {
        crate::media::init().unwrap();
        let factory = gst::TypeFindFactory::factories()
            .into_iter()
            .find(|f| f.name() == NAME)
            .expect("the DASH finder is registered by media::init");
        assert!(factory.rank() > gst::Rank::PRIMARY);
        let mut bytes = Bytes {
            data,
            known_length,
            best: None,
        };
        factory.call_function(&mut bytes);
        bytes
            .best
            .map(|(p, caps)| (p, caps.structure(0).unwrap().name().to_string()))
    }

    #[test]
    fn the_registered_finder_suggests_dash_with_maximum_probability() {
        for known_length in [false, true] {
            for doc in [FFMPEG_LIVE_MPD, STANDARD_MPD] {
                assert_eq!(
                    run_finder(doc.as_bytes(), known_length),
                    Some((gst::TypeFindProbability::Maximum, DASH_CAPS.to_string())),
                    "known_length={known_length}: {}",
                    &doc[..60]
                );
            }
            let smil = b"<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<smil><head/></smil>\n";
            assert_eq!(run_finder(smil, known_length), None);
        }
    }

    /// Types `data` the way urisourcebin does for an HTTP source: a typefind
    /// element in push mode, fed by appsrc without a known size.
    fn typefind_pushed(data: &[u8]) -> String {
        crate::media::init().unwrap();
        let pipeline = gst::Pipeline::new();
        let src = gst_app::AppSrc::builder().build();
        let typefind = gst::ElementFactory::make("typefind").build().unwrap();
        let sink = gst::ElementFactory::make("fakesink").build().unwrap();
        pipeline
            .add_many([src.upcast_ref(), &typefind, &sink])
            .unwrap();
        gst::Element::link_many([src.upcast_ref(), &typefind, &sink]).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        typefind.connect("have-type", false, move |values| {
            let caps = values[2].get::<gst::Caps>().unwrap();
            let _ = tx.send(caps.structure(0).unwrap().name().to_string());
            None
        });
        pipeline.set_state(gst::State::Playing).unwrap();
        src.push_buffer(gst::Buffer::from_slice(data.to_vec()))
            .unwrap();
        src.end_of_stream().unwrap();
        let found = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|_| "nothing".into());
        pipeline.set_state(gst::State::Null).unwrap();
        found
    }

    #[test]
    fn a_pushed_ffmpeg_live_manifest_is_typed_as_dash() {
        // Pad the manifest head to a realistic whole-manifest size.
        let mut doc = FFMPEG_LIVE_MPD.as_bytes().to_vec();
        doc.extend_from_slice(b"\t\t\t\t</SegmentTemplate>\n\t\t\t</Representation>\n\t\t</AdaptationSet>\n\t</Period>\n</MPD>\n");
        assert_eq!(typefind_pushed(&doc), DASH_CAPS);
        assert_eq!(typefind_pushed(STANDARD_MPD.as_bytes()), DASH_CAPS);
        // Other XML (long enough for GStreamer's generic XML finder) stays XML.
        let mut other = b"<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<catalog>\n".to_vec();
        for i in 0..40 {
            other.extend_from_slice(format!("  <item id=\"{i}\">MPD</item>\n").as_bytes());
        }
        other.extend_from_slice(b"</catalog>\n");
        assert_eq!(typefind_pushed(&other), "application/xml");
    }
}
