//! Several director servers on one etcd, each on a loopback address of
//! its own (127.0.0.1, 127.0.0.2, ...) with the same ports, as separate
//! machines would have them; clients given every address.

use std::path::PathBuf;

use super::etcd::Etcd;
use super::{run_cli, wait_until, Cluster, Out, Proc, DEADLINE};

pub struct HaCluster {
    /// The ports, shared key, clients and test directory; its own
    /// `server` is not used.
    pub c: Cluster,
    pub etcd: Etcd,
    pub servers: Vec<Option<Proc>>,
    /// `--etcd-lease` of every server.
    pub lease: String,
}

impl HaCluster {
    /// etcd (3 members), `n` servers (the first leading) and clients
    /// `names`, registered; `None` where etcd is not installed.
    pub fn start(test: &str, n: usize, names: &[&str]) -> Option<HaCluster> {
        HaCluster::start_with(test, n, names, "0.5", "2")
    }

    /// The same, every server serving the HTTP API on its own address
    /// (one port for all).
    pub fn start_with_api(test: &str, n: usize, names: &[&str]) -> Option<HaCluster> {
        HaCluster::start_full(test, n, names, "0.5", "2", true)
    }

    /// The same, with heartbeat interval `ivl` and `--etcd-lease`.
    pub fn start_with(
        test: &str,
        n: usize,
        names: &[&str],
        ivl: &str,
        lease: &str,
    ) -> Option<HaCluster> {
        HaCluster::start_full(test, n, names, ivl, lease, false)
    }

    fn start_full(
        test: &str,
        n: usize,
        names: &[&str],
        ivl: &str,
        lease: &str,
        api: bool,
    ) -> Option<HaCluster> {
        let mut c = Cluster::new(test, ivl);
        if api {
            c.with_api();
        }
        let Some(etcd) = Etcd::start(&c.dir.path, 3) else {
            eprintln!("etcd is not installed: skipped (apt-get install etcd-server)");
            return None;
        };
        c.server_address = (0..n).map(address).collect::<Vec<_>>().join(",");
        let mut h = HaCluster {
            c,
            etcd,
            servers: (0..n).map(|_| None).collect(),
            lease: lease.into(),
        };
        h.start_first();
        for i in 1..n {
            h.start_server(i);
        }
        for i in 1..n {
            h.wait_log(i, "standing by: the active server is s0");
        }
        // A new standby starts behind the trimmed log and gets a base:
        // until it has it, it cannot take over (a test that kills the
        // leader first would wait for a takeover that cannot be).
        for i in 1..n {
            h.wait_holds_log(i);
        }
        for name in names {
            h.c.start_client(name);
        }
        h.wait_nodes(0, names);
        Some(h)
    }

    /// Start s0 and wait until it leads. A port another test took between
    /// `free_ports` and the bind is not our failure: new ports, again.
    fn start_first(&mut self) {
        for _attempt in 0..5 {
            self.start_server(0);
            let end = std::time::Instant::now() + DEADLINE;
            // Until it leads, or exits.
            loop {
                if !self.servers[0].as_mut().is_some_and(Proc::is_running) {
                    break;
                }
                if self.is_active(0) {
                    return;
                }
                assert!(
                    std::time::Instant::now() < end,
                    "s0 did not lead within {DEADLINE:?}:\n{}",
                    self.log(0)
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let log = self.log(0);
            assert!(log.contains("in use"), "s0 failed to start:\n{log}");
            self.c.ports = super::free_ports();
            if self.c.api_port.is_some() {
                self.c.with_api();
            }
        }
        panic!("could not find free ports for the servers");
    }

    /// Until server `i` holds the log (it is not waiting for a base), as
    /// it says itself: a standby that does not cannot take over.
    pub fn wait_holds_log(&self, i: usize) {
        let me = format!("s{i}");
        wait_until(&format!("{me} to hold the log"), DEADLINE, || {
            let out = self.cli(i, &["manage", "--cluster", "--format", "json"]);
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&out.stdout) else {
                return false;
            };
            v[0]["servers"].as_array().is_some_and(|servers| {
                servers.iter().any(|s| {
                    s["name"] == me.as_str()
                        && s["wants_base"] == false
                        && s["applied"].as_u64().is_some_and(|a| a > 0)
                })
            })
        });
    }

    pub fn state(&self, i: usize) -> PathBuf {
        self.c.dir.path.join(format!("state-s{i}"))
    }

    pub fn socket(&self, i: usize) -> PathBuf {
        self.c.dir.path.join(format!("s{i}.sock"))
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.c.dir.path.join(format!("server-s{i}.log")))
            .unwrap_or_default()
    }

    /// Start server `i` (again), as a standby until it wins the lead.
    pub fn start_server(&mut self, i: usize) {
        self.servers[i] = None;
        let args = self.server_args(i);
        let log = self.c.dir.path.join(format!("server-s{i}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = super::base_command()
            .arg("server")
            .args(&args)
            .current_dir(&self.c.dir.path)
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        self.servers[i] = Some(Proc { child, log });
    }

    /// Server `i`'s options after `server`.
    pub fn server_args(&self, i: usize) -> Vec<String> {
        [
            "--identity".to_string(),
            format!("s{i}"),
            "--bind-address".into(),
            address(i),
            "--state-path".into(),
            self.state(i).display().to_string(),
            "--etcd-endpoints".into(),
            self.etcd.endpoints().join(","),
            "--etcd-lease".into(),
            self.lease.clone(),
            "--shared-key".into(),
            self.c.shared_key.clone().unwrap_or_default(),
        ]
        .into_iter()
        .chain(self.c.api_port.into_iter().flat_map(|p| {
            [
                "--api-port".into(),
                p.to_string(),
                "--api-address".into(),
                address(i),
            ]
        }))
        .chain(self.c.common())
        .chain(["--socket-path".into(), self.socket(i).display().to_string()])
        .collect()
    }

    pub fn server(&mut self, i: usize) -> &mut Proc {
        self.servers[i].as_mut().unwrap()
    }

    /// The CLI against server `i`'s control socket.
    pub fn cli(&self, i: usize, args: &[&str]) -> Out {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(self.c.common());
        all.extend(["--socket-path".into(), self.socket(i).display().to_string()]);
        run_cli(&self.c.dir.path, &all)
    }

    /// Does server `i` answer as the active one?
    pub fn is_active(&self, i: usize) -> bool {
        if self.servers[i].is_none() {
            return false;
        }
        let out = self.cli(i, &["manage", "--cluster", "--format", "json"]);
        serde_json::from_str::<serde_json::Value>(&out.stdout)
            .is_ok_and(|v| v[0]["role"] == "active")
    }

    /// Which server answers as the active one, if one does.
    pub fn leader(&self) -> Option<usize> {
        (0..self.servers.len()).find(|&i| self.is_active(i))
    }

    /// Until a server is active; which.
    pub fn wait_leader(&self) -> usize {
        let mut who = None;
        wait_until("a server to lead", DEADLINE, || {
            who = self.leader();
            who.is_some()
        });
        who.unwrap()
    }

    /// Until server `i` answers as the active one.
    pub fn wait_active(&self, i: usize) {
        wait_until(&format!("s{i} to be active"), DEADLINE, || {
            self.is_active(i)
        });
    }

    pub fn wait_log(&self, i: usize, what: &str) {
        wait_until(&format!("s{i} to say '{what}'"), DEADLINE, || {
            self.log(i).contains(what)
        });
    }

    /// Until nodes `names` are online on server `i`.
    pub fn wait_nodes(&self, i: usize, names: &[&str]) {
        wait_until(&format!("nodes {names:?} online on s{i}"), DEADLINE, || {
            let out = self.cli(i, &["manage", "--list-nodes", "--format", "json"]);
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&out.stdout) else {
                return false;
            };
            names.iter().all(|n| {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .any(|x| x["name"] == *n && x["state"] == "online")
            })
        });
    }

    /// `manage --list-jobs --format json` on server `i`.
    pub fn jobs(&self, i: usize) -> Vec<serde_json::Value> {
        let out = self.cli(i, &["manage", "--list-jobs", "--format", "json"]);
        assert_eq!(out.code, 0, "{out:?}");
        serde_json::from_str::<Vec<serde_json::Value>>(&out.stdout).unwrap()
    }
}

/// Server `i`'s own loopback address.
pub fn address(i: usize) -> String {
    format!("127.0.0.{}", i + 1)
}

/// One HTTP request to server `i`'s API on a connection of its own:
/// status, head and body.
pub fn http(
    h: &HaCluster,
    i: usize,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let port = h.c.api_port.expect("a cluster with the API");
    let mut s = std::net::TcpStream::connect((address(i).as_str(), port)).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    super::parse_response(&text)
}
