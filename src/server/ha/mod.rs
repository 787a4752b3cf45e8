//! Servers on etcd (issue 22): one active server and standbys that share
//! its state, the leader chosen through an etcd lease (`election`), the
//! state shared as a log of journal records in etcd (`entries`).
//!
//! The active server writes each group commit to etcd, fenced by its
//! leader key's creation revision, before its own disk, and acknowledges
//! nothing before both (`replicate`): what it acknowledged is in etcd, and
//! a deposed leader's write is refused. A standby (`standby`) follows the
//! log into its own journals; taking over is a restart from them once it
//! has read the log to its end. Each server keeps a record of itself in
//! etcd (`members`); the active one trims the log to what every live
//! standby applied and writes a base for one that lost its place.
//!
//! A leader that cannot renew its lease in time pauses (the server loop
//! services only heartbeats) and resumes if etcd renews the same lease;
//! one whose lease is gone, whose write is refused or that sees another
//! lead starts again as a standby (`server::reexec`): what it held in
//! memory and had not written may not be what etcd holds.
//!
//! The etcd calls block: elections, records and trims on the
//! `director-etcd` helper thread, the log's writes on the I/O thread with
//! the journal writes they go before, the standby's watch on a thread of
//! its own; answers come back through the loop's one waker.

pub mod entries;
pub mod members;
pub mod reads;
mod redirect;
pub mod replicate;
pub mod standby;
mod standby_api;
mod takeover;

#[cfg(test)]
pub(crate) mod model;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::Waker;

use self::members::Member;
use super::election::{Answer, Ask, Change, Election, Holder, Role};
use crate::config::EtcdConfig;
use crate::etcd::{self, Compare, Op};
use crate::reactor::worker::Worker;

/// A shared blocking etcd client, used by one helper thread at a time.
pub type SharedClient = Arc<Mutex<etcd::Client>>;

pub fn lock(c: &SharedClient) -> std::sync::MutexGuard<'_, etcd::Client> {
    c.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the helper thread hands back.
#[derive(Debug)]
enum Done {
    Election(Answer),
    /// This server's record was written (or why not).
    Reported(Result<(), String>),
    /// Every server's record (the active server reads them).
    Members(Result<Vec<Member>, String>),
    /// The log was trimmed up to this entry (or why not).
    Trimmed(Result<u64, String>),
    /// The lease given up (or why not).
    Resigned(Result<(), String>),
}

/// What the helper has in flight: one of each at most.
#[derive(Default)]
struct Asking {
    election: bool,
    report: bool,
    members: bool,
    trim: bool,
}

/// How often each server writes its record, as a part of the lease.
const REPORT_PARTS: u32 = 3;
/// How often each server reads the records (and the active server trims
/// the log).
const TRIM_IVL: Duration = Duration::from_secs(2);
/// How soon a standby that still asks for a base gets another.
const BASE_AGAIN: Duration = Duration::from_secs(30);

/// This server's record, as the loop keeps it current.
#[derive(Clone, Debug, Default)]
pub struct Me {
    pub address: String,
    pub job_port: u16,
    /// The last entry its journals hold.
    pub applied: u64,
    /// A standby that cannot follow from where it is.
    pub wants_base: bool,
    /// Its server key's fingerprint (empty with --curve off).
    pub key: String,
}

/// This server's part in the cluster: the election, its record, the log's
/// trimming and the clients.
pub struct Ha {
    pub cfg: EtcdConfig,
    pub keys: entries::Keys,
    pub me: String,
    pub record: Me,
    election: Election,
    asks: Worker<Done>,
    /// The election's ask, a report, a read of the records or a trim in
    /// flight on the helper (one each).
    asking: Asking,
    report_at: Instant,
    trim_at: Instant,
    /// The log is trimmed up to here.
    trimmed: u64,
    /// The records as last read, and how etcd answered last.
    pub members: Vec<Member>,
    pub etcd_health: Result<(), String>,
    /// A standby asks for a base: the active server writes one, and
    /// another only after `BASE_AGAIN` (a base is the whole history).
    base_wanted: bool,
    base_written: Option<Instant>,
    /// Servers whose other key pair was said.
    key_warned: std::collections::BTreeSet<String>,
    /// The election's client (on the helper thread).
    client: SharedClient,
    /// The log's client (on the I/O thread).
    pub log_client: SharedClient,
    /// The server proper runs (nodes served): until then a won lead is
    /// still being taken.
    pub serving: bool,
}

/// How long one etcd call may take per endpoint: well within the margin
/// a leader keeps before its lease may lapse.
fn call_timeout(lease: Duration) -> Duration {
    (lease / 5).clamp(Duration::from_millis(300), Duration::from_secs(2))
}

impl Ha {
    pub fn start(cfg: &EtcdConfig, me: &str, waker: Arc<Waker>, now: Instant) -> io::Result<Ha> {
        let timeout = call_timeout(cfg.lease);
        Ok(Ha {
            cfg: cfg.clone(),
            keys: entries::Keys::new(&cfg.prefix),
            me: me.to_owned(),
            record: Me::default(),
            election: Election::new(me, cfg.lease, now),
            asks: Worker::with_waker("director-etcd", waker)?,
            asking: Asking::default(),
            report_at: now,
            // The records are read at once: a standby names where the
            // active server is from them.
            trim_at: now,
            trimmed: 0,
            members: Vec::new(),
            etcd_health: Ok(()),
            base_wanted: false,
            base_written: None,
            key_warned: Default::default(),
            client: Arc::new(Mutex::new(etcd::Client::new(&cfg.endpoints, timeout))),
            log_client: Arc::new(Mutex::new(etcd::Client::new(
                &cfg.endpoints,
                Duration::from_secs(2),
            ))),
            serving: false,
        })
    }

    /// Time passed: what changed, and the next asks handed to the helper.
    pub fn tick(&mut self, now: Instant) -> Vec<Change> {
        let (ask, changes) = self.election.tick(now);
        self.leader_news(&changes, now);
        if let Some(ask) = ask {
            log::debug!("etcd: {ask:?}");
            let client = Arc::clone(&self.client);
            let (keys, me) = (self.keys.clone(), self.me.clone());
            self.asking.election = true;
            self.asks
                .submit(move || Done::Election(serve(&mut lock(&client), &keys, &me, ask)));
        }
        if now >= self.report_at && !self.asking.report {
            self.report_at = now + self.cfg.lease / REPORT_PARTS;
            self.asking.report = true;
            let record = self.member(crate::support::clock::now_ms());
            let client = Arc::clone(&self.client);
            let key = self.keys.member(&self.me);
            self.asks.submit(move || {
                let put = Op::Put {
                    key,
                    value: record.encode(),
                    lease: None,
                };
                Done::Reported(
                    lock(&client)
                        .txn(&[], &[put], &[])
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                )
            });
        }
        if now >= self.trim_at && !self.asking.members {
            self.trim_at = now + TRIM_IVL;
            self.asking.members = true;
            let client = Arc::clone(&self.client);
            let prefix = self.keys.members();
            self.asks.submit(move || {
                let r = lock(&client).range(&prefix, true).map(|(kvs, _)| {
                    kvs.iter()
                        .filter_map(|kv| Member::decode(&kv.value))
                        .collect()
                });
                Done::Members(r.map_err(|e| e.to_string()))
            });
        }
        changes
    }

    /// This server's record now.
    fn member(&self, now_ms: u64) -> Member {
        Member {
            name: self.me.clone(),
            role: self.role().into(),
            address: self.record.address.clone(),
            job_port: self.record.job_port,
            applied: self.record.applied,
            wants_base: self.record.wants_base,
            updated_ms: now_ms,
            version: env!("CARGO_PKG_VERSION").into(),
            key: self.record.key.clone(),
        }
    }

    /// Servers holding another key pair than this one: said once each.
    fn check_keys(&mut self) {
        let mine = self.record.key.clone();
        for m in &self.members {
            if m.name == self.me || m.key.is_empty() || mine.is_empty() || m.key == mine {
                continue;
            }
            if self.key_warned.insert(m.name.clone()) {
                log::warn!(
                    "server {} holds another key pair ({}) than this one ({mine}): nodes that trust one refuse the other after a failover; give every server the same --shared-key, or copy one server.key into every --state-path",
                    m.name,
                    m.key
                );
            }
        }
    }

    /// The helper's answers: what changed.
    pub fn answers(&mut self, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        for done in self.asks.drain() {
            log::debug!("etcd answered: {done:?}");
            match done {
                Done::Election(a) => {
                    self.asking.election = false;
                    self.health(match &a {
                        Answer::Granted(Err(e))
                        | Answer::Campaigned(Err(e))
                        | Answer::KeptAlive(Err(e))
                        | Answer::Leader(Err(e)) => Err(e.clone()),
                        _ => Ok(()),
                    });
                    let news = self.election.answer(a, now);
                    self.leader_news(&news, now);
                    changes.extend(news);
                }
                Done::Reported(r) => {
                    self.asking.report = false;
                    if let Err(e) = r {
                        log::debug!("cannot write this server's record to etcd: {e}");
                    }
                }
                Done::Members(r) => {
                    self.asking.members = false;
                    match r {
                        Ok(ms) => {
                            self.members = ms;
                            self.check_keys();
                            self.plan_trim(now);
                        }
                        Err(e) => log::debug!("cannot read the servers' records: {e}"),
                    }
                }
                Done::Resigned(r) => resigned(r),
                Done::Trimmed(r) => {
                    self.asking.trim = false;
                    match r {
                        Ok(upto) => {
                            log::debug!("trimmed the log in etcd up to entry {upto}");
                            self.trimmed = upto;
                        }
                        Err(e) => log::debug!("cannot trim the log: {e}"),
                    }
                }
            }
        }
        changes
    }

    /// A leader whose record was not read yet: read the records at the
    /// next tick, not at the next round.
    fn leader_news(&mut self, changes: &[Change], now: Instant) {
        for c in changes {
            if let Change::LeaderIs(Some(name)) = c {
                if self.address_of(name).is_none() {
                    self.trim_at = self.trim_at.min(now);
                }
            }
        }
    }

    /// etcd answered, or not: said once per change.
    fn health(&mut self, h: Result<(), String>) {
        match (&self.etcd_health, &h) {
            (Ok(()), Err(e)) => log::warn!("etcd does not answer: {e}"),
            (Err(_), Ok(())) => log::info!("etcd answers again"),
            _ => {}
        }
        self.etcd_health = h;
    }

    /// The active server: trim what every live standby has, and note a
    /// standby's call for a base.
    fn plan_trim(&mut self, now: Instant) {
        let Role::Leading { fence, .. } = *self.election.role() else {
            return;
        };
        let fresh = (self.cfg.lease * 3 + Duration::from_secs(10)).as_millis() as u64;
        let now_ms = crate::support::clock::now_ms();
        let (upto, wants_base) =
            members::plan(&self.members, &self.me, self.record.applied, now_ms, fresh);
        if wants_base && self.base_written.is_none_or(|at| now >= at + BASE_AGAIN) {
            self.base_wanted = true;
            self.base_written = Some(now);
        }
        if upto <= self.trimmed || self.asking.trim {
            return;
        }
        self.asking.trim = true;
        let client = Arc::clone(&self.client);
        let keys = self.keys.clone();
        self.asks.submit(move || {
            let del = Op::DeleteRange {
                key: keys.log(),
                end: keys.chunk(upto + 1, 0),
            };
            let mark = Op::Put {
                key: keys.trimmed(),
                value: upto.to_string().into_bytes(),
                lease: None,
            };
            let fenced = [Compare::CreateRevision(keys.leader(), fence)];
            let r = match lock(&client).txn(&fenced, &[del, mark], &[]) {
                Ok(t) if t.succeeded => Ok(upto),
                Ok(_) => Err("another server leads now".to_string()),
                Err(e) => Err(e.to_string()),
            };
            Done::Trimmed(r)
        });
    }

    /// Where nodes reach server `name`, as its record says.
    pub fn address_of(&self, name: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.address.as_str())
    }

    /// "active" once the server proper serves; "taking over" while a
    /// standby that won reads the log to its end.
    fn role(&self) -> &'static str {
        match self.election.role() {
            Role::Leading { .. } if self.serving => "active",
            Role::Leading { .. } => "taking over",
            Role::Standby { .. } => "standby",
        }
    }

    /// What `manage --cluster` shows, as this server sees it now.
    pub fn view(&self) -> crate::wire::ClusterView {
        let role = self.role();
        let leader = match self.election.role() {
            Role::Leading { .. } => Some(self.me.clone()),
            Role::Standby { leader } => leader.clone(),
        };
        let top = self
            .members
            .iter()
            .filter(|m| Some(&m.name) == leader.as_ref())
            .map(|m| m.applied)
            .chain(std::iter::once(if role != "standby" {
                self.record.applied
            } else {
                0
            }))
            .max()
            .unwrap_or(0);
        let mut servers: Vec<crate::wire::ServerView> = self
            .members
            .iter()
            .map(|m| {
                // This server's own figures are its freshest.
                let (applied, wants_base) = if m.name == self.me {
                    (self.record.applied, self.record.wants_base)
                } else {
                    (m.applied, m.wants_base)
                };
                crate::wire::ServerView {
                    key: m.key.clone(),
                    name: m.name.clone(),
                    role: if m.name == self.me {
                        role.into()
                    } else {
                        m.role.clone()
                    },
                    address: m.address.clone(),
                    job_port: m.job_port,
                    applied,
                    behind: top.saturating_sub(applied),
                    wants_base,
                    updated_ms: m.updated_ms,
                    version: m.version.clone(),
                }
            })
            .collect();
        servers.sort_by(|a, b| a.name.cmp(&b.name));
        crate::wire::ClusterView {
            this: self.me.clone(),
            role: role.into(),
            leader,
            etcd_endpoints: self.cfg.endpoints.clone(),
            etcd_error: self.etcd_health.clone().err(),
            servers,
        }
    }

    /// May this server lead? (Not while its journals miss part of the
    /// log: it asks for a base meanwhile.)
    pub fn set_missing(&mut self, missing: bool) {
        self.record.wants_base = missing;
        self.election.set_eligible(!missing);
    }

    /// Did a standby ask for a base since the last call?
    pub fn take_base_wanted(&mut self) -> bool {
        std::mem::take(&mut self.base_wanted)
    }

    pub fn next_deadline(&self) -> Instant {
        self.election
            .next_deadline()
            .min(self.report_at)
            .min(self.trim_at)
    }

    /// The leader as last read (none while this one leads).
    pub fn leader(&self) -> Option<&str> {
        match self.election.role() {
            Role::Standby { leader } => leader.as_deref(),
            Role::Leading { .. } => None,
        }
    }

    /// Leaving: end the lease now, so that another server takes over at
    /// once rather than when it lapses (blocking, bounded by the timeout:
    /// for a server on its way out).
    pub fn resign(&mut self) {
        if let Some(Ask::Resign { lease }) = self.election.resign() {
            resigned(
                lock(&self.log_client)
                    .revoke(lease)
                    .map_err(|e| e.to_string()),
            );
        }
    }

    /// The same for a standby that goes on: the helper ends the lease,
    /// and its answer is said when it comes.
    pub fn resign_later(&mut self) {
        if let Some(Ask::Resign { lease }) = self.election.resign() {
            let client = Arc::clone(&self.client);
            self.asks.submit(move || {
                Done::Resigned(lock(&client).revoke(lease).map_err(|e| e.to_string()))
            });
        }
    }
}

fn resigned(r: Result<(), String>) {
    match r {
        Ok(()) => log::info!("gave up the lead in etcd; another server may take over now"),
        Err(e) => log::warn!(
            "cannot give up the lead in etcd ({e}): another server takes over when the lease lapses"
        ),
    }
}

/// The last entry trimmed from the log, as etcd says (0: none).
pub fn read_trimmed(c: &mut etcd::Client, keys: &entries::Keys) -> etcd::Result<u64> {
    let (kvs, _) = c.range(&keys.trimmed(), false)?;
    Ok(kvs
        .first()
        .and_then(|kv| std::str::from_utf8(&kv.value).ok()?.trim().parse().ok())
        .unwrap_or(0))
}

/// Carry out one ask (on the helper thread).
fn serve(c: &mut etcd::Client, keys: &entries::Keys, me: &str, ask: Ask) -> Answer {
    let err = |e: etcd::EtcdError| e.to_string();
    let holder = |c: &mut etcd::Client| -> etcd::Result<Option<Holder>> {
        let (kvs, _) = c.range(&keys.leader(), false)?;
        Ok(kvs.into_iter().next().map(|kv| Holder {
            name: String::from_utf8_lossy(&kv.value).into_owned(),
            fence: kv.create_revision,
            lease: kv.lease,
        }))
    };
    match ask {
        Ask::Grant { ttl_secs } => Answer::Granted(c.grant(ttl_secs).map_err(err)),
        Ask::Campaign { lease } => {
            let put = Op::Put {
                key: keys.leader(),
                value: me.as_bytes().to_vec(),
                lease: Some(lease),
            };
            let r = c
                .txn(&[Compare::CreateRevision(keys.leader(), 0)], &[put], &[])
                .and_then(|_| holder(c));
            Answer::Campaigned(r.map_err(err))
        }
        Ask::KeepAlive { lease } => Answer::KeptAlive(c.keepalive(lease).map_err(err)),
        Ask::ReadLeader => Answer::Leader(holder(c).map_err(err)),
        Ask::Resign { lease } => {
            let _ = c.revoke(lease);
            Answer::Resigned
        }
    }
}
