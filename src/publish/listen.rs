//! The AMQP side of `hlgate listen`: a developer's own durable queue, bound on the events
//! exchange and consumed one message at a time, so that a message not yet acked stays first in
//! line.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Acker, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};

use super::amqp::{declare_topology, reply_code};

/// How long connecting may take before the broker counts as unreachable: a host that drops
/// packets would otherwise hold the start for the system's TCP timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The queue a listener declares, and what bounds it.
#[derive(Clone, Debug)]
pub struct ListenQueue {
    /// The whole queue name, `hlgate.listen.<name>`.
    pub name: String,
    pub exchange: String,
    /// Routing-key patterns bound on the exchange.
    pub patterns: Vec<String>,
    /// Most messages the queue holds (`x-max-length`).
    pub max_length: u32,
    /// Most message bytes the queue holds (`x-max-length-bytes`).
    pub max_bytes: u64,
    /// How long a message waits in the queue before the broker drops it (`x-message-ttl`).
    pub message_ttl: Duration,
    /// Declare the exchange as `serve` does before binding (`HLGATE_DECLARE_TOPOLOGY`).
    pub declare_topology: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot connect to RabbitMQ: {0}")]
    Connect(String),
    #[error(
        "queue {queue} exists with other limits (max length, bytes or TTL), or the broker \
         refuses these ({broker}): keep its limits, or remove it first with --delete"
    )]
    OtherLimits { queue: String, broker: String },
    #[error("no exchange {0} on the broker (has hlgate declared it?)")]
    NoExchange(String),
    #[error("no queue {0}")]
    NoQueue(String),
    #[error("the broker refused: {0}")]
    Refused(String),
    #[error("lost the broker: {0}")]
    Lost(String),
}

/// One line of text for a lapin error (some carry the broker's reply over several fields).
fn one_line(e: &lapin::Error) -> String {
    e.to_string().replace(['\n', '\r'], " ")
}

fn refused(e: lapin::Error) -> ListenError {
    ListenError::Refused(one_line(&e))
}

async fn connect(url: &str) -> Result<(Connection, Channel), ListenError> {
    let properties =
        ConnectionProperties::default().with_connection_name(LongString::from("hlgate listen"));
    let connection = tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, properties))
        .await
        .map_err(|_| ListenError::Connect(format!("no answer within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| ListenError::Connect(one_line(&e)))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| ListenError::Connect(one_line(&e)))?;
    Ok((connection, channel))
}

fn queue_arguments(queue: &ListenQueue) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(queue.max_length.into()),
    );
    args.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(queue.max_bytes.min(i64::MAX as u64) as i64),
    );
    args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(queue.message_ttl.as_millis().min(i64::MAX as u128) as i64),
    );
    // A full queue drops its oldest message. `reject-publish` would nack hlgate's publishes,
    // and a forgotten listener would send production events to the quarantine.
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("drop-head")),
    );
    args
}

/// A consumer on the listener's queue, one unacked message at a time.
pub struct Listener {
    connection: Connection,
    channel: Channel,
    consumer: Consumer,
    /// Messages ready in the queue when it was declared.
    pub waiting: u32,
}

impl Listener {
    /// Connects, declares and binds the queue, and starts consuming it with a prefetch of one.
    pub async fn open(url: &str, queue: &ListenQueue) -> Result<Listener, ListenError> {
        let (connection, channel) = connect(url).await?;
        match Self::declare(&channel, queue).await {
            Ok((consumer, waiting)) => Ok(Listener {
                connection,
                channel,
                consumer,
                waiting,
            }),
            Err(e) => {
                let _ = connection.close(200, "bye".into()).await;
                Err(e)
            }
        }
    }

    async fn declare(
        channel: &Channel,
        queue: &ListenQueue,
    ) -> Result<(Consumer, u32), ListenError> {
        if queue.declare_topology {
            declare_topology(channel, &queue.exchange)
                .await
                .map_err(refused)?;
        } else {
            // Asked before the queue is declared, so that a wrong exchange leaves no queue.
            let passive = ExchangeDeclareOptions {
                passive: true,
                ..ExchangeDeclareOptions::default()
            };
            channel
                .exchange_declare(
                    queue.exchange.as_str().into(),
                    ExchangeKind::Topic,
                    passive,
                    FieldTable::default(),
                )
                .await
                .map_err(|e| match reply_code(&e) {
                    Some(404) => ListenError::NoExchange(queue.exchange.clone()),
                    _ => refused(e),
                })?;
        }
        let name = ShortString::from(queue.name.as_str());
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel
            .queue_declare(name.clone(), options, queue_arguments(queue))
            .await
            .map_err(|e| match reply_code(&e) {
                Some(406) => ListenError::OtherLimits {
                    queue: queue.name.clone(),
                    broker: one_line(&e),
                },
                _ => refused(e),
            })?;
        for pattern in &queue.patterns {
            channel
                .queue_bind(
                    name.clone(),
                    queue.exchange.as_str().into(),
                    pattern.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| match reply_code(&e) {
                    Some(404) => ListenError::NoExchange(queue.exchange.clone()),
                    _ => refused(e),
                })?;
        }
        channel
            .basic_qos(1, BasicQosOptions::default())
            .await
            .map_err(refused)?;
        let consumer = channel
            .basic_consume(
                name,
                "hlgate-listen".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(refused)?;
        Ok((consumer, declared.message_count()))
    }

    /// The next message; an error means the link is gone and the listener must be opened again
    /// (what was not acked goes back to the head of the queue).
    pub async fn next(&mut self) -> Result<Incoming, ListenError> {
        match self.consumer.next().await {
            Some(Ok(delivery)) => Ok(Incoming::from(delivery)),
            Some(Err(e)) => Err(ListenError::Lost(one_line(&e))),
            None => Err(ListenError::Lost("the consumer was cancelled".into())),
        }
    }

    /// Whether the channel still carries acks (a broker closes it, for one, when a message
    /// stays unacked past its `consumer_timeout`).
    pub fn is_open(&self) -> bool {
        self.channel.status().connected() && self.connection.status().connected()
    }

    /// Closes the connection; an unacked message goes back to the head of the queue.
    pub async fn close(self) {
        let close = self.connection.close(200, "bye".into());
        let _ = tokio::time::timeout(Duration::from_secs(2), close).await;
    }
}

/// One message off the listener's queue: its body as received and what hlgate said of it.
pub struct Incoming {
    pub body: Vec<u8>,
    pub routing_key: String,
    /// `x-hl-event-type`, else the routing key's first word.
    pub event_type: String,
    /// `x-hl-tenant-id`, else the routing key's second word.
    pub tenant: String,
    /// `x-hl-signature-scheme` and `x-hl-signature`, when both are there.
    pub signature: Option<(String, String)>,
    /// `x-hl-replay`: a replayed event.
    pub replay: bool,
    acker: Acker,
}

impl From<Delivery> for Incoming {
    fn from(delivery: Delivery) -> Incoming {
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        let text = |name: &str| match headers.inner().get(name) {
            Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into()),
            Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_string()),
            _ => None,
        };
        let routing_key = delivery.routing_key.as_str().to_string();
        let (key_type, key_tenant) = routing_key
            .split_once('.')
            .unwrap_or((routing_key.as_str(), ""));
        let signature = text("x-hl-signature-scheme").zip(text("x-hl-signature"));
        Incoming {
            event_type: text("x-hl-event-type").unwrap_or_else(|| key_type.to_string()),
            tenant: text("x-hl-tenant-id").unwrap_or_else(|| key_tenant.to_string()),
            signature,
            replay: matches!(
                headers.inner().get("x-hl-replay"),
                Some(AMQPValue::Boolean(true))
            ),
            body: delivery.data,
            routing_key,
            acker: delivery.acker,
        }
    }
}

impl Incoming {
    /// Acks the message: it leaves the queue.
    pub async fn ack(&self) -> Result<(), ListenError> {
        self.acker
            .ack(BasicAckOptions::default())
            .await
            .map(|_| ())
            .map_err(|e| ListenError::Lost(one_line(&e)))
    }
}

/// Deletes the queue `name`; answers how many messages it held.
pub async fn delete(url: &str, name: &str) -> Result<u32, ListenError> {
    let (connection, channel) = connect(url).await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    // Deleting a missing queue succeeds on RabbitMQ: ask first, so that a mistyped name says so.
    let exists = channel
        .queue_declare(name.into(), passive, FieldTable::default())
        .await;
    let result = match exists {
        Err(e) if reply_code(&e) == Some(404) => Err(ListenError::NoQueue(name.into())),
        Err(e) => Err(refused(e)),
        Ok(_) => {
            // The passive check closed no channel; this one deletes.
            channel
                .queue_delete(name.into(), QueueDeleteOptions::default())
                .await
                .map_err(refused)
        }
    };
    let _ = connection.close(200, "bye".into()).await;
    result
}
