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

#[test]
fn a_second_daemon_on_a_directory_in_use_exits_at_once_naming_it_and_its_owner() {
    let mut c = Cluster::start("owner", &["o1"], "1");
    let done = c.submit(&["o1"], "echo kept");
    c.wait_job_done(&done);
    let history = c.state_path().join("history.bin");
    let before = fs::read(&history).unwrap();

    // Another server: its own ports and socket, the same --state-path.
    let ports = util::free_ports();
    let state = c.state_path().display().to_string();
    let other_socket = c.dir.path.join("other.sock").display().to_string();
    let mut args: Vec<String> = [
        "server",
        "--state-path",
        &state,
        "--socket-path",
        &other_socket,
        "--bind-address",
        "127.0.0.1",
        "--shared-key",
        util::SHARED_KEY,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (flag, port) in ["--job-port", "--transfer-port", "--heartbeat-port"]
        .iter()
        .zip(ports)
    {
        args.extend([flag.to_string(), port.to_string()]);
    }
    let out = util::run_cli(&c.dir.path, &args);
    let server_pid = c.server().pid();
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(
        out.stderr.trim(),
        format!(
            "director: the state directory (--state-path) {state} is in use by director process {server_pid}: stop it, or give this one another directory"
        )
    );
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    // It touched nothing: no socket, the history as it was.
    assert!(!c.dir.path.join("other.sock").exists());
    assert_eq!(fs::read(&history).unwrap(), before);

    // Another client on o1's cache directory.
    let cache = c.node_dir("o1").join("cache").display().to_string();
    let key = c.dir.path.join("o2-key").display().to_string();
    let mut args = vec![
        "client".to_string(),
        "--identity".into(),
        "o2".into(),
        "--server-address".into(),
        "127.0.0.1".into(),
        "--cache-path".into(),
        cache.clone(),
        "--key-path".into(),
        key,
        "--shared-key".into(),
        util::SHARED_KEY.into(),
    ];
    args.extend(c.common());
    let out = util::run_cli(&c.dir.path, &args);
    let client_pid = c.client("o1").pid();
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.trim().ends_with(&format!(
            "the cache directory (--cache-path) {cache} is in use by director process {client_pid}: stop it, or give this one another directory"
        )),
        "{out:?}"
    );
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");

    // The owners never noticed.
    let out = c.cli(&["exec", "--verb", "RUN", "--wait", "echo still"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(c.node_names(), vec!["o1"]);
    // A killed owner leaves nothing stale: its successor starts.
    c.server().signal(libc::SIGKILL);
    c.server().wait_exit(DEADLINE);
    c.start_server();
    c.wait_job_done(&done);
}
