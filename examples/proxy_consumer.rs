//! A consumer that calls HighLevel through hlgate's API proxy: for each event it consumes it
//! fetches `GET /contacts/{id}` for the event's tenant, holding no token, adding no `Version`
//! header and sharing the tenant's rate limit with every other service of the app without
//! knowing about it. Events without a contact id are acked without a call.
//!
//! ```text
//! CONSUMER_PROXY_TOKEN=… cargo run --example proxy_consumer -- --bind 'Contact*.*'
//! ```
//!
//! The proxy is `HLGATE_ADMIN_LISTEN` (the admin listener); the bearer is `CONSUMER_PROXY_TOKEN`
//! (one of `HLGATE_PROXY_TOKENS`), else `HLGATE_ADMIN_TOKEN`, else none (a loopback listener
//! with neither set). Output, one line per message: `<routing key> contact=<id> status=<code>`.

use std::collections::HashMap;

use futures_util::StreamExt;
use hlgate::config::Settings;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};

/// The delivery's tenant, as hlgate stamps it.
fn tenant(delivery: &lapin::message::Delivery) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get("x-hl-tenant-id")? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

/// The contact an event is about: `contactId`, or `id` of a contact event.
fn contact_id(body: &[u8]) -> Option<String> {
    let event: serde_json::Value = serde_json::from_slice(body).ok()?;
    let id = event.get("contactId").or_else(|| {
        let contact = event.get("type")?.as_str()?.starts_with("Contact");
        contact.then(|| event.get("id")).flatten()
    })?;
    id.as_str().map(String::from)
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let env: HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("HLGATE_"))
        .collect();
    let settings = Settings::load(None, &env).map_err(|e| e.to_string())?;
    let mut args = std::env::args().skip(1);
    let mut pattern = "#".to_string();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bind" => pattern = args.next().ok_or("--bind wants a pattern")?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let bearer = std::env::var("CONSUMER_PROXY_TOKEN")
        .ok()
        .or_else(|| env.get("HLGATE_ADMIN_TOKEN").cloned());
    let proxy = format!("http://{}/v1/highlevel", settings.http.admin_listen);
    let http = reqwest::Client::new();

    let connection =
        Connection::connect(settings.amqp.url.expose(), ConnectionProperties::default())
            .await
            .map_err(|e| format!("cannot connect to RabbitMQ: {e}"))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    let amqp = |e: lapin::Error| e.to_string();
    hlgate::publish::amqp::declare_topology(&channel, &settings.amqp.exchange)
        .await
        .map_err(amqp)?;
    let queue = "hlgate.proxy-consumer.example";
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), durable, FieldTable::default())
        .await
        .map_err(amqp)?;
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
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp)?;

    while let Some(delivery) = consumer.next().await {
        let delivery = delivery.map_err(amqp)?;
        let key = delivery.routing_key.as_str().to_string();
        let (Some(tenant), Some(contact)) = (tenant(&delivery), contact_id(&delivery.data)) else {
            println!("{key} no contact");
            delivery
                .ack(BasicAckOptions::default())
                .await
                .map_err(amqp)?;
            continue;
        };
        let mut request = http.get(format!("{proxy}/{tenant}/contacts/{contact}"));
        if let Some(token) = &bearer {
            request = request.bearer_auth(token);
        }
        match request.send().await {
            // HighLevel's answer, whatever it is: a 404 contact is an answer too.
            Ok(answer) if answer.status() != 429 && answer.status() != 502 => {
                println!("{key} contact={contact} status={}", answer.status());
                delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(amqp)?;
            }
            // Over the tenant's budget or HighLevel away: the event comes back later.
            outcome => {
                let status = outcome.map_or("unreachable".into(), |a| a.status().to_string());
                println!("{key} contact={contact} status={status} requeued");
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                };
                delivery.nack(requeue).await.map_err(amqp)?;
            }
        }
    }
    Ok(())
}
