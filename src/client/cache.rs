//! The client's cache under `--cache-path`: ARG and ENV values, and the steps
//! that succeeded on this node (by cache key) with when. It survives restarts.
//!
//! Storage is one journal of length-prefixed bincode records. An ARG or ENV
//! value is synced before its job reports success, and a value that cannot
//! be made durable (full or failing disk) fails its job and is not kept. A
//! step's success or failure is one small write without fsync: a crash of
//! the machine can lose it, which only means running a step again; a write
//! that fails is retried with the next one. At start, and when a
//! sweep drops expired entries, the journal is rewritten with only the live
//! records (temporary file, fsync, rename), so expired entries really leave
//! the disk. A torn or corrupt tail is dropped at load with a warning.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::journal::{Batch, Journal, Span};

const JOURNAL: &str = "journal.bin";

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Record {
    Arg { key: String, value: String },
    Env { key: String, value: String },
    Done { key: String, at_ms: u64 },
    Forget { key: String },
}

/// The node's persistent cache.
pub struct Cache {
    journal: Journal,
    ttl_ms: u64,
    args: BTreeMap<String, String>,
    env: BTreeMap<String, String>,
    done: HashMap<String, u64>,
    /// Write errors, logged at most once a minute.
    errors: crate::ratelog::Every,
    /// A staged value's batch is out.
    syncing: bool,
}

/// An ARG or ENV value whose record is being synced.
pub struct Staged {
    rec: Record,
    span: Span,
}

impl Cache {
    /// Open (creating) the cache in `dir`; entries older than `ttl` are gone.
    pub fn open(dir: &Path, ttl: Duration, now_ms: u64) -> io::Result<Cache> {
        let (journal, records) = Journal::open::<Record>(dir, JOURNAL)?;
        let mut cache = Cache {
            journal,
            ttl_ms: ttl.as_millis() as u64,
            args: BTreeMap::new(),
            env: BTreeMap::new(),
            done: HashMap::new(),
            errors: crate::ratelog::Every::minute(),
            syncing: false,
        };
        for rec in records {
            cache.apply(rec);
        }
        cache.sweep(now_ms);
        // Optional: without room (a full disk), go on from the file as it is.
        cache.compact_or_log();
        Ok(cache)
    }

    fn apply(&mut self, rec: Record) {
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
        }
    }

    /// ARG values (and `--stdout-arg` results): the template variables.
    pub fn args(&self) -> &BTreeMap<String, String> {
        &self.args
    }

    /// ENV values: the environment of RUN commands.
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// Keep an ARG value, durably: `Err` (nothing kept) when it cannot be
    /// synced. On this thread: for tests and tools, not the loop.
    #[cfg(test)]
    pub fn set_arg(&mut self, key: &str, value: &str) -> Result<(), String> {
        let (staged, batch) = self.stage_arg(key, value);
        let result = batch.run();
        self.staged(staged, result)
    }

    /// Keep an ENV value, durably, like `set_arg`.
    #[cfg(test)]
    pub fn set_env(&mut self, key: &str, value: &str) -> Result<(), String> {
        let (staged, batch) = self.stage_env(key, value);
        let result = batch.run();
        self.staged(staged, result)
    }

    /// An ARG value on its way to disk: run the batch (on any thread),
    /// then hand its result to `staged`. Until then the value is not kept.
    pub fn stage_arg(&mut self, key: &str, value: &str) -> (Staged, Batch) {
        self.stage(Record::Arg {
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }

    /// An ENV value on its way to disk, like `stage_arg`.
    pub fn stage_env(&mut self, key: &str, value: &str) -> (Staged, Batch) {
        self.stage(Record::Env {
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }

    fn stage(&mut self, rec: Record) -> (Staged, Batch) {
        let span = self.journal.append(&rec);
        self.syncing = true;
        // Not empty: the record was just appended.
        let batch = self.journal.take(true).expect("a record is pending");
        (Staged { rec, span }, batch)
    }

    /// The staged value's batch ran: keep the value if it is on disk;
    /// otherwise take it back and say why.
    pub fn staged(
        &mut self,
        staged: Staged,
        result: Result<(), (Batch, io::Error)>,
    ) -> Result<(), String> {
        self.syncing = false;
        match result {
            Ok(()) => {
                self.apply(staged.rec);
                Ok(())
            }
            Err((batch, e)) => {
                // Earlier writes in the batch go again with the next one.
                self.journal.put_back(batch);
                if !self.journal.retract(staged.span) {
                    self.journal.drop_pending();
                }
                Err(format!("cannot save it in the cache {}: {e}", self.path()))
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

    /// Drop expired successes; rewrite the journal when that or dead
    /// records make it worth it. Returns how many entries were dropped.
    pub fn sweep(&mut self, now_ms: u64) -> usize {
        if self.syncing {
            return 0; // next time
        }
        let before = self.done.len();
        let ttl = self.ttl_ms;
        self.done.retain(|_, at| now_ms.saturating_sub(*at) < ttl);
        let dropped = before - self.done.len();
        if dropped > 0 || self.bloated() {
            self.compact_or_log();
        }
        dropped
    }

    fn bloated(&self) -> bool {
        self.journal.records() > 2 * (self.args.len() + self.env.len() + self.done.len()) + 1024
    }

    fn append(&mut self, rec: Record) {
        // No fsync: losing the last ones to a crash only means running a
        // step again. A failed write stays pending and goes with the next.
        self.journal.append(&rec);
        self.apply(rec);
        if let Err(e) = self.journal.flush_now() {
            if self.errors.first(Instant::now()) {
                log::error!(
                    "{}: cannot write: {e}; retried with the next change (said at most once a minute)",
                    self.path()
                );
            }
        }
        if self.bloated() && !self.syncing {
            // Mostly dead records (the same steps re-run): rewrite.
            self.compact_or_log();
        }
    }

    fn compact_or_log(&mut self) {
        if let Err(e) = self.compact() {
            log::error!(
                "{}: cannot rewrite the journal: {e}",
                self.journal.path().display()
            );
        }
    }

    /// Rewrite the journal with only live records.
    fn compact(&mut self) -> io::Result<()> {
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
        let live: Vec<Record> = args.chain(env).chain(done).collect();
        self.journal.snapshot(live).run().map_err(|(rw, e)| {
            // The file is as it was: go on appending to it.
            self.journal.abandon(&rw);
            e
        })
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
        drop(c);
        let c = Cache::open(&d, DAY, 2000).unwrap();
        assert_eq!(c.args().get("user").map(String::as_str), Some("ops"));
        assert_eq!(c.env().get("LANG").map(String::as_str), Some("C"));
        assert!(c.is_done("k1", 2000));
        assert!(!c.is_done("k2", 2000));
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
