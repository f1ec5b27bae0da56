//! The XMLTV guide end to end, against the real binary: a real-world-sized
//! gzipped guide (2,000 channels x 7 days) served over HTTP and named by an
//! imported playlist's `x-tvg-url`; `EPG_URL` overriding it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{get_json, BinServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DTD: &str = "/usr/share/xmltv/xmltv.dtd";
const GUIDE_CHANNELS: usize = 2000;
const DAYS: i64 = 7;

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `20261206010000 +0000` for unix seconds.
fn xmltv_time(t: i64) -> String {
    let s =
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(t as u64))
            .to_string();
    let digits: String = s.chars().filter(|c| c.is_ascii_digit()).collect();
    format!("{digits} +0000")
}

fn parse_time(s: &str) -> i64 {
    sluice::epg::parse_xmltv_time(s).unwrap_or_else(|| panic!("bad XMLTV time {s}"))
}

/// Writes a gzipped XMLTV guide of `GUIDE_CHANNELS` channels with hourly
/// programmes from a day ago for `DAYS` days; returns (path, uncompressed size).
fn write_big_guide(dir: &Path) -> (PathBuf, u64) {
    let path = dir.join("guide.xml.gz");
    let file = std::fs::File::create(&path).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut out = CountingWriter {
        inner: std::io::BufWriter::new(gz),
        n: 0,
    };
    writeln!(out, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>").unwrap();
    writeln!(out, "<!DOCTYPE tv SYSTEM \"xmltv.dtd\">").unwrap();
    writeln!(
        out,
        "<tv source-info-name=\"test\" generator-info-name=\"epg-test\">"
    )
    .unwrap();
    for c in 1..=GUIDE_CHANNELS {
        writeln!(
            out,
            "  <channel id=\"ch{c:04}.tv\">\n    <display-name lang=\"en\">Channel {c:04}</display-name>\n    <icon src=\"http://logos.example/ch{c:04}.png\"/>\n  </channel>"
        )
        .unwrap();
    }
    let first = unix_now() / 3600 * 3600 - 86_400;
    for c in 1..=GUIDE_CHANNELS {
        for h in 0..DAYS * 24 {
            let start = first + h * 3600;
            writeln!(
                out,
                "  <programme start=\"{}\" stop=\"{}\" channel=\"ch{c:04}.tv\">\n    <title lang=\"en\">Show {h} on channel {c} &amp; friends</title>\n    <desc>Episode {h}.</desc>\n  </programme>",
                xmltv_time(start),
                xmltv_time(start + 3600)
            )
            .unwrap();
        }
    }
    writeln!(out, "</tv>").unwrap();
    let n = out.n;
    let gz = out.inner.into_inner().map_err(|e| e.to_string()).unwrap();
    gz.finish().unwrap().sync_all().unwrap();
    (path, n)
}

struct CountingWriter<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A file served by the test's HTTP server, with extra response headers.
#[derive(Clone)]
struct Served {
    path: PathBuf,
    headers: Vec<(&'static str, &'static str)>,
}

/// A minimal HTTP/1.1 file server on 127.0.0.1; counts requests per path.
struct FileServer {
    base: String,
    hits: Arc<parking_lot::Mutex<BTreeMap<String, usize>>>,
    total: Arc<AtomicUsize>,
}

impl FileServer {
    async fn start(files: BTreeMap<&'static str, Served>) -> FileServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let hits: Arc<parking_lot::Mutex<BTreeMap<String, usize>>> = Default::default();
        let total = Arc::new(AtomicUsize::new(0));
        let files = Arc::new(files);
        let (h, t) = (hits.clone(), total.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (files, hits, total) = (files.clone(), h.clone(), t.clone());
                tokio::spawn(async move {
                    let Some(head) = common::read_request_head(&mut sock).await else {
                        return;
                    };
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    total.fetch_add(1, Ordering::SeqCst);
                    *hits.lock().entry(path.clone()).or_default() += 1;
                    let Some(served) = files.get(path.as_str()) else {
                        let _ = sock
                            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                            .await;
                        return;
                    };
                    let mut file = tokio::fs::File::open(&served.path).await.unwrap();
                    let len = file.metadata().await.unwrap().len();
                    let mut head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n"
                    );
                    for (k, v) in &served.headers {
                        head.push_str(&format!("{k}: {v}\r\n"));
                    }
                    head.push_str("\r\n");
                    if sock.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match file.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if sock.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = sock.shutdown().await;
                });
            }
        });
        FileServer { base, hits, total }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().get(path).copied().unwrap_or(0)
    }
}

/// The channel id a stream has in `/epg.xml` and the lineup: its number,
/// else its id.
fn guide_id(stream: &serde_json::Value) -> String {
    stream["number"]
        .as_str()
        .or_else(|| stream["id"].as_str())
        .unwrap()
        .to_string()
}

/// [`guide_id`] of the catalog stream `id`.
async fn guide_id_of(srv: &BinServer, id: &str) -> String {
    guide_id(&get_json(&srv.url(&format!("/api/streams/{id}"))).await)
}

async fn import(srv: &BinServer, playlist: &str) -> serde_json::Value {
    let r = common::client()
        .post(srv.url("/api/streams/import"))
        .header("content-type", "audio/x-mpegurl")
        .body(playlist.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Polls `/api/epg/status` until `done` holds (at most `limit`); while
/// waiting, calls `each` (e.g. to sample memory).
async fn wait_status(
    srv: &BinServer,
    limit: Duration,
    mut each: impl FnMut(),
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        each();
        let st = get_json(&srv.url("/api/epg/status")).await;
        if done(&st) {
            return st;
        }
        assert!(
            start.elapsed() < limit,
            "guide status never got there: {st}\n{}",
            srv.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One `<programme>` of `/epg.xml`.
#[derive(Debug)]
struct Prog {
    channel: String,
    start: i64,
    stop: i64,
    title: String,
}

/// Channel ids and programmes of an XMLTV document.
fn parse_xmltv(xml: &str) -> (Vec<String>, Vec<Prog>) {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut channels = Vec::new();
    let mut progs = Vec::new();
    let mut in_title = false;
    let attr = |e: &quick_xml::events::BytesStart, k: &[u8]| {
        e.attributes()
            .flatten()
            .find(|a| a.key.as_ref() == k)
            .map(|a| a.unescape_value().unwrap().into_owned())
    };
    loop {
        match reader.read_event().unwrap() {
            Event::Start(e) if e.name().as_ref() == b"channel" => {
                channels.push(attr(&e, b"id").unwrap())
            }
            Event::Start(e) if e.name().as_ref() == b"programme" => progs.push(Prog {
                channel: attr(&e, b"channel").unwrap(),
                start: parse_time(&attr(&e, b"start").unwrap()),
                stop: parse_time(&attr(&e, b"stop").expect("every programme has a stop")),
                title: String::new(),
            }),
            Event::Start(e) if e.name().as_ref() == b"title" => in_title = true,
            Event::End(e) if e.name().as_ref() == b"title" => in_title = false,
            Event::Text(t) if in_title => {
                progs.last_mut().unwrap().title += &t.unescape().unwrap();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    (channels, progs)
}

/// Validates a file against the XMLTV DTD with xmllint; panics with its
/// output when it does not validate.
fn assert_valid_xmltv(path: &Path) {
    assert!(
        Path::new(DTD).is_file(),
        "{DTD} is missing: install xmltv-util"
    );
    let out = Command::new("xmllint")
        .args(["--noout", "--dtdvalid", DTD])
        .arg(path)
        .output()
        .expect("xmllint runs (install libxml2-utils)");
    assert!(
        out.status.success(),
        "/epg.xml does not validate: {}",
        String::from_utf8_lossy(&out.stderr)
            .chars()
            .take(3000)
            .collect::<String>()
    );
}

/// The programmes of `channel` cover `from..to` without gaps.
fn assert_covers(progs: &[Prog], channel: &str, from: i64, to: i64) {
    let mut mine: Vec<&Prog> = progs.iter().filter(|p| p.channel == channel).collect();
    assert!(!mine.is_empty(), "no programmes for {channel}");
    mine.sort_by_key(|p| p.start);
    assert!(
        mine[0].start <= from,
        "{channel} starts at {} after now {from}",
        mine[0].start
    );
    for w in mine.windows(2) {
        assert_eq!(w[0].stop, w[1].start, "{channel} has a gap or overlap");
    }
    let last = mine.last().unwrap();
    assert!(
        last.stop >= to,
        "{channel} ends at {} before {to}",
        last.stop
    );
}

async fn fetch_epg(srv: &BinServer, save: &Path) -> (String, Duration) {
    let t = Instant::now();
    let r = common::client()
        .get(srv.url("/epg.xml"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("xml"));
    let body = r.text().await.unwrap();
    let took = t.elapsed();
    std::fs::write(save, &body).unwrap();
    (body, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_gzipped_guide_from_the_playlist_is_filtered_streamed_and_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let (gz, plain_size) = write_big_guide(tmp.path());
    let gz_size = std::fs::metadata(&gz).unwrap().len();
    assert!(
        plain_size > 50 * 1024 * 1024,
        "the test guide is real-world sized ({plain_size} bytes)"
    );
    let files = BTreeMap::from([(
        "/guide.xml.gz",
        Served {
            path: gz,
            headers: vec![("Content-Type", "application/gzip")],
        },
    )]);
    let web = FileServer::start(files).await;
    let data = tmp.path().join("data");
    let envs = [("LOG_LEVEL", "info")];
    let mut srv = BinServer::start(&data, &[], &envs);

    // Before any guide: the demo channels, with filler, valid XMLTV.
    let st = wait_status(
        &srv,
        Duration::from_secs(20),
        || {},
        |s| s["channels"].as_u64() > Some(0),
    )
    .await;
    assert!(st["url"].is_null(), "{st}");
    assert!(st["lastFetch"].is_null(), "{st}");
    let early = tmp.path().join("early.xml");
    let (body, _) = fetch_epg(&srv, &early).await;
    assert_valid_xmltv(&early);
    let (channels, progs) = parse_xmltv(&body);
    let smpte = guide_id_of(&srv, "demo-smpte").await;
    assert!(channels.contains(&smpte), "{channels:?}");
    let now = unix_now();
    assert_covers(&progs, &smpte, now, now + 48 * 3600);

    let baseline = srv.rss_bytes();
    assert!(baseline > 0);
    let playlist = format!(
        "#EXTM3U x-tvg-url=\"{}\"\n\
         #EXTINF:-1 tvg-id=\"ch0007.tv\" tvg-logo=\"http://logos.example/7.png\",Seven\n\
         test://smpte?size=320x240\n\
         #EXTINF:-1 tvg-id=\"CH1500.tv\",Fifteen hundred\n\
         test://ball?size=320x240\n\
         #EXTINF:-1 tvg-id=\"nope.tv\",No Guide Here\n\
         test://snow?size=320x240\n\
         #EXTINF:-1,CHANNEL 0042\n\
         test://smpte?size=320x240&rate=25\n",
        web.url("/guide.xml.gz")
    );
    let answer = import(&srv, &playlist).await;
    assert_eq!(answer["imported"], 4, "{answer}");

    let mut peak = baseline;
    let started = Instant::now();
    let st = wait_status(
        &srv,
        Duration::from_secs(240),
        || peak = peak.max(srv.rss_bytes()),
        |s| !s["lastFetch"].is_null() || !s["error"].is_null(),
    )
    .await;
    let ingest = started.elapsed();
    assert!(st["error"].is_null(), "{st}");
    // Sample a little longer: the status is published after filtering.
    for _ in 0..5 {
        peak = peak.max(srv.rss_bytes());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "guide: {plain_size} bytes ({gz_size} gzipped) ingested in {ingest:?}; RSS {baseline} -> peak {peak} (+{growth})"
    );
    assert!(
        growth < 50 * 1024 * 1024,
        "RSS grew by {growth} bytes while ingesting the guide"
    );

    let streams = get_json(&srv.url("/api/streams")).await;
    let enabled: BTreeSet<String> = streams
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["enabled"] != false)
        .map(guide_id)
        .collect();
    let stream_named = |name: &str| {
        streams
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("{name} imported"))
            .clone()
    };
    // Guide channel ids (the lineup's GuideNumber), and stream ids for the API.
    let id_of = |name: &str| guide_id(&stream_named(name));
    let stream_id_of = |name: &str| stream_named(name)["id"].as_str().unwrap().to_string();
    let (seven_sid, fifteen_sid, nope_sid) = (
        stream_id_of("Seven"),
        stream_id_of("Fifteen hundred"),
        stream_id_of("No Guide Here"),
    );
    let (seven, fifteen, nope, by_name) = (
        id_of("Seven"),
        id_of("Fifteen hundred"),
        id_of("No Guide Here"),
        id_of("CHANNEL 0042"),
    );

    assert!(
        st["url"].as_str().unwrap().ends_with("/guide.xml.gz"),
        "{st}"
    );
    assert!(st["lastFetch"].as_str().unwrap().ends_with('Z'), "{st}");
    assert_eq!(st["bytes"], gz_size, "{st}");
    assert_eq!(st["channels"], enabled.len(), "{st}");
    assert_eq!(st["channelsMatched"], 3, "{st}");
    assert_eq!(st["guideChannels"], GUIDE_CHANNELS, "{st}");
    let per_channel = (DAYS * 24) as u64;
    assert_eq!(st["programmes"], 3 * per_channel, "{st}");

    // Only catalog channels, ids as in the lineup, valid against the DTD.
    let path = tmp.path().join("epg.xml");
    let (body, _) = fetch_epg(&srv, &path).await;
    assert_valid_xmltv(&path);
    let (channels, progs) = parse_xmltv(&body);
    let got: BTreeSet<String> = channels.iter().cloned().collect();
    assert_eq!(got, enabled);
    assert_eq!(channels.len(), enabled.len(), "each channel once");
    let lineup = get_json(&srv.url("/lineup.json")).await;
    let guide_numbers: BTreeSet<String> = lineup
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["GuideNumber"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        got, guide_numbers,
        "guide ids are the lineup's GuideNumbers"
    );
    assert!(progs.iter().all(|p| got.contains(&p.channel)));
    assert!(!body.contains("ch0001.tv") && !body.contains("ch0007.tv"));
    assert!(body.contains("<icon src=\"http://logos.example/7.png\"/>"));
    for id in [&seven, &fifteen, &by_name] {
        let n = progs
            .iter()
            .filter(|p| &p.channel == id && p.title.starts_with("Show "))
            .count() as u64;
        assert_eq!(n, per_channel, "{id}");
    }
    assert!(progs
        .iter()
        .any(|p| p.channel == seven && p.title.ends_with("on channel 7 & friends")));
    assert!(progs
        .iter()
        .any(|p| p.channel == fifteen && p.title.ends_with("on channel 1500 & friends")));
    // No guide data: filler titled with the name, covering now..now+48h.
    let now = unix_now();
    assert_covers(&progs, &nope, now, now + 48 * 3600);
    let filler: Vec<&Prog> = progs.iter().filter(|p| p.channel == nope).collect();
    assert!(filler
        .iter()
        .all(|p| p.title == "No Guide Here" && p.stop - p.start <= 2 * 3600));
    assert!(filler
        .iter()
        .all(|p| p.start % 3600 == 0 || p.stop % 3600 == 0));
    assert_covers(&progs, &seven, now, now + 48 * 3600);

    // Once cached, it answers fast.
    let mut times = Vec::new();
    for i in 0..5 {
        let (_, took) = fetch_epg(&srv, &tmp.path().join(format!("t{i}.xml"))).await;
        times.push(took);
    }
    times.sort();
    eprintln!("/epg.xml times: {times:?}");
    assert!(
        times[2] < Duration::from_millis(200),
        "median /epg.xml time {:?}",
        times[2]
    );

    // Now/next for the web page.
    let nn = get_json(&srv.url("/api/epg/now")).await;
    let entry = nn
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["streamId"] == seven_sid.as_str())
        .unwrap_or_else(|| panic!("{nn}"));
    let cur = &entry["now"];
    assert!(
        cur["title"].as_str().unwrap().starts_with("Show "),
        "{entry}"
    );
    let (start, stop) = (
        humantime::parse_rfc3339(cur["start"].as_str().unwrap()).unwrap(),
        humantime::parse_rfc3339(cur["stop"].as_str().unwrap()).unwrap(),
    );
    let wall = std::time::SystemTime::now();
    assert!(start <= wall && wall < stop, "{entry}");
    assert_eq!(entry["next"]["start"], cur["stop"], "{entry}");
    assert!(nn
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["streamId"] != nope_sid.as_str()));

    // A restart serves the cached guide at once, without fetching it again.
    let fetched = web.total.load(Ordering::SeqCst);
    assert_eq!(web.hits("/guide.xml.gz"), 1);
    assert!(srv.terminate(), "clean exit");
    let srv = BinServer::start(&data, &[], &envs);
    let again = tmp.path().join("again.xml");
    let (body, _) = fetch_epg(&srv, &again).await;
    let (_, progs) = parse_xmltv(&body);
    assert_eq!(
        progs
            .iter()
            .filter(|p| p.channel == seven && p.title.starts_with("Show "))
            .count() as u64,
        per_channel
    );
    let st2 = get_json(&srv.url("/api/epg/status")).await;
    assert_eq!(st2["lastFetch"], st["lastFetch"], "{st2}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(web.total.load(Ordering::SeqCst), fetched, "no refetch");

    // A catalog change re-filters the cached guide, without a fetch.
    let r = common::client()
        .delete(srv.url(&format!("/api/streams/{fifteen_sid}")))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let st3 = wait_status(
        &srv,
        Duration::from_secs(60),
        || {},
        |s| s["channelsMatched"] == 2,
    )
    .await;
    assert_eq!(st3["programmes"], 2 * per_channel, "{st3}");
    let (body, _) = fetch_epg(&srv, &again).await;
    assert!(!body.contains(&format!("channel=\"{fifteen}\"")));
    assert_eq!(web.total.load(Ordering::SeqCst), fetched, "no refetch");
}

/// A small guide, gzipped by Content-Encoding, with an accented name.
fn write_small_guide(dir: &Path) -> PathBuf {
    let first = unix_now() / 3600 * 3600 - 3600;
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<tv>\n  <channel id=\"tele.fr\"><display-name>Télé Été</display-name></channel>\n",
    );
    for h in 0..12 {
        let s = first + h * 3600;
        xml.push_str(&format!(
            "  <programme start=\"{}\" stop=\"{}\" channel=\"tele.fr\"><title>Journal {h}</title></programme>\n",
            xmltv_time(s),
            xmltv_time(s + 3600)
        ));
    }
    xml.push_str("</tv>\n");
    let path = dir.join("small.xml.gz");
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&path).unwrap(),
        flate2::Compression::default(),
    );
    gz.write_all(xml.as_bytes()).unwrap();
    gz.finish().unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epg_url_wins_over_the_playlist_guide() {
    let tmp = tempfile::tempdir().unwrap();
    let small = write_small_guide(tmp.path());
    let files = BTreeMap::from([
        (
            "/small.xml",
            Served {
                path: small.clone(),
                headers: vec![
                    ("Content-Type", "application/xml"),
                    ("Content-Encoding", "gzip"),
                ],
            },
        ),
        (
            "/playlist-guide.xml.gz",
            Served {
                path: small,
                headers: vec![],
            },
        ),
    ]);
    let web = FileServer::start(files).await;
    let data = tmp.path().join("data");
    let epg_url = web.url("/small.xml");
    let envs = [("LOG_LEVEL", "info"), ("EPG_URL", epg_url.as_str())];
    let srv = BinServer::start(&data, &[], &envs);
    let playlist = format!(
        "#EXTM3U url-tvg=\"{}\"\n#EXTINF:-1,TELE ete\ntest://smpte?size=320x240\n",
        web.url("/playlist-guide.xml.gz")
    );
    import(&srv, &playlist).await;
    let st = wait_status(
        &srv,
        Duration::from_secs(60),
        || {},
        |s| !s["lastFetch"].is_null() && s["channelsMatched"] == 1,
    )
    .await;
    assert_eq!(st["url"], epg_url.as_str(), "{st}");
    assert_eq!(st["programmes"], 12, "{st}");
    assert_eq!(st["guideChannels"], 1, "{st}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(web.hits("/playlist-guide.xml.gz"), 0);
    assert_eq!(web.hits("/small.xml"), 1);
    let path = tmp.path().join("epg.xml");
    let (body, _) = fetch_epg(&srv, &path).await;
    assert_valid_xmltv(&path);
    assert!(body.contains("<title>Journal 1</title>"), "{body}");
    assert!(!body.contains("tele.fr"));
}

#[test]
fn epg_settings_are_validated() {
    let run = |envs: &[(&str, &str)]| {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["--port", "0", "--help"])
            .envs(envs.iter().copied())
            .output()
            .unwrap()
    };
    let help = String::from_utf8_lossy(&run(&[]).stdout).into_owned();
    for var in ["EPG_URL", "EPG_REFRESH", "EPG_FILLER_HOURS"] {
        assert!(help.contains(var), "--help names {var}");
    }
    for (var, bad) in [
        ("EPG_REFRESH", "soon"),
        ("EPG_REFRESH", "10s"),
        ("EPG_FILLER_HOURS", "0"),
        ("EPG_FILLER_HOURS", "25"),
        ("EPG_URL", "ftp://guide.example/x.xml"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["--port", "0", "--data-dir", "/nonexistent-sluice-epg"])
            .env(var, bad)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{var}={bad} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(var), "{var}={bad}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fetch_shows_in_status_and_the_channels_keep_filler() {
    let tmp = tempfile::tempdir().unwrap();
    let web = FileServer::start(BTreeMap::new()).await;
    let data = tmp.path().join("data");
    let url = web.url("/gone.xml");
    let envs = [("LOG_LEVEL", "info"), ("EPG_URL", url.as_str())];
    let srv = BinServer::start(&data, &[], &envs);
    let st = wait_status(
        &srv,
        Duration::from_secs(30),
        || {},
        |s| !s["error"].is_null() && s["channels"].as_u64() > Some(0),
    )
    .await;
    assert!(st["error"].as_str().unwrap().contains("404"), "{st}");
    assert!(st["lastFetch"].is_null(), "{st}");
    assert_eq!(st["url"], url.as_str());
    let path = tmp.path().join("epg.xml");
    let (body, _) = fetch_epg(&srv, &path).await;
    assert_valid_xmltv(&path);
    let (_, progs) = parse_xmltv(&body);
    let now = unix_now();
    let ball = guide_id_of(&srv, "demo-ball").await;
    assert_covers(&progs, &ball, now, now + 48 * 3600);
    // Not retried at once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(web.hits("/gone.xml"), 1);
}
