//! The replicated log against a model of etcd, over many seeds: the active
//! server's group commits go to a store that may refuse, fail before
//! writing, or fail after writing (a late commit); the active server may
//! die between any two of a commit's writes. Whoever takes over reads the
//! store as a standby would and starts from its own journals. Properties:
//! every acknowledged submission is there after every takeover, and no
//! submission that was refused ever is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::Token;
use uuid::Uuid;

use super::entries::{Chunk, Follower, Keys};
use super::replicate::{LogStore, Replica};
use super::standby::Journals;
use crate::dsl::{Task, Verb};
use crate::server::cluster::Now;
use crate::server::history::Record;
use crate::server::persist::{self, Held, Persist, Released};
use crate::wire::Response;

/// What the store does with the next put.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fate {
    Write,
    /// No answer, nothing written.
    LostBefore,
    /// No answer, written all the same.
    LostAfter,
}

/// etcd as the log sees it: keys in order, the leader's fence, and
/// answers lost before or after the write.
pub(crate) struct Store {
    kv: BTreeMap<Vec<u8>, Vec<u8>>,
    pub fence: i64,
    rng: crate::sim::Rng,
    /// The chance in 256 of each failure.
    fail: u64,
}

impl Store {
    /// A store that loses `fail` answers in 256 before writing and as
    /// many after, drawn from `seed`.
    pub(crate) fn new(seed: u64, fail: u64) -> Arc<Mutex<Store>> {
        Arc::new(Mutex::new(Store {
            kv: BTreeMap::new(),
            fence: 1,
            rng: crate::sim::Rng::new(seed),
            fail,
        }))
    }

    /// The store as the active server's log writes see it.
    pub(crate) fn shared(store: &Arc<Mutex<Store>>) -> super::replicate::SharedStore {
        Arc::new(Mutex::new(Arc::clone(store)))
    }
}

impl LogStore for Arc<Mutex<Store>> {
    fn fenced_put(
        &mut self,
        _: &[u8],
        fence: i64,
        key: &[u8],
        value: &[u8],
    ) -> Result<bool, String> {
        let mut s = self.lock().unwrap();
        let fate = match s.rng.next() % 256 {
            r if r < s.fail => Fate::LostBefore,
            r if r < 2 * s.fail => Fate::LostAfter,
            _ => Fate::Write,
        };
        if fence != s.fence {
            return Ok(false);
        }
        if fate != Fate::LostBefore {
            s.kv.insert(key.to_vec(), value.to_vec());
        }
        match fate {
            Fate::Write => Ok(true),
            _ => Err("etcd is unavailable: the model lost the answer".into()),
        }
    }
}

fn task() -> Task {
    Task::parse(Verb::Run, "true").unwrap()
}

/// An active server: its journal and what waits on it.
struct Leader {
    persist: Persist,
    /// Submissions held, by token.
    ids: BTreeMap<usize, Uuid>,
}

fn open_leader(dir: PathBuf, store: &Arc<Mutex<Store>>, fence: i64, seq: u64) -> Leader {
    let now = Now::real();
    let (_, history) = crate::server::restore(
        &dir,
        Duration::from_secs(60),
        (Duration::from_secs(86_400), 1_000_000),
        now,
    )
    .unwrap();
    let replica = Replica::new(Store::shared(store), Keys::new("/m"), fence, seq, &dir);
    Leader {
        persist: Persist::new(history, None).with_replica(replica),
        ids: BTreeMap::new(),
    }
}

/// A standby reading the whole log into an empty directory, then the
/// jobs it would start with; and the last entry it holds.
fn take_over(store: &Arc<Mutex<Store>>, dir: &std::path::Path) -> (BTreeSet<Uuid>, u64) {
    let seq = read_log(store, dir);
    let (cluster, _) = crate::server::restore(
        dir,
        Duration::from_secs(60),
        (Duration::from_secs(86_400), 1_000_000),
        Now::real(),
    )
    .unwrap();
    (cluster.list_jobs().into_iter().map(|j| j.id).collect(), seq)
}

/// A standby reading the whole log into `dir` (empty), and clearing what
/// a deposed leader left unfinished: the last entry its journals hold.
pub(crate) fn read_log(store: &Arc<Mutex<Store>>, dir: &std::path::Path) -> u64 {
    let kv: Vec<(Vec<u8>, Vec<u8>)> = store.lock().unwrap().kv.clone().into_iter().collect();
    let mut journals = Journals::open(dir).unwrap();
    let mut follower = Follower::new(0);
    for (_, v) in &kv {
        let c = Chunk::decode(v).expect("the model writes whole chunks");
        if let Some((seq, entry)) = follower.offer(c).expect("no gap in the model's log") {
            let ops = journals.apply(seq, entry, dir).unwrap();
            persist::run_ops(ops).map_err(|(_, e)| e).unwrap();
        }
    }
    let seq = follower.applied();
    // What a deposed leader left unfinished goes.
    let keys = Keys::new("/m");
    store
        .lock()
        .unwrap()
        .kv
        .retain(|k, _| k.as_slice() < keys.chunk(seq + 1, 0).as_slice());
    seq
}

/// Takeovers, acknowledged and refused submissions: what a run covered.
fn run(seed: u64, steps: usize) -> (usize, usize, usize) {
    let base =
        std::env::temp_dir().join(format!("director-ha-model-{}-{seed}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let store = Store::new(seed, 24);
    let mut generation = 0;
    let mut leader = open_leader(base.join("g0"), &store, 1, 0);
    let mut acked: BTreeSet<Uuid> = BTreeSet::new();
    let mut refused: BTreeSet<Uuid> = BTreeSet::new();
    let mut token = 0;
    let mut rng = crate::sim::Rng::new(seed ^ 0x5eed);
    let mut draw = move || rng.next();
    let t0 = Instant::now();
    for step in 0..steps {
        let now = t0 + Duration::from_millis(step as u64 * 50);
        let mut out = Released::default();
        match draw() % 10 {
            0..=4 => {
                // A submission: its record, and its answer held.
                token += 1;
                let id = Uuid::from_u128(u128::from(seed) << 64 | token as u128);
                leader.persist.history.append(&Record::Submitted {
                    id,
                    parent: None,
                    task: task(),
                    targets: vec!["n1".into()],
                    submitted_ms: 0,
                });
                leader.persist.recorded(now);
                leader.ids.insert(token, id);
                leader.persist.hold(
                    Held::Submission {
                        token: Token(token),
                        resp: Response::Rejected(String::new()),
                        jobs: vec![id],
                    },
                    now,
                    &mut out,
                );
            }
            5..=8 => {
                // A commit, perhaps cut short by the leader's death.
                let Some(ops) = leader.persist.due(now + Duration::from_secs(1), &mut out) else {
                    continue;
                };
                let dies = draw() % 8 == 0;
                let cut = if dies {
                    (draw() as usize) % (ops.len() + 1)
                } else {
                    ops.len()
                };
                let mut rest = ops.into_iter();
                let mut result = Ok(());
                for (i, op) in rest.by_ref().enumerate() {
                    if i == cut {
                        break;
                    }
                    if let Err((op, e)) = persist::run_ops(vec![op]) {
                        let mut undone = op;
                        undone.extend(rest.by_ref());
                        result = Err((undone, e));
                        break;
                    }
                }
                if dies {
                    generation += 1;
                    let dir = base.join(format!("g{generation}"));
                    let (jobs, seq) = take_over(&store, &dir);
                    for id in &acked {
                        assert!(jobs.contains(id), "seed {seed} step {step}: acknowledged {id} lost at takeover {generation}");
                    }
                    for id in &refused {
                        assert!(!jobs.contains(id), "seed {seed} step {step}: refused {id} is there at takeover {generation}");
                    }
                    let fence = 1 + generation as i64;
                    store.lock().unwrap().fence = fence;
                    leader = open_leader(dir, &store, fence, seq);
                    continue;
                }
                leader.persist.done(result, now, &mut out);
            }
            _ => {
                // Time passes: a failed commit may be retried.
                leader.persist.recorded(now);
            }
        }
        for h in out.held {
            if let Held::Submission { token, .. } = h {
                acked.insert(leader.ids[&token.0]);
            }
        }
        for (token, jobs, _) in out.failed {
            // As the server does: forgotten, after its record if it is
            // written after all.
            for id in &jobs {
                leader
                    .persist
                    .history
                    .append(&Record::Forgotten { id: *id });
            }
            leader.persist.recorded(now);
            refused.insert(leader.ids[&token.0]);
        }
    }
    let _ = std::fs::remove_dir_all(&base);
    (generation, acked.len(), refused.len())
}

#[test]
fn what_was_acknowledged_survives_every_takeover_and_what_was_refused_never_appears() {
    let (mut takeovers, mut acked, mut refused) = (0, 0, 0);
    for seed in 1..=40 {
        let (t, a, r) = run(seed, 300);
        takeovers += t;
        acked += a;
        refused += r;
    }
    // The runs went through what they are for.
    assert!(takeovers > 100, "{takeovers} takeovers");
    assert!(acked > 1000, "{acked} acknowledged");
    assert!(refused > 50, "{refused} refused");
    eprintln!("{takeovers} takeovers, {acked} acknowledged, {refused} refused");
}
