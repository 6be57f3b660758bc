//! `GET /v1/tenants` page by page: every tenant once and in order, the limit's bounds, the state
//! filter, refused parameters, and never a token. `hlgate tenants` following the pages is in `cli`.

use std::collections::BTreeMap;
use std::path::Path;

use hlgate::highlevel::TenantKind;
use hlgate::oauth::key::{open_vault, KEY_CHECK_TREE};
use hlgate::oauth::{PendingInstall, TenantState, TokenRecord};
use hlgate::secret::Secret;
use hlgate::store::Store;
use serde_json::Value;

use crate::helpers::*;

/// Tenants by id and the state each was seeded with.
pub(crate) type Seeded = BTreeMap<String, &'static str>;

/// The tenant that cannot be decrypted: listed as `needs_reauth`.
const BROKEN: &str = "t-broken";

/// Writes `n` tenants (every state in turn, ids not in insertion order, tokens containing
/// `secret`), one record that does not decrypt and one waiting INSTALL into the data dir of a
/// gateway not yet started; the generated key file is the one the gateway then loads.
pub(crate) fn seed(data_dir: &Path, n: usize) -> Seeded {
    let store = Store::open(data_dir, std::time::Duration::from_secs(3600)).unwrap();
    let tree = store.keyed_tree("tokens").unwrap();
    let checks = store.keyed_tree(KEY_CHECK_TREE).unwrap();
    let vault = open_vault(tree.clone(), &checks, None, data_dir).unwrap();
    let far = time::OffsetDateTime::now_utc().unix_timestamp() + 86_400;
    let mut seeded = Seeded::new();
    for i in 0..n {
        let tenant = format!("t{}", (i * 7919) % 100_003);
        let state = TenantState::ALL[i % TenantState::ALL.len()];
        let private = state == TenantState::Private;
        vault
            .put(&TokenRecord {
                tenant: tenant.clone(),
                user_type: TenantKind::Location,
                access_token: Secret::new(format!("at-secret-{i}")),
                refresh_token: (!private).then(|| Secret::new(format!("rt-secret-{i}"))),
                expires_at: (!private).then_some(far),
                scope: None,
                location_id: Some(tenant.clone()),
                company_id: None,
                state,
                last_error: None,
                attempts: 0,
                retry_at: 0,
                updated_at: 1,
            })
            .unwrap();
        seeded.insert(tenant, state.as_str());
    }
    tree.put(BROKEN, b"not a sealed record").unwrap();
    seeded.insert(BROKEN.into(), "needs_reauth");
    let pending = PendingInstall {
        location_id: "locWaiting".into(),
        company_id: "coWaiting".into(),
        attempts: 0,
        retry_at: far,
    };
    let installs = store.keyed_tree("installs").unwrap();
    installs
        .put("locWaiting", &serde_json::to_vec(&pending).unwrap())
        .unwrap();
    drop((store, tree, checks, vault, installs));
    wait_unlocked(data_dir);
    seeded
}

/// An app (no client credentials, so nothing refreshes) over a seeded data dir.
async fn seeded_app(n: usize) -> (TestApp, Seeded) {
    let dir = tempfile::tempdir().unwrap();
    let seeded = seed(dir.path(), n);
    let exchange = unique("test.pages");
    let (ed, rsa) = (Signer::ed25519(), Signer::rsa());
    let env = base_env(dir.path(), &exchange, &ed, &rsa);
    (start(dir, exchange, ed, rsa, env).await, seeded)
}

async fn page(app: &TestApp, query: &str) -> (u16, Value, String) {
    let r = app.admin_get(&format!("/v1/tenants?{query}")).await;
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, body, text)
}

/// Follows the cursor from the start; the pages as they came.
async fn walk(app: &TestApp, query: &str) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut after = String::new();
    loop {
        let (status, body, text) = page(app, &format!("{query}{after}")).await;
        assert_eq!(status, 200, "{text}");
        assert!(!text.contains("secret"), "a token in a page: {text}");
        let next = body["next"].clone();
        pages.push(body);
        match next.as_str() {
            Some(tenant) => after = format!("&after={tenant}"),
            None => return pages,
        }
        assert!(pages.len() < 1000, "the cursor does not end");
    }
}

fn ids(pages: &[Value]) -> Vec<String> {
    pages
        .iter()
        .flat_map(|p| p["tenants"].as_array().unwrap().clone())
        .map(|t| t["tenant"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn pages_give_every_tenant_once_in_order_and_never_a_token() {
    let (app, seeded) = seeded_app(300).await;
    let pages = walk(&app, "limit=37").await;
    assert_eq!(pages.len(), seeded.len().div_ceil(37));
    for p in &pages[..pages.len() - 1] {
        assert_eq!(p["tenants"].as_array().unwrap().len(), 37);
    }
    // Tenant-id order is byte order: the same as the sorted ids.
    let expected: Vec<String> = seeded.keys().cloned().collect();
    assert_eq!(ids(&pages), expected);
    // The waiting INSTALLs come with the first page only.
    assert_eq!(pages[0]["pending_installs"][0]["location_id"], "locWaiting");
    assert!(pages[1..]
        .iter()
        .all(|p| p["pending_installs"] == serde_json::json!([])));
    for p in &pages {
        for t in p["tenants"].as_array().unwrap() {
            let tenant = t["tenant"].as_str().unwrap();
            assert_eq!(t["state"], seeded[tenant], "{t}");
        }
    }
    let broken = pages
        .iter()
        .flat_map(|p| p["tenants"].as_array().unwrap().clone())
        .find(|t| t["tenant"] == BROKEN)
        .unwrap();
    assert_eq!(broken["last_error"], "the record cannot be decrypted");

    // A cursor that names no tenant still starts right after where it would be.
    let (_, body, _) = page(&app, "limit=2&after=t1").await;
    let after_t1: Vec<&String> = expected.iter().filter(|t| t.as_str() > "t1").collect();
    assert_eq!(body["tenants"][0]["tenant"], after_t1[0].as_str());
    let last = expected.last().unwrap();
    let (_, body, _) = page(&app, &format!("after={last}")).await;
    assert_eq!(body["tenants"], serde_json::json!([]));
    assert_eq!(body["next"], Value::Null);
}

#[tokio::test]
async fn the_limit_has_a_default_and_a_maximum() {
    let (app, seeded) = seeded_app(40).await;
    // Under the default, one page is today's answer plus a cursor that says it is all.
    let r = app.admin_get("/v1/tenants").await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["tenants"].as_array().unwrap().len(), seeded.len());
    assert!(body["pending_installs"].is_array());
    assert_eq!(body["next"], Value::Null);
    let (status, body, _) = page(&app, "limit=5000").await;
    assert_eq!((status, body["next"].clone()), (200, Value::Null));
    // A full page gives a cursor only when a tenant follows it.
    let (_, body, _) = page(&app, &format!("limit={}", seeded.len())).await;
    assert_eq!(body["next"], Value::Null);
    let (_, body, _) = page(&app, &format!("limit={}", seeded.len() - 1)).await;
    assert_eq!(body["tenants"].as_array().unwrap().len(), seeded.len() - 1);
    assert_eq!(body["next"], body["tenants"][seeded.len() - 2]["tenant"]);
    let (_, body, _) = page(&app, "limit=1").await;
    assert_eq!(body["tenants"].as_array().unwrap().len(), 1);
    assert_eq!(body["next"], body["tenants"][0]["tenant"]);
}

#[tokio::test]
async fn the_state_filter_walks_one_state_only() {
    let (app, seeded) = seeded_app(120).await;
    let mut total = 0;
    for state in ["active", "inactive", "needs_reauth", "private"] {
        let pages = walk(&app, &format!("limit=7&state={state}")).await;
        for p in &pages {
            let tenants = p["tenants"].as_array().unwrap();
            assert!(tenants.len() <= 7);
            assert!(tenants.iter().all(|t| t["state"] == state), "{p}");
        }
        let expected: Vec<String> = seeded
            .iter()
            .filter(|(_, s)| **s == state)
            .map(|(t, _)| t.clone())
            .collect();
        assert_eq!(ids(&pages), expected, "{state}");
        total += expected.len();
    }
    assert_eq!(total, seeded.len());
}

#[tokio::test]
async fn bad_parameters_are_refused_by_name() {
    let (app, _) = seeded_app(3).await;
    for (query, named) in [
        ("limit=0", "limit"),
        ("limit=5001", "limit"),
        ("limit=-1", "limit"),
        ("limit=ten", "limit"),
        ("limit=", "limit"),
        ("state=expired", "state"),
        ("state=Active", "state"),
        ("after=", "after"),
        ("limt=5", "limt"),
    ] {
        let (status, body, text) = page(&app, query).await;
        assert_eq!(status, 400, "{query}: {text}");
        assert_eq!(body["error"], "bad_request", "{query}: {text}");
        assert!(
            body["message"].as_str().unwrap().contains(named),
            "{query}: {text}"
        );
    }
}
