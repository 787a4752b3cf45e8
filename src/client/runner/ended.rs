//! A command's end: its outcome, retries and WAIT's next try.

use super::*;

impl Runner {
    /// The running command ended (`Ok`: reaped, with what it printed) or
    /// could not be started or waited for (`Err`: why).
    pub fn on_exited(&mut self, job_id: Uuid, ended: Result<Ended, String>, fx: &mut Effects) {
        if let Some(i) = self.side.iter().position(|(_, r)| r.job_id == job_id) {
            let (_, r) = self.side.remove(i);
            let timed_out = matches!(
                r.work,
                Work::Process {
                    timed_out: true,
                    ..
                }
            )
            .then_some(r.timeout_secs);
            // A plain command: nothing to keep but its outcome.
            let outcome = match ended {
                Ok(ended) => {
                    match exec::finish(ended, &Capture::default(), timed_out, &mut self.cache) {
                        Ok(o) => o,
                        Err(p) => p.outcome,
                    }
                }
                Err(why) => crate::wire::Outcome::ended(Exit::Error(why)),
            };
            self.conclude(job_id, r.parent, r.cache_key, outcome, fx);
            self.pump_cache(fx);
            return;
        }
        let Some(Running {
            job_id: running,
            work: Work::Process { .. },
            ..
        }) = &self.running
        else {
            log::error!("job {job_id}: a process ended with no command running");
            return;
        };
        if *running != job_id {
            log::error!("job {job_id}: a process ended while job {running} runs");
            return;
        }
        let Some(r) = self.running.take() else { return };
        let Running {
            job_id,
            parent,
            deadline,
            timeout_secs,
            cache_key,
            work,
            mut retry,
        } = r;
        let Work::Process {
            capture,
            timed_out,
            kind,
        } = work
        else {
            return;
        };
        let timed_out = timed_out.then_some(timeout_secs);
        let mut outcome = match ended {
            Ok(ended) => {
                match exec::finish(ended, &capture, timed_out, &mut self.cache) {
                    Ok(outcome) => outcome,
                    // Reported once the value is on disk.
                    Err(mut p) => {
                        if let Some(r) = retry.take() {
                            p.outcome.attempts = r.attempts;
                        }
                        self.running = Some(Running {
                            job_id,
                            parent,
                            deadline: None,
                            timeout_secs,
                            cache_key,
                            work: Self::persist(*p),
                            retry: None,
                        });
                        self.pump_cache(fx);
                        return;
                    }
                }
            }
            Err(why) => crate::wire::Outcome::ended(Exit::Error(why)),
        };
        // A command that ran and failed is run again, unless the client is
        // stopping (a SIGTERM it sent is not the command's failure).
        let again = matches!(
            outcome.exit,
            Exit::Code(_) | Exit::Signal(_) | Exit::TimedOut { .. }
        ) && !outcome.exit.state().is_ok()
            && !self.stopping;
        match retry {
            Some(mut r) if again && r.left > 0 => {
                let now = self.now.at;
                let tried = r.attempts.len() + 1;
                log::warn!(
                    "job {job_id}: attempt {tried} of {} failed ({}); retrying in {}s",
                    tried + r.left as usize,
                    outcome.exit,
                    crate::dsl::secs_text(r.delay.as_millis() as u64)
                );
                r.left -= 1;
                let at = now + r.delay;
                fx.timers.push((at, RunnerTimer::Retry));
                self.running = Some(Running {
                    job_id,
                    parent,
                    deadline: None,
                    timeout_secs,
                    cache_key,
                    work: Work::Retrying {
                        at,
                        capture,
                        failed: outcome,
                        kind,
                    },
                    retry: Some(r),
                });
                return;
            }
            Some(r) => outcome.attempts = r.attempts,
            None => {}
        }
        let succeeded = outcome.exit == Exit::Code(0);
        match kind {
            ProcKind::Run => {}
            ProcKind::WaitCmd if succeeded => outcome.exit = Exit::Unchanged,
            ProcKind::WaitCmd => {}
            ProcKind::Script { check } => {
                let marked = crate::verbs::take_mark(&mut outcome.stdout, &job_id);
                if succeeded {
                    outcome.exit = match (marked, check) {
                        (false, _) => Exit::Unchanged,
                        (true, true) => Exit::WouldChange,
                        (true, false) => Exit::Code(0),
                    };
                }
            }
            ProcKind::Guard { then, command } => match (outcome.exit.clone(), then) {
                (Exit::Code(0), _) => {
                    outcome.exit = Exit::Unchanged;
                    outcome.stdout = b"not run: the --unless command succeeded\n".to_vec();
                    outcome.stderr.clear();
                }
                (Exit::Code(code), Some(then)) => {
                    // The guard failed: the command runs, within the same
                    // --timeout.
                    let (spawn, on_success) = *then;
                    log::info!("job {job_id}: the --unless command exited {code}; running");
                    fx.spawn.push(spawn);
                    self.running = Some(Running {
                        job_id,
                        parent,
                        deadline,
                        timeout_secs,
                        cache_key: on_success.cache_key,
                        work: Work::Process {
                            capture: on_success.capture,
                            timed_out: false,
                            kind: ProcKind::Run,
                        },
                        retry: None,
                    });
                    return;
                }
                (Exit::Code(code), None) => {
                    outcome.exit = Exit::WouldChange;
                    outcome.stdout =
                        format!("would run: {command} (the --unless command exited {code})\n")
                            .into_bytes();
                    outcome.stderr.clear();
                }
                // Killed, timed out, not started: the job fails.
                _ => {}
            },
        }
        self.conclude(job_id, parent, cache_key, outcome, fx);
        self.pump_cache(fx);
    }

    /// The next attempt of a failed command is due: run it, with its own
    /// `--timeout`.
    pub(super) fn retry(&mut self, now: Instant, fx: &mut Effects) {
        let Some(r) = self.running.as_mut() else {
            return;
        };
        let Work::Retrying { at, .. } = &r.work else {
            return;
        };
        if *at > now {
            let at = *at;
            fx.timers.push((at, RunnerTimer::Retry));
            return;
        }
        let Some(retry) = r.retry.as_mut() else {
            return;
        };
        let work = std::mem::replace(&mut r.work, Work::Mkdir { stdout_arg: None });
        let Work::Retrying {
            capture,
            failed,
            kind,
            ..
        } = work
        else {
            r.work = work;
            return;
        };
        retry.attempts.push(Attempt::of(failed, retry.cap));
        log::info!(
            "job {}: attempt {} starting",
            r.job_id,
            retry.attempts.len() + 1
        );
        r.work = Work::Process {
            capture,
            timed_out: false,
            kind,
        };
        fx.spawn.push(retry.spawn.clone());
        let deadline = now + Duration::from_secs(r.timeout_secs);
        r.deadline = Some(deadline);
        self.arm_timeout(deadline, fx);
    }

    /// A WAIT's timer: its time is up, or its next try is due.
    pub(super) fn wait_due(&mut self, now: Instant, fx: &mut Effects) {
        let Some(r) = self.running.as_mut() else {
            return;
        };
        match &mut r.work {
            Work::Sleep { at, secs } if *at <= now => {
                let text = format!(
                    "waited {}s\n",
                    crate::dsl::secs_text((*secs * 1000.0) as u64)
                );
                self.finish(said(Exit::Unchanged, text), fx);
                self.pump_cache(fx);
            }
            Work::Probe {
                url,
                tries,
                at: at @ Some(_),
                ..
            } if at.is_some_and(|t| t <= now) => {
                *at = None;
                *tries += 1;
                fx.io.push(IoTask::Url {
                    url: url.clone(),
                    limit: PROBE_LIMIT,
                });
            }
            // Early (a timer of an earlier job): look again when due.
            Work::Sleep { at, .. } => fx.timers.push((*at, RunnerTimer::Wait)),
            Work::Probe { at: Some(at), .. } => fx.timers.push((*at, RunnerTimer::Wait)),
            _ => {}
        }
    }
}
