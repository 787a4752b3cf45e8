//! Servers on etcd, end to end: real etcd members, two or three director
//! servers each on a loopback address of its own, clients given all of
//! them. What a single server promises holds across a failover: nothing
//! acknowledged is lost, no job runs twice, the run goes on.

mod util;

use std::fs;

use util::ha::HaCluster;
use util::{wait_until, DEADLINE};

/// The numbers a node's commands appended to `file`, in order.
fn lines(h: &HaCluster, node: &str, file: &str) -> Vec<u32> {
    fs::read_to_string(h.c.node_dir(node).join(file))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// Every job of the run succeeded on every node, once, in order.
fn assert_ran_once(h: &HaCluster, leader: usize, jobs: u32) {
    wait_until("every job done on the new leader", DEADLINE * 3, || {
        let all = h.jobs(leader);
        all.len() == jobs as usize && all.iter().all(|j| !j["finished_ms"].is_null())
    });
    for j in h.jobs(leader) {
        assert_eq!(
            j["states"],
            serde_json::json!({"succeeded": 3}),
            "job {}: {j}",
            j["args"]
        );
    }
    let want: Vec<u32> = (0..jobs).collect();
    for n in NODES {
        assert_eq!(lines(h, n, "ran.txt"), want, "node {n}");
    }
}

#[test]
fn kill_9_of_the_leader_mid_run_hands_the_run_to_a_standby_that_finishes_it() {
    const JOBS: u32 = 500;
    let Some(mut h) = HaCluster::start("ha-kill", 2, &NODES) else {
        return;
    };
    let file = h.c.run_file(
        "run.yml",
        (0..JOBS).map(|i| format!("RUN: sleep 0.01; echo {i} >> ran.txt")),
    );
    let out = h.cli(0, &["orchestrate", file.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    wait_until("the run to be under way", DEADLINE, || {
        NODES.iter().all(|n| lines(&h, n, "ran.txt").len() >= 100)
    });
    h.server(0).signal(libc::SIGKILL);
    h.server(0).wait_exit(DEADLINE);
    // Killed mid-run: the rest is the new leader's to finish.
    let done_at_kill = NODES.iter().map(|n| lines(&h, n, "ran.txt").len()).min();
    assert!(done_at_kill < Some(JOBS as usize), "{done_at_kill:?}");
    h.wait_log(1, "won the lead in etcd");
    assert_eq!(h.wait_leader(), 1);
    assert_ran_once(&h, 1, JOBS);
    // Nothing was reported lost on the way.
    assert!(!h.log(1).contains(" lost"), "{}", h.log(1));

    // The old leader comes back as a standby and follows.
    h.start_server(0);
    h.wait_log(0, "standing by: the active server is s1");
    let seq = |i: usize| fs::read_to_string(h.state(i).join("replica.seq")).unwrap_or_default();
    wait_until("s0 to catch up", DEADLINE, || seq(0) == seq(1));
    let out = h.cli(0, &["manage", "--list-jobs"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("stands by; the active server is s1"),
        "{out:?}"
    );
}
