//! The client daemon: one thread, one `mio::Poll`, on every enrolled node.
//!
//! Sources: the job, transfer and heartbeat DEALERs (fixed tokens, identity =
//! the node name), the signal pipe, and the running command's pipes and pidfd
//! (tokens from a counter). This module owns the link to the server; the
//! jobs themselves live in `Runner`.
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

mod add;
mod cache;
mod exec;
mod runner;

use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};

use self::cache::Cache;
use self::runner::{Effects, Runner, RunnerTimer};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::reactor::signals::{self, Signals};
use crate::reactor::timers::Timers;
use crate::reactor::zmq::{endpoint, ZmqPort};
use crate::reactor::{self, Sleep, TokenCounter};
use crate::wire::{self, ClientMsg, ServerMsg};

const JOB: Token = Token(0);
const TRANSFER: Token = Token(1);
const HEARTBEAT: Token = Token(2);
const SIGNALS: Token = Token(3);
const FIRST_DYNAMIC: usize = 16;

const BUDGET: usize = 256;
const LIVENESS: u32 = 3;
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(32);
const SHUTDOWN_LINGER_MS: i32 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Heartbeat,
    Liveness,
    Reopen,
    /// Drop expired cache entries.
    CacheSweep,
    Runner(RunnerTimer),
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

impl Ports {
    fn all(&self) -> [&ZmqPort; 3] {
        [&self.job, &self.transfer, &self.heartbeat]
    }
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

/// The client daemon.
pub struct Client {
    cfg: Config,
    poll: Poll,
    link: Link,
    ctx: zmq::Context,
    timers: Timers<Timer>,
    signals: Signals,
    state: RunState,
    backoff: Duration,
    runner: Runner,
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
            timers: Timers::default(),
            signals,
            state: RunState::Running,
            backoff: BACKOFF_FIRST,
            runner: Runner::new(cache, TokenCounter::new(FIRST_DYNAMIC)),
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
        self.send(
            HEARTBEAT,
            &ClientMsg::Heartbeat {
                interval_ms: self.cfg.heartbeat_ivl.as_millis() as u64,
            },
        );
        Ok(())
    }

    /// Say `Ready` with what we hold, then resend unacknowledged results.
    fn announce(&mut self) {
        let mut fx = Effects::default();
        self.runner.link_reset(self.poll.registry(), &mut fx);
        self.apply(fx);
        let ready = ClientMsg::Ready {
            version: env!("CARGO_PKG_VERSION").into(),
            interval_ms: self.cfg.heartbeat_ivl.as_millis() as u64,
            holding: self.runner.holding(),
        };
        self.send(JOB, &ready);
        let resend: Vec<ClientMsg> = self.runner.unacked().collect();
        for msg in resend {
            self.send(JOB, &msg);
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
            let mut busy = self.service_ports();
            if self.runner.wants_tick() {
                let mut fx = Effects::default();
                self.runner.tick(self.poll.registry(), &mut fx);
                self.apply(fx);
                busy = true;
            }
            let backlog = match &self.link {
                Link::Up { ports, .. } => ports.all().iter().any(|p| p.has_backlog()),
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
                    token => {
                        let mut fx = Effects::default();
                        self.runner
                            .on_child_event(token, self.poll.registry(), &mut fx);
                        self.apply(fx);
                    }
                }
            }
            self.fire_timers(Instant::now());
            if self.state == RunState::Draining && self.runner.is_idle() {
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
            for p in ports.all() {
                p.set_linger(SHUTDOWN_LINGER_MS);
            }
        }
        log::info!("client stopped");
    }

    /// Carry out what the runner asked for.
    fn apply(&mut self, fx: Effects) {
        for msg in &fx.job {
            self.send(JOB, msg);
        }
        for msg in &fx.transfer {
            self.send(TRANSFER, msg);
        }
        for (at, t) in fx.timers {
            self.timers.at(at, Timer::Runner(t));
        }
    }

    fn send(&mut self, port: Token, msg: &ClientMsg) {
        let Link::Up { ports, .. } = &mut self.link else {
            return;
        };
        let p = match port {
            JOB => &mut ports.job,
            TRANSFER => &mut ports.transfer,
            _ => &mut ports.heartbeat,
        };
        log::debug!("{} -> {}", p.name, msg.describe());
        p.queue(wire::encode(msg));
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
            let heard = !received.is_empty();
            if heard {
                *last_heard = Instant::now();
                self.backoff = BACKOFF_FIRST;
            }
            for (which, name, frames) in received {
                self.handle_zmq(which, name, frames);
            }
            if let Some(why) = failed {
                log::error!("{why}; reconnecting");
                self.reconnect();
                return false;
            }
            if !heard {
                return busy;
            }
        }
        true
    }

    fn handle_zmq(&mut self, which: Token, name: &str, frames: Vec<Vec<u8>>) {
        let (msg, payload) = match wire::decode_with_payload::<ServerMsg>(frames) {
            Ok(m) => m,
            Err(e) => {
                log::warn!("server: dropped a message on the {name} port: {e}");
                return;
            }
        };
        log::debug!("{name} <- {}", msg.describe());
        let mut fx = Effects::default();
        match (which, msg, payload) {
            (HEARTBEAT, ServerMsg::HeartbeatAck { .. }, None) => {}
            (HEARTBEAT, ServerMsg::Register, None) => {
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
                None,
            ) => {
                self.runner
                    .enqueue(job_id, parent, task, self.poll.registry(), &mut fx);
            }
            (JOB, ServerMsg::ResultAck { job_id }, None) => self.runner.acked(&job_id),
            (TRANSFER, msg @ (ServerMsg::Chunk { .. } | ServerMsg::FetchError { .. }), payload) => {
                self.runner
                    .on_transfer(msg, payload, self.poll.registry(), &mut fx);
            }
            (_, msg, _) => log::warn!(
                "server: dropped an unexpected {} on the {name} port",
                msg.describe()
            ),
        }
        self.apply(fx);
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Heartbeat => {
                    self.send(
                        HEARTBEAT,
                        &ClientMsg::Heartbeat {
                            interval_ms: self.cfg.heartbeat_ivl.as_millis() as u64,
                        },
                    );
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
                Timer::CacheSweep => {
                    self.runner.sweep_cache();
                    self.timers
                        .at(now + cache_sweep_ivl(self.cfg.cache_ttl), Timer::CacheSweep);
                }
                Timer::Runner(t) => {
                    let mut fx = Effects::default();
                    self.runner.on_timer(t, now, self.poll.registry(), &mut fx);
                    self.apply(fx);
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
            log::info!("received {}; stopping", signals::name(sig));
            let mut fx = Effects::default();
            let busy = self.runner.stop(self.poll.registry(), &mut fx);
            self.apply(fx);
            self.state = if busy {
                RunState::Draining
            } else {
                RunState::Stopped
            };
        }
    }
}

/// How often to drop expired cache entries: often enough that an entry
/// leaves the disk soon after its time-to-live, at most once a second.
fn cache_sweep_ivl(ttl: Duration) -> Duration {
    (ttl / 2).clamp(Duration::from_secs(1), Duration::from_secs(3600))
}
