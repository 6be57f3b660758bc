//! Typed settings: `load(file_text, env)` is a pure function of its inputs.
//!
//! Every setting has an environment name (`HLGATE_*`) and a TOML key (the same name lower-cased,
//! without the prefix). The environment wins over the file, the file over the embedded default.
//! Nothing reads the process environment after start-up.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::verify::{Keyring, KeyringError};

pub use crate::secret::{Secret, TokenKey};

/// What to do with events that fail their JSON Schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemaMode {
    /// Do not validate; every event is marked `unknown`.
    Off,
    /// Validate, mark the message and count; publish as usual.
    Warn,
    /// Validate; publish invalid events to the quarantine queue instead of the exchange.
    Enforce,
}

impl SchemaMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaMode::Off => "off",
            SchemaMode::Warn => "warn",
            SchemaMode::Enforce => "enforce",
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// The app's Marketplace credentials; present only when the token module is on.
#[derive(Clone, Debug)]
pub struct OAuthSettings {
    /// The Marketplace app's client id (`<appId>-<suffix>`).
    pub client_id: String,
    /// The Marketplace app's client secret.
    pub client_secret: Secret,
    /// The redirect URI registered for the app; points at `/oauth/callback`.
    pub redirect_uri: Option<String>,
    /// Space-separated scopes requested by `/oauth/install`.
    pub scopes: Option<String>,
}

/// All of hlgate's settings, validated.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Public listener: webhooks and the OAuth install flow.
    pub listen: SocketAddr,
    /// Admin listener: health, metrics, tokens, replay.
    pub admin_listen: SocketAddr,
    /// Bearer token for the admin API.
    pub admin_token: Option<Secret>,
    /// Directory of the sled database and generated key files.
    pub data_dir: PathBuf,
    /// RabbitMQ URL; may carry a password, so it is a secret.
    pub amqp_url: Secret,
    /// Topic exchange events are published to.
    pub exchange: String,
    /// Declare exchanges and queues at start-up.
    pub declare_topology: bool,
    /// Ed25519 keys for `X-GHL-Signature`.
    pub ed25519_keys: Keyring,
    /// RSA keys for `X-WH-Signature`.
    pub rsa_keys: Keyring,
    /// Accept `X-WH-Signature` when no `X-GHL-Signature` is present.
    pub accept_legacy_rsa: bool,
    /// Larger bodies get 413 (bytes).
    pub max_body_bytes: usize,
    /// A body not received in full within this time gets 408.
    pub body_timeout: Duration,
    /// How long a dedup key and the archived event are kept.
    pub dedup_retention: Duration,
    /// Events whose `timestamp` is further in the future are refused.
    pub max_future_skew: Duration,
    /// Above this many unpublished events, new events get 429.
    pub outbox_max_events: u64,
    /// Schema validation mode.
    pub schema_mode: SchemaMode,
    /// Marketplace credentials; `None` turns the token module off.
    pub oauth: Option<OAuthSettings>,
    /// Base URL of HighLevel's token, location-token and reconnect endpoints.
    pub oauth_base_url: String,
    /// Where `/oauth/install` sends the user.
    pub marketplace_url: String,
    /// Key for tokens at rest (32 bytes); generated into the data dir when unset.
    pub token_key: Option<TokenKey>,
    /// Refresh an access token this long before it expires.
    pub token_refresh_before: Duration,
    /// Attach the tenant's access token to each published event.
    pub attach_tokens: bool,
    /// An attached or served token is valid at least this long.
    pub token_min_ttl: Duration,
    /// Tracing filter.
    pub log: String,
    /// Log output format.
    pub log_format: LogFormat,
    /// Time allowed for a graceful shutdown.
    pub shutdown_grace: Duration,
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

    fn parsed<T>(
        &self,
        var: &'static str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.get(var)? {
            None => Ok(default),
            Some(text) => parse(text.trim()).map_err(|reason| invalid(var, reason)),
        }
    }

    fn optional(&self, var: &'static str) -> Result<Option<String>, ConfigError> {
        Ok(self.get(var)?.filter(|v| !v.trim().is_empty()))
    }
}

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

fn parse_bool(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("{text:?} is not true or false")),
    }
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not an address like 127.0.0.1:8080"))
}

fn parse_positive<T: std::str::FromStr + PartialOrd + Default>(text: &str) -> Result<T, String> {
    match text.parse::<T>() {
        Ok(n) if n > T::default() => Ok(n),
        _ => Err(format!("{text:?} is not a positive whole number")),
    }
}

fn parse_url(text: &str) -> Result<String, String> {
    if text.starts_with("http://") || text.starts_with("https://") {
        Ok(text.trim_end_matches('/').to_string())
    } else {
        Err(format!("{text:?} is not an http(s) URL"))
    }
}

const DEFAULT_ED25519: &str = include_str!("verify/highlevel-ed25519.pem");
const DEFAULT_RSA: &str = include_str!("verify/highlevel-rsa.pem");

fn keyring(
    sources: &Sources<'_>,
    var: &'static str,
    default: &str,
    load: fn(&str) -> Result<Keyring, KeyringError>,
) -> Result<Keyring, ConfigError> {
    let text = match sources.optional(var)? {
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

        let oauth = match (
            s.optional("HLGATE_CLIENT_ID")?,
            s.optional("HLGATE_CLIENT_SECRET")?,
        ) {
            (Some(client_id), Some(secret)) => Some(OAuthSettings {
                client_id,
                client_secret: Secret::new(secret),
                redirect_uri: s.optional("HLGATE_REDIRECT_URI")?,
                scopes: s.optional("HLGATE_SCOPES")?,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "HLGATE_CLIENT_SECRET",
                    "must be set when HLGATE_CLIENT_ID is set",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "HLGATE_CLIENT_ID",
                    "must be set when HLGATE_CLIENT_SECRET is set",
                ))
            }
        };

        let token_key = match s.optional("HLGATE_TOKEN_KEY")? {
            None => None,
            Some(text) => {
                Some(TokenKey::from_base64(&text).map_err(|r| invalid("HLGATE_TOKEN_KEY", r))?)
            }
        };

        let settings = Settings {
            listen: s.parsed(
                "HLGATE_LISTEN",
                "127.0.0.1:8080".parse().unwrap(),
                parse_addr,
            )?,
            admin_listen: s.parsed(
                "HLGATE_ADMIN_LISTEN",
                "127.0.0.1:9090".parse().unwrap(),
                parse_addr,
            )?,
            admin_token: s.optional("HLGATE_ADMIN_TOKEN")?.map(Secret::new),
            data_dir: PathBuf::from(
                s.optional("HLGATE_DATA_DIR")?
                    .unwrap_or_else(|| "./data".into()),
            ),
            amqp_url: Secret::new(s.parsed(
                "HLGATE_AMQP_URL",
                "amqp://guest:guest@127.0.0.1:5672/%2f".to_string(),
                |t| {
                    if t.starts_with("amqp://") || t.starts_with("amqps://") {
                        Ok(t.to_string())
                    } else {
                        Err("is not an amqp:// or amqps:// URL".into())
                    }
                },
            )?),
            exchange: s.parsed("HLGATE_EXCHANGE", "highlevel.events".to_string(), |t| {
                if t.is_empty() || t.len() > 255 {
                    Err("must be 1 to 255 bytes".into())
                } else {
                    Ok(t.to_string())
                }
            })?,
            declare_topology: s.parsed("HLGATE_DECLARE_TOPOLOGY", true, parse_bool)?,
            ed25519_keys: keyring(
                &s,
                "HLGATE_ED25519_PUBLIC_KEYS",
                DEFAULT_ED25519,
                Keyring::ed25519_from_pem,
            )?,
            rsa_keys: keyring(
                &s,
                "HLGATE_RSA_PUBLIC_KEYS",
                DEFAULT_RSA,
                Keyring::rsa_from_pem,
            )?,
            accept_legacy_rsa: s.parsed("HLGATE_ACCEPT_LEGACY_RSA", true, parse_bool)?,
            max_body_bytes: s.parsed("HLGATE_MAX_BODY_BYTES", 1_048_576, parse_positive)?,
            body_timeout: s.parsed("HLGATE_BODY_TIMEOUT", Duration::from_secs(30), |t| {
                // No body could arrive in no time: zero would refuse every webhook.
                parse_duration(t).and_then(|d| {
                    if d.is_zero() {
                        Err(format!("{t:?} must be longer than zero"))
                    } else {
                        Ok(d)
                    }
                })
            })?,
            dedup_retention: s.parsed(
                "HLGATE_DEDUP_RETENTION",
                Duration::from_secs(7 * 86_400),
                parse_duration,
            )?,
            max_future_skew: s.parsed(
                "HLGATE_MAX_FUTURE_SKEW",
                Duration::from_secs(300),
                parse_duration,
            )?,
            outbox_max_events: s.parsed("HLGATE_OUTBOX_MAX_EVENTS", 1_000_000, parse_positive)?,
            schema_mode: s.parsed("HLGATE_SCHEMA_MODE", SchemaMode::Warn, |t| {
                match t.to_ascii_lowercase().as_str() {
                    "off" => Ok(SchemaMode::Off),
                    "warn" => Ok(SchemaMode::Warn),
                    "enforce" => Ok(SchemaMode::Enforce),
                    _ => Err(format!("{t:?} is not off, warn or enforce")),
                }
            })?,
            oauth,
            oauth_base_url: s.parsed(
                "HLGATE_OAUTH_BASE_URL",
                "https://services.leadconnectorhq.com".to_string(),
                parse_url,
            )?,
            marketplace_url: s.parsed(
                "HLGATE_MARKETPLACE_URL",
                "https://marketplace.gohighlevel.com".to_string(),
                parse_url,
            )?,
            token_key,
            token_refresh_before: s.parsed(
                "HLGATE_TOKEN_REFRESH_BEFORE",
                Duration::from_secs(3_600),
                parse_duration,
            )?,
            attach_tokens: s.parsed("HLGATE_ATTACH_TOKENS", false, parse_bool)?,
            token_min_ttl: s.parsed(
                "HLGATE_TOKEN_MIN_TTL",
                Duration::from_secs(900),
                parse_duration,
            )?,
            log: s.parsed("HLGATE_LOG", "info".to_string(), |t| Ok(t.to_string()))?,
            log_format: s.parsed("HLGATE_LOG_FORMAT", LogFormat::Json, |t| {
                match t.to_ascii_lowercase().as_str() {
                    "json" => Ok(LogFormat::Json),
                    "pretty" => Ok(LogFormat::Pretty),
                    _ => Err(format!("{t:?} is not json or pretty")),
                }
            })?,
            shutdown_grace: s.parsed(
                "HLGATE_SHUTDOWN_GRACE",
                Duration::from_secs(10),
                parse_duration,
            )?,
        };

        if settings.admin_token.is_none() && !settings.admin_listen.ip().is_loopback() {
            return Err(invalid(
                "HLGATE_ADMIN_TOKEN",
                format!(
                    "must be set when HLGATE_ADMIN_LISTEN ({}) is not a loopback address",
                    settings.admin_listen
                ),
            ));
        }
        Ok(settings)
    }

    /// The effective settings as `NAME=value` lines, secrets redacted.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let redacted = |set: bool| if set { "[redacted]" } else { "unset" }.to_string();
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "unset".into());
        let oauth = self.oauth.as_ref();
        vec![
            ("HLGATE_LISTEN", self.listen.to_string()),
            ("HLGATE_ADMIN_LISTEN", self.admin_listen.to_string()),
            ("HLGATE_ADMIN_TOKEN", redacted(self.admin_token.is_some())),
            ("HLGATE_DATA_DIR", self.data_dir.display().to_string()),
            ("HLGATE_AMQP_URL", redact_url(self.amqp_url.expose())),
            ("HLGATE_EXCHANGE", self.exchange.clone()),
            ("HLGATE_DECLARE_TOPOLOGY", self.declare_topology.to_string()),
            (
                "HLGATE_ED25519_PUBLIC_KEYS",
                format!("{} key(s)", self.ed25519_keys.len()),
            ),
            (
                "HLGATE_RSA_PUBLIC_KEYS",
                format!("{} key(s)", self.rsa_keys.len()),
            ),
            (
                "HLGATE_ACCEPT_LEGACY_RSA",
                self.accept_legacy_rsa.to_string(),
            ),
            ("HLGATE_MAX_BODY_BYTES", self.max_body_bytes.to_string()),
            ("HLGATE_BODY_TIMEOUT", format_duration(self.body_timeout)),
            (
                "HLGATE_DEDUP_RETENTION",
                format_duration(self.dedup_retention),
            ),
            (
                "HLGATE_MAX_FUTURE_SKEW",
                format_duration(self.max_future_skew),
            ),
            (
                "HLGATE_OUTBOX_MAX_EVENTS",
                self.outbox_max_events.to_string(),
            ),
            ("HLGATE_SCHEMA_MODE", self.schema_mode.as_str().to_string()),
            ("HLGATE_CLIENT_ID", opt(&oauth.map(|o| o.client_id.clone()))),
            ("HLGATE_CLIENT_SECRET", redacted(oauth.is_some())),
            (
                "HLGATE_REDIRECT_URI",
                opt(&oauth.and_then(|o| o.redirect_uri.clone())),
            ),
            ("HLGATE_SCOPES", opt(&oauth.and_then(|o| o.scopes.clone()))),
            ("HLGATE_OAUTH_BASE_URL", self.oauth_base_url.clone()),
            ("HLGATE_MARKETPLACE_URL", self.marketplace_url.clone()),
            (
                "HLGATE_TOKEN_KEY",
                if self.token_key.is_some() {
                    "[redacted]".into()
                } else {
                    "generated in the data dir".into()
                },
            ),
            (
                "HLGATE_TOKEN_REFRESH_BEFORE",
                format_duration(self.token_refresh_before),
            ),
            ("HLGATE_ATTACH_TOKENS", self.attach_tokens.to_string()),
            ("HLGATE_TOKEN_MIN_TTL", format_duration(self.token_min_ttl)),
            ("HLGATE_LOG", self.log.clone()),
            (
                "HLGATE_LOG_FORMAT",
                match self.log_format {
                    LogFormat::Json => "json".into(),
                    LogFormat::Pretty => "pretty".into(),
                },
            ),
            (
                "HLGATE_SHUTDOWN_GRACE",
                format_duration(self.shutdown_grace),
            ),
        ]
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

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_need_no_file_and_no_env() {
        let s = Settings::load(None, &HashMap::new()).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.admin_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(s.dedup_retention, Duration::from_secs(604_800));
        assert_eq!(s.ed25519_keys.len(), 1);
        assert_eq!(s.rsa_keys.len(), 1);
        assert_eq!(s.schema_mode, SchemaMode::Warn);
        assert_eq!(s.body_timeout, Duration::from_secs(30));
        assert!(s.oauth.is_none());
    }

    #[test]
    fn body_timeout_is_a_duration_from_env_or_file_and_shown() {
        let s = Settings::load(Some("body_timeout = \"1500ms\"\n"), &HashMap::new()).unwrap();
        assert_eq!(s.body_timeout, Duration::from_millis(1500));
        let s = Settings::load(None, &env(&[("HLGATE_BODY_TIMEOUT", "2m")])).unwrap();
        assert_eq!(s.body_timeout, Duration::from_secs(120));
        assert!(s
            .describe()
            .contains(&("HLGATE_BODY_TIMEOUT", "2m".to_string())));
    }

    #[test]
    fn environment_wins_over_file() {
        let file = "exchange = \"from.file\"\nmax_body_bytes = 10\n";
        let s = Settings::load(Some(file), &env(&[("HLGATE_EXCHANGE", "from.env")])).unwrap();
        assert_eq!(s.exchange, "from.env");
        assert_eq!(s.max_body_bytes, 10);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            ("HLGATE_DEDUP_RETENTION", "7 days"),
            ("HLGATE_LISTEN", "nowhere"),
            ("HLGATE_MAX_BODY_BYTES", "-1"),
            ("HLGATE_BODY_TIMEOUT", "30"),
            ("HLGATE_BODY_TIMEOUT", "0s"),
            ("HLGATE_SCHEMA_MODE", "strict"),
            ("HLGATE_ACCEPT_LEGACY_RSA", "maybe"),
            ("HLGATE_ED25519_PUBLIC_KEYS", "no pem here"),
            ("HLGATE_TOKEN_KEY", "c2hvcnQ="),
        ] {
            let err = Settings::load(None, &env(&[(var, value)])).unwrap_err();
            assert!(err.to_string().starts_with(var), "{var}: {err}");
        }
    }

    #[test]
    fn non_loopback_admin_needs_a_token() {
        let err =
            Settings::load(None, &env(&[("HLGATE_ADMIN_LISTEN", "0.0.0.0:9090")])).unwrap_err();
        assert!(err.to_string().starts_with("HLGATE_ADMIN_TOKEN"));
        let ok = Settings::load(
            None,
            &env(&[
                ("HLGATE_ADMIN_LISTEN", "0.0.0.0:9090"),
                ("HLGATE_ADMIN_TOKEN", "t0ken"),
            ]),
        );
        assert!(ok.is_ok());
    }

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

    #[test]
    fn secrets_are_redacted_everywhere() {
        let s = Settings::load(
            None,
            &env(&[
                ("HLGATE_ADMIN_TOKEN", "admin-s3cret"),
                ("HLGATE_CLIENT_ID", "app-1"),
                ("HLGATE_CLIENT_SECRET", "client-s3cret"),
                ("HLGATE_AMQP_URL", "amqp://user:amqp-s3cret@host:5672/%2f"),
                (
                    "HLGATE_TOKEN_KEY",
                    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
                ),
            ]),
        )
        .unwrap();
        let debug = format!("{s:?}");
        let described = format!("{:?}", s.describe());
        for text in [debug, described] {
            for secret in ["admin-s3cret", "client-s3cret", "amqp-s3cret", "AAECAw"] {
                assert!(!text.contains(secret), "{secret} leaked");
            }
        }
    }
}
