//! The OpenTelemetry settings: `HLGATE_OTLP_ENDPOINT`, `HLGATE_OTLP_SAMPLE_RATIO` and
//! `HLGATE_OTLP_HEADERS`.

use super::parse::{parse_url, redact_url};
use crate::secret::Secret;

/// OpenTelemetry traces (`src/traces/`).
#[derive(Clone, Debug)]
pub struct TraceSettings {
    /// OTLP/HTTP endpoint (`…/v1/traces`, or a base that path is appended to); `None`: no
    /// exporter and no spans. A secret: a hosted collector's URL may carry a key.
    pub endpoint: Option<Secret>,
    /// Share (0–1) of new traces recorded; a caller's `traceparent` decides for its own.
    pub sample_ratio: f64,
    /// Headers sent with every export (a hosted collector's API key): secrets.
    pub headers: Vec<(String, Secret)>,
}

/// A share from 0 to 1, both included: 0 records only the traces a caller's sampled
/// `traceparent` continues.
pub(super) fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{text:?} is not a number from 0 to 1")),
    }
}

/// `name=value` pairs, comma-separated, as `OTEL_EXPORTER_OTLP_HEADERS` takes them. The
/// message names the pair by position, never its value (an API key).
pub(super) fn parse_headers(text: &str) -> Result<Vec<(String, Secret)>, String> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    let mut headers = Vec::new();
    for (i, pair) in text.split(',').map(str::trim).enumerate() {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = pair
            .split_once('=')
            .map(|(n, v)| (n.trim(), v.trim()))
            .filter(|(n, v)| !n.is_empty() && n.chars().all(token) && !v.is_empty())
            .filter(|(_, v)| v.chars().all(|c| c == ' ' || c.is_ascii_graphic()))
            .ok_or_else(|| format!("header {} is not name=value", i + 1))?;
        headers.push((name.to_ascii_lowercase(), Secret::new(value.to_string())));
    }
    Ok(headers)
}

/// An http(s) URL; the message does not echo it: a hosted collector's URL may carry a key.
pub(super) fn endpoint(url: String) -> Result<Secret, String> {
    parse_url(&url).map_err(|_| "is not an http(s) URL".to_string())?;
    Ok(Secret::new(url))
}

/// The endpoint as `check-config` shows it: no password, no query.
pub(super) fn shown_endpoint(s: &TraceSettings) -> String {
    match &s.endpoint {
        Some(url) => redact_url(url.expose().split('?').next().unwrap_or_default()),
        None => "unset".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_pairs_and_never_echoed() {
        let h = parse_headers("x-honeycomb-team=abc123, Authorization=Basic  dXNlcg==").unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].0, "x-honeycomb-team");
        assert_eq!(h[0].1.expose(), "abc123");
        assert_eq!(h[1].0, "authorization");
        assert_eq!(h[1].1.expose(), "Basic  dXNlcg==");
        assert!(parse_headers("").unwrap().is_empty());
        for bad in ["novalue", "=v", "a b=c", "k=\u{7}", "ok=1,sec ret=k3y"] {
            let why = parse_headers(bad).unwrap_err();
            assert!(!why.contains("k3y"), "{why}");
        }
    }

    #[test]
    fn ratios_from_zero_to_one() {
        assert_eq!(parse_ratio("0"), Ok(0.0));
        assert_eq!(parse_ratio("0.25"), Ok(0.25));
        assert_eq!(parse_ratio("1.0"), Ok(1.0));
        for bad in ["-0.1", "1.5", "half", "NaN"] {
            assert!(parse_ratio(bad).is_err(), "{bad}");
        }
    }
}
