//! End-to-end tests of trust: CURVE on every port, enrolment by key, names
//! owned by keys, clear refusals, hostile peers, the control socket's
//! permissions, and what a wire tap sees. Real server and clients on
//! loopback, raw ZeroMQ peers made by hand, and a recording TCP relay.

mod util;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use util::{
    contains, decode_server, wait_until, ClientMsg, Cluster, Denial, Frames, RawPeer, Relay,
    ServerMsg, DEADLINE,
};

/// A cluster whose server has no shared key: nodes need --server-key and an
/// operator's accept.
fn keyed_cluster(test: &str) -> Cluster {
    let mut c = Cluster::new(test, "0.5");
    c.shared_key = None;
    c.start_server();
    c
}

fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn keys_are_made_private_at_first_start_and_shared_key_nodes_are_accepted_at_once() {
    let mut c = Cluster::start("keys", &["k1", "k2"], "0.5");
    let out = c.cli(&["exec", "--verb", "RUN", "--wait", "echo hi"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("2 succeeded"), "{out:?}");

    let keys = c.keys_json();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for k in &keys {
        assert_eq!(k["state"], "accepted");
        assert_eq!(k["fingerprint"].as_str().unwrap().len(), 47);
        assert_eq!(k["public_key"].as_str().unwrap().len(), 40);
    }
    // Each node logs the fingerprint the server lists for it.
    for name in ["k1", "k2"] {
        let key = keys.iter().find(|k| k["name"] == name).unwrap();
        let fp = key["fingerprint"].as_str().unwrap();
        assert!(c.client(name).log_text().contains(fp), "{name}");
        let file = c.node_dir(name).join("key").join("node.key");
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(file.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );
    }
    // The shared key derives the server's key: no key file is written.
    assert!(!c.state_path().join("server.key").exists());
    let out = c.cli(&["manage", "--show-key"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim().len(), 40);
    assert!(
        out.stderr.contains("derived from the shared key"),
        "{out:?}"
    );
}

#[test]
fn a_pending_node_gets_nothing_until_accepted_and_then_runs_without_a_restart() {
    let mut c = keyed_cluster("pending");
    let server_file = c.state_path().join("server.key");
    assert_eq!(fs::metadata(&server_file).unwrap().mode() & 0o777, 0o600);
    let key = c.server_key();
    // --server-key takes the key, or a file holding it.
    let key_file = c.dir.path.join("server.pub");
    fs::write(&key_file, format!("{key}\n")).unwrap();
    c.start_client_bare("p1", &["--server-key", key_file.to_str().unwrap()]);
    wait_until("p1 pending", DEADLINE, || c.key_state("p1") == "pending");
    wait_until("p1 says it waits", DEADLINE, || {
        c.client("p1").log_text().contains("waits for acceptance")
    });
    assert!(c
        .client("p1")
        .log_text()
        .contains("director manage --accept-key p1"));
    // No jobs for a pending key: it is not a node.
    assert!(c.node_names().is_empty());
    let out = c.cli(&["exec", "--verb", "RUN", "--target", "p1", "touch ran"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("unknown target node 'p1'"), "{out:?}");
    let table = c.cli(&["manage", "--list-keys"]);
    assert!(table.stdout.contains("p1") && table.stdout.contains("pending"));

    // Accepted: in at once, no restart.
    let out = c.cli(&["manage", "--accept-key", "p1"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("accepted p1 (key "), "{out:?}");
    c.wait_nodes(&["p1"]);
    let out = c.cli(&["exec", "--verb", "RUN", "--wait", "touch ran"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(c.node_dir("p1").join("ran").exists());
    let log = c.client("p1").log_text();
    assert_eq!(count(&log, "waits for acceptance"), 1, "said once:\n{log}");
    assert!(log.contains("accepted this node's key"), "{log}");
    // Unknown names are refused clearly.
    let out = c.cli(&["manage", "--accept-key", "nobody"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("no key is enrolled as 'nobody' (keys: p1)"),
        "{out:?}"
    );
}

#[test]
fn accepted_and_rejected_keys_persist_across_a_server_restart() {
    let mut c = keyed_cluster("persist");
    let key = c.server_key();
    c.start_client_bare("a", &["--server-key", &key]);
    c.start_client_bare("r", &["--server-key", &key]);
    wait_until("both pending", DEADLINE, || {
        c.key_state("a") == "pending" && c.key_state("r") == "pending"
    });
    assert_eq!(c.cli(&["manage", "--accept-all"]).code, 0);
    c.wait_nodes(&["a", "r"]);
    let out = c.cli(&["manage", "--reject-key", "r"]);
    assert_eq!(out.code, 0, "{out:?}");
    // The rejected client is told while connected, and stops.
    assert_eq!(c.client("r").wait_exit(DEADLINE), Some(2));
    let log = c.client("r").log_text();
    assert!(log.contains("the server rejected this node's key"), "{log}");

    c.server().signal(libc::SIGKILL);
    c.server().wait_exit(DEADLINE);
    c.start_server();
    assert_eq!(c.server_key(), key, "the server keeps its key pair");
    assert_eq!(c.key_state("a"), "accepted");
    assert_eq!(c.key_state("r"), "rejected");
    // The accepted node comes back by itself; no accept needed.
    c.wait_nodes(&["a"]);
    // The rejected one is refused at the handshake, with the same words.
    c.start_client_bare("r", &["--server-key", &key]);
    assert_eq!(c.client("r").wait_exit(DEADLINE), Some(2));
    let log = c.client("r").log_text();
    assert!(log.contains("the server rejected this node's key"), "{log}");
    assert!(log.contains("--delete-key r"), "{log}");
    // The server said so once, however many sockets knocked.
    let log = c.server().log_text();
    assert_eq!(count(&log, "refused a handshake"), 1, "{log}");
    // Deleted, it may enroll again (as pending).
    assert_eq!(c.cli(&["manage", "--delete-key", "r"]).code, 0);
    c.start_client_bare("r", &["--server-key", &key]);
    wait_until("r pending again", DEADLINE, || {
        c.key_state("r") == "pending"
    });
}

#[test]
fn a_wrong_server_key_or_shared_key_is_named_at_the_first_handshake() {
    let mut c = Cluster::start("wrongkey", &["good"], "0.5");
    let stranger = zmq::CurveKeyPair::new().unwrap();
    let wrong = zmq::z85_encode(&stranger.public_key).unwrap();
    // --debug: so that each retry shows, and the test can wait for one.
    c.start_client_bare("w1", &["--server-key", &wrong, "--debug"]);
    c.start_client_bare(
        "w2",
        &["--shared-key", "not-the-cluster-key-at-all", "--debug"],
    );
    wait_until("wrong server key named", DEADLINE, || {
        c.client("w1")
            .log_text()
            .contains("the CURVE handshake with 127.0.0.1 failed: the server does not hold the key given with --server-key")
    });
    wait_until("wrong shared key named", DEADLINE, || {
        c.client("w2")
            .log_text()
            .contains("the server does not hold the key derived from this --shared-key")
    });
    // They keep trying (with backoff): it may be the server that is wrong.
    assert!(c.client("w1").is_running() && c.client("w2").is_running());
    // Said once, however many retries; the server names the address, once.
    for n in ["w1", "w2"] {
        let start = std::time::Instant::now();
        while !c.client(n).log_text().contains("handshake failed again") {
            assert!(
                start.elapsed() < DEADLINE,
                "{n} did not retry: {}\nserver: {}",
                c.client(n).log_text(),
                c.server().log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    for n in ["w1", "w2"] {
        let log = c.client(n).log_text();
        assert_eq!(count(&log, "handshake with"), 1, "{log}");
    }
    let log = c.server().log_text();
    assert_eq!(
        count(&log, "a client at 127.0.0.1 failed the CURVE handshake: it does not hold this server's public key"),
        1,
        "{log}"
    );
    assert_eq!(count(&log, " WARN "), 1, "{log}");
    assert!(!log.contains(" ERROR "), "{log}");
    // A client without CURVE is told the server uses it.
    c.start_client_bare("w3", &["--curve", "off"]);
    wait_until("plain client told", DEADLINE, || {
        c.client("w3")
            .log_text()
            .contains("this client runs with --curve off")
    });
    assert_eq!(c.node_names(), vec!["good"]);
    assert_eq!(c.keys_json().len(), 1);
    let out = c.cli(&["exec", "--verb", "RUN", "--wait", "true"]);
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn a_second_client_with_a_live_nodes_name_is_refused_and_the_owner_is_undisturbed() {
    let mut c = Cluster::start("impostor", &["n1"], "0.5");
    let out = c.cli(&["exec", "--verb", "RUN", "--wait", "echo before > before"]);
    assert_eq!(out.code, 0, "{out:?}");
    // Same name, same shared key, another key pair (another key path).
    let fake = c.dir.path.join("impostor");
    fs::create_dir_all(&fake).unwrap();
    let mut args: Vec<String> = c.common();
    args.extend(
        [
            "--identity",
            "n1",
            "--server-address",
            "127.0.0.1",
            "--cache-path",
            fake.join("cache").to_str().unwrap(),
            "--key-path",
            fake.join("key").to_str().unwrap(),
            "--shared-key",
            util::SHARED_KEY,
        ]
        .map(String::from),
    );
    let mut full = vec!["client".to_string()];
    full.extend(args);
    let out = util::run_cli(&fake, &full);
    assert_eq!(out.code, 2, "{out:?}");
    let line = out.stderr.lines().last().unwrap_or_default();
    assert!(
        line.starts_with("director: the name 'n1' belongs to another key on the server"),
        "{out:?}"
    );
    // The owner never noticed: still connected, jobs still go to it.
    let out = c.cli(&["exec", "--verb", "RUN", "--wait", "echo after > after"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(c.node_dir("n1").join("after").exists());
    assert!(!fake.join("after").exists());
    let log = c.client("n1").log_text();
    assert!(
        !log.contains("silent") && !log.contains("register"),
        "{log}"
    );
    assert_eq!(count(&log, "connected to"), 1, "{log}");
    // Logged once on the server, with the address.
    let log = c.server().log_text();
    assert_eq!(count(&log, "the name belongs to another key"), 1, "{log}");
    assert!(log.contains("from 127.0.0.1"), "{log}");
}

#[test]
fn raw_peers_without_keys_get_nothing_and_the_server_keeps_serving() {
    let mut c = Cluster::start("nokeys", &["g1", "g2"], "0.5");
    let peer = RawPeer::connect(&c, None);
    let ready = ClientMsg::Ready {
        name: "g1".into(),
        version: "x".into(),
        interval_ms: 1000,
        holding: vec![],
        proof: vec![],
        instance: 1,
        seen: None,
        facts: Default::default(),
        labels: Default::default(),
    };
    for port in 0..3 {
        // Without a handshake nothing can even be queued; try anyway.
        peer.send(port, &ready.frames());
        peer.send(port, &[b"garbage".to_vec()]);
    }
    for port in c.ports {
        use std::io::Write;
        if let Ok(mut t) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = t.write_all(b"GET / HTTP/1.0\r\n\r\n\x00\xff garbage");
        }
    }
    for port in 0..3 {
        assert!(peer.recv(port, Duration::from_millis(500)).is_none());
    }
    let out = c.cli(&["exec", "--verb", "RUN", "--wait", "echo still here"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("2 succeeded"));
    assert_eq!(c.node_names(), vec!["g1", "g2"]);
    assert!(c.server().is_running());
    let log = c.client("g1").log_text();
    assert_eq!(count(&log, "connected to"), 1, "{log}");
}

/// A raw CURVE peer, accepted as `name` by an operator.
fn accepted_peer(c: &Cluster, name: &str) -> RawPeer {
    let peer = RawPeer::connect(c, Some(&c.server_key()));
    let answer = peer.ready(name);
    assert_eq!(
        decode_server(&answer),
        Some(ServerMsg::Denied(Denial::Pending))
    );
    assert_eq!(c.cli(&["manage", "--accept-key", name]).code, 0);
    // The server asks it to say Ready again, and welcomes it.
    let again = peer.recv(0, DEADLINE).expect("Register after accept");
    assert_eq!(decode_server(&again), Some(ServerMsg::Register));
    let welcome = peer.ready(name);
    assert!(
        matches!(decode_server(&welcome), Some(ServerMsg::Welcome { .. })),
        "{welcome:?}"
    );
    peer
}

#[test]
fn an_accepted_peer_that_sends_garbage_is_logged_briefly_and_changes_nothing() {
    let mut c = Cluster::start("garbage", &["g1", "g2"], "1");
    let peer = accepted_peer(&c, "intruder");
    // Well-formed lies: results for jobs it never had, a name that is no
    // name.
    for _ in 0..5 {
        let lie = ClientMsg::Finished {
            job_id: uuid::Uuid::new_v4(),
            outcome: util::ok_outcome(),
        };
        peer.send_wait(0, &lie.frames());
    }
    let bad_name = ClientMsg::Ready {
        name: "two\nlines".into(),
        version: "x".repeat(100_000),
        interval_ms: 1000,
        holding: vec![],
        proof: vec![],
        instance: 1,
        seen: None,
        facts: Default::default(),
        labels: Default::default(),
    };
    peer.send_wait(0, &bad_name.frames());
    wait_until("lies logged", DEADLINE, || {
        let log = c.server().log_text();
        log.contains("node=intruder: result for unknown job")
            && log.contains("dropped a Ready: invalid identity 'two\\nlines'")
    });
    let frames: Vec<Vec<Vec<u8>>> = vec![
        vec![b"hello".to_vec()],
        vec![util::header()],
        vec![b"DIR\x63".to_vec(), b"x".to_vec()],
        vec![b"XYZ\x02".to_vec(), b"x".to_vec()],
        vec![util::header(), b"\xff\xfe\xfd".to_vec()],
        vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec()],
        // A body claiming a 2^35-byte string in 6 bytes.
        vec![util::header(), vec![1, 253, 0, 0, 0, 0, 8, 0, 0, 0]],
    ];
    for _ in 0..5 {
        for port in 0..3 {
            for f in &frames {
                peer.send_wait(port, f);
            }
        }
    }
    wait_until("garbage logged", DEADLINE, || {
        c.server().log_text().contains("node=intruder: dropped")
    });
    // (The intruder never beats, so it is left out of the job.)
    let out = c.cli(&[
        "exec",
        "--verb",
        "RUN",
        "--wait",
        "--target",
        "g1",
        "--target",
        "g2",
        "echo still here",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("2 succeeded"), "{out:?}");
    assert!(c.server().is_running());
    let log = c.server().log_text();
    assert!(log.contains("bad magic"), "{log}");
    assert!(log.contains("unknown protocol version 9"), "{log}");
    assert!(log.contains("LimitExceeded"), "{log}");
    wait_until("suppression noted", DEADLINE, || {
        c.server()
            .log_text()
            .contains("node=intruder: too many warnings")
    });
    let log = c.server().log_text();
    let lines = count(&log, "node=intruder:");
    // 20 a minute, and the line that says the rest are suppressed; the
    // accept and registration lines come before.
    assert!(lines <= 24, "{lines} lines logged for one peer:\n{log}");
    // Every line is a whole log line: a name with a newline was escaped.
    assert!(log.lines().all(|l| l.starts_with("20")), "{log}");
}

/// Peak resident memory of a process, in MiB.
fn peak_rss_mib(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

#[test]
fn big_messages_from_accepted_peers_are_bounded_per_peer() {
    let mut c = Cluster::start("bigmsgs", &["b1"], "1");
    let before = peak_rss_mib(c.server().pid());
    let peers: Vec<RawPeer> = (0..4)
        .map(|i| accepted_peer(&c, &format!("flood{i}")))
        .collect();
    // Just under what the job port takes (two capped outputs), as fast as
    // libzmq lets us: 4 peers x 64 x 2 MiB = 512 MiB offered.
    let body = vec![7u8; 2 << 20];
    let msg = vec![util::header(), body];
    let mut sent = 0;
    let start = std::time::Instant::now();
    while sent < 4 * 64 && start.elapsed() < DEADLINE {
        for p in &peers {
            if p.send(0, &msg) {
                sent += 1;
            }
        }
    }
    assert_eq!(sent, 4 * 64);
    // A Ready answered after the flood, on the same connection, proves the
    // server read all of it.
    for (i, p) in peers.iter().enumerate() {
        let welcome = p.ready(&format!("flood{i}"));
        assert!(
            matches!(decode_server(&welcome), Some(ServerMsg::Welcome { .. })),
            "{welcome:?}"
        );
    }
    assert!(count(&c.server().log_text(), "dropped a message on the job port") >= 4);
    let peak = peak_rss_mib(c.server().pid());
    // libzmq holds at most 8 messages per peer (4 x 8 x 2 MiB), one in
    // assembly and one being decrypted each, and the loop reads 8 MiB at a
    // time: under 100 MiB. Before these bounds the same flood took ~1 GiB.
    assert!(
        peak < before + 150,
        "server peak RSS {peak} MiB (was {before} MiB before the flood)"
    );
    // One over the limit is cut off by libzmq before it is buffered.
    let huge = vec![util::header(), vec![7u8; 5 << 20]];
    peers[0].send(0, &huge);
    let out = c.cli(&["exec", "--verb", "RUN", "--wait", "--target", "b1", "true"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(peak_rss_mib(c.server().pid()) < before + 150);
}

#[test]
fn the_heartbeat_interval_a_node_announces_is_capped_by_the_server() {
    let mut c = Cluster::start("ivlcap", &[], "0.5");
    // A real client asking for more than the server allows adopts its limit.
    c.start_client_with("slow", &["--heartbeat-interval", "86400"]);
    c.wait_nodes(&["slow"]);
    wait_until("client adopts the limit", DEADLINE, || {
        c.client("slow")
            .log_text()
            .contains("the server allows at most 0.5s between heartbeats")
    });
    let node = &c.nodes_json()[0];
    let window = node["expires_ms"].as_u64().unwrap() - node["last_heartbeat_ms"].as_u64().unwrap();
    assert!(
        window <= 1500,
        "expiry window {window} ms for a 0.5 s server"
    );
    // A raw peer announcing a day goes away within 3 of the server's
    // intervals once it falls silent.
    let peer = accepted_peer(&c, "forged");
    c.wait_nodes(&["forged", "slow"]);
    drop(peer);
    wait_until("forged node expired", DEADLINE, || {
        c.node_names() == vec!["slow".to_string()]
    });
}

#[test]
fn a_node_cannot_fetch_another_nodes_files_or_borrow_its_name() {
    let mut c = Cluster::start("refuse", &["r"], "1");
    let src = c.dir.path.join("secret.txt");
    fs::write(&src, b"not for you").unwrap();
    let out = c.cli(&[
        "exec",
        "--verb",
        "ADD",
        "--wait",
        &format!("{} got/", src.display()),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let job = util::job_id(&out.stdout);

    // Borrowing r's name: refused, with the reason.
    let borrower = RawPeer::connect(&c, Some(&c.server_key()));
    let answer = borrower.ready("r");
    assert_eq!(
        decode_server(&answer),
        Some(ServerMsg::Denied(Denial::NameTaken))
    );
    // Its fetches are not even looked at.
    let fetch = ClientMsg::Fetch {
        job_id: uuid::Uuid::parse_str(&job).unwrap(),
        file: 0,
        offset: 0,
        len: 1024,
    };
    borrower.send_wait(1, &fetch.frames());
    assert!(borrower.recv(1, Duration::from_millis(500)).is_none());

    // An accepted node asking for r's file gets an error, not the data.
    let other = accepted_peer(&c, "other");
    for id in [job.clone(), "00000000-0000-4000-8000-000000000001".into()] {
        let fetch = ClientMsg::Fetch {
            job_id: uuid::Uuid::parse_str(&id).unwrap(),
            file: 0,
            offset: 0,
            len: 1024,
        };
        other.send_wait(1, &fetch.frames());
        let reply = other
            .recv(1, DEADLINE)
            .expect("a reply to the refused fetch");
        assert_eq!(reply.len(), 2, "an error, no data: {reply:?}");
        assert!(!contains(&reply[1], b"not for you"));
    }
    let log = c.server().log_text();
    assert!(
        log.contains("node=other: refused a fetch of file 0 of job"),
        "{log}"
    );
    assert!(log.contains("the job is not for this node"), "{log}");
    assert!(log.contains("no such job"), "{log}");
    // The borrower is nobody: not even a warning, so strangers cannot fill
    // the log.
    assert!(!log.contains("not an accepted node"), "{log}");
}

#[test]
fn a_wire_tap_sees_no_secret_and_no_file_content() {
    for curve in ["on", "off"] {
        let mut c = Cluster::new(&format!("tap-{curve}"), "0.5");
        if curve == "off" {
            c.shared_key = None;
            c.start_server_with(&["--curve", "off"]);
        } else {
            c.start_server();
        }
        let relay = Relay::start(c.ports);
        let mut opts = relay.client_options();
        if curve == "off" {
            opts.extend(["--curve".into(), "off".into()]);
        }
        let refs: Vec<&str> = opts.iter().map(String::as_str).collect();
        c.start_client_with("tapped", &refs);
        c.wait_nodes(&["tapped"]);
        let secret = "S3cr3t-ARG-value-7f1c9e";
        let content = "file-content-marker-5d2a81 ".repeat(1000);
        let src = c.dir.path.join("payload.txt");
        fs::write(&src, &content).unwrap();
        let out = c.cli(&[
            "exec",
            "--verb",
            "ARG",
            "--wait",
            &format!("password {secret}"),
        ]);
        assert_eq!(out.code, 0, "{out:?}");
        let out = c.cli(&[
            "exec",
            "--verb",
            "RUN",
            "--wait",
            "echo {{ password }} > echoed",
        ]);
        assert_eq!(out.code, 0, "{out:?}");
        let out = c.cli(&[
            "exec",
            "--verb",
            "ADD",
            "--wait",
            &format!("{} copied.txt", src.display()),
        ]);
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(
            fs::read_to_string(c.node_dir("tapped").join("copied.txt")).unwrap(),
            content
        );
        let tap = relay.capture();
        assert!(tap.len() > content.len(), "the relay carried the traffic");
        let seen_secret = contains(&tap, secret.as_bytes());
        let seen_file = contains(&tap, b"file-content-marker-5d2a81");
        if curve == "on" {
            assert!(!seen_secret && !seen_file, "CURVE leaked plain text");
            assert!(!contains(&tap, b"tapped"), "even the node name is hidden");
        } else {
            // The control: the same tap does see plain text.
            assert!(seen_secret && seen_file, "the tap works");
            let log = c.server().log_text();
            assert!(log.contains("UNAUTHENTICATED"), "{log}");
            let log = c.client("tapped").log_text();
            assert!(log.contains("UNAUTHENTICATED"), "{log}");
        }
    }
}

#[test]
fn a_stalled_transfer_fails_in_bounded_time_and_the_next_job_runs() {
    let mut c = Cluster::start("stall", &[], "0.5");
    let relay = Relay::start(c.ports);
    let opts = relay.client_options();
    let refs: Vec<&str> = opts.iter().map(String::as_str).collect();
    c.start_client_with("s", &refs);
    c.wait_nodes(&["s"]);
    let src = c.dir.path.join("big.bin");
    fs::write(&src, vec![5u8; 8 << 20]).unwrap();
    // Hold the transfer port only: heartbeats and jobs still flow.
    relay.pause(1, true);
    let add = c.submit_verb("ADD", &[], &format!("{} big.bin", src.display()));
    let next = c.submit(&["s"], "echo next > next.txt");
    let info = c.wait_job_done(&add);
    let part = &info["nodes"][0];
    assert_eq!(part["state"], "failed", "{info}");
    let msg = part["message"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with("the transfer stalled: no data from the server for"),
        "{info}"
    );
    // The bound: 5 s at this interval, measured on the node.
    let exec = part["exec_secs"].as_f64().unwrap_or(0.0);
    assert!((4.5..30.0).contains(&exec), "failed after {exec}s");
    assert!(!c.node_dir("s").join("big.bin").exists());
    let info = c.wait_job_done(&next);
    assert_eq!(info["nodes"][0]["state"], "succeeded", "{info}");
    assert!(c.node_dir("s").join("next.txt").exists());
    relay.pause(1, false);
}

#[test]
fn the_control_socket_is_private_or_shared_with_one_group() {
    let c = Cluster::start("sockperm", &[], "1");
    let mode = fs::metadata(c.socket()).unwrap().mode();
    assert_eq!(mode & 0o777, 0o600, "mode {:o}", mode & 0o777);
    // A second server on the same socket refuses to take it over.
    let mut args = vec!["server".to_string()];
    args.extend(c.common());
    // Its own ports, so that only the socket is in the way.
    for (flag, port) in ["--job-port", "--transfer-port", "--heartbeat-port"]
        .iter()
        .zip(util::free_ports())
    {
        args.extend([flag.to_string(), port.to_string()]);
    }
    args.extend([
        "--state-path".into(),
        c.dir.path.join("other").display().to_string(),
    ]);
    args.extend(["--shared-key".into(), util::SHARED_KEY.into()]);
    let out = util::run_cli(&c.dir.path, &args);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("already listening"), "{out:?}");
    assert!(c.cli(&["manage", "--list-nodes"]).code == 0, "still served");

    // Shared with a group: 0660, group-owned.
    let mut g = Cluster::new("sockgroup", "1");
    g.start_server_with(&["--socket-group", "65534"]);
    let meta = fs::metadata(g.socket()).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 65534);

    // Someone else is refused with a message that says what to do. Only
    // root can run the CLI as another user; as anyone else the modes above
    // are the check.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let other = util::TestDir::new("sockperm-other");
    fs::set_permissions(&other.path, fs::Permissions::from_mode(0o777)).unwrap();
    for (cluster, want) in [
        (
            &c,
            "only its owner may use it; run as root, or start the server with --socket-group",
        ),
        (&g, "run as root or as a member of group"),
    ] {
        let out = util::run_cli_as(&other.path, 65533, 65533, &{
            let mut a = vec!["manage".to_string(), "--list-nodes".into()];
            a.extend(cluster.common());
            a
        });
        assert_eq!(out.code, 2, "{out:?}");
        assert!(
            out.stderr
                .contains("permission denied on the control socket"),
            "{out:?}"
        );
        assert!(out.stderr.contains(want), "{out:?}");
    }
    // A member of the group gets in.
    let out = util::run_cli_as(&other.path, 65533, 65534, &{
        let mut a = vec!["manage".to_string(), "--list-nodes".into()];
        a.extend(g.common());
        a
    });
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn curve_off_says_so_at_every_start_and_still_works() {
    let mut c = Cluster::new("curveoff", "0.5");
    c.shared_key = None;
    c.start_server_with(&["--curve", "off"]);
    c.start_client_bare("plain", &["--curve", "off"]);
    c.wait_nodes(&["plain"]);
    let out = c.cli(&["exec", "--verb", "RUN", "--wait", "true"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(c
        .server()
        .log_text()
        .contains("--curve off: this cluster is UNAUTHENTICATED"));
    assert!(c
        .client("plain")
        .log_text()
        .contains("--curve off: this cluster is UNAUTHENTICATED"));
    let out = c.cli(&["manage", "--show-key"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--curve off"), "{out:?}");
    // A CURVE client is told the server may not speak it. (Whether libzmq
    // reports the mechanism mismatch or only a dropped handshake depends on
    // which of the server's greeting and its close arrives first; both
    // lines name --curve off.)
    let key = zmq::z85_encode(&zmq::CurveKeyPair::new().unwrap().public_key).unwrap();
    c.start_client_bare("curvy", &["--server-key", &key]);
    wait_until("mismatch named", DEADLINE, || {
        let log = c.client("curvy").log_text();
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("--curve off"))
    });
}

/// Run a client in `dir` (its key and cache there) with `extra` options,
/// until it exits.
fn client_once(dir: &util::TestDir, extra: &[&str]) -> util::Out {
    let mut args: Vec<String> = vec![
        "client".into(),
        "--key-path".into(),
        dir.path.join("k").display().to_string(),
        "--cache-path".into(),
        dir.path.join("c").display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    util::run_cli(&dir.path, &args)
}

#[test]
fn a_client_without_a_server_key_is_told_what_to_give() {
    let dir = util::TestDir::new("nokey");
    let out = client_once(&dir, &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("the client needs the server's key: give --server-key"),
        "{out:?}"
    );
    let out = client_once(&dir, &["--server-key", "not-a-key"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("--server-key: 'not-a-key' is neither a key"),
        "{out:?}"
    );
    // A secret key others can read is refused, as ssh does.
    let key = dir.path.join("k").join("node.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let out = client_once(&dir, &["--shared-key", util::SHARED_KEY]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("chmod 600"), "{out:?}");
}

/// Every file director writes that holds state, output, keys or secrets is
/// 0600 and its directories 0700, whatever the umask and whatever existed
/// before. (Before, a state or cache directory that existed as 0755 got a
/// history.bin and a journal.bin of 0644, or 0666 under umask 000, where
/// any user could read job output and ARG secrets, or write keys.bin.)
#[test]
fn state_and_cache_files_are_private_whatever_the_umask_and_the_directories_were() {
    use std::os::unix::fs::PermissionsExt;
    let mut c = Cluster::new("private", "0.5");
    c.umask = Some(0o000);
    let node = c.node_dir("p1");
    for dir in [c.state_path(), node.join("cache"), node.join("key")] {
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut c = Cluster::start_in(c, &["p1"]);
    let out = c.cli(&["exec", "--verb", "ARG", "--wait", "db_password s3cret"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = c.cli(&["exec", "--verb", "RUN", "--wait", "echo private output"]);
    assert_eq!(out.code, 0, "{out:?}");
    // A restart rewrites the journals (compaction at start).
    c.server().signal(libc::SIGKILL);
    c.server().wait_exit(DEADLINE);
    c.start_server();
    c.wait_nodes(&["p1"]);
    let mut seen = Vec::new();
    for dir in [c.state_path(), node.join("cache"), node.join("key")] {
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} is {mode:o}", path.display());
            seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    seen.sort();
    for want in [
        "history.bin",
        "keys.bin",
        "journal.bin",
        "jobs.bin",
        "node.key",
        "director.lock",
    ] {
        assert!(seen.iter().any(|s| s == want), "{want} not among {seen:?}");
    }
}

/// A stranger with only the server's public key (what `--show-key` prints)
/// claims a node's name before the node first comes: its claim is only
/// pending, and the real node, proving the shared key, takes the name and
/// works (it used to be refused and exit 2, so systemd did not restart
/// it). Strangers' pending keys are logged at most once per 10 s.
#[test]
fn a_stranger_cannot_squat_a_nodes_name_nor_flood_the_log() {
    let mut c = Cluster::start("squat", &["n1"], "0.5");
    let key = c.server_key();
    let stranger = RawPeer::connect(&c, Some(&key));
    assert_eq!(
        decode_server(&stranger.ready("n4")),
        Some(ServerMsg::Denied(Denial::Pending))
    );
    // More strangers, each a new pending key.
    let crowd: Vec<RawPeer> = (0..30).map(|_| RawPeer::connect(&c, Some(&key))).collect();
    for (i, p) in crowd.iter().enumerate() {
        let answer = p.ready(&format!("fake{i}"));
        assert_eq!(
            decode_server(&answer),
            Some(ServerMsg::Denied(Denial::Pending))
        );
    }
    // Another client without the shared key: the name is contested, it
    // waits (no exit).
    c.start_client_bare("n4", &["--server-key", &key]);
    wait_until("the contested client to say so", DEADLINE, || {
        c.client("n4")
            .log_text()
            .contains("was claimed on the server by another key")
    });
    assert!(c.client("n4").is_running());
    c.client("n4").signal(libc::SIGKILL);
    c.client("n4").wait_exit(DEADLINE);
    c.clients.remove("n4");
    let _ = fs::remove_dir_all(c.node_dir("n4").join("key"));
    // The real n4, with the shared key.
    c.start_client("n4");
    c.wait_nodes(&["n1", "n4"]);
    let out = c.cli(&[
        "exec",
        "--verb",
        "RUN",
        "--wait",
        "--target",
        "n4",
        "echo mine",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let keys = c.keys_json();
    let n4 = keys.iter().find(|k| k["name"] == "n4").unwrap();
    assert_eq!(n4["state"], "accepted", "{keys:?}");
    assert_ne!(n4["public_key"], stranger.public_key.as_str());
    let log = c.server().log_text();
    assert!(log.contains("takes the name from key"), "{log}");
    assert!(
        count(&log, "is pending; accept it") <= 2,
        "one line per pending key: {log}"
    );
    // The stranger's next claim of the name is refused as taken.
    assert_eq!(
        decode_server(&stranger.ready("n4")),
        Some(ServerMsg::Denied(Denial::NameTaken))
    );
}

/// One enrolled node must not run commands on others: a node answers a
/// QUERY with shell code, and the README's own recipe on the other nodes
/// refuses the value (the job fails, saying why) instead of running it;
/// with `| quote` the value arrives as data. (Before, both nodes ran the
/// `touch`.)
#[test]
fn a_value_from_another_node_never_runs_as_shell_code() {
    let c = Cluster::start("inject", &["i1", "i2", "liar"], "0.5");
    let out_dir = c.dir.path.join("out");
    fs::create_dir_all(&out_dir).unwrap();
    let evil = format!(
        "1.2.3.4' ; touch \"{}/pwned-$(hostname)\" ; echo '",
        out_dir.display()
    );
    for (node, value) in [
        ("i1", "10.0.0.1"),
        ("i2", "10.0.0.2"),
        ("liar", evil.as_str()),
    ] {
        let job = format!("db_addr {value}");
        let out = c.cli(&["exec", "--verb", "ARG", "--target", node, "--wait", &job]);
        assert_eq!(out.code, 0, "{out:?}");
    }
    let recipe = "printf '%s\\n' {% for node, addr in query.db_addr | items %}'{{ node }} {{ addr }}' {% endfor %} > db-nodes";
    let quoted = "printf '%s\\n' {% for node, addr in query.db_addr | items %}{{ node }}={{ addr | quote }} {% endfor %} > quoted";
    let file = c.dir.path.join("recipe.yml");
    let yaml = serde_json::json!([
        {"targets": ["i1", "i2", "liar"], "jobs": [{"QUERY": "db_addr"}]},
        {"targets": ["i1", "i2"], "jobs": [{"RUN": quoted}, {"RUN": recipe}]},
    ]);
    fs::write(&file, serde_json::to_string(&yaml).unwrap()).unwrap();
    let out = c.cli(&["orchestrate", file.to_str().unwrap(), "--wait"]);
    assert_eq!(
        out.code, 1,
        "the recipe fails where the value is refused: {out:?}"
    );
    assert!(
        out.stdout.contains("did not come from this node") && out.stdout.contains("| quote"),
        "{out:?}"
    );
    assert_eq!(
        fs::read_dir(&out_dir).unwrap().count(),
        0,
        "a node ran the liar's code"
    );
    for n in ["i1", "i2"] {
        // Quoted, the value is one word of data.
        let got = fs::read_to_string(c.node_dir(n).join("quoted")).unwrap();
        assert_eq!(
            got,
            format!("i1=10.0.0.1\ni2=10.0.0.2\nliar={evil}\n"),
            "{n}"
        );
        assert!(!c.node_dir(n).join("db-nodes").exists());
    }
}

/// A template that loops without end fails its job with one line; the node
/// keeps beating (it stays online) and stops on SIGTERM. (Before, the
/// client sat at 100% CPU, went offline and ignored SIGTERM.)
#[test]
fn a_runaway_template_fails_its_job_and_the_node_stays_responsive() {
    let mut c = Cluster::start("runaway", &["t1"], "0.3");
    let job = "--timeout 5 echo {% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
    let out = c.cli(&["exec", "--verb", "RUN", "--wait", job]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("the template does too much work"),
        "{out:?}"
    );
    assert_eq!(c.node_names(), vec!["t1"]);
    assert!(!c.server().log_text().contains("expired"));
    let out = c.cli(&["exec", "--verb", "RUN", "--wait", "echo still here"]);
    assert_eq!(out.code, 0, "{out:?}");
    c.client("t1").signal(libc::SIGTERM);
    assert_eq!(c.client("t1").wait_exit(DEADLINE), Some(0));
}

/// ARG and ENV values (often passwords) are hidden wherever jobs are shown
/// or logged, unless the operator asks (`--show-values`).
#[test]
fn arg_and_env_values_are_hidden_unless_asked_for() {
    let mut c = Cluster::new("secrets", "0.5");
    c.daemon_args = vec!["--debug".into()];
    let c = Cluster::start_in(c, &["s1"]);
    let secret = "s3cr3t-Pa55word";
    for (verb, job) in [("ARG", "db_password"), ("ENV", "DB_PASSWORD")] {
        let out = c.cli(&["exec", "--verb", verb, "--wait", &format!("{job} {secret}")]);
        assert_eq!(out.code, 0, "{out:?}");
        assert!(!out.stdout.contains(secret), "{out:?}");
    }
    let file = c.dir.path.join("s.yml");
    fs::write(&file, format!("- jobs:\n  - ARG: other {secret}\n")).unwrap();
    let out = c.cli(&["orchestrate", file.to_str().unwrap(), "--dry-run"]);
    assert!(
        !out.stdout.contains(secret) && out.stdout.contains("other <hidden>"),
        "{out:?}"
    );
    let list = c.cli(&["manage", "--list-jobs"]);
    assert!(
        !list.stdout.contains(secret) && list.stdout.contains("db_password <hidden>"),
        "{list:?}"
    );
    let json = c.cli(&["manage", "--list-jobs", "--format", "json"]);
    assert!(!json.stdout.contains(secret), "{json:?}");
    let jobs = c.jobs_json();
    let id = jobs[0]["id"].as_str().unwrap();
    let info = c.cli(&["manage", "--job-info", id]);
    assert!(!info.stdout.contains(secret), "{info:?}");
    // Asked for: shown.
    let shown = c.cli(&["manage", "--job-info", id, "--show-values"]);
    assert!(shown.stdout.contains(secret), "{shown:?}");
    let shown = c.cli(&["manage", "--list-jobs", "--show-values", "--format", "json"]);
    assert!(shown.stdout.contains(secret), "{shown:?}");
    // Neither daemon logs it, even with --debug.
    for log in [
        c.clients["s1"].log_text(),
        c.server.as_ref().unwrap().log_text(),
    ] {
        assert!(!log.contains(secret), "{log}");
        assert!(log.contains("<hidden>"), "{log}");
    }
}
