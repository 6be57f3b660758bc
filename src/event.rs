//! Pure event facts from a body: type, tenant, dedup key, routing key, timestamp.
//!
//! A body is parsed once. A top-level array is one delivery of several events; each element
//! becomes its own [`Event`] with its compact JSON as body.

use ring::digest;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use time::OffsetDateTime;

/// Type name for bodies that are not JSON.
pub const MALFORMED: &str = "_malformed";
/// Type name for JSON without a usable `type`.
pub const UNKNOWN: &str = "unknown";
/// Tenant name when no tenant field is usable.
pub const NO_TENANT: &str = "none";

/// Longest webhook id used as a dedup key as is; longer ones are hashed, because the key is
/// also the AMQP `message_id`, a short string of at most 255 bytes.
const MAX_PLAIN_KEY: usize = 200;
/// Each part of a routing key is cut to this many bytes, so the key stays under 255.
const MAX_KEY_PART: usize = 120;

/// The fields hlgate reads; everything else is skipped without allocation. One reader for a
/// body's text and for its parsed tree, so the plain and the checked path read alike.
#[derive(Deserialize, Default)]
struct Fields {
    #[serde(rename = "type")]
    kind: Option<Value>,
    #[serde(rename = "locationId")]
    location_id: Option<Value>,
    #[serde(rename = "altId")]
    alt_id: Option<Value>,
    #[serde(rename = "altType")]
    alt_type: Option<Value>,
    #[serde(rename = "companyId")]
    company_id: Option<Value>,
    #[serde(rename = "webhookId")]
    webhook_id: Option<Value>,
    timestamp: Option<Value>,
}

impl Fields {
    /// The fields of a JSON text; `Err` when it is not an object (or too deep to read).
    fn from_text(text: &str) -> serde_json::Result<Fields> {
        serde_json::from_str::<Object>(text).map(|o| o.0)
    }

    /// The fields of a parsed tree; what is not an object has none.
    fn of(value: &Value) -> Fields {
        Object::deserialize(value).map_or_else(|_| Fields::default(), |o| o.0)
    }
}

/// [`Fields`] from a JSON object only: a derived struct also takes a sequence, and would read
/// an array's items as its fields.
struct Object(Fields);

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Object, D::Error> {
        struct OnlyMaps;
        impl<'de> serde::de::Visitor<'de> for OnlyMaps {
            type Value = Object;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Object, A::Error> {
                Fields::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Object)
            }
        }
        de.deserialize_map(OnlyMaps)
    }
}

/// A non-empty string field; `null`, empty strings and other JSON types count as absent.
fn text(v: Option<Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s),
        _ => None,
    }
}

/// One event of a delivery, ready for the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `type`, `unknown` or `_malformed`, as found (not sanitised).
    pub event_type: String,
    /// The tenant id as found, or `none`.
    pub tenant: String,
    pub location_id: Option<String>,
    pub company_id: Option<String>,
    pub webhook_id: Option<String>,
    /// The parsed `timestamp`, when present and parseable.
    pub timestamp: Option<OffsetDateTime>,
    /// The bytes to publish: the body as received, or an array element's compact JSON.
    pub body: Vec<u8>,
}

impl Event {
    fn from_fields(f: Fields, body: Vec<u8>) -> Event {
        let location_id = text(f.location_id);
        let company_id = text(f.company_id);
        let alt_is_location = matches!(&f.alt_type, Some(Value::String(t)) if t == "location");
        let alt_id = if alt_is_location {
            text(f.alt_id)
        } else {
            None
        };
        let tenant = location_id
            .clone()
            .or(alt_id)
            .or_else(|| company_id.clone())
            .unwrap_or_else(|| NO_TENANT.to_string());
        let timestamp = match f.timestamp {
            Some(Value::String(s)) => parse_timestamp(&s),
            _ => None,
        };
        Event {
            event_type: text(f.kind).unwrap_or_else(|| UNKNOWN.to_string()),
            tenant,
            location_id,
            company_id,
            webhook_id: text(f.webhook_id),
            timestamp,
            body,
        }
    }

    fn malformed(body: &[u8]) -> Event {
        Event {
            event_type: MALFORMED.to_string(),
            tenant: NO_TENANT.to_string(),
            location_id: None,
            company_id: None,
            webhook_id: None,
            timestamp: None,
            body: body.to_vec(),
        }
    }

    /// `<type>.<tenant>`, each part limited to `[A-Za-z0-9_-]`.
    pub fn routing_key(&self) -> String {
        routing_key(&self.event_type, &self.tenant)
    }
}

/// A whole delivery: its dedup key and its events (several for a top-level array).
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub dedup_key: String,
    /// True when the body was a top-level array.
    pub is_array: bool,
    pub events: Vec<Event>,
}

impl Delivery {
    /// A body of one event, keyed by its `webhookId` or its hash.
    fn single(event: Event, body: &[u8]) -> Delivery {
        Delivery {
            dedup_key: dedup_key(event.webhook_id.as_deref(), body),
            is_array: false,
            events: vec![event],
        }
    }

    /// The `message_id` of event `index`: the dedup key, or `<key>/<index>` for arrays.
    pub fn message_id(&self, index: usize) -> String {
        message_id(&self.dedup_key, self.is_array.then_some(index))
    }
}

/// The AMQP `message_id` of an event: its delivery's dedup key, `<key>/<index>` for an element
/// of a top-level array.
pub fn message_id(dedup_key: &str, index: Option<usize>) -> String {
    match index {
        Some(i) => format!("{dedup_key}/{i}"),
        None => dedup_key.to_string(),
    }
}

/// Parses a body once into a [`Delivery`]. Never fails: what is not JSON is `_malformed`.
pub fn parse_delivery(body: &[u8]) -> Delivery {
    parse_array(body, |_, _| ())
        .0
        .unwrap_or_else(|| parse_single(body))
}

/// A body that is not an array, its fields read from its text.
fn parse_single(body: &[u8]) -> Delivery {
    // JSON is UTF-8 (RFC 8259), and serde_json does not check the strings it skips.
    let Ok(text) = std::str::from_utf8(body) else {
        return Delivery::single(Event::malformed(body), body);
    };
    let event = match Fields::from_text(text) {
        Ok(fields) => Event::from_fields(fields, body.to_vec()),
        // JSON, but not an object (a string, a number…) or too deep to read: no fields.
        Err(_) if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => {
            Event::from_fields(Fields::default(), body.to_vec())
        }
        Err(_) => Event::malformed(body),
    };
    Delivery::single(event, body)
}

/// Like [`parse_delivery`], and hands each event with its parsed JSON to `check` (schema
/// validation) while that JSON is at hand: one parse of the body, and no event's tree outlives
/// its turn, so an array costs one element's tree at a time. `check` sees `None` for an event
/// that has no tree (not JSON, or nested too deeply to parse into one).
pub fn parse_delivery_checked<T>(
    body: &[u8],
    mut check: impl FnMut(&Event, Option<&Value>) -> T,
) -> (Delivery, Vec<T>) {
    if let (Some(delivery), checked) = parse_array(body, &mut check) {
        return (delivery, checked);
    }
    // Not UTF-8, not JSON, or JSON a `Value` cannot hold (a lone surrogate escape, nesting
    // too deep): the fields alone.
    let value = std::str::from_utf8(body)
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(text).ok());
    let delivery = match &value {
        Some(value) => Delivery::single(Event::from_fields(Fields::of(value), body.to_vec()), body),
        None => parse_single(body),
    };
    let checked = delivery
        .events
        .iter()
        .map(|e| check(e, value.as_ref()))
        .collect();
    (delivery, checked)
}

/// A top-level array, element by element; `None` when the body is not one.
fn parse_array<T>(
    body: &[u8],
    mut check: impl FnMut(&Event, Option<&Value>) -> T,
) -> (Option<Delivery>, Vec<T>) {
    let mut checked = Vec::new();
    let mut events = Vec::new();
    let key = walk_array(body, |event, value| {
        checked.push(check(&event, value));
        events.push(event);
    });
    let Some(key) = key else {
        return (None, Vec::new());
    };
    let delivery = Delivery {
        dedup_key: key,
        is_array: true,
        events,
    };
    (Some(delivery), checked)
}

/// Walks a top-level array once, handing each element's [`Event`] and parsed JSON to `each`
/// and keeping none of them: an array costs one element's tree at a time. Returns the
/// delivery's dedup key, or `None` when the body is not an array (what `each` saw then is
/// not a delivery: a body cut short after its first elements is not an array).
pub fn walk_array(body: &[u8], mut each: impl FnMut(Event, Option<&Value>)) -> Option<String> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'[') || std::str::from_utf8(body).is_err() {
        return None;
    }
    let mut webhook_id = None;
    for_each_element(body, |raw| {
        let (event, value) = element_event(raw.get());
        if webhook_id.is_none() {
            webhook_id.clone_from(&event.webhook_id);
        }
        each(event, value.as_ref());
    })?;
    Some(dedup_key(webhook_id.as_deref(), body))
}

/// Calls `each` with every element of a top-level JSON array, in order, as a slice borrowed
/// from `body`, without collecting them; their count, or `None` when `body` is not an array.
pub fn for_each_element<'a>(body: &'a [u8], each: impl FnMut(&'a RawValue)) -> Option<usize> {
    struct Elements<F>(F);
    impl<'de, F: FnMut(&'de RawValue)> serde::de::Visitor<'de> for Elements<F> {
        type Value = usize;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON array")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            mut self,
            mut seq: A,
        ) -> Result<usize, A::Error> {
            let mut count = 0;
            while let Some(raw) = seq.next_element::<&'de RawValue>()? {
                (self.0)(raw);
                count += 1;
            }
            Ok(count)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let count = serde::Deserializer::deserialize_seq(&mut de, Elements(each)).ok()?;
    de.end().ok()?;
    Some(count)
}

/// The event of one array element, `text` being its JSON as it stands in the array: what is
/// published for it, as [`parse_delivery`] makes it.
pub fn element(text: &str) -> Event {
    element_event(text).0
}

/// One array element, from one parse: its fields and its compact JSON. One nested too deeply
/// for a tree keeps its text as it is, and its fields are read from that text.
fn element_event(text: &str) -> (Event, Option<Value>) {
    match serde_json::from_str::<Value>(text) {
        Ok(value) => {
            let compact = serde_json::to_vec(&value).expect("a Value serialises");
            (Event::from_fields(Fields::of(&value), compact), Some(value))
        }
        Err(_) => {
            let fields = Fields::from_text(text).unwrap_or_default();
            (Event::from_fields(fields, text.into()), None)
        }
    }
}

/// `webhookId` when present, else `sha256:<hex of body>` (the form that verified).
pub fn dedup_key(webhook_id: Option<&str>, body: &[u8]) -> String {
    match webhook_id {
        Some(id) if id.len() <= MAX_PLAIN_KEY => id.to_string(),
        Some(id) => format!(
            "sha256:{}",
            hex(digest::digest(&digest::SHA256, id.as_bytes()).as_ref())
        ),
        None => format!(
            "sha256:{}",
            hex(digest::digest(&digest::SHA256, body).as_ref())
        ),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

/// Replaces every character outside `[A-Za-z0-9_-]` with `_`, cut to a bounded length.
pub fn sanitize(part: &str) -> String {
    let mut out: String = part
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    out.truncate(MAX_KEY_PART);
    out
}

/// `<type>.<tenant>` for the topic exchange.
pub fn routing_key(event_type: &str, tenant: &str) -> String {
    format!("{}.{}", sanitize(event_type), sanitize(tenant))
}

/// ISO-8601 / RFC 3339 `timestamp` as HighLevel sends it; `None` when it does not parse.
pub fn parse_timestamp(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_rule() {
        let cases = [
            (r#"{"locationId":"L","companyId":"C"}"#, "L"),
            (r#"{"altId":"A","altType":"location","companyId":"C"}"#, "A"),
            (r#"{"altId":"A","altType":"company","companyId":"C"}"#, "C"),
            (r#"{"locationId":null,"companyId":"C"}"#, "C"),
            (r#"{"locationId":"","altId":"A","altType":"location"}"#, "A"),
            (r#"{"type":"X"}"#, "none"),
            (r#"{"locationId":7}"#, "none"),
        ];
        for (body, tenant) in cases {
            assert_eq!(
                parse_delivery(body.as_bytes()).events[0].tenant,
                tenant,
                "{body}"
            );
        }
    }

    #[test]
    fn types_and_keys() {
        let d =
            parse_delivery(br#"{"type":"Contact Create!","locationId":"a.b","webhookId":"w1"}"#);
        assert_eq!(d.dedup_key, "w1");
        assert_eq!(d.events[0].routing_key(), "Contact_Create_.a_b");
        let d = parse_delivery(br#"{"locationId":"L"}"#);
        assert_eq!(d.events[0].routing_key(), "unknown.L");
        assert!(d.dedup_key.starts_with("sha256:"));
        assert_eq!(d.dedup_key.len(), 7 + 64);
        let d = parse_delivery(b"{not json");
        assert_eq!(d.events[0].routing_key(), "_malformed.none");
        assert_eq!(d.events[0].body, b"{not json");
        let d = parse_delivery(b"\"just a string\"");
        assert_eq!(d.events[0].routing_key(), "unknown.none");
    }

    #[test]
    fn arrays_split_into_compact_elements() {
        let body = br#"[ {"type":"SaasPlanCreate", "companyId":"C1"}, {"type":"SaasPlanCreate","companyId":"C2","webhookId":"w"} ]"#;
        let d = parse_delivery(body);
        assert!(d.is_array);
        assert_eq!(d.dedup_key, "w");
        assert_eq!(d.events.len(), 2);
        assert_eq!(
            d.events[0].body,
            br#"{"type":"SaasPlanCreate","companyId":"C1"}"#
        );
        assert_eq!(d.events[1].tenant, "C2");
        assert_eq!(d.message_id(1), "w/1");
        // An element that is an array has no fields, though serde would read seven items as them.
        let d = parse_delivery(br#"[["ContactCreate","L",null,null,null,"w",null]]"#);
        assert_eq!(d.events[0].routing_key(), "unknown.none");
        assert!(d.dedup_key.starts_with("sha256:"));
    }

    #[test]
    fn invalid_utf8_is_malformed_on_both_paths() {
        let body = b"{\"type\":\"BadUtf8\",\"locationId\":\"L\",\"note\":\"\xff\"}";
        let (checked, trees) = parse_delivery_checked(body, |_, value| value.is_some());
        assert_eq!(trees, [false], "no JSON tree for a body that is not UTF-8");
        for d in [parse_delivery(body), checked] {
            assert_eq!(d.events[0].routing_key(), "_malformed.none");
            assert_eq!(d.events[0].body, body.to_vec());
            assert_eq!(d.dedup_key, dedup_key(None, body));
        }
    }

    #[test]
    fn a_lone_surrogate_escape_is_json_on_both_paths() {
        let body = br#"{"type":"InboundMessage","locationId":"L","body":"cut \ud83d"}"#;
        let (checked, _) = parse_delivery_checked(body, |_, _| ());
        for d in [parse_delivery(body), checked] {
            assert_eq!(d.events[0].routing_key(), "InboundMessage.L");
        }
    }

    #[test]
    fn long_webhook_ids_are_hashed() {
        let id = "x".repeat(300);
        let key = dedup_key(Some(&id), b"");
        assert!(key.starts_with("sha256:") && key.len() < 255);
    }

    #[test]
    fn timestamps() {
        let d = parse_delivery(br#"{"timestamp":"2025-06-25T06:57:06.225Z"}"#);
        assert_eq!(
            d.events[0].timestamp.unwrap().unix_timestamp(),
            1_750_834_626
        );
        let d = parse_delivery(br#"{"timestamp":"yesterday"}"#);
        assert_eq!(d.events[0].timestamp, None);
    }
}
