use super::*;

#[test]
fn a_loss_soon_after_a_reconnect_continues_the_outage() {
    let t0 = Instant::now();
    let fresh = Outage::continue_or_begin(None, t0);
    assert_eq!((fresh.started, fresh.attempts), (t0, 0));
    let back = Outage {
        started: t0,
        attempts: 3,
        reconnected: Some(t0 + Duration::from_secs(2)),
    };
    // Lost again a moment after coming back: same start, attempts go on.
    let again = Outage::continue_or_begin(Some(back), t0 + Duration::from_secs(3));
    assert_eq!((again.started, again.attempts), (t0, 3));
    // Lost after running long enough: a new outage with a fresh budget.
    let later = t0 + Duration::from_secs(2) + STABLE_AFTER;
    let new = Outage::continue_or_begin(Some(back), later);
    assert_eq!(
        (new.started, new.attempts, new.reconnected),
        (later, 0, None)
    );
}
