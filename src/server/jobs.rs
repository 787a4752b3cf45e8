//! Job records: each job's task and, per target node, where it stands and
//! what the node reported; and which jobs each orchestration run (parent)
//! holds. Pure data with conversions to the views the CLI sees; the cluster
//! core changes states.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use uuid::Uuid;

use super::history::{PartRecord, SentTo};
use crate::dsl::Task;
use crate::wire::{Exit, JobDetail, JobState, JobView, Outcome, PartView};

/// One node's part of a job.
#[derive(Debug)]
pub struct Part {
    pub state: JobState,
    pub outcome: Option<Outcome>,
    /// Why it was lost or skipped, for operators.
    pub message: Option<String>,
    pub sent_at: Option<Instant>,
    pub sent_ms: Option<u64>,
    /// Which client process it was sent to, in which dispatch (`None`:
    /// not sent, or sent by a server too old to say).
    pub sent_to: Option<SentTo>,
    pub rtt_secs: Option<f64>,
    pub finished_ms: Option<u64>,
}

impl Part {
    /// The part as the history keeps it.
    pub fn record(&self) -> PartRecord {
        PartRecord {
            state: self.state,
            outcome: self.outcome.clone(),
            message: self.message.clone(),
            sent_ms: self.sent_ms,
            rtt_secs: self.rtt_secs,
            finished_ms: self.finished_ms,
        }
    }

    /// A part restored from the history.
    pub fn restore(&mut self, r: PartRecord) {
        self.state = r.state;
        self.outcome = r.outcome;
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

/// One submitted job.
#[derive(Debug)]
pub struct Job {
    pub id: Uuid,
    pub parent: Option<Uuid>,
    pub task: Task,
    pub sha1: String,
    pub submitted_ms: u64,
    pub parts: BTreeMap<String, Part>,
}

impl Job {
    /// Has every node finished?
    pub fn is_done(&self) -> bool {
        self.parts.values().all(|p| p.state.is_done())
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
        let exit = p.outcome.as_ref().map(|o| &o.exit);
        let (exit_code, signal) = match exit {
            Some(Exit::Code(c)) => (Some(*c), None),
            Some(Exit::Signal(s)) => (None, Some(*s)),
            _ => (None, None),
        };
        let message = match exit {
            Some(e @ (Exit::Error(_) | Exit::TimedOut { .. })) => Some(e.to_string()),
            _ => p.message.clone(),
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
            stdout: text(p.outcome.as_ref().map(|o| &o.stdout)),
            stderr: text(p.outcome.as_ref().map(|o| &o.stderr)),
            stdout_dropped: p.outcome.as_ref().map_or(0, |o| o.stdout_dropped),
            stderr_dropped: p.outcome.as_ref().map_or(0, |o| o.stderr_dropped),
            exec_secs: p.outcome.as_ref().map(|o| o.exec_secs),
            rtt_secs: p.rtt_secs,
            sent_ms: p.sent_ms,
            finished_ms: p.finished_ms,
        })
    }

    /// Everything about the job.
    pub fn detail(&self) -> JobDetail {
        JobDetail {
            job: self.view(),
            nodes: self
                .parts
                .keys()
                .filter_map(|n| self.part_view(n))
                .collect(),
        }
    }
}

/// Every job, in submission order, and the jobs of each parent.
#[derive(Default)]
pub struct Jobs {
    by_id: HashMap<Uuid, Job>,
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
        let parts = targets
            .iter()
            .map(|t| (t.clone(), Part::queued()))
            .collect();
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
