//! Test harness: real `director` processes on loopback, each test in its own
//! directory with its own ports, socket, cache and state paths. Every process
//! is killed and reaped on drop. Waits are conditions with deadlines.

#![allow(dead_code)]

pub mod etcd;
pub mod fleet;
pub mod ha;

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_director");
/// Generous: tests run in parallel on a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(60);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A size from the environment, for benchmarks.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The floor of the orchestration benchmarks: `nodes` threads, each
/// starting `jobs` shells (`sh -c 'echo hello world'`, output captured)
/// one after another, which is the process-starting work no tool avoids.
pub fn shell_floor(nodes: usize, jobs: usize) -> Duration {
    let start = Instant::now();
    let threads: Vec<_> = (0..nodes)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..jobs {
                    let out = Command::new("/bin/sh")
                        .args(["-c", "echo hello world"])
                        .output()
                        .unwrap();
                    assert!(out.status.success());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    start.elapsed()
}

/// CPU seconds (user + system, not its children's) that process `pid`
/// has used; "self" for this one.
pub fn cpu_secs(pid: impl std::fmt::Display) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command's name, which is in parentheses and
    // may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// A cluster for a benchmark: CURVE as by default, or off when the
/// environment says `CURVE=off` (to measure what encryption costs).
pub fn bench_cluster(test: &str, ivl: &str) -> Cluster {
    let mut c = Cluster::new(test, ivl);
    if std::env::var("CURVE").is_ok_and(|v| v == "off") {
        c.shared_key = None;
        c.daemon_args = vec!["--curve".into(), "off".into()];
        println!("(CURVE off: unencrypted, for comparison)");
    } else {
        println!("(CURVE on: every port encrypted and authenticated)");
    }
    c
}

/// A directory removed when the test ends.
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("director-test-{}-{name}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TestDir { path }
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        // DIRECTOR_KEEP_TEST_DIRS=1 keeps logs and files for a post-mortem.
        if std::env::var_os("DIRECTOR_KEEP_TEST_DIRS").is_none() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Poll `cond` until it holds or the deadline passes (then panic naming `what`).
pub fn wait_until(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Three free loopback ports: bind port 0, read it, release it.
pub fn free_ports() -> [u16; 3] {
    let ls: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let p: Vec<u16> = ls.iter().map(|l| l.local_addr().unwrap().port()).collect();
    [p[0], p[1], p[2]]
}

/// A spawned daemon, killed and reaped on drop.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Wait for the process to exit; its status code (None: killed by signal).
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<i32> {
        let mut status = None;
        wait_until("process exit", deadline, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap().code()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a CLI call printed and returned.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// The shared key test clusters use unless a test says otherwise: nodes are
/// accepted at once, as in the original Director's container recipe.
pub const SHARED_KEY: &str = "test-cluster-shared-key-0123456789";

/// A server and clients on loopback.
pub struct Cluster {
    pub dir: TestDir,
    pub ports: [u16; 3],
    pub ivl: String,
    /// Given to the server and to clients started with `start_client`.
    pub shared_key: Option<String>,
    /// More options for the server and every client (not the CLI).
    pub daemon_args: Vec<String>,
    pub server: Option<Proc>,
    pub clients: BTreeMap<String, Proc>,
    /// The daemons' umask, when a test sets one.
    pub umask: Option<u32>,
    /// The server's `--api-port`, once `with_api` asked for one (a new
    /// free one if it was taken at a start).
    pub api_port: Option<u16>,
    /// A command that clients run under (`unshare --pid --fork`, say):
    /// it gets the director binary and its arguments.
    pub client_wrapper: Vec<String>,
    /// Clients' `--server-address` (several servers on etcd: a list).
    pub server_address: String,
}

impl Cluster {
    /// A running server and clients `names`, all registered, heartbeat `ivl`.
    pub fn start(test: &str, names: &[&str], ivl: &str) -> Cluster {
        Cluster::start_in(Cluster::new(test, ivl), names)
    }

    /// Start the server and clients `names` of a cluster set up by `new`.
    pub fn start_in(mut c: Cluster, names: &[&str]) -> Cluster {
        c.start_server();
        for n in names {
            c.start_client(n);
        }
        c.wait_nodes(names);
        c
    }

    /// Nothing started yet: set `shared_key` (or not) first.
    pub fn new(test: &str, ivl: &str) -> Cluster {
        Cluster {
            dir: TestDir::new(test),
            ports: free_ports(),
            ivl: ivl.to_owned(),
            shared_key: Some(SHARED_KEY.to_owned()),
            daemon_args: Vec::new(),
            server: None,
            clients: BTreeMap::new(),
            umask: None,
            api_port: None,
            client_wrapper: Vec::new(),
            server_address: "127.0.0.1".into(),
        }
    }

    /// Serve the HTTP API (on loopback) from the next server start.
    pub fn with_api(&mut self) {
        self.api_port = Some(free_ports()[0]);
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path.join("director.sock")
    }

    /// Options shared by every mode.
    pub fn common(&self) -> Vec<String> {
        vec![
            "--socket-path".into(),
            self.socket().display().to_string(),
            "--job-port".into(),
            self.ports[0].to_string(),
            "--transfer-port".into(),
            self.ports[1].to_string(),
            "--heartbeat-port".into(),
            self.ports[2].to_string(),
            "--heartbeat-interval".into(),
            self.ivl.clone(),
        ]
    }

    fn spawn(&self, mode: &str, extra: &[String], log_name: &str, cwd: &Path) -> Proc {
        self.spawn_env(mode, extra, log_name, cwd, &[])
    }

    fn spawn_env(
        &self,
        mode: &str,
        extra: &[String],
        log_name: &str,
        cwd: &Path,
        env: &[(&str, &str)],
    ) -> Proc {
        let log = self.dir.path.join(log_name);
        // Appended: a restarted daemon's log follows its predecessor's.
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = match self.client_wrapper.split_first() {
            Some((prog, args)) if mode == "client" => {
                let mut cmd = clean_command(prog);
                cmd.args(args).arg(BIN);
                cmd
            }
            _ => base_command(),
        };
        if let Some(mask) = self.umask {
            use std::os::unix::process::CommandExt;
            // SAFETY: umask is async-signal-safe and touches no memory.
            unsafe {
                cmd.pre_exec(move || {
                    libc::umask(mask as libc::mode_t);
                    Ok(())
                })
            };
        }
        let child = cmd
            .envs(env.iter().copied())
            .arg(mode)
            .args(self.common())
            .args(&self.daemon_args)
            .args(extra)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Proc { child, log }
    }

    /// Start (or restart) the server. A port taken by someone else between
    /// `free_ports` and bind is not our failure: pick new ports and go again,
    /// unless `same_ports` (a restart must keep them).
    pub fn start_server(&mut self) {
        self.start_server_with(&[]);
    }

    pub fn start_server_with(&mut self, extra: &[&str]) {
        self.start_server_full(extra, &[]);
    }

    /// Start the server with environment variables (an LD_PRELOAD shim).
    pub fn start_server_env(&mut self, env: &[(&str, &str)]) {
        self.start_server_full(&[], env);
    }

    fn start_server_full(&mut self, extra: &[&str], env: &[(&str, &str)]) {
        let restart = self.server.is_some();
        self.server = None;
        for _attempt in 0..5 {
            let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            extra.extend([
                "--bind-address".into(),
                "127.0.0.1".into(),
                "--state-path".into(),
                self.state_path().display().to_string(),
            ]);
            if let Some(k) = &self.shared_key {
                extra.extend(["--shared-key".into(), k.clone()]);
            }
            if let Some(p) = self.api_port {
                extra.extend(["--api-port".into(), p.to_string()]);
            }
            let log = self.dir.path.join("server.log");
            let listening = || {
                fs::read_to_string(&log)
                    .unwrap_or_default()
                    .matches("server listening")
                    .count()
            };
            let before = listening();
            let mut proc =
                self.spawn_env("server", &extra, "server.log", &self.dir.path.clone(), env);
            let mut exited = false;
            // Listening, as it says once its ports are bound and its state
            // loaded: its control socket is bound a moment before, and a
            // test that killed it in between would kill a server that
            // never served.
            wait_until("server listening", DEADLINE, || {
                if proc.child.try_wait().unwrap().is_some() {
                    exited = true;
                    return true;
                }
                listening() > before
            });
            if !exited {
                self.server = Some(proc);
                return;
            }
            let log = proc.log_text();
            assert!(
                !restart && log.contains("in use"),
                "server failed to start:\n{log}"
            );
            self.ports = free_ports();
            if self.api_port.is_some() {
                self.api_port = Some(free_ports()[0]);
            }
        }
        panic!("could not find free ports for the server");
    }

    /// The server's `--state-path`.
    pub fn state_path(&self) -> PathBuf {
        self.dir.path.join("state")
    }

    /// Start a client named `name` whose working directory is its own.
    pub fn start_client(&mut self, name: &str) {
        self.start_client_with(name, &[]);
    }

    /// Start a client with extra options (and the cluster's shared key).
    pub fn start_client_with(&mut self, name: &str, more: &[&str]) {
        let mut more: Vec<String> = more.iter().map(|s| s.to_string()).collect();
        if let Some(k) = &self.shared_key {
            more.extend(["--shared-key".into(), k.clone()]);
        }
        let refs: Vec<&str> = more.iter().map(String::as_str).collect();
        self.start_client_bare(name, &refs);
    }

    /// Start a client (with the shared key) and environment variables.
    pub fn start_client_env(&mut self, name: &str, env: &[(&str, &str)]) {
        let more: Vec<String> = self
            .shared_key
            .iter()
            .flat_map(|k| ["--shared-key".to_string(), k.clone()])
            .collect();
        let refs: Vec<&str> = more.iter().map(String::as_str).collect();
        self.start_client_full(name, &refs, env);
    }

    /// Start a client with exactly these extra options: no shared key.
    pub fn start_client_bare(&mut self, name: &str, more: &[&str]) {
        self.start_client_full(name, more, &[]);
    }

    fn start_client_full(&mut self, name: &str, more: &[&str], env: &[(&str, &str)]) {
        let cwd = self.node_dir(name);
        fs::create_dir_all(&cwd).unwrap();
        let extra = vec![
            "--identity".into(),
            name.to_owned(),
            "--server-address".into(),
            self.server_address.clone(),
            "--cache-path".into(),
            cwd.join("cache").display().to_string(),
            "--key-path".into(),
            cwd.join("key").display().to_string(),
        ];
        let extra: Vec<String> = extra
            .into_iter()
            .chain(more.iter().map(|s| s.to_string()))
            .collect();
        let proc = self.spawn_env("client", &extra, &format!("client-{name}.log"), &cwd, env);
        self.clients.insert(name.to_owned(), proc);
    }

    /// Start client `name` again (its old process has exited) and wait
    /// until the server has taken the new process's Ready: until then the
    /// server may still send jobs to the old one, which it must then
    /// report lost (it cannot know whether that process ran them).
    pub fn restart_client_with(&mut self, name: &str, more: &[&str]) {
        let welcomed = |c: &Cluster| {
            fs::read_to_string(c.dir.path.join(format!("client-{name}.log")))
                .unwrap_or_default()
                .matches(&format!(" as {name}\n"))
                .count()
        };
        let before = welcomed(self);
        self.start_client_with(name, more);
        wait_until(&format!("{name} welcomed again"), DEADLINE, || {
            welcomed(self) > before
        });
    }

    /// The working directory of node `name`'s commands.
    pub fn node_dir(&self, name: &str) -> PathBuf {
        self.dir.path.join(format!("node-{name}"))
    }

    pub fn client(&mut self, name: &str) -> &mut Proc {
        self.clients.get_mut(name).unwrap()
    }

    pub fn server(&mut self) -> &mut Proc {
        self.server.as_mut().unwrap()
    }

    /// Run the CLI with the cluster's options; fails the test if it hangs.
    pub fn cli(&self, args: &[&str]) -> Out {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(self.common());
        run_cli(&self.dir.path, &all)
    }

    /// Run a daemon mode (`args[0]`) that must refuse its options and
    /// exit: the cluster's ports, and a state path of its own.
    pub fn cli_daemon_check(&self, args: &[&str]) -> Out {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(self.common());
        all.extend([
            "--state-path".into(),
            self.dir.path.join("state-check").display().to_string(),
            "--bind-address".into(),
            "127.0.0.1".into(),
        ]);
        if let Some(k) = &self.shared_key {
            all.extend(["--shared-key".into(), k.clone()]);
        }
        run_cli(&self.dir.path, &all)
    }

    /// A one-block orchestration (every node) of `jobs`, each a `VERB:
    /// args` line, written to `name` in the test's directory.
    pub fn run_file(&self, name: &str, jobs: impl IntoIterator<Item = String>) -> PathBuf {
        let mut yaml = String::from("- jobs:\n");
        for job in jobs {
            yaml.push_str(&format!("  - {job}\n"));
        }
        let file = self.dir.path.join(name);
        fs::write(&file, yaml).unwrap();
        file
    }

    /// `manage --list-nodes --format json`: the names of the nodes online.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes_json()
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["state"] == "online")
            .map(|n| n["name"].as_str().unwrap().to_owned())
            .collect()
    }

    pub fn nodes_json(&self) -> serde_json::Value {
        let out = self.cli(&["manage", "--list-nodes", "--format", "json"]);
        assert_eq!(out.code, 0, "{out:?}");
        serde_json::from_str(&out.stdout).unwrap()
    }

    /// `manage --list-jobs --format json`, as a list.
    pub fn jobs_json(&self) -> Vec<serde_json::Value> {
        self.manage_list("--list-jobs")
    }

    /// `manage ACTION --format json`, which must succeed with a list.
    pub fn manage_list(&self, action: &str) -> Vec<serde_json::Value> {
        let out = self.cli(&["manage", action, "--format", "json"]);
        assert_eq!(out.code, 0, "{out:?}");
        match serde_json::from_str(&out.stdout) {
            Ok(serde_json::Value::Array(items)) => items,
            _ => panic!("not a JSON list: {}", out.stdout),
        }
    }

    pub fn wait_nodes(&self, names: &[&str]) {
        let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        want.sort();
        wait_until(&format!("nodes {want:?} registered"), DEADLINE, || {
            let have = self.node_names();
            want.iter().all(|w| have.contains(w))
        });
    }

    /// An API token made with `manage --create-token`: its secret.
    pub fn token(&self, name: &str, role: &str, targets: Option<&str>) -> String {
        let mut args = vec!["manage", "--create-token", name, "--role", role];
        if let Some(t) = targets {
            args.extend(["--targets", t]);
        }
        let out = self.cli(&args);
        assert_eq!(out.code, 0, "{out:?}");
        let secret = out.stdout.lines().last().unwrap().to_owned();
        assert!(secret.starts_with("dtk_"), "{out:?}");
        secret
    }

    /// An orchestration file of `jobs` jobs of `echo hello world` on every
    /// node (`--skip-cache`): the benchmarks' load.
    pub fn echo_run_file(&self, jobs: usize) -> PathBuf {
        let yaml: String = std::iter::once("- jobs:\n".to_owned())
            .chain((0..jobs).map(|_| "  - RUN: --skip-cache echo hello world\n".to_owned()))
            .collect();
        let file = self.dir.path.join("bench.yml");
        fs::write(&file, yaml).unwrap();
        file
    }

    /// Start the CLI in the background (a waiter); its output is its log.
    pub fn cli_background(&self, args: &[&str], name: &str) -> Proc {
        let log = self.dir.path.join(name);
        let file = fs::File::create(&log).unwrap();
        let child = base_command()
            .args(args)
            .args(self.common())
            .current_dir(&self.dir.path)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Proc { child, log }
    }

    /// `exec --verb RUN` without waiting: the job id.
    pub fn submit(&self, targets: &[&str], command: &str) -> String {
        self.submit_verb("RUN", targets, command)
    }

    /// `exec --verb VERB` without waiting: the job id.
    pub fn submit_verb(&self, verb: &str, targets: &[&str], job: &str) -> String {
        let mut args = vec!["exec", "--verb", verb];
        for t in targets {
            args.extend(["--target", t]);
        }
        args.push(job);
        let out = self.cli(&args);
        assert_eq!(out.code, 0, "{out:?}");
        job_id(&out.stdout)
    }

    /// `manage --job-info ID --format json`: the one detail object.
    pub fn job_info(&self, id: &str) -> serde_json::Value {
        let out = self.cli(&["manage", "--job-info", id, "--format", "json"]);
        assert_eq!(out.code, 0, "{out:?}");
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        v[0].clone()
    }

    /// The state of `node`'s part of job `id`.
    pub fn part_state(&self, id: &str, node: &str) -> String {
        let info = self.job_info(id);
        info["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["node"] == node)
            .map(|p| p["state"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    pub fn wait_job_done(&self, id: &str) -> serde_json::Value {
        let mut info = serde_json::Value::Null;
        wait_until(&format!("job {id} done"), DEADLINE, || {
            info = self.job_info(id);
            !info["job"]["finished_ms"].is_null()
        });
        info
    }
}

/// A `director` command with a clean environment: no DIRECTOR_* leaks in.
pub fn base_command() -> Command {
    clean_command(BIN)
}

/// `prog` with an environment of PATH alone.
fn clean_command(prog: &str) -> Command {
    let mut cmd = Command::new(prog);
    cmd.env_clear();
    cmd.env(
        "PATH",
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
    );
    cmd
}

/// Run the CLI in `dir` with `args`; output goes through files so a large
/// output cannot block it, and a hang fails the test.
pub fn run_cli(dir: &Path, args: &[String]) -> Out {
    run_cli_env(dir, args, &[])
}

/// Run the CLI as another user and group (the test must run as root).
pub fn run_cli_as(dir: &Path, uid: u32, gid: u32, args: &[String]) -> Out {
    run_cli_with(dir, args, &[], Some((uid, gid)))
}

pub fn run_cli_env(dir: &Path, args: &[String], env: &[(&str, &str)]) -> Out {
    run_cli_with(dir, args, env, None)
}

fn run_cli_with(
    dir: &Path,
    args: &[String],
    env: &[(&str, &str)],
    user: Option<(u32, u32)>,
) -> Out {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let (o, e) = (
        dir.join(format!("cli-{n}.out")),
        dir.join(format!("cli-{n}.err")),
    );
    let mut cmd = base_command();
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some((uid, gid)) = user {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(gid);
    }
    let child = cmd
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&o).unwrap())
        .stderr(fs::File::create(&e).unwrap())
        .spawn()
        .unwrap();
    // Wrapped so that a hang is killed and reaped when the panic unwinds.
    let mut proc = Proc {
        child,
        log: e.clone(),
    };
    let code = proc.wait_exit(DEADLINE * 2).unwrap_or(-1);
    let out = Out {
        code,
        stdout: fs::read_to_string(&o).unwrap(),
        stderr: fs::read_to_string(&e).unwrap(),
    };
    let _ = fs::remove_file(o);
    let _ = fs::remove_file(e);
    out
}

/// The job id from `exec` output ("job <uuid>").
pub fn job_id(stdout: &str) -> String {
    find_job_id(stdout).unwrap_or_else(|| panic!("no job id in {stdout:?}"))
}

/// The job id in `exec` output, once it has printed it.
pub fn find_job_id(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("job ").map(|s| s.trim().to_owned()))
}

/// The id of the job a background `exec` (`waiter`) submitted, once
/// node `node`'s part of it runs.
pub fn running_job(c: &Cluster, waiter: &Proc, node: &str) -> String {
    let mut id = String::new();
    wait_until("the waiter's job to run", DEADLINE, || {
        id = find_job_id(&waiter.log_text()).unwrap_or_default();
        !id.is_empty() && c.part_state(&id, node) == "running"
    });
    id
}

/// Is `pid` gone (or a zombie waiting for a reaper that is not us)?
pub fn pid_gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// Read a pid a command wrote to `path`, once it is there.
pub fn read_pid(path: &Path) -> i32 {
    let mut pid = 0;
    wait_until(&format!("pid file {}", path.display()), DEADLINE, || {
        pid = fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        pid > 0
    });
    pid
}

/// The protocol's own messages, for raw peers that speak it by hand.
#[allow(unused_imports)]
pub use director::wire::{ClientMsg, Denial, ServerMsg};

/// A success with nothing to say, as a raw peer reports it.
pub fn ok_outcome() -> director::wire::Outcome {
    director::wire::Outcome {
        exit: director::wire::Exit::Code(0),
        stdout: Vec::new(),
        stderr: Vec::new(),
        stdout_dropped: 0,
        stderr_dropped: 0,
        exec_secs: 0.0,
        attempts: Vec::new(),
    }
}

/// The protocol's header frame: magic and version.
pub fn header() -> Vec<u8> {
    let mut h = director::wire::MAGIC.to_vec();
    h.push(director::wire::VERSION);
    h
}

/// A message as the frames that carry it.
pub trait Frames {
    fn frames(&self) -> Vec<Vec<u8>>;
}

impl Frames for ClientMsg {
    fn frames(&self) -> Vec<Vec<u8>> {
        director::wire::encode(self)
    }
}

/// A hand-made peer on the three ports: with a CURVE key pair of its own and
/// the server's public key, or with no security at all.
pub struct RawPeer {
    _ctx: zmq::Context,
    /// Job, transfer and heartbeat DEALERs.
    pub socks: Vec<zmq::Socket>,
    pub public_key: String,
}

impl RawPeer {
    /// Connect to `c`'s ports; `server_key` (Z85) makes it a CURVE client.
    pub fn connect(c: &Cluster, server_key: Option<&str>) -> RawPeer {
        RawPeer::connect_to("127.0.0.1", c.ports, server_key)
    }

    /// The same, to `ports` on `host`.
    pub fn connect_to(host: &str, ports: [u16; 3], server_key: Option<&str>) -> RawPeer {
        let ctx = zmq::Context::new();
        let pair = zmq::CurveKeyPair::new().unwrap();
        let mut socks = Vec::new();
        for port in ports {
            let s = ctx.socket(zmq::DEALER).unwrap();
            s.set_linger(0).unwrap();
            s.set_rcvtimeo(100).unwrap();
            if let Some(k) = server_key {
                s.set_curve_serverkey(&zmq::z85_decode(k).unwrap()).unwrap();
                s.set_curve_publickey(&pair.public_key).unwrap();
                s.set_curve_secretkey(&pair.secret_key).unwrap();
            }
            s.connect(&format!("tcp://{host}:{port}")).unwrap();
            socks.push(s);
        }
        RawPeer {
            _ctx: ctx,
            socks,
            public_key: zmq::z85_encode(&pair.public_key).unwrap(),
        }
    }

    /// Send without ever blocking (a peer whose handshake never completes
    /// cannot send at all); false if it could not go now.
    pub fn send(&self, port: usize, frames: &[Vec<u8>]) -> bool {
        self.socks[port]
            .send_multipart(frames.iter().map(Vec::as_slice), zmq::DONTWAIT)
            .is_ok()
    }

    /// Send until it goes, within the deadline.
    pub fn send_wait(&self, port: usize, frames: &[Vec<u8>]) {
        wait_until("a raw peer's send", DEADLINE, || self.send(port, frames));
    }

    /// The next message on `port`, if one comes within the deadline.
    pub fn recv(&self, port: usize, deadline: Duration) -> Option<Vec<Vec<u8>>> {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if let Ok(m) = self.socks[port].recv_multipart(0) {
                return Some(m);
            }
        }
        None
    }

    /// Claim `name`, wait for the server's answer on the job port and return
    /// it (its body's text, loosely: enough to look for a variant's words).
    pub fn ready(&self, name: &str) -> Vec<Vec<u8>> {
        let ready = ClientMsg::Ready {
            name: name.into(),
            version: "raw".into(),
            interval_ms: 60_000,
            holding: vec![],
            proof: vec![],
            instance: 1,
            seen: None,
            facts: Default::default(),
            labels: Default::default(),
        };
        self.send_wait(0, &ready.frames());
        self.recv(0, DEADLINE).expect("an answer to Ready")
    }
}

impl Cluster {
    /// `manage --show-key`: the server's public key in Z85.
    pub fn server_key(&self) -> String {
        let out = self.cli(&["manage", "--show-key"]);
        assert_eq!(out.code, 0, "{out:?}");
        out.stdout.trim().to_owned()
    }

    /// `manage --list-keys --format json`, as a list.
    pub fn keys_json(&self) -> Vec<serde_json::Value> {
        self.manage_list("--list-keys")
    }

    /// The state of the key enrolled as `name` ("" when there is none).
    pub fn key_state(&self, name: &str) -> String {
        self.keys_json()
            .iter()
            .find(|k| k["name"] == name)
            .map(|k| k["state"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    }
}

/// Decode `[header, body]` from the server, if it is a message.
pub fn decode_server(frames: &[Vec<u8>]) -> Option<ServerMsg> {
    director::wire::decode(frames).ok()
}

/// A TCP relay for the three ports, between clients and the server: it
/// records every byte that crosses it, and can hold one port's traffic.
pub struct Relay {
    pub ports: [u16; 3],
    capture: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    paused: [std::sync::Arc<std::sync::atomic::AtomicBool>; 3],
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    /// Relay fresh loopback ports to the server's `upstream` ports.
    pub fn start(upstream: [u16; 3]) -> Relay {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let capture = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let paused: [Arc<AtomicBool>; 3] = Default::default();
        let mut ports = [0u16; 3];
        for i in 0..3 {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            ports[i] = listener.local_addr().unwrap().port();
            let (capture, stop, paused) = (capture.clone(), stop.clone(), paused[i].clone());
            let to = upstream[i];
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((down, _)) => {
                            let Ok(up) = std::net::TcpStream::connect(("127.0.0.1", to)) else {
                                continue;
                            };
                            down.set_nonblocking(false).unwrap();
                            for (from, into) in [
                                (down.try_clone().unwrap(), up.try_clone().unwrap()),
                                (up, down),
                            ] {
                                let (capture, stop, paused) =
                                    (capture.clone(), stop.clone(), paused.clone());
                                std::thread::spawn(move || {
                                    pump(from, into, &capture, &stop, &paused)
                                });
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
        }
        Relay {
            ports,
            capture,
            paused,
            stop,
        }
    }

    /// Everything relayed so far, both ways, all ports.
    pub fn capture(&self) -> Vec<u8> {
        self.capture.lock().unwrap().clone()
    }

    /// Hold (or release) the traffic of port `i` (0 job, 1 transfer, 2
    /// heartbeat), in both directions.
    pub fn pause(&self, i: usize, on: bool) {
        self.paused[i].store(on, Ordering::SeqCst);
    }

    /// Options that point a client at the relay.
    pub fn client_options(&self) -> Vec<String> {
        vec![
            "--job-port".into(),
            self.ports[0].to_string(),
            "--transfer-port".into(),
            self.ports[1].to_string(),
            "--heartbeat-port".into(),
            self.ports[2].to_string(),
        ]
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn pump(
    mut from: std::net::TcpStream,
    mut into: std::net::TcpStream,
    capture: &std::sync::Mutex<Vec<u8>>,
    stop: &std::sync::atomic::AtomicBool,
    paused: &std::sync::atomic::AtomicBool,
) {
    use std::io::{Read, Write};
    from.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut buf = vec![0u8; 64 << 10];
    while !stop.load(Ordering::SeqCst) {
        if paused.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                capture.lock().unwrap().extend_from_slice(&buf[..n]);
                if into.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = into.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}

/// Does `hay` contain `needle`?
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A small tmpfs mounted for a test (full-disk cases), unmounted on drop.
/// `None` when this process may not mount (not root, no CAP_SYS_ADMIN).
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs {
            path: path.to_owned(),
        })
    }

    /// Fill it to the last byte; the filler file's path.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut f = fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&[0]).is_ok() {}
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Build a shim that makes every fsync and fdatasync of the process it is
/// preloaded into take `ms` milliseconds. `None` without a C compiler.
pub fn slow_fsync_shim(dir: &Path, ms: u32) -> Option<PathBuf> {
    let src = dir.join("slowsync.c");
    let lib = dir.join("slowsync.so");
    fs::write(
        &src,
        format!(
            r#"#define _GNU_SOURCE
#include <dlfcn.h>
#include <time.h>
static void slow(void) {{ struct timespec t = {{ {ms} / 1000, ({ms} % 1000) * 1000000L }}; nanosleep(&t, 0); }}
int fsync(int fd) {{ static int (*real)(int); if (!real) real = dlsym(RTLD_NEXT, "fsync"); slow(); return real(fd); }}
int fdatasync(int fd) {{ static int (*real)(int); if (!real) real = dlsym(RTLD_NEXT, "fdatasync"); slow(); return real(fd); }}
"#
        ),
    )
    .unwrap();
    let built = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg("-ldl")
        .status()
        .is_ok_and(|s| s.success());
    built.then_some(lib)
}

/// Let this process (and the daemons it starts) hold `n` open files,
/// within the hard limit.
pub fn raise_open_files(n: u64) {
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < n {
            lim.rlim_cur = n.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// An HTTP response as read whole: status, head and body.
pub fn parse_response(text: &str) -> (u16, String, String) {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in: {text:?}"));
    (status, head.to_owned(), body.to_owned())
}
