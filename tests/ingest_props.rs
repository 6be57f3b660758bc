//! The whole ingest path before the store, over bodies of any shape: sign → verify → parse →
//! entries → encode → decode. Nothing signed may panic it, and every entry must be one the
//! store and the broker take: a valid topic routing key, a short dedup key, an exact round trip.
//! The event parser on its own: routing keys from fields of any type, the tenant rule, and the
//! plain path (fields read from the text) and the checked one (from the tree) reading alike.

use std::sync::OnceLock;

use base64::Engine;
use hlgate::entry::Entry;
use hlgate::event::{parse_delivery, parse_delivery_checked};
use hlgate::ingest;
use hlgate::schema::{SchemaMode, Schemas};
use hlgate::store::Encoded;
use hlgate::verify::{ed25519_public_pem, Keyring, SignatureHeaders, Verifier};
use proptest::prelude::*;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::Value;

struct Setup {
    pair: Ed25519KeyPair,
    verifier: Verifier,
    /// No schemas (`off`) and every embedded one (`warn`, the default): both parse paths.
    schemas: [Schemas; 2],
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let pem = ed25519_public_pem(pair.public_key().as_ref());
        let rsa = include_str!("keys/rsa-test.pub");
        let verifier = Verifier {
            ed25519: Keyring::ed25519_from_pem(&pem).unwrap(),
            rsa: Keyring::rsa_from_pem(rsa).unwrap(),
            accept_legacy_rsa: true,
        };
        let schemas = [
            Schemas::embedded(SchemaMode::Off).unwrap(),
            Schemas::embedded(SchemaMode::Warn).unwrap(),
        ];
        Setup {
            pair,
            verifier,
            schemas,
        }
    })
}

/// A routing key RabbitMQ takes for a topic exchange and consumers can match by part:
/// at most 255 bytes, exactly two non-empty dot-separated words of `[A-Za-z0-9_-]`.
fn valid_topic_key(key: &str) -> bool {
    let parts: Vec<&str> = key.split('.').collect();
    key.len() <= 255
        && parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

/// Runs `body`, signed over `signed`, through the ingest path under both schema settings;
/// the routing keys of its entries.
fn ingest_path(body: &[u8], signed: &[u8]) -> Result<Vec<String>, TestCaseError> {
    let setup = setup();
    let sig = base64::engine::general_purpose::STANDARD.encode(setup.pair.sign(signed));
    let headers = SignatureHeaders {
        ghl: Some(&sig),
        wh: None,
    };
    let mut routed = Vec::new();
    for schemas in &setup.schemas {
        let verified = setup.verifier.verify(body, headers);
        prop_assert!(verified.is_ok(), "a signed body verifies");
        let verified = verified.unwrap();
        let (delivery, outcomes) = ingest::parse(verified.signed_form(), schemas);
        let (key, is_array, events) = (
            delivery.dedup_key.clone(),
            delivery.is_array,
            delivery.events.len(),
        );
        prop_assert!(key.len() <= 255, "{key}");
        prop_assert!(is_array || events == 1);
        let entries = ingest::entries(&verified, delivery, outcomes);
        prop_assert_eq!(entries.len(), events);
        for (i, entry) in entries.iter().enumerate() {
            prop_assert!(
                valid_topic_key(&entry.routing_key()),
                "{}",
                entry.routing_key()
            );
            prop_assert_eq!(&entry.dedup_key, &key);
            prop_assert!(entry.message_id().len() <= 255);
            prop_assert_eq!(entry.index, is_array.then_some(i as u32));
            if !is_array {
                prop_assert_eq!(&entry.body[..], body, "a single event is published as sent");
            }
            let decoded = Entry::decode(entry.seq, &entry.encode());
            prop_assert_eq!(decoded.as_ref(), Some(entry));
        }
        let keys_and_bodies: Vec<(String, Vec<u8>)> = entries
            .into_iter()
            .map(|e| (e.routing_key(), e.body))
            .collect();
        routed.push(keys_and_bodies);
    }
    // Checking schemas changes nothing about where an event goes or what is published.
    prop_assert_eq!(&routed[0], &routed[1]);
    Ok(routed
        .swap_remove(0)
        .into_iter()
        .map(|(key, _)| key)
        .collect())
}

/// Any JSON value; objects often carry the fields hlgate reads, with a value of any type.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        "[a-zA-Z0-9 ._#*-]{0,300}".prop_map(Value::from),
        Just(Value::from("ContactCreate")),
        Just(Value::from("location")),
    ];
    let key = prop_oneof![
        Just("type".to_string()),
        Just("locationId".to_string()),
        Just("altId".to_string()),
        Just("altType".to_string()),
        Just("companyId".to_string()),
        Just("webhookId".to_string()),
        Just("timestamp".to_string()),
        any::<String>(),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
            // As many items as the fields hlgate reads, which serde could take for them.
            proptest::collection::vec(inner.clone(), 7).prop_map(Value::from),
            proptest::collection::vec((key.clone(), inner), 0..8)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        ingest_path(&body, &body)?;
    }

    #[test]
    fn arbitrary_json_as_sent(value in json()) {
        let body = serde_json::to_vec(&value).unwrap();
        ingest_path(&body, &body)?;
    }

    /// Pretty-printed, signed over the compact form (as JavaScript writes it, which
    /// `compact_json` matches; tests/vectors hold Node's own output): only the fallback verifies.
    #[test]
    fn arbitrary_json_signed_compact(value in json()) {
        let pretty = serde_json::to_vec_pretty(&value).unwrap();
        let compact = hlgate::verify::compact_json(&pretty).expect("JSON has a compact form");
        ingest_path(&pretty, &compact)?;
    }

    #[test]
    fn arrays_of_arbitrary_json(elements in proptest::collection::vec(json(), 0..16)) {
        let body = serde_json::to_vec(&elements).unwrap();
        ingest_path(&body, &body)?;
    }
}

/// A field as HighLevel might send it, or not: null, any text, a long one of the characters a
/// routing key cannot hold, a number.
fn field() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<String>().prop_map(Value::from),
        "[a-zA-Z0-9 .#*]{0,300}".prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn routing_key_is_always_a_valid_topic_key(
        kind in field(), location in field(), alt in field(), alt_type in field(), company in field()
    ) {
        let mut body = serde_json::Map::new();
        for (k, v) in [("type", kind), ("locationId", location), ("altId", alt), ("altType", alt_type), ("companyId", company)] {
            if !v.is_null() || fastrand::bool() {
                body.insert(k.into(), v);
            }
        }
        let bytes = serde_json::to_vec(&body).unwrap();
        let delivery = parse_delivery(&bytes);
        prop_assert_eq!(delivery.events.len(), 1);
        let key = delivery.events[0].routing_key();
        prop_assert!(valid_topic_key(&key), "{key}");
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_route(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let delivery = parse_delivery(&body);
        prop_assert!(!delivery.events.is_empty() || delivery.is_array);
        for e in &delivery.events {
            prop_assert!(valid_topic_key(&e.routing_key()));
        }
        prop_assert!(delivery.dedup_key.len() <= 255);
    }

    /// Schema checking needs a tree; the fields read from it are those read from the text.
    #[test]
    fn both_parsers_agree(
        kind in field(), location in field(), alt in field(), company in field(), array in any::<bool>()
    ) {
        let one = serde_json::json!({"type": kind, "locationId": location, "altId": alt,
                                     "altType": "location", "companyId": company});
        // An element that is itself an array has no fields, whatever its items are.
        let items = serde_json::json!([kind, location, alt, "location", company, "w", null]);
        let body = if array { serde_json::json!([one, one, items]) } else { one };
        let bytes = serde_json::to_vec_pretty(&body).unwrap();
        let (checked, values) = parse_delivery_checked(&bytes, |_, value| value.is_some());
        prop_assert_eq!(&checked, &parse_delivery(&bytes));
        prop_assert_eq!(values.len(), checked.events.len());
        prop_assert!(values.iter().all(|&had_value| had_value));
    }

    #[test]
    fn the_tenant_rule_holds(location in "[a-z]{0,3}", alt in "[a-z]{0,3}", location_alt in any::<bool>(), company in "[a-z]{0,3}") {
        let body = serde_json::json!({
            "locationId": location, "altId": alt,
            "altType": if location_alt { "location" } else { "company" },
            "companyId": company,
        });
        let tenant = parse_delivery(&serde_json::to_vec(&body).unwrap()).events[0].tenant.clone();
        let expected = if !location.is_empty() { location }
            else if location_alt && !alt.is_empty() { alt }
            else if !company.is_empty() { company }
            else { "none".into() };
        prop_assert_eq!(tenant, expected);
    }
}

/// Deeper than serde_json's recursion limit: each is a clean `_malformed` (or its fields stay
/// unread), never a stack overflow.
#[test]
fn deep_nesting() {
    const DEPTH: usize = 100_000;
    let open_arrays = "[".repeat(DEPTH);
    let arrays = format!("{open_arrays}{}", "]".repeat(DEPTH));
    let open_objects = r#"{"a":"#.repeat(DEPTH);
    let objects = format!("{open_objects}1{}", "}".repeat(DEPTH));
    let cases = [
        (open_arrays.clone(), vec!["_malformed.none"]),
        (open_objects.clone(), vec!["_malformed.none"]),
        // Valid JSON, too deep for a tree: its fields are read without one.
        (arrays.clone(), vec!["unknown.none"]),
        (objects.clone(), vec!["unknown.none"]),
        (
            format!(r#"{{"type":"ContactCreate","locationId":"L","a":{objects}}}"#),
            vec!["ContactCreate.L"],
        ),
        (format!(r#"{{"type":{arrays}}}"#), vec!["unknown.none"]),
        (
            format!(r#"[{objects},{{"type":"ContactCreate"}},{arrays}]"#),
            vec!["unknown.none", "ContactCreate.none", "unknown.none"],
        ),
    ];
    for (body, keys) in cases {
        let got = ingest_path(body.as_bytes(), body.as_bytes()).unwrap();
        assert_eq!(got, keys, "{}…", &body[..40]);
    }
}
