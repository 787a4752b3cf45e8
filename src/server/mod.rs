//! The server daemon: one thread, one `mio::Poll`, and one I/O thread for
//! the system calls that may block.
//!
//! Sources: the job, transfer and heartbeat ROUTERs, the ZAP handler's
//! ROUTER (CURVE only), the control listener, the signal pipe and the I/O
//! thread's waker (fixed tokens), and each accepted control connection
//! (tokens from a counter). `Server` owns everything; the rules live in the
//! sans-io `Cluster` (jobs and nodes), `Keys` (who may be which node) and
//! `Persist` (what waits for the disk). This module runs the loop and talks
//! to nodes; `requests` answers the control socket, `storage` drives the
//! journals and the I/O thread, `fetch` serves ADD sources.
//!
//! Who sent a message is its CURVE key, as our ZAP handler admitted it and
//! libzmq stamps it on every message (`User-Id`); a node is the name its key
//! owns. Routing ids are libzmq's and only say where to answer.
//!
//! Lifecycle: `start` locks the state directory, loads and compacts the
//! journals, then binds everything (any failure names the address and exits
//! non-zero); `run` loops until SIGTERM/SIGINT; `shutdown` drains (see
//! there) and removes the socket file.

mod cluster;
mod control;
mod fetch;
mod files;
mod history;
mod io;
mod jobs;
mod keys;
mod nodes;
mod peer_log;
mod persist;
mod query;
mod requests;
mod rollout;
mod routes;
mod storage;
pub(crate) mod zap;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::net::UnixListener;
use mio::{Events, Interest, Poll, Token};
use uuid::Uuid;

use self::cluster::{Cluster, Effect, Greeting, Now};
use self::control::ControlConn;
use self::history::Record;
use self::io::IoDone;
use self::keys::{Claim, KeyRecord, Keys, Proof, Standing};
use self::peer_log::{Once, PeerLog};
use self::persist::{Held, Persist, Released};
use self::requests::bind_control;
use self::routes::{Port, Principal, Routes, PORTS};
use self::zap::Verdict;
use crate::config::{Config, Curve};
use crate::curve::{KeyPair, PublicKey, SharedKey};
use crate::dirlock::DirLock;
use crate::error::{Error, Result};
use crate::journal::Journal;
use crate::reactor::monitor::{self, LinkEvent, Monitor, Watch};
use crate::reactor::signals::{self, Signals};
use crate::reactor::timers::Timers;
use crate::reactor::worker::Worker;
use crate::reactor::zmq::{endpoint, Inbound, PortSpec, Security, ZmqPort};
use crate::reactor::{self, Sleep, TokenCounter};
use crate::wire::{self, ClientMsg, Denial, Dispatch, KeyState, Response, ServerMsg};

const JOB: Token = Token(0);
const TRANSFER: Token = Token(1);
const HEARTBEAT: Token = Token(2);
const CONTROL: Token = Token(3);
const SIGNALS: Token = Token(4);
const ZAP: Token = Token(5);
const WORKER: Token = Token(6);
const MONITOR: Token = Token(7);
const FIRST_DYNAMIC: usize = 16;

/// What each port takes from one peer. A node sends results (two capped
/// outputs) on the job port, small fetches on the transfer port and beats on
/// the heartbeat port; anything bigger disconnects it. The receive
/// high-water marks bound what one peer can make libzmq buffer (job:
/// 8 × 2 MiB), above what a node sends in normal work (a node has at most
/// two jobs, so a few messages, outstanding).
const JOB_PORT: PortSpec = PortSpec {
    name: "job",
    max_msg: wire::MAX_JOB_UP,
    rcvhwm: 8,
    sndhwm: 1000,
    peer_cap: 1000,
};
const TRANSFER_PORT: PortSpec = PortSpec {
    name: "transfer",
    max_msg: wire::MAX_TRANSFER_UP,
    rcvhwm: 64,
    // A node asks for at most `CREDIT` chunks at a time; one that asks for
    // more and does not read them is refused past these.
    sndhwm: 16,
    peer_cap: 8,
};
const HEARTBEAT_PORT: PortSpec = PortSpec {
    name: "heartbeat",
    max_msg: wire::MAX_HEARTBEAT,
    rcvhwm: 16,
    sndhwm: 64,
    peer_cap: 64,
};
/// libzmq's own sessions ask here, one request per handshake.
const ZAP_PORT: PortSpec = PortSpec {
    name: "zap",
    max_msg: 4096,
    rcvhwm: 10_000,
    sndhwm: 10_000,
    peer_cap: 64,
};
/// Keys remembered as logged (name conflicts, refused handshakes), so each
/// is logged once.
const LOGGED_ONCE_CAP: usize = 4096;
/// At most one line per this period about new pending keys.
const PENDING_LOG_EVERY: Duration = Duration::from_secs(10);

/// Messages received per port per service pass before other sources get a turn.
const BUDGET: usize = 256;
/// Each fetch on the transfer port reads a chunk from disk: take fewer per
/// pass so heartbeats, jobs and the control socket get their turn between.
const TRANSFER_BUDGET: usize = 16;
/// How long unsent messages may hold up shutdown.
const SHUTDOWN_LINGER_MS: i32 = 500;
/// How long shutdown waits for peers to take what was made durable.
const DRAIN: Duration = Duration::from_secs(2);

/// How peers prove who they are.
enum Auth {
    /// CurveZMQ: keys, the ZAP handler, enrolment.
    Curve(Box<CurveAuth>),
    /// `--curve off`: a node is the routing id it sets.
    Off,
}

/// What the server needs for CURVE.
struct CurveAuth {
    /// The server's key pair, and where it comes from (for --show-key).
    pair: KeyPair,
    source: String,
    /// With `--shared-key`: checks the proofs of clients that know it.
    shared: Option<SharedKey>,
    zap: ZmqPort,
    keys: Keys,
}
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// Sweep expired nodes; the generation tells a superseded timer.
    Expiry(u64),
    /// Retention, and compaction when the journal is mostly dead records.
    Housekeeping,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunState {
    Running,
    Stopped,
}

/// The server daemon.
pub struct Server {
    poll: Poll,
    // Declared before the context so they drop first.
    ports: [ZmqPort; 3],
    _ctx: zmq::Context,
    listener: UnixListener,
    socket_path: PathBuf,
    conns: HashMap<Token, ControlConn>,
    tokens: TokenCounter,
    timers: Timers<Timer>,
    expiry: Option<(Instant, u64)>,
    cluster: Cluster,
    /// Control connections waiting on each job (`exec --wait`).
    waiters: HashMap<Uuid, Vec<Token>>,
    /// Waiting connections that also follow output (`--follow`).
    followers: HashSet<Token>,
    /// Live output bytes a slow follower missed, told with the next.
    live_dropped: HashMap<Token, u64>,
    signals: Signals,
    state: RunState,
    effects: Vec<Effect>,
    peer_log: PeerLog,
    /// The journals, and what waits for them to be durable.
    persist: Persist,
    /// Blocking system calls (syncs, rewrites) off the loop.
    worker: Worker<IoDone>,
    /// Released by the persistence layer, to carry out.
    released: Released,
    /// Compact the history as soon as everything recorded is on disk.
    compact_wanted: bool,
    /// The compaction being written: where its copied records were, to
    /// put them back if it fails.
    compacting: Option<crate::journal::Moves>,
    /// Compactions given up (no room, a failing disk), logged once a minute.
    compact_refused: crate::ratelog::Every,
    /// Chunk reads on the I/O thread, per transfer routing id.
    reads: HashMap<Vec<u8>, usize>,
    /// How long, and how many, finished jobs are kept.
    retention: (Duration, usize),
    auth: Auth,
    routes: Routes,
    /// The longest heartbeat interval a node may announce (the server's own).
    max_ivl: Duration,
    /// Keys whose claim of another key's name was logged already.
    conflicts_logged: Once<PublicKey>,
    /// Rejected keys whose knocking was logged already.
    refusals_logged: Once<PublicKey>,
    /// New pending keys, said at most once per period (a stranger can make
    /// thousands), with how many were not said.
    pending_logged: crate::ratelog::Every,
    /// This process owns `--state-path`.
    _lock: DirLock,
    /// The job port's failed handshakes (with CURVE): libzmq drops a
    /// client with a wrong key without a word otherwise.
    handshakes: Option<Monitor>,
    /// Addresses whose failed handshake was said, and how often one may be.
    handshakes_logged: Once<String>,
    handshakes_rate: crate::ratelog::Every,
}

/// Each node holds three connections (and libzmq some descriptors of its
/// own): the soft limit on open files, often 1024, would refuse nodes
/// past about 300. Raised to the hard limit, as servers do.
fn raise_open_files() {
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
                log::warn!(
                    "cannot raise the open-file limit from {}: nodes past about {} will be refused",
                    lim.rlim_cur,
                    lim.rlim_cur / 3
                );
            }
        }
    }
}

/// Run the server until it is told to stop.
pub fn run(cfg: &Config) -> Result<()> {
    // One malloc arena for the process: the loop and the I/O thread hand
    // buffers to each other, and a second arena (64 MiB reserved, its own
    // free lists) only adds memory that the loop's trims cannot reach.
    // ZeroMQ's own threads are started after this and share it too.
    // A fixed mmap threshold: glibc otherwise raises it to the size of
    // each large buffer freed (a compaction's, up to 32 MiB), and from
    // then on such buffers come from the heap, where freeing them leaves
    // holes between the jobs that memory keeps. Fixed at 4 MiB, not lower:
    // every ADD chunk (1 MiB, our read and ZeroMQ's CURVE copy) must come
    // from the heap, or each one costs an mmap, 256 page faults and an
    // munmap (at 128 KiB, transfers ran 1.7x slower). The trim threshold
    // (which a fixed mmap threshold also fixes, at 128 KiB) is raised so
    // that the heap's top is not given back and faulted in again per
    // chunk; housekeeping's malloc_trim still gives memory back.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes a malloc tunable; called before any
    // other thread of ours exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
    }
    let mut server = Server::start(cfg)?;
    let result = server.run();
    server.shutdown();
    result
}

impl Server {
    fn start(cfg: &Config) -> Result<Server> {
        // First: a second server on this directory must touch nothing.
        let lock = crate::dirlock::lock(&cfg.state_path, "state directory (--state-path)")?;
        raise_open_files();
        let poll = Poll::new().map_err(|e| Error::io("cannot create the event loop", e))?;
        let ctx = zmq::Context::new();
        // The state is loaded before any port is bound: a node that can
        // connect is served at once.
        let mut restoring = cluster::Restore::default();
        let history =
            Journal::open_lazy(&cfg.state_path, history::FILE, history::head, |rec, at| {
                restoring.replay_lazy(rec, at)
            })
            .map_err(|e| {
                Error::io(
                    format!(
                        "cannot open the job history in {}",
                        cfg.state_path.display()
                    ),
                    e,
                )
            })?;
        let mut cluster = restoring.finish(cfg.heartbeat_ivl, Now::real());
        // Start from a compact journal: only what is still known and kept.
        let _ = cluster.retain_recent(
            crate::clock::now_ms(),
            cfg.job_retention,
            cfg.job_retention_count,
            &mut Vec::new(),
        );
        // No compaction here: it would copy the whole history before the
        // ports listen. Housekeeping asks for one when the journal is
        // mostly dead records, and the I/O thread does it.
        // The ZAP handler must be bound before the first handshake: with
        // none, libzmq would let every CURVE client in.
        let (auth, keys_journal) = match cfg.curve {
            Curve::On => {
                let (auth, journal) = Server::start_curve(cfg, &ctx, &poll)?;
                (auth, Some(journal))
            }
            Curve::Off => (Auth::Off, None),
        };
        let security = || match &auth {
            Auth::Curve(c) => Security::CurveServer {
                secret: &c.pair.secret,
            },
            Auth::Off => Security::Plain,
        };
        let bind = |spec: PortSpec, port: u16, token: Token| {
            let ep = endpoint(&cfg.bind_address, port);
            ZmqPort::bind(&ctx, spec, &ep, security(), poll.registry(), token)
                .map_err(|e| Error::zmq(format!("cannot bind the {} socket to {ep}", spec.name), e))
        };
        let ports = [
            bind(JOB_PORT, cfg.job_port, JOB)?,
            bind(TRANSFER_PORT, cfg.transfer_port, TRANSFER)?,
            bind(HEARTBEAT_PORT, cfg.heartbeat_port, HEARTBEAT)?,
        ];
        // Without it we still work; we only say less about failed
        // handshakes.
        let handshakes = match &auth {
            Auth::Curve(_) => Monitor::start(
                &ctx,
                &ports[JOB.0],
                "inproc://director-server-handshakes",
                poll.registry(),
                MONITOR,
                Watch::Bound,
            )
            .map_err(|e| log::warn!("cannot monitor the job port's handshakes ({e})"))
            .ok(),
            Auth::Off => None,
        };
        let mut listener = bind_control(&cfg.socket_path, cfg.socket_group.as_deref())?;
        poll.registry()
            .register(&mut listener, CONTROL, Interest::READABLE)
            .map_err(|e| Error::io("cannot watch the control socket", e))?;
        let signals = Signals::install(poll.registry(), SIGNALS)
            .map_err(|e| Error::io("cannot install signal handlers", e))?;
        let worker = Worker::start("director-io", poll.registry(), WORKER)
            .map_err(|e| Error::io("cannot start the I/O thread", e))?;
        let jobs = cluster.list_jobs();
        if !jobs.is_empty() {
            let unfinished = jobs.iter().filter(|j| j.finished_ms.is_none()).count();
            log::info!(
                "restored {} jobs ({unfinished} unfinished) from {}",
                jobs.len(),
                history.path().display()
            );
        }
        match &auth {
            Auth::Curve(c) => log::info!(
                "CURVE on: server key {} ({}); nodes are admitted by key",
                c.pair.public.fingerprint(),
                c.source
            ),
            Auth::Off => log::warn!("{}", crate::curve::UNAUTHENTICATED),
        }
        log::info!(
            "server listening: job {}, transfer {}, heartbeat {} on {}; control socket {}",
            cfg.job_port,
            cfg.transfer_port,
            cfg.heartbeat_port,
            cfg.bind_address,
            cfg.socket_path.display()
        );
        let mut server = Server {
            poll,
            ports,
            _ctx: ctx,
            listener,
            socket_path: cfg.socket_path.clone(),
            conns: HashMap::new(),
            tokens: TokenCounter::new(FIRST_DYNAMIC),
            timers: Timers::default(),
            expiry: None,
            cluster,
            persist: Persist::new(history, keys_journal),
            worker,
            released: Released::default(),
            compact_wanted: false,
            compact_refused: crate::ratelog::Every::minute(),
            compacting: None,
            reads: HashMap::new(),
            retention: (cfg.job_retention, cfg.job_retention_count),
            waiters: HashMap::new(),
            followers: HashSet::new(),
            live_dropped: HashMap::new(),
            signals,
            state: RunState::Running,
            effects: Vec::new(),
            peer_log: PeerLog::default(),
            auth,
            routes: Routes::default(),
            max_ivl: cfg.heartbeat_ivl,
            conflicts_logged: Once::new(LOGGED_ONCE_CAP),
            refusals_logged: Once::new(LOGGED_ONCE_CAP),
            pending_logged: crate::ratelog::Every::new(PENDING_LOG_EVERY),
            _lock: lock,
            handshakes,
            handshakes_logged: Once::new(LOGGED_ONCE_CAP),
            handshakes_rate: crate::ratelog::Every::new(PENDING_LOG_EVERY),
        };
        server.housekeeping();
        // What retention forgot (and any dead record) leaves the disk soon
        // after a start, by the I/O thread, not before the ports listen.
        if server.persist.history.records() > server.cluster.live_records() {
            server.compact_wanted = true;
        }
        // Restored nodes must come back in time, or their work is lost:
        // their time starts now that the ports listen.
        server.cluster.listening(Now::real());
        if let Some(at) = server.cluster.next_expiry() {
            server.schedule_expiry(at);
        }
        Ok(server)
    }

    /// The server's key pair, the key table and the ZAP handler.
    fn start_curve(cfg: &Config, ctx: &zmq::Context, poll: &Poll) -> Result<(Auth, Journal)> {
        let (pair, source, shared) = match &cfg.shared_key {
            Some(shared) => {
                let derived = SharedKey::for_daemon(&shared.0).map_err(Error::Config)?;
                let pair = KeyPair::from_secret(*derived.server().secret.as_bytes());
                (
                    pair,
                    "derived from the shared key".to_owned(),
                    Some(derived),
                )
            }
            None => {
                let path = cfg.state_path.join("server.key");
                let (pair, created) = KeyPair::load_or_create(&path).map_err(Error::Config)?;
                if created {
                    log::info!(
                        "created the server's key pair in {}; clients need its public key: `director manage --show-key`",
                        path.display()
                    );
                }
                (pair, format!("key file {}", path.display()), None)
            }
        };
        let zap = ZmqPort::bind(
            ctx,
            ZAP_PORT,
            zap::ENDPOINT,
            Security::Plain,
            poll.registry(),
            ZAP,
        )
        .map_err(|e| Error::zmq("cannot start the ZAP handler", e))?;
        let (mut journal, records) = Journal::open::<KeyRecord>(&cfg.state_path, keys::FILE)
            .map_err(|e| {
                Error::io(
                    format!("cannot open the key table in {}", cfg.state_path.display()),
                    e,
                )
            })?;
        let keys = Keys::restore(records);
        journal.snapshot(keys.snapshot()).run().map_err(|(_, e)| {
            Error::io(format!("cannot rewrite {}", journal.path().display()), e)
        })?;
        let pending = keys.pending_names();
        if !pending.is_empty() {
            log::warn!(
                "{} for acceptance ({}): `director manage --list-keys`",
                match pending.len() {
                    1 => "1 key waits".to_owned(),
                    n => format!("{n} keys wait"),
                },
                pending.join(", ")
            );
        }
        let auth = Auth::Curve(Box::new(CurveAuth {
            pair,
            source,
            shared,
            zap,
            keys,
        }));
        Ok((auth, journal))
    }

    fn run(&mut self) -> Result<()> {
        let mut events = Events::with_capacity(256);
        loop {
            // Rule: service every port at the top of every pass; anything
            // since the last pass may have queued a send and used the edge.
            self.service_handshakes();
            let mut busy = self.service_ports()?;
            busy |= self.commit(Instant::now());
            let now = Instant::now();
            let mut next_timer = self.timers.until_next(now);
            if let Some(at) = self.persist.next_due() {
                let wait = at.saturating_duration_since(now);
                next_timer = Some(next_timer.map_or(wait, |t| t.min(wait)));
            }
            let sleep = Sleep {
                busy,
                backlog: self.ports.iter().any(ZmqPort::has_backlog),
                next_timer,
            };
            reactor::wait(&mut self.poll, &mut events, sleep)
                .map_err(|e| Error::io("event loop failed", e))?;
            for ev in events.iter() {
                match ev.token() {
                    JOB | TRANSFER | HEARTBEAT | ZAP | MONITOR => {} // serviced at the top of the loop
                    CONTROL => self.accept_control(),
                    SIGNALS => self.handle_signals(),
                    WORKER => self.worker_done(),
                    token => self.handle_control(token),
                }
            }
            self.fire_timers(Instant::now());
            if self.state == RunState::Stopped {
                return Ok(());
            }
        }
    }

    /// Stop: make durable what can be, send every answer and ack that
    /// depends on it, tell waiting CLIs, and give peers `DRAIN` to take it.
    fn shutdown(&mut self) {
        // What the worker has in hand, then one last synchronous try.
        for done in self.worker.finish() {
            self.on_io(done);
        }
        let last = self.persist.finish(Instant::now());
        self.released.held.extend(last.held);
        self.released.failed.extend(last.failed);
        self.carry_out();
        // Keep the last-seen times of keys, which are not journaled as
        // they change.
        if let (Auth::Curve(c), Some(j)) = (&self.auth, &mut self.persist.keys) {
            if let Err((_, e)) = j.snapshot(c.keys.snapshot()).run() {
                log::error!("cannot rewrite {}: {e}", j.path().display());
            }
        }
        let waiting: std::collections::BTreeSet<Token> =
            self.waiters.values().flatten().copied().collect();
        for token in waiting {
            self.send_note(token, &Response::Stopping);
        }
        self.drain();
        for p in &self.ports {
            p.set_linger(SHUTDOWN_LINGER_MS);
        }
        let _ = std::fs::remove_file(&self.socket_path);
        log::info!("server stopped");
    }

    /// Push out what is queued for nodes and CLIs, until it is all written
    /// or `DRAIN` has passed.
    fn drain(&mut self) {
        let end = Instant::now() + DRAIN;
        let mut events = Events::with_capacity(64);
        loop {
            if let Err(e) = self.service_ports() {
                log::warn!("while stopping: {e}");
                return;
            }
            let tokens: Vec<Token> = self.conns.keys().copied().collect();
            for token in tokens {
                if let Some(conn) = self.conns.get_mut(&token) {
                    if conn.flush().is_err() {
                        self.close_control(token);
                    }
                }
            }
            let ports = self.ports.iter().any(ZmqPort::has_backlog);
            let conns = self.conns.values().filter(|c| c.has_output()).count();
            if !ports && conns == 0 {
                return;
            }
            let now = Instant::now();
            if now >= end {
                log::warn!(
                    "stopping with output not taken by its peers after {}s ({}{})",
                    DRAIN.as_secs(),
                    crate::dsl::count(conns, "control connection"),
                    if ports { ", nodes" } else { "" }
                );
                return;
            }
            let wait = (end - now).min(Duration::from_millis(20));
            let _ = self.poll.poll(&mut events, Some(wait));
        }
    }

    /// Receive and send on every port until a whole round does nothing.
    fn service_ports(&mut self) -> Result<bool> {
        let mut busy = false;
        for _round in 0..8 {
            let mut progressed = self.service_zap()?;
            for port in PORTS {
                let budget = if port == Port::Transfer {
                    TRANSFER_BUDGET
                } else {
                    BUDGET
                };
                let done = self.ports[port as usize].service(budget).map_err(|e| {
                    Error::zmq(
                        format!("{} socket failed", self.ports[port as usize].name),
                        e,
                    )
                })?;
                busy |= done.busy;
                progressed |= !done.received.is_empty() || !done.unroutable.is_empty();
                for msg in done.received {
                    self.handle_zmq(port, msg);
                }
                for (identity, frames) in done.unroutable {
                    self.handle_unroutable(port, &identity, &frames);
                }
            }
            if !progressed {
                return Ok(busy);
            }
        }
        Ok(true)
    }

    /// Say which addresses fail the handshake, and why: once per address,
    /// and at most once per period in all (a flood of strangers cannot
    /// fill the log).
    fn service_handshakes(&mut self) {
        let Some(m) = &self.handshakes else { return };
        for (event, address) in m.drain_from() {
            let why = match event {
                LinkEvent::HandshakeProtocol(monitor::CRYPTOGRAPHIC) => {
                    "it does not hold this server's public key: its --shared-key differs from the server's, or its --server-key is another server's"
                }
                LinkEvent::HandshakeProtocol(monitor::MECHANISM_MISMATCH) => {
                    "it does not speak CURVE (is it running with --curve off?)"
                }
                _ => continue,
            };
            // The address without its port, which changes with every try.
            let host = address
                .trim_start_matches("tcp://")
                .rsplit_once(':')
                .map_or(address.as_str(), |(h, _)| h)
                .to_owned();
            if !self.handshakes_logged.first(host.clone()) {
                continue;
            }
            if !self.handshakes_rate.first(Instant::now()) {
                continue;
            }
            let more = match std::mem::take(&mut self.handshakes_rate.suppressed) {
                0 => String::new(),
                n => format!(
                    " ({n} more failed handshakes from other addresses before it, not logged)"
                ),
            };
            log::warn!("a client at {host} failed the CURVE handshake: {why}; it retries, and this is said once per address{more}");
        }
    }

    /// Answer the handshakes libzmq asks about: only rejected keys are
    /// refused here; who may be which node is decided at `Ready`.
    fn service_zap(&mut self) -> Result<bool> {
        let Auth::Curve(c) = &mut self.auth else {
            return Ok(false);
        };
        let CurveAuth { zap, keys, .. } = &mut **c;
        let done = zap
            .service(BUDGET)
            .map_err(|e| Error::zmq("the ZAP handler's socket failed", e))?;
        let progressed = !done.received.is_empty();
        for msg in done.received {
            let req = match zap::parse(&msg.frames) {
                Ok(req) => req,
                Err(e) => {
                    log::error!("ZAP: ignored {e}");
                    continue;
                }
            };
            let verdict = if keys.admits(&req.key) {
                Verdict::Allow {
                    user_id: req.key.z85(),
                }
            } else {
                let name = match keys.standing(&req.key) {
                    Standing::Known { name, .. } => name,
                    Standing::Unknown => String::new(),
                };
                // Each of a client's sockets knocks on every reconnect.
                if self.refusals_logged.first(req.key) {
                    log::warn!(
                        "node={name}: refused a handshake from {}: its key {} is rejected (logged once)",
                        req.address,
                        req.key.fingerprint()
                    );
                }
                Verdict::Deny {
                    reason: "key rejected",
                }
            };
            log::debug!(
                "ZAP: key {} from {}: {verdict:?}",
                req.key.fingerprint(),
                req.address
            );
            zap.queue(zap::reply(&req, &verdict));
        }
        Ok(progressed)
    }

    /// Who sent a message: its CURVE key, or with `--curve off` the name it
    /// routes by.
    fn principal(&self, routing_id: &[u8], user_id: Option<&str>) -> Option<Principal> {
        match &self.auth {
            Auth::Curve(_) => user_id
                .and_then(|u| PublicKey::from_z85(u).ok())
                .map(Principal::Key),
            Auth::Off => String::from_utf8(routing_id.to_vec())
                .ok()
                .map(Principal::Name),
        }
    }

    /// What `who` may do.
    fn peer(&self, who: &Principal) -> Peer {
        match (who, &self.auth) {
            (Principal::Name(n), _) => Peer::Node(n.clone()),
            (Principal::Key(k), Auth::Curve(c)) => match c.keys.standing(k) {
                Standing::Unknown => Peer::Stranger,
                Standing::Known { name, state } => match state {
                    KeyState::Accepted => Peer::Node(name),
                    KeyState::Pending => Peer::Denied(Denial::Pending),
                    KeyState::Rejected => Peer::Denied(Denial::Rejected),
                },
            },
            (Principal::Key(_), Auth::Off) => Peer::Stranger,
        }
    }

    /// The principal that is node `node`.
    fn principal_of(&self, node: &str) -> Option<Principal> {
        match &self.auth {
            Auth::Curve(c) => c.keys.key_of(node).map(Principal::Key),
            Auth::Off => Some(Principal::Name(node.to_owned())),
        }
    }

    fn handle_zmq(&mut self, port: Port, msg: Inbound) {
        let name = self.ports[port as usize].name;
        let Inbound {
            mut frames,
            user_id,
            peer_address,
        } = msg;
        if frames.is_empty() {
            return;
        }
        let rid = frames.remove(0);
        let Some(who) = self.principal(&rid, user_id.as_deref()) else {
            let msg = format_args!(
                "dropped a message on the {name} port: no authenticated key or readable name"
            );
            self.peer_log.warn("?", Instant::now(), msg);
            return;
        };
        let peer = self.peer(&who);
        let label = match &peer {
            Peer::Node(n) => n.clone(),
            _ => who.describe(),
        };
        let msg = match wire::decode::<ClientMsg>(&frames) {
            Ok(msg) => msg,
            Err(e) => {
                self.warn_peer(
                    &peer,
                    &label,
                    format_args!("dropped a message on the {name} port: {e}"),
                );
                return;
            }
        };
        log::debug!("node={label} {name} <- {}", msg.describe());
        let now = Now::real();
        if let (Principal::Key(k), Auth::Curve(c)) = (&who, &mut self.auth) {
            c.keys.touch(k, now.ms);
        }
        // A node's message on the port it belongs on: the node is alive,
        // and that port reaches it on this routing id.
        let expected = matches!(
            (port, &msg),
            (
                Port::Job,
                ClientMsg::Started { .. }
                    | ClientMsg::Finished { .. }
                    | ClientMsg::Output { .. }
                    | ClientMsg::Cache(_)
                    | ClientMsg::QueryValue { .. }
            ) | (Port::Transfer, ClientMsg::Fetch { .. })
        );
        if let (true, Peer::Node(node)) = (expected, &peer) {
            self.routes.learn(&who, port, &rid);
            self.cluster.touch(node, now);
        }
        match (port, msg, peer) {
            (Port::Heartbeat, ClientMsg::Heartbeat { interval_ms }, peer) => {
                let reply = match peer {
                    Peer::Node(node) => {
                        self.routes.learn(&who, port, &rid);
                        let ivl = self.node_ivl(interval_ms);
                        self.cluster.heartbeat(&node, ivl, now)
                    }
                    Peer::Denied(why) => ServerMsg::Denied(why),
                    // Connected, never said who it is: ask.
                    Peer::Stranger => ServerMsg::Register,
                };
                self.reply(port, &label, &rid, &reply);
            }
            (
                Port::Job,
                ClientMsg::Ready {
                    name: claimed,
                    version,
                    interval_ms,
                    holding,
                    proof,
                    instance,
                    seen,
                    facts,
                    labels,
                },
                peer,
            ) => {
                // The client checks its own name; a hand-made peer may not.
                if let Err(e) = crate::config::check_identity(&claimed) {
                    self.warn_peer(&peer, &label, format_args!("dropped a Ready: {e}"));
                    return;
                }
                let ready = Ready {
                    claimed,
                    version: crate::dsl::one_line(&version.chars().take(64).collect::<String>()),
                    ivl: self.node_ivl(interval_ms),
                    holding,
                    proof,
                    instance,
                    seen,
                    about: crate::facts::Node {
                        facts: crate::facts::bounded(facts),
                        labels: crate::facts::bounded(labels),
                    },
                };
                self.handle_ready(&who, &rid, peer_address.as_deref(), ready, now);
            }
            (Port::Job, ClientMsg::Started { job_id }, Peer::Node(node)) => {
                self.cluster.started(&node, &job_id);
            }
            (Port::Job, ClientMsg::Finished { job_id, outcome }, Peer::Node(node)) => {
                let mut out = std::mem::take(&mut self.effects);
                let dropped = self.cluster.finished(&node, job_id, outcome, now, &mut out);
                self.apply(out);
                if let Some(why) = dropped {
                    self.peer_log.warn(&node, now.at, format_args!("{why}"));
                }
            }
            (
                Port::Job,
                ClientMsg::Output {
                    job_id,
                    stream,
                    data,
                    dropped,
                },
                Peer::Node(node),
            ) => {
                self.forward_output(&node, job_id, stream, data, dropped);
            }
            (Port::Job, ClientMsg::Cache(summary), Peer::Node(node)) => {
                self.cluster.cache_summary(&node, summary);
            }
            (Port::Job, ClientMsg::QueryValue { job_id, value }, Peer::Node(node)) => {
                let mut out = std::mem::take(&mut self.effects);
                let dropped = self.cluster.query_value(&node, job_id, value, &mut out);
                self.apply(out);
                if let Some(why) = dropped {
                    self.peer_log.warn(&node, now.at, format_args!("{why}"));
                }
            }
            (
                Port::Transfer,
                ClientMsg::Fetch {
                    job_id,
                    file,
                    offset,
                    len,
                },
                Peer::Node(node),
            ) => {
                self.serve_fetch(&node, &rid, job_id, file, offset, len);
            }
            (_, msg, Peer::Node(_)) => {
                let what = msg.describe();
                self.peer_log.warn(
                    &label,
                    now.at,
                    format_args!("dropped an unexpected {what} on the {name} port"),
                );
            }
            (_, msg, peer) => {
                // Not a node (pending, rejected, or never said Ready): it
                // may only beat and say Ready.
                let what = msg.describe();
                self.warn_peer(
                    &peer,
                    &label,
                    format_args!("dropped a {what} on the {name} port: not an accepted node"),
                );
            }
        }
    }

    /// A warning about what a peer sent, limited per peer. A stranger (a
    /// key that never claimed a name) gets only a debug line: anyone with
    /// the server's public key can be one, with a new key each time, and
    /// must not be able to fill the log.
    fn warn_peer(&mut self, peer: &Peer, label: &str, msg: std::fmt::Arguments) {
        match peer {
            Peer::Stranger => log::debug!("node={label}: {msg}"),
            _ => self.peer_log.warn(label, Instant::now(), msg),
        }
    }

    /// A node's interval as the server will hold it to: no longer than the
    /// server's own, so a node cannot stay listed for a day unheard.
    fn node_ivl(&self, interval_ms: u64) -> Duration {
        ivl_from_ms(interval_ms).min(self.max_ivl)
    }

    /// `Ready`: settle who the peer is, then welcome it as its node (jobs
    /// follow) or say why not.
    fn handle_ready(
        &mut self,
        who: &Principal,
        rid: &[u8],
        address: Option<&str>,
        ready: Ready,
        now: Now,
    ) {
        let address = address.unwrap_or("an unknown address");
        let claimed = ready.claimed.clone();
        let (claim, rec) = match (who, &mut self.auth) {
            (Principal::Name(id), _) => {
                if *id != claimed {
                    self.peer_log.warn(
                        id,
                        now.at,
                        format_args!("dropped a Ready claiming the name '{claimed}': with --curve off a node is the identity it connects with"),
                    );
                    return;
                }
                (Claim::Admitted, None)
            }
            (Principal::Key(key), Auth::Curve(c)) => {
                let proof = match c.shared.as_ref() {
                    _ if ready.proof.is_empty() => Proof::None,
                    // A proof for a shared key this server does not use.
                    None => Proof::Invalid,
                    Some(sk) if sk.verify(key, &ready.proof) => Proof::Valid,
                    Some(_) => Proof::Invalid,
                };
                c.keys.claim(key, &claimed, proof, now.ms)
            }
            (Principal::Key(_), Auth::Off) => return,
        };
        // This Ready enrolled the key: a record that must be synced.
        let enrolled = rec.is_some();
        if let Some(rec) = &rec {
            self.record_key(rec);
            let fp = match who {
                Principal::Key(key) => key.fingerprint(),
                Principal::Name(_) => String::new(),
            };
            match &claim {
                Claim::Admitted => log::info!(
                    "node={claimed}: key {fp} from {address} accepted (it knows the shared key)"
                ),
                Claim::AdmittedOver(squatter) => log::warn!(
                    "node={claimed}: key {fp} from {address} accepted (it knows the shared key); it takes the name from key {}, which claimed it first without the shared key and was only pending (dropped)",
                    squatter.fingerprint()
                ),
                Claim::Denied(_) => {
                    if self.pending_logged.first(now.at) {
                        let more = match std::mem::take(&mut self.pending_logged.suppressed) {
                            0 => String::new(),
                            n => format!(" ({n} more new keys became pending before it, not logged)"),
                        };
                        log::warn!(
                            "node={claimed}: new key {fp} from {address} is pending; accept it with `director manage --accept-key {claimed}`{more}"
                        );
                    }
                }
            }
        }
        match claim {
            Claim::Admitted | Claim::AdmittedOver(_) => {
                self.routes.learn(who, Port::Job, rid);
                let mut out = std::mem::take(&mut self.effects);
                let welcome = ServerMsg::Welcome {
                    name: claimed.clone(),
                    interval_ms: ready.ivl.as_millis() as u64,
                };
                if enrolled {
                    // "You are in" only once the key table says so on
                    // disk; jobs need not wait for it, the node takes
                    // them whenever they come.
                    self.hold(Held::Ack {
                        node: claimed.clone(),
                        msg: welcome,
                    });
                } else {
                    self.reply(Port::Job, &claimed, rid, &welcome);
                }
                let hello = Greeting {
                    version: &ready.version,
                    ivl: ready.ivl,
                    instance: ready.instance,
                    seen: ready.seen,
                    holding: &ready.holding,
                    about: &ready.about,
                };
                if self.cluster.ready(&claimed, hello, now, &mut out) {
                    log::info!(
                        "node={claimed}: registered from {address} (director {}, heartbeat every {:.1}s)",
                        ready.version,
                        ready.ivl.as_secs_f64()
                    );
                    self.schedule_expiry(now.at + ready.ivl * nodes::LIVENESS);
                }
                self.apply(out);
            }
            Claim::Denied(why) => {
                if why == Denial::Pending {
                    // To tell it at once when it is accepted.
                    self.routes.learn(who, Port::Job, rid);
                }
                if let (Denial::NameTaken, Principal::Key(key)) = (&why, who) {
                    if self.conflicts_logged.first(*key) {
                        log::warn!(
                            "node={claimed}: refused key {} from {address}: the name belongs to another key (the node is not disturbed)",
                            key.fingerprint()
                        );
                    }
                }
                if let (Denial::NameContested, Principal::Key(key), Auth::Curve(c)) =
                    (&why, who, &self.auth)
                {
                    if self.conflicts_logged.first(*key) {
                        let holder = c
                            .keys
                            .key_of(&claimed)
                            .map(|k| k.fingerprint())
                            .unwrap_or_default();
                        log::warn!(
                            "node={claimed}: key {} from {address} claims the name too, which a key waiting for acceptance ({holder}) claimed first: if that one is not {claimed}'s, run `director manage --delete-key {claimed}` and accept the other when it claims the name (it retries)",
                            key.fingerprint()
                        );
                    }
                }
                let label = who.describe();
                self.reply(Port::Job, &label, rid, &ServerMsg::Denied(why));
            }
        }
    }

    fn handle_unroutable(&mut self, port: Port, identity: &[u8], frames: &[Vec<u8>]) {
        let who = self.routes.from(port, identity).cloned();
        let node = match who.as_ref().map(|w| self.peer(w)) {
            Some(Peer::Node(n)) => n,
            _ => String::from_utf8_lossy(identity).into_owned(),
        };
        log::debug!(
            "node={node}: unroutable on the {} port (peer gone)",
            self.ports[port as usize].name
        );
        if let Ok(ServerMsg::Job { job_id, .. }) =
            wire::decode::<ServerMsg>(frames.get(1..).unwrap_or(&[]))
        {
            self.requeue(&node, job_id, Undelivered::NoRoute);
        }
    }

    /// A job that cannot reach its node now is never dropped: it goes back
    /// to the front of the node's queue and waits for the node's next
    /// Ready (the server asks for one at its next heartbeat).
    fn requeue(&mut self, node: &str, job_id: Uuid, why: Undelivered) {
        let why = match why {
            Undelivered::NoRoute => "the node disconnected",
            Undelivered::Full => "its outbox is full (it does not read its job port)",
        };
        log::warn!("node={node}: job {job_id} could not be delivered ({why}); kept queued");
        self.cluster.unroutable(node, job_id);
        self.record(&Record::Unsent {
            id: job_id,
            node: node.to_owned(),
        });
    }

    /// Answer a message on the routing id it came from.
    fn reply(&mut self, port: Port, label: &str, rid: &[u8], msg: &ServerMsg) {
        let p = &mut self.ports[port as usize];
        log::debug!("node={label} {} -> {}", p.name, msg.describe());
        let mut frames = vec![rid.to_vec()];
        frames.extend(wire::encode(msg));
        if !p.queue(frames) {
            let name = p.name;
            self.peer_log.warn(
                label,
                Instant::now(),
                format_args!(
                    "does not read its {name} port; dropped a {}",
                    msg.describe()
                ),
            );
        }
    }

    /// Send to node `node` on the job port, where it last spoke from; why
    /// not, when it cannot be reached there now.
    fn send(&mut self, node: &str, msg: &ServerMsg) -> std::result::Result<(), Undelivered> {
        self.send_encoded(node, msg, &wire::encode(msg))
    }

    /// Send `msg`, already encoded as `body`.
    fn send_encoded(
        &mut self,
        node: &str,
        msg: &ServerMsg,
        body: &[Vec<u8>],
    ) -> std::result::Result<(), Undelivered> {
        let Some(rid) = self
            .principal_of(node)
            .and_then(|who| self.routes.to(&who, Port::Job).map(<[u8]>::to_vec))
        else {
            log::debug!(
                "node={node}: no route on the job port for {}",
                msg.describe()
            );
            return Err(Undelivered::NoRoute);
        };
        let p = &mut self.ports[Port::Job as usize];
        log::debug!("node={node} {} -> {}", p.name, msg.describe());
        let mut frames = vec![rid];
        frames.extend(body.iter().cloned());
        if p.queue(frames) {
            Ok(())
        } else {
            Err(Undelivered::Full)
        }
    }

    /// Carry out what the cluster decided.
    fn apply(&mut self, mut effects: Vec<Effect>) {
        // Outputs leave memory once journaled, after this batch's views.
        let mut spilled = Vec::new();
        for effect in effects.drain(..) {
            match effect {
                Effect::Journal(rec) => {
                    let span = self.record(&rec);
                    match rec {
                        Record::Done { id, node, .. } => spilled.push((id, node, span)),
                        Record::Submitted { id, .. } => self.cluster.submission_at(&id, span),
                        _ => {}
                    }
                }
                Effect::Send { node, msg } => match msg {
                    // "Recorded" only once the result is on disk.
                    ServerMsg::ResultAck { .. } => self.hold(Held::Ack { node, msg }),
                    // A job goes at once: if the server dies before its
                    // record is durable, the node's Ready says it has it.
                    ServerMsg::Job { job_id, .. } => {
                        if let Err(why) = self.send(&node, &msg) {
                            self.requeue(&node, job_id, why);
                        }
                    }
                    msg => {
                        let _ = self.send(&node, &msg);
                    }
                },
                Effect::Broadcast { nodes, msg } => {
                    let body = wire::encode(&msg);
                    for node in nodes {
                        let _ = self.send_encoded(&node, &msg, &body);
                    }
                }
                Effect::PartDone { job_id, node } => {
                    if let Some(view) = self.cluster.part_view(&job_id, &node) {
                        let resp = Response::NodeDone(view);
                        self.notify(&job_id, &resp);
                        if let Some(parent) = self.cluster.parent_of(&job_id) {
                            self.notify(&parent, &resp);
                        }
                    }
                }
                Effect::JobDone { job_id } => {
                    if let Some(view) = self.cluster.job_view(&job_id) {
                        self.notify(&job_id, &Response::JobDone(view));
                    }
                    self.waiters.remove(&job_id);
                }
                Effect::ParentDone { parent_id } => {
                    let jobs = self.cluster.parent_views(&parent_id);
                    log::info!("orchestration {parent_id} finished ({} jobs)", jobs.len());
                    self.notify(&parent_id, &Response::ParentDone { parent_id, jobs });
                    self.waiters.remove(&parent_id);
                }
            }
        }
        for (id, node, span) in spilled {
            self.cluster.spilled(&id, &node, span);
        }
        // Keep the allocation for the next batch.
        self.effects = effects;
    }

    fn schedule_expiry(&mut self, at: Instant) {
        if self.expiry.is_some_and(|(cur, _)| cur <= at) {
            return;
        }
        let gen = self.expiry.map_or(0, |(_, g)| g + 1);
        self.expiry = Some((at, gen));
        self.timers.at(at, Timer::Expiry(gen));
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Expiry(gen) => {
                    if self.expiry.map(|(_, g)| g) != Some(gen) {
                        continue; // superseded by an earlier deadline
                    }
                    self.expiry = None;
                    let mut out = std::mem::take(&mut self.effects);
                    for name in self.cluster.expire(Now::real(), &mut out) {
                        log::warn!("node={name}: expired (no heartbeat within 3 intervals); offline: jobs for it end unreachable until it is back");
                    }
                    self.apply(out);
                    if let Some(next) = self.cluster.next_expiry() {
                        self.schedule_expiry(next);
                    }
                }
                Timer::Housekeeping => self.housekeeping(),
            }
        }
    }

    fn handle_signals(&mut self) {
        for sig in self.signals.drain() {
            log::info!("received {}; stopping", signals::name(sig));
            self.state = RunState::Stopped;
        }
    }
}

/// Why a message could not be queued for a node.
#[derive(Clone, Copy, Debug)]
enum Undelivered {
    /// No connection of the node's on that port now.
    NoRoute,
    /// The node's outbox is at its cap.
    Full,
}

/// What a peer may do, by its key.
enum Peer {
    /// An accepted node (with `--curve off`, anyone naming itself).
    Node(String),
    /// Known, but not as a node now.
    Denied(Denial),
    /// Admitted at the handshake, has not claimed a name yet.
    Stranger,
}

/// A `Ready`, with the interval the server will hold the node to.
struct Ready {
    claimed: String,
    version: String,
    ivl: Duration,
    holding: Vec<Uuid>,
    /// Empty without one.
    proof: Vec<u8>,
    instance: u64,
    seen: Option<Dispatch>,
    about: crate::facts::Node,
}

/// A peer's interval, bounded so a bad value cannot expire it at once or
/// keep it forever.
fn ivl_from_ms(ms: u64) -> Duration {
    Duration::from_millis(ms.clamp(10, 86_400_000))
}
