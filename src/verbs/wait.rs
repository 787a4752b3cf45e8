//! `WAIT`: between steps, until something holds. Exactly one of
//! `--seconds N` (a timer), `--url URL` (an `http://` URL answers 2xx or
//! 3xx) or `--cmd COMMAND` (the rest of the line, a template as RUN's,
//! exits 0), tried up to `--retry N` more times `--retry-wait SECONDS`
//! apart (Directord's defaults: 30 and 1). A wait that runs out fails the
//! job. It changes nothing on the node: `unchanged` when it holds.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Flag;

/// What to wait for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Until {
    /// Milliseconds.
    Seconds(u64),
    Url(String),
    /// A template, rendered as RUN's command is.
    Cmd(String),
}

/// A WAIT job's arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wait {
    pub until: Until,
    /// Tries after the first.
    pub retry: u32,
    pub retry_wait_ms: u64,
}

pub const DEFAULT_RETRY: u32 = 30;
pub const DEFAULT_RETRY_WAIT_MS: u64 = 1000;
/// The most tries a WAIT may ask for.
pub const MAX_RETRY: u32 = 100_000;

pub const OPTIONS: &[(&str, bool)] = &[
    ("seconds", true),
    ("url", true),
    ("cmd", false),
    ("retry", true),
    ("retry-wait", true),
    ("insecure", false),
];

pub fn parse(flags: Vec<Flag>, rest: &str) -> Result<Wait, String> {
    let mut until = Vec::new();
    let mut retry = DEFAULT_RETRY;
    let mut retry_wait_ms = DEFAULT_RETRY_WAIT_MS;
    for (name, value) in flags {
        let v = value.unwrap_or_default();
        match name {
            "seconds" => until.push(Until::Seconds(
                crate::dsl::parse_secs_ms(&v, 31_536_000).ok_or_else(|| {
                    format!("WAIT option --seconds: '{v}' is not a number of seconds")
                })?,
            )),
            "url" => {
                parse_url(&v).map_err(|e| format!("WAIT option --url: {e}"))?;
                until.push(Until::Url(v));
            }
            "cmd" => until.push(Until::Cmd(String::new())),
            "retry" => {
                retry = v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n <= MAX_RETRY)
                    .ok_or_else(|| format!("WAIT option --retry: '{v}' is not a whole number from 0 to {MAX_RETRY}"))?
            }
            "retry-wait" => {
                retry_wait_ms = crate::dsl::parse_secs_ms(&v, 86_400).ok_or_else(|| {
                    format!("WAIT option --retry-wait: '{v}' is not a number of seconds from 0 to 86400")
                })?
            }
            // Directord's: certificates are not checked by the http://
            // URLs WAIT takes anyway.
            _ => {}
        }
    }
    let mut until = match until.len() {
        1 => until.remove(0),
        0 => return Err("WAIT needs one of --seconds N, --url URL or --cmd COMMAND".into()),
        _ => return Err("WAIT takes only one of --seconds, --url and --cmd".into()),
    };
    match &mut until {
        Until::Cmd(cmd) => {
            if rest.is_empty() {
                return Err("WAIT --cmd needs a command".into());
            }
            crate::template::check(rest).map_err(|e| format!("WAIT command: {e}"))?;
            *cmd = rest.to_owned();
        }
        _ if !rest.is_empty() => {
            return Err(format!(
                "WAIT: unexpected '{rest}' (only --cmd takes the rest of the line)"
            ))
        }
        _ => {}
    }
    Ok(Wait {
        until,
        retry,
        retry_wait_ms,
    })
}

impl Wait {
    pub fn args(&self) -> String {
        let mut out = Vec::new();
        let tries = !matches!(self.until, Until::Seconds(_));
        if tries && self.retry != DEFAULT_RETRY {
            out.push(format!("--retry {}", self.retry));
        }
        if tries && self.retry_wait_ms != DEFAULT_RETRY_WAIT_MS {
            out.push(format!(
                "--retry-wait {}",
                crate::dsl::secs_text(self.retry_wait_ms)
            ));
        }
        match &self.until {
            Until::Seconds(ms) => out.push(format!("--seconds {}", crate::dsl::secs_text(*ms))),
            Until::Url(u) => out.push(format!("--url {u}")),
            Until::Cmd(c) => out.push(format!("--cmd {c}")),
        }
        out.join(" ")
    }
}

/// An `http://` URL's host, port and path.
pub fn parse_url(url: &str) -> Result<(String, u16, String), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        if url.starts_with("https://") {
            return Err(format!(
                "'{url}': https is not checked by WAIT --url; use WAIT --cmd curl -fsS {url}"
            ));
        }
        return Err(format!("'{url}' is not an http:// URL"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("'{url}': the port '{p}' is not a number"))?,
        ),
        _ => (authority, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("'{url}' is not a valid http:// URL"));
    }
    Ok((host.to_owned(), port, path.to_owned()))
}

/// One try of `url` (on the I/O thread: a name lookup and a connect may
/// block, each for at most `limit`): the status line when the answer is
/// 2xx or 3xx, why not otherwise.
pub fn probe(url: &str, limit: Duration) -> Result<String, String> {
    let (host, port, path) = parse_url(url)?;
    let addrs: Vec<_> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("{url}: the name '{host}' does not resolve ({e})"))?
        .collect();
    let mut last = format!("{url}: the name '{host}' resolves to no address");
    for a in addrs {
        let mut s = match TcpStream::connect_timeout(&a, limit) {
            Ok(s) => s,
            Err(e) => {
                last = format!("{url}: cannot connect to {a} ({e})");
                continue;
            }
        };
        let _ = s.set_read_timeout(Some(limit));
        let _ = s.set_write_timeout(Some(limit));
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: director\r\nConnection: close\r\n\r\n"
        );
        if let Err(e) = s.write_all(req.as_bytes()) {
            last = format!("{url}: cannot send the request ({e})");
            continue;
        }
        let mut head = [0u8; 256];
        let mut n = 0;
        while n < head.len() && !head[..n].contains(&b'\n') {
            match s.read(&mut head[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => {
                    return Err(format!("{url}: no answer ({e})"));
                }
            }
        }
        let line = String::from_utf8_lossy(&head[..n]);
        let line = line.lines().next().unwrap_or("").trim().to_owned();
        let code = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok());
        return match code {
            Some(200..=399) => Ok(line),
            Some(_) => Err(format!("{url} answered '{line}'")),
            None => Err(format!("{url}: not an HTTP answer ('{line}')")),
        };
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_condition() {
        let w = parse(vec![("seconds", Some("1.5".into()))], "").unwrap();
        assert_eq!(w.until, Until::Seconds(1500));
        assert_eq!(w.args(), "--seconds 1.5");
        let w = parse(
            vec![
                ("cmd", None),
                ("retry", Some("2".into())),
                ("retry-wait", Some("0.1".into())),
            ],
            "test -f /x",
        )
        .unwrap();
        assert_eq!(w.args(), "--retry 2 --retry-wait 0.1 --cmd test -f /x");
        assert_eq!(w.until, Until::Cmd("test -f /x".into()));
        assert!(parse(vec![], "").unwrap_err().contains("needs one of"));
        assert!(
            parse(vec![("seconds", Some("1".into())), ("cmd", None)], "x")
                .unwrap_err()
                .contains("only one")
        );
        assert!(parse(vec![("url", Some("https://a".into()))], "")
            .unwrap_err()
            .contains("WAIT --cmd curl"));
        assert!(parse(vec![("seconds", Some("x".into()))], "").is_err());
        assert!(parse(vec![("seconds", Some("1".into()))], "extra").is_err());
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:8080/health?x=1").unwrap(),
            ("127.0.0.1".into(), 8080, "/health?x=1".into())
        );
        assert_eq!(parse_url("http://h").unwrap(), ("h".into(), 80, "/".into()));
        assert_eq!(
            parse_url("http://[::1]:81/").unwrap(),
            ("::1".into(), 81, "/".into())
        );
        assert!(parse_url("http://h:x/").is_err());
        assert!(parse_url("ftp://h/").is_err());
    }

    #[test]
    fn a_probe_reads_the_status_line() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            for code in ["204 No Content", "503 Unavailable"] {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf);
                let _ = s.write_all(format!("HTTP/1.1 {code}\r\n\r\n").as_bytes());
            }
        });
        let url = format!("http://127.0.0.1:{port}/");
        assert_eq!(
            probe(&url, Duration::from_secs(5)).unwrap(),
            "HTTP/1.1 204 No Content"
        );
        assert!(probe(&url, Duration::from_secs(5))
            .unwrap_err()
            .contains("503"));
        t.join().unwrap();
    }
}
