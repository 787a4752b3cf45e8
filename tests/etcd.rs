//! The etcd client (`director::etcd`) against a real 3-member etcd on
//! loopback: what failing over will stand on. A lease keeps a key only
//! while it is renewed; a write fenced by the leader key's creation
//! revision is refused once another server holds the key; a watch replays
//! from a revision, then follows; a member's death moves the client to
//! another; without quorum a call fails in bounded time, and succeeds
//! again once quorum is back.
//!
//! Needs Debian's `etcd-server` (`.ci/run` installs it); skipped, saying
//! so, without it.

mod util;

use std::time::Duration;

use director::etcd::{Change, Compare, EtcdError, Op};
use util::etcd::Etcd;
use util::{wait_until, TestDir, DEADLINE};

fn cluster(name: &str) -> Option<(TestDir, Etcd)> {
    let dir = TestDir::new(name);
    match Etcd::start(&dir.path, 3) {
        Some(e) => Some((dir, e)),
        None => {
            eprintln!("skipped: etcd is not installed (Debian: apt-get install etcd-server)");
            None
        }
    }
}

/// `call`, again while etcd says it is unavailable (an election among its
/// members on a loaded machine is a short pause, not a failure).
fn ok<T>(mut call: impl FnMut() -> Result<T, EtcdError>) -> T {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        match call() {
            Ok(v) => return v,
            Err(EtcdError::Unavailable(why)) if std::time::Instant::now() < deadline => {
                eprintln!("etcd unavailable, again: {why}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

fn put(key: &str, value: &str, lease: Option<i64>) -> Op {
    Op::Put {
        key: key.into(),
        value: value.into(),
        lease,
    }
}

#[test]
fn a_leader_key_is_fenced_by_its_creation_revision_and_lives_with_its_lease() {
    let Some((_dir, etcd)) = cluster("etcd-fence") else {
        return;
    };
    let mut a = etcd.client();
    let mut b = etcd.client();
    let leader = b"/director/leader".to_vec();

    // A wins: the key did not exist.
    let lease_a = ok(|| a.grant(3));
    let won = ok(|| {
        a.txn(
            &[Compare::CreateRevision(leader.clone(), 0)],
            &[put("/director/leader", "a", Some(lease_a))],
            &[],
        )
    });
    assert!(won.succeeded);
    let (kvs, _) = ok(|| a.range(&leader, false));
    let fence_a = kvs[0].create_revision;
    assert_eq!(kvs[0].value, b"a");
    assert_eq!(kvs[0].lease, lease_a);
    // B loses while A holds it.
    let lease_b = ok(|| b.grant(2));
    let lost = ok(|| {
        b.txn(
            &[Compare::CreateRevision(leader.clone(), 0)],
            &[put("/director/leader", "b", Some(lease_b))],
            &[],
        )
    });
    assert!(!lost.succeeded);
    // A's fenced write goes in while it leads.
    let fenced = |c: &mut director::etcd::Client, fence: i64, v: &str| {
        ok(|| {
            c.txn(
                &[Compare::CreateRevision(leader.clone(), fence)],
                &[put("/director/log/x", v, None)],
                &[],
            )
        })
        .succeeded
    };
    assert!(fenced(&mut a, fence_a, "from a"));
    // Renewed (every 100 ms, a thirtieth of its TTL: a loaded machine
    // has room), the lease outlives its TTL.
    let renewing = std::time::Instant::now();
    while renewing.elapsed() < Duration::from_secs(4) {
        assert!(ok(|| a.keepalive(lease_a)) > 0, "a renewed lease lapsed");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ok(|| a.range(&leader, false)).0.len(), 1);
    // Not renewed (A paused), it lapses and the key goes with it.
    wait_until("A's lease to lapse", DEADLINE, || {
        ok(|| a.range(&leader, false)).0.is_empty()
    });
    assert_eq!(ok(|| a.keepalive(lease_a)), 0, "a lapsed lease is gone");
    // B takes over; A's fenced write is refused from then on.
    let lease_b = ok(|| b.grant(5));
    assert!(
        ok(|| b.txn(
            &[Compare::CreateRevision(leader.clone(), 0)],
            &[put("/director/leader", "b", Some(lease_b))],
            &[],
        ))
        .succeeded
    );
    let fence_b = ok(|| b.range(&leader, false)).0[0].create_revision;
    assert_ne!(fence_a, fence_b);
    assert!(
        !fenced(&mut a, fence_a, "stale a"),
        "a deposed leader wrote"
    );
    assert!(fenced(&mut b, fence_b, "from b"));
    let (log, _) = ok(|| b.range(b"/director/log/x", false));
    assert_eq!(log[0].value, b"from b");
    // Revoked, the key is gone at once.
    ok(|| b.revoke(lease_b));
    assert!(ok(|| b.range(&leader, false)).0.is_empty());
}

#[test]
fn a_watch_replays_from_a_revision_then_follows() {
    let Some((_dir, etcd)) = cluster("etcd-watch") else {
        return;
    };
    let mut c = etcd.client();
    let first = ok(|| c.txn(&[], &[put("/d/log/1", "one", None)], &[])).revision;
    ok(|| c.txn(&[], &[put("/d/log/2", "two", None)], &[]));
    ok(|| c.txn(&[], &[put("/other", "not watched", None)], &[]));
    let mut w = ok(|| c.watch(b"/d/log/", true, first));
    let mut seen = Vec::new();
    let watcher = std::thread::spawn(move || {
        while seen.len() < 4 {
            seen.extend(w.changes().unwrap());
        }
        seen
    });
    ok(|| c.txn(&[], &[put("/d/log/3", "three", None)], &[]));
    ok(|| {
        c.txn(
            &[],
            &[Op::Delete {
                key: b"/d/log/1".to_vec(),
                prefix: false,
            }],
            &[],
        )
    });
    let seen = watcher.join().unwrap();
    let shown: Vec<String> = seen
        .iter()
        .map(|ch| match ch {
            Change::Put(kv) => format!(
                "put {}={}",
                String::from_utf8_lossy(&kv.key),
                String::from_utf8_lossy(&kv.value)
            ),
            Change::Delete { key, .. } => format!("delete {}", String::from_utf8_lossy(key)),
        })
        .collect();
    assert_eq!(
        shown,
        [
            "put /d/log/1=one",
            "put /d/log/2=two",
            "put /d/log/3=three",
            "delete /d/log/1"
        ]
    );
    // In revision order.
    let revs: Vec<i64> = seen
        .iter()
        .map(|ch| match ch {
            Change::Put(kv) => kv.mod_revision,
            Change::Delete { mod_revision, .. } => *mod_revision,
        })
        .collect();
    assert!(revs.windows(2).all(|w| w[0] < w[1]), "{revs:?}");
}

#[test]
fn a_dead_member_is_passed_over_and_a_lost_quorum_is_an_error_until_it_is_back() {
    let Some((_dir, mut etcd)) = cluster("etcd-quorum") else {
        return;
    };
    let mut c = etcd.client();
    ok(|| c.txn(&[], &[put("/q", "1", None)], &[]));
    // The first endpoint's member dies: the next answers (after an
    // election, if it was etcd's leader: a short pause, said as
    // Unavailable meanwhile).
    etcd.kill(0);
    let mut kvs = Vec::new();
    wait_until("another member to answer", DEADLINE, || {
        match c.range(b"/q", false) {
            Ok((k, _)) => {
                kvs = k;
                true
            }
            Err(EtcdError::Unavailable(_)) => false,
            Err(e) => panic!("{e}"),
        }
    });
    assert_eq!(kvs[0].value, b"1");
    assert_ne!(c.endpoint(), Some(etcd.endpoints()[0].as_str()));
    // Two of three gone: no quorum. Writes and quorum reads fail with
    // Unavailable, each within the client's timeout per endpoint.
    etcd.kill(1);
    wait_until("the lone member to lose its leader", DEADLINE, || {
        matches!(
            c.txn(&[], &[put("/q", "2", None)], &[]),
            Err(EtcdError::Unavailable(_))
        )
    });
    match c.grant(5) {
        Err(EtcdError::Unavailable(why)) => assert!(!why.is_empty()),
        other => panic!("a lease granted without quorum: {other:?}"),
    }
    // Quorum back: the same client goes on, and nothing acknowledged was lost.
    etcd.restart(1);
    wait_until("quorum back", DEADLINE, || {
        c.txn(&[], &[put("/q", "3", None)], &[]).is_ok()
    });
    let (kvs, _) = ok(|| c.range(b"/q", false));
    assert_eq!(kvs[0].value, b"3");
    etcd.restart(0);
    etcd.wait_ready();
}
