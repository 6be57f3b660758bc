//! The token key, with the real binary: over stored tokens, a lost key or another one refuses
//! the start (naming the key and what to restore), writes no key, and `hlgate store check`
//! says so; an empty vault gets a new key.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hlgate::secret::TokenKey;

use crate::durability::spawn_process;
use crate::highlevel::StandIn;
use crate::tokens::{latest_access, process_env_with};

type Env = HashMap<String, String>;

/// A data dir whose vault holds one install's tokens, made by the binary: its dir, its env.
async fn installed(standin: &StandIn) -> (tempfile::TempDir, Env) {
    let (dir, env) = process_env_with(standin, "test.tokenkey");
    let process = spawn_process(&env, Stdio::null());
    process.wait_ready().await;
    let code = standin.code_for("locKey", "Location");
    let callback = format!("http://{}/oauth/callback?code={code}", process.public);
    assert_eq!(reqwest::get(callback).await.unwrap().status(), 200);
    stop(process);
    (dir, env)
}

fn stop(process: crate::durability::Process) {
    process.signal("TERM");
    let mut process = process;
    assert!(process.child.wait().unwrap().success());
}

fn key_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("data/token.key")
}

fn write_key(path: &Path, key: &TokenKey) {
    hlgate::files::write_private(path, key.to_base64().as_bytes()).unwrap();
}

/// `hlgate serve`, which must refuse to start: its exit code and the error line it printed. A
/// gateway that starts instead is killed and fails the test.
fn refused_start(env: &Env) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hlgate"))
        .arg("serve")
        .env_clear()
        .envs(env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..400 {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            let line = err.lines().find(|l| l.starts_with("hlgate: "));
            return (
                status.code().unwrap_or(-1),
                line.unwrap_or(&err).to_string(),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("hlgate started");
}

/// `hlgate store check`: its exit code and report.
fn store_check(env: &Env) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hlgate"))
        .args(["store", "check"])
        .env_clear()
        .envs(env)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_token_key_refuses_the_start_and_no_new_key_is_written() {
    let standin = StandIn::start().await;
    let (dir, env) = installed(&standin).await;
    let path = key_path(&dir);
    let saved = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();

    let (code, line) = refused_start(&env);
    assert_eq!(code, 2, "{line}");
    let named = path.display().to_string();
    for words in [named.as_str(), "restore", "HLGATE_TOKEN_KEY", "missing"] {
        assert!(line.contains(words), "{words:?} not in {line}");
    }
    assert!(!path.exists(), "a new key was written over stored tokens");
    let (code, report) = store_check(&env);
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains(&format!(
            "TOKEN KEY: tokens are stored but their key is missing: restore {named}"
        )),
        "{report}"
    );
    assert!(
        report.contains("refused: hlgate does not start"),
        "{report}"
    );

    // Restored, the key opens the tenant's tokens again.
    hlgate::files::write_private(&path, &saved).unwrap();
    let (code, report) = store_check(&env);
    assert_eq!(code, 0, "{report}");
    assert!(
        report.contains(&format!("token vault: the token key from {named} opens it")),
        "{report}"
    );
    let process = spawn_process(&env, Stdio::null());
    process.wait_ready().await;
    let token = reqwest::get(format!("http://{}/v1/tokens/locKey", process.admin))
        .await
        .unwrap();
    assert_eq!(token.status(), 200);
    let token: serde_json::Value = token.json().await.unwrap();
    assert_eq!(token["access_token"], latest_access(&standin));
    stop(process);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_token_key_is_refused_naming_where_it_came_from() {
    let standin = StandIn::start().await;
    let (dir, mut env) = installed(&standin).await;
    let path = key_path(&dir);
    let saved = std::fs::read(&path).unwrap();
    let other = TokenKey([0x5a; 32]);

    // Another valid key in token.key.
    write_key(&path, &other);
    let (code, line) = refused_start(&env);
    assert_eq!(code, 2, "{line}");
    let named = path.display().to_string();
    assert!(
        line.contains(&format!(
            "the token key from {named} is not the key the stored tokens were sealed with"
        )),
        "{line}"
    );
    assert!(line.contains("restore"), "{line}");
    assert!(
        !line.contains(&other.to_base64()),
        "the key itself in {line}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        other.to_base64(),
        "the key file changed"
    );
    let (code, report) = store_check(&env);
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains(&format!("TOKEN KEY: the token key from {named} is not")),
        "{report}"
    );

    // Another key in HLGATE_TOKEN_KEY, over the right file.
    hlgate::files::write_private(&path, &saved).unwrap();
    env.insert("HLGATE_TOKEN_KEY".into(), other.to_base64());
    let (code, line) = refused_start(&env);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.contains("the token key from HLGATE_TOKEN_KEY is not"),
        "{line}"
    );
    assert!(
        !line.contains(&other.to_base64()),
        "the key itself in {line}"
    );
    let (code, report) = store_check(&env);
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains("TOKEN KEY: the token key from HLGATE_TOKEN_KEY is not"),
        "{report}"
    );
    assert!(
        !report.contains(&other.to_base64()),
        "the key itself in {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_vault_gets_a_new_key_and_starts() {
    let standin = StandIn::start().await;
    let (dir, env) = process_env_with(&standin, "test.tokenkey");
    let path = key_path(&dir);
    let process = spawn_process(&env, Stdio::null());
    process.wait_ready().await;
    let first = std::fs::read_to_string(&path).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    stop(process);

    // No token was ever stored: a lost key is no loss, and a new one is made.
    std::fs::remove_file(&path).unwrap();
    let (code, report) = store_check(&env);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("token vault: no tokens stored"), "{report}");
    let process = spawn_process(&env, Stdio::null());
    process.wait_ready().await;
    let second = std::fs::read_to_string(&path).unwrap();
    assert_ne!(first, second);
    stop(process);
    let (code, report) = store_check(&env);
    assert_eq!(code, 0, "{report}");
}
