use super::*;

fn limits(transcodes: usize, remux: usize, queued: usize, per_client: usize) -> Limits {
    Limits {
        transcodes,
        remux,
        queued,
        per_client,
        channels: 2,
        viewers: 3,
    }
}

#[test]
fn channel_and_viewer_slots_are_bounded_and_freed_on_drop() {
    let pool = Pool::new(limits(1, 1, 1, 10));
    let a = pool.enter_channel().unwrap();
    let _b = pool.enter_channel().unwrap();
    assert_eq!(
        pool.enter_channel().err(),
        Some(AdmitError::TooManyChannels(2))
    );
    drop(a);
    let _c = pool.enter_channel().unwrap();
    let v: Vec<_> = (0..3).map(|_| pool.enter_viewer().unwrap()).collect();
    assert_eq!(
        pool.enter_viewer().err(),
        Some(AdmitError::TooManyViewers(3))
    );
    drop(v);
    assert_eq!(pool.snapshot().viewers, 0);
    assert_eq!(pool.snapshot().channels, 2);
}
use std::time::Duration;

fn ip(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

fn later(ms: u64) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_millis(ms)
}

#[tokio::test(start_paused = true)]
async fn third_request_waits_and_gets_the_freed_slot_fifo() {
    let pool = Pool::new(limits(2, 5, 10, 10));
    let a = pool
        .acquire(
            Mode::Transcode,
            "s",
            "medium",
            None,
            ip(1),
            later(10),
            |_| {},
        )
        .await
        .unwrap();
    let _b = pool
        .acquire(
            Mode::Transcode,
            "s",
            "medium",
            None,
            ip(1),
            later(10),
            |_| {},
        )
        .await
        .unwrap();
    let p1 = pool.clone();
    let first = tokio::spawn(async move {
        p1.acquire(
            Mode::Transcode,
            "first",
            "m",
            None,
            ip(2),
            later(60_000),
            |_| {},
        )
        .await
        .map(|_| "first")
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    let p2 = pool.clone();
    let second = tokio::spawn(async move {
        p2.acquire(
            Mode::Transcode,
            "second",
            "m",
            None,
            ip(3),
            later(60_000),
            |_| {},
        )
        .await
        .map(|_| "second")
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(pool.snapshot().queue.len(), 2);
    assert_eq!(pool.snapshot().queue[0].stream_id, "first");
    // Remux has its own bound and is not blocked by transcode waiters.
    let _r = pool
        .acquire(Mode::Remux, "r", "m", None, ip(4), later(10), |_| {})
        .await
        .unwrap();
    drop(a);
    // The freed slot went to the oldest waiter; the younger one still waits.
    let queue = pool.snapshot().queue;
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0].stream_id, "second");
    assert_eq!(pool.snapshot().transcodes, 2);
    assert_eq!(first.await.unwrap(), Ok("first"));
    second.abort();
    let _ = second.await;
    assert!(pool.snapshot().queue.is_empty());
}

#[tokio::test(start_paused = true)]
async fn full_queue_and_timeouts_are_refused() {
    let pool = Pool::new(limits(1, 1, 1, 10));
    let _a = pool
        .acquire(Mode::Transcode, "s", "m", None, ip(1), later(10), |_| {})
        .await
        .unwrap();
    let p = pool.clone();
    let waiter = tokio::spawn(async move {
        p.acquire(Mode::Transcode, "s", "m", None, ip(1), later(500), |_| {})
            .await
            .err()
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    let full = pool
        .acquire(Mode::Transcode, "s", "m", None, ip(1), later(500), |_| {})
        .await
        .err();
    assert_eq!(full, Some(AdmitError::QueueFull(1)));
    assert_eq!(waiter.await.unwrap(), Some(AdmitError::PoolFull));
    assert!(pool.snapshot().queue.is_empty());
    assert_eq!(pool.snapshot().transcodes, 1);
}

#[tokio::test]
async fn the_headroom_holds_encoders_back_and_a_freed_one_goes_to_the_waiter() {
    let headroom = Headroom::new(
        1.0,
        "medium",
        std::collections::BTreeMap::from([("medium".to_string(), 0.6)]),
    );
    let pool = Pool::with_headroom(limits(8, 1, 1, 10), Some(headroom.clone()));
    let wait = |ms| later(ms);
    // The first encoder always starts; the second would need 0.6 of the
    // 0.4 cores the first leaves, so it waits.
    let first = pool
        .acquire(
            Mode::Transcode,
            "a",
            "medium",
            None,
            ip(1),
            wait(10),
            |_| {},
        )
        .await
        .unwrap();
    let p = pool.clone();
    let waiter = tokio::spawn(async move {
        p.acquire(
            Mode::Transcode,
            "b",
            "medium",
            None,
            ip(1),
            wait(20_000),
            |_| {},
        )
        .await
    });
    assert!(crate::pool::tests::until(|| pool.snapshot().queue.len() == 1).await);
    // Remux is not gated; with the queue full an encoder is overloaded.
    assert!(pool
        .acquire(Mode::Remux, "r", "source", None, ip(2), wait(10), |_| {})
        .await
        .is_ok());
    let full = pool
        .acquire(
            Mode::Transcode,
            "c",
            "medium",
            None,
            ip(3),
            wait(10),
            |_| {},
        )
        .await
        .err();
    assert!(
        matches!(&full, Some(AdmitError::Overloaded(m)) if m.contains("0.40 of 1.00")),
        "{full:?}"
    );
    let snap = pool.snapshot();
    assert!(
        snap.auto && snap.saturated,
        "nothing can start, nobody can wait"
    );
    assert_eq!(snap.max_transcodes, 1);
    // The refusal of the waiter was counted once, not at every offer.
    pool.offer();
    pool.offer();
    assert_eq!(headroom.view("auto".into(), 1).refusals["no_cpu"], 1);
    drop(first);
    let granted = waiter.await.unwrap().expect("the freed encoder slot");
    assert_eq!(pool.snapshot().transcodes, 1);
    drop(granted);
}

#[tokio::test]
async fn a_waiter_the_headroom_never_admits_leaves_overloaded() {
    let headroom = Headroom::new(
        1.0,
        "medium",
        std::collections::BTreeMap::from([("medium".to_string(), 0.6)]),
    );
    let pool = Pool::with_headroom(limits(8, 1, 4, 10), Some(headroom));
    let _first = pool
        .acquire(
            Mode::Transcode,
            "a",
            "medium",
            None,
            ip(1),
            later(10),
            |_| {},
        )
        .await
        .unwrap();
    let late = pool
        .acquire(
            Mode::Transcode,
            "b",
            "medium",
            None,
            ip(1),
            later(300),
            |_| {},
        )
        .await
        .err();
    assert!(matches!(late, Some(AdmitError::Overloaded(_))), "{late:?}");
    assert!(pool.snapshot().queue.is_empty());
    assert!(!pool.snapshot().saturated, "the queue has room");
}

#[tokio::test]
async fn the_auto_ceiling_refuses_as_overloaded_not_as_a_full_queue() {
    let headroom = Headroom::new(
        8.0,
        "low",
        std::collections::BTreeMap::from([("low".to_string(), 0.1)]),
    );
    // Headroom for many more, but a ceiling of one and no queue.
    let pool = Pool::with_headroom(limits(1, 1, 0, 10), Some(headroom));
    let ask =
        |id: &'static str| pool.acquire(Mode::Transcode, id, "low", None, ip(1), later(10), |_| {});
    let _first = ask("a").await.unwrap();
    match ask("b").await.err() {
        Some(AdmitError::Overloaded(why)) => assert!(why.contains("1 encoders run"), "{why}"),
        other => panic!("{other:?}"),
    }
}

/// Polls `cond` for up to a second.
pub(super) async fn until(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

#[tokio::test]
async fn per_client_limit_and_release() {
    let pool = Pool::new(limits(1, 1, 1, 2));
    let a = pool.enter_client(ip(9)).unwrap();
    let _b = pool.enter_client(ip(9)).unwrap();
    assert_eq!(
        pool.enter_client(ip(9)).err(),
        Some(AdmitError::TooManySessions(2))
    );
    assert!(pool.enter_client(ip(8)).is_ok());
    drop(a);
    assert!(pool.enter_client(ip(9)).is_ok());
}

#[tokio::test]
async fn many_concurrent_releases_never_double_free() {
    let pool = Pool::new(limits(4, 4, 200, 1000));
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let p = pool.clone();
        tasks.push(tokio::spawn(async move {
            let permit = p
                .acquire(
                    Mode::Transcode,
                    "s",
                    "m",
                    None,
                    ip((i % 200) as u8),
                    later(30_000),
                    |_| {},
                )
                .await;
            tokio::task::yield_now().await;
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let snap = pool.snapshot();
    assert_eq!((snap.transcodes, snap.queue.len()), (0, 0));
}
