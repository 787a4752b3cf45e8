//! End-to-end tests of the core: a real server and clients on loopback,
//! driven through the real CLI.

mod util;

use std::fs;

use util::{pid_gone, read_pid, wait_until, Cluster, DEADLINE};

fn parts(info: &serde_json::Value) -> Vec<serde_json::Value> {
    info["nodes"].as_array().unwrap().clone()
}

fn part<'a>(parts: &'a [serde_json::Value], node: &str) -> &'a serde_json::Value {
    parts
        .iter()
        .find(|p| p["node"] == node)
        .unwrap_or_else(|| panic!("no part for {node}"))
}

#[test]
fn exec_runs_on_every_node_or_only_the_named_one() {
    let c = Cluster::start("exec-all", &["n1", "n2", "n3"], "1");

    let out = c.cli(&[
        "exec",
        "--verb",
        "RUN",
        "--wait",
        "echo ran > ran.txt; echo hello",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    for n in ["n1", "n2", "n3"] {
        assert_eq!(
            fs::read_to_string(c.node_dir(n).join("ran.txt")).unwrap(),
            "ran\n"
        );
        assert!(
            out.stdout.contains(&format!("{n}: succeeded, exit 0")),
            "{}",
            out.stdout
        );
    }
    assert!(out.stdout.contains("stdout | hello"));
    assert!(out.stdout.contains("3 succeeded"));

    let id = c.submit(&["n2"], "echo only > only.txt");
    let info = c.wait_job_done(&id);
    let ps = parts(&info);
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0]["node"], "n2");
    assert_eq!(ps[0]["state"], "succeeded");
    assert!(c.node_dir("n2").join("only.txt").exists());
    assert!(!c.node_dir("n1").join("only.txt").exists());
    assert!(!c.node_dir("n3").join("only.txt").exists());
    assert_eq!(info["job"]["verb"], "RUN");
    // The task's SHA1 names the task: the one `exec` printed, the same for
    // the same job string, another for another.
    let sha1 = info["job"]["task_sha1"].as_str().unwrap().to_owned();
    let printed = |job: &str| {
        let out = c.cli(&["exec", "--verb", "RUN", "--target", "n2", job]);
        assert_eq!(out.code, 0, "{out:?}");
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix("task sha1 ").map(str::to_owned))
            .unwrap()
    };
    assert_eq!(printed("echo only > only.txt"), sha1);
    assert_ne!(printed("echo other > only.txt"), sha1);
    assert!(ps[0]["exec_secs"].as_f64().is_some());
    assert!(ps[0]["rtt_secs"].as_f64().is_some());

    // The human views list what JSON does.
    let jobs = c.cli(&["manage", "--list-jobs"]);
    assert_eq!(jobs.code, 0);
    assert!(jobs.stdout.starts_with("ID"));
    assert!(jobs.stdout.contains(&id[..8]) && jobs.stdout.contains("1 succeeded"));
    // Every line fits 100 columns.
    assert!(
        jobs.stdout.lines().all(|l| l.len() <= 100),
        "{}",
        jobs.stdout
    );
    // Any unique prefix of 6 or more characters names the job.
    let by_prefix = c.cli(&["manage", "--job-info", &id[..6], "--format", "json"]);
    assert_eq!(by_prefix.code, 0, "{by_prefix:?}");
    assert!(by_prefix.stdout.contains(&id), "{by_prefix:?}");
    assert!(c
        .nodes_json()
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["version"] == env!("CARGO_PKG_VERSION")));
    let nodes = c.cli(&["manage", "--list-nodes"]);
    assert!(nodes.stdout.starts_with("NAME") && nodes.stdout.contains("n3"));
    let text = c.cli(&["manage", "--job-info", &id]);
    assert!(text.stdout.contains("task sha1") && text.stdout.contains("n2"));
}

#[test]
fn a_failure_on_one_node_reaches_job_info() {
    let c = Cluster::start("failure", &["ok1", "bad", "ok2"], "1");
    fs::write(c.node_dir("bad").join("fail-here"), "").unwrap();
    let out = c.cli(&[
        "exec",
        "--verb",
        "RUN",
        "--wait",
        "if [ -e fail-here ]; then echo boom >&2; exit 7; fi; echo fine",
    ]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("bad: failed, exit 7"), "{}", out.stdout);
    assert!(out.stdout.contains("stderr | boom"));
    let info = c.wait_job_done(&util::job_id(&out.stdout));
    let ps = parts(&info);
    let bad = part(&ps, "bad");
    assert_eq!(bad["state"], "failed");
    assert_eq!(bad["exit_code"], 7);
    assert_eq!(bad["stderr"], "boom\n");
    for n in ["ok1", "ok2"] {
        assert_eq!(part(&ps, n)["state"], "succeeded");
        assert_eq!(part(&ps, n)["stdout"], "fine\n");
    }
    assert_eq!(info["job"]["states"]["failed"], 1);
    assert_eq!(info["job"]["states"]["succeeded"], 2);
}

#[test]
fn heartbeats_keep_flowing_while_a_command_runs() {
    let c = Cluster::start("long", &["busy", "idle"], "1");
    let id = c.submit(&["busy"], "sleep 5");
    let mut seen = Vec::new();
    wait_until("long job done", DEADLINE, || {
        let state = c.part_state(&id, "busy");
        if state == "running" || state == "sent" {
            let nodes = c.nodes_json();
            let busy = nodes
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["name"] == "busy")
                .expect("busy node expired");
            let beat = busy["last_heartbeat_ms"].as_u64().unwrap();
            if seen.last() != Some(&beat) {
                seen.push(beat);
            }
        }
        state == "succeeded" || state == "failed"
    });
    assert_eq!(c.part_state(&id, "busy"), "succeeded");
    assert!(
        seen.len() >= 3,
        "heartbeats seen while the command ran: {seen:?}"
    );
    assert!(!c.server.as_ref().unwrap().log_text().contains("expired"));
}

/// The missed-drain trap: with a 60 s heartbeat there is no other traffic to
/// wake a loop that left messages unread behind an edge-triggered fd.
#[test]
fn a_burst_of_100_jobs_to_one_node_all_complete() {
    let c = Cluster::start("burst", &["solo"], "60");
    let ids: Vec<String> = (0..100)
        .map(|i| c.submit(&["solo"], &format!("echo {i} >> burst.txt")))
        .collect();
    wait_until("100 jobs done", DEADLINE * 2, || {
        let jobs = c.jobs_json();
        jobs.len() == 100 && jobs.iter().all(|j| j["states"]["succeeded"] == 1)
    });
    // Run one at a time, in submission order.
    let lines: Vec<String> = fs::read_to_string(c.node_dir("solo").join("burst.txt"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let want: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(lines, want);
    // Each submission got a job of its own, and it is the one listed.
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 100, "job ids repeat: {ids:?}");
    let listed: std::collections::HashSet<String> = c
        .jobs_json()
        .iter()
        .filter_map(|j| j["id"].as_str().map(str::to_owned))
        .collect();
    assert!(ids.iter().all(|i| listed.contains(i)), "{ids:?}");
}

/// A log line's time as Unix milliseconds (the logger writes UTC).
fn log_time_ms(line: &str) -> u64 {
    // "2026-11-25 14:07:26.123 ..."
    let (date, rest) = line.split_once(' ').unwrap();
    let time = rest.split_whitespace().next().unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (hms, ms) = time.split_once('.').unwrap();
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2];
    (secs * 1000 + ms.parse::<i64>().unwrap()) as u64
}

#[test]
fn a_killed_client_goes_offline_after_expiry() {
    let mut c = Cluster::start("kill9", &["stay", "gone"], "1");
    // The bound the server holds the node to: 3 of its 1 s intervals after
    // its last heartbeat (not the test's generous deadline).
    let node = |c: &Cluster, name: &str| {
        c.nodes_json()
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .cloned()
    };
    let gone = node(&c, "gone").unwrap();
    let window = gone["expires_ms"].as_u64().unwrap() - gone["last_heartbeat_ms"].as_u64().unwrap();
    assert_eq!(window, 3000, "{gone}");
    c.client("gone").signal(libc::SIGKILL);
    c.client("gone").wait_exit(DEADLINE);
    // Its last word: no heartbeat comes after the kill.
    let last = node(&c, "gone").map(|n| n["last_heartbeat_ms"].as_u64().unwrap());
    wait_until("gone expired", DEADLINE, || {
        c.node_names() == vec!["stay".to_string()]
    });
    let log = c.server().log_text();
    assert!(
        log.contains("node=gone: expired (no heartbeat within 3 intervals)"),
        "{log}"
    );
    // The removal came from the timer of that last heartbeat's expiry,
    // which the server logs with the time it fired.
    let line = log
        .lines()
        .find(|l| l.contains("node=gone: expired"))
        .unwrap();
    let fired = log_time_ms(line);
    if let Some(last) = last {
        assert!(
            fired >= last + 3000,
            "expired at {fired}, before its expiry {}",
            last + 3000
        );
    }
}

#[test]
fn a_client_killed_mid_job_is_reported_lost_while_the_others_finish() {
    let mut c = Cluster::start("lost", &["a", "victim", "c"], "1");
    fs::write(c.node_dir("victim").join("slow"), "").unwrap();
    let args: Vec<String> = [
        "exec",
        "--verb",
        "RUN",
        "--wait",
        "if [ -e slow ]; then echo $$ > pid; exec sleep 600; fi; echo done",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(c.common())
    .collect();
    let dir = c.dir.path.clone();
    let waiter = std::thread::spawn(move || util::run_cli(&dir, &args));

    let orphan = read_pid(&c.node_dir("victim").join("pid"));
    // The live nodes' results are in before the victim dies: nothing waits on it.
    let id = {
        let mut id = String::new();
        wait_until("live nodes done", DEADLINE, || {
            match c.jobs_json().first() {
                Some(j) if j["states"]["succeeded"] == 2 => {
                    id = j["id"].as_str().unwrap().to_owned();
                    true
                }
                _ => false,
            }
        });
        id
    };
    // It runs (a node says so once a job has run for 100 ms).
    wait_until("the victim's part running", DEADLINE, || {
        c.part_state(&id, "victim") == "running"
    });
    c.client("victim").signal(libc::SIGKILL);

    let out = waiter.join().unwrap();
    unsafe { libc::kill(orphan, libc::SIGKILL) };
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("victim: lost"), "{}", out.stdout);
    assert!(out.stdout.contains("node expired"), "{}", out.stdout);
    assert!(out.stdout.contains("2 succeeded, 1 lost"), "{}", out.stdout);
    let log = c.server().log_text();
    assert!(log.contains("node=victim: expired"));
    assert!(
        !log.contains("node=a: expired") && !log.contains("node=c: expired"),
        "{log}"
    );
    let mut names = c.node_names();
    names.sort();
    assert_eq!(names, vec!["a", "c"]);
}

#[test]
fn sigterm_stops_a_client_and_its_command_process_group() {
    let mut c = Cluster::start("sigterm", &["n"], "1");
    let id = c.submit(
        &["n"],
        "sleep 300 & echo $! > bg.pid; echo $$ > sh.pid; sleep 300",
    );
    let dir = c.node_dir("n");
    let (bg, sh) = (read_pid(&dir.join("bg.pid")), read_pid(&dir.join("sh.pid")));
    c.client("n").signal(libc::SIGTERM);
    assert_eq!(c.client("n").wait_exit(DEADLINE), Some(0));
    wait_until("command and its background child gone", DEADLINE, || {
        pid_gone(bg) && pid_gone(sh)
    });
    // The client reported the killed command before leaving.
    let info = c.wait_job_done(&id);
    let p = &parts(&info)[0];
    assert_eq!(p["state"], "failed", "{p}");
    assert_eq!(p["signal"], libc::SIGTERM);
    assert!(c.client("n").log_text().contains("stopping job"));
}

#[test]
fn clients_reregister_after_a_server_restart() {
    let mut c = Cluster::start("restart", &["r1", "r2", "r3"], "0.5");
    c.server().signal(libc::SIGINT);
    assert_eq!(c.server().wait_exit(DEADLINE), Some(0));
    assert!(
        !c.socket().exists(),
        "the socket file is removed on SIGTERM"
    );
    c.start_server();
    c.wait_nodes(&["r1", "r2", "r3"]);
    let out = c.cli(&["exec", "--verb", "RUN", "--wait", "true"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("3 succeeded"));
    for n in ["r1", "r2", "r3"] {
        assert!(
            c.client(n).is_running(),
            "client {n} survives the restart untouched"
        );
    }
}

#[test]
fn debug_logs_show_protocol_traffic() {
    let mut c = Cluster::new("debug", "0.5");
    c.start_server_with(&["--debug"]);
    c.start_client("d");
    c.wait_nodes(&["d"]);
    wait_until("heartbeat in debug log", DEADLINE, || {
        c.server()
            .log_text()
            .contains("node=d heartbeat <- Heartbeat")
    });
    assert!(c.server().log_text().contains("job <- Ready name=d"));
}

#[test]
fn exit_code_3_and_one_line_when_no_server_runs() {
    let dir = util::TestDir::new("noserver");
    let sock = dir.path.join("nothing.sock");
    for args in [
        vec!["manage", "--list-nodes"],
        vec!["exec", "--verb", "RUN", "true"],
    ] {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(["--socket-path".into(), sock.display().to_string()]);
        let out = util::run_cli(&dir.path, &all);
        assert_eq!(out.code, 3, "{out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
        assert!(
            out.stderr
                .starts_with("director: cannot reach the director server at "),
            "{out:?}"
        );
        assert!(out.stderr.contains(&sock.display().to_string()));
        assert!(!out.stderr.contains("panicked"));
    }
}

#[test]
fn unknown_targets_are_refused_and_nothing_is_queued() {
    let c = Cluster::start("unknown", &["k1"], "1");
    let out = c.cli(&[
        "exec", "--verb", "RUN", "--target", "k1", "--target", "nope", "true",
    ]);
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(
        out.stderr.trim(),
        "director: unknown target node 'nope' (known nodes: k1)"
    );
    let jobs = c.cli(&["manage", "--list-jobs", "--format", "json"]);
    assert_eq!(jobs.stdout.trim(), "[]");
}

#[test]
fn a_server_that_cannot_bind_says_where_and_why() {
    let dir = util::TestDir::new("bind");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let [p2, p3, _] = util::free_ports();
    let args: Vec<String> = [
        "server",
        "--bind-address",
        "127.0.0.1",
        "--job-port",
        &port,
        "--transfer-port",
        &p2.to_string(),
        "--heartbeat-port",
        &p3.to_string(),
        "--socket-path",
        &dir.path.join("s.sock").display().to_string(),
        "--state-path",
        &dir.path.join("state").display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = util::run_cli(&dir.path, &args);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "cannot bind the job socket to tcp://127.0.0.1:{port}"
        )),
        "{out:?}"
    );
    assert!(out.stderr.contains("in use"), "{out:?}");
}

#[test]
fn bad_usage_and_config_are_refused_with_exit_2() {
    let dir = util::TestDir::new("usage");
    let run = |args: &[&str]| {
        util::run_cli(
            &dir.path,
            &args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
    };
    let cfg = dir.path.join("bad.yaml");
    fs::write(&cfg, "heartbeat_interval: 1\nhartbeat_port: 9\n").unwrap();
    let out = run(&["server", "--config-file", cfg.to_str().unwrap()]);
    assert_eq!(out.code, 2);
    assert_eq!(
        out.stderr.trim(),
        format!(
            "director: config file {}: unknown key 'hartbeat_port' (did you mean heartbeat_port?)",
            cfg.display()
        )
    );
    fs::write(&cfg, "job_port: many\n").unwrap();
    let out = run(&["server", "--config-file", cfg.to_str().unwrap()]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("key 'job_port'"), "{out:?}");
    let out = run(&["exec", "--verb", "DANCE", "x"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("unknown verb 'DANCE'"));
    let out = run(&["frobnicate"]);
    assert_eq!(out.code, 2);
    let env = util::run_cli_env(
        &dir.path,
        &["manage".into(), "--list-nodes".into()],
        &[("DIRECTOR_JOB_PORT", "x")],
    );
    assert_eq!(env.code, 2);
    assert!(env.stderr.contains("DIRECTOR_JOB_PORT"), "{env:?}");
}

#[test]
fn help_and_version() {
    let dir = util::TestDir::new("help");
    let run = |args: &[&str]| {
        util::run_cli(
            &dir.path,
            &args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
    };
    let out = run(&["--help"]);
    assert_eq!(out.code, 0);
    for opt in [
        "--job-port",
        "--heartbeat-interval",
        "--socket-path",
        "--identity",
        "--cache-path",
        "--state-path",
    ] {
        assert!(out.stdout.contains(opt), "{opt}");
    }
    let out = run(&["manage", "--help"]);
    assert!(out.stdout.contains("--purge-nodes"));
    let out = run(&["--version"]);
    assert_eq!(
        out.stdout.trim(),
        format!("director {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn config_file_and_environment_configure_the_daemons() {
    // Ports and interval come from the file, the socket from the environment.
    let dir = util::TestDir::new("cfg");
    let [p1, p2, p3] = util::free_ports();
    let cfg = dir.path.join("config.yaml");
    let d = dir.path.display();
    fs::write(&cfg, format!("job_port: {p1}\ntransfer_port: {p2}\nheartbeat_port: {p3}\nheartbeat_interval: 0.5\nbind_address: 127.0.0.1\nserver_address: 127.0.0.1\nstate_path: {d}/state\ncache_path: {d}/cache\nkey_path: {d}/key\n")).unwrap();
    let sock = dir.path.join("env.sock");
    let spawn = |mode: &str, name: &str| {
        let log = fs::File::create(dir.path.join(format!("{name}.log"))).unwrap();
        util::Proc {
            child: util::base_command()
                .args([mode, "--identity", name])
                .env("DIRECTOR_CONFIG_FILE", &cfg)
                .env("DIRECTOR_SOCKET_PATH", &sock)
                .env("DIRECTOR_SHARED_KEY", util::SHARED_KEY)
                .current_dir(&dir.path)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
            log: dir.path.join(format!("{name}.log")),
        }
    };
    let _server = spawn("server", "srv");
    let _client = spawn("client", "envnode");
    let env = [
        ("DIRECTOR_CONFIG_FILE", cfg.to_str().unwrap()),
        ("DIRECTOR_SOCKET_PATH", sock.to_str().unwrap()),
    ];
    wait_until("envnode registered", DEADLINE, || {
        let out = util::run_cli_env(&dir.path, &["manage".into(), "--list-nodes".into()], &env);
        out.code == 0 && out.stdout.contains("envnode")
    });
    assert!(dir.path.join("key").join("node.key").exists());
}

#[test]
fn a_client_reconnects_with_backoff_when_the_server_goes_silent() {
    let mut c = Cluster::start("silent", &["s1"], "0.5");
    c.server().signal(libc::SIGSTOP);
    // Silent for 3 intervals: reconnect within half an interval; still
    // silent: within a whole one (the cap: a node is back within a few
    // intervals of its server's return).
    wait_until("second reconnect", DEADLINE, || {
        c.client("s1")
            .log_text()
            .contains("reconnecting in up to 0.50s")
    });
    c.server().signal(libc::SIGCONT);
    c.wait_nodes(&["s1"]);
    let out = c.cli(&["exec", "--verb", "RUN", "--wait", "echo back"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("s1: succeeded"));
    let log = c.client("s1").log_text();
    assert!(log.contains("reconnecting in up to 0.25s"), "{log}");
    assert!(!log.contains("reconnecting in up to 1"), "{log}");
}

#[test]
fn a_job_whose_client_restarted_is_reported_lost() {
    let mut c = Cluster::start("restarted", &["x"], "2");
    let id = c.submit(&["x"], "echo $$ > pid; exec sleep 600");
    let orphan = read_pid(&c.node_dir("x").join("pid"));
    c.client("x").signal(libc::SIGKILL);
    c.client("x").wait_exit(DEADLINE);
    unsafe { libc::kill(orphan, libc::SIGKILL) };
    c.start_client("x");
    let info = c.wait_job_done(&id);
    let p = &parts(&info)[0];
    assert_eq!(p["state"], "lost", "{p}");
    let why = p["message"].as_str().unwrap();
    // Normally the new client's Ready says it does not hold the job; on a
    // very slow machine the node may expire first. Either way: lost.
    assert!(
        why.contains("restarted") || why.contains("expired"),
        "{why}"
    );
    c.wait_nodes(&["x"]);
}

#[test]
fn purges_forget_finished_jobs_and_offline_nodes() {
    let mut c = Cluster::start("purge", &["p1", "p2"], "1");
    let out = c.cli(&["exec", "--verb", "RUN", "--wait", "true"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = c.cli(&["manage", "--purge-jobs", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v, serde_json::json!([{"purged": 1, "kept": 0}]));
    assert_eq!(
        c.cli(&["manage", "--list-jobs", "--format", "json"])
            .stdout
            .trim(),
        "[]"
    );
    // Online nodes are not forgotten.
    let out = c.cli(&["manage", "--purge-nodes"]);
    assert_eq!(
        out.stdout.trim(),
        "purged 0 nodes; kept 2 (online, or with work queued)"
    );
    // p2 goes away: known, offline, and a job for it ends unreachable at
    // once, with an exit status of its own.
    c.client("p2").signal(libc::SIGKILL);
    c.client("p2").wait_exit(DEADLINE);
    let state = |c: &Cluster, name: &str| -> String {
        let nodes = c.nodes_json();
        let node = nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .cloned();
        node.map(|n| n["state"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    wait_until("p2 offline", DEADLINE, || state(&c, "p2") == "offline");
    let out = c.cli(&["manage", "--list-nodes"]);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("p2") && l.contains("offline")),
        "{out:?}"
    );
    // Named (every node means every node online: see
    // without_targets_a_job_goes_to_the_nodes_online_...).
    let out = c.cli(&[
        "exec", "--verb", "RUN", "--wait", "--target", "p*", "echo hi",
    ]);
    assert_eq!(out.code, 4, "{out:?}");
    assert!(
        out.stdout.contains("p2: unreachable (node offline)"),
        "{out:?}"
    );
    let info = c.job_info(&util::job_id(&out.stdout));
    let p2 = info["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node"] == "p2")
        .unwrap()
        .clone();
    assert_eq!(p2["state"], "unreachable", "{info}");
    assert!(
        p2["message"]
            .as_str()
            .unwrap()
            .contains("the node is offline (last heard from"),
        "{info}"
    );
    // A failure elsewhere wins over an offline node.
    let out = c.cli(&["exec", "--verb", "RUN", "--wait", "false"]);
    assert_eq!(out.code, 1, "{out:?}");
    // --queue-offline: the job waits for p2 up to its timeout...
    let for_p2 = |job| {
        [
            "exec",
            "--verb",
            "RUN",
            "--target",
            "p2",
            "--queue-offline",
            "--wait",
            job,
        ]
    };
    let out = c.cli(&for_p2("--timeout 1 true"));
    assert_eq!(out.code, 4, "{out:?}");
    assert!(
        out.stdout.contains("p2: unreachable (node offline)"),
        "{out:?}"
    );
    // ... and goes when p2 is back.
    let mut waiter = c.cli_background(&for_p2("echo back"), "waiter.log");
    wait_until("the job queued for p2", DEADLINE, || {
        c.jobs_json().iter().any(|j| j["args"] == "echo back")
    });
    c.start_client("p2");
    assert_eq!(waiter.wait_exit(DEADLINE), Some(0), "{}", waiter.log_text());
    assert!(
        waiter.log_text().contains("stdout | back"),
        "{}",
        waiter.log_text()
    );
    c.client("p2").signal(libc::SIGKILL);
    c.client("p2").wait_exit(DEADLINE);
    wait_until("p2 offline again", DEADLINE, || {
        state(&c, "p2") == "offline"
    });
    // Offline is durable: after a restart p2 is offline at once.
    c.server().signal(libc::SIGKILL);
    c.server().wait_exit(DEADLINE);
    c.start_server();
    c.wait_nodes(&["p1"]);
    assert_eq!(state(&c, "p2"), "offline");
    let out = c.cli(&["exec", "--verb", "RUN", "--target", "p2", "--wait", "true"]);
    assert_eq!(out.code, 4, "{out:?}");
    let out = c.cli(&["manage", "--purge-nodes"]);
    assert_eq!(
        out.stdout.trim(),
        "purged 1 node; kept 1 (online, or with work queued)"
    );
    let out = c.cli(&["exec", "--verb", "RUN", "--target", "p2", "true"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("unknown target node 'p2'"), "{out:?}");
    // Forgotten for good: not back after another restart.
    c.server().signal(libc::SIGKILL);
    c.server().wait_exit(DEADLINE);
    c.start_server();
    c.wait_nodes(&["p1"]);
    assert_eq!(state(&c, "p2"), "");
}

#[test]
fn acknowledged_jobs_survive_a_server_restart() {
    let mut c = Cluster::start("persist", &["p", "q"], "1");
    let done = c.submit(&["p"], "echo first");
    c.wait_job_done(&done);
    // A job held until the test says go, one queued behind it, and one on a
    // node that will not come back.
    let gated = c.submit(&["p"], "while [ ! -e go ]; do sleep 0.05; done; echo gated");
    let queued = c.submit(&["p"], "echo after > after.txt");
    let gone = c.submit(&["q"], "sleep 600");
    wait_until("gated job running", DEADLINE, || {
        c.part_state(&gated, "p") == "running"
    });
    wait_until("q's job running", DEADLINE, || {
        c.part_state(&gone, "q") == "running"
    });

    // The server dies without warning; while it is down the gated job
    // finishes on its node and q vanishes.
    c.server().signal(libc::SIGKILL);
    c.server().wait_exit(DEADLINE);
    fs::write(c.node_dir("p").join("go"), "").unwrap();
    c.client("q").signal(libc::SIGKILL);
    c.client("q").wait_exit(DEADLINE);
    c.start_server();

    // Everything acknowledged is still there and completes.
    let info = c.wait_job_done(&done);
    assert_eq!(info["nodes"][0]["stdout"], "first\n");
    let info = c.wait_job_done(&gated);
    assert_eq!(info["nodes"][0]["state"], "succeeded", "{info}");
    assert_eq!(info["nodes"][0]["stdout"], "gated\n");
    let info = c.wait_job_done(&queued);
    assert_eq!(info["nodes"][0]["state"], "succeeded", "{info}");
    assert!(c.node_dir("p").join("after.txt").exists());
    // The node that never came back is expired, and its job lost.
    let info = c.wait_job_done(&gone);
    assert_eq!(info["nodes"][0]["state"], "lost", "{info}");
    assert!(c.server().log_text().contains("restored 4 jobs"));
    assert_eq!(c.jobs_json().len(), 4);
}

#[test]
fn follow_shows_each_nodes_lines_while_the_command_still_runs() {
    let c = Cluster::start("follow", &["f1", "f2", "long-name"], "1");
    let gate = c.dir.path.join("gate");
    let cmd = format!(
        "echo first from $(basename $PWD); echo warn >&2; while [ ! -e {} ]; do sleep 0.05; done; printf 'last'",
        gate.display()
    );
    let mut cli = c.cli_background(
        &["exec", "--verb", "RUN", "--wait", "--follow", &cmd],
        "follow.log",
    );
    // Every node's first line shows while every command is still held.
    wait_until("first lines shown live", DEADLINE, || {
        let log = cli.log_text();
        ["f1", "f2", "long-name"]
            .iter()
            .all(|n| log.contains(&format!("first from node-{n}")))
    });
    let log = cli.log_text();
    assert!(!log.contains("succeeded"), "{log}");
    assert!(!gate.exists());
    // Aligned to the longest name, stdout `|`, stderr `!`, plain when piped.
    assert!(log.contains("f1        | first from node-f1\n"), "{log}");
    assert!(log.contains("long-name ! warn\n"), "{log}");
    assert!(!log.contains('\x1b'), "{log}");
    fs::write(&gate, "").unwrap();
    assert_eq!(cli.wait_exit(DEADLINE), Some(0), "{}", cli.log_text());
    let log = cli.log_text();
    // A last line without a newline shows when its part ends; the result
    // lines do not repeat what was shown live.
    assert!(log.contains("f2        | last\n"), "{log}");
    assert_eq!(log.matches("first from node-f2").count(), 1, "{log}");
    assert!(log.contains("3 succeeded"), "{log}");
    // Without --wait, --follow is refused.
    let out = c.cli(&["exec", "--verb", "RUN", "--follow", "true"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--follow needs --wait"), "{out:?}");
}

#[test]
fn clear_cache_empties_a_nodes_cache_but_leaves_its_files() {
    let mut c = Cluster::start("clearcache", &["k1", "k2"], "1");
    for job in ["ARG colour blue", "ENV MODE fast"] {
        let (verb, args) = job.split_once(' ').unwrap();
        let out = c.cli(&["exec", "--verb", verb, "--wait", args]);
        assert_eq!(out.code, 0, "{out:?}");
    }
    let step = "echo {{ colour }} >> painted";
    assert_eq!(c.cli(&["exec", "--verb", "RUN", "--wait", step]).code, 0);
    let out = c.cli(&["manage", "--clear-cache", "k1"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains("stdout | forgot 1 ARG, 1 ENV value, 0 QUERY maps and 1 step"),
        "{out:?}"
    );
    // Its files stay; k2's cache is untouched.
    assert_eq!(
        fs::read_to_string(c.node_dir("k1").join("painted")).unwrap(),
        "blue\n"
    );
    let info = |c: &Cluster, n: &str| {
        let out = c.cli(&["manage", "--node-info", n, "--format", "json"]);
        serde_json::from_str::<serde_json::Value>(&out.stdout).unwrap()[0]["cache"].clone()
    };
    wait_until("k1's empty cache reported", DEADLINE, || {
        info(&c, "k1")["args"] == serde_json::json!({})
    });
    assert_eq!(info(&c, "k1")["steps"], 0);
    assert_eq!(info(&c, "k2")["args"], serde_json::json!({"colour": null}));
    // The ARG is gone on k1 (its template fails there); k2 still has it,
    // and its step is still cached.
    let out = c.cli(&["exec", "--verb", "RUN", "--wait", step]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("k1: failed")
            && out.stdout.contains("undefined template variable 'colour'"),
        "{out:?}"
    );
    assert!(out.stdout.contains("k2: skipped (cached)"), "{out:?}");
    // The cleared cache stays cleared across a client restart.
    c.client("k1").signal(libc::SIGTERM);
    c.client("k1").wait_exit(DEADLINE);
    c.restart_client_with("k1", &[]);
    let out = c.cli(&["exec", "--verb", "RUN", "--target", "k1", "--wait", step]);
    assert!(
        out.stdout.contains("undefined template variable 'colour'"),
        "{out:?}"
    );
    let out = c.cli(&["manage", "--clear-cache", "nope*"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("target 'nope*' matches no node"),
        "{out:?}"
    );
}

#[test]
fn a_client_says_at_once_why_it_cannot_connect_then_that_it_is_connected() {
    // Heartbeats every 30 s: "server silent" cannot come before the reason.
    let mut c = Cluster::new("noconnect", "30");
    c.start_client("early");
    c.start_client_with("lost", &["--server-address", "no-such-host.invalid"]);
    wait_until("the refusal named", DEADLINE, || {
        c.client("early")
            .log_text()
            .contains("refused the connection: nothing listens on port")
    });
    wait_until("the unknown name named", DEADLINE, || {
        c.client("lost")
            .log_text()
            .contains("the name 'no-such-host.invalid' does not resolve")
    });
    for n in ["early", "lost"] {
        let log = c.client(n).log_text();
        assert!(!log.contains("server silent"), "{log}");
        assert_eq!(
            log.matches("cannot connect to").count(),
            1,
            "said once: {log}"
        );
    }
    // Once the server is up, the client connects and says so, once.
    c.start_server();
    c.wait_nodes(&["early"]);
    wait_until("connected said", DEADLINE, || {
        c.client("early")
            .log_text()
            .contains("connected to 127.0.0.1 as early")
    });
}

/// Everyday slips, end to end: each is refused with one line that says
/// what to do, exit 2, and nothing is queued.
#[test]
fn slips_that_would_reach_every_node_or_confuse_are_refused_with_a_hint() {
    let c = Cluster::start("slips", &["s1", "s2"], "0.5");
    for (args, want) in [
        (
            vec!["exec", "--verb", "RUN", "--target", "", "true"],
            "--target: an empty pattern",
        ),
        (
            vec!["exec", "--verb", "RUN", "--target", ",", "true"],
            "--target: an empty pattern",
        ),
        (
            vec!["exec", "--verb", "RUN", "--exclude", "", "true"],
            "leave --exclude out",
        ),
        (
            vec!["exec", "--verb", "RUN", "--tagret", "s1", "true"],
            "did you mean --target?",
        ),
        (
            vec!["manage", "--clear-cache", ""],
            "--clear-cache: an empty pattern",
        ),
        (
            vec!["orchestrate", "--batch", "0", "x.yml"],
            "a batch needs at least one node",
        ),
        (
            vec![
                "exec",
                "--verb",
                "RUN",
                "--retries",
                "1",
                "--retry-delay",
                "x",
                "true",
            ],
            "is not a number of seconds",
        ),
    ] {
        let out = c.cli(&args);
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(out.stderr.contains(want), "{args:?}: {out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    }
    let playbook = c.dir.path.join("site.yml");
    fs::write(&playbook, "- hosts: all\n  tasks:\n  - command: uptime\n").unwrap();
    let out = c.cli(&["orchestrate", playbook.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("this is an Ansible playbook"),
        "{out:?}"
    );
    assert!(c.jobs_json().is_empty(), "something was queued");
    // Fractions of a second for --retry-delay, as for --heartbeat-interval.
    let out = c.cli(&[
        "exec",
        "--verb",
        "RUN",
        "--wait",
        "--retries",
        "1",
        "--retry-delay",
        "0.2",
        "true",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
}

/// "Every node" means every node online, as --help says: a known node that
/// went offline is left out and named, not targeted (its job used to end
/// unreachable, exit 4).
#[test]
fn without_targets_a_job_goes_to_the_nodes_online_and_names_the_offline_ones() {
    let mut c = Cluster::start("online", &["on1", "off1"], "0.3");
    c.client("off1").signal(libc::SIGKILL);
    c.client("off1").wait_exit(DEADLINE);
    wait_until("off1 offline", DEADLINE, || c.node_names() == vec!["on1"]);
    let out = c.cli(&["exec", "--verb", "RUN", "--wait", "echo hi"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("targets on1\n"), "{out:?}");
    assert!(
        out.stdout
            .contains("not targeted: 1 known node offline (off1)"),
        "{out:?}"
    );
    // Named, it is a target, and its part ends unreachable.
    let out = c.cli(&[
        "exec", "--verb", "RUN", "--wait", "--target", "off1", "echo hi",
    ]);
    assert_eq!(out.code, 4, "{out:?}");
}

/// A node whose key waits for acceptance is the usual reason nothing is
/// online yet: the error says so, and the command that fixes it.
#[test]
fn with_only_a_pending_node_the_error_names_the_accept_command() {
    let mut c = Cluster::new("pendingonly", "0.5");
    c.shared_key = None;
    c.start_server();
    let key = c.server_key();
    c.start_client_bare("p1", &["--server-key", &key]);
    wait_until("p1 pending", DEADLINE, || c.key_state("p1") == "pending");
    let out = c.cli(&["exec", "--verb", "RUN", "true"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("no node is online")
            && out.stderr.contains("director manage --accept-key p1"),
        "{out:?}"
    );
}

/// As a user without root, with the default paths, the daemons say to run
/// as root or give the directory option (not a bare "Permission denied").
#[test]
fn a_daemon_run_as_a_plain_user_on_the_default_paths_says_what_to_do() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run as another user");
        return;
    }
    let dir = util::TestDir::new("nonroot");
    for (mode, option) in [("server", "--state-path"), ("client", "--cache-path")] {
        let args = vec![
            mode.to_string(),
            "--shared-key".into(),
            util::SHARED_KEY.into(),
        ];
        let out = util::run_cli_as(&dir.path, 65534, 65534, &args);
        assert_eq!(out.code, 2, "{out:?}");
        assert!(
            out.stderr.contains("run as root") && out.stderr.contains(option),
            "{mode}: {out:?}"
        );
    }
}

/// Ctrl-C while waiting: the CLI says the work goes on and how to follow
/// it, and the work does go on.
#[test]
fn ctrl_c_during_wait_says_the_work_goes_on_and_how_to_follow_it() {
    let c = Cluster::start("ctrlc", &["c1"], "0.5");
    let gate = c.dir.path.join("gate");
    let job = format!(
        "while [ ! -e {} ]; do sleep 0.05; done; echo done",
        gate.display()
    );
    let mut waiter = c.cli_background(&["exec", "--verb", "RUN", "--wait", &job], "waiter.log");
    wait_until("the job running", DEADLINE, || {
        c.jobs_json()
            .first()
            .is_some_and(|j| j["states"]["running"] == 1)
    });
    waiter.signal(libc::SIGINT);
    assert_eq!(waiter.wait_exit(DEADLINE), Some(130));
    let said = waiter.log_text();
    let id = util::job_id(&said);
    assert!(
        said.contains(&format!(
            "the job goes on on the server: follow it with `director manage --watch {id}`"
        )),
        "{said}"
    );
    fs::write(&gate, "").unwrap();
    let info = c.wait_job_done(&id);
    assert_eq!(info["nodes"][0]["state"], "succeeded", "{info}");
}

/// The server's resident memory, in MiB.
fn rss_mib(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        / 1024
}

/// A `--wait` CLI that reads slowly (here: stopped) cannot make the server
/// buffer the run's output for it: past a few MiB it gets each part without
/// its output, then keeps its progress and exit status and is told what it
/// missed. (Before, the server buffered it all, 1 GiB for 3 GiB of output,
/// then cut the CLI off: exit 3.)
#[test]
fn a_slow_reader_costs_the_server_a_bounded_buffer_and_keeps_its_exit_status() {
    const JOBS: usize = 120;
    let mut c = Cluster::start("slowreader", &["r1", "r2"], "1");
    let job = "RUN: --skip-cache head -c 1048576 /dev/zero | tr '\\0' x".to_string();
    let file = c.run_file("big.yml", std::iter::repeat_n(job, JOBS));
    let server = c.server().pid();
    let before = rss_mib(server);
    let mut waiter = c.cli_background(
        &["orchestrate", file.to_str().unwrap(), "--wait"],
        "slow.log",
    );
    wait_until("the run queued", DEADLINE, || {
        waiter.log_text().contains("queued")
    });
    waiter.signal(libc::SIGSTOP);
    wait_until("every job done", DEADLINE * 2, || {
        let jobs = c.jobs_json();
        jobs.len() == JOBS && jobs.iter().all(|j| !j["finished_ms"].is_null())
    });
    // 240 MiB of output went by; the server kept a few MiB of it for the
    // stopped CLI (and its own bounded buffers).
    let grown = rss_mib(server).saturating_sub(before);
    assert!(
        grown < 64,
        "the server grew by {grown} MiB for a reader that does not read"
    );
    waiter.signal(libc::SIGCONT);
    assert_eq!(waiter.wait_exit(DEADLINE), Some(0), "{}", waiter.log_text());
    let said = waiter.log_text();
    assert!(
        said.contains("was not shown here, as this CLI read too slowly"),
        "{said}"
    );
    assert!(said.contains("recap after"), "{said}");
    // Every result is whole on the server.
    let id = c.jobs_json()[0]["id"].as_str().unwrap().to_owned();
    let info = c.job_info(&id);
    assert_eq!(info["nodes"][0]["stdout"].as_str().unwrap().len(), 1 << 20);
}
