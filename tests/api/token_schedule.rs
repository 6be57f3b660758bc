//! The refresh schedule with a few hundred tenants seeded into the vault before the gateway
//! starts: soonest expiry first, never more refreshes at once than the setting allows, no
//! refresh token spent twice, `hlgate_tenants` exact without listing the vault, and a refresh
//! a crash cut short asked again first.

use std::path::Path;
use std::time::Duration;

use hlgate::highlevel::TenantKind;
use hlgate::oauth::{key, TenantState, TokenRecord};
use hlgate::secret::Secret;
use hlgate::store::Store;

use crate::durability::spawn_process;
use crate::helpers::*;
use crate::highlevel::StandIn;
use crate::tokens::{eventually, install, process_env_with};

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A record as the gateway would have stored it, its pair issued by `standin`.
fn seeded(standin: &StandIn, tenant: &str, expires_at: i64) -> TokenRecord {
    let (access, refresh) = standin.grant(tenant, "Location");
    let (access, refresh) = (Secret::new(access), Some(Secret::new(refresh)));
    TokenRecord {
        location_id: Some(tenant.into()),
        ..TokenRecord::active(tenant, TenantKind::Location, access, refresh, expires_at)
    }
}

/// Writes `records` (and `garbage` raw bytes under their tenants) into `dir`'s vault.
fn seed(dir: &Path, records: &[TokenRecord], garbage: &[&str]) {
    let store = Store::open(dir, Duration::from_secs(3600)).unwrap();
    let tree = store.keyed_tree("tokens").unwrap();
    let checks = store.keyed_tree(key::KEY_CHECK_TREE).unwrap();
    let vault = key::open_vault(tree.clone(), &checks, None, dir).unwrap();
    for record in records {
        vault.put(record).unwrap();
    }
    for tenant in garbage {
        tree.put(tenant, b"not a sealed record").unwrap();
    }
}

/// The gateway on a data dir seeded with `records`, pointed at `standin`.
async fn seeded_app(
    standin: &StandIn,
    records: &[TokenRecord],
    garbage: &[&str],
    extra: &[(&str, &str)],
) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path(), records, garbage);
    let exchange = unique("test.schedule");
    let (ed, rsa) = (Signer::ed25519(), Signer::rsa());
    let mut env = base_env(dir.path(), &exchange, &ed, &rsa);
    env.extend(standin.settings().into_iter().map(|(k, v)| (k.into(), v)));
    env.insert("HLGATE_TOKEN_REFRESH_BEFORE".into(), "1h".into());
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    wait_unlocked(dir.path());
    start(dir, exchange, ed, rsa, env).await
}

/// The gateway refreshing one tenant at a time, on a vault seeded with `records`.
async fn one_at_a_time(standin: &StandIn, records: &[TokenRecord]) -> TestApp {
    let one = [("HLGATE_TOKEN_REFRESH_CONCURRENCY", "1")];
    seeded_app(standin, records, &[], &one).await
}

/// The tenant each presented refresh token belonged to, in the order presented.
fn refreshed_tenants(standin: &StandIn) -> Vec<String> {
    standin.with(|s| {
        s.refresh_tokens_seen
            .iter()
            .map(|t| t.splitn(3, '-').nth(2).unwrap().to_string())
            .collect()
    })
}

async fn refreshes_reach(standin: &StandIn, n: usize) {
    eventually(&format!("{n} refreshes"), || async {
        standin.with(|s| s.refresh_calls) >= n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_tenants_are_refreshed_soonest_expiry_first_each_once() {
    let standin = StandIn::start().await;
    let base = now() + 600;
    // Expiries in a shuffled order, all inside the one-hour refresh window.
    let records: Vec<_> = (0..200)
        .map(|i| seeded(&standin, &format!("loc{i:03}"), base + (i * 37 % 200) * 5))
        .collect();
    let app = one_at_a_time(&standin, &records).await;
    refreshes_reach(&standin, 200).await;
    let mut by_expiry = records.clone();
    by_expiry.sort_by_key(|r| r.expires_at);
    let expected: Vec<_> = by_expiry.iter().map(|r| r.tenant.clone()).collect();
    assert_eq!(refreshed_tenants(&standin), expected);
    // Fresh pairs stored: nothing more is due, nothing was spent twice.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        standin.with(|s| (s.refresh_calls, s.reused_refresh_tokens)),
        (200, 0)
    );
    let m = app.metrics_text().await;
    assert_eq!(metric(&m, "hlgate_tenants{state=\"active\"}"), 200.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_run_concurrently_within_the_bound_and_spend_each_token_once() {
    let standin = StandIn::start().await;
    standin.with(|s| s.refresh_delay = Some(Duration::from_millis(30)));
    let soon = now() + 900;
    let mut records: Vec<_> = (0..300)
        .map(|i| seeded(&standin, &format!("due{i:03}"), soon + i))
        .collect();
    let idle = (0..20).map(|i| seeded(&standin, &format!("idle{i}"), now() + 86_000));
    records.extend(idle);
    let mut inactive = seeded(&standin, "paused", soon);
    (inactive.state, inactive.retry_at) = (TenantState::Inactive, now() + 86_000);
    let mut lost = seeded(&standin, "lost", soon);
    lost.state = TenantState::NeedsReauth;
    let mut private = seeded(&standin, "pit", 0);
    (private.state, private.expires_at, private.refresh_token) = (TenantState::Private, None, None);
    records.extend([inactive, lost, private]);
    let app = seeded_app(
        &standin,
        &records,
        &["unreadable"],
        &[("HLGATE_TOKEN_REFRESH_CONCURRENCY", "8")],
    )
    .await;
    // Counted from the index as soon as the gateway is up, before any refresh.
    let m = app.metrics_text().await;
    for (state, n) in [
        ("active", 320.0),
        ("inactive", 1.0),
        ("needs_reauth", 2.0),
        ("private", 1.0),
    ] {
        assert_eq!(
            metric(&m, &format!("hlgate_tenants{{state=\"{state}\"}}")),
            n,
            "{state}"
        );
    }
    refreshes_reach(&standin, 300).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (calls, most, reused) = standin.with(|s| {
        (
            s.refresh_calls,
            s.max_refreshes_in_flight,
            s.reused_refresh_tokens,
        )
    });
    assert_eq!((calls, reused), (300, 0));
    assert!(
        (2..=8).contains(&most),
        "{most} refreshes in flight at once"
    );
    let mut refreshed = refreshed_tenants(&standin);
    refreshed.sort();
    refreshed.dedup();
    assert_eq!(refreshed.len(), 300, "each due tenant refreshed once");
    let m = app.metrics_text().await;
    assert_eq!(metric(&m, "hlgate_tenants{state=\"active\"}"), 320.0);
    assert_eq!(metric(&m, "hlgate_tenants{state=\"needs_reauth\"}"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_would_expire_before_its_turn_goes_first() {
    let standin = StandIn::start().await;
    standin.with(|s| s.refresh_delay = Some(Duration::from_millis(100)));
    let records: Vec<_> = (0..60)
        .map(|i| seeded(&standin, &format!("queued{i:02}"), now() + 1800 + i))
        .collect();
    let app = one_at_a_time(&standin, &records).await;
    refreshes_reach(&standin, 2).await;
    // A new install whose token expires long before the queued ones.
    standin.with(|s| s.expires_in = 120);
    install(&app, &standin, "urgent", "Location").await;
    standin.with(|s| s.expires_in = 86_399);
    let queued_before = standin.with(|s| s.refreshes_begun);
    refreshes_reach(&standin, 61).await;
    let order = refreshed_tenants(&standin);
    let at = order
        .iter()
        .position(|t| t == "urgent")
        .expect("urgent refreshed");
    // At most the refresh already in flight (and one picked as it was stored) went before it.
    assert!(
        at <= queued_before + 1,
        "urgent refreshed {at}th, after {queued_before}"
    );
    assert_eq!(standin.with(|s| s.reused_refresh_tokens), 0);
}

// Two threads: the stand-in must answer while this test waits for the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_a_crash_cut_short_is_asked_again_first_within_the_grace() {
    let standin = StandIn::start().await;
    standin.with(|s| s.grace = Some(Duration::from_secs(30)));
    // Ten tenants expiring within the hour, and one after all of them.
    let mut records: Vec<_> = (0..10)
        .map(|i| seeded(&standin, &format!("early{i}"), now() + 1200 + i))
        .collect();
    records.push(seeded(&standin, "late", now() + 3000));
    let (dir, mut env) = process_env_with(&standin, "test.resume");
    let data = dir.path().join("data");
    seed(&data, &records, &[]);
    wait_unlocked(&data);
    env.insert("HLGATE_TOKEN_REFRESH_CONCURRENCY".into(), "1".into());

    // Nothing is due for the schedule; a token asked for with an hour to live refreshes "late",
    // and the gateway dies after HighLevel spent its refresh token, before the answer is back.
    env.insert("HLGATE_TOKEN_REFRESH_BEFORE".into(), "1m".into());
    env.insert("HLGATE_TOKEN_MIN_TTL".into(), "1h".into());
    let process = spawn_process(&env, std::process::Stdio::null());
    process.wait_ready().await;
    standin.with(|s| s.answer_delay = Some(Duration::from_secs(60)));
    let asked = tokio::spawn(reqwest::get(format!(
        "http://{}/v1/tokens/late",
        process.admin
    )));
    refreshes_reach(&standin, 1).await;
    process.signal("KILL");
    let mut process = process;
    process.child.wait().unwrap();
    asked.abort();
    standin.with(|s| s.answer_delay = None);
    let spent = standin.with(|s| s.refresh_tokens_seen.clone());
    assert_eq!(refreshed_tenants(&standin), ["late"]);

    // Restarted with every tenant due: "late" goes first, its spent token answered in the grace.
    env.insert("HLGATE_TOKEN_REFRESH_BEFORE".into(), "1h".into());
    env.remove("HLGATE_TOKEN_MIN_TTL");
    let process = spawn_process(&env, std::process::Stdio::null());
    process.wait_ready().await;
    refreshes_reach(&standin, 12).await;
    let order = refreshed_tenants(&standin);
    let mut expected = vec!["late".to_string(), "late".to_string()];
    expected.extend((0..10).map(|i| format!("early{i}")));
    assert_eq!(order, expected);
    assert_eq!(standin.with(|s| s.refresh_tokens_seen[1].clone()), spent[0]);
    assert_eq!(
        standin.with(|s| (s.grace_answers, s.reused_refresh_tokens)),
        (1, 0)
    );
    // The pair HighLevel gave before the crash is the one stored and served.
    let r = reqwest::get(format!("http://{}/v1/tokens/late", process.admin))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        token["access_token"],
        standin.with(|s| s.current["late"].clone())
    );
}
