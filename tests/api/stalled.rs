//! Slow and stalled clients: a body has a deadline, unfinished bodies share one memory bound,
//! and a stalled upload never holds up a shutdown.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::durability::{process_env, spawn_process};
use crate::helpers::*;

/// Longest any single read or write here may take: a hang guard, not a measure.
const HANG_GUARD: Duration = Duration::from_secs(30);

/// Opens a connection and sends a webhook request head declaring `declared` body bytes, then
/// the first `sent` bytes of the body.
async fn start_upload(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    declared: usize,
    sent: &[u8],
) -> TcpStream {
    let mut head = format!(
        "POST /webhooks/highlevel HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(sent).await.unwrap();
    stream
}

/// A response read until the server closes the connection.
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: serde_json::Value,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads to the end of the stream: returning at all means the server closed the connection.
async fn read_until_closed(stream: &mut TcpStream) -> RawResponse {
    let mut raw = Vec::new();
    tokio::time::timeout(HANG_GUARD, stream.read_to_end(&mut raw))
        .await
        .expect("the server closed the connection")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase()))
        .collect();
    RawResponse {
        status,
        headers,
        body: serde_json::from_str(body).unwrap(),
    }
}

#[tokio::test]
async fn a_body_not_received_in_time_gets_408_and_its_connection_closed_and_nothing_is_stored() {
    let app = spawn_app_with(&[("HLGATE_BODY_TIMEOUT", "1s")]).await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let (_, body) = contact_event("L");
    let (header, sig) = app.ed.sign(&body);

    let mut stream = start_upload(
        app.addr,
        &[(header, &sig)],
        body.len(),
        &body[..body.len() / 2],
    )
    .await;
    let response = read_until_closed(&mut stream).await;

    assert_eq!(response.status, 408);
    assert_eq!(response.header("connection"), Some("close"));
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.body["error"], "body_timeout");
    assert_eq!(
        response.body["message"],
        "the body did not arrive within 1s"
    );
    assert_eq!(app.readyz().await["outbox_depth"], 0);
    let m = app.metrics_text().await;
    assert_eq!(
        metric(&m, "hlgate_webhooks_total{outcome=\"body_timeout\"}"),
        1.0
    );
    assert_eq!(
        metric(&m, "hlgate_webhooks_total{outcome=\"accepted\"}"),
        0.0
    );
    tap.assert_quiet(Duration::from_millis(500)).await;
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn a_slow_body_that_finishes_within_the_timeout_is_accepted() {
    let app = spawn_app_with(&[("HLGATE_BODY_TIMEOUT", "30s")]).await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let (id, body) = contact_event("L");
    let (header, sig) = app.ed.sign(&body);

    let pieces: Vec<&[u8]> = body.chunks(body.len() / 4 + 1).collect();
    let mut stream = start_upload(
        app.addr,
        &[(header, &sig), ("Connection", "close")],
        body.len(),
        pieces[0],
    )
    .await;
    for piece in &pieces[1..] {
        tokio::time::sleep(Duration::from_millis(200)).await;
        stream.write_all(piece).await.unwrap();
    }
    let response = read_until_closed(&mut stream).await;

    assert_eq!(response.status, 200);
    assert_eq!(
        response.body,
        serde_json::json!({"status": "accepted", "id": id})
    );
    assert_eq!(message_id(&tap.take(1).await[0]), id);
    tap.cleanup(&app.exchange).await;
}

/// Signs and POSTs a new event; answers its id and status.
async fn post_new_event(app: &TestApp) -> (String, reqwest::Response) {
    let (id, body) = contact_event("L");
    (id, app.post_signed(&body).await)
}

#[tokio::test]
async fn unfinished_bodies_share_one_bound_and_a_signed_event_then_gets_429_never_5xx() {
    // Long enough that no stalled body times out during the test.
    let app = spawn_app_with(&[("HLGATE_BODY_TIMEOUT", "10m")]).await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let max = 1_048_576;
    let almost_all = vec![b' '; max - 1];
    let mut stalled = Vec::new();
    let mut accepted = Vec::new();

    // Each stalled upload holds about the maximum body; the bound is reached after some.
    let refused = loop {
        assert!(
            stalled.len() < 300,
            "no bound on what unfinished bodies hold"
        );
        let mut stream = start_upload(app.addr, &[], max, &[]).await;
        // One the bound refuses is answered and closed while it is still sending.
        let _ = stream.write_all(&almost_all).await;
        stalled.push(stream);
        let (id, response) = post_new_event(&app).await;
        match response.status().as_u16() {
            200 => accepted.push(id),
            429 => break (id, response),
            other => panic!("a signed event got {other}"),
        }
    };
    let (refused_id, response) = refused;
    assert_eq!(response.headers()["retry-after"], "5");
    let v: serde_json::Value = response.json().await.unwrap();
    assert_eq!(v["error"], "overloaded");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));

    // The stalled clients go away: their room comes back.
    drop(stalled);
    let recovered = loop {
        let (id, response) = post_new_event(&app).await;
        match response.status().as_u16() {
            200 => break id,
            429 => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("a signed event got {other}"),
        }
    };
    accepted.push(recovered);

    // Exactly the accepted events are published; the refused one never is.
    let got: Vec<String> = tap
        .take(accepted.len())
        .await
        .iter()
        .map(message_id)
        .collect();
    assert_eq!(got, accepted);
    assert!(!got.contains(&refused_id));
    tap.assert_quiet(Duration::from_millis(500)).await;
    app.wait_drained().await;
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn sigterm_exits_zero_within_the_grace_with_stalled_uploads_open() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = unique("test.stalled");
    let (ed, rsa) = (Signer::ed25519(), Signer::rsa());
    let grace = Duration::from_secs(2);
    let mut env = process_env(dir.path(), &exchange, &ed, &rsa);
    env.insert("HLGATE_SHUTDOWN_GRACE".into(), "2s".into());
    let mut tap = Tap::bind(&exchange, "#").await;
    let mut process = spawn_process(&env, Stdio::null());
    process.wait_ready().await;
    let (id, body) = contact_event("stalled");
    assert_eq!(process.post_signed(&ed, body).await.status(), 200);

    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(start_upload(process.public, &[], 1_048_576, b"{\"type\"").await);
    }
    // Served after the stalled connections were accepted, so they are in flight now.
    let health = reqwest::get(format!("http://{}/healthz", process.public))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    process.signal("TERM");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = process.child.try_wait().unwrap() {
            break s;
        }
        assert!(started.elapsed() < grace + HANG_GUARD, "did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0), "stopped in time and cleanly");

    // The event accepted before is published, now or after the next start.
    let mut got = tap.take_up_to(1, Duration::from_secs(3)).await;
    if got.is_empty() {
        let mut process = spawn_process(&env, Stdio::null());
        process.wait_ready().await;
        got = tap.take(1).await;
        process.signal("TERM");
        process.child.wait().unwrap();
    }
    assert_eq!(message_id(&got[0]), id);
    drop(stalled);
    tap.cleanup(&exchange).await;
}
