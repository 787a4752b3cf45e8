//! The client's cache under `--cache-path`: ARG and ENV values, and the steps
//! that succeeded on this node (by cache key) with when. It survives restarts.
//!
//! Storage is one journal of length-prefixed bincode records. The loop never
//! writes it: every write (a batch of records, or a rewrite) is work for the
//! I/O thread (`next_io`), one at a time and in order, so a step's `Done`
//! and a later `Forget` of it can never swap, and a slow disk delays no
//! heartbeat. An ARG or ENV value is synced before its job reports success,
//! and a value that cannot be made durable (full or failing disk) fails its
//! job and is not kept. A step's success or failure is a write without
//! fsync: a crash of the machine can lose it, which only means running a
//! step again; a write that fails is retried with the next change. At start
//! (on the caller's thread, before the loop runs), and when a sweep drops
//! expired entries or the journal is mostly dead records, it is rewritten
//! with only the live records (temporary file, fsync, rename), so expired
//! entries really leave the disk. A torn or corrupt tail is dropped at load
//! with a warning.

use crate::support::hash::Map as HashMap;
use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::journal::{Journal, JournalIo, JournalIoDone, Rewrite, Span};

const JOURNAL: &str = "journal.bin";

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Record {
    Arg {
        key: String,
        value: String,
    },
    Env {
        key: String,
        value: String,
    },
    Done {
        key: String,
        at_ms: u64,
    },
    Forget {
        key: String,
    },
    /// What a QUERY KEY collected: the value of ARG KEY on each node.
    Query {
        key: String,
        values: Vec<(String, String)>,
    },
    /// Everything before is forgotten (`manage --clear-cache`).
    Clear,
    /// One part of it is forgotten (CACHEEVICT).
    Evict(crate::dsl::CachePart),
    /// Several ARGs at once (`--stdout-arg` with `--stderr-arg`, CACHEFILE).
    Args(Vec<(String, String)>),
}

/// Layout 2 added `Query` records, layout 3 `Clear`, layout 4 `Evict` and
/// `Args`;
/// those before them encode as they did.
impl crate::journal::Layout for Record {
    const VERSION: u32 = 4;
    fn upgrade(_: u32, body: &[u8]) -> Option<Self> {
        crate::journal::decode(body)
    }
}

/// The node's persistent cache.
pub struct Cache {
    journal: Journal,
    ttl_ms: u64,
    args: BTreeMap<String, String>,
    env: BTreeMap<String, String>,
    /// QUERY results: key, then node, then value.
    queries: BTreeMap<String, BTreeMap<String, String>>,
    done: HashMap<String, u64>,
    /// Grows with every change: the client reports the cache when it moved.
    generation: u64,
    /// Write errors, logged at most once a minute.
    errors: crate::support::ratelog::Every,
    /// What the I/O thread is doing for the cache.
    out: Out,
    /// A value waiting for its turn to be written and synced.
    waiting: Option<Record>,
    /// The last write of step records failed: wait for a change (or a
    /// sweep) before trying again, rather than spinning on a full disk.
    stalled: bool,
    /// Rewrite the journal once nothing else is out.
    compact_wanted: bool,
}

/// What the I/O thread is doing for the cache: at most one thing.
enum Out {
    Idle,
    /// Writing a batch; its last record is the value `staged`, if any.
    Batch {
        staged: Option<(Record, Span)>,
    },
    Rewrite,
}

impl Cache {
    /// Open (creating) the cache in `dir`; entries older than `ttl` are gone.
    /// The start-up rewrite runs here, on the caller's thread.
    pub fn open(dir: &Path, ttl: Duration, now_ms: u64) -> io::Result<Cache> {
        let (journal, records) = Journal::open::<Record>(dir, JOURNAL)?;
        let mut cache = Cache {
            journal,
            ttl_ms: ttl.as_millis() as u64,
            args: BTreeMap::new(),
            env: BTreeMap::new(),
            queries: BTreeMap::new(),
            done: HashMap::default(),
            generation: 0,
            errors: crate::support::ratelog::Every::minute(),
            out: Out::Idle,
            waiting: None,
            stalled: false,
            compact_wanted: false,
        };
        for rec in records {
            cache.apply(rec);
        }
        cache.expire(now_ms);
        // Optional: without room (a full disk), go on from the file as it is.
        if let Err((rw, e)) = cache.snapshot().run() {
            cache.journal.abandon(&rw);
            log::error!("{}: cannot rewrite the journal: {e}", cache.path());
        }
        Ok(cache)
    }

    fn apply(&mut self, rec: Record) {
        self.generation += 1;
        match rec {
            Record::Arg { key, value } => {
                self.args.insert(key, value);
            }
            Record::Env { key, value } => {
                self.env.insert(key, value);
            }
            Record::Done { key, at_ms } => {
                self.done.insert(key, at_ms);
            }
            Record::Forget { key } => {
                self.done.remove(&key);
            }
            Record::Query { key, values } => {
                self.queries.insert(key, values.into_iter().collect());
            }
            Record::Clear => {
                self.args.clear();
                self.env.clear();
                self.queries.clear();
                self.done.clear();
            }
            Record::Args(pairs) => {
                self.args.extend(pairs);
            }
            Record::Evict(part) => {
                use crate::dsl::CachePart;
                match part {
                    CachePart::Args => self.args.clear(),
                    CachePart::Envs => self.env.clear(),
                    CachePart::Query => self.queries.clear(),
                    CachePart::Jobs => self.done.clear(),
                }
            }
        }
    }

    pub fn queries(&self) -> &BTreeMap<String, BTreeMap<String, String>> {
        &self.queries
    }

    /// Changes so far: equal numbers, equal cache.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// What the cache holds, for the server's `--node-info`.
    pub fn summary(&self) -> crate::wire::CacheSummary {
        crate::wire::CacheSummary {
            args: self
                .args
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect(),
            args_more: 0,
            env: self.env.keys().cloned().collect(),
            queries: self.queries.keys().cloned().collect(),
            steps: self.done.len() as u32,
        }
        .bounded()
    }

    pub fn args(&self) -> &BTreeMap<String, String> {
        &self.args
    }

    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// Keep an ARG value, durably, on this thread: `Err` (nothing kept)
    /// when it cannot be synced. For tests, not the loop.
    #[cfg(test)]
    pub fn set_arg(&mut self, key: &str, value: &str) -> Result<(), String> {
        self.stage_arg(key, value);
        self.settle_io_now().unwrap_or(Ok(()))
    }

    /// Keep an ENV value, durably, like `set_arg`.
    #[cfg(test)]
    pub fn set_env(&mut self, key: &str, value: &str) -> Result<(), String> {
        self.stage_env(key, value);
        self.settle_io_now().unwrap_or(Ok(()))
    }

    /// Run every write due, on this thread; the staged value's result.
    #[cfg(test)]
    pub fn settle_io_now(&mut self) -> Option<Result<(), String>> {
        let mut staged = None;
        while let Some(io) = self.next_io() {
            if let Some(r) = self.io_done(io.run(), Instant::now()) {
                staged = Some(r);
            }
        }
        staged
    }

    /// An ARG value on its way to disk: it is written and synced when its
    /// turn comes (`next_io`), and `io_done` says whether it was kept.
    /// Until then it is not. One value at a time (the running job's).
    pub fn stage_arg(&mut self, key: &str, value: &str) {
        self.stage(Record::Arg {
            key: key.to_owned(),
            value: value.to_owned(),
        });
    }

    /// Several ARG values on their way to disk together, like `stage_arg`.
    pub fn stage_args(&mut self, pairs: Vec<(String, String)>) {
        self.stage(Record::Args(pairs));
    }

    /// An ENV value on its way to disk, like `stage_arg`.
    pub fn stage_env(&mut self, key: &str, value: &str) {
        self.stage(Record::Env {
            key: key.to_owned(),
            value: value.to_owned(),
        });
    }

    /// Forgetting everything, on its way to disk, like `stage_arg`: once
    /// synced, the cache is empty (a rewrite later drops the old records).
    pub fn stage_clear(&mut self) {
        self.compact_wanted = true;
        self.stage(Record::Clear);
    }

    /// Forgetting one part, on its way to disk, like `stage_clear`.
    pub fn stage_evict(&mut self, part: crate::dsl::CachePart) {
        self.compact_wanted = true;
        self.stage(Record::Evict(part));
    }

    /// How many entries a part holds.
    pub fn count(&self, part: crate::dsl::CachePart) -> usize {
        use crate::dsl::CachePart;
        match part {
            CachePart::Args => self.args.len(),
            CachePart::Envs => self.env.len(),
            CachePart::Query => self.queries.len(),
            CachePart::Jobs => self.done.len(),
        }
    }

    /// A QUERY's map on its way to disk, like `stage_arg`.
    pub fn stage_query(&mut self, key: &str, values: Vec<(String, String)>) {
        self.stage(Record::Query {
            key: key.to_owned(),
            values,
        });
    }

    fn stage(&mut self, rec: Record) {
        debug_assert!(
            self.waiting.is_none() && !self.is_staged(),
            "one value at a time"
        );
        self.waiting = Some(rec);
    }

    fn is_staged(&self) -> bool {
        matches!(self.out, Out::Batch { staged: Some(_) })
    }

    /// The next write for the I/O thread, if one is due and nothing else
    /// is out: a rewrite when wanted (never with a value waiting, which
    /// it would not cover), else the waiting value (synced, with the step
    /// records before it), else the step records appended (not synced).
    pub fn next_io(&mut self) -> Option<JournalIo> {
        if !matches!(self.out, Out::Idle) {
            return None;
        }
        if self.compact_wanted && self.waiting.is_none() {
            self.compact_wanted = false;
            self.stalled = false;
            self.out = Out::Rewrite;
            return Some(JournalIo::Rewrite(self.snapshot()));
        }
        if let Some(rec) = self.waiting.take() {
            let span = self.journal.append(&rec);
            // Not empty: the record was just appended.
            let batch = self.journal.take(true)?;
            self.out = Out::Batch {
                staged: Some((rec, span)),
            };
            return Some(JournalIo::Write(batch));
        }
        if self.stalled {
            return None;
        }
        let batch = self.journal.take(false)?;
        self.out = Out::Batch { staged: None };
        Some(JournalIo::Write(batch))
    }

    /// Is a write out on the I/O thread?
    pub fn is_busy(&self) -> bool {
        !matches!(self.out, Out::Idle)
    }

    /// The I/O thread did the last `next_io`. Returns the staged value's
    /// fate if this write carried it: `Err` says why it was not kept.
    pub fn io_done(&mut self, done: JournalIoDone, now: Instant) -> Option<Result<(), String>> {
        let out = std::mem::replace(&mut self.out, Out::Idle);
        match (out, done) {
            (Out::Batch { staged }, JournalIoDone::Written(Ok(()))) => {
                let (rec, _) = staged?;
                self.apply(rec);
                Some(Ok(()))
            }
            (Out::Batch { staged }, JournalIoDone::Written(Err((batch, e)))) => {
                // Earlier records of the batch go again with the next one.
                self.journal.put_back(batch);
                match staged {
                    Some((_, span)) => {
                        if !self.journal.retract(span) {
                            self.journal.drop_pending();
                        }
                        Some(Err(format!(
                            "cannot save it in the cache {}: {e}",
                            self.path()
                        )))
                    }
                    None => {
                        self.stalled = true;
                        if self.errors.first(now) {
                            log::error!(
                                "{}: cannot write: {e}; retried with the next change (said at most once a minute)",
                                self.path()
                            );
                        }
                        None
                    }
                }
            }
            (Out::Rewrite, JournalIoDone::Rewritten(result)) => {
                if let Err((rw, e)) = result {
                    // The file is as it was: go on appending to it.
                    self.journal.abandon(&rw);
                    if self.errors.first(now) {
                        log::error!(
                            "{}: cannot rewrite the journal: {e}; kept it as it was (said at most once a minute)",
                            self.path()
                        );
                    }
                }
                None
            }
            (out, _) => {
                // A result for work we did not give: keep what is out.
                log::error!("cache: an I/O result that does not match the work out; ignored");
                self.out = out;
                None
            }
        }
    }

    fn path(&self) -> String {
        self.journal.path().display().to_string()
    }

    /// Did the step with this key succeed here within the time-to-live?
    pub fn is_done(&self, key: &str, now_ms: u64) -> bool {
        self.done
            .get(key)
            .is_some_and(|at| now_ms.saturating_sub(*at) < self.ttl_ms)
    }

    fn record_done(&mut self, key: &str, now_ms: u64) {
        self.append(Record::Done {
            key: key.to_owned(),
            at_ms: now_ms,
        });
    }

    /// A step ended: remember a success; after a failure, a success cached
    /// earlier no longer holds.
    pub fn settle(&mut self, key: &str, succeeded: bool, now_ms: u64) {
        if succeeded {
            self.record_done(key, now_ms);
        } else {
            self.forget(key);
        }
    }

    /// The step failed: a success cached earlier no longer holds.
    fn forget(&mut self, key: &str) {
        if self.done.contains_key(key) {
            self.append(Record::Forget {
                key: key.to_owned(),
            });
        }
    }

    /// Drop expired successes, and ask for a rewrite when that or dead
    /// records make it worth it. Returns how many entries were dropped.
    pub fn sweep(&mut self, now_ms: u64) -> usize {
        let dropped = self.expire(now_ms);
        if dropped > 0 || self.bloated() {
            self.compact_wanted = true;
        }
        // A stalled write is tried again now and then, not only on change.
        self.stalled = false;
        dropped
    }

    fn expire(&mut self, now_ms: u64) -> usize {
        let before = self.done.len();
        let ttl = self.ttl_ms;
        self.done.retain(|_, at| now_ms.saturating_sub(*at) < ttl);
        let dropped = before - self.done.len();
        if dropped > 0 {
            self.generation += 1;
        }
        dropped
    }

    fn bloated(&self) -> bool {
        self.journal.records() > 2 * (self.args.len() + self.env.len() + self.done.len()) + 1024
    }

    /// A step record: in memory at once, on disk with the next write.
    fn append(&mut self, rec: Record) {
        self.journal.append(&rec);
        self.apply(rec);
        self.stalled = false;
        if self.bloated() {
            // Mostly dead records (the same steps re-run): rewrite.
            self.compact_wanted = true;
        }
    }

    /// The journal with only live records. It covers every record applied
    /// (those appended and not yet written too), never a staged value.
    fn snapshot(&mut self) -> Rewrite {
        let args = self.args.iter().map(|(k, v)| Record::Arg {
            key: k.clone(),
            value: v.clone(),
        });
        let env = self.env.iter().map(|(k, v)| Record::Env {
            key: k.clone(),
            value: v.clone(),
        });
        let done = self.done.iter().map(|(k, at)| Record::Done {
            key: k.clone(),
            at_ms: *at,
        });
        let queries = self.queries.iter().map(|(k, m)| Record::Query {
            key: k.clone(),
            values: m.iter().map(|(n, v)| (n.clone(), v.clone())).collect(),
        });
        let live: Vec<Record> = args.chain(env).chain(queries).chain(done).collect();
        self.journal.snapshot(live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, OpenOptions};
    use std::io::Write;
    use std::path::PathBuf;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("director-cache-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn survives_reopen() {
        let d = dir("reopen");
        let mut c = Cache::open(&d, DAY, 1000).unwrap();
        c.set_arg("user", "ops").unwrap();
        c.set_env("LANG", "C").unwrap();
        c.record_done("k1", 1000);
        c.record_done("k2", 1000);
        c.forget("k2");
        c.settle_io_now();
        drop(c);
        let c = Cache::open(&d, DAY, 2000).unwrap();
        assert_eq!(c.args().get("user").map(String::as_str), Some("ops"));
        assert_eq!(c.env().get("LANG").map(String::as_str), Some("C"));
        assert!(c.is_done("k1", 2000));
        assert!(!c.is_done("k2", 2000));
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn an_eviction_and_several_args_at_once_survive_reopen_and_compaction() {
        let d = dir("evict");
        let mut c = Cache::open(&d, DAY, 1000).unwrap();
        c.set_arg("user", "ops").unwrap();
        c.set_env("LANG", "C").unwrap();
        c.record_done("k1", 1000);
        c.stage_args(vec![("a".into(), "1".into()), ("b".into(), "[2]".into())]);
        assert_eq!(c.settle_io_now(), Some(Ok(())));
        c.stage_evict(crate::dsl::CachePart::Args);
        assert_eq!(c.settle_io_now(), Some(Ok(())));
        assert!(c.args().is_empty());
        drop(c);
        // Read back from the journal: the ARGs stay gone, the rest stays.
        let mut c = Cache::open(&d, DAY, 2000).unwrap();
        assert!(c.args().is_empty(), "{:?}", c.args());
        assert_eq!(c.env().get("LANG").map(String::as_str), Some("C"));
        assert!(c.is_done("k1", 2000));
        c.stage_args(vec![("a".into(), "again".into())]);
        assert_eq!(c.settle_io_now(), Some(Ok(())));
        drop(c);
        let c = Cache::open(&d, DAY, 3000).unwrap();
        assert_eq!(c.args().get("a").map(String::as_str), Some("again"));
        assert_eq!(c.count(crate::dsl::CachePart::Jobs), 1);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn expired_entries_leave_the_disk() {
        let d = dir("ttl");
        let ttl = Duration::from_secs(10);
        let mut c = Cache::open(&d, ttl, 0).unwrap();
        c.record_done("old-key", 0);
        c.record_done("new-key", 5_000);
        assert!(!c.is_done("old-key", 10_000));
        assert!(c.is_done("new-key", 10_000));
        assert_eq!(c.sweep(10_000), 1);
        c.settle_io_now();
        let bytes = fs::read(d.join(JOURNAL)).unwrap();
        assert!(!bytes.windows(7).any(|w| w == b"old-key"));
        assert!(bytes.windows(7).any(|w| w == b"new-key"));
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn re_running_the_same_step_does_not_grow_the_journal() {
        let d = dir("grow");
        let mut c = Cache::open(&d, DAY, 0).unwrap();
        for i in 0..5000 {
            c.record_done("same-step", i);
            c.settle_io_now();
        }
        let size = fs::metadata(d.join(JOURNAL)).unwrap().len();
        assert!(size < 100_000, "journal is {size} bytes");
        drop(c);
        assert!(Cache::open(&d, DAY, 5000)
            .unwrap()
            .is_done("same-step", 5000));
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn step_records_keep_their_order_through_a_failed_write() {
        let d = dir("order");
        let mut c = Cache::open(&d, DAY, 0).unwrap();
        c.record_done("k", 1);
        let Some(JournalIo::Write(batch)) = c.next_io() else {
            panic!("a write for the I/O thread");
        };
        // While it is out, the step fails again: its Forget waits.
        c.forget("k");
        assert!(c.next_io().is_none());
        let err = io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(c
            .io_done(JournalIoDone::Written(Err((batch, err))), Instant::now())
            .is_none());
        // No retry in a loop on a full disk: after a change or a sweep.
        assert!(c.next_io().is_none());
        c.sweep(2);
        c.settle_io_now();
        drop(c);
        // Forget after Done: had they swapped, the step would be cached.
        let c = Cache::open(&d, DAY, 3).unwrap();
        assert!(!c.is_done("k", 3));
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_rewrite_waits_for_a_staged_value_and_keeps_it() {
        let d = dir("rewrite");
        let mut c = Cache::open(&d, Duration::from_secs(10), 0).unwrap();
        c.record_done("old", 0);
        c.settle_io_now();
        c.stage_arg("a", "1");
        // Expired: a rewrite is wanted, but the value goes first.
        assert_eq!(c.sweep(20_000), 1);
        let Some(JournalIo::Write(batch)) = c.next_io() else {
            panic!("the value's sync first");
        };
        assert_eq!(
            c.io_done(JournalIoDone::Written(batch.run()), Instant::now()),
            Some(Ok(()))
        );
        let Some(JournalIo::Rewrite(rw)) = c.next_io() else {
            panic!("then the rewrite");
        };
        assert!(c
            .io_done(JournalIoDone::Rewritten(rw.run()), Instant::now())
            .is_none());
        drop(c);
        let bytes = fs::read(d.join(JOURNAL)).unwrap();
        assert!(!bytes.windows(3).any(|w| w == b"old"));
        let c = Cache::open(&d, Duration::from_secs(10), 20_000).unwrap();
        assert_eq!(c.args().get("a").map(String::as_str), Some("1"));
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_torn_tail_is_dropped() {
        let d = dir("torn");
        let mut c = Cache::open(&d, DAY, 0).unwrap();
        c.set_arg("a", "1").unwrap();
        drop(c);
        let mut f = OpenOptions::new()
            .append(true)
            .open(d.join(JOURNAL))
            .unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let c = Cache::open(&d, DAY, 0).unwrap();
        assert_eq!(c.args().len(), 1);
        fs::remove_dir_all(d).unwrap();
    }
}
