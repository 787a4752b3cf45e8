//! A fleet of registered nodes too large to run as client processes here
//! (2,000 clients would take gigabytes): one thread holds a job socket and
//! a heartbeat socket per node, each with the node's name as its routing
//! id, as `director client --curve off` does, says `Ready` with the
//! node's facts and labels in the real wire format, and keeps every node
//! alive with heartbeats. The server cannot tell them from clients until
//! it sends one a job, which they never run: tests that use a fleet look
//! at what the server and its API show of many nodes, not at jobs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use director::wire::{self, ClientMsg, ServerMsg};

pub struct Fleet {
    stop: Arc<AtomicBool>,
    /// Nodes whose `Ready` the server welcomed.
    pub welcomed: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Fleet {
    /// Nodes `names` with `labels(i)` each, on a server at `ports` (job,
    /// transfer, heartbeat) with CURVE off, beating every `beat`.
    pub fn start(
        ports: [u16; 3],
        names: Vec<String>,
        labels: impl Fn(usize) -> BTreeMap<String, String> + Send + 'static,
        beat: Duration,
    ) -> Fleet {
        // Two sockets a node here, and two connections a node in the
        // server, which inherits the limit.
        super::raise_open_files(4 * names.len() as u64 + 1024);
        let stop = Arc::new(AtomicBool::new(false));
        let welcomed = Arc::new(AtomicUsize::new(0));
        let (stop2, welcomed2) = (stop.clone(), welcomed.clone());
        let thread = std::thread::spawn(move || {
            // A context holds 1023 sockets at most (libzmq's default, which
            // the zmq crate cannot change): one for every 500 nodes.
            let contexts: Vec<zmq::Context> = (0..names.len().div_ceil(500))
                .map(|_| zmq::Context::new())
                .collect();
            let open = |i: usize, port: u16, name: &str| {
                let s = contexts[i / 500].socket(zmq::DEALER).unwrap();
                s.set_identity(name.as_bytes()).unwrap();
                s.set_linger(0).unwrap();
                s.connect(&format!("tcp://127.0.0.1:{port}")).unwrap();
                s
            };
            let mut nodes = Vec::new();
            for (i, name) in names.iter().enumerate() {
                let job = open(i, ports[0], name);
                let hb = open(i, ports[2], name);
                let mut facts = BTreeMap::new();
                facts.insert("os_id".to_owned(), "debian".to_owned());
                facts.insert("os_version".to_owned(), "12".to_owned());
                facts.insert("hostname".to_owned(), name.clone());
                facts.insert("fleet_index".to_owned(), i.to_string());
                let ready = ClientMsg::Ready {
                    name: name.clone(),
                    version: "fleet".into(),
                    interval_ms: beat.as_millis() as u64,
                    holding: Vec::new(),
                    proof: Vec::new(),
                    instance: 1 + i as u64,
                    seen: None,
                    facts,
                    labels: labels(i),
                };
                let ready = wire::encode(&ready);
                job.send_multipart(ready.iter(), 0).unwrap();
                nodes.push((job, hb, ready, false));
            }
            let heartbeat = wire::encode(&ClientMsg::Heartbeat {
                interval_ms: beat.as_millis() as u64,
            });
            let mut next_beat = Instant::now();
            while !stop2.load(Ordering::Relaxed) {
                let now = Instant::now();
                let beating = now >= next_beat;
                if beating {
                    next_beat = now + beat / 2;
                }
                for (job, hb, ready, welcomed) in nodes.iter_mut() {
                    if beating {
                        let _ = hb.send_multipart(heartbeat.iter(), zmq::DONTWAIT);
                    }
                    // Take what the server sends, so its queues never
                    // fill; say Ready again when it asks, as a client does.
                    let mut again = false;
                    while let Ok(frames) = job.recv_multipart(zmq::DONTWAIT) {
                        match wire::decode::<ServerMsg>(&frames) {
                            Ok(ServerMsg::Welcome { .. }) if !*welcomed => {
                                *welcomed = true;
                                welcomed2.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(ServerMsg::Register) => again = true,
                            _ => {}
                        }
                    }
                    while let Ok(frames) = hb.recv_multipart(zmq::DONTWAIT) {
                        again |= matches!(wire::decode(&frames), Ok(ServerMsg::Register));
                    }
                    if again {
                        let _ = job.send_multipart(ready.iter(), zmq::DONTWAIT);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Fleet {
            stop,
            welcomed,
            thread: Some(thread),
        }
    }
}
