//! Job records: each job's task and, per target node, where it stands and
//! what the node reported; and which jobs each orchestration run (parent)
//! holds. Pure data with conversions to the views the CLI sees; the cluster
//! core changes states.
//!
//! Memory holds a bounded summary of a finished part: its state, when it
//! finished and where its record is in the journal. Everything else (exit,
//! outputs, timings, messages) is read back from the journal for
//! `--job-info`, so ten thousand retained jobs cost a few hundred bytes
//! each, whatever they printed.

use crate::support::hash::{Map as HashMap, Set as HashSet};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use uuid::Uuid;

use super::history::{PartRecord, SentTo};
use crate::dsl::Task;
use crate::journal::Span;
use crate::wire::{AttemptView, Exit, JobDetail, JobState, JobView, Outcome, PartView};

/// One node's part of a job: where it stands, and what memory keeps of it
/// at that point of its life. Boxed while it is in flight, or finished and
/// not yet journaled (few parts at a time); a journaled part keeps only its
/// state, when it finished and where its record is (most parts, most of
/// the time), in 24 bytes.
#[derive(Debug)]
pub enum Part {
    Queued,
    /// Where and when it was sent (`None`: a job the node said it held
    /// although no record of its sending survived).
    InFlight {
        stage: Flying,
        flight: Option<Box<Flight>>,
    },
    /// Final, its record not yet journaled: all of it.
    Finished {
        state: Final,
        ending: Box<Ending>,
    },
    /// Final and journaled: the record is at `at`, `len` bytes long (a
    /// `Span`, flattened so the state fits beside it).
    Journaled {
        state: Final,
        finished_ms: u64,
        at: u64,
        len: u32,
    },
}

/// Where a part in flight stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flying {
    Sent,
    Running,
}

/// A state a part ends in: never queued, sent or running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Final(JobState);

impl Final {
    /// `state`, if it is final.
    pub fn new(state: JobState) -> Option<Final> {
        state.is_done().then_some(Final(state))
    }

    /// How a job that ran ended (an exit is always final).
    pub fn of(exit: &Exit) -> Final {
        let state = exit.state();
        debug_assert!(state.is_done(), "{exit:?} is not final");
        Final(state)
    }

    pub fn get(self) -> JobState {
        self.0
    }

    pub const LOST: Final = Final(JobState::Lost);
    pub const SKIPPED: Final = Final(JobState::Skipped);
    pub const UNREACHABLE: Final = Final(JobState::Unreachable);
}

/// A part in flight.
#[derive(Debug)]
pub struct Flight {
    /// When it was sent, for the round trip (unknown after a restart).
    sent_at: Option<Instant>,
    sent_ms: u64,
    /// Which client process it went to, in which dispatch (`None`: sent by
    /// a server too old to say, or before the node named its process).
    to: Option<SentTo>,
}

/// A finished part as it is until its record is journaled.
#[derive(Debug)]
pub struct Ending {
    outcome: Option<Outcome>,
    /// Why it was lost or skipped, for operators.
    message: Option<String>,
    sent_ms: Option<u64>,
    rtt_secs: Option<f64>,
    finished_ms: u64,
}

impl Part {
    /// Where it stands.
    pub fn state(&self) -> JobState {
        match self {
            Part::Queued => JobState::Queued,
            Part::InFlight {
                stage: Flying::Sent,
                ..
            } => JobState::Sent,
            Part::InFlight {
                stage: Flying::Running,
                ..
            } => JobState::Running,
            Part::Finished { state, .. } | Part::Journaled { state, .. } => state.get(),
        }
    }

    fn flight(&self) -> Option<&Flight> {
        match self {
            Part::InFlight { flight, .. } => flight.as_deref(),
            _ => None,
        }
    }

    /// The part was sent now, to `to`.
    pub fn send(&mut self, now: Instant, now_ms: u64, to: Option<SentTo>) {
        *self = Part::InFlight {
            stage: Flying::Sent,
            flight: Some(Box::new(Flight {
                sent_at: Some(now),
                sent_ms: now_ms,
                to,
            })),
        };
    }

    /// The node has it although we hold no record of sending it (sent
    /// before a restart whose record did not reach the disk).
    pub fn held_by_node(&mut self) {
        if let Part::Queued = self {
            *self = Part::InFlight {
                stage: Flying::Sent,
                flight: None,
            };
        }
    }

    /// The node started it.
    pub fn start(&mut self) {
        if let Part::InFlight { stage, .. } = self {
            *stage = Flying::Running;
        }
    }

    /// After a restart nobody knows whether it is still running: in
    /// flight again.
    pub fn restart(&mut self) {
        if let Part::InFlight { stage, .. } = self {
            *stage = Flying::Sent;
        }
    }

    /// Where it was sent, while it is in flight.
    pub fn sent_to(&self) -> Option<SentTo> {
        self.flight().and_then(|f| f.to)
    }

    /// When it was sent, while it is in flight.
    pub fn sent_ms(&self) -> Option<u64> {
        self.flight().map(|f| f.sent_ms)
    }

    /// When it finished, if it has.
    pub fn finished_ms(&self) -> Option<u64> {
        match self {
            Part::Finished { ending, .. } => Some(ending.finished_ms),
            Part::Journaled { finished_ms, .. } => Some(*finished_ms),
            Part::Queued | Part::InFlight { .. } => None,
        }
    }

    /// The node reported `outcome` at `now`. The round trip is measured
    /// from the send when this server made it. A late result for a part
    /// already final (reported lost) keeps the time it was first final.
    pub fn finish(&mut self, outcome: Outcome, now: Instant, now_ms: u64) {
        let (sent_ms, rtt_secs) = match self.flight() {
            Some(f) => (
                Some(f.sent_ms),
                f.sent_at
                    .map(|t| now.saturating_duration_since(t).as_secs_f64()),
            ),
            None => (None, None),
        };
        *self = Part::Finished {
            state: Final::of(&outcome.exit),
            ending: Box::new(Ending {
                sent_ms,
                rtt_secs,
                finished_ms: self.finished_ms().unwrap_or(now_ms),
                outcome: Some(outcome),
                message: None,
            }),
        };
    }

    /// It ended without a result from the node (skipped, lost): why.
    pub fn end(&mut self, state: Final, why: String, now_ms: u64) {
        *self = Part::Finished {
            state,
            ending: Box::new(Ending {
                outcome: None,
                message: Some(why),
                sent_ms: self.sent_ms(),
                rtt_secs: None,
                finished_ms: now_ms,
            }),
        };
    }

    /// The part as the history keeps it, if it is in memory (otherwise its
    /// record is where the span says).
    pub fn record(&self) -> Result<PartRecord, Span> {
        match self {
            Part::Journaled { at, len, .. } => Err(Span { at: *at, len: *len }),
            Part::Finished { state, ending } => Ok(PartRecord {
                state: state.get(),
                outcome: ending.outcome.clone(),
                message: ending.message.clone(),
                sent_ms: ending.sent_ms,
                rtt_secs: ending.rtt_secs,
                finished_ms: Some(ending.finished_ms),
            }),
            Part::Queued | Part::InFlight { .. } => Ok(PartRecord {
                state: self.state(),
                outcome: None,
                message: None,
                sent_ms: self.sent_ms(),
                rtt_secs: None,
                finished_ms: None,
            }),
        }
    }

    /// Where the final part's record is, if it is on disk.
    pub fn span(&self) -> Option<Span> {
        match *self {
            Part::Journaled { at, len, .. } => Some(Span { at, len }),
            _ => None,
        }
    }

    /// The final part's record is at `span` now (first written, or moved
    /// by a compaction): keep only its state, when it finished and where.
    pub fn spill(&mut self, span: Span) {
        if let (Some(state), Some(finished_ms)) = (Final::new(self.state()), self.finished_ms()) {
            *self = Part::Journaled {
                state,
                finished_ms,
                at: span.at,
                len: span.len,
            };
        }
    }

    /// In flight, as the history says (after a restart).
    pub fn restore_sent(&mut self, sent_ms: u64, to: Option<SentTo>) {
        *self = Part::InFlight {
            stage: Flying::Sent,
            flight: Some(Box::new(Flight {
                sent_at: None,
                sent_ms,
                to,
            })),
        };
    }

    /// A part restored from its record at `span` in the history (its
    /// state and times: the rest stays there).
    pub fn restore(
        &mut self,
        state: JobState,
        finished_ms: Option<u64>,
        sent_ms: Option<u64>,
        span: Span,
    ) {
        *self = if let Some(state) = Final::new(state) {
            Part::Journaled {
                state,
                // A final record without its time (none is written so)
                // counts as old for retention.
                finished_ms: finished_ms.unwrap_or(0),
                at: span.at,
                len: span.len,
            }
        } else {
            // Not final: a record from a server that journaled parts
            // before they ended; keep what it says.
            match sent_ms {
                Some(sent_ms) => Part::InFlight {
                    stage: Flying::Sent,
                    flight: Some(Box::new(Flight {
                        sent_at: None,
                        sent_ms,
                        to: None,
                    })),
                },
                None => Part::Queued,
            }
        };
    }

    /// Back to queued: the send did not reach the node.
    pub fn unsend(&mut self) {
        *self = Part::Queued;
    }

    /// The part as the CLI sees it: whole while it is in memory; a
    /// journaled part only says its state and when it finished (the rest
    /// is read from its record, see `Job::detail`).
    fn view(&self, job_id: Uuid, node: &str) -> PartView {
        let mut view = PartView {
            job_id,
            node: node.to_owned(),
            state: self.state(),
            changed: self.state().changed(),
            exit_code: None,
            signal: None,
            message: None,
            stdout: String::new(),
            stderr: String::new(),
            stdout_dropped: 0,
            stderr_dropped: 0,
            exec_secs: None,
            rtt_secs: None,
            sent_ms: self.sent_ms(),
            finished_ms: self.finished_ms(),
            attempts: Vec::new(),
        };
        if let Part::Finished { ending, .. } = self {
            fill_view(&mut view, ending.outcome.as_ref(), ending.message.clone());
            view.sent_ms = ending.sent_ms;
            view.rtt_secs = ending.rtt_secs;
        }
        view
    }
}

/// Why a part of a run was not run, whether the server skipped it (still
/// queued) or the node did (already sent): the same words either way.
pub const SKIPPED_AFTER_FAILURE: &str =
    "not run: an earlier job of this orchestration failed on this node";

/// Why a handler was not run on a node.
pub const NOT_TRIGGERED: &str =
    "not run: no job it handles (onchanges) changed anything on this node";

/// Fill `view` from a finished part's outcome and message.
pub fn fill_view(view: &mut PartView, outcome: Option<&Outcome>, message: Option<String>) {
    view.message = message;
    let Some(o) = outcome else {
        return;
    };
    let (code, signal, msg) = exit_fields(&o.exit);
    view.exit_code = code;
    view.signal = signal;
    if msg.is_some() {
        view.message = msg;
    }
    view.stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    view.stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    view.stdout_dropped = o.stdout_dropped;
    view.stderr_dropped = o.stderr_dropped;
    view.exec_secs = Some(o.exec_secs);
    view.attempts = o
        .attempts
        .iter()
        .map(|a| {
            let (exit_code, signal, message) = exit_fields(&a.exit);
            AttemptView {
                exit_code,
                signal,
                message,
                stdout: String::from_utf8_lossy(&a.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&a.stderr).into_owned(),
                stdout_dropped: a.stdout_dropped,
                stderr_dropped: a.stderr_dropped,
                exec_secs: a.exec_secs,
            }
        })
        .collect();
}

/// An ending as the CLI shows it: exit code, signal, or words.
fn exit_fields(exit: &Exit) -> (Option<i32>, Option<i32>, Option<String>) {
    match exit {
        Exit::Code(c) => (Some(*c), None, None),
        Exit::Signal(s) => (None, Some(*s), None),
        e @ (Exit::Error(_) | Exit::TimedOut { .. }) => (None, None, Some(e.to_string())),
        Exit::SkippedAfterFailure => (None, None, Some(SKIPPED_AFTER_FAILURE.into())),
        Exit::Cached | Exit::Unchanged | Exit::WouldChange => (None, None, None),
        Exit::NoChange => (None, None, Some(NOT_TRIGGERED.into())),
        Exit::Lost(why) => (None, None, Some(why.clone())),
    }
}

/// The view of a finished part from its journal record.
pub fn view_of_record(view: &mut PartView, r: PartRecord) {
    view.state = r.state;
    view.changed = r.state.changed();
    fill_view(view, r.outcome.as_ref(), r.message);
    view.sent_ms = r.sent_ms;
    view.rtt_secs = r.rtt_secs;
    view.finished_ms = r.finished_ms;
}

/// A job's target nodes, sorted. A fleet's names and its sets of targets
/// are few, jobs are many: each name and each set is kept once, shared by
/// every job that has it.
pub type Targets = Arc<[Arc<str>]>;

/// The names and target sets in use.
#[derive(Debug, Default)]
pub struct Names {
    names: HashSet<Arc<str>>,
    sets: HashSet<Targets>,
}

impl Names {
    fn name(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.names.get(name) {
            return Arc::clone(n);
        }
        let n: Arc<str> = Arc::from(name);
        self.names.insert(Arc::clone(&n));
        n
    }

    /// The shared set of `targets` (sorted, each once).
    fn set(&mut self, targets: &[String]) -> Targets {
        let mut v: Vec<Arc<str>> = targets.iter().map(|t| self.name(t)).collect();
        v.sort();
        v.dedup();
        if let Some(set) = self.sets.get(&v[..]) {
            return Arc::clone(set);
        }
        let set: Targets = v.into();
        self.sets.insert(Arc::clone(&set));
        set
    }

    /// Forget the names and sets no job holds any more.
    fn sweep(&mut self) {
        self.sets.retain(|s| Arc::strong_count(s) > 1);
        self.names.retain(|n| Arc::strong_count(n) > 1);
    }
}

/// A job's parts, in the order of its (shared) target set. A slice, not a
/// map: a B-tree leaf reserves room for 11 parts whatever the job has, and
/// ten thousand retained jobs would pay for it.
#[derive(Debug)]
pub struct Parts {
    nodes: Targets,
    parts: Box<[Part]>,
    /// The states its parts are in, a bit each (`state_bit`): a filter on
    /// state (`/api/v1/jobs?state=failed`, polled by dashboards) reads one
    /// word per job instead of visiting every part of thousands of jobs.
    /// Kept by `PartMut`, the only way to change a part.
    states: u16,
}

/// A job state's bit in `Parts::states`.
fn state_bit(state: JobState) -> u16 {
    1 << (state as u16)
}

/// The bits of the states that are not final.
const LIVE_STATES: u16 =
    (1 << JobState::Queued as u16) | (1 << JobState::Sent as u16) | (1 << JobState::Running as u16);

/// One part, lent for a change: when the loan ends, the job's summary of
/// states is made again from its parts (a handful, already in cache).
pub struct PartMut<'a> {
    parts: &'a mut Parts,
    i: usize,
}

impl std::ops::Deref for PartMut<'_> {
    type Target = Part;

    fn deref(&self) -> &Part {
        &self.parts.parts[self.i]
    }
}

impl std::ops::DerefMut for PartMut<'_> {
    fn deref_mut(&mut self) -> &mut Part {
        &mut self.parts.parts[self.i]
    }
}

impl Drop for PartMut<'_> {
    fn drop(&mut self) {
        self.parts.summarize();
    }
}

impl Parts {
    fn new(targets: &[String], names: &mut Names) -> Parts {
        let nodes = names.set(targets);
        let parts = nodes.iter().map(|_| Part::Queued).collect();
        let mut parts = Parts {
            nodes,
            parts,
            states: 0,
        };
        parts.summarize();
        parts
    }

    fn summarize(&mut self) {
        self.states = self
            .parts
            .iter()
            .fold(0, |bits, p| bits | state_bit(p.state()));
    }

    /// Is any part in `state`?
    pub fn any_in(&self, state: JobState) -> bool {
        self.states & state_bit(state) != 0
    }

    /// Has every part finished?
    pub fn all_done(&self) -> bool {
        self.states & LIVE_STATES == 0
    }

    fn find(&self, node: &str) -> Option<usize> {
        self.nodes.binary_search_by(|n| (**n).cmp(node)).ok()
    }

    pub fn get(&self, node: &str) -> Option<&Part> {
        self.find(node).map(|i| &self.parts[i])
    }

    pub fn get_mut(&mut self, node: &str) -> Option<PartMut<'_>> {
        self.find(node).map(|i| PartMut { parts: self, i })
    }

    /// Move the records of finished parts where `to` says (a compaction
    /// moved them); no state changes.
    pub fn respan(&mut self, mut to: impl FnMut(Span) -> Option<Span>) {
        for p in self.parts.iter_mut() {
            if let Some(span) = p.span().and_then(&mut to) {
                p.spill(span);
            }
        }
    }

    /// Node names, in order.
    pub fn keys(&self) -> impl Iterator<Item = &Arc<str>> {
        self.nodes.iter()
    }

    pub fn values(&self) -> impl Iterator<Item = &Part> {
        self.parts.iter()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Part)> {
        self.nodes.iter().zip(self.parts.iter())
    }
}

impl<'a> IntoIterator for &'a Parts {
    type Item = (&'a Arc<str>, &'a Part);
    type IntoIter = std::iter::Zip<std::slice::Iter<'a, Arc<str>>, std::slice::Iter<'a, Part>>;

    fn into_iter(self) -> Self::IntoIter {
        self.nodes.iter().zip(self.parts.iter())
    }
}

impl std::ops::Index<&str> for Parts {
    type Output = Part;

    fn index(&self, node: &str) -> &Part {
        // Callers index only names they know are targets (tests).
        self.get(node).expect("a part of this job")
    }
}

/// One submitted job.
#[derive(Debug)]
pub struct Job {
    pub id: Uuid,
    pub parent: Option<Uuid>,
    pub task: Task,
    /// The task SHA1 (raw: 20 bytes, not 40 of hex, in every retained job).
    pub sha1: [u8; 20],
    pub submitted_ms: u64,
    pub parts: Parts,
    /// Where its `Submitted` record is in the journal, once appended: a
    /// compaction copies it from there instead of encoding it again.
    pub record: Option<Span>,
    /// Who submitted it: an index into `Jobs::submitters` plus one, 0
    /// when unknown (two bytes: every retained job pays for it).
    by: u16,
}

impl Job {
    /// Has every node finished?
    pub fn is_done(&self) -> bool {
        self.parts.all_done()
    }

    /// Has any of its parts ended in (or is it at) `state`?
    pub fn has_state(&self, state: JobState) -> bool {
        self.parts.any_in(state)
    }

    /// When the last part finished (0 if none has).
    fn view_finished_ms(&self) -> u64 {
        self.parts
            .values()
            .filter_map(Part::finished_ms)
            .max()
            .unwrap_or(0)
    }

    /// The task SHA1, lower-case hex.
    pub fn sha1_hex(&self) -> String {
        self.sha1.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The summary listed by `manage --list-jobs`.
    pub fn view(&self) -> JobView {
        let mut states = BTreeMap::new();
        for p in self.parts.values() {
            *states.entry(p.state()).or_insert(0) += 1;
        }
        let finished_ms = if self.is_done() {
            self.parts.values().filter_map(Part::finished_ms).max()
        } else {
            None
        };
        JobView {
            id: self.id,
            parent: self.parent,
            name: self.task.options.name().map(str::to_owned),
            verb: self.task.verb(),
            args: self.task.args_masked(),
            task_sha1: self.sha1_hex(),
            submitted_ms: self.submitted_ms,
            finished_ms,
            changed: states
                .iter()
                .filter(|(s, _)| s.changed())
                .map(|(_, n)| n)
                .sum(),
            states,
            by: None,
        }
    }

    /// One node's part as the CLI sees it (a journaled part: its state and
    /// when it finished; see `detail`).
    pub fn part_view(&self, node: &str) -> Option<PartView> {
        Some(self.parts.get(node)?.view(self.id, node))
    }

    /// Everything about the job, and the records to read for the parts
    /// memory does not hold whole (index into `nodes`, where).
    pub fn detail(&self) -> (JobDetail, Vec<(usize, Span)>) {
        let mut reads = Vec::new();
        let mut nodes = Vec::new();
        for (name, part) in &self.parts {
            if let Some(span) = part.span() {
                reads.push((nodes.len(), span));
            }
            nodes.push(part.view(self.id, name));
        }
        let detail = JobDetail {
            job: self.view(),
            nodes,
        };
        (detail, reads)
    }
}

/// Every job, in submission order, and the jobs of each parent.
#[derive(Default)]
pub struct Jobs {
    /// Boxed: a hash table keeps spare slots, and a slot should cost a
    /// pointer, not a whole job.
    by_id: HashMap<Uuid, Box<Job>>,
    names: Names,
    /// Submission order. May hold ids already forgotten (`stale` of them):
    /// `remove` leaves them, so that forgetting jobs one by one (a restart
    /// replaying `Forgotten` records) is not quadratic; they go once they
    /// are half of it.
    order: Vec<Uuid>,
    stale: usize,
    by_parent: HashMap<Uuid, Vec<Uuid>>,
    /// Who submitted jobs: a few users and tokens, named once.
    submitters: Vec<Box<str>>,
}

/// Submitters named at most (past it, new ones are not recorded).
const MAX_SUBMITTERS: usize = u16::MAX as usize - 1;

impl Jobs {
    /// Note who submitted job `id`; false if it is not known (or the
    /// table of submitters is full).
    pub fn set_by(&mut self, id: &Uuid, by: &str) -> bool {
        let i = match self.submitters.iter().position(|s| &**s == by) {
            Some(i) => i,
            None if self.submitters.len() < MAX_SUBMITTERS => {
                self.submitters.push(by.into());
                self.submitters.len() - 1
            }
            None => return false,
        };
        match self.by_id.get_mut(id) {
            Some(job) => {
                job.by = i as u16 + 1;
                true
            }
            None => false,
        }
    }

    /// Who submitted `job`, if known.
    pub fn by(&self, job: &Job) -> Option<String> {
        let i = usize::from(job.by).checked_sub(1)?;
        self.submitters.get(i).map(|s| s.to_string())
    }

    /// Record a new job, queued on `targets`.
    pub fn insert(
        &mut self,
        task: Task,
        targets: &[String],
        parent: Option<Uuid>,
        now_ms: u64,
    ) -> &mut Job {
        self.insert_with_id(
            crate::support::hash::new_id(),
            task,
            targets,
            parent,
            now_ms,
        )
    }

    /// Record a job with a known id (restored from the history).
    pub fn insert_with_id(
        &mut self,
        id: Uuid,
        task: Task,
        targets: &[String],
        parent: Option<Uuid>,
        now_ms: u64,
    ) -> &mut Job {
        let sha1 = task.sha1_bytes();
        let parts = Parts::new(targets, &mut self.names);
        self.order.push(id);
        if let Some(p) = parent {
            self.by_parent.entry(p).or_default().push(id);
        }
        self.by_id.entry(id).or_insert_with(|| {
            Box::new(Job {
                id,
                parent,
                task,
                sha1,
                submitted_ms: now_ms,
                parts,
                record: None,
                by: 0,
            })
        })
    }

    pub fn get(&self, id: &Uuid) -> Option<&Job> {
        self.by_id.get(id).map(|j| &**j)
    }

    pub fn get_mut(&mut self, id: &Uuid) -> Option<&mut Job> {
        self.by_id.get_mut(id).map(|j| &mut **j)
    }

    /// Jobs in submission order.
    pub fn iter(&self) -> impl Iterator<Item = &Job> {
        self.order.iter().filter_map(|id| self.get(id))
    }

    /// The newest first.
    pub fn iter_rev(&self) -> impl Iterator<Item = &Job> {
        self.order.iter().rev().filter_map(|id| self.get(id))
    }

    /// The jobs of an orchestration run, in order.
    pub fn children(&self, parent: &Uuid) -> impl DoubleEndedIterator<Item = &Job> {
        self.by_parent
            .get(parent)
            .into_iter()
            .flatten()
            .filter_map(|id| self.get(id))
    }

    /// Forget one job.
    pub fn remove(&mut self, id: &Uuid) -> Option<Box<Job>> {
        let job = self.by_id.remove(id)?;
        self.stale += 1;
        if self.stale * 2 > self.order.len() {
            let by_id = &self.by_id;
            self.order.retain(|i| by_id.contains_key(i));
            self.stale = 0;
        }
        if let Some(p) = job.parent {
            if let Some(kids) = self.by_parent.get_mut(&p) {
                kids.retain(|i| i != id);
                if kids.is_empty() {
                    self.by_parent.remove(&p);
                }
            }
        }
        Some(job)
    }

    /// Retention: forget finished jobs older than `max_age_ms` (by when
    /// they finished) and, beyond the newest `max_count` finished ones, the
    /// oldest. A run's jobs go only once the whole run is finished. Returns
    /// the jobs forgotten.
    pub fn retain_recent(&mut self, now_ms: u64, max_age_ms: u64, max_count: usize) -> Vec<Uuid> {
        let busy_parents: HashSet<Uuid> = self
            .by_id
            .values()
            .filter(|j| !j.is_done())
            .filter_map(|j| j.parent)
            .collect();
        let finished: Vec<(Uuid, u64)> = self
            .iter()
            .filter(|j| j.is_done() && !j.parent.is_some_and(|p| busy_parents.contains(&p)))
            .map(|j| (j.id, j.view_finished_ms()))
            .collect();
        let excess = finished.len().saturating_sub(max_count);
        let gone: HashSet<Uuid> = finished
            .iter()
            .enumerate()
            .filter(|(i, (_, at))| *i < excess || now_ms.saturating_sub(*at) > max_age_ms)
            .map(|(_, (id, _))| *id)
            .collect();
        if gone.is_empty() {
            return Vec::new();
        }
        self.by_id.retain(|id, _| !gone.contains(id));
        let by_id = &self.by_id;
        self.order.retain(|id| by_id.contains_key(id));
        self.stale = 0;
        self.by_parent.retain(|_, kids| {
            kids.retain(|id| !gone.contains(id));
            !kids.is_empty()
        });
        self.names.sweep();
        gone.into_iter().collect()
    }

    /// Every job, in no order.
    pub fn jobs_mut(&mut self) -> impl Iterator<Item = &mut Job> {
        self.by_id.values_mut().map(|j| &mut **j)
    }

    /// How many records the jobs take in a compacted journal.
    pub fn live_records(&self) -> usize {
        self.by_id
            .values()
            .map(|j| {
                1 + j
                    .parts
                    .values()
                    .filter(|p| p.state().is_done() || p.sent_ms().is_some())
                    .count()
            })
            .sum()
    }

    /// Forget finished jobs; returns (removed, kept). A parent's jobs go
    /// together, once all of them are finished, so `--wait` on a run never
    /// sees half of it vanish.
    pub fn purge_done(&mut self) -> (usize, usize) {
        let before = self.by_id.len();
        let by_id = &self.by_id;
        let busy_parents: HashSet<Uuid> = by_id
            .values()
            .filter(|j| !j.is_done())
            .filter_map(|j| j.parent)
            .collect();
        self.by_id
            .retain(|_, j| !j.is_done() || j.parent.is_some_and(|p| busy_parents.contains(&p)));
        self.by_parent.retain(|p, _| busy_parents.contains(p));
        let by_id = &self.by_id;
        self.order.retain(|id| by_id.contains_key(id));
        self.stale = 0;
        self.names.sweep();
        (before - self.by_id.len(), self.by_id.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_forgotten_one_by_one_keep_the_order_of_the_rest() {
        let mut jobs = Jobs::default();
        let task = Task::parse(crate::dsl::Verb::Run, "true").unwrap();
        let parent = Uuid::new_v4();
        let ids: Vec<Uuid> = (0..10)
            .map(|i| jobs.insert(task.clone(), &["n".into()], Some(parent), i).id)
            .collect();
        for id in [ids[0], ids[3], ids[4], ids[7], ids[8], ids[9]] {
            assert!(jobs.remove(&id).is_some());
            assert!(jobs.remove(&id).is_none(), "forgotten once");
        }
        let left: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
        assert_eq!(left, [ids[1], ids[2], ids[5], ids[6]]);
        let kids: Vec<Uuid> = jobs.children(&parent).rev().map(|j| j.id).collect();
        assert_eq!(kids, [ids[6], ids[5], ids[2], ids[1]]);
        // Stale entries never leak into what is counted.
        assert!(
            jobs.order.len() < 2 * left.len() + 2,
            "{}",
            jobs.order.len()
        );
        let another = jobs.insert(task, &["n".into()], None, 11).id;
        let left: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
        assert_eq!(left.last(), Some(&another));
    }

    #[test]
    fn a_jobs_summary_of_states_follows_every_change_to_its_parts() {
        let mut jobs = Jobs::default();
        let task = Task::parse(crate::dsl::Verb::Run, "true").unwrap();
        let targets: Vec<String> = ["a", "b", "c"].map(String::from).into();
        let id = jobs.insert(task, &targets, None, 0).id;
        let states = |jobs: &Jobs| {
            let job = jobs.get(&id).unwrap();
            let all = [
                JobState::Queued,
                JobState::Sent,
                JobState::Running,
                JobState::Succeeded,
                JobState::Failed,
                JobState::Lost,
            ];
            // The summary says what a walk of the parts says.
            for s in all {
                assert_eq!(
                    job.has_state(s),
                    job.parts.values().any(|p| p.state() == s),
                    "{s:?}"
                );
            }
            assert_eq!(
                job.is_done(),
                job.parts.values().all(|p| p.state().is_done())
            );
            all.into_iter()
                .filter(|s| job.has_state(*s))
                .collect::<Vec<_>>()
        };
        assert_eq!(states(&jobs), [JobState::Queued]);
        let now = Instant::now();
        let outcome = |code| Outcome::ended(Exit::Code(code));
        // A loan per change, as the cluster takes them.
        let change = |jobs: &mut Jobs, node: &str, f: &dyn Fn(&mut Part)| {
            f(&mut jobs.get_mut(&id).unwrap().parts.get_mut(node).unwrap())
        };
        change(&mut jobs, "a", &|p| p.send(now, 1, None));
        assert_eq!(states(&jobs), [JobState::Queued, JobState::Sent]);
        change(&mut jobs, "a", &|p| p.start());
        change(&mut jobs, "b", &|p| p.send(now, 1, None));
        assert_eq!(
            states(&jobs),
            [JobState::Queued, JobState::Sent, JobState::Running]
        );
        change(&mut jobs, "a", &|p| p.finish(outcome(0), now, 2));
        change(&mut jobs, "b", &|p| p.finish(outcome(1), now, 2));
        change(&mut jobs, "c", &|p| p.end(Final::LOST, "gone".into(), 3));
        assert_eq!(
            states(&jobs),
            [JobState::Succeeded, JobState::Failed, JobState::Lost]
        );
        // A late result for the part reported lost replaces it.
        change(&mut jobs, "c", &|p| p.finish(outcome(0), now, 4));
        assert_eq!(states(&jobs), [JobState::Succeeded, JobState::Failed]);
        // Moving records in the journal changes no state.
        jobs.get_mut(&id).unwrap().parts.respan(Some);
        assert_eq!(states(&jobs), [JobState::Succeeded, JobState::Failed]);
    }

    #[test]
    fn a_journaled_part_keeps_24_bytes() {
        // Ten thousand retained jobs on six nodes: every byte here is paid
        // sixty thousand times (the soak benchmark measures the whole).
        assert!(
            std::mem::size_of::<Part>() <= 24,
            "{}",
            std::mem::size_of::<Part>()
        );
        let mut p = Part::Queued;
        p.send(Instant::now(), 1, None);
        p.end(Final::LOST, "gone".into(), 2);
        p.spill(Span { at: 7, len: 9 });
        assert_eq!(p.span(), Some(Span { at: 7, len: 9 }));
        assert_eq!(p.finished_ms(), Some(2));
        assert!(matches!(p, Part::Journaled { .. }));
        assert_eq!(p.state(), JobState::Lost);
    }
}
