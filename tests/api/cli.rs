//! The binary's other faces: check-config, sign, keygen, outbox, tenants, and what it writes to
//! its logs.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::durability::{process_env, spawn_process};
use crate::helpers::*;

fn hlgate(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hlgate"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_prints_settings_with_secrets_redacted() {
    let (code, out, _) = hlgate(
        &["check-config"],
        &[
            ("HLGATE_ADMIN_TOKEN", "s3cret-admin"),
            ("HLGATE_AMQP_URL", "amqp://app:s3cret-amqp@broker:5672/%2f"),
            ("HLGATE_CLIENT_ID", "app-1"),
            ("HLGATE_CLIENT_SECRET", "s3cret-client"),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("HLGATE_LISTEN=127.0.0.1:8080"));
    assert!(out.contains("HLGATE_DEDUP_RETENTION=7d"));
    assert!(out.contains("HLGATE_ADMIN_TOKEN=[redacted]"));
    assert!(out.contains("schemas: mode warn, 77 loaded"), "{out}");
    assert!(out.contains("HLGATE_AMQP_URL=amqp://app:[redacted]@broker:5672/%2f"));
    for secret in ["s3cret-admin", "s3cret-amqp", "s3cret-client"] {
        assert!(!out.contains(secret), "{secret} leaked");
    }
}

#[test]
fn a_bad_setting_stops_start_up_naming_the_variable() {
    for (var, value) in [
        ("HLGATE_SHUTDOWN_GRACE", "soon"),
        ("HLGATE_MAX_BODY_BYTES", "big"),
        ("HLGATE_ADMIN_LISTEN", "0.0.0.0:9090"),
    ] {
        let (code, _, err) = hlgate(&["serve"], &[(var, value)]);
        assert_eq!(code, 2, "{var}");
        let expected = if var == "HLGATE_ADMIN_LISTEN" {
            "HLGATE_ADMIN_TOKEN"
        } else {
            var
        };
        assert!(err.contains(expected), "{var}: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hlgate.toml");
    std::fs::write(&file, "exchange = \"from.file\"\nschema_mode = \"warn\"\n").unwrap();
    let (code, out, _) = hlgate(&["--config", file.to_str().unwrap(), "check-config"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("HLGATE_EXCHANGE=from.file"));
    let (code, out, _) = hlgate(&["check-config"], &[("HLGATE_SCHEMA_MODE", "off")]);
    assert_eq!(code, 0);
    assert!(out.contains("schemas: mode off, 0 loaded"), "{out}");
    std::fs::write(&file, "dedup_retention = \"forever\"\n").unwrap();
    let (code, _, err) = hlgate(&["--config", file.to_str().unwrap(), "check-config"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("HLGATE_DEDUP_RETENTION"), "{err}");
}

#[tokio::test]
async fn keygen_and_sign_post_an_event_hlgate_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("local");
    let (code, out, _) = hlgate(&["keygen", prefix.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{out}");
    let key = dir.path().join("local.key");
    let public = std::fs::read_to_string(dir.path().join("local.pub")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let event = dir.path().join("event.json");
    std::fs::write(
        &event,
        br#"{"type":"ContactCreate","locationId":"quick","webhookId":"quick-start-1"}"#,
    )
    .unwrap();
    let (code, out, _) = hlgate(
        &[
            "sign",
            "--key",
            key.to_str().unwrap(),
            event.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0);
    assert!(out.starts_with("X-GHL-Signature: "), "{out}");

    let app = spawn_app_with(&[("HLGATE_ED25519_PUBLIC_KEYS", &public)]).await;
    let mut tap = Tap::bind(&app.exchange, "ContactCreate.*").await;
    let url = app.url("/webhooks/highlevel");
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        hlgate(
            &[
                "sign",
                "--key",
                key.to_str().unwrap(),
                "--post",
                &url,
                event.to_str().unwrap(),
            ],
            &[],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        r#"200 {"status":"accepted","id":"quick-start-1"}"#
    );
    let d = tap.take(1).await;
    assert_eq!(d[0].routing_key.as_str(), "ContactCreate.quick");

    // The RSA test key signs X-WH-Signature.
    let rsa_key = repo_path("tests/keys/rsa-test.key");
    let event = dir.path().join("event.json");
    let (code, out, _) = hlgate(
        &[
            "sign",
            "--key",
            rsa_key.to_str().unwrap(),
            event.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0);
    assert!(out.starts_with("X-WH-Signature: "));
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn outbox_reports_the_running_gateway_or_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = unique("test.outbox");
    let (ed, rsa) = (Signer::ed25519(), Signer::rsa());
    let mut env = process_env(dir.path(), &exchange, &ed, &rsa);
    env.insert(
        "HLGATE_AMQP_URL".into(),
        "amqp://guest:guest@127.0.0.1:1/%2f".into(),
    );
    let mut process = spawn_process(&env, Stdio::null());
    process.wait_ready().await;
    let (_, body) = contact_event("L");
    assert_eq!(process.post_signed(&ed, body).await.status(), 200);

    let mut cli_env: Vec<(String, String)> = env.clone().into_iter().collect();
    cli_env.push(("HLGATE_ADMIN_LISTEN".into(), process.admin.to_string()));
    let (code, out, _) = hlgate_env(&["outbox"], &cli_env);
    assert_eq!(code, 0);
    assert!(out.contains("outbox_depth=1"), "{out}");
    assert!(out.contains("broker=disconnected"), "{out}");

    let (code, out, _) = hlgate_env(&["healthcheck"], &cli_env);
    assert_eq!((code, out.trim()), (0, "ok"));

    process.signal("TERM");
    assert!(process.child.wait().unwrap().success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (code, _, err) = hlgate_env(&["healthcheck"], &cli_env);
    assert_eq!(code, 1, "nothing listens any more: {err}");
    let (code, out, _) = hlgate_env(&["outbox"], &cli_env);
    assert_eq!(code, 0);
    assert!(out.contains("outbox_depth=1"), "{out}");
    assert!(out.contains("hlgate is not running"), "{out}");
}

#[tokio::test]
async fn logs_are_json_one_line_per_request_and_hold_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = unique("test.logs");
    let (ed, rsa) = (Signer::ed25519(), Signer::rsa());
    let mut env = process_env(dir.path(), &exchange, &ed, &rsa);
    env.insert("HLGATE_LOG".into(), "info".into());
    env.insert("HLGATE_ADMIN_TOKEN".into(), "log-admin-s3cret".into());
    env.insert(
        "HLGATE_AMQP_URL".into(),
        "amqp://guest:guest@127.0.0.1:1/%2f".into(),
    );
    let mut process = spawn_process(&env, Stdio::piped());
    process.wait_ready().await;
    let http = reqwest::Client::new();
    let url = process.webhook_url();
    let (id, body) = contact_event("logtenant");
    let (h, sig) = ed.sign(&body);
    assert_eq!(
        http.post(&url)
            .header(h, sig.clone())
            .body(body)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.post(&url).body("{}").send().await.unwrap().status(),
        401
    );
    let r = http
        .get(format!("http://{}/metrics", process.admin))
        .bearer_auth("wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    process.signal("TERM");
    process.child.wait().unwrap();
    let mut logs = String::new();
    process
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();

    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let requests: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["message"] == "webhook").collect();
    assert_eq!(requests.len(), 2, "{logs}");
    assert_eq!(requests[0]["outcome"], "accepted");
    assert_eq!(requests[0]["webhook_id"], id.as_str());
    assert_eq!(requests[0]["tenant"], "logtenant");
    assert!(requests[0]["latency_ms"].is_number());
    assert_eq!(requests[1]["outcome"], "missing_signature");
    for secret in [
        "log-admin-s3cret",
        "wrong-token",
        "guest:guest",
        sig.as_str(),
    ] {
        assert!(!logs.contains(secret), "{secret} in logs");
    }
}

/// `hlgate ARGS` with an owned environment.
fn hlgate_env(args: &[&str], env: &[(String, String)]) -> (i32, String, String) {
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    hlgate(args, &refs)
}

#[tokio::test]
async fn tenants_reads_the_store_when_the_gateway_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let (ed, rsa) = (Signer::ed25519(), Signer::rsa());
    let env = process_env(dir.path(), &unique("test.tenants"), &ed, &rsa);
    let mut process = spawn_process(&env, Stdio::null());
    process.wait_ready().await;
    let r = reqwest::Client::new()
        .put(format!(
            "http://{}/v1/tenants/locCliPit/private-token",
            process.admin
        ))
        .json(&serde_json::json!({"token": "pit-cli-s3cret"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    process.signal("TERM");
    assert!(process.child.wait().unwrap().success());

    // Nothing listens on the admin address any more: the vault is read from the data dir.
    let mut cli_env: Vec<(String, String)> = env.into_iter().collect();
    cli_env.push(("HLGATE_ADMIN_LISTEN".into(), process.admin.to_string()));
    let (code, out, err) = hlgate_env(&["tenants"], &cli_env);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("hlgate is not running"), "{err}");
    let listing: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listing["tenants"][0]["tenant"], "locCliPit", "{out}");
    assert_eq!(listing["tenants"][0]["state"], "private", "{out}");
    assert!(!out.contains("pit-cli-s3cret") && !err.contains("pit-cli-s3cret"));
}

#[tokio::test]
async fn tenants_follows_the_pages_online_and_offline() {
    let dir = tempfile::tempdir().unwrap();
    let (ed, rsa) = (Signer::ed25519(), Signer::rsa());
    let mut env = process_env(dir.path(), &unique("test.tenantpages"), &ed, &rsa);
    env.insert("HLGATE_ADMIN_TOKEN".into(), "cli-admin-s3cret".into());
    let seeded = crate::tenant_pages::seed(&dir.path().join("data"), 60);
    let mut process = spawn_process(&env, Stdio::null());
    process.wait_ready().await;
    let mut cli_env: Vec<(String, String)> = env.into_iter().collect();
    cli_env.push(("HLGATE_ADMIN_LISTEN".into(), process.admin.to_string()));
    let args = ["tenants", "--page-size", "7"];

    let (code, online, err) = hlgate_env(&args, &cli_env);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("not running"), "{err}");
    assert!(!online.contains("secret"), "{online}");
    let listing: serde_json::Value = serde_json::from_str(&online).unwrap();
    let listed: Vec<&str> = listing["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        seeded.keys().map(String::as_str).collect::<Vec<_>>()
    );
    // The pages put together are the gateway's one-page answer, without its cursor.
    let mut whole: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{}/v1/tenants", process.admin))
        .bearer_auth("cli-admin-s3cret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        whole.as_object_mut().unwrap().remove("next"),
        Some(serde_json::Value::Null)
    );
    assert_eq!(listing, whole);
    process.signal("TERM");
    assert!(process.child.wait().unwrap().success());

    // Stopped, the same pages come from the vault in the data dir: the same document.
    let (code, offline, err) = hlgate_env(&args, &cli_env);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("hlgate is not running"), "{err}");
    assert_eq!(offline, online);
}

#[tokio::test]
async fn a_token_key_readable_by_others_is_warned_about_without_the_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (ed, rsa) = (Signer::ed25519(), Signer::rsa());
    let env = process_env(dir.path(), &unique("test.keymode"), &ed, &rsa);
    let run = |env| async move {
        let mut process = spawn_process(env, Stdio::piped());
        process.wait_ready().await;
        process.signal("TERM");
        assert!(process.child.wait().unwrap().success());
        let mut logs = String::new();
        let mut stderr = process.child.stderr.take().unwrap();
        stderr.read_to_string(&mut logs).unwrap();
        logs
    };
    let warnings = |logs: &str| -> Vec<serde_json::Value> {
        logs.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|l| l.to_string().contains("token key file"))
            .collect()
    };
    // The key hlgate generates is its owner's alone: nothing to warn about.
    let logs = run(&env).await;
    assert!(warnings(&logs).is_empty(), "{logs}");

    let key_path = dir.path().join("data/token.key");
    let key = std::fs::read_to_string(&key_path).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let logs = run(&env).await;
    let found = warnings(&logs);
    assert_eq!(found.len(), 1, "{logs}");
    assert_eq!(found[0]["level"], "WARN", "{logs}");
    assert_eq!(found[0]["mode"], "644", "{logs}");
    assert!(!logs.contains(key.trim()), "the key is in the logs");
}
