//! What can be checked about the container image without a Docker engine: the Dockerfile builds
//! the binary cargo makes, exposes the ports hlgate listens on, keeps its data on a volume, runs
//! as a non-root user, checks health on the admin listener, and its settings load. Also the
//! examples that run against RabbitMQ: the consumer, and the load tool against the real binary.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use hlgate::config::Settings;

#[path = "support/example.rs"]
mod support;
use support::example;

/// One Dockerfile instruction: its stage (0 = first `FROM`), keyword (upper-case) and arguments.
#[derive(Debug)]
struct Instruction {
    stage: usize,
    keyword: String,
    args: String,
}

fn dockerfile() -> Vec<Instruction> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile");
    let text = std::fs::read_to_string(&path).expect("a Dockerfile at the top level");
    let mut out = Vec::new();
    let mut stage = 0;
    let mut seen_from = false;
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        // Comment lines are dropped, also inside a continued instruction.
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, args) = current.trim().split_once(char::is_whitespace).unwrap();
                let keyword = keyword.to_ascii_uppercase();
                if keyword == "FROM" {
                    if seen_from {
                        stage += 1;
                    }
                    seen_from = true;
                }
                out.push(Instruction {
                    stage,
                    keyword,
                    args: args.trim().to_string(),
                });
                current.clear();
            }
        }
    }
    assert!(
        current.is_empty(),
        "the Dockerfile ends inside a continuation"
    );
    out
}

fn all<'a>(instructions: &'a [Instruction], keyword: &str) -> Vec<&'a Instruction> {
    instructions
        .iter()
        .filter(|i| i.keyword == keyword)
        .collect()
}

fn last_stage(instructions: &[Instruction]) -> usize {
    instructions.iter().map(|i| i.stage).max().unwrap()
}

/// The runtime stage's `ENV KEY=VALUE ...` settings (later ones win).
fn runtime_env(instructions: &[Instruction]) -> HashMap<String, String> {
    let runtime = last_stage(instructions);
    let mut env = HashMap::new();
    for i in all(instructions, "ENV")
        .into_iter()
        .filter(|i| i.stage == runtime)
    {
        for pair in i.args.split_whitespace() {
            let (key, value) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("ENV {pair}: use the KEY=VALUE form"));
            env.insert(key.to_string(), value.trim_matches('"').to_string());
        }
    }
    env
}

/// `["a", "b"]` (exec form) as its strings.
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|_| panic!("{args}: use the exec form [\"...\"]"))
}

fn port(addr: &str) -> u16 {
    addr.parse::<SocketAddr>()
        .unwrap_or_else(|_| panic!("{addr} is not an address"))
        .port()
}

#[test]
fn the_builder_runs_a_locked_release_build_and_the_runtime_copies_its_binary() {
    let d = dockerfile();
    let froms = all(&d, "FROM");
    assert!(froms.len() >= 2, "a multi-stage build");
    let builder_image = froms[0].args.split_whitespace().next().unwrap();
    let runtime_image = froms
        .last()
        .unwrap()
        .args
        .split_whitespace()
        .next()
        .unwrap();
    assert!(builder_image.starts_with("rust:1"), "{builder_image}");
    // The binary links against the builder's glibc: the runtime must be the same Debian release.
    let codename = runtime_image
        .split([':', '-'])
        .find(|part| ["bookworm", "trixie", "bullseye"].contains(part))
        .unwrap_or_else(|| panic!("{runtime_image}: name the Debian release"));
    assert!(
        builder_image.contains(codename),
        "{builder_image} vs {runtime_image}"
    );

    let build = all(&d, "RUN")
        .into_iter()
        .find(|i| i.args.contains("cargo build"))
        .expect("a RUN cargo build");
    assert!(build.args.contains("--release"), "{}", build.args);
    assert!(build.args.contains("--locked"), "{}", build.args);

    // The file cargo makes for the package's binary: target/release/<bin name>.
    let bin = Path::new(env!("CARGO_BIN_EXE_hlgate"));
    let bin_name = bin.file_name().unwrap().to_str().unwrap();
    assert_eq!(bin_name, env!("CARGO_PKG_NAME"));
    let built = format!("target/release/{bin_name}");
    let copy = all(&d, "COPY")
        .into_iter()
        .find(|i| i.args.starts_with("--from="))
        .expect("COPY --from=builder");
    let mut parts = copy.args.split_whitespace().skip(1);
    let source = parts.next().unwrap();
    let destination = parts.next().unwrap();
    assert!(
        source.ends_with(&built),
        "copies {source}, cargo makes {built}"
    );
    assert_eq!(copy.stage, last_stage(&d));

    // ENTRYPOINT runs that binary; CMD is a real subcommand.
    let entrypoint = exec_form(&all(&d, "ENTRYPOINT").last().unwrap().args);
    assert!(
        entrypoint[0] == destination
            || (Path::new(destination).parent() == Some(Path::new("/usr/local/bin"))
                && entrypoint[0] == bin_name),
        "ENTRYPOINT {entrypoint:?} is not the copied {destination}"
    );
    let cmd = exec_form(&all(&d, "CMD").last().unwrap().args);
    assert_eq!(cmd, ["serve"]);
    let help = Command::new(bin)
        .args([&cmd[0], "--help"])
        .output()
        .unwrap();
    assert!(help.status.success(), "hlgate {} --help", cmd[0]);
}

#[test]
fn exposed_ports_match_the_listeners() {
    let d = dockerfile();
    let env = runtime_env(&d);
    let defaults = Settings::load(None, &HashMap::new()).unwrap();
    assert_eq!(defaults.http.listen.port(), 8080);
    assert_eq!(defaults.http.admin_listen.port(), 9090);

    let mut exposed: Vec<u16> = all(&d, "EXPOSE")
        .iter()
        .flat_map(|i| i.args.split_whitespace())
        .map(|p| p.trim_end_matches("/tcp").parse().unwrap())
        .collect();
    exposed.sort();
    assert_eq!(exposed, [8080, 9090]);

    let public = env.get("HLGATE_LISTEN").expect("ENV HLGATE_LISTEN");
    assert_eq!(port(public), defaults.http.listen.port());
    assert!(
        public.starts_with("0.0.0.0:"),
        "the public listener must be reachable from outside the container"
    );
    // The admin listener keeps the code's default port; loopback unless a token is set.
    let admin = env
        .get("HLGATE_ADMIN_LISTEN")
        .map(|a| a.parse::<SocketAddr>().unwrap())
        .unwrap_or(defaults.http.admin_listen);
    assert_eq!(admin.port(), defaults.http.admin_listen.port());
    assert!(admin.ip().is_loopback() || env.contains_key("HLGATE_ADMIN_TOKEN"));
    assert!(
        !env.contains_key("HLGATE_ADMIN_TOKEN"),
        "no secret is baked into the image"
    );
}

#[test]
fn data_lives_on_a_volume_owned_by_a_non_root_user() {
    let d = dockerfile();
    let env = runtime_env(&d);
    assert_eq!(
        env.get("HLGATE_DATA_DIR").map(String::as_str),
        Some("/data")
    );
    let volumes: Vec<String> = all(&d, "VOLUME")
        .iter()
        .flat_map(|i| {
            if i.args.starts_with('[') {
                exec_form(&i.args)
            } else {
                i.args.split_whitespace().map(str::to_string).collect()
            }
        })
        .collect();
    assert!(volumes.iter().any(|v| v == "/data"), "VOLUME /data");

    let runtime = last_stage(&d);
    let user = all(&d, "USER")
        .into_iter()
        .rfind(|i| i.stage == runtime)
        .expect("USER in the runtime stage");
    let name = user.args.split(':').next().unwrap();
    assert!(name != "root" && name != "0", "USER {}", user.args);
    let setup = all(&d, "RUN")
        .into_iter()
        .filter(|i| i.stage == runtime)
        .map(|i| i.args.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        setup.contains("--uid 10001"),
        "the user {name} has uid 10001"
    );
    assert!(
        setup.contains(&format!("chown {name}:")) && setup.contains("/data"),
        "{name} owns /data"
    );
}

#[test]
fn the_healthcheck_asks_the_admin_listener() {
    let d = dockerfile();
    let health = all(&d, "HEALTHCHECK")
        .into_iter()
        .next_back()
        .expect("a HEALTHCHECK");
    let (_, command) = health
        .args
        .split_once("CMD")
        .expect("HEALTHCHECK ... CMD [...]");
    let command = exec_form(command.trim());
    let env = runtime_env(&d);
    let admin = env
        .get("HLGATE_ADMIN_LISTEN")
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:9090".into());
    match command.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        // hlgate's own probe reads HLGATE_ADMIN_LISTEN and GETs /healthz there.
        ["hlgate", "healthcheck"] => {
            let bin = env!("CARGO_BIN_EXE_hlgate");
            let help = Command::new(bin)
                .args(["healthcheck", "--help"])
                .output()
                .unwrap();
            assert!(help.status.success(), "hlgate healthcheck --help");
            // Nothing listens on the image's admin address here: the probe must fail.
            let mut probe = Command::new(bin);
            for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("HLGATE_")) {
                probe.env_remove(key);
            }
            let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let closed_addr = closed.local_addr().unwrap();
            drop(closed);
            let status = probe
                .arg("healthcheck")
                .envs(&env)
                .env("HLGATE_ADMIN_LISTEN", closed_addr.to_string())
                .output()
                .unwrap()
                .status;
            assert!(
                !status.success(),
                "healthcheck succeeded with no admin listener"
            );
        }
        _ => {
            let joined = command.join(" ");
            assert!(
                joined.contains(&format!(":{}/healthz", port(&admin))),
                "{joined} does not ask the admin listener's /healthz"
            );
        }
    }
}

#[test]
fn check_config_accepts_the_image_settings() {
    let env = runtime_env(&dockerfile());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hlgate"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("HLGATE_")) {
        cmd.env_remove(key);
    }
    let out = cmd.arg("check-config").envs(&env).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check-config failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    for (key, value) in &env {
        assert!(
            stdout.lines().any(|l| l == format!("{key}={value}")),
            "{key}={value} not in:\n{stdout}"
        );
    }
    // And the library agrees.
    let settings = Settings::load(None, &env).unwrap();
    assert_eq!(settings.store.data_dir, Path::new("/data"));
}

#[test]
fn dockerignore_keeps_build_output_and_data_out_of_the_context() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".dockerignore");
    let text = std::fs::read_to_string(path).expect(".dockerignore");
    let entries: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches('/').trim_end_matches('/'))
        .collect();
    for needed in ["target", "data", ".git"] {
        assert!(entries.contains(&needed), ".dockerignore lacks {needed}");
    }
    // What `cargo build --locked` needs must stay in the context.
    for kept in [
        "Cargo.toml",
        "Cargo.lock",
        "src",
        "schemas",
        "console",
        "build.rs",
        "benches",
    ] {
        assert!(!entries.contains(&kept), ".dockerignore drops {kept}");
    }
}

// ---- examples ---------------------------------------------------------------------------------

/// A name no other test run uses, for RabbitMQ exchanges and queues.
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}.{}.{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

#[tokio::test]
async fn the_example_consumer_acks_verified_events_and_rejects_the_rest() {
    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    use lapin::options::{
        BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    };
    use lapin::types::{AMQPValue, FieldTable, LongString};
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    let consumer = tokio::task::spawn_blocking(|| example("consumer"));

    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("signer");
    hlgate::cli::keygen(&prefix).unwrap();
    let key = std::fs::read_to_string(prefix.with_extension("key")).unwrap();
    let signer = hlgate::cli::SigningKey::from_pem(&key).unwrap();

    let unique = unique("hlgate.test.consumer");
    let url = "amqp://guest:guest@127.0.0.1:5672/%2f";
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672");
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();

    let consumer = consumer.await.unwrap();
    let command = |max: &str| {
        let mut cmd = Command::new(&consumer);
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("HLGATE_")) {
            cmd.env_remove(key);
        }
        cmd.args([
            "--queue",
            &unique,
            "--bind",
            "ContactCreate.*",
            "--max",
            max,
        ])
        .env("HLGATE_AMQP_URL", url)
        .env("HLGATE_EXCHANGE", &unique)
        .env(
            "HLGATE_ED25519_PUBLIC_KEYS",
            format!("@{}", prefix.with_extension("pub").display()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        cmd
    };
    // A first run with --max 0 only declares the exchange, the queue and the binding, so that
    // nothing published below goes to the unrouted queue.
    let declared = command("0").output().unwrap();
    assert!(
        declared.status.success(),
        "{}",
        String::from_utf8_lossy(&declared.stderr)
    );

    let body = br#"{"type":"ContactCreate","locationId":"loc1","id":"c1"}"#;
    let (_, good) = signer.sign(body);
    let (_, forged) = signer.sign(b"something else");
    let element = br#"{"type":"ContactCreate","locationId":"loc1","id":"c2"}"#;
    let sha = format!("sha256:{}", "ab".repeat(32));
    for (message_id, payload, signature) in [
        ("m-good", &body[..], good.as_str()),
        ("m-forged", &body[..], forged.as_str()),
        (&format!("{sha}/0")[..], &element[..], good.as_str()),
    ] {
        let mut headers = FieldTable::default();
        let text = |s: &str| AMQPValue::LongString(LongString::from(s));
        headers.insert("x-hl-signature".into(), text(signature));
        headers.insert("x-hl-signature-scheme".into(), text("ed25519"));
        headers.insert("x-hl-schema".into(), text("valid"));
        if message_id == "m-good" {
            headers.insert("traceparent".into(), text(TRACEPARENT));
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(message_id.into())
            .with_headers(headers);
        channel
            .basic_publish(
                unique.as_str().into(),
                "ContactCreate.loc1".into(),
                BasicPublishOptions::default(),
                payload,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let mut child = command("3").spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the consumer did not stop after --max 3");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "ack ContactCreate.loc1 message_id=m-good schema=valid signature=verified \
             trace=4bf92f3577b34da6a3ce929d0e0e4736 parent=00f067aa0ba902b7",
            "reject ContactCreate.loc1 message_id=m-forged schema=valid signature=invalid",
            &format!(
                "reject ContactCreate.loc1 message_id={sha}/0 schema=valid signature=unverifiable"
            )[..],
        ]
    );

    // Acked or rejected without requeue: nothing is left.
    let queue = channel
        .queue_declare(
            unique.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(queue.message_count(), 0);
    channel
        .queue_delete(unique.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    channel
        .exchange_delete(unique.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    let _ = connection.close(200, "bye".into()).await;
}

// ---- examples/load.rs: the figures in BENCHMARKS.md come from it, so its counts must be right --

/// The value of `name=` in the load tool's `SUMMARY` line.
fn summary_field<'a>(summary: &'a str, name: &str) -> &'a str {
    summary
        .split_whitespace()
        .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name}= in {summary:?}"))
}

/// Each `name=value` of the `SUMMARY` line as expected; the whole output on a mismatch.
fn expect_fields(stdout: &str, summary: &str, expected: &[(&str, &str)]) {
    for (field, value) in expected {
        assert_eq!(summary_field(summary, field), *value, "{field} in {stdout}");
    }
}

#[tokio::test]
async fn the_load_tool_counts_what_hlgate_accepted_refused_and_published() {
    let load = tokio::task::spawn_blocking(|| example("load"));
    let dir = tempfile::tempdir().unwrap();
    let trusted = dir.path().join("trusted");
    let stranger = dir.path().join("stranger");
    hlgate::cli::keygen(&trusted).unwrap();
    hlgate::cli::keygen(&stranger).unwrap();
    let exchange = unique("hlgate.test.load");
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (public, admin) = (free(), free());
    let mut hlgate = Command::new(env!("CARGO_BIN_EXE_hlgate"))
        .arg("serve")
        .env_clear()
        .env("HLGATE_LISTEN", public.to_string())
        .env("HLGATE_ADMIN_LISTEN", admin.to_string())
        .env("HLGATE_DATA_DIR", dir.path().join("data"))
        .env("HLGATE_EXCHANGE", &exchange)
        .env(
            "HLGATE_ED25519_PUBLIC_KEYS",
            format!("@{}", trusted.with_extension("pub").display()),
        )
        .env("HLGATE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("hlgate binary");
    // The relay declares the exchange that --bind needs once it is connected.
    let metrics = format!("http://{admin}/metrics");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let text = match reqwest::get(&metrics).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if text.lines().any(|l| l == "hlgate_broker_connected 1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "hlgate did not connect to RabbitMQ"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let load = load.await.unwrap();
    let run = |key: &Path, queue: &[&str]| {
        let out = Command::new(&load)
            .args(["--url", &format!("http://{public}/webhooks/highlevel")])
            .args(["--admin", &format!("http://{admin}")])
            .args(["--key", &key.with_extension("key").to_string_lossy()])
            .args(["--concurrency", "4", "--duration", "30", "--events", "300"])
            .args(["--size", "1500", "--drain-timeout", "30"])
            .args(["--bind", &exchange])
            .args(queue)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary = stdout
            .lines()
            .find(|l| l.starts_with("SUMMARY "))
            .unwrap_or_else(|| panic!("no SUMMARY line in {stdout}"))
            .to_string();
        (stdout, summary)
    };

    // Signed with the key hlgate trusts: every event accepted, published and in the bound queue,
    // here a lazy version-2 one (RabbitMQ refuses the declaration if it does not know them).
    let lazy = ["--queue-version", "2", "--queue-mode", "lazy"];
    let (stdout, summary) = run(&trusted, &lazy);
    assert!(stdout.contains("(version 2, lazy mode)"), "{stdout}");
    expect_fields(
        &stdout,
        &summary,
        &[
            ("c", "4"),
            ("size", "1500B"),
            ("accepted", "300"),
            ("non2xx", "0"),
            ("errors", "0"),
            ("published", "300"),
            ("queued", "300"),
        ],
    );
    assert!(summary_field(&summary, "drain").ends_with('s'), "{stdout}");
    assert!(stdout.contains("status counts: 200=300\n"), "{stdout}");

    // Signed with a key hlgate does not know: every answer a 401, counted, nothing published.
    let (stdout, summary) = run(&stranger, &[]);
    assert!(
        stdout.contains("(the broker's default version, default mode)"),
        "{stdout}"
    );
    expect_fields(
        &stdout,
        &summary,
        &[
            ("accepted", "0"),
            ("non2xx", "300"),
            ("errors", "0"),
            ("published", "0"),
            ("queued", "0"),
        ],
    );
    assert!(stdout.contains("status counts: 401=300\n"), "{stdout}");

    let _ = hlgate.kill();
    let _ = hlgate.wait();
    let deleted = Command::new(&load)
        .args(["--delete-exchange", &exchange])
        .output()
        .unwrap();
    assert!(deleted.status.success());
}
