//! Taking the lead: read the log to its end into the journals, clear what
//! a deposed leader left unfinished, and write the journals as the log's
//! base when etcd holds nothing this server can follow. Blocking (etcd
//! and the disk): it runs on the standby's I/O thread, which hands the
//! journals back with the outcome.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::entries::{Chunk, Follower, Gap, Keys};
use super::lock;
use super::replicate::Replica;
use super::standby::Journals;
use crate::error::Error;
use crate::etcd::{self, Compare, Op as EtcdOp};
use crate::server::persist;

/// The journals and how far they follow the log: the loop's while it
/// stands by, the I/O thread's while it takes over.
pub(super) struct Log {
    pub journals: Journals,
    pub follower: Follower,
}

pub(super) enum TakeOver {
    /// etcd could not be asked, or another server won meanwhile.
    Again(String),
    /// The log misses entries this server needs: it cannot lead.
    Missing(Gap),
    Fatal(Error),
}

/// What taking over needs besides the journals.
pub(super) struct Ask {
    pub client: Arc<Mutex<etcd::Client>>,
    pub keys: Keys,
    pub fence: i64,
    pub dir: PathBuf,
}

/// The last entry the journals hold once they hold the whole log.
pub(super) fn take_over(log: &mut Log, ask: &Ask) -> Result<u64, TakeOver> {
    let Ask {
        client,
        keys,
        fence,
        dir,
    } = ask;
    let trimmed =
        super::read_trimmed(&mut lock(client), keys).map_err(|e| TakeOver::Again(e.to_string()))?;
    let (kvs, _) = lock(client)
        .range(&keys.log(), true)
        .map_err(|e| TakeOver::Again(e.to_string()))?;
    let mut last_in_log = 0;
    for kv in &kvs {
        let Some(c) = Chunk::decode(&kv.value) else {
            continue;
        };
        if c.index + 1 == c.count {
            last_in_log = last_in_log.max(c.seq);
        }
        match log.follower.offer(c) {
            Ok(Some((seq, entry))) => {
                let ops = log
                    .journals
                    .apply(seq, entry, dir)
                    .map_err(|why| fatal(Gap::Corrupt { seq, why }))?;
                persist::run_ops(ops).map_err(|(_, e)| {
                    TakeOver::Fatal(Error::io(
                        format!("cannot write the log's entries to {}", dir.display()),
                        e,
                    ))
                })?;
            }
            Ok(None) => {}
            Err(gap) => return Err(TakeOver::Missing(gap)),
        }
    }
    let seq = log.follower.applied();
    if trimmed > seq {
        return Err(TakeOver::Missing(Gap::Missing {
            have: seq,
            next: trimmed + 1,
        }));
    }
    // Chunks past what is whole: a deposed leader's unfinished entry.
    let leftovers: Vec<EtcdOp> = kvs
        .iter()
        .filter(|kv| Chunk::decode(&kv.value).is_none_or(|c| c.seq > seq))
        .map(|kv| EtcdOp::Delete {
            key: kv.key.clone(),
            prefix: false,
        })
        .collect();
    if !leftovers.is_empty() {
        let fenced = [Compare::CreateRevision(keys.leader(), *fence)];
        match lock(client).txn(&fenced, &leftovers, &[]) {
            Ok(t) if t.succeeded => log::info!(
                "cleared {} chunks of an entry the previous leader left unfinished",
                leftovers.len()
            ),
            Ok(_) => return Err(TakeOver::Again("another server leads now".into())),
            Err(e) => return Err(TakeOver::Again(e.to_string())),
        }
    }
    // The log goes on from here: entries up to ours are in it, or were
    // trimmed once every live standby had them (then nothing follows
    // them yet).
    if seq > 0 && (last_in_log >= seq || trimmed == seq) {
        return Ok(seq);
    }
    // Nothing in etcd to follow (a new cluster, or a log behind this
    // disk, as after etcd was wiped): this server's journals become the
    // log's base.
    let entry = log.journals.encoded().map_err(|e| {
        TakeOver::Fatal(Error::io("cannot read the journals for the log's base", e))
    })?;
    let store: super::replicate::SharedStore = Arc::clone(client) as _;
    let mut replica = Replica::new(store, keys.clone(), *fence, seq, dir);
    let (write, mark) = replica.next(&entry);
    write
        .run()
        .map_err(|(_, e)| TakeOver::Again(e.to_string()))?;
    mark.run().map_err(|(_, e)| {
        TakeOver::Fatal(Error::io(
            "cannot note how far the journals follow the log",
            e,
        ))
    })?;
    // The base is the journals as they are: following goes on from it.
    log.follower = Follower::new(replica.seq());
    log::info!(
        "wrote this server's journals to etcd as the log's base (entry {}, {} bytes of history)",
        replica.seq(),
        entry.history.len()
    );
    Ok(replica.seq())
}

fn fatal(gap: Gap) -> TakeOver {
    TakeOver::Fatal(Error::Config(format!(
        "cannot take over: {gap}; restart this server with an empty --state-path (it then starts from the log's base)"
    )))
}
