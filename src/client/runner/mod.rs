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

use crate::support::hash::Set as HashSet;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::support::clock::Now;

mod ended;
mod events;
mod start;

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

/// How long a job runs before the server is told it started.
const STARTED_GRACE: Duration = Duration::from_millis(100);
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
    /// Say which jobs started, of those still running.
    Started,
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
    /// Is it a journal write without a sync? That lands in the page cache
    /// in microseconds: the loop does it itself rather than pay two thread
    /// switches on every job's path (as Redis writes its append-only file
    /// on its loop and leaves fsync to a background thread).
    pub fn is_quick(&self) -> bool {
        matches!(self, IoTask::Cache(JournalIo::Write(b)) | IoTask::Ledger(JournalIo::Write(b)) if !b.syncs())
    }

    /// Run it (on the I/O thread, or on the loop's if `is_quick`).
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
    /// When its `--timeout` passes; `None` while no timeout runs (a value
    /// being synced after the command ended, a retry waiting for its
    /// turn: each attempt gets its own).
    deadline: Option<Instant>,
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
    /// Jobs started and not yet said to be: a job that ends within
    /// `STARTED_GRACE` is only said to have ended (its result says it ran),
    /// which spares a message each way for every short job.
    starting: Vec<Uuid>,
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
            failed_parents: HashSet::default(),
            failed_order: VecDeque::new(),
            timeout_armed: None,
            stopping: false,
            stall,
            stall_armed: false,
            commit_armed: false,
            starting: Vec::new(),
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
        let mut outcome = Outcome::ended(Exit::Unchanged);
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
                let outcome = Outcome::ended(Exit::Lost(why.into())).bounded();
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
}

#[cfg(test)]
mod tests;
