//! What the journal keeps: records of the state, retention, purges and
//! where finished outputs live on disk.

use super::*;

impl Cluster {
    /// The whole history as journal items, one at a time, for rewriting
    /// the journal: a job's submission and its finished parts, whose
    /// records are on disk, are copied from there (`respan` tells them
    /// where to once the new layout is known). A compacted journal is then
    /// one run of records after another, and the next compaction copies it
    /// in a few pieces.
    pub fn snapshot(&self) -> impl Iterator<Item = Item<Record>> + '_ {
        let nodes = self.nodes.iter().flat_map(|n| {
            let offline = (!n.is_online()).then(|| {
                Item::New(Record::NodeOffline {
                    name: n.name.clone(),
                })
            });
            std::iter::once(Item::New(Self::node_record(n))).chain(offline)
        });
        let rollouts = self
            .rollouts
            .iter()
            .map(|(parent, r)| Item::New(Self::rollout_record(*parent, r)));
        nodes
            .chain(rollouts)
            .chain(self.jobs.iter().flat_map(|job| {
                let submitted = match job.record {
                    Some(span) => Item::Copy(span),
                    None => Item::New(self.submitted_record(job)),
                };
                let parts = job.parts.iter().filter_map(|(node, part)| {
                    if part.state().is_done() {
                        Some(match part.record() {
                            Ok(part) => Item::New(Record::Done {
                                id: job.id,
                                node: node.to_string(),
                                part,
                            }),
                            Err(span) => Item::Copy(span),
                        })
                    } else {
                        let sent_ms = part.sent_ms()?;
                        let rec = match part.sent_to() {
                            Some(to) => Record::Dispatched {
                                id: job.id,
                                node: node.to_string(),
                                sent_ms,
                                to,
                            },
                            None => Record::Sent {
                                id: job.id,
                                node: node.to_string(),
                                sent_ms,
                            },
                        };
                        Some(Item::New(rec))
                    }
                });
                let offline = self
                    .queued_offline
                    .contains(&job.id)
                    .then_some(Item::New(Record::QueueOffline { id: job.id }));
                let by = self
                    .jobs
                    .by(job)
                    .map(|by| Item::New(Record::SubmittedBy { id: job.id, by }));
                std::iter::once(submitted)
                    .chain(by)
                    .chain(offline)
                    .chain(parts)
            }))
    }

    /// A finished part's record is at `span` in the journal: memory keeps
    /// only its summary from now on.
    pub fn spilled(&mut self, id: &Uuid, node: &str, span: Span) {
        if let Some(mut p) = self.jobs.get_mut(id).and_then(|j| j.parts.get_mut(node)) {
            p.spill(span);
        }
    }

    /// Every record memory knows the place of (a job's submission, a
    /// finished part) moves to where `to` says (a compaction moved it, or
    /// was given up); one `to` has no place for stays.
    pub fn respan(&mut self, mut to: impl FnMut(Span) -> Option<Span>) {
        for job in self.jobs.jobs_mut() {
            if let Some(span) = job.record.and_then(&mut to) {
                job.record = Some(span);
            }
            job.parts.respan(&mut to);
        }
    }

    /// A job's `Submitted` record is at `span` in the journal.
    pub fn submission_at(&mut self, id: &Uuid, span: Span) {
        if let Some(job) = self.jobs.get_mut(id) {
            job.record = Some(span);
        }
    }

    pub(super) fn rollout_record(parent: Uuid, r: &Rollout) -> Record {
        let (batches, max_fail) = (r.batches.clone(), r.max_fail.map(|m| m as u32));
        match r.from {
            0 => Record::Rollout {
                parent,
                batches,
                max_fail,
            },
            from => Record::RolloutFrom {
                parent,
                batches,
                max_fail,
                from: from as u32,
            },
        }
    }

    pub(super) fn node_record(n: &crate::server::nodes::Node) -> Record {
        Record::Node {
            name: n.name.clone(),
            version: n.version.clone(),
            last_seen_ms: n.last_seen_ms,
            facts: n.about.facts.clone(),
            labels: n.about.labels.clone(),
        }
    }

    pub(super) fn submitted_record(&self, job: &crate::server::jobs::Job) -> Record {
        Record::Submitted {
            id: job.id,
            parent: job.parent,
            task: job.task.clone(),
            targets: job.parts.keys().map(|k| k.to_string()).collect(),
            submitted_ms: job.submitted_ms,
        }
    }

    /// The `Submitted` record of a job.
    pub fn submitted(&self, id: &Uuid) -> Option<Record> {
        self.jobs.get(id).map(|j| self.submitted_record(j))
    }

    /// The `Done` record of a finished part.
    pub fn done_record(&self, id: &Uuid, node: &str) -> Option<Record> {
        let part = self.jobs.get(id)?.parts.get(node)?;
        Some(Record::Done {
            id: *id,
            node: node.to_owned(),
            part: part.record().ok()?,
        })
    }

    /// Retention (see `Jobs::retain_recent`); each job forgotten has a
    /// `Forgotten` record to journal.
    pub fn retain_recent(
        &mut self,
        now_ms: u64,
        max_age: Duration,
        max_count: usize,
        out: &mut Vec<Effect>,
    ) -> usize {
        let gone = self
            .jobs
            .retain_recent(now_ms, max_age.as_millis() as u64, max_count);
        let n = gone.len();
        out.extend(
            gone.into_iter()
                .map(|id| Effect::Journal(Record::Forgotten { id })),
        );
        self.forget_done_rollouts();
        n
    }

    /// A rolling run whose jobs are all forgotten is over.
    pub(super) fn forget_done_rollouts(&mut self) {
        let jobs = &self.jobs;
        self.rollouts
            .retain(|parent, _| jobs.children(parent).next().is_some());
    }

    /// How many records a compacted journal would hold.
    pub fn live_records(&self) -> usize {
        let offline = self.nodes.iter().filter(|n| !n.is_online()).count();
        self.jobs.live_records() + self.rollouts.len() + self.nodes.iter().count() + offline
    }

    /// Forget finished jobs: (purged, kept).
    pub fn purge_jobs(&mut self) -> (usize, usize) {
        let counts = self.jobs.purge_done();
        self.forget_done_rollouts();
        counts
    }

    /// Forget offline nodes with no work: (purged, kept). Their records
    /// say so, for restarts.
    pub fn purge_nodes(&mut self, out: &mut Vec<Effect>) -> (usize, usize) {
        let (gone, kept) = self.nodes.purge_offline();
        let n = gone.len();
        out.extend(
            gone.into_iter()
                .map(|name| Effect::Journal(Record::NodeForgotten { name })),
        );
        (n, kept)
    }
}
