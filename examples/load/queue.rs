//! The consumer queue `--bind` declares, counts and deletes, and the clean-up flags.

/// The queue `--bind` makes: durable and classic (`--queue-version`, `--queue-mode`), like the
/// AMQP baseline's.
pub(crate) struct BoundQueue {
    pub(crate) connection: lapin::Connection,
    channel: lapin::Channel,
    pub(crate) name: String,
}

pub(crate) async fn amqp_channel(url: &str) -> Result<(lapin::Connection, lapin::Channel), String> {
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .map_err(|e| format!("RabbitMQ {url}: {e}"))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| format!("RabbitMQ channel: {e}"))?;
    Ok((connection, channel))
}

pub(crate) async fn bind_queue(
    url: &str,
    exchange: &str,
    version: Option<u8>,
    lazy: bool,
) -> Result<BoundQueue, String> {
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};
    let (connection, channel) = amqp_channel(url).await?;
    // The exchange must exist already (hlgate declares it at start-up).
    channel
        .exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("exchange {exchange} (is hlgate running?): {e}"))?;
    let name = format!("hlgate.load.{}", std::process::id());
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("classic".into()),
    );
    if let Some(version) = version {
        arguments.insert("x-queue-version".into(), AMQPValue::LongInt(version.into()));
    }
    if lazy {
        arguments.insert("x-queue-mode".into(), AMQPValue::LongString("lazy".into()));
    }
    channel
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .map_err(|e| format!("queue {name}: {e}"))?;
    channel
        .queue_bind(
            name.as_str().into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("binding {name} to {exchange}: {e}"))?;
    Ok(BoundQueue {
        connection,
        channel,
        name,
    })
}

impl BoundQueue {
    pub(crate) async fn message_count(&self) -> Result<u32, String> {
        use lapin::options::QueueDeclareOptions;
        self.channel
            .queue_declare(
                self.name.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .map(|q| q.message_count())
            .map_err(|e| format!("queue {}: {e}", self.name))
    }

    pub(crate) async fn delete(self) -> Result<(), String> {
        let deleted = self
            .channel
            .queue_delete(self.name.as_str().into(), Default::default())
            .await
            .map_err(|e| format!("deleting queue {}: {e}", self.name));
        let _ = self.connection.close(200, "done".into()).await;
        deleted.map(|_| ())
    }
}

pub(crate) async fn delete_queue(url: &str, queue: &str) -> Result<(), String> {
    if !queue.starts_with("hlgate.load.") {
        return Err(format!(
            "refusing to delete {queue:?}: only this tool's hlgate.load.* queues"
        ));
    }
    let (connection, channel) = amqp_channel(url).await?;
    let deleted = channel
        .queue_delete(queue.into(), Default::default())
        .await
        .map_err(|e| format!("deleting queue {queue}: {e}"));
    let _ = connection.close(200, "done".into()).await;
    let count = deleted?;
    println!("deleted queue {queue} ({count} messages)");
    Ok(())
}

pub(crate) async fn delete_exchange(url: &str, exchange: &str) -> Result<(), String> {
    if exchange.starts_with("amq.") || exchange == "highlevel.unrouted" || exchange.is_empty() {
        return Err(format!("refusing to delete {exchange:?}"));
    }
    let (connection, channel) = amqp_channel(url).await?;
    let deleted = channel
        .exchange_delete(exchange.into(), Default::default())
        .await
        .map_err(|e| format!("deleting exchange {exchange}: {e}"));
    let _ = connection.close(200, "done".into()).await;
    deleted?;
    println!("deleted exchange {exchange}");
    Ok(())
}
