use std::sync::atomic::AtomicUsize;

use futures::{FutureExt, StreamExt};

use super::*;

const HDR: &str = "HDR!";

fn cfg() -> FanoutConfig {
    FanoutConfig {
        buffer: Duration::from_secs(4),
        stall: Duration::from_secs(10),
    }
}

fn key(n: usize) -> Chunk {
    Chunk {
        data: Bytes::from(format!("K{n:03}")),
        keyframe: true,
    }
}

fn delta(n: usize) -> Chunk {
    Chunk {
        data: Bytes::from(format!("D{n:03}")),
        keyframe: false,
    }
}

/// A keyframe every fifth chunk.
fn nth(n: usize) -> Chunk {
    if n.is_multiple_of(5) {
        key(n)
    } else {
        delta(n)
    }
}

fn with_header(cfg: FanoutConfig) -> Arc<Fanout> {
    let f = Fanout::new(cfg);
    f.set_header(Bytes::from_static(HDR.as_bytes()));
    f
}

fn tokens(b: &[u8]) -> Vec<String> {
    b.chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect()
}

/// Everything the viewer can deliver without waiting, as 4-byte tokens.
fn drain(v: &mut Viewer) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(Some(Ok(b))) = v.next().now_or_never() {
        out.extend(tokens(&b));
    }
    out
}

fn expect(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn record_end(h: &ViewerHandle) -> Arc<Mutex<Vec<ViewerEnded>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    h.on_end(Box::new(move |e| s.lock().push(e)));
    seen
}

#[tokio::test]
async fn header_comes_first_and_media_starts_on_a_keyframe() {
    let f = Fanout::new(cfg());
    let mut early = f.subscribe(Join::Gop);
    f.publish(key(0));
    assert!(early.ready().now_or_never().is_none(), "no header yet");
    f.set_header(Bytes::from_static(b"OLD!"));
    f.set_header(Bytes::from_static(HDR.as_bytes()));
    f.publish(delta(1));
    assert!(early.ready().now_or_never().is_none(), "no keyframe yet");
    assert_eq!(early.header_ready().now_or_never(), Some(Ok(())));
    assert_eq!(
        drain(&mut early),
        expect(&[HDR]),
        "the header goes out alone"
    );
    assert!(
        early.next().now_or_never().is_none(),
        "no media before a keyframe"
    );
    f.publish(key(2));
    assert_eq!(early.ready().await, Ok(()));
    assert_eq!(drain(&mut early), expect(&["K002"]));

    f.publish(delta(3));
    let mut late = f.subscribe(Join::Gop);
    assert_eq!(late.ready().await, Ok(()));
    let first = late.next().await.unwrap().unwrap();
    assert_eq!(tokens(&first), expect(&[HDR, "K002", "D003"]));
    assert_eq!(late.handle().bytes_sent(), 12);
}

#[tokio::test]
async fn gop_join_gets_the_cached_gop_then_live_chunks() {
    let f = with_header(cfg());
    for c in [delta(0), key(1), delta(2), key(3), delta(4), delta(5)] {
        f.publish(c);
    }
    let mut v = f.subscribe(Join::Gop);
    assert_eq!(v.ready().now_or_never(), Some(Ok(())));
    assert_eq!(drain(&mut v), expect(&[HDR, "K003", "D004", "D005"]));
    f.publish(delta(6));
    f.publish(key(7));
    assert_eq!(drain(&mut v), expect(&["D006", "K007"]));
    assert_eq!(v.handle().bytes_sent(), 24);
}

#[tokio::test(start_paused = true)]
async fn live_join_waits_for_the_next_keyframe_and_asks_at_most_once_a_second() {
    let f = with_header(cfg());
    let asked = Arc::new(AtomicUsize::new(0));
    let a2 = asked.clone();
    f.set_keyframe_request(Box::new(move || {
        a2.fetch_add(1, Ordering::SeqCst);
    }));
    let asked = move || asked.load(Ordering::SeqCst);
    f.publish(key(1));
    f.publish(delta(2));
    // A keyframe less than a second old is live enough: no request.
    let mut fresh = f.subscribe(Join::Live);
    assert_eq!(asked(), 0);
    assert_eq!(fresh.ready().now_or_never(), Some(Ok(())));
    assert_eq!(drain(&mut fresh), expect(&[HDR, "K001", "D002"]));
    tokio::time::advance(Duration::from_millis(1200)).await;

    let mut a = f.subscribe(Join::Live);
    assert_eq!(asked(), 1);
    assert!(a.ready().now_or_never().is_none());
    assert_eq!(drain(&mut a), expect(&[HDR]), "the header goes out at once");
    assert!(a.next().now_or_never().is_none());
    let mut b = f.subscribe(Join::Live);
    assert_eq!(asked(), 1, "a second joiner within the second asks nothing");
    tokio::time::advance(Duration::from_millis(500)).await;
    f.sweep();
    assert_eq!(asked(), 1);
    tokio::time::advance(Duration::from_millis(600)).await;
    f.sweep();
    assert_eq!(
        asked(),
        2,
        "joiners still waiting: asked again after a second"
    );

    f.publish(delta(3));
    assert!(a.ready().now_or_never().is_none());
    f.publish(key(4));
    assert_eq!(a.ready().await, Ok(()));
    assert_eq!(drain(&mut a), expect(&["K004"]));
    assert_eq!(drain(&mut b), expect(&[HDR, "K004"]));

    tokio::time::advance(Duration::from_secs(2)).await;
    f.sweep();
    assert_eq!(asked(), 2, "nobody waits: nothing asked");
    let _c = f.subscribe(Join::Live);
    assert_eq!(asked(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_viewer_that_stops_reading_skips_to_keyframes_then_ends_slow() {
    let f = with_header(FanoutConfig {
        buffer: Duration::from_millis(100),
        stall: Duration::from_secs(1),
    });
    let mut fast = f.subscribe(Join::Gop);
    let mut slow = f.subscribe(Join::Gop);
    let h = slow.handle();
    let ended = record_end(&h);
    let mut fast_got = Vec::new();
    let step = Duration::from_millis(40);

    // The slow viewer never reads: its queue passes 100 ms at chunk 3
    // (skipped until key 5) and again at chunk 8.
    for n in 0..10 {
        f.publish(nth(n));
        fast_got.extend(drain(&mut fast));
        tokio::time::advance(step).await;
    }
    assert_eq!(h.skips(), 2);
    assert_eq!(f.skips_total(), 2);
    assert_eq!(h.lag_ms(), 0, "its queue was dropped");
    assert_eq!(h.reason(), None);

    // It reads once: the header it never had, then a keyframe.
    f.publish(nth(10));
    fast_got.extend(drain(&mut fast));
    assert_eq!(drain(&mut slow), expect(&[HDR, "K010"]));
    let resumed = Instant::now();

    // It stops again: behind from its next overflow, ended after the stall.
    let mut ended_after = None;
    for n in 11..60 {
        tokio::time::advance(step).await;
        f.publish(nth(n));
        fast_got.extend(drain(&mut fast));
        if ended_after.is_none() && h.reason().is_some() {
            ended_after = Some(resumed.elapsed());
        }
    }
    // Overflow at chunk 14 (160 ms after it read), then 1 s behind.
    let ended_after = ended_after.expect("the slow viewer was ended");
    assert_eq!(ended_after, Duration::from_millis(160 + 1040));
    assert_eq!(h.reason(), Some(EndReason::SlowClient));
    assert_eq!(h.lag_ms(), 0);
    assert_eq!(f.viewer_count(), 1);
    assert!(slow.next().await.is_none());
    let ended = ended.lock().clone();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].reason, EndReason::SlowClient);
    assert_eq!(ended[0].bytes_sent, 8);

    let mut all = vec![HDR.to_string()];
    all.extend((0..60).map(|n| tokens(&nth(n).data).remove(0)));
    assert_eq!(fast_got, all, "the reading viewer got every chunk");
    assert_eq!(fast.handle().skips(), 0);
}

#[tokio::test]
async fn a_queue_past_its_byte_cap_skips_to_the_next_keyframe() {
    let f = with_header(cfg());
    let mut v = f.subscribe(Join::Gop);
    let mib = Bytes::from(vec![0u8; 1 << 20]);
    f.publish(key(0));
    for _ in 0..40 {
        f.publish(Chunk {
            data: mib.clone(),
            keyframe: false,
        });
    }
    assert_eq!(v.handle().skips(), 1);
    assert!(f.inner.lock().viewers.values().all(|s| s.queued_bytes == 0));
    f.publish(key(1));
    assert_eq!(drain(&mut v), expect(&[HDR, "K001"]));
}

#[tokio::test(start_paused = true)]
async fn the_gop_cache_is_bounded_in_age_and_bytes() {
    let f = with_header(cfg());
    f.publish(key(1));
    tokio::time::advance(Duration::from_secs(31)).await;
    f.publish(delta(2));
    let mut v = f.subscribe(Join::Gop);
    assert!(
        v.ready().now_or_never().is_none(),
        "a GOP over 30 s is not kept"
    );
    f.publish(delta(3));
    f.publish(key(4));
    assert_eq!(drain(&mut v), expect(&[HDR, "K004"]));
    drop(v);

    let mib = Bytes::from(vec![0u8; 1 << 20]);
    for _ in 0..70 {
        f.publish(Chunk {
            data: mib.clone(),
            keyframe: false,
        });
    }
    assert_eq!(f.inner.lock().gop_bytes, 0, "a GOP over 64 MiB is not kept");
    assert!(f.subscribe(Join::Gop).ready().now_or_never().is_none());
}

#[tokio::test(start_paused = true)]
async fn lag_is_the_age_of_the_oldest_queued_chunk() {
    let f = with_header(cfg());
    let mut v = f.subscribe(Join::Gop);
    f.publish(key(0));
    tokio::time::advance(Duration::from_millis(250)).await;
    f.publish(delta(1));
    assert_eq!(v.handle().lag_ms(), 250);
    drain(&mut v);
    assert_eq!(v.handle().lag_ms(), 0);
}

#[tokio::test(start_paused = true)]
async fn finish_eos_delivers_what_is_queued_then_ends() {
    let f = with_header(cfg());
    let mut v = f.subscribe(Join::Gop);
    let h = v.handle();
    let ended = record_end(&h);
    f.publish(key(1));
    // A live joiner waits: the cached keyframe is too old for it.
    tokio::time::advance(Duration::from_millis(1500)).await;
    let mut waiting = f.subscribe(Join::Live);
    f.publish(delta(2));
    f.finish(EndReason::SourceEos);
    f.publish(delta(3));
    assert_eq!(v.ready().await, Ok(()));
    let got = v.next().await.unwrap().unwrap();
    assert_eq!(tokens(&got), expect(&[HDR, "K001", "D002"]));
    assert_eq!(h.reason(), None, "still delivering");
    assert!(v.next().await.is_none());
    assert!(v.next().await.is_none());
    assert_eq!(h.reason(), Some(EndReason::SourceEos));
    drop(v);
    let ended = ended.lock().clone();
    assert_eq!(ended.len(), 1);
    assert_eq!(
        (ended[0].reason, ended[0].bytes_sent),
        (EndReason::SourceEos, 12)
    );

    assert_eq!(waiting.ready().await, Err(EndReason::SourceEos));
    assert!(waiting.next().await.is_none());
    let mut later = f.subscribe(Join::Gop);
    assert_eq!(later.ready().await, Err(EndReason::SourceEos));
    assert!(later.next().await.is_none());
    assert_eq!(later.handle().reason(), Some(EndReason::SourceEos));
    assert_eq!(f.viewer_count(), 0);
}

#[tokio::test]
async fn finish_with_a_source_error_cuts_the_body_with_an_error() {
    let f = with_header(cfg());
    let mut v = f.subscribe(Join::Gop);
    f.publish(key(1));
    f.finish(EndReason::SourceError);
    assert_eq!(
        tokens(&v.next().await.unwrap().unwrap()),
        expect(&[HDR, "K001"])
    );
    assert!(v.next().await.unwrap().is_err());
    assert!(v.next().await.is_none());
    assert_eq!(v.handle().reason(), Some(EndReason::SourceError));

    let mut later = f.subscribe(Join::Gop);
    assert_eq!(later.ready().await, Err(EndReason::SourceError));
    assert!(later.next().await.unwrap().is_err());
    assert!(later.next().await.is_none());
}

#[tokio::test]
async fn dropping_a_viewer_unsubscribes_it_and_reports_the_count() {
    let f = with_header(cfg());
    let counts = Arc::new(Mutex::new(Vec::new()));
    let c = counts.clone();
    f.on_viewer_count(Box::new(move |n| c.lock().push(n)));
    let a = f.subscribe(Join::Gop);
    let b = f.subscribe(Join::Live);
    let (ha, hb) = (a.handle(), b.handle());
    f.publish(key(0));
    drop(a);
    assert_eq!(ha.reason(), Some(EndReason::ClientDisconnect));
    assert_eq!(f.viewer_count(), 1);
    drop(b);
    assert_eq!(hb.reason(), Some(EndReason::ClientDisconnect));
    assert_eq!(*counts.lock(), vec![1, 2, 1, 0]);
    assert_eq!(f.viewer_count(), 0);
    assert!(!ha.end(EndReason::AdminStop), "already ended");
}

#[tokio::test]
async fn end_is_first_reason_wins_and_on_end_runs_once() {
    let f = with_header(cfg());
    let mut v = f.subscribe(Join::Gop);
    f.publish(key(0));
    let h = v.handle();
    let ended = record_end(&h);
    assert!(h.end(EndReason::AdminStop));
    assert!(!h.end(EndReason::Shutdown));
    assert_eq!(h.reason(), Some(EndReason::AdminStop));
    assert!(v.next().await.is_none(), "its queue was freed");
    assert_eq!(f.viewer_count(), 0);
    drop(v);
    assert_eq!(ended.lock().len(), 1);
    assert_eq!(ended.lock()[0].reason, EndReason::AdminStop);
    let late = record_end(&h);
    assert_eq!(
        late.lock().len(),
        1,
        "a hook added after the end runs at once"
    );
}

#[tokio::test]
async fn a_thousand_viewers_leave_nothing_behind() {
    let f = with_header(cfg());
    let last_count = Arc::new(AtomicUsize::new(usize::MAX));
    let lc = last_count.clone();
    f.on_viewer_count(Box::new(move |n| lc.store(n, Ordering::SeqCst)));
    let hooks = Arc::new(AtomicUsize::new(0));
    let mut viewers: Vec<Viewer> = (0..1000)
        .map(|i| f.subscribe(if i % 2 == 0 { Join::Gop } else { Join::Live }))
        .collect();
    let handles: Vec<ViewerHandle> = viewers.iter().map(Viewer::handle).collect();
    for h in &handles {
        let hooks = hooks.clone();
        h.on_end(Box::new(move |_| {
            hooks.fetch_add(1, Ordering::SeqCst);
        }));
    }
    assert_eq!(last_count.load(Ordering::SeqCst), 1000);
    f.publish(key(0));
    f.publish(delta(1));
    for v in viewers.iter_mut().step_by(3) {
        assert_eq!(drain(v), expect(&[HDR, "K000", "D001"]));
    }
    drop(viewers);
    assert_eq!(f.viewer_count(), 0);
    assert_eq!(last_count.load(Ordering::SeqCst), 0);
    assert_eq!(hooks.load(Ordering::SeqCst), 1000);
    assert!(handles
        .iter()
        .all(|h| h.reason() == Some(EndReason::ClientDisconnect)));
    assert!(handles.iter().all(|h| Arc::strong_count(&h.shared) == 1));
    assert_eq!(Arc::strong_count(&f), 1);
}

#[tokio::test]
async fn a_waiting_body_is_woken_and_takes_up_to_256_kib_a_poll() {
    let f = with_header(cfg());
    let v = f.subscribe(Join::Live);
    let task = tokio::spawn(async move {
        v.ready().await.unwrap();
        let mut v = v;
        let first = v.next().await.unwrap().unwrap();
        (v, first)
    });
    tokio::task::yield_now().await;
    f.publish(key(0));
    let (mut v, first) = task.await.unwrap();
    assert_eq!(tokens(&first), expect(&[HDR, "K000"]));

    let waiting = tokio::spawn(async move {
        let next = v.next().await.unwrap().unwrap();
        (v, next)
    });
    tokio::task::yield_now().await;
    let part = Bytes::from(vec![7u8; 100 << 10]);
    for _ in 0..5 {
        f.publish(Chunk {
            data: part.clone(),
            keyframe: false,
        });
    }
    let (mut v, next) = waiting.await.unwrap();
    let mut sizes = vec![next.len()];
    while let Some(Some(Ok(b))) = v.next().now_or_never() {
        sizes.push(b.len());
    }
    assert_eq!(sizes, vec![200 << 10, 200 << 10, 100 << 10]);
    assert_eq!(v.handle().bytes_sent(), 8 + (500 << 10));
}

#[tokio::test(start_paused = true)]
async fn sweep_ends_a_viewer_stuck_behind_when_nothing_is_published() {
    let f = with_header(FanoutConfig {
        buffer: Duration::from_millis(100),
        stall: Duration::from_secs(1),
    });
    let v = f.subscribe(Join::Gop);
    let h = v.handle();
    f.publish(key(0));
    tokio::time::advance(Duration::from_millis(600)).await;
    f.sweep();
    assert_eq!(h.reason(), None);
    assert_eq!(h.lag_ms(), 600);
    tokio::time::advance(Duration::from_millis(900)).await;
    f.sweep();
    assert_eq!(h.reason(), None, "behind since the first sweep, 900 ms ago");
    tokio::time::advance(Duration::from_millis(200)).await;
    f.sweep();
    assert_eq!(h.reason(), Some(EndReason::SlowClient));
    assert_eq!(f.viewer_count(), 0);
    assert_eq!(h.lag_ms(), 0);
}

mod header;
