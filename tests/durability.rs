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
    let file = c.run_file(
        "run.yml",
        (0..JOBS).map(|i| format!("RUN: sleep 0.02; echo {i} >> ran.txt")),
    );
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

/// Kill -9 of the server at many moments of a run of quick jobs,
/// restarted at once, or once the clients noticed, and at the end together
/// with a client: a job runs at most once on a node, ever. (Before the
/// nodes' ledgers, a result that reached a restarted server ahead of its
/// node's `Ready` was followed by the same job again, and it ran twice.)
#[test]
fn a_crash_loop_of_the_server_never_runs_a_job_twice() {
    const JOBS: usize = 240;
    const KILLS: usize = 10;
    const NODES: [&str; 3] = ["q1", "q2", "q3"];
    let mut c = Cluster::start("crashloop", &NODES, "0.3");
    let file = c.run_file(
        "run.yml",
        (0..JOBS).map(|i| format!("RUN: echo {i} >> ran.txt")),
    );
    let out = c.cli(&["orchestrate", file.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    let no_repeats = |c: &Cluster, n: &str| {
        let got = lines(c, n, "ran.txt");
        for w in got.windows(2) {
            assert!(
                w[0] < w[1],
                "node {n} ran a job twice or out of order: {got:?}"
            );
        }
        got.len()
    };
    for kill in 0..KILLS {
        // Each kill once some node moved on: moments spread over the run,
        // the first within its first jobs.
        let mark = kill * JOBS / (KILLS + 2);
        wait_until("the run to move on", DEADLINE, || {
            NODES.iter().any(|n| no_repeats(&c, n) > mark)
        });
        let last = kill == KILLS - 1;
        c.server().signal(libc::SIGKILL);
        if last {
            c.client("q3").signal(libc::SIGKILL);
            c.client("q3").wait_exit(DEADLINE);
        }
        c.server().wait_exit(DEADLINE);
        if kill % 2 == 1 {
            // Down until a client noticed (it reopens its sockets, and
            // says Ready on the new ones).
            let before = c.clients["q1"].log_text().matches("server silent").count();
            wait_until("a client to notice", DEADLINE, || {
                c.clients["q1"].log_text().matches("server silent").count() > before
            });
        }
        c.start_server();
        if last {
            c.start_client("q3");
        }
    }
    wait_until("every job done", DEADLINE * 2, || {
        let jobs = c.jobs_json();
        jobs.len() == JOBS && jobs.iter().all(|j| !j["finished_ms"].is_null())
    });
    let jobs = c.jobs_json();
    let mut lost_on_q3 = 0;
    for j in &jobs {
        let states = j["states"].as_object().unwrap();
        // q1 and q2 were never killed: every job succeeded there once.
        // q3 was killed with the server once: a job may be lost there (it
        // may or may not have run), and the rest of the run skipped.
        let ok = states
            .get("succeeded")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        let lost = states.get("lost").and_then(|v| v.as_u64()).unwrap_or(0);
        let skipped = states.get("skipped").and_then(|v| v.as_u64()).unwrap_or(0);
        assert!(
            ok >= 2 && ok + lost + skipped == 3 && lost <= 1,
            "job {}: {j}",
            j["args"]
        );
        lost_on_q3 += lost;
    }
    // A node holds at most two jobs at once (one running, one waiting):
    // no more can be lost there.
    assert!(
        lost_on_q3 <= 2,
        "more than the jobs in flight on q3 were lost"
    );
    let want: Vec<u32> = (0..JOBS as u32).collect();
    for n in ["q1", "q2"] {
        assert_eq!(lines(&c, n, "ran.txt"), want, "node {n}");
    }
    no_repeats(&c, "q3");
    let log = c.server().log_text();
    assert_eq!(log.matches("server listening").count(), KILLS + 1, "{log}");
}

/// Zeros in the middle of a journal (4 KiB of them, as a damaged disk
/// leaves) are damage, not a crash's torn tail: the daemon refuses to
/// start, names the file, the byte and the `truncate` command, and changes
/// nothing. (Before, the server cut the history there and dropped every
/// acknowledged job after it.)
#[test]
fn a_hole_in_a_journal_is_refused_as_damage_and_nothing_is_cut() {
    let mut c = Cluster::start("hole", &["h1"], "0.5");
    let pad = "x".repeat(300);
    let file = c.run_file(
        "args.yml",
        (0..60).map(|i| format!("ARG: key{i} value-{i}-{pad}")),
    );
    let out = c.cli(&["orchestrate", file.to_str().unwrap(), "--wait"]);
    assert_eq!(out.code, 0, "{out:?}");
    c.server().signal(libc::SIGKILL);
    c.server().wait_exit(DEADLINE);
    c.client("h1").signal(libc::SIGKILL);
    c.client("h1").wait_exit(DEADLINE);

    let punch = |path: &std::path::Path| {
        let mut bytes = fs::read(path).unwrap();
        assert!(
            bytes.len() > 12_000,
            "{} is too small: {}",
            path.display(),
            bytes.len()
        );
        let at = bytes.len() / 2 - 2048;
        bytes[at..at + 4096].fill(0);
        fs::write(path, &bytes).unwrap();
        bytes
    };
    let refused = |args: Vec<String>, path: &std::path::Path, damaged: &[u8]| {
        let out = util::run_cli(&c.dir.path, &args);
        assert_eq!(out.code, 2, "{out:?}");
        let err = out.stderr.trim();
        assert_eq!(err.lines().count(), 1, "{out:?}");
        let shown = path.display().to_string();
        assert!(
            err.contains(&shown) && err.contains("cannot be read, and more follow"),
            "{err}"
        );
        assert!(err.contains("`truncate -s "), "{err}");
        assert_eq!(fs::read(path).unwrap(), damaged, "{shown} was changed");
    };

    let history = c.state_path().join("history.bin");
    let damaged = punch(&history);
    let mut server: Vec<String> = [
        "server",
        "--state-path",
        &c.state_path().display().to_string(),
        "--bind-address",
        "127.0.0.1",
        "--shared-key",
        util::SHARED_KEY,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    server.extend(c.common());
    refused(server, &history, &damaged);
    assert!(
        std::os::unix::net::UnixStream::connect(c.socket()).is_err(),
        "the refused server serves its socket"
    );

    let journal = c.node_dir("h1").join("cache").join("journal.bin");
    let damaged = punch(&journal);
    let node = c.node_dir("h1");
    let mut client: Vec<String> = [
        "client",
        "--identity",
        "h1",
        "--server-address",
        "127.0.0.1",
        "--cache-path",
        &node.join("cache").display().to_string(),
        "--key-path",
        &node.join("key").display().to_string(),
        "--shared-key",
        util::SHARED_KEY,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    client.extend(c.common());
    refused(client, &journal, &damaged);
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

#[test]
fn a_full_disk_on_the_server_acknowledges_nothing_and_service_resumes_by_itself() {
    let mut c = Cluster::new("fullsrv", "0.5");
    let Some(disk) = util::Tmpfs::mount(&c.state_path(), "512k") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    c = Cluster::start_in(c, &["f1", "f2"]);
    let before = c.submit(&[], "echo before");
    c.wait_job_done(&before);
    // A job that will end while the disk is full, with a CLI waiting on
    // it. Its result, like each refused submission, is bigger than a
    // page, so it cannot slip into what is left of the journal's last page.
    let mut waiter = c.cli_background(
        &[
            "exec",
            "--verb",
            "RUN",
            "--target",
            "f1",
            "--wait",
            "while [ ! -e go ]; do sleep 0.05; done; echo gated; head -c 20000 /dev/zero >&2",
        ],
        "waiter.log",
    );
    let gated = util::running_job(&c, &waiter, "f1");
    let filler = disk.fill();
    fs::write(c.node_dir("f1").join("go"), "").unwrap();
    // Submissions are refused, each with one line, and nothing runs.
    for i in 0..20 {
        let out = c.cli(&[
            "exec",
            "--verb",
            "RUN",
            "--wait",
            &format!("echo {i} >> refused.txt # {}", "x".repeat(5000)),
        ]);
        assert_eq!(out.code, 2, "{out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
        assert!(
            out.stderr.contains("No space left on device")
                && out.stderr.contains("nothing was queued"),
            "{out:?}"
        );
    }
    // The gated job finished on its node, but its result cannot be
    // recorded: it is not acknowledged, and not reported done.
    wait_until("the gated job to end on its node", DEADLINE, || {
        c.clients["f1"]
            .log_text()
            .contains(&format!("job {gated}: exit 0"))
    });
    // Give the server every chance to tell the waiter too early: it
    // retries its writes every second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        assert!(waiter.is_running(), "{}", waiter.log_text());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let log = c.server().log_text();
    assert_eq!(
        log.matches("cannot write the server's state").count(),
        1,
        "said once a minute at most:\n{log}"
    );

    // Space comes back: the server goes on by itself.
    fs::remove_file(filler).unwrap();
    let out = c.cli(&["exec", "--verb", "RUN", "--wait", "echo after"]);
    assert_eq!(out.code, 0, "{out:?}");
    wait_until("recovery logged", DEADLINE, || {
        c.server().log_text().contains("are written again")
    });
    // The waiter hears of its job once the result is on disk.
    assert_eq!(waiter.wait_exit(DEADLINE), Some(0), "{}", waiter.log_text());
    assert!(waiter.log_text().contains("f1: succeeded"));
    for n in ["f1", "f2"] {
        assert!(!c.node_dir(n).join("refused.txt").exists());
    }

    // What was acknowledged is on disk; what was refused is not.
    c.server().signal(libc::SIGKILL);
    c.server().wait_exit(DEADLINE);
    c.start_server();
    let jobs = c.jobs_json();
    assert_eq!(jobs.len(), 3, "{jobs:?}");
    let info = c.wait_job_done(&gated);
    assert_eq!(info["nodes"][0]["stdout"], "gated\n", "{info}");
}

#[test]
fn a_full_cache_disk_fails_the_arg_and_keeps_nothing_it_could_not_save() {
    let mut c = Cluster::new("fullcache", "0.5");
    let cache = c.node_dir("fc").join("cache");
    let Some(disk) = util::Tmpfs::mount(&cache, "256k") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    c = Cluster::start_in(c, &["fc"]);
    let out = c.cli(&["exec", "--verb", "ARG", "--wait", "kept before"]);
    assert_eq!(out.code, 0, "{out:?}");

    let filler = disk.fill();
    // Bigger than a page: it cannot slip into the journal's last one.
    let big = "v".repeat(8000);
    let out = c.cli(&["exec", "--verb", "ARG", "--wait", &format!("lost {big}")]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("ARG lost: cannot save it in the cache")
            && out.stdout.contains("No space left on device"),
        "{out:?}"
    );
    // A command whose --stdout-arg cannot be saved fails too.
    let out = c.cli(&[
        "exec",
        "--verb",
        "RUN",
        "--wait",
        &format!("--stdout-arg out2 echo {big}"),
    ]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout
            .contains("the command succeeded, but --stdout-arg out2"),
        "{out:?}"
    );

    // A command runs all the same (say, one that frees the disk): the
    // node's job ledger writes into space it keeps allocated ahead.
    let out = c.cli(&[
        "exec",
        "--verb",
        "RUN",
        "--wait",
        "--skip-cache echo still runs",
    ]);
    assert_eq!(out.code, 0, "{out:?}");

    fs::remove_file(filler).unwrap();
    let out = c.cli(&["exec", "--verb", "ARG", "--wait", "later fine"]);
    assert_eq!(out.code, 0, "{out:?}");
    // After a restart the node has what it reported saved, and only that.
    c.client("fc").signal(libc::SIGKILL);
    c.client("fc").wait_exit(DEADLINE);
    c.restart_client_with("fc", &[]);
    let out = c.cli(&[
        "exec",
        "--verb",
        "RUN",
        "--wait",
        "echo {{ kept }}/{{ later }}",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let id = util::job_id(&out.stdout);
    assert_eq!(c.job_info(&id)["nodes"][0]["stdout"], "before/fine\n");
    for gone in ["lost", "out2"] {
        let out = c.cli(&[
            "exec",
            "--verb",
            "RUN",
            "--wait",
            &format!("echo {{{{ {gone} }}}}"),
        ]);
        assert_eq!(out.code, 1, "{out:?}");
        assert!(out.stdout.contains(&format!("'{gone}'")), "{out:?}");
    }
    drop(disk);
}

#[test]
fn sigterm_tells_waiting_clis_the_server_is_stopping_and_the_work_goes_on() {
    let mut c = Cluster::start("drain", &["d1"], "0.5");
    let mut waiter = c.cli_background(
        &[
            "exec",
            "--verb",
            "RUN",
            "--wait",
            "while [ ! -e go ]; do sleep 0.05; done; echo done",
        ],
        "waiter.log",
    );
    let id = util::running_job(&c, &waiter, "d1");
    c.server().signal(libc::SIGTERM);
    assert_eq!(c.server().wait_exit(DEADLINE), Some(0));
    assert_eq!(waiter.wait_exit(DEADLINE), Some(3), "{}", waiter.log_text());
    let said = waiter.log_text();
    assert!(
        said.contains(&format!(
            "director: the server is stopping; job {id} is kept and goes on when it is back"
        )),
        "{said}"
    );
    // Back again, the job finishes.
    c.start_server();
    fs::write(c.node_dir("d1").join("go"), "").unwrap();
    let info = c.wait_job_done(&id);
    assert_eq!(info["nodes"][0]["stdout"], "done\n", "{info}");
}

#[test]
fn retention_forgets_the_oldest_finished_jobs_in_memory_and_on_disk() {
    let mut c = Cluster::new("retain", "0.5");
    c.daemon_args = vec!["--job-retention-count".into(), "3".into()];
    c = Cluster::start_in(c, &["r1"]);
    for i in 0..6 {
        let out = c.cli(&[
            "exec",
            "--verb",
            "RUN",
            "--wait",
            &format!("echo marker-{i}"),
        ]);
        assert_eq!(out.code, 0, "{out:?}");
    }
    // Retention runs every 10 s and at start.
    wait_until("retention", DEADLINE, || c.jobs_json().len() == 3);
    let args: Vec<String> = c
        .jobs_json()
        .iter()
        .map(|j| j["args"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(args, ["echo marker-3", "echo marker-4", "echo marker-5"]);
    // The journal forgets them too once it is compacted (at the latest
    // just after the next start, on the I/O thread); the outputs kept are
    // read back from it.
    c.server().signal(libc::SIGTERM);
    c.server().wait_exit(DEADLINE);
    c.start_server();
    wait_until(
        "the forgotten outputs gone from the journal",
        DEADLINE,
        || {
            let history = fs::read(c.state_path().join("history.bin")).unwrap();
            (0..3).all(|i| !util::contains(&history, format!("marker-{i}\n").as_bytes()))
        },
    );
    let history = fs::read(c.state_path().join("history.bin")).unwrap();
    for i in 3..6 {
        let found = util::contains(&history, format!("marker-{i}\n").as_bytes());
        assert!(found, "marker-{i} is not in the journal");
    }
    let jobs = c.jobs_json();
    assert_eq!(jobs.len(), 3);
    let id = jobs[2]["id"].as_str().unwrap();
    assert_eq!(c.job_info(id)["nodes"][0]["stdout"], "marker-5\n");
}

#[test]
fn a_slow_disk_never_stalls_the_servers_heartbeats_or_answers() {
    let mut c = Cluster::new("slowdisk", "0.3");
    // Every sync takes 1.5 s: more than a client's 3 intervals of silence
    // (0.9 s). A loop that waited on one would go silent, and clients
    // would reconnect and say so.
    let Some(shim) = util::slow_fsync_shim(&c.dir.path, 1500) else {
        eprintln!("skipped: no C compiler for the LD_PRELOAD shim");
        return;
    };
    c.start_server_env(&[("LD_PRELOAD", shim.to_str().unwrap())]);
    let names = ["s1", "s2", "s3", "s4", "s5", "s6"];
    for n in names {
        c.start_client(n);
    }
    c.wait_nodes(&names);
    // Work whose results must be synced, while the CLI asks questions.
    let mut waiter = c.cli_background(
        &[
            "exec",
            "--verb",
            "RUN",
            "--wait",
            "for i in 1 2 3 4 5; do echo $i; sleep 0.3; done",
        ],
        "waiter.log",
    );
    for _ in 0..3 {
        let out = c.cli(&["manage", "--list-nodes", "--format", "json"]);
        assert_eq!(out.code, 0, "{out:?}");
        let nodes: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(nodes.as_array().unwrap().len(), 6);
        let out = c.cli(&["exec", "--verb", "RUN", "echo more"]);
        assert_eq!(out.code, 0, "{out:?}");
    }
    assert_eq!(waiter.wait_exit(DEADLINE), Some(0), "{}", waiter.log_text());
    assert!(
        waiter.log_text().contains("6 succeeded"),
        "{}",
        waiter.log_text()
    );
    for n in names {
        let log = c.clients[n].log_text();
        assert!(!log.contains("server silent"), "{n}: {log}");
    }
    let log = c.server().log_text();
    assert!(!log.contains("expired"), "{log}");
}

#[test]
fn a_slow_cache_disk_never_stalls_a_clients_heartbeats() {
    let mut c = Cluster::new("slowcache", "0.3");
    // 1.5 s per sync: more than the 0.9 s of silence a client's server
    // would give it up after.
    let Some(shim) = util::slow_fsync_shim(&c.dir.path, 1500) else {
        eprintln!("skipped: no C compiler for the LD_PRELOAD shim");
        return;
    };
    c.start_server();
    c.start_client_env("sc", &[("LD_PRELOAD", shim.to_str().unwrap())]);
    c.wait_nodes(&["sc"]);
    // Each value is synced (1.5 s here) before its job succeeds; the
    // client's loop beats meanwhile.
    for (k, v) in [("one", "1"), ("two", "2")] {
        let out = c.cli(&["exec", "--verb", "ARG", "--wait", &format!("{k} {v}")]);
        assert_eq!(out.code, 0, "{out:?}");
    }
    let out = c.cli(&["exec", "--verb", "RUN", "--wait", "echo {{ one }}{{ two }}"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("sc: succeeded"), "{out:?}");
    // A received file is synced (and its owner looked up) off the loop too.
    let src = c.dir.path.join("payload.txt");
    fs::write(&src, "payload\n").unwrap();
    let add = format!("--chown root {} placed.txt", src.display());
    let out = c.cli(&["exec", "--verb", "ADD", "--wait", &add]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        fs::read_to_string(c.node_dir("sc").join("placed.txt")).unwrap(),
        "payload\n"
    );
    let log = c.server().log_text();
    assert!(!log.contains("expired"), "{log}");
    let log = c.clients["sc"].log_text();
    assert!(!log.contains("server silent"), "{log}");
}

#[test]
fn no_compaction_is_started_without_room_for_it_and_service_goes_on() {
    let mut c = Cluster::new("noroom", "0.5");
    let Some(disk) = util::Tmpfs::mount(&c.state_path(), "4m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    c = Cluster::start_in(c, &["nr", "other"]);
    // A run that is still going keeps all its jobs through a purge: about
    // 1.2 MiB of outputs that a compaction would have to copy.
    let mut yaml = String::from("---\n- targets: [nr]\n  jobs:\n");
    for _ in 0..6 {
        yaml.push_str("  - RUN: --skip-cache head -c 200000 /dev/zero\n");
    }
    yaml.push_str("  - RUN: while [ ! -e go ]; do sleep 0.05; done\n");
    let file = c.dir.path.join("run.yml");
    fs::write(&file, yaml).unwrap();
    let out = c.cli(&["orchestrate", file.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    wait_until("six outputs recorded", DEADLINE, || {
        c.jobs_json()
            .iter()
            .filter(|j| j["states"] == serde_json::json!({"succeeded": 1}))
            .count()
            == 6
    });
    // Leave about 300 KiB: room for appends, not for that copy.
    let filler = disk.fill();
    let f = fs::OpenOptions::new().write(true).open(&filler).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - 300 * 1024).unwrap();
    drop(f);
    let out = c.cli(&["manage", "--purge-jobs"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("kept 7"), "{out:?}");
    // Nothing is held behind a rewrite that cannot be done.
    let out = c.cli(&[
        "exec",
        "--verb",
        "RUN",
        "--target",
        "other",
        "--wait",
        "echo still",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    wait_until("the skipped compaction said", DEADLINE, || {
        let log = c.server().log_text();
        log.contains("cannot compact the job history") && log.contains("needed for the copy")
    });
    let log = c.server().log_text();
    assert!(!log.contains("cannot write the server's state"), "{log}");
    fs::write(c.node_dir("nr").join("go"), "").unwrap();
    wait_until("the run to end", DEADLINE, || {
        c.jobs_json().iter().all(|j| !j["finished_ms"].is_null())
    });
}

#[test]
fn a_compaction_that_fails_is_given_up_and_every_output_stays_readable() {
    let mut c = Cluster::start("badcompact", &["bc", "other"], "0.5");
    // A run still going keeps its finished jobs through a purge.
    let mut yaml = String::from("---\n- targets: [bc]\n  jobs:\n");
    for i in 0..3 {
        yaml.push_str(&format!("  - RUN: echo kept-{i}\n"));
    }
    yaml.push_str("  - RUN: while [ ! -e go ]; do sleep 0.05; done; echo last\n");
    let file = c.dir.path.join("run.yml");
    fs::write(&file, yaml).unwrap();
    assert_eq!(c.cli(&["orchestrate", file.to_str().unwrap()]).code, 0);
    let done = |c: &Cluster| {
        c.jobs_json()
            .iter()
            .filter(|j| j["states"] == serde_json::json!({"succeeded": 1}))
            .count()
    };
    wait_until("three outputs recorded", DEADLINE, || done(&c) == 3);
    let before = c.submit(&["other"], "echo before");
    c.wait_job_done(&before);
    // The rewrite's temporary file cannot be made: a directory is in the way.
    let blocker = c.state_path().join("history.tmp");
    fs::create_dir(&blocker).unwrap();
    let out = c.cli(&["manage", "--purge-jobs"]);
    assert!(out.stdout.contains("kept 4"), "{out:?}");
    wait_until("the compaction given up", DEADLINE, || {
        c.server()
            .log_text()
            .contains("cannot compact the job history")
    });
    // Service goes on, and every output reads back: those the compaction
    // meant to move, and one recorded after it was given up.
    let out = c.cli(&[
        "exec",
        "--verb",
        "RUN",
        "--target",
        "other",
        "--wait",
        "echo after",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let outputs = |c: &Cluster| -> Vec<String> {
        c.jobs_json()
            .iter()
            .filter(|j| !j["finished_ms"].is_null())
            .map(|j| {
                let id = j["id"].as_str().unwrap();
                c.job_info(id)["nodes"][0]["stdout"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(outputs(&c), ["kept-0\n", "kept-1\n", "kept-2\n", "after\n"]);
    // Once it can, the next compaction goes through, and so do restarts.
    fs::remove_dir(&blocker).unwrap();
    let out = c.cli(&["manage", "--purge-jobs"]);
    assert_eq!(out.code, 0, "{out:?}");
    fs::write(c.node_dir("bc").join("go"), "").unwrap();
    wait_until("the run to end", DEADLINE, || {
        c.jobs_json().iter().all(|j| !j["finished_ms"].is_null())
    });
    c.server().signal(libc::SIGKILL);
    c.server().wait_exit(DEADLINE);
    c.start_server();
    // The second purge forgot the finished jobs outside the run.
    assert_eq!(outputs(&c), ["kept-0\n", "kept-1\n", "kept-2\n", "last\n"]);
}

/// After a server restart, a node that does not come back holds a
/// `--wait` until it is given up on (3 intervals): the CLI says so at
/// once, naming it and how long at most, before any result; the node's
/// part then ends unreachable (exit status 4), and the nodes that came
/// back ran theirs.
#[test]
fn a_wait_on_a_node_that_has_not_reconnected_says_so_at_once() {
    let mut c = Cluster::start("reconnect-wait", &["back", "gone"], "1");
    c.server().signal(libc::SIGTERM);
    c.server().wait_exit(DEADLINE);
    c.client("gone").signal(libc::SIGKILL);
    c.client("gone").wait_exit(DEADLINE);
    c.start_server();
    c.wait_nodes(&["back"]);
    let nodes = c.nodes_json();
    let gone = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "gone")
        .expect("gone is known after the restart");
    assert_eq!(gone["state"], "reconnecting", "{nodes}");

    // An orchestration says it too, under its plan.
    let file = c.dir.path.join("run.yml");
    fs::write(&file, "- jobs:\n  - RUN: --skip-cache echo run\n").unwrap();
    let run = c.cli(&["orchestrate", file.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .contains(" s for 1 node to reconnect after the server restarted (gone)"),
        "{}",
        run.stdout
    );

    let out = c.cli(&["exec", "--verb", "RUN", "--wait", "--skip-cache", "echo hi"]);
    assert_eq!(out.code, 4, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    let said = lines
        .iter()
        .position(|l| l.starts_with("waiting up to "))
        .unwrap_or_else(|| panic!("nothing said of the wait: {}", out.stdout));
    assert!(
        lines[said].ends_with(
            " s for 1 node to reconnect after the server restarted (gone): their jobs start when they do, or end unreachable"
        ),
        "{}",
        lines[said]
    );
    // At most 3 intervals of 1 s.
    let secs: u64 = lines[said]["waiting up to ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3).contains(&secs), "{}", lines[said]);
    // Said before any result.
    let first_result = lines
        .iter()
        .position(|l| l.starts_with("back:") || l.starts_with("gone:"))
        .unwrap_or_else(|| panic!("no results: {}", out.stdout));
    assert!(said < first_result, "{}", out.stdout);
    assert!(out.stdout.contains("back: succeeded"), "{}", out.stdout);
    assert!(out.stdout.contains("gone: unreachable"), "{}", out.stdout);
}
