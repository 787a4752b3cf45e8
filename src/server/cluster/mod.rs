//! Nodes, jobs, and the rules between them: the part of the server's core
//! (`server::core`) that knows jobs. Inputs are what nodes and users said,
//! with `now`; outputs are `Effect`s the core turns into sends, records and
//! notifications. No sockets here, so every rule is unit-tested with a
//! made-up clock; the files beside this one hold submissions, offline
//! nodes and rollouts, the CLI's views, retention and replay.
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

use crate::support::hash::{Map as HashMap, Set as HashSet};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::history::{DoneHead, Record, SentTo};
use super::jobs::{Final, Jobs, SKIPPED_AFTER_FAILURE};
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

pub use crate::support::clock::Now;
pub use replay::Restore;
pub use views::Counts;

mod offline;
mod replay;
mod retention;
mod submit;
#[cfg(test)]
mod tests;
mod views;

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
    /// It came on a connection other than the one jobs last went to: the
    /// node reopened its sockets, and what was sent to the old ones is
    /// gone with them, never on the wire.
    pub new_link: bool,
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
            rollouts: HashMap::default(),
            roll_due: Vec::new(),
            wait_offline: HashSet::default(),
            offline_waits: Vec::new(),
            queued_offline: HashSet::default(),
            instance: crate::support::hash::new_id().as_u64_pair().0,
            seq: 0,
            queries: Queries::default(),
            live: HashSet::default(),
            lanes: HashMap::default(),
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
    let mut per_lane: HashMap<u32, usize> = HashMap::default();
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

    /// The server listens from `now`: the nodes expected back (restored
    /// online) have their whole expiry from here, however long the
    /// restore, the compaction and the key derivation took before it.
    pub fn listening(&mut self, now: Now, grace: Duration) {
        for n in self.nodes.iter_mut().filter(|n| n.is_online()) {
            n.touch(now.at + grace, now.ms);
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

    /// Is `node` known and online?
    pub fn is_online(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(Node::is_online)
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
                        && !hello.new_link
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
            if let Some(mut p) = self.jobs.get_mut(&id).and_then(|j| j.parts.get_mut(node)) {
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
            if let Some(mut p) = self.jobs.get_mut(&id).and_then(|j| j.parts.get_mut(node)) {
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
        if let Some(mut p) = self
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
        let Some(mut part) = job.parts.get_mut(node) else {
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
                drop(part);
                out.extend(self.done_record(&job_id, node).map(Effect::Journal));
                return None;
            }
            s if s.is_done() => return None, // a resend of a result we have
            _ => {}
        }
        let was = part.state();
        part.finish(outcome, now.at, now.ms);
        drop(part);
        if let Some(n) = self.nodes.get_mut(node) {
            // The window is small and the job near its front: no walk of
            // the node's queue, which may hold thousands, per result.
            if let Some(i) = n.in_flight.iter().position(|id| *id == job_id) {
                n.in_flight.remove(i);
            }
            #[cfg(test)]
            let undone = crate::support::mutation::active(
                crate::support::mutation::Mutation::BeforeExactlyOnce,
            );
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
        // It, and what went after it on the same lost route, go back to
        // the front of the queue in the order they were sent. (One at a
        // time to the front, two jobs unroutable together came back
        // reversed, and ran in that order once the node was back.)
        if let Some(pos) = n.in_flight.iter().position(|id| *id == job_id) {
            let back: Vec<Uuid> = n.in_flight.drain(pos..).collect();
            for id in back.iter().rev() {
                n.queue.push_front(*id);
            }
            for id in back {
                if let Some(mut p) = self.jobs.get_mut(&id).and_then(|j| j.parts.get_mut(node)) {
                    p.unsend();
                }
            }
        }
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
            let Some(mut part) = job.parts.get_mut(node) else {
                continue;
            };
            // Only what waits is sent: a part that ended (or went out)
            // while its id sat in the queue is never sent again.
            #[cfg(test)]
            let undone = crate::support::mutation::active(
                crate::support::mutation::Mutation::BeforeExactlyOnce,
            );
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
            if let Some(mut part) = job.parts.get_mut(node) {
                part.end(Final::SKIPPED, SKIPPED_AFTER_FAILURE.into(), now_ms);
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
        if !self.end_part(job_id, node, Final::LOST, why, now_ms, out) {
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
        state: Final,
        why: &str,
        now_ms: u64,
        out: &mut Vec<Effect>,
    ) -> bool {
        let Some(mut part) = self
            .jobs
            .get_mut(job_id)
            .and_then(|j| j.parts.get_mut(node))
            .filter(|p| !p.state().is_done())
        else {
            return false;
        };
        part.end(state, why.to_owned(), now_ms);
        drop(part);
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
}
