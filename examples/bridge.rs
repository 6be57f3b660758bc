//! The yardstick for hlgate's throughput: a plain HTTP → RabbitMQ bridge with none of hlgate's
//! guarantees but the broker's. `POST /webhooks/highlevel` reads the body, publishes it as a
//! persistent message to a durable topic exchange, waits for the publisher confirm and answers
//! 200 `{"status":"accepted"}`. No signature check, no dedup, no fsync, no outbox, no order.
//!
//! It runs on the same HTTP server (actix-web, one worker per core) and AMQP client (lapin, one
//! confirming channel) as hlgate, so that the load tool, pointed at each in turn, shows what
//! hlgate's guarantees cost:
//!
//! ```text
//! cargo build --release --example bridge --example load
//! target/release/examples/bridge --listen 127.0.0.1:18090 --exchange hlgate.bench.bridge &
//! target/release/examples/load --url http://127.0.0.1:18090/webhooks/highlevel --key load.key \
//!   --watch bridge,beam.smp --bind hlgate.bench.bridge --queue-mode lazy
//! ```
//!
//! The load tool finds no admin metrics here and says so; its own counts (accepted/s, latency,
//! what the bound queue holds) and the CPU figures are comparable.
//!
//! `--verify PEM` adds one of hlgate's guarantees: each body's `X-GHL-Signature` is checked with
//! hlgate's verifier (batched per worker, as in hlgate) before it is published, and a bad one is
//! answered 401. The difference to the plain bridge is what verification costs; the rest of the
//! difference to hlgate is dedup, the fsync'd outbox and the relay.

use std::net::SocketAddr;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use hlgate::verify::{Keyring, SignatureHeaders, Verifier};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

const USAGE: &str = "\
usage: bridge [--listen ADDR] [--amqp URL] [--exchange NAME] [--verify PEM]

  --listen ADDR    where to serve POST /webhooks/highlevel (default 127.0.0.1:18090)
  --amqp URL       RabbitMQ (default amqp://guest:guest@127.0.0.1:5672/%2f)
  --exchange NAME  durable topic exchange, declared at start (default hlgate.bench.bridge)
  --verify PEM     check X-GHL-Signature against this Ed25519 public key first (401 if bad)
";

struct Args {
    listen: SocketAddr,
    amqp: String,
    exchange: String,
    verify: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: ([127, 0, 0, 1], 18090).into(),
        amqp: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
        exchange: "hlgate.bench.bridge".into(),
        verify: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                args.listen = v.parse().map_err(|_| format!("--listen: {v:?}"))?;
            }
            "--amqp" => args.amqp = value()?,
            "--exchange" => args.exchange = value()?,
            "--verify" => args.verify = Some(value()?),
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag {other}\n\n{USAGE}")),
        }
    }
    Ok(args)
}

struct Bridge {
    channel: Channel,
    exchange: lapin::types::ShortString,
    verifier: Option<Verifier>,
}

const ANSWER: &str = r#"{"status":"accepted","id":"bridge"}"#;

async fn webhook(req: HttpRequest, body: web::Bytes, bridge: web::Data<Bridge>) -> HttpResponse {
    if let Some(verifier) = &bridge.verifier {
        let headers = SignatureHeaders {
            ghl: req
                .headers()
                .get("x-ghl-signature")
                .and_then(|v| v.to_str().ok()),
            wh: None,
        };
        if verifier.verify_gathered(&body, headers).await.is_err() {
            return HttpResponse::Unauthorized().finish();
        }
    }
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    let published = bridge
        .channel
        .basic_publish(
            bridge.exchange.clone(),
            "bridge".into(),
            BasicPublishOptions::default(),
            &body,
            properties,
        )
        .await;
    let confirmed = match published {
        Ok(confirm) => confirm.await.map(|c| c.is_ack()).unwrap_or(false),
        Err(_) => false,
    };
    if confirmed {
        HttpResponse::Ok()
            .content_type("application/json")
            .body(ANSWER)
    } else {
        HttpResponse::ServiceUnavailable().finish()
    }
}

/// hlgate's verifier with the Ed25519 key in `path`, legacy RSA off.
fn verifier(path: &str) -> Result<Verifier, String> {
    let pem = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let ed25519 = Keyring::ed25519_from_pem(&pem).map_err(|e| format!("{path}: {e}"))?;
    let rsa = Keyring::rsa_from_pem(include_str!("../src/verify/highlevel-rsa.pem"))
        .map_err(|e| format!("the built-in RSA key: {e}"))?;
    Ok(Verifier {
        ed25519,
        rsa,
        accept_legacy_rsa: false,
    })
}

async fn connect(args: &Args) -> Result<Channel, String> {
    let connection = Connection::connect(&args.amqp, ConnectionProperties::default())
        .await
        .map_err(|e| format!("connect {}: {e}", args.amqp))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| format!("channel: {e}"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| format!("confirm_select: {e}"))?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            args.exchange.as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("exchange_declare: {e}"))?;
    // The connection lives as long as the channel is used: the whole process.
    std::mem::forget(connection);
    Ok(channel)
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let channel = match connect(&args).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bridge: {e}");
            std::process::exit(1);
        }
    };
    let verifier = match args.verify.as_deref().map(verifier) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(e)) => {
            eprintln!("bridge: {e}");
            std::process::exit(2);
        }
    };
    let bridge = web::Data::new(Bridge {
        channel,
        exchange: args.exchange.as_str().into(),
        verifier,
    });
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(bridge.clone())
            .app_data(web::PayloadConfig::new(1 << 20))
            .route("/webhooks/highlevel", web::post().to(webhook))
    })
    .workers(workers)
    .bind(args.listen);
    let server = match server {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bridge: bind {}: {e}", args.listen);
            std::process::exit(1);
        }
    };
    println!("bridge: serving http://{}/webhooks/highlevel", args.listen);
    if let Err(e) = server.run().await {
        eprintln!("bridge: {e}");
        std::process::exit(1);
    }
}
