//! The server's rules, without sockets: who a peer is and what it may do
//! (keys, names, routes), what each node message means for the cluster,
//! the control requests, what to journal and what waits for the disk,
//! expiry and housekeeping. The loop in `mod.rs` feeds it what arrived, with
//! the time read once per pass (`at`), and performs what it asks (`Out`):
//! frames to queue on a port, notes for control connections, work for the
//! I/O thread. Nothing here reads a clock or touches a socket, so the
//! simulator (`crate::sim`) runs the same rules over a simulated network.

use std::time::{Duration, Instant};

use mio::Token;
use uuid::Uuid;

use super::cluster::{Cluster, Effect, Greeting, Now};
use super::history::Record;
use super::keys::{Claim, Keys, Proof, Standing};
use super::nodes;
use super::peer_log::{Once, PeerLog};
use super::persist::{Held, Persist, Released};
use super::routes::{Port, Principal, Routes};
use super::watchers::Watchers;
use crate::curve::{KeyPair, PublicKey, SharedKey};
use crate::reactor::timers::Timers;
use crate::reactor::zmq::Inbound;
use crate::wire::{self, ClientMsg, Denial, Dispatch, KeyState, Response, ServerMsg};

/// Keys remembered as logged (name conflicts, refused handshakes), so each
/// is logged once.
pub(super) const LOGGED_ONCE_CAP: usize = 4096;
/// At most one line per this period about new pending keys.
pub(super) const PENDING_LOG_EVERY: Duration = Duration::from_secs(10);

/// What the core asks its loop to do, in order.
pub enum Out {
    /// Queue `frames` (the routing id first) on `port`; `about` says what
    /// it was, should the peer's outbox be full.
    Zmq {
        port: Port,
        frames: Vec<Vec<u8>>,
        about: About,
    },
    /// Send an answer or progress to a control connection now.
    Note { token: Token, resp: Response },
    /// Live output for a control connection that follows a job: dropped
    /// (and counted for it) if the connection lags.
    Live { token: Token, resp: Response },
    /// Hand blocking work to the I/O thread.
    Io(super::io::IoTask),
}

/// What a queued message was, to act on it if it cannot be delivered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum About {
    /// A job for a node: it goes back to the node's queue.
    Job { node: String, job_id: Uuid },
    /// An answer to a peer: said, limited per peer.
    Reply { label: String },
    /// Lost harmlessly (an ack the node asks for again, a broadcast).
    #[default]
    Quiet,
}

/// How peers prove who they are.
pub enum Auth {
    /// CurveZMQ: keys and enrolment.
    Curve(Box<CurveAuth>),
    /// `--curve off`: a node is the routing id it sets.
    Off,
}

/// What the server needs for CURVE.
pub struct CurveAuth {
    /// The server's key pair, and where it comes from (for --show-key).
    pub pair: KeyPair,
    pub source: String,
    /// With `--shared-key`: checks the proofs of clients that know it.
    pub shared: Option<SharedKey>,
    pub keys: Keys,
}
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    /// Sweep expired nodes; the generation tells a superseded timer.
    Expiry(u64),
    /// Retention, and compaction when the journal is mostly dead records.
    Housekeeping,
}

/// The server's state and rules.
pub struct Core {
    /// The time of the input being handled, set by the loop once per pass.
    pub(super) now: Now,
    pub(super) out: Vec<Out>,
    pub(super) timers: Timers<Timer>,
    pub(super) expiry: Option<(Instant, u64)>,
    pub(super) cluster: Cluster,
    /// Control connections waiting on jobs and runs, and following them.
    pub(super) watchers: Watchers,
    pub(super) effects: Vec<Effect>,
    pub(super) peer_log: PeerLog,
    /// The journals, and what waits for them to be durable.
    pub(super) persist: Persist,
    /// Released by the persistence layer, to carry out.
    pub(super) released: Released,
    /// Compact the history as soon as everything recorded is on disk.
    pub(super) compact_wanted: bool,
    /// The compaction being written: where its copied records were, to
    /// put them back if it fails.
    pub(super) compacting: Option<crate::journal::Moves>,
    /// Compactions given up (no room, a failing disk), logged once a minute.
    pub(super) compact_refused: crate::support::ratelog::Every,
    /// How long, and how many, finished jobs are kept.
    pub(super) retention: (Duration, usize),
    pub(super) auth: Auth,
    pub(super) routes: Routes,
    /// The longest heartbeat interval a node may announce (the server's own).
    pub(super) max_ivl: Duration,
    /// Keys whose claim of another key's name was logged already.
    pub(super) conflicts_logged: Once<PublicKey>,
    /// Rejected keys whose knocking was logged already.
    pub(super) refusals_logged: Once<PublicKey>,
    /// New pending keys, said at most once per period (a stranger can make
    /// thousands), with how many were not said.
    pub(super) pending_logged: crate::support::ratelog::Every,
    /// API tokens.
    pub(super) tokens: super::tokens::Tokens,
    /// On etcd: the servers as the loop last learned them.
    pub(super) cluster_view: Option<crate::wire::ClusterView>,
    /// Someone reads the API's event stream: publish to `EVENTS`.
    pub(super) publishing: bool,
    /// Who speaks on each connection (`uid N`, `token NAME`): recorded
    /// with what it submits.
    pub(super) callers: crate::support::hash::Map<Token, String>,
}

/// The notes for the API's event stream go to this token (never a
/// connection's: theirs start at 16).
pub const EVENTS: Token = Token(9);

impl Core {
    /// A core over restored state; `start` it once the ports listen.
    pub fn new(
        cluster: Cluster,
        persist: Persist,
        auth: Auth,
        max_ivl: Duration,
        retention: (Duration, usize),
        now: Now,
    ) -> Core {
        Core {
            now,
            out: Vec::new(),
            timers: Timers::default(),
            expiry: None,
            cluster,
            watchers: Watchers::default(),
            effects: Vec::new(),
            peer_log: PeerLog::default(),
            persist,
            released: Released::default(),
            compact_wanted: false,
            compacting: None,
            compact_refused: crate::support::ratelog::Every::minute(),
            retention,
            auth,
            routes: Routes::default(),
            max_ivl,
            conflicts_logged: Once::new(LOGGED_ONCE_CAP),
            refusals_logged: Once::new(LOGGED_ONCE_CAP),
            pending_logged: crate::support::ratelog::Every::new(PENDING_LOG_EVERY),
            tokens: super::tokens::Tokens::default(),
            cluster_view: None,
            publishing: false,
            callers: Default::default(),
        }
    }

    /// Who speaks on connection `token`, for the record of what it submits.
    pub fn set_caller(&mut self, token: Token, by: String) {
        self.callers.insert(token, by);
    }

    /// Whether anyone reads the API's event stream.
    pub fn set_publishing(&mut self, on: bool) {
        self.publishing = on;
    }

    /// An event for the API's stream, once what led to it is durable.
    pub(super) fn publish(&mut self, resp: Response) {
        if self.publishing {
            self.hold(Held::Note {
                token: EVENTS,
                resp,
            });
        }
    }

    /// Who an API token's secret belongs to.
    pub fn authenticate(&mut self, secret: &str) -> Option<super::tokens::Caller> {
        self.tokens.authenticate(secret, self.now.ms)
    }

    /// See `Cluster::within_scope`.
    pub fn within_scope(&self, req: &crate::wire::Request, scope: &str) -> Result<(), String> {
        self.cluster.within_scope(req, scope)
    }

    /// What the metrics read of the cluster.
    pub fn counts(&self) -> super::cluster::Counts {
        self.cluster.counts()
    }

    /// The API tokens restored from their journal.
    pub fn set_tokens(&mut self, tokens: super::tokens::Tokens) {
        self.tokens = tokens;
    }

    /// The ports listen: retention, a compaction if the journal holds dead
    /// records, and restored nodes' time to come back starts now.
    /// Start, giving restored nodes `grace` more than their 3 intervals
    /// to come back (after a failover they must first find this server).
    pub fn start(&mut self, grace: Duration) {
        self.housekeeping();
        if self.persist.history.records() > self.cluster.live_records() {
            self.compact_wanted = true;
        }
        self.cluster.listening(self.now, grace);
        if let Some(at) = self.cluster.next_expiry() {
            self.schedule_expiry(at);
        }
    }

    /// The time of what is handled next.
    pub fn at(&mut self, now: Now) {
        self.now = now;
    }

    /// What to perform, in order.
    pub fn take_out(&mut self) -> Vec<Out> {
        std::mem::take(&mut self.out)
    }

    /// When the core next has something to do by itself.
    pub fn next_deadline(&self) -> Option<Instant> {
        let timer = self.timers.next_at();
        let commit = self.persist.next_due();
        match (timer, commit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A warning about a node, limited per node.
    pub fn warn_node(&mut self, node: &str, why: &str) {
        self.peer_log.warn(node, self.now.at, format_args!("{why}"));
    }

    /// Stopping: make durable what can be (at once, on this thread), send
    /// what depends on it, and tell waiting CLIs.
    pub fn finish(&mut self) {
        let last = self.persist.finish(self.now.at);
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
        for token in self.watchers.all() {
            self.out.push(Out::Note {
                token,
                resp: Response::Stopping,
            });
        }
    }

    /// Who sent a message: its CURVE key, or with `--curve off` the name it
    /// routes by.
    fn principal(&self, port: Port, routing_id: &[u8], user_id: Option<&str>) -> Option<Principal> {
        match &self.auth {
            // A routing id is one connection, whose key never changes: a
            // peer already known on it needs no decoding of its key.
            Auth::Curve(_) => match self.routes.from(port, routing_id) {
                Some(known) => Some(known.clone()),
                None => user_id
                    .and_then(|u| PublicKey::from_z85(u).ok())
                    .map(Principal::Key),
            },
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

    /// A message from a peer on one of the three ports.
    pub fn message(&mut self, port: Port, msg: Inbound) {
        let name = port.name();
        let Inbound {
            mut frames,
            user_id,
            peer_address,
        } = msg;
        if frames.is_empty() {
            return;
        }
        let rid = frames.remove(0);
        let Some(who) = self.principal(port, &rid, user_id.as_deref()) else {
            let msg = format_args!(
                "dropped a message on the {name} port: no authenticated key or readable name"
            );
            self.peer_log.warn("?", self.now.at, msg);
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
        let now = self.now;
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
                if self.publishing {
                    if let Some(part) = self.cluster.part_view(&job_id, &node) {
                        self.publish(Response::NodeDone(part.without_output()));
                    }
                }
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
            _ => self.peer_log.warn(label, self.now.at, msg),
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
                    self.publish(Response::NodeChanged {
                        node: claimed.clone(),
                        state: "pending".into(),
                    });
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
                // A Ready is the first message on a new connection: one
                // on another routing id than the last means the node
                // reopened its sockets. (Without CURVE, its name is its
                // routing id on every connection: then only `seen` says.)
                let new_link = self.routes.to(who, Port::Job).is_some_and(|old| old != rid);
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
                    new_link,
                    about: &ready.about,
                };
                let was_online = self.cluster.is_online(&claimed);
                if self.cluster.ready(&claimed, hello, now, &mut out) {
                    log::info!(
                        "node={claimed}: registered from {address} (director {}, heartbeat every {:.1}s)",
                        ready.version,
                        ready.ivl.as_secs_f64()
                    );
                    self.schedule_expiry(now.at + ready.ivl * nodes::LIVENESS);
                }
                if !was_online {
                    self.publish(Response::NodeChanged {
                        node: claimed.clone(),
                        state: "online".into(),
                    });
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

    /// A message the port could not route (the peer's connection is
    /// gone), as it was queued.
    pub fn unroutable(&mut self, port: Port, identity: &[u8], about: About) {
        log::debug!(
            "node={}: unroutable on the {} port (peer gone)",
            String::from_utf8_lossy(identity),
            port.name()
        );
        if let About::Job { node, job_id } = about {
            self.requeue(&node, job_id, Undelivered::NoRoute);
        }
    }

    /// A job that cannot reach its node now is never dropped: it goes back
    /// to the front of the node's queue and waits for the node's next
    /// Ready (the server asks for one at its next heartbeat).
    pub(super) fn requeue(&mut self, node: &str, job_id: Uuid, why: Undelivered) {
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
    pub(super) fn reply(&mut self, port: Port, label: &str, rid: &[u8], msg: &ServerMsg) {
        log::debug!("node={label} {} -> {}", port.name(), msg.describe());
        let mut frames = Vec::with_capacity(3);
        frames.push(rid.to_vec());
        frames.extend(wire::encode(msg));
        self.out.push(Out::Zmq {
            port,
            frames,
            about: About::Reply {
                label: label.to_owned(),
            },
        });
    }

    /// Send to node `node` on the job port, where it last spoke from; why
    /// not, when it cannot be reached there now.
    pub(super) fn send(
        &mut self,
        node: &str,
        msg: &ServerMsg,
    ) -> std::result::Result<(), Undelivered> {
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
        log::debug!("node={node} job -> {}", msg.describe());
        let mut frames = Vec::with_capacity(1 + body.len());
        frames.push(rid);
        frames.extend(body.iter().cloned());
        let about = match msg {
            ServerMsg::Job { job_id, .. } => About::Job {
                node: node.to_owned(),
                job_id: *job_id,
            },
            _ => About::Quiet,
        };
        self.out.push(Out::Zmq {
            port: Port::Job,
            frames,
            about,
        });
        Ok(())
    }

    /// The loop could not queue what `about` says, the peer's outbox being
    /// full.
    pub fn undelivered(&mut self, port: Port, about: About, frames: &[Vec<u8>]) {
        match about {
            About::Job { node, job_id } => self.requeue(&node, job_id, Undelivered::Full),
            About::Reply { label } => {
                let what = wire::decode::<ServerMsg>(frames.get(1..).unwrap_or(&[]))
                    .map_or_else(|_| "message".to_owned(), |m| m.describe());
                self.peer_log.warn(
                    &label,
                    self.now.at,
                    format_args!("does not read its {} port; dropped a {what}", port.name()),
                );
            }
            About::Quiet => {}
        }
    }

    /// Carry out what the cluster decided.
    pub(super) fn apply(&mut self, mut effects: Vec<Effect>) {
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
                        // The whole stream carries states, not outputs: every
                        // reader would get every node's output otherwise
                        // (`?follow=JOB` and the job's detail carry them).
                        if let Response::NodeDone(part) = &resp {
                            self.publish(Response::NodeDone(part.without_output()));
                        }
                    }
                }
                Effect::JobDone { job_id } => {
                    if let Some(view) = self.cluster.job_view(&job_id) {
                        self.notify(&job_id, &Response::JobDone(view.clone()));
                        self.publish(Response::JobDone(view));
                    }
                    self.watchers.done(&job_id);
                }
                Effect::ParentDone { parent_id } => {
                    let jobs = self.cluster.parent_views(&parent_id);
                    log::info!("orchestration {parent_id} finished ({} jobs)", jobs.len());
                    let resp = Response::ParentDone { parent_id, jobs };
                    self.notify(&parent_id, &resp);
                    self.publish(resp);
                    self.watchers.done(&parent_id);
                }
            }
        }
        for (id, node, span) in spilled {
            self.cluster.spilled(&id, &node, span);
        }
        // Keep the allocation for the next batch.
        self.effects = effects;
    }

    pub(super) fn schedule_expiry(&mut self, at: Instant) {
        if self.expiry.is_some_and(|(cur, _)| cur <= at) {
            return;
        }
        let gen = self.expiry.map_or(0, |(_, g)| g + 1);
        self.expiry = Some((at, gen));
        self.timers.at(at, Timer::Expiry(gen));
    }

    /// The core's timers that are due, and the group commit.
    /// True if anything was done.
    pub fn tick(&mut self) -> bool {
        let now = self.now.at;
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Expiry(gen) => {
                    if self.expiry.map(|(_, g)| g) != Some(gen) {
                        continue; // superseded by an earlier deadline
                    }
                    self.expiry = None;
                    let mut out = std::mem::take(&mut self.effects);
                    for name in self.cluster.expire(self.now, &mut out) {
                        log::warn!("node={name}: expired (no heartbeat within 3 intervals); offline: jobs for it end unreachable until it is back");
                        self.publish(Response::NodeChanged {
                            node: name,
                            state: "offline".into(),
                        });
                    }
                    self.apply(out);
                    if let Some(next) = self.cluster.next_expiry() {
                        self.schedule_expiry(next);
                    }
                }
                Timer::Housekeeping => self.housekeeping(),
            }
        }
        self.commit(now)
    }
}

/// Why a message could not be queued for a node.
#[derive(Clone, Copy, Debug)]
pub(super) enum Undelivered {
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
