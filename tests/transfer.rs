//! End-to-end tests of ADD/COPY: real server and clients on loopback, files
//! checked on disk.

mod util;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use util::{wait_until, Cluster, DEADLINE};

/// Deterministic pseudo-random bytes, so big files do not compress to
/// nothing and a test needs no randomness crate.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn src_dir(c: &Cluster) -> PathBuf {
    let d = c.dir.path.join("src");
    fs::create_dir_all(&d).unwrap();
    d
}

fn add(c: &Cluster, args: &str) -> util::Out {
    c.cli(&["exec", "--verb", "ADD", "--wait", args])
}

/// No file in `dir` but `allowed`: no partial or temporary file left.
fn only_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir).map_or(vec![], |rd| {
        rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    });
    names.sort();
    names
}

#[test]
fn files_of_every_size_arrive_whole_with_their_mode() {
    let c = Cluster::start("sizes", &["s1", "s2"], "1");
    let src = src_dir(&c);
    fs::write(src.join("empty"), b"").unwrap();
    fs::write(src.join("small.txt"), b"hello\n").unwrap();
    let big = bytes(9 << 20, 1);
    fs::write(src.join("big.bin"), &big).unwrap();
    fs::set_permissions(src.join("small.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(src.join("big.bin"), fs::Permissions::from_mode(0o755)).unwrap();

    let out = add(&c, &format!("{}/* deploy/files/", src.display()));
    assert_eq!(out.code, 0, "{out:?}");
    for n in ["s1", "s2"] {
        let d = c.node_dir(n).join("deploy/files");
        assert_eq!(fs::read(d.join("empty")).unwrap(), b"");
        assert_eq!(fs::read(d.join("small.txt")).unwrap(), b"hello\n");
        assert!(
            fs::read(d.join("big.bin")).unwrap() == big,
            "big.bin differs on {n}"
        );
        assert_eq!(
            fs::metadata(d.join("small.txt"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o640
        );
        assert_eq!(
            fs::metadata(d.join("big.bin"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o755
        );
        assert_eq!(only_files(&d), vec!["big.bin", "empty", "small.txt"]);
    }
    assert!(
        out.stdout
            .contains("sent deploy/files/big.bin (9437184 bytes)"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_single_file_to_a_templated_path_then_unchanged_then_changed() {
    let c = Cluster::start("single", &["t"], "1");
    let src = src_dir(&c).join("app.conf");
    fs::write(&src, b"v1\n").unwrap();
    assert_eq!(
        c.cli(&["exec", "--verb", "ARG", "--wait", "env prod"]).code,
        0
    );
    let out = add(&c, &format!("{} etc/{{{{ env }}}}/app.conf", src.display()));
    assert_eq!(out.code, 0, "{out:?}");
    let target = c.node_dir("t").join("etc/prod/app.conf");
    assert_eq!(fs::read(&target).unwrap(), b"v1\n");

    // Same content, forced past the cache: the node sees it is unchanged.
    let out = add(
        &c,
        &format!("--skip-cache {} etc/{{{{ env }}}}/app.conf", src.display()),
    );
    assert!(
        out.stdout.contains("unchanged etc/prod/app.conf"),
        "{}",
        out.stdout
    );
    // Without --skip-cache too: a file is checked on every run, never
    // skipped as cached.
    let out = add(&c, &format!("{} etc/{{{{ env }}}}/app.conf", src.display()));
    assert!(out.stdout.contains("t: unchanged"), "{}", out.stdout);

    // A changed source is a new step: sent again.
    fs::write(&src, b"version two\n").unwrap();
    let out = add(&c, &format!("{} etc/{{{{ env }}}}/app.conf", src.display()));
    assert!(
        out.stdout.contains("sent etc/prod/app.conf (12 bytes)"),
        "{}",
        out.stdout
    );
    assert_eq!(fs::read(&target).unwrap(), b"version two\n");
    // A node file edited by hand is put right when the cache is skipped.
    fs::write(&target, b"tampered\n").unwrap();
    let out = add(
        &c,
        &format!("--skip-cache {} etc/{{{{ env }}}}/app.conf", src.display()),
    );
    assert!(
        out.stdout.contains("sent etc/prod/app.conf"),
        "{}",
        out.stdout
    );
    assert_eq!(fs::read(&target).unwrap(), b"version two\n");
}

#[test]
fn chown_by_name_and_by_number() {
    let c = Cluster::start("chown", &["o"], "1");
    let src = src_dir(&c);
    fs::write(src.join("by-name"), b"n").unwrap();
    fs::write(src.join("by-number"), b"n").unwrap();
    // As root, give the files away; otherwise our own ids still take the path.
    let root = unsafe { libc::geteuid() } == 0;
    let (name, number, uid, gid) = if root {
        (
            "nobody:nogroup".to_string(),
            "65534:65534".to_string(),
            65534,
            65534,
        )
    } else {
        let (u, g) = unsafe { (libc::geteuid(), libc::getegid()) };
        (format!("{u}:{g}"), format!("{u}:{g}"), u, g)
    };
    let out = add(
        &c,
        &format!("--chown {name} {} owned/", src.join("by-name").display()),
    );
    assert_eq!(out.code, 0, "{out:?}");
    let out = add(
        &c,
        &format!(
            "--chown={number} {} owned/",
            src.join("by-number").display()
        ),
    );
    assert_eq!(out.code, 0, "{out:?}");
    for f in ["by-name", "by-number"] {
        let m = fs::metadata(c.node_dir("o").join("owned").join(f)).unwrap();
        assert_eq!((m.uid(), m.gid()), (uid, gid), "{f}");
    }
    let out = add(
        &c,
        &format!(
            "--chown no-such-user-here {} owned/x",
            src.join("by-name").display()
        ),
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("unknown user 'no-such-user-here'"),
        "{}",
        out.stdout
    );
    let out = add(
        &c,
        &format!(
            "--chown 0:no-such-group {} owned/y",
            src.join("by-name").display()
        ),
    );
    assert!(
        out.stdout.contains("unknown group 'no-such-group'"),
        "{}",
        out.stdout
    );
    assert!(!c.node_dir("o").join("owned/x").exists());
}

#[test]
fn bad_sources_are_refused_before_anything_is_queued() {
    let c = Cluster::start("badsrc", &["b"], "1");
    let src = src_dir(&c);
    let out = add(&c, &format!("{}/*.nothing dest/", src.display()));
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("matches no file"), "{out:?}");
    let out = add(&c, &format!("{}/missing.conf dest/", src.display()));
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("missing.conf"), "{out:?}");
    let jobs = c.cli(&["manage", "--list-jobs", "--format", "json"]);
    assert_eq!(jobs.stdout.trim(), "[]");
}

/// Two jobs in one run: the first holds the node until the test says go;
/// the ADD behind it is already on the node (two jobs are in flight).
fn gate_then_add(c: &Cluster, src: &Path, dest: &str) -> PathBuf {
    let file = c.dir.path.join("gate.yml");
    let text = format!(
        "- jobs:\n  - RUN: --skip-cache --timeout 120 while [ ! -e go ]; do sleep 0.05; done\n  - ADD: {} {dest}\n",
        src.display()
    );
    fs::write(&file, text).unwrap();
    let out = c.cli(&["orchestrate", file.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    file
}

#[test]
fn a_client_killed_mid_transfer_leaves_the_old_file_and_nothing_else() {
    let mut c = Cluster::start("killed", &["k"], "1");
    let src = src_dir(&c).join("payload.bin");
    fs::write(&src, bytes(32 << 20, 2)).unwrap();
    let dest = c.node_dir("k").join("target");
    fs::create_dir_all(&dest).unwrap();
    fs::write(dest.join("payload.bin"), b"old content").unwrap();
    gate_then_add(&c, &src, "target/");
    wait_until("gate running", DEADLINE, || {
        c.client("k").log_text().contains("starting RUN")
    });
    // Freeze the server: the transfer will start and get no data.
    c.server().signal(libc::SIGSTOP);
    fs::write(c.node_dir("k").join("go"), b"").unwrap();
    wait_until("transfer started", DEADLINE, || {
        c.client("k").log_text().contains("receiving")
    });
    c.client("k").signal(libc::SIGKILL);
    c.client("k").wait_exit(DEADLINE);
    c.server().signal(libc::SIGCONT);
    assert_eq!(fs::read(dest.join("payload.bin")).unwrap(), b"old content");
    assert_eq!(only_files(&dest), vec!["payload.bin"]);
}

#[test]
fn a_source_that_changes_or_vanishes_fails_the_job_clearly() {
    let c = Cluster::start("changed", &["v"], "1");
    let dir = src_dir(&c);
    let src = dir.join("moving.txt");
    fs::write(&src, b"as submitted").unwrap();
    let dest = c.node_dir("v").join("dst");
    fs::create_dir_all(&dest).unwrap();
    fs::write(dest.join("moving.txt"), b"previous").unwrap();
    gate_then_add(&c, &src, "dst/");
    fs::write(&src, b"rewritten after submission, longer").unwrap();
    fs::write(c.node_dir("v").join("go"), b"").unwrap();
    let js = wait_run_done(&c);
    let add_part = &js[1];
    assert_eq!(add_part["state"], "failed", "{add_part}");
    assert!(
        add_part["message"]
            .as_str()
            .unwrap()
            .contains("changed since submission"),
        "{add_part}"
    );
    assert_eq!(fs::read(dest.join("moving.txt")).unwrap(), b"previous");
    assert_eq!(only_files(&dest), vec!["moving.txt"]);

    // Same size, other bytes: caught by the SHA1 on the node.
    fs::write(&src, b"as submitted").unwrap();
    fs::remove_file(c.node_dir("v").join("go")).unwrap();
    let _ = c.cli(&["manage", "--purge-jobs"]);
    gate_then_add(&c, &src, "dst/");
    fs::write(&src, b"AS SUBMITTED").unwrap();
    fs::write(c.node_dir("v").join("go"), b"").unwrap();
    let js = wait_run_done(&c);
    assert!(
        js[1]["message"].as_str().unwrap().contains("SHA1 differs"),
        "{}",
        js[1]
    );
    assert_eq!(fs::read(dest.join("moving.txt")).unwrap(), b"previous");

    // Gone.
    fs::remove_file(c.node_dir("v").join("go")).unwrap();
    let _ = c.cli(&["manage", "--purge-jobs"]);
    gate_then_add(&c, &src, "dst/");
    fs::remove_file(&src).unwrap();
    fs::write(c.node_dir("v").join("go"), b"").unwrap();
    let js = wait_run_done(&c);
    assert!(
        js[1]["message"]
            .as_str()
            .unwrap()
            .contains("vanished since submission"),
        "{}",
        js[1]
    );
    assert_eq!(only_files(&dest), vec!["moving.txt"]);
}

/// Wait for the (only) run's two jobs and return their parts on the node.
fn wait_run_done(c: &Cluster) -> Vec<serde_json::Value> {
    let mut ids = Vec::new();
    wait_until("run done", DEADLINE, || {
        let jobs = c.jobs_json();
        ids = jobs
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_owned())
            .collect();
        jobs.len() == 2 && jobs.iter().all(|j| !j["finished_ms"].is_null())
    });
    ids.iter()
        .map(|id| c.job_info(id)["nodes"][0].clone())
        .collect()
}

#[test]
fn six_clients_receive_the_same_file_at_once() {
    let names = ["m1", "m2", "m3", "m4", "m5", "m6"];
    let c = Cluster::start("many", &names, "1");
    let src = src_dir(&c).join("shared.bin");
    let data = bytes(12 << 20, 3);
    fs::write(&src, &data).unwrap();
    let out = add(&c, &format!("{} shared/", src.display()));
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("6 succeeded"));
    for n in names {
        assert!(
            fs::read(c.node_dir(n).join("shared/shared.bin")).unwrap() == data,
            "{n}"
        );
    }
}
