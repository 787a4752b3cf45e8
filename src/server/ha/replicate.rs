//! Writing the log: the active server's fenced writes of each group
//! commit (`Replica`, `Replicate`), and where every server keeps how far
//! its journals follow the log (`Mark`, the file `replica.seq`).

use std::io;
use std::path::{Path, PathBuf};

use super::entries::{self, Entry};
use crate::etcd::{Compare, EtcdError, Op};

/// Where the log is written: etcd, or a model of it in tests.
pub trait LogStore: Send {
    /// Put `value` at `key` if `leader_key` was created at revision
    /// `fence`: whether it was; `Err` when the store did not answer (the
    /// put may still be committed).
    fn fenced_put(
        &mut self,
        leader_key: &[u8],
        fence: i64,
        key: &[u8],
        value: &[u8],
    ) -> Result<bool, String>;
}

impl LogStore for crate::etcd::Client {
    fn fenced_put(
        &mut self,
        leader_key: &[u8],
        fence: i64,
        key: &[u8],
        value: &[u8],
    ) -> Result<bool, String> {
        let put = Op::Put {
            key: key.to_vec(),
            value: value.to_vec(),
            lease: None,
        };
        let fenced = Compare::CreateRevision(leader_key.to_vec(), fence);
        self.txn(&[fenced], &[put], &[])
            .map(|t| t.succeeded)
            .map_err(|e| etcd_text(&e))
    }
}

/// A log store shared with the I/O thread.
pub type SharedStore = std::sync::Arc<std::sync::Mutex<dyn LogStore>>;

fn lock(s: &SharedStore) -> std::sync::MutexGuard<'_, dyn LogStore + 'static> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The file, in the state directory, naming the last entry of the log the
/// journals hold.
pub const SEQ_FILE: &str = "replica.seq";

/// A write was refused because another server leads now.
#[derive(Debug)]
pub struct Deposed;

impl std::fmt::Display for Deposed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("etcd refused this server's write: another server leads now")
    }
}

impl std::error::Error for Deposed {}

/// Is `e` a refusal because another server leads?
pub fn is_deposed(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<Deposed>())
}

/// The last entry the journals in `dir` hold (0: none, or not from a log).
pub fn read_seq(dir: &Path) -> io::Result<u64> {
    match std::fs::read_to_string(dir.join(SEQ_FILE)) {
        Ok(s) => s.trim().parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} holds '{}', not a number",
                    dir.join(SEQ_FILE).display(),
                    s.trim()
                ),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

/// Say that the journals hold up to entry `seq`: written after them. Not
/// synced: should it be lost, entries are applied again, and the history
/// replays the same records twice to the same state (each record sets
/// what it names to what it says).
pub struct Mark {
    dir: PathBuf,
    seq: u64,
}

impl Mark {
    pub fn new(dir: &Path, seq: u64) -> Mark {
        Mark {
            dir: dir.to_owned(),
            seq,
        }
    }

    pub fn run(self) -> Result<(), (Mark, io::Error)> {
        let tmp = self.dir.join(format!("{SEQ_FILE}.tmp"));
        let r = std::fs::write(&tmp, format!("{}\n", self.seq))
            .and_then(|()| std::fs::rename(&tmp, self.dir.join(SEQ_FILE)));
        r.map_err(|e| (self, e))
    }
}

/// One entry's chunks, written in order, each fenced.
pub struct Replicate {
    client: SharedStore,
    leader_key: Vec<u8>,
    fence: i64,
    writes: Vec<(Vec<u8>, Vec<u8>)>,
    /// Chunks written already (a retry goes on from here).
    done: usize,
}

impl Replicate {
    pub fn run(mut self) -> Result<(), (Replicate, io::Error)> {
        while self.done < self.writes.len() {
            let (key, value) = &self.writes[self.done];
            let r = lock(&self.client).fenced_put(&self.leader_key, self.fence, key, value);
            match r {
                Ok(true) => self.done += 1,
                Ok(false) => return Err((self, io::Error::other(Deposed))),
                Err(e) => return Err((self, io::Error::other(e))),
            }
        }
        Ok(())
    }
}

fn etcd_text(e: &EtcdError) -> String {
    format!("{e} (the write is tried again; nothing is acknowledged until it is in etcd)")
}

/// A base entry: the journals as they are on disk once what went before
/// is written (read on the I/O thread, in turn), then written as one entry.
pub struct BaseWrite {
    readers: [Option<crate::journal::Reader>; 3],
    keys: entries::Keys,
    seq: u64,
    write: Replicate,
}

impl BaseWrite {
    pub fn run(mut self) -> Result<(), Box<(BaseWrite, io::Error)>> {
        if self.write.writes.is_empty() {
            let mut parts = Vec::with_capacity(3);
            for r in &self.readers {
                match r.as_ref().map(crate::journal::Reader::encoded) {
                    Some(Ok(b)) => parts.push(b),
                    None => parts.push(Vec::new()),
                    Some(Err(e)) => return Err(Box::new((self, e))),
                }
            }
            let mut parts = parts.into_iter();
            let entry = Entry {
                base: true,
                history: parts.next().unwrap_or_default(),
                keys: parts.next().unwrap_or_default(),
                tokens: parts.next().unwrap_or_default(),
            };
            log::info!(
                "writing this server's journals to etcd as a base (entry {}, {} bytes of history) for a standby that lost its place",
                self.seq,
                entry.history.len()
            );
            self.write.writes = entries::chunks(&self.keys, self.seq, self.write.fence, &entry);
        }
        let BaseWrite {
            readers,
            keys,
            seq,
            write,
        } = self;
        write.run().map_err(|(write, e)| {
            Box::new((
                BaseWrite {
                    readers,
                    keys,
                    seq,
                    write,
                },
                e,
            ))
        })
    }
}

/// The active server's writer of the log.
pub struct Replica {
    client: SharedStore,
    keys: entries::Keys,
    fence: i64,
    /// The last entry written (or being written).
    seq: u64,
    dir: PathBuf,
}

impl Replica {
    pub fn new(
        client: SharedStore,
        keys: entries::Keys,
        fence: i64,
        seq: u64,
        dir: &Path,
    ) -> Replica {
        Replica {
            client,
            keys,
            fence,
            seq,
            dir: dir.to_owned(),
        }
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn fence(&self) -> i64 {
        self.fence
    }

    /// The next entry, a base of the journals `readers` read (history,
    /// keys, tokens) once what is before it is written.
    pub fn next_base(&mut self, readers: [Option<crate::journal::Reader>; 3]) -> (BaseWrite, Mark) {
        self.seq += 1;
        (
            BaseWrite {
                readers,
                keys: self.keys.clone(),
                seq: self.seq,
                write: Replicate {
                    client: std::sync::Arc::clone(&self.client),
                    leader_key: self.keys.leader(),
                    fence: self.fence,
                    writes: Vec::new(),
                    done: 0,
                },
            },
            Mark::new(&self.dir, self.seq),
        )
    }

    /// The next entry: its writes to etcd, and the mark to make after the
    /// journals.
    pub fn next(&mut self, entry: &Entry) -> (Replicate, Mark) {
        self.seq += 1;
        let writes = entries::chunks(&self.keys, self.seq, self.fence, entry);
        (
            Replicate {
                client: std::sync::Arc::clone(&self.client),
                leader_key: self.keys.leader(),
                fence: self.fence,
                writes,
                done: 0,
            },
            Mark::new(&self.dir, self.seq),
        )
    }
}
