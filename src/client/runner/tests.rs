use super::*;
use crate::dsl::Verb;

struct Rig {
    runner: Runner,
    dir: std::path::PathBuf,
}

impl Rig {
    fn new(name: &str) -> Rig {
        let dir =
            std::env::temp_dir().join(format!("director-runner-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = Cache::open(&dir, Duration::from_secs(3600), 0).unwrap();
        let ledger = Ledger::open(&dir).unwrap();
        Rig {
            runner: Runner::new(
                cache,
                ledger,
                Duration::from_secs(5),
                Default::default(),
                std::env::temp_dir(),
                Now::real(),
            ),
            dir,
        }
    }

    fn enqueue(&mut self, parent: Option<Uuid>, verb: Verb, job: &str) -> (Uuid, Effects) {
        let id = Uuid::new_v4();
        let fx = self.enqueue_id(id, parent, verb, job);
        (id, fx)
    }

    fn enqueue_id(&mut self, id: Uuid, parent: Option<Uuid>, verb: Verb, job: &str) -> Effects {
        let mut fx = Effects::default();
        let task = Task::parse(verb, job).unwrap();
        self.runner.enqueue(id, parent, task, false, &mut fx);
        self.ledger_io(fx)
    }

    /// Write the ledger's records at once, as the worker would, with
    /// what that leads to: the effects of `fx` and theirs, without
    /// ledger writes.
    fn ledger_io(&mut self, mut fx: Effects) -> Effects {
        loop {
            let mut out = Effects::default();
            if let Some(i) = fx.io.iter().position(|t| matches!(t, IoTask::Ledger(_))) {
                let task = fx.io.remove(i);
                self.runner.on_io(task.run(), &mut out);
            } else if let Some(i) = fx
                .timers
                .iter()
                .position(|(_, t)| *t == RunnerTimer::LedgerCommit)
            {
                // The group commit's time comes.
                let (at, t) = fx.timers.remove(i);
                self.runner.on_timer(t, at, &mut out);
            } else {
                break;
            }
            fx.job.append(&mut out.job);
            fx.transfer.append(&mut out.transfer);
            fx.timers.append(&mut out.timers);
            fx.io.append(&mut out.io);
            fx.spawn.append(&mut out.spawn);
            fx.signal.append(&mut out.signal);
        }
        fx
    }

    /// Run what the runner gave the I/O thread, as the worker would.
    fn run_io(&mut self, fx: &mut Effects) -> Effects {
        assert!(!fx.io.is_empty(), "work for the I/O thread");
        let task = fx.io.remove(0);
        let mut out = Effects::default();
        self.runner.on_io(task.run(), &mut out);
        self.ledger_io(out)
    }

    /// Run every I/O task `fx` leads to, in order, as the worker
    /// would; the results reported meanwhile.
    fn settle_io(&mut self, mut fx: Effects) -> Vec<(Uuid, JobState)> {
        let mut all = finished(&fx);
        while !fx.io.is_empty() {
            let mut next = self.run_io(&mut fx);
            all.extend(finished(&next));
            next.io.splice(0..0, fx.io.drain(..));
            fx = next;
        }
        all
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The results in `fx`, in order: (job, state).
fn finished(fx: &Effects) -> Vec<(Uuid, JobState)> {
    fx.job
        .iter()
        .filter_map(|m| match m {
            ClientMsg::Finished { job_id, outcome } => Some((*job_id, outcome.exit.state())),
            _ => None,
        })
        .collect()
}

#[test]
fn jobs_run_one_at_a_time_in_order_and_a_value_counts_once_on_disk() {
    let mut rig = Rig::new("order");
    let (a, mut fx_a) = rig.enqueue(None, Verb::Arg, "first 1");
    let (b, fx_b) = rig.enqueue(None, Verb::Arg, "second 2");
    // The first waits for its sync; the second waits for the first.
    assert!(finished(&fx_a).is_empty());
    assert!(fx_b.io.is_empty() && finished(&fx_b).is_empty());
    assert_eq!(rig.runner.holding(), vec![b, a]);
    let mut fx = rig.run_io(&mut fx_a);
    assert_eq!(finished(&fx), vec![(a, JobState::Succeeded)]);
    let fx2 = rig.run_io(&mut fx);
    assert_eq!(finished(&fx2), vec![(b, JobState::Succeeded)]);
    assert_eq!(rig.runner.cache.args().len(), 2);
}

#[test]
fn after_a_failure_the_rest_of_that_run_is_skipped_here_only() {
    let mut rig = Rig::new("skip");
    let run = Uuid::new_v4();
    let other = Uuid::new_v4();
    // A WORKDIR that cannot be made fails (the I/O thread tries).
    let (bad, fx) = rig.enqueue(Some(run), Verb::Workdir, "/proc/no/such/dir");
    assert!(matches!(fx.io.as_slice(), [IoTask::Dir(_)]));
    assert_eq!(rig.settle_io(fx), vec![(bad, JobState::Failed)]);
    let (skipped, fx) = rig.enqueue(Some(run), Verb::Workdir, "/tmp");
    assert_eq!(finished(&fx), vec![(skipped, JobState::Skipped)]);
    assert!(fx.io.is_empty(), "a skipped step is not tried");
    let (fine, fx) = rig.enqueue(Some(other), Verb::Workdir, "/tmp");
    assert_eq!(rig.settle_io(fx), vec![(fine, JobState::Unchanged)]);
}

#[test]
fn results_are_held_and_resent_until_acknowledged() {
    let mut rig = Rig::new("resend");
    let (id, fx) = rig.enqueue(None, Verb::Workdir, "/tmp");
    assert_eq!(rig.settle_io(fx), vec![(id, JobState::Unchanged)]);
    // Not acked: still held (Ready says so) and resent on reconnect.
    assert_eq!(rig.runner.holding(), vec![id]);
    let resend: Vec<ClientMsg> = rig.runner.unacked().collect();
    assert!(matches!(resend.as_slice(), [ClientMsg::Finished { job_id, .. }] if *job_id == id));
    rig.runner.acked(&id, &mut Effects::default());
    assert!(rig.runner.holding().is_empty());
    assert_eq!(rig.runner.unacked().count(), 0);
    // A job received twice while held is ignored, not run twice.
    let (again, _) = rig.enqueue(None, Verb::Arg, "k v");
    let mut fx = Effects::default();
    let task = Task::parse(Verb::Arg, "k v").unwrap();
    rig.runner.enqueue(again, None, task, false, &mut fx);
    assert!(fx.io.is_empty() && fx.job.is_empty());
}

#[test]
fn a_value_that_cannot_be_synced_fails_its_job_and_is_not_kept() {
    let mut rig = Rig::new("nosync");
    let (id, mut fx) = rig.enqueue(None, Verb::Arg, "key value");
    let Some(IoTask::Cache(JournalIo::Write(batch))) = fx.io.pop() else {
        panic!("a sync for the ARG");
    };
    let err = std::io::Error::from_raw_os_error(libc::ENOSPC);
    let mut out = Effects::default();
    let done = JournalIoDone::Written(Err((batch, err)));
    rig.runner.on_io(IoDone::Cache(done), &mut out);
    assert_eq!(finished(&out), vec![(id, JobState::Failed)]);
    let ClientMsg::Finished { outcome, .. } = &out.job[0] else {
        panic!("a result");
    };
    assert!(
        outcome
            .exit
            .to_string()
            .contains("ARG key: cannot save it in the cache"),
        "{}",
        outcome.exit
    );
    assert!(rig.runner.cache.args().is_empty());
}

#[test]
fn the_cache_is_written_by_the_io_thread_one_write_at_a_time() {
    let mut rig = Rig::new("cacheio");
    let journal = rig.dir.join("journal.bin");
    let size = || std::fs::metadata(&journal).unwrap().len();
    let empty = size();
    // A value: its sync is work for the I/O thread; the loop wrote
    // nothing.
    let (first, fx) = rig.enqueue(None, Verb::Arg, "k1 v1");
    assert!(matches!(fx.io.as_slice(), [IoTask::Cache(_)]));
    assert_eq!(size(), empty);
    let mut fx = fx;
    // An ARG while that write is out: its sync waits for it.
    let (a, fx_a) = rig.enqueue(None, Verb::Arg, "k v");
    assert!(fx_a.io.is_empty() && finished(&fx_a).is_empty());
    let mut fx = rig.run_io(&mut fx);
    assert!(size() > empty);
    assert_eq!(finished(&fx), vec![(first, JobState::Succeeded)]);
    let fx = rig.run_io(&mut fx);
    assert_eq!(finished(&fx), vec![(a, JobState::Succeeded)]);
    assert!(fx.io.is_empty() && rig.runner.is_idle());
    let c = Cache::open(&rig.dir, Duration::from_secs(3600), 0).unwrap();
    assert_eq!(c.args().get("k").map(String::as_str), Some("v"));
}

/// What a command printed, as the loop reports it when it is reaped.
/// When the runner asked for timer `kind` (it must have).
fn timer(fx: &Effects, kind: RunnerTimer) -> (Instant, RunnerTimer) {
    *fx.timers
        .iter()
        .find(|(_, t)| *t == kind)
        .unwrap_or_else(|| panic!("no {kind:?} timer in {:?}", fx.timers))
}

fn ended(code: i32, out: &[u8]) -> Ended {
    let mut e = Ended {
        exit: Exit::Code(code),
        out: Default::default(),
        err: Default::default(),
        exec_secs: 0.1,
    };
    e.out.bytes = out.to_vec();
    e
}

#[test]
fn a_command_is_an_effect_and_its_end_an_input() {
    let mut rig = Rig::new("spawn");
    let (id, fx) = rig.enqueue(None, Verb::Run, "--skip-cache echo {{ who }}");
    // An undefined variable fails before anything starts.
    assert_eq!(finished(&fx), vec![(id, JobState::Failed)]);
    let (_, mut fx) = rig.enqueue(None, Verb::Arg, "who world");
    rig.run_io(&mut fx);
    let (id, mut fx) = rig.enqueue(None, Verb::Run, "--stdout-arg said echo {{ who }}");
    let spawn = fx.spawn.pop().expect("a command to start");
    assert_eq!((spawn.job_id, spawn.command.as_str()), (id, "echo world"));
    // The server hears it started only if it still runs after the grace.
    assert!(!fx.job.contains(&ClientMsg::Started { job_id: id }));
    let (at, t) = *fx.timers.last().expect("the started timer");
    assert_eq!(t, RunnerTimer::Started);
    let mut fx = Effects::default();
    rig.runner.on_timer(RunnerTimer::Started, at, &mut fx);
    assert_eq!(fx.job, vec![ClientMsg::Started { job_id: id }]);
    // It printed; its --stdout-arg is synced before it reports.
    let mut fx = Effects::default();
    rig.runner.on_exited(id, Ok(ended(0, b"world\n")), &mut fx);
    assert!(finished(&fx).is_empty());
    let out = rig.run_io(&mut fx);
    assert_eq!(finished(&out), vec![(id, JobState::Succeeded)]);
    assert_eq!(
        rig.runner.cache.args().get("said").map(String::as_str),
        Some("world")
    );
}

#[test]
fn a_job_that_ends_within_the_grace_is_only_said_to_have_ended() {
    let mut rig = Rig::new("grace");
    let (id, fx) = rig.enqueue(None, Verb::Run, "--skip-cache true");
    assert!(!fx.spawn.is_empty());
    let (at, _) = timer(&fx, RunnerTimer::Started);
    let mut fx = Effects::default();
    rig.runner.on_exited(id, Ok(ended(0, b"")), &mut fx);
    rig.run_io(&mut fx);
    let mut fx = Effects::default();
    rig.runner.on_timer(RunnerTimer::Started, at, &mut fx);
    assert!(fx.job.is_empty(), "{:?}", fx.job);
}

#[test]
fn a_command_past_its_timeout_is_killed_and_reports_timed_out() {
    let mut rig = Rig::new("timeout");
    let (id, fx) = rig.enqueue(None, Verb::Run, "--timeout 5 sleep 60");
    assert!(!fx.spawn.is_empty());
    let (at, _) = timer(&fx, RunnerTimer::JobTimeout);
    // Early: nothing happens.
    let mut fx = Effects::default();
    rig.runner.on_timer(
        RunnerTimer::JobTimeout,
        at - Duration::from_secs(1),
        &mut fx,
    );
    assert!(fx.signal.is_empty());
    let mut fx = Effects::default();
    rig.runner.on_timer(RunnerTimer::JobTimeout, at, &mut fx);
    assert_eq!(
        fx.signal.iter().map(|s| s.1).collect::<Vec<_>>(),
        [libc::SIGKILL]
    );
    // The kill's result comes back as the command's end.
    let mut fx = Effects::default();
    let mut killed = ended(0, b"");
    killed.exit = Exit::Signal(libc::SIGKILL);
    rig.runner.on_exited(id, Ok(killed), &mut fx);
    assert_eq!(finished(&fx), vec![(id, JobState::TimedOut)]);
}

#[test]
fn a_failed_command_runs_again_after_its_delay_and_a_stop_ends_the_waiting() {
    let mut rig = Rig::new("retry");
    let (id, mut fx) = rig.enqueue(None, Verb::Run, "--retries 2 --retry-delay 30 make");
    let first = fx.spawn.pop().expect("the first attempt");
    let mut fx = Effects::default();
    rig.runner.on_exited(id, Ok(ended(2, b"one")), &mut fx);
    assert!(finished(&fx).is_empty(), "not reported: it will run again");
    assert!(fx.spawn.is_empty(), "not before its delay");
    let (due, _) = timer(&fx, RunnerTimer::Retry);
    // Early (another timer's wake-up): it waits on.
    let mut fx = Effects::default();
    rig.runner
        .on_timer(RunnerTimer::Retry, due - Duration::from_secs(1), &mut fx);
    assert!(fx.spawn.is_empty());
    let mut fx = Effects::default();
    rig.runner.on_timer(RunnerTimer::Retry, due, &mut fx);
    assert_eq!(fx.spawn.first(), Some(&first), "the same command again");
    let mut fx = Effects::default();
    rig.runner.on_exited(id, Ok(ended(3, b"two")), &mut fx);
    assert!(finished(&fx).is_empty());
    // Stopped between attempts: the last one is the result, with the
    // one before it, and nothing more starts.
    let mut fx = Effects::default();
    rig.runner.stop(&mut fx);
    assert!(fx.spawn.is_empty());
    let Some(ClientMsg::Finished { outcome, .. }) = fx.job.last() else {
        panic!("no result");
    };
    assert_eq!(outcome.exit, Exit::Code(3));
    assert_eq!(outcome.stdout, b"two");
    assert_eq!(outcome.attempts.len(), 1);
    assert_eq!(outcome.attempts[0].stdout, b"one");
    assert!(
        !rig.runner.is_idle(),
        "its outcome is not in the ledger yet"
    );
    rig.ledger_io(fx);
    assert!(rig.runner.is_idle());
}

#[test]
fn stopping_asks_a_command_to_end_then_kills_it() {
    let mut rig = Rig::new("stop");
    let (id, _) = rig.enqueue(None, Verb::Run, "sleep 60");
    let mut fx = Effects::default();
    assert!(rig.runner.stop(&mut fx), "busy until the command ends");
    assert_eq!(
        fx.signal.iter().map(|s| s.1).collect::<Vec<_>>(),
        [libc::SIGTERM]
    );
    assert!(fx.timers.iter().any(|(_, t)| *t == RunnerTimer::KillGrace));
    let mut fx = Effects::default();
    rig.runner
        .on_timer(RunnerTimer::KillGrace, Instant::now(), &mut fx);
    assert_eq!(
        fx.signal.iter().map(|s| s.1).collect::<Vec<_>>(),
        [libc::SIGKILL]
    );
    let mut fx = Effects::default();
    rig.runner.on_exited(id, Ok(ended(143, b"")), &mut fx);
    rig.ledger_io(fx);
    assert!(rig.runner.is_idle());
    // Nothing new starts while stopping.
    let (_, fx) = rig.enqueue(None, Verb::Run, "true");
    assert!(fx.spawn.is_empty());
}

fn spawned(fx: &Effects) -> Option<Uuid> {
    fx.spawn.first().map(|s| s.job_id)
}

#[test]
fn a_job_starts_only_once_the_ledger_has_it_on_disk() {
    let mut rig = Rig::new("ledger-first");
    let id = Uuid::new_v4();
    let mut fx = Effects::default();
    let task = Task::parse(Verb::Run, "--skip-cache echo hi").unwrap();
    rig.runner.enqueue(id, None, task, false, &mut fx);
    assert!(fx.spawn.is_empty(), "started before its record was written");
    assert!(matches!(fx.io.as_slice(), [IoTask::Ledger(_)]));
    let fx = rig.ledger_io(fx);
    assert_eq!(spawned(&fx), Some(id));
}

#[test]
fn a_job_sent_again_is_answered_from_the_ledger_and_never_run_twice() {
    let mut rig = Rig::new("ledger-again");
    let id = Uuid::new_v4();
    let fx = rig.enqueue_id(id, None, Verb::Run, "--skip-cache echo once");
    assert_eq!(spawned(&fx), Some(id));
    // Received again while it runs: ignored.
    let fx = rig.enqueue_id(id, None, Verb::Run, "--skip-cache echo once");
    assert!(fx.spawn.is_empty() && fx.job.is_empty());
    let mut fx = Effects::default();
    rig.runner.on_exited(id, Ok(ended(0, b"once")), &mut fx);
    rig.ledger_io(fx);
    // Ended, not acknowledged: the same result again.
    let fx = rig.enqueue_id(id, None, Verb::Run, "--skip-cache echo once");
    assert!(fx.spawn.is_empty());
    assert!(
        matches!(fx.job.as_slice(), [ClientMsg::Finished { job_id, outcome }]
        if *job_id == id && outcome.stdout == b"once")
    );
    // Acknowledged: the server has it; a resend is refused as lost,
    // and the rest of its run is not skipped for it.
    rig.runner.acked(&id, &mut Effects::default());
    let run = Some(Uuid::new_v4());
    let fx = rig.enqueue_id(id, run, Verb::Run, "--skip-cache echo once");
    assert!(fx.spawn.is_empty());
    assert_eq!(finished(&fx), vec![(id, JobState::Lost)]);
    let (next, fx) = rig.enqueue(run, Verb::Run, "--skip-cache echo next");
    assert_eq!(spawned(&fx), Some(next), "the rest of the run goes on");
}

#[test]
fn after_a_client_restart_what_the_last_process_had_is_answered_not_run() {
    let mut rig = Rig::new("ledger-restart");
    let (running, fx) = rig.enqueue(None, Verb::Run, "--skip-cache sleep 60");
    assert_eq!(spawned(&fx), Some(running));
    let queued = Uuid::new_v4();
    let fx = rig.enqueue_id(queued, None, Verb::Run, "--skip-cache echo later");
    assert!(fx.spawn.is_empty());
    let ended_id = Uuid::new_v4();
    // A result not yet acknowledged, from before (written by hand).
    rig.runner.ledger.take(ended_id);
    rig.runner
        .ledger
        .end(ended_id, &crate::wire::Outcome::ended(Exit::Code(7)));
    rig.runner.ledger.settle_now();
    // kill -9: the runner is gone without a word; a new process opens
    // the same ledger.
    let cache = Cache::open(&rig.dir, Duration::from_secs(3600), 0).unwrap();
    let ledger = Ledger::open(&rig.dir).unwrap();
    rig.runner = Runner::new(
        cache,
        ledger,
        Duration::from_secs(5),
        Default::default(),
        std::env::temp_dir(),
        Now::real(),
    );
    let mut held = rig.runner.holding();
    held.sort();
    let mut want = vec![running, queued, ended_id];
    want.sort();
    assert_eq!(held, want, "Ready names every job the last process had");
    let resend: Vec<(Uuid, JobState)> = rig
        .runner
        .unacked()
        .filter_map(|m| match m {
            ClientMsg::Finished { job_id, outcome } => Some((job_id, outcome.exit.state())),
            _ => None,
        })
        .collect();
    assert_eq!(
        resend,
        vec![
            (running, JobState::Lost),
            (queued, JobState::Lost),
            (ended_id, JobState::Failed)
        ]
    );
    // Sent again by a server that lost track: never run.
    for id in [running, queued] {
        let fx = rig.enqueue_id(id, None, Verb::Run, "--skip-cache sleep 60");
        assert!(fx.spawn.is_empty(), "job {id} ran twice");
        assert_eq!(finished(&fx), vec![(id, JobState::Lost)]);
    }
}

#[test]
fn a_job_whose_record_cannot_be_written_fails_without_running() {
    let mut rig = Rig::new("ledger-full");
    let id = Uuid::new_v4();
    let mut fx = Effects::default();
    let task = Task::parse(Verb::Run, "--skip-cache echo hi").unwrap();
    rig.runner.enqueue(id, None, task, false, &mut fx);
    let Some(IoTask::Ledger(JournalIo::Write(batch))) = fx.io.pop() else {
        panic!("a ledger write");
    };
    let err = std::io::Error::from_raw_os_error(libc::ENOSPC);
    let mut out = Effects::default();
    rig.runner.on_io(
        IoDone::Ledger(JournalIoDone::Written(Err((batch, err)))),
        &mut out,
    );
    assert!(out.spawn.is_empty());
    assert_eq!(finished(&out), vec![(id, JobState::Failed)]);
    let ClientMsg::Finished { outcome, .. } = &out.job[0] else {
        panic!("a result");
    };
    assert!(outcome
        .exit
        .to_string()
        .contains("not run: cannot record the job"));
    // Retried with the next record, not in a loop.
    assert!(out.io.iter().any(|t| matches!(t, IoTask::Ledger(_))));
}

#[test]
fn a_stop_reports_the_jobs_that_never_started_as_not_run() {
    let mut rig = Rig::new("ledger-stop");
    let (first, fx) = rig.enqueue(None, Verb::Run, "--skip-cache sleep 60");
    assert_eq!(spawned(&fx), Some(first));
    let (second, _) = rig.enqueue(None, Verb::Run, "--skip-cache echo never");
    let mut fx = Effects::default();
    rig.runner.stop(&mut fx);
    assert_eq!(finished(&fx), vec![(second, JobState::Lost)]);
}
