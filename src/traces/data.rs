//! What a span is made of: its place in a trace (W3C trace context, `traceparent`), its kind,
//! attributes and times, as the exporter sends them.

/// Where a span sits in a trace, as W3C trace context carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// Recorded and exported (the `01` flag); an unsampled trace still propagates.
    pub sampled: bool,
}

impl SpanContext {
    /// A new trace of one span, with random ids (never all zero).
    pub fn random(sampled: bool) -> SpanContext {
        SpanContext {
            trace_id: nonzero_u128().to_be_bytes(),
            span_id: nonzero_u64().to_be_bytes(),
            sampled,
        }
    }

    /// A new span in the same trace.
    pub(super) fn child(&self) -> SpanContext {
        SpanContext {
            span_id: nonzero_u64().to_be_bytes(),
            ..*self
        }
    }

    /// `00-<trace id>-<span id>-<flags>`, lower-case hex.
    /// One allocation: every published message carries one, traces on or off.
    pub fn traceparent(&self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, &self.trace_id);
        out.push('-');
        push_hex(&mut out, &self.span_id);
        out.push_str(if self.sampled { "-01" } else { "-00" });
        out
    }

    /// Reads a `traceparent` header; `None` for anything the W3C spec says to ignore (a bad
    /// length or character, version `ff`, an all-zero id). Later versions are read by their
    /// version-00 prefix, as the spec asks.
    pub fn from_traceparent(value: &str) -> Option<SpanContext> {
        let value = value.trim();
        let mut parts = value.splitn(5, '-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let rest = parts.next();
        if version.len() != 2 || version == "ff" || (version == "00" && rest.is_some()) {
            return None;
        }
        let _: [u8; 1] = unhex(version)?;
        let trace_id: [u8; 16] = unhex(trace)?;
        let span_id: [u8; 8] = unhex(span)?;
        let flags: [u8; 1] = unhex(flags)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(SpanContext {
            trace_id,
            span_id,
            sampled: flags[0] & 1 == 1,
        })
    }
}

fn nonzero_u128() -> u128 {
    loop {
        let n = fastrand::u128(..);
        if n != 0 {
            return n;
        }
    }
}

fn nonzero_u64() -> u64 {
    fastrand::u64(1..)
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
}

#[cfg(test)]
pub(super) fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

/// Lower-case hex of exactly `N` bytes (the spec allows no upper case).
fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let text = text.as_bytes();
    if text.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// OTLP's span kinds, those hlgate uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Internal,
    Server,
    Client,
    Producer,
}

/// An attribute's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Value {
        Value::Int(n)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

/// A span as it is exported.
#[derive(Clone, Debug)]
pub struct SpanData {
    pub context: SpanContext,
    pub parent: Option<[u8; 8]>,
    pub name: &'static str,
    pub kind: Kind,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: Vec<(&'static str, Value)>,
    /// Set when the operation failed: a short reason, never a secret.
    pub error: Option<&'static str>,
}
