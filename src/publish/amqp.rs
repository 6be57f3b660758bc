//! RabbitMQ specifics: connecting, declaring the topology, and turning an entry into a message.

use lapin::options::{
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::store::Entry;

/// Alternate exchange and queue for events no consumer has bound.
pub const UNROUTED: &str = "highlevel.unrouted";
/// Durable queue for schema-invalid events in enforce mode.
pub const QUARANTINE: &str = "highlevel.quarantine";

/// A connection and a channel in confirm mode.
pub struct Link {
    pub connection: Connection,
    pub channel: Channel,
}

/// Connects, opens a channel and turns on publisher confirms.
pub async fn connect(url: &str) -> Result<Link, lapin::Error> {
    let properties =
        ConnectionProperties::default().with_connection_name(LongString::from("hlgate"));
    let connection = Connection::connect(url, properties).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(Link {
        connection,
        channel,
    })
}

/// Declares the topic exchange with its alternate exchange, the unrouted exchange and queue,
/// and the quarantine queue when asked.
pub async fn declare_topology(
    channel: &Channel,
    exchange: &str,
    quarantine: bool,
) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .exchange_declare(
            UNROUTED.into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(UNROUTED.into(), durable_queue, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            UNROUTED.into(),
            UNROUTED.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            durable,
            exchange_arguments(),
        )
        .await?;
    if quarantine {
        channel
            .queue_declare(QUARANTINE.into(), durable_queue, FieldTable::default())
            .await?;
    }
    Ok(())
}

/// The main exchange's arguments: `alternate-exchange` = `highlevel.unrouted`.
pub fn exchange_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString(UNROUTED.into()),
    );
    args
}

/// A short string of at most 255 bytes, cut at a character boundary.
pub fn short(s: &str) -> ShortString {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::from(&s[..end])
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Token facts attached to a message when `HLGATE_ATTACH_TOKENS` is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attached {
    /// No token attachment configured.
    Off,
    Token {
        access_token: String,
        expires_at: OffsetDateTime,
    },
    Error(String),
}

/// The message properties and headers consumers rely on (README: "For consumers").
pub fn properties(entry: &Entry, attached: &Attached) -> BasicProperties {
    let mut h = FieldTable::default();
    h.insert("x-hl-event-type".into(), text(&entry.event_type));
    h.insert("x-hl-tenant-id".into(), text(&entry.tenant));
    if let Some(l) = &entry.location_id {
        h.insert("x-hl-location-id".into(), text(l));
    }
    if let Some(c) = &entry.company_id {
        h.insert("x-hl-company-id".into(), text(c));
    }
    if let Some(w) = &entry.webhook_id {
        h.insert("x-hl-webhook-id".into(), text(w));
    }
    h.insert(
        "x-hl-received-at".into(),
        text(&rfc3339_ms(entry.accepted_ms)),
    );
    h.insert("x-hl-signature-scheme".into(), text(entry.scheme.as_str()));
    h.insert("x-hl-signature".into(), text(&entry.signature));
    if entry.compact {
        h.insert("x-hl-signature-form".into(), text("compact"));
    }
    h.insert(
        "x-hl-sequence".into(),
        AMQPValue::LongLongInt(entry.seq as i64),
    );
    h.insert("x-hl-schema".into(), text(entry.schema.as_str()));
    match attached {
        Attached::Off => {}
        Attached::Token {
            access_token,
            expires_at,
        } => {
            h.insert("x-hl-access-token".into(), text(access_token));
            h.insert(
                "x-hl-token-expires-at".into(),
                text(&expires_at.format(&Rfc3339).unwrap_or_default()),
            );
        }
        Attached::Error(why) => {
            h.insert("x-hl-token-error".into(), text(why));
        }
    }
    let message_id = entry.message_id();
    if entry.replay {
        h.insert("x-hl-replay".into(), AMQPValue::Boolean(true));
    } else {
        h.insert("x-deduplication-header".into(), text(&message_id));
    }
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(short(&message_id))
        .with_timestamp(entry.accepted_ms / 1000)
        .with_type(short(&entry.event_type))
        .with_app_id("hlgate".into())
        .with_headers(h)
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(unix_ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&f).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_are_cut_on_char_boundaries() {
        let s = "é".repeat(200);
        let cut = short(&s);
        assert!(cut.as_str().len() <= 255);
        assert!(cut.as_str().chars().all(|c| c == 'é'));
    }

    #[test]
    fn received_at_has_milliseconds() {
        assert_eq!(rfc3339_ms(1_750_834_626_225), "2025-06-25T06:57:06.225Z");
    }
}
