//! RabbitMQ specifics: connecting, declaring the topology, and turning an entry into a message.

use std::borrow::Cow;

use lapin::options::{
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::entry::Entry;
use crate::traces::SpanContext;

/// Alternate exchange and queue for events no consumer has bound.
pub const UNROUTED: &str = "highlevel.unrouted";
/// Durable queue for what is not published to the exchange: schema-invalid events in enforce
/// mode, and entries the broker refuses for themselves.
pub const QUARANTINE: &str = "highlevel.quarantine";
/// Longest header value taken from an event's body that is sent as is.
pub const MAX_HEADER_VALUE: usize = 1024;
/// Follows the kept start of a longer value, before the SHA-256 of the whole value.
const CUT_MARK: &str = "...sha256:";

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

/// The AMQP reply code with which the broker closed the channel or connection, if it did.
pub fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

/// Whether the broker's refusal concerns the exchange or the user's permission on it (404 no
/// such exchange, 403 access refused), which every publish would get, rather than the message.
pub fn refuses_every_publish(code: u16) -> bool {
    matches!(code, 403 | 404)
}

/// Declares the topic exchange with its alternate exchange, the unrouted exchange and queue,
/// and the quarantine queue.
pub async fn declare_topology(channel: &Channel, exchange: &str) -> Result<(), lapin::Error> {
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
    channel
        .queue_declare(QUARANTINE.into(), durable_queue, FieldTable::default())
        .await?;
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
        access_token: crate::secret::Secret,
        expires_at: OffsetDateTime,
    },
    Error(String),
}

/// `value`, or, when it is longer than [`MAX_HEADER_VALUE`], its start (cut at a character
/// boundary), `...sha256:` and the hex SHA-256 of the whole value: a frame holds a message's
/// headers whole, and a broker closes the connection on a frame over its limit.
pub fn bounded(value: &str) -> Cow<'_, str> {
    if value.len() <= MAX_HEADER_VALUE {
        return Cow::Borrowed(value);
    }
    let mut end = MAX_HEADER_VALUE - CUT_MARK.len() - 64;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, value.as_bytes());
    Cow::Owned(format!(
        "{}{CUT_MARK}{}",
        &value[..end],
        crate::event::hex(digest.as_ref())
    ))
}

/// A header table whose values from the body are bounded; `x-hl-truncated` lists the cut ones.
#[derive(Default)]
struct Headers {
    table: FieldTable,
    cut: Vec<&'static str>,
}

impl Headers {
    /// A value hlgate chose or checked (bounded already).
    fn put(&mut self, name: &'static str, value: AMQPValue) {
        self.table.insert(name.into(), value);
    }

    /// A value that may be long (read from the body, or an error text).
    fn capped(&mut self, name: &'static str, value: &str) {
        let value = bounded(value);
        if let Cow::Owned(_) = value {
            self.cut.push(name);
        }
        self.put(name, text(&value));
    }

    fn finish(mut self) -> FieldTable {
        if !self.cut.is_empty() {
            let cut = self.cut.join(",");
            self.put("x-hl-truncated", text(&cut));
        }
        self.table
    }
}

/// The message properties and headers consumers rely on (README: "For consumers"). The
/// signature is sent whole: it verified against a configured key, so it is as long as that
/// key's signatures; the access token comes from HighLevel, not from the body. `trace` is the
/// publish span's place, sent as the W3C `traceparent` a consumer continues.
pub fn properties(
    entry: &Entry,
    attached: &Attached,
    trace: Option<&SpanContext>,
) -> BasicProperties {
    let mut h = Headers::default();
    h.capped("x-hl-event-type", &entry.event_type);
    h.capped("x-hl-tenant-id", &entry.tenant);
    if let Some(l) = &entry.location_id {
        h.capped("x-hl-location-id", l);
    }
    if let Some(c) = &entry.company_id {
        h.capped("x-hl-company-id", c);
    }
    if let Some(w) = &entry.webhook_id {
        h.capped("x-hl-webhook-id", w);
    }
    h.put("x-hl-received-at", text(&rfc3339_ms(entry.accepted_ms)));
    h.put("x-hl-signature-scheme", text(entry.scheme.as_str()));
    h.put("x-hl-signature", text(&entry.signature));
    if entry.compact {
        h.put("x-hl-signature-form", text("compact"));
    }
    h.put("x-hl-sequence", AMQPValue::LongLongInt(entry.seq as i64));
    h.put("x-hl-schema", text(entry.schema.as_str()));
    match attached {
        Attached::Off => {}
        Attached::Token {
            access_token,
            expires_at,
        } => {
            h.put("x-hl-access-token", text(access_token.expose()));
            h.put(
                "x-hl-token-expires-at",
                text(&expires_at.format(&Rfc3339).unwrap_or_default()),
            );
        }
        Attached::Error(why) => {
            h.put("x-hl-token-error", text(why));
        }
    }
    if let Some(trace) = trace {
        h.put("traceparent", text(&trace.traceparent()));
    }
    let message_id = entry.message_id();
    if entry.replay {
        h.put("x-hl-replay", AMQPValue::Boolean(true));
    } else {
        h.put("x-deduplication-header", text(&message_id));
    }
    persistent(entry, &message_id).with_headers(h.finish())
}

/// What a message diverted to the quarantine queue carries: the body as stored, why, and only
/// the headers hlgate itself bounds, so that what the broker refused in the full message fits.
pub fn quarantine_properties(entry: &Entry, why: &str) -> BasicProperties {
    let mut h = Headers::default();
    h.capped("x-hl-quarantine-reason", why);
    h.put("x-hl-sequence", AMQPValue::LongLongInt(entry.seq as i64));
    h.put("x-hl-received-at", text(&rfc3339_ms(entry.accepted_ms)));
    h.put("x-hl-signature-scheme", text(entry.scheme.as_str()));
    h.put("x-hl-signature", text(&entry.signature));
    if entry.compact {
        h.put("x-hl-signature-form", text("compact"));
    }
    persistent(entry, &entry.message_id()).with_headers(h.finish())
}

/// The message `entry` is published as, for an operator to read (`GET /v1/events/{seq}`):
/// its routing key, properties and headers as [`properties`] makes them, with no token
/// attached (the tokens go on at publish time, and never into an answer) and no `traceparent`
/// (each publish has its own).
pub fn message_view(entry: &Entry) -> serde_json::Value {
    let props = properties(entry, &Attached::Off, None);
    let mut headers = serde_json::Map::new();
    if let Some(table) = props.headers() {
        for (name, value) in table.inner() {
            headers.insert(name.to_string(), json_value(value));
        }
    }
    let text = |s: Option<&ShortString>| s.map(|s| s.to_string());
    serde_json::json!({
        "routing_key": entry.routing_key(),
        "properties": {
            "message_id": text(props.message_id().as_ref()),
            "type": text(props.kind().as_ref()),
            "timestamp": props.timestamp(),
            "content_type": text(props.content_type().as_ref()),
            "delivery_mode": props.delivery_mode(),
            "app_id": text(props.app_id().as_ref()),
        },
        "headers": headers,
    })
}

fn json_value(value: &AMQPValue) -> serde_json::Value {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned().into(),
        AMQPValue::Boolean(b) => (*b).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        other => format!("{other:?}").into(),
    }
}

fn persistent(entry: &Entry, message_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(short(message_id))
        .with_timestamp(entry.accepted_ms / 1000)
        .with_type(short(&entry.event_type))
        .with_app_id("hlgate".into())
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
    fn long_values_keep_their_start_and_the_hash_of_the_whole() {
        assert_eq!(bounded("short"), "short");
        let long = format!("{}{}", "é".repeat(600), "tail");
        let cut = bounded(&long);
        assert!(cut.len() <= MAX_HEADER_VALUE);
        let (start, hash) = cut.split_once(CUT_MARK).unwrap();
        assert!(long.starts_with(start) && !start.is_empty());
        assert_eq!(hash.len(), 64);
        let other = format!("{}{}", "é".repeat(600), "tall");
        assert_ne!(
            bounded(&other),
            cut,
            "values that differ past the cut stay different"
        );
    }

    #[test]
    fn received_at_has_milliseconds() {
        assert_eq!(rfc3339_ms(1_750_834_626_225), "2025-06-25T06:57:06.225Z");
    }
}
