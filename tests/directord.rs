//! End-to-end tests of Directord's orchestration forms: block and job
//! names, `assign`, `vars`, `async`, paths beside the file, `--stderr-arg`,
//! WORKDIR `--stdout-arg`, ECHO and CACHEEVICT. Real server and clients on
//! loopback; results checked on the nodes' disks.

mod util;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use util::Cluster;

const SITE: &str = r#"# Directord's shapes, as its functional tests write them.
---
- name: Functional test parent
  jobs:
  - RUN: echo named job > named.txt
    name: Job name test

- async: 'True'
  assign: [d1]
  targets: [d2]
  jobs:
  - RUN: echo hello world 3
    vars:
      stdout_arg: out3
  - RUN: ls /nonexist || true
    vars:
      stderr_arg: err2
      skip_cache: true
  - RUN: ls / /nonexist || true
    vars:
      stdout_arg: out4
      stderr_arg: err4
  - WORKDIR: --stdout-arg wrkdir sub
  - COPY: --chmod=0640 files/test-cache.yaml {{ wrkdir }}/test-cache.yaml
  - ADD: --blueprint files/test.j2 {{ wrkdir }}/rendered
  - RUN: echo only on d2 > only.txt
    assign: [d2]
  - RUN: --stdout-arg here pwd
  - CACHEFILE: "{{ here }}/sub/test-cache.yaml"
  - ARG: --extend-args test_array_args ['more']
  - CACHEFILE: files/vars.yaml
  - RUN: >-
      echo "{{ test_array_args | length }} {{ test_array_args[1] }}
      {{ test_integer_args }} {{ test_nested_args.test }} {{ greeting }}" > cachefile.txt
  - ECHO: "said {{ out3 }}"
    name: echo it
  - CACHEEVICT: args
  - RUN: >-
      echo "{% if out3 is defined %}kept{% else %}gone{% endif %}" > evicted.txt
"#;

#[test]
fn a_directord_style_file_runs_unchanged_with_its_names_assignments_vars_and_relative_files() {
    let c = Cluster::start("directord-forms", &["d1", "d2"], "0.5");
    // The file and its files/ in a directory of their own, away from the
    // CLI's working directory: relative sources are found beside the file.
    let site = c.dir.path.join("orchestrations");
    fs::create_dir_all(site.join("files")).unwrap();
    fs::write(
        site.join("files/test-cache.yaml"),
        "---\ntest_integer_args: 9000\ntest_nested_args:\n  test: true\ntest_array_args:\n- test\n",
    )
    .unwrap();
    // Read on the server's machine, beside the file (a relative path).
    fs::write(site.join("files/vars.yaml"), "{\"greeting\": \"hello\"}\n").unwrap();
    fs::write(
        site.join("files/test.j2"),
        "out={{ out3 }}\nerr={{ err2 }}\nboth={{ 'bin' in out4 }} {{ 'nonexist' in err4 }}\n",
    )
    .unwrap();
    let file = site.join("functional.yaml");
    fs::write(&file, SITE).unwrap();

    let dry = c.cli(&["orchestrate", "--dry-run", file.to_str().unwrap()]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(
        dry.stdout.contains("1 Functional test parent") && dry.stdout.contains("Job name test"),
        "{}",
        dry.stdout
    );

    let out = c.cli(&["orchestrate", "--wait", file.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    // Job names show in the progress lines, and in --job-info.
    assert!(
        out.stdout
            .contains("[Functional test parent: Job name test] RUN echo named job"),
        "{}",
        out.stdout
    );
    let d1 = c.node_dir("d1");
    let d2 = c.node_dir("d2");
    // Block 1 went everywhere.
    for d in [&d1, &d2] {
        assert_eq!(
            fs::read_to_string(d.join("named.txt")).unwrap(),
            "named job\n"
        );
    }
    // Block 2: assign (d1) before targets (d2); the one job with its own
    // assign went to d2 only.
    assert!(!d2.join("sub").exists(), "block 2 went to d2");
    assert_eq!(
        fs::read_to_string(d2.join("only.txt")).unwrap(),
        "only on d2\n"
    );
    assert!(!d1.join("only.txt").exists());
    // vars became options: stdout and stderr kept as ARGs, used by the
    // blueprint, which was found beside the file.
    let rendered = fs::read_to_string(d1.join("sub/rendered")).unwrap();
    assert!(
        rendered.starts_with("out=hello world 3\nerr=ls: "),
        "{rendered}"
    );
    assert!(rendered.contains("/nonexist"), "{rendered}");
    assert!(rendered.ends_with("both=True True\n"), "{rendered}");
    let copied = d1.join("sub/test-cache.yaml");
    assert!(fs::read_to_string(&copied)
        .unwrap()
        .contains("test_array_args"));
    assert_eq!(
        fs::metadata(&copied).unwrap().permissions().mode() & 0o777,
        0o640
    );
    // CACHEFILE on the node (absolute) and on the server's machine
    // (relative); lists and maps usable as such; --extend-args appended.
    assert_eq!(
        fs::read_to_string(d1.join("cachefile.txt")).unwrap(),
        "2 more 9000 True hello\n"
    );
    // CACHEEVICT args forgot them, durably, before the last step.
    assert_eq!(
        fs::read_to_string(d1.join("evicted.txt")).unwrap(),
        "gone\n"
    );
    // ECHO's text is its output.
    let jobs = c.jobs_json();
    let echo = jobs
        .iter()
        .find(|j| j["verb"] == "ECHO")
        .expect("the ECHO job is listed");
    assert_eq!(echo["name"], "echo it", "{echo}");
    let info = c.job_info(echo["id"].as_str().unwrap());
    assert_eq!(info["nodes"][0]["stdout"], "said hello world 3\n", "{info}");
    let text = c.cli(&["manage", "--job-info", echo["id"].as_str().unwrap()]);
    assert!(
        text.stdout.contains("name       echo it"),
        "{}",
        text.stdout
    );

    // A slip in the Directord fields is one line naming the file and the
    // block, and nothing is queued.
    let bad = site.join("bad.yaml");
    fs::write(&bad, "- async: perhaps\n  jobs:\n  - ECHO: hi\n").unwrap();
    let before = c.jobs_json().len();
    let out = c.cli(&["orchestrate", bad.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("bad.yaml: block 1: async: 'perhaps' is not a bool"),
        "{out:?}"
    );
    assert_eq!(c.jobs_json().len(), before);
}

#[test]
fn facter_facts_are_kept_queried_and_read_the_directord_way_and_a_node_without_facter_fails_in_one_line(
) {
    let mut c = Cluster::new("directord-facter", "0.5");
    c.start_server();
    // A facter stand-in (Debian's facter pulls in Ruby): it prints what
    // `facter --json` prints, in small.
    let bin = c.dir.path.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let facter = bin.join("facter");
    fs::write(
        &facter,
        "#!/bin/sh\n[ \"$1\" = --json ] || exit 2\necho '{\"kernel\": \"Linux\", \"networking\": {\"interfaces\": {\"lo\": {\"netmask\": \"255.0.0.0\"}}}}'\n",
    )
    .unwrap();
    fs::set_permissions(&facter, fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:/usr/bin:/bin", bin.display());
    c.start_client_env("f1", &[("PATH", &path)]);
    // f2 finds nothing on its PATH, even where facter is installed.
    let empty = c.dir.path.join("empty-bin");
    fs::create_dir_all(&empty).unwrap();
    c.start_client_env("f2", &[("PATH", empty.to_str().unwrap())]);
    c.wait_nodes(&["f1", "f2"]);
    let file = c.dir.path.join("facter.yaml");
    fs::write(
        &file,
        r#"- name: Run facter
  jobs:
    - FACTER: --skip-cache
    - QUERY: facter
- name: Check facter variables
  jobs:
  - RUN: >-
      --skip-cache echo {{ query.values() | map(attribute="facter") | select("defined")
      | map(attribute="kernel") | list | first }} > kernel.txt
  - RUN: >-
      echo "{{ facter.networking.interfaces.lo.netmask }}" > netmask.txt
"#,
    )
    .unwrap();
    let out = c.cli(&["orchestrate", "--wait", file.to_str().unwrap()]);
    // f2 has no facter: its FACTER fails in one line, its later jobs are
    // skipped; f1 goes on with the map of what answered.
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout
            .contains("FACTER: facter is not installed on this node"),
        "{}",
        out.stdout
    );
    let f1 = c.node_dir("f1");
    assert_eq!(
        fs::read_to_string(f1.join("kernel.txt")).unwrap(),
        "Linux\n"
    );
    assert_eq!(
        fs::read_to_string(f1.join("netmask.txt")).unwrap(),
        "255.0.0.0\n"
    );
    assert!(!c.node_dir("f2").join("kernel.txt").exists());
}

#[test]
fn container_image_and_pod_drive_podman_on_the_socket_given() {
    let mut c = Cluster::new("directord-podman", "0.5");
    c.start_server();
    // A podman stand-in (no podman service runs here): it records each
    // call and answers an inspection.
    let bin = c.dir.path.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let calls = c.dir.path.join("podman-calls");
    let podman = bin.join("podman");
    fs::write(
        &podman,
        format!(
            "#!/bin/sh\necho \"$*\" >> {}\ncase \"$*\" in *'image inspect'*) echo '[{{\"Id\": \"abc\"}}]' ;; esac\n",
            calls.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&podman, fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:/usr/bin:/bin", bin.display());
    c.start_client_env("p1", &[("PATH", &path)]);
    c.wait_nodes(&["p1"]);
    let file = c.dir.path.join("podman.yaml");
    fs::write(
        &file,
        r#"- jobs:
  - CONTAINER_IMAGE: --skip-cache --socket-path /tmp/podman.sock --no-tlsverify --pull alpine:3.13 alpine:3.12
  - CONTAINER_IMAGE: --skip-cache --socket-path /tmp/podman.sock --tag alpine:3.12 quay.io/test/alpine
  - CONTAINER_IMAGE: --skip-cache --stdout-arg inspection --socket-path /tmp/podman.sock --inspect quay.io/test/alpine
  - RUN: --skip-cache echo "{{ inspection[0].Id }}" > id.txt
  - POD: --socket-path /tmp/podman.sock --kill-signal SIGTERM --kill web
  - QUEUESENTINEL: true
"#,
    )
    .unwrap();
    // --check runs only the reads.
    let out = c.cli(&["orchestrate", "--wait", "--check", file.to_str().unwrap()]);
    assert!(
        out.stdout
            .contains("would run: podman --url unix:///tmp/podman.sock pull"),
        "{out:?}"
    );
    let called = fs::read_to_string(&calls).unwrap_or_default();
    assert!(
        !called.contains(" pull ") && !called.contains(" tag "),
        "{called}"
    );
    fs::remove_file(&calls).ok();
    let out = c.cli(&["orchestrate", "--wait", file.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        fs::read_to_string(&calls).unwrap(),
        "--url unix:///tmp/podman.sock pull --tls-verify=false alpine:3.13 alpine:3.12\n\
         --url unix:///tmp/podman.sock tag alpine:3.12 quay.io/test/alpine\n\
         --url unix:///tmp/podman.sock image inspect quay.io/test/alpine\n\
         --url unix:///tmp/podman.sock pod kill --signal SIGTERM web\n"
    );
    assert_eq!(
        fs::read_to_string(c.node_dir("p1").join("id.txt")).unwrap(),
        "abc\n"
    );
}

#[test]
fn async_blocks_run_side_by_side_each_in_order_between_the_blocks_around_them() {
    let c = Cluster::start("directord-async", &["n1", "n2"], "0.5");
    // Each lane's first job waits for the other lane's to have started:
    // run one at a time, they would wait for each other until their
    // --timeout. The blocks around the group see it whole.
    let file = c.dir.path.join("async.yaml");
    fs::write(
        &file,
        r#"- jobs:
  - RUN: touch before
- async: true
  jobs:
  - RUN: >-
      --timeout 60 test -e before && touch a1 &&
      until [ -e b1 ]; do sleep 0.02; done && touch a1.done
  - ARG: lane a
  - RUN: test -e a1.done && echo "{{ lane }}" > a2
- async: yes
  jobs:
  - RUN: >-
      --timeout 60 test -e before && touch b1 &&
      until [ -e a1 ]; do sleep 0.02; done && touch b1.done
  - RUN: test -e b1.done && touch b2
- jobs:
  - RUN: test -e a2 && test -e b2 && touch after
"#,
    )
    .unwrap();
    let out = c.cli(&["orchestrate", "--wait", file.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    for n in ["n1", "n2"] {
        let d = c.node_dir(n);
        for f in ["a1.done", "b1.done", "b2", "after"] {
            assert!(d.join(f).exists(), "{n}: {f} missing: {}", out.stdout);
        }
        assert_eq!(fs::read_to_string(d.join("a2")).unwrap(), "a\n");
        let log = fs::read_to_string(c.dir.path.join(format!("client-{n}.log"))).unwrap();
        assert!(log.contains("beside"), "{log}");
    }
}

/// Storage of podman's own for one test: `--root`, and a short
/// `--runroot` (podman refuses one over 50 characters), or `None` where
/// podman is not installed.
fn podman_storage(dir: &std::path::Path) -> Option<Vec<String>> {
    std::process::Command::new("podman")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let run = std::env::temp_dir().join(format!("dpm-{}", std::process::id()));
    Some(vec![
        "--root".into(),
        dir.join("podman-root").display().to_string(),
        "--runroot".into(),
        run.display().to_string(),
    ])
}

/// A podman service, stopped however the test ends, its storage's mount
/// (podman mounts `ROOT/overlay` on itself) undone and its run directory
/// removed, so that the test's directory can go.
struct Service {
    child: std::process::Child,
    root: std::path::PathBuf,
    run: std::path::PathBuf,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::process::Command::new("umount")
            .arg(self.root.join("overlay"))
            .status();
        let _ = fs::remove_dir_all(&self.run);
    }
}

fn podman(args: &[&str]) -> std::process::Output {
    std::process::Command::new("podman")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn container_image_and_pod_work_against_a_real_podman_service() {
    let c = Cluster::start("directord-realpodman", &["r1"], "0.5");
    let Some(storage) = podman_storage(&c.dir.path) else {
        eprintln!("skipped: podman is not installed (.ci/run installs Debian's)");
        return;
    };
    // A podman service of its own (its own storage, its own socket), and
    // a local image: no registry is reachable from here.
    let sock = c.dir.path.join("podman.sock");
    let child = std::process::Command::new("podman")
        .args(&storage)
        .args(["system", "service", "--time=0"])
        .arg(format!("unix://{}", sock.display()))
        .stderr(fs::File::create(c.dir.path.join("podman.log")).unwrap())
        .spawn()
        .unwrap();
    let mut service = Service {
        child,
        root: storage[1].clone().into(),
        run: storage[3].clone().into(),
    };
    util::wait_until("the podman socket", Duration::from_secs(60), || {
        if let Ok(Some(st)) = service.child.try_wait() {
            panic!(
                "podman service exited ({st}): {}",
                fs::read_to_string(c.dir.path.join("podman.log")).unwrap_or_default()
            );
        }
        sock.exists()
    });
    let tar = c.dir.path.join("empty.tar");
    let status = std::process::Command::new("tar")
        .arg("cf")
        .arg(&tar)
        .args(["--files-from", "/dev/null"])
        .status()
        .unwrap();
    assert!(status.success());
    let url = format!("unix://{}", sock.display());
    let out = podman(&[
        "--url",
        &url,
        "import",
        tar.to_str().unwrap(),
        "localhost/dt:1",
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = podman(&[
        "--url",
        &url,
        "pod",
        "create",
        "--infra=false",
        "--name",
        "dtp",
    ]);
    assert!(out.status.success(), "{out:?}");

    let s = sock.display();
    let file = c.dir.path.join("podman.yaml");
    fs::write(
        &file,
        format!(
            r#"- jobs:
  - CONTAINER_IMAGE: --socket-path {s} --tag localhost/dt:1 localhost/dt:2
  - CONTAINER_IMAGE: --stdout-arg insp --socket-path {s} --inspect localhost/dt:2
  - RUN: echo "{{{{ insp[0].RepoTags | length }}}}" > tags.txt
  - POD: --socket-path {s} --stdout-arg pod --inspect dtp
  - RUN: echo "{{{{ pod.Name }}}}" > pod.txt
  - POD: --socket-path {s} --force --rm dtp
"#
        ),
    )
    .unwrap();
    let out = c.cli(&["orchestrate", "--wait", file.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    let d = c.node_dir("r1");
    assert_eq!(fs::read_to_string(d.join("tags.txt")).unwrap(), "2\n");
    assert_eq!(fs::read_to_string(d.join("pod.txt")).unwrap(), "dtp\n");
    // What podman holds now.
    let out = podman(&["--url", &url, "image", "exists", "localhost/dt:2"]);
    assert!(out.status.success(), "{out:?}");
    let out = podman(&["--url", &url, "pod", "exists", "dtp"]);
    assert!(!out.status.success(), "the pod was removed: {out:?}");
    drop(service);
}

#[test]
fn a_client_killed_while_lanes_run_reports_each_lost_and_runs_none_again() {
    let mut c = Cluster::start("directord-async-kill", &["k"], "0.5");
    let file = c.dir.path.join("lanes.yaml");
    fs::write(
        &file,
        "- async: true\n  jobs:\n  - RUN: echo $$ >> pids; echo a >> ran; exec sleep 600\n- async: true\n  jobs:\n  - RUN: echo $$ >> pids; echo b >> ran; exec sleep 600\n",
    )
    .unwrap();
    let out = c.cli(&["orchestrate", file.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    let d = c.node_dir("k");
    util::wait_until("both lanes running", Duration::from_secs(60), || {
        fs::read_to_string(d.join("pids"))
            .unwrap_or_default()
            .lines()
            .count()
            == 2
    });
    c.client("k").signal(libc::SIGKILL);
    c.client("k").wait_exit(Duration::from_secs(30));
    for pid in fs::read_to_string(d.join("pids")).unwrap().lines() {
        // SAFETY: a plain syscall on the test's own orphans.
        unsafe { libc::kill(pid.trim().parse().unwrap(), libc::SIGKILL) };
    }
    c.start_client("k");
    // The run's two jobs are the cluster's only ones.
    let jobs = c.jobs_json();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    for j in &jobs {
        let info = c.wait_job_done(j["id"].as_str().unwrap());
        assert_eq!(info["nodes"][0]["state"], "lost", "{info}");
    }
    assert_eq!(
        fs::read_to_string(d.join("ran")).unwrap().lines().count(),
        2,
        "nothing ran again"
    );
}
