//! The whole ingest path before the store, over bodies of any shape: sign → verify → parse →
//! entries → encode → decode. Nothing signed may panic it, and every entry must be one the
//! store and the broker take: a valid topic routing key, a short dedup key, an exact round trip.

use std::sync::OnceLock;

use base64::Engine;
use hlgate::ingest;
use hlgate::schema::{SchemaMode, Schemas};
use hlgate::store::Entry;
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

/// At most 255 bytes, two non-empty dot-separated words of `[A-Za-z0-9_-]`.
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
