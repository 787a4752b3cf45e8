//! The jobs this node has taken, so that none is ever run twice: each job
//! id is recorded (`jobs.bin` under `--cache-path`) before the job starts,
//! with its outcome once it ends, until the server acknowledges that
//! outcome; then the id is kept among the last `CLOSED_CAP` acknowledged.
//! A job the server sends again (after a restart of either side) is
//! answered from this record, never run again: with the outcome it had,
//! or as lost when the client stopped while it ran.
//!
//! Sans-io like the cache: the loop appends records in memory and hands
//! the I/O thread one write at a time (`next_io`). A job is taken when it
//! arrives, and its record goes out at once, so it is written while the
//! job before it runs; the job starts only once its record is in the file
//! (`is_written`): a crash of the client (kill -9 included) cannot lose it.
//! Outcomes and acknowledgements wait for the next write, and every
//! `GROUP_COMMIT` what was written is synced with them in one `fdatasync`
//! (group commit): no job waits for a disk flush. A power loss within that
//! window can lose a job's record; the server's own record of sending it,
//! synced on the same rhythm, then still keeps it from being sent again.
//! Records go into space kept allocated ahead, so that a full disk stops
//! no job.
//!
//! At open (on the caller's thread, before the loop), jobs taken by an
//! earlier process and never ended are ended as lost, and the file is
//! rewritten with the live records only; later, once most records are
//! dead, it is rewritten again by the I/O thread, only when nothing is
//! pending (a rewrite replaces what is pending, and a failed one must not
//! drop a record a job waits for).

use crate::support::hash::{Map as HashMap, Set as HashSet};
use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::journal::{Journal, JournalIo, JournalIoDone, Rewrite};
use crate::wire::{Exit, Outcome};

const LEDGER: &str = "jobs.bin";

/// Acknowledged job ids remembered (16 bytes each, twice): a server that
/// sends one of them again is answered, not obeyed.
pub const CLOSED_CAP: usize = 10_000;

/// Rewrite once the file holds this many dead records more than twice
/// the live ones.
const SLACK: usize = 4096;

/// What the file keeps of each output of an outcome: enough to answer a
/// job sent again after a client restart, small enough that records stay
/// small (the full outputs stay in memory while the process lives).
pub const OUTPUT_KEPT: usize = 16 << 10;

/// How often what was written is synced (and outcomes and acks written).
pub const GROUP_COMMIT: Duration = Duration::from_millis(50);

/// Space kept allocated past the file's end, so that the ledger's small
/// records still land on a full disk (and jobs, say one that frees it,
/// can still run): thousands of records.
const RESERVE: u64 = 1 << 20;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Record {
    /// The job is this node's: it may start once this is on disk.
    Took { job: Uuid },
    /// How it ended here (or why it never will), until acknowledged.
    Ended { job: Uuid, outcome: Outcome },
    /// The server recorded the outcome.
    Acked { job: Uuid },
    /// The server recorded the outcome, which changed something here
    /// (for handlers: `onchanges`).
    AckedChanged { job: Uuid },
}

/// Layout 2 added `AckedChanged`, after the others: layout 1 records
/// encode as they did.
impl crate::journal::Layout for Record {
    const VERSION: u32 = 2;
    fn upgrade(version: u32, body: &[u8]) -> Option<Self> {
        match version {
            1 => crate::journal::decode(body),
            _ => None,
        }
    }
}

/// A job taken and not yet acknowledged.
enum Entry {
    /// Queued or running in this process.
    Taken,
    /// Ended; the outcome is resent until acknowledged.
    Ended(Outcome),
}

/// What is out on the I/O thread.
enum Out {
    Idle,
    /// A batch holding every record up to this count, synced or not.
    Batch {
        upto: u64,
        synced: bool,
    },
    Rewrite,
}

/// A place in the ledger's records: a job taken with this ticket may
/// start once the ledger is written up to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// What the ledger says of a job the server sent.
#[derive(Debug, PartialEq)]
pub enum Known {
    /// Never seen: take it.
    New,
    /// Queued or running here now: the same job received twice.
    Here,
    /// Ended here: its outcome, to send again.
    Ended(Outcome),
    /// Ended and acknowledged: the server has its outcome already.
    Acked,
}

/// The jobs this node has taken.
pub struct Ledger {
    journal: Journal,
    open: HashMap<Uuid, (u64, Entry)>,
    /// Grows with every job taken: the order `open` is listed in.
    order: u64,
    closed: VecDeque<Uuid>,
    closed_set: HashSet<Uuid>,
    /// Those of `closed` that changed something here.
    closed_changed: HashSet<Uuid>,
    /// A `Took` waits to be written: a batch goes out at once.
    took_pending: bool,
    /// The group commit is due (its timer, or a stop): everything goes
    /// out, synced.
    commit_due: bool,
    /// Written since the last sync.
    unsynced: bool,
    /// Records appended, and those in the file.
    appended: u64,
    written: u64,
    out: Out,
    /// The last write failed, and none went out since: the records it
    /// carried (up to this count) and what it said. Jobs waiting for those
    /// records fail with it rather than wait on a full disk.
    failed: Option<(u64, String)>,
    /// Writes fail: say when they work again.
    failing: bool,
    /// Do not retry a failed write until something new is appended (or
    /// `unstall`): no spinning on a full disk.
    stalled: bool,
    errors: crate::support::ratelog::Every,
}

/// Why a job taken by an earlier client process has no outcome.
pub const INTERRUPTED: &str = "the node's client restarted while this job was queued or running there; it may or may not have run, and is not run again";

impl Ledger {
    /// Open (creating) the ledger in `dir`: jobs an earlier process took and
    /// never ended are ended as lost; the file is rewritten with the live
    /// records (on this thread: call it before the loop runs).
    pub fn open(dir: &Path) -> io::Result<Ledger> {
        let (mut journal, records) = Journal::open::<Record>(dir, LEDGER)?;
        journal.reserve(RESERVE);
        let mut ledger = Ledger {
            journal,
            open: HashMap::default(),
            order: 0,
            took_pending: false,
            commit_due: false,
            unsynced: false,
            closed: VecDeque::new(),
            closed_set: HashSet::default(),
            closed_changed: HashSet::default(),
            appended: 0,
            written: 0,
            out: Out::Idle,
            failed: None,
            failing: false,
            stalled: false,
            errors: crate::support::ratelog::Every::minute(),
        };
        for rec in records {
            ledger.apply(rec);
        }
        let mut interrupted = 0;
        for (_, entry) in ledger.open.values_mut() {
            if let Entry::Taken = entry {
                *entry = Entry::Ended(Outcome::ended(Exit::Lost(INTERRUPTED.into())));
                interrupted += 1;
            }
        }
        if interrupted > 0 {
            log::warn!(
                "{}: {} taken by the last client process never ended; reported lost, not run again",
                ledger.path(),
                crate::dsl::count(interrupted, "job")
            );
        }
        // Optional: without room, go on from the file as it is (the jobs
        // just ended as lost are ended again at the next start).
        let rw = ledger.snapshot();
        if let Err((rw, e)) = rw.run() {
            ledger.journal.abandon(&rw);
            log::error!("{}: cannot rewrite: {e}", ledger.path());
        }
        Ok(ledger)
    }

    fn apply(&mut self, rec: Record) {
        match rec {
            Record::Took { job } => {
                self.order += 1;
                self.open.insert(job, (self.order, Entry::Taken));
            }
            Record::Ended { job, outcome } => match self.open.get_mut(&job) {
                Some((_, entry)) => *entry = Entry::Ended(outcome),
                // An answer for a job acknowledged before (see `end`).
                None => {
                    self.order += 1;
                    self.open.insert(job, (self.order, Entry::Ended(outcome)));
                }
            },
            Record::Acked { job } => {
                self.open.remove(&job);
                self.close(job, false);
            }
            Record::AckedChanged { job } => {
                self.open.remove(&job);
                self.close(job, true);
            }
        }
    }

    fn close(&mut self, job: Uuid, changed: bool) {
        if self.closed_set.insert(job) {
            self.closed.push_back(job);
        }
        if changed {
            self.closed_changed.insert(job);
        }
        while self.closed.len() > CLOSED_CAP {
            if let Some(old) = self.closed.pop_front() {
                self.closed_set.remove(&old);
                self.closed_changed.remove(&old);
            }
        }
    }

    /// Did `job` change something on this node (or, checking, would it)?
    /// False for a job it never had, or forgot.
    pub fn changed(&self, job: &Uuid) -> bool {
        match self.open.get(job) {
            Some((_, Entry::Ended(o))) => o.exit.state().changed(),
            Some((_, Entry::Taken)) => false,
            None => self.closed_changed.contains(job),
        }
    }

    fn path(&self) -> String {
        self.journal.path().display().to_string()
    }

    /// What the ledger knows of `job`.
    pub fn known(&self, job: &Uuid) -> Known {
        #[cfg(test)]
        if crate::support::mutation::active(crate::support::mutation::Mutation::BeforeExactlyOnce)
            && !matches!(self.open.get(job), Some((_, Entry::Taken)))
        {
            return Known::New;
        }
        match self.open.get(job) {
            Some((_, Entry::Taken)) => Known::Here,
            Some((_, Entry::Ended(outcome))) => Known::Ended(outcome.clone()),
            None if self.closed_set.contains(job) => Known::Acked,
            None => Known::New,
        }
    }

    /// `job` is this node's: it may start once `is_written(ticket)`.
    pub fn take(&mut self, job: Uuid) -> Ticket {
        debug_assert_eq!(self.known(&job), Known::New, "a job is taken once");
        self.append(Record::Took { job });
        self.took_pending = true;
        self.order += 1;
        self.open.insert(job, (self.order, Entry::Taken));
        Ticket(self.appended)
    }

    /// Is the record of the job taken with `ticket` in the file?
    pub fn is_written(&self, ticket: Ticket) -> bool {
        self.written >= ticket.0
    }

    /// The last write failed and carried the record of the job taken with
    /// `ticket`: why. That job then fails, and must not start.
    pub fn failure(&self, ticket: Ticket) -> Option<&str> {
        match &self.failed {
            Some((upto, why)) if ticket.0 <= *upto => Some(why),
            _ => None,
        }
    }

    /// `job` ended with `outcome` (or was answered without running): kept
    /// until acknowledged. A job the ledger does not hold (answered from
    /// the acknowledged ones) is kept too.
    pub fn end(&mut self, job: Uuid, outcome: &Outcome) {
        self.append(Record::Ended {
            job,
            outcome: outcome.cut(OUTPUT_KEPT),
        });
        match self.open.get_mut(&job) {
            Some((_, entry)) => *entry = Entry::Ended(outcome.clone()),
            None => {
                self.order += 1;
                self.open
                    .insert(job, (self.order, Entry::Ended(outcome.clone())));
            }
        }
    }

    /// The server recorded `job`'s outcome.
    pub fn ack(&mut self, job: &Uuid) {
        let changed = match self.open.get(job) {
            Some((_, Entry::Ended(o))) => o.exit.state().changed(),
            // Not ended here: an ack for something we never sent.
            Some((_, Entry::Taken)) | None => return,
        };
        self.open.remove(job);
        self.append(if changed {
            Record::AckedChanged { job: *job }
        } else {
            Record::Acked { job: *job }
        });
        self.close(*job, changed);
    }

    /// The outcomes waiting for their acknowledgement, oldest first.
    pub fn unacked(&self) -> Vec<(Uuid, Outcome)> {
        let mut ended: Vec<(u64, Uuid, Outcome)> = self
            .open
            .iter()
            .filter_map(|(id, (order, e))| match e {
                Entry::Ended(o) => Some((*order, *id, o.clone())),
                Entry::Taken => None,
            })
            .collect();
        ended.sort_by_key(|(order, _, _)| *order);
        ended.into_iter().map(|(_, id, o)| (id, o)).collect()
    }

    fn append(&mut self, rec: Record) {
        self.journal.append(&rec);
        self.appended += 1;
        self.stalled = false;
    }

    /// Try a failed write again at the next `next_io` (now and then).
    pub fn unstall(&mut self) {
        self.stalled = false;
    }

    /// Has it records or writes waiting for the group commit? (Then the
    /// caller times a `commit` within `GROUP_COMMIT`.)
    pub fn wants_commit(&self) -> bool {
        !self.commit_due && (self.journal.is_dirty() || self.unsynced)
    }

    /// The group commit is due: write what waits, and sync.
    pub fn commit(&mut self) {
        self.commit_due = true;
        self.stalled = false;
    }

    /// The next write for the I/O thread, if one is due and nothing is
    /// out: a job's record at once (written, not synced); at the group
    /// commit, everything appended, synced; else a rewrite when most of
    /// the file is dead (only with nothing pending, see the module's
    /// notes).
    pub fn next_io(&mut self) -> Option<JournalIo> {
        if !matches!(self.out, Out::Idle) || self.stalled {
            return None;
        }
        if self.commit_due && (self.journal.is_dirty() || self.unsynced) {
            self.took_pending = false;
            self.failed = None;
            self.out = Out::Batch {
                upto: self.appended,
                synced: true,
            };
            return Some(JournalIo::Write(self.journal.take_synced()));
        }
        self.commit_due = false;
        if std::mem::take(&mut self.took_pending) {
            if let Some(batch) = self.journal.take(false) {
                self.failed = None;
                self.out = Out::Batch {
                    upto: self.appended,
                    synced: false,
                };
                return Some(JournalIo::Write(batch));
            }
        }
        if !self.journal.is_dirty()
            && !self.unsynced
            && self.journal.records() > 2 * (self.open.len() * 2 + self.closed.len()) + SLACK
        {
            self.out = Out::Rewrite;
            return Some(JournalIo::Rewrite(self.snapshot()));
        }
        None
    }

    /// Is a write out, or a record (or a sync) waiting for one that may
    /// still work? A stop waits for it, after a `commit`.
    pub fn is_busy(&self) -> bool {
        !matches!(self.out, Out::Idle)
            || ((self.journal.is_dirty() || self.unsynced) && !self.stalled)
    }

    /// The I/O thread did the last `next_io`.
    pub fn io_done(&mut self, done: JournalIoDone, now: Instant) {
        let out = std::mem::replace(&mut self.out, Out::Idle);
        match (out, done) {
            (Out::Batch { upto, synced }, JournalIoDone::Written(Ok(()))) => {
                self.written = upto;
                self.unsynced = !synced;
                if std::mem::take(&mut self.failing) {
                    log::info!("{}: writes work again", self.path());
                }
            }
            (Out::Batch { upto, .. }, JournalIoDone::Written(Err((batch, e)))) => {
                // Retried, in order, with the next record appended.
                self.journal.put_back(batch);
                // It may have carried a job's record: retried as one.
                self.took_pending = true;
                self.failing = true;
                self.stalled = true;
                if self.errors.first(now) {
                    log::error!(
                        "{}: cannot write: {e}; jobs cannot be recorded and do not start until it works (said at most once a minute)",
                        self.path()
                    );
                }
                let why = format!(
                    "not run: cannot record the job in {} first: {e}",
                    self.path()
                );
                self.failed = Some((upto, why));
            }
            (Out::Rewrite, JournalIoDone::Rewritten(result)) => {
                if let Err((rw, e)) = result {
                    // Nothing was pending: the file is whole as it was.
                    self.journal.abandon(&rw);
                    if self.errors.first(now) {
                        log::error!(
                            "{}: cannot rewrite: {e}; kept it as it was (said at most once a minute)",
                            self.path()
                        );
                    }
                }
            }
            (out, _) => {
                log::error!("ledger: an I/O result that does not match the work out; ignored");
                self.out = out;
            }
        }
    }

    /// The file with only live records.
    fn snapshot(&mut self) -> Rewrite {
        let mut open: Vec<(&u64, &Uuid, &Entry)> =
            self.open.iter().map(|(id, (o, e))| (o, id, e)).collect();
        open.sort_by_key(|(o, _, _)| **o);
        let mut live = Vec::with_capacity(self.closed.len() + 2 * open.len());
        // Acked first: their ids are older than every open job's.
        live.extend(self.closed.iter().map(|job| {
            if self.closed_changed.contains(job) {
                Record::AckedChanged { job: *job }
            } else {
                Record::Acked { job: *job }
            }
        }));
        for (_, job, entry) in open {
            live.push(Record::Took { job: *job });
            if let Entry::Ended(outcome) = entry {
                live.push(Record::Ended {
                    job: *job,
                    outcome: outcome.cut(OUTPUT_KEPT),
                });
            }
        }
        self.journal.snapshot(live)
    }

    /// Write and sync everything, on this thread (tests).
    #[cfg(test)]
    pub fn settle_now(&mut self) {
        self.commit();
        while let Some(io) = self.next_io() {
            self.io_done(io.run(), Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("director-ledger-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn ok() -> Outcome {
        Outcome::ended(Exit::Code(0))
    }

    #[test]
    fn a_job_is_durable_only_once_its_batch_is_written() {
        let d = dir("durable");
        let mut l = Ledger::open(&d).unwrap();
        let a = l.take(Uuid::new_v4());
        assert!(!l.is_written(a));
        let Some(JournalIo::Write(batch)) = l.next_io() else {
            panic!("a write");
        };
        // Taken while the first write is out: the next batch carries it.
        let b = l.take(Uuid::new_v4());
        assert!(l.next_io().is_none(), "one write at a time");
        l.io_done(JournalIoDone::Written(batch.run()), Instant::now());
        assert!(l.is_written(a) && !l.is_written(b));
        l.settle_now();
        assert!(l.is_written(b));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn only_a_job_taken_is_written_at_once_and_the_group_commit_syncs_the_rest() {
        let d = dir("commit");
        let mut l = Ledger::open(&d).unwrap();
        let id = Uuid::new_v4();
        let t = l.take(id);
        let Some(JournalIo::Write(batch)) = l.next_io() else {
            panic!("the job's record at once");
        };
        assert!(
            matches!(l.out, Out::Batch { synced: false, .. }),
            "no flush on a job's path"
        );
        l.io_done(JournalIoDone::Written(batch.run()), Instant::now());
        assert!(l.is_written(t));
        // Its outcome and ack wait for the group commit.
        l.end(id, &ok());
        l.ack(&id);
        assert!(l.next_io().is_none());
        assert!(l.wants_commit() && l.is_busy());
        l.commit();
        let Some(JournalIo::Write(batch)) = l.next_io() else {
            panic!("the group commit");
        };
        assert!(matches!(l.out, Out::Batch { synced: true, .. }));
        l.io_done(JournalIoDone::Written(batch.run()), Instant::now());
        assert!(!l.wants_commit() && !l.is_busy());
        drop(l);
        assert_eq!(Ledger::open(&d).unwrap().known(&id), Known::Acked);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn what_a_process_knew_survives_it_and_acked_ids_stay_refused() {
        let d = dir("reopen");
        let (taken, ended, acked) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut l = Ledger::open(&d).unwrap();
        for id in [taken, ended, acked] {
            l.take(id);
        }
        l.end(ended, &ok());
        l.end(acked, &ok());
        l.ack(&acked);
        l.settle_now();
        drop(l);
        let l = Ledger::open(&d).unwrap();
        let Known::Ended(o) = l.known(&taken) else {
            panic!("a job taken and never ended is ended as lost");
        };
        assert_eq!(o.exit, Exit::Lost(INTERRUPTED.into()));
        assert_eq!(l.known(&ended), Known::Ended(ok()));
        assert_eq!(l.known(&acked), Known::Acked);
        assert_eq!(l.unacked().len(), 2);
        drop(l);
        // Through the rewrite at open, twice.
        let l = Ledger::open(&d).unwrap();
        assert_eq!(l.known(&acked), Known::Acked);
        assert!(matches!(l.known(&taken), Known::Ended(_)));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn the_file_stays_small_however_many_jobs_pass() {
        let d = dir("bounded");
        let mut l = Ledger::open(&d).unwrap();
        let mut ids = Vec::new();
        for i in 0..(CLOSED_CAP + 20_000) {
            let id = Uuid::new_v4();
            l.take(id);
            l.end(id, &ok());
            l.ack(&id);
            if i % 64 == 0 {
                l.settle_now();
            }
            ids.push(id);
        }
        l.settle_now();
        let size = std::fs::metadata(d.join(LEDGER)).unwrap().len();
        // About 20 bytes per acked id, and dead records up to twice that
        // plus the slack, each with its outcome.
        assert!(size < 2_500_000, "{size} bytes");
        // The newest are remembered, the oldest forgotten.
        assert_eq!(l.known(ids.last().unwrap()), Known::Acked);
        assert_eq!(l.known(&ids[0]), Known::New);
        drop(l);
        let l = Ledger::open(&d).unwrap();
        assert_eq!(l.known(ids.last().unwrap()), Known::Acked);
        assert_eq!(l.closed.len(), CLOSED_CAP);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_failed_write_is_not_retried_in_a_loop_and_loses_nothing() {
        let d = dir("fail");
        let mut l = Ledger::open(&d).unwrap();
        let id = Uuid::new_v4();
        let t = l.take(id);
        let Some(JournalIo::Write(batch)) = l.next_io() else {
            panic!("a write");
        };
        let err = io::Error::from_raw_os_error(libc::ENOSPC);
        l.io_done(JournalIoDone::Written(Err((batch, err))), Instant::now());
        assert!(l.failure(t).is_some_and(|f| f.contains("No space left")));
        assert!(l.next_io().is_none(), "no retry before a change");
        assert!(!l.is_busy(), "a stop does not wait on a full disk");
        // A job taken since waits for its own write, which carries both.
        let later = l.take(Uuid::new_v4());
        assert!(l.failure(later).is_none());
        l.settle_now();
        assert!(l.is_written(t) && l.is_written(later));
        assert!(l.failure(t).is_none());
        drop(l);
        assert!(matches!(
            Ledger::open(&d).unwrap().known(&id),
            Known::Ended(_)
        ));
        std::fs::remove_dir_all(d).unwrap();
    }
}
