//! The requests: built and signed before the run, posted over bare keep-alive sockets.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use hlgate::cli::SigningKey;

use crate::REQUEST_TIMEOUT;

/// A compact ContactCreate-like event of about `size` bytes with a unique `webhookId`.
fn event(run: &str, i: usize, locations: usize, timestamp: &str, size: usize) -> Vec<u8> {
    let head = format!(
        concat!(
            r#"{{"type":"ContactCreate","timestamp":"{ts}","webhookId":"load-{run}-{i:09}","#,
            r#""locationId":"loadLoc{loc:05}","id":"c{run}{i:09}","address1":"3535 1st St N","#,
            r#""city":"ruDolomitebika","state":"AL","companyName":"Loram ipsum","country":"DE","#,
            r#""source":"xyz form","dateAdded":"{ts}","dateOfBirth":"2000-01-05T00:00:00.000Z","#,
            r#""dnd":true,"email":"john.deo.{i}@example.com","name":"John Deo","#,
            r#""firstName":"John","lastName":"Deo","phone":"+919509597501","#,
            r#""postalCode":"452001","tags":["id magna sed Lorem","Duis dolor commodo aliqua"],"#,
            r#""website":"https://www.example.com/","attachments":[],"#,
            r#""assignedTo":"nmFmQEsNgz6AVpgLVUJ0","customFields":[{{"id":"BcdmQEsNgz6AVpgLVUJ0","#,
            r#""value":"XYZ Corp"}},{{"id":"notes","value":""#
        ),
        ts = timestamp,
        run = run,
        i = i,
        loc = i % locations,
    );
    let tail = r#""}]}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    let filler = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ";
    let mut body = head;
    body.extend(filler.chars().cycle().take(pad));
    body.push_str(tail);
    body.into_bytes()
}

/// The pre-built requests: each one as it goes on the wire (request line, headers, body).
pub(crate) struct Signed {
    pub(crate) header: &'static str,
    pub(crate) body_len: usize,
    requests: Vec<Vec<u8>>,
}

/// Where the requests go: `host:port` (to connect to, and as the `Host` header) and the path.
pub(crate) struct Target {
    authority: String,
    path: String,
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
        if parsed.scheme() != "http" {
            return Err(format!("{url}: only http:// is supported"));
        }
        let host = parsed.host_str().unwrap_or_default().to_string();
        let port = parsed.port_or_known_default().unwrap_or(80);
        let mut path = parsed.path().to_string();
        if let Some(q) = parsed.query() {
            path = format!("{path}?{q}");
        }
        Ok(Target {
            authority: format!("{host}:{port}"),
            path,
        })
    }
}

/// One request on the wire, built once so that posting it costs one write.
fn wire_request(target: &Target, header: &str, sig: &str, body: &[u8]) -> Vec<u8> {
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n{header}: {sig}\r\n\
         content-length: {}\r\n\r\n",
        target.path,
        target.authority,
        body.len()
    );
    let mut request = Vec::with_capacity(head.len() + body.len());
    request.extend_from_slice(head.as_bytes());
    request.extend_from_slice(body);
    request
}

/// Builds and signs `n` events on all cores.
pub(crate) fn presign(
    key: &SigningKey,
    target: &Target,
    n: usize,
    size: usize,
    locations: usize,
) -> Signed {
    let run = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let timestamp = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = n.div_ceil(threads).max(1);
    let header = key.sign(b"{}").0;
    let mut requests = Vec::with_capacity(n);
    let mut body_len = 0;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|from| {
                let (run, timestamp) = (&run, &timestamp);
                s.spawn(move || {
                    (from..(from + chunk).min(n))
                        .map(|i| {
                            let body = event(run, i, locations, timestamp, size);
                            let (_, sig) = key.sign(&body);
                            (body.len(), wire_request(target, header, &sig, &body))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (len, request) in h.join().expect("signing thread") {
                body_len = len;
                requests.push(request);
            }
        }
    });
    Signed {
        header,
        body_len,
        requests,
    }
}

/// One keep-alive HTTP/1.1 connection. Requests are written whole and answers read by
/// `content-length`, so the client costs next to nothing beside the server it measures.
struct Connection {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

/// An answer: its status, whether its body says `accepted` or `duplicate`, and whether the
/// server will close the connection after it.
struct Answer {
    status: u16,
    outcome: Option<&'static str>,
    close: bool,
}

impl Connection {
    async fn open(addr: &str) -> Result<Self, String> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("nodelay: {e}"))?;
        Ok(Connection {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    async fn exchange(&mut self, request: &[u8]) -> Result<Answer, String> {
        use tokio::io::AsyncWriteExt;
        self.stream
            .write_all(request)
            .await
            .map_err(|e| format!("write: {e}"))?;
        self.buf.clear();
        let head_end = loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                break at + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| "answer head is not UTF-8".to_string())?;
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| format!("bad status line in {head:?}"))?;
        let mut length = None;
        let mut close = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(format!("transfer-encoding {value} is not supported"));
            }
        }
        let length = length.ok_or_else(|| format!("no content-length in {head:?}"))?;
        while self.buf.len() < head_end + length {
            self.fill().await?;
        }
        let body = &self.buf[head_end..head_end + length];
        let outcome = if find(body, b"\"accepted\"").is_some() {
            Some("accepted")
        } else if find(body, b"\"duplicate\"").is_some() {
            Some("duplicate")
        } else {
            None
        };
        Ok(Answer {
            status,
            outcome,
            close,
        })
    }

    async fn fill(&mut self) -> Result<(), String> {
        use tokio::io::AsyncReadExt;
        let n = self
            .stream
            .read_buf(&mut self.buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed by the server".into());
        }
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[derive(Default)]
pub(crate) struct WorkerReport {
    pub(crate) latencies_us: Vec<u32>,
    pub(crate) statuses: BTreeMap<u16, u64>,
    pub(crate) accepted: u64,
    pub(crate) duplicates: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
}

pub(crate) async fn worker(
    target: Arc<Target>,
    signed: Arc<Signed>,
    next: Arc<AtomicUsize>,
    ran_out: Arc<AtomicBool>,
    deadline: Instant,
) -> WorkerReport {
    let mut r = WorkerReport {
        latencies_us: Vec::with_capacity(64 * 1024),
        ..WorkerReport::default()
    };
    let mut connection: Option<Connection> = None;
    while Instant::now() < deadline {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(request) = signed.requests.get(i) else {
            ran_out.store(true, Ordering::Relaxed);
            break;
        };
        let started = Instant::now();
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let open = match &mut connection {
                Some(open) => open,
                None => connection.insert(Connection::open(&target.authority).await?),
            };
            open.exchange(request).await
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_TIMEOUT:?}")));
        let elapsed = started.elapsed();
        match outcome {
            Ok(answer) => {
                r.latencies_us
                    .push(elapsed.as_micros().min(u32::MAX as u128) as u32);
                *r.statuses.entry(answer.status).or_default() += 1;
                if answer.status == 200 {
                    match answer.outcome {
                        Some("accepted") => r.accepted += 1,
                        Some("duplicate") => r.duplicates += 1,
                        _ => {}
                    }
                }
                if answer.close {
                    connection = None;
                }
            }
            Err(e) => {
                // A broken or timed-out connection is not reused: the next request opens another.
                connection = None;
                r.errors += 1;
                r.first_error.get_or_insert(e);
            }
        }
    }
    r
}
