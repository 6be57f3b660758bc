//! The OTLP/HTTP protobuf body (`ExportTraceServiceRequest`): only the fields hlgate fills,
//! with their numbers from `opentelemetry/proto/trace/v1/trace.proto` and `common.proto`.
//! Fields left out read as their defaults to a collector.

use prost::Message;

use super::data::{Kind, SpanData, Value};

#[derive(Clone, PartialEq, prost::Message)]
struct ExportTraceServiceRequest {
    #[prost(message, repeated, tag = "1")]
    resource_spans: Vec<ResourceSpans>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ResourceSpans {
    #[prost(message, optional, tag = "1")]
    resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    scope_spans: Vec<ScopeSpans>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Resource {
    #[prost(message, repeated, tag = "1")]
    attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ScopeSpans {
    #[prost(message, optional, tag = "1")]
    scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    spans: Vec<Span>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct InstrumentationScope {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Span {
    #[prost(bytes = "vec", tag = "1")]
    trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    span_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    parent_span_id: Vec<u8>,
    #[prost(string, tag = "5")]
    name: String,
    #[prost(int32, tag = "6")]
    kind: i32,
    #[prost(fixed64, tag = "7")]
    start_time_unix_nano: u64,
    #[prost(fixed64, tag = "8")]
    end_time_unix_nano: u64,
    #[prost(message, repeated, tag = "9")]
    attributes: Vec<KeyValue>,
    #[prost(message, optional, tag = "15")]
    status: Option<Status>,
    /// The W3C trace flags (bit 0: sampled).
    #[prost(fixed32, tag = "16")]
    flags: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Status {
    #[prost(string, tag = "2")]
    message: String,
    /// 0 unset, 1 ok, 2 error.
    #[prost(int32, tag = "3")]
    code: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct KeyValue {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(message, optional, tag = "2")]
    value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct AnyValue {
    #[prost(oneof = "Any", tags = "1, 2, 3")]
    value: Option<Any>,
}

/// `AnyValue`'s `value`: `string_value`, `bool_value`, `int_value`.
#[derive(Clone, PartialEq, prost::Oneof)]
enum Any {
    #[prost(string, tag = "1")]
    Str(String),
    #[prost(bool, tag = "2")]
    Bool(bool),
    #[prost(int64, tag = "3")]
    Int(i64),
}

const STATUS_ERROR: i32 = 2;

fn kind(k: Kind) -> i32 {
    match k {
        Kind::Internal => 1,
        Kind::Server => 2,
        Kind::Client => 3,
        Kind::Producer => 4,
    }
}

fn key_value(key: &str, value: &Value) -> KeyValue {
    let value = match value {
        Value::Str(s) => Any::Str(s.clone()),
        Value::Int(n) => Any::Int(*n),
        Value::Bool(b) => Any::Bool(*b),
    };
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

fn span(data: &SpanData) -> Span {
    Span {
        trace_id: data.context.trace_id.to_vec(),
        span_id: data.context.span_id.to_vec(),
        parent_span_id: data.parent.map(|p| p.to_vec()).unwrap_or_default(),
        name: data.name.to_string(),
        kind: kind(data.kind),
        start_time_unix_nano: data.start_ns,
        end_time_unix_nano: data.end_ns,
        attributes: data
            .attributes
            .iter()
            .map(|(k, v)| key_value(k, v))
            .collect(),
        status: data.error.map(|why| Status {
            message: why.to_string(),
            code: STATUS_ERROR,
        }),
        flags: u32::from(data.context.sampled),
    }
}

/// One request body for `spans`: one resource (`service.name` `hlgate`), one scope.
pub fn encode(spans: &[SpanData]) -> Vec<u8> {
    let version = env!("CARGO_PKG_VERSION");
    let resource = Resource {
        attributes: vec![
            key_value("service.name", &Value::from("hlgate")),
            key_value("service.version", &Value::from(version)),
        ],
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "hlgate".into(),
                    version: version.into(),
                }),
                spans: spans.iter().map(span).collect(),
            }],
        }],
    }
    .encode_to_vec()
}
