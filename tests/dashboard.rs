//! The dashboard in a real browser: headless Chromium driven through
//! ChromeDriver's WebDriver protocol (plain JSON over HTTP, spoken here
//! with a few lines of std), against a real server and clients. Sign in,
//! the node list and its filter, a run from the page with its targets
//! checked first, and its output arriving live.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs
//! them); skipped, saying so, without them.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use util::{wait_until, Cluster};

const DEADLINE: Duration = Duration::from_secs(60);

/// A WebDriver session.
struct Browser {
    port: u16,
    session: String,
    driver: Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = call(
            self.port,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// One WebDriver command: its `value`, or the error it names.
fn call(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    // ChromeDriver answers with a Content-Length (and may keep the
    // connection open whatever we ask): read the head, then that much.
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => raw.push(byte[0]),
            _ => return Err("the connection closed in the head".into()),
        }
    }
    let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or("no Content-Length")?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).map_err(|e| e.to_string())?;
    let body = String::from_utf8_lossy(&body);
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    match v["value"].get("error") {
        Some(e) => Err(format!("{e}: {}", v["value"]["message"])),
        None => Ok(v["value"].clone()),
    }
}

impl Browser {
    fn start(dir: &std::path::Path) -> Option<Browser> {
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let port = util::free_ports()[0];
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut b = Browser {
            port,
            session: String::new(),
            driver,
        };
        wait_until("chromedriver ready", DEADLINE, || {
            call(port, "GET", "/status", None).is_ok_and(|v| v["ready"] == true)
        });
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1440,900", format!("--user-data-dir={}", dir.join("chromium").display())]
            }
        }}});
        let v = call(port, "POST", "/session", Some(&caps)).expect("a browser session");
        b.session = v["sessionId"].as_str().unwrap().to_owned();
        Some(b)
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let full = format!("/session/{}{path}", self.session);
        call(self.port, method, &full, body.as_ref())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    /// Run `script` (a function body) in the page.
    fn js(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    fn element(&self, css: &str) -> String {
        let v = self.cmd(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap()
            .to_owned()
    }

    fn click(&self, css: &str) {
        let id = self.element(css);
        self.cmd("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.cmd("POST", &format!("/element/{id}/clear"), Some(json!({})));
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// With `DIRECTOR_SCREENSHOTS=DIR`, the page as a PNG in DIR (to look
    /// at; never part of the repository).
    fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("DIRECTOR_SCREENSHOTS") else {
            return;
        };
        let v = self.cmd("GET", "/screenshot", None);
        let png = base64_decode(v.as_str().unwrap());
        std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png).unwrap();
    }

    /// Wait until `script` returns true.
    fn until(&self, what: &str, script: &str) {
        let end = Instant::now() + DEADLINE;
        loop {
            if self.js(script) == Value::Bool(true) {
                return;
            }
            if Instant::now() > end {
                let body = self.js("return document.body.innerText.slice(0, 3000)");
                panic!("timed out waiting for: {what}\npage text (its start):\n{body}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, c)| {
            acc | (u32::from(val(*c)) << (18 - 6 * i))
        });
        out.extend(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[test]
fn an_operator_signs_in_sees_the_nodes_and_runs_a_command_from_the_page() {
    let mut c = Cluster::new("dashboard", "0.5");
    c.with_api();
    let c = Cluster::start_in(c, &["web1", "web2", "db1"]);
    let Some(browser) = Browser::start(&c.dir.path) else {
        eprintln!("skipped: no chromium and chromedriver (Debian: apt-get install chromium chromium-driver)");
        return;
    };
    let token = c.token("ops", "run", None);
    let base = format!("http://127.0.0.1:{}/", c.api_port.unwrap());

    // A wrong token is refused on the page.
    browser.go(&base);
    browser.until(
        "the sign-in form",
        "return !document.getElementById('signin').hidden",
    );
    browser.type_into("#token-input", "dtk_wrong");
    browser.click("#signin-form button");
    browser.until(
        "the refusal",
        "return document.getElementById('signin-error').textContent.includes('refused')",
    );
    // The right one signs in, and the nodes are listed.
    browser.type_into("#token-input", &token);
    browser.click("#signin-form button");
    browser.until(
        "the node list",
        "return document.querySelectorAll('#nodes tr').length === 3",
    );
    browser.until(
        "who is signed in",
        "return document.getElementById('who').textContent.includes('ops (run')",
    );
    browser.until(
        "the live stream",
        "return document.getElementById('live-text').textContent === 'live'",
    );
    // The filter narrows; a row opens the node's facts.
    browser.type_into("#node-filter", "web");
    browser.until(
        "two web nodes",
        "return document.querySelectorAll('#nodes tr').length === 2",
    );
    browser.click("#nodes tr[data-node='web2']");
    browser.until(
        "web2's facts",
        "return document.getElementById('node-detail').innerText.includes('kernel')",
    );
    browser.screenshot("nodes");

    // A run from the page: the targets are confirmed before it can go.
    browser.click("#tab-run");
    browser.type_into(
        "#run-args",
        "--skip-cache for i in $(seq 1 10); do echo browser-$i; sleep 0.5; done",
    );
    browser.type_into("#run-targets", "web*");
    assert_eq!(
        browser.js("return document.getElementById('run-go').disabled"),
        true
    );
    browser.click("#run-check");
    browser.until(
        "the planned nodes",
        "const n = document.getElementById('run-nodes'); return !!n && n.textContent === 'web1, web2'",
    );
    browser.click("#run-go");
    // Its output shows while it runs (lines from when the page follows
    // it on, with the job not finished yet), then its end with all of it.
    browser.until(
        "live output before the end",
        "const t = document.getElementById('job-detail').innerText; return /browser-[0-9]/.test(t) && t.includes('following live output') && t.includes('running')",
    );
    browser.until(
        "both nodes succeeded",
        "const t = document.getElementById('job-detail').innerText; return t.includes('browser-1\\n') && t.includes('browser-10') && t.includes('2 succeeded') && !t.includes('following live')",
    );
    browser.screenshot("job");
    let jobs = c.jobs_json();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["states"]["succeeded"], 2);
    assert!(jobs[0]["args"].as_str().unwrap().contains("browser-$i"));

    // A run (submitted with the CLI) in the Runs tab: its jobs by node.
    let file = c.dir.path.join("run.yml");
    std::fs::write(
        &file,
        "- jobs:\n  - RUN: --skip-cache echo one\n  - RUN: --skip-cache echo two\n",
    )
    .unwrap();
    let out = c.cli(&["orchestrate", "--wait", file.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    browser.click("nav button[data-tab='runs']");
    browser.until(
        "the run listed",
        "return document.querySelectorAll('#runs tr').length === 1",
    );
    browser.click("#runs tr");
    browser.until(
        "the run's jobs by node",
        "const t = document.getElementById('run-detail').innerText; return t.includes('echo two') && t.toLowerCase().includes('db1') && (t.match(/succeeded/g) || []).length === 6",
    );
    browser.screenshot("run");
    // A bookmark with the token signs in directly, and drops it from the
    // address bar.
    browser.js("sessionStorage.clear(); return true");
    browser.go("about:blank");
    browser.go(&format!("{base}#token={token}"));
    browser.until(
        "the node list again",
        "return document.querySelectorAll('#nodes tr').length === 3",
    );
    assert_eq!(browser.js("return location.hash"), "");
}

/// 2,000 nodes (a fleet registered over the real protocol: see
/// `util::fleet`): the page draws its first 500 with a count, its filter
/// narrows the whole list by name, label or fact, and a node far down the
/// list opens with its facts. How long each step took is printed (never
/// asserted: the machine is shared).
#[test]
fn the_node_list_stays_usable_with_2000_nodes() {
    const NODES: usize = 2000;
    let mut c = Cluster::new("dashboard-fleet", "5");
    c.shared_key = None;
    c.daemon_args = vec!["--curve".into(), "off".into()];
    c.with_api();
    c.start_server();
    let names: Vec<String> = (0..NODES).map(|i| format!("fleet-{i:04}")).collect();
    let fleet = util::fleet::Fleet::start(
        c.ports,
        names,
        |i| {
            let role = ["web", "db", "cache", "batch"][i % 4];
            [("role".to_owned(), role.to_owned())].into()
        },
        Duration::from_secs(5),
    );
    wait_until("the fleet welcomed", DEADLINE, || {
        fleet.welcomed.load(std::sync::atomic::Ordering::Relaxed) == NODES
    });
    let Some(browser) = Browser::start(&c.dir.path) else {
        eprintln!("skipped: no chromium and chromedriver (Debian: apt-get install chromium chromium-driver)");
        return;
    };
    let token = c.token("wall", "read", None);
    let base = format!("http://127.0.0.1:{}/", c.api_port.unwrap());

    let started = Instant::now();
    browser.go(&format!("{base}#token={token}"));
    browser.until(
        "500 of 2000 drawn, with the count",
        "return document.querySelectorAll('#nodes tr').length === 500 && document.getElementById('node-count').textContent.includes('500 of 2000')",
    );
    let signed_in = started.elapsed();
    // Every one of them online, as the list says.
    assert_eq!(
        browser.js(
            "return [...document.querySelectorAll('#nodes tr')].every(r => r.innerText.includes('online'))"
        ),
        true
    );
    let started = Instant::now();
    browser.type_into("#node-filter", "role=db");
    browser.until(
        "the db nodes",
        "return document.getElementById('node-count').textContent === '500 of 2000 nodes' && [...document.querySelectorAll('#nodes tr')].every(r => r.dataset.node.match(/[0-9]+$/)[0] % 4 === 1)",
    );
    let filtered = started.elapsed();
    browser.type_into("#node-filter", "fleet-1999");
    browser.until(
        "the last node alone",
        "return document.querySelectorAll('#nodes tr').length === 1",
    );
    browser.click("#nodes tr[data-node='fleet-1999']");
    browser.until(
        "its facts",
        "return document.getElementById('node-detail').innerText.includes('1999') && document.getElementById('node-detail').innerText.includes('debian')",
    );
    browser.screenshot("fleet");
    // A thousand more arrive at once (a fleet coming back after a
    // restart): the page catches up with one fetch for the burst, not one
    // per node, and stays drawn.
    browser.type_into("#node-filter", "late-");
    let fetches = "return performance.getEntriesByType('resource').filter(e => e.name.includes('/api/v1/nodes')).length";
    let before = browser.js(fetches).as_u64().unwrap();
    let started = Instant::now();
    let late: Vec<String> = (0..1000).map(|i| format!("late-{i:04}")).collect();
    let late = util::fleet::Fleet::start(
        c.ports,
        late,
        |_| Default::default(),
        Duration::from_secs(5),
    );
    browser.until(
        "3000 nodes, the late ones listed",
        "return document.getElementById('stat-nodes').textContent === '3000 online, 0 not' && document.getElementById('node-count').textContent === 'showing 500 of 1000 (filter to narrow)'",
    );
    let burst = started.elapsed();
    let fetched = browser.js(fetches).as_u64().unwrap() - before;
    assert!(
        fetched <= 2 + burst.as_secs() * 2,
        "{fetched} fetches of the node list for a burst of 1000 nodes in {burst:?}"
    );
    assert_eq!(
        late.welcomed.load(std::sync::atomic::Ordering::Relaxed),
        1000
    );
    // The page's own cost of holding 2,000 nodes.
    let heap = browser.js("return performance.memory ? performance.memory.usedJSHeapSize : 0");
    eprintln!(
        "2000 nodes: signed in and drawn in {:.2}s, filtered in {:.2}s; 1000 more shown in {:.2}s with {fetched} fetches; page heap {:.1} MiB",
        signed_in.as_secs_f64(),
        filtered.as_secs_f64(),
        burst.as_secs_f64(),
        heap.as_f64().unwrap_or(0.0) / 1048576.0
    );
}

/// Servers on etcd: each one's page says who it is and who leads; a
/// standby's shows its copy of the state, says so, offers no command; once
/// it leads (the active server killed), the same page becomes the active
/// server's.
#[test]
fn on_etcd_a_standbys_page_shows_its_copy_and_where_commands_run() {
    let Some(mut h) = util::ha::HaCluster::start_with_api("dashboard-ha", 2, &["web1", "web2"])
    else {
        return;
    };
    let Some(browser) = Browser::start(&h.c.dir.path) else {
        eprintln!("skipped: no chromium and chromedriver (Debian: apt-get install chromium chromium-driver)");
        return;
    };
    let out = h.cli(0, &["manage", "--create-token", "ops", "--role", "run"]);
    assert_eq!(out.code, 0, "{out:?}");
    let token = out.stdout.lines().last().unwrap().to_owned();
    let port = h.c.api_port.unwrap();
    let page = |i: usize| format!("http://{}:{port}/#token={token}", util::ha::address(i));

    // The standby's page, once the token reached it through the log.
    wait_until("the token known to the standby", DEADLINE, || {
        util::ha::http(&h, 1, "GET", "/api/v1/whoami", Some(&token), "").0 == 200
    });
    browser.go(&page(1));
    browser.until(
        "the standby's banner",
        "const b = document.getElementById('standby'); return !b.hidden && b.textContent.includes('This is s1, a standby') && b.textContent.includes('active server, s0')",
    );
    browser.until(
        "its copy of the nodes",
        "return document.querySelectorAll('#nodes tr').length === 2",
    );
    // As last recorded: no heartbeat times it cannot know.
    let rows = browser.js("return document.getElementById('nodes').innerText");
    let rows = rows.as_str().unwrap_or("");
    assert!(
        rows.contains("online when last recorded") && !rows.contains("ago"),
        "{rows}"
    );
    browser.until(
        "no command offered",
        "return document.getElementById('tab-run').hidden && document.getElementById('live-text').textContent === 'standby copy'",
    );
    browser.until(
        "who it is in the header",
        "return document.getElementById('stat-server').textContent.includes('s1: standby')",
    );
    browser.screenshot("standby");

    // The active server's page: no banner, commands, live events.
    browser.go(&page(0));
    browser.until(
        "the active server's page",
        "return document.getElementById('live-text').textContent === 'live' && document.getElementById('standby').hidden && !document.getElementById('tab-run').hidden && document.getElementById('stat-server').textContent.includes('s0: active')",
    );

    // The standby leads after the active server is killed: its page, left
    // open, becomes the active server's.
    browser.go(&page(1));
    browser.until(
        "the standby's banner again",
        "return !document.getElementById('standby').hidden",
    );
    h.server(0).signal(libc::SIGKILL);
    h.server(0).wait_exit(DEADLINE);
    h.wait_active(1);
    browser.until(
        "the page as the active server's",
        "return document.getElementById('standby').hidden && document.getElementById('live-text').textContent === 'live' && document.getElementById('stat-server').textContent.includes('s1: active')",
    );
}
