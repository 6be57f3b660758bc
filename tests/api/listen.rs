//! `hlgate listen`: the real binary between the real app's exchange and a local receiver.

use hlgate::config::Settings;
use hlgate::verify::{SignatureHeaders, Verifier};

use crate::durability::Proxy;
use crate::helpers::*;
use crate::listener::*;

/// Posts events to the app and waits until the broker confirmed them all; answers the bodies.
async fn publish(app: &TestApp, location: &str, n: usize) -> Vec<Vec<u8>> {
    let mut bodies = Vec::new();
    for _ in 0..n {
        let (_, body) = contact_event(location);
        assert_eq!(app.post_signed(&body).await.status(), 200);
        bodies.push(body);
    }
    app.wait_drained().await;
    bodies
}

/// Removes the test's queue, as a developer would.
async fn delete_queue(name: &str, env: &[(String, String)]) {
    let (code, _, err) = listen_once(&["--name", name, "--delete"], env).await;
    assert_eq!(code, 0, "{err}");
}

fn bodies(received: &[Received]) -> Vec<Vec<u8>> {
    received.iter().map(|r| r.body.clone()).collect()
}

#[tokio::test]
async fn events_published_while_the_listener_is_stopped_arrive_in_order_when_it_starts() {
    let app = spawn_app().await;
    let receiver = Receiver::start(&[]);
    let (name, env) = (unique("stopped"), listen_env(&app));
    let queue = format!("hlgate.listen.{name}");
    let args = ["--to", &receiver.url, "--name", &name];

    let listening = Listening::ready(&args, &env).await;
    let (code, lines) = listening.interrupt().await;
    assert_eq!(code, Some(0), "Ctrl-C is a clean stop: {lines:?}");
    assert!(lines.iter().any(|l| l.contains("stopped")), "{lines:?}");

    let sent = publish(&app, "LOCSTOP", 5).await;
    assert_eq!(queue_depth(&queue).await, Some(5), "they wait in the queue");
    assert_eq!(receiver.count(), 0);

    let listening = Listening::ready(&args, &env).await;
    assert_eq!(
        bodies(&receiver.wait_for(5).await),
        sent,
        "as sent, in order"
    );
    // A line is printed before its ack, which is sent before the stop closes the connection.
    listening.wait_lines("ContactCreate LOCSTOP 200", 5).await;
    let (code, lines) = listening.interrupt().await;
    assert_eq!(code, Some(0));
    assert!(lines[0].contains("5 events waiting"), "{lines:?}");
    let done: Vec<_> = lines.iter().filter(|l| l.contains(" 200 ")).collect();
    assert_eq!(done.len(), 5, "one line per event: {lines:?}");
    assert_eq!(queue_depth(&queue).await, Some(0), "every event was acked");
    assert_eq!(receiver.count(), 5, "and none came twice");
    delete_queue(&name, &env).await;
}

#[tokio::test]
async fn a_refused_event_is_posted_again_before_the_next_one() {
    let app = spawn_app().await;
    let receiver = Receiver::start(&[500, 500]);
    let (name, env) = (unique("retry"), listen_env(&app));
    let listening = Listening::ready(&["--to", &receiver.url, "--name", &name], &env).await;

    let sent = publish(&app, "LOCRETRY", 2).await;
    let received = receiver.wait_for(4).await;
    let expected = vec![
        sent[0].clone(),
        sent[0].clone(),
        sent[0].clone(),
        sent[1].clone(),
    ];
    assert_eq!(bodies(&received), expected);
    listening.wait_lines("LOCRETRY 200", 2).await;
    let (code, lines) = listening.interrupt().await;
    assert_eq!(code, Some(0));
    let attempts: Vec<_> = lines.iter().filter(|l| l.contains("LOCRETRY")).collect();
    assert_eq!(attempts.len(), 4, "{lines:?}");
    for line in &attempts[..2] {
        assert!(line.contains("ContactCreate LOCRETRY 500"), "{line}");
        assert!(line.contains("retry in"), "{line}");
    }
    assert!(attempts[2].contains(" 200 ") && !attempts[2].contains("retry"));
    assert_eq!(receiver.count(), 4, "nothing posted once acked");
    delete_queue(&name, &env).await;
}

#[tokio::test]
async fn ctrl_c_while_an_event_is_retried_leaves_it_in_the_queue() {
    let app = spawn_app().await;
    let receiver = Receiver::start(&[]);
    receiver.answer(503);
    let (name, env) = (unique("held"), listen_env(&app));
    let queue = format!("hlgate.listen.{name}");
    let listening = Listening::ready(&["--to", &receiver.url, "--name", &name], &env).await;
    publish(&app, "LOCHELD", 1).await;
    listening.wait_line("LOCHELD 503").await;
    let (code, lines) = listening.interrupt().await;
    assert_eq!(code, Some(0), "{lines:?}");
    assert_eq!(queue_depth(&queue).await, Some(1), "not acked, not lost");
    delete_queue(&name, &env).await;
}

#[tokio::test]
async fn an_event_held_when_the_broker_goes_comes_again_first_after_the_reconnect() {
    let app = spawn_app().await;
    let receiver = Receiver::start(&[]);
    receiver.answer(500);
    let proxy = Proxy::down().await;
    proxy.up().await;
    let (name, env) = (unique("lost"), listen_env(&app));
    let args = [
        "--to",
        &receiver.url,
        "--name",
        &name,
        "--amqp",
        &proxy.url(),
    ];
    let listening = Listening::ready(&args, &env).await;

    let sent = publish(&app, "LOCLOST", 2).await;
    receiver.wait_for(1).await;
    proxy.cut();
    listening.wait_line("comes again after a reconnect").await;
    listening.wait_line("trying again in").await;
    receiver.answer(200);
    proxy.up().await;
    listening.wait_line("reconnected").await;

    let received = bodies(&receiver.wait_for(3).await);
    listening.wait_lines("LOCLOST 200", 2).await;
    let (first, rest) = received.split_at(received.len() - 2);
    assert!(
        first.iter().all(|b| *b == sent[0]),
        "only the held event before"
    );
    assert_eq!(rest, sent, "then it again, first, and the next one");
    let (code, _) = listening.interrupt().await;
    assert_eq!(code, Some(0));
    assert_eq!(receiver.count(), received.len(), "nothing more");
    delete_queue(&name, &env).await;
}

#[tokio::test]
async fn the_forwarded_signature_verifies_against_the_body_as_in_production() {
    let app = spawn_app().await;
    let receiver = Receiver::start(&[]);
    let (name, env) = (unique("signed"), listen_env(&app));
    let listening = Listening::ready(&["--to", &receiver.url, "--name", &name], &env).await;

    // Ed25519 (X-GHL-Signature), then the legacy RSA header alone (X-WH-Signature), with a
    // body indented as HighLevel might send it.
    let (_, ed_body) = contact_event("LOCSIGN");
    assert_eq!(app.post_signed(&ed_body).await.status(), 200);
    let value: serde_json::Value = serde_json::from_slice(&contact_event("LOCSIGN").1).unwrap();
    let rsa_body = serde_json::to_vec_pretty(&value).unwrap();
    let (header, signature) = app.rsa.sign(&rsa_body);
    let answer = app.post(&rsa_body, &[(header, signature.as_str())]).await;
    assert_eq!(answer.status(), 200);

    let received = receiver.wait_for(2).await;
    assert_eq!(
        bodies(&received),
        [ed_body, rsa_body],
        "bodies byte for byte"
    );
    let keys = [
        (
            "HLGATE_ED25519_PUBLIC_KEYS".to_string(),
            app.ed.public_pem.clone(),
        ),
        (
            "HLGATE_RSA_PUBLIC_KEYS".to_string(),
            app.rsa.public_pem.clone(),
        ),
    ];
    let settings = Settings::load(None, &keys.into_iter().collect()).unwrap();
    let verifier = Verifier {
        ed25519: settings.ingest.ed25519_keys.clone(),
        rsa: settings.ingest.rsa_keys.clone(),
        accept_legacy_rsa: true,
    };
    let headers = |r: &Received| {
        let ghl = r.headers.get("x-ghl-signature").cloned();
        let wh = r.headers.get("x-wh-signature").cloned();
        (ghl, wh)
    };
    let check = |body: &[u8], (ghl, wh): &(Option<String>, Option<String>)| {
        let headers = SignatureHeaders {
            ghl: ghl.as_deref(),
            wh: wh.as_deref(),
        };
        verifier.verify(body, headers).is_ok()
    };
    let (ed, rsa) = (headers(&received[0]), headers(&received[1]));
    assert!(ed.0.is_some() && ed.1.is_none(), "{ed:?}");
    assert!(rsa.0.is_none() && rsa.1.is_some(), "{rsa:?}");
    for (r, h) in [(&received[0], &ed), (&received[1], &rsa)] {
        assert!(check(&r.body, h), "the receiver's check passes");
        let mut tampered = r.body.clone();
        tampered[2] ^= 1;
        assert!(!check(&tampered, h), "and would fail on another body");
        assert_eq!(r.headers["content-type"], "application/json");
    }
    drop(listening);
    delete_queue(&name, &env).await;
}

#[tokio::test]
async fn a_bad_url_or_an_unreachable_broker_is_one_line_and_a_failure() {
    let app = spawn_app().await;
    let env = listen_env(&app);
    let name = unique("bad");
    for to in ["localhost:3000/hook", "ftp://localhost/hook", "http://"] {
        let (code, out, err) = listen_once(&["--to", to, "--name", &name], &env).await;
        assert_ne!(code, 0, "{to}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("hlgate: --to "), "{err}");
        assert!(out.is_empty(), "{out}");
    }
    let hook = "http://127.0.0.1:9/hook";
    let (code, _, err) = listen_once(
        &[
            "--to",
            hook,
            "--amqp",
            "amqp://guest:s3cret@127.0.0.1:1/%2f",
        ],
        &env,
    )
    .await;
    assert_ne!(code, 0);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot connect to RabbitMQ at amqp://guest:[redacted]@127.0.0.1:1/%2f"));
    assert!(!err.contains("s3cret"), "{err}");

    // No exchange, and nothing told to declare it.
    let mut env = env;
    env.push(("HLGATE_EXCHANGE".into(), unique("no.such.exchange")));
    env.push(("HLGATE_DECLARE_TOPOLOGY".into(), "false".into()));
    let (code, _, err) = listen_once(&["--to", hook, "--name", &name], &env).await;
    assert_ne!(code, 0);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no exchange no.such.exchange."), "{err}");
    assert_eq!(
        queue_depth(&format!("hlgate.listen.{name}")).await,
        None,
        "and no queue left behind"
    );
}

#[tokio::test]
async fn delete_removes_the_queue_and_the_events_in_it() {
    let app = spawn_app().await;
    let (name, env) = (unique("delete"), listen_env(&app));
    let queue = format!("hlgate.listen.{name}");
    let hook = "http://127.0.0.1:9/hook";
    drop(Listening::ready(&["--to", hook, "--name", &name], &env).await);
    publish(&app, "LOCDEL", 2).await;
    assert_eq!(queue_depth(&queue).await, Some(2));

    let (code, out, err) = listen_once(&["--name", &name, "--delete"], &env).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        format!("deleted queue {queue} and the 2 events in it")
    );
    assert_eq!(queue_depth(&queue).await, None);
    let (code, _, err) = listen_once(&["--name", &name, "--delete"], &env).await;
    assert_ne!(code, 0, "a name with no queue is a mistake worth saying");
    assert_eq!(err.trim(), format!("hlgate: no queue {queue}"));
}

#[tokio::test]
async fn the_queue_keeps_the_newest_events_up_to_its_printed_bounds() {
    let app = spawn_app().await;
    let receiver = Receiver::start(&[]);
    let (name, env) = (unique("bounded"), listen_env(&app));
    let args = [
        "--to",
        &receiver.url,
        "--name",
        &name,
        "--max-length",
        "2",
        "--ttl",
        "1h",
    ];
    let listening = Listening::ready(&args, &env).await;
    let bounds = listening.wait_line("at most").await;
    assert!(
        bounds.contains("at most 2 events (100 MiB) for 1h"),
        "{bounds}"
    );
    listening.interrupt().await;

    let sent = publish(&app, "LOCFULL", 4).await;
    let listening = Listening::ready(&args, &env).await;
    assert_eq!(
        bodies(&receiver.wait_for(2).await),
        sent[2..],
        "the oldest went"
    );
    drop(listening);

    // Other bounds on the same queue are refused, not silently kept.
    let mut other = args.to_vec();
    other[5] = "3";
    let (code, _, err) = listen_once(&other, &env).await;
    assert_ne!(code, 0);
    assert!(err.contains("exists with other limits"), "{err}");
    delete_queue(&name, &env).await;
}

#[tokio::test]
async fn since_replays_the_window_through_the_admin_api_first() {
    let app = spawn_app_with(&[("HLGATE_ADMIN_TOKEN", "admin-s3cret")]).await;
    let receiver = Receiver::start(&[]);
    let (name, env) = (unique("since"), listen_env(&app));
    // Published before the listener's queue exists: only a replay can bring them.
    let sent = publish(&app, "LOCSINCE", 2).await;
    let admin = app.admin_url("");
    let mut args = vec!["--to", &receiver.url, "--name", &name, "--since", "1h"];
    args.extend(["--bind", "ContactCreate.*", "--admin", &admin]);

    let (code, _, err) =
        listen_once(&[&args[..], &["--admin-token", "wrong"]].concat(), &env).await;
    assert_ne!(code, 0);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/v1/replay answered 401"), "{err}");
    assert!(!err.contains("admin-s3cret"), "{err}");

    args.extend(["--admin-token", "admin-s3cret"]);
    let listening = Listening::ready(&args, &env).await;
    let replaying = listening.wait_line("replaying").await;
    assert!(
        replaying.contains("replaying 2 events of the last 1h"),
        "{replaying}"
    );
    assert_eq!(bodies(&receiver.wait_for(2).await), sent);
    let line = listening.wait_line("LOCSINCE 200").await;
    assert!(line.ends_with(" replay"), "{line}");
    drop(listening);
    delete_queue(&name, &env).await;
}
