//! The HTTP side of `hlgate listen`: each event POSTed to the developer's URL as HighLevel
//! would have sent it, and the replay asked of the admin API.

use std::time::{Duration, Instant};

use reqwest::redirect::Policy;
use reqwest::Url;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::publish::listen::Incoming;
use crate::secret::Secret;
use crate::verify::Scheme;

/// An `http(s)` URL with a host, or what is wrong with `text`.
pub fn http_url(flag: &str, text: &str) -> Result<Url, String> {
    let wrong = |why: &str| {
        format!("{flag} {text:?} is not an http(s) URL like http://localhost:3000/hook ({why})")
    };
    let url = Url::parse(text).map_err(|e| wrong(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(wrong(&format!("scheme {}", url.scheme())));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(wrong("no host"));
    }
    Ok(url)
}

/// What the developer's URL answered to one POST, and how long it took.
pub struct Answer {
    /// The status, or why there was none (no connection, timed out).
    pub status: Result<u16, String>,
    pub elapsed: Duration,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        matches!(self.status, Ok(200..=299))
    }
}

/// POSTs events to one URL.
pub struct Forwarder {
    http: reqwest::Client,
    to: Url,
}

impl Forwarder {
    /// `timeout` bounds one POST, answer included. Redirects are not followed: HighLevel does
    /// not follow them, so a 3xx is an answer like any other non-2xx.
    pub fn new(to: Url, timeout: Duration) -> Result<Forwarder, String> {
        let http = reqwest::Client::builder()
            .redirect(Policy::none())
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Forwarder { http, to })
    }

    /// The body as received, with the signature header HighLevel sent it with.
    pub async fn post(&self, event: &Incoming) -> Answer {
        let mut request = self
            .http
            .post(self.to.clone())
            .header("content-type", "application/json")
            .body(event.body.clone());
        if let Some((scheme, signature)) = &event.signature {
            if let Some(scheme) = Scheme::from_name(scheme) {
                request = request.header(scheme.header_name(), signature);
            }
        }
        let started = Instant::now();
        let status = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                // Read the answer whole, so that the connection can be used again.
                let _ = response.bytes().await;
                Ok(status)
            }
            Err(e) if e.is_timeout() => Err("timed out".into()),
            Err(e) if e.is_connect() => Err("cannot connect".into()),
            Err(e) => Err(e.without_url().to_string()),
        };
        Answer {
            status,
            elapsed: started.elapsed(),
        }
    }
}

/// The `type` and `tenant` filters of a replay that asks for nothing the patterns do not bind:
/// one pattern of two words narrows the replay to its plain words; anything else replays the
/// whole window (the listener's bindings still take only what they match).
pub fn replay_filter(patterns: &[String]) -> (Option<String>, Option<String>) {
    let [pattern] = patterns else {
        return (None, None);
    };
    let words: Vec<&str> = pattern.split('.').collect();
    let [event_type, tenant] = words[..] else {
        return (None, None);
    };
    let plain = |w: &str| (!w.contains(['*', '#'])).then(|| w.to_string());
    (plain(event_type), plain(tenant))
}

/// Asks the admin API at `admin` to replay the archived events of the last `since`; answers
/// how many it queued.
pub async fn replay(
    admin: &Url,
    token: Option<&Secret>,
    since: Duration,
    patterns: &[String],
) -> Result<u64, String> {
    let now = OffsetDateTime::now_utc();
    let format = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
    let mut body = serde_json::json!({
        "since": format(now - since),
        "until": format(now),
    });
    let (event_type, tenant) = replay_filter(patterns);
    if let Some(t) = event_type {
        body["type"] = t.into();
    }
    if let Some(t) = tenant {
        body["tenant"] = t.into();
    }
    let url = admin
        .join("/v1/replay")
        .map_err(|e| format!("--admin {admin}: {e}"))?;
    let mut request = reqwest::Client::new().post(url.clone()).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token.expose());
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("replay: cannot reach {url}: {}", e.without_url()))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    if !status.is_success() {
        let why = answer["message"].as_str().unwrap_or(text.trim());
        return Err(format!(
            "replay: {url} answered {}: {}",
            status.as_u16(),
            why.replace(['\n', '\r'], " ")
        ));
    }
    answer["replayed"]
        .as_u64()
        .ok_or_else(|| format!("replay: unexpected answer from {url}: {}", text.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(patterns: &[&str]) -> (Option<String>, Option<String>) {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        replay_filter(&patterns)
    }

    #[test]
    fn one_two_word_pattern_narrows_the_replay() {
        let some = |s: &str| Some(s.to_string());
        assert_eq!(filter(&["ContactCreate.*"]), (some("ContactCreate"), None));
        assert_eq!(filter(&["ContactCreate.#"]), (some("ContactCreate"), None));
        assert_eq!(filter(&["*.LOC1"]), (None, some("LOC1")));
        assert_eq!(
            filter(&["ContactCreate.LOC1"]),
            (some("ContactCreate"), some("LOC1"))
        );
    }

    #[test]
    fn anything_else_replays_the_whole_window() {
        for patterns in [&["#"][..], &["ContactCreate.*", "*.LOC1"], &["a.b.c"]] {
            assert_eq!(filter(patterns), (None, None), "{patterns:?}");
        }
    }

    #[test]
    fn only_http_urls_with_a_host_are_taken() {
        assert!(http_url("--to", "http://localhost:3000/hook").is_ok());
        assert!(http_url("--to", "https://example.test").is_ok());
        for bad in ["localhost:3000/hook", "ftp://x/y", "http://", "hook", ""] {
            let e = http_url("--to", bad).unwrap_err();
            assert!(e.starts_with("--to "), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
