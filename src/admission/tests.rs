use super::*;

fn headroom(cores: f64, medium: f64) -> Arc<Headroom> {
    Headroom::new(
        cores,
        "medium",
        BTreeMap::from([("medium".to_string(), medium), ("low".to_string(), 0.1)]),
    )
}

/// CPU use of `cores` over the last `secs` seconds, host idle unknown.
fn used(h: &Headroom, cores: f64, secs: u64) {
    used_idle(h, cores, None, secs);
}

/// CPU use of `cores`, with `idle` cores the host left idle, over the last
/// `secs` seconds.
fn used_idle(h: &Headroom, cores: f64, idle: Option<f64>, secs: u64) {
    let t0 = Instant::now();
    for s in 0..=secs {
        let s_f = s as f64;
        h.record_cpu(
            t0 + Duration::from_secs(s),
            cores * s_f,
            idle.map(|i| i * s_f),
        );
    }
}

fn encoder(quality: &str, encode_speed: f64) -> Encoder {
    Encoder {
        stream_id: "s".into(),
        quality: quality.into(),
        source_pixels: Some(REFERENCE_PIXELS),
        speed: 1.0,
        encode_speed: Some(encode_speed),
        frame_share: Some(1.0),
        settled: true,
    }
}

#[test]
fn the_first_encoder_starts_whatever_the_load() {
    let h = headroom(2.0, 0.85);
    used(&h, 2.0, 3);
    assert_eq!(h.admit("medium", None, 0), Ok(()));
}

#[test]
fn just_admitted_encoders_count_at_their_estimate_until_measured() {
    let h = headroom(2.0, 0.75);
    used(&h, 0.0, 3);
    assert_eq!(h.admit("medium", None, 0), Ok(()));
    // 2.0 - 0.75 leaves 1.25: one more fits (0.3 stays free), a third
    // does not.
    assert_eq!(h.admit("medium", None, 1), Ok(()));
    let refusal = h.admit("medium", None, 2).unwrap_err();
    assert_eq!(refusal.reason, "no_cpu");
    assert!(
        refusal.message.contains("0.50 of 2.00"),
        "{}",
        refusal.message
    );
    assert_eq!(h.last_refusal().as_ref(), Some(&refusal));
    // A cheaper profile still fits.
    assert_eq!(h.admit("low", None, 2), Ok(()));
    assert_eq!(h.view("auto".into(), 3).refusals.get("no_cpu"), Some(&1));
    // Encoders that ended while warming up no longer count.
    assert!(h.can_admit(1));
}

#[test]
fn measured_cpu_and_source_size_decide() {
    let h = headroom(2.0, 0.8);
    used(&h, 1.2, 3);
    let mut running = encoder("medium", 3.0);
    running.settled = false;
    h.record_encoders(vec![running]);
    // 0.8 free, of which 0.3 stay free: a 1080p source's 0.8 does not
    // fit, a 720p one (0.36) does.
    assert_eq!(h.admit("medium", None, 1).unwrap_err().reason, "no_cpu");
    assert_eq!(h.admit("medium", Some(1280 * 720), 1), Ok(()));
}

#[test]
fn what_the_host_leaves_idle_bounds_the_free_cores() {
    let h = headroom(2.0, 0.5);
    // The process uses 0.2 cores, but other processes leave 0.6 idle.
    used_idle(&h, 0.2, Some(0.6), 3);
    // (Still warming up, so its cost is not learned from this.)
    let mut running = encoder("medium", 4.0);
    running.settled = false;
    h.record_encoders(vec![running]);
    let v = h.view("auto".into(), 1);
    assert_eq!(v.host_idle_cores, Some(0.6));
    assert!((v.free_cores - 0.6).abs() < 0.01, "{v:?}");
    // 0.6 free less the 0.3 kept free: a 0.5 encoder does not fit.
    assert_eq!(h.admit("medium", None, 1).unwrap_err().reason, "no_cpu");
    assert_eq!(h.admit("low", None, 1), Ok(()));
}

#[test]
fn an_encoder_near_real_time_stops_admission() {
    let h = headroom(8.0, 0.5);
    used(&h, 1.0, 3);
    h.record_encoders(vec![encoder("medium", 3.0), encoder("medium", 1.02)]);
    let r = h.admit("low", None, 2).unwrap_err();
    assert_eq!(r.reason, "encoder_behind");
    assert!(r.message.contains("1.02x"), "{}", r.message);
    assert!(!h.can_admit(2));
    // An encoder still filling its window is not judged yet.
    let mut young = encoder("medium", 0.5);
    young.settled = false;
    h.record_encoders(vec![encoder("medium", 3.0), young]);
    assert!(h.can_admit(2));
    assert_eq!(h.view("auto".into(), 2).slowest_encode_speed, Some(0.5));
    // One whose queue drops pictures is behind however fast it encodes.
    let mut dropping = encoder("medium", 3.0);
    dropping.frame_share = Some(0.8);
    h.record_encoders(vec![dropping]);
    let r = h.admit("low", None, 1).unwrap_err();
    assert!(r.message.contains("80% of its pictures"), "{}", r.message);
}

#[test]
fn costs_are_learned_from_what_running_encoders_use() {
    let h = headroom(2.0, 1.0);
    // Two settled medium encoders use 0.8 cores together: 0.4 each.
    used(&h, 0.8, 6);
    for _ in 0..30 {
        h.record_encoders(vec![encoder("medium", 4.0), encoder("medium", 4.0)]);
    }
    let e = &h.view("auto".into(), 2).estimates["medium"];
    assert!((e.cores_per_stream - 0.4).abs() < 0.02, "{e:?}");
    assert_eq!(e.samples, 30);
    // The other profile was not running: it keeps its estimate.
    assert_eq!(h.view("auto".into(), 2).estimates["low"].samples, 0);
    // Nothing is learned while an encoder is still warming up, or from
    // encoders that drop pictures or could not keep real time.
    let mut young = encoder("medium", 4.0);
    young.settled = false;
    let mut dropping = encoder("medium", 4.0);
    dropping.frame_share = Some(0.4);
    for set in [
        vec![young],
        vec![dropping],
        vec![encoder("medium", 4.0), encoder("medium", 0.9)],
    ] {
        h.record_encoders(set);
    }
    assert_eq!(h.view("auto".into(), 1).estimates["medium"].samples, 30);
}

#[test]
fn cpu_taken_by_a_catch_up_is_not_counted_as_lasting() {
    let h = headroom(2.0, 0.3);
    // Three encoders use 1.9 cores and the host has 0.1 left: two at real
    // time, one racing through its source's backlog at 3x.
    used_idle(&h, 1.9, Some(0.1), 3);
    let mut racing = encoder("medium", 3.0);
    racing.speed = 3.0;
    racing.settled = false;
    h.record_encoders(vec![encoder("medium", 2.0), encoder("medium", 2.0), racing]);
    // At real time the three keep 1.9 * 3 / 5 = 1.14 cores; 0.86 come free.
    let v = h.view("auto".into(), 3);
    assert!((v.steady_used_cores - 1.14).abs() < 0.01, "{v:?}");
    assert!((v.free_cores - 0.86).abs() < 0.01, "{v:?}");
    assert_eq!(h.admit("medium", None, 3), Ok(()));
    // Speeds around real time (a segment arriving early) change nothing.
    let h = headroom(2.0, 0.3);
    used(&h, 1.9, 3);
    let mut early = encoder("medium", 2.0);
    early.speed = 1.2;
    h.record_encoders(vec![encoder("medium", 2.0), early]);
    let v = h.view("auto".into(), 2);
    assert_eq!(v.steady_used_cores, 1.9);
    assert_eq!(h.admit("medium", None, 2).unwrap_err().reason, "no_cpu");
}

#[test]
fn nothing_is_learned_while_an_encoder_catches_up() {
    let h = headroom(2.0, 1.0);
    used(&h, 0.8, 6);
    let mut racing = encoder("medium", 4.0);
    racing.speed = 2.0;
    h.record_encoders(vec![encoder("medium", 4.0), racing]);
    assert_eq!(h.view("auto".into(), 2).estimates["medium"].samples, 0);
    // At real time the two are learned from as they go.
    let mut steady = encoder("medium", 4.0);
    steady.speed = 1.2;
    for _ in 0..30 {
        h.record_encoders(vec![encoder("medium", 4.0), steady.clone()]);
    }
    let e = &h.view("auto".into(), 2).estimates["medium"];
    assert!((e.cores_per_stream - 0.8 / 2.2).abs() < 0.02, "{e:?}");
}

#[test]
fn builtin_costs_rank_the_profiles() {
    let p = crate::profiles::Profiles::builtin();
    let cost = |n: &str| builtin_cost(p.get(n).unwrap());
    assert!(cost("low") < cost("medium") && cost("medium") < cost("high"));
    assert!((cost("medium") - 0.85).abs() < 0.01, "{}", cost("medium"));
}
