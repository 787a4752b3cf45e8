//! What comes back to the runner: I/O results, transfers, timers, and a
//! stop.

use super::*;

impl Runner {
    /// The I/O thread finished something we gave it.
    pub fn on_io(&mut self, done: IoDone, fx: &mut Effects) {
        match done {
            IoDone::Cache(done) => {
                if let Some(kept) = self.cache.io_done(done, self.now.at) {
                    self.on_persisted(kept, fx);
                }
                self.pump_cache(fx);
            }
            IoDone::Ledger(done) => {
                self.ledger.io_done(done, self.now.at);
                self.start_next(fx);
                self.pump_cache(fx);
            }
            IoDone::Add(done) => {
                let Some(Running {
                    work: Work::Transfer { add },
                    ..
                }) = self.running.as_mut()
                else {
                    log::error!("an ADD file operation finished with no transfer running");
                    return;
                };
                let progress = add.io_done(done, self.now.at, &mut fx.transfer);
                self.transfer_progress(progress, fx);
            }
            IoDone::Probe(_) => log::error!("a connection probe's answer reached the runner"),
            IoDone::PrunedStore(Ok(p)) if p.removed > 0 => log::info!(
                "blueprint store {}: removed {} least recently used ({} bytes); {} kept ({} bytes)",
                self.store.display(),
                p.removed,
                p.freed,
                p.kept,
                p.kept_bytes
            ),
            IoDone::PrunedStore(Ok(_)) => {}
            IoDone::FileLoaded(loaded) => {
                let Some(Running {
                    work: Work::LoadFile { path, check },
                    ..
                }) = self.running.as_ref()
                else {
                    log::error!("a CACHEFILE was read with no CACHEFILE job running");
                    return;
                };
                let (path, check) = (path.clone(), *check);
                let result =
                    loaded.map(|pairs| exec::load_values(&mut self.cache, &path, pairs, check));
                match result {
                    Ok(Ok(done)) => self.finish(done, fx),
                    Ok(Err(p)) => {
                        if let Some(r) = self.running.as_mut() {
                            r.work = Self::persist(*p);
                        }
                    }
                    Err(e) => self.finish(crate::wire::Outcome::ended(Exit::Error(e)), fx),
                }
                self.pump_cache(fx);
            }
            IoDone::PrunedStore(Err(e)) => log::warn!("blueprint store: {e}"),
            IoDone::Dir(made) => {
                let Some(Running {
                    work: Work::Mkdir { stdout_arg },
                    ..
                }) = self.running.as_mut()
                else {
                    log::error!("a WORKDIR was created with no WORKDIR job running");
                    return;
                };
                let stdout_arg = stdout_arg.take();
                // Under --check nothing is kept, the ARG included.
                let keep = matches!(&made, Ok(r) if !r.check);
                let outcome = match made {
                    Ok(r) => {
                        let exit = match (r.changed, r.check) {
                            (false, _) => Exit::Unchanged,
                            (true, true) => Exit::WouldChange,
                            (true, false) => Exit::Code(0),
                        };
                        let mut o = crate::wire::Outcome::ended(exit);
                        o.stdout = r.text.into_bytes();
                        o
                    }
                    Err(e) => crate::wire::Outcome::ended(Exit::Error(e)),
                };
                match stdout_arg {
                    // Reported once the ARG is on disk.
                    Some((name, path)) if keep => {
                        self.cache.stage_arg(&name, &path);
                        if let Some(r) = self.running.as_mut() {
                            r.work = Self::persist(exec::Persist {
                                outcome,
                                what: format!("the directory is there, but --stdout-arg {name}"),
                            });
                        }
                    }
                    _ => self.finish(outcome, fx),
                }
                self.pump_cache(fx);
            }
            IoDone::Url(answer) => {
                let Some(Running {
                    job_id,
                    work:
                        Work::Probe {
                            url,
                            left,
                            delay,
                            tries,
                            at,
                        },
                    ..
                }) = self.running.as_mut()
                else {
                    return; // the WAIT ended (its timeout) while this try was out
                };
                match answer {
                    Ok(line) => {
                        let text = format!("{url}: {line} (try {tries})\n");
                        self.finish(said(Exit::Unchanged, text), fx);
                        self.pump_cache(fx);
                    }
                    Err(e) if *left > 0 => {
                        log::info!(
                            "job {job_id}: WAIT try {tries}: {e}; again in {:.1}s",
                            delay.as_secs_f64()
                        );
                        *left -= 1;
                        let next = self.now.at + *delay;
                        *at = Some(next);
                        fx.timers.push((next, RunnerTimer::Wait));
                    }
                    Err(e) => {
                        let why = match tries {
                            1 => format!("WAIT --url: no 2xx or 3xx answer: {e}"),
                            n => format!("WAIT --url: no 2xx or 3xx answer after {n} tries: {e}"),
                        };
                        self.finish(crate::wire::Outcome::ended(Exit::Error(why)), fx);
                        self.pump_cache(fx);
                    }
                }
            }
        }
    }

    /// The value the running job staged is on disk (`Ok`), or was not
    /// kept (`Err`: why).
    pub(super) fn on_persisted(&mut self, kept: Result<(), String>, fx: &mut Effects) {
        let Some(Running {
            work: Work::Persist { .. },
            ..
        }) = &self.running
        else {
            log::error!("a cache sync finished with no value waiting for it");
            return;
        };
        let Some(r) = self.running.take() else { return };
        let Work::Persist { mut outcome, what } = r.work else {
            return;
        };
        if let Err(e) = kept {
            outcome.exit = Exit::Error(format!("{what}: {e}"));
        }
        self.conclude(r.job_id, r.parent, r.cache_key, outcome, fx);
    }

    /// A message on the transfer port.
    pub fn on_transfer(&mut self, msg: ServerMsg, payload: Option<Vec<u8>>, fx: &mut Effects) {
        let Some(Running {
            job_id,
            work: Work::Transfer { add, .. },
            ..
        }) = self.running.as_mut()
        else {
            log::debug!(
                "transfer message with no transfer running: {}",
                msg.describe()
            );
            return;
        };
        let progress = match (msg, payload) {
            (
                ServerMsg::Chunk {
                    job_id: id,
                    file,
                    offset,
                },
                Some(data),
            ) if id == *job_id => add.on_chunk(file, offset, &data, self.now.at, &mut fx.transfer),
            (
                ServerMsg::FetchError {
                    job_id: id,
                    file,
                    message,
                },
                None,
            ) if id == *job_id => add.on_fetch_error(file, &message, self.now.at),
            (msg, _) => {
                log::warn!(
                    "server: dropped a transfer message for another job or malformed: {}",
                    msg.describe()
                );
                return;
            }
        };
        self.transfer_progress(progress, fx);
    }

    pub(super) fn transfer_progress(&mut self, progress: Progress, fx: &mut Effects) {
        let mut stored = false;
        if let Some(Running {
            work: Work::Transfer { add },
            ..
        }) = self.running.as_mut()
        {
            if let Some(io) = add.take_io() {
                fx.io.push(IoTask::Add(io));
            }
            stored = add.stored();
        }
        if let Progress::Finished(outcome) = progress {
            if stored {
                fx.io.push(IoTask::PruneStore(self.store.clone()));
            }
            self.finish(outcome, fx);
            self.pump_cache(fx);
        }
    }

    /// Has the running job work to do without waiting for an event?
    pub fn wants_tick(&self) -> bool {
        matches!(&self.running, Some(Running { work: Work::Transfer { add, .. }, .. }) if add.wants_tick())
    }

    /// Do a bounded slice of that work.
    pub fn tick(&mut self, fx: &mut Effects) {
        let Some(Running {
            work: Work::Transfer { add, .. },
            ..
        }) = self.running.as_mut()
        else {
            return;
        };
        let progress = add.tick(self.now.at, &mut fx.transfer);
        self.transfer_progress(progress, fx);
    }

    pub fn on_timer(&mut self, timer: RunnerTimer, now: Instant, fx: &mut Effects) {
        match timer {
            RunnerTimer::JobTimeout => {
                if self.timeout_armed.is_some_and(|armed| armed > now) {
                    return; // superseded by an earlier one, still pending
                }
                self.timeout_armed = None;
                let mut next = None;
                for (_, r) in &mut self.side {
                    match &mut r.work {
                        Work::Process { timed_out, .. }
                            if r.deadline.is_some_and(|d| d <= now) && !*timed_out =>
                        {
                            log::warn!(
                                "job {}: timed out after {}s; killing its process group",
                                r.job_id,
                                r.timeout_secs
                            );
                            fx.signal.push((r.job_id, libc::SIGKILL));
                            *timed_out = true;
                        }
                        _ => {
                            if let Some(d) = r.deadline.filter(|d| *d > now) {
                                next = Some(next.map_or(d, |n: Instant| n.min(d)));
                            }
                        }
                    }
                }
                if let Some(at) = next {
                    self.arm_timeout(at, fx);
                }
                let Some(r) = self.running.as_mut() else {
                    return;
                };
                match r.deadline {
                    None => return,
                    Some(deadline) if deadline > now => {
                        self.arm_timeout(deadline, fx);
                        return;
                    }
                    Some(_) => {}
                }
                let (job_id, secs) = (r.job_id, r.timeout_secs);
                match &mut r.work {
                    Work::Process { timed_out, .. } if !*timed_out => {
                        log::warn!(
                            "job {job_id}: timed out after {secs}s; killing its process group"
                        );
                        fx.signal.push((job_id, libc::SIGKILL));
                        *timed_out = true;
                    }
                    // A sync or a mkdir cannot be cut short: it reports
                    // when done. A retry has its own timeout.
                    Work::Process { .. }
                    | Work::Persist { .. }
                    | Work::Mkdir { .. }
                    | Work::LoadFile { .. }
                    | Work::Retrying { .. } => {}
                    Work::Sleep { .. } | Work::Probe { .. } => {
                        log::warn!("job {job_id}: WAIT timed out after {secs}s");
                        self.finish(crate::wire::Outcome::ended(Exit::TimedOut { secs }), fx);
                        self.pump_cache(fx);
                    }
                    Work::Query { key, .. } => {
                        log::warn!(
                            "job {job_id}: QUERY {key}: no map from the server within {secs}s"
                        );
                        self.finish(crate::wire::Outcome::ended(Exit::TimedOut { secs }), fx);
                        self.pump_cache(fx);
                    }
                    // A file being put in place may land anyway: report it
                    // as it ends.
                    Work::Transfer { add } if add.in_io() => {}
                    Work::Transfer { .. } => {
                        log::warn!("job {job_id}: timed out after {secs}s; transfer abandoned");
                        self.finish(crate::wire::Outcome::ended(Exit::TimedOut { secs }), fx);
                        self.pump_cache(fx);
                    }
                }
            }
            RunnerTimer::TransferStall => {
                self.stall_armed = false;
                let Some(Running {
                    job_id,
                    work: Work::Transfer { add },
                    ..
                }) = &mut self.running
                else {
                    return;
                };
                let idle = add
                    .waiting_since()
                    .map(|t| now.saturating_duration_since(t));
                match idle {
                    Some(idle) if idle >= self.stall => {
                        let secs = idle.as_secs_f64();
                        log::warn!("job {job_id}: no file data from the server for {secs:.1}s; transfer failed");
                        let outcome = add.give_up(format!(
                            "the transfer stalled: no data from the server for {secs:.1}s (the server is overloaded or the connection is broken); the destination was left as it was"
                        ), now);
                        self.finish(outcome, fx);
                        self.pump_cache(fx);
                    }
                    // Still moving (or hashing locally): look again later.
                    Some(idle) => self.arm_stall(now + (self.stall - idle), fx),
                    None => self.arm_stall(now + self.stall, fx),
                }
            }
            RunnerTimer::Retry => self.retry(now, fx),
            RunnerTimer::Wait => self.wait_due(now, fx),
            RunnerTimer::Started => {
                let running = |id: &Uuid| {
                    self.running.as_ref().is_some_and(|r| r.job_id == *id)
                        || self.side.iter().any(|(_, r)| r.job_id == *id)
                };
                for job_id in std::mem::take(&mut self.starting) {
                    if running(&job_id) {
                        fx.job.push(ClientMsg::Started { job_id });
                    }
                }
            }
            RunnerTimer::LedgerCommit => {
                self.commit_armed = false;
                self.ledger.commit();
                self.pump_cache(fx);
            }
            RunnerTimer::KillGrace => {
                if let Some(Running {
                    job_id,
                    work: Work::Process { .. },
                    ..
                }) = &self.running
                {
                    log::warn!("job {job_id}: command ignored SIGTERM; killing its process group");
                    fx.signal.push((*job_id, libc::SIGKILL));
                }
                for (_, r) in &self.side {
                    log::warn!(
                        "job {}: command ignored SIGTERM; killing its process group",
                        r.job_id
                    );
                    fx.signal.push((r.job_id, libc::SIGKILL));
                }
            }
        }
    }

    /// The sockets to the server were reset, or the server forgot us: what
    /// a running transfer asked for will never come, so it fails now rather
    /// than at its timeout. (The server still waits for its result if it
    /// knows the job; a restarted one drops it.)
    pub fn link_reset(&mut self, fx: &mut Effects) {
        if let Some(Running {
            work: Work::Transfer { add },
            ..
        }) = &self.running
        {
            if add.in_io() {
                return; // it reports as it ends
            }
            let outcome = crate::wire::Outcome::ended(Exit::Error(
                "the connection to the server was reset during the transfer".into(),
            ));
            self.finish(outcome, fx);
            self.pump_cache(fx);
        }
    }

    /// Drop expired cache entries (the rewrite that takes them off the
    /// disk is work for the I/O thread).
    pub fn sweep_cache(&mut self, fx: &mut Effects) {
        let dropped = self.cache.sweep(self.now.ms);
        self.ledger.unstall();
        if dropped > 0 {
            log::info!("cache: dropped {dropped} expired entries");
        }
        self.pump_cache(fx);
    }

    /// Shutting down: start nothing more; a running command gets SIGTERM and
    /// a grace period, a transfer is abandoned. Returns whether anything is
    /// still running.
    pub(super) fn io_busy(&self) -> bool {
        self.cache.is_busy() || self.ledger.is_busy()
    }

    pub fn stop(&mut self, fx: &mut Effects) -> bool {
        self.stopping = true;
        // Queued and never started: said now, not at this node's expiry.
        for q in std::mem::take(&mut self.queue) {
            let why = "the client was stopped before this job started on the node; it did not run";
            self.report(
                q.job_id,
                q.parent,
                crate::wire::Outcome::ended(Exit::Lost(why.into())),
                fx,
            );
        }
        // What the ledger holds reaches the disk before the client exits.
        self.ledger.commit();
        self.pump_cache(fx);
        if !self.side.is_empty() {
            for (_, r) in &self.side {
                log::info!("stopping job {} (its process group) first", r.job_id);
                fx.signal.push((r.job_id, libc::SIGTERM));
            }
            fx.timers
                .push((self.now.at + KILL_GRACE, RunnerTimer::KillGrace));
            return true;
        }
        let Some(r) = &self.running else {
            return self.io_busy();
        };
        match &r.work {
            Work::Process { .. } => {
                log::info!("stopping job {} (its process group) first", r.job_id);
                fx.signal.push((r.job_id, libc::SIGTERM));
                fx.timers
                    .push((self.now.at + KILL_GRACE, RunnerTimer::KillGrace));
                true
            }
            // Waiting for the I/O thread: reports as it ends.
            Work::Transfer { add } if add.in_io() => true,
            Work::Transfer { .. } => {
                let outcome = crate::wire::Outcome::ended(Exit::Error(
                    "the client was stopped during the transfer".into(),
                ));
                self.finish(outcome, fx);
                self.pump_cache(fx);
                self.io_busy()
            }
            // Reports when the sync or the mkdir is done.
            Work::Persist { .. } | Work::Mkdir { .. } | Work::LoadFile { .. } => true,
            Work::Sleep { .. } | Work::Probe { .. } => {
                let outcome = crate::wire::Outcome::ended(Exit::Error(
                    "the client was stopped during the WAIT".into(),
                ));
                self.finish(outcome, fx);
                self.pump_cache(fx);
                self.io_busy()
            }
            Work::Query { .. } => {
                let outcome = crate::wire::Outcome::ended(Exit::Error(
                    "the client was stopped while the QUERY waited for the other nodes".into(),
                ));
                self.finish(outcome, fx);
                self.pump_cache(fx);
                self.io_busy()
            }
            // No next attempt: the last one is the result.
            Work::Retrying { .. } => {
                let Some(r) = self.running.take() else {
                    return self.io_busy();
                };
                if let Work::Retrying { mut failed, .. } = r.work {
                    log::info!("job {}: stopping; no more attempts", r.job_id);
                    failed.attempts = r.retry.map(|r| r.attempts).unwrap_or_default();
                    self.conclude(r.job_id, r.parent, r.cache_key, failed, fx);
                }
                self.pump_cache(fx);
                self.io_busy()
            }
        }
    }
}
