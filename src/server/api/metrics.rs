//! `GET /metrics`: the server's counters and gauges in the Prometheus text
//! format (0.0.4). Counters are the loop's (messages and bytes per port,
//! journal syncs and their latency, API requests by status, file bytes
//! served); gauges are read from the cluster when scraped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::server::cluster::Counts;

/// Upper bounds of the sync latency histogram, in seconds.
const SYNC_BUCKETS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// Per port: messages and bytes in and out.
#[derive(Default, Clone, Copy)]
pub struct PortCounts {
    pub msgs_in: u64,
    pub bytes_in: u64,
    pub msgs_out: u64,
    pub bytes_out: u64,
}

#[derive(Default)]
pub struct Metrics {
    /// Job, transfer, heartbeat.
    pub ports: [PortCounts; 3],
    pub syncs: u64,
    pub sync_failures: u64,
    sync_buckets: [u64; SYNC_BUCKETS.len()],
    sync_sum: f64,
    pub api_requests: BTreeMap<u16, u64>,
    pub api_auth_failures: u64,
    pub transfer_bytes: u64,
}

/// A label value as the text format wants it: `\\`, `"` and newlines
/// escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// On etcd: this server's role and place in the log, each server's lag,
/// and whether etcd answers.
pub fn ha_text(v: &crate::wire::ClusterView) -> String {
    let mut o = String::new();
    let family = |o: &mut String, name: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
    };
    family(
        &mut o,
        "director_ha_active",
        "1 if this server is the active one on etcd, 0 if it stands by.",
    );
    let _ = writeln!(o, "director_ha_active {}", u8::from(v.role == "active"));
    family(
        &mut o,
        "director_etcd_up",
        "1 if etcd answered this server's last call.",
    );
    let _ = writeln!(o, "director_etcd_up {}", u8::from(v.etcd_error.is_none()));
    type Figure = fn(&crate::wire::ServerView) -> u64;
    let per_server: [(&str, &str, Figure); 2] = [
        (
            "director_ha_applied",
            "The last entry of the log each server's journals hold.",
            |s| s.applied,
        ),
        (
            "director_ha_behind",
            "Log entries each server is behind the active one.",
            |s| s.behind,
        ),
    ];
    for (name, help, value) in per_server {
        family(&mut o, name, help);
        for s in &v.servers {
            let _ = writeln!(o, "{name}{{server=\"{}\"}} {}", label(&s.name), value(s));
        }
    }
    o
}

impl Metrics {
    pub fn sync(&mut self, took: Duration, ok: bool) {
        if !ok {
            self.sync_failures += 1;
            return;
        }
        self.syncs += 1;
        let s = took.as_secs_f64();
        self.sync_sum += s;
        for (i, le) in SYNC_BUCKETS.iter().enumerate() {
            if s <= *le {
                self.sync_buckets[i] += 1;
            }
        }
    }

    pub fn api(&mut self, status: u16) {
        *self.api_requests.entry(status).or_insert(0) += 1;
    }

    /// The whole exposition, with the gauges read from the cluster.
    pub fn render(&self, counts: &Counts, api_conns: usize, event_readers: usize) -> String {
        let mut o = String::with_capacity(4096);
        let family = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        let name_of = |v: serde_json::Result<serde_json::Value>| {
            v.ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        family(&mut o, "director_nodes", "gauge", "Known nodes by state.");
        for (s, n) in &counts.nodes {
            let _ = writeln!(
                o,
                "director_nodes{{state=\"{}\"}} {n}",
                name_of(serde_json::to_value(s))
            );
        }
        family(
            &mut o,
            "director_jobs",
            "gauge",
            "Jobs kept, finished or not.",
        );
        let _ = writeln!(
            o,
            "director_jobs{{finished=\"true\"}} {}",
            counts.jobs_finished
        );
        let _ = writeln!(
            o,
            "director_jobs{{finished=\"false\"}} {}",
            counts.jobs_going
        );
        family(
            &mut o,
            "director_parts",
            "gauge",
            "Parts (a job on a node) of the jobs kept, by state.",
        );
        for (s, n) in &counts.parts {
            let _ = writeln!(
                o,
                "director_parts{{state=\"{}\"}} {n}",
                name_of(serde_json::to_value(s))
            );
        }
        family(
            &mut o,
            "director_node_queue",
            "gauge",
            "Parts queued on the server for their nodes, and in flight to them.",
        );
        let _ = writeln!(
            o,
            "director_node_queue{{where=\"server\"}} {}",
            counts.queued
        );
        let _ = writeln!(
            o,
            "director_node_queue{{where=\"in_flight\"}} {}",
            counts.in_flight
        );
        for (name, help, pick) in [
            (
                "director_port_messages_received_total",
                "ZeroMQ messages received per port.",
                0,
            ),
            (
                "director_port_bytes_received_total",
                "Bytes received per port.",
                1,
            ),
            (
                "director_port_messages_sent_total",
                "ZeroMQ messages queued for sending per port.",
                2,
            ),
            (
                "director_port_bytes_sent_total",
                "Bytes queued for sending per port.",
                3,
            ),
        ] {
            family(&mut o, name, "counter", help);
            for (port, c) in ["job", "transfer", "heartbeat"].iter().zip(&self.ports) {
                let v = [c.msgs_in, c.bytes_in, c.msgs_out, c.bytes_out][pick];
                let _ = writeln!(o, "{name}{{port=\"{port}\"}} {v}");
            }
        }
        family(
            &mut o,
            "director_journal_sync_seconds",
            "histogram",
            "Group commits of the server's journals: write and fsync.",
        );
        for (i, le) in SYNC_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                o,
                "director_journal_sync_seconds_bucket{{le=\"{le}\"}} {}",
                self.sync_buckets[i]
            );
        }
        let _ = writeln!(
            o,
            "director_journal_sync_seconds_bucket{{le=\"+Inf\"}} {}",
            self.syncs
        );
        let _ = writeln!(o, "director_journal_sync_seconds_sum {}", self.sync_sum);
        let _ = writeln!(o, "director_journal_sync_seconds_count {}", self.syncs);
        family(
            &mut o,
            "director_journal_sync_failures_total",
            "counter",
            "Group commits that failed (full or failing disk).",
        );
        let _ = writeln!(
            o,
            "director_journal_sync_failures_total {}",
            self.sync_failures
        );
        family(
            &mut o,
            "director_api_requests_total",
            "counter",
            "API requests answered, by HTTP status.",
        );
        for (status, n) in &self.api_requests {
            let _ = writeln!(o, "director_api_requests_total{{status=\"{status}\"}} {n}");
        }
        family(
            &mut o,
            "director_api_auth_failures_total",
            "counter",
            "API requests with a missing, unknown or revoked token.",
        );
        let _ = writeln!(
            o,
            "director_api_auth_failures_total {}",
            self.api_auth_failures
        );
        family(
            &mut o,
            "director_api_connections",
            "gauge",
            "Open API connections, and those reading the event stream.",
        );
        let _ = writeln!(o, "director_api_connections{{kind=\"all\"}} {api_conns}");
        let _ = writeln!(
            o,
            "director_api_connections{{kind=\"events\"}} {event_readers}"
        );
        family(
            &mut o,
            "director_transfer_bytes_total",
            "counter",
            "File bytes served to nodes (ADD, COPY, TEMPLATE).",
        );
        let _ = writeln!(o, "director_transfer_bytes_total {}", self.transfer_bytes);
        o
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_servers_on_etcd_show_with_their_names_escaped() {
        let v = crate::wire::ClusterView {
            this: "s0".into(),
            role: "active".into(),
            leader: Some("s0".into()),
            etcd_endpoints: vec!["http://e:2379".into()],
            etcd_error: None,
            servers: vec![crate::wire::ServerView {
                name: "odd\"name".into(),
                role: "standby".into(),
                address: "a".into(),
                job_port: 1,
                applied: 7,
                behind: 2,
                wants_base: false,
                updated_ms: 0,
                version: "0".into(),
                key: String::new(),
            }],
        };
        let t = super::ha_text(&v);
        assert!(t.contains("director_ha_active 1\n"), "{t}");
        assert!(t.contains("director_etcd_up 1\n"), "{t}");
        assert!(
            t.contains("director_ha_behind{server=\"odd\\\"name\"} 2\n"),
            "{t}"
        );
    }

    use super::*;

    #[test]
    fn the_sync_histogram_is_cumulative_and_counts_match() {
        let mut m = Metrics::default();
        m.sync(Duration::from_micros(1500), true);
        m.sync(Duration::from_millis(30), true);
        m.sync(Duration::from_millis(1), false);
        let text = m.render(&Counts::default(), 0, 0);
        assert!(
            text.contains("director_journal_sync_seconds_bucket{le=\"0.001\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("director_journal_sync_seconds_bucket{le=\"0.002\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("director_journal_sync_seconds_bucket{le=\"0.05\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("director_journal_sync_seconds_count 2\n"),
            "{text}"
        );
        assert!(
            text.contains("director_journal_sync_failures_total 1\n"),
            "{text}"
        );
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
