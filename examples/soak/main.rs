//! Soak: runs the real hlgate at a steady rate for a while, cuts its broker connection every few
//! minutes, raises a RabbitMQ memory alarm once, and kills hlgate with SIGKILL (restarting it
//! on the same data dir) every few minutes; then accounts for every event hlgate answered 200:
//! each must have been published at least once, and copies beyond what was in flight at the
//! faults are reported. Memory and open files are sampled throughout.
//!
//! ```text
//! cargo build --release --examples && cargo build --release
//! target/release/examples/soak --minutes 60 --rate 5000
//! ```
//!
//! It talks only to loopback: hlgate on free local ports, RabbitMQ at `--amqp` through a local
//! proxy it can cut. The alarm needs `rabbitmqctl` beside the broker (`--no-alarm` otherwise).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hlgate::cli::SigningKey;

mod gateway;
mod proxy;
mod tally;

use gateway::Gateway;
use proxy::CutProxy;
use tally::{account, Consumer};

const USAGE: &str = "\
usage: soak [options]

  --bin PATH           the hlgate binary (default: the one built beside this example)
  --minutes M          how long to send (default 60; fractions allowed)
  --rate N             events per second (default 2000)
  --concurrency N      concurrent senders (default 16)
  --cut-every SECS     cut the broker connection this often (default 180)
  --cut-for SECS       and keep it down this long (default 5)
  --kill-every SECS    kill -9 and restart hlgate this often (default 240)
  --alarm-at SECS      raise a memory alarm at this time (default: a third of the run)
  --alarm-for SECS     for this long (default 30)
  --no-alarm           raise no alarm
  --amqp URL           RabbitMQ (default amqp://guest:guest@127.0.0.1:5672/%2f); must be
                       127.0.0.1:5672, which the cuttable proxy forwards to
  --drain-timeout SECS how long to wait for the outbox to empty at the end (default 300)
";

struct Args {
    bin: PathBuf,
    duration: Duration,
    rate: f64,
    concurrency: usize,
    cut_every: u64,
    cut_for: Duration,
    kill_every: u64,
    alarm: Option<(u64, u64)>,
    amqp: String,
    drain_timeout: Duration,
}

fn args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.join("hlgate")))
        .unwrap_or_else(|| PathBuf::from("hlgate"));
    let mut a = Args {
        bin: beside,
        duration: Duration::from_secs(3600),
        rate: 2000.0,
        concurrency: 16,
        cut_every: 180,
        cut_for: Duration::from_secs(5),
        kill_every: 240,
        alarm: None,
        amqp: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
        drain_timeout: Duration::from_secs(300),
    };
    let (mut alarm_at, mut alarm_for, mut no_alarm) = (None, 30, false);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value\n{USAGE}"));
        let num = |v: String| v.parse::<f64>().map_err(|_| format!("{flag}: {v}?"));
        match flag.as_str() {
            "--bin" => a.bin = PathBuf::from(value()?),
            "--minutes" => a.duration = Duration::from_secs_f64(num(value()?)? * 60.0),
            "--rate" => a.rate = num(value()?)?,
            "--concurrency" => a.concurrency = num(value()?)? as usize,
            "--cut-every" => a.cut_every = num(value()?)? as u64,
            "--cut-for" => a.cut_for = Duration::from_secs_f64(num(value()?)?),
            "--kill-every" => a.kill_every = num(value()?)? as u64,
            "--alarm-at" => alarm_at = Some(num(value()?)? as u64),
            "--alarm-for" => alarm_for = num(value()?)? as u64,
            "--no-alarm" => no_alarm = true,
            "--amqp" => a.amqp = value()?,
            "--drain-timeout" => a.drain_timeout = Duration::from_secs_f64(num(value()?)?),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    if !no_alarm {
        let at = alarm_at.unwrap_or(a.duration.as_secs() / 3);
        a.alarm = Some((at, alarm_for));
    }
    if a.rate <= 0.0 || a.concurrency == 0 || a.cut_every == 0 || a.kill_every == 0 {
        return Err(format!(
            "rates, counts and intervals must be positive\n{USAGE}"
        ));
    }
    Ok(a)
}

/// What the senders saw.
#[derive(Default)]
struct Sent {
    accepted: Mutex<Vec<String>>,
    refused: AtomicU64,
    other: AtomicU64,
    transport: AtomicU64,
}

/// Sends signed unique events at `rate` (spread over the senders) until `stop`.
async fn send(
    url: String,
    key: Arc<SigningKey>,
    run: String,
    rate: f64,
    next: Arc<AtomicU64>,
    sent: Arc<Sent>,
    stop: Arc<AtomicBool>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client");
    let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        pace.tick().await;
        let i = next.fetch_add(1, Ordering::Relaxed);
        let id = format!("soak-{run}-{i}");
        let body = serde_json::to_vec(&serde_json::json!({
            "type": "ContactCreate",
            "locationId": format!("loc{}", i % 50),
            "id": format!("c{i}"),
            "webhookId": id,
            "timestamp": time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        }))
        .expect("json");
        let (header, signature) = key.sign(&body);
        let answer = client
            .post(&url)
            .header(header, signature)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        match answer.map(|r| r.status().as_u16()) {
            Ok(200) => sent.accepted.lock().expect("accepted").push(id),
            Ok(429) => drop(sent.refused.fetch_add(1, Ordering::Relaxed)),
            Ok(_) => drop(sent.other.fetch_add(1, Ordering::Relaxed)),
            Err(_) => drop(sent.transport.fetch_add(1, Ordering::Relaxed)),
        }
    }
}

fn alarm(raise: bool) {
    let expr = if raise {
        "rabbit_alarm:set_alarm({{resource_limit, memory, node()}, []})."
    } else {
        "rabbit_alarm:clear_alarm({resource_limit, memory, node()})."
    };
    match std::process::Command::new("rabbitmqctl")
        .args(["eval", expr])
        .output()
    {
        Ok(out) if out.status.success() => {}
        other => eprintln!("rabbitmqctl eval failed: {other:?}"),
    }
}

#[tokio::main]
async fn main() {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    match run(args).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    }
}

async fn run(args: Args) -> Result<bool, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let key_path = dir.path().join("soak");
    hlgate::cli::keygen(&key_path)?;
    let key_text =
        std::fs::read_to_string(key_path.with_extension("key")).map_err(|e| e.to_string())?;
    let key = Arc::new(SigningKey::from_pem(&key_text)?);
    let run_id = format!("{}-{}", std::process::id(), hlgate::entry::now_ms());
    let exchange = format!("hlgate.soak.{run_id}");
    let consumer = Consumer::bind(&args.amqp, &exchange).await?;
    let proxy = Arc::new(CutProxy::start("127.0.0.1:5672").await);
    let via_proxy = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    let mut gateway = Gateway::new(&args.bin, dir.path(), &exchange, &via_proxy, &key_path);
    gateway.start().await?;

    let sent = Arc::new(Sent::default());
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let url = format!("http://{}/webhooks/highlevel", gateway.public);
    let senders: Vec<_> = (0..args.concurrency)
        .map(|_| {
            tokio::spawn(send(
                url.clone(),
                key.clone(),
                run_id.clone(),
                args.rate / args.concurrency as f64,
                next.clone(),
                sent.clone(),
                stop.clone(),
            ))
        })
        .collect();

    let started = Instant::now();
    let (mut kills, mut cuts, mut alarms) = (0u64, 0u64, 0u64);
    let (mut next_kill, mut next_cut, mut next_sample) = (args.kill_every, args.cut_every, 0);
    let mut alarm_raised_at = None;
    let (mut rss_max, mut fds_max) = (0f64, 0usize);
    println!(
        "soak: {} for {:?} at {}/s",
        args.bin.display(),
        args.duration,
        args.rate
    );
    while started.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t = started.elapsed().as_secs();
        if t >= next_kill {
            gateway.kill();
            gateway.start().await?;
            kills += 1;
            next_kill += args.kill_every;
        }
        if t >= next_cut {
            let (proxy, outage) = (proxy.clone(), args.cut_for);
            tokio::spawn(async move { proxy.cut(outage).await });
            cuts += 1;
            next_cut += args.cut_every;
        }
        if let Some((at, hold)) = args.alarm {
            if alarms == 0 && t >= at {
                alarm(true);
                alarms = 1;
                alarm_raised_at = Some(t);
            }
            if alarm_raised_at.is_some_and(|raised| t >= raised + hold) {
                alarm(false);
                alarm_raised_at = None;
            }
        }
        if let Some((rss, fds)) = gateway.usage() {
            rss_max = rss_max.max(rss);
            fds_max = fds_max.max(fds);
            if t >= next_sample {
                println!(
                    "t={t}s rss_mb={rss:.1} fds={fds} accepted={} refused={} transport_errors={} delivered={}",
                    sent.accepted.lock().expect("accepted").len(),
                    sent.refused.load(Ordering::Relaxed),
                    sent.transport.load(Ordering::Relaxed),
                    consumer.deliveries(),
                );
                next_sample = t + 10;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        let _ = sender.await;
    }
    if alarm_raised_at.is_some() {
        alarm(false);
    }

    // Drained: the outbox is empty and the consumer has seen all there is.
    let drain_started = Instant::now();
    let mut drained = false;
    while drain_started.elapsed() < args.drain_timeout {
        if gateway.outbox_depth().await == Some(0) {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut last = u64::MAX;
    while consumer.deliveries() != last {
        last = consumer.deliveries();
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let drain = drain_started.elapsed();
    let accepted = sent.accepted.lock().expect("accepted").clone();
    let result = account(&accepted, &consumer.seen);
    // After a kill or a cut, at most what the relay had read ahead may go again.
    let bound = (kills + cuts + alarms) * hlgate::publish::relay::READ_AHEAD;
    gateway.stop();
    consumer.delete().await;
    println!(
        "SUMMARY minutes={:.1} rate={} accepted={} missing={} copies={} max_copies={} copies_bound={bound} \
         refused_429={} other_status={} transport_errors={} kills={kills} cuts={cuts} alarms={alarms} \
         drained={drained} drain_s={:.1} rss_max_mb={rss_max:.1} fds_max={fds_max}",
        args.duration.as_secs_f64() / 60.0,
        args.rate,
        result.accepted,
        result.missing.len(),
        result.copies,
        result.max_copies,
        sent.refused.load(Ordering::Relaxed),
        sent.other.load(Ordering::Relaxed),
        sent.transport.load(Ordering::Relaxed),
        drain.as_secs_f64(),
    );
    for id in result.missing.iter().take(20) {
        println!("MISSING {id}");
    }
    Ok(drained && result.missing.is_empty() && result.copies <= bound && result.accepted > 0)
}
