//! The server daemon: one thread, one `mio::Poll`.
//!
//! Sources: the job, transfer and heartbeat ROUTERs (fixed tokens), the
//! control listener and signal pipe (fixed tokens), and each accepted control
//! connection (tokens from a counter). `Server` owns everything; the rules
//! live in the sans-io `Cluster`, and this module only moves bytes between it
//! and the sockets.
//!
//! Lifecycle: `start` binds everything (any failure names the address and
//! exits non-zero), `run` loops until SIGTERM/SIGINT, then the ports get a
//! short linger to flush and the socket file is removed.

mod cluster;
mod control;
mod files;
mod history;
mod jobs;
mod nodes;
mod peer_log;

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::net::UnixListener;
use mio::{Events, Interest, Poll, Token};
use uuid::Uuid;

use self::cluster::{Cluster, Effect, Now};
use self::control::{ControlConn, Inbound};
use self::history::Record;
use self::peer_log::PeerLog;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::journal::Journal;
use crate::reactor::signals::{self, Signals};
use crate::reactor::timers::Timers;
use crate::reactor::zmq::{endpoint, ZmqPort};
use crate::reactor::{self, Sleep, TokenCounter};
use crate::wire::{self, ClientMsg, Request, Response, ServerMsg};

const JOB: Token = Token(0);
const TRANSFER: Token = Token(1);
const HEARTBEAT: Token = Token(2);
const CONTROL: Token = Token(3);
const SIGNALS: Token = Token(4);
const FIRST_DYNAMIC: usize = 16;

/// Messages received per port per service pass before other sources get a turn.
const BUDGET: usize = 256;
/// Each fetch on the transfer port reads a chunk from disk: take fewer per
/// pass so heartbeats, jobs and the control socket get their turn between.
const TRANSFER_BUDGET: usize = 16;
/// How long a record may wait for the sync that makes it durable: syncs
/// are shared by everything recorded meanwhile. Jobs do not wait for it;
/// result acks and CLI answers do.
const COMMIT_IVL: Duration = Duration::from_millis(5);
/// How long unsent messages may hold up shutdown.
const SHUTDOWN_LINGER_MS: i32 = 500;

/// Index of each port in `Server::ports`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Port {
    Job = 0,
    Transfer = 1,
    Heartbeat = 2,
}

const PORTS: [Port; 3] = [Port::Job, Port::Transfer, Port::Heartbeat];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// Sweep expired nodes; the generation tells a superseded timer.
    Expiry(u64),
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
    /// The job history on disk; synced before anything that depends on it
    /// leaves the server.
    history: Journal,
    /// Answers and progress for control connections, sent after the
    /// history is synced (group commit: one sync for a whole pass).
    notes: Vec<(Token, Response)>,
    /// Result acks waiting for the sync of their results.
    acks: Vec<(String, ServerMsg)>,
    /// When the oldest record not yet synced must be.
    commit_at: Option<Instant>,
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
        let poll = Poll::new().map_err(|e| Error::io("cannot create the event loop", e))?;
        let ctx = zmq::Context::new();
        let bind = |name: &'static str, port: u16, token: Token| {
            let ep = endpoint(&cfg.bind_address, port);
            ZmqPort::bind(&ctx, name, &ep, poll.registry(), token)
                .map_err(|e| Error::zmq(format!("cannot bind the {name} socket to {ep}"), e))
        };
        let ports = [
            bind("job", cfg.job_port, JOB)?,
            bind("transfer", cfg.transfer_port, TRANSFER)?,
            bind("heartbeat", cfg.heartbeat_port, HEARTBEAT)?,
        ];
        let mut listener = bind_control(&cfg.socket_path)?;
        poll.registry()
            .register(&mut listener, CONTROL, Interest::READABLE)
            .map_err(|e| Error::io("cannot watch the control socket", e))?;
        let signals = Signals::install(poll.registry(), SIGNALS)
            .map_err(|e| Error::io("cannot install signal handlers", e))?;
        let (mut history, records) = Journal::open::<Record>(&cfg.state_path, history::FILE)
            .map_err(|e| {
                Error::io(
                    format!(
                        "cannot open the job history in {}",
                        cfg.state_path.display()
                    ),
                    e,
                )
            })?;
        let cluster = Cluster::restore(records, cfg.heartbeat_ivl, Now::real());
        // Start from a compact journal: only what is still known.
        history
            .rewrite(cluster.snapshot())
            .map_err(|e| Error::io(format!("cannot rewrite {}", history.path().display()), e))?;
        let jobs = cluster.list_jobs();
        if !jobs.is_empty() {
            let unfinished = jobs.iter().filter(|j| j.finished_ms.is_none()).count();
            log::info!(
                "restored {} jobs ({unfinished} unfinished) from {}",
                jobs.len(),
                history.path().display()
            );
        }
        if cfg.shared_key.is_some() {
            log::warn!(
                "--shared-key is accepted but not enforced yet: peers are not authenticated"
            );
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
            history,
            notes: Vec::new(),
            acks: Vec::new(),
            commit_at: None,
            waiters: HashMap::new(),
            signals,
            state: RunState::Running,
            effects: Vec::new(),
            peer_log: PeerLog::default(),
        };
        // Restored nodes must come back in time, or their work is lost.
        if let Some(at) = server.cluster.next_expiry() {
            server.schedule_expiry(at);
        }
        Ok(server)
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
            if let Some(at) = self.commit_at {
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
                    JOB | TRANSFER | HEARTBEAT => {} // serviced at the top of the loop
                    CONTROL => self.accept_control(),
                    SIGNALS => self.handle_signals(),
                    token => self.handle_control(token),
                }
            }
            self.fire_timers(Instant::now());
            if self.state == RunState::Stopped {
                return Ok(());
            }
        }
    }

    fn shutdown(&mut self) {
        if let Err(e) = self.history.sync() {
            log::error!(
                "cannot sync the job history {}: {e}",
                self.history.path().display()
            );
        }
        for p in &self.ports {
            p.set_linger(SHUTDOWN_LINGER_MS);
        }
        let _ = std::fs::remove_file(&self.socket_path);
        log::info!("server stopped");
    }

    /// Receive and send on every port until a whole round does nothing.
    fn service_ports(&mut self) -> Result<bool> {
        let mut busy = false;
        for _round in 0..8 {
            let mut progressed = false;
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
                for frames in done.received {
                    self.handle_zmq(port, frames);
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

    fn handle_zmq(&mut self, port: Port, mut frames: Vec<Vec<u8>>) {
        let name = self.ports[port as usize].name;
        if frames.is_empty() {
            return;
        }
        let identity = frames.remove(0);
        let Ok(node) = String::from_utf8(identity) else {
            let msg =
                format_args!("dropped a message on the {name} port: the identity is not UTF-8");
            self.peer_log.warn("?", Instant::now(), msg);
            return;
        };
        let msg = match wire::decode::<ClientMsg>(&frames) {
            Ok(msg) => msg,
            Err(e) => {
                self.peer_log.warn(
                    &node,
                    Instant::now(),
                    format_args!("dropped a message on the {name} port: {e}"),
                );
                return;
            }
        };
        log::debug!("node={node} {name} <- {}", msg.describe());
        let now = Now::real();
        match (port, msg) {
            (Port::Heartbeat, ClientMsg::Heartbeat { interval_ms }) => {
                let reply = self.cluster.heartbeat(&node, ivl_from_ms(interval_ms), now);
                self.send(Port::Heartbeat, &node, &reply);
            }
            (
                Port::Job,
                ClientMsg::Ready {
                    version,
                    interval_ms,
                    holding,
                },
            ) => {
                let mut out = std::mem::take(&mut self.effects);
                let ivl = ivl_from_ms(interval_ms);
                if self
                    .cluster
                    .ready(&node, &version, ivl, &holding, now, &mut out)
                {
                    log::info!(
                        "node={node}: registered (director {version}, heartbeat every {:.1}s)",
                        ivl.as_secs_f64()
                    );
                    self.schedule_expiry(now.at + ivl * nodes::LIVENESS);
                }
                self.apply(out);
            }
            (Port::Job, ClientMsg::Started { job_id }) => {
                self.cluster.touch(&node, now);
                self.cluster.started(&node, &job_id);
            }
            (Port::Job, ClientMsg::Finished { job_id, outcome }) => {
                self.cluster.touch(&node, now);
                let mut out = std::mem::take(&mut self.effects);
                self.cluster.finished(&node, job_id, outcome, now, &mut out);
                self.apply(out);
            }
            (
                Port::Transfer,
                ClientMsg::Fetch {
                    job_id,
                    file,
                    offset,
                    len,
                },
            ) => {
                self.cluster.touch(&node, now);
                self.serve_fetch(&node, job_id, file, offset, len);
            }
            (_, msg) => {
                let what = msg.describe();
                self.peer_log.warn(
                    &node,
                    now.at,
                    format_args!("dropped an unexpected {what} on the {name} port"),
                );
            }
        }
    }

    /// Serve one chunk of a job's file, or say why not. A node gets only the
    /// files of its own running ADD job, whatever it asks.
    fn serve_fetch(&mut self, node: &str, job_id: Uuid, file: u32, offset: u64, len: u32) {
        let chunk = self
            .cluster
            .source_for(node, &job_id, file)
            .and_then(|src| files::read_chunk(&src, offset, len.min(wire::CHUNK)));
        let p = &mut self.ports[Port::Transfer as usize];
        let mut frames = vec![node.as_bytes().to_vec()];
        match chunk {
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
                self.peer_log.warn(node, Instant::now(), msg);
                frames.extend(wire::encode(&ServerMsg::FetchError {
                    job_id,
                    file,
                    message,
                }));
            }
        }
        p.queue(frames);
    }

    fn handle_unroutable(&mut self, port: Port, identity: &[u8], frames: &[Vec<u8>]) {
        let node = String::from_utf8_lossy(identity);
        log::debug!(
            "node={node}: unroutable on the {} port (peer gone)",
            self.ports[port as usize].name
        );
        if let Ok(ServerMsg::Job { job_id, .. }) =
            wire::decode::<ServerMsg>(frames.get(1..).unwrap_or(&[]))
        {
            log::warn!(
                "node={node}: job {job_id} could not be delivered (node disconnected); kept queued"
            );
            self.cluster.unroutable(&node, job_id);
            self.record(&Record::Unsent {
                id: job_id,
                node: node.into_owned(),
            });
        }
    }

    fn send(&mut self, port: Port, node: &str, msg: &ServerMsg) {
        let p = &mut self.ports[port as usize];
        log::debug!("node={node} {} -> {}", p.name, msg.describe());
        let mut frames = vec![node.as_bytes().to_vec()];
        frames.extend(wire::encode(msg));
        p.queue(frames);
    }

    /// Carry out what the cluster decided.
    fn apply(&mut self, mut effects: Vec<Effect>) {
        for effect in effects.drain(..) {
            match effect {
                Effect::Send { node, msg } => match msg {
                    // "Recorded" only once the result is on disk.
                    ServerMsg::ResultAck { .. } => self.acks.push((node, msg)),
                    // A job goes at once: if the server dies before its
                    // record is durable, the node's Ready says it has it.
                    ServerMsg::Job { job_id, .. } => {
                        self.record(&Record::Sent {
                            id: job_id,
                            node: node.clone(),
                            sent_ms: crate::clock::now_ms(),
                        });
                        self.send(Port::Job, &node, &msg)
                    }
                    msg => self.send(Port::Job, &node, &msg),
                },
                Effect::PartDone { job_id, node } => {
                    if let Some(rec) = self.cluster.done_record(&job_id, &node) {
                        self.record(&rec);
                    }
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
        // Keep the allocation for the next batch.
        self.effects = effects;
    }

    /// Answer a submission, then carry out its effects: the answer must
    /// reach the waiter before any progress it causes.
    fn answer_then_apply(&mut self, token: Token, resp: Response, effects: Vec<Effect>) {
        let new_jobs: Vec<Uuid> = match &resp {
            Response::Submitted(s) => vec![s.job_id],
            Response::Orchestrated(plan) => plan.jobs.iter().filter_map(|j| j.job_id).collect(),
            _ => Vec::new(),
        };
        for id in new_jobs {
            if let Some(rec) = self.cluster.submitted(&id) {
                self.record(&rec);
            }
        }
        self.notes.push((token, resp));
        self.apply(effects);
    }

    fn record(&mut self, rec: &Record) {
        if let Err(e) = self.history.append(rec) {
            log::error!(
                "cannot write the job history {}: {e}",
                self.history.path().display()
            );
        }
        self.commit_at
            .get_or_insert_with(|| Instant::now() + COMMIT_IVL);
    }

    /// Group commit: once the oldest unsynced record is `COMMIT_IVL` old,
    /// sync, then send what waited for it (result acks, answers, progress).
    /// With nothing unsynced, that goes at once. True if acks were queued.
    fn commit(&mut self, now: Instant) -> bool {
        match self.commit_at {
            Some(at) if at > now => return false,
            Some(_) => {
                if let Err(e) = self.history.sync() {
                    log::error!(
                        "cannot sync the job history {}: {e}",
                        self.history.path().display()
                    );
                }
                self.commit_at = None;
            }
            None => {}
        }
        let acked = self.release_acks();
        self.flush_notes();
        acked
    }

    /// Queue the result acks that waited for the sync; true if any.
    fn release_acks(&mut self) -> bool {
        let acks = std::mem::take(&mut self.acks);
        let any = !acks.is_empty();
        for (node, msg) in acks {
            self.send(Port::Job, &node, &msg);
        }
        any
    }

    /// Send the queued answers and progress, in order.
    fn flush_notes(&mut self) {
        let mut dead = Vec::new();
        for (token, resp) in std::mem::take(&mut self.notes) {
            if let Some(conn) = self.conns.get_mut(&token) {
                if let Err(e) = conn.send(&resp) {
                    log::debug!("control connection dropped: {e}");
                    dead.push(token);
                }
            }
        }
        for token in dead {
            self.close_control(token);
        }
    }

    /// Push `resp` to every connection waiting on `id` (a job or a run).
    fn notify(&mut self, job_id: &Uuid, resp: &Response) {
        let Some(tokens) = self.waiters.get(job_id) else {
            return;
        };
        for token in tokens {
            self.notes.push((*token, resp.clone()));
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
            }
        }
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
            Inbound::Requests(r) => (r, false),
            Inbound::Closed(r) => (r, true),
            Inbound::Corrupt(e) => {
                log::warn!("control connection sent a bad request ({e}); closed");
                self.close_control(token);
                return;
            }
        };
        // Every answer goes through `notes`, so a connection's answers keep
        // their order whether or not they wait for the history to sync.
        for req in requests {
            if let Some(resp) = self.handle_request(token, req) {
                self.notes.push((token, resp));
            }
        }
        if closed {
            // A peer that stopped writing may still read what needs no sync.
            if self.commit_at.is_none() {
                self.flush_notes();
            }
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
                self.answer_then_apply(token, resp, out);
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
                self.answer_then_apply(token, resp, out);
                return None;
            }
            Request::ListNodes => Response::Nodes(self.cluster.list_nodes()),
            Request::ListJobs => Response::Jobs(self.cluster.list_jobs()),
            Request::JobInfo { id } => match self.cluster.job_info(&id) {
                Some(detail) => Response::Job(detail),
                None => Response::Rejected(format!("no job with id {id}")),
            },
            Request::PurgeJobs => {
                let (purged, kept) = self.cluster.purge_jobs();
                if let Err(e) = self.history.rewrite(self.cluster.snapshot()) {
                    log::error!(
                        "cannot rewrite the job history {}: {e}",
                        self.history.path().display()
                    );
                }
                Response::Purged { purged, kept }
            }
            Request::PurgeNodes => {
                let (purged, kept) = self.cluster.purge_nodes();
                Response::Purged { purged, kept }
            }
        };
        Some(resp)
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

/// A peer's interval, bounded so a bad value cannot expire it at once or
/// keep it forever.
fn ivl_from_ms(ms: u64) -> Duration {
    Duration::from_millis(ms.clamp(10, 86_400_000))
}

/// Bind the control socket, replacing a stale socket file but never a live
/// server's.
fn bind_control(path: &PathBuf) -> Result<UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::Config(format!(
                "another director server is already listening on {}",
                path.display()
            )));
        }
        let _ = std::fs::remove_file(path);
    }
    UnixListener::bind(path).map_err(|e| {
        Error::io(
            format!("cannot bind the control socket {}", path.display()),
            e,
        )
    })
}
