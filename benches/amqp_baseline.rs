//! The RabbitMQ ceiling the relay is compared against: a bare lapin loop that publishes
//! persistent ~1.5 KB messages with publisher confirms to a durable topic exchange bound (`#`)
//! to a durable classic queue. No outbox, no sled: just the broker round trip.
//!
//! Three ways of keeping messages in flight are measured, each over the same number of messages:
//! - `window`: a sliding window, at most `AMQP_BASELINE_WINDOW` unconfirmed at any time;
//! - `batch`: publish `AMQP_BASELINE_WINDOW`, then await all their confirms, then the next
//!   batch;
//! - `pipelined`: batches of `AMQP_BASELINE_WINDOW` whose publishes are all polled once, in
//!   order, before any is awaited (lapin then writes a batch in a few large writes), with the
//!   previous batch's confirms awaited while the next one goes out: the way hlgate's relay works.
//!
//! `window` and `batch` await each publish before the next, one hand-off to lapin's I/O thread
//! per message.
//!
//! Messages carry the same properties and headers hlgate's relay sets (`publish::amqp::properties`).
//!
//! ```text
//! cargo bench --bench amqp_baseline
//! AMQP_BASELINE_N=50000 AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo bench --bench amqp_baseline
//! AMQP_BASELINE_QUEUE_VERSION=2 cargo bench --bench amqp_baseline
//! ```
//! `AMQP_BASELINE_QUEUE_VERSION` (1 or 2; unset: the broker's default) sets the classic queue's
//! `x-queue-version` (RabbitMQ 3.10 and later); `AMQP_BASELINE_QUEUE_MODE=lazy` its
//! `x-queue-mode`, so messages go to disk at once instead of being held in memory (RabbitMQ
//! 3.12 and later do that anyway).
//! The exchange and queue (`hlgate.bench.baseline.<pid>`) are deleted at the end.

use std::collections::VecDeque;
use std::task::Poll;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind, PublisherConfirm};

use hlgate::entry::{now_ms, Entry};
use hlgate::publish::amqp::{properties, short, Attached};
use hlgate::schema::Outcome;
use hlgate::verify::Scheme;

const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const BODY_SIZE: usize = 1500;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

fn body(size: usize) -> Vec<u8> {
    let head = r#"{"type":"ContactCreate","locationId":"ve9EPM428h8vShlRW1KT","webhookId":"baseline","id":"nmFmQEsNgz6AVpgLVUJ0","customFields":[{"id":"notes","value":""#;
    let tail = r#""}]}"#;
    let mut s = String::from(head);
    let filler = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ";
    s.extend(
        filler
            .chars()
            .cycle()
            .take(size.saturating_sub(head.len() + tail.len())),
    );
    s.push_str(tail);
    s.into_bytes()
}

fn entry(seq: u64, body: &[u8]) -> Entry {
    let key = format!("baseline-{seq:010}");
    Entry {
        seq,
        accepted_ms: now_ms(),
        replay: false,
        redrive: false,
        trace: None,
        scheme: Scheme::Ed25519,
        compact: false,
        schema: Outcome::Unknown,
        dedup_key: key.clone(),
        index: None,
        event_type: "ContactCreate".into(),
        tenant: "ve9EPM428h8vShlRW1KT".into(),
        location_id: Some("ve9EPM428h8vShlRW1KT".into()),
        company_id: None,
        webhook_id: Some(key),
        signature: "x".repeat(88),
        body: body.to_vec(),
    }
}

async fn settle(confirm: PublisherConfirm) -> Result<(), String> {
    match confirm.await {
        Ok(c) if c.is_ack() => Ok(()),
        Ok(_) => Err("nacked".into()),
        Err(e) => Err(format!("confirm: {e}")),
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Window,
    Batch,
    Pipelined,
}

/// Publishes `n` messages; returns the elapsed time from the first publish to the last confirm.
async fn run(
    channel: &Channel,
    exchange: &str,
    n: u64,
    window: usize,
    mode: Mode,
    body: &[u8],
) -> Result<Duration, String> {
    if let Mode::Pipelined = mode {
        return run_pipelined(channel, exchange, n, window, body).await;
    }
    let exchange = short(exchange);
    let mut in_flight: VecDeque<PublisherConfirm> = VecDeque::with_capacity(window);
    let start = Instant::now();
    for seq in 1..=n {
        let e = entry(seq, body);
        let confirm = channel
            .basic_publish(
                exchange.clone(),
                short(&e.routing_key()),
                BasicPublishOptions::default(),
                &e.body,
                properties(&e, &Attached::Off, None),
            )
            .await
            .map_err(|e| format!("publish: {e}"))?;
        in_flight.push_back(confirm);
        if in_flight.len() >= window {
            if let Mode::Window = mode {
                settle(in_flight.pop_front().expect("non-empty")).await?;
            } else {
                for c in in_flight.drain(..) {
                    settle(c).await?;
                }
            }
        }
    }
    for c in in_flight.drain(..) {
        settle(c).await?;
    }
    Ok(start.elapsed())
}

/// `pipelined`: each batch's publishes are polled once in order, then awaited; the previous
/// batch's confirms are awaited after the next batch is handed over.
async fn run_pipelined(
    channel: &Channel,
    exchange: &str,
    n: u64,
    window: usize,
    body: &[u8],
) -> Result<Duration, String> {
    let exchange = short(exchange);
    let mut previous: Vec<PublisherConfirm> = Vec::new();
    let start = Instant::now();
    let mut seq = 1;
    while seq <= n {
        let batch: Vec<Entry> = (seq..=n.min(seq + window as u64 - 1))
            .map(|s| entry(s, body))
            .collect();
        seq += batch.len() as u64;
        let mut sending = Vec::with_capacity(batch.len());
        for e in &batch {
            let mut send = Box::pin(channel.basic_publish(
                exchange.clone(),
                short(&e.routing_key()),
                BasicPublishOptions::default(),
                &e.body,
                properties(e, &Attached::Off, None),
            ));
            let first = futures_util::poll!(send.as_mut());
            sending.push((send, first));
        }
        let mut current = Vec::with_capacity(batch.len());
        for (send, first) in sending {
            let published = match first {
                Poll::Ready(result) => result,
                Poll::Pending => send.await,
            };
            current.push(published.map_err(|e| format!("publish: {e}"))?);
        }
        for c in std::mem::replace(&mut previous, current) {
            settle(c).await?;
        }
    }
    for c in previous {
        settle(c).await?;
    }
    Ok(start.elapsed())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into())
}

async fn main_async() -> Result<(), String> {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.into());
    let n: u64 = env_or("AMQP_BASELINE_N", 20_000);
    let window: usize = env_or("AMQP_BASELINE_WINDOW", 1000).max(1);
    let modes =
        std::env::var("AMQP_BASELINE_MODES").unwrap_or_else(|_| "window,batch,pipelined".into());
    let queue_version: Option<u8> = std::env::var("AMQP_BASELINE_QUEUE_VERSION")
        .ok()
        .map(|v| match v.as_str() {
            "1" => Ok(1),
            "2" => Ok(2),
            other => Err(format!("AMQP_BASELINE_QUEUE_VERSION={other:?}: 1 or 2")),
        })
        .transpose()?;
    let lazy = match std::env::var("AMQP_BASELINE_QUEUE_MODE").as_deref() {
        Ok("lazy") => true,
        Ok("default") | Err(_) => false,
        Ok(other) => {
            return Err(format!(
                "AMQP_BASELINE_QUEUE_MODE={other:?}: default or lazy"
            ))
        }
    };
    let name = format!("hlgate.bench.baseline.{}", std::process::id());
    let body = body(BODY_SIZE);

    let connection = Connection::connect(
        &url,
        ConnectionProperties::default()
            .with_connection_name(LongString::from("hlgate-amqp-baseline")),
    )
    .await
    .map_err(|e| format!("connect: {e}"))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| format!("channel: {e}"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| format!("confirm.select: {e}"))?;
    channel
        .exchange_declare(
            short(&name),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("exchange.declare: {e}"))?;
    let mut queue_args = FieldTable::default();
    queue_args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("classic".into()),
    );
    if lazy {
        queue_args.insert("x-queue-mode".into(), AMQPValue::LongString("lazy".into()));
    }
    if let Some(version) = queue_version {
        queue_args.insert("x-queue-version".into(), AMQPValue::LongInt(version.into()));
    }
    channel
        .queue_declare(
            short(&name),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            queue_args,
        )
        .await
        .map_err(|e| format!("queue.declare: {e}"))?;
    channel
        .queue_bind(
            short(&name),
            short(&name),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("queue.bind: {e}"))?;

    println!(
        "amqp_baseline: {n} persistent messages of {} B body, up to {window} unconfirmed, \
         durable topic exchange -> durable classic queue '{name}' ({}, {} mode)",
        body.len(),
        match queue_version {
            Some(v) => format!("version {v}"),
            None => "the broker's default version".into(),
        },
        if lazy { "lazy" } else { "default" }
    );
    let mut result = Ok(());
    for mode in modes.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let parsed = match mode {
            "window" => Mode::Window,
            "batch" => Mode::Batch,
            "pipelined" => Mode::Pipelined,
            other => {
                result = Err(format!("unknown mode {other:?} (window, batch, pipelined)"));
                break;
            }
        };
        let before = loadavg();
        match run(&channel, &name, n, window, parsed, &body).await {
            Ok(elapsed) => {
                let rate = n as f64 / elapsed.as_secs_f64();
                println!(
                    "amqp_baseline mode={mode:<9} n={n} window={window} elapsed={:.2}s \
                     rate={rate:.0} msgs/s loadavg_before=[{before}] loadavg_after=[{}]",
                    elapsed.as_secs_f64(),
                    loadavg()
                );
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        // Start the next mode from an empty queue.
        let _ = channel
            .queue_purge(short(&name), QueuePurgeOptions::default())
            .await;
    }

    let _ = channel
        .queue_delete(short(&name), QueueDeleteOptions::default())
        .await;
    let _ = channel
        .exchange_delete(short(&name), ExchangeDeleteOptions::default())
        .await;
    let _ = connection.close(200, "done".into()).await;
    result
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and then this needs no
    // broker. Settings come from the environment.
    if !std::env::args().any(|a| a == "--bench") {
        println!("amqp_baseline: skipped (not run by `cargo bench`)");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(main_async()) {
        eprintln!("amqp_baseline failed: {e}");
        std::process::exit(1);
    }
}
