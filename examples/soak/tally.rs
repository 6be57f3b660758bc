//! What was accepted and what was published: the events hlgate answered 200, and a durable
//! queue bound with `#` whose deliveries are counted by message id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;

/// Deliveries per message id.
pub(crate) type Seen = Arc<Mutex<HashMap<String, u32>>>;

pub(crate) struct Consumer {
    connection: lapin::Connection,
    queue: String,
    exchange: String,
    pub(crate) seen: Seen,
}

impl Consumer {
    /// Declares `exchange` as hlgate does, a durable queue bound with `#`, and consumes it.
    pub(crate) async fn bind(url: &str, exchange: &str) -> Result<Consumer, String> {
        let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
            .await
            .map_err(|e| format!("RabbitMQ {url}: {e}"))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        hlgate::publish::amqp::declare_topology(&channel, exchange)
            .await
            .map_err(|e| e.to_string())?;
        let queue = format!("hlgate.soak.{}", std::process::id());
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(queue.as_str().into(), durable, FieldTable::default())
            .await
            .map_err(|e| e.to_string())?;
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut deliveries = channel
            .basic_consume(
                queue.as_str().into(),
                "soak".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let seen: Seen = Arc::default();
        let counts = seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = deliveries.next().await {
                let id = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default();
                *counts.lock().expect("counts").entry(id).or_default() += 1;
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
        });
        Ok(Consumer {
            connection,
            queue,
            exchange: exchange.to_string(),
            seen,
        })
    }

    pub(crate) fn deliveries(&self) -> u64 {
        self.seen
            .lock()
            .expect("counts")
            .values()
            .map(|&n| u64::from(n))
            .sum()
    }

    pub(crate) async fn delete(self) {
        if let Ok(channel) = self.connection.create_channel().await {
            let _ = channel
                .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
                .await;
            let _ = channel
                .exchange_delete(
                    self.exchange.as_str().into(),
                    ExchangeDeleteOptions::default(),
                )
                .await;
        }
        let _ = self.connection.close(200, "bye".into()).await;
    }
}

/// How the accepted events fared.
#[derive(Debug, Default)]
pub(crate) struct Account {
    pub(crate) accepted: usize,
    /// Accepted and never delivered.
    pub(crate) missing: Vec<String>,
    /// Deliveries beyond the first.
    pub(crate) copies: u64,
    pub(crate) max_copies: u32,
}

pub(crate) fn account(accepted: &[String], seen: &Seen) -> Account {
    let seen = seen.lock().expect("counts");
    let mut account = Account {
        accepted: accepted.len(),
        ..Account::default()
    };
    for id in accepted {
        match seen.get(id) {
            None => account.missing.push(id.clone()),
            Some(&n) => {
                account.copies += u64::from(n - 1);
                account.max_copies = account.max_copies.max(n);
            }
        }
    }
    account
}
