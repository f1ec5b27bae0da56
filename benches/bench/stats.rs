//! Medians, percentiles and paired ratios.

/// The `q` quantile (0..=1) by linear interpolation; None when empty.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
}

pub fn median(values: &[f64]) -> Option<f64> {
    quantile(values, 0.5)
}

/// Median of the pair-by-pair ratios a[i] / b[i] (pairs where both exist).
pub fn paired_ratio(pairs: &[(Option<f64>, Option<f64>)]) -> Option<f64> {
    let r: Vec<f64> = pairs
        .iter()
        .filter_map(|p| match p {
            (Some(a), Some(b)) if *b > 0.0 => Some(a / b),
            _ => None,
        })
        .collect();
    median(&r)
}

/// `0.62x`, or `n/a`.
pub fn ratio(r: Option<f64>) -> String {
    match r {
        Some(r) if r.is_infinite() => "∞".into(),
        Some(r) if r >= 10.0 => format!("{r:.0}x"),
        Some(r) if r >= 0.1 => format!("{r:.2}x"),
        Some(r) => format!("{r:.3}x"),
        None => "n/a".into(),
    }
}

/// Milliseconds with a sensible precision, or `n/a`.
pub fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0} ms"),
        Some(v) if v >= 10.0 => format!("{v:.1} ms"),
        Some(v) => format!("{v:.2} ms"),
        None => "n/a".into(),
    }
}

pub fn mib(bytes: Option<f64>) -> String {
    match bytes {
        Some(b) => format!("{:.1} MiB", b / (1024.0 * 1024.0)),
        None => "n/a".into(),
    }
}

pub fn num(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) => format!("{v:.digits$}"),
        None => "n/a".into(),
    }
}

pub fn self_test() {
    assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
    assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    assert_eq!(median(&[]), None);
    assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.99), Some(4.96));
    assert_eq!(quantile(&[7.0, f64::NAN], 0.5), Some(7.0));
    let pairs = [
        (Some(1.0), Some(2.0)),
        (Some(3.0), Some(3.0)),
        (None, Some(1.0)),
        (Some(1.0), Some(4.0)),
    ];
    assert_eq!(paired_ratio(&pairs), Some(0.5));
    assert_eq!(ratio(Some(0.6213)), "0.62x");
    assert_eq!(ratio(None), "n/a");
    assert_eq!(ratio(Some(f64::INFINITY)), "∞");
    assert_eq!(ms(Some(1452.4)), "1452 ms");
}
