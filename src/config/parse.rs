//! The values settings take: how each kind is parsed from its text (the message says what is
//! wrong, the caller names the variable) and shown back.

use std::net::SocketAddr;
use std::time::Duration;

use crate::schema::SchemaMode;
use crate::telemetry::LogFormat;

/// Parses `500ms`, `30s`, `15m`, `1h`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit (use ms, s, m, h or d)"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 30s, 15m, 1h or 7d"))?;
    let millis = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit {unit:?} (use ms, s, m, h or d)"
            ))
        }
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// Formats a duration the way the configuration accepts it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

pub fn parse_bool(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("{text:?} is not true or false")),
    }
}

pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not an address like 127.0.0.1:8080"))
}

pub fn parse_positive<T: std::str::FromStr + PartialOrd + Default>(
    text: &str,
) -> Result<T, String> {
    match text.parse::<T>() {
        Ok(n) if n > T::default() => Ok(n),
        _ => Err(format!("{text:?} is not a positive whole number")),
    }
}

pub fn parse_url(text: &str) -> Result<String, String> {
    if text.starts_with("http://") || text.starts_with("https://") {
        Ok(text.trim_end_matches('/').to_string())
    } else {
        Err(format!("{text:?} is not an http(s) URL"))
    }
}

/// `Ok` for a duration longer than zero.
pub fn parse_nonzero_duration(text: &str) -> Result<Duration, String> {
    parse_duration(text).and_then(|d| {
        if d.is_zero() {
            Err(format!("{text:?} must be longer than zero"))
        } else {
            Ok(d)
        }
    })
}

/// A share from 0 (excluded) to 1.
pub fn parse_share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if r > 0.0 && r <= 1.0 => Ok(r),
        _ => Err(format!("{text:?} is not a number above 0 and at most 1")),
    }
}

/// A duration, `0` taken without a unit.
pub fn parse_span(text: &str) -> Result<Duration, String> {
    match text {
        "0" => Ok(Duration::ZERO),
        _ => parse_duration(text),
    }
}

/// A duration where `0` turns a watch off (`None`).
pub fn parse_limit(text: &str) -> Result<Option<Duration>, String> {
    parse_span(text).map(|d| (!d.is_zero()).then_some(d))
}

pub fn parse_amqp_url(text: &str) -> Result<String, String> {
    if text.starts_with("amqp://") || text.starts_with("amqps://") {
        Ok(text.to_string())
    } else {
        Err("is not an amqp:// or amqps:// URL".into())
    }
}

pub fn parse_exchange(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 255 {
        Err("must be 1 to 255 bytes".into())
    } else {
        Ok(text.to_string())
    }
}

pub fn parse_schema_mode(text: &str) -> Result<SchemaMode, String> {
    match text.to_ascii_lowercase().as_str() {
        "off" => Ok(SchemaMode::Off),
        "warn" => Ok(SchemaMode::Warn),
        "enforce" => Ok(SchemaMode::Enforce),
        _ => Err(format!("{text:?} is not off, warn or enforce")),
    }
}

pub fn parse_log_format(text: &str) -> Result<LogFormat, String> {
    match text.to_ascii_lowercase().as_str() {
        "json" => Ok(LogFormat::Json),
        "pretty" => Ok(LogFormat::Pretty),
        _ => Err(format!("{text:?} is not json or pretty")),
    }
}

/// Hides the password of a URL like `amqp://user:pass@host/vhost`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "[redacted]".into();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:[redacted]@{host}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_duration("7").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("1w").is_err());
        assert_eq!(format_duration(Duration::from_secs(604_800)), "7d");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }
}
