//! A daemon started as PID 1, as a container's command is (here in a new
//! PID namespace made by `unshare --pid --fork`, which needs root): the
//! processes that jobs leave behind are reaped when they end instead of
//! staying zombies, and SIGTERM sent to PID 1 from outside (what `podman
//! stop` does) stops the daemon cleanly, with its exit status.

mod util;

use std::time::Duration;

use util::{wait_until, Cluster};

const DEADLINE: Duration = Duration::from_secs(60);

/// (pid, parent pid, state) of every process.
fn processes() -> Vec<(i32, i32, char)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = stat.rsplit_once(')')?.1;
        let mut f = rest.split_whitespace();
        let state = f.next()?.chars().next()?;
        let ppid = f.next()?.parse().ok()?;
        Some((pid, ppid, state))
    })
    .collect()
}

#[test]
fn a_client_as_pid_1_reaps_what_its_jobs_leave_behind_and_stops_on_sigterm() {
    let probe = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: cannot make a PID namespace here (unshare --pid needs root)");
        return;
    }
    let mut c = Cluster::new("pid1", "0.5");
    c.start_server();
    c.client_wrapper = ["unshare", "--pid", "--fork", "--kill-child", "--"]
        .map(String::from)
        .into();
    c.start_client("p1");
    c.wait_nodes(&["p1"]);
    let unshare = c.client("p1").pid();
    // The namespace's PID 1: unshare's child. It forked the daemon.
    let init = processes()
        .into_iter()
        .find(|p| p.1 == unshare)
        .expect("unshare's child")
        .0;
    let log = c.client("p1").log_text();
    assert!(log.contains("started as PID 1"), "{log}");

    // Each job leaves a process behind that outlives it (and so becomes
    // PID 1's), then ends.
    let mark = c.dir.path.join("left-behind");
    for i in 0..3 {
        let cmd = format!(
            "--skip-cache (sleep 0.3; touch {}-{i}) >/dev/null 2>&1 &",
            mark.display()
        );
        let out = c.cli(&["exec", "--verb", "RUN", "--wait", &cmd]);
        assert_eq!(out.code, 0, "{out:?}");
    }
    wait_until("the processes left behind ended", DEADLINE, || {
        (0..3).all(|i| std::path::Path::new(&format!("{}-{i}", mark.display())).exists())
    });
    wait_until("no zombie under PID 1", DEADLINE, || {
        !processes().iter().any(|p| p.1 == init && p.2 == 'Z')
    });

    // SIGTERM to PID 1 reaches the daemon, which stops cleanly; PID 1
    // ends with its status.
    // SAFETY: kill with a pid of our own test's process tree.
    unsafe { libc::kill(init, libc::SIGTERM) };
    let proc = c.client("p1");
    let mut status = None;
    wait_until("the client to stop", DEADLINE, || {
        status = proc.child.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(0), "{}", proc.log_text());
    let log = proc.log_text();
    assert!(log.contains("received SIGTERM"), "{log}");
}
