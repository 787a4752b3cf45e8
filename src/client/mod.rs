//! The client daemon: one thread, one `mio::Poll`, on every enrolled node.
//!
//! Sources: the job, transfer and heartbeat DEALERs (fixed tokens, identity =
//! the node name), the signal pipe, and the running command's pipes and pidfd
//! (tokens from a counter). This module is the executor: it owns those
//! sources, reads the time once per pass, and performs what the sans-io
//! `core::Core` asks; the rules are there (the link's in `link.rs`, the
//! jobs' in `runner/`).
//!
//! Security: with CURVE (the default) the client has its own key pair under
//! `--key-path` and only talks to the server holding the key it was given
//! (`--server-key`) or derives (`--shared-key`). A monitor on the job socket
//! reports each handshake, so a wrong server key or a rejected key is said
//! at the first attempt. The server answers `Ready` with `Welcome` (this
//! node is accepted) or `Denied`: pending keys wait, connected, until an
//! operator accepts them; a rejected key or a name owned by another key
//! stops the client with an error.
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
mod backoff;
pub(crate) mod cache;
pub mod core;
pub(crate) mod exec;
pub(crate) mod ledger;
pub(crate) mod link;
pub(crate) mod runner;
mod store;
mod workdir;

use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};

use self::cache::Cache;
use self::core::{Channel, Core, Identity, Out};
use self::exec::Spawn;
use self::ledger::Ledger;
use self::link::{LinkTimer, Names};
use self::runner::{IoDone, IoTask, Runner};
use crate::config::{Config, Curve};
use crate::curve::{KeyPair, PublicKey, SharedKey};
use crate::error::{Error, Result};
use crate::reactor::child::{Child, Source};
use crate::reactor::monitor::{self, Monitor};
use crate::reactor::signals::{self, Signals};
use crate::reactor::timers::Timers;
use crate::reactor::worker::Worker;
use crate::reactor::zmq::{endpoint, PortSpec, Security, ZmqPort};
use crate::reactor::{self, Sleep, TokenCounter};
use crate::support::clock::Now;
use crate::wire::{self, ClientMsg, ServerMsg};

const JOB: Token = Token(0);
const TRANSFER: Token = Token(1);
const HEARTBEAT: Token = Token(2);
const SIGNALS: Token = Token(3);
const MONITOR: Token = Token(4);
const WORKER: Token = Token(5);
const FIRST_DYNAMIC: usize = 16;

/// What each port takes from the server (see the server's specs).
const JOB_PORT: PortSpec = PortSpec {
    name: "job",
    max_msg: wire::MAX_JOB_DOWN,
    rcvhwm: 1000,
    sndhwm: 1000,
    peer_cap: 0,
};
const TRANSFER_PORT: PortSpec = PortSpec {
    name: "transfer",
    max_msg: wire::MAX_TRANSFER_DOWN,
    rcvhwm: 64,
    sndhwm: 1000,
    peer_cap: 0,
};
const HEARTBEAT_PORT: PortSpec = PortSpec {
    name: "heartbeat",
    max_msg: wire::MAX_HEARTBEAT,
    rcvhwm: 64,
    sndhwm: 1000,
    peer_cap: 0,
};

const BUDGET: usize = 256;
const SHUTDOWN_LINGER_MS: i32 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Core(core::Timer),
    /// Drop expired cache entries.
    CacheSweep,
    /// Without pidfds: look for the running command's exit.
    ReapSweep,
    /// Send the running live job's output read since the last send.
    LiveFlush,
}

/// Without pidfds, how often to look for a command's exit.
const REAP_SWEEP: Duration = Duration::from_millis(100);

/// The command the runner asked for, as the loop watches it.
struct Process {
    job_id: uuid::Uuid,
    child: Child,
    /// Its output goes to the server as it comes (`--follow`).
    live: Option<Live>,
}

/// When a live job's output last went out, and whether a flush is due.
struct Live {
    last: Instant,
    armed: bool,
}

impl Live {
    fn new() -> Live {
        Live {
            last: Instant::now(),
            armed: false,
        }
    }
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

/// The open connection to the server.
struct Sockets {
    ports: Box<Ports>,
    monitor: Option<Monitor>,
}

/// How this client proves who it is, and knows the server.
enum Trust {
    Curve {
        own: KeyPair,
        server: PublicKey,
        /// Where the server key came from, for error messages.
        server_source: ServerKeySource,
        /// With a shared key, shows the server we know it; empty without.
        proof: Vec<u8>,
    },
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServerKeySource {
    SharedKey,
    ServerKey,
}

/// The client daemon.
pub struct Client {
    cfg: Config,
    poll: Poll,
    /// The rules: link, session, jobs.
    core: Core,
    /// The link's sockets, while open.
    sockets: Option<Sockets>,
    ctx: zmq::Context,
    timers: Timers<Timer>,
    signals: Signals,
    state: RunState,
    trust: Trust,
    /// Why the server will not have us: the client stops with this error.
    refused: Option<String>,
    /// Monitor endpoints must be unique in the context.
    links_opened: u64,
    /// This process owns its cache and key directories.
    _locks: Vec<crate::support::dirlock::DirLock>,
    /// Cache syncs, off the loop.
    worker: Worker<IoDone>,
    /// Tokens for the running command's pipes and pidfd.
    tokens: TokenCounter,
    /// The running command, if the runner has one.
    /// The commands running: one, or the jobs of an `async` group's lanes.
    processes: Vec<Process>,
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
        // One client per cache and key directory, before either is
        // touched: two would share one cache's steps and answer for one key.
        let mut dirs = vec![(cfg.cache_path.as_path(), "cache directory (--cache-path)")];
        if cfg.curve == Curve::On {
            dirs.push((cfg.key_path.as_path(), "key directory (--key-path)"));
        }
        let locks = crate::support::dirlock::lock_all(&dirs)?;
        let worker = Worker::start("director-io", poll.registry(), WORKER)
            .map_err(|e| Error::io("cannot start the I/O thread", e))?;
        let trust = trust(cfg)?;
        let instance = uuid::Uuid::new_v4().as_u64_pair().0;
        let cache = Cache::open(
            &cfg.cache_path,
            cfg.cache_ttl,
            crate::support::clock::now_ms(),
        )
        .map_err(|e| {
            Error::io(
                format!("cannot open the cache in {}", cfg.cache_path.display()),
                e,
            )
        })?;
        let ledger = Ledger::open(&cfg.cache_path).map_err(|e| {
            Error::io(
                format!("cannot open the job ledger in {}", cfg.cache_path.display()),
                e,
            )
        })?;
        let now = Now::real();
        let runner = Runner::new(
            cache,
            ledger,
            transfer_stall(cfg.heartbeat_ivl),
            crate::facts::Node {
                facts: crate::facts::gather(),
                labels: cfg.labels.clone(),
            },
            cfg.cache_path.join("blueprints"),
            now,
        );
        let link = link::Link::new(names(cfg, &trust), cfg.heartbeat_ivl, instance);
        let me = Identity {
            name: cfg.identity.clone(),
            proof: match &trust {
                Trust::Curve { proof, .. } => proof.clone(),
                Trust::Off => Vec::new(),
            },
            instance,
        };
        let mut client = Client {
            cfg: cfg.clone(),
            poll,
            core: Core::new(link, runner, me, now),
            sockets: None,
            ctx: zmq::Context::new(),
            timers: Timers::default(),
            signals,
            state: RunState::Running,
            tokens: TokenCounter::new(FIRST_DYNAMIC),
            processes: Vec::new(),
            trust,
            refused: None,
            links_opened: 0,
            _locks: locks,
            worker,
        };
        // The first opening's errors are the operator's to see at once.
        client.open()?;
        client.core.start();
        let mut outs = client.core.take_out();
        outs.retain(|o| !matches!(o, Out::Open));
        client.core.opened();
        outs.extend(client.core.take_out());
        for o in outs {
            client.perform_one(o);
        }
        client.perform();
        client
            .timers
            .at(now.at + cache_sweep_ivl(cfg.cache_ttl), Timer::CacheSweep);
        match &client.trust {
            Trust::Curve {
                own,
                server,
                server_source,
                ..
            } => log::info!(
                "client {} connecting to {} (job {}, transfer {}, heartbeat {}); node key {}, server key {} ({})",
                cfg.identity,
                cfg.server_address,
                cfg.job_port,
                cfg.transfer_port,
                cfg.heartbeat_port,
                own.public.fingerprint(),
                server.fingerprint(),
                match server_source {
                    ServerKeySource::SharedKey => "from the shared key",
                    ServerKeySource::ServerKey => "from --server-key",
                }
            ),
            Trust::Off => {
                log::warn!("{}", crate::curve::UNAUTHENTICATED);
                log::info!(
                    "client {} connecting to {} (job {}, transfer {}, heartbeat {})",
                    cfg.identity,
                    cfg.server_address,
                    cfg.job_port,
                    cfg.transfer_port,
                    cfg.heartbeat_port
                );
            }
        }
        Ok(client)
    }

    /// Open the three sockets and announce ourselves.
    fn open(&mut self) -> Result<()> {
        let security = || match &self.trust {
            Trust::Curve { own, server, .. } => Security::CurveClient { server, own },
            Trust::Off => Security::Plain,
        };
        // With CURVE the server knows us by our key, and libzmq picks the
        // routing ids; without, the name is the routing id.
        let identity = match self.trust {
            Trust::Curve { .. } => None,
            Trust::Off => Some(self.cfg.identity.as_str()),
        };
        let make = |spec: PortSpec, token: Token| {
            ZmqPort::<()>::dealer(
                &self.ctx,
                spec,
                identity,
                security(),
                self.poll.registry(),
                token,
            )
            .map_err(|e| Error::zmq(format!("cannot create the {} socket", spec.name), e))
        };
        let ports = Box::new(Ports {
            job: make(JOB_PORT, JOB)?,
            transfer: make(TRANSFER_PORT, TRANSFER)?,
            heartbeat: make(HEARTBEAT_PORT, HEARTBEAT)?,
        });
        self.links_opened += 1;
        let monitor_ep = format!("inproc://director-monitor-{}", self.links_opened);
        // Before the job socket connects, so that no event of its first
        // attempt is missed (a handshake can fail before a monitor started
        // after it would see it). Without a monitor we still work; we only
        // say less about failures.
        let monitor = match Monitor::start(
            &self.ctx,
            &ports.job,
            &monitor_ep,
            self.poll.registry(),
            MONITOR,
            monitor::Watch::Connecting,
        ) {
            Ok(m) => Some(m),
            Err(e) => {
                log::warn!(
                    "cannot monitor the job socket ({e}); handshake failures will show as silence"
                );
                None
            }
        };
        for (port, number) in [
            (&ports.job, self.cfg.job_port),
            (&ports.transfer, self.cfg.transfer_port),
            (&ports.heartbeat, self.cfg.heartbeat_port),
        ] {
            let ep = endpoint(self.core.server(), number);
            port.connect_to(&ep).map_err(|e| {
                Error::zmq(
                    format!("cannot connect the {} socket to {ep}", port.name),
                    e,
                )
            })?;
        }
        self.sockets = Some(Sockets { ports, monitor });
        Ok(())
    }

    fn close(&mut self) {
        if let Some(Sockets { mut ports, monitor }) = self.sockets.take() {
            let registry = self.poll.registry();
            if let Some(m) = monitor {
                m.close(&mut ports.job, registry);
            }
            ports.job.close(registry);
            ports.transfer.close(registry);
            ports.heartbeat.close(registry);
        }
    }

    fn run(&mut self) -> Result<()> {
        let mut events = Events::with_capacity(64);
        loop {
            self.core.at(Now::real());
            self.service_monitor();
            let mut busy = self.service_ports();
            if self.core.wants_tick() {
                self.core.tick();
                self.perform();
                busy = true;
            }
            let backlog = match &self.sockets {
                Some(s) => s.ports.all().iter().any(|p| p.has_backlog()),
                None => false,
            };
            let sleep = Sleep {
                busy,
                backlog,
                next_timer: self.timers.until_next(Instant::now()),
            };
            reactor::wait(&mut self.poll, &mut events, sleep)
                .map_err(|e| Error::io("event loop failed", e))?;
            self.core.at(Now::real());
            for ev in events.iter() {
                match ev.token() {
                    // Serviced at the top of the loop; only a port whose fd
                    // fired (or that has sends) is asked.
                    JOB | TRANSFER | HEARTBEAT => {
                        if let Some(s) = &mut self.sockets {
                            match ev.token() {
                                JOB => s.ports.job.mark_ready(),
                                TRANSFER => s.ports.transfer.mark_ready(),
                                _ => s.ports.heartbeat.mark_ready(),
                            }
                        }
                    }
                    MONITOR => {}
                    SIGNALS => self.handle_signals(),
                    WORKER => {
                        for done in self.worker.drain() {
                            self.core.io_done(done);
                            self.perform();
                        }
                    }
                    token => self.on_child_event(token),
                }
            }
            self.fire_timers(Instant::now());
            if self.state == RunState::Draining && self.core.is_idle() {
                self.state = RunState::Stopped;
            }
            if self.state == RunState::Stopped {
                // Flush the last result before leaving.
                self.service_ports();
                return match self.refused.take() {
                    Some(why) => Err(Error::Refused(why)),
                    None => Ok(()),
                };
            }
        }
    }

    fn shutdown(&mut self) {
        if let Some(s) = &self.sockets {
            for p in s.ports.all() {
                p.set_linger(SHUTDOWN_LINGER_MS);
            }
        }
        log::info!("client stopped");
    }

    /// Perform what the core asked, in order, until it asks nothing more.
    fn perform(&mut self) {
        loop {
            let outs = self.core.take_out();
            if outs.is_empty() {
                return;
            }
            for o in outs {
                self.perform_one(o);
            }
        }
    }

    fn perform_one(&mut self, out: Out) {
        match out {
            Out::Send(channel, msg) => self.send(channel, &msg),
            Out::Open => match self.open() {
                Ok(()) => self.core.opened(),
                Err(e) => {
                    self.close();
                    self.core.open_failed(&e.to_string());
                }
            },
            Out::Close => self.close(),
            Out::Probe => {
                let task = IoTask::Probe {
                    host: self.core.server().to_owned(),
                    port: self.cfg.job_port,
                };
                self.worker.submit(move || task.run());
            }
            Out::Timer(at, t) => self.timers.at(at, Timer::Core(t)),
            Out::Io(task) if task.is_quick() => self.core.io_done(task.run()),
            Out::Io(task) => self.worker.submit(move || task.run()),
            Out::Spawn(spawn) => self.spawn(spawn),
            Out::Signal(job_id, sig) => {
                if let Some(p) = self.processes.iter().find(|p| p.job_id == job_id) {
                    log::debug!(
                        "job {}: signal {sig} to process group {}",
                        p.job_id,
                        p.child.pid()
                    );
                    p.child.signal_group(sig);
                }
            }
            Out::GoLive(job_id) => {
                if let Some(p) = self.processes.iter_mut().find(|p| p.job_id == job_id) {
                    if p.live.is_none() {
                        p.child.go_live();
                        p.live = Some(Live::new());
                    }
                }
            }
            Out::Refuse(why) => {
                if self.refused.is_none() && self.state != RunState::Stopped {
                    self.refused = Some(why);
                    self.stop();
                }
            }
        }
    }

    /// Start the command the runner asked for, and watch it.
    fn spawn(&mut self, spawn: Spawn) {
        let Spawn {
            job_id,
            command,
            env,
            live,
        } = spawn;
        match Child::spawn(&command, &env, live, self.poll.registry(), &mut self.tokens) {
            Ok(child) => {
                if !child.has_pidfd() {
                    self.timers
                        .at(Instant::now() + REAP_SWEEP, Timer::ReapSweep);
                }
                let live = live.then(Live::new);
                // A process the runner no longer wants is killed when dropped.
                self.processes.push(Process {
                    job_id,
                    child,
                    live,
                });
            }
            Err(e) => {
                let why = format!("cannot start /bin/sh: {e}");
                self.core.exited(job_id, Err(why));
            }
        }
    }

    /// An event for one of the running commands' sources.
    fn on_child_event(&mut self, token: Token) {
        let Some((i, src)) = self
            .processes
            .iter()
            .enumerate()
            .find_map(|(i, p)| p.child.source(token).map(|s| (i, s)))
        else {
            return; // a closed source from an earlier command
        };
        match src {
            Source::Exit => self.try_reap(),
            src => {
                self.processes[i].child.read(src, self.poll.registry());
                self.flush_live(i, false);
            }
        }
    }

    /// Send what the running live job printed since the last send: at
    /// most one chunk per stream every `LIVE_EVERY` (else a flush is
    /// timed for then), or all of it (`last`: it ended, and its result
    /// must come after its output).
    fn flush_live(&mut self, i: usize, last: bool) {
        let Some(Process {
            job_id,
            child,
            live: Some(live),
        }) = self.processes.get_mut(i)
        else {
            return;
        };
        let now = Instant::now();
        if !last && now < live.last + wire::LIVE_EVERY {
            if !live.armed && child.has_live() {
                live.armed = true;
                self.timers
                    .at(live.last + wire::LIVE_EVERY, Timer::LiveFlush);
            }
            return;
        }
        let job_id = *job_id;
        let max = if last { usize::MAX } else { wire::LIVE_CHUNK };
        let mut msgs = Vec::new();
        for stream in [wire::Stream::Stdout, wire::Stream::Stderr] {
            if let Some((data, dropped)) = child.take_live(stream, max) {
                msgs.push(ClientMsg::Output {
                    job_id,
                    stream,
                    data,
                    dropped,
                });
            }
        }
        live.last = now;
        live.armed = false;
        if !last && child.has_live() {
            live.armed = true;
            self.timers.at(now + wire::LIVE_EVERY, Timer::LiveFlush);
        }
        for msg in &msgs {
            self.send(Channel::Job, msg);
        }
    }

    /// Reap every running command that has exited, and tell the runner.
    fn try_reap(&mut self) {
        let mut i = 0;
        while i < self.processes.len() {
            let reaped = self.processes[i].child.try_reap(self.poll.registry());
            if matches!(reaped, Ok(false)) {
                i += 1;
                continue;
            }
            self.flush_live(i, true);
            let p = self.processes.remove(i);
            self.reaped(p, reaped);
        }
    }

    fn reaped(&mut self, p: Process, reaped: std::io::Result<bool>) {
        let Process { job_id, child, .. } = p;
        let ended = match reaped {
            Err(e) => {
                log::error!("job {job_id}: cannot wait for pid {}: {e}", child.pid());
                // Dropping the child kills its group and reaps it later.
                Err(format!("cannot wait for the command: {e}"))
            }
            Ok(_) => child
                .into_ended()
                .ok_or_else(|| "the command's exit status was lost".to_owned()),
        };
        self.core.exited(job_id, ended);
        self.perform();
    }

    fn send(&mut self, channel: Channel, msg: &ClientMsg) {
        let Some(Sockets { ports, .. }) = &mut self.sockets else {
            return;
        };
        let p = match channel {
            Channel::Job => &mut ports.job,
            Channel::Transfer => &mut ports.transfer,
            Channel::Heartbeat => &mut ports.heartbeat,
        };
        log::debug!("{} -> {}", p.name, msg.describe());
        p.queue(wire::encode(msg));
    }

    /// Receive and send on every socket until a round does nothing.
    fn service_ports(&mut self) -> bool {
        let mut busy = false;
        for _round in 0..8 {
            let Some(Sockets { ports, .. }) = &mut self.sockets else {
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
            for (which, name, msg) in received {
                self.handle_zmq(which, name, msg.frames);
            }
            if let Some(why) = failed {
                self.core.open_failed(&why);
                self.perform();
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
        let channel = match which {
            JOB => Channel::Job,
            TRANSFER => Channel::Transfer,
            _ => Channel::Heartbeat,
        };
        self.core.message(channel, msg, payload);
        self.perform();
    }

    /// Start nothing new; stop once the running command (if any) is gone.
    fn stop(&mut self) {
        let busy = self.core.stop();
        self.perform();
        self.state = if busy {
            RunState::Draining
        } else {
            RunState::Stopped
        };
    }

    /// Read the job socket's monitor: what happened to each handshake.
    fn service_monitor(&mut self) {
        let Some(Sockets {
            monitor: Some(m), ..
        }) = &self.sockets
        else {
            return;
        };
        for event in m.drain() {
            log::debug!("job socket: {event:?}");
            self.core.monitor(event);
        }
        self.perform();
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Core(t) => {
                    if matches!(t, core::Timer::Link(LinkTimer::Heartbeat(_))) {
                        crate::reactor::child::reap_orphans();
                    }
                    self.core.timer(t);
                    self.perform();
                }
                Timer::LiveFlush => {
                    for i in 0..self.processes.len() {
                        if let Some(live) = self.processes[i].live.as_mut() {
                            live.armed = false;
                        }
                        self.flush_live(i, false);
                    }
                }
                Timer::ReapSweep => {
                    self.try_reap();
                    if !self.processes.is_empty() {
                        self.timers.at(now + REAP_SWEEP, Timer::ReapSweep);
                    }
                }
                Timer::CacheSweep => {
                    self.core.sweep_cache();
                    self.perform();
                    self.timers
                        .at(now + cache_sweep_ivl(self.cfg.cache_ttl), Timer::CacheSweep);
                }
            }
        }
    }

    fn handle_signals(&mut self) {
        for sig in self.signals.drain() {
            if self.state != RunState::Running {
                continue;
            }
            log::info!("received {}; stopping", signals::name(sig));
            self.stop();
        }
    }
}

/// This client's keys and the server key it trusts, from the options.
fn trust(cfg: &Config) -> Result<Trust> {
    if cfg.curve == Curve::Off {
        return Ok(Trust::Off);
    }
    let path = cfg.key_path.join("node.key");
    let (own, created) = KeyPair::load_or_create(&path).map_err(Error::Config)?;
    if created {
        log::info!(
            "created this node's key pair in {} (fingerprint {})",
            path.display(),
            own.public.fingerprint()
        );
    }
    let shared = match &cfg.shared_key {
        Some(s) => Some(SharedKey::for_daemon(&s.0).map_err(Error::Config)?),
        None => None,
    };
    let (server, server_source) = match (&cfg.server_key, &shared) {
        (Some(given), _) => (parse_server_key(given)?, ServerKeySource::ServerKey),
        (None, Some(sk)) => (sk.server().public, ServerKeySource::SharedKey),
        (None, None) => {
            return Err(Error::Config(
                "the client needs the server's key: give --server-key (what `director manage --show-key` prints on the server, or a file holding it) or the cluster's --shared-key".into(),
            ))
        }
    };
    let proof = shared.map_or_else(Vec::new, |sk| sk.proof(&own.public).to_vec());
    Ok(Trust::Curve {
        own,
        server,
        server_source,
        proof,
    })
}

/// How the link names this node and its server in what it logs.
fn names(cfg: &Config, trust: &Trust) -> Names {
    let (fingerprint, trust) = match trust {
        Trust::Curve {
            own, server_source, ..
        } => (
            own.public.fingerprint(),
            match server_source {
                ServerKeySource::SharedKey => link::Trust::SharedKey,
                ServerKeySource::ServerKey => link::Trust::ServerKey,
            },
        ),
        Trust::Off => (String::new(), link::Trust::Off),
    };
    Names {
        identity: cfg.identity.clone(),
        servers: cfg.server_addresses(),
        job_port: cfg.job_port,
        fingerprint,
        trust,
    }
}

/// `--server-key`: a Z85 key, or the path of a file that holds one.
fn parse_server_key(given: &str) -> Result<PublicKey> {
    let given = given.trim();
    if let Ok(key) = PublicKey::from_z85(given) {
        return Ok(key);
    }
    let text = std::fs::read_to_string(given).map_err(|e| {
        Error::Config(format!(
            "--server-key: '{given}' is neither a key (40 characters of Z85) nor a readable file: {e}"
        ))
    })?;
    // The file may hold `manage --show-key` output: the key is its first word.
    let word = text.split_whitespace().next().unwrap_or("");
    PublicKey::from_z85(word).map_err(|e| Error::Config(format!("--server-key: file {given}: {e}")))
}

/// How long a transfer may go without data before it fails: as long as the
/// server may stay silent before we call it dead (3 intervals), within 5 s
/// to 60 s, so a slow disk is not a failure and a stuck transfer does not
/// hold the node's queue for its whole timeout.
fn transfer_stall(ivl: Duration) -> Duration {
    (ivl * link::LIVENESS).clamp(Duration::from_secs(5), Duration::from_secs(60))
}

/// How often to drop expired cache entries: often enough that an entry
/// leaves the disk soon after its time-to-live, at most once a second.
fn cache_sweep_ivl(ttl: Duration) -> Duration {
    (ttl / 2).clamp(Duration::from_secs(1), Duration::from_secs(3600))
}
