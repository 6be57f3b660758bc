//! Settings from files and the environment: defaults, precedence, errors, redaction.

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
    assert_eq!(s.http.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(s.http.admin_listen.to_string(), "127.0.0.1:9090");
    assert_eq!(s.store.dedup_retention, Duration::from_secs(604_800));
    assert_eq!(s.ingest.ed25519_keys.len(), 1);
    assert_eq!(s.ingest.rsa_keys.len(), 1);
    assert_eq!(s.schema_mode, SchemaMode::Warn);
    assert_eq!(s.http.body_timeout, Duration::from_secs(30));
    assert!(s.oauth.credentials.is_none());
}

#[test]
fn body_timeout_is_a_duration_from_env_or_file_and_shown() {
    let s = Settings::load(Some("body_timeout = \"1500ms\"\n"), &HashMap::new()).unwrap();
    assert_eq!(s.http.body_timeout, Duration::from_millis(1500));
    let s = Settings::load(None, &env(&[("HLGATE_BODY_TIMEOUT", "2m")])).unwrap();
    assert_eq!(s.http.body_timeout, Duration::from_secs(120));
    assert!(s
        .describe()
        .contains(&("HLGATE_BODY_TIMEOUT", "2m".to_string())));
}

#[test]
fn environment_wins_over_file() {
    let file = "exchange = \"from.file\"\nmax_body_bytes = 10\n";
    let s = Settings::load(Some(file), &env(&[("HLGATE_EXCHANGE", "from.env")])).unwrap();
    assert_eq!(s.amqp.exchange, "from.env");
    assert_eq!(s.http.max_body_bytes, 10);
}

#[test]
fn bad_values_name_the_variable() {
    for (var, value) in [
        ("HLGATE_DEDUP_RETENTION", "7 days"),
        ("HLGATE_LISTEN", "nowhere"),
        ("HLGATE_MAX_BODY_BYTES", "-1"),
        ("HLGATE_BODY_TIMEOUT", "30"),
        ("HLGATE_BODY_TIMEOUT", "0s"),
        ("HLGATE_NACK_QUARANTINE_AFTER", "soon"),
        ("HLGATE_NACK_QUARANTINE_AFTER", "-1m"),
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
    let err = Settings::load(None, &env(&[("HLGATE_ADMIN_LISTEN", "0.0.0.0:9090")])).unwrap_err();
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
fn secrets_are_redacted_everywhere() {
    let s = Settings::load(
        None,
        &env(&[
            ("HLGATE_ADMIN_TOKEN", "admin-s3cret"),
            ("HLGATE_PROXY_TOKENS", "proxy-s3cret, other-s3cret"),
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
        for secret in [
            "admin-s3cret",
            "proxy-s3cret",
            "client-s3cret",
            "amqp-s3cret",
            "AAECAw",
        ] {
            assert!(!text.contains(secret), "{secret} leaked");
        }
    }
}

fn load(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    Settings::load(None, &env(pairs))
}

#[test]
fn alert_defaults_follow_highlevels_rule_with_margins() {
    let a = load(&[]).unwrap().alerts;
    assert!(a.webhook_url.is_none());
    assert_eq!((a.success_warn, a.success_critical), (0.97, 0.93));
    assert_eq!(a.silence, Some(Duration::from_secs(1800)));
    assert_eq!(a.signature_window, Duration::from_secs(900));
    assert_eq!(a.signature_share, 0.1);
    assert_eq!(a.outbox_age, Some(Duration::from_secs(900)));
    assert_eq!(a.broker_down, Some(Duration::from_secs(300)));
    assert_eq!(a.hold_down, Duration::from_secs(600));
    assert_eq!(a.save_every, Duration::from_secs(60));
}

#[test]
fn zero_turns_a_watch_off_and_is_shown_so() {
    let s = load(&[
        ("HLGATE_ALERT_SILENCE", "0"),
        ("HLGATE_ALERT_OUTBOX_AGE", "0s"),
        ("HLGATE_ALERT_HOLD_DOWN", "0"),
    ]);
    let s = s.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((s.alerts.silence, s.alerts.outbox_age), (None, None));
    assert!(s
        .describe()
        .contains(&("HLGATE_ALERT_SILENCE", "0 (off)".to_string())));
}

#[test]
fn bad_alert_values_name_the_variable() {
    for (var, value) in [
        ("HLGATE_ALERT_SUCCESS_WARN", "97%"),
        ("HLGATE_ALERT_SUCCESS_WARN", "1.5"),
        ("HLGATE_ALERT_SUCCESS_CRITICAL", "0"),
        ("HLGATE_ALERT_SUCCESS_CRITICAL", "0.98"),
        ("HLGATE_ALERT_SILENCE", "30"),
        ("HLGATE_ALERT_SIGNATURE_SHARE", "-0.1"),
        ("HLGATE_ALERT_SIGNATURE_WINDOW", "0s"),
        ("HLGATE_ALERT_BROKER_DOWN", "soon"),
        ("HLGATE_HEALTH_SAVE_EVERY", "0s"),
        ("HLGATE_ALERT_WEBHOOK_URL", "hooks.example/T0/s3cret"),
    ] {
        let err = load(&[(var, value)]).unwrap_err().to_string();
        assert!(err.starts_with(var), "{var}={value}: {err}");
        assert!(!err.contains("s3cret"), "{err}");
    }
}

#[test]
fn the_webhook_url_is_a_secret() {
    let url = "https://hooks.example.com/services/T0/B0/s3cret";
    let s = load(&[("HLGATE_ALERT_WEBHOOK_URL", url)]).unwrap();
    assert_eq!(s.alerts.webhook_url.as_ref().unwrap().expose(), url);
    let shown = format!("{s:?} {:?}", s.describe());
    assert!(!shown.contains("s3cret"), "{shown}");
}

#[test]
fn traces_are_off_by_default_and_their_secrets_stay_hidden() {
    let s = Settings::load(None, &HashMap::new()).unwrap();
    assert!(s.traces.endpoint.is_none());
    assert_eq!(s.traces.sample_ratio, 1.0);
    let s = Settings::load(
        Some("otlp_sample_ratio = \"0.1\"\n"),
        &env(&[
            (
                "HLGATE_OTLP_ENDPOINT",
                "https://u:pw@c.example/otlp?key=k3y",
            ),
            ("HLGATE_OTLP_HEADERS", "x-api-key=h3ader"),
        ]),
    )
    .unwrap();
    assert_eq!(s.traces.sample_ratio, 0.1);
    assert_eq!(s.traces.headers.len(), 1);
    let described = format!("{:?} {:?}", s.describe(), s);
    for secret in ["pw", "k3y", "h3ader"] {
        assert!(!described.contains(secret), "{secret} in {described}");
    }
    assert!(s.describe().contains(&(
        "HLGATE_OTLP_ENDPOINT",
        "https://u:[redacted]@c.example/otlp".to_string()
    )));
    let e = Settings::load(None, &env(&[("HLGATE_OTLP_ENDPOINT", "c:4318?key=k3y")]));
    let e = e.unwrap_err().to_string();
    assert!(
        e.starts_with("HLGATE_OTLP_ENDPOINT:") && !e.contains("k3y"),
        "{e}"
    );
    let e = Settings::load(None, &env(&[("HLGATE_OTLP_SAMPLE_RATIO", "2")]));
    assert!(e
        .unwrap_err()
        .to_string()
        .starts_with("HLGATE_OTLP_SAMPLE_RATIO:"));
}
