//! A local OpenTelemetry collector: `POST /v1/traces` with a protobuf body, decoded here by
//! messages written from the OTLP `.proto` files on their own (not hlgate's), so that a wrong
//! field number in hlgate's encoder shows.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use prost::Message;

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
    #[prost(string, tag = "3")]
    schema_url: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Resource {
    #[prost(message, repeated, tag = "1")]
    attributes: Vec<KeyValue>,
    #[prost(uint32, tag = "2")]
    dropped_attributes_count: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ScopeSpans {
    #[prost(message, optional, tag = "1")]
    scope: Option<Scope>,
    #[prost(message, repeated, tag = "2")]
    spans: Vec<WireSpan>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Scope {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireSpan {
    #[prost(bytes = "vec", tag = "1")]
    trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    span_id: Vec<u8>,
    #[prost(string, tag = "3")]
    trace_state: String,
    #[prost(bytes = "vec", tag = "4")]
    parent_span_id: Vec<u8>,
    #[prost(string, tag = "5")]
    name: String,
    #[prost(enumeration = "SpanKind", tag = "6")]
    kind: i32,
    #[prost(fixed64, tag = "7")]
    start_time_unix_nano: u64,
    #[prost(fixed64, tag = "8")]
    end_time_unix_nano: u64,
    #[prost(message, repeated, tag = "9")]
    attributes: Vec<KeyValue>,
    #[prost(message, optional, tag = "15")]
    status: Option<Status>,
    #[prost(fixed32, tag = "16")]
    flags: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum SpanKind {
    Unspecified = 0,
    Internal = 1,
    Server = 2,
    Client = 3,
    Producer = 4,
    Consumer = 5,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Status {
    #[prost(string, tag = "2")]
    message: String,
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
    #[prost(oneof = "Any", tags = "1, 2, 3, 4, 7")]
    value: Option<Any>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Any {
    #[prost(string, tag = "1")]
    Str(String),
    #[prost(bool, tag = "2")]
    Bool(bool),
    #[prost(int64, tag = "3")]
    Int(i64),
    #[prost(double, tag = "4")]
    Double(f64),
    #[prost(bytes = "vec", tag = "7")]
    Bytes(Vec<u8>),
}

/// One span as received, ids in lower-case hex, attribute values as text.
#[derive(Clone, Debug)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root.
    pub parent: String,
    pub name: String,
    pub kind: SpanKind,
    pub start: u64,
    pub end: u64,
    pub attributes: BTreeMap<String, String>,
    /// 2 for an error.
    pub status_code: i32,
    pub flags: u32,
    /// The resource's attributes (`service.name`).
    pub resource: BTreeMap<String, String>,
}

impl Span {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(list: &[KeyValue]) -> BTreeMap<String, String> {
    list.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.clone()) {
                Some(Any::Str(s)) => s,
                Some(Any::Bool(b)) => b.to_string(),
                Some(Any::Int(n)) => n.to_string(),
                Some(Any::Double(d)) => d.to_string(),
                Some(Any::Bytes(b)) => hex(&b),
                None => String::new(),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

#[derive(Default)]
struct Received {
    bodies: Vec<Vec<u8>>,
    content_types: Vec<String>,
    spans: Vec<Span>,
    /// Requests held unanswered (a collector that stalls).
    stall: bool,
    arrived: usize,
}

#[derive(Clone)]
pub struct Collector {
    /// The base URL (`HLGATE_OTLP_ENDPOINT`); hlgate appends `/v1/traces`.
    pub endpoint: String,
    state: Arc<Mutex<Received>>,
}

async fn export(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<Arc<Mutex<Received>>>,
) -> HttpResponse {
    let stall = {
        let mut s = state.lock().unwrap();
        s.arrived += 1;
        s.stall
    };
    if stall {
        // Never answers while the test lives.
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let decoded = ExportTraceServiceRequest::decode(body.as_ref()).expect("an OTLP request");
    let mut s = state.lock().unwrap();
    s.bodies.push(body.to_vec());
    let content_type = req.headers().get("content-type");
    let content_type = content_type.and_then(|v| v.to_str().ok()).unwrap_or("");
    s.content_types.push(content_type.to_string());
    for rs in decoded.resource_spans {
        let resource = attributes(&rs.resource.unwrap_or_default().attributes);
        for ss in rs.scope_spans {
            assert_eq!(ss.scope.as_ref().map(|s| s.name.as_str()), Some("hlgate"));
            for w in ss.spans {
                s.spans.push(Span {
                    trace_id: hex(&w.trace_id),
                    span_id: hex(&w.span_id),
                    parent: hex(&w.parent_span_id),
                    name: w.name.clone(),
                    kind: SpanKind::try_from(w.kind).unwrap_or(SpanKind::Unspecified),
                    start: w.start_time_unix_nano,
                    end: w.end_time_unix_nano,
                    attributes: attributes(&w.attributes),
                    status_code: w.status.map_or(0, |s| s.code),
                    flags: w.flags,
                    resource: resource.clone(),
                });
            }
        }
    }
    HttpResponse::Ok()
        .content_type("application/x-protobuf")
        .body(Vec::new())
}

impl Collector {
    pub fn start() -> Collector {
        Collector::start_with(false)
    }

    /// A collector that takes each request and never answers it.
    pub fn stalled() -> Collector {
        Collector::start_with(true)
    }

    fn start_with(stall: bool) -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(Received {
            stall,
            ..Received::default()
        }));
        let data = web::Data::new(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(64 << 20))
                .route("/v1/traces", web::post().to(export))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        tokio::spawn(server);
        Collector { endpoint, state }
    }

    pub fn spans(&self) -> Vec<Span> {
        self.state.lock().unwrap().spans.clone()
    }

    /// Every body received, as sent.
    pub fn bodies(&self) -> Vec<Vec<u8>> {
        self.state.lock().unwrap().bodies.clone()
    }

    pub fn content_types(&self) -> Vec<String> {
        self.state.lock().unwrap().content_types.clone()
    }

    /// Requests that reached the collector, answered or not.
    pub fn arrived(&self) -> usize {
        self.state.lock().unwrap().arrived
    }

    /// The spans received once `done` holds for them; panics after 30 s.
    pub async fn wait_until(&self, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(Instant::now() < deadline, "spans so far: {spans:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The one span named `name` in `trace`.
pub fn named<'a>(spans: &'a [Span], trace: &str, name: &str) -> &'a Span {
    let found: Vec<&Span> = (spans.iter())
        .filter(|s| s.trace_id == trace && s.name == name)
        .collect();
    assert_eq!(found.len(), 1, "{name} in {trace}: {spans:#?}");
    found[0]
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
