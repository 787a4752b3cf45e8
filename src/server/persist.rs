//! The server's persistence policy: its two journals (job history, key
//! table) and everything that waits for them.
//!
//! Group commit: a record waits at most `COMMIT_IVL` for the sync that makes
//! it durable, and one sync (on the I/O worker thread) covers everything
//! recorded meanwhile. What depends on records waits as `Held` until their
//! sync succeeded: result acks, answers and progress for CLIs, and the
//! release of new jobs to their nodes (a submission is on disk before
//! anything of it goes out). One commit is in flight at a time, so held
//! things are released in order.
//!
//! A commit that fails (full or failing disk) acknowledges nothing: its
//! writes are retried every `RETRY_IVL`, in order, before anything newer;
//! the nodes keep resending their results meanwhile. Submissions waiting on
//! it fail (the CLI gets a one-line error, nothing is queued); a new one
//! while the disk fails tries it again at once, and fails or goes through. The error is logged at most once a
//! minute, and recovery once.

use std::io;
use std::time::{Duration, Instant};

use mio::Token;
use uuid::Uuid;

use super::ha::entries::Entry;
use super::ha::replicate::{BaseWrite, Mark, Replica, Replicate};
use crate::journal::{Batch, Journal, Rewrite};
use crate::support::ratelog::Every;
use crate::wire::{Response, ServerMsg};

/// How long a record may wait for the sync that makes it durable.
pub const COMMIT_IVL: Duration = Duration::from_millis(5);
/// The same on etcd: each commit costs every etcd member a write and a
/// sync, so records wait a little longer to share one. (Nothing of a run
/// waits on it but the acknowledgements: a node is sent its next job as
/// soon as its result comes.)
pub const ETCD_COMMIT_IVL: Duration = Duration::from_millis(ETCD_IVL_MS);
const ETCD_IVL_MS: u64 = 40;
/// How soon writes that failed are tried again.
const RETRY_IVL: Duration = Duration::from_secs(1);

/// Something that may happen only once what was recorded before it is on
/// disk.
#[derive(Debug)]
pub enum Held {
    /// A message to a node: a result ack, or the welcome or call to
    /// register that follows a key's enrolment or acceptance.
    Ack { node: String, msg: ServerMsg },
    /// An answer or progress for a control connection.
    Note { token: Token, resp: Response },
    /// A job's detail whose outputs are to be read from the journal.
    Read {
        token: Token,
        detail: Box<crate::wire::JobDetail>,
        reads: Vec<(usize, crate::journal::Span)>,
    },
    /// A submission's answer, and its jobs to release to their nodes.
    Submission {
        token: Token,
        resp: Response,
        jobs: Vec<Uuid>,
    },
    /// A submission answered already (in doubt: see `answer_in_doubt`):
    /// its jobs, to release should its records be durable after all.
    Release { jobs: Vec<Uuid> },
}

/// One write the worker carries out, in order.
pub enum Op {
    Append(Batch),
    Replace(Rewrite),
    /// A group commit's entry to etcd, before its journal writes.
    Replicate(Box<Replicate>),
    /// The journals as a base entry, for a standby that lost its place.
    Base(Box<BaseWrite>),
    /// After them: how far the journals follow the log.
    Mark(Mark),
}

impl Op {
    fn run(self) -> Result<(), (Op, io::Error)> {
        match self {
            Op::Append(b) => b.run().map_err(|(b, e)| (Op::Append(b), e)),
            Op::Replace(r) => r.run().map_err(|(r, e)| (Op::Replace(r), e)),
            Op::Replicate(r) => r.run().map_err(|(r, e)| (Op::Replicate(Box::new(r)), e)),
            Op::Base(b) => b.run().map_err(|be| {
                let (b, e) = *be;
                (Op::Base(Box::new(b)), e)
            }),
            Op::Mark(m) => m.run().map_err(|(m, e)| (Op::Mark(m), e)),
        }
    }
}

/// Run `ops` in order, stopping at the first failure; what was not done
/// (the failed op first) comes back with the error.
pub fn run_ops(ops: Vec<Op>) -> CommitResult {
    let mut rest = ops.into_iter();
    while let Some(op) = rest.next() {
        if let Err((op, e)) = op.run() {
            let mut undone = vec![op];
            undone.extend(rest);
            return Err((undone, e));
        }
    }
    Ok(())
}

/// What a commit on the worker came back with.
pub type CommitResult = Result<(), (Vec<Op>, io::Error)>;

/// What the server must do after a persistence event.
#[derive(Default)]
pub struct Released {
    /// Durable now: carry these out, in order.
    pub held: Vec<Held>,
    /// Submissions that could not be made durable: answer these with the
    /// error, and forget their jobs.
    pub failed: Vec<(Token, Vec<Uuid>, String)>,
    /// A compaction that failed and was given up (the file is as it was):
    /// put the layout back, and why it failed.
    pub abandoned: Option<(Rewrite, String)>,
}

/// The disk (or etcd) is failing: when to try it again.
struct Failing {
    retry_at: Instant,
    /// etcd did not answer a write: what it held may still be committed
    /// there, and new submissions are refused before anything of them is
    /// written, with this.
    etcd: Option<String>,
}

/// The journals and what waits on them.
pub struct Persist {
    pub history: Journal,
    pub keys: Option<Journal>,
    /// API tokens (absent in the simulator).
    pub tokens: Option<Journal>,
    /// Waiting for what is recorded and not yet handed to a commit.
    waiting: Vec<Held>,
    /// When the oldest record not yet handed to a commit must go.
    commit_at: Option<Instant>,
    /// Held things waiting for the commit on the worker now.
    in_flight: Option<Vec<Held>>,
    /// Writes that failed, to run again before anything newer.
    retry: Vec<Op>,
    /// Rewrites asked for, to run in the next commit.
    rewrites: Vec<Rewrite>,
    failing: Option<Failing>,
    errors: Every,
    /// On etcd: each commit's records go to the log first.
    replica: Option<Replica>,
    /// A standby asked for a base: written with the next commit.
    base_wanted: bool,
}

impl Persist {
    pub fn new(history: Journal, keys: Option<Journal>) -> Persist {
        Persist {
            history,
            keys,
            tokens: None,
            waiting: Vec::new(),
            commit_at: None,
            in_flight: None,
            retry: Vec::new(),
            rewrites: Vec::new(),
            failing: None,
            errors: Every::minute(),
            replica: None,
            base_wanted: false,
        }
    }

    /// Write the journals to etcd as a base entry, after what is recorded
    /// so far.
    pub fn want_base(&mut self, now: Instant) {
        if self.replica.is_some() {
            self.base_wanted = true;
            self.recorded(now);
        }
    }

    /// The last entry handed to etcd (on etcd).
    pub fn replica_seq(&self) -> Option<u64> {
        self.replica.as_ref().map(Replica::seq)
    }

    /// On etcd: write each commit's records to the log before the disk.
    pub fn with_replica(mut self, replica: Replica) -> Persist {
        self.replica = Some(replica);
        self
    }

    /// With the token table's journal.
    pub fn with_tokens(mut self, tokens: Journal) -> Persist {
        self.tokens = Some(tokens);
        self
    }

    /// Note that something was recorded: a commit is due within the interval.
    pub fn recorded(&mut self, now: Instant) {
        let ivl = match self.replica {
            Some(_) => ETCD_COMMIT_IVL,
            None => COMMIT_IVL,
        };
        self.commit_at.get_or_insert(now + ivl);
    }

    /// Replace the history file with `snapshot` (which covers everything
    /// recorded so far), in the next commit.
    pub fn rewrite(&mut self, snapshot: Rewrite, now: Instant) {
        self.rewrites.push(snapshot);
        self.recorded(now);
    }

    /// Hold `h` until everything recorded so far is durable; it comes back
    /// from `due` or `done` (or at once, with nothing to wait for).
    pub fn hold(&mut self, h: Held, now: Instant, out: &mut Released) {
        if let (Held::Submission { token, jobs, .. }, Some(Failing { etcd: Some(e), .. })) =
            (&h, &self.failing)
        {
            // Its records go out with the next write, its `Forgotten`
            // after them: it never runs.
            out.failed.push((*token, jobs.clone(), e.clone()));
            return;
        }
        if let (Held::Submission { .. }, Some(f)) = (&h, &mut self.failing) {
            // Each submission tries the disk again at once: it fails fast
            // while the disk is full, and the first one after space returns
            // goes through.
            f.retry_at = now;
        }
        let idle = self.commit_at.is_none()
            && self.in_flight.is_none()
            && self.waiting.is_empty()
            && self.retry.is_empty();
        if idle {
            out.held.push(h);
        } else {
            self.waiting.push(h);
        }
    }

    /// When `due` has work next, if it has any.
    pub fn next_due(&self) -> Option<Instant> {
        if self.in_flight.is_some() {
            return None;
        }
        match &self.failing {
            Some(f) => Some(f.retry_at),
            None => self.commit_at,
        }
    }

    /// If a commit is due and none is in flight: the writes to hand to the
    /// worker (`run_ops`), and what waits on them is now in flight. With
    /// nothing to write, what waited is released at once.
    pub fn due(&mut self, now: Instant, out: &mut Released) -> Option<Vec<Op>> {
        if self.in_flight.is_some() || self.next_due().is_none_or(|at| at > now) {
            return None;
        }
        self.commit_at = None;
        let mut ops = std::mem::take(&mut self.retry);
        ops.extend(self.rewrites.drain(..).map(Op::Replace));
        let history = self.history.take(true);
        let keys = self.keys.as_mut().and_then(|j| j.take(true));
        let tokens = self.tokens.as_mut().and_then(|j| j.take(true));
        let mut mark = None;
        if let Some(r) = &mut self.replica {
            if history.is_some() || keys.is_some() || tokens.is_some() {
                let bytes = |b: &Option<Batch>| b.as_ref().map(|b| b.bytes().to_vec());
                let entry = Entry {
                    base: false,
                    history: bytes(&history).unwrap_or_default(),
                    keys: bytes(&keys).unwrap_or_default(),
                    tokens: bytes(&tokens).unwrap_or_default(),
                };
                let (write, m) = r.next(&entry);
                ops.push(Op::Replicate(Box::new(write)));
                mark = Some(m);
            }
        }
        ops.extend(
            [history, keys, tokens]
                .into_iter()
                .flatten()
                .map(Op::Append),
        );
        ops.extend(mark.map(Op::Mark));
        if let (true, Some(r)) = (std::mem::take(&mut self.base_wanted), &mut self.replica) {
            let readers = [
                Some(self.history.reader()),
                self.keys.as_ref().map(Journal::reader),
                self.tokens.as_ref().map(Journal::reader),
            ];
            let (base, mark) = r.next_base(readers);
            ops.push(Op::Base(Box::new(base)));
            ops.push(Op::Mark(mark));
        }
        if ops.is_empty() {
            out.held.append(&mut self.waiting);
            return None;
        }
        self.in_flight = Some(std::mem::take(&mut self.waiting));
        Some(ops)
    }

    /// The worker finished the commit in flight.
    pub fn done(&mut self, result: CommitResult, now: Instant, out: &mut Released) {
        let held = self.in_flight.take().unwrap_or_default();
        match result {
            Ok(()) => {
                if self.failing.take().is_some() {
                    log::info!(
                        "the job history and key table in {} are written again; acknowledging what waited",
                        self.dir()
                    );
                    self.errors.reset();
                }
                out.held.extend(held);
                // Records made while this commit ran are due now.
                if !self.waiting.is_empty() || self.history.is_dirty() {
                    self.commit_at.get_or_insert(now);
                }
            }
            Err((mut undone, e)) if matches!(undone.first(), Some(Op::Replace(_))) => {
                // A compaction is optional: give it up rather than hold
                // every acknowledgement behind it, and write the rest now
                // (it lands after the file's old end).
                if let Op::Replace(rw) = undone.remove(0) {
                    out.abandoned = Some((rw, e.to_string()));
                }
                self.retry = undone;
                let mut back = held;
                back.append(&mut self.waiting);
                self.waiting = back;
                self.commit_at = Some(now);
            }
            Err((undone, e)) => {
                let error = format!("cannot write the server's state in {}: {e}", self.dir());
                if self.errors.first(now) {
                    let more = self.errors.take_suppressed();
                    log::error!(
                        "{error}; nothing is acknowledged until it can be (nodes keep their results, submissions are refused); retrying every {}s{}",
                        RETRY_IVL.as_secs(),
                        if more > 0 {
                            format!(" ({more} more failures since the last message)")
                        } else {
                            String::new()
                        }
                    );
                }
                // etcd did not answer: the write may still be committed
                // there, and a successor would run what it holds. Its
                // submissions are not refused but wait for the answer (or
                // for this server to step down, which the CLI sees as a
                // lost connection: not known either way).
                let uncertain = matches!(undone.first(), Some(Op::Replicate(_) | Op::Base(_)));
                self.retry = undone;
                // Back in front, in order; submissions fail now.
                let mut back = Vec::with_capacity(held.len() + self.waiting.len());
                let held = held.into_iter().map(|h| (h, uncertain));
                for (h, in_doubt) in held.chain(self.waiting.drain(..).map(|h| (h, false))) {
                    match h {
                        Held::Submission { token, jobs, .. } if !in_doubt => {
                            out.failed.push((token, jobs, error.clone()))
                        }
                        h => back.push(h),
                    }
                }
                self.waiting = back;
                self.failing = Some(Failing {
                    retry_at: now + RETRY_IVL,
                    etcd: uncertain
                        .then(|| format!("{e}: submissions are refused until it answers")),
                });
            }
        }
    }

    /// etcd answers again (this server's lease was renewed): what waits
    /// is written at once, and submissions wait for it rather than be
    /// refused.
    pub fn etcd_back(&mut self, now: Instant) {
        if let Some(f) = &mut self.failing {
            f.etcd = None;
            f.retry_at = now;
        }
    }

    /// This server may no longer lead (its lease may lapse): what it wrote
    /// to etcd without an answer may or may not be committed there, and
    /// only another server could tell. Submissions waiting on it are
    /// answered now, saying so; their jobs still go out if their records
    /// turn out durable here.
    pub fn answer_in_doubt(&mut self, why: &str, out: &mut Released) {
        let doubt = |h: &mut Held, out: &mut Released| {
            if let Held::Submission { token, jobs, .. } = h {
                out.held.push(Held::Note {
                    token: *token,
                    resp: Response::Rejected(format!(
                        "{why}: this submission may or may not have been recorded (if it was, it runs); see `director manage --list-jobs` on the active server once etcd answers"
                    )),
                });
                *h = Held::Release {
                    jobs: std::mem::take(jobs),
                };
            }
        };
        for h in self.in_flight.iter_mut().flatten() {
            doubt(h, out);
        }
        for h in &mut self.waiting {
            doubt(h, out);
        }
    }

    /// Is everything recorded on disk, with nothing on its way there? (A
    /// compaction copies records from the file: they must all be there.)
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_none()
            && self.retry.is_empty()
            && self.rewrites.is_empty()
            && self.commit_at.is_none()
            && !self.history.is_dirty()
            && self.keys.as_ref().is_none_or(|k| !k.is_dirty())
            && self.tokens.as_ref().is_none_or(|k| !k.is_dirty())
    }

    /// Does anything for control connection `token` wait for the disk?
    pub fn holds_for(&self, token: Token) -> bool {
        let mine = |h: &Held| match h {
            Held::Note { token: t, .. }
            | Held::Read { token: t, .. }
            | Held::Submission { token: t, .. } => *t == token,
            Held::Ack { .. } | Held::Release { .. } => false,
        };
        self.waiting.iter().any(mine) || self.in_flight.iter().flatten().any(mine)
    }

    /// Everything still held, and the writes not done: at shutdown, after
    /// a last synchronous try.
    pub fn finish(&mut self, now: Instant) -> Released {
        let mut out = Released::default();
        if self.in_flight.is_some() {
            return out; // the caller waits for the worker first
        }
        self.failing = None;
        self.commit_at = Some(now);
        if let Some(ops) = self.due(now, &mut out) {
            let result = run_ops(ops);
            self.done(result, now, &mut out);
        }
        out
    }

    fn dir(&self) -> String {
        self.history
            .path()
            .parent()
            .map_or_else(String::new, |p| p.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::ha::{entries, replicate::Replica};
    use crate::server::history::{self, Record};
    use std::sync::{Arc, Mutex};

    fn submission(token: usize) -> Held {
        Held::Submission {
            token: Token(token),
            resp: Response::Rejected(String::new()),
            jobs: vec![Uuid::from_u128(token as u128)],
        }
    }

    /// etcd that does not answer: a write to it may still be committed
    /// later, so the submissions it carried are neither acknowledged nor
    /// refused (a successor may run them); new ones are refused at once,
    /// before anything of them is written.
    #[test]
    fn submissions_in_a_write_etcd_did_not_answer_wait_and_new_ones_are_refused() {
        let dir =
            std::env::temp_dir().join(format!("director-persist-etcd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let history = Journal::open_with(&dir, history::FILE, |_: Record, _| {}).unwrap();
        // Nothing listens on port 1: etcd is unavailable at once.
        let client = Arc::new(Mutex::new(crate::etcd::Client::new(
            &["http://127.0.0.1:1".to_string()],
            Duration::from_millis(200),
        )));
        let replica = Replica::new(client, entries::Keys::new("/t"), 5, 0, &dir);
        let mut p = Persist::new(history, None).with_replica(replica);
        let now = Instant::now();
        let mut out = Released::default();
        p.history.append(&Record::Forgotten { id: Uuid::nil() });
        p.recorded(now);
        p.hold(submission(1), now, &mut out);
        let ops = p.due(now + ETCD_COMMIT_IVL, &mut out).unwrap();
        assert!(matches!(ops.first(), Some(Op::Replicate(_))));
        let result = run_ops(ops);
        let Err((undone, e)) = &result else {
            panic!("written without etcd")
        };
        assert_eq!(
            undone.len(),
            3,
            "the entry, its append and its mark are undone"
        );
        assert!(e.to_string().contains("etcd is unavailable"), "{e}");
        p.done(result, now, &mut out);
        assert!(out.failed.is_empty(), "in doubt, never refused");
        assert!(out.held.is_empty(), "in doubt, never acknowledged");
        assert!(p.holds_for(Token(1)));
        p.hold(submission(2), now, &mut out);
        assert_eq!(out.failed.len(), 1);
        assert_eq!(out.failed[0].0, Token(2));
        assert!(
            out.failed[0].2.contains("etcd is unavailable"),
            "{:?}",
            out.failed
        );
        assert!(!p.holds_for(Token(2)));
        // Nothing reached the disk.
        assert_eq!(p.history.encoded().unwrap(), Vec::<u8>::new());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
