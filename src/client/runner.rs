//! The jobs on this node: the queue, the one running job (a process or a
//! file transfer), the cache, timeouts, and the results waiting for the
//! server's acknowledgement. Sans-io: the client loop feeds it events (jobs,
//! transfer data, a process's end, the I/O thread's results, timers) and
//! carries out the `Effects` it asks for (messages, timers, a command to
//! start, a signal for it, work for the I/O thread); it never touches a
//! socket, a process or the disk's slow calls itself.
//!
//! Rules: jobs run one at a time in the order received; a job starts only
//! once the ledger has it on disk, and one the ledger knows is answered
//! from it, never run again; after a job of an orchestration run fails
//! here, the rest of that run is skipped here; a job past its `--timeout`
//! has its process group killed (or its transfer dropped) and reports
//! `timed out`.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::clock::Now;

use super::add::{AddDone, AddIo, AddJob, Progress};
use super::cache::Cache;
use super::exec::{self, said, Capture, OnSuccess, ProcKind, Spawn, Started, WaitStart};
use super::ledger::{Known, Ledger, Ticket};
use super::store;
use super::workdir::{DirTask, Report};
use crate::dsl::Task;
use crate::journal::{JournalIo, JournalIoDone};
use crate::reactor::child::Ended;
use crate::wire::Lane;
use crate::wire::{Attempt, ClientMsg, Exit, JobState, Outcome, ServerMsg};

/// The longest a WAIT's URL try may take at each step (the name lookup,
/// the connection, the answer): it holds the I/O thread.
const PROBE_LIMIT: Duration = Duration::from_secs(3);

/// How long a command has to exit after SIGTERM at shutdown.
const KILL_GRACE: Duration = Duration::from_secs(3);
/// Orchestration runs remembered as failed here, for skipping the rest of
/// their jobs; the oldest are forgotten past this.
const FAILED_PARENTS_CAP: usize = 10_000;

/// Timers the runner asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RunnerTimer {
    JobTimeout,
    KillGrace,
    /// Has the running transfer heard from the server lately?
    TransferStall,
    /// A failed command's next attempt (`--retries`) is due.
    Retry,
    /// The ledger's group commit is due.
    LedgerCommit,
    /// A WAIT's time is up, or its next try is due.
    Wait,
}

/// What the loop must do for the runner.
#[derive(Default)]
pub struct Effects {
    /// To send on the job port.
    pub job: Vec<ClientMsg>,
    /// To send on the transfer port.
    pub transfer: Vec<ClientMsg>,
    pub timers: Vec<(Instant, RunnerTimer)>,
    /// Work for the I/O thread, in order; each result comes back through
    /// `on_io`.
    pub io: Vec<IoTask>,
    /// A command to start; its end comes back through `on_exited`.
    pub spawn: Vec<Spawn>,
    /// A signal for the running command's process group.
    pub signal: Vec<(Uuid, i32)>,
}

/// What the runner hands the I/O thread (which runs it in order): at most
/// one cache write and one ADD operation at a time.
pub enum IoTask {
    /// A cache write: step records, a value to sync (ARG, ENV,
    /// `--stdout-arg`), or the journal's rewrite.
    Cache(JournalIo),
    /// A ledger write: jobs taken, their outcomes and acknowledgements.
    Ledger(JournalIo),
    /// An ADD job's owner lookup, or a received file's sync and rename.
    Add(AddIo),
    /// A WORKDIR to bring about.
    Dir(DirTask),
    /// One try of a WAIT's URL, each step bounded by `limit`.
    Url { url: String, limit: Duration },
    /// Find out why the server cannot be reached (for the client, not the
    /// runner: name lookups and connects may block).
    Probe { host: String, port: u16 },
    /// Bound the store of blueprints after a job added to it.
    PruneStore(PathBuf),
    /// Read a CACHEFILE.
    LoadFile(PathBuf),
}

/// What the I/O thread hands back.
pub enum IoDone {
    Cache(JournalIoDone),
    Ledger(JournalIoDone),
    Add(AddDone),
    Dir(Result<Report, String>),
    Url(Result<String, String>),
    /// Why the server cannot be reached.
    Probe(String),
    PrunedStore(Result<store::Pruned, String>),
    FileLoaded(Result<Vec<(String, String)>, String>),
}

impl IoTask {
    /// Run it (on the I/O thread).
    pub fn run(self) -> IoDone {
        match self {
            IoTask::Cache(io) => IoDone::Cache(io.run()),
            IoTask::Ledger(io) => IoDone::Ledger(io.run()),
            IoTask::Add(io) => IoDone::Add(io.run()),
            IoTask::Dir(task) => IoDone::Dir(task.run()),
            IoTask::Url { url, limit } => IoDone::Url(crate::verbs::wait::probe(&url, limit)),
            IoTask::Probe { host, port } => IoDone::Probe(probe(&host, port)),
            IoTask::LoadFile(path) => IoDone::FileLoaded(crate::verbs::cachefile::load(
                &path,
                crate::verbs::cachefile::CAP,
            )),
            IoTask::PruneStore(dir) => IoDone::PrunedStore(store::prune(
                &dir,
                store::MAX_BYTES,
                store::MAX_FILES,
                std::time::SystemTime::now(),
            )),
        }
    }
}

/// Why `host:port` takes no connection: its name does not resolve, it
/// refuses, or it cannot be reached (or, by now, it takes them).
fn probe(host: &str, port: u16) -> String {
    use std::net::{TcpStream, ToSocketAddrs};
    let addrs: Vec<_> = match (host, port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => {
            return format!("the name '{host}' does not resolve ({e}): check --server-address")
        }
    };
    let mut last = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, Duration::from_secs(1)) {
            Ok(_) => return format!("{a} takes connections now (the server may have just started)"),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return format!(
                    "{a} refused the connection: nothing listens on port {port} there (is `director server` running, with this --job-port?)"
                )
            }
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => {
            format!("{host}:{port} cannot be reached ({e}): check the address and the firewall")
        }
        None => format!("the name '{host}' resolves to no address: check --server-address"),
    }
}

use crate::wire::LANES;
/// How far into the queue a lane's next job is looked for.
const MAX_SCAN: usize = 1024;

/// Can `task` run beside other jobs? Only a plain command: it touches the
/// node cache and the ledger only when it ends, so nothing it does needs
/// to be in order with the jobs beside it. Everything else (values kept,
/// retries, guards, files, checks, handlers) runs alone.
fn side_by_side(task: &Task) -> bool {
    let plain = matches!(
        &task.action,
        crate::dsl::Action::Run {
            stdout_arg: None,
            stderr_arg: None,
            guard: None,
            ..
        }
    );
    plain && task.options.retries == 0 && !task.options.check && task.options.onchanges().is_empty()
}

/// A job waiting here for its turn.
struct Queued {
    job_id: Uuid,
    /// It starts once the ledger is durable up to here.
    ticket: Ticket,
    parent: Option<Uuid>,
    task: Task,
    /// Send its output as it comes.
    live: bool,
    /// An `async` block's job.
    lane: Option<Lane>,
}

/// What the running job is doing.
enum Work {
    /// A command the loop runs for us.
    Process {
        capture: Capture,
        timed_out: bool,
        kind: ProcKind,
    },
    /// A command that failed, waiting for its next attempt (`--retries`).
    Retrying {
        at: Instant,
        capture: Capture,
        /// The attempt that failed, kept with the others when the next
        /// starts (or reported, should the client stop first).
        failed: Outcome,
        kind: ProcKind,
    },
    /// A WAIT `--seconds`, until `at`.
    Sleep { at: Instant, secs: f64 },
    /// A WAIT `--url`: a try is out on the I/O thread (`at` is `None`),
    /// or the next is due at `at`.
    Probe {
        url: String,
        left: u32,
        delay: Duration,
        tries: u32,
        at: Option<Instant>,
    },
    /// Boxed: a transfer's state is many times the others'.
    Transfer { add: Box<AddJob> },
    /// A value (ARG, ENV, `--stdout-arg`) staged in the cache; the job
    /// reports once it is on disk.
    Persist { outcome: Outcome, what: String },
    /// A CACHEFILE being read on the I/O thread: its path as shown.
    LoadFile { path: String, check: bool },
    /// A WORKDIR being brought about on the I/O thread; with
    /// `--stdout-arg`, the ARG's name and the path to keep in it.
    Mkdir {
        stdout_arg: Option<(String, String)>,
    },
    /// A QUERY that reported this node's value and waits for the map of
    /// every target's.
    Query { key: String, value: Option<String> },
}

/// The running job.
struct Running {
    job_id: Uuid,
    parent: Option<Uuid>,
    /// When its `--timeout` passes.
    deadline: Instant,
    timeout_secs: u64,
    /// Settled in the node cache when the job ends, however it ends.
    cache_key: Option<String>,
    work: Work,
    /// A RUN with `--retries`: what it takes to run it again.
    retry: Option<Box<Retry>>,
}

/// The attempts of a RUN with `--retries`.
struct Retry {
    spawn: Spawn,
    /// Attempts still allowed after the one running.
    left: u32,
    delay: Duration,
    /// Those that failed, oldest first, their outputs already cut to
    /// their share of `ATTEMPTS_CAP`.
    attempts: Vec<Attempt>,
    /// Their share: outputs beyond it would be cut before sending anyway.
    cap: usize,
}

/// Every job on this node.
pub struct Runner {
    /// Facts and labels, for templates.
    node: crate::facts::Node,
    queue: VecDeque<Queued>,
    /// The job running alone.
    running: Option<Running>,
    /// Plain commands of an `async` group's lanes, running side by side
    /// (never beside `running`).
    side: Vec<(Lane, Running)>,
    cache: Cache,
    /// Every job taken here, until its outcome is acknowledged.
    ledger: Ledger,
    failed_parents: HashSet<Uuid>,
    failed_order: VecDeque<Uuid>,
    /// The earliest pending `JobTimeout`: jobs share it rather than each
    /// leaving a timer in the heap for up to its whole timeout.
    timeout_armed: Option<Instant>,
    /// Shutting down: start nothing new.
    stopping: bool,
    /// A transfer that receives nothing for this long fails.
    stall: Duration,
    /// Is a `TransferStall` check pending?
    stall_armed: bool,
    /// Is a `LedgerCommit` pending?
    commit_armed: bool,
    /// Where ADD keeps blueprints (and files to diff) by SHA1.
    store: PathBuf,
    /// The time of the input being handled, set by the loop once per pass.
    now: Now,
}

impl Runner {
    /// `stall`: how long a transfer may wait for data before it fails.
    pub fn new(
        cache: Cache,
        ledger: Ledger,
        stall: Duration,
        node: crate::facts::Node,
        store: PathBuf,
        now: Now,
    ) -> Runner {
        Runner {
            node,
            queue: VecDeque::new(),
            running: None,
            side: Vec::new(),
            cache,
            ledger,
            failed_parents: HashSet::new(),
            failed_order: VecDeque::new(),
            timeout_armed: None,
            stopping: false,
            stall,
            stall_armed: false,
            commit_armed: false,
            store,
            now,
        }
    }

    /// The time of what is handled next.
    pub fn at(&mut self, now: Now) {
        self.now = now;
    }

    /// What this node says of itself: for `Ready`.
    pub fn node(&self) -> &crate::facts::Node {
        &self.node
    }

    /// Someone follows this job now: its later attempts and, if it is still
    /// queued, its run send output as it comes. (The loop turns on the one
    /// running.)
    pub fn follow(&mut self, job_id: &Uuid) {
        for q in self.queue.iter_mut().filter(|q| q.job_id == *job_id) {
            q.live = true;
        }
        if let Some(Running {
            job_id: running,
            retry: Some(retry),
            ..
        }) = self.running.as_mut()
        {
            if running == job_id {
                retry.spawn.live = true;
            }
        }
    }

    /// Changes to the cache so far.
    pub fn cache_generation(&self) -> u64 {
        self.cache.generation()
    }

    /// What the cache holds, for the server.
    pub fn cache_summary(&self) -> crate::wire::CacheSummary {
        self.cache.summary()
    }

    /// Every job this node still has: for `Ready`.
    pub fn holding(&self) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = self.queue.iter().map(|q| q.job_id).collect();
        ids.extend(self.running.as_ref().map(|r| r.job_id));
        ids.extend(self.ledger.unacked().into_iter().map(|(id, _)| id));
        ids
    }

    /// Results to send again after a reconnect, and the running QUERY's
    /// value (a restarted server lost it).
    pub fn unacked(&self) -> impl Iterator<Item = ClientMsg> + '_ {
        let query = match &self.running {
            Some(Running {
                job_id,
                work: Work::Query { value, .. },
                ..
            }) => Some(ClientMsg::QueryValue {
                job_id: *job_id,
                value: value.clone(),
            }),
            _ => None,
        };
        self.ledger
            .unacked()
            .into_iter()
            .map(|(job_id, outcome)| ClientMsg::Finished { job_id, outcome })
            .chain(query)
    }

    /// The map of the running QUERY: kept in the cache (synced) before the
    /// job reports.
    pub fn on_query_result(
        &mut self,
        job_id: Uuid,
        values: Vec<(String, String)>,
        fx: &mut Effects,
    ) {
        let Some(r) = self.running.as_mut() else {
            log::debug!("job {job_id}: a QUERY's map came with no QUERY running; ignored");
            return;
        };
        let Work::Query { key, .. } = &r.work else {
            log::debug!("job {job_id}: a QUERY's map came with no QUERY running; ignored");
            return;
        };
        if r.job_id != job_id {
            log::debug!(
                "job {job_id}: a QUERY's map came while job {} runs; ignored",
                r.job_id
            );
            return;
        }
        let key = key.clone();
        // A QUERY reads: it changes nothing on the node.
        let mut outcome = exec::ended(Exit::Unchanged);
        // What the job shows: the map, one `node value` line each.
        let mut shown = String::new();
        for (node, value) in &values {
            shown.push_str(&format!("{node} {}\n", crate::dsl::one_line(value)));
        }
        outcome.stdout = shown.into_bytes();
        log::info!(
            "job {job_id}: QUERY {key}: {} with a value",
            crate::dsl::count(values.len(), "node")
        );
        self.cache.stage_query(&key, values);
        r.work = Work::Persist {
            outcome,
            what: format!("QUERY {key}"),
        };
        self.pump_cache(fx);
    }

    pub fn acked(&mut self, job_id: &Uuid, fx: &mut Effects) {
        self.ledger.ack(job_id);
        self.pump_cache(fx);
    }

    /// Nothing running, and no cache or ledger write out (a stop waits for
    /// them, so the last records reach the files).
    pub fn is_idle(&self) -> bool {
        self.running.is_none()
            && self.side.is_empty()
            && !self.cache.is_busy()
            && !self.ledger.is_busy()
    }

    /// Hand the cache's and the ledger's next writes to the I/O thread, if
    /// any is due. Every entry point that may have changed either ends
    /// here.
    fn pump_cache(&mut self, fx: &mut Effects) {
        if let Some(io) = self.cache.next_io() {
            fx.io.push(IoTask::Cache(io));
        }
        if let Some(io) = self.ledger.next_io() {
            fx.io.push(IoTask::Ledger(io));
        }
        if !self.commit_armed && self.ledger.wants_commit() {
            self.commit_armed = true;
            fx.timers.push((
                self.now.at + super::ledger::GROUP_COMMIT,
                RunnerTimer::LedgerCommit,
            ));
        }
    }

    /// A job from the server, in no lane (tests).
    #[cfg(test)]
    pub fn enqueue(
        &mut self,
        job_id: Uuid,
        parent: Option<Uuid>,
        task: Task,
        live: bool,
        fx: &mut Effects,
    ) {
        self.enqueue_in(job_id, parent, task, live, None, fx)
    }

    /// A job from the server, in its `async` lane if it has one.
    pub fn enqueue_in(
        &mut self,
        job_id: Uuid,
        parent: Option<Uuid>,
        task: Task,
        live: bool,
        lane: Option<Lane>,
        fx: &mut Effects,
    ) {
        match self.ledger.known(&job_id) {
            Known::New => {}
            Known::Here => {
                log::warn!("job {job_id} received twice; ignored");
                return;
            }
            // Its result went astray: the same result again, not a rerun.
            Known::Ended(outcome) => {
                log::warn!("job {job_id} received again after it ended here; its result is sent again, it is not run again");
                fx.job.push(ClientMsg::Finished { job_id, outcome });
                return;
            }
            Known::Acked => {
                log::warn!(
                    "job {job_id} received again after its result was recorded; not run again"
                );
                let why = "the server sent this job again after it ran on this node and its result was recorded; not run again";
                // An answer, not a failure here: the rest of its run goes
                // on (the server holds the real result and keeps it).
                let outcome = exec::ended(Exit::Lost(why.into())).bounded();
                self.ledger.end(job_id, &outcome);
                fx.job.push(ClientMsg::Finished { job_id, outcome });
                self.pump_cache(fx);
                return;
            }
        }
        if self.stopping {
            return; // the server reports it lost when this node expires
        }
        let ticket = self.ledger.take(job_id);
        self.queue.push_back(Queued {
            job_id,
            ticket,
            parent,
            task,
            live,
            lane,
        });
        self.start_next(fx);
        self.pump_cache(fx);
    }

    /// Which queued job may start now, if any: the head when nothing runs;
    /// with `async` lanes, the first waiting job of each lane of the
    /// head's group whose lane is idle, beside the others (a job that is
    /// not a plain command runs alone, once the others have ended). A job
    /// never starts before one that arrived earlier outside its group, nor
    /// before an earlier one of its lane.
    fn next_startable(&self) -> Option<usize> {
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

    fn start_next(&mut self, fx: &mut Effects) {
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
                self.report(q.job_id, q.parent, exec::ended(Exit::Error(why)), fx);
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
                self.report(job_id, parent, exec::ended(Exit::SkippedAfterFailure), fx);
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
                    self.report(job_id, parent, exec::ended(Exit::NoChange), fx);
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
                    fx.job.push(ClientMsg::Started { job_id });
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
                    fx.job.push(ClientMsg::Started { job_id });
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
                    fx.job.push(ClientMsg::Started { job_id });
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
                    fx.job.push(ClientMsg::Started { job_id });
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
                    fx.job.push(ClientMsg::Started { job_id });
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
                    fx.job.push(ClientMsg::Started { job_id });
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
                deadline,
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
    fn arm_stall(&mut self, at: Instant, fx: &mut Effects) {
        if !self.stall_armed {
            fx.timers.push((at, RunnerTimer::TransferStall));
            self.stall_armed = true;
        }
    }

    /// Make sure a `JobTimeout` fires no later than `deadline`.
    fn arm_timeout(&mut self, deadline: Instant, fx: &mut Effects) {
        if self.timeout_armed.is_none_or(|armed| deadline < armed) {
            fx.timers.push((deadline, RunnerTimer::JobTimeout));
            self.timeout_armed = Some(deadline);
        }
    }

    fn report(&mut self, job_id: Uuid, parent: Option<Uuid>, outcome: Outcome, fx: &mut Effects) {
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
    fn finish(&mut self, outcome: Outcome, fx: &mut Effects) {
        let Some(r) = self.running.take() else { return };
        self.conclude(r.job_id, r.parent, r.cache_key, outcome, fx);
    }

    /// The one place a started job ends: settle its cache entry, report,
    /// start the next.
    fn conclude(
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
    fn persist(p: exec::Persist) -> Work {
        Work::Persist {
            outcome: p.outcome,
            what: p.what,
        }
    }

    /// The I/O thread finished something we gave it.
    pub fn on_io(&mut self, done: IoDone, fx: &mut Effects) {
        match done {
            IoDone::Cache(done) => {
                if let Some(kept) = self.cache.io_done(done) {
                    self.on_persisted(kept, fx);
                }
                self.pump_cache(fx);
            }
            IoDone::Ledger(done) => {
                self.ledger.io_done(done);
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
                add.at(self.now.at);
                let progress = add.io_done(done, &mut fx.transfer);
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
                    Err(e) => self.finish(exec::ended(Exit::Error(e)), fx),
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
                        let mut o = exec::ended(exit);
                        o.stdout = r.text.into_bytes();
                        o
                    }
                    Err(e) => exec::ended(Exit::Error(e)),
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
                        self.finish(exec::ended(Exit::Error(why)), fx);
                        self.pump_cache(fx);
                    }
                }
            }
        }
    }

    /// The value the running job staged is on disk (`Ok`), or was not
    /// kept (`Err`: why).
    fn on_persisted(&mut self, kept: Result<(), String>, fx: &mut Effects) {
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
                Err(why) => exec::ended(Exit::Error(why)),
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
                        let deadline = self.now.at;
                        self.running = Some(Running {
                            job_id,
                            parent,
                            deadline,
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
            Err(why) => exec::ended(Exit::Error(why)),
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
                    deadline: at,
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
    fn retry(&mut self, now: Instant, fx: &mut Effects) {
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
        r.deadline = deadline;
        self.arm_timeout(deadline, fx);
    }

    /// A WAIT's timer: its time is up, or its next try is due.
    fn wait_due(&mut self, now: Instant, fx: &mut Effects) {
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
            ) if id == *job_id => {
                add.at(self.now.at);
                add.on_chunk(file, offset, &data, &mut fx.transfer)
            }
            (
                ServerMsg::FetchError {
                    job_id: id,
                    file,
                    message,
                },
                None,
            ) if id == *job_id => add.on_fetch_error(file, &message),
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

    fn transfer_progress(&mut self, progress: Progress, fx: &mut Effects) {
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
        add.at(self.now.at);
        let progress = add.tick(&mut fx.transfer);
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
                        Work::Process { timed_out, .. } if r.deadline <= now && !*timed_out => {
                            log::warn!(
                                "job {}: timed out after {}s; killing its process group",
                                r.job_id,
                                r.timeout_secs
                            );
                            fx.signal.push((r.job_id, libc::SIGKILL));
                            *timed_out = true;
                        }
                        _ if r.deadline > now => {
                            next = Some(next.map_or(r.deadline, |n: Instant| n.min(r.deadline)))
                        }
                        _ => {}
                    }
                }
                if let Some(at) = next {
                    self.arm_timeout(at, fx);
                }
                let Some(r) = self.running.as_mut() else {
                    return;
                };
                if r.deadline > now {
                    let deadline = r.deadline;
                    self.arm_timeout(deadline, fx);
                    return;
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
                        self.finish(exec::ended(Exit::TimedOut { secs }), fx);
                        self.pump_cache(fx);
                    }
                    Work::Query { key, .. } => {
                        log::warn!(
                            "job {job_id}: QUERY {key}: no map from the server within {secs}s"
                        );
                        self.finish(exec::ended(Exit::TimedOut { secs }), fx);
                        self.pump_cache(fx);
                    }
                    // A file being put in place may land anyway: report it
                    // as it ends.
                    Work::Transfer { add } if add.in_io() => {}
                    Work::Transfer { .. } => {
                        log::warn!("job {job_id}: timed out after {secs}s; transfer abandoned");
                        self.finish(exec::ended(Exit::TimedOut { secs }), fx);
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
                        ));
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
            let outcome = exec::ended(Exit::Error(
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
    fn io_busy(&self) -> bool {
        self.cache.is_busy() || self.ledger.is_busy()
    }

    pub fn stop(&mut self, fx: &mut Effects) -> bool {
        self.stopping = true;
        // Queued and never started: said now, not at this node's expiry.
        for q in std::mem::take(&mut self.queue) {
            let why = "the client was stopped before this job started on the node; it did not run";
            self.report(q.job_id, q.parent, exec::ended(Exit::Lost(why.into())), fx);
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
                let outcome = exec::ended(Exit::Error(
                    "the client was stopped during the transfer".into(),
                ));
                self.finish(outcome, fx);
                self.pump_cache(fx);
                self.io_busy()
            }
            // Reports when the sync or the mkdir is done.
            Work::Persist { .. } | Work::Mkdir { .. } | Work::LoadFile { .. } => true,
            Work::Sleep { .. } | Work::Probe { .. } => {
                let outcome =
                    exec::ended(Exit::Error("the client was stopped during the WAIT".into()));
                self.finish(outcome, fx);
                self.pump_cache(fx);
                self.io_busy()
            }
            Work::Query { .. } => {
                let outcome = exec::ended(Exit::Error(
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

#[cfg(test)]
mod tests {
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
        assert!(fx.job.contains(&ClientMsg::Started { job_id: id }));
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
    fn a_command_past_its_timeout_is_killed_and_reports_timed_out() {
        let mut rig = Rig::new("timeout");
        let (id, fx) = rig.enqueue(None, Verb::Run, "--timeout 5 sleep 60");
        assert!(!fx.spawn.is_empty());
        let (at, t) = fx.timers[0];
        assert_eq!(t, RunnerTimer::JobTimeout);
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
        let (due, _) = *fx
            .timers
            .iter()
            .find(|(_, t)| *t == RunnerTimer::Retry)
            .expect("a retry timer");
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
        rig.runner.ledger.end(ended_id, &exec::ended(Exit::Code(7)));
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
}
