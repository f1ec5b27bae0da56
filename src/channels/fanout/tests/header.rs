//! A header change reaches every viewer: one whose header has not gone out
//! gets only the new one; one that has a header gets the new one in its
//! stream, once, right before the next keyframe chunk.

use super::*;

const NEW: &str = "NEW!";

fn new_header() -> Bytes {
    Bytes::from_static(NEW.as_bytes())
}

#[tokio::test]
async fn a_started_viewer_gets_the_new_header_once_right_before_the_next_keyframe() {
    let f = with_header(cfg());
    let mut v = f.subscribe(Join::Gop);
    f.publish(key(0));
    f.publish(delta(1));
    assert_eq!(drain(&mut v), expect(&[HDR, "K000", "D001"]));
    // Queued before the change: stays before the new header.
    f.publish(delta(2));
    f.set_header(new_header());
    // Published after the change but before a keyframe: not sent after
    // the new header, as it would be mid-GOP.
    f.publish(delta(3));
    f.publish(key(4));
    f.publish(delta(5));
    f.publish(key(6));
    assert_eq!(
        drain(&mut v),
        expect(&["D002", NEW, "K004", "D005", "K006"]),
        "the new header once, right before the next keyframe chunk"
    );
}

#[tokio::test]
async fn a_viewer_that_read_nothing_gets_its_queue_then_the_new_header_then_the_keyframe() {
    let f = with_header(cfg());
    let mut v = f.subscribe(Join::Gop);
    f.publish(key(0));
    f.publish(delta(1));
    f.set_header(new_header());
    f.publish(key(2));
    // Nothing was read until now: the old chunks are not mixed after it.
    assert_eq!(drain(&mut v), expect(&[HDR, "K000", "D001", NEW, "K002"]));
}

#[tokio::test]
async fn an_unstarted_viewer_gets_only_the_new_header() {
    let f = with_header(cfg());
    let mut waiting = f.subscribe(Join::Live);
    f.publish(delta(1));
    f.set_header(new_header());
    f.publish(delta(2));
    f.publish(key(3));
    f.publish(delta(4));
    assert_eq!(drain(&mut waiting), expect(&[NEW, "K003", "D004"]));
    // A later joiner starts from the new header and the GOP after it.
    let mut late = f.subscribe(Join::Gop);
    assert_eq!(drain(&mut late), expect(&[NEW, "K003", "D004"]));
}

#[tokio::test]
async fn a_viewer_whose_header_went_out_before_its_first_keyframe_gets_the_new_one_before_it() {
    let f = with_header(cfg());
    let mut v = f.subscribe(Join::Live);
    assert_eq!(v.header_ready().await, Ok(()));
    assert_eq!(drain(&mut v), expect(&[HDR]));
    f.set_header(new_header());
    f.publish(delta(0));
    f.publish(key(1));
    assert_eq!(drain(&mut v), expect(&[NEW, "K001"]));
}

#[tokio::test]
async fn a_skipping_viewer_resumes_at_the_keyframe_behind_the_new_header() {
    let f = with_header(FanoutConfig {
        buffer: Duration::from_millis(0),
        stall: Duration::from_secs(60),
    });
    let mut v = f.subscribe(Join::Gop);
    f.publish(key(0));
    assert_eq!(drain(&mut v), expect(&[HDR, "K000"]));
    f.publish(delta(1));
    tokio::time::sleep(Duration::from_millis(5)).await;
    // Its queue is older than the buffer: dropped, the viewer skips.
    f.publish(delta(2));
    assert_eq!(f.skips_total(), 1);
    f.set_header(new_header());
    f.publish(key(3));
    assert_eq!(drain(&mut v), expect(&[NEW, "K003"]));
}
