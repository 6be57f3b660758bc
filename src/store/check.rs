//! The offline checks of a data dir: `hlgate store check` ([`check`]) reads every bucket's
//! log segment (or, for a bucket written before the event log, its database) in full and
//! reports what is lost; `hlgate store accept-loss` ([`accept_loss`])
//! records it in `meta`, so that starts no longer report it. And the one check a start makes
//! before it opens anything ([`refuse_without_main_db`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::entry::now_ms;

use super::bucket::{config, marked_logged};
use super::damage::{all_lost, Held, Lost, SetAside};
use super::error::StoreError;
use super::layout::{
    accepted, meta_u64, parse_bucket_name, seq_of, span, ACCEPTED, APPLIED, DEDUP, EVENT, EVENTS,
    MAIN_DB, READY, SET_ASIDE, STOPPED_AT, WATERMARK,
};
use super::log::{inspect, Applied, SEGMENT_FILE};
use super::summary::Summary;
use super::tokens::OfflineTrees;

/// Refuses a store whose event buckets lost their main database: without the watermark
/// nothing tells what was published, and the token vault is gone with it.
pub(super) fn refuse_without_main_db(dir: &Path) -> Result<(), StoreError> {
    if dir.join(MAIN_DB).exists() {
        return Ok(());
    }
    let Some(oldest) = bucket_names(&dir.join(EVENTS)).into_iter().min() else {
        return Ok(());
    };
    Err(StoreError::Damaged(format!(
        "the main database ({}) is missing while event buckets from seq {oldest} on exist: the \
         watermark (what was published) and the token vault are lost; run `hlgate store check`, \
         then `hlgate store accept-loss` to start again without them",
        dir.join(MAIN_DB).display()
    )))
}

/// The first seqs of the bucket directories (set aside or not) under `events_dir`.
fn bucket_names(events_dir: &Path) -> Vec<u64> {
    let Ok(items) = std::fs::read_dir(events_dir) else {
        return Vec::new();
    };
    items
        .filter_map(|i| i.ok()?.file_name().into_string().ok())
        .filter_map(|n| parse_bucket_name(&n).map(|(seq, _)| seq))
        .collect()
}

/// What `hlgate store check` found.
#[derive(Debug, Default)]
pub struct Report {
    pub dir: PathBuf,
    /// `sled/` is missing while event buckets exist.
    pub main_db_missing: bool,
    pub watermark: u64,
    /// Buckets in use, and the lowest and highest seq they hold.
    pub buckets: usize,
    pub seqs: Option<(u64, u64)>,
    /// Lost and not accepted.
    pub lost: Vec<Lost>,
    pub set_aside: Vec<SetAside>,
    pub accepted: Vec<(u64, u64)>,
    /// What the token module makes of the vault with the configured key: a line for the
    /// report, or why a start would refuse it. `None` when not asked, or without a main
    /// database.
    pub vault: Option<Result<String, String>>,
}

impl Report {
    pub fn is_damaged(&self) -> bool {
        self.main_db_missing || !self.lost.is_empty()
    }

    /// A start would refuse the token key: missing over stored tokens, or not theirs.
    pub fn key_refused(&self) -> bool {
        matches!(self.vault, Some(Err(_)))
    }

    fn seqs_text(&self) -> String {
        self.seqs
            .map_or("no events".into(), |(a, b)| format!("seqs {a}..{b}"))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "store: {}", self.dir.display())?;
        if self.main_db_missing {
            writeln!(
                f,
                "MISSING: sled/ (the main database): the watermark and the token vault are lost; \
                 the buckets hold {}, not known whether published",
                self.seqs_text()
            )?;
        } else {
            writeln!(
                f,
                "watermark: {} (every seq up to it is published)",
                self.watermark
            )?;
        }
        writeln!(f, "buckets: {} holding {}", self.buckets, self.seqs_text())?;
        for lost in &self.lost {
            let in_aside = self
                .set_aside
                .iter()
                .any(|a| a.first <= lost.first && lost.last <= a.last);
            let keys = if in_aside {
                "dedup keys: those of the bucket set aside below"
            } else {
                "dedup keys: unknown, no database holds them"
            };
            writeln!(f, "LOST: {lost}; {keys}")?;
        }
        for a in &self.set_aside {
            writeln!(
                f,
                "SET ASIDE: events/{} holds seqs {}..{} and {} dedup keys:",
                a.name,
                a.first,
                a.last,
                a.dedup_keys.len()
            )?;
            for k in &a.dedup_keys {
                writeln!(f, "  {k}")?;
            }
        }
        for (a, b) in &self.accepted {
            writeln!(f, "accepted earlier: seqs {a}..{b}")?;
        }
        match &self.vault {
            Some(Ok(line)) => writeln!(f, "token vault: {line}")?,
            Some(Err(why)) => writeln!(f, "TOKEN KEY: {why}")?,
            None => {}
        }
        if self.is_damaged() {
            writeln!(
                f,
                "damaged: `hlgate store accept-loss` gives this up and lets hlgate start ready"
            )?;
        }
        if self.key_refused() {
            writeln!(
                f,
                "refused: hlgate does not start with this token key (`accept-loss` does not \
                 change that)"
            )?;
        }
        if !self.is_damaged() && !self.key_refused() {
            writeln!(f, "clean")?;
        }
        Ok(())
    }
}

/// Opens the main database for an offline command; never creates it.
fn open_main(dir: &Path) -> Result<Option<sled::Db>, StoreError> {
    let path = dir.join(MAIN_DB);
    if !path.exists() {
        return Ok(None);
    }
    sled::Config::new()
        .path(&path)
        .open()
        .map(Some)
        .map_err(|e| {
            StoreError::Damaged(format!(
                "cannot open {} (is hlgate running? stop it first): {e}",
                path.display()
            ))
        })
}

/// `hlgate store check`: reads the whole data dir, every bucket's database in full, changing
/// nothing but what sled itself writes when it opens a database.
pub fn check(dir: &Path, retention: Duration) -> Result<Report, StoreError> {
    check_with(dir, open_main(dir)?.as_ref(), retention)
}

/// [`check`], and what `vault` (the token module) says of the vault in the main database.
pub fn check_with_vault(
    dir: &Path,
    retention: Duration,
    vault: impl FnOnce(&OfflineTrees<'_>) -> Result<String, String>,
) -> Result<Report, StoreError> {
    let main = open_main(dir)?;
    let mut report = check_with(dir, main.as_ref(), retention)?;
    report.vault = main.as_ref().map(|db| vault(&OfflineTrees(db)));
    Ok(report)
}

/// [`check`] with the main database already open (or missing).
fn check_with(
    dir: &Path,
    main: Option<&sled::Db>,
    retention: Duration,
) -> Result<Report, StoreError> {
    let (watermark, stopped_at, accepted) = match main {
        Some(db) => {
            let meta = db.open_tree("meta")?;
            let w = meta_u64(&meta, WATERMARK)?;
            // The checkpoint's frame was acknowledged: the log must reach it.
            let applied = meta.get(APPLIED)?.and_then(|v| Applied::from_bytes(&v));
            let through = meta_u64(&meta, STOPPED_AT)?.max(applied.map_or(0, |a| a.seq));
            (w, through, accepted(&meta)?)
        }
        None => (0, 0, Vec::new()),
    };
    let expired_before = now_ms().saturating_sub(retention.as_millis() as u64);
    let mut held = Vec::new();
    let mut set_aside = Vec::new();
    let mut through = stopped_at;
    let events_dir = dir.join(EVENTS);
    for (first_seq, path, in_use) in bucket_dirs(&events_dir)? {
        let contents = read_contents(&path, !in_use)?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !in_use {
            if let (Some(&(a, _)), Some(&(_, b))) = (contents.runs.first(), contents.runs.last()) {
                set_aside.push(SetAside {
                    name: name.to_string(),
                    first: a,
                    last: b,
                    dedup_keys: contents.dedup_keys,
                });
            }
            continue;
        }
        through = through.max(contents.claimed_last.unwrap_or(0));
        let expired = contents.newest_ms < expired_before;
        if contents.runs.is_empty() {
            held.push(Held {
                first: first_seq,
                last: first_seq - 1,
                expired,
            });
        }
        held.extend(contents.runs.iter().map(|&(first, last)| Held {
            first,
            last,
            expired,
        }));
    }
    let in_use: Vec<&Held> = held.iter().filter(|h| h.last >= h.first).collect();
    let seqs = in_use
        .first()
        .zip(in_use.last())
        .map(|(a, b)| (a.first, b.last));
    let buckets = bucket_dirs(&events_dir)?
        .iter()
        .filter(|(_, _, used)| *used)
        .count();
    let main_db_missing = main.is_none() && (buckets > 0 || !set_aside.is_empty());
    let lost = if main_db_missing {
        Vec::new()
    } else {
        all_lost(held, &set_aside, watermark, through, &accepted)
    };
    Ok(Report {
        dir: dir.to_path_buf(),
        main_db_missing,
        watermark,
        buckets,
        seqs,
        lost,
        set_aside,
        accepted,
        vault: None,
    })
}

/// What `hlgate store accept-loss` gave up.
#[derive(Debug, Default)]
pub struct Acceptance {
    /// The main database was missing and was started anew with this watermark.
    pub new_main_db: Option<u64>,
    /// Seqs given up, now recorded.
    pub given_up: Vec<Lost>,
}

impl fmt::Display for Acceptance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(w) = self.new_main_db {
            writeln!(
                f,
                "gave up the main database: a new one starts with the watermark at {w}, so every \
                 archived event above it is published again (message_id is stable for consumers \
                 that deduplicate); the token vault is empty: every tenant must install the app \
                 again (or have its private token set again)"
            )?;
        }
        for lost in &self.given_up {
            writeln!(f, "gave up {lost}")?;
        }
        if self.new_main_db.is_none() && self.given_up.is_empty() {
            writeln!(f, "nothing to accept: the store is clean")
        } else {
            writeln!(f, "recorded: the next start is ready")
        }
    }
}

/// `hlgate store accept-loss`: records what [`check`] finds lost, so that starts no longer
/// report it. A missing main database is made anew, its watermark just below the oldest
/// bucket: only confirmed events are ever swept, so everything still in a bucket goes out again.
pub fn accept_loss(dir: &Path, retention: Duration) -> Result<Acceptance, StoreError> {
    let mut acceptance = Acceptance::default();
    let main = match open_main(dir)? {
        Some(db) => db,
        None => {
            if !check_with(dir, None, retention)?.main_db_missing {
                return Ok(acceptance);
            }
            let db = sled::Config::new().path(dir.join(MAIN_DB)).open()?;
            let oldest = bucket_names(&dir.join(EVENTS)).into_iter().min();
            let watermark = oldest.unwrap_or(1) - 1;
            db.open_tree("meta")?
                .insert(WATERMARK, &watermark.to_be_bytes())?;
            acceptance.new_main_db = Some(watermark);
            db
        }
    };
    let report = check_with(dir, Some(&main), retention)?;
    if !report.lost.is_empty() {
        let meta = main.open_tree("meta")?;
        let mut bytes = meta.get(ACCEPTED)?.map(|v| v.to_vec()).unwrap_or_default();
        for lost in &report.lost {
            bytes.extend_from_slice(&lost.first.to_be_bytes());
            bytes.extend_from_slice(&lost.last.to_be_bytes());
        }
        meta.insert(ACCEPTED, bytes)?;
        acceptance.given_up = report.lost;
    }
    main.flush()?;
    Ok(acceptance)
}

/// The bucket directories under `events_dir`, by first seq: whether each is in use (has its
/// ready marker) or is set aside (renamed, or a start would set it aside).
fn bucket_dirs(events_dir: &Path) -> Result<Vec<(u64, PathBuf, bool)>, StoreError> {
    let mut dirs = Vec::new();
    let Ok(items) = std::fs::read_dir(events_dir) else {
        return Ok(dirs);
    };
    for item in items {
        let path = item
            .map_err(|e| StoreError::io("cannot list the buckets", e))?
            .path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let Some((first_seq, suffix)) = parse_bucket_name(name) else {
            continue;
        };
        match suffix {
            "" => dirs.push((first_seq, path.clone(), path.join(READY).exists())),
            SET_ASIDE => dirs.push((first_seq, path, false)),
            _ => {}
        }
    }
    dirs.sort_by_key(|(seq, _, _)| *seq);
    Ok(dirs)
}

/// What a bucket's database holds, read in full.
struct Contents {
    /// The runs of consecutive seqs it holds, in order.
    runs: Vec<(u64, u64)>,
    /// Acceptance time of its newest entry (0 when it holds none).
    newest_ms: u64,
    /// The last seq its summary claims, when it has one.
    claimed_last: Option<u64>,
    /// Its dedup keys, when asked for.
    dedup_keys: Vec<String>,
}

fn read_contents(dir: &Path, with_keys: bool) -> Result<Contents, StoreError> {
    let first_seq = dir
        .file_name()
        .and_then(|n| parse_bucket_name(n.to_str()?))
        .map_or(0, |(seq, _)| seq);
    let claimed_last = Summary::load(dir, first_seq).map(|s| s.last_seq);
    // A bucket set aside has no ready marker left: its segment tells.
    if marked_logged(dir) || dir.join(SEGMENT_FILE).exists() {
        let inspected = inspect(dir)?.unwrap_or_default();
        return Ok(Contents {
            runs: inspected.runs,
            newest_ms: inspected.newest_ms,
            claimed_last,
            dedup_keys: if with_keys {
                inspected.dedup_keys
            } else {
                Vec::new()
            },
        });
    }
    let db = config(dir).open()?;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut newest_ms = 0;
    for item in db.scan_prefix([EVENT]) {
        let (k, v) = item?;
        let seq = seq_of(&k);
        let (last, ms) = span(seq, &v).unwrap_or((seq, newest_ms));
        newest_ms = ms;
        match runs.last_mut() {
            Some(run) if run.1 + 1 == seq => run.1 = last,
            _ => runs.push((seq, last)),
        }
    }
    let mut dedup_keys = Vec::new();
    if with_keys {
        for k in db.scan_prefix([DEDUP]).keys() {
            dedup_keys.push(String::from_utf8_lossy(&k?[1..]).into_owned());
        }
    }
    Ok(Contents {
        runs,
        newest_ms,
        claimed_last,
        dedup_keys,
    })
}
