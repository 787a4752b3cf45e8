//! End-to-end tests of the DSL, the node cache and orchestration files: a
//! real server and clients on loopback, driven through the real CLI.

mod util;

use std::fs;
use std::path::{Path, PathBuf};

use util::{pid_gone, read_pid, wait_until, Cluster, DEADLINE};

fn write(c: &Cluster, name: &str, text: &str) -> PathBuf {
    let p = c.dir.path.join(name);
    fs::write(&p, text).unwrap();
    p
}

fn orchestrate(c: &Cluster, file: &Path, extra: &[&str]) -> util::Out {
    let mut args = vec!["orchestrate", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    c.cli(&args)
}

/// The run id `orchestrate` printed.
fn parent_id(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("parent "))
        .and_then(|l| l.split(':').next())
        .unwrap_or_else(|| panic!("no parent id in {stdout}"))
        .to_owned()
}

/// The recap row of `node`: (ok, cached, skipped, failed).
/// A node's recap row: OK, CACHED, SKIPPED, FAILED (`recap_changed` has
/// CHANGED).
fn recap(stdout: &str, node: &str) -> (u32, u32, u32, u32) {
    let n = recap_row(stdout, node);
    (n[0], n[2], n[3], n[4])
}

fn recap_row(stdout: &str, node: &str) -> Vec<u32> {
    let start = stdout.find("recap after").expect("no recap");
    let line = stdout[start..]
        .lines()
        .find(|l| l.split_whitespace().next() == Some(node))
        .unwrap_or_else(|| panic!("no recap row for {node} in {stdout}"));
    let n: Vec<u32> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    n
}

const SITE: &str = "---
- jobs:
  - ARG: app demo
  - WORKDIR: out/{{ app }}
  - RUN: --stdout-arg who echo node-$(basename $PWD)
  - RUN: echo \"{{ who }} runs {{ app }}\" > out/{{ app }}/proof.txt
- targets:
  - n1
  - n2
  jobs:
  - RUN: echo second block >> second.txt
";

#[test]
fn the_original_shape_runs_and_templates_chain_args() {
    let c = Cluster::start("site", &["n1", "n2", "n3"], "1");
    let file = write(&c, "site.yml", SITE);
    let out = orchestrate(&c, &file, &["--wait"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("parent "), "{}", out.stdout);
    for n in ["n1", "n2", "n3"] {
        let proof = fs::read_to_string(c.node_dir(n).join("out/demo/proof.txt")).unwrap();
        assert_eq!(proof, format!("node-node-{n} runs demo\n"));
    }
    assert!(c.node_dir("n1").join("second.txt").exists());
    assert!(c.node_dir("n2").join("second.txt").exists());
    assert!(!c.node_dir("n3").join("second.txt").exists());
    assert_eq!(recap(&out.stdout, "n1"), (5, 0, 0, 0));
    assert_eq!(recap(&out.stdout, "n3"), (4, 0, 0, 0));
    // One parent for the whole run, shown by manage.
    let js = c.jobs_json();
    assert_eq!(js.len(), 5);
    let parent = js[0]["parent"].as_str().unwrap().to_owned();
    assert!(out.stdout.contains(&parent));
    assert!(js.iter().all(|j| j["parent"] == parent.as_str()));
}

#[test]
fn cached_steps_are_skipped_until_ignored_or_their_args_change() {
    let c = Cluster::start("cache", &["c1", "c2"], "1");
    let file = write(&c, "site.yml", "- jobs:\n  - ARG: greeting hello\n  - RUN: echo {{ greeting }} >> log.txt\n  - RUN: echo static >> static.txt\n");
    let count = |n: &str, f: &str| {
        fs::read_to_string(c.node_dir(n).join(f))
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert_eq!(orchestrate(&c, &file, &["--wait"]).code, 0);
    // Again: ARG applies, the two RUNs are cached.
    let out = orchestrate(&c, &file, &["--wait"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(recap(&out.stdout, "c1"), (1, 2, 0, 0));
    assert_eq!((count("c1", "log.txt"), count("c1", "static.txt")), (1, 1));
    // --ignore-cache runs everything again.
    let out = orchestrate(&c, &file, &["--wait", "--ignore-cache"]);
    assert_eq!(recap(&out.stdout, "c2"), (3, 0, 0, 0));
    assert_eq!((count("c2", "log.txt"), count("c2", "static.txt")), (2, 2));
    // A new ARG value re-runs the step that uses it, not the other.
    fs::write(&file, "- jobs:\n  - ARG: greeting bonjour\n  - RUN: echo {{ greeting }} >> log.txt\n  - RUN: echo static >> static.txt\n").unwrap();
    let out = orchestrate(&c, &file, &["--wait"]);
    assert_eq!(recap(&out.stdout, "c1"), (2, 1, 0, 0));
    let log = fs::read_to_string(c.node_dir("c1").join("log.txt")).unwrap();
    assert_eq!(log.lines().last(), Some("bonjour"));
    // --skip-cache in the job itself, through exec.
    let out = c.cli(&[
        "exec",
        "--verb",
        "RUN",
        "--wait",
        "--target",
        "c1",
        "--skip-cache echo static >> static.txt",
    ]);
    assert!(out.stdout.contains("c1: succeeded"), "{out:?}");
    let out = c.cli(&[
        "exec",
        "--verb",
        "RUN",
        "--wait",
        "--target",
        "c1",
        "echo static >> static.txt",
    ]);
    assert!(out.stdout.contains("c1: skipped (cached)"), "{out:?}");
    assert_eq!(out.code, 0);
}

#[test]
fn the_cache_survives_a_client_restart_and_expires() {
    let mut c = Cluster::start("ttl", &["t1"], "1");
    let id = c.submit(&["t1"], "echo once >> once.txt");
    c.wait_job_done(&id);
    c.client("t1").signal(libc::SIGTERM);
    c.client("t1").wait_exit(DEADLINE);
    // Restart with a 2-second time-to-live: the entry is still fresh.
    c.restart_client_with("t1", &["--cache-ttl", "2"]);
    let id = c.submit(&["t1"], "echo once >> once.txt");
    assert_eq!(c.wait_job_done(&id)["nodes"][0]["state"], "cached");
    // Once expired it is gone from the disk, and the step runs again.
    let journal = c.node_dir("t1").join("cache/journal.bin");
    wait_until("cache entry dropped from disk", DEADLINE, || {
        let bytes = fs::read(&journal).unwrap_or_default();
        c.client("t1").log_text().contains("dropped 1 expired") && bytes.len() < 16
    });
    let id = c.submit(&["t1"], "echo once >> once.txt");
    assert_eq!(c.wait_job_done(&id)["nodes"][0]["state"], "succeeded");
    assert_eq!(
        fs::read_to_string(c.node_dir("t1").join("once.txt")).unwrap(),
        "once\nonce\n"
    );
}

#[test]
fn restrict_submits_only_the_named_tasks() {
    let c = Cluster::start("restrict", &["r1"], "1");
    let file = write(
        &c,
        "site.yml",
        "- jobs:\n  - RUN: echo one > one.txt\n  - RUN: echo two > two.txt\n",
    );
    let dry = orchestrate(&c, &file, &["--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    let sha_two = dry
        .stdout
        .lines()
        .find(|l| l.contains("two.txt"))
        .unwrap()
        .split_whitespace()
        .last()
        .unwrap()
        .to_owned();
    assert_eq!(sha_two.len(), 40, "{}", dry.stdout);
    let out = orchestrate(&c, &file, &["--wait", "--restrict", &sha_two[..10]]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(c.node_dir("r1").join("two.txt").exists());
    assert!(!c.node_dir("r1").join("one.txt").exists());
    assert_eq!(c.jobs_json().len(), 1);
}

#[test]
fn run_once_runs_on_exactly_one_target() {
    let c = Cluster::start("once", &["o1", "o2", "o3"], "1");
    let out = c.cli(&[
        "exec",
        "--verb",
        "RUN",
        "--wait",
        "--run-once touch ran-once",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let ran: Vec<&str> = ["o1", "o2", "o3"]
        .into_iter()
        .filter(|n| c.node_dir(n).join("ran-once").exists())
        .collect();
    assert_eq!(ran.len(), 1, "{ran:?}");
    assert!(out.stdout.contains("1 succeeded"));
}

#[test]
fn timeout_kills_the_command_and_its_children() {
    let c = Cluster::start("timeout", &["k"], "1");
    let out = c.cli(&[
        "exec",
        "--verb",
        "RUN",
        "--wait",
        "--timeout 2 sleep 300 & echo $! > child.pid; echo $$ > sh.pid; sleep 300",
    ]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("k: timed out"), "{}", out.stdout);
    assert!(out.stdout.contains("timed out after 2s"), "{}", out.stdout);
    let dir = c.node_dir("k");
    let (child, sh) = (
        read_pid(&dir.join("child.pid")),
        read_pid(&dir.join("sh.pid")),
    );
    wait_until("timed-out processes gone", DEADLINE, || {
        pid_gone(child) && pid_gone(sh)
    });
    // The node carries on with the next job.
    let out = c.cli(&["exec", "--verb", "RUN", "--wait", "echo next"]);
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn a_failure_stops_the_run_on_that_node_only() {
    let c = Cluster::start("midfail", &["good", "bad"], "1");
    fs::write(c.node_dir("bad").join("fail-here"), "").unwrap();
    let file = write(
        &c,
        "site.yml",
        "- jobs:\n  - RUN: echo 1 >> steps\n  - RUN: if [ -e fail-here ]; then echo broken >&2; exit 3; fi\n  - RUN: echo 3 >> steps\n  - RUN: echo 4 >> steps\n- jobs:\n  - RUN: echo 5 >> steps\n",
    );
    let out = orchestrate(&c, &file, &["--wait"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        fs::read_to_string(c.node_dir("good").join("steps")).unwrap(),
        "1\n3\n4\n5\n"
    );
    assert_eq!(
        fs::read_to_string(c.node_dir("bad").join("steps")).unwrap(),
        "1\n"
    );
    assert_eq!(recap(&out.stdout, "good"), (5, 0, 0, 0));
    assert_eq!(recap(&out.stdout, "bad"), (1, 0, 3, 1));
    assert!(out.stdout.contains("bad: job 2/5 RUN"), "{}", out.stdout);
    assert!(out.stdout.contains("stderr | broken"), "{}", out.stdout);
    let skipped = c
        .jobs_json()
        .iter()
        .filter(|j| j["states"]["skipped"] == 1)
        .count();
    assert_eq!(skipped, 3);
    // The server keeps only states in memory: why a part was skipped, and
    // the failure's exit and output, are read back from its journal.
    let jobs = c.jobs_json();
    let part_on = |job: &serde_json::Value, node: &str| {
        let info = c.job_info(job["id"].as_str().unwrap());
        info["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["node"] == node)
            .cloned()
            .unwrap()
    };
    let failed = part_on(&jobs[1], "bad");
    assert_eq!(failed["exit_code"], 3, "{failed}");
    assert_eq!(failed["stderr"], "broken\n", "{failed}");
    let skip = part_on(&jobs[2], "bad");
    assert_eq!(skip["state"], "skipped", "{skip}");
    assert!(
        skip["message"]
            .as_str()
            .is_some_and(|m| m.contains("an earlier job of this orchestration failed")),
        "{skip}"
    );
    assert!(skip["finished_ms"].as_u64().is_some(), "{skip}");
}

#[test]
fn dry_run_prints_the_plan_and_submits_nothing() {
    let c = Cluster::start("dry", &["d1", "d2"], "1");
    let file = write(
        &c,
        "site.yml",
        SITE.replace("n1", "d1").replace("n2", "d2").as_str(),
    );
    let out = orchestrate(&c, &file, &["--dry-run", "--target", "d2"]);
    assert_eq!(out.code, 0, "{out:?}");
    let rows: Vec<&str> = out.stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 5, "{}", out.stdout);
    assert!(
        rows.iter()
            .all(|r| r.split_whitespace().nth(1) == Some("d2")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("WORKDIR") && out.stdout.contains("TASK SHA1"));
    assert!(c.jobs_json().is_empty());
    assert!(!c.node_dir("d2").join("out").exists());
}

#[test]
fn bad_orchestrations_are_refused_whole_and_queue_nothing() {
    let c = Cluster::start("bad", &["b1"], "1");
    let good = write(&c, "good.yml", "- jobs:\n  - RUN: touch should-not-run\n");
    let cases = [
        ("yaml.yml", "- jobs: [\n", "line 2"),
        (
            "shape.yml",
            "- jobs:\n  - RUN: a\n    ARG: b c\n",
            "one verb",
        ),
        ("verb.yml", "- jobs:\n  - FLY: away\n", "unknown verb 'FLY'"),
        ("nojobs.yml", "- targets: [b1]\n", "missing field `jobs`"),
        (
            "target.yml",
            "- targets: [ghost]\n  jobs:\n  - RUN: true\n",
            "unknown target node 'ghost'",
        ),
        (
            "option.yml",
            "- jobs:\n  - RUN: --timeout never sleep 1\n",
            "--timeout",
        ),
        (
            "arg.yml",
            "- jobs:\n  - ARG: lonely\n",
            "ARG needs KEY VALUE",
        ),
    ];
    for (name, text, want) in cases {
        let bad = write(&c, name, text);
        // The good file first: nothing of it may be queued either.
        let out = c.cli(&["orchestrate", good.to_str().unwrap(), bad.to_str().unwrap()]);
        assert_eq!(out.code, 2, "{name}: {out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{name}: {out:?}");
        assert!(out.stderr.contains(want), "{name}: {out:?}");
        if name != "target.yml" {
            assert!(out.stderr.contains(name), "{name} is named: {out:?}");
        }
    }
    let out = c.cli(&[
        "orchestrate",
        c.dir.path.join("missing.yml").to_str().unwrap(),
    ]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("missing.yml"), "{out:?}");
    assert!(c.jobs_json().is_empty());
    assert!(!c.node_dir("b1").join("should-not-run").exists());
}

#[test]
fn exec_runs_every_verb_and_names_undefined_variables() {
    let c = Cluster::start("verbs", &["v"], "1");
    let run = |verb: &str, args: &str| c.cli(&["exec", "--verb", verb, "--wait", args]);
    assert_eq!(run("ENV", "GREETING hi-from-env").code, 0);
    assert_eq!(run("ARG", "dir deep/er").code, 0);
    assert_eq!(run("WORKDIR", "made/{{ dir }}").code, 0);
    assert!(c.node_dir("v").join("made/deep/er").is_dir());
    let out = run("RUN", "echo $GREETING");
    assert!(out.stdout.contains("stdout | hi-from-env"), "{out:?}");
    let out = run("RUN", "echo {{ nope }}");
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("undefined template variable 'nope'"),
        "{out:?}"
    );
    // The job string carries the option: refused by the DSL, not the CLI.
    let out = c.cli(&["exec", "--verb", "ARG", "--stdout-arg x k v"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("--stdout-arg does not apply to ARG"),
        "{out:?}"
    );
    // WORKDIR --stdout-arg keeps the path (rendered) as an ARG; RUN
    // --stderr-arg keeps what the command said on stderr.
    let out = run("WORKDIR", "--stdout-arg wrkdir {{ 'made' }}/w");
    assert_eq!(out.code, 0, "{out:?}");
    let out = run("RUN", "--stderr-arg said echo {{ wrkdir }} >&2");
    assert_eq!(out.code, 0, "{out:?}");
    let out = run("RUN", "echo '{{ said }}' > said.txt");
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        std::fs::read_to_string(c.node_dir("v").join("said.txt")).unwrap(),
        "made/w\n"
    );
}

#[test]
fn a_run_is_looked_up_by_its_id_or_a_prefix_with_its_recap_and_failures() {
    let c = Cluster::start("runinfo", &["n1", "n2"], "1");
    let file = write(
        &c,
        "run.yml",
        "- jobs:\n  - RUN: echo one\n  - RUN: \"[ $(basename $PWD) = node-n1 ] || { echo broke here >&2; exit 3; }\"\n  - RUN: echo three\n",
    );
    let out = orchestrate(&c, &file, &["--wait"]);
    assert_eq!(out.code, 1, "{out:?}");
    let parent = parent_id(&out.stdout);
    // By a prefix of the run's id: its jobs, the recap, the failure's output.
    let info = c.cli(&["manage", "--job-info", &parent[..8]]);
    assert_eq!(info.code, 0, "{info:?}");
    assert!(
        info.stdout.starts_with(&format!("run {parent}: 3 jobs")),
        "{}",
        info.stdout
    );
    assert_eq!(recap(&info.stdout, "n1"), (3, 0, 0, 0), "{}", info.stdout);
    assert_eq!(recap(&info.stdout, "n2"), (1, 0, 1, 1), "{}", info.stdout);
    assert!(
        info.stdout.contains("stderr | broke here"),
        "{}",
        info.stdout
    );
    // JSON: the jobs and every part.
    let json = c.cli(&["manage", "--job-info", &parent, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v[0]["jobs"].as_array().unwrap().len(), 3);
    assert_eq!(v[0]["parts"].as_array().unwrap().len(), 6);
    // --list-runs lists it; --list-jobs names its run.
    let runs = c.cli(&["manage", "--list-runs"]);
    assert!(runs.stdout.contains(&parent[..8]), "{runs:?}");
    assert!(runs.stdout.lines().all(|l| l.len() <= 100), "{runs:?}");
    assert!(runs.stdout.contains("4 succeeded"), "{runs:?}");
    let header: Vec<&str> = runs
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        &header[4..],
        ["CHANGED", "SUBMITTED", "(UTC)", "TOOK"],
        "{runs:?}"
    );
    let jobs = c.cli(&["manage", "--list-jobs"]);
    assert_eq!(jobs.stdout.matches(&parent[..8]).count(), 3, "{jobs:?}");
    // A prefix too short, or that is no id, is refused in one line.
    let short = c.cli(&["manage", "--job-info", &parent[..4]]);
    assert_eq!(short.code, 2, "{short:?}");
    assert!(
        short.stderr.contains("first 6 characters or more"),
        "{short:?}"
    );
    let none = c.cli(&["manage", "--job-info", "ffffffffffff"]);
    assert_eq!(none.code, 2, "{none:?}");
    assert!(
        none.stderr
            .contains("no job or run id starts with ffffffffffff"),
        "{none:?}"
    );
}

#[test]
fn watch_follows_a_run_or_a_job_already_going_to_its_end_and_exit_status() {
    let c = Cluster::start("watch", &["n1", "n2"], "1");
    let gate = c.dir.path.join("gate");
    let file = write(
        &c,
        "gated.yml",
        &format!(
            "- jobs:\n  - RUN: echo first\n  - RUN: --skip-cache while [ ! -e {} ]; do sleep 0.05; done; echo passed\n",
            gate.display()
        ),
    );
    let out = orchestrate(&c, &file, &[]);
    assert_eq!(out.code, 0, "{out:?}");
    let parent = parent_id(&out.stdout);
    // The first job is done on both nodes before the watch begins.
    wait_until("the first job done", DEADLINE, || {
        c.jobs_json()
            .iter()
            .any(|j| j["states"]["succeeded"].as_u64() == Some(2))
    });
    let mut watcher = c.cli_background(&["manage", "--watch", &parent[..10]], "watch.log");
    wait_until("the watch caught up", DEADLINE, || {
        watcher
            .log_text()
            .contains("job 1/2 RUN echo first: 2 succeeded")
    });
    assert!(watcher.is_running(), "{}", watcher.log_text());
    fs::write(&gate, "").unwrap();
    assert_eq!(
        watcher.wait_exit(DEADLINE),
        Some(0),
        "{}",
        watcher.log_text()
    );
    let log = watcher.log_text();
    assert!(log.starts_with(&format!("run {parent}: 2 jobs")), "{log}");
    assert_eq!(recap(&log, "n1"), (2, 0, 0, 0), "{log}");

    // A job: its exit status is the job's, as with exec --wait.
    fs::remove_file(&gate).unwrap();
    let id = c.submit(
        &["n1"],
        &format!(
            "while [ ! -e {} ]; do sleep 0.05; done; exit 5",
            gate.display()
        ),
    );
    let mut watcher = c.cli_background(&["manage", "--watch", &id], "watch-job.log");
    wait_until("the job watch started", DEADLINE, || {
        watcher.log_text().contains(&format!("job {id}"))
    });
    fs::write(&gate, "").unwrap();
    assert_eq!(
        watcher.wait_exit(DEADLINE),
        Some(1),
        "{}",
        watcher.log_text()
    );
    assert!(
        watcher.log_text().contains("n1: failed, exit 5"),
        "{}",
        watcher.log_text()
    );
    // A job already done: at once.
    let done = c.cli(&["manage", "--watch", &id]);
    assert_eq!(done.code, 1, "{done:?}");
    assert!(
        done.stdout.contains("job ") && done.stdout.contains("1 failed"),
        "{done:?}"
    );
}

#[test]
fn orchestrate_follow_streams_output_and_verbose_recaps_what_succeeded() {
    let c = Cluster::start("ofollow", &["n1", "n2"], "1");
    let gate = c.dir.path.join("gate");
    let file = write(
        &c,
        "f.yml",
        &format!(
            "- jobs:\n  - RUN: echo step one\n  - RUN: echo waiting; while [ ! -e {} ]; do sleep 0.05; done; echo step two\n",
            gate.display()
        ),
    );
    let mut cli = c.cli_background(
        &[
            "orchestrate",
            file.to_str().unwrap(),
            "--wait",
            "--follow",
            "-v",
        ],
        "f.log",
    );
    wait_until("the second job's first line, live", DEADLINE, || {
        let log = cli.log_text();
        log.contains("n1 | waiting") && log.contains("n2 | waiting")
    });
    assert!(!cli.log_text().contains("recap"), "{}", cli.log_text());
    fs::write(&gate, "").unwrap();
    assert_eq!(cli.wait_exit(DEADLINE), Some(0), "{}", cli.log_text());
    let log = cli.log_text();
    assert!(
        log.contains("n2 | step one\n") && log.contains("n1 | step two\n"),
        "{log}"
    );
    // -v: the recap shows what the steps that succeeded printed.
    let after = &log[log.find("what the steps did (or would do):").expect(&log)..];
    assert!(
        after.contains("n1: job 1/2 RUN echo step one\n  stdout | step one"),
        "{log}"
    );
}

#[test]
fn first_mistakes_get_messages_that_show_the_right_form() {
    let c = Cluster::start("messages", &["m1"], "1");
    // A mistyped mode.
    let out = c.cli(&["servr"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("unknown mode 'servr'"), "{out:?}");
    // Job options outside the job string are job options.
    let out = c.cli(&[
        "exec",
        "--verb",
        "RUN",
        "--skip-cache",
        "--timeout",
        "5",
        "--wait",
        "echo hi",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let id = util::job_id(&out.stdout);
    assert_eq!(
        c.job_info(&id)["job"]["args"],
        "--skip-cache --timeout 5 echo hi"
    );
    // A template syntax error is refused at submission, and by --dry-run.
    let out = c.cli(&["exec", "--verb", "RUN", "echo {{ x"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("RUN command: bad template: syntax error"),
        "{out:?}"
    );
    let bad = write(&c, "bad.yml", "- jobs:\n  - RUN: \"echo {{ x\"\n");
    let out = orchestrate(&c, &bad, &["--dry-run"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("bad template"), "{out:?}");
    // An unquoted {{ value: quote it.
    let bad = write(&c, "unquoted.yml", "- jobs:\n  - RUN: {{ cmd }} --x\n");
    let out = orchestrate(&c, &bad, &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("must be quoted"), "{out:?}");
    // An unknown target names its file and its block there, under
    // --restrict too.
    let one = write(&c, "one.yml", "- jobs:\n  - RUN: echo one\n");
    let two = write(
        &c,
        "two.yml",
        "- jobs:\n  - RUN: echo a\n- targets: [ghost]\n  jobs:\n  - RUN: echo b\n",
    );
    let b = write(&c, "b.yml", "- jobs:\n  - RUN: echo b\n");
    let sha1 = orchestrate(&c, &b, &["--dry-run"])
        .stdout
        .lines()
        .find(|l| l.contains("echo b"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap()
        .to_owned();
    let out = c.cli(&[
        "orchestrate",
        one.to_str().unwrap(),
        two.to_str().unwrap(),
        "--restrict",
        &sha1,
    ]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("two.yml, block 2: unknown target node 'ghost'"),
        "{out:?}"
    );
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    // A job string with a newline shows on one line.
    let out = c.cli(&["exec", "--verb", "RUN", "--wait", "echo a\necho b"]);
    assert_eq!(out.code, 0, "{out:?}");
    let id = util::job_id(&out.stdout);
    let info = c.cli(&["manage", "--job-info", &id]);
    assert!(
        info.stdout.contains("args       echo a\\necho b\n"),
        "{info:?}"
    );
    // Plurals.
    let out = orchestrate(&c, &one, &[]);
    assert!(out.stdout.contains(": 1 job queued"), "{out:?}");
}

#[test]
fn watch_follow_shows_the_output_of_a_job_already_running() {
    let c = Cluster::start("watchfollow", &["w1", "w2"], "1");
    let gate = c.dir.path.join("gate");
    let id = c.submit(
        &["w1"],
        &format!(
            "echo started; while [ ! -e {} ]; do echo tick; sleep 0.05; done; echo done",
            gate.display()
        ),
    );
    wait_until("the job running", DEADLINE, || {
        c.part_state(&id, "w1") == "running"
    });
    let mut watcher = c.cli_background(&["manage", "--watch", &id[..8], "-f"], "wf.log");
    // The node streams from the moment it hears someone follows.
    wait_until("ticks shown live", DEADLINE, || {
        watcher.log_text().contains("w1 | tick")
    });
    assert!(!gate.exists());
    fs::write(&gate, "").unwrap();
    assert_eq!(
        watcher.wait_exit(DEADLINE),
        Some(0),
        "{}",
        watcher.log_text()
    );
    let log = watcher.log_text();
    assert!(log.contains("w1 | done"), "{log}");
    assert!(log.contains("1 succeeded"), "{log}");
    // --follow in manage goes with --watch only.
    let out = c.cli(&["manage", "--list-jobs", "--follow"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--follow goes with --watch"), "{out:?}");
}
