//! HighLevel's rate-limit answer headers, read into numbers.

use std::time::Duration;

use reqwest::header::HeaderMap;

/// What one answer said about the caller's budget for its resource (a location or company).
/// Each field is `None` when its header was absent or not a number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitHeaders {
    /// `X-RateLimit-Max`: requests allowed per burst interval.
    pub max: Option<u32>,
    /// `X-RateLimit-Remaining`: requests left in the current interval.
    pub remaining: Option<u32>,
    /// `X-RateLimit-Interval-Milliseconds`: the burst interval.
    pub interval: Option<Duration>,
    /// `X-RateLimit-Daily-Remaining`: requests left today.
    pub daily_remaining: Option<u64>,
}

impl RateLimitHeaders {
    pub fn from_headers(headers: &HeaderMap) -> RateLimitHeaders {
        fn number<T: std::str::FromStr>(headers: &HeaderMap, name: &str) -> Option<T> {
            headers.get(name)?.to_str().ok()?.trim().parse().ok()
        }
        RateLimitHeaders {
            max: number(headers, "x-ratelimit-max"),
            remaining: number(headers, "x-ratelimit-remaining"),
            interval: number(headers, "x-ratelimit-interval-milliseconds")
                .map(Duration::from_millis),
            daily_remaining: number(headers, "x-ratelimit-daily-remaining"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_headers_are_read_and_junk_is_ignored() {
        let mut h = HeaderMap::new();
        h.insert("X-RateLimit-Max", "100".parse().unwrap());
        h.insert("X-RateLimit-Remaining", "97".parse().unwrap());
        h.insert(
            "X-RateLimit-Interval-Milliseconds",
            "10000".parse().unwrap(),
        );
        h.insert("X-RateLimit-Daily-Remaining", "soon".parse().unwrap());
        assert_eq!(
            RateLimitHeaders::from_headers(&h),
            RateLimitHeaders {
                max: Some(100),
                remaining: Some(97),
                interval: Some(Duration::from_secs(10)),
                daily_remaining: None,
            }
        );
    }
}
