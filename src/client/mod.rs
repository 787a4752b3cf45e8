//! The client daemon: one thread, one `mio::Poll`, on every enrolled node.
//!
//! Sources: the job, transfer and heartbeat DEALERs (fixed tokens, identity =
//! the node name), the signal pipe, and the running command's pipes and pidfd
//! (tokens from a counter). Jobs run one at a time, in the order received.
//!
//! Link to the server: on start and on every reconnect the client sends
//! `Ready` (with the jobs it still holds) and resends unacknowledged results.
//! It beats every interval; when it has heard nothing from the server for 3
//! intervals it closes its sockets and reopens them after an exponential
//! backoff capped at 32 s. A server that does not know it (restarted) answers
//! a heartbeat with `Register`, and the client says `Ready` again.
//!
//! Shutdown (SIGTERM/SIGINT): a running command's process group gets SIGTERM,
//! then SIGKILL after a grace period; its result is sent with a short linger.

mod cache;
mod exec;

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};
use uuid::Uuid;

use self::cache::Cache;
use self::exec::{OnSuccess, Started};
use crate::config::Config;
use crate::dsl::Task;
use crate::error::{Error, Result};
use crate::reactor::child::{Child, Source};
use crate::reactor::signals::{self, Signals};
use crate::reactor::timers::Timers;
use crate::reactor::zmq::{endpoint, ZmqPort};
use crate::reactor::{self, Sleep, TokenCounter};
use crate::wire::{self, ClientMsg, Exit, Outcome, ServerMsg};

const JOB: Token = Token(0);
const TRANSFER: Token = Token(1);
const HEARTBEAT: Token = Token(2);
const SIGNALS: Token = Token(3);
const FIRST_DYNAMIC: usize = 16;

const BUDGET: usize = 256;
const LIVENESS: u32 = 3;
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(32);
/// Without pidfds, how often to look for a child's exit.
const REAP_SWEEP: Duration = Duration::from_millis(100);
/// How long a command has to exit after SIGTERM at shutdown.
const KILL_GRACE: Duration = Duration::from_secs(3);
const SHUTDOWN_LINGER_MS: i32 = 1000;
/// Orchestration runs remembered as failed on this node, for skipping the
/// rest of their jobs; the oldest are forgotten past this.
const FAILED_PARENTS_CAP: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Heartbeat,
    Liveness,
    Reopen,
    ReapSweep,
    KillGrace,
    /// Check the running job's `--timeout`.
    JobTimeout,
    /// Drop expired cache entries.
    CacheSweep,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunState {
    Running,
    /// Stopping: waiting for the running command to die.
    Draining,
    Stopped,
}

/// The three sockets to the server.
struct Ports {
    job: ZmqPort,
    transfer: ZmqPort,
    heartbeat: ZmqPort,
}

/// The connection to the server.
enum Link {
    Up {
        ports: Box<Ports>,
        last_heard: Instant,
    },
    /// Sockets closed; reopen at the `Reopen` timer.
    Down,
}

/// A job waiting on this node for its turn.
struct Queued {
    job_id: Uuid,
    parent: Option<Uuid>,
    task: Task,
}

/// The job whose command is running.
struct Running {
    job_id: Uuid,
    parent: Option<Uuid>,
    child: Child,
    on_success: OnSuccess,
    /// When its `--timeout` passes.
    deadline: Instant,
    timeout_secs: u64,
    timed_out: bool,
}

/// The client daemon.
pub struct Client {
    cfg: Config,
    poll: Poll,
    link: Link,
    ctx: zmq::Context,
    tokens: TokenCounter,
    timers: Timers<Timer>,
    signals: Signals,
    state: RunState,
    backoff: Duration,
    queue: VecDeque<Queued>,
    running: Option<Running>,
    /// The earliest pending `JobTimeout` timer. Jobs share it rather than
    /// each leaving a timer in the heap for up to its whole timeout.
    timeout_armed: Option<Instant>,
    cache: Cache,
    failed_parents: HashSet<Uuid>,
    failed_order: VecDeque<Uuid>,
    /// Results sent and not yet acknowledged, resent on reconnect.
    unacked: Vec<(Uuid, Outcome)>,
}

/// Run the client until it is told to stop.
pub fn run(cfg: &Config) -> Result<()> {
    let mut client = Client::start(cfg)?;
    let result = client.run();
    client.shutdown();
    result
}

impl Client {
    fn start(cfg: &Config) -> Result<Client> {
        let poll = Poll::new().map_err(|e| Error::io("cannot create the event loop", e))?;
        let signals = Signals::install(poll.registry(), SIGNALS)
            .map_err(|e| Error::io("cannot install signal handlers", e))?;
        let cache =
            Cache::open(&cfg.cache_path, cfg.cache_ttl, crate::clock::now_ms()).map_err(|e| {
                Error::io(
                    format!("cannot open the cache in {}", cfg.cache_path.display()),
                    e,
                )
            })?;
        let mut client = Client {
            cfg: cfg.clone(),
            poll,
            link: Link::Down,
            ctx: zmq::Context::new(),
            tokens: TokenCounter::new(FIRST_DYNAMIC),
            timers: Timers::default(),
            signals,
            state: RunState::Running,
            backoff: BACKOFF_FIRST,
            queue: VecDeque::new(),
            running: None,
            timeout_armed: None,
            cache,
            failed_parents: HashSet::new(),
            failed_order: VecDeque::new(),
            unacked: Vec::new(),
        };
        client.open()?;
        let now = Instant::now();
        client.timers.at(now + cfg.heartbeat_ivl, Timer::Heartbeat);
        client.timers.at(now + cfg.heartbeat_ivl, Timer::Liveness);
        client
            .timers
            .at(now + cache_sweep_ivl(cfg.cache_ttl), Timer::CacheSweep);
        if cfg.shared_key.is_some() {
            log::warn!(
                "--shared-key is accepted but not enforced yet: peers are not authenticated"
            );
        }
        log::info!(
            "client {} connecting to {} (job {}, transfer {}, heartbeat {})",
            cfg.identity,
            cfg.server_address,
            cfg.job_port,
            cfg.transfer_port,
            cfg.heartbeat_port
        );
        Ok(client)
    }

    /// Open the three sockets and announce ourselves.
    fn open(&mut self) -> Result<()> {
        let connect = |name: &'static str, port: u16, token: Token| {
            let ep = endpoint(&self.cfg.server_address, port);
            ZmqPort::connect(
                &self.ctx,
                name,
                &self.cfg.identity,
                &ep,
                self.poll.registry(),
                token,
            )
            .map_err(|e| Error::zmq(format!("cannot connect the {name} socket to {ep}"), e))
        };
        let ports = Box::new(Ports {
            job: connect("job", self.cfg.job_port, JOB)?,
            transfer: connect("transfer", self.cfg.transfer_port, TRANSFER)?,
            heartbeat: connect("heartbeat", self.cfg.heartbeat_port, HEARTBEAT)?,
        });
        self.link = Link::Up {
            ports,
            last_heard: Instant::now(),
        };
        self.announce();
        self.send_heartbeat();
        Ok(())
    }

    /// Say `Ready` with what we hold, then resend unacknowledged results.
    fn announce(&mut self) {
        let mut holding: Vec<Uuid> = self.queue.iter().map(|q| q.job_id).collect();
        holding.extend(self.running.as_ref().map(|r| r.job_id));
        holding.extend(self.unacked.iter().map(|(id, _)| *id));
        self.send_job(&ClientMsg::Ready {
            version: env!("CARGO_PKG_VERSION").into(),
            interval_ms: self.cfg.heartbeat_ivl.as_millis() as u64,
            holding,
        });
        for (job_id, outcome) in self.unacked.clone() {
            self.send_job(&ClientMsg::Finished { job_id, outcome });
        }
    }

    fn close(&mut self) {
        if let Link::Up { ports, .. } = std::mem::replace(&mut self.link, Link::Down) {
            let registry = self.poll.registry();
            ports.job.close(registry);
            ports.transfer.close(registry);
            ports.heartbeat.close(registry);
        }
    }

    fn run(&mut self) -> Result<()> {
        let mut events = Events::with_capacity(64);
        loop {
            let busy = self.service_ports();
            let backlog = match &self.link {
                Link::Up { ports, .. } => [&ports.job, &ports.transfer, &ports.heartbeat]
                    .iter()
                    .any(|p| p.has_backlog()),
                Link::Down => false,
            };
            let sleep = Sleep {
                busy,
                backlog,
                next_timer: self.timers.until_next(Instant::now()),
            };
            reactor::wait(&mut self.poll, &mut events, sleep)
                .map_err(|e| Error::io("event loop failed", e))?;
            for ev in events.iter() {
                match ev.token() {
                    JOB | TRANSFER | HEARTBEAT => {} // serviced at the top of the loop
                    SIGNALS => self.handle_signals(),
                    token => self.handle_child(token),
                }
            }
            self.fire_timers(Instant::now());
            if self.state == RunState::Draining && self.running.is_none() {
                self.state = RunState::Stopped;
            }
            if self.state == RunState::Stopped {
                // Flush the last result before leaving.
                self.service_ports();
                return Ok(());
            }
        }
    }

    fn shutdown(&mut self) {
        if let Link::Up { ports, .. } = &self.link {
            for p in [&ports.job, &ports.transfer, &ports.heartbeat] {
                p.set_linger(SHUTDOWN_LINGER_MS);
            }
        }
        log::info!("client stopped");
    }

    /// Receive and send on every socket until a round does nothing.
    fn service_ports(&mut self) -> bool {
        let mut busy = false;
        for _round in 0..8 {
            let Link::Up { ports, last_heard } = &mut self.link else {
                return false;
            };
            let mut received = Vec::new();
            let mut failed = None;
            for (which, port) in [
                (JOB, &mut ports.job),
                (TRANSFER, &mut ports.transfer),
                (HEARTBEAT, &mut ports.heartbeat),
            ] {
                match port.service(BUDGET) {
                    Ok(done) => {
                        busy |= done.busy;
                        received.extend(done.received.into_iter().map(|m| (which, port.name, m)));
                    }
                    Err(e) => {
                        failed = Some(format!("{} socket failed: {e}", port.name));
                        break;
                    }
                }
            }
            if !received.is_empty() {
                *last_heard = Instant::now();
                self.backoff = BACKOFF_FIRST;
            }
            for (which, name, frames) in received.iter() {
                self.handle_zmq(*which, name, frames);
            }
            if let Some(why) = failed {
                log::error!("{why}; reconnecting");
                self.reconnect();
                return false;
            }
            if received.is_empty() {
                return busy;
            }
        }
        true
    }

    fn handle_zmq(&mut self, which: Token, name: &str, frames: &[Vec<u8>]) {
        let msg = match wire::decode::<ServerMsg>(frames) {
            Ok(msg) => msg,
            Err(e) => {
                log::warn!("server: dropped a message on the {name} port: {e}");
                return;
            }
        };
        log::debug!("{name} <- {}", msg.describe());
        match (which, msg) {
            (HEARTBEAT, ServerMsg::HeartbeatAck { .. }) => {}
            (HEARTBEAT, ServerMsg::Register) => {
                log::info!(
                    "server asked us to register (it restarted or expired us); sending Ready"
                );
                self.announce();
            }
            (
                JOB,
                ServerMsg::Job {
                    job_id,
                    parent,
                    task,
                },
            ) => {
                if self.holds(&job_id) {
                    log::warn!("job {job_id} received twice; ignored");
                } else if self.state == RunState::Running {
                    self.queue.push_back(Queued {
                        job_id,
                        parent,
                        task,
                    });
                    self.start_next();
                }
            }
            (JOB, ServerMsg::ResultAck { job_id }) => self.unacked.retain(|(id, _)| *id != job_id),
            (_, msg) => log::warn!(
                "server: dropped an unexpected {} on the {name} port",
                msg.describe()
            ),
        }
    }

    fn holds(&self, job_id: &Uuid) -> bool {
        self.queue.iter().any(|q| q.job_id == *job_id)
            || self.running.as_ref().is_some_and(|r| r.job_id == *job_id)
            || self.unacked.iter().any(|(id, _)| id == job_id)
    }

    fn send_job(&mut self, msg: &ClientMsg) {
        if let Link::Up { ports, .. } = &mut self.link {
            log::debug!("job -> {}", msg.describe());
            ports.job.queue(wire::encode(msg));
        }
    }

    fn send_heartbeat(&mut self) {
        let msg = ClientMsg::Heartbeat {
            interval_ms: self.cfg.heartbeat_ivl.as_millis() as u64,
        };
        if let Link::Up { ports, .. } = &mut self.link {
            log::debug!("heartbeat -> {}", msg.describe());
            ports.heartbeat.queue(wire::encode(&msg));
        }
    }

    /// Start the next queued job if nothing runs.
    fn start_next(&mut self) {
        while self.running.is_none() && self.state == RunState::Running {
            let Some(Queued {
                job_id,
                parent,
                task,
            }) = self.queue.pop_front()
            else {
                return;
            };
            if parent.is_some_and(|p| self.failed_parents.contains(&p)) {
                self.report(job_id, parent, exec::ended(Exit::SkippedAfterFailure));
                continue;
            }
            log::info!("job {job_id}: starting {} {}", task.verb(), task.args());
            let now_ms = crate::clock::now_ms();
            match exec::start(
                &task,
                &mut self.cache,
                now_ms,
                self.poll.registry(),
                &mut self.tokens,
            ) {
                Started::Process(child, on_success) => {
                    let now = Instant::now();
                    if !child.has_pidfd() {
                        self.timers.at(now + REAP_SWEEP, Timer::ReapSweep);
                    }
                    let timeout_secs = task.options.timeout_secs;
                    let deadline = now + Duration::from_secs(timeout_secs);
                    self.arm_timeout(deadline);
                    self.running = Some(Running {
                        job_id,
                        parent,
                        child,
                        on_success,
                        deadline,
                        timeout_secs,
                        timed_out: false,
                    });
                    self.send_job(&ClientMsg::Started { job_id });
                }
                Started::Done(outcome) => self.report(job_id, parent, outcome),
            }
        }
    }

    /// Make sure a `JobTimeout` fires no later than `deadline`.
    fn arm_timeout(&mut self, deadline: Instant) {
        if self.timeout_armed.is_none_or(|armed| deadline < armed) {
            self.timers.at(deadline, Timer::JobTimeout);
            self.timeout_armed = Some(deadline);
        }
    }

    fn report(&mut self, job_id: Uuid, parent: Option<Uuid>, outcome: Outcome) {
        log::info!(
            "job {job_id}: {} after {:.3}s",
            outcome.exit,
            outcome.exec_secs
        );
        if let (false, Some(p)) = (outcome.exit.state().is_ok(), parent) {
            self.remember_failed(p);
        }
        self.unacked.push((job_id, outcome.clone()));
        self.send_job(&ClientMsg::Finished { job_id, outcome });
    }

    fn remember_failed(&mut self, parent: Uuid) {
        if self.failed_parents.insert(parent) {
            self.failed_order.push_back(parent);
            if self.failed_order.len() > FAILED_PARENTS_CAP {
                if let Some(old) = self.failed_order.pop_front() {
                    self.failed_parents.remove(&old);
                }
            }
        }
    }

    fn handle_child(&mut self, token: Token) {
        let Some(running) = self.running.as_mut() else {
            return;
        };
        match running.child.source(token) {
            Some(Source::Exit) => self.try_reap(),
            Some(src) => running.child.read(src, self.poll.registry()),
            None => {} // a closed source from an earlier child
        }
    }

    fn try_reap(&mut self) {
        let Some(running) = self.running.as_mut() else {
            return;
        };
        let reaped = running.child.try_reap(self.poll.registry());
        if let Err(e) = &reaped {
            log::error!(
                "job {}: cannot wait for pid {}: {e}",
                running.job_id,
                running.child.pid()
            );
        }
        if let Ok(false) = reaped {
            return;
        }
        let Some(r) = self.running.take() else { return };
        let timed_out = r.timed_out.then_some(r.timeout_secs);
        let outcome = match (reaped, r.child.into_ended()) {
            (Ok(_), Some(ended)) => exec::finish(
                ended,
                &r.on_success,
                timed_out,
                &mut self.cache,
                crate::clock::now_ms(),
            ),
            // Dropping the child killed and reaped its group.
            (Err(e), _) => exec::ended(Exit::Error(format!("cannot wait for the command: {e}"))),
            (Ok(_), None) => exec::ended(Exit::Error("the command's exit status was lost".into())),
        };
        self.report(r.job_id, r.parent, outcome);
        self.start_next();
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Heartbeat => {
                    self.send_heartbeat();
                    self.timers
                        .at(now + self.cfg.heartbeat_ivl, Timer::Heartbeat);
                }
                Timer::Liveness => {
                    if let Link::Up { last_heard, .. } = &self.link {
                        let silent = now.saturating_duration_since(*last_heard);
                        if silent >= self.cfg.heartbeat_ivl * LIVENESS {
                            log::warn!(
                                "server silent for {:.1}s; reconnecting in {}s",
                                silent.as_secs_f64(),
                                self.backoff.as_secs()
                            );
                            self.reconnect();
                        }
                    }
                    self.timers
                        .at(now + self.cfg.heartbeat_ivl, Timer::Liveness);
                }
                Timer::Reopen => {
                    if matches!(self.link, Link::Down) {
                        if let Err(e) = self.open() {
                            log::error!("{e}; retrying in {}s", self.backoff.as_secs());
                            self.reconnect();
                        }
                    }
                }
                Timer::ReapSweep => {
                    self.try_reap();
                    if self.running.as_ref().is_some_and(|r| !r.child.has_pidfd()) {
                        self.timers.at(now + REAP_SWEEP, Timer::ReapSweep);
                    }
                }
                Timer::JobTimeout => {
                    if self.timeout_armed.is_some_and(|armed| armed > now) {
                        continue; // superseded by an earlier one, still pending
                    }
                    self.timeout_armed = None;
                    match self.running.as_mut() {
                        Some(r) if r.deadline <= now && !r.timed_out => {
                            log::warn!(
                                "job {}: timed out after {}s; killing process group {}",
                                r.job_id,
                                r.timeout_secs,
                                r.child.pid()
                            );
                            r.child.signal_group(libc::SIGKILL);
                            r.timed_out = true;
                        }
                        Some(r) if !r.timed_out => {
                            let deadline = r.deadline;
                            self.arm_timeout(deadline);
                        }
                        _ => {}
                    }
                }
                Timer::CacheSweep => {
                    let dropped = self.cache.sweep(crate::clock::now_ms());
                    if dropped > 0 {
                        log::info!("cache: dropped {dropped} expired entries");
                    }
                    self.timers
                        .at(now + cache_sweep_ivl(self.cfg.cache_ttl), Timer::CacheSweep);
                }
                Timer::KillGrace => {
                    if let Some(running) = &self.running {
                        log::warn!(
                            "job {}: command ignored SIGTERM; killing its process group",
                            running.job_id
                        );
                        running.child.signal_group(libc::SIGKILL);
                    }
                }
            }
        }
    }

    /// Drop the sockets and schedule a reopen after the current backoff.
    fn reconnect(&mut self) {
        self.close();
        self.timers.at(Instant::now() + self.backoff, Timer::Reopen);
        self.backoff = (self.backoff * 2).min(BACKOFF_CAP);
    }

    fn handle_signals(&mut self) {
        for sig in self.signals.drain() {
            if self.state != RunState::Running {
                continue;
            }
            match &self.running {
                Some(running) => {
                    log::info!(
                        "received {}; stopping job {} (process group {}) first",
                        signals::name(sig),
                        running.job_id,
                        running.child.pid()
                    );
                    running.child.signal_group(libc::SIGTERM);
                    self.timers
                        .at(Instant::now() + KILL_GRACE, Timer::KillGrace);
                    self.state = RunState::Draining;
                }
                None => {
                    log::info!("received {}; stopping", signals::name(sig));
                    self.state = RunState::Stopped;
                }
            }
        }
    }
}

/// How often to drop expired cache entries: often enough that an entry
/// leaves the disk soon after its time-to-live, at most once a second.
fn cache_sweep_ivl(ttl: Duration) -> Duration {
    (ttl / 2).clamp(Duration::from_secs(1), Duration::from_secs(3600))
}
