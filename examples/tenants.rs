//! The token module at many tenants, in one process: seeds the vault of a fresh data dir with
//! N tenants whose pairs the HighLevel stand-in of the integration tests issued, starts the
//! gateway on it, and measures start-up, idle CPU, the catch-up after an outage (every token
//! due at once, each refresh answered after a delay, refresh tokens single-use) and peak RSS.
//!
//! ```text
//! cargo run --release --example tenants -- --tenants 50000 --dir "$TMPFS_DIR/hlgate-tenants"
//! ```
//!
//! Two runs in one: first every token is fresh (idle), then the vault is seeded again with
//! every token inside the refresh window (the outage) and the gateway restarted on it. CPU and
//! RSS are the whole process's, stand-in included, so they bound the gateway's from above.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hlgate::config::Settings;
use hlgate::highlevel::TenantKind;
use hlgate::oauth::{key, TokenRecord};
use hlgate::secret::Secret;
use hlgate::startup::Application;
use hlgate::store::Store;

#[allow(dead_code)]
#[path = "../tests/api/highlevel.rs"]
mod highlevel;
#[allow(dead_code)]
#[path = "../tests/api/hlapi.rs"]
mod hlapi;

const USAGE: &str = "\
usage: cargo run --release --example tenants -- [options]

  --tenants N       tenants in the vault (default 50000)
  --dir PATH        data dir to create; must not exist (default: a temp dir)
  --delay-ms MS     the stand-in answers each refresh after this long (default 200)
  --concurrency N   HLGATE_TOKEN_REFRESH_CONCURRENCY (default: hlgate's default)
  --idle-secs S     how long to measure idle CPU (default 30)
  --pad BYTES       bytes added to each issued token, for JWT-sized tokens (default 0; the stand-in keeps every token
                    it issued, so padding inflates the RSS figure with its own memory)";

struct Args {
    tenants: usize,
    dir: Option<PathBuf>,
    delay: Duration,
    concurrency: Option<String>,
    idle: Duration,
    pad: usize,
}

fn args() -> Args {
    let mut a = Args {
        tenants: 50_000,
        dir: None,
        delay: Duration::from_millis(200),
        concurrency: None,
        idle: Duration::from_secs(30),
        pad: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| panic!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--tenants" => a.tenants = value().parse().expect("--tenants"),
            "--dir" => a.dir = Some(PathBuf::from(value())),
            "--delay-ms" => a.delay = Duration::from_millis(value().parse().expect("--delay-ms")),
            "--concurrency" => a.concurrency = Some(value()),
            "--idle-secs" => a.idle = Duration::from_secs(value().parse().expect("--idle-secs")),
            "--pad" => a.pad = value().parse().expect("--pad"),
            _ => panic!("{USAGE}"),
        }
    }
    a
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// CPU seconds (user + system) this process has used, from /proc/self/stat.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// A /proc/self/status line's kB value (VmHWM: peak RSS; VmRSS: now).
fn status_kb(name: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(name)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Writes `n` active tenants expiring at `expires_at` into `dir`'s vault.
fn seed(standin: &highlevel::StandIn, dir: &Path, n: usize, expires_at: i64) {
    let store = Store::open(dir, Duration::from_secs(3600)).unwrap();
    let checks = store.keyed_tree(key::KEY_CHECK_TREE).unwrap();
    let vault = key::open_vault(store.keyed_tree("tokens").unwrap(), &checks, None, dir).unwrap();
    for i in 0..n {
        let tenant = format!("loc{i:06}");
        let (access, refresh) = standin.grant(&tenant, "Location");
        let (access, refresh) = (Secret::new(access), Some(Secret::new(refresh)));
        let expires_at = expires_at + (i % 600) as i64;
        let record =
            TokenRecord::active(&tenant, TenantKind::Location, access, refresh, expires_at);
        vault
            .put(&TokenRecord {
                scope: Some("contacts.readonly locations.readonly".into()),
                location_id: Some(tenant),
                ..record
            })
            .unwrap();
    }
}

/// Builds the gateway on `dir` (retrying while the seeding store lets go of its lock) and
/// returns it with how long the build took.
async fn build(env: &HashMap<String, String>) -> (Application, Duration) {
    let settings = Settings::load(None, env).expect("settings");
    loop {
        let start = Instant::now();
        match Application::build(settings.clone()).await {
            Ok(app) => return (app, start.elapsed()),
            Err(e) if e.to_string().contains("lock") => {}
            Err(e) => panic!("build: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run(a: &Args, standin: &highlevel::StandIn, dir: &Path, expires_at: i64) -> Application {
    let seeding = Instant::now();
    seed(standin, dir, a.tenants, expires_at);
    println!(
        "seeded {} tenants in {:.1} s",
        a.tenants,
        seeding.elapsed().as_secs_f64()
    );
    let mut env: HashMap<String, String> = standin
        .settings()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    for (k, v) in [
        ("HLGATE_DATA_DIR", dir.display().to_string()),
        ("HLGATE_LISTEN", "127.0.0.1:0".into()),
        ("HLGATE_ADMIN_LISTEN", "127.0.0.1:0".into()),
        ("HLGATE_TOKEN_REFRESH_BEFORE", "1h".into()),
        ("HLGATE_LOG", "warn".into()),
    ] {
        env.insert(k.into(), v);
    }
    if let Some(c) = &a.concurrency {
        env.insert("HLGATE_TOKEN_REFRESH_CONCURRENCY".into(), c.clone());
    }
    let (app, took) = build(&env).await;
    println!("start-up (Application::build): {} ms", took.as_millis());
    app
}

#[tokio::main]
async fn main() {
    let a = args();
    let root = match &a.dir {
        Some(d) => d.clone(),
        None => tempfile::tempdir().unwrap().keep(),
    };
    let standin = highlevel::StandIn::start().await;
    standin.with(|s| s.pad = a.pad);

    // Idle: every token fresh for a day.
    let app = run(&a, &standin, &root.join("idle"), now() + 86_000).await;
    let stop = app.shutdown_token();
    let running = tokio::spawn(app.run());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (cpu, wall) = (cpu_secs(), Instant::now());
    tokio::time::sleep(a.idle).await;
    let share = (cpu_secs() - cpu) / wall.elapsed().as_secs_f64();
    println!(
        "idle CPU: {:.2} % of a core over {} s",
        share * 100.0,
        a.idle.as_secs()
    );
    stop.cancel();
    running.await.unwrap();

    // The outage: every token inside the refresh window at once.
    standin.with(|s| s.refresh_delay = Some(a.delay));
    let calls = standin.with(|s| s.refresh_calls);
    let app = run(&a, &standin, &root.join("outage"), now() + 1800).await;
    let start = Instant::now();
    let stop = app.shutdown_token();
    let running = tokio::spawn(app.run());
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let done = standin.with(|s| s.refresh_calls) - calls;
        if done >= a.tenants {
            break;
        }
        if start.elapsed().as_secs() % 30 == 0 {
            println!("  {done} refreshed after {} s", start.elapsed().as_secs());
        }
    }
    let took = start.elapsed().as_secs_f64();
    let (most, reused) = standin.with(|s| (s.max_refreshes_in_flight, s.reused_refresh_tokens));
    println!(
        "catch-up: {} refreshes in {took:.0} s ({:.0}/s), at most {most} in flight, {reused} refresh tokens used twice",
        a.tenants,
        a.tenants as f64 / took
    );
    println!(
        "peak RSS: {} MB (now {} MB)",
        status_kb("VmHWM") / 1024,
        status_kb("VmRSS") / 1024
    );
    stop.cancel();
    running.await.unwrap();
    if a.dir.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
}
