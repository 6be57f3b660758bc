//! HighLevel's OAuth endpoints: `/oauth/token`, `/oauth/locationToken`, `/oauth/reconnect`.
//!
//! Errors are classified by HighLevel's real 400 messages; they never carry a token or secret.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// The `Version` header `/oauth/locationToken` wants.
pub const API_VERSION: &str = "2021-07-28";

/// A token response, in either spelling HighLevel has documented (snake_case or camelCase).
#[derive(Debug, Deserialize, Clone, PartialEq)]
pub struct TokenResponse {
    #[serde(alias = "accessToken")]
    pub access_token: Secret,
    #[serde(alias = "refreshToken", default)]
    pub refresh_token: Option<Secret>,
    #[serde(alias = "expiresIn", default)]
    pub expires_in: Option<i64>,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(alias = "userType", default)]
    pub user_type: Option<String>,
    #[serde(alias = "locationId", default)]
    pub location_id: Option<String>,
    #[serde(alias = "companyId", default)]
    pub company_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    /// `Invalid grant…`: the refresh token (or code) is invalid, expired or already used.
    #[error("invalid grant: {0}")]
    InvalidGrant(String),
    /// `Location is not active`: keep the refresh token and try again later.
    #[error("location is not active")]
    LocationInactive,
    /// `API endpoint has been removed`: the Reconnect API since September 2026.
    #[error("HighLevel has removed this endpoint")]
    EndpointRemoved,
    /// Any other 4xx, with HighLevel's message.
    #[error("HighLevel refused the request ({status}): {message}")]
    Rejected { status: u16, message: String },
    /// 5xx: worth retrying.
    #[error("HighLevel answered {0}")]
    Server(u16),
    /// No answer: worth retrying.
    #[error("network error: {0}")]
    Network(String),
    /// A 2xx answer that is not what the endpoint documents.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

impl OAuthError {
    /// Network trouble and 5xx: retry with backoff.
    pub fn is_transient(&self) -> bool {
        matches!(self, OAuthError::Server(_) | OAuthError::Network(_))
    }
}

/// A reconnect answer: a code to exchange without prompting the user.
#[derive(Deserialize)]
struct ReconnectResponse {
    #[serde(rename = "authorizationCode")]
    authorization_code: String,
}

/// Which kind of tenant a request is for. Serialised as HighLevel's `userType` spelling
/// (`Location`, `Company`); read back case-insensitively, anything else being a location.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String")]
pub enum TenantKind {
    Location,
    Company,
}

impl TenantKind {
    pub fn user_type(self) -> &'static str {
        match self {
            TenantKind::Location => "Location",
            TenantKind::Company => "Company",
        }
    }

    pub fn from_user_type(s: &str) -> TenantKind {
        if s.eq_ignore_ascii_case("company") {
            TenantKind::Company
        } else {
            TenantKind::Location
        }
    }
}

impl From<String> for TenantKind {
    fn from(s: String) -> TenantKind {
        TenantKind::from_user_type(&s)
    }
}

/// A client for one Marketplace app.
#[derive(Debug, Clone)]
pub struct HighLevelClient {
    http: reqwest::Client,
    base_url: String,
    client_id: String,
    client_secret: Secret,
    redirect_uri: Option<String>,
}

/// HighLevel's error body: `{"statusCode":400,"message":"…"}` (message sometimes a list).
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: serde_json::Value,
}

fn message_of(text: &str) -> String {
    let message = serde_json::from_str::<ErrorBody>(text)
        .map(|b| match b.message {
            serde_json::Value::String(s) => s,
            serde_json::Value::Array(items) => items
                .iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            _ => String::new(),
        })
        .unwrap_or_default();
    let mut message = if message.is_empty() {
        "no message".to_string()
    } else {
        message
    };
    message.truncate(300);
    message
}

/// Turns a non-2xx answer into an error by HighLevel's messages.
pub fn classify(status: u16, body: &str) -> OAuthError {
    if status >= 500 {
        return OAuthError::Server(status);
    }
    let message = message_of(body);
    let lower = message.to_ascii_lowercase();
    if lower.starts_with("invalid grant") {
        OAuthError::InvalidGrant(message)
    } else if lower.contains("location is not active") {
        OAuthError::LocationInactive
    } else if lower.contains("endpoint has been removed") {
        OAuthError::EndpointRemoved
    } else {
        OAuthError::Rejected { status, message }
    }
}

fn network(e: reqwest::Error) -> OAuthError {
    // reqwest's text names the URL, never the form body; drop the URL anyway.
    OAuthError::Network(e.without_url().to_string())
}

impl HighLevelClient {
    pub fn new(
        base_url: &str,
        client_id: &str,
        client_secret: Secret,
        redirect_uri: Option<String>,
    ) -> HighLevelClient {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .expect("HTTP client");
        HighLevelClient {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            client_id: client_id.to_string(),
            client_secret,
            redirect_uri,
        }
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    async fn token_request(&self, form: &[(&str, &str)]) -> Result<TokenResponse, OAuthError> {
        let mut fields: Vec<(&str, &str)> = vec![
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose()),
        ];
        fields.extend_from_slice(form);
        if let Some(uri) = &self.redirect_uri {
            fields.push(("redirect_uri", uri));
        }
        let request = self
            .http
            .post(format!("{}/oauth/token", self.base_url))
            .form(&fields);
        token_of(&self.call(request).await?)
    }

    /// Sends a request asking for JSON: the body of a 2xx answer, else the answer's error.
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<String, OAuthError> {
        let response = request
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(network)?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(network)?;
        if !(200..300).contains(&status) {
            return Err(classify(status, &text));
        }
        Ok(text)
    }

    /// Exchanges an authorization code (from the callback or the Reconnect API).
    pub async fn exchange_code(
        &self,
        code: &str,
        kind: TenantKind,
    ) -> Result<TokenResponse, OAuthError> {
        self.grant("authorization_code", ("code", code), kind).await
    }

    /// Spends a refresh token (single use) for a new pair.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        kind: TenantKind,
    ) -> Result<TokenResponse, OAuthError> {
        self.grant("refresh_token", ("refresh_token", refresh_token), kind)
            .await
    }

    /// `/oauth/token` for one grant type and the field that carries its grant.
    async fn grant(
        &self,
        grant_type: &str,
        grant: (&str, &str),
        kind: TenantKind,
    ) -> Result<TokenResponse, OAuthError> {
        self.token_request(&[
            ("grant_type", grant_type),
            grant,
            ("user_type", kind.user_type()),
        ])
        .await
    }

    /// Mints a location token with an agency (company) token.
    pub async fn location_token(
        &self,
        company_access_token: &str,
        company_id: &str,
        location_id: &str,
    ) -> Result<TokenResponse, OAuthError> {
        let request = self
            .http
            .post(format!("{}/oauth/locationToken", self.base_url))
            .bearer_auth(company_access_token)
            .header("Version", API_VERSION)
            .form(&[("companyId", company_id), ("locationId", location_id)]);
        token_of(&self.call(request).await?)
    }

    /// The Reconnect API: a fresh authorization code for an install whose tokens are lost.
    pub async fn reconnect(&self, tenant: &str, kind: TenantKind) -> Result<String, OAuthError> {
        let id_field = match kind {
            TenantKind::Location => "locationId",
            TenantKind::Company => "companyId",
        };
        let body = serde_json::json!({
            "clientKey": self.client_id,
            "clientSecret": self.client_secret.expose(),
            id_field: tenant,
        });
        let request = self
            .http
            .post(format!("{}/oauth/reconnect", self.base_url))
            .json(&body);
        let text = self.call(request).await?;
        serde_json::from_str::<ReconnectResponse>(&text)
            .map(|r| r.authorization_code)
            .map_err(|_| {
                OAuthError::Unexpected("reconnect answer without authorizationCode".into())
            })
    }
}

fn token_of(text: &str) -> Result<TokenResponse, OAuthError> {
    serde_json::from_str(text)
        .map_err(|_| OAuthError::Unexpected("a token answer without access_token".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highlevel_messages_are_classified() {
        assert!(matches!(
            classify(
                400,
                r#"{"statusCode":400,"message":"Invalid grant: refresh token is invalid"}"#
            ),
            OAuthError::InvalidGrant(_)
        ));
        assert_eq!(
            classify(
                400,
                r#"{"statusCode":400,"message":"Location is not active"}"#
            ),
            OAuthError::LocationInactive
        );
        assert_eq!(
            classify(
                422,
                r#"{"statusCode":422,"message":["Unprocessable Entity"],"error":"Unprocessable Entity"}"#
            ),
            OAuthError::Rejected {
                status: 422,
                message: "Unprocessable Entity".into()
            }
        );
        assert_eq!(
            classify(
                400,
                r#"{"message":"API endpoint has been removed","statusCode":400}"#
            ),
            OAuthError::EndpointRemoved
        );
        assert_eq!(classify(502, "bad gateway"), OAuthError::Server(502));
        assert!(classify(503, "").is_transient());
    }

    #[test]
    fn both_spellings_parse() {
        let snake: TokenResponse = serde_json::from_str(
            r#"{"access_token":"a","refresh_token":"r","expires_in":86399,"userType":"Location","locationId":"L"}"#,
        )
        .unwrap();
        let camel: TokenResponse = serde_json::from_str(
            r#"{"accessToken":"a","refreshToken":"r","expiresIn":86399,"userType":"Location","locationId":"L"}"#,
        )
        .unwrap();
        assert_eq!(snake, camel);
        assert!(!format!("{snake:?}").contains("\"a\""));
    }

    #[test]
    fn tenant_kinds_keep_highlevels_spelling() {
        let json = serde_json::to_string(&[TenantKind::Location, TenantKind::Company]).unwrap();
        assert_eq!(json, r#"["Location","Company"]"#);
        let read: Vec<TenantKind> =
            serde_json::from_str(r#"["Company","company","Location"]"#).unwrap();
        assert_eq!(
            read,
            [
                TenantKind::Company,
                TenantKind::Company,
                TenantKind::Location
            ]
        );
    }
}
