//! Where the CPU went during the run, from `/proc`: this tool, each watched process, the
//! threads of each watched process grouped by what they do, and the machine's idle share.

use std::collections::BTreeMap;

/// CPU time in seconds of a whole process (every thread it ever had): `stat`'s user + system
/// ticks (USER_HZ, 100 per second).
fn process_seconds(dir: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// CPU time in seconds of one thread: `schedstat`'s nanoseconds on the CPU when the kernel
/// keeps them, else its ticks.
fn thread_seconds(dir: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("{dir}/schedstat")).ok();
    match text
        .as_deref()
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
    {
        Some(ns) => Some(ns / 1e9),
        None => process_seconds(dir),
    }
}

fn name_of(dir: &str) -> Option<String> {
    let comm = std::fs::read_to_string(format!("{dir}/comm")).ok()?;
    Some(comm.trim_end().to_string())
}

/// What a thread of hlgate (or of the bridge) does, by its name (the kernel keeps 15 bytes).
pub(crate) fn thread_class(name: &str) -> &'static str {
    if name.starts_with("actix-server") || name.starts_with("actix-rt") {
        "http"
    } else if name.starts_with("hlgate-store-ch") {
        // The checkpoint thread: sled's flushes of the dedup keys.
        "sled"
    } else if name.starts_with("hlgate-store") {
        "writer"
    } else if name.starts_with("sled-io") || name == "log flusher" {
        "sled"
    } else if name.starts_with("lapin") {
        "lapin-io"
    } else if name.starts_with("tokio") || name == "hlgate" || name == "bridge" {
        // The relay, lapin's futures and the token module run on the tokio runtime.
        "tokio"
    } else if name.starts_with("jemalloc") {
        "jemalloc"
    } else {
        "other"
    }
}

/// One watched process name: its CPU and that of its threads, by class.
#[derive(Clone, Default)]
struct Watched {
    total: f64,
    /// Per thread (pid/tid) of the processes: class and CPU.
    threads: BTreeMap<(String, String), (&'static str, f64)>,
}

/// Where the machine's CPU went: this tool, the processes named in `--watch` (summed by name,
/// and by thread class), and how much stayed idle, from `/proc`.
#[derive(Clone, Default)]
pub(crate) struct CpuSample {
    own: f64,
    watched: BTreeMap<String, Watched>,
    /// Idle and total jiffies of the whole machine (`/proc/stat`, first line).
    idle: f64,
    total: f64,
}

/// What was used between two samples.
pub(crate) struct Usage {
    pub(crate) secs: f64,
    pub(crate) own: f64,
    /// Per watched name: CPU seconds, and CPU seconds by thread class.
    pub(crate) watched: BTreeMap<String, (f64, BTreeMap<&'static str, f64>)>,
    pub(crate) idle_share: Option<f64>,
}

impl CpuSample {
    pub(crate) fn take(watch: &[String]) -> Option<CpuSample> {
        let own = process_seconds("/proc/self")?;
        let mut watched: BTreeMap<String, Watched> = watch
            .iter()
            .map(|w| (w.clone(), Watched::default()))
            .collect();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let pid = entry.file_name().to_string_lossy().into_owned();
                if !pid.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                let dir = format!("/proc/{pid}");
                let Some(w) = name_of(&dir).and_then(|n| watched.get_mut(&n)) else {
                    continue;
                };
                w.total += process_seconds(&dir).unwrap_or(0.0);
                for task in std::fs::read_dir(format!("{dir}/task"))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let tid = task.file_name().to_string_lossy().into_owned();
                    let tdir = format!("{dir}/task/{tid}");
                    if let (Some(name), Some(secs)) = (name_of(&tdir), thread_seconds(&tdir)) {
                        w.threads
                            .insert((pid.clone(), tid), (thread_class(&name), secs));
                    }
                }
            }
        }
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let jiffies: Vec<f64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let idle = jiffies.get(3)? + jiffies.get(4).unwrap_or(&0.0);
        Some(CpuSample {
            own,
            watched,
            idle,
            total: jiffies.iter().sum(),
        })
    }

    /// What each used between `self` and `later`, `secs` apart. A thread that started in
    /// between counts from zero; what threads that ended in between used shows as `ended`.
    pub(crate) fn usage(&self, later: &CpuSample, secs: f64) -> Usage {
        let mut watched = BTreeMap::new();
        for (name, before) in &self.watched {
            let Some(after) = later.watched.get(name) else {
                continue;
            };
            let total = (after.total - before.total).max(0.0);
            let mut classes: BTreeMap<&'static str, f64> = BTreeMap::new();
            for (id, (class, secs)) in &after.threads {
                let was = before.threads.get(id).map_or(0.0, |(_, s)| *s);
                *classes.entry(class).or_default() += (secs - was).max(0.0);
            }
            // Ticks against nanoseconds: what is left beyond a tick's rounding ended meanwhile.
            let seen: f64 = classes.values().sum();
            if total - seen > 0.02 {
                classes.insert("ended", total - seen);
            }
            watched.insert(name.clone(), (total, classes));
        }
        let jiffies = later.total - self.total;
        Usage {
            secs,
            own: (later.own - self.own).max(0.0),
            watched,
            idle_share: (jiffies > 0.0).then(|| (later.idle - self.idle) / jiffies),
        }
    }
}

impl Usage {
    fn pct(&self, cpu: f64) -> String {
        format!("{:.0}%", cpu / self.secs * 100.0)
    }

    /// The tool's own share of one core.
    pub(crate) fn own(&self) -> String {
        self.pct(self.own)
    }

    /// Every watched process as a share of one core, then the idle share of the machine.
    pub(crate) fn line(&self) -> String {
        let mut parts = vec![format!("load {}", self.own())];
        for (name, (total, _)) in &self.watched {
            parts.push(format!("{name} {}", self.pct(*total)));
        }
        let idle = self
            .idle_share
            .map_or("n/a".into(), |s| format!("{:.0}%", s * 100.0));
        format!("{}; machine idle {idle}", parts.join(", "))
    }

    /// The CPU of `name` per event, in µs, in all and by thread class.
    pub(crate) fn per_event(&self, name: &str, events: u64) -> Option<(f64, String)> {
        let (total, classes) = self.watched.get(name)?;
        if events == 0 || *total == 0.0 {
            return None;
        }
        let us = |cpu: f64| cpu * 1e6 / events as f64;
        let split: Vec<String> = classes
            .iter()
            .filter(|(_, cpu)| us(**cpu) >= 0.05)
            .map(|(class, cpu)| format!("{class}={:.1}", us(*cpu)))
            .collect();
        Some((us(*total), split.join(",")))
    }
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into())
}
