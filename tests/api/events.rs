//! Event lookup and single replay (`GET /v1/events`, `GET /v1/events/{seq}`,
//! `POST /v1/events/{seq}/replay`): every filter, paging, each state through the real broker
//! and a real damaged data dir, the redrive of a quarantined event, and no token anywhere.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::durability::{process_env, spawn_process, Proxy};
use crate::helpers::*;
use crate::nacks::{delete_queue, full_queue};

fn body(location: &str, kind: &str, id: &str, extra: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": kind, "locationId": location, "webhookId": id, "note": extra,
    }))
    .unwrap()
}

/// Posts an event; its dedup key (the webhook id).
async fn post(app: &TestApp, location: &str, kind: &str, extra: &str) -> String {
    let id = unique("wh");
    let r = app.post_signed(&body(location, kind, &id, extra)).await;
    assert_eq!(r.status(), 200);
    id
}

async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    json(app.admin_get(path).await).await
}

async fn list(app: &TestApp, query: &str) -> Vec<Value> {
    let (status, page) = get(app, &format!("/v1/events?{query}")).await;
    assert_eq!(status, 200, "{page}");
    page["events"].as_array().unwrap().clone()
}

fn keys(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_string())
        .collect()
}

/// Every page of `query`, `limit` at a time.
async fn walk(app: &TestApp, query: &str, limit: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = String::new();
    for _ in 0..100 {
        let (status, page) = get(app, &format!("/v1/events?{query}&limit={limit}{after}")).await;
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().unwrap();
        assert!(events.len() <= limit);
        out.extend(events.iter().cloned());
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => return out,
        }
    }
    panic!("paging never ended");
}

/// `check` holds for the event the query finds first (a hang guard only).
async fn eventually(app: &TestApp, query: &str, check: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..400 {
        if let Some(e) = list(app, query).await.into_iter().find(|e| check(e)) {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never found for {query}: {:?}", list(app, query).await);
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    let text = t
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    text.replace('+', "%2B")
}

#[tokio::test]
async fn lookups_by_key_webhook_id_tenant_type_window_and_body() {
    let app = spawn_app().await;
    let before = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    let a1 = post(&app, "locA", "ContactCreate", "apple").await;
    let b1 = post(&app, "locB", "ContactCreate", "banana").await;
    let a2 = post(&app, "locA", "NoteCreate", "cherry").await;
    app.wait_drained().await;
    let after = time::OffsetDateTime::now_utc() + time::Duration::seconds(1);

    let found = list(&app, &format!("key={a1}")).await;
    assert_eq!(keys(&found), [a1.as_str()]);
    let e = &found[0];
    assert_eq!(
        (e["type"].as_str(), e["tenant"].as_str()),
        (Some("ContactCreate"), Some("locA"))
    );
    assert_eq!(e["webhook_id"], a1.as_str());
    assert_eq!(e["signature_scheme"], "ed25519");
    assert_eq!(e["signature_form"], "raw");
    assert!(e["schema"].as_str().is_some());
    assert_eq!(e["size"], body("locA", "ContactCreate", &a1, "apple").len());
    assert_eq!(e["state"], "published");
    assert!(e["received_at"].as_str().unwrap().ends_with('Z'));
    assert!(e["published_at"].as_str().is_some(), "{e}");
    assert_eq!(
        keys(&list(&app, &format!("webhook_id={b1}")).await),
        [b1.as_str()]
    );
    assert!(list(&app, "key=nothing-like-it").await.is_empty());

    // Newest first unless asked otherwise.
    assert_eq!(
        keys(&list(&app, "tenant=locA").await),
        [a2.as_str(), a1.as_str()]
    );
    assert_eq!(
        keys(&list(&app, "tenant=locA&order=asc").await),
        [a1.as_str(), a2.as_str()]
    );
    assert_eq!(
        keys(&list(&app, "type=ContactCreate").await),
        [b1.as_str(), a1.as_str()]
    );
    assert_eq!(
        keys(&list(&app, "tenant=locA&type=NoteCreate").await),
        [a2.as_str()]
    );
    assert!(list(&app, "tenant=locZ").await.is_empty());

    let window = format!("since={}&until={}", rfc3339(before), rfc3339(after));
    assert_eq!(list(&app, &window).await.len(), 3);
    let past = format!(
        "since={}&until={}",
        rfc3339(before - time::Duration::hours(2)),
        rfc3339(before - time::Duration::hours(1))
    );
    assert!(list(&app, &past).await.is_empty());
    assert_eq!(
        keys(&list(&app, &format!("q=banan&{window}")).await),
        [b1.as_str()]
    );
    assert_eq!(
        keys(&list(&app, "q=cherry&tenant=locA").await),
        [a2.as_str()]
    );
    assert!(list(&app, "q=cherry&tenant=locB").await.is_empty());
    assert_eq!(list(&app, "state=published").await.len(), 3);
    assert!(list(&app, "state=pending").await.is_empty());
}

#[tokio::test]
async fn paging_walks_every_match_once_and_in_order_across_sealed_segments() {
    // Buckets of 2 s: a pause seals the first segment and its index file is written.
    let app = spawn_app_with(&[("HLGATE_DEDUP_RETENTION", "8s")]).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(post(&app, "locPage", "ContactCreate", &format!("n{i}")).await);
        post(&app, "locOther", "ContactCreate", "x").await;
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for i in 12..20 {
        ids.push(post(&app, "locPage", "ContactCreate", &format!("n{i}")).await);
    }
    let index = app._dir.path().join("events/00000000000000000001/index");
    for _ in 0..100 {
        if index.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(index.exists(), "the sealed segment has its index file");

    let newest_first = walk(&app, "tenant=locPage", 7).await;
    let seqs: Vec<u64> = newest_first
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "{seqs:?}");
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(keys(&newest_first), expected);
    let oldest_first = walk(&app, "tenant=locPage&order=asc", 3).await;
    assert_eq!(keys(&oldest_first), ids);
    // Everything, once.
    let all = walk(&app, "", 9).await;
    let distinct: HashSet<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!((all.len(), distinct.len()), (32, 32));

    // A cursor is bound to its order.
    let (_, page) = get(&app, "/v1/events?tenant=locPage&limit=2").await;
    let next = page["next"].as_str().unwrap();
    let (status, err) = get(
        &app,
        &format!("/v1/events?tenant=locPage&order=asc&after={next}"),
    )
    .await;
    assert_eq!((status, err["error"].as_str()), (400, Some("bad_request")));
}

#[tokio::test]
async fn one_event_shows_its_body_and_message_and_never_a_token() {
    let app = spawn_app_with(&[
        ("HLGATE_ATTACH_TOKENS", "true"),
        (
            "HLGATE_TOKEN_KEY",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        ),
    ])
    .await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let put = app
        .http
        .put(app.admin_url("/v1/tenants/locTok/private-token"))
        .json(&json!({"token": "pit-lookup-secret"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 204);
    let id = post(&app, "locTok", "ContactCreate", "hello").await;
    // The message carries the token; the lookup never does.
    let d = tap.take(1).await;
    assert_eq!(
        header(&d[0], "x-hl-access-token").as_deref(),
        Some("pit-lookup-secret")
    );
    let seq = list(&app, &format!("key={id}")).await[0]["seq"]
        .as_u64()
        .unwrap();
    let r = app.admin_get(&format!("/v1/events/{seq}")).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        !text.contains("pit-lookup-secret") && !text.contains("x-hl-access-token"),
        "{text}"
    );
    let e: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(e["body"]["note"], "hello");
    assert_eq!(e["routing_key"], "ContactCreate.locTok");
    assert_eq!(e["headers"]["x-hl-webhook-id"], id.as_str());
    assert_eq!(e["headers"]["x-hl-sequence"], seq);
    assert_eq!(e["properties"]["message_id"], id.as_str());
    for listing in [format!("key={id}"), "tenant=locTok".into()] {
        let (_, page) = get(&app, &format!("/v1/events?{listing}")).await;
        assert!(!page.to_string().contains("pit-lookup-secret"));
    }

    // A signed body that is not JSON comes back as base64.
    let raw = b"not json at all".to_vec();
    assert_eq!(app.post_signed(&raw).await.status(), 200);
    let malformed = eventually(&app, "type=_malformed", |_| true).await;
    let (status, e) = get(&app, &format!("/v1/events/{}", malformed["seq"])).await;
    assert_eq!(status, 200);
    assert_eq!(e["body_base64"], "bm90IGpzb24gYXQgYWxs");
    assert!(e.get("body").is_none());
    let (status, e) = get(&app, "/v1/events/999999").await;
    assert_eq!((status, e["error"].as_str()), (404, Some("not_found")));
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn a_single_replay_publishes_one_message_and_a_dry_run_none() {
    let app = spawn_app().await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let id = post(&app, "locR", "ContactCreate", "once").await;
    let first = tap.take(1).await;
    assert_eq!(header(&first[0], "x-hl-replay"), None);
    let seq = list(&app, &format!("key={id}")).await[0]["seq"]
        .as_u64()
        .unwrap();
    let replay = |path: String| app.http.post(app.admin_url(&path)).send();
    let r = replay(format!("/v1/events/{seq}/replay")).await.unwrap();
    let (status, answer) = json(r).await;
    assert_eq!((status, answer), (200, json!({"replayed": 1})));
    let again = tap.take(1).await;
    assert_eq!(message_id(&again[0]), id);
    assert_eq!(header(&again[0], "x-hl-replay").as_deref(), Some("true"));
    assert_eq!(again[0].data, first[0].data);
    tap.assert_quiet(Duration::from_millis(500)).await;
    // The copy is an event of its own, marked.
    let copies: Vec<Value> = list(&app, "tenant=locR").await;
    assert_eq!(copies.len(), 2);
    assert_eq!(
        (copies[0]["replay"].as_bool(), copies[1]["replay"].as_bool()),
        (Some(true), Some(false))
    );

    let (status, e) = json(replay("/v1/events/424242/replay".into()).await.unwrap()).await;
    assert_eq!((status, e["error"].as_str()), (404, Some("not_found")));
    let (status, e) = json(replay("/v1/events/x1/replay".into()).await.unwrap()).await;
    assert_eq!((status, e["error"].as_str()), (400, Some("bad_request")));

    let now = time::OffsetDateTime::now_utc();
    let window = json!({
        "since": (now - time::Duration::minutes(5)).format(&time::format_description::well_known::Rfc3339).unwrap(),
        "until": (now + time::Duration::minutes(5)).format(&time::format_description::well_known::Rfc3339).unwrap(),
        "dry_run": true,
    });
    let r = app
        .http
        .post(app.admin_url("/v1/replay"))
        .json(&window)
        .send()
        .await
        .unwrap();
    let (status, answer) = json(r).await;
    assert_eq!(
        (status, answer["replayed"].as_u64()),
        (200, Some(1)),
        "{answer}"
    );
    tap.assert_quiet(Duration::from_millis(1000)).await;
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn every_bad_parameter_is_a_400_naming_it() {
    let app = spawn_app().await;
    let cases = [
        ("nope=1", "nope"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=x", "limit"),
        ("since=yesterday", "since"),
        ("until=2024-13-01T00:00:00Z", "until"),
        (
            "since=2024-01-02T00:00:00Z&until=2024-01-01T00:00:00Z",
            "since",
        ),
        ("state=sent", "state"),
        ("order=up", "order"),
        ("after=garbage!", "after"),
        ("tenant=", "tenant"),
        ("key=a&key=b", "key"),
        ("q=x", "q"),
        (
            "q=x&since=2024-01-01T00:00:00Z&until=2024-01-03T00:00:00Z",
            "q",
        ),
    ];
    for (query, name) in cases {
        let (status, e) = get(&app, &format!("/v1/events?{query}")).await;
        assert_eq!(status, 400, "{query}: {e}");
        assert_eq!(e["error"], "bad_request");
        assert!(
            e["message"].as_str().unwrap().contains(name),
            "{query}: {e}"
        );
    }
    let (status, e) = get(&app, "/v1/events/0").await;
    assert_eq!((status, e["error"].as_str()), (400, Some("bad_request")));
    assert!(e["message"].as_str().unwrap().contains("seq"));
}

#[tokio::test]
async fn the_admin_token_guards_every_lookup() {
    let app = spawn_app_with(&[("HLGATE_ADMIN_TOKEN", "lookup-admin-secret")]).await;
    for path in ["/v1/events", "/v1/events/1"] {
        let r = app.http.get(app.admin_url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let r = app
        .http
        .post(app.admin_url("/v1/events/1/replay"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(get(&app, "/v1/events").await.0, 200);
}

#[tokio::test]
async fn pending_while_the_broker_is_down_then_published() {
    let proxy = Proxy::down().await;
    let app = spawn_app_with(&[("HLGATE_AMQP_URL", &proxy.url())]).await;
    let id = post(&app, "locP", "ContactCreate", "wait").await;
    let e = &list(&app, &format!("key={id}")).await[0];
    assert_eq!(e["state"], "pending");
    assert!(e.get("published_at").is_none());
    assert_eq!(keys(&list(&app, "state=pending").await), [id.as_str()]);
    proxy.up().await;
    app.wait_drained().await;
    let e = &list(&app, &format!("key={id}")).await[0];
    assert_eq!(e["state"], "published");
    assert!(e["published_at"].as_str().is_some());
    assert!(list(&app, "state=pending").await.is_empty());
    proxy.cut();
}

#[tokio::test]
async fn quarantined_by_a_broker_refusal_then_redriven() {
    let app = spawn_app_with(&[("HLGATE_NACK_QUARANTINE_AFTER", "1s")]).await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let (full, full_name) = full_queue(&app.exchange, "*.locQ", 0).await;
    let id = post(&app, "locQ", "ContactCreate", "refused").await;
    // Others pass meanwhile, so the refusal is the entry's own.
    for _ in 0..40 {
        post(&app, "locFine", "ContactCreate", "ok").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if list(&app, "state=quarantined").await.len() == 1 {
            break;
        }
    }
    let q = eventually(&app, "state=quarantined", |e| e["key"] == id.as_str()).await;
    assert!(
        q["quarantine_reason"].as_str().unwrap().contains("nacked"),
        "{q}"
    );
    assert!(q["quarantined_at"].as_str().is_some());
    let seq = q["seq"].as_u64().unwrap();
    assert_eq!(
        list(&app, &format!("key={id}")).await[0]["state"],
        "quarantined"
    );

    // Redriven while the queue still refuses it: the copy goes back to quarantine.
    let redrive = || {
        app.http
            .post(app.admin_url(&format!("/v1/events/{seq}/replay")))
            .send()
    };
    assert_eq!(redrive().await.unwrap().status(), 200);
    for _ in 0..40 {
        post(&app, "locFine", "ContactCreate", "ok").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if list(&app, "state=quarantined").await.len() == 2 {
            break;
        }
    }
    let copy = eventually(&app, "state=quarantined", |e| {
        e["seq"].as_u64() != Some(seq)
    })
    .await;
    assert_eq!(
        (copy["key"].as_str(), copy["replay"].as_bool()),
        (Some(id.as_str()), Some(true))
    );

    // The consumer's queue takes it now: the redrive reaches the exchange, marked.
    delete_queue(full, &full_name).await;
    app.wait_drained().await;
    while tap.next(Duration::from_millis(300)).await.is_some() {}
    assert_eq!(redrive().await.unwrap().status(), 200);
    let d = tap.take(1).await;
    assert_eq!(message_id(&d[0]), id);
    assert_eq!(header(&d[0], "x-hl-replay").as_deref(), Some("true"));
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn lost_after_accept_loss_and_read_by_the_cli_while_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = unique("test.lookup");
    let (ed, rsa) = (Signer::ed25519(), Signer::rsa());
    let mut env = process_env(dir.path(), &exchange, &ed, &rsa);
    // Buckets of 5 s; none expires before the test ends.
    env.insert("HLGATE_DEDUP_RETENTION".into(), "20s".into());
    let hlgate = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_hlgate"))
            .args(args)
            .env_clear()
            .envs(&env)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        println!(
            "hlgate {args:?}:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };

    let tap = Tap::bind(&exchange, "#").await;
    let process = spawn_process(&env, Stdio::null());
    process.wait_ready().await;
    let mut ids = Vec::new();
    for _ in 0..30 {
        let id = unique("wh");
        let r = process
            .post_signed(&ed, body("locL", "ContactCreate", &id, "x"))
            .await;
        assert_eq!(r.status(), 200);
        ids.push(id);
    }
    tokio::time::sleep(Duration::from_millis(5100)).await;
    let r = process
        .post_signed(&ed, body("locL", "NoteCreate", &unique("wh"), "y"))
        .await;
    assert_eq!(r.status(), 200);
    // Published and taking no more events, the first bucket is closed with its summary of
    // dedup keys, which outlives the damage below.
    let summary = dir.path().join("data/events/00000000000000000001/keys");
    for _ in 0..200 {
        if summary.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(summary.exists(), "the first bucket was never closed");
    process.signal("TERM");
    let mut process = process;
    assert_eq!(process.child.wait().unwrap().code(), Some(0));

    // Stopped: the CLI reads the store itself, and changes nothing in it.
    let (code, out) = hlgate(&["events", "--tenant", "locL", "--limit", "5", "--json"]);
    assert_eq!(code, Some(0));
    let page: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 5);
    assert_eq!(page["events"][0]["type"], "NoteCreate");
    assert_eq!(page["events"][0]["state"], "published");
    let (code, out) = hlgate(&["events", "--key", &ids[3]]);
    assert_eq!(code, Some(0));
    assert!(out.contains(&ids[3]) && out.contains("published"), "{out}");

    let segment = dir.path().join("data/events/00000000000000000001/segment");
    let len = std::fs::metadata(&segment).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let (code, _) = hlgate(&["store", "accept-loss"]);
    assert_eq!(code, Some(0));

    let process = spawn_process(&env, Stdio::null());
    process.wait_ready().await;
    let admin = |path: String| reqwest::get(format!("http://{}{path}", process.admin));
    let page: Value = admin("/v1/events?state=lost&limit=100".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let lost: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(!lost.is_empty() && lost.iter().all(|&s| s <= 30), "{page}");
    assert!(lost.contains(&30), "{lost:?}");
    let last = ids.last().unwrap();
    let page: Value = admin(format!("/v1/events?key={last}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let e = &page["events"][0];
    assert_eq!(
        (e["state"].as_str(), e["seq"].as_u64()),
        (Some("lost"), Some(30)),
        "{page}"
    );
    assert!(e["received_at"].as_str().is_some());
    let one = admin("/v1/events/30".into()).await.unwrap();
    assert_eq!(one.status(), 200);
    let one: Value = one.json().await.unwrap();
    assert_eq!(one["state"], "lost");
    // What was not lost reads whole.
    let page: Value = admin(format!("/v1/events?key={}", ids[0]))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"][0]["state"], "published");
    assert_eq!(page["events"][0]["type"], "ContactCreate");
    process.signal("TERM");
    tap.cleanup(&exchange).await;
}
