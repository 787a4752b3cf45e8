//! The server daemon: one thread, one `mio::Poll`.
//!
//! Sources: the job, transfer and heartbeat ROUTERs, the ZAP handler's
//! ROUTER (CURVE only), the control listener and signal pipe (fixed tokens),
//! and each accepted control connection (tokens from a counter). `Server`
//! owns everything; the rules live in the sans-io `Cluster` (jobs and nodes)
//! and `Keys` (who may be which node), and this module only moves bytes
//! between them and the sockets.
//!
//! Who sent a message is its CURVE key, as our ZAP handler admitted it and
//! libzmq stamps it on every message (`User-Id`); a node is the name its key
//! owns. Routing ids are libzmq's and only say where to answer.
//!
//! Lifecycle: `start` binds everything (any failure names the address and
//! exits non-zero), `run` loops until SIGTERM/SIGINT, then the ports get a
//! short linger to flush and the socket file is removed.

mod cluster;
mod control;
mod files;
mod history;
mod jobs;
mod keys;
mod nodes;
mod peer_log;
mod persist;
mod routes;
pub(crate) mod zap;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::net::UnixListener;
use mio::{Events, Interest, Poll, Token};
use uuid::Uuid;

use self::cluster::{Cluster, Effect, Greeting, Now};
use self::control::{ControlConn, Inbound as ControlInbound};
use self::history::Record;
use self::keys::{Claim, KeyRecord, Keys, Proof, Standing};
use self::peer_log::{Once, PeerLog};
use self::persist::{Held, Persist, Released};
use self::routes::{Port, Principal, Routes, PORTS};
use self::zap::Verdict;
use crate::config::{Config, Curve};
use crate::curve::{KeyPair, PublicKey, SharedKey};
use crate::dirlock::DirLock;
use crate::error::{Error, Result};
use crate::journal::{Journal, Reader, Rewrite, Span};
use crate::reactor::signals::{self, Signals};
use crate::reactor::timers::Timers;
use crate::reactor::worker::Worker;
use crate::reactor::zmq::{endpoint, Inbound, PortSpec, Security, ZmqPort};
use crate::reactor::{self, Sleep, TokenCounter};
use crate::wire::{
    self, ClientMsg, Denial, Dispatch, KeyState, KeyView, Request, Response, ServerKeyView,
    ServerMsg,
};

const JOB: Token = Token(0);
const TRANSFER: Token = Token(1);
const HEARTBEAT: Token = Token(2);
const CONTROL: Token = Token(3);
const SIGNALS: Token = Token(4);
const ZAP: Token = Token(5);
const WORKER: Token = Token(6);
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

/// Messages received per port per service pass before other sources get a turn.
const BUDGET: usize = 256;
/// Each fetch on the transfer port reads a chunk from disk: take fewer per
/// pass so heartbeats, jobs and the control socket get their turn between.
const TRANSFER_BUDGET: usize = 16;
/// How long unsent messages may hold up shutdown.
const SHUTDOWN_LINGER_MS: i32 = 500;
/// How often retention runs and the journal's size is looked at.
const HOUSEKEEPING_IVL: Duration = Duration::from_secs(10);
/// Dead records the journal may hold beyond as many as live ones before it
/// is compacted.
const COMPACT_SLACK: usize = 10_000;
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
    /// This process owns `--state-path`.
    _lock: DirLock,
}

/// Run the server until it is told to stop.
pub fn run(cfg: &Config) -> Result<()> {
    let mut server = Server::start(cfg)?;
    let result = server.run();
    server.shutdown();
    result
}

impl Server {
    fn start(cfg: &Config) -> Result<Server> {
        // First: a second server on this directory must touch nothing.
        let lock = crate::dirlock::lock(&cfg.state_path, "state directory (--state-path)")?;
        let poll = Poll::new().map_err(|e| Error::io("cannot create the event loop", e))?;
        let ctx = zmq::Context::new();
        // The state is loaded before any port is bound: a node that can
        // connect is served at once.
        let mut restoring = cluster::Restore::default();
        let mut history = Journal::open_with(&cfg.state_path, history::FILE, |rec: Record, at| {
            restoring.replay(rec, at)
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
        compact(&mut cluster, &mut history)
            .run()
            .map_err(|(_, e)| {
                Error::io(format!("cannot rewrite {}", history.path().display()), e)
            })?;
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
            reads: HashMap::new(),
            retention: (cfg.job_retention, cfg.job_retention_count),
            waiters: HashMap::new(),
            signals,
            state: RunState::Running,
            effects: Vec::new(),
            peer_log: PeerLog::default(),
            auth,
            routes: Routes::default(),
            max_ivl: cfg.heartbeat_ivl,
            conflicts_logged: Once::new(LOGGED_ONCE_CAP),
            refusals_logged: Once::new(LOGGED_ONCE_CAP),
            _lock: lock,
        };
        server.housekeeping();
        // Restored nodes must come back in time, or their work is lost.
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
                "{} key(s) wait for acceptance ({}): `director manage --list-keys`",
                pending.len(),
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
                    JOB | TRANSFER | HEARTBEAT | ZAP => {} // serviced at the top of the loop
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
                    "stopping with output not taken by its peers after {}s ({} control connection(s){})",
                    DRAIN.as_secs(),
                    conns,
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
                };
                self.handle_ready(&who, &rid, peer_address.as_deref(), ready, now);
            }
            (Port::Job, ClientMsg::Started { job_id }, Peer::Node(node)) => {
                self.routes.learn(&who, port, &rid);
                self.cluster.touch(&node, now);
                self.cluster.started(&node, &job_id);
            }
            (Port::Job, ClientMsg::Finished { job_id, outcome }, Peer::Node(node)) => {
                self.routes.learn(&who, port, &rid);
                self.cluster.touch(&node, now);
                let mut out = std::mem::take(&mut self.effects);
                let dropped = self.cluster.finished(&node, job_id, outcome, now, &mut out);
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
                self.routes.learn(&who, port, &rid);
                self.cluster.touch(&node, now);
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
                Claim::Denied(_) => log::warn!(
                    "node={claimed}: new key {fp} from {address} is pending; accept it with `director manage --accept-key {claimed}`"
                ),
            }
        }
        match claim {
            Claim::Admitted => {
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
                let label = who.describe();
                self.reply(Port::Job, &label, rid, &ServerMsg::Denied(why));
            }
        }
    }

    /// Serve one chunk of a job's file, or say why not. A node gets only the
    /// files of its own running ADD job, whatever it asks.
    fn serve_fetch(
        &mut self,
        node: &str,
        rid: &[u8],
        job_id: Uuid,
        file: u32,
        offset: u64,
        len: u32,
    ) {
        // Room first: a node that asks faster than it reads gets nothing,
        // and costs no disk read.
        if !self.ports[Port::Transfer as usize].has_room(rid) {
            self.peer_log.warn(
                node,
                Instant::now(),
                format_args!("asks for chunks faster than it reads them; dropped a fetch"),
            );
            return;
        }
        // Reads in flight count against the same per-node room.
        let reading = self.reads.get(rid).copied().unwrap_or(0);
        if reading >= TRANSFER_PORT.peer_cap {
            self.peer_log.warn(
                node,
                Instant::now(),
                format_args!("asks for chunks faster than they can be read; dropped a fetch"),
            );
            return;
        }
        let src = match self.cluster.source_for(node, &job_id, file) {
            Ok(src) => src,
            Err(message) => {
                self.chunk_read(
                    rid.to_vec(),
                    node.to_owned(),
                    job_id,
                    file,
                    offset,
                    Err(message),
                );
                return;
            }
        };
        *self.reads.entry(rid.to_vec()).or_insert(0) += 1;
        let (rid, node) = (rid.to_vec(), node.to_owned());
        let len = len.min(wire::CHUNK);
        // The disk read happens on the I/O thread; the chunk goes out when
        // it is back.
        self.worker.submit(move || IoDone::Chunk {
            rid,
            node,
            job_id,
            file,
            offset,
            data: files::read_chunk(&src, offset, len),
        });
    }

    /// Send a chunk read for a node, or why it cannot be had.
    fn chunk_read(
        &mut self,
        rid: Vec<u8>,
        node: String,
        job_id: Uuid,
        file: u32,
        offset: u64,
        data: std::result::Result<Vec<u8>, String>,
    ) {
        let mut frames = vec![rid];
        match data {
            Ok(data) => {
                log::debug!(
                    "node={node} transfer -> Chunk job={job_id} file={file} offset={offset} len={}",
                    data.len()
                );
                frames.extend(wire::encode_with_payload(
                    &ServerMsg::Chunk {
                        job_id,
                        file,
                        offset,
                    },
                    data,
                ));
            }
            Err(message) => {
                let msg = format_args!("refused a fetch of file {file} of job {job_id}: {message}");
                self.peer_log.warn(&node, Instant::now(), msg);
                frames.extend(wire::encode(&ServerMsg::FetchError {
                    job_id,
                    file,
                    message,
                }));
            }
        }
        if !self.ports[Port::Transfer as usize].queue(frames) {
            self.peer_log.warn(
                &node,
                Instant::now(),
                format_args!("asks for chunks faster than it reads them; dropped one"),
            );
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
            self.requeue(&node, job_id);
        }
    }

    /// A job that cannot reach its node now waits for the node's next Ready.
    fn requeue(&mut self, node: &str, job_id: Uuid) {
        log::warn!(
            "node={node}: job {job_id} could not be delivered (node disconnected); kept queued"
        );
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

    /// Send to node `node` on the job port, where it last spoke from. False
    /// when it cannot be reached there now.
    fn send(&mut self, node: &str, msg: &ServerMsg) -> bool {
        let Some(rid) = self
            .principal_of(node)
            .and_then(|who| self.routes.to(&who, Port::Job).map(<[u8]>::to_vec))
        else {
            log::debug!(
                "node={node}: no route on the job port for {}",
                msg.describe()
            );
            return false;
        };
        let p = &mut self.ports[Port::Job as usize];
        log::debug!("node={node} {} -> {}", p.name, msg.describe());
        let mut frames = vec![rid];
        frames.extend(wire::encode(msg));
        p.queue(frames)
    }

    /// Carry out what the cluster decided.
    fn apply(&mut self, mut effects: Vec<Effect>) {
        // Outputs leave memory once journaled, after this batch's views.
        let mut spilled = Vec::new();
        for effect in effects.drain(..) {
            match effect {
                Effect::Journal(rec) => {
                    let span = self.record(&rec);
                    if let Record::Done { id, node, .. } = rec {
                        spilled.push((id, node, span));
                    }
                }
                Effect::Send { node, msg } => match msg {
                    // "Recorded" only once the result is on disk.
                    ServerMsg::ResultAck { .. } => self.hold(Held::Ack { node, msg }),
                    // A job goes at once: if the server dies before its
                    // record is durable, the node's Ready says it has it.
                    ServerMsg::Job { job_id, .. } => {
                        if !self.send(&node, &msg) {
                            self.requeue(&node, job_id);
                        }
                    }
                    msg => {
                        self.send(&node, &msg);
                    }
                },
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

    /// A submission was accepted: its records are effects; its answer and
    /// the release of its jobs wait until they are durable.
    fn submitted(&mut self, token: Token, resp: Response, effects: Vec<Effect>) {
        let jobs: Vec<Uuid> = match &resp {
            Response::Submitted(s) => vec![s.job_id],
            Response::Orchestrated(plan) => plan.jobs.iter().filter_map(|j| j.job_id).collect(),
            _ => Vec::new(),
        };
        self.apply(effects);
        if jobs.is_empty() {
            self.hold(Held::Note { token, resp });
        } else {
            self.hold(Held::Submission { token, resp, jobs });
        }
    }

    /// Journal a key change; answers wait for its sync like any record's.
    fn record_key(&mut self, rec: &KeyRecord) {
        if let Some(j) = &mut self.persist.keys {
            j.append(rec);
        }
        self.persist.recorded(Instant::now());
    }

    fn record(&mut self, rec: &Record) -> Span {
        let span = self.persist.history.append(rec);
        self.persist.recorded(Instant::now());
        span
    }

    /// Hold `h` until what was recorded before it is durable.
    fn hold(&mut self, h: Held) {
        self.persist.hold(h, &mut self.released);
    }

    /// Group commit: once the oldest unsynced record is `COMMIT_IVL` old,
    /// hand the writes to the I/O thread; carry out whatever was released.
    /// True if anything was.
    fn commit(&mut self, now: Instant) -> bool {
        // A compaction copies finished parts' records from the file: only
        // once all of them are there.
        if self.compact_wanted && self.persist.is_idle() {
            self.compact_wanted = false;
            let rewrite = compact(&mut self.cluster, &mut self.persist.history);
            self.persist.rewrite(rewrite, now);
        }
        if let Some(ops) = self.persist.due(now, &mut self.released) {
            self.worker
                .submit(move || IoDone::Commit(persist::run_ops(ops)));
        }
        self.carry_out()
    }

    /// Results from the I/O thread.
    fn worker_done(&mut self) {
        for done in self.worker.drain() {
            self.on_io(done);
        }
    }

    fn on_io(&mut self, done: IoDone) {
        match done {
            IoDone::Commit(result) => {
                self.persist
                    .done(result, Instant::now(), &mut self.released);
            }
            IoDone::JobInfo { token, detail } => {
                self.send_note(token, &Response::Job(*detail));
            }
            IoDone::Chunk {
                rid,
                node,
                job_id,
                file,
                offset,
                data,
            } => {
                if let Some(n) = self.reads.get_mut(&rid) {
                    *n -= 1;
                    if *n == 0 {
                        self.reads.remove(&rid);
                    }
                }
                self.chunk_read(rid, node, job_id, file, offset, data);
            }
        }
    }

    /// Carry out what the persistence layer released, in order, and fail
    /// the submissions it could not make durable. True if there was any.
    fn carry_out(&mut self) -> bool {
        let mut any = false;
        // Carrying out may release more (a note held behind nothing): go
        // until nothing is left.
        loop {
            let released = std::mem::take(&mut self.released);
            if released.held.is_empty() && released.failed.is_empty() {
                return any;
            }
            any = true;
            for (token, jobs, error) in released.failed {
                // The CLI is told; the disk's failure is logged (once a
                // minute) where it is found.
                log::debug!("refused a submission of {} job(s): {error}", jobs.len());
                let parent = jobs.first().and_then(|id| self.cluster.parent_of(id));
                self.cluster.forget(&jobs);
                for id in jobs.iter().chain(parent.iter()) {
                    self.waiters.remove(id);
                }
                for id in jobs {
                    // Should its Submitted record reach the disk after all,
                    // this one follows it there.
                    self.record(&Record::Forgotten { id });
                }
                let why = format!("{error}; nothing was queued");
                self.send_note(token, &Response::Rejected(why));
            }
            for h in released.held {
                match h {
                    // Lost acks are harmless: the node resends its result.
                    Held::Ack { node, msg } => {
                        self.send(&node, &msg);
                    }
                    Held::Note { token, resp } => self.send_note(token, &resp),
                    Held::Read {
                        token,
                        detail,
                        reads,
                    } => {
                        let reader = self.persist.history.reader();
                        self.worker.submit(move || IoDone::JobInfo {
                            token,
                            detail: read_outputs(&reader, detail, &reads),
                        });
                    }
                    Held::Submission { token, resp, jobs } => {
                        // The answer reaches the waiter before any progress.
                        self.send_note(token, &resp);
                        let mut out = std::mem::take(&mut self.effects);
                        self.cluster.release(&jobs, Now::real(), &mut out);
                        self.apply(out);
                    }
                }
            }
        }
    }

    /// Send an answer or progress to a control connection now.
    fn send_note(&mut self, token: Token, resp: &Response) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if let Err(e) = conn.send(resp) {
            log::debug!("control connection dropped: {e}");
            self.close_control(token);
        }
    }

    /// Push `resp` to every connection waiting on `id` (a job or a run).
    fn notify(&mut self, job_id: &Uuid, resp: &Response) {
        let Some(tokens) = self.waiters.get(job_id) else {
            return;
        };
        for token in tokens.clone() {
            self.hold(Held::Note {
                token,
                resp: resp.clone(),
            });
        }
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
                        log::warn!("node={name}: expired (no heartbeat within 3 intervals); removed from the node list");
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

    /// Apply the retention, ask for a compaction when the journal holds
    /// many more records than the history, and come back later.
    fn housekeeping(&mut self) {
        let (age, count) = self.retention;
        let mut out = std::mem::take(&mut self.effects);
        let gone = self
            .cluster
            .retain_recent(crate::clock::now_ms(), age, count, &mut out);
        self.apply(out);
        if gone > 0 {
            log::info!("retention: forgot {gone} finished job(s)");
        }
        let live = self.cluster.live_records();
        if self.persist.history.records() > 2 * live + COMPACT_SLACK {
            self.compact_wanted = true;
        }
        self.timers
            .at(Instant::now() + HOUSEKEEPING_IVL, Timer::Housekeeping);
    }

    fn handle_signals(&mut self) {
        for sig in self.signals.drain() {
            log::info!("received {}; stopping", signals::name(sig));
            self.state = RunState::Stopped;
        }
    }

    fn accept_control(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let token = self.tokens.next();
                    let mut conn = ControlConn::new(stream);
                    if let Err(e) = self.poll.registry().register(
                        &mut conn.stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        log::warn!("cannot watch a control connection: {e}; closed");
                        continue;
                    }
                    debug_assert!(!self.conns.contains_key(&token));
                    self.conns.insert(token, conn);
                    // Data may have arrived before registration.
                    self.handle_control(token);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("control socket accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn handle_control(&mut self, token: Token) {
        // A token can still arrive in the same batch after its source closed.
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if let Err(e) = conn.flush() {
            log::debug!("control connection write failed: {e}");
            self.close_control(token);
            return;
        }
        let (requests, closed) = match conn.read() {
            ControlInbound::Requests(r) => (r, false),
            ControlInbound::Closed(r) => (r, true),
            ControlInbound::Corrupt(e) => {
                log::warn!("control connection sent a bad request ({e}); closed");
                self.close_control(token);
                return;
            }
        };
        for req in requests {
            // A question about the state answers at once, unless an earlier
            // answer on this connection still waits for the disk (order).
            let reads_only = reads_only(&req);
            if let Some(resp) = self.handle_request(token, req) {
                if reads_only && !self.persist.holds_for(token) {
                    self.send_note(token, &resp);
                } else {
                    self.hold(Held::Note { token, resp });
                }
            }
        }
        if closed {
            // A peer that stopped writing may still read what is ready.
            self.carry_out();
            self.close_control(token);
        }
    }

    /// Answer a request; `None` when the answer was already queued.
    fn handle_request(&mut self, token: Token, req: Request) -> Option<Response> {
        log::debug!("control <- {req:?}");
        let resp = match req {
            Request::Submit {
                task,
                targets,
                wait,
            } => {
                let mut out = std::mem::take(&mut self.effects);
                let resp = match self.cluster.submit(task, &targets, Now::real(), &mut out) {
                    Ok(submitted) => {
                        log::info!(
                            "job {} ({}) queued for {}",
                            submitted.job_id,
                            submitted.task_sha1,
                            submitted.targets.join(", ")
                        );
                        if wait {
                            self.waiters
                                .entry(submitted.job_id)
                                .or_default()
                                .push(token);
                        }
                        Response::Submitted(submitted)
                    }
                    Err(why) => Response::Rejected(why),
                };
                self.submitted(token, resp, out);
                return None;
            }
            Request::Orchestrate {
                blocks,
                wait,
                dry_run,
            } => {
                let mut out = std::mem::take(&mut self.effects);
                let resp = match self
                    .cluster
                    .orchestrate(blocks, dry_run, Now::real(), &mut out)
                {
                    Ok(plan) => {
                        if let Some(parent) = plan.parent_id {
                            log::info!("orchestration {parent} queued: {} jobs", plan.jobs.len());
                            if wait {
                                self.waiters.entry(parent).or_default().push(token);
                            }
                        }
                        Response::Orchestrated(plan)
                    }
                    Err(why) => Response::Rejected(why),
                };
                self.submitted(token, resp, out);
                return None;
            }
            Request::ListNodes => Response::Nodes(self.cluster.list_nodes()),
            Request::ListJobs => Response::Jobs(self.cluster.list_jobs()),
            Request::JobInfo { id } => match self.cluster.job_info(&id) {
                Some((detail, reads)) if reads.is_empty() => Response::Job(detail),
                // Outputs are read from the journal once it holds them.
                Some((detail, reads)) => {
                    self.hold(Held::Read {
                        token,
                        detail: Box::new(detail),
                        reads,
                    });
                    return None;
                }
                None => Response::Rejected(format!("no job with id {id}")),
            },
            Request::PurgeJobs => {
                let (purged, kept) = self.cluster.purge_jobs();
                // The answer waits for the rewrite, like any record's.
                self.compact_wanted = true;
                Response::Purged { purged, kept }
            }
            Request::PurgeNodes => {
                let (purged, kept) = self.cluster.purge_nodes();
                Response::Purged { purged, kept }
            }
            Request::ShowKey => match &self.auth {
                Auth::Curve(c) => Response::ServerKey(ServerKeyView {
                    public_key: c.pair.public.z85(),
                    fingerprint: c.pair.public.fingerprint(),
                    source: c.source.clone(),
                }),
                Auth::Off => Response::Rejected(CURVE_OFF.into()),
            },
            Request::ListKeys => match &self.auth {
                Auth::Curve(c) => Response::Keys(c.keys.list()),
                Auth::Off => Response::Rejected(CURVE_OFF.into()),
            },
            Request::AcceptKey { name } => self.change_keys(KeyChange::Accept(name)),
            Request::AcceptAll => self.change_keys(KeyChange::AcceptAll),
            Request::RejectKey { name } => self.change_keys(KeyChange::Reject(name)),
            Request::DeleteKey { name } => self.change_keys(KeyChange::Delete(name)),
        };
        Some(resp)
    }

    /// An operator's accept, reject or delete. The answer waits for the key
    /// table's sync (it goes through `notes`).
    fn change_keys(&mut self, change: KeyChange) -> Response {
        let Auth::Curve(c) = &mut self.auth else {
            return Response::Rejected(CURVE_OFF.into());
        };
        let keys = &mut c.keys;
        let mut changed: Vec<(KeyView, KeyRecord)> = Vec::new();
        let result = match &change {
            KeyChange::Accept(name) => keys
                .set_state(name, KeyState::Accepted)
                .map(|rec| changed.extend(keys.view(name).map(|v| (v, rec)))),
            KeyChange::AcceptAll => {
                for rec in keys.accept_all() {
                    if let KeyRecord::Set { name, .. } = &rec {
                        changed.extend(keys.view(name).map(|v| (v, rec.clone())));
                    }
                }
                Ok(())
            }
            KeyChange::Reject(name) => keys
                .set_state(name, KeyState::Rejected)
                .map(|rec| changed.extend(keys.view(name).map(|v| (v, rec)))),
            KeyChange::Delete(name) => {
                let view = keys.view(name);
                keys.delete(name)
                    .map(|rec| changed.extend(view.map(|v| (v, rec))))
            }
        };
        if let Err(why) = result {
            return Response::Rejected(why);
        }
        let now = Now::real();
        let mut out = std::mem::take(&mut self.effects);
        for (view, rec) in &changed {
            self.record_key(rec);
            let who = PublicKey::from_z85(&view.public_key).map(Principal::Key);
            let name = &view.name;
            match &change {
                KeyChange::Accept(_) | KeyChange::AcceptAll => {
                    log::info!("node={name}: key {} accepted", view.fingerprint);
                    // A connected client hears it as soon as the accept is
                    // on disk, and says Ready.
                    self.hold(Held::Ack {
                        node: name.clone(),
                        msg: ServerMsg::Register,
                    });
                }
                KeyChange::Reject(_) => {
                    log::warn!("node={name}: key {} rejected", view.fingerprint);
                    self.send(name, &ServerMsg::Denied(Denial::Rejected));
                    self.cluster
                        .drop_node(name, "the node's key was rejected", now, &mut out);
                    if let Ok(who) = &who {
                        self.routes.forget(who);
                    }
                }
                KeyChange::Delete(_) => {
                    log::warn!("node={name}: key {} deleted", view.fingerprint);
                    self.cluster
                        .drop_node(name, "the node's key was deleted", now, &mut out);
                    if let Ok(who) = &who {
                        self.routes.forget(who);
                    }
                }
            }
        }
        self.apply(out);
        Response::KeysChanged(changed.into_iter().map(|(v, _)| v).collect())
    }

    fn close_control(&mut self, token: Token) {
        if let Some(mut conn) = self.conns.remove(&token) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
        for tokens in self.waiters.values_mut() {
            tokens.retain(|t| *t != token);
        }
    }
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
}

/// What an operator asked of the key table.
enum KeyChange {
    Accept(String),
    AcceptAll,
    Reject(String),
    Delete(String),
}

const CURVE_OFF: &str =
    "the server runs with --curve off: it has no key, and admits every node without one";

/// Requests that change nothing: their answers need no sync.
fn reads_only(req: &Request) -> bool {
    matches!(
        req,
        Request::ListNodes
            | Request::ListJobs
            | Request::JobInfo { .. }
            | Request::ShowKey
            | Request::ListKeys
    )
}

/// What the I/O thread hands back.
enum IoDone {
    Commit(persist::CommitResult),
    /// A job's detail with the outputs read from the journal.
    JobInfo {
        token: Token,
        detail: Box<wire::JobDetail>,
    },
    /// A chunk of an ADD source read for a node (its transfer routing id).
    Chunk {
        rid: Vec<u8>,
        node: String,
        job_id: Uuid,
        file: u32,
        offset: u64,
        data: std::result::Result<Vec<u8>, String>,
    },
}

/// Fill in the outputs of `detail` from the journal records at `reads`
/// (on the I/O thread). One that cannot be read says why, in its message.
fn read_outputs(
    reader: &Reader,
    mut detail: Box<wire::JobDetail>,
    reads: &[(usize, Span)],
) -> Box<wire::JobDetail> {
    for (i, span) in reads {
        let Some(view) = detail.nodes.get_mut(*i) else {
            continue;
        };
        match reader.read::<Record>(*span) {
            Ok(Record::Done {
                part:
                    history::PartRecord {
                        outcome: Some(o), ..
                    },
                ..
            }) => {
                view.stdout = String::from_utf8_lossy(&o.stdout).into_owned();
                view.stderr = String::from_utf8_lossy(&o.stderr).into_owned();
            }
            Ok(_) => view.message = Some("output unavailable: the journal moved".into()),
            Err(e) => view.message = Some(format!("output unavailable: {e}")),
        }
    }
    detail
}

/// The history's compacted form: the cluster's state, finished parts
/// copied from where the journal holds them. Their records move, and the
/// cluster is told where to.
fn compact(cluster: &mut Cluster, history: &mut Journal) -> Rewrite {
    let (items, keys): (Vec<_>, Vec<_>) = cluster.snapshot().into_iter().unzip();
    let (rewrite, spans) = history.snapshot_items(items);
    for (key, span) in keys.into_iter().zip(spans) {
        if let Some((id, node)) = key {
            cluster.spilled(&id, &node, span);
        }
    }
    rewrite
}

/// A peer's interval, bounded so a bad value cannot expire it at once or
/// keep it forever.
fn ivl_from_ms(ms: u64) -> Duration {
    Duration::from_millis(ms.clamp(10, 86_400_000))
}

/// Bind the control socket, replacing a stale socket file but never a live
/// server's. It is created mode 0600 (the umask is tightened around the
/// bind, so it is never open to others even for an instant), or 0660 and
/// owned by `group`: only its owner (root) and that group may submit work.
fn bind_control(path: &Path, group: Option<&str>) -> Result<UnixListener> {
    let gid = group
        .map(|g| {
            crate::ids::group_id(g)
                .ok_or_else(|| Error::Config(format!("--socket-group: no group named '{g}'")))
        })
        .transpose()?;
    if path.exists() {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(Error::Config(format!(
                    "another director server is already listening on {}",
                    path.display()
                )))
            }
            // Someone else's live socket we may not even talk to: leave it.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(Error::Config(format!(
                    "{} exists and we may not connect to it (another user's server?); remove it or choose another --socket-path",
                    path.display()
                )))
            }
            Err(_) => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    // SAFETY: umask only changes this process's file-creation mask; we
    // restore it right after the bind, before anything else creates files.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let listener = bound.map_err(|e| {
        Error::io(
            format!("cannot bind the control socket {}", path.display()),
            e,
        )
    })?;
    if let Some(gid) = gid {
        use std::os::unix::fs::PermissionsExt;
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::Config(format!("{}: a NUL in the path", path.display())))?;
        // SAFETY: a valid C string; -1 keeps the owner.
        if unsafe { libc::chown(c_path.as_ptr(), u32::MAX, gid) } != 0 {
            let e = io::Error::last_os_error();
            let _ = std::fs::remove_file(path);
            return Err(Error::io(
                format!(
                    "cannot give the control socket {} to group '{}'",
                    path.display(),
                    group.unwrap_or_default()
                ),
                e,
            ));
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(|e| {
            Error::io(
                format!("cannot chmod the control socket {}", path.display()),
                e,
            )
        })?;
    }
    Ok(listener)
}
