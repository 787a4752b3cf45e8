//! Submissions: targets resolved, jobs queued and released once durable,
//! orchestrations planned, and who follows their output.

use super::*;
use crate::targets::Refusal;

impl Cluster {
    /// Does every node `req` (a submission) would go to match `scope` (a
    /// run token's target patterns)? `Err` names one that does not. A
    /// submission whose targets do not resolve passes here and is refused
    /// as it would be anyway.
    pub fn within_scope(&self, req: &crate::wire::Request, scope: &str) -> Result<(), String> {
        use crate::wire::Request;
        let scope = crate::targets::split(&[scope.to_owned()], "targets")?;
        let mut jobs: Vec<(&Task, &[String])> = Vec::new();
        let exclude: &[String] = match req {
            Request::Submit {
                task,
                targets,
                exclude,
                ..
            } => {
                jobs.push((task, targets));
                exclude
            }
            Request::Orchestrate {
                blocks, exclude, ..
            } => {
                for block in blocks {
                    for (j, task) in block.tasks.iter().enumerate() {
                        jobs.push((task, block.job_targets(j)));
                    }
                }
                exclude
            }
            _ => return Ok(()),
        };
        for (task, targets) in jobs {
            let Ok(resolved) = self.resolve(task, targets, exclude) else {
                continue;
            };
            for name in &resolved.targets {
                let inside = self
                    .nodes
                    .get(name)
                    .is_some_and(|n| crate::targets::matches_any(&scope, name, &n.about));
                if !inside {
                    return Err(format!(
                        "node '{name}' is outside it (name the targets, within the token's)"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Note who submitted job `id`; false if it is not known.
    pub fn set_by(&mut self, id: &Uuid, by: &str) -> bool {
        self.jobs.set_by(id, by)
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

    /// The nodes a job goes to: those `targets` match (every node when
    /// empty) less those `exclude` matches (`targets` module); one of them
    /// (the least busy) for `--run-once`.
    pub(super) fn resolve(
        &self,
        task: &Task,
        targets: &[String],
        exclude: &[String],
    ) -> Result<crate::targets::Resolved, Refusal> {
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
    pub(super) fn queue_job(
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
            reconnecting: Vec::new(),
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
    ) -> Result<Submitted, Refusal> {
        let resolved = self.resolve(&task, targets, exclude)?;
        let mut submitted = self.queue_job(task, &resolved.targets, None, now, out);
        submitted.offline = resolved.offline;
        submitted.reconnecting = self.awaited(resolved.targets.iter().map(String::as_str), now.ms);
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
    ) -> Result<Plan, Refusal> {
        let mut planned = Vec::new();
        let mut offline = Vec::new();
        for (i, block) in blocks.iter().enumerate() {
            for (j, task) in block.tasks.iter().enumerate() {
                let resolved = self
                    .resolve(task, block.job_targets(j), exclude)
                    .map_err(|e| e.of(&block.label(i)))?;
                offline.extend(resolved.offline);
                planned.push((i, resolved.targets, task.clone()));
            }
        }
        offline.sort();
        offline.dedup();
        if planned.is_empty() {
            return Err(Refusal::Other("the orchestration has no jobs".into()));
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
                return Err(Refusal::Other(format!(
                    "{}: batch cannot be combined with --batch, which rolls the whole run",
                    blocks[*i].label(*i)
                )))
            }
            (_, [_, (i, _), ..]) => {
                return Err(Refusal::Other(format!(
                    "{}: only one block of a run may have batch (the blocks after it roll with it)",
                    blocks[*i].label(*i)
                )))
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
                return Err(Refusal::Other(format!(
                    "{}: QUERY needs every target at once, and --batch holds some back: run the QUERY in an orchestration of its own first",
                    blocks[*i].label(*i)
                )));
            }
        }
        let from = planned
            .iter()
            .take_while(|(i, _, _)| *i < from_block)
            .count();
        let parent_id = (!dry_run).then(crate::support::hash::new_id);
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
        let mut named: HashMap<String, Uuid> = HashMap::default();
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
        let mut nodes: Vec<&str> = jobs
            .iter()
            .flat_map(|j| j.targets.iter().map(String::as_str))
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        let reconnecting = self.awaited(nodes.into_iter(), now.ms);
        Ok(Plan {
            parent_id,
            jobs,
            batches,
            offline,
            reconnecting,
        })
    }
}
