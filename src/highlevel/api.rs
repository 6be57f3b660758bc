//! HighLevel's API as the proxy calls it: one request out with a caller's method, path, headers
//! and a streamed body; the answer's status, headers and a body stream back. Which token and
//! when to retry are the caller's business.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::mpsc;

use super::rate::RateLimitHeaders;
use crate::secret::Secret;

/// A request body: whole (it can be sent again) or arriving in chunks (once).
pub enum ApiBody {
    Whole(Bytes),
    /// Chunks as the caller sends them; an `Err` aborts the upstream request.
    Chunks(mpsc::Receiver<Result<Bytes, std::io::Error>>),
}

/// Chunks from a channel as an HTTP body, so that reqwest sends them as they come.
struct ChannelBody(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|r| r.map(http_body::Frame::data)))
    }
}

/// One request to HighLevel's API.
pub struct ApiRequest<'a> {
    pub method: &'a str,
    /// The path below the base URL with its query string, starting with `/`.
    pub path_and_query: &'a str,
    /// The caller's headers, already filtered.
    pub headers: &'a [(String, Vec<u8>)],
    pub body: ApiBody,
}

/// HighLevel's answer, its body still to come.
pub struct ApiResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub rate: RateLimitHeaders,
    pub body: Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>,
}

impl std::fmt::Debug for ApiResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiResponse")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// Why no answer came: never carries a token.
#[derive(Debug, thiserror::Error)]
pub enum ApiCallError {
    #[error("the request is not valid: {0}")]
    Invalid(String),
    #[error("HighLevel did not answer in time")]
    Timeout,
    #[error("HighLevel cannot be reached: {0}")]
    Network(String),
}

/// HighLevel's API base URL with a client whose timeout covers a whole call.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base_url: String,
    /// The base URL's path without its trailing `/`: every request's path stays below it.
    base_path: String,
    version: String,
}

impl ApiClient {
    pub fn new(base_url: &str, version: &str, timeout: Duration) -> ApiClient {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            // The proxy hands the answer on as HighLevel gave it.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("HTTP client");
        let base_url = base_url.trim_end_matches('/').to_string();
        let base_path = reqwest::Url::parse(&base_url)
            .map(|u| u.path().trim_end_matches('/').to_string())
            .unwrap_or_default();
        ApiClient {
            http,
            base_url,
            base_path,
            version: version.to_string(),
        }
    }

    /// The URL of `path_and_query` below the base URL. Parsing resolves dot segments (also
    /// percent-encoded ones) and reads a backslash as a slash: a path that climbs out of the
    /// base path is refused, whatever the caller checked before.
    fn url(&self, path_and_query: &str) -> Result<reqwest::Url, ApiCallError> {
        let url = reqwest::Url::parse(&format!("{}{}", self.base_url, path_and_query))
            .map_err(|_| ApiCallError::Invalid("the path is not a valid URL path".into()))?;
        let below = url.path().strip_prefix(self.base_path.as_str());
        if !below.is_some_and(|rest| rest.is_empty() || rest.starts_with('/')) {
            return Err(ApiCallError::Invalid(
                "the path leaves the API base URL's path".into(),
            ));
        }
        Ok(url)
    }

    /// Sends `request` with `token`, and `Version` when the caller sent none or an empty one.
    pub async fn send(
        &self,
        request: ApiRequest<'_>,
        token: &Secret,
    ) -> Result<ApiResponse, ApiCallError> {
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| ApiCallError::Invalid("unknown method".into()))?;
        let url = self.url(request.path_and_query)?;
        let mut builder = self.http.request(method, url).bearer_auth(token.expose());
        let mut versioned = false;
        for (name, value) in request.headers {
            if name.eq_ignore_ascii_case("version") {
                // HighLevel refuses an empty Version with a 401, as it does a missing one.
                if value.trim_ascii().is_empty() {
                    continue;
                }
                versioned = true;
            }
            builder = builder.header(name.as_str(), value.as_slice());
        }
        if !versioned {
            builder = builder.header("Version", self.version.as_str());
        }
        let body = match request.body {
            ApiBody::Whole(bytes) => reqwest::Body::from(bytes),
            ApiBody::Chunks(rx) => reqwest::Body::wrap(ChannelBody(rx)),
        };
        let response = builder.body(body).send().await.map_err(classify)?;
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
        let rate = RateLimitHeaders::from_headers(response.headers());
        let status = response.status().as_u16();
        // A failed read ends the stream: the caller sees the answer cut short.
        let body = futures_util::stream::unfold(Some(response), |r| async move {
            let mut r = r?;
            match r.chunk().await {
                Ok(Some(bytes)) => Some((Ok(bytes), Some(r))),
                Ok(None) => None,
                Err(e) => Some((Err(std::io::Error::other(e.without_url())), None)),
            }
        });
        Ok(ApiResponse {
            status,
            headers,
            rate,
            body: Box::pin(body),
        })
    }
}

fn classify(e: reqwest::Error) -> ApiCallError {
    if e.is_timeout() {
        ApiCallError::Timeout
    } else if e.is_builder() {
        ApiCallError::Invalid("the request cannot be built".into())
    } else {
        // Without the URL: it is ours, and the error text stays short.
        ApiCallError::Network(e.without_url().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_below_the_base_path() {
        let api = ApiClient::new("http://h/api/v2/", "v", Duration::from_secs(1));
        let url = |p: &str| api.url(p).map(|u| u.to_string());
        assert_eq!(
            url("/contacts/c1?a=b").unwrap(),
            "http://h/api/v2/contacts/c1?a=b"
        );
        assert_eq!(url("/a/../contacts").unwrap(), "http://h/api/v2/contacts");
        for escape in [
            "/loc1/%2e%2e/%2e%2e/x",
            "/%2E%2e/x",
            "/..",
            "/a/../../v2x",
            "/..\\x",
            "/.%2e/.%2E/x",
        ] {
            assert!(url(escape).is_err(), "{escape} left the base");
        }
        let root = ApiClient::new("http://h", "v", Duration::from_secs(1));
        assert_eq!(root.url("/../x").unwrap().to_string(), "http://h/x");
    }
}
