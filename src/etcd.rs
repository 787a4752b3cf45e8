//! etcd, through its v3 JSON gateway (plain HTTP, `ureq`): what servers
//! that fail over need of it, leases (the leader's key lives as long as
//! its lease), guarded transactions (a write fenced by the leader key's
//! creation revision), ranges, and watches that resume from a revision.
//!
//! Every call blocks: a daemon makes them on a helper thread, never on its
//! loop, and gets the answers back through its `mio::Waker`. A call tries
//! the endpoints in turn, starting with the last that answered, and gives
//! up with `Unavailable` after `timeout` on each: a lost quorum is an
//! error in bounded time, never a hang.

use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::base64;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdError {
    /// No endpoint answered in time (down, cut off, or without quorum).
    Unavailable(String),
    /// etcd answered with an error (its message).
    Refused(String),
    /// An answer we could not read.
    Malformed(String),
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EtcdError::Unavailable(e) => write!(f, "etcd is unavailable: {e}"),
            EtcdError::Refused(e) => write!(f, "etcd refused: {e}"),
            EtcdError::Malformed(e) => write!(f, "etcd's answer is unreadable: {e}"),
        }
    }
}

pub type Result<T> = std::result::Result<T, EtcdError>;

/// A key and its value, with the revisions etcd gave them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

/// A condition of a transaction.
#[derive(Debug, Clone)]
pub enum Compare {
    /// The key's creation revision is this (0: the key does not exist):
    /// the fencing check, with the leader key's revision.
    CreateRevision(Vec<u8>, i64),
}

/// A write of a transaction.
#[derive(Debug, Clone)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        /// Bound to a lease: gone with it.
        lease: Option<i64>,
    },
    /// The key, or with `prefix` every key under it.
    Delete { key: Vec<u8>, prefix: bool },
    /// Every key from `key` up to, not including, `end`.
    DeleteRange { key: Vec<u8>, end: Vec<u8> },
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Txn {
    pub succeeded: bool,
    /// The store's revision after it.
    pub revision: i64,
}

/// What a watch delivers: the changes of one revision or more, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(Kv),
    Delete { key: Vec<u8>, mod_revision: i64 },
}

/// A blocking etcd client over the endpoints given.
pub struct Client {
    endpoints: Vec<String>,
    agent: ureq::Agent,
    /// The endpoint tried first: the last that answered.
    current: usize,
    timeout: Duration,
}

/// The first key after every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

/// An int64 of the gateway's JSON: a string, or a number.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn bytes(v: &Value) -> Result<Vec<u8>> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => {
            base64::decode(s).ok_or_else(|| EtcdError::Malformed(format!("not base64: {s}")))
        }
        other => Err(EtcdError::Malformed(format!("not a byte string: {other}"))),
    }
}

fn kv(v: &Value) -> Result<Kv> {
    Ok(Kv {
        key: bytes(&v["key"])?,
        value: bytes(&v["value"])?,
        create_revision: int(&v["create_revision"]),
        mod_revision: int(&v["mod_revision"]),
        lease: int(&v["lease"]),
    })
}

fn op_json(op: &Op) -> Value {
    match op {
        Op::Put { key, value, lease } => {
            let mut put = json!({ "key": base64::encode(key), "value": base64::encode(value) });
            if let Some(l) = lease {
                put["lease"] = json!(l.to_string());
            }
            json!({ "request_put": put })
        }
        Op::Delete { key, prefix } => {
            let mut del = json!({ "key": base64::encode(key) });
            if *prefix {
                del["range_end"] = json!(base64::encode(&prefix_end(key)));
            }
            json!({ "request_delete_range": del })
        }
        Op::DeleteRange { key, end } => json!({ "request_delete_range": {
            "key": base64::encode(key),
            "range_end": base64::encode(end),
        }}),
    }
}

/// An error etcd put in a 200 answer, or in an error status's body.
fn etcd_error(v: &Value) -> Option<String> {
    let msg = v.get("error").or_else(|| v.get("message"))?;
    Some(match msg {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

impl Client {
    /// `endpoints`: `http://host:port`, or `host:port`.
    pub fn new(endpoints: &[String], timeout: Duration) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Client {
            endpoints: endpoints
                .iter()
                .map(|e| {
                    let e = e.trim_end_matches('/');
                    if e.contains("://") {
                        e.to_owned()
                    } else {
                        format!("http://{e}")
                    }
                })
                .collect(),
            agent,
            current: 0,
            timeout,
        }
    }

    /// The endpoint calls go to first (none if none was given).
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoints.get(self.current).map(String::as_str)
    }

    /// The endpoints' indices in the order to try them: the last that
    /// answered first.
    fn order(&self) -> impl Iterator<Item = usize> {
        let (n, first) = (self.endpoints.len(), self.current);
        (0..n).map(move |k| (first + k) % n)
    }

    /// Every endpoint failed: why, for each.
    fn unavailable(failures: Vec<String>) -> EtcdError {
        if failures.is_empty() {
            EtcdError::Unavailable("no etcd endpoint was given".into())
        } else {
            EtcdError::Unavailable(failures.join("; "))
        }
    }

    /// POST `body` to `path` on the first endpoint that answers.
    fn call(&mut self, path: &str, body: &Value) -> Result<Value> {
        let text = body.to_string();
        let mut failures = Vec::new();
        for i in self.order() {
            let url = format!("{}{path}", self.endpoints[i]);
            let answer = self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(&text);
            let mut resp = match answer {
                Ok(r) => r,
                Err(e) => {
                    failures.push(format!("{}: {e}", self.endpoints[i]));
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let body = match resp.body_mut().read_to_string() {
                Ok(b) => b,
                Err(e) => {
                    failures.push(format!("{}: {e}", self.endpoints[i]));
                    continue;
                }
            };
            // A member without quorum, or one stepping down, says so: the
            // next may answer.
            if status == 503 || (status >= 500 && body.contains("unavailable")) {
                failures.push(format!("{}: {status} {}", self.endpoints[i], body.trim()));
                continue;
            }
            self.current = i;
            let v: Value = serde_json::from_str(&body)
                .map_err(|e| EtcdError::Malformed(format!("{e}: {}", body.trim())))?;
            if status != 200 {
                return Err(EtcdError::Refused(
                    etcd_error(&v).unwrap_or_else(|| format!("HTTP {status}")),
                ));
            }
            return Ok(v);
        }
        Err(Self::unavailable(failures))
    }

    /// A new lease of `ttl_secs`: its id.
    pub fn grant(&mut self, ttl_secs: i64) -> Result<i64> {
        let v = self.call("/v3/lease/grant", &json!({ "TTL": ttl_secs.to_string() }))?;
        match int(&v["ID"]) {
            0 => Err(EtcdError::Refused(
                etcd_error(&v).unwrap_or_else(|| "no lease granted".into()),
            )),
            id => Ok(id),
        }
    }

    /// Renew lease `id`: the seconds it has from now; 0 when it is gone
    /// (expired or revoked).
    pub fn keepalive(&mut self, id: i64) -> Result<i64> {
        let v = self.call("/v3/lease/keepalive", &json!({ "ID": id.to_string() }))?;
        Ok(int(&v["result"]["TTL"]))
    }

    /// End lease `id` now; its keys go with it.
    pub fn revoke(&mut self, id: i64) -> Result<()> {
        self.call("/v3/lease/revoke", &json!({ "ID": id.to_string() }))
            .map(|_| ())
    }

    /// The key, or with `prefix` every key under it, and the store's
    /// revision.
    pub fn range(&mut self, key: &[u8], prefix: bool) -> Result<(Vec<Kv>, i64)> {
        let mut req = json!({ "key": base64::encode(key) });
        if prefix {
            req["range_end"] = json!(base64::encode(&prefix_end(key)));
        }
        let v = self.call("/v3/kv/range", &req)?;
        let kvs = match v["kvs"].as_array() {
            Some(a) => a.iter().map(kv).collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        Ok((kvs, int(&v["header"]["revision"])))
    }

    /// If every compare holds, `success`; else `failure`. One atomic step.
    pub fn txn(&mut self, compare: &[Compare], success: &[Op], failure: &[Op]) -> Result<Txn> {
        let compare: Vec<Value> = compare
            .iter()
            .map(|c| match c {
                Compare::CreateRevision(key, rev) => json!({
                    "key": base64::encode(key),
                    "target": "CREATE",
                    "result": "EQUAL",
                    "create_revision": rev.to_string(),
                }),
            })
            .collect();
        let req = json!({
            "compare": compare,
            "success": success.iter().map(op_json).collect::<Vec<_>>(),
            "failure": failure.iter().map(op_json).collect::<Vec<_>>(),
        });
        let v = self.call("/v3/kv/txn", &req)?;
        Ok(Txn {
            succeeded: v["succeeded"].as_bool().unwrap_or(false),
            revision: int(&v["header"]["revision"]),
        })
    }

    /// Watch the key (or every key under it) from `start_revision` on:
    /// the changes since then first, then as they come. The watch holds
    /// its own connection; reading it blocks until changes come.
    pub fn watch(&mut self, key: &[u8], prefix: bool, start_revision: i64) -> Result<Watch> {
        let mut create = json!({
            "key": base64::encode(key),
            "start_revision": start_revision.to_string(),
        });
        if prefix {
            create["range_end"] = json!(base64::encode(&prefix_end(key)));
        }
        let text = json!({ "create_request": create }).to_string();
        let mut failures = Vec::new();
        for i in self.order() {
            let url = format!("{}/v3/watch", self.endpoints[i]);
            // A watch lasts: only connecting is bounded.
            let resp = self
                .agent
                .post(&url)
                .config()
                .timeout_global(None)
                .timeout_connect(Some(self.timeout))
                .build()
                .header("Content-Type", "application/json")
                .send(&text);
            match resp {
                Ok(r) if r.status().as_u16() == 200 => {
                    self.current = i;
                    let reader = r.into_body().into_reader();
                    return Ok(Watch {
                        lines: BufReader::new(Box::new(reader)),
                    });
                }
                Ok(r) => failures.push(format!("{}: HTTP {}", self.endpoints[i], r.status())),
                Err(e) => failures.push(format!("{}: {e}", self.endpoints[i])),
            }
        }
        Err(Self::unavailable(failures))
    }
}

/// The longest watch answer read.
const WATCH_LINE_MAX: u64 = 64 << 20;

/// An open watch: one JSON object a line, from etcd's gateway.
pub struct Watch {
    lines: BufReader<Box<dyn Read + Send>>,
}

impl Watch {
    /// The next changes (blocks until some come). An error ends the watch:
    /// watch again from the revision after the last change seen.
    pub fn changes(&mut self) -> Result<Vec<Change>> {
        loop {
            let mut line = String::new();
            // etcd's answers are bounded (a value is 1.5 MiB at most by
            // default); a line past this is not etcd speaking.
            match (&mut self.lines).take(WATCH_LINE_MAX).read_line(&mut line) {
                Ok(0) => return Err(EtcdError::Unavailable("the watch ended".into())),
                Ok(_) => {}
                Err(e) => return Err(EtcdError::Unavailable(format!("the watch broke: {e}"))),
            }
            if line.len() as u64 >= WATCH_LINE_MAX {
                return Err(EtcdError::Malformed(format!(
                    "a watch answer over {WATCH_LINE_MAX} bytes"
                )));
            }
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(&line)
                .map_err(|e| EtcdError::Malformed(format!("{e}: {}", line.trim())))?;
            if let Some(e) = etcd_error(&v) {
                return Err(EtcdError::Refused(e));
            }
            let result = &v["result"];
            if result["canceled"].as_bool() == Some(true) {
                return Err(EtcdError::Refused(format!(
                    "the watch was canceled{}",
                    match int(&result["compact_revision"]) {
                        0 => String::new(),
                        r => format!(": revisions before {r} are compacted"),
                    }
                )));
            }
            let Some(events) = result["events"].as_array() else {
                continue; // the creation's answer, or progress
            };
            return events
                .iter()
                .map(|e| {
                    if e["type"].as_str() == Some("DELETE") {
                        Ok(Change::Delete {
                            key: bytes(&e["kv"]["key"])?,
                            mod_revision: int(&e["kv"]["mod_revision"]),
                        })
                    } else {
                        kv(&e["kv"]).map(Change::Put)
                    }
                })
                .collect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_at_the_next_key_that_does_not_start_with_it() {
        assert_eq!(prefix_end(b"/d/"), b"/d0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn a_watch_reads_changes_and_refuses_an_endless_line() {
        let watch = |text: &'static [u8]| Watch {
            lines: BufReader::new(Box::new(text)),
        };
        let mut w = watch(
            b"{\"result\":{\"created\":true}}\n\
              {\"result\":{\"events\":[{\"kv\":{\"key\":\"L2s=\",\"value\":\"dg==\",\"mod_revision\":\"5\"}},\
              {\"type\":\"DELETE\",\"kv\":{\"key\":\"L2s=\",\"mod_revision\":\"6\"}}]}}\n",
        );
        let changes = w.changes().unwrap();
        assert!(
            matches!(&changes[0], Change::Put(kv) if kv.key == b"/k" && kv.value == b"v" && kv.mod_revision == 5)
        );
        assert_eq!(
            changes[1],
            Change::Delete {
                key: b"/k".to_vec(),
                mod_revision: 6
            }
        );
        assert!(
            matches!(w.changes(), Err(EtcdError::Unavailable(_))),
            "ended"
        );
        // A peer that never ends its line is cut off at the bound.
        let mut endless = Watch {
            lines: BufReader::new(Box::new(std::io::repeat(b'x'))),
        };
        assert!(matches!(endless.changes(), Err(EtcdError::Malformed(_))));
    }

    #[test]
    fn an_unreachable_cluster_is_an_error_not_a_hang() {
        // Nothing listens on port 1.
        let mut c = Client::new(&["127.0.0.1:1".into()], Duration::from_secs(2));
        assert!(matches!(c.grant(5), Err(EtcdError::Unavailable(_))));
        // No endpoint at all: an error that says so, not a panic.
        let mut none = Client::new(&[], Duration::from_secs(2));
        assert_eq!(none.endpoint(), None);
        assert_eq!(
            none.range(b"/k", false),
            Err(EtcdError::Unavailable("no etcd endpoint was given".into()))
        );
    }
}
