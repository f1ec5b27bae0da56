//! M3U import and export over HTTP (issue 6, item 3): a provider-style
//! playlist with its quirks, re-import without duplicates, import from a URL
//! served by a small HTTP server in the test, 10,000 entries, size limits,
//! and `GET /playlist.m3u` checked to the byte, re-imported, and played.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A tiny HTTP/1.1 server on 127.0.0.1: fixed bodies by path, 404 otherwise.
async fn serve(files: Vec<(&str, &str, Vec<u8>)>) -> SocketAddr {
    let files: Arc<HashMap<String, (String, Vec<u8>)>> = Arc::new(
        files
            .into_iter()
            .map(|(p, ct, body)| (p.to_string(), (ct.to_string(), body)))
            .collect(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let files = files.clone();
            tokio::spawn(async move {
                let Some(text) = read_request_head(&mut tcp).await else {
                    return;
                };
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
                let (status, ct, body) = match files.get(&path) {
                    Some((ct, body)) => ("200 OK", ct.as_str(), body.as_slice()),
                    None => ("404 Not Found", "text/plain", &b"not found"[..]),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tcp.write_all(head.as_bytes()).await;
                let _ = tcp.write_all(body).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}

/// What providers send: BOM, CRLF, attributes in any order, commas in
/// quoted values and names, #EXTVLCOPT headers, an entry without
/// attributes, one without #EXTINF, a bad scheme, a dangling #EXTINF.
const PROVIDER: &str = "\u{feff}#EXTM3U x-tvg-url=\"http://epg.example/guide.xml\"\r\n\
#EXTINF:-1 tvg-id=\"news.uk\" tvg-name=\"News, UK\" tvg-logo=\"http://logo.example/news.png\" group-title=\"News, Current\",News, Weather & Sport\r\n\
#EXTVLCOPT:http-user-agent=Mozilla/5.0 (SmartTV)\r\n\
#EXTVLCOPT:http-referrer=http://portal.example/\r\n\
http://provider.example/live/user/pass/101.ts\r\n\
#EXTINF:-1 group-title=\"Movies\" tvg-name=\"Film Four\" tvg-id=\"film4.uk\",\r\n\
http://provider.example/live/user/pass/102.ts\r\n\
#EXTINF:0,Plain Radio\r\n\
http://radio.example/stream\r\n\
#EXTINF:-1 tvg-id=\"bad.one\",Bad Scheme\r\n\
ftp://provider.example/103.ts\r\n\
rtsp://camera.example:554/front\r\n\
#EXTINF:-1,Dangling\r\n";

async fn import(
    ts: &TestServer,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let mut req = client().post(ts.url("/api/streams/import")).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

async fn streams(ts: &TestServer) -> Vec<Value> {
    let r = client().get(ts.url("/api/streams")).send().await.unwrap();
    r.json::<Vec<Value>>().await.unwrap()
}

async fn stream(ts: &TestServer, id: &str) -> Value {
    let r = client()
        .get(ts.url(&format!("/api/streams/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{id}");
    r.json().await.unwrap()
}

async fn clear_demo(ts: &TestServer) {
    for s in streams(ts).await {
        let id = s["id"].as_str().unwrap();
        let r = client()
            .delete(ts.url(&format!("/api/streams/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_playlist_imports_with_its_quirks_and_reimports_without_duplicates() {
    let ts = start().await;
    let before = streams(&ts).await.len();
    let (status, r) = import(&ts, Some("audio/x-mpegurl"), PROVIDER).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (
            r["imported"].as_u64(),
            r["updated"].as_u64(),
            r["skipped"].as_u64()
        ),
        (Some(4), Some(0), Some(2)),
        "{r}"
    );
    let errors = r["errors"].as_array().unwrap();
    assert_eq!(errors[0]["line"], 11, "{r}");
    assert!(
        errors[0]["message"].as_str().unwrap().contains("ftp"),
        "{r}"
    );
    assert_eq!(errors[1]["line"], 13, "{r}");
    assert_eq!(streams(&ts).await.len(), before + 4);

    let news = stream(&ts, "news-uk").await;
    assert_eq!(news["name"], "News, Weather & Sport");
    assert_eq!(news["tvgId"], "news.uk");
    assert_eq!(news["group"], "News, Current");
    assert_eq!(news["logo"], "http://logo.example/news.png");
    assert_eq!(
        news["url"], "http://provider.example/live/user/pass/101.ts",
        "loopback admin sees the URL"
    );
    assert_eq!(news["headers"]["User-Agent"], "Mozilla/5.0 (SmartTV)");
    assert_eq!(news["headers"]["Referer"], "http://portal.example/");
    let film = stream(&ts, "film4-uk").await;
    assert_eq!(
        film["name"], "Film Four",
        "tvg-name when the title is empty"
    );
    assert_eq!(film["group"], "Movies");
    assert!(film.get("headers").is_none(), "{film}");
    let radio = stream(&ts, "plain-radio").await;
    assert_eq!(radio["url"], "http://radio.example/stream");
    assert!(radio.get("tvgId").is_none());
    let cam = stream(&ts, "front").await;
    assert_eq!(cam["url"], "rtsp://camera.example:554/front");

    // The same playlist again: everything matched, nothing added or changed.
    let (status, r) = import(&ts, Some("application/x-mpegurl"), PROVIDER).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (
            r["imported"].as_u64(),
            r["updated"].as_u64(),
            r["unchanged"].as_u64(),
            r["mergedAsBackup"].as_u64(),
            r["skipped"].as_u64()
        ),
        (Some(0), Some(0), Some(4), Some(0), Some(2)),
        "{r}"
    );
    assert_eq!(streams(&ts).await.len(), before + 4);
    assert_eq!(
        stream(&ts, "news-uk").await,
        news,
        "unchanged entries keep their timestamps"
    );

    // Other URLs under the same tvg-id and name are mirrors: backups, never
    // replacements. The same tvg-id under another name with another URL is
    // another channel: a stream of its own, and the old one stays.
    let rotated = PROVIDER
        .replace("/user/pass/", "/user/newpass/")
        .replace(",News, Weather & Sport", ",News HD");
    let (_, r) = import(&ts, None, rotated).await;
    assert_eq!(
        (
            r["imported"].as_u64(),
            r["updated"].as_u64(),
            r["unchanged"].as_u64(),
            r["mergedAsBackup"].as_u64()
        ),
        (Some(1), Some(0), Some(2), Some(1)),
        "{r}"
    );
    let film = stream(&ts, "film4-uk").await;
    assert_eq!(
        film["url"], "http://provider.example/live/user/pass/102.ts",
        "{film}"
    );
    assert_eq!(
        film["backupUrls"],
        json!(["http://provider.example/live/user/newpass/102.ts"])
    );
    assert_ne!(film["updatedAt"], film["createdAt"]);
    assert_eq!(stream(&ts, "news-uk").await, news, "the old channel stays");
    let news_hd = stream(&ts, "news-uk-2").await;
    assert_eq!(news_hd["name"], "News HD");
    assert_eq!(
        news_hd["url"],
        "http://provider.example/live/user/newpass/101.ts"
    );
    assert_eq!(streams(&ts).await.len(), before + 5);
    ts.stop().await;
}

/// A news list and a country list that share channels: the mirrors of one
/// channel under one tvg-id and name, attributes of every kind.
const NEWS_LIST: &str = "#EXTM3U\n\
#EXTINF:-1 tvg-id=\"France24.fr\" tvg-name=\"France 24\" tvg-language=\"French\" tvg-country=\"FR;INT\" tvg-logo=\"http://logo.example/f24.png\" group-title=\"News\",France 24 (1080p)\n\
http://cdn-a.example/f24/index.m3u8\n\
#EXTINF:-1 tvg-id=\"DW.de\" tvg-name=\"DW_English\" tvg-language=\"English\" tvg-country=\"DE\" group-title=\"News\" user-agent=\"Mozilla/5.0\" catchup-source=\"http://u:S3cret@cdn-a.example/dw/{utc}\",DW English\n\
http://cdn-a.example/dw/index.m3u8\n";

const COUNTRY_LIST: &str = "#EXTM3U\n\
#EXTINF:-1 tvg-id=\"France24.fr\" tvg-name=\"France 24\" tvg-language=\"French\" tvg-country=\"FR\" tvg-logo=\"http://logo.example/f24.png\" group-title=\"News\",France 24 (1080p)\n\
http://cdn-b.example/france24/master.m3u8\n\
#EXTINF:-1 tvg-id=\"Arte.fr\" tvg-name=\"Arte\" tvg-language=\"French;German\" tvg-country=\"FR\" group-title=\"Culture\",Arte\n\
http://cdn-b.example/arte/master.m3u8\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_playlists_keep_every_mirror_and_attribute() {
    let ts = start().await;
    clear_demo(&ts).await;
    let (status, r) = import(&ts, Some("audio/x-mpegurl"), NEWS_LIST).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["imported"], 2, "{r}");
    let (status, r) = import(&ts, Some("audio/x-mpegurl"), COUNTRY_LIST).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        r,
        json!({"imported": 1, "updated": 0, "unchanged": 0, "mergedAsBackup": 1, "skipped": 0, "errors": []})
    );
    let f24 = stream(&ts, "france24-fr").await;
    assert_eq!(f24["url"], "http://cdn-a.example/f24/index.m3u8");
    assert_eq!(
        f24["backupUrls"],
        json!(["http://cdn-b.example/france24/master.m3u8"])
    );
    assert_eq!(
        f24["attributes"],
        json!({
            "group-title": "News",
            "tvg-country": "FR;INT",
            "tvg-id": "France24.fr",
            "tvg-language": "French",
            "tvg-logo": "http://logo.example/f24.png",
            "tvg-name": "France 24",
        })
    );
    let dw = stream(&ts, "dw-de").await;
    assert_eq!(dw["attributes"]["tvg-name"], "DW_English");
    assert_eq!(dw["attributes"]["user-agent"], "Mozilla/5.0");
    assert_eq!(
        dw["attributes"]["catchup-source"], "http://u:S3cret@cdn-a.example/dw/{utc}",
        "loopback admin sees attributes whole"
    );
    assert_eq!(
        stream(&ts, "arte-fr").await["attributes"]["tvg-language"],
        "French;German"
    );

    // Both lists again: all matched, nothing changes, no mirror lost.
    for list in [NEWS_LIST, COUNTRY_LIST] {
        let (_, r) = import(&ts, None, list).await;
        assert_eq!(
            (r["updated"].as_u64(), r["unchanged"].as_u64()),
            (Some(0), Some(2)),
            "{r}"
        );
    }
    assert_eq!(stream(&ts, "france24-fr").await, f24);
    assert_eq!(streams(&ts).await.len(), 3);

    // The export writes the attributes back as imported, tvg-name included.
    let r = client().get(ts.url("/playlist.m3u")).send().await.unwrap();
    let text = r.text().await.unwrap();
    let line = |id: &str| {
        let lines: Vec<&str> = text.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.contains(&format!("/streams/preview/{id}?")))
            .unwrap_or_else(|| panic!("{id} in {text}"));
        lines[at - 1].to_string()
    };
    let f24_line = line("france24-fr");
    for attr in [
        "tvg-id=\"France24.fr\"",
        "tvg-name=\"France 24\"",
        "tvg-language=\"French\"",
        "tvg-country=\"FR;INT\"",
        "tvg-logo=\"http://logo.example/f24.png\"",
        "group-title=\"News\"",
    ] {
        assert!(f24_line.contains(attr), "{attr} in {f24_line}");
    }
    assert!(f24_line.ends_with(",France 24 (1080p)"), "{f24_line}");
    let dw_line = line("dw-de");
    assert!(dw_line.contains("tvg-name=\"DW_English\""), "{dw_line}");
    assert!(dw_line.contains("user-agent=\"Mozilla/5.0\""), "{dw_line}");
    assert!(
        dw_line.contains("catchup-source=\"http://") && !text.contains("S3cret"),
        "credentials in attributes stay inside: {dw_line}"
    );
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_playlist_is_fetched_from_a_url() {
    let ts = start().await;
    let big = vec![b'#'; 51 * 1024 * 1024];
    let upstream = serve(vec![
        (
            "/get.php?username=u&password=S3cret&type=m3u_plus",
            "audio/x-mpegurl",
            PROVIDER.as_bytes().to_vec(),
        ),
        ("/huge.m3u", "audio/x-mpegurl", big),
    ])
    .await;
    let url = format!("http://{upstream}/get.php?username=u&password=S3cret&type=m3u_plus");
    let (status, r) = import(
        &ts,
        Some("application/json"),
        json!({ "url": url }).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (r["imported"].as_u64(), r["skipped"].as_u64()),
        (Some(4), Some(2)),
        "{r}"
    );
    assert_eq!(stream(&ts, "news-uk").await["group"], "News, Current");

    let missing = format!("http://user:S3cret@{upstream}/nope.m3u?token=S3cret");
    let (status, r) = import(
        &ts,
        Some("application/json"),
        json!({ "url": missing }).to_string(),
    )
    .await;
    assert_eq!(status, 502, "{r}");
    assert_eq!(r["error"], "source_failed");
    assert!(r["message"].as_str().unwrap().contains("404"), "{r}");
    assert!(!r.to_string().contains("S3cret"), "credential leaked: {r}");

    let (status, r) = import(
        &ts,
        Some("application/json"),
        json!({ "url": format!("http://{upstream}/huge.m3u") }).to_string(),
    )
    .await;
    assert_eq!(status, 413, "{r}");
    assert_eq!(r["error"], "payload_too_large");

    let (status, r) = import(
        &ts,
        Some("application/json"),
        json!({ "url": "file:///etc/passwd" }).to_string(),
    )
    .await;
    assert_eq!(status, 400, "{r}");
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_entries_import_in_one_write() {
    let ts = start().await;
    let mut text = String::from("#EXTM3U\n");
    for i in 0..10_000 {
        text.push_str(&format!(
            "#EXTINF:-1 tvg-id=\"ch{i}.example\" tvg-name=\"Channel {i}\" tvg-logo=\"http://logo.example/{i}.png\" group-title=\"Group {}\",Channel {i}\n\
             http://provider.example/live/user/pass/{i}.ts\n",
            i % 50
        ));
    }
    let t = Instant::now();
    let (status, r) = import(&ts, Some("audio/x-mpegurl"), text.clone()).await;
    let first = t.elapsed();
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["imported"], 10_000, "{}", r["errors"]);
    let t = Instant::now();
    let (_, r) = import(&ts, Some("audio/x-mpegurl"), text.clone()).await;
    let again = t.elapsed();
    assert_eq!(
        (
            r["imported"].as_u64(),
            r["updated"].as_u64(),
            r["unchanged"].as_u64()
        ),
        (Some(0), Some(0), Some(10_000))
    );
    println!(
        "10,000-entry playlist ({} KiB): first import {first:?}, re-import {again:?}",
        text.len() / 1024
    );
    assert!(first < Duration::from_secs(10) && again < Duration::from_secs(10));
    let all = streams(&ts).await;
    assert_eq!(all.len(), 10_000 + 4);
    let ids: BTreeSet<&str> = all.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), all.len(), "ids are unique");
    // On disk, complete.
    let on_disk: Vec<Value> =
        serde_json::from_slice(&std::fs::read(ts.dir.path().join("data/streams.json")).unwrap())
            .unwrap();
    assert_eq!(on_disk.len(), 10_004);
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_are_too_large_wrong_or_unauthorised_are_refused() {
    let ts = start().await;
    // Announced as 60 MiB: refused before it is read.
    let mut tcp = tokio::net::TcpStream::connect(ts.server.as_ref().unwrap().addr)
        .await
        .unwrap();
    tcp.write_all(
        b"POST /api/streams/import HTTP/1.1\r\nHost: x\r\nContent-Type: audio/x-mpegurl\r\nContent-Length: 62914560\r\n\r\n#EXTM3U\n",
    )
    .await
    .unwrap();
    let mut resp = Vec::new();
    let read_answer = async {
        let mut buf = [0u8; 4096];
        while !(resp.windows(4).any(|w| w == b"\r\n\r\n") && resp.ends_with(b"}")) {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => resp.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), read_answer).await;
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("\"error\":\"payload_too_large\""), "{resp}");

    let (status, r) = import(&ts, Some("image/png"), "#EXTM3U\n").await;
    assert_eq!(
        (status, r["error"].as_str()),
        (415, Some("unsupported_media_type")),
        "{r}"
    );
    let (status, r) = import(&ts, Some("text/plain"), "hello, this is not a playlist").await;
    assert_eq!(status, 400, "{r}");
    let (status, r) = import(&ts, Some("application/json"), "{\"url\": 5}").await;
    assert_eq!(status, 400, "{r}");
    ts.stop().await;

    let keyed = start_with(|s| s.admin_api_key = Some("k3y".into())).await;
    let (status, r) = import(&keyed, Some("audio/x-mpegurl"), PROVIDER).await;
    assert_eq!(
        (status, r["error"].as_str()),
        (401, Some("unauthorized")),
        "{r}"
    );
    keyed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_is_exact_reimports_to_the_same_set_and_plays() {
    let ts = start().await;
    clear_demo(&ts).await;
    let playlist = "#EXTM3U\n\
        #EXTINF:-1 tvg-id=\"bars.test\" tvg-logo=\"http://logo.example/bars.png\" group-title=\"Test, Patterns\",Bars, 320p\n\
        test://smpte?size=320x240&rate=25\n\
        #EXTINF:-1 group-title=\"Test, Patterns\",Ball\n\
        test://ball?size=320x240&rate=25\n\
        #EXTINF:-1,Hidden\n\
        test://snow?size=320x240\n";
    let (_, r) = import(&ts, None, playlist).await;
    assert_eq!(r["imported"], 3, "{r}");
    let r = client()
        .put(ts.url("/api/streams/hidden"))
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let r = client().get(ts.url("/playlist.m3u")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "audio/x-mpegurl");
    let text = r.text().await.unwrap();
    let base = &ts.base;
    let expected = format!(
        "#EXTM3U\n\
         #EXTINF:-1 tvg-id=\"bars.test\" tvg-name=\"Bars, 320p\" tvg-chno=\"1\" tvg-logo=\"http://logo.example/bars.png\" group-title=\"Test, Patterns\",Bars, 320p\n\
         {base}/streams/preview/bars-test?format=ts\n\
         #EXTINF:-1 tvg-name=\"Ball\" tvg-chno=\"2\" group-title=\"Test, Patterns\",Ball\n\
         {base}/streams/preview/ball?format=ts\n"
    );
    assert_eq!(text, expected);

    let r = client()
        .get(ts.url("/playlist.m3u?format=mp4&quality=low"))
        .header("host", "tv.example:8080")
        .send()
        .await
        .unwrap();
    let mp4 = r.text().await.unwrap();
    assert!(
        mp4.contains("\nhttp://tv.example:8080/streams/preview/ball?format=mp4&quality=low\n"),
        "{mp4}"
    );
    for bad in ["/playlist.m3u?format=avi", "/playlist.m3u?quality=ultra"] {
        let r = client().get(ts.url(bad)).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }

    // Re-imported elsewhere: the same channels, pointing at this server.
    let other = start().await;
    clear_demo(&other).await;
    let (_, r) = import(&other, Some("audio/x-mpegurl"), text.clone()).await;
    assert_eq!(
        (r["imported"].as_u64(), r["skipped"].as_u64()),
        (Some(2), Some(0)),
        "{r}"
    );
    let shape = |list: Vec<Value>| -> BTreeSet<String> {
        list.iter()
            .map(|s| format!("{}|{}|{}|{}", s["name"], s["tvgId"], s["group"], s["logo"]))
            .collect()
    };
    let mut mine = streams(&ts).await;
    mine.retain(|s| s["enabled"] == true);
    assert_eq!(shape(streams(&other).await), shape(mine));
    assert_eq!(
        stream(&other, "ball").await["url"],
        format!("{base}/streams/preview/ball?format=ts")
    );
    other.stop().await;

    // A URL from the playlist plays: MPEG-TS that ffprobe reads.
    let url = text.lines().find(|l| l.contains("/ball?")).unwrap();
    let resp = client().get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "video/mp2t");
    let bytes = read_for(resp, Duration::from_secs(3), 4 << 20).await;
    let file = ts.dir.path().join("from-playlist.ts");
    std::fs::write(&file, &bytes).unwrap();
    let probe = ffprobe(&file);
    assert_eq!(
        stream_of(&probe, "video").expect("video")["codec_name"],
        "h264"
    );
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_numbers_come_from_the_playlist_or_are_assigned_and_stay() {
    let mut ts = start().await;
    let demo: Vec<String> = streams(&ts)
        .await
        .iter()
        .map(|s| {
            s["number"]
                .as_str()
                .expect("demo streams are numbered")
                .to_string()
        })
        .collect();
    assert_eq!(demo, ["1", "2", "3", "4"]);
    let playlist = "#EXTM3U\n\
        #EXTINF:-1 tvg-id=\"one.tv\" tvg-chno=\"101\",One\n\
        http://h.example/1\n\
        #EXTINF:-1 tvg-id=\"two.tv\" channel-number=\"5.1\",Two\n\
        http://h.example/2\n\
        #EXTINF:-1 tvg-id=\"three.tv\",Three\n\
        http://h.example/3\n\
        #EXTINF:-1 tvg-id=\"four.tv\" tvg-chno=\"101\",Four (same number)\n\
        http://h.example/4\n";
    let (_, r) = import(&ts, None, playlist).await;
    assert_eq!(r["imported"], 4, "{r}");
    let number = |s: Value| s["number"].as_str().unwrap().to_string();
    assert_eq!(number(stream(&ts, "one-tv").await), "101");
    assert_eq!(number(stream(&ts, "two-tv").await), "5.1");
    assert_eq!(number(stream(&ts, "three-tv").await), "102");
    assert_eq!(number(stream(&ts, "four-tv").await), "103");

    // A duplicate number is refused; a free one is taken; edits keep it.
    let r = client()
        .put(ts.url("/api/streams/three-tv"))
        .json(&json!({"number": "101"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "number_taken", "{body}");
    let r = client()
        .post(ts.url("/api/streams"))
        .json(&json!({"name": "Bad", "url": "http://h.example/b", "number": "x1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "bad_request");
    let r = client()
        .put(ts.url("/api/streams/three-tv"))
        .json(&json!({"number": "3.2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .put(ts.url("/api/streams/three-tv"))
        .json(&json!({"name": "Three HD"}))
        .send()
        .await
        .unwrap();
    assert_eq!(number(r.json().await.unwrap()), "3.2");
    let r = client()
        .post(ts.url("/api/streams"))
        .json(&json!({"name": "Five", "url": "http://h.example/5"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(number(r.json().await.unwrap()), "104");

    // The export carries the numbers; a re-import without them keeps them.
    let text = client()
        .get(ts.url("/playlist.m3u"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("tvg-id=\"one.tv\" tvg-name=\"One\" tvg-chno=\"101\""),
        "{text}"
    );
    let bare = playlist
        .replace(" tvg-chno=\"101\"", "")
        .replace(" channel-number=\"5.1\"", "");
    let (_, r) = import(&ts, None, bare).await;
    assert_eq!(r["imported"], 0, "{r}");
    let before = streams(&ts).await;

    // A restart on the same data dir: every stream keeps its number.
    ts.restart(|_| {}).await;
    assert_eq!(streams(&ts).await, before);
    assert_eq!(number(stream(&ts, "three-tv").await), "3.2");
    ts.stop().await;
}
