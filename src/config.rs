//! Typed settings: `load(file_text, env)` is a pure function of its inputs.
//!
//! Every setting has an environment name (`HLGATE_*`) and a TOML key (the same name lower-cased,
//! without the prefix). The environment wins over the file, the file over the embedded default.
//! Nothing reads the process environment after start-up.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod parse;
mod traces;

use crate::schema::SchemaMode;
use crate::telemetry::LogFormat;
use crate::verify::{Keyring, KeyringError};
pub use parse::{format_duration, parse_amqp_url, parse_duration, redact_url};
use parse::{
    parse_addr, parse_bool, parse_exchange, parse_limit, parse_log_format, parse_nonzero_duration,
    parse_positive, parse_schema_mode, parse_share, parse_span, parse_url,
};
pub use traces::TraceSettings;

pub use crate::secret::{Secret, TokenKey};

/// The two listeners and what bounds a request.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// Public listener: webhooks and the OAuth install flow.
    pub listen: SocketAddr,
    /// Admin listener: health, metrics, tokens, replay.
    pub admin_listen: SocketAddr,
    /// Bearer token for the admin API.
    pub admin_token: Option<Secret>,
    /// Larger bodies get 413 (bytes).
    pub max_body_bytes: usize,
    /// A body not received in full within this time gets 408.
    pub body_timeout: Duration,
    /// Time allowed for a graceful shutdown of everything, requests first.
    pub shutdown_grace: Duration,
}

/// What a webhook must pass before it is stored.
#[derive(Clone, Debug)]
pub struct IngestSettings {
    /// Ed25519 keys for `X-GHL-Signature`.
    pub ed25519_keys: Keyring,
    /// RSA keys for `X-WH-Signature`.
    pub rsa_keys: Keyring,
    /// Accept `X-WH-Signature` when no `X-GHL-Signature` is present.
    pub accept_legacy_rsa: bool,
    /// Events whose `timestamp` is further in the future are refused.
    pub max_future_skew: Duration,
}

/// The data directory and what it keeps.
#[derive(Clone, Debug)]
pub struct StoreSettings {
    /// Directory of the sled database and generated key files.
    pub data_dir: PathBuf,
    /// How long a dedup key and the archived event are kept (also the oldest `timestamp`
    /// accepted).
    pub dedup_retention: Duration,
    /// Above this many unpublished events, new events get 429.
    pub outbox_max_events: u64,
}

/// The broker.
#[derive(Clone, Debug)]
pub struct AmqpSettings {
    /// RabbitMQ URL; may carry a password, so it is a secret.
    pub url: Secret,
    /// Topic exchange events are published to.
    pub exchange: String,
    /// Declare exchanges and queues at start-up.
    pub declare_topology: bool,
    /// How long the broker may refuse (nack) one entry, while it takes others, before that
    /// entry goes to the quarantine queue.
    pub nack_quarantine_after: Duration,
}

/// The app's Marketplace credentials; present only when the token module is on.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The Marketplace app's client id (`<appId>-<suffix>`).
    pub client_id: String,
    /// The Marketplace app's client secret.
    pub client_secret: Secret,
    /// The redirect URI registered for the app; points at `/oauth/callback`.
    pub redirect_uri: Option<String>,
    /// Space-separated scopes requested by `/oauth/install`.
    pub scopes: Option<String>,
}

/// The token module.
#[derive(Clone, Debug)]
pub struct OAuthSettings {
    /// Marketplace credentials; `None` turns the token module off (private tokens stay).
    pub credentials: Option<Credentials>,
    /// Base URL of HighLevel's token, location-token and reconnect endpoints.
    pub base_url: String,
    /// Where `/oauth/install` sends the user.
    pub marketplace_url: String,
    /// Key for tokens at rest (32 bytes); generated into the data dir when unset.
    pub token_key: Option<TokenKey>,
    /// Refresh an access token this long before it expires.
    pub refresh_before: Duration,
    /// Attach the tenant's access token to each published event.
    pub attach_tokens: bool,
    /// An attached or served token is valid at least this long.
    pub min_ttl: Duration,
    /// Refreshes the background schedule runs at once (each tenant's one at a time).
    pub refresh_concurrency: usize,
    /// Also count every refresh against one app-wide burst window (HighLevel's limits are per
    /// resource; this spreads a crowd of due tenants at the cost of catching up slowly).
    pub app_wide_budget: bool,
}

/// The HighLevel API proxy (`/v1/highlevel/{tenant}/…` on the admin listener).
#[derive(Clone, Debug)]
pub struct ApiSettings {
    /// Where proxied requests go.
    pub base_url: String,
    /// The `Version` header added when the caller sent none.
    pub version: String,
    /// Bearer tokens that open the proxy and nothing else.
    pub proxy_tokens: Vec<Secret>,
    /// Requests per tenant per burst interval until HighLevel says otherwise.
    pub burst: usize,
    /// Requests per tenant per day until HighLevel says otherwise.
    pub daily: u64,
    /// Longest a request waits for its tenant's budget before it gets 429.
    pub max_wait: Duration,
    /// Time allowed for one upstream call, answer included.
    pub timeout: Duration,
    /// Larger request bodies get 413 (bytes).
    pub max_body_bytes: usize,
}

/// Tracing output.
#[derive(Clone, Debug)]
pub struct LogSettings {
    /// Tracing filter.
    pub filter: String,
    pub format: LogFormat,
}

/// What delivery health is judged by and what raises an alert.
#[derive(Clone, Debug)]
pub struct AlertSettings {
    /// Where alerts are POSTed (Slack, Mattermost or Teams incoming webhook). A secret: such a
    /// URL carries its own token.
    pub webhook_url: Option<Secret>,
    /// Success ratio (0–1) below which a window with enough volume is `warning`.
    pub success_warn: f64,
    /// Success ratio (0–1) below which it is `critical`.
    pub success_critical: f64,
    /// No accepted event this long, while earlier days had traffic then: silence. `None`: off.
    pub silence: Option<Duration>,
    /// Share (0–1) of the attempts within `signature_window` that failed their signature, at
    /// which the burst alert starts.
    pub signature_share: f64,
    /// The span the signature-failure share is taken over.
    pub signature_window: Duration,
    /// The outbox's oldest event older than this: alert. `None`: off.
    pub outbox_age: Option<Duration>,
    /// The broker not connected for longer than this: alert. `None`: off.
    pub broker_down: Option<Duration>,
    /// After an alert, a change of the same alert within this time waits for its end and is
    /// sent only if it still holds.
    pub hold_down: Duration,
    /// How often the minute counts are saved to disk (what a `kill -9` can lose at most).
    pub save_every: Duration,
}

/// All of hlgate's settings, validated, one group per component.
#[derive(Clone, Debug)]
pub struct Settings {
    pub http: HttpSettings,
    pub ingest: IngestSettings,
    pub store: StoreSettings,
    pub amqp: AmqpSettings,
    pub oauth: OAuthSettings,
    pub api: ApiSettings,
    /// Schema validation mode.
    pub schema_mode: SchemaMode,
    pub log: LogSettings,
    pub alerts: AlertSettings,
    pub traces: TraceSettings,
}

/// A setting that could not be used; names the variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}: {reason}")]
    Invalid { var: &'static str, reason: String },
    #[error("config file: {0}")]
    File(String),
    #[error("{var}: cannot read {path}: {source}")]
    KeyFile {
        var: &'static str,
        path: String,
        source: std::io::Error,
    },
}

fn invalid(var: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var,
        reason: reason.into(),
    }
}

/// One setting, named once: its environment name (the TOML key is derived from it), its
/// default as it would be written, and how `check-config` shows its effective value.
struct Spec {
    var: &'static str,
    /// `None`: unset unless given (or, for the keyrings, HighLevel's embedded keys).
    default: Option<&'static str>,
    show: fn(&Settings) -> String,
}

/// Declares each setting as a `Spec` constant and lists them all, in `check-config` order.
macro_rules! specs {
    ($($name:ident: $var:literal, $default:expr, $show:expr;)*) => {
        $(const $name: Spec = Spec { var: $var, default: $default, show: $show };)*
        /// Every setting, in the order `check-config` prints them.
        const SETTINGS: &[Spec] = &[$($name),*];
    };
}

const UNSET: &str = "unset";
const REDACTED: &str = "[redacted]";

fn redacted(set: bool) -> String {
    if set { REDACTED } else { UNSET }.to_string()
}

fn shown(value: Option<&String>) -> String {
    value.map_or_else(|| UNSET.to_string(), String::clone)
}

specs! {
    LISTEN: "HLGATE_LISTEN", Some("127.0.0.1:8080"), |s| s.http.listen.to_string();
    ADMIN_LISTEN: "HLGATE_ADMIN_LISTEN", Some("127.0.0.1:9090"),
        |s| s.http.admin_listen.to_string();
    ADMIN_TOKEN: "HLGATE_ADMIN_TOKEN", None, |s| redacted(s.http.admin_token.is_some());
    DATA_DIR: "HLGATE_DATA_DIR", Some("./data"), |s| s.store.data_dir.display().to_string();
    AMQP_URL: "HLGATE_AMQP_URL", Some("amqp://guest:guest@127.0.0.1:5672/%2f"),
        |s| redact_url(s.amqp.url.expose());
    EXCHANGE: "HLGATE_EXCHANGE", Some("highlevel.events"), |s| s.amqp.exchange.clone();
    DECLARE_TOPOLOGY: "HLGATE_DECLARE_TOPOLOGY", Some("true"),
        |s| s.amqp.declare_topology.to_string();
    NACK_QUARANTINE_AFTER: "HLGATE_NACK_QUARANTINE_AFTER", Some("1m"),
        |s| format_duration(s.amqp.nack_quarantine_after);
    ED25519_PUBLIC_KEYS: "HLGATE_ED25519_PUBLIC_KEYS", None,
        |s| format!("{} key(s)", s.ingest.ed25519_keys.len());
    RSA_PUBLIC_KEYS: "HLGATE_RSA_PUBLIC_KEYS", None,
        |s| format!("{} key(s)", s.ingest.rsa_keys.len());
    ACCEPT_LEGACY_RSA: "HLGATE_ACCEPT_LEGACY_RSA", Some("true"),
        |s| s.ingest.accept_legacy_rsa.to_string();
    MAX_BODY_BYTES: "HLGATE_MAX_BODY_BYTES", Some("1048576"), |s| s.http.max_body_bytes.to_string();
    BODY_TIMEOUT: "HLGATE_BODY_TIMEOUT", Some("30s"), |s| format_duration(s.http.body_timeout);
    DEDUP_RETENTION: "HLGATE_DEDUP_RETENTION", Some("7d"),
        |s| format_duration(s.store.dedup_retention);
    MAX_FUTURE_SKEW: "HLGATE_MAX_FUTURE_SKEW", Some("5m"),
        |s| format_duration(s.ingest.max_future_skew);
    OUTBOX_MAX_EVENTS: "HLGATE_OUTBOX_MAX_EVENTS", Some("1000000"),
        |s| s.store.outbox_max_events.to_string();
    SCHEMA_MODE: "HLGATE_SCHEMA_MODE", Some("warn"), |s| s.schema_mode.as_str().to_string();
    CLIENT_ID: "HLGATE_CLIENT_ID", None,
        |s| shown(s.oauth.credentials.as_ref().map(|c| &c.client_id));
    CLIENT_SECRET: "HLGATE_CLIENT_SECRET", None, |s| redacted(s.oauth.credentials.is_some());
    REDIRECT_URI: "HLGATE_REDIRECT_URI", None,
        |s| shown(s.oauth.credentials.as_ref().and_then(|c| c.redirect_uri.as_ref()));
    SCOPES: "HLGATE_SCOPES", None,
        |s| shown(s.oauth.credentials.as_ref().and_then(|c| c.scopes.as_ref()));
    OAUTH_BASE_URL: "HLGATE_OAUTH_BASE_URL", Some("https://services.leadconnectorhq.com"),
        |s| s.oauth.base_url.clone();
    MARKETPLACE_URL: "HLGATE_MARKETPLACE_URL", Some("https://marketplace.gohighlevel.com"),
        |s| s.oauth.marketplace_url.clone();
    TOKEN_KEY: "HLGATE_TOKEN_KEY", None, |s| match s.oauth.token_key {
        Some(_) => REDACTED.into(),
        None => "generated in the data dir".into(),
    };
    TOKEN_REFRESH_BEFORE: "HLGATE_TOKEN_REFRESH_BEFORE", Some("1h"),
        |s| format_duration(s.oauth.refresh_before);
    ATTACH_TOKENS: "HLGATE_ATTACH_TOKENS", Some("false"), |s| s.oauth.attach_tokens.to_string();
    TOKEN_MIN_TTL: "HLGATE_TOKEN_MIN_TTL", Some("15m"), |s| format_duration(s.oauth.min_ttl);
    TOKEN_REFRESH_CONCURRENCY: "HLGATE_TOKEN_REFRESH_CONCURRENCY", Some("16"),
        |s| s.oauth.refresh_concurrency.to_string();
    TOKEN_APP_WIDE_BUDGET: "HLGATE_TOKEN_APP_WIDE_BUDGET", Some("false"),
        |s| s.oauth.app_wide_budget.to_string();
    API_BASE_URL: "HLGATE_API_BASE_URL", Some("https://services.leadconnectorhq.com"),
        |s| s.api.base_url.clone();
    API_VERSION: "HLGATE_API_VERSION", Some("2021-07-28"), |s| s.api.version.clone();
    PROXY_TOKENS: "HLGATE_PROXY_TOKENS", None,
        |s| format!("{} token(s)", s.api.proxy_tokens.len());
    API_BURST: "HLGATE_API_BURST", Some("100"), |s| s.api.burst.to_string();
    API_DAILY: "HLGATE_API_DAILY", Some("200000"), |s| s.api.daily.to_string();
    API_MAX_WAIT: "HLGATE_API_MAX_WAIT", Some("10s"), |s| format_duration(s.api.max_wait);
    API_TIMEOUT: "HLGATE_API_TIMEOUT", Some("30s"), |s| format_duration(s.api.timeout);
    API_MAX_BODY_BYTES: "HLGATE_API_MAX_BODY_BYTES", Some("10485760"),
        |s| s.api.max_body_bytes.to_string();
    LOG: "HLGATE_LOG", Some("info"), |s| s.log.filter.clone();
    LOG_FORMAT: "HLGATE_LOG_FORMAT", Some("json"), |s| match s.log.format {
        LogFormat::Json => "json".into(),
        LogFormat::Pretty => "pretty".into(),
    };
    SHUTDOWN_GRACE: "HLGATE_SHUTDOWN_GRACE", Some("10s"),
        |s| format_duration(s.http.shutdown_grace);
    ALERT_WEBHOOK_URL: "HLGATE_ALERT_WEBHOOK_URL", None,
        |s| redacted(s.alerts.webhook_url.is_some());
    ALERT_SUCCESS_WARN: "HLGATE_ALERT_SUCCESS_WARN", Some("0.97"),
        |s| s.alerts.success_warn.to_string();
    ALERT_SUCCESS_CRITICAL: "HLGATE_ALERT_SUCCESS_CRITICAL", Some("0.93"),
        |s| s.alerts.success_critical.to_string();
    ALERT_SILENCE: "HLGATE_ALERT_SILENCE", Some("30m"), |s| off_or(s.alerts.silence);
    ALERT_SIGNATURE_SHARE: "HLGATE_ALERT_SIGNATURE_SHARE", Some("0.1"),
        |s| s.alerts.signature_share.to_string();
    ALERT_SIGNATURE_WINDOW: "HLGATE_ALERT_SIGNATURE_WINDOW", Some("15m"),
        |s| format_duration(s.alerts.signature_window);
    ALERT_OUTBOX_AGE: "HLGATE_ALERT_OUTBOX_AGE", Some("15m"), |s| off_or(s.alerts.outbox_age);
    ALERT_BROKER_DOWN: "HLGATE_ALERT_BROKER_DOWN", Some("5m"), |s| off_or(s.alerts.broker_down);
    ALERT_HOLD_DOWN: "HLGATE_ALERT_HOLD_DOWN", Some("10m"),
        |s| format_duration(s.alerts.hold_down);
    HEALTH_SAVE_EVERY: "HLGATE_HEALTH_SAVE_EVERY", Some("1m"),
        |s| format_duration(s.alerts.save_every);
    OTLP_ENDPOINT: "HLGATE_OTLP_ENDPOINT", None, |s| traces::shown_endpoint(&s.traces);
    OTLP_SAMPLE_RATIO: "HLGATE_OTLP_SAMPLE_RATIO", Some("1.0"),
        |s| s.traces.sample_ratio.to_string();
    OTLP_HEADERS: "HLGATE_OTLP_HEADERS", None,
        |s| format!("{} header(s)", s.traces.headers.len());
}

fn off_or(limit: Option<Duration>) -> String {
    limit.map_or_else(|| "0 (off)".to_string(), format_duration)
}

/// Looks a setting up in the environment first, then in the file.
struct Sources<'a> {
    env: &'a HashMap<String, String>,
    file: toml::Table,
}

impl Sources<'_> {
    fn get(&self, var: &'static str) -> Result<Option<String>, ConfigError> {
        if let Some(value) = self.env.get(var) {
            return Ok(Some(value.clone()));
        }
        let key = var.trim_start_matches("HLGATE_").to_ascii_lowercase();
        match self.file.get(&key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(toml::Value::Integer(i)) => Ok(Some(i.to_string())),
            Some(toml::Value::Boolean(b)) => Ok(Some(b.to_string())),
            Some(other) => Err(invalid(
                var,
                format!(
                    "expected a string, number or boolean, got {}",
                    other.type_str()
                ),
            )),
        }
    }

    /// The setting's value, or its default, parsed.
    fn parsed<T>(
        &self,
        spec: &Spec,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let text = self.get(spec.var)?;
        let text = text.as_deref().or(spec.default).expect("a default");
        parse(text.trim()).map_err(|reason| invalid(spec.var, reason))
    }

    /// The setting's value when given and not blank, else its default (for a setting that has
    /// none: `None`).
    fn optional(&self, spec: &Spec) -> Result<Option<String>, ConfigError> {
        let given = self.get(spec.var)?.filter(|v| !v.trim().is_empty());
        Ok(given.or_else(|| spec.default.map(String::from)))
    }
}

const DEFAULT_ED25519: &str = include_str!("verify/highlevel-ed25519.pem");
const DEFAULT_RSA: &str = include_str!("verify/highlevel-rsa.pem");

fn keyring(
    sources: &Sources<'_>,
    spec: &Spec,
    default: &str,
    load: fn(&str) -> Result<Keyring, KeyringError>,
) -> Result<Keyring, ConfigError> {
    let var = spec.var;
    let text = match sources.optional(spec)? {
        None => default.to_string(),
        Some(value) => match value.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::KeyFile {
                var,
                path: path.to_string(),
                source,
            })?,
            None => value,
        },
    };
    load(&text).map_err(|e| invalid(var, e.to_string()))
}

/// The alert settings; the critical margin may not be above the warning one.
fn alerts(s: &Sources<'_>) -> Result<AlertSettings, ConfigError> {
    let webhook_url = s.optional(&ALERT_WEBHOOK_URL)?;
    if let Some(url) = &webhook_url {
        // The message must not echo the URL: its path is the receiver's secret.
        parse_url(url).map_err(|_| invalid(ALERT_WEBHOOK_URL.var, "is not an http(s) URL"))?;
    }
    let alerts = AlertSettings {
        webhook_url: webhook_url.map(Secret::new),
        success_warn: s.parsed(&ALERT_SUCCESS_WARN, parse_share)?,
        success_critical: s.parsed(&ALERT_SUCCESS_CRITICAL, parse_share)?,
        silence: s.parsed(&ALERT_SILENCE, parse_limit)?,
        signature_share: s.parsed(&ALERT_SIGNATURE_SHARE, parse_share)?,
        signature_window: s.parsed(&ALERT_SIGNATURE_WINDOW, parse_nonzero_duration)?,
        outbox_age: s.parsed(&ALERT_OUTBOX_AGE, parse_limit)?,
        broker_down: s.parsed(&ALERT_BROKER_DOWN, parse_limit)?,
        hold_down: s.parsed(&ALERT_HOLD_DOWN, parse_span)?,
        save_every: s.parsed(&HEALTH_SAVE_EVERY, parse_nonzero_duration)?,
    };
    if alerts.success_critical > alerts.success_warn {
        let (warn, critical) = (alerts.success_warn, alerts.success_critical);
        let why = format!("{critical} is above {} ({warn})", ALERT_SUCCESS_WARN.var);
        return Err(invalid(ALERT_SUCCESS_CRITICAL.var, why));
    }
    Ok(alerts)
}

/// Both credentials, or neither: one without the other is a mistake, not "off".
fn credentials(s: &Sources<'_>) -> Result<Option<Credentials>, ConfigError> {
    let needs = |missing: &Spec, given: &Spec| {
        invalid(
            missing.var,
            format!("must be set when {} is set", given.var),
        )
    };
    match (s.optional(&CLIENT_ID)?, s.optional(&CLIENT_SECRET)?) {
        (Some(client_id), Some(secret)) => Ok(Some(Credentials {
            client_id,
            client_secret: Secret::new(secret),
            redirect_uri: s.optional(&REDIRECT_URI)?,
            scopes: s.optional(&SCOPES)?,
        })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(needs(&CLIENT_SECRET, &CLIENT_ID)),
        (None, Some(_)) => Err(needs(&CLIENT_ID, &CLIENT_SECRET)),
    }
}

impl Settings {
    /// Loads settings from optional TOML text and an environment map.
    pub fn load(
        file_text: Option<&str>,
        env: &HashMap<String, String>,
    ) -> Result<Settings, ConfigError> {
        let file = match file_text {
            None => toml::Table::new(),
            Some(text) => text
                .parse::<toml::Table>()
                .map_err(|e| ConfigError::File(e.message().to_string()))?,
        };
        let s = Sources { env, file };

        let credentials = credentials(&s)?;
        let token_key = match s.optional(&TOKEN_KEY)? {
            None => None,
            Some(text) => {
                Some(TokenKey::from_base64(&text).map_err(|r| invalid(TOKEN_KEY.var, r))?)
            }
        };

        let settings = Settings {
            http: HttpSettings {
                listen: s.parsed(&LISTEN, parse_addr)?,
                admin_listen: s.parsed(&ADMIN_LISTEN, parse_addr)?,
                admin_token: s.optional(&ADMIN_TOKEN)?.map(Secret::new),
                max_body_bytes: s.parsed(&MAX_BODY_BYTES, parse_positive)?,
                // No body could arrive in no time: zero would refuse every webhook.
                body_timeout: s.parsed(&BODY_TIMEOUT, parse_nonzero_duration)?,
                shutdown_grace: s.parsed(&SHUTDOWN_GRACE, parse_duration)?,
            },
            ingest: IngestSettings {
                ed25519_keys: keyring(
                    &s,
                    &ED25519_PUBLIC_KEYS,
                    DEFAULT_ED25519,
                    Keyring::ed25519_from_pem,
                )?,
                rsa_keys: keyring(&s, &RSA_PUBLIC_KEYS, DEFAULT_RSA, Keyring::rsa_from_pem)?,
                accept_legacy_rsa: s.parsed(&ACCEPT_LEGACY_RSA, parse_bool)?,
                max_future_skew: s.parsed(&MAX_FUTURE_SKEW, parse_duration)?,
            },
            store: StoreSettings {
                data_dir: PathBuf::from(s.optional(&DATA_DIR)?.expect("a default")),
                dedup_retention: s.parsed(&DEDUP_RETENTION, parse_duration)?,
                outbox_max_events: s.parsed(&OUTBOX_MAX_EVENTS, parse_positive)?,
            },
            amqp: AmqpSettings {
                url: Secret::new(s.parsed(&AMQP_URL, parse_amqp_url)?),
                exchange: s.parsed(&EXCHANGE, parse_exchange)?,
                declare_topology: s.parsed(&DECLARE_TOPOLOGY, parse_bool)?,
                nack_quarantine_after: s.parsed(&NACK_QUARANTINE_AFTER, parse_duration)?,
            },
            schema_mode: s.parsed(&SCHEMA_MODE, parse_schema_mode)?,
            oauth: OAuthSettings {
                credentials,
                base_url: s.parsed(&OAUTH_BASE_URL, parse_url)?,
                marketplace_url: s.parsed(&MARKETPLACE_URL, parse_url)?,
                token_key,
                refresh_before: s.parsed(&TOKEN_REFRESH_BEFORE, parse_duration)?,
                attach_tokens: s.parsed(&ATTACH_TOKENS, parse_bool)?,
                min_ttl: s.parsed(&TOKEN_MIN_TTL, parse_duration)?,
                refresh_concurrency: s.parsed(&TOKEN_REFRESH_CONCURRENCY, parse_positive)?,
                app_wide_budget: s.parsed(&TOKEN_APP_WIDE_BUDGET, parse_bool)?,
            },
            api: ApiSettings {
                base_url: s.parsed(&API_BASE_URL, parse_url)?,
                version: s.parsed(&API_VERSION, |t| Ok(t.to_string()))?,
                // Comma-separated; blanks between commas are no token.
                proxy_tokens: s.optional(&PROXY_TOKENS)?.map_or_else(Vec::new, |t| {
                    t.split(',')
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .map(Secret::new)
                        .collect()
                }),
                burst: s.parsed(&API_BURST, parse_positive)?,
                daily: s.parsed(&API_DAILY, parse_positive)?,
                max_wait: s.parsed(&API_MAX_WAIT, parse_duration)?,
                timeout: s.parsed(&API_TIMEOUT, parse_nonzero_duration)?,
                max_body_bytes: s.parsed(&API_MAX_BODY_BYTES, parse_positive)?,
            },
            log: LogSettings {
                filter: s.parsed(&LOG, |t| Ok(t.to_string()))?,
                format: s.parsed(&LOG_FORMAT, parse_log_format)?,
            },
            alerts: alerts(&s)?,
            traces: TraceSettings {
                endpoint: match s.optional(&OTLP_ENDPOINT)? {
                    Some(url) => {
                        Some(traces::endpoint(url).map_err(|w| invalid(OTLP_ENDPOINT.var, w))?)
                    }
                    None => None,
                },
                sample_ratio: s.parsed(&OTLP_SAMPLE_RATIO, traces::parse_ratio)?,
                headers: match s.optional(&OTLP_HEADERS)? {
                    Some(text) => {
                        traces::parse_headers(&text).map_err(|w| invalid(OTLP_HEADERS.var, w))?
                    }
                    None => Vec::new(),
                },
            },
        };

        let http = &settings.http;
        if http.admin_token.is_none() && !http.admin_listen.ip().is_loopback() {
            return Err(invalid(
                ADMIN_TOKEN.var,
                format!(
                    "must be set when {} ({}) is not a loopback address",
                    ADMIN_LISTEN.var, http.admin_listen
                ),
            ));
        }
        Ok(settings)
    }

    /// The effective settings as `NAME=value` lines, secrets redacted.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        SETTINGS
            .iter()
            .map(|spec| (spec.var, (spec.show)(self)))
            .collect()
    }
}

#[cfg(test)]
mod tests;
