//! The per-request hot path of hlgate, piece by piece: signature check, event extraction
//! (type, tenant, dedup key, routing key) and the durable store accept (group commit + fsync).
//!
//! Run with `cargo bench --bench hot_path`. Figures and the machine they came from are in
//! `BENCHMARKS.md`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};

use hlgate::cli::{ed25519_public_pem, SigningKey};
use hlgate::entry::Entry;
use hlgate::event::parse_delivery;
use hlgate::ingest;
use hlgate::schema::{Outcome, SchemaMode, Schemas};
use hlgate::store::{AcceptOutcome, Store};
use hlgate::verify::{Keyring, Scheme, SignatureHeaders, Verifier};

/// Target size of the synthetic event body, in bytes.
const BODY_SIZE: usize = 1500;

/// The 1, 5 and 15 minute load averages, printed with each group: the machine may be shared.
fn loadavg(group: &str, when: &str) {
    let avg = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into());
    eprintln!("loadavg {when} {group}: {avg}");
}

fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A compact ContactCreate-like body of about `size` bytes (the `notes` custom field pads it).
fn contact_create(webhook_id: &str, size: usize) -> Vec<u8> {
    let head = format!(
        concat!(
            r#"{{"type":"ContactCreate","locationId":"ve9EPM428h8vShlRW1KT","#,
            r#""webhookId":"{}","id":"nmFmQEsNgz6AVpgLVUJ0","address1":"3535 1st St N","#,
            r#""city":"ruDolomitebika","state":"AL","companyName":"Loram ipsum","country":"DE","#,
            r#""source":"xyz form","dateAdded":"2021-11-26T12:41:02.193Z","#,
            r#""dateOfBirth":"2000-01-05T00:00:00.000Z","dnd":true,"email":"JohnDeo@gmail.comm","#,
            r#""name":"John Deo","firstName":"John","lastName":"Deo","phone":"+919509597501","#,
            r#""postalCode":"452001","tags":["id magna sed Lorem","Duis dolor commodo aliqua"],"#,
            r#""website":"https://www.google.com/","attachments":[],"#,
            r#""assignedTo":"nmFmQEsNgz6AVpgLVUJ0","customFields":[{{"id":"BcdmQEsNgz6AVpgLVUJ0","#,
            r#""value":"XYZ Corp"}},{{"id":"notes","value":""#
        ),
        webhook_id
    );
    let tail = r#""}]}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    let filler = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ";
    let mut body = head;
    body.extend(filler.chars().cycle().take(pad));
    body.push_str(tail);
    body.into_bytes()
}

/// Compact JSON re-printed with spaces and newlines, as a pretty-printing sender would.
fn pretty(body: &[u8]) -> Vec<u8> {
    let value: serde_json::Value = serde_json::from_slice(body).expect("JSON");
    serde_json::to_vec_pretty(&value).expect("JSON")
}

fn ghl(sig: &str) -> SignatureHeaders<'_> {
    SignatureHeaders {
        ghl: Some(sig),
        wh: None,
    }
}

fn wh(sig: &str) -> SignatureHeaders<'_> {
    SignatureHeaders {
        ghl: None,
        wh: Some(sig),
    }
}

fn verify(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("ed25519 key");
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("ed25519 key");
    let ed_public = ed25519_public_pem(pair.public_key().as_ref());
    let ed_signer_public = pair.public_key().as_ref().to_vec();
    let ed_signer = SigningKey::Ed25519(pair);

    let rsa_private = std::fs::read_to_string(repo_path("tests/keys/rsa-test.key"))
        .expect("tests/keys/rsa-test.key (PKCS#8 RSA-4096)");
    let rsa_public = std::fs::read_to_string(repo_path("tests/keys/rsa-test.pub"))
        .expect("tests/keys/rsa-test.pub (SPKI RSA-4096)");
    let rsa_signer = SigningKey::from_pem(&rsa_private).expect("RSA private key");

    let verifier = Verifier {
        ed25519: Keyring::ed25519_from_pem(&ed_public).expect("ed25519 keyring"),
        rsa: Keyring::rsa_from_pem(&rsa_public).expect("rsa keyring"),
        accept_legacy_rsa: true,
    };

    let body = contact_create("bench-verify-0001", BODY_SIZE);
    let other = contact_create("bench-verify-0002", BODY_SIZE);
    let body_pretty = pretty(&body);
    let (_, ed_good) = ed_signer.sign(&body);
    let (_, ed_bad) = ed_signer.sign(&other);
    let (_, rsa_good) = rsa_signer.sign(&body);
    let (_, rsa_bad) = rsa_signer.sign(&other);

    // Sanity: the cases are what their names say.
    assert!(verifier.verify(&body, ghl(&ed_good)).is_ok());
    assert!(verifier.verify(&body, ghl(&ed_bad)).is_err());
    assert!(verifier.verify(&body, wh(&rsa_good)).is_ok());
    assert!(verifier.verify(&body, wh(&rsa_bad)).is_err());
    assert!(verifier.verify(&body_pretty, ghl(&ed_bad)).is_err());

    loadavg("verify", "before");
    let mut g = c.benchmark_group("verify");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(50)
        .throughput(Throughput::Elements(1));
    g.bench_function("ed25519_good", |b| {
        b.iter(|| verifier.verify(black_box(&body), ghl(&ed_good)).is_ok())
    });
    // The same check with `ring` alone (cofactorless), for comparison.
    let ring_key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ED25519,
        ed_signer_public.clone(),
    );
    let ed_good_raw = base64::engine::general_purpose::STANDARD
        .decode(&ed_good)
        .expect("base64 signature");
    assert!(ring_key.verify(&body, &ed_good_raw).is_ok());
    g.bench_function("ed25519_good_ring", |b| {
        b.iter(|| ring_key.verify(black_box(&body), &ed_good_raw).is_ok())
    });
    g.bench_function("ed25519_bad", |b| {
        b.iter(|| verifier.verify(black_box(&body), ghl(&ed_bad)).is_err())
    });
    // A wrong signature over a non-compact body pays a second verify over the compact
    // re-serialisation (the contract's fallback): the worst case per rejected request.
    g.bench_function("ed25519_bad_pretty_body", |b| {
        b.iter(|| {
            verifier
                .verify(black_box(&body_pretty), ghl(&ed_bad))
                .is_err()
        })
    });
    g.bench_function("rsa4096_good", |b| {
        b.iter(|| verifier.verify(black_box(&body), wh(&rsa_good)).is_ok())
    });
    g.bench_function("rsa4096_bad", |b| {
        b.iter(|| verifier.verify(black_box(&body), wh(&rsa_bad)).is_err())
    });
    g.finish();
    loadavg("verify", "after");
    verify_batch(c, &verifier, &ed_signer);
}

/// `n` requests verified together on one thread, as one HTTP worker's requests meet
/// (`verify_gathered`): criterion's time is per signature.
fn verify_batch(c: &mut Criterion, verifier: &Verifier, signer: &SigningKey) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("verify_batch");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);
    for n in [1usize, 8, 16, 32, 64] {
        let signed: Vec<(Vec<u8>, String)> = (0..n)
            .map(|i| {
                let body = contact_create(&format!("bench-batch-{i:04}"), BODY_SIZE);
                let (_, sig) = signer.sign(&body);
                (body, sig)
            })
            .collect();
        let all = || {
            futures_util::future::join_all(
                signed
                    .iter()
                    .map(|(body, sig)| verifier.verify_gathered(body, ghl(sig))),
            )
        };
        assert!(runtime.block_on(all()).iter().all(Result::is_ok));
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("ed25519_good", n), |b| {
            b.iter(|| runtime.block_on(all()))
        });
    }
    g.finish();
}

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = repo_path("tests/fixtures/highlevel");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy().into();
            (name, std::fs::read(&p).expect("fixture"))
        })
        .collect();
    out.sort();
    out
}

fn extract(c: &mut Criterion) {
    let all = fixtures();
    assert!(!all.is_empty(), "no fixtures in tests/fixtures/highlevel");
    let total_bytes: usize = all.iter().map(|(_, b)| b.len()).sum();
    let body = contact_create("bench-extract-0001", BODY_SIZE);

    loadavg("extract", "before");
    let mut g = c.benchmark_group("extract");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(50);
    g.throughput(Throughput::Elements(all.len() as u64));
    g.bench_function(BenchmarkId::new("all_fixtures", all.len()), |b| {
        b.iter(|| {
            let mut n = 0usize;
            for (_, bytes) in &all {
                let d = parse_delivery(black_box(bytes));
                for e in &d.events {
                    n += e.routing_key().len();
                }
                n += d.dedup_key.len();
            }
            n
        })
    });
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("contact_create_1500b", |b| {
        b.iter(|| {
            let d = parse_delivery(black_box(&body));
            (d.dedup_key, d.events[0].routing_key())
        })
    });
    g.finish();
    loadavg("extract", "after");
    eprintln!(
        "extract: {} fixtures, {} bytes in all (mean {} B)",
        all.len(),
        total_bytes,
        total_bytes / all.len()
    );
}

/// `unknown` for a body that is not JSON, else what its schema says.
fn validate(schemas: &Schemas, event_type: &str, body: &[u8]) -> Outcome {
    match serde_json::from_slice(body) {
        Ok(value) => schemas.validate_value(event_type, &value),
        Err(_) => Outcome::Unknown,
    }
}

/// JSON Schema validation of each event (`HLGATE_SCHEMA_MODE=warn`, the default): from the
/// bytes, and as ingest runs it, in the one parse that also reads the fields.
fn schema(c: &mut Criterion) {
    let schemas = Schemas::embedded(SchemaMode::Warn).expect("embedded schemas");
    let all: Vec<(String, Vec<u8>)> = fixtures();
    let typed: Vec<(String, Vec<u8>)> = all
        .iter()
        .flat_map(|(_, bytes)| {
            parse_delivery(bytes)
                .events
                .into_iter()
                .map(|e| (e.event_type, e.body))
        })
        .collect();
    let covered = typed
        .iter()
        .filter(|(t, _)| schemas.validate_value(t, &serde_json::Value::Null) != Outcome::Unknown)
        .count();
    let body = contact_create("bench-schema-0001", BODY_SIZE);
    eprintln!(
        "schema: {} schemas; {covered} of {} fixture events have one; ContactCreate body: {:?}",
        schemas.len(),
        typed.len(),
        validate(&schemas, "ContactCreate", &body)
    );

    loadavg("schema", "before");
    let mut g = c.benchmark_group("schema");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(50);
    g.throughput(Throughput::Elements(typed.len() as u64));
    g.bench_function(
        BenchmarkId::new("validate_all_fixtures", typed.len()),
        |b| {
            b.iter(|| {
                typed
                    .iter()
                    .filter(|(t, body)| validate(&schemas, t, black_box(body)) == Outcome::Valid)
                    .count()
            })
        },
    );
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("validate_contact_create_1500b", |b| {
        b.iter(|| validate(&schemas, "ContactCreate", black_box(&body)))
    });
    g.bench_function("ingest_parse_contact_create_1500b", |b| {
        b.iter(|| ingest::parse(black_box(&body), &schemas))
    });
    g.finish();
    loadavg("schema", "after");
}

fn entry(key: &str, body: &[u8]) -> Entry {
    Entry {
        seq: 0,
        accepted_ms: 0,
        replay: false,
        redrive: false,
        trace: None,
        scheme: Scheme::Ed25519,
        compact: false,
        schema: Outcome::Unknown,
        dedup_key: key.to_string(),
        index: None,
        event_type: "ContactCreate".into(),
        tenant: "ve9EPM428h8vShlRW1KT".into(),
        location_id: Some("ve9EPM428h8vShlRW1KT".into()),
        company_id: None,
        webhook_id: Some(key.to_string()),
        signature: "x".repeat(88),
        body: body.to_vec(),
    }
}

/// Unique dedup keys across every iteration of a run (a duplicate skips the write).
static NEXT_KEY: AtomicU64 = AtomicU64::new(0);

fn next_key() -> String {
    format!("bench-{:012}", NEXT_KEY.fetch_add(1, Ordering::Relaxed))
}

fn store_accept(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let body = contact_create("bench-store", BODY_SIZE);
    const IN_FLIGHT: usize = 50;

    loadavg("store_accept", "before");
    let mut g = c.benchmark_group("store_accept");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20);

    // Every commit is flushed: the store has no switch for it, so this is the path a 2xx takes.
    {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), Duration::from_secs(7 * 24 * 3600)).expect("store");
        let label = "fsync";

        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("one", label), |b| {
            b.iter_custom(|iters| {
                let entries: Vec<(String, Vec<Entry>)> = (0..iters)
                    .map(|_| {
                        let k = next_key();
                        let e = vec![entry(&k, &body)];
                        (k, e)
                    })
                    .collect();
                rt.block_on(async {
                    let start = Instant::now();
                    for (k, e) in entries {
                        let out = store.accept(k, e).await.expect("accept");
                        debug_assert!(matches!(out, AcceptOutcome::Accepted { .. }));
                    }
                    start.elapsed()
                })
            })
        });

        // 50 accepts in flight at once: the writer commits them in few batches with one
        // fsync each (group commit). Throughput is per event.
        g.throughput(Throughput::Elements(IN_FLIGHT as u64));
        g.bench_function(BenchmarkId::new("concurrent_50", label), |b| {
            b.iter_custom(|iters| {
                let rounds: Vec<Vec<(String, Vec<Entry>)>> = (0..iters)
                    .map(|_| {
                        (0..IN_FLIGHT)
                            .map(|_| {
                                let k = next_key();
                                let e = vec![entry(&k, &body)];
                                (k, e)
                            })
                            .collect()
                    })
                    .collect();
                rt.block_on(async {
                    let start = Instant::now();
                    for round in rounds {
                        let all = round.into_iter().map(|(k, e)| store.accept(k, e));
                        for out in futures_util::future::join_all(all).await {
                            out.expect("accept");
                        }
                    }
                    start.elapsed()
                })
            })
        });
        rt.block_on(store.flush()).expect("flush");
        drop(store);
        // Let the writer thread see the closed channel and stop before the dir goes away.
        std::thread::sleep(Duration::from_millis(100));
        drop(dir);
    }
    g.finish();
    loadavg("store_accept", "after");
}

/// What the relay does around each window of 1000 publishes: read the oldest 1000 outbox
/// entries (`pending_after`) and, once confirmed, move the watermark over them (`mark_published`).
fn outbox(c: &mut Criterion) {
    const WINDOW: usize = 1000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let body = contact_create("bench-outbox", BODY_SIZE);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), Duration::from_secs(7 * 24 * 3600)).expect("store");
    let fill = |n: usize| {
        let entries = (0..n).map(|_| entry(&next_key(), &body)).collect();
        rt.block_on(store.append(entries)).expect("append");
    };
    // A backlog behind the window, as while the relay catches up.
    fill(20 * WINDOW);

    loadavg("outbox", "before");
    let mut g = c.benchmark_group("outbox");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20)
        .throughput(Throughput::Elements(WINDOW as u64));
    g.bench_function("pending_after_1000", |b| {
        b.iter(|| store.pending_after(0, WINDOW).expect("read").len())
    });
    g.bench_function("pending_after_and_mark_published_1000", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                fill(WINDOW);
                let start = Instant::now();
                let batch = store.pending_after(0, WINDOW).expect("read");
                let (first, last) = (batch[0].seq, batch[batch.len() - 1].seq);
                store.mark_published(first, last).expect("mark");
                spent += start.elapsed();
            }
            spent
        })
    });
    g.finish();
    loadavg("outbox", "after");
    rt.block_on(store.flush()).expect("flush");
    drop(store);
    std::thread::sleep(Duration::from_millis(100));
    drop(dir);
}

/// What delivery health adds to each answer: an atomic add, and for a 2xx the tenant's note
/// queued for the health task (which takes the queue between batches, untimed, as that task
/// does every second, so that the queue never fills).
fn health(c: &mut Criterion) {
    use hlgate::config::Settings;
    use hlgate::health::{Attempt, Clock, Health, Tally};
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), Duration::from_secs(3600)).expect("store");
    let alerts = Settings::load(None, &Default::default())
        .expect("settings")
        .alerts;
    let tally = std::sync::Arc::new(Tally::new(Clock::system()));
    let attempts = store.attempts().expect("attempts");
    let health = Health::open(attempts, tally.clone(), Clock::system(), alerts).expect("health");
    loadavg("health", "before");
    let mut g = c.benchmark_group("health");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    g.bench_function("count_refusal", |b| {
        b.iter(|| tally.count(black_box(Attempt::InvalidSignature)))
    });
    g.bench_function("count_accepted_with_tenant", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(10_000);
                let start = Instant::now();
                for _ in 0..n {
                    let tenant = black_box("ve9EPM428h8vShlRW1KT");
                    tally.delivered(Attempt::Accepted, tenant, "ContactCreate");
                }
                spent += start.elapsed();
                health.tenants(None, 1);
                left -= n;
            }
            spent
        })
    });
    g.finish();
    loadavg("health", "after");
    drop((health, store));
    std::thread::sleep(Duration::from_millis(100));
    drop(dir);
}

/// The span work of one webhook (webhook, verify, dedup, commit) and its publish (the span and
/// the message's `traceparent`), as the handler, ingest and the relay do it. `off`: no
/// `HLGATE_OTLP_ENDPOINT`, every span empty, the `traceparent` from fresh ids: what every
/// request pays. `on`: every trace recorded and queued for an exporter (pointed at a port
/// nothing listens on, so a full queue drops; either is a `try_send`).
fn traces(c: &mut Criterion) {
    use hlgate::config::Settings;
    use hlgate::metrics::Metrics;
    use hlgate::traces::{Kind, Span, SpanContext, Tracer};
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _entered = runtime.enter();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let endpoint = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let env = [("HLGATE_OTLP_ENDPOINT".to_string(), endpoint)].into();
    let settings = Settings::load(None, &env).expect("settings").traces;
    let metrics = std::sync::Arc::new(Metrics::default());
    let one_request = |tracer: &Tracer| {
        let started = Instant::now();
        let parent = tracer.incoming(|| None);
        let mut webhook = tracer.span_since("webhook", Kind::Server, parent, started);
        let mut verify = webhook.child("verify", Kind::Internal);
        if verify.is_recording() {
            verify.set("hlgate.signature_scheme", "ed25519");
        }
        verify.end();
        if webhook.is_recording() {
            let deduped = Instant::now();
            webhook.child_between("dedup", started, deduped);
            webhook.child_between("commit", deduped, Instant::now());
            webhook.set("hlgate.tenant", "ve9EPM428h8vShlRW1KT");
            webhook.set("hlgate.event_type", "ContactCreate");
        }
        let context = webhook.context();
        webhook.end();
        let mut publish: Span = tracer.span("publish", Kind::Producer, context);
        if publish.is_recording() {
            publish.set("hlgate.tenant", "ve9EPM428h8vShlRW1KT");
        }
        let trace = (publish.context()).unwrap_or_else(|| SpanContext::random(false));
        black_box(trace.traceparent());
        publish.end();
    };
    loadavg("traces", "before");
    let mut g = c.benchmark_group("traces");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    let off = Tracer::off();
    g.bench_function("off", |b| b.iter(|| one_request(black_box(&off))));
    // The part of `off` the contract asks for: the message's own traceparent.
    g.bench_function("traceparent", |b| {
        b.iter(|| black_box(SpanContext::random(false).traceparent()))
    });
    let on = Tracer::start(&settings, &metrics);
    g.bench_function("on", |b| b.iter(|| one_request(black_box(&on))));
    g.finish();
    loadavg("traces", "after");
}

criterion_group!(
    benches,
    verify,
    extract,
    schema,
    store_accept,
    outbox,
    health,
    traces
);
criterion_main!(benches);
