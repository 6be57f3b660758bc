//! A consumer of hlgate's events that trusts nothing it has not checked itself: it declares its
//! own durable queue, binds a routing-key pattern on the events exchange, verifies HighLevel's
//! signature (`x-hl-signature`) over each body again, prints one line per event and acks it, or
//! rejects it without requeue when the signature does not verify.
//!
//! ```text
//! cargo run --example consumer                                # every event ('#')
//! cargo run --example consumer -- --bind 'ContactCreate.*'    # one type, every tenant
//! CONSUMER_BIND='*.ve9EPM428h8vShlRW1KT' cargo run --example consumer   # one location
//! ```
//!
//! Settings come from the same `HLGATE_*` environment hlgate reads: `HLGATE_AMQP_URL`,
//! `HLGATE_EXCHANGE`, `HLGATE_ED25519_PUBLIC_KEYS` / `HLGATE_RSA_PUBLIC_KEYS` (PEM text or
//! `@path`; HighLevel's published keys when unset) and `HLGATE_ACCEPT_LEGACY_RSA`.
//!
//! Output, one line per message:
//! `<ack|reject> <routing key> message_id=<id> schema=<x-hl-schema> signature=<verdict>`,
//! then ` trace=<trace id> parent=<span id>` when the message carries a W3C `traceparent`.
//!
//! Every message carries the `traceparent` of hlgate's publish span (a child of the webhook's
//! span when hlgate exports traces). A consumer continues the trace by making its own span a
//! child of that one: same trace id, the publish span's id as its parent, the sampled flag
//! kept. With an OpenTelemetry SDK that is its W3C `TraceContextPropagator` extracting from the
//! message headers; here the header is only read and printed.
//!
//! With `--contacts`, the consumer also calls HighLevel through hlgate's API proxy for each
//! verified event about a contact: `GET /contacts/{id}` for the event's tenant
//! (`x-hl-tenant-id`), holding no token, adding no `Version` header, and sharing the tenant's
//! rate limit with every other service of the app without seeing it. The proxy is
//! `HLGATE_ADMIN_LISTEN`; the bearer `CONSUMER_PROXY_TOKEN` (one of `HLGATE_PROXY_TOKENS`), else
//! `HLGATE_ADMIN_TOKEN`, else none (a loopback listener with neither set). The line then ends
//! with `contact=<id> status=<HighLevel's status>`.
//!
//! The signature covers the delivery HighLevel sent. An element of a top-level array
//! (`message_id` `<key>/<index>`) is published as its own compact JSON, which the signature
//! does not cover, so it cannot be verified here: such elements are rejected unless
//! `--accept-array-elements` is given (then they are acked and reported as `unverifiable`).

use std::collections::HashMap;

use futures_util::StreamExt;
use hlgate::config::Settings;
use hlgate::traces::SpanContext;
use hlgate::verify::{SignatureHeaders, Verifier};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Connection, ConnectionProperties};

const USAGE: &str = "\
usage: cargo run --example consumer -- [options]

  --bind PATTERN            routing-key pattern to bind, e.g. 'ContactCreate.*' or '*.<locationId>'
                            (repeatable; default $CONSUMER_BIND, else '#')
  --queue NAME              durable queue to declare and consume (default $CONSUMER_QUEUE,
                            else hlgate.consumer.example)
  --max N                   stop after N messages (default: run until Ctrl-C)
  --contacts                fetch each contact event's contact through hlgate's API proxy
  --accept-array-elements   ack elements of array deliveries, which cannot be verified
                            (default: reject them)

Connection, exchange and keys: HLGATE_AMQP_URL, HLGATE_EXCHANGE, HLGATE_ED25519_PUBLIC_KEYS,
HLGATE_RSA_PUBLIC_KEYS, HLGATE_ACCEPT_LEGACY_RSA, as for hlgate itself.
";

struct Args {
    patterns: Vec<String>,
    queue: String,
    max: Option<u64>,
    accept_array_elements: bool,
    contacts: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        patterns: Vec::new(),
        queue: std::env::var("CONSUMER_QUEUE")
            .ok()
            .filter(|q| !q.is_empty())
            .unwrap_or_else(|| "hlgate.consumer.example".into()),
        max: None,
        accept_array_elements: false,
        contacts: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--bind" => args.patterns.push(value()?),
            "--queue" => args.queue = value()?,
            "--max" => {
                let n = value()?;
                args.max = Some(
                    n.parse()
                        .map_err(|_| format!("--max {n:?}: not a number"))?,
                );
            }
            "--accept-array-elements" => args.accept_array_elements = true,
            "--contacts" => args.contacts = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if args.patterns.is_empty() {
        args.patterns.push(
            std::env::var("CONSUMER_BIND")
                .ok()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "#".into()),
        );
    }
    Ok(args)
}

/// What the consumer concluded about one message.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The signature verifies over the body.
    Verified,
    /// An element of an array delivery: the signature covers the whole array, not this body.
    ArrayElement,
    /// Missing headers or a signature that does not verify.
    Failed(&'static str),
}

fn header<'a>(delivery: &'a Delivery, name: &str) -> Option<&'a [u8]> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        _ => None,
    }
}

fn header_text<'a>(delivery: &'a Delivery, name: &str) -> Option<&'a str> {
    header(delivery, name).and_then(|b| std::str::from_utf8(b).ok())
}

fn message_id(delivery: &Delivery) -> &str {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map_or("-", |id| id.as_str())
}

/// `<key>/<index>`: the key is the delivery's `webhookId`, else `sha256:<64 hex>`.
fn is_array_element(message_id: &str, webhook_id: Option<&str>) -> bool {
    let Some((key, index)) = message_id.rsplit_once('/') else {
        return false;
    };
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    match webhook_id {
        Some(id) => key == id,
        None => key
            .strip_prefix("sha256:")
            .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())),
    }
}

fn verify(verifier: &Verifier, delivery: &Delivery) -> Verdict {
    let Some(signature) = header_text(delivery, "x-hl-signature") else {
        return Verdict::Failed("no x-hl-signature");
    };
    let headers = match header_text(delivery, "x-hl-signature-scheme") {
        Some("ed25519") => SignatureHeaders {
            ghl: Some(signature),
            wh: None,
        },
        Some("rsa-sha256") => SignatureHeaders {
            ghl: None,
            wh: Some(signature),
        },
        _ => return Verdict::Failed("unknown x-hl-signature-scheme"),
    };
    match verifier.verify(&delivery.data, headers) {
        Ok(_) => Verdict::Verified,
        Err(_)
            if is_array_element(
                message_id(delivery),
                header_text(delivery, "x-hl-webhook-id"),
            ) =>
        {
            Verdict::ArrayElement
        }
        Err(_) => Verdict::Failed("invalid"),
    }
}

/// ` trace=<trace id> parent=<span id>` from a valid `traceparent`: the trace this consumer's
/// own span would join, and the span it would be a child of.
fn trace(delivery: &Delivery) -> String {
    let Some(value) = header_text(delivery, "traceparent") else {
        return String::new();
    };
    if SpanContext::from_traceparent(value).is_none() {
        return String::new();
    }
    let mut parts = value.trim().split('-').skip(1);
    let (trace_id, parent) = (parts.next().unwrap_or("-"), parts.next().unwrap_or("-"));
    format!(" trace={trace_id} parent={parent}")
}

/// The contact an event is about: `contactId`, or the `id` of a contact event.
fn contact_id(body: &[u8]) -> Option<String> {
    let event: serde_json::Value = serde_json::from_slice(body).ok()?;
    let is_contact = event.get("type")?.as_str()?.starts_with("Contact");
    let id = event
        .get("contactId")
        .or_else(|| is_contact.then(|| event.get("id")).flatten())?;
    id.as_str().map(String::from)
}

/// HighLevel's status for the event's contact, fetched through hlgate's API proxy; `None` for
/// an event about no contact.
async fn fetch_contact(proxy: &Proxy, delivery: &Delivery) -> Option<String> {
    let tenant = header_text(delivery, "x-hl-tenant-id")?;
    let contact = contact_id(&delivery.data)?;
    let mut request = proxy
        .http
        .get(format!("{}/{tenant}/contacts/{contact}", proxy.base));
    if let Some(token) = &proxy.bearer {
        request = request.bearer_auth(token);
    }
    // 429 `rate_limited` or 502 `upstream_unavailable` are hlgate's; anything else HighLevel's.
    let status = match request.send().await {
        Ok(answer) => answer.status().as_u16().to_string(),
        Err(_) => "unreachable".into(),
    };
    Some(format!(" contact={contact} status={status}"))
}

/// Where hlgate's API proxy is and how to open it.
struct Proxy {
    http: reqwest::Client,
    base: String,
    bearer: Option<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(why) => {
            if !why.is_empty() {
                eprintln!("consumer: {why}");
            }
            eprint!("{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("consumer: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let env: HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("HLGATE_"))
        .collect();
    let settings = Settings::load(None, &env).map_err(|e| e.to_string())?;
    let verifier = Verifier {
        ed25519: settings.ingest.ed25519_keys.clone(),
        rsa: settings.ingest.rsa_keys.clone(),
        accept_legacy_rsa: settings.ingest.accept_legacy_rsa,
    };

    let proxy = Proxy {
        http: reqwest::Client::new(),
        base: format!("http://{}/v1/highlevel", settings.http.admin_listen),
        bearer: std::env::var("CONSUMER_PROXY_TOKEN")
            .ok()
            .or_else(|| env.get("HLGATE_ADMIN_TOKEN").cloned()),
    };

    let properties = ConnectionProperties::default()
        .with_connection_name(LongString::from("hlgate-example-consumer"));
    let connection = Connection::connect(settings.amqp.url.expose(), properties)
        .await
        .map_err(|e| format!("cannot connect to RabbitMQ: {e}"))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    let amqp = |e: lapin::Error| e.to_string();

    // Declared exactly as hlgate declares them (hlgate's own function), so either may start
    // first.
    hlgate::publish::amqp::declare_topology(&channel, &settings.amqp.exchange)
        .await
        .map_err(amqp)?;

    let queue = args.queue.as_str();
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(amqp)?;
    for pattern in &args.patterns {
        channel
            .queue_bind(
                queue.into(),
                settings.amqp.exchange.as_str().into(),
                pattern.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp)?;
    }
    channel
        .basic_qos(64, BasicQosOptions::default())
        .await
        .map_err(amqp)?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp)?;
    eprintln!(
        "consumer: queue {queue} bound to {} with {:?}; Ctrl-C stops",
        settings.amqp.exchange, args.patterns
    );

    let mut seen = 0u64;
    while args.max.is_none_or(|max| seen < max) {
        let delivery = tokio::select! {
            next = consumer.next() => match next {
                Some(delivery) => delivery.map_err(amqp)?,
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        };
        seen += 1;
        let verdict = verify(&verifier, &delivery);
        let (ack, signature) = match verdict {
            Verdict::Verified => (true, "verified"),
            Verdict::ArrayElement => (args.accept_array_elements, "unverifiable"),
            Verdict::Failed(why) => (false, why),
        };
        let contact = match (args.contacts, &verdict) {
            (true, Verdict::Verified) => fetch_contact(&proxy, &delivery).await,
            _ => None,
        };
        println!(
            "{} {} message_id={} schema={} signature={signature}{}{}",
            if ack { "ack" } else { "reject" },
            delivery.routing_key,
            message_id(&delivery),
            header_text(&delivery, "x-hl-schema").unwrap_or("-"),
            contact.unwrap_or_default(),
            trace(&delivery),
        );
        if ack {
            delivery
                .ack(BasicAckOptions::default())
                .await
                .map_err(amqp)?;
        } else {
            // No requeue: a message that fails verification would fail again. RabbitMQ drops
            // it, or dead-letters it when the queue has a dead-letter exchange.
            delivery
                .reject(BasicRejectOptions { requeue: false })
                .await
                .map_err(amqp)?;
        }
    }
    let _ = channel.close(200, "bye".into()).await;
    let _ = connection.close(200, "bye".into()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::is_array_element;

    #[test]
    fn array_elements_are_recognised_by_their_message_id() {
        let sha = format!("sha256:{}", "ab".repeat(32));
        assert!(is_array_element(&format!("{sha}/0"), None));
        assert!(is_array_element("wh-1/12", Some("wh-1")));
        assert!(!is_array_element(&sha, None));
        assert!(!is_array_element("wh-1", Some("wh-1")));
        assert!(!is_array_element("a/b/3", Some("wh-1")));
        assert!(!is_array_element("sha256:short/0", None));
    }
}
