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

#[test]
fn a_paused_leader_is_replaced_and_on_waking_steps_down_without_acting() {
    const JOBS: u32 = 300;
    let Some(mut h) = HaCluster::start("ha-pause", 2, &NODES) else {
        return;
    };
    let file = h.c.run_file(
        "run.yml",
        (0..JOBS).map(|i| format!("RUN: sleep 0.01; echo {i} >> ran.txt")),
    );
    let out = h.cli(0, &["orchestrate", file.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    wait_until("the run to be under way", DEADLINE, || {
        NODES.iter().all(|n| lines(&h, n, "ran.txt").len() >= 50)
    });
    h.server(0).signal(libc::SIGSTOP);
    let done_at_pause = NODES.iter().map(|n| lines(&h, n, "ran.txt").len()).min();
    assert!(done_at_pause < Some(JOBS as usize), "{done_at_pause:?}");
    h.wait_active(1);
    assert_ran_once(&h, 1, JOBS);
    // Woken, the old leader finds its lease may have lapsed, stops before
    // acting on anything, and comes back as a standby.
    h.server(0).signal(libc::SIGCONT);
    h.wait_log(0, "stepping down: ");
    h.wait_log(0, "standing by: the active server is s1");
    let want: Vec<u32> = (0..JOBS).collect();
    for n in NODES {
        assert_eq!(lines(&h, n, "ran.txt"), want, "node {n}");
    }
    assert_eq!(h.leader(), Some(1));
}

#[test]
fn etcd_losing_quorum_stops_acknowledging_and_service_resumes_when_it_is_back() {
    let Some(mut h) = HaCluster::start("ha-quorum", 2, &NODES) else {
        return;
    };
    let out = h.cli(0, &["exec", "--verb", "RUN", "--wait", "echo 0 >> ran.txt"]);
    assert_eq!(out.code, 0, "{out:?}");
    h.etcd.kill(1);
    h.etcd.kill(2);
    // No quorum: nothing is acknowledged. A submission is refused with
    // one line naming etcd (by the leader, or by it as a standby once it
    // stepped down); one that was on its way to etcd when it went may
    // end in a lost connection (then it is not known either way, as with
    // a crash), never in a refusal.
    let mut refused = Vec::new();
    let mut k = 100;
    wait_until("submissions refused", DEADLINE, || {
        k += 1;
        let out = h.cli(
            0,
            &["exec", "--verb", "RUN", &format!("echo {k} >> ran.txt")],
        );
        assert_ne!(out.code, 0, "acknowledged without etcd: {out:?}");
        let said = out.stderr.trim();
        assert_eq!(said.lines().count(), 1, "{out:?}");
        if said.contains("etcd") {
            refused.push(k);
        }
        refused.len() >= 3
    });
    h.etcd.restart(1);
    h.etcd.restart(2);
    h.etcd.wait_ready();
    let leader = h.wait_leader();
    h.wait_nodes(leader, &NODES);
    let out = h.cli(
        leader,
        &["exec", "--verb", "RUN", "--wait", "echo 1 >> ran.txt"],
    );
    assert_eq!(out.code, 0, "{out:?}");
    // What was acknowledged before is there; what was refused never ran.
    wait_until("every job done", DEADLINE, || {
        h.jobs(leader).iter().all(|j| !j["finished_ms"].is_null())
    });
    for n in NODES {
        let ran = lines(&h, n, "ran.txt");
        assert_eq!(ran.first(), Some(&0), "node {n}: {ran:?}");
        assert_eq!(ran.last(), Some(&1), "node {n}: {ran:?}");
        for k in &refused {
            assert!(!ran.contains(k), "node {n} ran refused job {k}: {ran:?}");
        }
    }
}

#[test]
fn a_standby_started_from_an_empty_directory_catches_up_and_can_take_over() {
    let Some(mut h) = HaCluster::start("ha-empty", 2, &NODES) else {
        return;
    };
    for i in 0..20 {
        let out = h.cli(
            0,
            &["exec", "--verb", "RUN", &format!("echo {i} >> ran.txt")],
        );
        assert_eq!(out.code, 0, "{out:?}");
    }
    wait_until("20 jobs done", DEADLINE, || {
        let j = h.jobs(0);
        j.len() == 20 && j.iter().all(|j| !j["finished_ms"].is_null())
    });
    h.server(1).signal(libc::SIGKILL);
    h.server(1).wait_exit(DEADLINE);
    fs::remove_dir_all(h.state(1)).unwrap();
    h.start_server(1);
    let seq = |i: usize| fs::read_to_string(h.state(i).join("replica.seq")).unwrap_or_default();
    wait_until("s1 to catch up", DEADLINE, || {
        !seq(1).is_empty() && seq(1) == seq(0)
    });
    h.server(0).signal(libc::SIGKILL);
    h.server(0).wait_exit(DEADLINE);
    h.wait_log(1, "won the lead in etcd");
    assert_eq!(h.wait_leader(), 1);
    let jobs = h.jobs(1);
    assert_eq!(jobs.len(), 20);
    assert!(
        jobs.iter()
            .all(|j| j["states"] == serde_json::json!({"succeeded": 3})),
        "{jobs:?}"
    );
    h.wait_nodes(1, &NODES);
    let out = h.cli(
        1,
        &["exec", "--verb", "RUN", "--wait", "echo 20 >> ran.txt"],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let want: Vec<u32> = (0..=20).collect();
    for n in NODES {
        assert_eq!(lines(&h, n, "ran.txt"), want, "node {n}");
    }
}
