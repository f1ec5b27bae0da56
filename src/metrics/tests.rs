use super::*;

#[test]
fn recorded_metrics_encode_with_prefix() {
    let m = Metrics::default();
    m.observe_ttfb(Duration::from_millis(300));
    m.record_http("GET", "/health", 200);
    let mut out = String::new();
    encode_registry(&mut out, &m.registry).unwrap();
    assert!(
        out.contains("sluice_time_to_first_byte_seconds_count 1"),
        "{out}"
    );
    assert!(
        out.contains(r#"sluice_http_requests_total{method="GET",route="/health",status="200"} 1"#),
        "{out}"
    );
}
