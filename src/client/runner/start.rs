//! Starting jobs: which may start now, and how each verb begins; how an
//! ending is reported.

use super::*;

impl Runner {
    /// Which queued job may start now, if any: the head when nothing runs;
    /// with `async` lanes, the first waiting job of each lane of the
    /// head's group whose lane is idle, beside the others (a job that is
    /// not a plain command runs alone, once the others have ended). A job
    /// never starts before one that arrived earlier outside its group, nor
    /// before an earlier one of its lane.
    pub(super) fn next_startable(&self) -> Option<usize> {
        if self.running.is_some() {
            return None;
        }
        let head = self.queue.front()?;
        let Some(lane) = head.lane else {
            return self.side.is_empty().then_some(0);
        };
        let same = |l: &Lane| l.parent == lane.parent && l.group == lane.group;
        if self.side.iter().any(|(l, _)| !same(l)) {
            return None;
        }
        let mut seen: Vec<u32> = Vec::new();
        for (i, q) in self.queue.iter().enumerate().take(MAX_SCAN) {
            let Some(l) = q.lane.filter(|l| same(l)) else {
                return None; // the group is all started: what follows waits
            };
            if seen.contains(&l.block) {
                continue;
            }
            seen.push(l.block);
            if self.side.iter().any(|(s, _)| s.block == l.block) {
                continue; // its lane is busy
            }
            if !side_by_side(&q.task) {
                if i == 0 && self.side.is_empty() {
                    return Some(0);
                }
                continue;
            }
            if self.side.len() < LANES {
                return Some(i);
            }
        }
        None
    }

    pub(super) fn start_next(&mut self, fx: &mut Effects) {
        while !self.stopping {
            let Some(at) = self.next_startable() else {
                return;
            };
            let Some(head) = self.queue.get(at) else {
                return;
            };
            // Not before the ledger has it: a job that may have started
            // must be known to have, whatever happens next.
            if !self.ledger.is_written(head.ticket) {
                let Some(why) = self.ledger.failure(head.ticket).map(str::to_owned) else {
                    return; // its write is out, or due
                };
                let Some(q) = self.queue.remove(at) else {
                    return;
                };
                log::error!("job {}: {why}", q.job_id);
                self.report(
                    q.job_id,
                    q.parent,
                    crate::wire::Outcome::ended(Exit::Error(why)),
                    fx,
                );
                continue;
            }
            let Some(Queued {
                job_id,
                parent,
                mut task,
                live,
                lane,
                ..
            }) = self.queue.remove(at)
            else {
                return;
            };
            let beside = lane.filter(|_| side_by_side(&task));
            if parent.is_some_and(|p| self.failed_parents.contains(&p)) {
                self.report(
                    job_id,
                    parent,
                    crate::wire::Outcome::ended(Exit::SkippedAfterFailure),
                    fx,
                );
                continue;
            }
            // A handler runs where one of its jobs changed something, and
            // then whatever the cache says.
            if let Some(h) = task
                .options
                .handler
                .as_ref()
                .filter(|h| !h.onchanges.is_empty())
            {
                let fired = h.triggers.iter().any(|t| self.ledger.changed(t));
                if !fired {
                    log::info!(
                        "job {job_id}: not run: none of {} changed anything here",
                        h.onchanges.join(", ")
                    );
                    self.report(
                        job_id,
                        parent,
                        crate::wire::Outcome::ended(Exit::NoChange),
                        fx,
                    );
                    continue;
                }
                task.options.skip_cache = true;
            }
            log::info!(
                "job {job_id}: starting {} {}",
                task.verb(),
                task.args_masked()
            );
            let now = self.now.at;
            let mut retry = None;
            let (work, cache_key) = match exec::start(
                job_id,
                &task,
                &mut self.cache,
                &self.node,
                &self.store,
                self.now,
            ) {
                Started::Done(outcome) => {
                    self.report(job_id, parent, outcome, fx);
                    continue;
                }
                Started::Process(mut spawn, kind, on_success) => {
                    spawn.live = live;
                    let retries = match kind {
                        ProcKind::Run => task.options.retries,
                        _ => 0,
                    };
                    if retries > 0 {
                        retry = Some(Box::new(Retry {
                            spawn: spawn.clone(),
                            left: retries,
                            delay: Duration::from_millis(task.options.retry_delay_ms),
                            attempts: Vec::new(),
                            cap: Attempt::cap(retries as usize),
                        }));
                    }
                    fx.spawn.push(spawn);
                    self.starting(job_id, fx);
                    let OnSuccess { cache_key, capture } = on_success;
                    (
                        Work::Process {
                            capture,
                            timed_out: false,
                            kind,
                        },
                        cache_key,
                    )
                }
                Started::Wait(WaitStart::Cmd {
                    mut spawn,
                    retry: tries,
                    delay,
                }) => {
                    spawn.live = live;
                    if tries > 0 {
                        retry = Some(Box::new(Retry {
                            spawn: spawn.clone(),
                            left: tries,
                            delay,
                            attempts: Vec::new(),
                            cap: Attempt::cap(tries as usize),
                        }));
                    }
                    fx.spawn.push(spawn);
                    self.starting(job_id, fx);
                    (
                        Work::Process {
                            capture: Capture::default(),
                            timed_out: false,
                            kind: ProcKind::WaitCmd,
                        },
                        None,
                    )
                }
                Started::Wait(WaitStart::Sleep(d)) => {
                    self.starting(job_id, fx);
                    fx.timers.push((now + d, RunnerTimer::Wait));
                    (
                        Work::Sleep {
                            at: now + d,
                            secs: d.as_secs_f64(),
                        },
                        None,
                    )
                }
                Started::Wait(WaitStart::Url { url, retry, delay }) => {
                    self.starting(job_id, fx);
                    fx.io.push(IoTask::Url {
                        url: url.clone(),
                        limit: PROBE_LIMIT,
                    });
                    (
                        Work::Probe {
                            url,
                            left: retry,
                            delay,
                            tries: 1,
                            at: None,
                        },
                        None,
                    )
                }
                Started::Transfer(mut add) => {
                    self.starting(job_id, fx);
                    self.arm_stall(now + self.stall, fx);
                    if let Some(io) = add.take_io() {
                        fx.io.push(IoTask::Add(io));
                    }
                    (Work::Transfer { add }, None)
                }
                Started::Persist(p) => (Self::persist(p), None),
                Started::LoadFile(path) => {
                    fx.io.push(IoTask::LoadFile(path.clone()));
                    (
                        Work::LoadFile {
                            path: path.display().to_string(),
                            check: task.options.check,
                        },
                        None,
                    )
                }
                Started::Dir(mut dir) => {
                    let stdout_arg = dir
                        .stdout_arg
                        .take()
                        .map(|name| (name, dir.path.display().to_string()));
                    fx.io.push(IoTask::Dir(dir));
                    (Work::Mkdir { stdout_arg }, None)
                }
                Started::Query { key, value } => {
                    self.starting(job_id, fx);
                    fx.job.push(ClientMsg::QueryValue {
                        job_id,
                        value: value.clone(),
                    });
                    (Work::Query { key, value }, None)
                }
            };
            let timeout_secs = task.options.timeout_secs;
            let deadline = now + Duration::from_secs(timeout_secs);
            self.arm_timeout(deadline, fx);
            let r = Running {
                job_id,
                parent,
                deadline: Some(deadline),
                timeout_secs,
                cache_key,
                work,
                retry,
            };
            match beside {
                Some(lane) => {
                    log::info!(
                        "job {job_id}: runs beside {} other job(s) of its async group",
                        self.side.len()
                    );
                    self.side.push((lane, r));
                }
                None => self.running = Some(r),
            }
        }
    }

    /// One `TransferStall` check pending at a time: transfers that follow
    /// each other share it, instead of each leaving a chain of checks.
    pub(super) fn arm_stall(&mut self, at: Instant, fx: &mut Effects) {
        if !self.stall_armed {
            fx.timers.push((at, RunnerTimer::TransferStall));
            self.stall_armed = true;
        }
    }

    /// `job_id` started: the server hears it once the job has run for
    /// `STARTED_GRACE`, unless it ended first.
    pub(super) fn starting(&mut self, job_id: Uuid, fx: &mut Effects) {
        if self.starting.is_empty() {
            fx.timers
                .push((self.now.at + STARTED_GRACE, RunnerTimer::Started));
        }
        self.starting.push(job_id);
    }

    /// Make sure a `JobTimeout` fires no later than `deadline`.
    pub(super) fn arm_timeout(&mut self, deadline: Instant, fx: &mut Effects) {
        if self.timeout_armed.is_none_or(|armed| deadline < armed) {
            fx.timers.push((deadline, RunnerTimer::JobTimeout));
            self.timeout_armed = Some(deadline);
        }
    }

    pub(super) fn report(
        &mut self,
        job_id: Uuid,
        parent: Option<Uuid>,
        outcome: Outcome,
        fx: &mut Effects,
    ) {
        let outcome = outcome.bounded();
        log::info!(
            "job {job_id}: {} after {:.3}s",
            outcome.exit,
            outcome.exec_secs
        );
        if let (false, Some(p)) = (outcome.exit.state().is_ok(), parent) {
            if self.failed_parents.insert(p) {
                self.failed_order.push_back(p);
                if self.failed_order.len() > FAILED_PARENTS_CAP {
                    if let Some(old) = self.failed_order.pop_front() {
                        self.failed_parents.remove(&old);
                    }
                }
            }
        }
        self.ledger.end(job_id, &outcome);
        fx.job.push(ClientMsg::Finished { job_id, outcome });
    }

    /// End the running job with `outcome` and start the next.
    pub(super) fn finish(&mut self, outcome: Outcome, fx: &mut Effects) {
        let Some(r) = self.running.take() else { return };
        self.conclude(r.job_id, r.parent, r.cache_key, outcome, fx);
    }

    /// The one place a started job ends: settle its cache entry, report,
    /// start the next.
    pub(super) fn conclude(
        &mut self,
        job_id: Uuid,
        parent: Option<Uuid>,
        cache_key: Option<String>,
        outcome: Outcome,
        fx: &mut Effects,
    ) {
        if let Some(key) = &cache_key {
            let ok = outcome.exit.state() == JobState::Succeeded;
            self.cache.settle(key, ok, self.now.ms);
        }
        self.report(job_id, parent, outcome, fx);
        self.start_next(fx);
    }

    /// The job waits for the value it staged to be on disk.
    pub(super) fn persist(p: exec::Persist) -> Work {
        Work::Persist {
            outcome: p.outcome,
            what: p.what,
        }
    }
}
