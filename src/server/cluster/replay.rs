//! The cluster rebuilt from the history after a restart.

use super::*;

/// A cluster being rebuilt from the history, one record at a time, at a
/// time given (restored nodes' deadlines start from it).
pub struct Restore(Cluster, Instant);

impl Restore {
    pub fn new(at: Instant) -> Restore {
        Restore(Cluster::default(), at)
    }

    fn part(&mut self, id: &Uuid, node: &str) -> Option<crate::server::jobs::PartMut<'_>> {
        self.0.jobs.get_mut(id).and_then(|j| j.parts.get_mut(node))
    }

    /// Apply what the journal gave for one record: the record, or a
    /// finished part's head (its outcome stays on disk).
    pub fn replay_lazy(&mut self, rec: crate::journal::Lazy<Record, DoneHead>, span: Span) {
        match rec {
            crate::journal::Lazy::Whole(rec) => self.replay(rec, span),
            crate::journal::Lazy::Head(h) => {
                if let Some(mut p) = self.part(&h.id, &h.node) {
                    p.restore(h.state, h.finished_ms, h.sent_ms, span);
                }
            }
        }
    }

    /// Apply one record, in journal order.
    pub fn replay(&mut self, rec: Record, span: Span) {
        match rec {
            Record::Submitted {
                id,
                parent,
                task,
                targets,
                submitted_ms,
            } => {
                self.0
                    .jobs
                    .insert_with_id(id, task, &targets, parent, submitted_ms)
                    .record = Some(span);
            }
            Record::Sent { id, node, sent_ms } => {
                if let Some(mut p) = self.part(&id, &node) {
                    p.restore_sent(sent_ms, None);
                }
            }
            Record::Dispatched {
                id,
                node,
                sent_ms,
                to,
            } => {
                if let Some(mut p) = self.part(&id, &node) {
                    p.restore_sent(sent_ms, Some(to));
                }
            }
            Record::Unsent { id, node } => {
                if let Some(mut p) = self.part(&id, &node) {
                    p.unsend();
                }
            }
            Record::Done { id, node, part } => {
                if let Some(mut p) = self.part(&id, &node) {
                    p.restore(part.state, part.finished_ms, part.sent_ms, span);
                }
            }
            Record::Forgotten { id } => {
                self.0.jobs.remove(&id);
            }
            Record::Node {
                name,
                version,
                last_seen_ms,
                facts,
                labels,
            } => {
                // Expected back (`finish`), unless its record says it
                // went offline.
                let (n, _) =
                    self.0
                        .nodes
                        .upsert(&name, Duration::from_secs(60), self.1, last_seen_ms);
                n.version = version;
                n.about = crate::facts::Node { facts, labels };
                n.link = Link::Stale;
            }
            Record::NodeOffline { name } => {
                if let Some(n) = self.0.nodes.get_mut(&name) {
                    n.link = Link::Offline;
                }
            }
            Record::NodeForgotten { name } => {
                self.0.nodes.remove(&name);
            }
            Record::Rollout {
                parent,
                batches,
                max_fail,
            } => {
                let max_fail = max_fail.map(|m| m as usize);
                self.0
                    .rollouts
                    .insert(parent, Rollout::new(batches, max_fail));
            }
            Record::RolloutFrom {
                parent,
                batches,
                max_fail,
                from,
            } => {
                let mut r = Rollout::new(batches, max_fail.map(|m| m as usize));
                r.from = from as usize;
                self.0.rollouts.insert(parent, r);
            }
            Record::SubmittedBy { id, by } => {
                self.0.jobs.set_by(&id, &by);
            }
            Record::QueueOffline { id } => {
                if self.0.jobs.get(&id).is_some() {
                    self.0.queued_offline.insert(id);
                }
            }
        }
    }

    /// The cluster, with nodes that have unfinished work expected back:
    /// they expire after 3 × `ivl` unless they say `Ready`, which also
    /// tells which sent jobs they still have.
    pub fn finish(self, ivl: Duration, now: Now) -> Cluster {
        let mut c = self.0;
        // Nodes that were online are expected back within 3 intervals.
        for n in c.nodes.iter_mut().filter(|n| n.is_online()) {
            n.ivl = ivl;
            n.touch(now.at, now.ms);
        }
        c.forget_done_rollouts();
        // A rolling run goes on from its first batch with work left.
        let parents: Vec<Uuid> = c.rollouts.keys().copied().collect();
        for parent in parents {
            let ids: Vec<Uuid> = c.jobs.children(&parent).map(|j| j.id).collect();
            let Some(r) = c.rollouts.get_mut(&parent) else {
                continue;
            };
            r.cover(ids.into_iter());
            let r = &*r;
            let parts: Vec<(String, JobState)> = c
                .jobs
                .children(&parent)
                .filter(|j| r.applies(&j.id))
                .flat_map(|j| j.parts.iter().map(|(n, p)| (n.to_string(), p.state())))
                .collect();
            let Some(r) = c.rollouts.get_mut(&parent) else {
                continue;
            };
            for (node, state) in &parts {
                r.count_failure(node, *state);
            }
            r.current = (0..r.batches.len())
                .find(|&b| {
                    parts
                        .iter()
                        .any(|(n, s)| !s.is_done() && r.batch_of(n) == Some(b))
                })
                .unwrap_or(r.batches.len());
            let current = r.current;
            r.left = parts
                .iter()
                .filter(|(n, s)| !s.is_done() && r.batch_of(n) == Some(current))
                .count();
        }
        let mut pending: Vec<(Uuid, String, JobState)> = Vec::new();
        for job in c.jobs.iter() {
            let rollout = job.parent.and_then(|p| c.rollouts.get(&p));
            for (node, part) in &job.parts {
                // Parts of later batches wait for theirs.
                if !part.state().is_done() && !rollout.is_some_and(|r| r.holds_part(&job.id, node))
                {
                    pending.push((job.id, node.to_string(), part.state()));
                }
            }
        }
        for (id, node, state) in pending {
            let waits = state == JobState::Queued
                && c.queued_offline.contains(&id)
                && c.nodes.get(&node).is_some_and(|n| !n.is_online());
            if waits {
                // `--queue-offline`, for a node still offline: it waits on,
                // up to what is left of the job's timeout.
                let Some(job) = c.jobs.get(&id) else { continue };
                let ends_ms = job.submitted_ms + job.task.options.timeout_secs * 1000;
                let left = Duration::from_millis(ends_ms.saturating_sub(now.ms));
                c.offline_waits.push((now.at + left, id, node.clone()));
                if let Some(n) = c.nodes.get_mut(&node) {
                    n.queue.push_back(id);
                }
                continue;
            }
            let (n, _) = c.nodes.upsert(&node, ivl, now.at, now.ms);
            // Nothing goes out until the node says Ready again.
            n.link = Link::Stale;
            match state {
                JobState::Queued => n.queue.push_back(id),
                _ => n.in_flight.push_back(id),
            }
            if let Some(mut p) = c.jobs.get_mut(&id).and_then(|j| j.parts.get_mut(&node)) {
                // In flight again: a restart cannot know if it started.
                p.restart();
            }
        }
        c
    }
}
