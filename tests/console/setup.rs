//! What the console's tests set up besides the browser: the app on a clock the test moves,
//! traffic over 72 hours with known counts, and tenants written into a data dir.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use hlgate::config::Settings;
use hlgate::health::ManualClock;
use hlgate::highlevel::TenantKind;
use hlgate::oauth::key::{open_vault, KEY_CHECK_TREE};
use hlgate::oauth::{TenantState, TokenRecord};
use hlgate::secret::Secret;
use hlgate::startup::Application;

use crate::helpers::*;

/// The app over `dir` with the base settings plus `overrides`, delivery health on `clock`.
pub async fn app_on(
    dir: tempfile::TempDir,
    overrides: &[(&str, &str)],
    clock: Option<&ManualClock>,
) -> TestApp {
    let exchange = unique("test.console");
    let (ed, rsa) = (Signer::ed25519(), Signer::rsa());
    let mut env: HashMap<String, String> = base_env(dir.path(), &exchange, &ed, &rsa);
    for (k, v) in overrides {
        env.insert(k.to_string(), v.to_string());
    }
    let Some(clock) = clock else {
        return start(dir, exchange, ed, rsa, env).await;
    };
    let admin_token = env.get("HLGATE_ADMIN_TOKEN").cloned();
    let settings = Settings::load(None, &env).expect("test settings");
    let app = Application::build_with_clock(settings, clock.clock())
        .await
        .expect("app builds");
    let shutdown = app.shutdown_token();
    let (addr, admin) = (app.public_addr(), app.admin_addr());
    tokio::spawn(app.run());
    TestApp {
        addr,
        admin,
        exchange,
        _dir: dir,
        ed,
        rsa,
        http: reqwest::Client::new(),
        shutdown,
        admin_token,
    }
}

/// What one window of the overview should show.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub accepted: u64,
    pub duplicate: u64,
    pub failed: u64,
}

impl Counts {
    pub fn attempts(&self) -> u64 {
        self.accepted + self.duplicate + self.failed
    }
}

/// Counts for the 1 h, 24 h and 72 h windows.
pub type Windows = [Counts; 3];

async fn post_hour(app: &TestApp, accepted: u64, duplicates: u64, forged: u64) -> Counts {
    let mut first = None;
    for _ in 0..accepted {
        let (_, body) = contact_event("loc-traffic");
        assert_eq!(app.post_signed(&body).await.status(), 200);
        first.get_or_insert(body);
    }
    for _ in 0..duplicates {
        let body = first.as_ref().expect("a duplicate of an accepted event");
        assert_eq!(app.post_signed(body).await.status(), 200);
    }
    let forger = Signer::ed25519();
    for _ in 0..forged {
        let (_, body) = contact_event("loc-traffic");
        let (header, sig) = forger.sign(&body);
        assert_eq!(
            app.post(&body, &[(header, sig.as_str())]).await.status(),
            401
        );
    }
    // Counts go to the minute they are taken in: take them before the clock moves.
    let r = app.admin_get("/v1/health").await;
    assert_eq!(r.status(), 200);
    Counts {
        accepted,
        duplicate: duplicates,
        failed: forged,
    }
}

fn add(into: &mut Counts, c: Counts) {
    into.accepted += c.accepted;
    into.duplicate += c.duplicate;
    into.failed += c.failed;
}

/// 71 hours of traffic an hour apart (hours 0 to 70, a dip below 90 % around hour 40), then
/// in hour 71 six posts five minutes apart; the clock ends 71 h 30 m after it started.
pub async fn traffic(app: &TestApp, clock: &ManualClock) -> Windows {
    let mut windows = Windows::default();
    for hour in 0..71u64 {
        if hour > 0 {
            clock.advance(Duration::from_secs(3600));
        }
        let forged = match hour {
            38..=41 => 2,
            h if h % 9 == 0 => 1,
            _ => 0,
        };
        let c = post_hour(app, 2 + hour % 3, u64::from(hour % 5 == 0), forged).await;
        // The 24 h window starts 31 minutes past hour 47: it holds hours 48 on.
        if hour >= 48 {
            add(&mut windows[1], c);
        }
        add(&mut windows[2], c);
    }
    // The 1 h window starts 31 minutes past hour 70: only these.
    clock.advance(Duration::from_secs(3600));
    for k in 0..6u64 {
        clock.advance(Duration::from_secs(5 * 60));
        let c = post_hour(app, 1 + k % 3, u64::from(k == 2), u64::from(k == 4)).await;
        for w in &mut windows {
            add(w, c);
        }
    }
    windows
}

/// Writes tenants into the vault of `data_dir` (before the gateway starts): `(id, state,
/// last_error)`.
pub fn seed_tenants(data_dir: &Path, tenants: &[(&str, TenantState, Option<&str>)]) {
    let store = hlgate::store::Store::open(data_dir, Duration::from_secs(3600)).unwrap();
    let tree = store.keyed_tree("tokens").unwrap();
    let checks = store.keyed_tree(KEY_CHECK_TREE).unwrap();
    let vault = open_vault(tree.clone(), &checks, None, data_dir).unwrap();
    let far = time::OffsetDateTime::now_utc().unix_timestamp() + 86_400;
    for (i, (tenant, state, last_error)) in tenants.iter().enumerate() {
        vault
            .put(&TokenRecord {
                tenant: tenant.to_string(),
                user_type: TenantKind::Location,
                access_token: Secret::new(format!("at-secret-{i}")),
                refresh_token: Some(Secret::new(format!("rt-secret-{i}"))),
                expires_at: Some(far),
                scope: None,
                location_id: Some(tenant.to_string()),
                company_id: None,
                state: *state,
                last_error: last_error.map(str::to_string),
                attempts: 0,
                retry_at: 0,
                updated_at: 1,
            })
            .unwrap();
    }
    drop((store, tree, checks, vault));
    wait_unlocked(data_dir);
}
