//! The server daemon: one thread, one `mio::Poll`, and one I/O thread for
//! the system calls that may block.
//!
//! Sources: the job, transfer and heartbeat ROUTERs, the ZAP handler's
//! ROUTER (CURVE only), the control listener, the signal pipe and the I/O
//! thread's waker (fixed tokens), and each accepted control connection
//! (tokens from a counter). `Server` is the loop: it owns the sockets, the
//! connections and the I/O thread, feeds what arrives to the sans-io
//! `Core` with the time read once per pass, and performs what the core
//! asks (`core::Out`). The rules live in the core and what it holds:
//! `Cluster` (jobs and nodes), `Keys` (who may be which node) and `Persist`
//! (what waits for the disk); `requests` answers the control socket,
//! `storage` drives the journals, `fetch` checks what nodes may read.
//!
//! Who sent a message is its CURVE key, as our ZAP handler admitted it and
//! libzmq stamps it on every message (`User-Id`); a node is the name its key
//! owns. Routing ids are libzmq's and only say where to answer.
//!
//! Lifecycle: `start` locks the state directory, loads and compacts the
//! journals, then binds everything (any failure names the address and exits
//! non-zero); `run` loops until SIGTERM/SIGINT; `shutdown` drains (see
//! there) and removes the socket file.

mod api;
mod cluster;
mod control;
pub mod core;
mod election;
mod fetch;
mod files;
pub(crate) mod ha;
mod history;
pub(crate) mod io;
mod jobs;
pub(crate) mod keys;
mod nodes;
mod peer_log;
pub(crate) mod persist;
mod query;
mod requests;
mod rollout;
pub(crate) mod routes;
mod storage;
mod tokens;
mod watchers;
pub(crate) mod zap;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::net::UnixListener;
use mio::{Events, Interest, Poll, Token};

use self::cluster::Now;
use self::control::{ControlConn, Inbound as ControlInbound};
use self::core::{About, Auth, Core, CurveAuth, Out, LOGGED_ONCE_CAP, PENDING_LOG_EVERY};
use self::io::IoDone;
use self::keys::{KeyRecord, Keys, Standing};
use self::peer_log::Once;
use self::persist::Persist;
use self::requests::bind_control;
use self::routes::{Port, PORTS};
use self::zap::Verdict;
use crate::config::{Config, Curve};
use crate::curve::{KeyPair, SharedKey};
use crate::error::{Error, Result};
use crate::journal::Journal;
use crate::reactor::monitor::{self, LinkEvent, Monitor, Watch};
use crate::reactor::signals::{self, Signals};
use crate::reactor::worker::Worker;
use crate::reactor::zmq::{endpoint, PortSpec, Security, ZmqPort};
use crate::reactor::{self, Sleep, TokenCounter};
use crate::support::dirlock::DirLock;
use crate::wire::{self, Response};

const JOB: Token = Token(0);
const TRANSFER: Token = Token(1);
const HEARTBEAT: Token = Token(2);
const CONTROL: Token = Token(3);
const SIGNALS: Token = Token(4);
const ZAP: Token = Token(5);
const WORKER: Token = Token(6);
const MONITOR: Token = Token(7);
const API: Token = Token(8);
// Token(9) is `core::EVENTS`.
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

/// Messages received per port per service pass before other sources get a turn.
const BUDGET: usize = 256;
/// Each fetch on the transfer port reads a chunk from disk: take fewer per
/// pass so heartbeats, jobs and the control socket get their turn between.
const TRANSFER_BUDGET: usize = 16;
/// How long unsent messages may hold up shutdown.
const SHUTDOWN_LINGER_MS: i32 = 500;
/// How long shutdown waits for peers to take what was made durable.
const DRAIN: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, PartialEq, Eq)]
enum RunState {
    Running,
    Stopped,
    /// Not the leader any more (on etcd), and why: start again as a
    /// standby, without acknowledging anything more.
    SteppedDown(String),
}

/// The server daemon: the loop around the core.
pub struct Server {
    poll: Poll,
    // Declared before the context so they drop first.
    ports: [ZmqPort<About>; 3],
    /// The ZAP handler's socket (CURVE only).
    zap: Option<ZmqPort>,
    _ctx: zmq::Context,
    listener: UnixListener,
    socket_path: PathBuf,
    conns: HashMap<Token, ControlConn>,
    tokens: TokenCounter,
    core: Core,
    /// Live output bytes a slow follower missed, told with the next.
    live_dropped: HashMap<Token, u64>,
    signals: Signals,
    state: RunState,
    /// Blocking system calls (syncs, rewrites, reads) off the loop.
    worker: Worker<IoDone>,
    /// Chunk reads on the I/O thread, per transfer routing id.
    reads: HashMap<Vec<u8>, usize>,
    /// This process owns `--state-path`.
    _lock: DirLock,
    /// The job port's failed handshakes (with CURVE): libzmq drops a
    /// client with a wrong key without a word otherwise.
    handshakes: Option<Monitor>,
    /// Addresses whose failed handshake was said, and how often one may be.
    handshakes_logged: Once<String>,
    handshakes_rate: crate::support::ratelog::Every,
    /// The HTTP API, with `--api-port`.
    api: Option<api::Api>,
    /// When the last group commit went to the I/O thread (for its latency).
    commit_sent: Option<Instant>,
    /// On etcd: the election this server won, its fence, and since when
    /// and why it is paused (its lease may lapse).
    ha: Option<ha::Ha>,
    fence: Option<i64>,
    paused: Option<(String, Instant)>,
}

/// The cluster as the history in `state_path` left it, and the journal.
/// Retention applies at once: the journal starts from only what is still
/// known and kept.
pub(crate) fn restore(
    state_path: &std::path::Path,
    ivl: Duration,
    (age, count): (Duration, usize),
    now: Now,
) -> Result<(cluster::Cluster, Journal)> {
    let mut restoring = cluster::Restore::new(now.at);
    let history = Journal::open_lazy(state_path, history::FILE, history::head, |rec, at| {
        restoring.replay_lazy(rec, at)
    })
    .map_err(|e| {
        Error::io(
            format!("cannot open the job history in {}", state_path.display()),
            e,
        )
    })?;
    let mut cluster = restoring.finish(ivl, now);
    let _ = cluster.retain_recent(now.ms, age, count, &mut Vec::new());
    Ok((cluster, history))
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
    // First: a second server on this directory must touch nothing.
    let lock = crate::support::dirlock::lock(&cfg.state_path, "state directory (--state-path)")?;
    raise_open_files();
    let poll = Poll::new().map_err(|e| Error::io("cannot create the event loop", e))?;
    let signals = Signals::install(poll.registry(), SIGNALS)
        .map_err(|e| Error::io("cannot install signal handlers", e))?;
    // One waker for the loop: the I/O thread's and the etcd helpers'.
    let waker = std::sync::Arc::new(
        mio::Waker::new(poll.registry(), WORKER)
            .map_err(|e| Error::io("cannot create the event loop's waker", e))?,
    );
    let mut base = ha::standby::Base {
        poll,
        signals,
        lock,
        waker,
    };
    let Some(etcd) = &cfg.etcd else {
        let mut server = Server::start(cfg, base, None)?;
        let result = server.run();
        server.shutdown();
        return result;
    };
    let mut ha = ha::Ha::start(
        etcd,
        &cfg.identity,
        std::sync::Arc::clone(&base.waker),
        Instant::now(),
    )
    .map_err(|e| Error::io("cannot start the etcd helper thread", e))?;
    // Where nodes reach this server, for the other servers and the CLI.
    ha.record.address = match cfg.bind_address.as_str() {
        "*" | "0.0.0.0" | "::" | "[::]" => cfg.identity.clone(),
        a => a.to_owned(),
    };
    ha.record.job_port = cfg.job_port;
    ha.record.key = server_key_fingerprint(cfg)?;
    let (fence, seq) = match ha::standby::run(cfg, &mut base, &mut ha)? {
        ha::standby::Exit::Stop => return Ok(()),
        ha::standby::Exit::Lead { fence, seq } => (fence, seq),
    };
    ha.record.applied = seq;
    let replica = ha::replicate::Replica::new(
        std::sync::Arc::clone(&ha.log_client) as ha::replicate::SharedStore,
        ha.keys.clone(),
        fence,
        seq,
        &cfg.state_path,
    );
    let mut server = Server::start(cfg, base, Some((ha, replica)))?;
    let result = server.run();
    if let RunState::SteppedDown(why) = server.state.clone() {
        server.abandon();
        drop(server);
        return reexec(&why);
    }
    server.shutdown();
    if let Some(ha) = &mut server.ha {
        ha.resign();
    }
    result
}

/// The fingerprint of the key pair this server serves with (empty with
/// --curve off), as `start_curve` finds it: for the other servers to
/// compare.
fn server_key_fingerprint(cfg: &Config) -> Result<String> {
    if cfg.curve == Curve::Off {
        return Ok(String::new());
    }
    Ok(server_key_pair(cfg)?.0.public.fingerprint())
}

/// The server's key pair (derived from the shared key, or its key file,
/// made on the first start), where it came from, and the derived keys.
pub(crate) fn server_key_pair(cfg: &Config) -> Result<(KeyPair, String, Option<SharedKey>)> {
    match &cfg.shared_key {
        Some(shared) => {
            let derived = SharedKey::for_daemon(&shared.0).map_err(Error::Config)?;
            let pair = KeyPair::from_secret(*derived.server().secret.as_bytes());
            Ok((
                pair,
                "derived from the shared key".to_owned(),
                Some(derived),
            ))
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
            Ok((pair, format!("key file {}", path.display()), None))
        }
    }
}

/// Start this program again, as it was started: a leader that stepped
/// down comes back as a standby, from its disk, which holds only what
/// etcd holds.
fn reexec(why: &str) -> Result<()> {
    use std::os::unix::process::CommandExt;
    log::error!("stepping down: {why}; starting again as a standby");
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let e = std::process::Command::new("/proc/self/exe")
        .args(args)
        .exec();
    Err(Error::io("cannot start again as a standby", e))
}

impl Server {
    fn start(
        cfg: &Config,
        base: ha::standby::Base,
        ha: Option<(ha::Ha, ha::replicate::Replica)>,
    ) -> Result<Server> {
        let ha::standby::Base {
            poll,
            signals,
            lock,
            waker,
        } = base;
        let ctx = zmq::Context::new();
        // The state is loaded before any port is bound: a node that can
        // connect is served at once.
        let started = Now::real();
        let (cluster, history) = restore(
            &cfg.state_path,
            cfg.heartbeat_ivl,
            (cfg.job_retention, cfg.job_retention_count),
            started,
        )?;
        let (tokens_journal, tokens) = Server::open_tokens(cfg)?;
        // No compaction here: it would copy the whole history before the
        // ports listen. Housekeeping asks for one when the journal is
        // mostly dead records, and the I/O thread does it.
        // The ZAP handler must be bound before the first handshake: with
        // none, libzmq would let every CURVE client in.
        let (auth, keys_journal, zap) = match cfg.curve {
            Curve::On => {
                let (auth, journal, zap) = Server::start_curve(cfg, &ctx, &poll)?;
                (auth, Some(journal), Some(zap))
            }
            Curve::Off => (Auth::Off, None, None),
        };
        let security = || match &auth {
            Auth::Curve(c) => Security::CurveServer {
                secret: &c.pair.secret,
            },
            Auth::Off => Security::Plain,
        };
        let bind = |spec: PortSpec, port: u16, token: Token| {
            let ep = endpoint(&cfg.bind_address, port);
            ZmqPort::<About>::bind(&ctx, spec, &ep, security(), poll.registry(), token)
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
        let api = match &cfg.api {
            Some(a) => {
                let mut api = api::Api::bind(a, Instant::now())?;
                poll.registry()
                    .register(&mut api.listener, API, Interest::READABLE)
                    .map_err(|e| Error::io("cannot watch the API's listener", e))?;
                log::info!(
                    "API on {}://{}:{}/ (dashboard at /, metrics at /metrics){}",
                    if api.is_tls() { "https" } else { "http" },
                    a.address,
                    a.port,
                    if api.is_tls() {
                        ""
                    } else {
                        "; without TLS, on loopback only"
                    }
                );
                Some(api)
            }
            None => None,
        };
        let worker = Worker::with_waker("director-io", waker)
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
        let server_ha = ha.is_some();
        let fence = ha.as_ref().map(|(_, r)| r.fence());
        let persist = Persist::new(history, keys_journal).with_tokens(tokens_journal);
        let (persist, ha) = match ha {
            None => (persist, None),
            Some((mut ha, replica)) => {
                ha.serving = true;
                log::info!(
                "active on etcd {} (prefix {}, fence {}): every commit goes to etcd's log first, from entry {}",
                ha.cfg.endpoints.join(","),
                ha.cfg.prefix,
                replica.fence(),
                replica.seq() + 1
            );
                (persist.with_replica(replica), Some(ha))
            }
        };
        let mut core = Core::new(
            cluster,
            persist,
            auth,
            cfg.heartbeat_ivl,
            (cfg.job_retention, cfg.job_retention_count),
            Now::real(),
        );
        // What retention forgot (and any dead record) leaves the disk soon
        // after a start, by the I/O thread, not before the ports listen.
        // Restored nodes must come back in time, or their work is lost:
        // their time starts now that the ports listen.
        core.set_tokens(tokens);
        core.cluster_view = ha.as_ref().map(ha::Ha::view);
        // A node notices the old leader is gone after its liveness (3
        // intervals), and may try it once more before finding this one.
        core.start(if server_ha {
            cfg.heartbeat_ivl * 5
        } else {
            Duration::ZERO
        });
        let mut server = Server {
            poll,
            ports,
            zap,
            _ctx: ctx,
            listener,
            socket_path: cfg.socket_path.clone(),
            conns: HashMap::new(),
            tokens: TokenCounter::new(FIRST_DYNAMIC),
            core,
            live_dropped: HashMap::new(),
            signals,
            state: RunState::Running,
            worker,
            reads: HashMap::new(),
            _lock: lock,
            handshakes,
            handshakes_logged: Once::new(LOGGED_ONCE_CAP),
            handshakes_rate: crate::support::ratelog::Every::new(PENDING_LOG_EVERY),
            api,
            commit_sent: None,
            ha,
            fence,
            paused: None,
        };
        server.perform();
        Ok(server)
    }

    /// The API token table, and its journal rewritten to what is live.
    fn open_tokens(cfg: &Config) -> Result<(Journal, tokens::Tokens)> {
        let (mut journal, records) =
            Journal::open::<tokens::TokenRecord>(&cfg.state_path, tokens::FILE).map_err(|e| {
                Error::io(
                    format!("cannot open the API tokens in {}", cfg.state_path.display()),
                    e,
                )
            })?;
        let kept = records.len();
        let tokens = tokens::Tokens::restore(records);
        let live = tokens.snapshot();
        // Rewritten (and synced) only when revoked tokens left records:
        // a start costs no sync otherwise.
        if kept > live.len() {
            journal.snapshot(live).run().map_err(|(_, e)| {
                Error::io(format!("cannot rewrite {}", journal.path().display()), e)
            })?;
        }
        Ok((journal, tokens))
    }

    /// The server's key pair, the key table and the ZAP handler.
    fn start_curve(
        cfg: &Config,
        ctx: &zmq::Context,
        poll: &Poll,
    ) -> Result<(Auth, Journal, ZmqPort)> {
        let (pair, source, shared) = server_key_pair(cfg)?;
        let zap = ZmqPort::<()>::bind(
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
            keys,
        }));
        Ok((auth, journal, zap))
    }

    fn run(&mut self) -> Result<()> {
        let mut events = Events::with_capacity(256);
        loop {
            // Rule: service every port at the top of every pass; anything
            // since the last pass may have queued a send and used the edge.
            // A leader whose lease may have lapsed acts on nothing more.
            self.tick_ha(Instant::now());
            if self.state != RunState::Running {
                return Ok(());
            }
            self.service_handshakes();
            self.core.at(Now::real());
            let mut busy = self.service_ports()?;
            busy |= self.core.tick();
            self.perform();
            self.flush_controls();
            let now = Instant::now();
            self.sweep_api(now);
            self.flush_api();
            let api_due = self.api.as_ref().map(api::Api::next_deadline);
            let ha_due = self.ha.as_ref().map(ha::Ha::next_deadline);
            let next_timer = [self.core.next_deadline(), api_due, ha_due]
                .into_iter()
                .flatten()
                .min()
                .map(|at| at.saturating_duration_since(now));
            // Paused, only the heartbeat port is serviced: a backlog on the
            // others waits for the resumption, not for the next pass.
            let paused = self.paused.is_some();
            let sleep = Sleep {
                busy,
                backlog: self
                    .ports
                    .iter()
                    .enumerate()
                    .any(|(i, p)| (!paused || i == HEARTBEAT.0) && p.has_backlog()),
                next_timer,
            };
            reactor::wait(&mut self.poll, &mut events, sleep)
                .map_err(|e| Error::io("event loop failed", e))?;
            self.core.at(Now::real());
            for ev in events.iter() {
                // Stopping, or not the leader any more: nothing more is
                // acted on (a deposed leader must not dispatch).
                if self.state != RunState::Running {
                    break;
                }
                match ev.token() {
                    // Serviced at the top of the loop; only a port whose fd
                    // fired (or that has sends) is asked.
                    JOB | TRANSFER | HEARTBEAT => self.ports[ev.token().0].mark_ready(),
                    ZAP => {
                        if let Some(zap) = &mut self.zap {
                            zap.mark_ready();
                        }
                    }
                    MONITOR => {}
                    CONTROL => self.accept_control(),
                    API => self.accept_api(),
                    SIGNALS => self.handle_signals(),
                    WORKER => {
                        for done in self.worker.drain() {
                            self.io_done(done);
                        }
                        self.ha_answers();
                    }
                    token if self.is_api(token) => self.handle_api(token),
                    token => self.handle_control(token),
                }
                self.perform();
            }
            if self.state != RunState::Running {
                return Ok(());
            }
        }
    }

    /// On etcd: let the election see the time; stop leading if it says.
    fn tick_ha(&mut self, now: Instant) {
        let Some(ha) = &mut self.ha else { return };
        let changes = ha.tick(now);
        if ha.take_base_wanted() {
            self.core.want_base();
        }
        self.ha_changed(changes);
    }

    fn ha_answers(&mut self) {
        let Some(ha) = &mut self.ha else { return };
        let changes = ha.answers(Instant::now());
        self.core.cluster_view = Some(ha.view());
        self.ha_changed(changes);
    }

    /// What the election says. A lease that may lapse pauses this server
    /// (nothing goes to or comes from nodes on the job and transfer ports;
    /// heartbeats go on, so nodes stay); the same lease renewed after all
    /// resumes it. Anything else means another server may have led: this
    /// one starts again as a standby, from what etcd holds.
    fn ha_changed(&mut self, changes: Vec<election::Change>) {
        for c in changes {
            match c {
                election::Change::Lead { fence } if Some(fence) == self.fence => {
                    if let Some((why, since)) = self.paused.take() {
                        self.core.etcd_back();
                        log::info!(
                            "resuming after {:.1} s: etcd renewed this server's lease (paused because {why})",
                            since.elapsed().as_secs_f64()
                        );
                    }
                }
                election::Change::Lead { fence } => {
                    self.state = RunState::SteppedDown(format!(
                        "won the lead again under another fence ({fence}): another server may have led meanwhile"
                    ));
                }
                election::Change::StepDown { why } => {
                    log::error!(
                        "pausing: {why}; nothing goes to or comes from nodes until etcd renews the lease (their heartbeats go on), or another server leads"
                    );
                    self.core.answer_in_doubt(
                        "this server paused: etcd did not confirm its writes in time",
                    );
                    self.perform();
                    self.paused = Some((why, Instant::now()));
                }
                election::Change::LeaderIs(who) => {
                    self.state = RunState::SteppedDown(match who {
                        Some(name) => format!("{name} leads now"),
                        None => "this server does not hold the leader key".into(),
                    });
                }
            }
        }
    }

    /// Stepping down: nothing more goes out, nothing is drained; the
    /// socket file goes (the standby binds it again).
    fn abandon(&mut self) {
        for p in &self.ports {
            p.set_linger(0);
        }
        let _ = std::fs::remove_file(&self.socket_path);
    }

    /// Stop: make durable what can be, send every answer and ack that
    /// depends on it, tell waiting CLIs, and give peers `DRAIN` to take it.
    fn shutdown(&mut self) {
        self.state = RunState::Stopped;
        // What the worker has in hand, then one last synchronous try; what
        // the core asks of the I/O thread from here on is done at once.
        self.core.at(Now::real());
        for done in self.worker.finish() {
            self.io_done(done);
        }
        self.core.finish();
        self.perform();
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
            self.perform();
            for port in PORTS {
                // Paused (the lease may lapse): only heartbeats.
                if self.paused.is_some() && port != Port::Heartbeat {
                    continue;
                }
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
                    if let Some(api) = &mut self.api {
                        let c = &mut api.metrics.ports[port as usize];
                        c.msgs_in += 1;
                        c.bytes_in += msg.frames.iter().map(|f| f.len() as u64).sum::<u64>();
                    }
                    self.core.message(port, msg);
                    self.perform();
                }
                for (identity, about) in done.unroutable {
                    self.core.unroutable(port, &identity, about);
                    self.perform();
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
        let (Some(zap), Auth::Curve(c)) = (&mut self.zap, &mut self.core.auth) else {
            return Ok(false);
        };
        let keys = &c.keys;
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
                if self.core.refusals_logged.first(req.key) {
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

    /// Perform what the core asked, in order, until it asks nothing more.
    fn perform(&mut self) {
        loop {
            let out = self.core.take_out();
            if out.is_empty() {
                return;
            }
            for o in out {
                self.perform_one(o);
            }
        }
    }

    fn perform_one(&mut self, out: Out) {
        match out {
            Out::Zmq {
                port,
                frames,
                about,
            } => {
                if let Some(api) = &mut self.api {
                    let c = &mut api.metrics.ports[port as usize];
                    c.msgs_out += 1;
                    c.bytes_out += frames.iter().map(|f| f.len() as u64).sum::<u64>();
                }
                let p = &mut self.ports[port as usize];
                if frames.first().is_some_and(|rid| p.has_room(rid)) {
                    p.queue_tagged(frames, about);
                } else {
                    self.core.undelivered(port, about, &frames);
                }
            }
            Out::Note { token, resp } => self.send_note(token, &resp),
            Out::Live { token, resp } => self.send_live(token, resp),
            // Stopping: the I/O thread's results would never be read, so
            // what the core asks now is done here.
            Out::Io(task) if self.state == RunState::Stopped => self.io_done(task.run()),
            Out::Io(io::IoTask::Chunk { read, src, len }) => self.read_chunk(read, src, len),
            Out::Io(task) => {
                if matches!(task, io::IoTask::Commit(_)) {
                    self.commit_sent = Some(Instant::now());
                }
                self.worker.submit(move || task.run())
            }
        }
    }

    /// What the I/O thread finished.
    fn io_done(&mut self, done: IoDone) {
        match done {
            IoDone::Commit(result) => {
                if let (Some(api), Some(sent)) = (&mut self.api, self.commit_sent.take()) {
                    api.metrics.sync(sent.elapsed(), result.is_ok());
                }
                match &result {
                    Err((_, e)) if ha::replicate::is_deposed(e) => {
                        self.state = RunState::SteppedDown(e.to_string());
                        return;
                    }
                    Ok(()) => {
                        if let (Some(ha), Some(seq)) = (&mut self.ha, self.core.replica_seq()) {
                            ha.record.applied = seq;
                        }
                    }
                    Err(_) => {}
                }
                self.core.committed(result)
            }
            IoDone::JobInfo { token, detail } => {
                self.send_note(token, &Response::Job(*detail));
            }
            IoDone::Chunk(read) => {
                if let Some(n) = self.reads.get_mut(&read.rid) {
                    *n -= 1;
                    if *n == 0 {
                        self.reads.remove(&read.rid);
                    }
                }
                let (node, frames, warn) = fetch::chunk_frames(read);
                if let Some(api) = &mut self.api {
                    let bytes = frames.iter().map(|f| f.len() as u64).sum::<u64>();
                    api.metrics.transfer_bytes += bytes;
                    let c = &mut api.metrics.ports[Port::Transfer as usize];
                    c.msgs_out += 1;
                    c.bytes_out += bytes;
                }
                if let Some(why) = warn {
                    self.core.warn_node(&node, &why);
                }
                if !self.ports[Port::Transfer as usize].queue(frames) {
                    self.core.warn_node(
                        &node,
                        "asks for chunks faster than it reads them; dropped one",
                    );
                }
            }
        }
        self.perform();
    }

    /// Read a chunk the core allowed, within the node's room: a node that
    /// asks faster than it reads gets nothing, and costs no disk read.
    fn read_chunk(&mut self, read: io::ChunkRead, src: crate::dsl::SourceFile, len: u32) {
        if !self.ports[Port::Transfer as usize].has_room(&read.rid) {
            self.core.warn_node(
                &read.node,
                "asks for chunks faster than it reads them; dropped a fetch",
            );
            return;
        }
        // Reads in flight count against the same per-node room.
        let reading = self.reads.get(&read.rid).copied().unwrap_or(0);
        if reading >= TRANSFER_PORT.peer_cap {
            self.core.warn_node(
                &read.node,
                "asks for chunks faster than they can be read; dropped a fetch",
            );
            return;
        }
        *self.reads.entry(read.rid.clone()).or_insert(0) += 1;
        let task = io::IoTask::Chunk { read, src, len };
        self.worker.submit(move || task.run());
    }

    /// Send an answer or progress to a control connection now.
    fn send_note(&mut self, token: Token, resp: &Response) {
        let Some(conn) = self.conns.get_mut(&token) else {
            if token == core::EVENTS || self.is_api(token) {
                self.api_note(token, resp.clone());
            }
            return;
        };
        if let Err(e) = conn.send(resp) {
            log::debug!("control connection dropped: {e}");
            self.close_control(token);
        }
    }

    /// Live output for a follower. One that does not keep up loses output
    /// (counted and shown to it), not the server's memory.
    fn send_live(&mut self, token: Token, mut resp: Response) {
        let Some(conn) = self.conns.get(&token) else {
            if self.is_api(token) {
                self.api_note(token, resp);
            }
            return;
        };
        let Response::Output { data, dropped, .. } = &mut resp else {
            return self.send_note(token, &resp);
        };
        if conn.backlog() > requests::LIVE_BACKLOG {
            *self.live_dropped.entry(token).or_insert(0) += *dropped + data.len() as u64;
            return;
        }
        *dropped += self.live_dropped.remove(&token).unwrap_or(0);
        self.send_note(token, &resp);
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
                    if let Some(uid) = crate::support::ids::peer_uid(&conn.stream) {
                        self.core.set_caller(token, format!("uid {uid}"));
                    }
                    self.conns.insert(token, conn);
                    // Data may have arrived before registration.
                    self.handle_control(token);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
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
        self.core.requests(token, requests);
        self.perform();
        if closed {
            // A peer that stopped writing may still read what is ready.
            self.core.carry_out();
            self.perform();
            if let Some(conn) = self.conns.get_mut(&token) {
                let _ = conn.flush();
            }
            self.close_control(token);
        }
    }

    /// Write what this pass queued for the CLIs.
    fn flush_controls(&mut self) {
        let failed: Vec<Token> = self
            .conns
            .iter_mut()
            .filter(|(_, c)| c.has_output())
            .filter_map(|(t, c)| c.flush().err().map(|e| (*t, e)))
            .map(|(t, e)| {
                log::debug!("control connection write failed: {e}");
                t
            })
            .collect();
        for token in failed {
            self.close_control(token);
        }
    }

    fn close_control(&mut self, token: Token) {
        if let Some(mut conn) = self.conns.remove(&token) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
        self.live_dropped.remove(&token);
        self.core.closed(token);
    }

    fn handle_signals(&mut self) {
        for sig in self.signals.drain() {
            log::info!("received {}; stopping", signals::name(sig));
            self.state = RunState::Stopped;
        }
    }
}
