//! Schema outcomes of events (`x-hl-schema`) and the compiled JSON Schemas of HighLevel events.
//!
//! The schemas in `schemas/` (`index.json` maps an event type to `highlevel/<Type>.json`) are
//! embedded at build time by `build.rs` and compiled once at start-up; validating an event then
//! costs one `serde_json` parse of its body and one `is_valid` walk.

use std::collections::HashMap;
use std::fmt;

use jsonschema::Validator;
use serde_json::Value;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/schemas.rs"));
}

/// What to do with events that fail their JSON Schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemaMode {
    /// Do not validate; every event is marked `unknown`.
    Off,
    /// Validate, mark the message and count; publish as usual.
    Warn,
    /// Validate; publish invalid events to the quarantine queue instead of the exchange.
    Enforce,
}

impl SchemaMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaMode::Off => "off",
            SchemaMode::Warn => "warn",
            SchemaMode::Enforce => "enforce",
        }
    }
}

/// What validation said about an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No schema for the type, not JSON, or validation is off.
    Unknown,
    Valid,
    Invalid,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Unknown => "unknown",
            Outcome::Valid => "valid",
            Outcome::Invalid => "invalid",
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            Outcome::Unknown => 0,
            Outcome::Valid => 1,
            Outcome::Invalid => 2,
        }
    }

    /// `None` for a byte [`Outcome::to_u8`] never gives.
    pub fn from_u8(n: u8) -> Option<Outcome> {
        match n {
            0 => Some(Outcome::Unknown),
            1 => Some(Outcome::Valid),
            2 => Some(Outcome::Invalid),
            _ => None,
        }
    }
}

/// The embedded schemas could not be used; a build-time bug, reported at start-up.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("schemas/index.json: {0}")]
    Index(String),
    #[error("schemas/index.json: {event_type} points at {file}, which is not embedded")]
    Missing { event_type: String, file: String },
    #[error("schemas/{file}: not JSON: {reason}")]
    Json { file: String, reason: String },
    #[error("schemas/{file}: not a usable JSON Schema: {reason}")]
    Compile { file: String, reason: String },
}

/// Compiled event schemas; validates an event body against its type's schema.
pub struct Schemas {
    mode: SchemaMode,
    by_type: HashMap<String, Validator>,
}

impl fmt::Debug for Schemas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schemas")
            .field("mode", &self.mode())
            .field("schemas", &self.by_type.len())
            .finish()
    }
}

impl Schemas {
    /// The schemas embedded in the binary, each compiled once. With [`SchemaMode::Off`] nothing is
    /// compiled and every event is `unknown`.
    pub fn embedded(mode: SchemaMode) -> Result<Schemas, SchemaError> {
        if mode == SchemaMode::Off {
            return Ok(Schemas {
                mode,
                by_type: HashMap::new(),
            });
        }
        let index: HashMap<String, String> = serde_json::from_str(embedded::SCHEMA_INDEX)
            .map_err(|e| SchemaError::Index(e.to_string()))?;
        let mut by_type = HashMap::with_capacity(index.len());
        for (event_type, file) in index {
            let text = embedded::SCHEMA_FILES
                .iter()
                .find(|(path, _)| *path == file)
                .map(|(_, text)| *text)
                .ok_or_else(|| SchemaError::Missing {
                    event_type: event_type.clone(),
                    file: file.clone(),
                })?;
            let validator = compile(&file, text)?;
            by_type.insert(event_type, validator);
        }
        Ok(Schemas { mode, by_type })
    }

    /// The mode these schemas were loaded for.
    pub fn mode(&self) -> SchemaMode {
        self.mode
    }

    /// How many event types have a schema.
    pub fn len(&self) -> usize {
        self.by_type.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_type.is_empty()
    }

    /// `unknown` when no schema covers `event_type`; otherwise whether the body (parsed once,
    /// by ingest) satisfies the schema.
    pub fn validate_value(&self, event_type: &str, body: &Value) -> Outcome {
        match self.by_type.get(event_type) {
            Some(validator) => outcome(validator.is_valid(body)),
            None => Outcome::Unknown,
        }
    }
}

fn outcome(valid: bool) -> Outcome {
    if valid {
        Outcome::Valid
    } else {
        Outcome::Invalid
    }
}

fn compile(file: &str, text: &str) -> Result<Validator, SchemaError> {
    let schema: Value = serde_json::from_str(text).map_err(|e| SchemaError::Json {
        file: file.to_string(),
        reason: e.to_string(),
    })?;
    // Draft 2020-12 (what the files declare); nothing remote is resolved: the crate is built
    // without its HTTP and file retrievers, so an external `$ref` fails here, at start-up.
    jsonschema::draft202012::new(&schema).map_err(|e| SchemaError::Compile {
        file: file.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_indexed_schema_compiles() {
        let schemas = Schemas::embedded(SchemaMode::Warn).unwrap();
        let index: HashMap<String, String> = serde_json::from_str(embedded::SCHEMA_INDEX).unwrap();
        assert_eq!(schemas.len(), index.len());
        assert_eq!(schemas.mode(), SchemaMode::Warn);
    }

    #[test]
    fn off_and_none_validate_nothing() {
        let body = br#"{"type":"ContactCreate","locationId":"l1","id":"c1"}"#;
        let value: Value = serde_json::from_slice(body).unwrap();
        let schemas = Schemas::embedded(SchemaMode::Off).unwrap();
        assert!(schemas.is_empty());
        assert_eq!(schemas.mode(), SchemaMode::Off);
        assert_eq!(
            schemas.validate_value("ContactCreate", &value),
            Outcome::Unknown
        );
    }

    #[test]
    fn outcome_round_trips_through_u8() {
        for o in [Outcome::Unknown, Outcome::Valid, Outcome::Invalid] {
            assert_eq!(Outcome::from_u8(o.to_u8()), Some(o));
        }
    }
}
