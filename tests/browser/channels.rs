//! The channel views in a real browser: the grid shows decoded snapshots
//! of the demo channels; the list tells duplicates apart, filters channels
//! without a group, finds "Español" when "espanol" is typed, and stays fast
//! with 10,000 channels because it renders only the rows in sight.

use std::time::Duration;

use serde_json::{json, Value};

use super::common;
use super::driver::{Browser, Check};

const GRID_STATE: &str = "return [...document.querySelectorAll('#channel-grid button.card')]
  .map(b => { const i = b.querySelector('img.snap');
    return {id: b.dataset.id, w: i ? i.naturalWidth : -1, h: i ? i.naturalHeight : -1,
            complete: i ? i.complete : false, snap: b.dataset.snapshot || ''}; });";

async fn grid_story(ts: &common::TestServer, b: &Browser) -> Check {
    b.goto(&ts.url("/")).await?;
    b.poll(
        Duration::from_secs(20),
        "the list loads",
        "return document.querySelectorAll('#channel-list button.channel').length;",
        |v| v.as_u64() >= Some(4),
    )
    .await?;
    b.click("[data-view='grid']").await?;
    let v = b
        .poll(
            Duration::from_secs(30),
            "every demo channel's snapshot is decoded in the grid",
            GRID_STATE,
            |v| {
                let cards = v.as_array().cloned().unwrap_or_default();
                cards.len() >= 4
                    && cards
                        .iter()
                        .all(|c| c["w"].as_u64() > Some(0) && c["complete"] == true)
            },
        )
        .await?;
    for card in v.as_array().unwrap() {
        // Asked 320 wide; the height follows the picture.
        if card["w"] != 320 {
            return Err(format!("snapshot not 320 wide: {card}"));
        }
    }
    // The sizes the snapshots told show up in the cards' sub-lines.
    let sub = b
        .js("return document.querySelector(\"#channel-grid button.card[data-id='demo-smpte'] .ch-sub\").textContent;")
        .await?;
    if !sub.as_str().is_some_and(|s| s.contains('×')) {
        return Err(format!("the picture size is not shown: {sub}"));
    }
    b.review_screenshot("grid").await;
    b.no_console_errors("in the grid").await?;
    // The choice is kept: the list again.
    b.click("[data-view='list']").await?;
    b.poll(
        Duration::from_secs(5),
        "the list is back",
        "return !document.getElementById('channel-list').hidden
           && document.getElementById('channel-grid').hidden;",
        |v| v == &Value::Bool(true),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grid_shows_decoded_snapshots_of_the_demo_channels() {
    let _turn = crate::TURNS.read().await;
    let ts = common::start().await;
    let b = Browser::open().await;
    let outcome = grid_story(&ts, &b).await;
    let outcome = b.finish(outcome).await;
    ts.stop().await;
    if let Err(why) = outcome {
        panic!("{why}");
    }
}

/// Rows in the DOM, rows the list says it holds, and the ids shown.
const LIST_STATE: &str = "const ul = document.getElementById('channel-list');
  return {rows: ul.querySelectorAll('li').length, total: Number(ul.dataset.count),
    ids: [...ul.querySelectorAll('button.channel')].map(b => b.dataset.id),
    subs: [...ul.querySelectorAll('button.channel .ch-sub')].map(s => s.textContent),
    msg: document.getElementById('channels-msg').textContent};";

async fn list_story(ts: &common::TestServer, b: &Browser) -> Check {
    b.goto(&ts.url("/")).await?;
    let v = b
        .poll(
            Duration::from_secs(30),
            "10,000 channels load",
            LIST_STATE,
            |v| v["total"].as_u64() >= Some(10_000),
        )
        .await?;
    let rows = v["rows"].as_u64().unwrap_or(0);
    if rows == 0 || rows > 100 {
        return Err(format!("{rows} rows in the DOM for 10,000 channels"));
    }
    // Typing a search filters 10,000 channels and draws the result fast.
    let took = b
        .js("const s = document.getElementById('search');
             const t0 = performance.now();
             s.value = 'espanol'; s.dispatchEvent(new Event('input'));
             return performance.now() - t0;")
        .await?;
    let ms = took.as_f64().unwrap_or(f64::MAX);
    eprintln!("search over 10,000 channels rendered in {ms:.1} ms");
    if ms > 100.0 {
        return Err(format!("searching 10,000 channels took {ms:.1} ms"));
    }
    let v = b.js(LIST_STATE).await?;
    let ids: Vec<&str> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x.as_str())
        .collect();
    if ids != ["es1"] {
        return Err(format!("'espanol' should find only Canal Español: {v}"));
    }
    // Scrolling far down renders the rows there.
    b.js("const s = document.getElementById('search'); s.value = ''; s.dispatchEvent(new Event('input'));
          const ul = document.getElementById('channel-list'); ul.scrollTop = ul.scrollHeight / 2;")
        .await?;
    b.poll(
        Duration::from_secs(5),
        "rows half way down are drawn",
        LIST_STATE,
        |v| {
            v["ids"]
                .as_array()
                .is_some_and(|ids| ids.iter().any(|i| i == "c5000"))
                && v["rows"].as_u64() <= Some(100)
        },
    )
    .await?;
    // Duplicates of one name show what tells them apart.
    b.js("const s = document.getElementById('search'); s.value = 'Al Jazeera'; s.dispatchEvent(new Event('input'));")
        .await?;
    let v = b.js(LIST_STATE).await?;
    let subs: Vec<String> = v["subs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x.as_str().map(String::from))
        .collect();
    let expect = [
        "aje1 · News · one.example",
        "aje2 · Arabic · two.example",
        "aje3 · two.example",
    ];
    if subs != expect {
        return Err(format!("duplicate rows read {subs:?}, expected {expect:?}"));
    }
    // Channels without a group, on their own.
    b.js("const s = document.getElementById('search'); s.value = ''; s.dispatchEvent(new Event('input'));")
        .await?;
    b.js("const g = document.getElementById('group'); g.value = '\\u0001none'; g.dispatchEvent(new Event('change'));")
        .await?;
    let v = b.js(LIST_STATE).await?;
    let label = b
        .js("const g = document.getElementById('group'); return g.options[g.selectedIndex].textContent;")
        .await?;
    b.review_screenshot("list-no-group").await;
    if v["total"] != json!(3) || label != json!("No group (3)") {
        return Err(format!("the no-group filter shows {v} ({label})"));
    }
    b.no_console_errors("in the list").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_tells_duplicates_apart_folds_accents_and_stays_fast_at_10k() {
    // It times the page: nothing else plays video meanwhile.
    let _turn = crate::TURNS.write().await;
    let ts = common::start_with(|s| {
        s.rate_limit_admin = sluice::http::ratelimit::Rate::parse("off").unwrap();
    })
    .await;
    // 10,000 channels by playlist import, every one in a group except three.
    let mut m3u = String::from("#EXTM3U\n");
    for i in 0..9_994 {
        m3u.push_str(&format!(
            "#EXTINF:-1 tvg-id=\"c{i}\" group-title=\"Group {}\",Channel {i}\nhttp://cdn{}.example/c{i}.ts\n",
            i % 40,
            i % 7
        ));
    }
    m3u.push_str(
        "#EXTINF:-1 tvg-id=\"es1\" group-title=\"Spain\",Canal Español\nhttp://es.example/es.ts\n\
         #EXTINF:-1 tvg-id=\"aje1\" group-title=\"News\",Al Jazeera English\nhttp://one.example/aje.m3u8\n\
         #EXTINF:-1 tvg-id=\"aje2\" group-title=\"Arabic\",Al Jazeera English\nhttp://two.example/aje.m3u8\n\
         #EXTINF:-1 tvg-id=\"aje3\",Al Jazeera English\nhttp://two.example/aje-backup.m3u8\n\
         #EXTINF:-1 tvg-id=\"plain1\",Plain one\nhttp://plain.example/1.ts\n\
         #EXTINF:-1 tvg-id=\"plain2\",Plain two\nhttp://plain.example/2.ts\n",
    );
    let r = common::client()
        .post(ts.url("/api/streams/import"))
        .header("content-type", "audio/x-mpegurl")
        .body(m3u)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    // The demo channels go: the catalog is the imported one.
    for id in ["demo-smpte", "demo-ball", "demo-snow", "demo-video-only"] {
        let r = common::client()
            .delete(ts.url(&format!("/api/streams/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "deleting {id}");
    }
    let b = Browser::open().await;
    let outcome = list_story(&ts, &b).await;
    let outcome = b.finish(outcome).await;
    ts.stop().await;
    if let Err(why) = outcome {
        panic!("{why}");
    }
}
