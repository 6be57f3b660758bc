//! The compact form JavaScript's `JSON.stringify(JSON.parse(body))` gives, which HighLevel's
//! own examples verify.
//!
//! A re-serialiser over the bytes rather than a round trip through serde_json, which differs
//! from JavaScript in ways that break signatures: a JavaScript string may hold a lone surrogate
//! (a Rust `String` cannot), an object lists its array-index keys first and keeps a duplicate
//! key at its first position, and numbers are printed as JavaScript prints doubles (ryu-js
//! implements ECMAScript's `Number::toString`).

use std::collections::HashMap;
use std::ops::Range;

/// Deeper nesting gets no compact form, so a body cannot overflow the stack; serde_json, which
/// parses the verified form afterwards, takes the same depth and no more.
const MAX_DEPTH: usize = 127;

/// `JSON.stringify(JSON.parse(body))`; `None` where `JSON.parse` throws, and for invalid UTF-8
/// or nesting deeper than [`MAX_DEPTH`].
pub fn compact_json(body: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    let mut c = Compactor {
        input: text.as_bytes(),
        pos: 0,
        out: Vec::with_capacity(body.len()),
    };
    c.element(0)?;
    (c.pos == c.input.len()).then_some(c.out)
}

struct Compactor<'a> {
    /// Valid UTF-8, so raw bytes copied from inside a string stay valid.
    input: &'a [u8],
    pos: usize,
    out: Vec<u8>,
}

impl Compactor<'_> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn eat(&mut self, b: u8) -> bool {
        let found = self.peek() == Some(b);
        self.pos += usize::from(found);
        found
    }

    /// JSON's whitespace: space, tab, line feed, carriage return (nothing else).
    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// A value with the whitespace around it.
    fn element(&mut self, depth: usize) -> Option<()> {
        self.skip_whitespace();
        self.value(depth)?;
        self.skip_whitespace();
        Some(())
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => self.string(),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.pos + word.len();
        (self.input.get(self.pos..end)? == word).then_some(())?;
        self.pos = end;
        self.out.extend_from_slice(word);
        Some(())
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.pos += 1;
        self.out.push(b'[');
        self.skip_whitespace();
        if !self.eat(b']') {
            loop {
                self.element(depth)?;
                match self.next()? {
                    b',' => self.out.push(b','),
                    b']' => break,
                    _ => return None,
                }
            }
        }
        self.out.push(b']');
        Some(())
    }

    fn object(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        let start = self.out.len();
        self.pos += 1;
        self.out.push(b'{');
        self.skip_whitespace();
        let mut members = Members::default();
        if !self.eat(b'}') {
            loop {
                self.skip_whitespace();
                if self.peek()? != b'"' {
                    return None;
                }
                let key_start = self.out.len();
                self.string()?;
                let key = key_start..self.out.len();
                self.skip_whitespace();
                if !self.eat(b':') {
                    return None;
                }
                self.out.push(b':');
                self.skip_whitespace();
                let value_start = self.out.len();
                self.value(depth)?;
                members.add(&self.out, key, value_start..self.out.len());
                self.skip_whitespace();
                match self.next()? {
                    b',' => self.out.push(b','),
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        self.out.push(b'}');
        if members.rebuild {
            let rebuilt = members.render(&self.out);
            self.out.truncate(start);
            self.out.extend_from_slice(&rebuilt);
        }
        Some(())
    }

    /// A string, decoded to UTF-16 code units as `JSON.parse` does and written back as
    /// `JSON.stringify` does.
    fn string(&mut self) -> Option<()> {
        self.pos += 1;
        self.out.push(b'"');
        loop {
            let rest = &self.input[self.pos..];
            let plain = rest
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
            self.out.extend_from_slice(&rest[..plain]);
            self.pos += plain;
            match self.next()? {
                b'"' => break,
                b'\\' => self.escape()?,
                // A raw control character: `JSON.parse` throws.
                _ => return None,
            }
        }
        self.out.push(b'"');
        Some(())
    }

    /// One escape after its backslash.
    fn escape(&mut self) -> Option<()> {
        let unit = match self.next()? {
            b'"' => 0x22,
            b'\\' => 0x5c,
            b'/' => 0x2f,
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => 0x0a,
            b'r' => 0x0d,
            b't' => 0x09,
            b'u' => self.hex4()?,
            _ => return None,
        };
        // Only two escapes in a row make a surrogate pair; raw UTF-8 never holds a surrogate.
        if (0xd800..0xdc00).contains(&unit) {
            if let Some(low) = self.low_surrogate_escape() {
                let c = 0x10000 + ((u32::from(unit) - 0xd800) << 10) + (u32::from(low) - 0xdc00);
                push_char(&mut self.out, char::from_u32(c)?);
                return Some(());
            }
        }
        push_unit(&mut self.out, unit);
        Some(())
    }

    /// The four hex digits of a `\u` escape.
    fn hex4(&mut self) -> Option<u16> {
        let digits = self.input.get(self.pos..self.pos + 4)?;
        if !digits.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        self.pos += 4;
        u16::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    }

    /// Takes a following `\uDC00`-`\uDFFF` escape, if that is what comes next.
    fn low_surrogate_escape(&mut self) -> Option<u16> {
        if self.input.get(self.pos..self.pos + 2)? != b"\\u" {
            return None;
        }
        let back = self.pos;
        self.pos += 2;
        match self.hex4() {
            Some(low @ 0xdc00..=0xdfff) => Some(low),
            _ => {
                self.pos = back;
                None
            }
        }
    }

    /// A number in JSON's grammar, read as a double and printed as JavaScript prints it.
    fn number(&mut self) -> Option<()> {
        let start = self.pos;
        self.eat(b'-');
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.skip_digits(),
            _ => return None,
        }
        if self.eat(b'.') {
            self.digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            self.digits()?;
        }
        let literal = std::str::from_utf8(&self.input[start..self.pos]).ok()?;
        let value: f64 = literal.parse().ok()?;
        if value.is_finite() {
            // `-0` prints as `0` in JavaScript.
            let value = if value == 0.0 { 0.0 } else { value };
            let mut buffer = ryu_js::Buffer::new();
            self.out
                .extend_from_slice(buffer.format_finite(value).as_bytes());
        } else {
            // Out of range is Infinity, which `JSON.stringify` writes as null.
            self.out.extend_from_slice(b"null");
        }
        Some(())
    }

    fn skip_digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
    }

    /// One or more digits.
    fn digits(&mut self) -> Option<()> {
        let start = self.pos;
        self.skip_digits();
        (self.pos > start).then_some(())
    }
}

/// One UTF-16 code unit as `JSON.stringify` writes it (ECMAScript's `QuoteJSONString`).
fn push_unit(out: &mut Vec<u8>, unit: u16) {
    let short: &[u8] = match unit {
        0x08 => b"\\b",
        0x09 => b"\\t",
        0x0a => b"\\n",
        0x0c => b"\\f",
        0x0d => b"\\r",
        0x22 => b"\\\"",
        0x5c => b"\\\\",
        0x00..=0x1f | 0xd800..=0xdfff => {
            out.extend_from_slice(format!("\\u{unit:04x}").as_bytes());
            return;
        }
        _ => {
            // Not a surrogate, so a character.
            push_char(out, char::from_u32(u32::from(unit)).unwrap_or('\u{fffd}'));
            return;
        }
    };
    out.extend_from_slice(short);
}

fn push_char(out: &mut Vec<u8>, c: char) {
    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
}

/// An object's members as ranges of the output, in the order JavaScript keeps them.
#[derive(Default)]
struct Members {
    /// (key with its quotes, value) in insertion order, a duplicate key at its first place.
    list: Vec<(Range<usize>, Range<usize>)>,
    /// Where each key is in `list`, by its written form (the same bytes for the same string).
    seen: HashMap<Vec<u8>, usize>,
    /// Whether the output differs from what was written: a duplicate key or an array index.
    rebuild: bool,
}

impl Members {
    fn add(&mut self, out: &[u8], key: Range<usize>, value: Range<usize>) {
        let written = &out[key.clone()];
        self.rebuild |= array_index(written).is_some();
        match self.seen.get(written) {
            Some(&at) => {
                self.list[at].1 = value;
                self.rebuild = true;
            }
            None => {
                self.seen.insert(written.to_vec(), self.list.len());
                self.list.push((key, value));
            }
        }
    }

    /// `{…}` with the array-index keys first, ascending, then the others in insertion order.
    fn render(&self, out: &[u8]) -> Vec<u8> {
        let mut order: Vec<(Option<u32>, usize)> = self
            .list
            .iter()
            .enumerate()
            .map(|(i, (key, _))| (array_index(&out[key.clone()]), i))
            .collect();
        // A stable sort on (not an index, index value): the other keys keep their order.
        order.sort_by_key(|&(index, _)| (index.is_none(), index));
        let mut rebuilt = Vec::with_capacity(out.len());
        rebuilt.push(b'{');
        for (n, &(_, i)) in order.iter().enumerate() {
            if n > 0 {
                rebuilt.push(b',');
            }
            let (key, value) = &self.list[i];
            rebuilt.extend_from_slice(&out[key.clone()]);
            rebuilt.push(b':');
            rebuilt.extend_from_slice(&out[value.clone()]);
        }
        rebuilt.push(b'}');
        rebuilt
    }
}

/// The value of a written key that is a canonical array index (`"0"` to `"4294967294"`).
fn array_index(quoted: &[u8]) -> Option<u32> {
    let digits = &quoted[1..quoted.len() - 1];
    let canonical = matches!(digits, [b'0'] | [b'1'..=b'9', ..])
        && digits.len() <= 10
        && digits.iter().all(u8::is_ascii_digit);
    if !canonical {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    u32::try_from(n).ok().filter(|&n| n != u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made by `node tests/vectors/compact.js`.
    const VECTORS: &str = include_str!("../../tests/vectors/compact.json");

    fn vectors() -> serde_json::Value {
        serde_json::from_str(VECTORS).unwrap()
    }

    fn js(input: &[u8]) -> Option<String> {
        compact_json(input).map(|c| String::from_utf8(c).expect("compact output is UTF-8"))
    }

    #[test]
    fn matches_node_on_every_vector() {
        let all = vectors();
        let cases = all["vectors"].as_array().unwrap();
        assert!(cases.len() > 40);
        for case in cases {
            let input = case["input"].as_str().unwrap();
            let expected = case["compact"].as_str();
            assert_eq!(
                js(input.as_bytes()).as_deref(),
                expected,
                "{}",
                case["name"]
            );
        }
    }

    #[test]
    fn matches_node_on_highlevel_examples_however_indented() {
        let all = vectors();
        let fixtures = all["fixtures"].as_array().unwrap();
        assert_eq!(fixtures.len(), 92);
        for f in fixtures {
            let name = f["fixture"].as_str().unwrap();
            let path = format!(
                "{}/tests/fixtures/highlevel/{name}",
                env!("CARGO_MANIFEST_DIR")
            );
            let text = std::fs::read_to_string(path).unwrap();
            let expected = f["compact"].as_str();
            assert_eq!(js(text.as_bytes()).as_deref(), expected, "{name}");
            let reindented = text.replace('\n', "\r\n\t");
            assert_eq!(js(reindented.as_bytes()).as_deref(), expected, "{name}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(js(ok.as_bytes()).as_deref(), Some(ok.as_str()));
        let deeper = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(js(deeper.as_bytes()), None);
        // The bound serde_json has.
        assert!(serde_json::from_str::<serde_json::Value>(&ok).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&deeper).is_err());
        let objects = "{\"a\":".repeat(100_000);
        assert_eq!(js(objects.as_bytes()), None);
        assert_eq!(js("[".repeat(1_000_000).as_bytes()), None);
    }

    #[test]
    fn invalid_utf8_has_no_compact_form() {
        assert_eq!(js(b"\"\xff\""), None);
        assert_eq!(js(b"{\"a\":\"\xed\xa0\x80\"}"), None);
    }

    #[test]
    fn a_duplicate_among_many_keys_keeps_its_first_place() {
        let body: String = (0..50_000)
            .map(|i| format!("\"k{i}\":{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let body = format!("{{{body},\"k0\":true}}");
        let out = js(body.as_bytes()).unwrap();
        assert!(out.starts_with("{\"k0\":true,\"k1\":1,"));
    }
}
