use super::*;

#[test]
fn transcode_limit_is_auto_by_default_or_a_hard_cap() {
    assert_eq!(
        Settings::parse_from(["sluice"]).max_transcodes,
        TranscodeLimit::Auto
    );
    let n = Settings::parse_from(["sluice", "--max-concurrent-transcodes", "4"]);
    assert_eq!(n.max_transcodes, TranscodeLimit::Max(4));
    assert_eq!(parse_transcode_limit(" AUTO "), Ok(TranscodeLimit::Auto));
    for bad in ["0", "-1", "two", ""] {
        let arg = format!("--max-concurrent-transcodes={bad}");
        let e = Settings::try_parse_from(["sluice", arg.as_str()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected auto or a whole number"), "{bad}: {e}");
    }
}

#[test]
fn hdhr_settings_parse_and_are_checked() {
    let s = Settings::parse_from(["sluice"]);
    assert!(s.hdhr_enabled);
    assert!(s.hdhr_base_url.is_none() && s.hdhr_quality.is_none());
    assert!(!s.hdhr_ssdp);
    assert!(Settings::parse_from(["sluice", "--hdhr-ssdp", "true"]).hdhr_ssdp);
    let s = Settings::parse_from([
        "sluice",
        "--hdhr-enabled",
        "false",
        "--hdhr-base-url",
        "http://nas.lan:3000/",
        "--hdhr-quality",
        "low",
    ]);
    assert!(!s.hdhr_enabled);
    assert_eq!(s.hdhr_base_url.as_deref(), Some("http://nas.lan:3000"));
    assert_eq!(s.hdhr_quality.as_deref(), Some("low"));
    assert_eq!(
        parse_base_url("https://tv.example/sluice").as_deref(),
        Ok("https://tv.example/sluice")
    );
    for bad in [
        "nas:3000",
        "ftp://nas",
        "http://u:p@nas",
        "http://nas/?a=1",
        "http://nas/#x",
    ] {
        assert!(parse_base_url(bad).is_err(), "{bad} should be refused");
    }
    for bad in ["maybe", "", "2"] {
        assert!(parse_switch(bad).is_err(), "{bad} should be refused");
    }
    assert!(Settings::try_parse_from(["sluice", "--hdhr-enabled", "perhaps"]).is_err());
    let mut s = Settings::parse_from(["sluice"]);
    s.hdhr_quality = Some("Not A Name".into());
    assert!(s.validate().unwrap_err().contains("HDHR_QUALITY"));
}

#[test]
fn sizes_parse_in_every_spec_form() {
    assert_eq!(parse_size("512MB"), Ok(512_000_000));
    assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
    assert_eq!(parse_size("1.5GiB"), Ok(1_610_612_736));
    assert_eq!(parse_size("64KiB"), Ok(65_536));
    assert_eq!(parse_size("123456"), Ok(123_456));
    assert_eq!(parse_size(" 2 mib "), Ok(2 * 1024 * 1024));
    for bad in ["", "MB", "1.2.3GB", "12XB", "-5MB", ".5GB", "1.5", "0"] {
        assert!(parse_size(bad).is_err(), "{bad} should be refused");
    }
}

#[test]
fn bad_environment_names_the_variable() {
    let err = Settings::try_parse_from(["sluice", "--memory-warning", "lots"]).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("MEMORY_WARNING_THRESHOLD"), "{text}");
    assert!(text.contains("512MB"), "{text}");
}

#[test]
fn bad_rate_limits_and_origins_name_the_variable() {
    for (flag, var) in [
        ("--rate-limit-preview", "RATE_LIMIT_PREVIEW"),
        ("--rate-limit-admin", "RATE_LIMIT_ADMIN"),
        ("--rate-limit-api", "RATE_LIMIT_API"),
        ("--cors-origin", "CORS_ORIGIN"),
    ] {
        let err = Settings::try_parse_from(["sluice", flag, "lots"]).unwrap_err();
        assert!(err.to_string().contains(var), "{err}");
    }
    let s = Settings::for_data_dir("/tmp/x");
    assert_eq!(s.rate_limit_admin.to_string(), "30/900s");
    assert!(s.cors_origin.is_none());
}

#[test]
fn trust_proxy_takes_booleans_hops_and_networks() {
    assert_eq!(TrustProxy::parse("false"), Ok(TrustProxy::Off));
    assert_eq!(TrustProxy::parse("0"), Ok(TrustProxy::Off));
    assert_eq!(TrustProxy::parse("true"), Ok(TrustProxy::Hops(1)));
    assert_eq!(TrustProxy::parse("1"), Ok(TrustProxy::Hops(1)));
    assert_eq!(TrustProxy::parse(" 3 "), Ok(TrustProxy::Hops(3)));
    let TrustProxy::Networks(nets) = TrustProxy::parse("10.0.0.0/8, 127.0.0.1,fd00::/8").unwrap()
    else {
        panic!("a network list");
    };
    assert_eq!(nets.len(), 3);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(nets[0].contains(ip("10.200.3.4")));
    assert!(!nets[0].contains(ip("11.0.0.1")));
    assert!(
        nets[0].contains(ip("::ffff:10.9.9.9")),
        "mapped IPv4 is IPv4"
    );
    assert!(nets[1].contains(ip("127.0.0.1")));
    assert!(!nets[1].contains(ip("127.0.0.2")));
    assert!(nets[2].contains(ip("fd12::1")));
    assert!(!nets[2].contains(ip("2001:db8::1")));
    assert!(!nets[2].contains(ip("10.0.0.1")));
    let mapped = IpNet::parse("::ffff:192.168.0.0/112").unwrap();
    assert!(mapped.contains(ip("192.168.7.7")));
    assert!(IpNet::parse("0.0.0.0/0")
        .unwrap()
        .contains(ip("203.0.113.9")));
    for bad in [
        "maybe",
        "10.0.0.0/33",
        "10.0.0.0/",
        "10.0.0/8",
        "1,2",
        "-1",
        "::1/129",
        "10.0.0.1,",
    ] {
        assert!(TrustProxy::parse(bad).is_err(), "{bad} should be refused");
    }
}

#[test]
fn bad_trust_proxy_names_the_variable_and_the_forms() {
    let err = Settings::try_parse_from(["sluice", "--trust-proxy", "sometimes"]).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("TRUST_PROXY"), "{text}");
    assert!(text.contains("hop count"), "{text}");
    assert!(text.contains("10.0.0.0/8"), "{text}");
}

#[test]
fn thresholds_must_be_ordered() {
    let mut s = Settings::for_data_dir("/tmp/x");
    s.memory_warning = 2_000;
    s.memory_critical = 1_000;
    assert!(s
        .validate()
        .unwrap_err()
        .contains("MEMORY_WARNING_THRESHOLD"));
}
