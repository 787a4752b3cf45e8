//! Nodes that go silent, and the waits and rolling batches that depend on
//! who is online.

use super::*;

impl Cluster {
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
    pub(super) fn finish_unreachable(
        &mut self,
        job_id: &Uuid,
        node: &str,
        why: &str,
        now_ms: u64,
        out: &mut Vec<Effect>,
    ) {
        self.end_part(job_id, node, Final::UNREACHABLE, why, now_ms, out);
    }

    /// Why a job cannot reach `node` now, if it is offline.
    pub(super) fn offline_since(&self, node: &str) -> Option<String> {
        let n = self.nodes.get(node).filter(|n| !n.is_online())?;
        Some(format!(
            "the node is offline (last heard from {})",
            crate::support::clock::format_utc(n.last_seen_ms)
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

    /// Parts that waited for an offline node past their timeout end
    /// unreachable.
    pub(super) fn give_up_waits(&mut self, now: Now, out: &mut Vec<Effect>) {
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

    /// Start the next batch of each rolling run whose batch ended (or, past
    /// `--max-fail`, end the rest of the run as never started).
    pub(super) fn roll_on(&mut self, now: Now, out: &mut Vec<Effect>) {
        while let Some(parent) = self.roll_due.pop() {
            self.next_batch(parent, now, out);
        }
    }

    pub(super) fn next_batch(&mut self, parent: Uuid, now: Now, out: &mut Vec<Effect>) {
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
                        self.end_part(id, node, Final::SKIPPED, &why, now.ms, out);
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
}
