//! End-to-end tests of what the daemons promise about acknowledged work:
//! crashes, restarts and disks that fail. Real processes on loopback.

mod util;

use std::fs;

use util::{wait_until, Cluster, DEADLINE};

/// The numbers a node's commands appended to `file`, in order.
fn lines(c: &Cluster, node: &str, file: &str) -> Vec<u32> {
    fs::read_to_string(c.node_dir(node).join(file))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[test]
fn kill_9_of_the_server_mid_run_loses_and_misreports_nothing() {
    const JOBS: u32 = 300;
    const NODES: [&str; 3] = ["k1", "k2", "k3"];
    let mut c = Cluster::start("crashrun", &NODES, "0.5");
    let mut yaml = String::from("---\n- jobs:\n");
    for i in 0..JOBS {
        yaml.push_str(&format!("  - RUN: sleep 0.02; echo {i} >> ran.txt\n"));
    }
    let file = c.dir.path.join("run.yml");
    fs::write(&file, yaml).unwrap();
    let out = c.cli(&["orchestrate", file.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");

    // Five kills, each once the slowest node has moved on since the last.
    for kill in 1..=5 {
        let mark = kill * JOBS as usize / 7;
        wait_until("the run to move on", DEADLINE, || {
            let log = c.server.as_ref().unwrap().log_text();
            assert!(!log.contains(" lost: "), "{log}");
            NODES.iter().all(|n| lines(&c, n, "ran.txt").len() >= mark)
        });
        c.server().signal(libc::SIGKILL);
        c.server().wait_exit(DEADLINE);
        // Down long enough for every client to reopen its sockets: each
        // then says Ready on its job socket, and again when the server
        // answers its first heartbeat with Register, before any job of
        // the restarted server reaches it.
        wait_until("every client to notice", DEADLINE, || {
            NODES.iter().all(|n| {
                let log = c.clients[*n].log_text();
                log.matches("server silent").count() >= kill
            })
        });
        c.start_server();
    }

    wait_until("every job done", DEADLINE * 2, || {
        let jobs = c.jobs_json();
        jobs.len() == JOBS as usize && jobs.iter().all(|j| !j["finished_ms"].is_null())
    });
    let jobs = c.jobs_json();
    for j in &jobs {
        assert_eq!(
            j["states"],
            serde_json::json!({"succeeded": 3}),
            "job {}: {}",
            j["args"],
            j
        );
    }
    // Every line ran exactly once, in order, on every node.
    let want: Vec<u32> = (0..JOBS).collect();
    for n in NODES {
        assert_eq!(lines(&c, n, "ran.txt"), want, "node {n}");
    }
    // Across all five restarts, nothing was lost, not even for a while.
    let log = c.server().log_text();
    assert_eq!(log.matches("server listening").count(), 6, "{log}");
    assert!(!log.contains(" lost"), "{log}");
}
