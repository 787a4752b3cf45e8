//! The replicated log in etcd: where its keys are, what an entry holds,
//! and how a standby puts entries back together from their chunks.
//!
//! The active server writes one entry per group commit: the bytes it
//! appended to each of its journals (history, keys, tokens), records as
//! they are on disk. A standby appends the same bytes to its own journals,
//! so its disk is the leader's, record for record, and taking over is a
//! restart from it. An entry marked `base` holds whole journals instead:
//! the first entry of a log, from the first leader's disk; it replaces
//! what a standby had.
//!
//! etcd refuses requests past 1.5 MiB by default: an entry goes in chunks
//! of `CHUNK` bytes, each its own fenced write, keys `log/SEQ.INDEX`
//! (zero-padded, so etcd's key order is the log's order). An entry counts
//! once its last chunk is written; chunks of an entry that a deposed
//! leader left unfinished are replaced by the next leader's (higher
//! fence), or deleted by it when it takes over.

use serde::{Deserialize, Serialize};

/// Data bytes per chunk: base64 and JSON make it ~1.1 MiB on the wire.
pub const CHUNK: usize = 768 << 10;

/// The largest entry taken from etcd (a whole history in a base entry).
const MAX_ENTRY: usize = 4 << 30;

/// Where one cluster's keys are in etcd.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    /// The leader key: the leader's name, bound to its lease.
    pub fn leader(&self) -> Vec<u8> {
        format!("{}/leader", self.prefix).into_bytes()
    }

    /// Every chunk of the log is under this.
    pub fn log(&self) -> Vec<u8> {
        format!("{}/log/", self.prefix).into_bytes()
    }

    /// The last entry trimmed from the log (absent: none ever was). A
    /// server whose journals are behind it cannot follow the log.
    pub fn trimmed(&self) -> Vec<u8> {
        format!("{}/trimmed", self.prefix).into_bytes()
    }

    /// A server's record (`members`).
    pub fn member(&self, name: &str) -> Vec<u8> {
        format!("{}/members/{name}", self.prefix).into_bytes()
    }

    pub fn members(&self) -> Vec<u8> {
        format!("{}/members/", self.prefix).into_bytes()
    }

    pub fn chunk(&self, seq: u64, index: u32) -> Vec<u8> {
        format!("{}/log/{seq:020}.{index:06}", self.prefix).into_bytes()
    }
}

/// One group commit's records, or (`base`) whole journals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub base: bool,
    pub history: Vec<u8>,
    pub keys: Vec<u8>,
    pub tokens: Vec<u8>,
}

/// One piece of an entry, as etcd holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub seq: u64,
    /// The writer's fence: of two writers of one entry, the later leader's
    /// (higher) wins.
    pub fence: i64,
    pub index: u32,
    pub count: u32,
    pub data: Vec<u8>,
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ 64 << 20 }>()
}

impl Chunk {
    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, config()).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Chunk> {
        bincode::serde::decode_from_slice::<Chunk, _>(bytes, config())
            .ok()
            .filter(|(_, used)| *used == bytes.len())
            .map(|(c, _)| c)
            .filter(|c| c.count > 0 && c.index < c.count)
    }
}

/// The keys and values that write `entry` as `seq`, in order.
pub fn chunks(keys: &Keys, seq: u64, fence: i64, entry: &Entry) -> Vec<(Vec<u8>, Vec<u8>)> {
    let bytes =
        bincode::serde::encode_to_vec(entry, bincode::config::standard()).unwrap_or_default();
    let pieces: Vec<&[u8]> = if bytes.is_empty() {
        vec![&[]]
    } else {
        bytes.chunks(CHUNK).collect()
    };
    let count = pieces.len() as u32;
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, data)| {
            let c = Chunk {
                seq,
                fence,
                index: i as u32,
                count,
                data: data.to_vec(),
            };
            (keys.chunk(seq, i as u32), c.encode())
        })
        .collect()
}

/// Why a standby cannot follow the log from where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gap {
    /// The next entry it needs is gone from etcd, and no base follows.
    Missing { have: u64, next: u64 },
    /// An entry that does not decode.
    Corrupt { seq: u64, why: String },
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Gap::Missing { have, next } => write!(
                f,
                "the log in etcd goes on at entry {next}, this server has up to {have}, and what is between is gone"
            ),
            Gap::Corrupt { seq, why } => write!(f, "entry {seq} of the log is unreadable: {why}"),
        }
    }
}

/// An entry being put together.
struct Partial {
    seq: u64,
    fence: i64,
    count: u32,
    data: Vec<u8>,
    next: u32,
}

/// Puts entries back together from chunks in key or revision order, for a
/// standby that has applied up to `applied`.
pub struct Follower {
    applied: u64,
    partial: Option<Partial>,
}

impl Follower {
    pub fn new(applied: u64) -> Follower {
        Follower {
            applied,
            partial: None,
        }
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// A chunk from etcd; a whole entry when this was its last. Chunks of
    /// entries already applied are passed over.
    pub fn offer(&mut self, c: Chunk) -> Result<Option<(u64, Entry)>, Gap> {
        if c.seq <= self.applied {
            return Ok(None);
        }
        if let Some(p) = &self.partial {
            // A later leader rewrites an entry its predecessor left
            // unfinished; an earlier one's late chunk is stale.
            if c.seq == p.seq && c.fence < p.fence {
                return Ok(None);
            }
        }
        if c.index == 0 {
            if c.seq != self.applied + 1 {
                // Only a base may follow a gap: it holds everything.
                if !starts_base(&c.data) {
                    return Err(Gap::Missing {
                        have: self.applied,
                        next: c.seq,
                    });
                }
            }
            self.partial = Some(Partial {
                seq: c.seq,
                fence: c.fence,
                count: c.count,
                data: Vec::new(),
                next: 0,
            });
        }
        let Some(p) = &mut self.partial else {
            // The middle of an entry whose start we did not see: its
            // start comes again (a leader rewrites it), or a gap shows.
            return Ok(None);
        };
        if c.seq != p.seq || c.fence != p.fence || c.index != p.next || c.count != p.count {
            return Ok(None);
        }
        if p.data.len() + c.data.len() > MAX_ENTRY {
            let seq = p.seq;
            self.partial = None;
            return Err(Gap::Corrupt {
                seq,
                why: "larger than any entry a server writes".into(),
            });
        }
        p.data.extend_from_slice(&c.data);
        p.next += 1;
        if p.next < p.count {
            return Ok(None);
        }
        let Some(p) = self.partial.take() else {
            return Ok(None);
        };
        let entry: Entry =
            match bincode::serde::decode_from_slice(&p.data, bincode::config::standard()) {
                Ok((e, used)) if used == p.data.len() => e,
                Ok(_) => {
                    return Err(Gap::Corrupt {
                        seq: p.seq,
                        why: "trailing bytes".into(),
                    })
                }
                Err(e) => {
                    return Err(Gap::Corrupt {
                        seq: p.seq,
                        why: e.to_string(),
                    })
                }
            };
        self.applied = p.seq;
        Ok(Some((p.seq, entry)))
    }
}

/// Does an encoded entry start as a base? (Its first field, a bool.)
fn starts_base(data: &[u8]) -> bool {
    data.first() == Some(&1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: usize, base: bool) -> Entry {
        Entry {
            base,
            history: (0..n).map(|i| i as u8).collect(),
            keys: vec![1, 2, 3],
            tokens: Vec::new(),
        }
    }

    fn pieces(seq: u64, fence: i64, e: &Entry) -> Vec<Chunk> {
        chunks(&Keys::new("/d"), seq, fence, e)
            .into_iter()
            .map(|(_, v)| Chunk::decode(&v).unwrap())
            .collect()
    }

    #[test]
    fn keys_sort_in_log_order() {
        let k = Keys::new("/d/");
        assert!(k.chunk(9, 1) < k.chunk(10, 0));
        assert!(k.chunk(10, 0) < k.chunk(10, 1));
        assert!(k.chunk(10, 0).starts_with(&k.log()));
        assert_eq!(k.leader(), b"/d/leader");
    }

    #[test]
    fn a_large_entry_goes_in_chunks_and_comes_back_whole() {
        let e = entry(2 * CHUNK + 10, false);
        let cs = pieces(1, 7, &e);
        assert_eq!(cs.len(), 3);
        let mut f = Follower::new(0);
        assert_eq!(f.offer(cs[0].clone()), Ok(None));
        assert_eq!(f.offer(cs[1].clone()), Ok(None));
        assert_eq!(f.offer(cs[2].clone()), Ok(Some((1, e))));
        assert_eq!(f.applied(), 1);
        // Seen again (a watch replaying): passed over.
        assert_eq!(f.offer(cs[0].clone()), Ok(None));
    }

    #[test]
    fn a_deposed_leaders_unfinished_entry_is_replaced_by_the_next_leaders() {
        let old = entry(2 * CHUNK, false);
        let new = entry(10, false);
        let olds = pieces(1, 5, &old);
        let mut f = Follower::new(0);
        assert_eq!(f.offer(olds[0].clone()), Ok(None));
        let news = pieces(1, 9, &new);
        assert_eq!(f.offer(news[0].clone()), Ok(Some((1, new))));
        // The old leader's late chunk changes nothing.
        assert_eq!(f.offer(olds[1].clone()), Ok(None));
        assert_eq!(f.offer(olds[2].clone()), Ok(None));
        assert_eq!(f.applied(), 1);
    }

    #[test]
    fn a_gap_is_refused_unless_a_base_follows_it() {
        let mut f = Follower::new(3);
        let e = entry(5, false);
        assert_eq!(
            f.offer(pieces(6, 1, &e)[0].clone()),
            Err(Gap::Missing { have: 3, next: 6 })
        );
        let b = entry(5, true);
        assert_eq!(f.offer(pieces(6, 1, &b)[0].clone()), Ok(Some((6, b))));
        assert_eq!(f.applied(), 6);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(Chunk::decode(b"\xff\xff\xff"), None);
        let mut f = Follower::new(0);
        let c = Chunk {
            seq: 1,
            fence: 1,
            index: 0,
            count: 1,
            data: vec![0, 200, 200, 200, 200, 200],
        };
        assert!(matches!(f.offer(c), Err(Gap::Corrupt { seq: 1, .. })));
    }
}
