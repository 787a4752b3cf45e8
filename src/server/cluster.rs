//! The server's sans-io core: nodes, jobs, and the rules between them.
//! Inputs are what nodes and users said, with `now`; outputs are `Effect`s the
//! loop turns into sends and notifications. No sockets here, so every rule is
//! unit-tested with a made-up clock.
//!
//! Rules:
//! - per node, jobs are sent in submission order with at most `WINDOW` in
//!   flight; a job is sent again only to the same client process, and only
//!   once that process has shown it never received it (see `ready`);
//! - a node that expires, or comes back as a new process without a job the
//!   old one was sent, has that job's part reported lost;
//! - in an orchestration run (a parent), a job that fails on a node ends the
//!   run there: its later jobs on that node are skipped (those already sent
//!   are skipped by the node itself, which knows the parent too);
//! - targets are checked before anything is queued: one unknown name refuses
//!   the whole submission.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::history::{DoneHead, Record, SentTo};
use super::jobs::{Jobs, SKIPPED_AFTER_FAILURE};
use super::nodes::{Link, Node, Nodes, LIVENESS};
use super::query::{Delivery, Queries};
use super::rollout::Rollout;
use crate::dsl::{Action, SourceFile, Task};
use crate::journal::{Item, Span};
use crate::wire::{
    Block, Dispatch, JobDetail, JobState, JobView, Lane, NodeState, NodeView, Outcome, PartView,
    Plan, PlannedJob, Rolling, RunDetail, RunView, ServerMsg, Submitted, QUERY_VALUE_CAP,
};

/// Jobs a node holds at once: one running, one waiting so the next starts
/// without a round trip.
pub const WINDOW: usize = 2;

pub use crate::clock::Now;

/// What the loop must do after a change.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Send on the job port to `node`.
    Send { node: String, msg: ServerMsg },
    /// Send one message (encoded once) on the job port to each of `nodes`.
    Broadcast { nodes: Vec<String>, msg: ServerMsg },
    /// Append to the history; whatever depends on it waits for its sync.
    Journal(Record),
    /// A node's part of a job reached a final state.
    PartDone { job_id: Uuid, node: String },
    /// Every node's part of a job is final.
    JobDone { job_id: Uuid },
    /// Every job of an orchestration run is final.
    ParentDone { parent_id: Uuid },
}

/// What a node says when it (re)registers.
#[derive(Clone, Copy, Debug)]
pub struct Greeting<'a> {
    pub version: &'a str,
    pub ivl: Duration,
    /// Which client process speaks (random per client start).
    pub instance: u64,
    /// The last dispatch that process received from any server.
    pub seen: Option<Dispatch>,
    /// The jobs it has: queued, running, or with a result not yet acked.
    pub holding: &'a [Uuid],
    /// Its facts and labels.
    pub about: &'a crate::facts::Node,
}

/// Nodes and jobs, owned by the server loop.
pub struct Cluster {
    nodes: Nodes,
    jobs: Jobs,
    /// Rolling runs (`--batch`), by parent.
    rollouts: HashMap<Uuid, Rollout>,
    /// Rolling runs whose current batch just ended: `roll_on` starts the
    /// next.
    roll_due: Vec<Uuid>,
    /// Jobs submitted with `--queue-offline`, until released.
    wait_offline: HashSet<Uuid>,
    /// Parts queued for an offline node, and when they give up (their
    /// job's timeout).
    offline_waits: Vec<(Instant, Uuid, String)>,
    /// Unfinished jobs submitted with `--queue-offline` (journaled, so
    /// that their waits outlive a restart).
    queued_offline: HashSet<Uuid>,
    /// This server instance, in every dispatch.
    instance: u64,
    /// The last dispatch sequence number used.
    seq: u64,
    /// QUERY jobs collecting their nodes' values.
    queries: Queries,
    /// Unfinished jobs someone follows (`--follow`): sent `live`, so their
    /// nodes send output as it comes.
    live: HashSet<Uuid>,
    /// Unfinished jobs of `async` blocks, and their lanes. Not journaled:
    /// after a restart they go one at a time, as other jobs do.
    lanes: HashMap<Uuid, Lane>,
}

impl Default for Cluster {
    fn default() -> Cluster {
        Cluster {
            nodes: Nodes::default(),
            jobs: Jobs::default(),
            rollouts: HashMap::new(),
            roll_due: Vec::new(),
            wait_offline: HashSet::new(),
            offline_waits: Vec::new(),
            queued_offline: HashSet::new(),
            instance: Uuid::new_v4().as_u64_pair().0,
            seq: 0,
            queries: Queries::default(),
            live: HashSet::new(),
            lanes: HashMap::new(),
        }
    }
}

/// Where in `n`'s queue the next job to send is, if one may go now: the
/// head while fewer than `WINDOW` jobs are in flight; and, when the head
/// belongs to an `async` group, each lane of that group gets its own
/// `WINDOW` (up to `LANES` lanes), so that the node can run them side by
/// side. Jobs after the group wait until all of it has gone, so that a
/// node, which orders what it runs by arrival, never starts them early.
fn next_to_send(n: &Node, lanes: &HashMap<Uuid, Lane>) -> Option<usize> {
    let head = *n.queue.front()?;
    let Some(lane) = lanes.get(&head) else {
        return (n.in_flight.len() < WINDOW).then_some(0);
    };
    // Scanning is bounded: a group's lanes begin within this many queued
    // jobs, or wait their turn.
    const SCAN: usize = 1024;
    let mut per_lane: HashMap<u32, usize> = HashMap::new();
    // What is out from before the group runs first on the node anyway.
    for id in &n.in_flight {
        if let Some(l) = lanes
            .get(id)
            .filter(|l| l.parent == lane.parent && l.group == lane.group)
        {
            *per_lane.entry(l.block).or_default() += 1;
        }
    }
    let mut seen: Vec<u32> = Vec::new();
    for (i, id) in n.queue.iter().enumerate().take(SCAN) {
        let Some(l) = lanes
            .get(id)
            .filter(|l| l.parent == lane.parent && l.group == lane.group)
        else {
            return None; // the group has all gone: what follows waits
        };
        if seen.contains(&l.block) {
            continue; // an earlier job of this lane is waiting
        }
        seen.push(l.block);
        let busy = per_lane.get(&l.block).copied().unwrap_or(0);
        let lanes_out = per_lane.values().filter(|n| **n > 0).count();
        if busy < WINDOW && (busy > 0 || lanes_out < crate::wire::LANES) {
            return Some(i);
        }
    }
    None
}

impl Cluster {
    /// Rebuild from the history after a restart (see `Restore`).
    #[cfg(test)]
    pub fn restore(records: Vec<Record>, ivl: Duration, now: Now) -> Cluster {
        let mut r = Restore::new(now.at);
        for rec in records {
            r.replay(rec, Span { at: 0, len: 0 });
        }
        r.finish(ivl, now)
    }

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
                std::iter::once(submitted).chain(offline).chain(parts)
            }))
    }

    /// A finished part's record is at `span` in the journal: memory keeps
    /// only its summary from now on.
    pub fn spilled(&mut self, id: &Uuid, node: &str, span: Span) {
        if let Some(p) = self.jobs.get_mut(id).and_then(|j| j.parts.get_mut(node)) {
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
            for p in job.parts.values_mut() {
                if let Some(span) = p.span().and_then(&mut to) {
                    p.spill(span);
                }
            }
        }
    }

    /// A job's `Submitted` record is at `span` in the journal.
    pub fn submission_at(&mut self, id: &Uuid, span: Span) {
        if let Some(job) = self.jobs.get_mut(id) {
            job.record = Some(span);
        }
    }

    fn rollout_record(parent: Uuid, r: &Rollout) -> Record {
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

    fn node_record(n: &super::nodes::Node) -> Record {
        Record::Node {
            name: n.name.clone(),
            version: n.version.clone(),
            last_seen_ms: n.last_seen_ms,
            facts: n.about.facts.clone(),
            labels: n.about.labels.clone(),
        }
    }

    fn submitted_record(&self, job: &super::jobs::Job) -> Record {
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

    /// The server listens from `now`: the nodes expected back (restored
    /// online) have their whole expiry from here, however long the
    /// restore, the compaction and the key derivation took before it.
    pub fn listening(&mut self, now: Now) {
        for n in self.nodes.iter_mut().filter(|n| n.is_online()) {
            n.touch(now.at, now.ms);
        }
    }

    /// A heartbeat from `node`: the answer to send back.
    pub fn heartbeat(&mut self, node: &str, ivl: Duration, now: Now) -> ServerMsg {
        match self.nodes.get_mut(node) {
            Some(n) if n.link == Link::Ready => {
                n.ivl = ivl;
                n.touch(now.at, now.ms);
                ServerMsg::HeartbeatAck {
                    expires_in_ms: (ivl * LIVENESS).as_millis() as u64,
                }
            }
            Some(n) => {
                n.touch(now.at, now.ms);
                ServerMsg::Register
            }
            // Unknown (we restarted, or it expired): have it say Ready.
            None => ServerMsg::Register,
        }
    }

    /// Any other valid message from a known node proves it alive.
    pub fn touch(&mut self, node: &str, now: Now) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.touch(now.at, now.ms);
        }
    }

    /// `Ready` from a node's job socket. Returns whether the node is new.
    ///
    /// The jobs sent to the node that it does not hold: if they went to
    /// another client process, that process may have run them, and they are
    /// lost. If they went to this very process, it never received them (it
    /// keeps every job until its result is acked): those that can no longer
    /// arrive (sent by an earlier server, or before a dispatch it has seen)
    /// are sent again; later ones may still be on the wire, since a `Ready`
    /// can cross jobs, and stay in flight.
    pub fn ready(&mut self, node: &str, hello: Greeting, now: Now, out: &mut Vec<Effect>) -> bool {
        // A set: a node may list thousands, and the queue may be long.
        let holding: HashSet<Uuid> = hello.holding.iter().copied().collect();
        let (n, created) = self.nodes.upsert(node, hello.ivl, now.at, now.ms);
        // Known across restarts: its record whenever it is new or changed,
        // or comes back from offline.
        let changed = created
            || !n.is_online()
            || n.version != hello.version
            || n.about.facts != hello.about.facts
            || n.about.labels != hello.about.labels;
        n.version = hello.version.to_owned();
        n.about = hello.about.clone();
        if changed {
            out.push(Effect::Journal(Self::node_record(n)));
        }
        n.link = Link::Ready;
        n.instance = Some(hello.instance);
        let mut vanished = Vec::new();
        let mut undelivered = Vec::new();
        for id in n.in_flight.iter().filter(|id| !holding.contains(id)) {
            let part = self.jobs.get(id).and_then(|j| j.parts.get(node));
            match part.and_then(|p| p.sent_to()) {
                Some(to) if to.client == hello.instance => {
                    let d = to.dispatch;
                    let on_the_wire = d.server == self.instance
                        && !hello
                            .seen
                            .is_some_and(|s| s.server == d.server && s.seq >= d.seq);
                    if !on_the_wire {
                        undelivered.push(*id);
                    }
                }
                _ => vanished.push(*id),
            }
        }
        n.in_flight
            .retain(|id| !vanished.contains(id) && !undelivered.contains(id));
        for id in undelivered.iter().rev() {
            n.queue.push_front(*id);
        }
        for id in undelivered {
            log::info!("node={node}: job {id} never reached the node; sending it again");
            if let Some(p) = self.jobs.get_mut(&id).and_then(|j| j.parts.get_mut(node)) {
                p.unsend();
            }
            out.push(Effect::Journal(Record::Unsent {
                id,
                node: node.to_owned(),
            }));
        }
        let Some(n) = self.nodes.get_mut(node) else {
            return created;
        };
        // What we think is queued but the node has was sent before a restart
        // whose dispatch record did not reach the disk: never send it twice.
        let held: Vec<Uuid> = n
            .queue
            .iter()
            .filter(|id| holding.contains(id))
            .copied()
            .collect();
        let jobs = &self.jobs;
        let waiting = |id: &Uuid| {
            jobs.get(id)
                .and_then(|j| j.parts.get(node))
                .is_some_and(|p| p.state() == JobState::Queued)
        };
        let held: Vec<Uuid> = held.into_iter().filter(|id| waiting(id)).collect();
        n.queue.retain(|id| !holding.contains(id));
        for id in held {
            n.in_flight.push_back(id);
            if let Some(p) = self.jobs.get_mut(&id).and_then(|j| j.parts.get_mut(node)) {
                p.held_by_node();
            }
        }
        for job_id in vanished {
            let why =
                "the client restarted while this job was in flight; it may or may not have run";
            self.finish_lost(&job_id, node, why, now.ms, out);
        }
        self.dispatch(node, now, out);
        self.roll_on(now, out);
        created
    }

    /// The job's process started on the node.
    pub fn started(&mut self, node: &str, job_id: &Uuid) {
        if let Some(p) = self
            .jobs
            .get_mut(job_id)
            .and_then(|j| j.parts.get_mut(node))
        {
            p.start();
        }
    }

    /// A node reported a job's outcome. Always acknowledged, so the node
    /// stops resending it, even when we cannot place it. Returns why it was
    /// dropped, if it was: a node can send any id, so the caller logs that
    /// with its per-peer limit.
    pub fn finished(
        &mut self,
        node: &str,
        job_id: Uuid,
        outcome: Outcome,
        now: Now,
        out: &mut Vec<Effect>,
    ) -> Option<String> {
        let dropped = self.take_result(node, job_id, outcome, now, out);
        self.roll_on(now, out);
        // Last: the ack is held until everything recorded before it (the
        // result's own record) is durable.
        out.push(Effect::Send {
            node: node.to_owned(),
            msg: ServerMsg::ResultAck { job_id },
        });
        dropped
    }

    fn take_result(
        &mut self,
        node: &str,
        job_id: Uuid,
        outcome: Outcome,
        now: Now,
        out: &mut Vec<Effect>,
    ) -> Option<String> {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return Some(format!("result for unknown job {job_id} (purged, or sent before a server restart); dropped"));
        };
        let parent = job.parent;
        let Some(part) = job.parts.get_mut(node) else {
            return Some(format!(
                "result for job {job_id}, which was not sent to it; dropped"
            ));
        };
        let state = outcome.exit.state();
        match part.state() {
            JobState::Lost => {
                // It came back after all: keep the truth, but the waiters
                // were already told it was lost.
                log::warn!(
                    "node={node}: late result for job {job_id}, which was reported lost; recorded"
                );
                part.finish(outcome, now.at, now.ms);
                out.extend(self.done_record(&job_id, node).map(Effect::Journal));
                return None;
            }
            s if s.is_done() => return None, // a resend of a result we have
            _ => {}
        }
        let was = part.state();
        part.finish(outcome, now.at, now.ms);
        if let Some(n) = self.nodes.get_mut(node) {
            // The window is small and the job near its front: no walk of
            // the node's queue, which may hold thousands, per result.
            if let Some(i) = n.in_flight.iter().position(|id| *id == job_id) {
                n.in_flight.remove(i);
            }
            #[cfg(test)]
            let undone =
                crate::sim::mutation::active(crate::sim::mutation::Mutation::BeforeExactlyOnce);
            #[cfg(not(test))]
            let undone = false;
            // Queued too: after a restart that lost its dispatch record, a
            // node may report a job the server thought it never sent.
            if was == JobState::Queued && !undone {
                n.queue.retain(|id| *id != job_id);
            }
        }
        self.part_done(job_id, node, out);
        if let (false, Some(parent)) = (state.is_ok(), parent) {
            self.skip_rest_of_parent(node, parent, now.ms, out);
        }
        self.dispatch(node, now, out);
        None
    }

    /// `node` reports its value for the QUERY job it runs; the map goes out
    /// once every target answered or ended. Returns why it was dropped, if
    /// it was, for the caller's per-peer log.
    pub fn query_value(
        &mut self,
        node: &str,
        job_id: Uuid,
        value: Option<String>,
        out: &mut Vec<Effect>,
    ) -> Option<String> {
        let Some(job) = self.jobs.get(&job_id) else {
            return Some(format!("QUERY value for unknown job {job_id}; dropped"));
        };
        if !matches!(job.task.action, Action::Query { .. }) {
            return Some(format!(
                "QUERY value for job {job_id}, not a QUERY; dropped"
            ));
        }
        if job.parts.get(node).is_none() {
            return Some(format!(
                "QUERY value for job {job_id}, which was not sent to it; dropped"
            ));
        }
        if value.as_ref().is_some_and(|v| v.len() > QUERY_VALUE_CAP) {
            return Some(format!(
                "QUERY value for job {job_id} over {QUERY_VALUE_CAP} bytes; dropped"
            ));
        }
        match self.queries.answer(job_id, node, value) {
            Some(late) => self.deliver(job_id, late, out),
            None => self.query_check(&job_id, out),
        }
        None
    }

    /// Has every target of a collecting QUERY answered or ended? Then the
    /// map goes to those that wait for it.
    fn query_check(&mut self, job_id: &Uuid, out: &mut Vec<Effect>) {
        if !self.queries.collecting(job_id) {
            return;
        }
        let Some(job) = self.jobs.get(job_id) else {
            return;
        };
        let unsettled = job
            .parts
            .iter()
            .filter(|(_, p)| !p.state().is_done())
            .map(|(n, _)| &**n);
        if let Some(d) = self.queries.complete(job_id, unsettled) {
            self.deliver(*job_id, d, out);
        }
    }

    fn deliver(&self, job_id: Uuid, d: Delivery, out: &mut Vec<Effect>) {
        log::info!(
            "job {job_id}: QUERY map of {} to {}",
            crate::dsl::count(d.values.len(), "value"),
            crate::dsl::count(d.nodes.len(), "node")
        );
        out.push(Effect::Broadcast {
            nodes: d.nodes,
            msg: ServerMsg::QueryResult {
                job_id,
                values: d.values,
            },
        });
    }

    /// A job could not be routed to the node: put it back at the front of
    /// its queue and wait for the node's next `Ready`.
    pub fn unroutable(&mut self, node: &str, job_id: Uuid) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        n.link = Link::Stale;
        if let Some(pos) = n.in_flight.iter().position(|id| *id == job_id) {
            n.in_flight.remove(pos);
            n.queue.push_front(job_id);
            if let Some(p) = self
                .jobs
                .get_mut(&job_id)
                .and_then(|j| j.parts.get_mut(node))
            {
                p.unsend();
            }
        }
    }

    /// Nodes silent past their expiry go offline: what was sent to them is
    /// lost, what waited for them is unreachable. Returns their names.
    pub fn expire(&mut self, now: Now, out: &mut Vec<Effect>) -> Vec<String> {
        self.give_up_waits(now, out);
        let names = self.nodes.expire_due(now.at);
        for name in &names {
            out.push(Effect::Journal(Record::NodeOffline { name: name.clone() }));
            let Some(n) = self.nodes.get_mut(name) else {
                continue;
            };
            let why = format!(
                "node expired: no heartbeat for {:.1}s",
                (n.ivl * LIVENESS).as_secs_f64()
            );
            let in_flight: Vec<Uuid> = n.in_flight.drain(..).collect();
            let queued: Vec<Uuid> = n.queue.drain(..).collect();
            for job_id in &in_flight {
                self.finish_lost(job_id, name, &why, now.ms, out);
            }
            let why = format!("the node went offline before the job was sent ({why})");
            for job_id in &queued {
                self.finish_unreachable(job_id, name, &why, now.ms, out);
            }
        }
        self.roll_on(now, out);
        names
    }

    /// A part that never reached its node, which is offline.
    fn finish_unreachable(
        &mut self,
        job_id: &Uuid,
        node: &str,
        why: &str,
        now_ms: u64,
        out: &mut Vec<Effect>,
    ) {
        self.end_part(job_id, node, JobState::Unreachable, why, now_ms, out);
    }

    /// Why a job cannot reach `node` now, if it is offline.
    fn offline_since(&self, node: &str) -> Option<String> {
        let n = self.nodes.get(node).filter(|n| !n.is_online())?;
        Some(format!(
            "the node is offline (last heard from {})",
            crate::clock::format_utc(n.last_seen_ms)
        ))
    }

    /// Take a node out of the cluster at an operator's word (its key was
    /// rejected or deleted): its unfinished parts are lost, with `why`.
    /// Returns whether it was there.
    pub fn drop_node(&mut self, name: &str, why: &str, now: Now, out: &mut Vec<Effect>) -> bool {
        let Some(node) = self.nodes.remove(name) else {
            return false;
        };
        out.push(Effect::Journal(Record::NodeForgotten {
            name: name.to_owned(),
        }));
        for job_id in node.in_flight.iter().chain(node.queue.iter()) {
            self.finish_lost(job_id, name, why, now.ms, out);
        }
        self.roll_on(now, out);
        true
    }

    /// When the next node expires, or a part waiting for an offline node
    /// gives up, if any.
    pub fn next_expiry(&self) -> Option<Instant> {
        let waits = self.offline_waits.iter().map(|(at, ..)| *at).min();
        match (self.nodes.next_expiry(), waits) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Jobs just submitted with `--follow`: their nodes send their output
    /// as it comes (until the job is done).
    pub fn follow(&mut self, ids: &[Uuid]) {
        self.live.extend(ids.iter().copied());
    }

    /// Jobs already going that someone follows from now on: their nodes
    /// are told, and those sent later go `live`.
    pub fn follow_going(&mut self, ids: &[Uuid], out: &mut Vec<Effect>) {
        for id in ids {
            let Some(job) = self.jobs.get(id) else {
                continue;
            };
            if !self.live.insert(*id) {
                continue; // followed already: its nodes know
            }
            for (node, part) in &job.parts {
                if matches!(part.state(), JobState::Sent | JobState::Running) {
                    out.push(Effect::Send {
                        node: node.to_string(),
                        msg: ServerMsg::Follow { job_id: *id },
                    });
                }
            }
        }
    }

    /// Jobs just submitted with `--queue-offline`: their parts for offline
    /// nodes wait for them (up to each job's timeout) when released, and
    /// after a restart.
    pub fn queue_offline(&mut self, ids: &[Uuid], out: &mut Vec<Effect>) {
        for id in ids {
            self.wait_offline.insert(*id);
            self.queued_offline.insert(*id);
            out.push(Effect::Journal(Record::QueueOffline { id: *id }));
        }
    }

    /// Parts that waited for an offline node past their timeout end
    /// unreachable.
    fn give_up_waits(&mut self, now: Now, out: &mut Vec<Effect>) {
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.offline_waits)
            .into_iter()
            .partition(|(at, ..)| *at <= now.at);
        self.offline_waits = keep;
        for (_, id, node) in due {
            let offline = self.nodes.get(&node).is_some_and(|n| !n.is_online());
            if !offline {
                continue; // it came back: the job went, or goes, as usual
            }
            if let Some(n) = self.nodes.get_mut(&node) {
                n.queue.retain(|q| *q != id);
            }
            let secs = self
                .jobs
                .get(&id)
                .map_or(0, |j| j.task.options.timeout_secs);
            let why = format!("the node stayed offline for the job's whole --timeout ({secs}s)");
            self.finish_unreachable(&id, &node, &why, now.ms, out);
        }
    }

    /// The nodes a job goes to: those `targets` match (every node when
    /// empty) less those `exclude` matches (`targets` module); one of them
    /// (the least busy) for `--run-once`.
    fn resolve(
        &self,
        task: &Task,
        targets: &[String],
        exclude: &[String],
    ) -> Result<crate::targets::Resolved, String> {
        let nodes = self.nodes.iter().map(|n| crate::targets::Candidate {
            name: n.name.as_str(),
            about: &n.about,
            online: n.is_online(),
        });
        let mut resolved = crate::targets::resolve(nodes, targets, exclude)?;
        let targets = &mut resolved.targets;
        if task.options.run_once {
            let load = |t: &String| {
                self.nodes
                    .get(t)
                    .map_or(usize::MAX, |n| n.queue.len() + n.in_flight.len())
            };
            if let Some(pick) = targets.iter().min_by_key(|t| load(t)).cloned() {
                *targets = vec![pick];
            }
        }
        Ok(resolved)
    }

    /// Record one job (its `Submitted` record is an effect), not yet queued
    /// on its nodes: it goes out once `release`d, after the record is
    /// durable.
    fn queue_job(
        &mut self,
        task: Task,
        targets: &[String],
        parent: Option<Uuid>,
        now: Now,
        out: &mut Vec<Effect>,
    ) -> Submitted {
        let job = self.jobs.insert(task, targets, parent, now.ms);
        let submitted = Submitted {
            job_id: job.id,
            task_sha1: job.sha1_hex(),
            targets: targets.to_vec(),
            offline: Vec::new(),
        };
        if let Some(rec) = self.submitted(&submitted.job_id) {
            out.push(Effect::Journal(rec));
        }
        submitted
    }

    /// Queue recorded jobs on their nodes, in order, and send what can go
    /// now. A node that left in between has its part reported lost.
    pub fn release(&mut self, ids: &[Uuid], now: Now, out: &mut Vec<Effect>) {
        let mut touched = Vec::new();
        for id in ids {
            let Some(job) = self.jobs.get(id) else {
                continue;
            };
            let rollout = job.parent.and_then(|p| self.rollouts.get(&p));
            let nodes: Vec<String> = job
                .parts
                .keys()
                .filter(|k| !rollout.is_some_and(|r| r.holds_part(id, k)))
                .map(|k| k.to_string())
                .collect();
            let timeout = Duration::from_secs(job.task.options.timeout_secs);
            let wait = self.wait_offline.remove(id);
            for node in nodes {
                if let Some(why) = self.offline_since(&node) {
                    if wait {
                        // `--queue-offline`: it goes when the node is back,
                        // or ends unreachable at its timeout.
                        if let Some(n) = self.nodes.get_mut(&node) {
                            n.queue.push_back(*id);
                        }
                        self.offline_waits
                            .push((now.at + timeout, *id, node.clone()));
                    } else {
                        self.finish_unreachable(id, &node, &why, now.ms, out);
                    }
                    continue;
                }
                match self.nodes.get_mut(&node) {
                    Some(n) => {
                        n.queue.push_back(*id);
                        if !touched.contains(&node) {
                            touched.push(node);
                        }
                    }
                    None => self.finish_lost(
                        id,
                        &node,
                        "the node left the cluster before the job was queued",
                        now.ms,
                        out,
                    ),
                }
            }
        }
        for node in touched {
            self.dispatch(&node, now, out);
        }
        self.roll_on(now, out);
    }

    /// Start the next batch of each rolling run whose batch ended (or, past
    /// `--max-fail`, end the rest of the run as never started).
    fn roll_on(&mut self, now: Now, out: &mut Vec<Effect>) {
        while let Some(parent) = self.roll_due.pop() {
            self.next_batch(parent, now, out);
        }
    }

    fn next_batch(&mut self, parent: Uuid, now: Now, out: &mut Vec<Effect>) {
        let Some(rollout) = self.rollouts.get(&parent) else {
            return;
        };
        let ids: Vec<Uuid> = self
            .jobs
            .children(&parent)
            .map(|j| j.id)
            .filter(|id| rollout.applies(id))
            .collect();
        loop {
            let Some(r) = self.rollouts.get_mut(&parent) else {
                return;
            };
            if r.left > 0 || r.current >= r.batches.len() {
                return;
            }
            r.current += 1;
            let Some(nodes) = r.batches.get(r.current).cloned() else {
                return;
            };
            if r.too_many_failed() {
                let why = r.never_started();
                let never: Vec<String> = r.batches[r.current..].concat();
                r.current = r.batches.len();
                log::warn!(
                    "orchestration {parent}: {why}; never started on {}",
                    never.join(", ")
                );
                for id in &ids {
                    for node in &never {
                        self.end_part(id, node, JobState::Skipped, &why, now.ms, out);
                    }
                }
                return;
            }
            let open: Vec<(Uuid, String)> = ids
                .iter()
                .flat_map(|id| nodes.iter().map(move |n| (*id, n.clone())))
                .filter(|(id, n)| {
                    self.jobs
                        .get(id)
                        .and_then(|j| j.parts.get(n))
                        .is_some_and(|p| !p.state().is_done())
                })
                .collect();
            r.left = open.len();
            log::info!(
                "orchestration {parent}: batch {} of {} starts: {}",
                r.current + 1,
                r.batches.len(),
                nodes.join(", ")
            );
            for (id, node) in open {
                if let Some(why) = self.offline_since(&node) {
                    self.finish_unreachable(&id, &node, &why, now.ms, out);
                    continue;
                }
                match self.nodes.get_mut(&node) {
                    Some(n) => n.queue.push_back(id),
                    None => self.finish_lost(
                        &id,
                        &node,
                        "the node left the cluster before its batch started",
                        now.ms,
                        out,
                    ),
                }
            }
            for node in &nodes {
                self.dispatch(node, now, out);
            }
        }
    }

    /// Drop recorded jobs that were never released: their submission failed.
    pub fn forget(&mut self, ids: &[Uuid]) {
        for id in ids {
            self.jobs.remove(id);
            self.wait_offline.remove(id);
            self.queued_offline.remove(id);
            self.live.remove(id);
        }
        self.forget_done_rollouts();
    }

    /// Queue a job on the nodes `targets` match (every node when empty),
    /// less those `exclude` matches.
    pub fn submit(
        &mut self,
        task: Task,
        targets: &[String],
        exclude: &[String],
        now: Now,
        out: &mut Vec<Effect>,
    ) -> Result<Submitted, String> {
        let resolved = self.resolve(&task, targets, exclude)?;
        let mut submitted = self.queue_job(task, &resolved.targets, None, now, out);
        submitted.offline = resolved.offline;
        Ok(submitted)
    }

    /// Check an orchestration and, unless `dry_run`, queue all of it under
    /// one new parent; `exclude` applies to every block. With `rolling`,
    /// its nodes (in name order) go batch by batch. Nothing is queued if
    /// any block is refused.
    pub fn orchestrate(
        &mut self,
        blocks: Vec<Block>,
        exclude: &[String],
        rolling: Option<Rolling>,
        dry_run: bool,
        now: Now,
        out: &mut Vec<Effect>,
    ) -> Result<Plan, String> {
        let mut planned = Vec::new();
        let mut offline = Vec::new();
        for (i, block) in blocks.iter().enumerate() {
            for (j, task) in block.tasks.iter().enumerate() {
                let resolved = self
                    .resolve(task, block.job_targets(j), exclude)
                    .map_err(|e| format!("{}: {e}", block.label(i)))?;
                offline.extend(resolved.offline);
                planned.push((i, resolved.targets, task.clone()));
            }
        }
        offline.sort();
        offline.dedup();
        if planned.is_empty() {
            return Err("the orchestration has no jobs".into());
        }
        crate::orchestrate::check_handlers(&blocks)?;
        // What rolls: the whole run (`--batch`), or one block's `batch:`
        // and the blocks after it.
        let rolling_blocks: Vec<(usize, Rolling)> = blocks
            .iter()
            .enumerate()
            .filter_map(|(i, b)| Some((i, b.rolling?)))
            .collect();
        let (rolling, from_block) = match (rolling, rolling_blocks.as_slice()) {
            (Some(_), [(i, _), ..]) => {
                return Err(format!(
                    "{}: batch cannot be combined with --batch, which rolls the whole run",
                    blocks[*i].label(*i)
                ))
            }
            (_, [_, (i, _), ..]) => {
                return Err(format!(
                    "{}: only one block of a run may have batch (the blocks after it roll with it)",
                    blocks[*i].label(*i)
                ))
            }
            (None, [(i, r)]) => (Some(*r), *i),
            (r, _) => (r, 0),
        };
        // A QUERY waits for every target; later batches wait for it.
        if rolling.is_some() {
            if let Some((i, _, _)) = planned
                .iter()
                .find(|(i, _, t)| *i >= from_block && matches!(t.action, Action::Query { .. }))
            {
                return Err(format!(
                    "{}: QUERY needs every target at once, and --batch holds some back: run the QUERY in an orchestration of its own first",
                    blocks[*i].label(*i)
                ));
            }
        }
        let from = planned
            .iter()
            .take_while(|(i, _, _)| *i < from_block)
            .count();
        let parent_id = (!dry_run).then(Uuid::new_v4);
        let batches = match rolling {
            Some(rolling) => {
                let mut nodes: Vec<String> = planned[from..]
                    .iter()
                    .flat_map(|(_, t, _)| t.iter().cloned())
                    .collect();
                nodes.sort();
                nodes.dedup();
                let (batches, max_fail) = Rollout::plan(&nodes, rolling);
                if let Some(parent) = parent_id {
                    let mut r = Rollout::new(batches.clone(), max_fail);
                    r.from = from;
                    // Before the jobs: a restart must hold their later
                    // batches back too.
                    out.push(Effect::Journal(Self::rollout_record(parent, &r)));
                    self.rollouts.insert(parent, r);
                }
                batches
            }
            None => Vec::new(),
        };
        let mut jobs = Vec::with_capacity(planned.len());
        // Handlers: each `onchanges` name becomes the id of its job.
        let mut named: HashMap<String, Uuid> = HashMap::new();
        // Consecutive async blocks form a group whose blocks run beside
        // each other on a node. Not in a rolling part of the run, whose
        // batches hold jobs back.
        let mut group_of: Vec<Option<u32>> = Vec::with_capacity(blocks.len());
        let mut group = 0u32;
        for (i, b) in blocks.iter().enumerate() {
            let rolls = rolling.is_some() && i >= from_block;
            if b.concurrent && !rolls {
                if i == 0 || group_of[i - 1].is_none() {
                    group += 1;
                }
                group_of.push(Some(group));
            } else {
                group_of.push(None);
            }
        }
        for (block, targets, mut task) in planned {
            let (verb, args, task_sha1) = (task.verb(), task.args_masked(), task.sha1());
            if let Some(h) = task.options.handler.as_mut() {
                h.triggers = h
                    .onchanges
                    .iter()
                    .filter_map(|n| named.get(n).copied())
                    .collect();
            }
            let name = task.options.name().map(str::to_owned);
            let job_id =
                parent_id.map(|p| self.queue_job(task, &targets, Some(p), now, out).job_id);
            if let (Some(id), Some(parent), Some(group)) = (job_id, parent_id, group_of[block]) {
                self.lanes.insert(
                    id,
                    Lane {
                        parent,
                        group,
                        block: block as u32,
                    },
                );
            }
            if let (Some(n), Some(id)) = (&name, job_id) {
                named.insert(n.clone(), id);
            }
            jobs.push(PlannedJob {
                job_id,
                block,
                targets,
                verb,
                args,
                task_sha1,
                name,
                block_name: blocks[block].name.clone(),
            });
        }
        if let Some(r) = parent_id.and_then(|p| self.rollouts.get_mut(&p)) {
            r.cover(jobs.iter().filter_map(|j| j.job_id));
            let first = r.batches.first().cloned().unwrap_or_default();
            r.left = jobs[r.from..]
                .iter()
                .map(|j| j.targets.iter().filter(|t| first.contains(t)).count())
                .sum();
        }
        Ok(Plan {
            parent_id,
            jobs,
            batches,
            offline,
        })
    }

    fn dispatch(&mut self, node: &str, now: Now, out: &mut Vec<Effect>) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        while n.link == Link::Ready {
            let Some(at) = next_to_send(n, &self.lanes) else {
                break;
            };
            let Some(job_id) = n.queue.remove(at) else {
                break;
            };
            let Some(job) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            let Some(part) = job.parts.get_mut(node) else {
                continue;
            };
            // Only what waits is sent: a part that ended (or went out)
            // while its id sat in the queue is never sent again.
            #[cfg(test)]
            let undone =
                crate::sim::mutation::active(crate::sim::mutation::Mutation::BeforeExactlyOnce);
            #[cfg(not(test))]
            let undone = false;
            if part.state() != JobState::Queued && !undone {
                log::debug!(
                    "node={node}: job {job_id} is {} here; not sent",
                    part.state().name()
                );
                continue;
            }
            self.seq += 1;
            let dispatch = Dispatch {
                server: self.instance,
                seq: self.seq,
            };
            // A node sends nothing before its Ready, which names its process.
            let to = n.instance.map(|client| SentTo { client, dispatch });
            part.send(now.at, now.ms, to);
            n.in_flight.push_back(job_id);
            if let Some(to) = to {
                out.push(Effect::Journal(Record::Dispatched {
                    id: job_id,
                    node: node.to_owned(),
                    sent_ms: now.ms,
                    to,
                }));
            }
            let msg = ServerMsg::Job {
                job_id,
                parent: job.parent,
                task: job.task.clone(),
                dispatch,
                live: self.live.contains(&job_id),
                instance: n.instance.unwrap_or(0),
                lane: self.lanes.get(&job_id).copied(),
            };
            out.push(Effect::Send {
                node: node.to_owned(),
                msg,
            });
        }
        // No bound to check here: after a restart a node may hold more
        // than the window (results not yet acked), and they count as in
        // flight until reported.
    }

    /// After a failure in run `parent` on `node`, skip its jobs still queued
    /// there.
    fn skip_rest_of_parent(
        &mut self,
        node: &str,
        parent: Uuid,
        now_ms: u64,
        out: &mut Vec<Effect>,
    ) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        let jobs = &mut self.jobs;
        let mut skipped = Vec::new();
        n.queue.retain(|id| {
            let Some(job) = jobs.get_mut(id).filter(|j| j.parent == Some(parent)) else {
                return true;
            };
            if let Some(part) = job.parts.get_mut(node) {
                part.end(JobState::Skipped, SKIPPED_AFTER_FAILURE.into(), now_ms);
            }
            skipped.push(*id);
            false
        });
        for id in skipped {
            self.part_done(id, node, out);
        }
    }

    fn finish_lost(
        &mut self,
        job_id: &Uuid,
        node: &str,
        why: &str,
        now_ms: u64,
        out: &mut Vec<Effect>,
    ) {
        if !self.end_part(job_id, node, JobState::Lost, why, now_ms, out) {
            return;
        }
        log::warn!("node={node}: job {job_id} lost: {why}");
        if let Some(parent) = self.jobs.get(job_id).and_then(|j| j.parent) {
            self.skip_rest_of_parent(node, parent, now_ms, out);
        }
    }

    /// End `node`'s part of `job_id` in `state` with `why`, unless it is
    /// unknown or already final; true if it ended here.
    fn end_part(
        &mut self,
        job_id: &Uuid,
        node: &str,
        state: JobState,
        why: &str,
        now_ms: u64,
        out: &mut Vec<Effect>,
    ) -> bool {
        let Some(part) = self
            .jobs
            .get_mut(job_id)
            .and_then(|j| j.parts.get_mut(node))
            .filter(|p| !p.state().is_done())
        else {
            return false;
        };
        part.end(state, why.to_owned(), now_ms);
        self.part_done(*job_id, node, out);
        true
    }

    fn part_done(&mut self, job_id: Uuid, node: &str, out: &mut Vec<Effect>) {
        let rolling = self.jobs.get(&job_id).and_then(|j| {
            let p = j.parent?;
            Some((p, j.parts.get(node)?.state()))
        });
        if let Some((parent, state)) = rolling {
            if let Some(r) = self
                .rollouts
                .get_mut(&parent)
                .filter(|r| r.applies(&job_id))
            {
                if r.part_done(node, state) {
                    self.roll_due.push(parent);
                }
            }
        }
        out.extend(self.done_record(&job_id, node).map(Effect::Journal));
        out.push(Effect::PartDone {
            job_id,
            node: node.to_owned(),
        });
        let Some(job) = self.jobs.get(&job_id).filter(|j| j.is_done()) else {
            // A part that ended without answering may complete a QUERY.
            self.query_check(&job_id, out);
            return;
        };
        self.queries.end(&job_id);
        self.queued_offline.remove(&job_id);
        self.live.remove(&job_id);
        self.lanes.remove(&job_id);
        out.push(Effect::JobDone { job_id });
        if let Some(parent_id) = job.parent {
            // From the back: jobs mostly end in order, so the run's last
            // one answers at once whether the run is done (not a walk of
            // the whole run per job).
            if self.jobs.children(&parent_id).rev().all(|j| j.is_done()) {
                out.push(Effect::ParentDone { parent_id });
            }
        }
    }

    /// File `file` of job `job_id`, if `node` may fetch it now: the job is an
    /// ADD, sent to this node, and not finished there.
    pub fn source_for(&self, node: &str, job_id: &Uuid, file: u32) -> Result<SourceFile, String> {
        let job = self.jobs.get(job_id).ok_or("no such job")?;
        let part = job.parts.get(node).ok_or("the job is not for this node")?;
        if !matches!(part.state(), JobState::Sent | JobState::Running) {
            return Err(format!(
                "the job is {} on this node, not running",
                part.state().name()
            ));
        }
        let Action::Add(add) = &job.task.action else {
            return Err("the job sends no files".into());
        };
        add.files
            .get(file as usize)
            .cloned()
            .ok_or_else(|| format!("the job has no file number {file}"))
    }

    pub fn list_nodes(&self) -> Vec<NodeView> {
        self.nodes.iter().map(Self::node_view).collect()
    }

    /// One node, with its cache: ARG values only with `show_values`.
    pub fn node_info(&self, name: &str, show_values: bool) -> Result<NodeView, String> {
        let Some(n) = self.nodes.get(name) else {
            let known: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
            return Err(format!(
                "unknown node '{name}' (known nodes: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ));
        };
        let mut view = Self::node_view(n);
        view.cache = n.cache.as_deref().cloned().map(|mut c| {
            if !show_values {
                c.args.values_mut().for_each(|v| *v = None);
            }
            c
        });
        Ok(view)
    }

    /// A node reported what its cache holds.
    pub fn cache_summary(&mut self, node: &str, summary: crate::wire::CacheSummary) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.cache = Some(Box::new(summary.bounded()));
        }
    }

    fn node_view(n: &super::nodes::Node) -> NodeView {
        NodeView {
            name: n.name.clone(),
            state: match (n.link, n.instance) {
                (Link::Offline, _) => NodeState::Offline,
                // Restored from the history, not yet back.
                (Link::Stale, None) => NodeState::Reconnecting,
                _ => NodeState::Online,
            },
            version: n.version.clone(),
            last_heartbeat_ms: n.last_seen_ms,
            expires_ms: n.expires_ms(),
            queued: n.queue.len() as u32,
            in_flight: n.in_flight.len() as u32,
            labels: n.about.labels.clone(),
            facts: n.about.facts.clone(),
            cache: None,
        }
    }

    pub fn list_jobs(&self) -> Vec<JobView> {
        self.jobs.iter().map(|j| j.view()).collect()
    }

    /// Put the values the views hide back (`--show-values`).
    pub fn show_values(&self, view: &mut JobView) {
        if let Some(j) = self.jobs.get(&view.id) {
            view.args = j.task.args();
        }
    }

    /// Everything about a job, and which outputs to read from the journal.
    pub fn job_info(&self, id: &Uuid) -> Option<(JobDetail, Vec<(usize, Span)>)> {
        self.jobs.get(id).map(|j| j.detail())
    }

    pub fn job_view(&self, id: &Uuid) -> Option<JobView> {
        self.jobs.get(id).map(|j| j.view())
    }

    /// The jobs of an orchestration run, in order.
    pub fn parent_views(&self, parent: &Uuid) -> Vec<JobView> {
        self.jobs.children(parent).map(|j| j.view()).collect()
    }

    /// The job or run (true) that `text` names: a whole id, or a prefix
    /// of at least `MIN_ID_PREFIX` characters only one of them has.
    pub fn resolve_id(&self, text: &str) -> Result<(Uuid, bool), String> {
        let want = text.trim().to_ascii_lowercase();
        let shown = crate::dsl::one_line(text.trim());
        if let Ok(id) = Uuid::parse_str(&want) {
            if self.jobs.get(&id).is_some() {
                return Ok((id, false));
            }
            if self.jobs.children(&id).next().is_some() {
                return Ok((id, true));
            }
            return Err(format!("no job or run with id {id}"));
        }
        if want.len() < crate::wire::MIN_ID_PREFIX
            || !want.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        {
            return Err(format!(
                "'{shown}' is not an id: give a job or run id, or its first {} characters or more",
                crate::wire::MIN_ID_PREFIX
            ));
        }
        let mut found: Vec<(Uuid, bool)> = Vec::new();
        for j in self.jobs.iter() {
            if j.id.to_string().starts_with(&want) {
                found.push((j.id, false));
            }
            if let Some(p) = j.parent.filter(|p| p.to_string().starts_with(&want)) {
                if !found.contains(&(p, true)) {
                    found.push((p, true));
                }
            }
        }
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(format!("no job or run id starts with {shown}")),
            many => Err(format!(
                "{shown} starts {}: {} (give more of it)",
                crate::dsl::count(many.len(), "id"),
                many.iter()
                    .take(5)
                    .map(|(id, run)| format!("{id}{}", if *run { " (run)" } else { "" }))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// An orchestration run: its jobs, and each part's state.
    pub fn run_detail(&self, parent: &Uuid) -> Option<RunDetail> {
        let jobs: Vec<&super::jobs::Job> = self.jobs.children(parent).collect();
        if jobs.is_empty() {
            return None;
        }
        Some(RunDetail {
            parent_id: *parent,
            jobs: jobs.iter().map(|j| j.view()).collect(),
            parts: jobs
                .iter()
                .flat_map(|j| j.parts.keys().filter_map(|n| j.part_view(n)))
                .collect(),
        })
    }

    /// A job and its parts, states only.
    pub fn job_parts(&self, id: &Uuid) -> Option<(JobView, Vec<PartView>)> {
        let j = self.jobs.get(id)?;
        let parts = j.parts.keys().filter_map(|n| j.part_view(n)).collect();
        Some((j.view(), parts))
    }

    /// Every run, oldest first.
    pub fn list_runs(&self) -> Vec<RunView> {
        let mut runs: Vec<RunView> = Vec::new();
        let mut at: HashMap<Uuid, usize> = HashMap::new();
        let mut nodes: Vec<HashSet<&str>> = Vec::new();
        for j in self.jobs.iter() {
            let Some(parent) = j.parent else { continue };
            let i = *at.entry(parent).or_insert_with(|| {
                runs.push(RunView {
                    parent_id: parent,
                    jobs: 0,
                    nodes: 0,
                    submitted_ms: j.submitted_ms,
                    finished_ms: Some(0),
                    states: BTreeMap::new(),
                    changed: 0,
                });
                nodes.push(HashSet::new());
                runs.len() - 1
            });
            let v = j.view();
            let r = &mut runs[i];
            r.jobs += 1;
            r.changed += v.changed;
            for (s, n) in v.states {
                *r.states.entry(s).or_insert(0) += n;
            }
            r.finished_ms = match (r.finished_ms, v.finished_ms) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
            nodes[i].extend(j.parts.keys().map(|n| &**n));
        }
        for (r, n) in runs.iter_mut().zip(nodes) {
            r.nodes = n.len() as u32;
        }
        runs
    }

    /// Was the job sent to `node`, and has it not finished there?
    pub fn runs_on(&self, job_id: &Uuid, node: &str) -> bool {
        self.jobs
            .get(job_id)
            .and_then(|j| j.parts.get(node))
            .is_some_and(|p| !p.state().is_done())
    }

    /// The run a job belongs to.
    pub fn parent_of(&self, job_id: &Uuid) -> Option<Uuid> {
        self.jobs.get(job_id).and_then(|j| j.parent)
    }

    pub fn part_view(&self, id: &Uuid, node: &str) -> Option<PartView> {
        self.jobs.get(id).and_then(|j| j.part_view(node))
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
    fn forget_done_rollouts(&mut self) {
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

/// A cluster being rebuilt from the history, one record at a time, at a
/// time given (restored nodes' deadlines start from it).
pub struct Restore(Cluster, Instant);

impl Restore {
    pub fn new(at: Instant) -> Restore {
        Restore(Cluster::default(), at)
    }

    fn part(&mut self, id: &Uuid, node: &str) -> Option<&mut super::jobs::Part> {
        self.0.jobs.get_mut(id).and_then(|j| j.parts.get_mut(node))
    }

    /// Apply what the journal gave for one record: the record, or a
    /// finished part's head (its outcome stays on disk).
    pub fn replay_lazy(&mut self, rec: crate::journal::Lazy<Record, DoneHead>, span: Span) {
        match rec {
            crate::journal::Lazy::Whole(rec) => self.replay(rec, span),
            crate::journal::Lazy::Head(h) => {
                if let Some(p) = self.part(&h.id, &h.node) {
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
                if let Some(p) = self.part(&id, &node) {
                    p.restore_sent(sent_ms, None);
                }
            }
            Record::Dispatched {
                id,
                node,
                sent_ms,
                to,
            } => {
                if let Some(p) = self.part(&id, &node) {
                    p.restore_sent(sent_ms, Some(to));
                }
            }
            Record::Unsent { id, node } => {
                if let Some(p) = self.part(&id, &node) {
                    p.unsend();
                }
            }
            Record::Done { id, node, part } => {
                if let Some(p) = self.part(&id, &node) {
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
            if let Some(p) = c.jobs.get_mut(&id).and_then(|j| j.parts.get_mut(&node)) {
                // In flight again: a restart cannot know if it started.
                p.restart();
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dsl::Verb;
    use crate::wire::Exit;

    const IVL: Duration = Duration::from_secs(1);

    fn outcome(exit: Exit) -> Outcome {
        Outcome {
            exit,
            stdout: vec![],
            stderr: vec![],
            stdout_dropped: 0,
            stderr_dropped: 0,
            exec_secs: 0.0,
            attempts: Vec::new(),
        }
    }

    fn ok() -> Outcome {
        outcome(Exit::Code(0))
    }

    fn run(cmd: &str) -> Task {
        Task::parse(Verb::Run, cmd).unwrap()
    }

    fn at(t: Instant) -> Now {
        Now { at: t, ms: 0 }
    }

    fn sent_jobs(out: &[Effect]) -> Vec<Uuid> {
        out.iter()
            .filter_map(|e| match e {
                Effect::Send {
                    msg: ServerMsg::Job { job_id, .. },
                    ..
                } => Some(*job_id),
                _ => None,
            })
            .collect()
    }

    fn greet(instance: u64, seen: Option<Dispatch>, holding: &[Uuid]) -> Greeting<'_> {
        const NOTHING: &crate::facts::Node = &crate::facts::Node {
            facts: crate::facts::Map::new(),
            labels: crate::facts::Map::new(),
        };
        Greeting {
            version: "v",
            ivl: IVL,
            instance,
            seen,
            holding,
            about: NOTHING,
        }
    }

    /// The dispatch of `c`'s job `id` to `node`.
    fn dispatch_of(c: &Cluster, id: &Uuid, node: &str) -> Dispatch {
        c.jobs.get(id).unwrap().parts[node]
            .sent_to()
            .unwrap()
            .dispatch
    }

    #[test]
    fn a_ready_that_crosses_jobs_on_the_wire_loses_none_of_them() {
        let t0 = Instant::now();
        let mut c = cluster(&["a"], t0);
        let mut out = Vec::new();
        let id1 = c
            .submit_now(run("1"), &[], at(t0), &mut out)
            .unwrap()
            .job_id;
        let id2 = c
            .submit_now(run("2"), &[], at(t0), &mut out)
            .unwrap()
            .job_id;
        assert_eq!(sent_jobs(&out), vec![id1, id2]);
        // The same process said Ready twice before either job reached it:
        // the second Ready holds nothing, and loses nothing.
        out.clear();
        c.ready("a", greet(1, None, &[]), at(t0), &mut out);
        assert!(fx(&out).is_empty(), "{out:?}");
        assert_eq!(state(&c, &id1, "a"), JobState::Sent);
        assert_eq!(state(&c, &id2, "a"), JobState::Sent);
        // A dispatch seen from another server counts for nothing here.
        let other = Dispatch {
            server: c.instance ^ 1,
            seq: 99,
        };
        c.ready("a", greet(1, Some(other), &[]), at(t0), &mut out);
        assert!(fx(&out).is_empty(), "{out:?}");
        // It saw job 2 and holds it, and never got job 1, sent before it
        // (on a connection since lost): job 1 goes again, nothing is lost.
        let seen2 = dispatch_of(&c, &id2, "a");
        c.ready("a", greet(1, Some(seen2), &[id2]), at(t0), &mut out);
        assert_eq!(sent_jobs(&out), vec![id1]);
        assert!(!out.iter().any(|e| matches!(e, Effect::PartDone { .. })));
        assert!(out.contains(&Effect::Journal(Record::Unsent {
            id: id1,
            node: "a".into()
        })));
        assert_eq!(state(&c, &id1, "a"), JobState::Sent);
        assert!(dispatch_of(&c, &id1, "a").seq > seen2.seq);
        // Another process (the client restarted) may have run them: lost.
        out.clear();
        c.ready("a", greet(2, None, &[id2]), at(t0), &mut out);
        assert_eq!(
            fx(&out),
            vec![
                Effect::PartDone {
                    job_id: id1,
                    node: "a".into()
                },
                Effect::JobDone { job_id: id1 }
            ]
        );
        assert_eq!(state(&c, &id2, "a"), JobState::Sent);
    }

    #[test]
    fn a_job_names_the_client_process_it_is_for() {
        let t0 = Instant::now();
        let mut c = cluster(&["a"], t0);
        let mut out = Vec::new();
        c.ready("a", greet(7, None, &[]), at(t0), &mut out);
        out.clear();
        c.submit_now(run("1"), &[], at(t0), &mut out).unwrap();
        let instances: Vec<u64> = out
            .iter()
            .filter_map(|e| match e {
                Effect::Send {
                    msg: ServerMsg::Job { instance, .. },
                    ..
                } => Some(*instance),
                _ => None,
            })
            .collect();
        assert_eq!(instances, vec![7]);
    }

    #[test]
    fn after_a_server_restart_jobs_that_never_reached_the_same_process_go_again() {
        let t0 = Instant::now();
        let mut c = cluster(&["a"], t0);
        let mut out = Vec::new();
        let id1 = c
            .submit_now(run("1"), &[], at(t0), &mut out)
            .unwrap()
            .job_id;
        let id2 = c
            .submit_now(run("2"), &[], at(t0), &mut out)
            .unwrap()
            .job_id;
        let seen1 = dispatch_of(&c, &id1, "a");
        let mut r = Cluster::restore(records(&c), IVL, at(t0));
        assert_eq!(state(&r, &id2, "a"), JobState::Sent);
        // The process that got job 1 and not job 2 comes back.
        out.clear();
        r.ready("a", greet(1, Some(seen1), &[id1]), at(t0), &mut out);
        assert_eq!(sent_jobs(&out), vec![id2]);
        assert_eq!(dispatch_of(&r, &id2, "a").server, r.instance);
        assert!(!out.iter().any(|e| matches!(e, Effect::PartDone { .. })));
    }

    /// The snapshot's records (nothing is spilled without a loop).
    fn records(c: &Cluster) -> Vec<Record> {
        c.snapshot()
            .map(|item| match item {
                Item::New(r) => r,
                Item::Copy(_) => unreachable!("nothing is spilled in these tests"),
            })
            .collect()
    }

    /// What the loop sees of `out`, without the records to journal.
    fn fx(out: &[Effect]) -> Vec<Effect> {
        out.iter()
            .filter(|e| !matches!(e, Effect::Journal(_)))
            .cloned()
            .collect()
    }

    impl Cluster {
        /// Submit and release at once, as the loop does once the records
        /// are durable.
        fn submit_now(
            &mut self,
            task: Task,
            targets: &[String],
            now: Now,
            out: &mut Vec<Effect>,
        ) -> Result<Submitted, String> {
            let s = self.submit(task, targets, &[], now, out)?;
            self.release(&[s.job_id], now, out);
            Ok(s)
        }

        fn orchestrate_now(
            &mut self,
            blocks: Vec<Block>,
            dry_run: bool,
            now: Now,
            out: &mut Vec<Effect>,
        ) -> Result<Plan, String> {
            let plan = self.orchestrate(blocks, &[], None, dry_run, now, out)?;
            let ids: Vec<Uuid> = plan.jobs.iter().filter_map(|j| j.job_id).collect();
            self.release(&ids, now, out);
            Ok(plan)
        }
    }

    /// A block of `tasks` for `targets` (empty: every node), not rolling.
    fn block(targets: &[&str], tasks: Vec<Task>) -> Block {
        Block::of(targets.iter().map(|t| t.to_string()).collect(), tasks)
    }

    fn cluster(nodes: &[&str], t0: Instant) -> Cluster {
        let mut c = Cluster::default();
        for n in nodes {
            c.ready(n, greet(1, None, &[]), at(t0), &mut Vec::new());
        }
        c
    }

    fn state(c: &Cluster, id: &Uuid, node: &str) -> JobState {
        c.part_view(id, node).unwrap().state
    }

    /// Run `runs` orchestrations of `per_run` jobs on `nodes`, each part
    /// printing 3 KB, its record "journaled" as the loop does (spilled at
    /// a made-up span) once its effects are carried out.
    fn run_history(c: &mut Cluster, nodes: &[String], runs: usize, per_run: usize, t0: Instant) {
        let mut at_byte = 0;
        for _ in 0..runs {
            let mut out = Vec::new();
            let tasks = (0..per_run)
                .map(|_| run("--skip-cache printf '%03000d' 0"))
                .collect();
            let blocks = vec![block(&[], tasks)];
            let plan = c.orchestrate_now(blocks, false, at(t0), &mut out).unwrap();
            for id in plan.jobs.iter().filter_map(|j| j.job_id) {
                for n in nodes {
                    let mut o = ok();
                    o.stdout = vec![b'0'; 3000];
                    c.finished(n, id, o, at(t0), &mut out);
                }
                for e in out.drain(..) {
                    if let Effect::Journal(Record::Done { id, node, .. }) = e {
                        c.spilled(
                            &id,
                            &node,
                            Span {
                                at: at_byte,
                                len: 3100,
                            },
                        );
                        at_byte += 3100;
                    }
                }
            }
        }
    }

    #[test]
    fn a_retained_job_costs_the_server_a_bounded_few_hundred_bytes() {
        // The soak benchmark's history (jobs of 3 KB of output on 6 nodes,
        // in runs of 1000), measured on the heap: what memory keeps of a
        // finished job must not depend on its output, and stays small
        // enough that the default 10,000 retained jobs cost a few MiB.
        let t0 = Instant::now();
        let nodes: Vec<String> = (1..=6).map(|i| format!("soak-{i}")).collect();
        let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
        let mut c = cluster(&names, t0);
        run_history(&mut c, &nodes, 1, 1000, t0);
        let before = crate::heapcount::live();
        run_history(&mut c, &nodes, 10, 1000, t0);
        let per_job = (crate::heapcount::live() - before) / 10_000;
        eprintln!("a retained job costs {per_job} bytes of heap");
        assert!(per_job <= 512, "a retained job costs {per_job} bytes");
    }

    #[test]
    fn a_compacted_journal_is_copied_in_a_few_pieces_and_every_output_reads_back() {
        use crate::journal::Journal;
        let dir = std::env::temp_dir().join(format!("director-compact-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (mut j, _) = Journal::open::<Record>(&dir, "history.bin").unwrap();
        let t0 = Instant::now();
        let mut c = cluster(&["a", "b"], t0);
        // Records written as the loop writes them, places told back.
        let write = |c: &mut Cluster, j: &mut Journal, out: &mut Vec<Effect>| {
            for e in out.drain(..) {
                if let Effect::Journal(rec) = e {
                    let span = j.append(&rec);
                    match rec {
                        Record::Submitted { id, .. } => c.submission_at(&id, span),
                        Record::Done { id, node, .. } => c.spilled(&id, &node, span),
                        _ => {}
                    }
                }
            }
        };
        let mut out = Vec::new();
        let tasks = (0..20).map(|i| run(&format!("echo {i}"))).collect();
        let blocks = vec![block(&[], tasks)];
        // As the loop does: the submission is journaled, then released.
        let plan = c
            .orchestrate(blocks, &[], None, false, at(t0), &mut out)
            .unwrap();
        write(&mut c, &mut j, &mut out);
        let ids: Vec<Uuid> = plan.jobs.iter().filter_map(|p| p.job_id).collect();
        c.release(&ids, at(t0), &mut out);
        write(&mut c, &mut j, &mut out);
        for (i, id) in ids.iter().enumerate() {
            for n in ["a", "b"] {
                let mut o = ok();
                o.stdout = format!("{n}-{i}").into_bytes();
                c.finished(n, *id, o, at(t0), &mut out);
            }
            write(&mut c, &mut j, &mut out);
        }
        j.sync_now().unwrap();
        let outputs = |c: &Cluster, j: &Journal| -> Vec<String> {
            let r = j.reader();
            c.jobs
                .iter()
                .flat_map(|job| job.parts.values().map(|p| p.span().unwrap()))
                .map(|span| match r.read::<Record>(span).unwrap() {
                    Record::Done { part, .. } => {
                        String::from_utf8(part.outcome.unwrap().stdout).unwrap()
                    }
                    other => panic!("not a part's record: {other:?}"),
                })
                .collect()
        };
        let want: Vec<String> = (0..20)
            .flat_map(|i| [format!("a-{i}"), format!("b-{i}")])
            .collect();
        assert_eq!(outputs(&c, &j), want);
        // The first compaction gathers each job's records, which the
        // journal holds apart (dispatches in between).
        let (rw, _) = super::super::storage::compact(&mut c, &mut j);
        assert!(rw.pieces() > 2, "{} pieces", rw.pieces());
        rw.run().map_err(|(_, e)| e).unwrap();
        assert_eq!(outputs(&c, &j), want);
        // After it, the jobs are one copy, encoding nothing again; only the
        // two nodes' records are new bytes.
        let (rw, _) = super::super::storage::compact(&mut c, &mut j);
        assert_eq!(rw.pieces(), 2);
        rw.run().map_err(|(_, e)| e).unwrap();
        assert_eq!(outputs(&c, &j), want);
        drop(j);
        let (_, recs) = Journal::open::<Record>(&dir, "history.bin").unwrap();
        assert_eq!(recs.len(), 2 + 20 * 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_targets_are_refused_and_nothing_is_queued() {
        let t0 = Instant::now();
        let mut c = cluster(&["a", "b"], t0);
        let mut out = Vec::new();
        let e = c
            .submit_now(run("x"), &["a".into(), "zz".into()], at(t0), &mut out)
            .unwrap_err();
        assert_eq!(e, "unknown target node 'zz' (known nodes: a, b)");
        assert!(out.is_empty());
        assert!(c.list_jobs().is_empty());
        assert!(Cluster::default()
            .submit_now(run("x"), &[], at(t0), &mut out)
            .unwrap_err()
            .contains("no node is online"));
        // One bad block refuses the whole orchestration.
        let blocks = vec![block(&[], vec![run("1")]), block(&["nope"], vec![run("2")])];
        let e = c
            .orchestrate_now(blocks, false, at(t0), &mut out)
            .unwrap_err();
        assert_eq!(e, "block 2: unknown target node 'nope' (known nodes: a, b)");
        assert!(out.is_empty() && c.list_jobs().is_empty());
    }

    #[test]
    fn jobs_flow_in_order_within_the_window() {
        let t0 = Instant::now();
        let mut c = cluster(&["a"], t0);
        let mut out = Vec::new();
        let ids: Vec<Uuid> = (0..5)
            .map(|i| {
                c.submit_now(run(&i.to_string()), &[], at(t0), &mut out)
                    .unwrap()
                    .job_id
            })
            .collect();
        assert_eq!(sent_jobs(&out), ids[..WINDOW].to_vec());
        out.clear();
        c.finished("a", ids[0], ok(), at(t0), &mut out);
        // The result is recorded first; its ack comes last, held by the
        // loop until that record is durable.
        assert!(matches!(out[0], Effect::Journal(Record::Done { .. })));
        assert_eq!(
            out.last(),
            Some(&Effect::Send {
                node: "a".into(),
                msg: ServerMsg::ResultAck { job_id: ids[0] }
            })
        );
        assert!(out.contains(&Effect::JobDone { job_id: ids[0] }));
        assert_eq!(sent_jobs(&out), vec![ids[2]]);
        // A resent result is acknowledged and changes nothing.
        out.clear();
        c.finished("a", ids[0], ok(), at(t0), &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn a_query_answers_once_every_target_answered_or_ended_and_lies_are_dropped() {
        let t0 = Instant::now();
        let mut c = cluster(&["a", "b", "c"], t0);
        let mut out = Vec::new();
        let task = Task::parse(crate::dsl::Verb::Query, "addr").unwrap();
        let id = c.submit_now(task, &[], at(t0), &mut out).unwrap().job_id;
        let plain = c
            .submit_now(run("x"), &["a".into()], at(t0), &mut out)
            .unwrap()
            .job_id;
        // Who got a map, and the map.
        type Sent = (Vec<String>, Vec<(String, String)>);
        let maps = |out: &[Effect]| -> Vec<Sent> {
            out.iter()
                .filter_map(|e| match e {
                    Effect::Broadcast {
                        nodes,
                        msg: ServerMsg::QueryResult { values, .. },
                    } => Some((nodes.clone(), values.clone())),
                    _ => None,
                })
                .collect()
        };
        out.clear();
        assert!(c
            .query_value("a", id, Some("10.0.0.1".into()), &mut out)
            .is_none());
        assert!(c.query_value("b", id, None, &mut out).is_none());
        assert!(maps(&out).is_empty(), "c has not answered");
        // Lies: a job that is not a QUERY, a node it was not sent to, a
        // value past the cap.
        assert!(c
            .query_value("a", plain, Some("x".into()), &mut out)
            .is_some());
        assert!(c
            .query_value("zz", id, Some("x".into()), &mut out)
            .is_some());
        let long = "x".repeat(QUERY_VALUE_CAP + 1);
        assert!(c.query_value("a", id, Some(long), &mut out).is_some());
        // c goes silent and is lost: the map goes to a and b, without c.
        c.heartbeat("a", IVL, at(t0 + Duration::from_secs(2)));
        c.heartbeat("b", IVL, at(t0 + Duration::from_secs(2)));
        out.clear();
        assert_eq!(c.expire(at(t0 + Duration::from_secs(3)), &mut out), ["c"]);
        assert_eq!(
            maps(&out),
            [(
                vec!["a".to_string(), "b".to_string()],
                vec![("a".to_string(), "10.0.0.1".to_string())]
            )]
        );
        // Once only, even if a answers again (a resend after a reconnect).
        out.clear();
        c.query_value("a", id, Some("10.0.0.1".into()), &mut out);
        assert_eq!(maps(&out).len(), 1, "a late answer gets the map at once");
        assert_eq!(maps(&out)[0].0, ["a"]);
    }

    #[test]
    fn expiry_loses_unfinished_parts_only_on_the_dead_node() {
        let t0 = Instant::now();
        let mut c = cluster(&["a", "b"], t0);
        let mut out = Vec::new();
        let id = c
            .submit_now(run("x"), &[], at(t0), &mut out)
            .unwrap()
            .job_id;
        out.clear();
        let t1 = t0 + Duration::from_millis(2500);
        c.finished("b", id, ok(), at(t1), &mut out);
        assert_eq!(
            c.heartbeat("b", IVL, at(t1)),
            ServerMsg::HeartbeatAck {
                expires_in_ms: 3000
            }
        );
        assert!(c
            .expire(at(t0 + Duration::from_millis(2999)), &mut out)
            .is_empty());
        out.clear();
        assert_eq!(
            c.expire(at(t0 + Duration::from_secs(3)), &mut out),
            vec!["a".to_string()]
        );
        assert_eq!(
            fx(&out),
            vec![
                Effect::PartDone {
                    job_id: id,
                    node: "a".into()
                },
                Effect::JobDone { job_id: id }
            ]
        );
        let detail = c.job_info(&id).unwrap().0;
        assert_eq!(detail.nodes[0].state, JobState::Lost);
        assert!(detail.nodes[0]
            .message
            .as_deref()
            .unwrap()
            .contains("expired"));
        assert_eq!(detail.nodes[1].state, JobState::Succeeded);
        assert_eq!(c.heartbeat("a", IVL, at(t1)), ServerMsg::Register);
    }

    #[test]
    fn a_restarted_client_loses_what_it_no_longer_holds() {
        let t0 = Instant::now();
        let mut c = cluster(&["a"], t0);
        let mut out = Vec::new();
        let id1 = c
            .submit_now(run("1"), &[], at(t0), &mut out)
            .unwrap()
            .job_id;
        let id2 = c
            .submit_now(run("2"), &[], at(t0), &mut out)
            .unwrap()
            .job_id;
        out.clear();
        // A new client process (instance 2) holds only the second.
        c.ready("a", greet(2, None, &[id2]), at(t0), &mut out);
        assert_eq!(
            fx(&out),
            vec![
                Effect::PartDone {
                    job_id: id1,
                    node: "a".into()
                },
                Effect::JobDone { job_id: id1 }
            ]
        );
        assert_eq!(state(&c, &id2, "a"), JobState::Sent);
    }

    #[test]
    fn unroutable_jobs_wait_for_the_next_ready() {
        let t0 = Instant::now();
        let mut c = cluster(&["a"], t0);
        let mut out = Vec::new();
        let id = c
            .submit_now(run("1"), &[], at(t0), &mut out)
            .unwrap()
            .job_id;
        c.unroutable("a", id);
        assert_eq!(c.heartbeat("a", IVL, at(t0)), ServerMsg::Register);
        assert_eq!(state(&c, &id, "a"), JobState::Queued);
        out.clear();
        c.ready("a", greet(1, None, &[]), at(t0), &mut out);
        assert_eq!(sent_jobs(&out), vec![id]);
    }

    #[test]
    fn a_failure_skips_the_rest_of_the_run_on_that_node_only() {
        let t0 = Instant::now();
        let mut c = cluster(&["a", "b"], t0);
        let mut out = Vec::new();
        let tasks = (0..4).map(|i| run(&i.to_string())).collect();
        let plan = c
            .orchestrate_now(vec![block(&[], tasks)], false, at(t0), &mut out)
            .unwrap();
        let parent = plan.parent_id.unwrap();
        let ids: Vec<Uuid> = plan.jobs.iter().map(|j| j.job_id.unwrap()).collect();
        out.clear();
        // Job 0 fails on a: job 1 is already on the node (it skips it
        // itself); jobs 2 and 3 are skipped here.
        c.finished("a", ids[0], outcome(Exit::Code(1)), at(t0), &mut out);
        assert_eq!(state(&c, &ids[2], "a"), JobState::Skipped);
        assert_eq!(state(&c, &ids[3], "a"), JobState::Skipped);
        assert_eq!(state(&c, &ids[1], "a"), JobState::Sent);
        assert!(sent_jobs(&out).is_empty());
        c.finished(
            "a",
            ids[1],
            outcome(Exit::SkippedAfterFailure),
            at(t0),
            &mut out,
        );
        assert_eq!(state(&c, &ids[1], "a"), JobState::Skipped);
        // b carries on; the run ends when b is done.
        out.clear();
        for id in &ids {
            assert!(!out.contains(&Effect::ParentDone { parent_id: parent }));
            c.finished("b", *id, ok(), at(t0), &mut out);
        }
        assert!(out.contains(&Effect::ParentDone { parent_id: parent }));
        let views = c.parent_views(&parent);
        assert_eq!(views.len(), 4);
        assert!(views.iter().all(|v| v.states[&JobState::Succeeded] == 1));
    }

    /// The nodes each job was sent to in `out`.
    fn sent_nodes(out: &[Effect]) -> Vec<String> {
        let mut nodes: Vec<String> = out
            .iter()
            .filter_map(|e| match e {
                Effect::Send {
                    node,
                    msg: ServerMsg::Job { .. },
                } => Some(node.clone()),
                _ => None,
            })
            .collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }

    #[test]
    fn a_rolling_run_goes_batch_by_batch_and_stops_past_max_fail_even_after_a_restart() {
        use crate::wire::{Amount, Rolling};
        let t0 = Instant::now();
        let names = ["e", "d", "c", "b", "a"];
        let mut c = cluster(&names, t0);
        let mut out = Vec::new();
        let tasks = (0..2).map(|i| run(&i.to_string())).collect();
        let rolling = Rolling {
            batch: Amount::Count(2),
            max_fail: Some(Amount::Count(1)),
        };
        let blocks = vec![block(&[], tasks)];
        let plan = c
            .orchestrate(blocks, &[], Some(rolling), false, at(t0), &mut out)
            .unwrap();
        assert_eq!(plan.batches, [vec!["a", "b"], vec!["c", "d"], vec!["e"]]);
        assert!(matches!(&out[0], Effect::Journal(Record::Rollout { .. })));
        let parent = plan.parent_id.unwrap();
        let ids: Vec<Uuid> = plan.jobs.iter().map(|j| j.job_id.unwrap()).collect();
        out.clear();
        c.release(&ids, at(t0), &mut out);
        // Only the first batch gets work.
        assert_eq!(sent_nodes(&out), ["a", "b"]);
        assert_eq!(state(&c, &ids[0], "c"), JobState::Queued);
        // a fails (1 node: within --max-fail 1), b succeeds: batch 2 starts.
        out.clear();
        c.finished("a", ids[0], outcome(Exit::Code(1)), at(t0), &mut out);
        c.finished(
            "a",
            ids[1],
            outcome(Exit::SkippedAfterFailure),
            at(t0),
            &mut out,
        );
        c.finished("b", ids[0], ok(), at(t0), &mut out);
        // b has both jobs already (two in flight); nothing else moves.
        assert!(sent_nodes(&out).is_empty());
        c.finished("b", ids[1], ok(), at(t0), &mut out);
        assert_eq!(sent_nodes(&out), ["c", "d"]);

        // The server restarts here: batch 2 goes on, batch 3 still waits.
        let mut r = Cluster::restore(records(&c), IVL, at(t0));
        assert_eq!(r.rollouts[&parent].current, 1);
        // c and d still have the jobs sent to them.
        for n in names {
            let holding = if n == "c" || n == "d" { &ids[..] } else { &[] };
            r.ready(n, greet(1, None, holding), at(t0), &mut Vec::new());
        }
        assert_eq!(state(&r, &ids[0], "d"), JobState::Sent);
        assert_eq!(state(&r, &ids[0], "e"), JobState::Queued);
        assert!(r.nodes.get("e").unwrap().queue.is_empty());
        // c fails too: 2 nodes failed, more than 1. e never starts.
        let mut out = Vec::new();
        r.finished("c", ids[0], outcome(Exit::Code(2)), at(t0), &mut out);
        r.finished(
            "c",
            ids[1],
            outcome(Exit::SkippedAfterFailure),
            at(t0),
            &mut out,
        );
        for id in &ids {
            r.finished("d", *id, ok(), at(t0), &mut out);
        }
        assert!(!sent_nodes(&out).contains(&"e".to_string()));
        for id in &ids {
            let e = r.part_view(id, "e").unwrap();
            assert_eq!(e.state, JobState::Skipped);
            assert_eq!(
                e.message.as_deref(),
                Some("not started: 2 nodes failed, more than --max-fail 1 allows")
            );
        }
        assert!(out.contains(&Effect::ParentDone { parent_id: parent }));
    }

    #[test]
    fn a_blocks_batch_rolls_it_and_the_rest_while_earlier_blocks_go_at_once() {
        use crate::wire::{Amount, Rolling};
        let t0 = Instant::now();
        let names = ["a", "b"];
        let mut c = cluster(&names, t0);
        let mut out = Vec::new();
        let block = |tasks, rolling| Block {
            rolling,
            ..block(&[], tasks)
        };
        let one = Some(Rolling {
            batch: Amount::Count(1),
            max_fail: None,
        });
        let blocks = vec![
            block(vec![run("setup")], None),
            block(vec![run("deploy")], one),
            block(vec![run("check")], None),
        ];
        let plan = c
            .orchestrate(blocks.clone(), &[], None, false, at(t0), &mut out)
            .unwrap();
        assert_eq!(plan.batches, [vec!["a"], vec!["b"]]);
        assert!(matches!(
            &out[0],
            Effect::Journal(Record::RolloutFrom { from: 1, .. })
        ));
        let ids: Vec<Uuid> = plan.jobs.iter().map(|j| j.job_id.unwrap()).collect();
        out.clear();
        c.release(&ids, at(t0), &mut out);
        // setup everywhere; deploy only on a (b's waits, and so does its
        // check, which must follow it there).
        assert_eq!(sent_jobs(&out), [ids[0], ids[1], ids[0]]);
        assert_eq!(sent_nodes(&out), ["a", "b"]);
        assert!(c.nodes.get("b").unwrap().queue.is_empty());
        // A restart keeps it so.
        let mut r = Cluster::restore(records(&c), IVL, at(t0));
        for n in names {
            let holding: &[Uuid] = if n == "a" { &ids[..2] } else { &ids[..1] };
            r.ready(n, greet(1, None, holding), at(t0), &mut Vec::new());
        }
        assert!(r.nodes.get("b").unwrap().queue.is_empty());
        // b's setup ending does not move the batch; a's run ending does.
        let mut out = Vec::new();
        r.finished("b", ids[0], ok(), at(t0), &mut out);
        assert!(sent_nodes(&out).is_empty());
        for id in &ids {
            r.finished("a", *id, ok(), at(t0), &mut out);
        }
        assert_eq!(sent_jobs(&out), [ids[2], ids[1], ids[2]]);
        // One rolling block per run, and not with --batch.
        let mut twice = blocks.clone();
        twice[2].rolling = one;
        let e = c
            .orchestrate(twice, &[], None, false, at(t0), &mut out)
            .unwrap_err();
        assert!(
            e.starts_with("block 3: only one block of a run may have batch"),
            "{e}"
        );
        let e = c
            .orchestrate(blocks, &[], one, false, at(t0), &mut out)
            .unwrap_err();
        assert!(e.contains("batch cannot be combined with --batch"), "{e}");
    }

    #[test]
    fn a_silent_node_goes_offline_stays_known_across_a_restart_and_gets_nothing() {
        let t0 = Instant::now();
        let mut c = cluster(&["a", "b"], t0);
        let mut out = Vec::new();
        let [queued, behind, third] = ["1", "2", "3"].map(|cmd| {
            c.submit_now(run(cmd), &["b".into()], at(t0), &mut out)
                .unwrap()
                .job_id
        });
        // a beats, b falls silent: after 3 intervals b is offline.
        let later = Now {
            at: t0 + IVL * 4,
            ms: 4000,
        };
        c.heartbeat("a", IVL, later);
        out.clear();
        assert_eq!(c.expire(later, &mut out), ["b"]);
        assert!(out.contains(&Effect::Journal(Record::NodeOffline { name: "b".into() })));
        // What was sent is lost; what waited never reached it.
        assert_eq!(state(&c, &queued, "b"), JobState::Lost);
        assert_eq!(state(&c, &third, "b"), JobState::Unreachable);
        assert!(matches!(state(&c, &behind, "b"), JobState::Lost));
        // A new job for every node goes to those online, and says which
        // known ones it left out; named, b's part ends at once.
        let s = c.submit_now(run("x"), &[], later, &mut out).unwrap();
        assert_eq!((s.targets, s.offline), (vec!["a".into()], vec!["b".into()]));
        assert_eq!(state(&c, &s.job_id, "a"), JobState::Sent);
        let id = c
            .submit_now(run("x"), &["*".into()], later, &mut out)
            .unwrap()
            .job_id;
        assert_eq!(state(&c, &id, "b"), JobState::Unreachable);
        // After a restart b is known and offline; a is expected back, and
        // says so until it is.
        let mut r = Cluster::restore(records(&c), IVL, later);
        let states = |r: &Cluster| -> Vec<(String, NodeState)> {
            r.list_nodes()
                .into_iter()
                .map(|n| (n.name, n.state))
                .collect()
        };
        assert_eq!(
            states(&r),
            [
                ("a".into(), NodeState::Reconnecting),
                ("b".into(), NodeState::Offline)
            ]
        );
        r.ready("a", greet(9, None, &[]), later, &mut out);
        assert_eq!(states(&r)[0], ("a".into(), NodeState::Online));
    }

    #[test]
    fn queue_offline_waits_for_the_node_up_to_the_timeout() {
        let t0 = Instant::now();
        let mut c = cluster(&["a"], t0);
        let mut out = Vec::new();
        c.nodes.get_mut("a").unwrap().link = Link::Offline;
        let wait = |c: &mut Cluster, cmd: &str, out: &mut Vec<Effect>| {
            let s = c.submit(run(cmd), &["a".into()], &[], at(t0), out).unwrap();
            c.queue_offline(&[s.job_id], out);
            c.release(&[s.job_id], at(t0), out);
            s.job_id
        };
        let first = wait(&mut c, "--timeout 5 one", &mut out);
        let second = wait(&mut c, "--timeout 50 two", &mut out);
        assert_eq!(state(&c, &first, "a"), JobState::Queued);
        assert_eq!(c.next_expiry(), Some(t0 + Duration::from_secs(5)));
        // The first gives up at its timeout; the second is still waiting.
        let later = Now {
            at: t0 + Duration::from_secs(6),
            ms: 6000,
        };
        out.clear();
        c.expire(later, &mut out);
        assert_eq!(state(&c, &first, "a"), JobState::Unreachable);
        let msg = c.part_view(&first, "a").unwrap().message.unwrap();
        assert!(msg.contains("whole --timeout (5s)"), "{msg}");
        assert_eq!(state(&c, &second, "a"), JobState::Queued);
        // A restart keeps the wait, and its deadline.
        let mut r = Cluster::restore(records(&c), IVL, later);
        assert_eq!(state(&r, &second, "a"), JobState::Queued);
        assert_eq!(r.list_nodes()[0].state, NodeState::Offline);
        assert_eq!(r.next_expiry(), Some(t0 + Duration::from_secs(50)));
        let mut rout = Vec::new();
        r.ready("a", greet(3, None, &[]), later, &mut rout);
        assert_eq!(sent_jobs(&rout), vec![second]);
        // The node is back: the second goes.
        c.ready("a", greet(2, None, &[]), later, &mut out);
        assert_eq!(sent_jobs(&out), vec![second]);
        // Without --queue-offline, an offline node's part ends at once.
        c.nodes.get_mut("a").unwrap().link = Link::Offline;
        let s = c
            .submit_now(run("three"), &["a".into()], later, &mut out)
            .unwrap();
        assert_eq!(state(&c, &s.job_id, "a"), JobState::Unreachable);
    }

    #[test]
    fn run_once_picks_one_target_and_dry_runs_queue_nothing() {
        let t0 = Instant::now();
        let mut c = cluster(&["a", "b", "c"], t0);
        let mut out = Vec::new();
        c.submit_now(run("busy"), &["a".into()], at(t0), &mut out)
            .unwrap();
        let s = c
            .submit_now(run("--run-once once"), &[], at(t0), &mut out)
            .unwrap();
        assert_eq!(s.targets, vec!["b".to_string()], "the least busy node");
        out.clear();
        let plan = c
            .orchestrate_now(vec![block(&["c"], vec![run("x")])], true, at(t0), &mut out)
            .unwrap();
        assert_eq!(plan.parent_id, None);
        assert_eq!(plan.jobs[0].targets, vec!["c".to_string()]);
        assert_eq!(plan.jobs[0].task_sha1, run("x").sha1());
        assert!(out.is_empty());
        assert_eq!(c.list_jobs().len(), 2);
    }

    #[test]
    fn a_restart_restores_history_queues_and_in_flight_work() {
        let t0 = Instant::now();
        let mut c = cluster(&["a", "b"], t0);
        let mut out = Vec::new();
        let done = c
            .submit_now(run("1"), &["a".into()], at(t0), &mut out)
            .unwrap()
            .job_id;
        c.finished("a", done, ok(), at(t0), &mut out);
        let sent = c
            .submit_now(run("2"), &["a".into()], at(t0), &mut out)
            .unwrap()
            .job_id;
        let _also_sent = c
            .submit_now(run("3"), &["a".into()], at(t0), &mut out)
            .unwrap()
            .job_id;
        let queued = c
            .submit_now(run("4"), &["a".into()], at(t0), &mut out)
            .unwrap()
            .job_id;
        let on_b = c
            .submit_now(run("5"), &["b".into()], at(t0), &mut out)
            .unwrap()
            .job_id;

        let t1 = t0 + Duration::from_secs(10);
        let mut r = Cluster::restore(records(&c), IVL, at(t1));
        assert_eq!(r.list_jobs().len(), 5);
        assert_eq!(state(&r, &done, "a"), JobState::Succeeded);
        assert_eq!(state(&r, &sent, "a"), JobState::Sent);
        assert_eq!(state(&r, &queued, "a"), JobState::Queued);
        // Nothing is sent before the node says Ready; then what it no
        // longer holds is lost, and the queue moves on.
        assert_eq!(r.heartbeat("a", IVL, at(t1)), ServerMsg::Register);
        let mut out = Vec::new();
        // A new client process: what it does not hold may have run.
        r.ready("a", greet(2, None, &[sent]), at(t1), &mut out);
        assert_eq!(state(&r, &_also_sent, "a"), JobState::Lost);
        assert_eq!(sent_jobs(&out), vec![queued]);
        // b never comes back: its work is lost at its expiry.
        r.expire(at(t1 + Duration::from_secs(3)), &mut out);
        assert_eq!(state(&r, &on_b, "b"), JobState::Lost);
    }

    #[test]
    fn a_job_the_node_holds_is_never_sent_twice_even_without_its_dispatch_record() {
        let t0 = Instant::now();
        let mut c = cluster(&["a"], t0);
        let mut out = Vec::new();
        let id = c
            .submit_now(run("1"), &["a".into()], at(t0), &mut out)
            .unwrap()
            .job_id;
        let lost_record: Vec<Record> = records(&c)
            .into_iter()
            .filter(|r| !matches!(r, Record::Sent { .. } | Record::Dispatched { .. }))
            .collect();
        let mut r = Cluster::restore(lost_record, IVL, at(t0));
        assert_eq!(state(&r, &id, "a"), JobState::Queued);
        let mut out = Vec::new();
        r.ready("a", greet(1, None, &[id]), at(t0), &mut out);
        assert!(sent_jobs(&out).is_empty(), "resent a job the node holds");
        assert_eq!(state(&r, &id, "a"), JobState::Sent);
        r.finished("a", id, ok(), at(t0), &mut out);
        assert_eq!(state(&r, &id, "a"), JobState::Succeeded);
    }

    /// The sequence a crash loop found: the server died before its
    /// dispatch record was durable (the job is restored as queued); the
    /// node's resent result arrived before its `Ready`, was recorded and
    /// acked (so the node forgot the job); then the node's `Ready` came
    /// (twice), holding nothing. The job ran there and has its result: it
    /// is never sent again.
    #[test]
    fn a_result_that_beats_the_ready_after_a_restart_is_never_followed_by_a_resend() {
        // Its Ready, computed after the ack (holding nothing) or before
        // (holding it), in either order.
        for readies in [[false, true], [true, false]] {
            let t0 = Instant::now();
            let mut c = cluster(&["a"], t0);
            let mut out = Vec::new();
            let id = c
                .submit_now(run("echo once >> f"), &["a".into()], at(t0), &mut out)
                .unwrap()
                .job_id;
            let next = c
                .submit_now(run("echo next"), &["a".into()], at(t0), &mut out)
                .unwrap()
                .job_id;
            let lost_dispatch: Vec<Record> = records(&c)
                .into_iter()
                .filter(|r| !matches!(r, Record::Sent { .. } | Record::Dispatched { .. }))
                .collect();
            let mut r = Cluster::restore(lost_dispatch, IVL, at(t0));
            assert_eq!(state(&r, &id, "a"), JobState::Queued);
            let mut out = Vec::new();
            r.finished("a", id, ok(), at(t0), &mut out);
            assert_eq!(state(&r, &id, "a"), JobState::Succeeded);
            assert!(out.contains(&Effect::Send {
                node: "a".into(),
                msg: ServerMsg::ResultAck { job_id: id }
            }));
            let mut sent = Vec::new();
            for holds in readies {
                let holding: &[Uuid] = if holds { &[id] } else { &[] };
                out.clear();
                r.ready("a", greet(1, None, holding), at(t0), &mut out);
                sent.extend(sent_jobs(&out));
                assert_eq!(state(&r, &id, "a"), JobState::Succeeded);
            }
            // The queue goes on with the job after it, once.
            assert_eq!(sent, vec![next], "Readies holding {readies:?}");
            assert_eq!(state(&r, &next, "a"), JobState::Sent);
            // No finished job keeps a place in the node's window.
            let n = r.nodes.get("a").unwrap();
            assert_eq!(n.in_flight, [next]);
            assert!(n.queue.is_empty());
        }
    }

    #[test]
    fn retention_forgets_the_oldest_and_the_old_but_never_unfinished_work() {
        let t0 = Instant::now();
        let mut c = cluster(&["a"], t0);
        let mut out = Vec::new();
        let mut ids = Vec::new();
        for i in 0..5u64 {
            let id = c
                .submit_now(run("x"), &[], at(t0), &mut out)
                .unwrap()
                .job_id;
            let now = Now {
                at: t0,
                ms: 1000 * i,
            };
            c.finished("a", id, ok(), now, &mut out);
            ids.push(id);
        }
        // A run with one job still going is kept whole.
        let blocks = vec![block(&[], vec![run("r1"), run("r2")])];
        let plan = c.orchestrate_now(blocks, false, at(t0), &mut out).unwrap();
        let r1 = plan.jobs[0].job_id.unwrap();
        c.finished("a", r1, ok(), Now { at: t0, ms: 0 }, &mut out);
        // At most 3 finished: the two oldest go (r1 waits for its run).
        out.clear();
        assert_eq!(
            c.retain_recent(5000, Duration::from_secs(3600), 3, &mut out),
            2
        );
        assert_eq!(out.len(), 2, "one Forgotten record each");
        assert!(c.job_info(&ids[1]).is_none());
        assert!(c.job_info(&ids[2]).is_some());
        assert!(c.job_info(&r1).is_some());
        // Older than 2 s at 5 s: finished at 0-2 s.
        assert_eq!(
            c.retain_recent(5000, Duration::from_secs(2), 100, &mut out),
            1
        );
        assert!(c.job_info(&ids[2]).is_none());
        assert!(c.job_info(&ids[3]).is_some());
        assert!(c.job_info(&r1).is_some());
    }

    #[test]
    fn purges_keep_active_work() {
        let t0 = Instant::now();
        let mut c = cluster(&["a", "b"], t0);
        let mut out = Vec::new();
        let id = c
            .submit_now(run("1"), &["a".into()], at(t0), &mut out)
            .unwrap()
            .job_id;
        assert_eq!(c.purge_jobs(), (0, 1));
        // Online nodes stay; an offline one with nothing queued goes.
        assert_eq!(c.purge_nodes(&mut out), (0, 2));
        c.nodes.get_mut("b").unwrap().link = Link::Offline;
        out.clear();
        assert_eq!(c.purge_nodes(&mut out), (1, 1));
        assert!(
            matches!(&out[..], [Effect::Journal(Record::NodeForgotten { name })] if name == "b")
        );
        c.finished("a", id, ok(), at(t0), &mut out);
        assert_eq!(c.purge_jobs(), (1, 0));
    }
}
