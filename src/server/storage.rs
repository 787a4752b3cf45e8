//! What the loop does with its journals and its I/O thread: recording,
//! holding what depends on records until they are durable, carrying out
//! what the persistence layer releases, reading outputs back, retention and
//! compaction. The policy itself is in `persist`.

use std::time::{Duration, Instant};

use mio::Token;
use uuid::Uuid;

use super::cluster::{Cluster, Effect};
use super::core::{Core, Out, Timer};
use super::history::Record;
use super::io::IoTask;
use super::jobs;
use super::keys::KeyRecord;
use super::persist::{self, Held};
use crate::journal::{Journal, Moves, Reader, Rewrite, Span};
use crate::wire::{self, Response};

/// How often retention runs and the journal's size is looked at.
pub(super) const HOUSEKEEPING_IVL: Duration = Duration::from_secs(10);
/// Dead records the journal may hold beyond as many as live ones before it
/// is compacted.
pub(super) const COMPACT_SLACK: usize = 10_000;
impl Core {
    /// A submission was accepted: its records are effects; its answer and
    /// the release of its jobs wait until they are durable.
    pub(super) fn submitted(&mut self, token: Token, resp: Response, effects: Vec<Effect>) {
        let jobs: Vec<Uuid> = match &resp {
            Response::Submitted(s) => vec![s.job_id],
            Response::Orchestrated(plan) => plan.jobs.iter().filter_map(|j| j.job_id).collect(),
            _ => Vec::new(),
        };
        self.apply(effects);
        if jobs.is_empty() {
            self.hold(Held::Note { token, resp });
        } else {
            self.hold(Held::Submission { token, resp, jobs });
        }
    }

    /// On etcd, resuming: write what waits at once.
    pub(super) fn etcd_back(&mut self) {
        self.persist.etcd_back(self.now.at);
    }

    /// On etcd, pausing: answer the submissions in doubt now.
    pub(super) fn answer_in_doubt(&mut self, why: &str) {
        self.persist.answer_in_doubt(why, &mut self.released);
        self.carry_out();
    }

    /// Carry out what was released, for a caller outside the loop (a
    /// standby answering from its replica).
    pub(crate) fn carry_out_now(&mut self) {
        self.carry_out();
    }

    /// On etcd: a standby asked for a base; it goes with the next commit.
    pub(super) fn want_base(&mut self) {
        self.persist.want_base(self.now.at);
    }

    /// On etcd: the last entry handed to etcd.
    pub(super) fn replica_seq(&self) -> Option<u64> {
        self.persist.replica_seq()
    }

    /// Journal a key change; answers wait for its sync like any record's.
    pub(super) fn record_key(&mut self, rec: &KeyRecord) {
        if let Some(j) = &mut self.persist.keys {
            j.append(rec);
        }
        self.persist.recorded(self.now.at);
    }

    /// Journal a token change; its answer waits for the sync.
    pub(super) fn record_token(&mut self, rec: &super::tokens::TokenRecord) {
        if let Some(j) = &mut self.persist.tokens {
            j.append(rec);
        }
        self.persist.recorded(self.now.at);
    }

    pub(super) fn record(&mut self, rec: &Record) -> Span {
        let span = self.persist.history.append(rec);
        self.persist.recorded(self.now.at);
        span
    }

    /// Hold `h` until what was recorded before it is durable.
    pub(super) fn hold(&mut self, h: Held) {
        self.persist.hold(h, self.now.at, &mut self.released);
    }

    /// Group commit: once the oldest unsynced record is `COMMIT_IVL` old,
    /// hand the writes to the I/O thread; carry out whatever was released.
    /// True if anything was.
    pub(super) fn commit(&mut self, now: Instant) -> bool {
        // A compaction copies finished parts' records from the file: only
        // once all of them are there.
        if self.compact_wanted && self.persist.is_idle() {
            self.compact_wanted = false;
            let (rewrite, moves) = compact(&mut self.cluster, &mut self.persist.history);
            self.compacting = Some(moves);
            self.persist.rewrite(rewrite, now);
        }
        if let Some(ops) = self.persist.due(now, &mut self.released) {
            self.out.push(Out::Io(IoTask::Commit(ops)));
        }
        self.carry_out()
    }

    /// A commit on the I/O thread came back: carry out what it made
    /// durable.
    pub fn committed(&mut self, result: persist::CommitResult) {
        self.take_commit(result);
        self.carry_out();
    }

    fn take_commit(&mut self, result: persist::CommitResult) {
        let now = self.now.at;
        // Compactions start only with nothing in flight: this is the
        // commit that carried it, if one began.
        let moves = self.compacting.take();
        self.persist.done(result, now, &mut self.released);
        if moves.is_some() {
            // The rewrite's buffers are freed now, not at the next
            // housekeeping.
            give_back_free_memory();
        }
        if let Some((rw, why)) = self.released.abandoned.take() {
            uncompact(
                &mut self.cluster,
                &mut self.persist.history,
                &rw,
                &moves.unwrap_or_default(),
            );
            // Housekeeping asks again every 10 s while it is needed.
            if !self.compact_refused.first(now) {
                return;
            }
            log::warn!(
                "cannot compact the job history in {}: {why}; kept it as it was (tried again later; said at most once a minute)",
                self.persist
                    .history
                    .path()
                    .parent()
                    .map_or_else(String::new, |p| p.display().to_string())
            );
        }
    }

    /// Carry out what the persistence layer released, in order, and fail
    /// the submissions it could not make durable. True if there was any.
    pub(super) fn carry_out(&mut self) -> bool {
        let mut any = false;
        // Carrying out may release more (a note held behind nothing): go
        // until nothing is left.
        loop {
            let released = std::mem::take(&mut self.released);
            if released.held.is_empty() && released.failed.is_empty() {
                return any;
            }
            any = true;
            for (token, jobs, error) in released.failed {
                // The CLI is told; the disk's failure is logged (once a
                // minute) where it is found.
                log::debug!(
                    "refused a submission of {}: {error}",
                    crate::dsl::count(jobs.len(), "job")
                );
                let parent = jobs.first().and_then(|id| self.cluster.parent_of(id));
                self.cluster.forget(&jobs);
                for id in jobs.iter().chain(parent.iter()) {
                    self.watchers.done(id);
                }
                for id in jobs {
                    // Should its Submitted record reach the disk after all,
                    // this one follows it there.
                    self.record(&Record::Forgotten { id });
                }
                let why = format!("{error}; nothing was queued");
                self.out.push(Out::Note {
                    token,
                    resp: Response::Rejected(why),
                });
            }
            for h in released.held {
                match h {
                    // Lost acks are harmless: the node resends its result.
                    Held::Ack { node, msg } => {
                        let _ = self.send(&node, &msg);
                    }
                    Held::Note { token, resp } => self.out.push(Out::Note { token, resp }),
                    Held::Read {
                        token,
                        detail,
                        reads,
                    } => {
                        let reader = self.persist.history.reader();
                        self.out.push(Out::Io(IoTask::JobInfo {
                            token,
                            reader,
                            detail,
                            reads,
                        }));
                    }
                    Held::Submission { token, resp, jobs } => {
                        // The answer reaches the waiter before any progress.
                        self.out.push(Out::Note { token, resp });
                        self.release_jobs(&jobs);
                    }
                    Held::Release { jobs } => self.release_jobs(&jobs),
                }
            }
        }
    }

    /// A submission's jobs go to their nodes, now that it is durable.
    fn release_jobs(&mut self, jobs: &[Uuid]) {
        let mut out = std::mem::take(&mut self.effects);
        self.cluster.release(jobs, self.now, &mut out);
        self.apply(out);
        // Parts may now wait for offline nodes, until a deadline.
        if let Some(at) = self.cluster.next_expiry() {
            self.schedule_expiry(at);
        }
    }

    /// Apply the retention, ask for a compaction when the journal holds
    /// many more records than the history, and come back later.
    pub(super) fn housekeeping(&mut self) {
        let (age, count) = self.retention;
        let mut out = std::mem::take(&mut self.effects);
        let gone = self
            .cluster
            .retain_recent(self.now.ms, age, count, &mut out);
        self.apply(out);
        if gone > 0 {
            log::info!(
                "retention: forgot {}",
                crate::dsl::count(gone, "finished job")
            );
        }
        give_back_free_memory();
        let live = self.cluster.live_records();
        if self.persist.history.records() > 2 * live + COMPACT_SLACK {
            self.compact_wanted = true;
        }
        self.timers
            .at(self.now.at + HOUSEKEEPING_IVL, Timer::Housekeeping);
    }
}

/// Retention and compactions free much at once; glibc keeps freed pages
/// unless asked, and memory would look as if it grew with the history.
fn give_back_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Fill in the parts of `detail` that memory keeps only as a summary
/// (exit, outputs, timings, messages) from their journal records at
/// `reads` (on the I/O thread). One that cannot be read says why, in its
/// message.
pub(super) fn read_outputs(
    reader: &Reader,
    mut detail: Box<wire::JobDetail>,
    reads: &[(usize, Span)],
) -> Box<wire::JobDetail> {
    for (i, span) in reads {
        let Some(view) = detail.nodes.get_mut(*i) else {
            continue;
        };
        match reader.read::<Record>(*span) {
            Ok(Record::Done { id, node, part }) if id == view.job_id && node == view.node => {
                jobs::view_of_record(view, part);
            }
            Ok(_) => view.message = Some("details unavailable: the journal moved".into()),
            Err(e) => view.message = Some(format!("details unavailable: {e}")),
        }
    }
    detail
}

/// The history's compacted form: the cluster's state, finished parts
/// copied from where the journal holds them. Their records move, and the
/// cluster is told where to; the moves are kept to undo that if the
/// rewrite fails (`uncompact`).
pub(super) fn compact(cluster: &mut Cluster, history: &mut Journal) -> (Rewrite, Moves) {
    let (rewrite, moves) = history.snapshot_items(cluster.snapshot());
    cluster.respan(|old| moves.forward(old));
    (rewrite, moves)
}

/// A compaction was given up: the file stays as it was. The parts it moved
/// go back to where they were, and parts journaled since it began (placed
/// after the new layout's end) move by as much as the file is longer.
pub(super) fn uncompact(cluster: &mut Cluster, history: &mut Journal, rw: &Rewrite, moves: &Moves) {
    let new_end = Journal::rewrite_end(rw);
    let shift = history.abandon(rw);
    cluster.respan(|span| {
        if span.at >= new_end {
            Some(Span {
                at: span.at.saturating_add_signed(shift),
                len: span.len,
            })
        } else {
            moves.back(span)
        }
    });
}
