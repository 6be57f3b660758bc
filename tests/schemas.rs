//! The schemas and the consumer contract: every documented HighLevel example satisfies its type's
//! JSON Schema, the embedded schemas classify events, and `schemas/asyncapi.yaml` is a consistent
//! AsyncAPI 3 document that names every header the README lists for consumers.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use hlgate::schema::{Outcome, SchemaMode, Schemas};
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What ingest says of a body it parsed (`unknown` when it is not JSON).
fn validate(schemas: &Schemas, event_type: &str, body: &[u8]) -> Outcome {
    match serde_json::from_slice(body) {
        Ok(value) => schemas.validate_value(event_type, &value),
        Err(_) => Outcome::Unknown,
    }
}

/// Whether `event_type` has a schema: only a type without one is `unknown` for any JSON.
fn covers(schemas: &Schemas, event_type: &str) -> bool {
    schemas.validate_value(event_type, &Value::Null) != Outcome::Unknown
}

fn schemas_dir() -> PathBuf {
    root().join("schemas")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// `schemas/index.json`: event type -> schema file relative to `schemas/`.
fn index() -> BTreeMap<String, String> {
    serde_json::from_value(read_json(&schemas_dir().join("index.json"))).unwrap()
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(root().join("tests/fixtures/highlevel").join(name)).unwrap()
}

fn compile(file: &str) -> jsonschema::Validator {
    let schema = read_json(&schemas_dir().join(file));
    jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("{file} does not compile: {e}"))
}

#[test]
fn every_fixture_satisfies_the_schema_of_its_type() {
    let index = index();
    let types: BTreeMap<String, String> =
        serde_json::from_value(read_json(&schemas_dir().join("fixture-types.json"))).unwrap();
    let embedded = Schemas::embedded(SchemaMode::Warn).unwrap();
    let mut validators: HashMap<String, jsonschema::Validator> = HashMap::new();
    let mut failures = Vec::new();
    let mut checked = 0;

    let mut names: Vec<String> = std::fs::read_dir(root().join("tests/fixtures/highlevel"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 92, "HighLevel's documented examples");
    assert_eq!(
        names,
        types.keys().cloned().collect::<Vec<_>>(),
        "schemas/fixture-types.json names every fixture"
    );

    for name in &names {
        let real_type = &types[name];
        let file = index
            .get(real_type)
            .unwrap_or_else(|| panic!("{name}: no schema for {real_type} in index.json"));
        let validator = validators
            .entry(real_type.clone())
            .or_insert_with(|| compile(file));
        let body: Value = serde_json::from_slice(&fixture(name))
            .unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
        // A top-level array is one delivery of several events, each validated on its own.
        let events = match body {
            Value::Array(elements) => elements,
            single => vec![single],
        };
        for (i, event) in events.iter().enumerate() {
            let errors: Vec<String> = validator
                .iter_errors(event)
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect();
            if !errors.is_empty() {
                failures.push(format!("{name}[{i}] as {real_type}: {errors:?}"));
            }
            // Where the body names its real type, the gateway's own path must agree.
            if event.get("type").and_then(Value::as_str) == Some(real_type.as_str()) {
                let bytes = serde_json::to_vec(event).unwrap();
                let got = validate(&embedded, real_type, &bytes);
                if got != Outcome::Valid {
                    failures.push(format!("{name}[{i}]: embedded schemas say {got:?}"));
                }
            }
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= names.len());
}

#[test]
fn embedded_schemas_cover_every_indexed_type() {
    let index = index();
    let schemas = Schemas::embedded(SchemaMode::Warn).unwrap();
    assert_eq!(schemas.len(), index.len());
    assert!(!schemas.is_empty());
    assert_eq!(schemas.mode(), SchemaMode::Warn);
    for event_type in index.keys() {
        assert!(covers(&schemas, event_type), "{event_type}");
    }
    for file in index.values() {
        assert!(schemas_dir().join(file).is_file(), "{file}");
    }
    let enforce = Schemas::embedded(SchemaMode::Enforce).unwrap();
    assert_eq!(enforce.len(), index.len());
    assert_eq!(enforce.mode(), SchemaMode::Enforce);
}

#[test]
fn validation_says_valid_invalid_or_unknown() {
    let schemas = Schemas::embedded(SchemaMode::Warn).unwrap();
    let body = fixture("ContactCreate.json");
    assert_eq!(validate(&schemas, "ContactCreate", &body), Outcome::Valid);

    let original: Value = serde_json::from_slice(&body).unwrap();

    // A required field removed.
    let mut missing = original.clone();
    missing.as_object_mut().unwrap().remove("id");
    let missing = serde_json::to_vec(&missing).unwrap();
    assert_eq!(
        validate(&schemas, "ContactCreate", &missing),
        Outcome::Invalid
    );

    // A string field made a number.
    let mut retyped = original.clone();
    retyped["locationId"] = Value::from(42);
    let retyped = serde_json::to_vec(&retyped).unwrap();
    assert_eq!(
        validate(&schemas, "ContactCreate", &retyped),
        Outcome::Invalid
    );

    // Not an object at all.
    assert_eq!(
        validate(&schemas, "ContactCreate", b"[1,2]"),
        Outcome::Invalid
    );

    // No schema for the type, or a body that is not JSON: unknown.
    assert_eq!(validate(&schemas, "NoSuchEvent", &body), Outcome::Unknown);
    assert_eq!(validate(&schemas, "unknown", &body), Outcome::Unknown);
    assert_eq!(validate(&schemas, "_malformed", b"{oops"), Outcome::Unknown);
    assert_eq!(
        validate(&schemas, "ContactCreate", b"{\"type\": \"ContactCreate\""),
        Outcome::Unknown
    );
    assert_eq!(validate(&schemas, "ContactCreate", b""), Outcome::Unknown);

    // The parsed-value entry point agrees.
    assert_eq!(
        schemas.validate_value("ContactCreate", &original),
        Outcome::Valid
    );
}

#[test]
fn off_mode_and_none_validate_nothing() {
    let body = fixture("ContactCreate.json");
    let off = Schemas::embedded(SchemaMode::Off).unwrap();
    assert_eq!(off.mode(), SchemaMode::Off);
    assert_eq!(off.len(), 0);
    assert_eq!(validate(&off, "ContactCreate", &body), Outcome::Unknown);
    assert_eq!(validate(&off, "ContactCreate", b"[1,2]"), Outcome::Unknown);

    let none = Schemas::embedded(SchemaMode::Off).unwrap();
    assert!(none.is_empty());
    assert_eq!(validate(&none, "ContactCreate", &body), Outcome::Unknown);
}

// ---- schemas/asyncapi.yaml ----------------------------------------------------------------

fn asyncapi() -> Value {
    let text = std::fs::read_to_string(schemas_dir().join("asyncapi.yaml")).unwrap();
    serde_yaml_ng::from_str(&text).expect("asyncapi.yaml is YAML")
}

/// Every `$ref` in the document, with the JSON pointer of where it sits.
fn refs(value: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if key == "$ref" {
                    let target = child
                        .as_str()
                        .unwrap_or_else(|| panic!("{at}: $ref not text"));
                    out.push((at.to_string(), target.to_string()));
                } else {
                    refs(child, &format!("{at}/{}", escape(key)), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                refs(child, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Resolves a URI fragment (`/a/b`) in `doc`: percent-decoded, then a JSON pointer.
fn resolve<'a>(doc: &'a Value, fragment: &str) -> Option<&'a Value> {
    if fragment.is_empty() {
        return Some(doc);
    }
    doc.pointer(&percent_decode(fragment))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn asyncapi_is_an_asyncapi_3_document() {
    let doc = asyncapi();
    let version = doc["asyncapi"].as_str().expect("asyncapi: <version>");
    assert!(version.starts_with("3."), "asyncapi {version}");
    assert!(doc["info"]["title"].is_string());
    assert!(doc["channels"].is_object());
    assert!(doc["operations"].is_object());
}

#[test]
fn every_asyncapi_ref_resolves() {
    let doc = asyncapi();
    let mut all = Vec::new();
    refs(&doc, "", &mut all);
    assert!(!all.is_empty());
    let mut external: HashMap<PathBuf, Value> = HashMap::new();
    let mut broken = Vec::new();
    for (at, target) in &all {
        let (file, fragment) = target.split_once('#').unwrap_or((target.as_str(), ""));
        if file.is_empty() {
            if resolve(&doc, fragment).is_none() {
                broken.push(format!("{at}: {target} does not resolve in the document"));
            }
            continue;
        }
        assert!(
            !file.contains("://"),
            "{at}: {target} is remote; refs must point into schemas/"
        );
        let path = schemas_dir().join(file);
        if !path.is_file() {
            broken.push(format!("{at}: {target}: no file {}", path.display()));
            continue;
        }
        if !fragment.is_empty() {
            let loaded = external
                .entry(path.clone())
                .or_insert_with(|| read_json(&path));
            if resolve(loaded, fragment).is_none() {
                broken.push(format!("{at}: {target}: no {fragment} in the file"));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn asyncapi_has_a_message_for_every_schema() {
    let doc = asyncapi();
    let messages = doc["components"]["messages"]
        .as_object()
        .expect("components.messages");
    for (event_type, file) in index() {
        let message = messages
            .get(&event_type)
            .unwrap_or_else(|| panic!("no message {event_type}"));
        let payload = message["payload"]["$ref"].as_str().unwrap_or_default();
        assert_eq!(
            payload.trim_start_matches("./"),
            file,
            "{event_type}'s payload"
        );
    }
}

#[test]
fn asyncapi_names_every_contract_header() {
    let text = std::fs::read_to_string(schemas_dir().join("asyncapi.yaml")).unwrap();
    // The README's consumer section, "Headers".
    for header in [
        "x-hl-event-type",
        "x-hl-tenant-id",
        "x-hl-location-id",
        "x-hl-company-id",
        "x-hl-webhook-id",
        "x-hl-received-at",
        "x-hl-signature-scheme",
        "x-hl-signature",
        "x-hl-sequence",
        "x-hl-schema",
        "x-hl-access-token",
        "x-hl-token-expires-at",
        "x-hl-token-error",
        "x-hl-replay",
        "x-deduplication-header",
        "traceparent",
    ] {
        assert!(
            text.contains(header),
            "asyncapi.yaml does not mention {header}"
        );
    }
    // And they are declared as headers, not just mentioned in prose.
    let doc = asyncapi();
    let mut declared = Vec::new();
    collect_header_names(&doc, &mut declared);
    for header in [
        "x-hl-event-type",
        "x-hl-schema",
        "x-hl-signature",
        "x-hl-replay",
        "traceparent",
    ] {
        assert!(
            declared.iter().any(|d| d == header),
            "{header} is not a declared header property"
        );
    }
}

/// Property names of every `headers` schema in the document (following internal refs once).
fn collect_header_names(doc: &Value, out: &mut Vec<String>) {
    fn walk(node: &Value, doc: &Value, out: &mut Vec<String>) {
        match node {
            Value::Object(map) => {
                if let Some(headers) = map.get("headers") {
                    let headers = match headers.get("$ref").and_then(Value::as_str) {
                        Some(r) => r
                            .strip_prefix('#')
                            .and_then(|f| resolve(doc, f))
                            .unwrap_or(headers),
                        None => headers,
                    };
                    if let Some(props) = headers.get("properties").and_then(Value::as_object) {
                        out.extend(props.keys().cloned());
                    }
                }
                for child in map.values() {
                    walk(child, doc, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|c| walk(c, doc, out)),
            _ => {}
        }
    }
    walk(doc, doc, out);
}
