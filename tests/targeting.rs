//! Reaching the right nodes: facts and labels reported at registration,
//! read by templates, and matched by target patterns.

mod util;

use std::fs;

use util::{job_id, Cluster};

/// web-1 and web-2 labelled by switches, db-1 by the environment.
fn fleet(test: &str) -> Cluster {
    let mut c = Cluster::new(test, "1");
    c.start_server();
    c.start_client_with("web-1", &["--label", "role=web", "--label", "tier=front"]);
    c.start_client_with("web-2", &["--labels", "role=web"]);
    c.start_client_env("db-1", &[("DIRECTOR_LABELS", "role=db")]);
    c.wait_nodes(&["web-1", "web-2", "db-1"]);
    c
}

/// The `targets` line of an `exec` without `--wait`.
fn targets_of(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("targets "))
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn nodes_report_facts_and_labels_and_templates_read_them() {
    let c = fleet("facts");
    let nodes = c.nodes_json();
    let web1 = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "web-1")
        .unwrap()
        .clone();
    assert_eq!(
        web1["labels"],
        serde_json::json!({"role": "web", "tier": "front"})
    );
    let facts = &web1["facts"];
    for k in ["hostname", "kernel", "arch", "cpus", "memory_mb"] {
        assert!(
            facts[k].as_str().is_some_and(|v| !v.is_empty()),
            "{k}: {facts}"
        );
    }
    assert_eq!(facts["version"], env!("CARGO_PKG_VERSION"));
    let arch = facts["arch"].as_str().unwrap().to_owned();

    let out = c.cli(&["manage", "--list-nodes"]);
    assert!(out.stdout.contains("role=web,tier=front"), "{out:?}");
    let out = c.cli(&["manage", "--node-info", "db-1"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("  role: db\n"), "{out:?}");
    assert!(out.stdout.contains(&format!("  arch: {arch}\n")), "{out:?}");
    let out = c.cli(&["manage", "--node-info", "nope"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("unknown node 'nope'"), "{out:?}");

    // Templates on the node read them.
    let run_on = |node, cmd| c.cli(&["exec", "--verb", "RUN", "--target", node, "--wait", cmd]);
    let out = run_on(
        "web-1",
        "echo {{ labels.role }}/{{ labels.tier }}/{{ facts.arch }}",
    );
    assert_eq!(out.code, 0, "{out:?}");
    let info = c.job_info(&job_id(&out.stdout));
    assert_eq!(
        info["nodes"][0]["stdout"],
        format!("web/front/{arch}\n"),
        "{info}"
    );
    // A label the node lacks fails there, named.
    let out = run_on("db-1", "echo {{ labels.tier }}");
    assert_eq!(out.code, 1, "{out:?}");
    let info = c.job_info(&job_id(&out.stdout));
    let part = info["nodes"][0].to_string();
    assert!(part.contains("'labels.tier'"), "{part}");
}

#[test]
fn patterns_pick_nodes_by_name_glob_label_and_fact_and_a_miss_changes_nothing() {
    let c = fleet("patterns");
    let exec = |args: &[&str]| {
        let mut all = vec!["exec", "--verb", "RUN"];
        all.extend(args);
        all.push("true");
        c.cli(&all)
    };
    let cases: [(&[&str], &str); 6] = [
        (&["--target", "web*"], "web-1, web-2"),
        (&["--target", "role=db"], "db-1"),
        (&["--target", "db-1,web-2"], "db-1, web-2"),
        (&["--exclude", "role=db"], "web-1, web-2"),
        (&["--target", "role=web", "--exclude", "web-[2]"], "web-1"),
        (
            &["--target", "version=*", "--target", "db-1"],
            "db-1, web-1, web-2",
        ),
    ];
    for (args, want) in cases {
        let out = exec(args);
        assert_eq!(out.code, 0, "{args:?}: {out:?}");
        assert_eq!(targets_of(&out.stdout), want, "{args:?}");
    }
    let queued = c.jobs_json().len();
    assert_eq!(queued, cases.len());

    // Patterns that match nothing are named, and nothing is queued.
    let refused: [(&[&str], &str); 4] = [
        (
            &["--target", "role=cache"],
            "target 'role=cache' matches no node",
        ),
        (&["--target", "wbe-1"], "unknown target node 'wbe-1'"),
        (
            &["--target", "web*", "--exclude", "wbe-1"],
            "--exclude 'wbe-1' matches no node",
        ),
        (
            &["--target", "web*", "--exclude", "role=web"],
            "no node is left once the exclusions are taken out",
        ),
    ];
    for (args, why) in refused {
        let out = exec(args);
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(out.stderr.contains(why), "{args:?}: {out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "one line: {out:?}");
    }
    assert_eq!(c.jobs_json().len(), queued);

    // The same patterns in a file's targets, and --exclude over every
    // block; --dry-run shows whom each block reaches.
    let file = c.dir.path.join("run.yml");
    fs::write(
        &file,
        "- targets: ['role=web']\n  jobs:\n    - RUN: echo a\n- targets: ['db*', web-2]\n  jobs:\n    - RUN: echo b\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let out = c.cli(&["orchestrate", f, "--dry-run", "--exclude", "web-2"]);
    assert_eq!(out.code, 0, "{out:?}");
    let rows: Vec<Vec<&str>> = out
        .stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().take(2).collect())
        .collect();
    assert_eq!(rows, [vec!["1", "web-1"], vec!["2", "db-1"]], "{out:?}");
    fs::write(&file, "- targets: ['ghost*']\n  jobs:\n    - RUN: echo c\n").unwrap();
    let out = c.cli(&["orchestrate", f, "--dry-run"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("block 1: target 'ghost*' matches no node"),
        "{out:?}"
    );
    assert_eq!(c.jobs_json().len(), queued);
}

#[test]
fn a_rolling_run_goes_two_nodes_at_a_time_and_stops_past_max_fail() {
    let mut c = Cluster::new("rolling", "1");
    c.start_server();
    let names = ["n1", "n2", "n3", "n4", "n5"];
    for n in names {
        c.start_client_with(n, &["--label", &format!("name={n}")]);
    }
    c.wait_nodes(&names);
    let log = c.dir.path.join("order.log");
    let file = c.dir.path.join("roll.yml");
    let l = log.to_str().unwrap();
    fs::write(
        &file,
        format!(
            "- jobs:\n  - RUN: --skip-cache echo start {{{{ labels.name }}}} >> {l}\n  - RUN: --skip-cache test {{{{ labels.name }}}} != \"$FAIL\" && echo end {{{{ labels.name }}}} >> {l}\n"
        ),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let out = c.cli(&["orchestrate", f, "--batch", "2", "--dry-run"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains("batch 1/3: n1, n2\nbatch 2/3: n3, n4\nbatch 3/3: n5\n"),
        "{out:?}"
    );
    let out = c.cli(&["orchestrate", f, "--batch", "2", "--wait"]);
    assert_eq!(out.code, 0, "{out:?}");
    // Every node of a batch ends before any node of the next starts.
    let lines = fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), 10, "{lines:?}");
    let batch = |line: &str| match line.rsplit(' ').next() {
        Some("n1" | "n2") => 0,
        Some("n3" | "n4") => 1,
        _ => 2,
    };
    let batches: Vec<usize> = lines.iter().map(|l| batch(l)).collect();
    assert!(batches.windows(2).all(|w| w[0] <= w[1]), "{lines:?}");

    // n2 fails: more than --max-fail 0 nodes failed, so batch 2 never starts.
    fs::remove_file(&log).unwrap();
    let text = fs::read_to_string(&file).unwrap().replace("$FAIL", "n2");
    fs::write(&file, text).unwrap();
    let out = c.cli(&[
        "orchestrate",
        f,
        "--batch",
        "40%",
        "--max-fail",
        "0",
        "--wait",
    ]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout
            .contains("never started (1 node failed, more than --max-fail 0 allows): n3, n4, n5"),
        "{out:?}"
    );
    let lines = fs::read_to_string(&log).unwrap();
    assert!(
        !lines.contains("n3") && !lines.contains("n4") && !lines.contains("n5"),
        "{lines}"
    );
    assert!(
        lines.contains("end n1") && !lines.contains("end n2"),
        "{lines}"
    );
    // Misuse is refused before anything is sent.
    let out = c.cli(&["orchestrate", f, "--max-fail", "1"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--max-fail needs --batch"), "{out:?}");
    let out = c.cli(&["orchestrate", f, "--batch", "0%"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--batch: expected"), "{out:?}");
}

#[test]
fn a_rolling_run_keeps_its_batches_across_a_server_kill() {
    let mut c = Cluster::new("rollkill", "1");
    c.start_server();
    let names = ["r1", "r2", "r3", "r4"];
    for n in names {
        c.start_client_with(n, &["--label", &format!("name={n}")]);
    }
    c.wait_nodes(&names);
    let log = c.dir.path.join("order.log");
    let gate = c.dir.path.join("go");
    let file = c.dir.path.join("roll.yml");
    fs::write(
        &file,
        format!(
            "- jobs:\n  - RUN: --skip-cache while [ ! -e {g} ]; do sleep 0.05; done; echo {{{{ labels.name }}}} >> {l}\n  - RUN: --skip-cache echo {{{{ labels.name }}}} >> {l}\n",
            g = gate.display(),
            l = log.display()
        ),
    )
    .unwrap();
    let out = c.cli(&["orchestrate", file.to_str().unwrap(), "--batch", "2"]);
    assert_eq!(out.code, 0, "{out:?}");
    util::wait_until("batch 1 running", util::DEADLINE, || {
        c.jobs_json()
            .iter()
            .any(|j| j["states"]["running"].as_u64() == Some(2))
    });
    c.server().signal(libc::SIGKILL);
    c.server().wait_exit(util::DEADLINE);
    c.start_server();
    fs::write(&gate, "").unwrap();
    util::wait_until("the run done", util::DEADLINE * 2, || {
        let jobs = c.jobs_json();
        !jobs.is_empty() && jobs.iter().all(|j| !j["finished_ms"].is_null())
    });
    for j in c.jobs_json() {
        assert_eq!(j["states"], serde_json::json!({"succeeded": 4}), "{j}");
    }
    // Batch 2 started only once batch 1 was done, restart or not.
    let lines = fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), 8, "{lines:?}");
    let first_batch2 = lines.iter().position(|l| *l == "r3" || *l == "r4").unwrap();
    assert_eq!(first_batch2, 4, "{lines:?}");
}

#[test]
fn a_failed_run_is_retried_after_its_delay_and_every_attempt_is_kept() {
    let mut c = Cluster::start("retries", &["r1", "r2"], "1");
    // Fails twice, then succeeds: a counter file on the node.
    let counter = "n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; \
                   date +%s.%N >> times; echo try $n; echo err $n >&2; [ $n -ge 3 ]";
    let out = c.cli(&[
        "exec",
        "--verb",
        "RUN",
        "--target",
        "r1",
        "--wait",
        &format!("--retries 4 --retry-delay 1 {counter}"),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("r1: succeeded, exit 0"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains(", attempt 3"), "{}", out.stdout);
    assert!(
        out.stdout.contains("attempt 1 of 3: exit 1"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("    stdout | try 2"), "{}", out.stdout);
    let node = c.node_dir("r1");
    // No attempt after the one that succeeded.
    assert_eq!(fs::read_to_string(node.join("count")).unwrap(), "3\n");
    // Each attempt waited its --retry-delay after the one before.
    let times: Vec<f64> = fs::read_to_string(node.join("times"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(times.len(), 3);
    assert!(times.windows(2).all(|w| w[1] - w[0] >= 1.0), "{times:?}");

    // Every attempt is in --job-info, and stays there across a restart
    // (the results are journaled with their attempts).
    let id = c
        .jobs_json()
        .last()
        .and_then(|j| j["id"].as_str().map(str::to_owned))
        .unwrap();
    let check = |info: &serde_json::Value| {
        let p = &info["nodes"][0];
        assert_eq!(p["state"], "succeeded");
        assert_eq!(p["stdout"], "try 3\n");
        let attempts = p["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 2, "{p}");
        for (i, a) in attempts.iter().enumerate() {
            assert_eq!(a["exit_code"], 1);
            assert_eq!(a["stdout"], format!("try {}\n", i + 1));
            assert_eq!(a["stderr"], format!("err {}\n", i + 1));
        }
    };
    check(&c.job_info(&id));
    c.server().signal(libc::SIGTERM);
    c.server().wait_exit(util::DEADLINE);
    c.start_server();
    check(&c.job_info(&id));
    let text = c.cli(&["manage", "--job-info", &id]);
    assert!(text.stdout.contains("attempt 2 of 3: exit 1"), "{text:?}");

    // Out of attempts: the last one is the result, the others kept.
    c.wait_nodes(&["r1", "r2"]);
    let out = c.cli(&[
        "exec",
        "--verb",
        "RUN",
        "--target",
        "r2",
        "--wait",
        "--retries 1 --retry-delay 0 echo x >> tries; exit 7",
    ]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("r2: failed, exit 7"), "{}", out.stdout);
    assert!(
        out.stdout.contains("attempt 1 of 2: exit 7"),
        "{}",
        out.stdout
    );
    assert_eq!(
        fs::read_to_string(c.node_dir("r2").join("tries")).unwrap(),
        "x\nx\n"
    );
    // Retries are a RUN option, and part of the task SHA1.
    let out = c.cli(&["exec", "--verb", "ARG", "--retries 2 k v"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("option --retries does not apply to ARG (only to RUN)"),
        "{out:?}"
    );
}

#[test]
fn query_collects_an_arg_from_every_target_and_waits_for_all_even_across_a_server_kill() {
    let mut c = Cluster::start("query", &["q1", "q2", "q3"], "1");
    for (n, ip) in [("q1", "10.0.0.1"), ("q2", "10.0.0.2")] {
        let out = c.cli(&[
            "exec",
            "--verb",
            "ARG",
            "--target",
            n,
            "--wait",
            &format!("ip {ip}"),
        ]);
        assert_eq!(out.code, 0, "{out:?}");
    }
    // q3 has no `ip`: absent from the map, not an error. It is also held
    // back by a gate, so the others must wait for it at the QUERY.
    let gate = c.dir.path.join("gate");
    let slept = c.dir.path.join("q3-passed");
    let file = c.dir.path.join("query.yml");
    fs::write(
        &file,
        format!(
            "- targets: [q3]\n  jobs:\n  - RUN: --skip-cache while [ ! -e {g} ]; do sleep 0.05; done; touch {s}\n\
             - jobs:\n  - QUERY: ip\n  - RUN: --skip-cache test -e {s} && echo \"{{{{ query.ip['q1'] }}}} {{{{ query.ip['q2'] }}}} {{{{ query.ip | length }}}}\" > seen.txt\n",
            g = gate.display(),
            s = slept.display()
        ),
    )
    .unwrap();
    let out = c.cli(&["orchestrate", file.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    let query_job = |c: &Cluster| {
        c.jobs_json()
            .into_iter()
            .find(|j| j["verb"] == "QUERY")
            .expect("the QUERY job")
    };
    util::wait_until("q1 and q2 waiting at the QUERY", util::DEADLINE, || {
        query_job(&c)["states"]["running"].as_u64() == Some(2)
    });
    // The server dies while they wait: when it is back they report their
    // values again, and nothing goes on before q3 has answered too.
    c.server().signal(libc::SIGKILL);
    c.server().wait_exit(util::DEADLINE);
    c.start_server();
    c.wait_nodes(&["q1", "q2", "q3"]);
    assert!(!slept.exists());
    fs::write(&gate, "").unwrap();
    util::wait_until("the run done", util::DEADLINE * 2, || {
        let jobs = c.jobs_json();
        jobs.iter().filter(|j| !j["finished_ms"].is_null()).count() == jobs.len()
    });
    for j in c.jobs_json() {
        let states = &j["states"];
        assert!(
            states
                .as_object()
                .unwrap()
                .keys()
                .all(|k| k == "succeeded" || k == "unchanged"),
            "{j}"
        );
    }
    for n in ["q1", "q2", "q3"] {
        assert_eq!(
            fs::read_to_string(c.node_dir(n).join("seen.txt")).unwrap(),
            "10.0.0.1 10.0.0.2 2\n",
            "{n}"
        );
    }
    // Each node shows the map it got.
    let id = query_job(&c)["id"].as_str().unwrap().to_owned();
    for p in c.job_info(&id)["nodes"].as_array().unwrap() {
        assert_eq!(p["stdout"], "q1 10.0.0.1\nq2 10.0.0.2\n", "{p}");
    }
    // One-off: exec works too, and a QUERY cannot roll.
    let out = c.cli(&["exec", "--verb", "QUERY", "--wait", "ip"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("3 unchanged"), "{}", out.stdout);
    let out = c.cli(&["orchestrate", file.to_str().unwrap(), "--batch", "1"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("block 2: QUERY needs every target at once"),
        "{out:?}"
    );
}

#[test]
fn a_blocks_batch_rolls_from_that_block_on_in_name_order() {
    let c = Cluster::start("blockbatch", &["b1", "b2", "b3"], "1");
    let log = c.dir.path.join("order.log");
    let file = c.dir.path.join("roll.yml");
    let write = |extra: &str| {
        fs::write(
            &file,
            format!(
                "- jobs:\n  - RUN: --skip-cache echo setup >> {l}\n\
                 - {extra}\n  jobs:\n  - RUN: --skip-cache echo start $(basename $(pwd)) >> {l}; sleep 0.2; echo end $(basename $(pwd)) >> {l}\n",
                l = log.display()
            ),
        )
        .unwrap();
    };
    write("batch: 1");
    let dry = c.cli(&["orchestrate", file.to_str().unwrap(), "--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(dry.stdout.contains("batch 3/3: b3"), "{}", dry.stdout);
    let out = c.cli(&["orchestrate", file.to_str().unwrap(), "--wait"]);
    assert_eq!(out.code, 0, "{out:?}");
    let text = fs::read_to_string(&log).unwrap();
    let deploys: Vec<&str> = text.lines().filter(|l| *l != "setup").collect();
    // One node at a time, in name order: never two started at once.
    assert_eq!(
        deploys,
        [
            "start node-b1",
            "end node-b1",
            "start node-b2",
            "end node-b2",
            "start node-b3",
            "end node-b3"
        ],
        "{text}"
    );
    assert_eq!(text.lines().filter(|l| *l == "setup").count(), 3);
    // max_fail alone is refused, naming the file and the block.
    write("max_fail: 1");
    let out = c.cli(&["orchestrate", file.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("roll.yml: block 2: max_fail needs batch in the same block"),
        "{out:?}"
    );
}
