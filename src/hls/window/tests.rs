use super::*;

fn bx(typ: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    v.extend_from_slice(typ);
    v.extend_from_slice(body);
    v
}

/// `ftyp` + a `moov` with one video track (id 1, 90 kHz).
fn init(tag: u8) -> Bytes {
    let mut tkhd = vec![0u8; 84];
    tkhd[12..16].copy_from_slice(&1u32.to_be_bytes());
    tkhd[76..80].copy_from_slice(&(320u32 << 16).to_be_bytes());
    tkhd[80..84].copy_from_slice(&(240u32 << 16).to_be_bytes());
    let mut mdhd = vec![0u8; 24];
    mdhd[12..16].copy_from_slice(&90_000u32.to_be_bytes());
    let mut hdlr = vec![0u8; 24];
    hdlr[8..12].copy_from_slice(b"vide");
    let mdia = bx(b"mdia", &[bx(b"mdhd", &mdhd), bx(b"hdlr", &hdlr)].concat());
    let trak = bx(b"trak", &[bx(b"tkhd", &tkhd), mdia].concat());
    Bytes::from([bx(b"ftyp", &[b'i', b's', b'o', tag]), bx(b"moov", &trak)].concat())
}

fn moof(t: u64) -> Bytes {
    let mut tfhd = vec![0, 0, 0, 0];
    tfhd.extend_from_slice(&1u32.to_be_bytes());
    let mut tfdt = vec![1, 0, 0, 0];
    tfdt.extend_from_slice(&t.to_be_bytes());
    let traf = bx(b"traf", &[bx(b"tfhd", &tfhd), bx(b"tfdt", &tfdt)].concat());
    Bytes::from(bx(b"moof", &[bx(b"mfhd", &[0; 8]), traf].concat()))
}

/// Feeds `secs` of 100 ms fragments (moof + mdat), a keyframe every 2 s.
fn feed(w: &Window, from: u64, secs: u64) -> u64 {
    let frag = 9_000;
    let mut t = from;
    while t < from + secs * 90_000 {
        let keyframe = t.is_multiple_of(180_000);
        w.chunk(&Chunk {
            data: moof(t),
            keyframe,
        });
        w.chunk(&Chunk {
            data: Bytes::from(bx(b"mdat", &[7; 32])),
            keyframe: false,
        });
        t += frag;
    }
    t
}

fn window(reconnects: Arc<AtomicU64>) -> Arc<Window> {
    Window::new(
        Container::Fmp4,
        2,
        Box::new(move || reconnects.load(Ordering::Relaxed)),
        Arc::default(),
        Arc::default(),
    )
}

#[test]
fn segments_are_cut_at_keyframes_into_parts_within_the_target() {
    let w = window(Arc::default());
    w.header(&init(1));
    assert!(w.snapshot().is_none(), "nothing to list before a segment");
    feed(&w, 0, 17);
    let snap = w.snapshot().unwrap();
    assert_eq!(snap.target, 2);
    assert_eq!(snap.part_target, Some(0.25));
    assert_eq!(snap.segments.len(), WINDOW_SEGMENTS, "the window slides");
    assert_eq!(snap.first_msn, 2);
    for s in &snap.segments {
        assert!((s.dur - 2.0).abs() < 1e-9, "{}", s.dur);
        assert!(s.parts.iter().all(|p| p.dur <= 0.25 + 1e-9));
        assert!(s.parts[0].independent && !s.parts[1].independent);
        let sum: usize = s.parts.iter().map(|p| p.data.len()).sum();
        assert_eq!(sum, s.data.len(), "a segment is its parts");
        assert_eq!(
            s.parts[1].data.as_ptr(),
            s.data[s.parts[0].data.len()..].as_ptr()
        );
        assert!(boxes::is_moof(&s.data[..s.data.len().min(moof(0).len())]));
        assert!(!s.discontinuity);
    }
    assert!(w.segment(1).is_none() && w.segment(2).is_some());
    assert_eq!(w.cut.load(Ordering::Relaxed), 8);
    assert!(w.has(7, None) && !w.has(8, None) && w.has(8, Some(0)));
    assert_eq!(w.init(0), Some(init(1)));
}

#[test]
fn a_reconnect_or_a_new_init_starts_a_discontinuity() {
    let reconnects = Arc::new(AtomicU64::new(0));
    let w = window(reconnects.clone());
    w.header(&init(1));
    let t = feed(&w, 0, 4);
    reconnects.store(1, Ordering::Relaxed);
    let t = feed(&w, t, 4);
    let snap = w.snapshot().unwrap();
    let disc: Vec<bool> = snap.segments.iter().map(|s| s.discontinuity).collect();
    assert_eq!(disc, [false, false, true]);
    // A new init segment (the encoder changed): listed with its own map.
    w.header(&init(2));
    let t = feed(&w, t, 4);
    let snap = w.snapshot().unwrap();
    let last = snap.segments.last().unwrap();
    assert!(last.discontinuity && last.init_id == 1);
    assert!(w.init(0).is_some() && w.init(1).is_some());
    // Discontinuities that leave the window are counted.
    feed(&w, t, 12);
    let snap = w.snapshot().unwrap();
    assert_eq!(snap.disc_seq, 2);
    assert!(w.init(0).is_none(), "an unused init segment is dropped");
}

#[test]
fn a_new_init_right_before_a_keyframe_ends_the_segment_being_cut() {
    let w = window(Arc::default());
    w.header(&init(1));
    let t = feed(&w, 0, 5);
    // In the stream, right before the keyframe at 6 s: the segment
    // being cut (4 s to 6 s) is kept and ends there.
    let t = feed(&w, t, 1);
    w.header(&init(2));
    feed(&w, t, 4);
    let snap = w.snapshot().unwrap();
    let list: Vec<(u64, bool, u64)> = (snap.segments.iter())
        .map(|s| (s.msn, s.discontinuity, s.init_id))
        .collect();
    assert_eq!(
        list,
        [(0, false, 0), (1, false, 0), (2, false, 0), (3, true, 1)]
    );
    assert!(snap.segments.iter().all(|s| (s.dur - 2.0).abs() < 1e-9));
    assert_eq!(snap.init_ids, [0, 1]);

    // A new init whose stream starts over (its time goes back): the
    // segment being cut cannot be finished and is dropped.
    let w = window(Arc::default());
    w.header(&init(1));
    feed(&w, 0, 5);
    w.header(&init(2));
    feed(&w, 0, 3);
    let snap = w.snapshot().unwrap();
    let list: Vec<(u64, bool, u64)> = (snap.segments.iter())
        .map(|s| (s.msn, s.discontinuity, s.init_id))
        .collect();
    assert_eq!(list, [(0, false, 0), (1, false, 0), (2, true, 1)]);
}

#[test]
fn the_end_is_listed_and_wakes_waiters() {
    let w = window(Arc::default());
    w.header(&init(1));
    feed(&w, 0, 3);
    let rx = w.subscribe();
    let seen = *rx.borrow();
    w.finish(EndReason::SourceEos);
    assert!(*rx.borrow() > seen);
    assert!(w.snapshot().unwrap().ended && w.has(99, None));
}
