//! Job records: each job's task and, per target node, where it stands and
//! what the node reported; and which jobs each orchestration run (parent)
//! holds. Pure data with conversions to the views the CLI sees; the cluster
//! core changes states.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use uuid::Uuid;

use super::history::{PartRecord, SentTo};
use crate::dsl::Task;
use crate::journal::Span;
use crate::wire::{Exit, JobDetail, JobState, JobView, Outcome, PartView};

/// One node's part of a job.
#[derive(Debug)]
pub struct Part {
    pub state: JobState,
    pub outcome: Option<Stored>,
    /// Why it was lost or skipped, for operators.
    pub message: Option<String>,
    pub sent_at: Option<Instant>,
    pub sent_ms: Option<u64>,
    /// Which client process it was sent to, in which dispatch (`None`:
    /// not sent, or sent by a server too old to say).
    pub sent_to: Option<Box<SentTo>>,
    pub rtt_secs: Option<f64>,
    pub finished_ms: Option<u64>,
}

/// A finished part's outcome: whole until its record is journaled, then a
/// summary and where the record is, so memory does not grow with outputs
/// (they are read back from the journal for `--job-info`).
#[derive(Debug)]
pub enum Stored {
    /// Boxed: while the part waits or runs there is none, and a summary is
    /// smaller than a whole outcome.
    Memory(Box<Outcome>),
    Disk {
        summary: Summary,
        span: Span,
    },
}

/// What memory keeps of an outcome.
#[derive(Clone, Debug)]
pub struct Summary {
    pub exit: Exit,
    pub stdout_dropped: u64,
    pub stderr_dropped: u64,
    pub exec_secs: f64,
}

impl Summary {
    fn of(o: &Outcome) -> Summary {
        Summary {
            exit: o.exit.clone(),
            stdout_dropped: o.stdout_dropped,
            stderr_dropped: o.stderr_dropped,
            exec_secs: o.exec_secs,
        }
    }
}

impl Stored {
    fn summary(&self) -> Summary {
        match self {
            Stored::Memory(o) => Summary::of(o),
            Stored::Disk { summary, .. } => summary.clone(),
        }
    }
}

impl Part {
    /// The part as the history keeps it, if its outcome is in memory
    /// (otherwise its record is where `span` says).
    pub fn record(&self) -> Result<PartRecord, Span> {
        let outcome = match &self.outcome {
            Some(Stored::Disk { span, .. }) => return Err(*span),
            Some(Stored::Memory(o)) => Some((**o).clone()),
            None => None,
        };
        Ok(PartRecord {
            state: self.state,
            outcome,
            message: self.message.clone(),
            sent_ms: self.sent_ms,
            rtt_secs: self.rtt_secs,
            finished_ms: self.finished_ms,
        })
    }

    /// Where the outcome's record is, if it is on disk.
    pub fn span(&self) -> Option<Span> {
        match &self.outcome {
            Some(Stored::Disk { span, .. }) => Some(*span),
            _ => None,
        }
    }

    /// The outcome's record is at `span` now (first written, or moved by
    /// a compaction): keep only its summary.
    pub fn spill(&mut self, span: Span) {
        if let Some(o) = &self.outcome {
            let summary = o.summary();
            self.outcome = Some(Stored::Disk { summary, span });
        }
    }

    /// A part restored from its record at `span` in the history.
    pub fn restore(&mut self, r: PartRecord, span: Span) {
        self.state = r.state;
        self.outcome = r.outcome.map(|o| Stored::Disk {
            summary: Summary::of(&o),
            span,
        });
        self.message = r.message;
        self.sent_ms = r.sent_ms;
        self.rtt_secs = r.rtt_secs;
        self.finished_ms = r.finished_ms;
    }

    /// Back to queued: the send did not reach the node.
    pub fn unsend(&mut self) {
        self.state = JobState::Queued;
        self.sent_at = None;
        self.sent_ms = None;
        self.sent_to = None;
    }

    fn queued() -> Part {
        Part {
            state: JobState::Queued,
            outcome: None,
            message: None,
            sent_at: None,
            sent_ms: None,
            sent_to: None,
            rtt_secs: None,
            finished_ms: None,
        }
    }
}

/// Node names, each kept once however many jobs name it (a fleet's
/// names are few; jobs are many).
#[derive(Debug, Default)]
pub struct Names(std::collections::HashSet<Arc<str>>);

impl Names {
    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.0.get(name) {
            return Arc::clone(n);
        }
        let n: Arc<str> = Arc::from(name);
        self.0.insert(Arc::clone(&n));
        n
    }
}

/// A job's parts by node name. A sorted boxed slice, not a map: a B-tree
/// leaf reserves room for 11 parts whatever the job has, and ten thousand
/// retained jobs would pay for it.
/// Node names are shared by every job's parts (`Names`), not copied.
#[derive(Debug, Default)]
pub struct Parts(Box<[(Arc<str>, Part)]>);

impl Parts {
    fn new(targets: &[String], names: &mut Names) -> Parts {
        let mut v: Vec<(Arc<str>, Part)> = targets
            .iter()
            .map(|t| (names.intern(t), Part::queued()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.dedup_by(|a, b| a.0 == b.0);
        Parts(v.into_boxed_slice())
    }

    fn find(&self, node: &str) -> Option<usize> {
        self.0.binary_search_by(|(n, _)| (**n).cmp(node)).ok()
    }

    pub fn get(&self, node: &str) -> Option<&Part> {
        self.find(node).map(|i| &self.0[i].1)
    }

    pub fn get_mut(&mut self, node: &str) -> Option<&mut Part> {
        self.find(node).map(|i| &mut self.0[i].1)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Part> {
        self.0.iter_mut().map(|(_, p)| p)
    }

    /// The part at `i` in node order.
    pub fn nth_mut(&mut self, i: usize) -> Option<&mut Part> {
        self.0.get_mut(i).map(|(_, p)| p)
    }

    /// Node names, in order.
    pub fn keys(&self) -> impl Iterator<Item = &Arc<str>> {
        self.0.iter().map(|(n, _)| n)
    }

    pub fn values(&self) -> impl Iterator<Item = &Part> {
        self.0.iter().map(|(_, p)| p)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Part)> {
        self.0.iter().map(|(n, p)| (n, p))
    }
}

impl<'a> IntoIterator for &'a Parts {
    type Item = (&'a Arc<str>, &'a Part);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (Arc<str>, Part)>,
        fn(&'a (Arc<str>, Part)) -> (&'a Arc<str>, &'a Part),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(n, p)| (n, p))
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
    pub sha1: String,
    pub submitted_ms: u64,
    pub parts: Parts,
}

impl Job {
    /// Has every node finished?
    pub fn is_done(&self) -> bool {
        self.parts.values().all(|p| p.state.is_done())
    }

    /// When the last part finished (0 if none has).
    fn view_finished_ms(&self) -> u64 {
        self.parts
            .values()
            .filter_map(|p| p.finished_ms)
            .max()
            .unwrap_or(0)
    }

    /// The summary listed by `manage --list-jobs`.
    pub fn view(&self) -> JobView {
        let mut states = BTreeMap::new();
        for p in self.parts.values() {
            *states.entry(p.state).or_insert(0) += 1;
        }
        let finished_ms = if self.is_done() {
            self.parts.values().filter_map(|p| p.finished_ms).max()
        } else {
            None
        };
        JobView {
            id: self.id,
            parent: self.parent,
            verb: self.task.verb(),
            args: self.task.args(),
            task_sha1: self.sha1.clone(),
            submitted_ms: self.submitted_ms,
            finished_ms,
            states,
        }
    }

    /// One node's part as the CLI sees it.
    pub fn part_view(&self, node: &str) -> Option<PartView> {
        let p = self.parts.get(node)?;
        let summary = p.outcome.as_ref().map(Stored::summary);
        let exit = summary.as_ref().map(|o| &o.exit);
        let (exit_code, signal) = match exit {
            Some(Exit::Code(c)) => (Some(*c), None),
            Some(Exit::Signal(s)) => (None, Some(*s)),
            _ => (None, None),
        };
        let message = match exit {
            Some(e @ (Exit::Error(_) | Exit::TimedOut { .. })) => Some(e.to_string()),
            _ => p.message.clone(),
        };
        let memory = match &p.outcome {
            Some(Stored::Memory(o)) => Some(o),
            _ => None,
        };
        let text = |b: Option<&Vec<u8>>| {
            b.map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        Some(PartView {
            job_id: self.id,
            node: node.to_owned(),
            state: p.state,
            exit_code,
            signal,
            message,
            stdout: text(memory.map(|o| &o.stdout)),
            stderr: text(memory.map(|o| &o.stderr)),
            stdout_dropped: summary.as_ref().map_or(0, |o| o.stdout_dropped),
            stderr_dropped: summary.as_ref().map_or(0, |o| o.stderr_dropped),
            exec_secs: summary.as_ref().map(|o| o.exec_secs),
            rtt_secs: p.rtt_secs,
            sent_ms: p.sent_ms,
            finished_ms: p.finished_ms,
        })
    }

    /// Everything about the job, and the records to read for the outputs
    /// memory does not hold (index into `nodes`, where).
    pub fn detail(&self) -> (JobDetail, Vec<(usize, Span)>) {
        let mut reads = Vec::new();
        let mut nodes = Vec::new();
        for (name, part) in &self.parts {
            if let Some(Stored::Disk { span, .. }) = &part.outcome {
                reads.push((nodes.len(), *span));
            }
            nodes.extend(self.part_view(name));
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
    by_id: HashMap<Uuid, Job>,
    names: Names,
    order: Vec<Uuid>,
    by_parent: HashMap<Uuid, Vec<Uuid>>,
}

impl Jobs {
    /// Record a new job, queued on `targets`.
    pub fn insert(
        &mut self,
        task: Task,
        targets: &[String],
        parent: Option<Uuid>,
        now_ms: u64,
    ) -> &mut Job {
        self.insert_with_id(Uuid::new_v4(), task, targets, parent, now_ms)
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
        let sha1 = task.sha1();
        let parts = Parts::new(targets, &mut self.names);
        self.order.push(id);
        if let Some(p) = parent {
            self.by_parent.entry(p).or_default().push(id);
        }
        self.by_id.entry(id).or_insert(Job {
            id,
            parent,
            task,
            sha1,
            submitted_ms: now_ms,
            parts,
        })
    }

    pub fn get(&self, id: &Uuid) -> Option<&Job> {
        self.by_id.get(id)
    }

    pub fn get_mut(&mut self, id: &Uuid) -> Option<&mut Job> {
        self.by_id.get_mut(id)
    }

    /// Jobs in submission order.
    pub fn iter(&self) -> impl Iterator<Item = &Job> {
        self.order.iter().filter_map(|id| self.by_id.get(id))
    }

    /// The jobs of an orchestration run, in order.
    pub fn children(&self, parent: &Uuid) -> impl Iterator<Item = &Job> {
        self.by_parent
            .get(parent)
            .into_iter()
            .flatten()
            .filter_map(|id| self.by_id.get(id))
    }

    /// Forget one job.
    pub fn remove(&mut self, id: &Uuid) -> Option<Job> {
        let job = self.by_id.remove(id)?;
        self.order.retain(|i| i != id);
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
        let busy_parents: std::collections::HashSet<Uuid> = self
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
        let gone: std::collections::HashSet<Uuid> = finished
            .iter()
            .enumerate()
            .filter(|(i, (_, at))| *i < excess || now_ms.saturating_sub(*at) > max_age_ms)
            .map(|(_, (id, _))| *id)
            .collect();
        if gone.is_empty() {
            return Vec::new();
        }
        self.by_id.retain(|id, _| !gone.contains(id));
        self.order.retain(|id| !gone.contains(id));
        self.by_parent.retain(|_, kids| {
            kids.retain(|id| !gone.contains(id));
            !kids.is_empty()
        });
        gone.into_iter().collect()
    }

    /// Every part of every job.
    pub fn parts_mut(&mut self) -> impl Iterator<Item = &mut Part> {
        self.by_id.values_mut().flat_map(|j| j.parts.values_mut())
    }

    /// How many records the jobs take in a compacted journal.
    pub fn live_records(&self) -> usize {
        self.by_id
            .values()
            .map(|j| {
                1 + j
                    .parts
                    .values()
                    .filter(|p| p.state.is_done() || p.sent_ms.is_some())
                    .count()
            })
            .sum()
    }

    /// Forget finished jobs; returns (removed, kept). A parent's jobs go
    /// together, once all of them are finished, so `--wait` on a run never
    /// sees half of it vanish.
    pub fn purge_done(&mut self) -> (usize, usize) {
        let before = self.order.len();
        let by_id = &self.by_id;
        let busy_parents: std::collections::HashSet<Uuid> = by_id
            .values()
            .filter(|j| !j.is_done())
            .filter_map(|j| j.parent)
            .collect();
        self.by_id
            .retain(|_, j| !j.is_done() || j.parent.is_some_and(|p| busy_parents.contains(&p)));
        self.by_parent.retain(|p, _| busy_parents.contains(p));
        let by_id = &self.by_id;
        self.order.retain(|id| by_id.contains_key(id));
        (before - self.order.len(), self.order.len())
    }
}
