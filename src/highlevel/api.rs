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
        ApiClient {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            version: version.to_string(),
        }
    }

    /// Sends `request` with `token`, and `Version` when the caller sent none or an empty one.
    pub async fn send(
        &self,
        request: ApiRequest<'_>,
        token: &Secret,
    ) -> Result<ApiResponse, ApiCallError> {
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| ApiCallError::Invalid("unknown method".into()))?;
        let url = format!("{}{}", self.base_url, request.path_and_query);
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
