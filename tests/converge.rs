//! End-to-end tests of managing state: files that converge (blueprints,
//! modes, `--check`, `--diff`), handlers, PACKAGE with a real `.deb`,
//! SERVICE against a `systemctl` stand-in, WAIT and RUN's guards. Real
//! server and clients on loopback; results checked on disk and in the
//! results.

mod util;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use util::Cluster;

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().mode() & 0o7777
}

/// Each node's state of the job a `--wait` printed.
fn states(c: &Cluster, out: &util::Out) -> Vec<(String, String, bool)> {
    let id = util::job_id(&out.stdout);
    let info = c.job_info(&id);
    info["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["node"].as_str().unwrap().to_owned(),
                p["state"].as_str().unwrap().to_owned(),
                p["changed"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// How many files node `n` received (its log says each).
fn received(c: &Cluster, n: &str) -> usize {
    fs::read_to_string(c.dir.path.join(format!("client-{n}.log")))
        .unwrap_or_default()
        .matches(": receiving ")
        .count()
}

#[test]
fn a_managed_file_edited_chmodded_or_deleted_is_restored_then_unchanged_and_a_check_changes_nothing(
) {
    let c = Cluster::start("converge-file", &["a", "b"], "0.5");
    let tpl = c.dir.path.join("app.conf.j2");
    fs::write(
        &tpl,
        "port={{ port }}\n{% if port == '8080' %}\nalt=yes\n{% endif %}\nsecret={{ password }}\n",
    )
    .unwrap();
    let arg = c.cli(&["exec", "--verb", "ARG", "--wait", "port 8080"]);
    assert_eq!(arg.code, 0, "{arg:?}");
    let arg = c.cli(&["exec", "--verb", "ARG", "--wait", "password hunter2-secret"]);
    assert_eq!(arg.code, 0, "{arg:?}");
    let job = format!("--blueprint --chmod 0640 {} app.conf", tpl.display());
    let add = |extra: &[&str]| {
        let mut args = vec!["exec", "--verb", "ADD", "--wait"];
        args.extend(extra);
        args.push(&job);
        c.cli(&args)
    };
    let file = |n: &str| c.node_dir(n).join("app.conf");
    let want = "port=8080\nalt=yes\nsecret=hunter2-secret\n";

    // First run: rendered on each node, with its mode; changed.
    let out = add(&[]);
    assert_eq!(out.code, 0, "{out:?}");
    for n in ["a", "b"] {
        assert_eq!(fs::read_to_string(file(n)).unwrap(), want);
        assert_eq!(mode(&file(n)), 0o640);
    }
    assert_eq!(
        states(&c, &out),
        vec![
            ("a".into(), "succeeded".into(), true),
            ("b".into(), "succeeded".into(), true)
        ]
    );
    let sent = (received(&c, "a"), received(&c, "b"));
    assert_eq!(sent, (1, 1), "each node fetched the blueprint once");

    // Unchanged: nothing fetched, nothing written.
    let before = fs::metadata(file("a")).unwrap().ino();
    let out = add(&[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        states(&c, &out),
        vec![
            ("a".into(), "unchanged".into(), false),
            ("b".into(), "unchanged".into(), false)
        ]
    );
    assert_eq!(
        (received(&c, "a"), received(&c, "b")),
        sent,
        "an unchanged rerun sends no bytes"
    );
    assert_eq!(
        fs::metadata(file("a")).unwrap().ino(),
        before,
        "the file was not rewritten"
    );

    // Drift: a's content edited, b's mode widened.
    fs::write(file("a"), "port=1\n").unwrap();
    fs::set_permissions(file("b"), fs::Permissions::from_mode(0o666)).unwrap();

    // --check changes nothing, says what would, and exits 5; --diff shows
    // the lines, the secret masked.
    let out = add(&["--check", "--diff"]);
    assert_eq!(out.code, 5, "{out:?}");
    assert_eq!(fs::read_to_string(file("a")).unwrap(), "port=1\n");
    assert_eq!(mode(&file("b")), 0o666);
    assert!(out.stdout.contains("would update"), "{}", out.stdout);
    assert!(out.stdout.contains("-port=1"), "{}", out.stdout);
    assert!(out.stdout.contains("+port=8080"), "{}", out.stdout);
    assert!(out.stdout.contains("+secret=<hidden>"), "{}", out.stdout);
    assert!(
        !out.stdout.contains("hunter2"),
        "a secret in a diff: {}",
        out.stdout
    );
    assert!(
        out.stdout.contains("would change the mode"),
        "{}",
        out.stdout
    );
    assert_eq!(
        states(&c, &out),
        vec![
            ("a".into(), "would_change".into(), true),
            ("b".into(), "would_change".into(), true)
        ]
    );

    // The real run restores both; the cache never skips a file.
    let out = add(&[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(fs::read_to_string(file("a")).unwrap(), want);
    assert_eq!(mode(&file("b")), 0o640);
    assert_eq!(
        states(&c, &out),
        vec![
            ("a".into(), "succeeded".into(), true),
            ("b".into(), "succeeded".into(), true)
        ]
    );
    // Deleted on a: restored from the node's own copy of the blueprint.
    fs::remove_file(file("a")).unwrap();
    let out = add(&[]);
    assert_eq!(fs::read_to_string(file("a")).unwrap(), want);
    assert_eq!(
        states(&c, &out),
        vec![
            ("a".into(), "succeeded".into(), true),
            ("b".into(), "unchanged".into(), false)
        ]
    );
    assert_eq!((received(&c, "a"), received(&c, "b")), sent);
    // Nothing would change now: --check exits 0.
    let out = add(&["--check"]);
    assert_eq!(out.code, 0, "{out:?}");

    // b's store of blueprints removed (evicted, or by hand): b fetches the
    // blueprint again, and its file, as it should be, is left alone.
    let store = c.node_dir("b").join("cache").join("blueprints");
    assert_eq!(fs::read_dir(&store).unwrap().count(), 1, "one source kept");
    fs::remove_dir_all(&store).unwrap();
    let before = fs::metadata(file("b")).unwrap().ino();
    let out = add(&[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        states(&c, &out),
        vec![
            ("a".into(), "unchanged".into(), false),
            ("b".into(), "unchanged".into(), false)
        ]
    );
    assert_eq!((received(&c, "a"), received(&c, "b")), (sent.0, sent.1 + 1));
    assert_eq!(fs::metadata(file("b")).unwrap().ino(), before);
    assert_eq!(fs::read_dir(&store).unwrap().count(), 1, "kept again");

    // A plain file too: edited, it is sent again; the list shows changes.
    let plain = c.dir.path.join("motd");
    fs::write(&plain, "hello\n").unwrap();
    let job = format!("--chmod 600 {} motd", plain.display());
    let out = c.cli(&["exec", "--verb", "COPY", "--wait", &job]);
    assert_eq!(out.code, 0, "{out:?}");
    fs::write(c.node_dir("b").join("motd"), "tampered\n").unwrap();
    let out = c.cli(&["exec", "--verb", "COPY", "--wait", &job]);
    assert_eq!(
        states(&c, &out),
        vec![
            ("a".into(), "unchanged".into(), false),
            ("b".into(), "succeeded".into(), true)
        ]
    );
    assert_eq!(
        fs::read_to_string(c.node_dir("b").join("motd")).unwrap(),
        "hello\n"
    );
    let id = util::job_id(&out.stdout);
    let listed = c.jobs_json();
    let j = listed.iter().find(|j| j["id"] == id.as_str()).unwrap();
    assert_eq!(j["changed"], 1, "{j}");
}

#[test]
fn a_client_killed_in_the_middle_of_a_blueprint_job_leaves_no_partial_file_and_the_next_run_converges(
) {
    let mut c = Cluster::start("converge-kill", &["a"], "0.5");
    let src = c.dir.path.join("tpl");
    fs::create_dir_all(&src).unwrap();
    let total = 300;
    let want = |i: usize| {
        format!(
            "file {i}\n{}",
            "line {{ 6 * 7 }}\n".repeat(20).replace("{{ 6 * 7 }}", "42")
        )
    };
    for i in 0..total {
        fs::write(
            src.join(format!("f{i:03}.conf")),
            format!("file {i}\n{}", "line {{ 6 * 7 }}\n".repeat(20)),
        )
        .unwrap();
    }
    let job = format!("--blueprint {}/*.conf conf/", src.display());
    let conf = c.node_dir("a").join("conf");
    let store = c.node_dir("a").join("cache").join("blueprints");
    let id = c.submit_verb("ADD", &["a"], &job);
    util::wait_until("the first files written", Duration::from_secs(60), || {
        fs::read_dir(&conf).map(|d| d.count()).unwrap_or(0) >= 5
    });
    c.client("a").signal(libc::SIGKILL);
    c.client("a").wait_exit(Duration::from_secs(30));
    let written = fs::read_dir(&conf).unwrap().count();
    assert!(
        written < total,
        "the kill came after the job ended ({written} files)"
    );
    // Every file there is whole: written aside and renamed into place.
    for e in fs::read_dir(&conf).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        assert!(!name.starts_with(".director-tmp"), "a partial file: {name}");
        let i: usize = name[1..4].parse().unwrap();
        assert_eq!(fs::read_to_string(e.path()).unwrap(), want(i), "{name}");
    }
    let stored = fs::read_dir(&store).unwrap().count();
    let fetched = received(&c, "a");
    c.start_client("a");
    let info = c.wait_job_done(&id);
    assert_eq!(info["nodes"][0]["state"], "lost", "{info}");
    // The next run finishes the work, fetching only what was not kept.
    let out = c.cli(&["exec", "--verb", "ADD", "--wait", &job]);
    assert_eq!(out.code, 0, "{out:?}");
    for i in 0..total {
        assert_eq!(
            fs::read_to_string(conf.join(format!("f{i:03}.conf"))).unwrap(),
            want(i)
        );
    }
    assert_eq!(
        received(&c, "a") - fetched,
        total - stored,
        "what was kept ({stored}) is not fetched again"
    );
    // The store holds whole sources only, each named by its SHA1.
    let mut kept = 0;
    for e in fs::read_dir(&store).unwrap() {
        let e = e.unwrap();
        let sum: String = <sha1::Sha1 as sha1::Digest>::digest(fs::read(e.path()).unwrap())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(e.file_name().into_string().unwrap(), sum);
        kept += 1;
    }
    assert_eq!(kept, total);
    let out = c.cli(&["exec", "--verb", "ADD", "--wait", &job]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        states(&c, &out),
        vec![("a".into(), "unchanged".into(), false)]
    );
}

#[test]
fn a_handler_runs_only_on_the_node_whose_config_changed() {
    let c = Cluster::start("converge-handler", &["a", "b"], "0.5");
    let tpl = c.dir.path.join("nginx.conf.j2");
    fs::write(&tpl, "worker_processes {{ workers | default('2') }};\n").unwrap();
    let file = c.dir.path.join("site.yml");
    fs::write(
        &file,
        format!(
            "- jobs:\n  - name: nginx-config\n    ADD: --blueprint {} nginx.conf\n  - onchanges: [nginx-config]\n    RUN: echo restarted >> restarts\n",
            tpl.display()
        ),
    )
    .unwrap();
    let run = || c.cli(&["orchestrate", "--wait", file.to_str().unwrap()]);
    let restarts = |n: &str| {
        fs::read_to_string(c.node_dir(n).join("restarts"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let out = run();
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!((restarts("a"), restarts("b")), (1, 1));
    // Nothing changed: no restart anywhere, and the run still succeeds.
    let out = run();
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!((restarts("a"), restarts("b")), (1, 1), "{}", out.stdout);
    assert!(out.stdout.contains("skipped (no change)"), "{}", out.stdout);
    // a's config drifts: only a restarts.
    fs::write(c.node_dir("a").join("nginx.conf"), "worker_processes 64;\n").unwrap();
    let out = run();
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!((restarts("a"), restarts("b")), (2, 1), "{}", out.stdout);
    assert!(out.stdout.contains("CHANGED"), "{}", out.stdout);
    // A handler of a name no job has is refused before anything is queued.
    let bad = c.dir.path.join("bad.yml");
    fs::write(&bad, "- jobs:\n  - onchanges: [nope]\n    RUN: 'true'\n").unwrap();
    let out = c.cli(&["orchestrate", bad.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("onchanges names 'nope'"),
        "{}",
        out.stderr
    );
}

/// A `systemctl` that keeps unit states in files and records every call:
/// these machines do not run systemd as PID 1.
fn systemctl_stand_in(dir: &Path) -> std::path::PathBuf {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let state = dir.join("units");
    fs::create_dir_all(&state).unwrap();
    let script = format!(
        r#"#!/bin/sh
S={s}
cmd=$1; shift
case $cmd in
  is-active) a=$(cat "$S/$1.active" 2>/dev/null || echo inactive); echo $a; [ "$a" = active ] ;;
  is-enabled) e=$(cat "$S/$1.enabled" 2>/dev/null || echo disabled); echo $e; [ "$e" = enabled ] ;;
  *) echo "$cmd $*" >> "$S/calls"
     for u in "$@"; do case $cmd in
       start|restart|reload) echo active > "$S/$u.active" ;;
       stop) echo inactive > "$S/$u.active" ;;
       enable) echo enabled > "$S/$u.enabled" ;;
       disable|unmask) echo disabled > "$S/$u.enabled" ;;
       mask) echo masked > "$S/$u.enabled" ;;
       daemon-reload) ;;
     esac; done ;;
esac
"#,
        s = state.display()
    );
    let path = bin.join("systemctl");
    fs::write(&path, script).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

#[test]
fn service_wait_and_run_guards_converge() {
    let mut c = Cluster::new("converge-verbs", "0.5");
    let bin = systemctl_stand_in(&c.dir.path);
    c.start_server();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    c.start_client_env("a", &[("PATH", &path)]);
    c.wait_nodes(&["a"]);
    let calls = || fs::read_to_string(c.dir.path.join("units/calls")).unwrap_or_default();
    let exec = |verb: &str, args: &[&str], job: &str| {
        let mut all = vec!["exec", "--verb", verb, "--wait"];
        all.extend(args);
        all.push(job);
        c.cli(&all)
    };

    // SERVICE: enabled and started once; then nothing to do.
    let out = exec("SERVICE", &[], "--enable --daemon-reload nginx");
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(calls(), "daemon-reload \nenable nginx\nstart nginx\n");
    assert_eq!(states(&c, &out)[0].1, "succeeded");
    let out = exec("SERVICE", &[], "--enable nginx");
    assert_eq!(states(&c, &out)[0], ("a".into(), "unchanged".into(), false));
    assert_eq!(calls().lines().count(), 3, "no call that changes anything");
    // --check of a stop: says so, calls nothing that changes.
    let out = exec("SERVICE", &["--check"], "--stopped nginx");
    assert_eq!(out.code, 5, "{out:?}");
    assert!(out.stdout.contains("would stop nginx"), "{}", out.stdout);
    assert_eq!(calls().lines().count(), 3);
    // Directord's spelling: a restart is always a change.
    let out = exec("SERVICE", &[], "--restarted nginx");
    assert_eq!(states(&c, &out)[0], ("a".into(), "succeeded".into(), true));
    assert!(calls().ends_with("restart nginx\n"));

    // RUN's guards: --creates and --unless make it converge.
    let out = exec("RUN", &[], "--creates made --skip-cache touch made");
    assert_eq!(states(&c, &out)[0].1, "succeeded");
    let out = exec("RUN", &[], "--creates made --skip-cache touch made");
    assert_eq!(states(&c, &out)[0], ("a".into(), "unchanged".into(), false));
    let out = exec(
        "RUN",
        &[],
        "--unless 'test -e made' --skip-cache echo ran >> ran",
    );
    assert_eq!(states(&c, &out)[0].1, "unchanged");
    assert!(!c.node_dir("a").join("ran").exists());
    let out = exec(
        "RUN",
        &["--check"],
        "--unless 'test -e nope' --skip-cache echo ran >> ran",
    );
    assert_eq!(out.code, 5, "{out:?}");
    assert!(out.stdout.contains("would run"), "{}", out.stdout);
    assert!(
        !c.node_dir("a").join("ran").exists(),
        "--check ran a command"
    );

    // WAIT --cmd: succeeds on the third try.
    let out = exec(
        "WAIT",
        &[],
        "--retry 5 --retry-wait 0.1 --cmd n=$(cat tries 2>/dev/null || echo 0); n=$((n+1)); echo $n > tries; [ $n -ge 3 ]",
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        fs::read_to_string(c.node_dir("a").join("tries")).unwrap(),
        "3\n"
    );
    let info = c.job_info(&util::job_id(&out.stdout));
    assert_eq!(info["nodes"][0]["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(info["nodes"][0]["state"], "unchanged");

    // WAIT --url: a listener that answers 503 twice, then 200.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        for status in ["503 Busy", "503 Busy", "200 OK"] {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ =
                s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes());
        }
    });
    let url = format!("--retry 10 --retry-wait 0.1 --url http://127.0.0.1:{port}/health");
    let out = exec("WAIT", &[], &url);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("200 OK (try 3)"), "{}", out.stdout);
    server.join().unwrap();
    // Nothing listens there now: it runs out, and says why.
    let out = exec(
        "WAIT",
        &[],
        &format!("--retry 1 --retry-wait 0.1 --url http://127.0.0.1:{port}/"),
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("no 2xx or 3xx answer after 2 tries"),
        "{}",
        out.stdout
    );
    // Bad input is refused before anything is queued.
    let out = exec("WAIT", &[], "--seconds 1 --cmd true");
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("only one of --seconds, --url and --cmd"),
        "{}",
        out.stderr
    );
}

/// A `.deb` of package `name` at `version`, built with dpkg-deb.
fn deb(dir: &Path, name: &str, version: &str) -> std::path::PathBuf {
    let root = dir.join(format!("{name}-{version}"));
    fs::create_dir_all(root.join("DEBIAN")).unwrap();
    fs::create_dir_all(root.join(format!("usr/share/{name}"))).unwrap();
    fs::write(
        root.join(format!("usr/share/{name}/VERSION")),
        format!("{version}\n"),
    )
    .unwrap();
    fs::write(
        root.join("DEBIAN/control"),
        format!("Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: director tests <t@example.invalid>\nDescription: a package for director's tests\n"),
    )
    .unwrap();
    let out_file = dir.join(format!("{name}_{version}_all.deb"));
    let st = std::process::Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&root)
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    out_file
}

fn installed(name: &str) -> Option<String> {
    let out = std::process::Command::new("dpkg-query")
        .args(["-W", "-f=${Status} ${Version}", name])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.strip_prefix("install ok installed ").map(str::to_owned)
}

#[test]
fn package_installs_upgrades_and_removes_a_real_deb() {
    // SAFETY: a plain syscall.
    if unsafe { libc::geteuid() } != 0 || installed("dpkg").is_none() {
        eprintln!("skipped: PACKAGE with dpkg needs root and a Debian system (CI has both)");
        return;
    }
    const NAME: &str = "director-test-pkg";
    let c = Cluster::start("converge-package", &["a"], "0.5");
    let _ = std::process::Command::new("dpkg")
        .args(["-r", NAME])
        .output();
    let v1 = deb(&c.dir.path, NAME, "1.0");
    let v2 = deb(&c.dir.path, NAME, "1.1");
    let exec = |args: &[&str], job: &str| {
        let mut all = vec!["exec", "--verb", "PACKAGE", "--wait"];
        all.extend(args);
        all.push(job);
        c.cli(&all)
    };
    let facts = c.nodes_json();
    assert_eq!(facts[0]["facts"]["package_manager"], "apt", "{facts}");
    // --check first: nothing installed.
    let out = exec(&["--check"], v1.to_str().unwrap());
    assert_eq!(out.code, 5, "{out:?}");
    assert!(
        out.stdout.contains(&format!("would install {NAME} 1.0")),
        "{}",
        out.stdout
    );
    assert_eq!(installed(NAME), None);
    let out = exec(&[], v1.to_str().unwrap());
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains(&format!("installed {NAME} 1.0")),
        "{}",
        out.stdout
    );
    assert_eq!(installed(NAME).as_deref(), Some("1.0"));
    let out = exec(&[], v1.to_str().unwrap());
    assert_eq!(states(&c, &out)[0], ("a".into(), "unchanged".into(), false));
    // present does not upgrade; latest does.
    let out = exec(&[], v2.to_str().unwrap());
    assert_eq!(states(&c, &out)[0].1, "unchanged");
    let out = exec(&["--state", "latest"], v2.to_str().unwrap());
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains(&format!("upgraded {NAME} 1.0 -> 1.1")),
        "{}",
        out.stdout
    );
    assert_eq!(installed(NAME).as_deref(), Some("1.1"));
    // DNF's spelling, checked: still installed.
    let out = c.cli(&[
        "exec",
        "--verb",
        "DNF",
        "--wait",
        "--check",
        &format!("--absent {NAME}"),
    ]);
    assert_eq!(out.code, 5, "{out:?}");
    assert_eq!(installed(NAME).as_deref(), Some("1.1"));
    let out = exec(&["--state", "absent"], NAME);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains(&format!("removed {NAME} 1.1")),
        "{}",
        out.stdout
    );
    assert_eq!(installed(NAME), None);
    let out = exec(&["--state", "absent"], NAME);
    assert_eq!(states(&c, &out)[0].1, "unchanged");
}
