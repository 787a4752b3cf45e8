//! The simulator: one server core and several client cores in one
//! process, over a simulated network, clock, disk and processes, as
//! nakamoto runs its protocol. The cores are the daemons' own
//! (`server::core::Core`, `client::core::Core`); only what the loops do
//! around them is simulated here, the way ZeroMQ and the kernel behave:
//!
//! - Each client has three connections; messages on one arrive in order
//!   after a delay drawn from the seed, and messages on different ones
//!   overtake each other. A connection that breaks loses what was on the
//!   wire; what a client queued while the server was away goes out when it
//!   is back (libzmq reconnects by itself); a client that closes its sockets
//!   loses what they held. A send to a node with no connection is
//!   unroutable, as `ZMQ_ROUTER_MANDATORY` makes it.
//! - Journal writes (the server's history, a client's cache and ledger)
//!   reach the disk when their I/O task runs, in order, after a delay; a
//!   crash loses the tasks not run yet. A restart opens the same files.
//! - A command "runs" for a drawn time and exits 0; every start is counted
//!   per node and job, which is what "never twice" is checked against.
//!
//! - On etcd (`on_etcd`), each start of the server is a failover: another
//!   server, on an empty directory of its own, reads the log from a model
//!   of etcd (`server::ha::model`, which also loses answers before and
//!   after writing) and leads under a new fence, as a standby taking over
//!   does; the nodes are the same.
//! - On etcd, the active server may also be paused (`pause_server`)
//!   instead of killed: another takes over, and the paused one wakes
//!   beside it later, acting on what it held (its queued writes, the
//!   nodes still connected to it) for a while before its election stops
//!   it, as a leader whose clock missed the pause would. Its writes carry
//!   the old fence and are refused; it steps down at the first.
//!
//! Time is simulated (`Now` from the simulated clock), so a test can say
//! "the node expires at the third missed interval" to the millisecond and
//! run an hour of cluster life in a moment. Everything is drawn from the
//! seed: the schedule (delays, crashes, submissions), the ids the server
//! makes, and (in test builds) the cores' hash orders: the same seed runs
//! the same way, so a failing seed is a reproducible case.

mod props;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::Token;
use uuid::Uuid;

use crate::client::core::{self as ccore, Channel};
use crate::client::exec::Spawn;
use crate::client::link::{self, Link};
use crate::client::runner::{IoDone as ClientIoDone, IoTask as ClientIoTask, Runner};
use crate::curve::{KeyPair, SharedKey};
use crate::dsl::{Task, Verb};
use crate::reactor::child::{Capture, Ended};
use crate::reactor::zmq::Inbound;
use crate::server::core::{self as score, Auth, CurveAuth};
use crate::server::io::{IoDone as ServerIoDone, IoTask as ServerIoTask};
use crate::server::keys::{KeyRecord, Keys};
use crate::server::persist::Persist;
use crate::server::routes::Port;
use crate::support::clock::Now;
use crate::wire::{self, ClientMsg, Exit, Request, Response, ServerMsg};

/// A small, fast, reproducible generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// How hostile the world is.
#[derive(Clone, Copy, Debug)]
pub struct Faults {
    /// One-way delay on a connection, in milliseconds.
    pub delay_ms: (u64, u64),
    /// How long a journal write takes to reach the disk.
    pub disk_ms: (u64, u64),
    /// How long a command runs.
    pub run_ms: (u64, u64),
    /// Per mille of messages delivered twice, as a peer that resends
    /// (or a bug that sends again) would: every message must be safe to
    /// receive twice.
    pub dup_per_mille: u64,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            delay_ms: (1, 20),
            disk_ms: (1, 10),
            run_ms: (1, 200),
            dup_per_mille: 0,
        }
    }
}

/// The node's end of one of its three connections, or the server's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Dir {
    Up,
    Down,
}

/// A message on the wire.
#[derive(Clone)]
struct Packet {
    at: Instant,
    /// Up: the paused server it goes to (`None`: the active one).
    to: Option<u64>,
    node: usize,
    /// The client link it was sent on (a reopened link is a new one).
    link: u64,
    channel: Channel,
    dir: Dir,
    frames: Vec<Vec<u8>>,
}

/// A running simulated command.
struct Proc {
    ends: Instant,
    job_id: Uuid,
}

/// One client: its core while it runs, and its directory.
pub struct Client {
    pub name: String,
    dir: PathBuf,
    core: Option<ccore::Core>,
    /// Its link's sockets are open; the number tells one opening from the
    /// next.
    link: Option<u64>,
    /// The link was open to a server that was then paused: it reaches
    /// that one (by its generation), not the active one.
    link_to: Option<u64>,
    links: u64,
    timers: Vec<(Instant, ccore::Timer)>,
    io: VecDeque<(Instant, ClientIoTask)>,
    procs: Vec<Proc>,
    /// Sent while the server was away, per channel: goes out when it is
    /// back (libzmq queues for a connection being re-established).
    held: Vec<(Channel, Vec<Vec<u8>>)>,
    /// Every start of every job here.
    pub starts: BTreeMap<Uuid, u32>,
    pub instances: u64,
    /// Its routing id at the server: its name without CURVE (it sets it),
    /// one of libzmq's own with it.
    rid: Vec<u8>,
    /// Its key pair (used with CURVE), kept across its restarts as its key
    /// file is.
    key: KeyPair,
    /// The shared key it was given, if any.
    shared: Option<String>,
    /// Why the server would not have it, once it said so (it stopped).
    pub refused: Option<String>,
}

/// The server's CURVE setup.
struct Curve {
    pair: KeyPair,
    shared: Option<String>,
}

/// The server: its core while it runs.
struct Server {
    /// Which start of the server this is (on etcd: its fence).
    gen: u64,
    core: Option<score::Core>,
    dir: PathBuf,
    io: VecDeque<(Instant, ServerIoTask)>,
    /// What each control connection was told, in order.
    notes: BTreeMap<Token, Vec<Response>>,
    tokens: usize,
}

/// The simulated cluster.
pub struct Sim {
    pub rng: Rng,
    pub faults: Faults,
    t0: Instant,
    ms0: u64,
    pub elapsed: Duration,
    pub ivl: Duration,
    net: Vec<Packet>,
    /// Per connection and direction, when the last message arrives (so
    /// one connection stays in order).
    last_at: BTreeMap<(usize, u64, u8, Dir), Instant>,
    server: Server,
    pub clients: Vec<Client>,
    root: PathBuf,
    /// Jobs the server acknowledged to a submitter.
    pub acked: Vec<Uuid>,
    /// When the server last heard from each node.
    pub last_heard: Vec<Option<Duration>>,
    /// With CURVE: the server's keys (nodes prove themselves by key).
    curve: Option<Curve>,
    pub log: Vec<String>,
    /// Servers on etcd: each start of the server is another server taking
    /// over from the log in a model of etcd, on a directory of its own.
    etcd: Option<Etcd>,
    /// A paused server, and when it wakes and when its election stops it
    /// (set once another has taken over).
    zombie: Option<Zombie>,
}

struct Zombie {
    server: Server,
    wakes: Option<(Instant, Instant)>,
}

/// When a paused server reads a message.
enum Reads {
    Now,
    At(Instant),
    Never,
}

/// Which server an action is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Active,
    Paused,
}

/// The model of etcd the servers share, and how many have led.
struct Etcd {
    store: std::sync::Arc<std::sync::Mutex<crate::server::ha::model::Store>>,
    generation: i64,
}

impl Sim {
    /// A cluster of `nodes` clients (named n0, n1, ...) beating every
    /// `ivl`, with everything drawn from `seed`.
    pub fn new(test: &str, seed: u64, nodes: usize, ivl: Duration) -> Sim {
        Sim::build(test, seed, nodes, ivl, None)
    }

    /// The same with CURVE: the server derives its keys from `shared`
    /// when given (each node then knows it too), else has a key of its own
    /// and nodes wait for an operator's acceptance.
    pub fn with_curve(
        test: &str,
        seed: u64,
        nodes: usize,
        ivl: Duration,
        shared: Option<&str>,
    ) -> Sim {
        let pair = match shared {
            Some(s) => {
                let sk = SharedKey::derive(s).expect("a shared key");
                KeyPair::from_secret(*sk.server().secret.as_bytes())
            }
            None => KeyPair::generate(),
        };
        let shared = shared.map(str::to_owned);
        Sim::build(test, seed, nodes, ivl, Some(Curve { pair, shared }))
    }

    fn build(test: &str, seed: u64, nodes: usize, ivl: Duration, curve: Option<Curve>) -> Sim {
        // Ids from the seed too: the same seed, the same run.
        crate::support::hash::seed_ids(seed);
        let root =
            std::env::temp_dir().join(format!("director-sim-{test}-{seed}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("a temporary directory");
        let mut sim = Sim {
            rng: Rng::new(seed),
            faults: Faults::default(),
            t0: Instant::now(),
            ms0: 1_800_000_000_000,
            elapsed: Duration::ZERO,
            ivl,
            net: Vec::new(),
            last_at: BTreeMap::new(),
            server: Server {
                gen: 0,
                core: None,
                dir: root.join("server"),
                io: VecDeque::new(),
                notes: BTreeMap::new(),
                tokens: 100,
            },
            clients: Vec::new(),
            root: root.clone(),
            acked: Vec::new(),
            last_heard: Vec::new(),
            curve,
            log: Vec::new(),
            etcd: None,
            zombie: None,
        };
        sim.start_server();
        for i in 0..nodes {
            let shared = sim.curve.as_ref().and_then(|c| c.shared.clone());
            sim.add_client(&format!("n{i}"), shared);
        }
        sim
    }

    /// A new client process named `name`, knowing `shared` (with CURVE),
    /// started; its index.
    pub fn add_client(&mut self, name: &str, shared: Option<String>) -> usize {
        let i = self.clients.len();
        let rid = match self.curve {
            Some(_) => format!("rid-{i}").into_bytes(),
            None => name.as_bytes().to_vec(),
        };
        self.clients.push(Client {
            dir: self.root.join(format!("{name}-{i}")),
            name: name.to_owned(),
            core: None,
            link: None,
            link_to: None,
            links: 0,
            timers: Vec::new(),
            io: VecDeque::new(),
            procs: Vec::new(),
            held: Vec::new(),
            starts: BTreeMap::new(),
            instances: 0,
            rid,
            key: KeyPair::generate(),
            shared,
            refused: None,
        });
        self.last_heard.push(None);
        self.start_client(i);
        i
    }

    pub fn now(&self) -> Now {
        Now {
            at: self.t0 + self.elapsed,
            ms: self.ms0 + self.elapsed.as_millis() as u64,
        }
    }

    fn draw_ms(&mut self, (lo, hi): (u64, u64)) -> Duration {
        Duration::from_millis(self.rng.range(lo, hi))
    }

    // ---- the server -------------------------------------------------

    /// From now on every start of the server is a failover: a new server
    /// reads the log in a model of etcd (which loses `fail` answers in 256
    /// before writing and as many after) into a directory of its own, and
    /// leads under a new fence.
    pub fn on_etcd(&mut self, fail: u64) {
        let seed = self.rng.next();
        self.etcd = Some(Etcd {
            store: crate::server::ha::model::Store::new(seed, fail),
            generation: 0,
        });
    }

    pub fn start_server(&mut self) {
        let now = self.now();
        let mut replica = None;
        self.server.gen += 1;
        if let Some(e) = &mut self.etcd {
            e.generation += 1;
            self.server.gen = e.generation as u64;
            self.server.dir = self.root.join(format!("server-{}", e.generation));
            let seq = crate::server::ha::model::read_log(&e.store, &self.server.dir);
            e.store.lock().expect("the model").fence = e.generation;
            replica = Some(crate::server::ha::replicate::Replica::new(
                crate::server::ha::model::Store::shared(&e.store),
                crate::server::ha::entries::Keys::new("/m"),
                e.generation,
                seq,
                &self.server.dir,
            ));
        }
        std::fs::create_dir_all(&self.server.dir).expect("the server's directory");
        let (cluster, history) = crate::server::restore(
            &self.server.dir,
            self.ivl,
            (Duration::from_secs(86_400), 100_000),
            now,
        )
        .expect("the server's history opens");
        let (auth, keys) = match &self.curve {
            None => (Auth::Off, None),
            Some(c) => {
                let (journal, records) = crate::journal::Journal::open::<KeyRecord>(
                    &self.server.dir,
                    crate::server::keys::FILE,
                )
                .expect("the key table opens");
                let auth = Auth::Curve(Box::new(CurveAuth {
                    pair: KeyPair::from_secret(*c.pair.secret.as_bytes()),
                    source: "the simulator".into(),
                    shared: c
                        .shared
                        .as_deref()
                        .map(|s| SharedKey::derive(s).expect("a shared key")),
                    keys: Keys::restore(records),
                }));
                (auth, Some(journal))
            }
        };
        let mut persist = Persist::new(history, keys);
        // As the server does after a failover: nodes get more time to
        // find it.
        let grace = match replica {
            Some(r) => {
                persist = persist.with_replica(r);
                self.ivl * 5
            }
            None => Duration::ZERO,
        };
        let mut core = score::Core::new(
            cluster,
            persist,
            auth,
            self.ivl,
            (Duration::from_secs(86_400), 100_000),
            now,
        );
        core.start(grace);
        self.server.core = Some(core);
        self.server.notes.clear();
        match &self.etcd {
            Some(e) => {
                let line = format!("server {} took over from the log", e.generation);
                self.note(&line);
            }
            None => self.note("server started"),
        }
        self.server_perform();
    }

    /// kill -9: what was not on disk is gone, and every connection with it.
    /// What the server had handed the kernel may still arrive (a closed
    /// socket sends its buffer), or not: drawn per message.
    pub fn crash_server(&mut self) {
        self.server.core = None;
        self.server.io.clear();
        let mut net = std::mem::take(&mut self.net);
        net.retain(|p| p.dir == Dir::Down && self.rng.next().is_multiple_of(2));
        self.net = net;
        self.note("server crashed");
    }

    pub fn server_up(&self) -> bool {
        self.server.core.is_some()
    }

    /// Submit `RUN args` for `targets` (all nodes when empty), as the CLI
    /// would; the control connection's token.
    pub fn submit(&mut self, args: &str, targets: &[&str]) -> Option<Token> {
        let now = self.now();
        let core = self.server.core.as_mut()?;
        let task = Task::parse(Verb::Run, args).expect("a job string");
        let token = Token(self.server.tokens);
        self.server.tokens += 1;
        core.at(now);
        core.requests(
            token,
            vec![Request::Submit {
                task,
                targets: targets.iter().map(|t| t.to_string()).collect(),
                exclude: Vec::new(),
                wait: false,
                queue_offline: true,
                follow: false,
            }],
        );
        self.server_perform();
        Some(token)
    }

    /// The job a submission on `token` was acknowledged with, once it was.
    pub fn submitted_id(&self, token: Token) -> Option<Uuid> {
        self.server.notes.get(&token)?.iter().find_map(|r| match r {
            Response::Submitted(s) => Some(s.job_id),
            _ => None,
        })
    }

    /// Ask the server a question and run the world until it answers.
    pub fn ask(&mut self, req: Request) -> Option<Response> {
        let token = Token(self.server.tokens);
        self.server.tokens += 1;
        let now = self.now();
        let core = self.server.core.as_mut()?;
        core.at(now);
        core.requests(token, vec![req]);
        self.server_perform();
        for _ in 0..1000 {
            if let Some(r) = self.server.notes.get_mut(&token).and_then(|n| n.pop()) {
                return Some(r);
            }
            self.step();
        }
        None
    }

    fn server_perform(&mut self) {
        self.perform(Who::Active);
    }

    fn srv(&mut self, who: Who) -> Option<&mut Server> {
        match who {
            Who::Active => Some(&mut self.server),
            Who::Paused => self.zombie.as_mut().map(|z| &mut z.server),
        }
    }

    fn perform(&mut self, who: Who) {
        loop {
            let Some(core) = self.srv(who).and_then(|s| s.core.as_mut()) else {
                return;
            };
            let outs = core.take_out();
            if outs.is_empty() {
                return;
            }
            for out in outs {
                self.server_out(who, out);
            }
        }
    }

    fn server_out(&mut self, who: Who, out: score::Out) {
        let paused = self.zombie.as_ref().map(|z| z.server.gen);
        match out {
            score::Out::Zmq {
                port,
                frames,
                about,
            } => {
                let channel = match port {
                    Port::Job => Channel::Job,
                    Port::Transfer => Channel::Transfer,
                    Port::Heartbeat => Channel::Heartbeat,
                };
                // A node reaches the paused server on the link it had open
                // to it, and the active one on any other.
                let reaches = |c: &Client| match who {
                    Who::Active => paused.is_none() || c.link_to != paused,
                    Who::Paused => c.link_to.is_some() && c.link_to == paused,
                };
                let node = self.clients.iter().position(|c| c.rid == frames[0]);
                match node.and_then(|i| {
                    let c = &self.clients[i];
                    c.link.filter(|_| reaches(c)).map(|l| (i, l))
                }) {
                    Some((i, link)) => {
                        self.send_packet(i, link, channel, Dir::Down, frames[1..].to_vec())
                    }
                    None => {
                        let now = self.now();
                        if let Some(core) = self.srv(who).and_then(|s| s.core.as_mut()) {
                            core.at(now);
                            core.unroutable(port, &frames[0], about);
                        }
                    }
                }
            }
            score::Out::Note { token, resp } | score::Out::Live { token, resp } => {
                if let Response::Submitted(s) = &resp {
                    self.acked.push(s.job_id);
                }
                if let Some(srv) = self.srv(who) {
                    srv.notes.entry(token).or_default().push(resp);
                }
            }
            score::Out::Io(task) => {
                let at = self.now().at + self.draw_ms(self.faults.disk_ms);
                if let Some(srv) = self.srv(who) {
                    let at = srv.io.back().map_or(at, |(last, _)| at.max(*last));
                    srv.io.push_back((at, task));
                }
            }
        }
    }

    /// On etcd: pause the active server (SIGSTOP, a frozen VM) rather than
    /// kill it. It keeps what it held; the nodes connected to it stay so
    /// until they call it gone. The next `restart_server` is another
    /// server taking over, and sets when this one wakes beside it.
    pub fn pause_server(&mut self) {
        if self.zombie.is_some() || self.server.core.is_none() {
            return self.crash_server();
        }
        let gen = self.server.gen;
        let fresh = Server {
            gen,
            core: None,
            dir: self.server.dir.clone(),
            io: VecDeque::new(),
            notes: BTreeMap::new(),
            tokens: self.server.tokens,
        };
        let server = std::mem::replace(&mut self.server, fresh);
        self.zombie = Some(Zombie {
            server,
            wakes: None,
        });
        for c in &mut self.clients {
            if c.link.is_some() {
                c.link_to = Some(gen);
            }
        }
        self.note(&format!("server {gen} paused"));
    }

    fn zombie_awake(&self) -> bool {
        let now = self.now().at;
        self.zombie
            .as_ref()
            .and_then(|z| z.wakes)
            .is_some_and(|(wake, _)| wake <= now)
    }

    /// The paused server is gone (it stepped down): the links the nodes
    /// kept to its address reach whoever answers there now.
    fn zombie_gone(&mut self, why: &str) {
        let Some(z) = self.zombie.take() else { return };
        let gen = z.server.gen;
        for c in &mut self.clients {
            if c.link_to == Some(gen) {
                c.link_to = None;
            }
        }
        self.net.retain(|p| p.to != Some(gen));
        self.note(&format!("server {gen} stepped down: {why}"));
    }

    // ---- the clients ------------------------------------------------

    pub fn start_client(&mut self, i: usize) {
        let now = self.now();
        let ivl = self.ivl;
        let seed = self.rng.next();
        let c = &mut self.clients[i];
        std::fs::create_dir_all(&c.dir).expect("a client's directory");
        let cache = crate::client::cache::Cache::open(&c.dir, Duration::from_secs(86_400), now.ms)
            .expect("the cache opens");
        let ledger = crate::client::ledger::Ledger::open(&c.dir).expect("the ledger opens");
        let runner = Runner::new(
            cache,
            ledger,
            Duration::from_secs(5),
            crate::facts::Node::default(),
            c.dir.join("blueprints"),
            now,
        );
        let names = link::Names {
            identity: c.name.clone(),
            fingerprint: c.key.public.fingerprint(),
            ..Default::default()
        };
        let proof = c.shared.as_deref().map_or_else(Vec::new, |s| {
            let sk = SharedKey::derive(s).expect("a shared key");
            sk.proof(&c.key.public).to_vec()
        });
        c.instances += 1;
        let me = ccore::Identity {
            name: c.name.clone(),
            proof,
            instance: seed,
        };
        let mut core = ccore::Core::new(Link::new(names, ivl, seed), runner, me, now);
        core.start();
        c.core = Some(core);
        let name = c.name.clone();
        self.note(&format!("{name} started"));
        self.client_perform(i);
    }

    /// kill -9 of a client: its commands go on as orphans (counted as
    /// started already), what it had not written is gone.
    pub fn crash_client(&mut self, i: usize) {
        self.gone(i, "crashed");
    }

    /// Client `i`'s process is gone, with what it had not written and
    /// every connection of its; `how`, for the story.
    fn gone(&mut self, i: usize, how: &str) {
        let c = &mut self.clients[i];
        c.core = None;
        c.link = None;
        c.link_to = None;
        c.timers.clear();
        c.io.clear();
        c.procs.clear();
        c.held.clear();
        let name = c.name.clone();
        self.net.retain(|p| p.node != i);
        self.note(&format!("{name} {how}"));
    }

    fn client_perform(&mut self, i: usize) {
        loop {
            let Some(core) = self.clients[i].core.as_mut() else {
                return;
            };
            let outs = core.take_out();
            if outs.is_empty() {
                return;
            }
            for out in outs {
                self.client_out(i, out);
            }
        }
    }

    fn client_out(&mut self, i: usize, out: ccore::Out) {
        let now = self.now();
        match out {
            ccore::Out::Send(channel, msg) => {
                let Some(link) = self.clients[i].link else {
                    return;
                };
                let frames = wire::encode(&msg);
                // To a paused server the kernel takes it (it is read on
                // waking); to a server that is down, libzmq holds it.
                if self.server_up() || self.clients[i].link_to.is_some() {
                    self.send_packet(i, link, channel, Dir::Up, frames);
                } else {
                    self.clients[i].held.push((channel, frames));
                }
            }
            ccore::Out::Open => {
                let c = &mut self.clients[i];
                c.links += 1;
                c.link = Some(c.links);
                c.link_to = None;
                if let Some(core) = c.core.as_mut() {
                    core.at(now);
                    core.opened();
                }
            }
            ccore::Out::Close => {
                let c = &mut self.clients[i];
                c.link = None;
                c.link_to = None;
                c.held.clear();
                self.net.retain(|p| p.node != i);
            }
            ccore::Out::Probe => {}
            ccore::Out::Timer(at, t) => self.clients[i].timers.push((at, t)),
            ccore::Out::Io(task) => {
                let at = now.at + self.draw_ms(self.faults.disk_ms);
                let c = &mut self.clients[i];
                let at = c.io.back().map_or(at, |(last, _)| at.max(*last));
                c.io.push_back((at, task));
            }
            ccore::Out::Spawn(Spawn { job_id, .. }) => {
                let ends = now.at + self.draw_ms(self.faults.run_ms);
                let c = &mut self.clients[i];
                *c.starts.entry(job_id).or_insert(0) += 1;
                c.procs.push(Proc { ends, job_id });
            }
            ccore::Out::Signal(job_id, _) => {
                let c = &mut self.clients[i];
                for p in c.procs.iter_mut().filter(|p| p.job_id == job_id) {
                    p.ends = now.at;
                }
            }
            ccore::Out::GoLive(_) => {}
            ccore::Out::Refuse(why) => {
                // The client stops: nothing more from it.
                self.gone(i, &format!("refused: {why}"));
                self.clients[i].refused = Some(why);
            }
        }
    }

    // ---- the network ------------------------------------------------

    fn send_packet(
        &mut self,
        node: usize,
        link: u64,
        channel: Channel,
        dir: Dir,
        frames: Vec<Vec<u8>>,
    ) {
        let at = self.now().at + self.draw_ms(self.faults.delay_ms);
        let key = (node, link, channel as u8, dir);
        let at = self.last_at.get(&key).map_or(at, |last| at.max(*last));
        self.last_at.insert(key, at);
        let to = match dir {
            Dir::Up => self.clients[node].link_to,
            Dir::Down => None,
        };
        let packet = Packet {
            at,
            to,
            node,
            link,
            channel,
            dir,
            frames,
        };
        if self.rng.range(0, 999) < self.faults.dup_per_mille {
            self.net.push(packet.clone());
        }
        self.net.push(packet);
    }

    fn deliver(&mut self, p: Packet) {
        let now = self.now();
        if self.clients[p.node].link != Some(p.link) {
            return; // the connection is gone
        }
        match p.dir {
            Dir::Up => {
                let who = match p.to {
                    None => Who::Active,
                    Some(gen) => match self.paused_reads(gen) {
                        Reads::Now => Who::Paused,
                        Reads::At(at) => {
                            let mut p = p;
                            p.at = at;
                            self.net.push(p);
                            return;
                        }
                        Reads::Never => return,
                    },
                };
                if self.srv(who).is_none_or(|s| s.core.is_none()) {
                    return;
                }
                let port = match p.channel {
                    Channel::Job => Port::Job,
                    Channel::Transfer => Port::Transfer,
                    Channel::Heartbeat => Port::Heartbeat,
                };
                if who == Who::Active {
                    self.last_heard[p.node] = Some(self.elapsed);
                }
                let user_id = self
                    .curve
                    .as_ref()
                    .map(|_| self.clients[p.node].key.public.z85());
                let mut frames = vec![self.clients[p.node].rid.clone()];
                frames.extend(p.frames);
                if let Ok(m) = wire::decode::<ClientMsg>(&frames[1..]) {
                    let to = match who {
                        Who::Active => "server",
                        Who::Paused => "paused server",
                    };
                    let line = format!("{} -> {to}: {}", self.clients[p.node].name, m.describe());
                    self.note(&line);
                }
                let Some(core) = self.srv(who).and_then(|s| s.core.as_mut()) else {
                    return;
                };
                core.at(now);
                core.message(
                    port,
                    Inbound {
                        frames,
                        user_id,
                        peer_address: Some("10.0.0.1".into()),
                    },
                );
                self.perform(who);
            }
            Dir::Down => {
                if self.clients[p.node].core.is_none() {
                    return;
                }
                let Ok((msg, payload)) = wire::decode_with_payload::<ServerMsg>(p.frames) else {
                    panic!("the server sent what does not decode");
                };
                let line = format!(
                    "server -> {}: {}",
                    self.clients[p.node].name,
                    msg.describe()
                );
                self.note(&line);
                let Some(core) = self.clients[p.node].core.as_mut() else {
                    return;
                };
                core.at(now);
                core.message(p.channel, msg, payload);
                self.client_perform(p.node);
            }
        }
    }

    /// When the paused server `gen` reads what comes on a link to it.
    fn paused_reads(&self, gen: u64) -> Reads {
        match &self.zombie {
            // Gone, and the connection with it.
            None => Reads::Never,
            Some(z) if z.server.gen != gen => Reads::Never,
            Some(_) if self.zombie_awake() => Reads::Now,
            // The kernel holds it until the process runs again.
            Some(z) => Reads::At(z.wakes.map_or(self.now().at + self.ivl, |(wake, _)| wake)),
        }
    }

    // ---- time -------------------------------------------------------

    /// The next thing that happens, when.
    fn next_event(&self) -> Option<(Instant, Event)> {
        let mut best: Option<(Instant, Event)> = None;
        let mut consider = |at: Instant, e: Event| {
            if best.as_ref().is_none_or(|(b, _)| at < *b) {
                best = Some((at, e));
            }
        };
        for (k, p) in self.net.iter().enumerate() {
            consider(p.at, Event::Packet(k));
        }
        if let Some(core) = &self.server.core {
            if let Some(at) = core.next_deadline() {
                consider(at, Event::ServerTick);
            }
        }
        if let Some((at, _)) = self.server.io.front() {
            consider(*at, Event::ServerIo);
        }
        if let Some(z) = &self.zombie {
            if let Some((wake, gone)) = z.wakes {
                consider(gone, Event::PausedGone);
                if let Some(at) = z.server.core.as_ref().and_then(|c| c.next_deadline()) {
                    consider(at.max(wake), Event::PausedTick);
                }
                if let Some((at, _)) = z.server.io.front() {
                    consider((*at).max(wake), Event::PausedIo);
                }
            }
        }
        for (i, c) in self.clients.iter().enumerate() {
            if c.core.is_none() {
                continue;
            }
            for (k, (at, _)) in c.timers.iter().enumerate() {
                consider(*at, Event::ClientTimer(i, k));
            }
            if let Some((at, _)) = c.io.front() {
                consider(*at, Event::ClientIo(i));
            }
            for (k, p) in c.procs.iter().enumerate() {
                consider(p.ends, Event::Exit(i, k));
            }
        }
        best
    }

    /// Run the next event; false when nothing is left to happen.
    pub fn step(&mut self) -> bool {
        // Work that waits for nothing first, as the loops do.
        let now = self.now();
        for i in 0..self.clients.len() {
            if let Some(core) = self.clients[i].core.as_mut() {
                if core.wants_tick() {
                    core.at(now);
                    core.tick();
                    self.client_perform(i);
                    return true;
                }
            }
        }
        let Some((at, event)) = self.next_event() else {
            return false;
        };
        let now = self.t0 + self.elapsed;
        if at > now {
            self.elapsed = at - self.t0;
        }
        let now = self.now();
        match event {
            Event::Packet(k) => {
                let p = self.net.swap_remove(k);
                self.deliver(p);
            }
            Event::ServerTick => {
                if let Some(core) = self.server.core.as_mut() {
                    core.at(now);
                    core.tick();
                }
                self.server_perform();
            }
            Event::ServerIo => {
                let Some((_, task)) = self.server.io.pop_front() else {
                    return true;
                };
                let done = task.run();
                if let Some(core) = self.server.core.as_mut() {
                    core.at(now);
                    match done {
                        ServerIoDone::Commit(r) => core.committed(r),
                        ServerIoDone::JobInfo { token, detail } => {
                            self.server
                                .notes
                                .entry(token)
                                .or_default()
                                .push(Response::Job(*detail));
                        }
                        ServerIoDone::Chunk(_) => {}
                    }
                }
                self.server_perform();
            }
            Event::PausedTick => {
                if let Some(core) = self.srv(Who::Paused).and_then(|s| s.core.as_mut()) {
                    core.at(now);
                    core.tick();
                }
                self.perform(Who::Paused);
            }
            Event::PausedIo => {
                let Some((_, task)) = self.srv(Who::Paused).and_then(|s| s.io.pop_front()) else {
                    return true;
                };
                match task.run() {
                    // As the server: a write refused for its fence ends
                    // its lead before the core hears of it.
                    ServerIoDone::Commit(Err((_, e)))
                        if crate::server::ha::replicate::is_deposed(&e) =>
                    {
                        self.zombie_gone(&format!("its write to etcd was refused ({e})"));
                    }
                    ServerIoDone::Commit(r) => {
                        if let Some(core) = self.srv(Who::Paused).and_then(|s| s.core.as_mut()) {
                            core.at(now);
                            core.committed(r);
                        }
                    }
                    ServerIoDone::JobInfo { .. } | ServerIoDone::Chunk(_) => {}
                }
                self.perform(Who::Paused);
            }
            Event::PausedGone => self.zombie_gone("its election found its lease lost"),
            Event::ClientTimer(i, k) => {
                let (_, t) = self.clients[i].timers.swap_remove(k);
                if let Some(core) = self.clients[i].core.as_mut() {
                    core.at(now);
                    core.timer(t);
                }
                self.client_perform(i);
            }
            Event::ClientIo(i) => {
                let Some((_, task)) = self.clients[i].io.pop_front() else {
                    return true;
                };
                let done: ClientIoDone = task.run();
                if let Some(core) = self.clients[i].core.as_mut() {
                    core.at(now);
                    core.io_done(done);
                }
                self.client_perform(i);
            }
            Event::Exit(i, k) => {
                let p = self.clients[i].procs.swap_remove(k);
                if let Some(core) = self.clients[i].core.as_mut() {
                    core.at(now);
                    core.exited(
                        p.job_id,
                        Ok(Ended {
                            exit: Exit::Code(0),
                            out: Capture::default(),
                            err: Capture::default(),
                            exec_secs: 0.01,
                        }),
                    );
                }
                self.client_perform(i);
            }
        }
        true
    }

    /// Run until `d` of simulated time has passed.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.elapsed + d;
        // A core that never stops asking for work at one instant would
        // spin here: a bug to show, not a test to hang.
        let mut same_instant = 0u32;
        while self.elapsed < end {
            match self.next_event() {
                Some((at, _)) if at <= self.t0 + end => {
                    let before = self.elapsed;
                    self.step();
                    same_instant = if self.elapsed == before {
                        same_instant + 1
                    } else {
                        0
                    };
                    assert!(
                        same_instant < 1_000_000,
                        "the simulation stopped advancing at {:?}\n{}",
                        self.elapsed,
                        self.story()
                    );
                }
                _ => {
                    self.elapsed = end;
                    break;
                }
            }
        }
    }

    /// Bring the server back; what clients held for it goes out. A paused
    /// server wakes beside this one within 3 s, and acts for up to 2 s
    /// before its election stops it (if a refused write does not first).
    pub fn restart_server(&mut self) {
        self.start_server();
        if self.zombie.as_ref().is_some_and(|z| z.wakes.is_none()) {
            let wake = self.now().at + self.draw_ms((0, 3000));
            let gone = wake + self.draw_ms((0, 2000));
            if let Some(z) = &mut self.zombie {
                z.wakes = Some((wake, gone));
                let line = format!(
                    "server {} wakes at {:.3}s",
                    z.server.gen,
                    (wake - self.t0).as_secs_f64()
                );
                self.note(&line);
            }
        }
        for i in 0..self.clients.len() {
            let held = std::mem::take(&mut self.clients[i].held);
            if let Some(link) = self.clients[i].link {
                for (channel, frames) in held {
                    self.send_packet(i, link, channel, Dir::Up, frames);
                }
            }
        }
    }

    fn note(&mut self, what: &str) {
        let line = format!("{:>9.3}s {what}", self.elapsed.as_secs_f64());
        self.log.push(line);
    }

    /// The history of what the simulator did, for a failing test.
    pub fn story(&self) -> String {
        self.log.join("\n")
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[derive(Clone, Copy, Debug)]
enum Event {
    Packet(usize),
    ServerTick,
    ServerIo,
    PausedTick,
    PausedIo,
    PausedGone,
    ClientTimer(usize, usize),
    ClientIo(usize),
    Exit(usize, usize),
}
