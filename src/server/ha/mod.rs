//! Servers on etcd (issue 22): one active server and standbys that share
//! its state, chosen through an etcd lease (`election`), the state shared
//! as a log of journal records in etcd (`log`).
//!
//! The active server writes each group commit to etcd, fenced by its
//! leader key's creation revision, before its own disk, and acknowledges
//! nothing before both: what it acknowledged is in etcd, and a deposed
//! leader's write is refused. A standby (`standby`) follows the log into
//! its own journals; taking over is a restart from them once it has read
//! the log to its end. A leader that cannot renew its lease in time, or
//! whose write is refused, stops at once and starts again as a standby
//! (`reexec`): what it held in memory and had not written may not be
//! what etcd holds.
//!
//! The etcd calls block: elections on the `director-etcd` helper thread,
//! the log's writes on the I/O thread with the journal writes they go
//! before, the standby's watch on a thread of its own; answers come back
//! through the loop's waker.

pub mod entries;
pub mod replicate;
pub mod standby;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::Waker;

use super::election::{Answer, Ask, Change, Election, Holder, Role};
use crate::config::EtcdConfig;
use crate::etcd::{self, Compare, Op};
use crate::reactor::worker::Worker;

/// A shared blocking etcd client, used by one helper thread at a time.
pub type SharedClient = Arc<Mutex<etcd::Client>>;

pub fn lock(c: &SharedClient) -> std::sync::MutexGuard<'_, etcd::Client> {
    c.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// This server's part in the cluster: the election and the clients.
pub struct Ha {
    pub cfg: EtcdConfig,
    pub keys: entries::Keys,
    pub me: String,
    election: Election,
    asks: Worker<Answer>,
    /// The election's client (on the helper thread).
    client: SharedClient,
    /// The log's client (on the I/O thread, or the loop while taking
    /// over).
    pub log_client: SharedClient,
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
            election: Election::new(me, cfg.lease, now),
            asks: Worker::with_waker("director-etcd", waker)?,
            client: Arc::new(Mutex::new(etcd::Client::new(&cfg.endpoints, timeout))),
            log_client: Arc::new(Mutex::new(etcd::Client::new(
                &cfg.endpoints,
                Duration::from_secs(2),
            ))),
        })
    }

    /// Time passed: what changed, and the next ask handed to the helper.
    pub fn tick(&mut self, now: Instant) -> Vec<Change> {
        let (ask, changes) = self.election.tick(now);
        if let Some(ask) = ask {
            log::debug!("etcd: {ask:?}");
            let client = Arc::clone(&self.client);
            let (keys, me) = (self.keys.clone(), self.me.clone());
            self.asks
                .submit(move || serve(&mut lock(&client), &keys, &me, ask));
        }
        changes
    }

    /// The helper's answers: what changed.
    pub fn answers(&mut self, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        for a in self.asks.drain() {
            log::debug!("etcd answered: {a:?}");
            changes.extend(self.election.answer(a, now));
        }
        changes
    }

    pub fn next_deadline(&self) -> Instant {
        self.election.next_deadline()
    }

    /// The leader as last read (none while this one leads).
    pub fn leader(&self) -> Option<&str> {
        match self.election.role() {
            Role::Standby { leader } => leader.as_deref(),
            Role::Leading { .. } => None,
        }
    }

    /// Leaving: end the lease now, so that another server takes over at
    /// once rather than when it lapses (blocking, bounded by the timeout).
    pub fn resign(&mut self) {
        if let Some(Ask::Resign { lease }) = self.election.resign() {
            match lock(&self.log_client).revoke(lease) {
                Ok(()) => log::info!("gave up the lead in etcd; a standby takes over now"),
                Err(e) => log::warn!(
                    "cannot give up the lead in etcd ({e}): a standby takes over when the lease lapses"
                ),
            }
        }
    }
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
