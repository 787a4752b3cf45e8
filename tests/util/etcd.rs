//! A real etcd cluster of the test's own (Debian's `etcd-server`, which
//! `.ci/run` installs): members on free loopback ports, data under the
//! test's directory, killed on drop. Short heartbeats and elections, so
//! that losing and regaining quorum takes about a second.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use director::etcd::Client;

pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    data: PathBuf,
    log: PathBuf,
    proc: Option<Child>,
}

pub struct Etcd {
    pub members: Vec<Member>,
    cluster: String,
    /// This cluster's own `--initial-cluster-token`: a member of another
    /// test's cluster on a port we thought free never joins ours.
    token: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

impl Etcd {
    /// `n` members under `dir`, running and with a leader; `None` (the test
    /// skips, saying so) where etcd is not installed.
    pub fn start(dir: &Path, n: usize) -> Option<Etcd> {
        Command::new("etcd")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .ok()
            .filter(|s| s.success())?;
        // A port another test took between `free_ports` and etcd's bind
        // is not our failure: new ports, again.
        for attempt in 0..5 {
            let mut members = Vec::new();
            for i in 0..n {
                let [client_port, peer_port, _] = super::free_ports();
                members.push(Member {
                    name: format!("m{i}"),
                    client_port,
                    peer_port,
                    data: dir.join(format!("etcd-{attempt}-m{i}")),
                    log: dir.join(format!("etcd-m{i}.log")),
                    proc: None,
                });
            }
            let cluster = members
                .iter()
                .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
                .collect::<Vec<_>>()
                .join(",");
            let token = format!("director-test-{}-{attempt}", dir.display());
            let mut etcd = Etcd {
                members,
                cluster,
                token,
            };
            for i in 0..n {
                etcd.spawn(i);
            }
            let mut c = etcd.client();
            let mut exited = false;
            super::wait_until("etcd to have a leader", super::DEADLINE, || {
                exited = etcd.members.iter_mut().any(|m| {
                    m.proc
                        .as_mut()
                        .is_some_and(|p| p.try_wait().ok().flatten().is_some())
                });
                exited || c.range(b"/ready", false).is_ok()
            });
            // Two members make a quorum: one that lost its port to another
            // test's etcd may be gone, its endpoint that other cluster.
            // Every endpoint must answer with what was written to ours.
            if !exited && etcd.every_member_is_ours(&mut c) {
                return Some(etcd);
            }
            let logs: String = (0..n).map(|i| etcd.log(i)).collect();
            assert!(
                logs.contains("address already in use"),
                "etcd failed to start:\n{logs}"
            );
            drop(etcd);
        }
        panic!("could not find free ports for etcd");
    }

    fn spawn(&mut self, i: usize) {
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .unwrap();
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let child = Command::new("etcd")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        m.proc = Some(child);
    }

    /// A key written through the cluster reads back from each member's
    /// endpoint alone (a stranger on one of our ports does not have it),
    /// and every member process still runs.
    fn every_member_is_ours(&mut self, c: &mut Client) -> bool {
        use director::etcd::Op;
        let (key, value) = (b"/ours".to_vec(), self.token.clone().into_bytes());
        let put = Op::Put {
            key: key.clone(),
            value: value.clone(),
            lease: None,
        };
        if c.txn(&[], &[put], &[]).is_err() {
            return false;
        }
        // Reads are linearizable: a member of ours answers with the key.
        let ours = self.endpoints().iter().all(|ep| {
            let mut one = Client::new(std::slice::from_ref(ep), Duration::from_secs(2));
            one.range(&key, false)
                .is_ok_and(|(kvs, _)| kvs.first().is_some_and(|kv| kv.value == value))
        });
        let running = self.members.iter_mut().all(|m| {
            m.proc
                .as_mut()
                .is_some_and(|p| p.try_wait().ok().flatten().is_none())
        });
        ours && running
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// A client of the whole cluster.
    pub fn client(&self) -> Client {
        Client::new(&self.endpoints(), Duration::from_secs(2))
    }

    /// Until a quorum read answers.
    pub fn wait_ready(&self) {
        let mut c = self.client();
        super::wait_until("etcd to have a leader", super::DEADLINE, || {
            c.range(b"/ready", false).is_ok()
        });
    }

    /// kill -9 member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].proc.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    /// Start member `i` again on its data.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    /// Which member leads etcd now, if one answers.
    pub fn leader(&self) -> Option<usize> {
        use std::io::{Read, Write};
        for m in self.members.iter().filter(|m| m.proc.is_some()) {
            let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", m.client_port)) else {
                continue;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let req = "POST /v3/maintenance/status HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
            if s.write_all(req.as_bytes()).is_err() {
                continue;
            }
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            let Some(body) = text.split("\r\n\r\n").nth(1) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
                continue;
            };
            let (me, leader) = (&v["header"]["member_id"], &v["leader"]);
            if me.is_null() || leader.is_null() {
                continue;
            }
            if me == leader {
                return self.members.iter().position(|x| x.name == m.name);
            }
        }
        None
    }

    /// The running members' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|m| m.proc.as_ref().map(Child::id))
            .collect()
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.members[i].log).unwrap_or_default()
    }
}
