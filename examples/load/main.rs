//! Load generator for a local hlgate: posts pre-signed, unique ContactCreate-like events to
//! `POST /webhooks/highlevel` from N concurrent keep-alive connections, then watches the admin
//! metrics until the relay has drained the outbox to RabbitMQ.
//!
//! ```text
//! cargo run --release -- keygen "$DIR/load"            # writes load.key / load.pub
//! HLGATE_ED25519_PUBLIC_KEYS=@"$DIR/load.pub" ... cargo run --release -- serve &
//! cargo run --release --example load -- --key "$DIR/load.key" --concurrency 50 --duration 20
//! ```
//!
//! Every event is signed before the clock starts, so signing costs nothing during the run.
//! Only loopback targets are accepted: this tool is for local measurements.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hlgate::cli::SigningKey;

mod cpu;
mod queue;
mod wire;

use cpu::{loadavg, CpuSample};
use queue::{bind_queue, delete_exchange, delete_queue};
use wire::{presign, worker, Target, WorkerReport};

/// How long one request may take before it counts as a transport error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

const USAGE: &str = "\
usage: cargo run --release --example load -- --key PATH [options]

  --url URL            webhook endpoint (default http://127.0.0.1:8080/webhooks/highlevel)
  --admin URL          admin listener (default http://127.0.0.1:9090)
  --admin-token TOKEN  bearer token for the admin API (default: $HLGATE_ADMIN_TOKEN, if set)
  --key PATH           Ed25519 (or RSA) private key PEM whose public key hlgate trusts (required)
  --concurrency N      concurrent connections (default 50)
  --duration SECS      how long to post (default 20)
  --events N           pre-signed unique events (default: enough for the run, see below)
  --size BYTES         body size of each event (default 1500)
  --locations N        distinct locationIds, i.e. routing keys (default 100)
  --drain-timeout SECS how long to wait for the outbox to empty afterwards (default 60)
  --bind EXCHANGE      before the run, declare a durable classic queue hlgate.load.<pid> bound
                       with '#' to EXCHANGE (so events do not pile up in highlevel.unrouted);
                       after the drain, print its message count and delete it
  --queue-version N    with --bind: the classic queue's x-queue-version, 1 or 2 (RabbitMQ 3.10
                       and later; default: not set, the broker's default)
  --queue-mode MODE    with --bind: the classic queue's x-queue-mode, default (not set, the
                       default) or lazy (messages go to disk at once instead of being held in
                       memory; RabbitMQ 3.12 and later do that anyway)
  --keep-queue         with --bind: keep the queue at the end (delete it later with
                       --delete-queue); for measuring a drain across hlgate restarts
  --amqp URL           RabbitMQ for --bind / --delete-exchange
                       (default amqp://guest:guest@127.0.0.1:5672/%2f)
  --delete-exchange EXCHANGE
                       only delete EXCHANGE (after stopping hlgate) and exit; needs no --key
  --delete-queue QUEUE only delete QUEUE and exit; needs no --key
  --watch NAMES        comma-separated process names whose CPU during the run is printed, each
                       summed over its processes (default hlgate,beam.smp; from /proc); the
                       first is the server under test: its CPU per answered 2xx is printed in
                       all and by thread (http, writer, sled, tokio, lapin-io, jemalloc, ended)

Default --events: duration x min(concurrency x 2000, 20000) events/s, at least 20000.
";

struct Args {
    url: String,
    admin: String,
    admin_token: Option<String>,
    key: String,
    concurrency: usize,
    duration: Duration,
    events: Option<usize>,
    size: usize,
    locations: usize,
    drain_timeout: Duration,
    bind: Option<String>,
    queue_version: Option<u8>,
    lazy: bool,
    amqp: String,
    delete_exchange: Option<String>,
    keep_queue: bool,
    delete_queue: Option<String>,
    watch: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: "http://127.0.0.1:8080/webhooks/highlevel".into(),
        admin: "http://127.0.0.1:9090".into(),
        admin_token: std::env::var("HLGATE_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
        key: String::new(),
        concurrency: 50,
        duration: Duration::from_secs(20),
        events: None,
        size: 1500,
        locations: 100,
        drain_timeout: Duration::from_secs(60),
        bind: None,
        queue_version: None,
        lazy: false,
        amqp: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
        delete_exchange: None,
        keep_queue: false,
        delete_queue: None,
        watch: vec!["hlgate".into(), "beam.smp".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            print!("{USAGE}");
            std::process::exit(0);
        }
        // Both `--flag value` and `--flag=value`.
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (flag.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let number = |v: String| -> Result<u64, String> {
            v.parse::<u64>()
                .map_err(|_| format!("{name}: {v:?} is not a whole number"))
        };
        match name.as_str() {
            "--url" => args.url = value()?,
            "--admin" => args.admin = value()?.trim_end_matches('/').to_string(),
            "--admin-token" => args.admin_token = Some(value()?),
            "--key" => args.key = value()?,
            "--concurrency" => args.concurrency = number(value()?)?.max(1) as usize,
            "--duration" => args.duration = Duration::from_secs(number(value()?)?.max(1)),
            "--events" => args.events = Some(number(value()?)?.max(1) as usize),
            "--size" => args.size = number(value()?)? as usize,
            "--locations" => args.locations = number(value()?)?.max(1) as usize,
            "--drain-timeout" => args.drain_timeout = Duration::from_secs(number(value()?)?),
            "--bind" => args.bind = Some(value()?),
            "--queue-version" => {
                args.queue_version = match value()?.as_str() {
                    "1" => Some(1),
                    "2" => Some(2),
                    v => return Err(format!("--queue-version: {v:?} is neither 1 nor 2")),
                }
            }
            "--queue-mode" => {
                args.lazy = match value()?.as_str() {
                    "default" => false,
                    "lazy" => true,
                    v => return Err(format!("--queue-mode: {v:?} is neither default nor lazy")),
                }
            }
            "--amqp" => args.amqp = value()?,
            "--delete-exchange" => args.delete_exchange = Some(value()?),
            "--keep-queue" => args.keep_queue = true,
            "--delete-queue" => args.delete_queue = Some(value()?),
            "--watch" => {
                args.watch = value()?
                    .split(',')
                    .filter(|n| !n.is_empty())
                    .map(str::to_string)
                    .collect()
            }
            other => return Err(format!("unknown flag {other}\n\n{USAGE}")),
        }
    }
    loopback_only(&args.amqp)?;
    if args.delete_exchange.is_some() || args.delete_queue.is_some() {
        return Ok(args);
    }
    if args.key.is_empty() {
        return Err(format!("--key is required\n\n{USAGE}"));
    }
    loopback_only(&args.url)?;
    loopback_only(&args.admin)?;
    Ok(args)
}

/// This tool only ever loads the local machine.
fn loopback_only(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    let host = parsed.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ok = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{url}: only loopback targets (127.0.0.1, ::1, localhost) are allowed"
        ))
    }
}

/// Reads one sample from Prometheus text: `name` is the metric with its labels, as printed.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let rest = l.strip_prefix(name)?;
        rest.starts_with(' ')
            .then(|| rest.trim().parse::<f64>().ok())
            .flatten()
    })
}

#[derive(Clone, Copy, Debug, Default)]
struct Snapshot {
    depth: f64,
    acked: f64,
    accepted: f64,
}

async fn snapshot(client: &reqwest::Client, args: &Args) -> Result<Snapshot, String> {
    let url = format!("{}/metrics", args.admin);
    let mut request = client.get(&url);
    if let Some(t) = &args.admin_token {
        request = request.bearer_auth(t);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("GET {url}: {}", response.status()));
    }
    let text = response
        .text()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    Ok(Snapshot {
        depth: metric(&text, "hlgate_outbox_depth").unwrap_or(f64::NAN),
        acked: metric(&text, r#"hlgate_publish_total{result="ack"}"#).unwrap_or(0.0),
        accepted: metric(&text, r#"hlgate_webhooks_total{outcome="accepted"}"#).unwrap_or(0.0),
    })
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

async fn run(args: Args) -> Result<(), String> {
    let key_text =
        std::fs::read_to_string(&args.key).map_err(|e| format!("cannot read {}: {e}", args.key))?;
    let key = SigningKey::from_pem(&key_text)?;
    if matches!(key, SigningKey::Rsa(_)) {
        eprintln!("note: an RSA key signs slowly; pre-signing may take a while");
    }
    let n = args.events.unwrap_or_else(|| {
        let per_second = (args.concurrency * 2000).min(20_000);
        (args.duration.as_secs() as usize * per_second).max(20_000)
    });

    let t = Instant::now();
    let target = Arc::new(Target::parse(&args.url)?);
    let signed =
        tokio::task::block_in_place(|| presign(&key, &target, n, args.size, args.locations));
    let body_len = signed.body_len;
    println!(
        "pre-signed {n} events of {body_len} B ({}) in {:.1}s",
        signed.header,
        t.elapsed().as_secs_f64()
    );
    let signed = Arc::new(signed);

    let admin = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("http client: {e}"))?;

    let bound = match &args.bind {
        Some(exchange) => {
            let q = bind_queue(&args.amqp, exchange, args.queue_version, args.lazy).await?;
            println!(
                "bound durable classic queue {} ({}, {} mode) to {exchange} with '#'",
                q.name,
                match args.queue_version {
                    Some(v) => format!("version {v}"),
                    None => "the broker's default version".into(),
                },
                if args.lazy { "lazy" } else { "default" }
            );
            Some(q)
        }
        None => None,
    };

    let before = match snapshot(&admin, &args).await {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("warning: no admin metrics ({e}); publish figures are skipped");
            None
        }
    };
    if let Some(b) = before {
        println!(
            "before: outbox_depth={} acked={} accepted={}",
            b.depth, b.acked, b.accepted
        );
    }

    println!(
        "posting to {} with {} connections for {}s (loadavg {})",
        args.url,
        args.concurrency,
        args.duration.as_secs(),
        loadavg()
    );
    let next = Arc::new(AtomicUsize::new(0));
    let ran_out = Arc::new(AtomicBool::new(false));
    let cpu_before = CpuSample::take(&args.watch);
    let start = Instant::now();
    let deadline = start + args.duration;
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            tokio::spawn(worker(
                target.clone(),
                signed.clone(),
                next.clone(),
                ran_out.clone(),
                deadline,
            ))
        })
        .collect();
    let mut total = WorkerReport::default();
    for w in workers {
        let r = w.await.map_err(|e| format!("worker: {e}"))?;
        total.latencies_us.extend(r.latencies_us);
        for (s, c) in r.statuses {
            *total.statuses.entry(s).or_default() += c;
        }
        total.accepted += r.accepted;
        total.duplicates += r.duplicates;
        total.errors += r.errors;
        if total.first_error.is_none() {
            total.first_error = r.first_error;
        }
    }
    let elapsed = start.elapsed();
    let ended = Instant::now();
    let cpu_after = CpuSample::take(&args.watch);
    let usage = match (&cpu_before, &cpu_after) {
        (Some(a), Some(b)) => Some(a.usage(b, elapsed.as_secs_f64())),
        _ => None,
    };
    let tool_cpu = usage.as_ref().map_or("n/a".into(), |u| u.own());
    let cpu_split = usage.as_ref().map_or("n/a".into(), |u| u.line());
    // The gateway under test is the first watched name.
    let served = args.watch.first().map(String::as_str).unwrap_or("hlgate");
    let per_event = usage
        .as_ref()
        .and_then(|u| u.per_event(served, total.accepted + total.duplicates));
    let load_at_end = loadavg();

    let mut lat = std::mem::take(&mut total.latencies_us);
    lat.sort_unstable();
    let answered: u64 = total.statuses.values().sum();
    let non_2xx: u64 = total
        .statuses
        .iter()
        .filter(|(s, _)| !(200..300).contains(*s))
        .map(|(_, c)| c)
        .sum();
    let secs = elapsed.as_secs_f64();
    let rate = total.accepted as f64 / secs;
    let (p50, p90, p99) = (
        percentile(&lat, 50.0),
        percentile(&lat, 90.0),
        percentile(&lat, 99.0),
    );
    let max = lat.last().map_or(f64::NAN, |m| *m as f64 / 1000.0);

    if ran_out.load(Ordering::Relaxed) {
        println!("note: all {n} pre-signed events were used before the duration ended; pass a larger --events");
    }
    println!(
        "run: {secs:.2}s, {answered} answered, {} accepted ({rate:.0}/s), {} duplicate, \
         {non_2xx} non-2xx, {} transport errors",
        total.accepted, total.duplicates, total.errors
    );
    let statuses: Vec<String> = total
        .statuses
        .iter()
        .map(|(s, c)| format!("{s}={c}"))
        .collect();
    println!("status counts: {}", statuses.join(" "));
    if let Some(e) = &total.first_error {
        println!("first transport error: {e}");
    }
    println!("latency ms: p50={p50:.2} p90={p90:.2} p99={p99:.2} max={max:.2}");
    println!("loadavg at end of run: {load_at_end}");
    println!("CPU during the run, % of one core: {cpu_split}");
    let (cpu_us, split) = match &per_event {
        Some((us, split)) => {
            println!("{served} CPU per answered 2xx: {us:.1} µs ({split})");
            (format!("{us:.1}us"), split.clone())
        }
        None => ("n/a".into(), "n/a".into()),
    };

    // Drain: how long until the relay has confirmed everything this run put in the outbox.
    let at_end = match before {
        Some(_) => snapshot(&admin, &args).await.ok(),
        None => None,
    };
    if let (Some(b), Some(m)) = (before, at_end) {
        println!(
            "at end of run: outbox_depth={} published during the run={:.0} ({:.0}/s)",
            m.depth,
            m.acked - b.acked,
            (m.acked - b.acked) / secs
        );
    }
    let mut drain = String::from("n/a");
    let mut published = String::from("n/a");
    let mut e2e = String::from("n/a");
    if let Some(b) = before {
        let mut last = None;
        let mut drained = None;
        while ended.elapsed() < args.drain_timeout {
            match snapshot(&admin, &args).await {
                Ok(s) => {
                    last = Some(s);
                    if s.depth == 0.0 {
                        drained = Some(ended.elapsed());
                        break;
                    }
                }
                Err(e) => eprintln!("warning: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(a) = last {
            let acked = a.acked - b.acked;
            published = format!("{acked:.0}");
            println!(
                "after: outbox_depth={} published (ack delta)={acked:.0} accepted (metrics delta)={:.0}",
                a.depth,
                a.accepted - b.accepted
            );
            match drained {
                Some(d) => {
                    drain = format!("{:.2}s", d.as_secs_f64());
                    if let Some(m) = at_end {
                        if d.as_secs_f64() > 0.2 {
                            println!(
                                "relay rate while draining: {:.0}/s ({:.0} in {:.2}s)",
                                (a.acked - m.acked) / d.as_secs_f64(),
                                a.acked - m.acked,
                                d.as_secs_f64()
                            );
                        }
                    }
                    e2e = format!("{:.0}/s", acked / (secs + d.as_secs_f64()));
                    println!(
                        "outbox empty {:.2}s after the run ended; end-to-end {} published/s \
                         (run + drain)",
                        d.as_secs_f64(),
                        e2e
                    );
                }
                None => {
                    drain = format!(">{}s", args.drain_timeout.as_secs());
                    println!(
                        "outbox still at {} after {}s; gave up waiting",
                        a.depth,
                        args.drain_timeout.as_secs()
                    );
                }
            }
        }
    }

    let mut queued = String::from("n/a");
    if let Some(q) = bound {
        match q.message_count().await {
            Ok(count) => {
                queued = count.to_string();
                println!("queue {} holds {count} messages", q.name);
            }
            Err(e) => eprintln!("warning: {e}"),
        }
        if args.keep_queue {
            println!("kept queue {} (delete it with --delete-queue)", q.name);
            let _ = q.connection.close(200, "done".into()).await;
        } else {
            match q.delete().await {
                Ok(()) => println!("deleted the queue"),
                Err(e) => eprintln!("warning: {e}"),
            }
        }
    }

    println!(
        "SUMMARY c={} dur={secs:.1}s size={body_len}B accepted={} rate={rate:.0}/s \
         p50={p50:.2}ms p90={p90:.2}ms p99={p99:.2}ms max={max:.2}ms non2xx={non_2xx} \
         errors={} published={published} queued={queued} drain={drain} e2e={e2e} cpu={cpu_us} \
         cpu_split=[{split}] tool_cpu={tool_cpu} loadavg=[{load_at_end}]",
        args.concurrency, total.accepted, total.errors
    );
    Ok(())
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = match (args.delete_queue.clone(), args.delete_exchange.clone()) {
        (None, None) => rt.block_on(run(args)),
        (queue, exchange) => rt.block_on(async {
            if let Some(q) = queue {
                delete_queue(&args.amqp, &q).await?;
            }
            if let Some(x) = exchange {
                delete_exchange(&args.amqp, &x).await?;
            }
            Ok(())
        }),
    };
    if let Err(e) = result {
        eprintln!("load: {e}");
        std::process::exit(1);
    }
}
