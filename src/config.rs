//! Options and their sources. One table (`OPTIONS`) names every option once;
//! switches, `DIRECTOR_*` environment variables and the YAML config file are
//! all read through it and merged with precedence
//! switch > environment > file > default into a validated `Config`.
//! Every error names where the bad value came from: the switch, the variable,
//! or the file and key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// What values an option takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Free text.
    Text,
    /// A TCP port, 1-65535.
    Port,
    /// A positive number of seconds (fractions allowed).
    Seconds,
    /// A whole number of things.
    Count,
    /// On or off; a switch takes no value.
    Flag,
    /// KEY=VALUE items separated by commas (a map or list in the file).
    Labels,
}

/// Which modes use an option (all accept every option, so one config file
/// serves both daemons).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Global,
    Server,
    Client,
}

/// One configurable option.
pub struct OptSpec {
    /// Long name with underscores, as used in the config file.
    pub name: &'static str,
    pub kind: Kind,
    pub scope: Scope,
    /// Shown in `--help`; `None` when the default is computed.
    pub default: Option<&'static str>,
    pub help: &'static str,
}

/// Every option director understands, in `--help` order.
pub const OPTIONS: &[OptSpec] = &[
    OptSpec { name: "mode", kind: Kind::Text, scope: Scope::Global, default: None, help: "what to run: server, client, exec, orchestrate or manage (or give it as the first word)" },
    OptSpec { name: "config_file", kind: Kind::Text, scope: Scope::Global, default: None, help: "YAML file of options; keys are the long option names (heartbeat_interval: 1)" },
    OptSpec { name: "shared_key", kind: Kind::Text, scope: Scope::Global, default: None, help: "secret shared by the server and its clients: the server's CURVE key is derived from it, and clients that know it are accepted at once (use 16+ random characters; prefer the environment or config file to the command line)" },
    OptSpec { name: "curve", kind: Kind::Text, scope: Scope::Global, default: Some("on"), help: "on: every port is encrypted and every node authenticated (CurveZMQ); off: nothing is, for a lab only" },
    OptSpec { name: "debug", kind: Kind::Flag, scope: Scope::Global, default: Some("false"), help: "log debug details, including every protocol message" },
    OptSpec { name: "job_port", kind: Kind::Port, scope: Scope::Global, default: Some("5555"), help: "TCP port for jobs and results" },
    OptSpec { name: "transfer_port", kind: Kind::Port, scope: Scope::Global, default: Some("5556"), help: "TCP port for file transfers" },
    OptSpec { name: "heartbeat_port", kind: Kind::Port, scope: Scope::Global, default: Some("5557"), help: "TCP port for heartbeats" },
    OptSpec { name: "heartbeat_interval", kind: Kind::Seconds, scope: Scope::Global, default: Some("60"), help: "seconds between heartbeats; a peer silent for 3 intervals is dead" },
    OptSpec { name: "socket_path", kind: Kind::Text, scope: Scope::Global, default: Some("/var/run/director.sock"), help: "UNIX socket between the server and the CLI" },
    OptSpec { name: "identity", kind: Kind::Text, scope: Scope::Global, default: None, help: "this node's name in the cluster (default: the host name)" },
    OptSpec { name: "bind_address", kind: Kind::Text, scope: Scope::Server, default: Some("*"), help: "address the server listens on (* for all)" },
    OptSpec { name: "socket_group", kind: Kind::Text, scope: Scope::Server, default: None, help: "group that may use the control socket (mode 0660); without it, only its owner may (0600)" },
    OptSpec { name: "api_port", kind: Kind::Port, scope: Scope::Server, default: None, help: "serve the HTTP API, the event stream, /metrics and the dashboard on this TCP port (off without it)" },
    OptSpec { name: "api_address", kind: Kind::Text, scope: Scope::Server, default: Some("127.0.0.1"), help: "address the API listens on; other than loopback only with --api-tls-cert and --api-tls-key" },
    OptSpec { name: "api_tls_cert", kind: Kind::Text, scope: Scope::Server, default: None, help: "PEM file of the API's TLS certificate chain (with --api-tls-key: the API speaks HTTPS only)" },
    OptSpec { name: "api_tls_key", kind: Kind::Text, scope: Scope::Server, default: None, help: "PEM file of the API's TLS private key" },
    OptSpec { name: "state_path", kind: Kind::Text, scope: Scope::Server, default: Some("/var/lib/director"), help: "directory for the server's job history, its node-key table and (without a shared key) its key pair, kept across restarts" },
    OptSpec { name: "job_retention", kind: Kind::Seconds, scope: Scope::Server, default: Some("604800"), help: "seconds a finished job is kept (default 7 days); unfinished jobs and runs still going are always kept" },
    OptSpec { name: "job_retention_count", kind: Kind::Count, scope: Scope::Server, default: Some("10000"), help: "most finished jobs kept; the oldest go first" },
    OptSpec { name: "etcd_endpoints", kind: Kind::Text, scope: Scope::Server, default: None, help: "etcd endpoints (http://HOST:PORT, separated by commas): this server is one of several sharing their state through etcd, one active and the others standing by to take over (see High availability in the README); without it, one server as usual" },
    OptSpec { name: "etcd_server", kind: Kind::Text, scope: Scope::Server, default: None, help: "etcd host, the original Director's spelling: with --etcd-port, the same as --etcd-endpoints http://HOST:PORT" },
    OptSpec { name: "etcd_port", kind: Kind::Port, scope: Scope::Server, default: Some("2379"), help: "etcd port for --etcd-server" },
    OptSpec { name: "etcd_prefix", kind: Kind::Text, scope: Scope::Server, default: Some("/director"), help: "where in etcd the servers of one cluster keep their leader key and log; servers with the same endpoints and prefix are one cluster" },
    OptSpec { name: "etcd_lease", kind: Kind::Seconds, scope: Scope::Server, default: Some("5"), help: "seconds the active server's lease in etcd lasts: a server that died is replaced within about this, one cut off from etcd stops acting within three quarters of it" },
    OptSpec { name: "server_address", kind: Kind::Text, scope: Scope::Client, default: Some("localhost"), help: "host name or IP address of the server; several separated by commas for servers on etcd (a standby tells the client where the active one is)" },
    OptSpec { name: "server_key", kind: Kind::Text, scope: Scope::Client, default: None, help: "the server's public key, as `director manage --show-key` prints it (Z85), or a file holding it; not needed with --shared-key" },
    OptSpec { name: "key_path", kind: Kind::Text, scope: Scope::Client, default: Some("/var/lib/director/node"), help: "directory for this node's key pair (node.key), created at first start; not the cache, which may be cleared" },
    OptSpec { name: "cache_ttl", kind: Kind::Seconds, scope: Scope::Client, default: Some("259200"), help: "seconds a cached success stays valid (default 72 hours)" },
    OptSpec { name: "labels", kind: Kind::Labels, scope: Scope::Client, default: None, help: "this node's labels, KEY=VALUE separated by commas (role=web,dc=fra); `--label KEY=VALUE` may be repeated; targets match them (`--target role=web`) and templates read them ({{ labels.role }})" },
    OptSpec { name: "cache_path", kind: Kind::Text, scope: Scope::Client, default: Some("/var/cache/director"), help: "directory for the client's cache: ARG and ENV values, successful steps" },
];

/// Where a value came from, so errors can point at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Switch,
    Env,
    File { path: PathBuf },
}

/// A raw value and its origin, before validation.
#[derive(Clone, Debug, PartialEq)]
pub struct Raw {
    pub value: RawValue,
    pub origin: Origin,
}

/// A value as the source gave it.
#[derive(Clone, Debug, PartialEq)]
pub enum RawValue {
    Text(String),
    Number(f64),
    Bool(bool),
}

/// Raw values by option name.
pub type RawOptions = BTreeMap<&'static str, Raw>;

/// Find an option by its long name, with `-` or `_` between words.
pub fn find(name: &str) -> Option<&'static OptSpec> {
    let name = name.replace('-', "_");
    OPTIONS.iter().find(|o| o.name == name)
}

/// The environment variable for an option: `DIRECTOR_` + upper snake case.
pub fn env_name(name: &str) -> String {
    format!("DIRECTOR_{}", name.to_ascii_uppercase())
}

/// Read every `DIRECTOR_*` variable in the table through `lookup`.
pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> RawOptions {
    OPTIONS
        .iter()
        .filter_map(|o| {
            let value = lookup(&env_name(o.name))?;
            Some((
                o.name,
                Raw {
                    value: RawValue::Text(value),
                    origin: Origin::Env,
                },
            ))
        })
        .collect()
}

/// Read a YAML config file: a map of option names to scalars.
pub fn from_file(path: &Path) -> Result<RawOptions> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("cannot read config file {}", path.display()), e))?;
    parse_file(path, &text)
}

fn parse_file(path: &Path, text: &str) -> Result<RawOptions> {
    let file_err = |msg: String| Error::Config(format!("config file {}: {msg}", path.display()));
    let doc: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| file_err(format!("invalid YAML: {e}")))?;
    let map = match doc {
        serde_yaml::Value::Null => return Ok(RawOptions::new()),
        serde_yaml::Value::Mapping(map) => map,
        _ => return Err(file_err("expected a map of option names to values".into())),
    };
    let mut out = RawOptions::new();
    for (key, value) in map {
        let key = match key {
            serde_yaml::Value::String(k) => k,
            other => return Err(file_err(format!("key {other:?} is not an option name"))),
        };
        let spec = find(&key)
            .filter(|o| o.name != "config_file")
            .ok_or_else(|| {
                let known = OPTIONS
                    .iter()
                    .map(|o| o.name)
                    .filter(|n| *n != "config_file");
                file_err(format!(
                    "unknown key '{key}'{}",
                    crate::cli::suggest::hint(&key, known.chain(["labels"]))
                ))
            })?;
        let value = match value {
            // `labels:` as a map (role: web) or a list (- role=web).
            serde_yaml::Value::Mapping(m) if spec.kind == Kind::Labels => {
                let mut items = Vec::new();
                for (k, v) in m {
                    match (scalar_text(&k), scalar_text(&v)) {
                        (Some(k), Some(v)) => items.push(format!("{k}={v}")),
                        _ => {
                            return Err(file_err(format!(
                                "key '{key}': each label is a name and a plain value"
                            )))
                        }
                    }
                }
                RawValue::Text(items.join(","))
            }
            serde_yaml::Value::Sequence(seq) if spec.kind == Kind::Labels => {
                let items: Option<Vec<String>> = seq.iter().map(scalar_text).collect();
                match items {
                    Some(items) => RawValue::Text(items.join(",")),
                    None => {
                        return Err(file_err(format!(
                            "key '{key}': each label is a KEY=VALUE string"
                        )))
                    }
                }
            }
            serde_yaml::Value::String(s) => RawValue::Text(s),
            serde_yaml::Value::Bool(b) => RawValue::Bool(b),
            serde_yaml::Value::Number(n) => match n.as_f64() {
                Some(f) => RawValue::Number(f),
                None => return Err(file_err(format!("key '{key}': number out of range"))),
            },
            _ => {
                return Err(file_err(format!(
                    "key '{key}': expected {}",
                    expected(spec)
                )))
            }
        };
        out.insert(
            spec.name,
            Raw {
                value,
                origin: Origin::File {
                    path: path.to_owned(),
                },
            },
        );
    }
    Ok(out)
}

/// A YAML scalar as text.
fn scalar_text(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn expected(spec: &OptSpec) -> &'static str {
    if spec.name == "curve" {
        return "on or off";
    }
    if spec.name == "shared_key" {
        return "a non-empty secret";
    }
    match spec.kind {
        Kind::Text => "a string",
        Kind::Port => "a port number (1-65535)",
        Kind::Seconds => "a positive number of seconds",
        Kind::Count => "a whole number (1 or more)",
        Kind::Flag => "true or false",
        Kind::Labels => "KEY=VALUE labels separated by commas",
    }
}

/// Merge sources, highest precedence first.
pub fn merge(layers: [RawOptions; 3]) -> RawOptions {
    let mut out = RawOptions::new();
    for layer in layers {
        for (k, v) in layer {
            out.entry(k).or_insert(v);
        }
    }
    out
}

/// Whether the ports use CurveZMQ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curve {
    /// Encrypted, and every peer authenticated by its key.
    On,
    /// Plain text, anyone can enroll: a lab only.
    Off,
}

/// A secret option value: never shown by `{:?}`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The validated options a daemon or the CLI runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub debug: bool,
    pub shared_key: Option<Secret>,
    pub curve: Curve,
    /// `--server-key` as given: a Z85 key or a file; read by the client.
    pub server_key: Option<String>,
    pub key_path: PathBuf,
    pub socket_group: Option<String>,
    pub job_port: u16,
    pub transfer_port: u16,
    pub heartbeat_port: u16,
    pub heartbeat_ivl: Duration,
    pub socket_path: PathBuf,
    pub identity: String,
    pub bind_address: String,
    pub state_path: PathBuf,
    /// How long a finished job is kept.
    pub job_retention: Duration,
    /// How many finished jobs are kept at most.
    pub job_retention_count: usize,
    pub server_address: String,
    pub cache_path: PathBuf,
    pub cache_ttl: Duration,
    /// This node's labels (`--label`).
    pub labels: crate::facts::Map,
    /// The HTTP API, if asked for.
    pub api: Option<ApiConfig>,
    /// Servers sharing their state through etcd, if asked for.
    pub etcd: Option<EtcdConfig>,
}

/// Where the servers of a cluster meet in etcd.
#[derive(Clone, Debug, PartialEq)]
pub struct EtcdConfig {
    /// `http://host:port` each.
    pub endpoints: Vec<String>,
    /// Key prefix, without a trailing slash.
    pub prefix: String,
    pub lease: Duration,
}

impl EtcdConfig {
    fn from_raw(
        endpoints: Option<String>,
        server: Option<String>,
        port: u16,
        prefix: String,
        lease: f64,
    ) -> Result<Option<EtcdConfig>> {
        let list = match (endpoints, server) {
            (Some(_), Some(_)) => {
                return Err(Error::Config(
                    "give --etcd-endpoints or --etcd-server, not both".into(),
                ))
            }
            (Some(e), None) => e,
            (None, Some(host)) => format!("http://{}", endpoint_host(&host, port)),
            (None, None) => return Ok(None),
        };
        let mut endpoints = Vec::new();
        for e in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let rest = e.strip_prefix("http://").ok_or_else(|| {
                Error::Config(format!(
                    "--etcd-endpoints: '{e}' is not http://HOST:PORT (etcd over TLS is not supported yet)"
                ))
            })?;
            let ok = rest
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok || rest.contains('/') {
                return Err(Error::Config(format!(
                    "--etcd-endpoints: '{e}' is not http://HOST:PORT"
                )));
            }
            endpoints.push(e.to_owned());
        }
        if endpoints.is_empty() {
            return Err(Error::Config("--etcd-endpoints: no endpoint given".into()));
        }
        let prefix = prefix.trim_end_matches('/').to_owned();
        if prefix.is_empty() || !prefix.starts_with('/') || prefix.chars().any(char::is_control) {
            return Err(Error::Config(format!(
                "--etcd-prefix: '{}' is not a key prefix like /director",
                prefix.escape_default()
            )));
        }
        Ok(Some(EtcdConfig {
            endpoints,
            prefix,
            // etcd counts leases in whole seconds.
            lease: Duration::from_secs(lease.ceil() as u64),
        }))
    }
}

/// `host:port`, an IPv6 address in brackets.
fn endpoint_host(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl Config {
    /// `--server-address` as a list: each server a client may find active.
    pub fn server_addresses(&self) -> Vec<String> {
        let list: Vec<String> = self
            .server_address
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        if list.is_empty() {
            vec![self.server_address.clone()]
        } else {
            list
        }
    }
}

/// Where and how the server serves its HTTP API.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiConfig {
    pub address: String,
    pub port: u16,
    /// The certificate chain and key files: HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl ApiConfig {
    fn from_raw(
        get: &dyn Fn(&'static str) -> Result<Option<String>>,
        port: Option<u16>,
    ) -> Result<Option<ApiConfig>> {
        let cert = get("api_tls_cert")?;
        let key = get("api_tls_key")?;
        let tls = match (cert, key) {
            (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
            (None, None) => None,
            (Some(_), None) => {
                return Err(Error::Config("--api-tls-cert needs --api-tls-key".into()))
            }
            (None, Some(_)) => {
                return Err(Error::Config("--api-tls-key needs --api-tls-cert".into()))
            }
        };
        let address = get("api_address")?.unwrap_or_else(|| "127.0.0.1".into());
        let Some(port) = port else {
            if tls.is_some() {
                return Err(Error::Config(
                    "--api-tls-cert and --api-tls-key need --api-port".into(),
                ));
            }
            return Ok(None);
        };
        let ip: std::net::IpAddr = address.parse().map_err(|_| {
            Error::Config(format!(
                "--api-address: '{address}' is not an IP address (the API binds one address)"
            ))
        })?;
        if tls.is_none() && !ip.is_loopback() {
            return Err(Error::Config(format!(
                "--api-address {address}: without TLS the API serves loopback only (tokens would cross the network in clear); give --api-tls-cert and --api-tls-key"
            )));
        }
        Ok(Some(ApiConfig { address, port, tls }))
    }
}

impl Config {
    /// Validate merged raw options; `hostname` supplies the default identity.
    pub fn from_raw(raw: &RawOptions, hostname: impl FnOnce() -> String) -> Result<Config> {
        let get = |name: &'static str| Value {
            spec: spec(name),
            raw: raw.get(name),
        };
        let identity = match get("identity").text()? {
            Some(id) => id,
            None => hostname(),
        };
        check_identity(&identity)?;
        // Below 10 ms the loops would spin on heartbeats; above a day is a typo.
        let ivl = get("heartbeat_interval").seconds_within(0.01, 86_400.0)?;
        let shared_key = get("shared_key").text()?;
        if shared_key.as_deref() == Some("") {
            return Err(get("shared_key").error("''"));
        }
        Ok(Config {
            debug: get("debug").flag()?,
            shared_key: shared_key.map(Secret),
            curve: get("curve").curve()?,
            server_key: get("server_key").text()?,
            key_path: PathBuf::from(get("key_path").text_or_default()?),
            socket_group: get("socket_group").text()?,
            job_port: get("job_port").port()?,
            transfer_port: get("transfer_port").port()?,
            heartbeat_port: get("heartbeat_port").port()?,
            heartbeat_ivl: crate::support::clock::secs(ivl),
            socket_path: PathBuf::from(get("socket_path").text_or_default()?),
            identity,
            bind_address: get("bind_address").text_or_default()?,
            state_path: PathBuf::from(get("state_path").text_or_default()?),
            job_retention: crate::support::clock::secs(
                get("job_retention").seconds_within(1.0, 100.0 * 365.0 * 86_400.0)?,
            ),
            job_retention_count: get("job_retention_count").count()?,
            server_address: get("server_address").text_or_default()?,
            cache_path: PathBuf::from(get("cache_path").text_or_default()?),
            cache_ttl: crate::support::clock::secs(
                get("cache_ttl").seconds_within(1.0, 10.0 * 365.0 * 86_400.0)?,
            ),
            labels: get("labels").labels()?,
            api: ApiConfig::from_raw(
                &|name| get(name).text(),
                match raw.get("api_port") {
                    Some(_) => Some(get("api_port").port()?),
                    None => None,
                },
            )?,
            etcd: EtcdConfig::from_raw(
                get("etcd_endpoints").text()?,
                get("etcd_server").text()?,
                get("etcd_port").port()?,
                get("etcd_prefix").text_or_default()?,
                // Below a second, etcd's own elections would depose us.
                get("etcd_lease").seconds_within(1.0, 3600.0)?,
            )?,
        })
    }
}

/// A node name is 1-255 bytes of printable text (it was a ZeroMQ routing
/// id, and it is shown in one-line logs and tables).
pub fn check_identity(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 255 || id.starts_with('\0') || id.chars().any(char::is_control) {
        return Err(Error::Config(format!(
            "invalid identity '{}': a node name is 1-255 bytes of printable text",
            id.escape_default()
        )));
    }
    Ok(())
}

fn spec(name: &str) -> &'static OptSpec {
    // The names passed here are literals in this module; a miss is our bug.
    OPTIONS
        .iter()
        .find(|o| o.name == name)
        .expect("option is in OPTIONS")
}

/// One option's raw value with the helpers that validate it.
struct Value<'a> {
    spec: &'static OptSpec,
    raw: Option<&'a Raw>,
}

impl Value<'_> {
    fn error(&self, shown: &str) -> Error {
        let what = expected(self.spec);
        let msg = match self.raw.map(|r| &r.origin) {
            Some(Origin::File { path }) => {
                format!(
                    "config file {}: key '{}': expected {what}, got {shown}",
                    path.display(),
                    self.spec.name
                )
            }
            Some(Origin::Env) => {
                format!("{}: expected {what}, got {shown}", env_name(self.spec.name))
            }
            _ => format!(
                "--{}: expected {what}, got {shown}",
                self.spec.name.replace('_', "-")
            ),
        };
        Error::Config(msg)
    }

    /// The value, else the table's default, as a raw value.
    fn value(&self) -> Option<RawValue> {
        match self.raw {
            Some(r) => Some(r.value.clone()),
            None => self.spec.default.map(|d| RawValue::Text(d.to_owned())),
        }
    }

    fn text(&self) -> Result<Option<String>> {
        match self.value() {
            None => Ok(None),
            Some(RawValue::Text(s)) => Ok(Some(s)),
            Some(RawValue::Number(n)) => Ok(Some(n.to_string())),
            Some(RawValue::Bool(b)) => Err(self.error(&b.to_string())),
        }
    }

    fn labels(&self) -> Result<crate::facts::Map> {
        let text = self.text()?.unwrap_or_default();
        crate::facts::parse_labels(&text).map_err(|e| {
            let Error::Config(msg) = self.error(&format!("'{text}'")) else {
                return Error::Config(e);
            };
            // The place, then what is wrong with it.
            let place = msg.split(": expected").next().unwrap_or_default();
            Error::Config(format!("{place}: {e}"))
        })
    }

    fn text_or_default(&self) -> Result<String> {
        Ok(self.text()?.unwrap_or_default())
    }

    fn number(&self) -> Result<f64> {
        match self.value() {
            Some(RawValue::Number(n)) => Ok(n),
            Some(RawValue::Text(s)) => s
                .trim()
                .parse::<f64>()
                .map_err(|_| self.error(&format!("'{s}'"))),
            Some(RawValue::Bool(b)) => Err(self.error(&b.to_string())),
            None => Err(self.error("nothing")),
        }
    }

    fn port(&self) -> Result<u16> {
        let n = self.number()?;
        if n.fract() != 0.0 || !(1.0..=65535.0).contains(&n) {
            return Err(self.error(&n.to_string()));
        }
        Ok(n as u16)
    }

    fn count(&self) -> Result<usize> {
        let n = self.number()?;
        if n.fract() != 0.0 || !(1.0..=1e9).contains(&n) {
            return Err(self.error(&n.to_string()));
        }
        Ok(n as usize)
    }

    fn seconds_within(&self, min: f64, max: f64) -> Result<f64> {
        let n = self.number()?;
        if !(min..=max).contains(&n) {
            return Err(self.error(&n.to_string()));
        }
        Ok(n)
    }

    fn curve(&self) -> Result<Curve> {
        match self.value() {
            Some(RawValue::Bool(true)) => Ok(Curve::On),
            Some(RawValue::Bool(false)) => Ok(Curve::Off),
            Some(RawValue::Text(s)) => match s.to_ascii_lowercase().as_str() {
                "on" | "true" | "yes" | "1" => Ok(Curve::On),
                "off" | "false" | "no" | "0" => Ok(Curve::Off),
                _ => Err(self.error(&format!("'{s}'"))),
            },
            Some(RawValue::Number(n)) => Err(self.error(&n.to_string())),
            None => Ok(Curve::On),
        }
    }

    fn flag(&self) -> Result<bool> {
        match self.value() {
            Some(RawValue::Bool(b)) => Ok(b),
            Some(RawValue::Text(s)) => match s.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" | "" => Ok(false),
                _ => Err(self.error(&format!("'{s}'"))),
            },
            Some(RawValue::Number(n)) => Err(self.error(&n.to_string())),
            None => Ok(false),
        }
    }
}

/// The machine's host name, the default identity.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // within it or truncates, and we stop at the first NUL either way.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sw(pairs: &[(&'static str, &str)]) -> RawOptions {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    *k,
                    Raw {
                        value: RawValue::Text(v.to_string()),
                        origin: Origin::Switch,
                    },
                )
            })
            .collect()
    }

    fn cfg(raw: &RawOptions) -> Result<Config> {
        Config::from_raw(raw, || "host-a".into())
    }

    #[test]
    fn labels_come_as_a_map_a_list_or_text_and_a_bad_one_is_placed() {
        let f = Path::new("/etc/d.yaml");
        let map = parse_file(f, "labels:\n  role: web\n  rack: 12\n").unwrap();
        assert_eq!(
            cfg(&map).unwrap().labels,
            [
                ("rack".to_owned(), "12".to_owned()),
                ("role".into(), "web".into())
            ]
            .into()
        );
        let list = parse_file(f, "labels: [role=db, dc=fra]\n").unwrap();
        assert_eq!(cfg(&list).unwrap().labels.len(), 2);
        let e = cfg(&parse_file(f, "labels: role\n").unwrap()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config file /etc/d.yaml: key 'labels': label 'role' is not KEY=VALUE"
        );
        let env = from_env(|k| (k == "DIRECTOR_LABELS").then(|| "a=1,b c=2".into()));
        let e = cfg(&env).unwrap_err().to_string();
        assert!(e.starts_with("DIRECTOR_LABELS: label 'b c=2'"), "{e}");
        assert!(parse_file(f, "labels: [[x]]\n").is_err());
    }

    #[test]
    fn defaults_apply() {
        let c = cfg(&RawOptions::new()).unwrap();
        assert_eq!(c.job_port, 5555);
        assert_eq!(c.transfer_port, 5556);
        assert_eq!(c.heartbeat_port, 5557);
        assert_eq!(c.heartbeat_ivl, Duration::from_secs(60));
        assert_eq!(c.socket_path, PathBuf::from("/var/run/director.sock"));
        assert_eq!(c.identity, "host-a");
        assert_eq!(c.bind_address, "*");
        assert_eq!(c.server_address, "localhost");
        assert!(!c.debug);
    }

    #[test]
    fn precedence_is_switch_env_file_default() {
        let file = parse_file(
            Path::new("c.yaml"),
            "job_port: 1\ntransfer_port: 2\nheartbeat_port: 3\n",
        )
        .unwrap();
        let env = from_env(|k| match k {
            "DIRECTOR_JOB_PORT" | "DIRECTOR_TRANSFER_PORT" => Some("20".into()),
            _ => None,
        });
        let c = cfg(&merge([sw(&[("job_port", "300")]), env, file])).unwrap();
        assert_eq!(
            (c.job_port, c.transfer_port, c.heartbeat_port),
            (300, 20, 3)
        );
    }

    #[test]
    fn file_errors_name_file_and_key() {
        let e = parse_file(Path::new("/etc/d.yaml"), "heartbeat_intervall: 1\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "config file /etc/d.yaml: unknown key 'heartbeat_intervall' (did you mean heartbeat_interval?)"
        );
        let raw = parse_file(Path::new("/etc/d.yaml"), "job_port: hello\n").unwrap();
        let e = cfg(&raw).unwrap_err().to_string();
        assert!(e.contains("/etc/d.yaml") && e.contains("job_port"), "{e}");
        let raw = parse_file(Path::new("d.yaml"), "debug: 3\n").unwrap();
        assert!(cfg(&raw).unwrap_err().to_string().contains("key 'debug'"));
        let e = parse_file(Path::new("d.yaml"), "job_port: [1]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("key 'job_port'"), "{e}");
        let e = parse_file(Path::new("d.yaml"), "job_port: 1\n  x: : :\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid YAML") && e.contains("line"), "{e}");
    }

    #[test]
    fn file_accepts_dashes_and_typed_values() {
        let raw = parse_file(
            Path::new("d.yaml"),
            "heartbeat-interval: 0.5\ndebug: true\nshared_key: 1234\n",
        )
        .unwrap();
        let c = cfg(&raw).unwrap();
        assert_eq!(c.heartbeat_ivl, Duration::from_millis(500));
        assert!(c.debug);
        assert_eq!(c.shared_key, Some(Secret("1234".into())));
        assert_eq!(format!("{:?}", c.shared_key), "Some(Secret(..))");
    }

    #[test]
    fn bad_values_are_refused_naming_the_source() {
        let e = cfg(&sw(&[("job_port", "70000")])).unwrap_err().to_string();
        assert_eq!(e, "--job-port: expected a port number (1-65535), got 70000");
        let env = from_env(|k| (k == "DIRECTOR_HEARTBEAT_INTERVAL").then(|| "soon".into()));
        let e = cfg(&env).unwrap_err().to_string();
        assert!(e.starts_with("DIRECTOR_HEARTBEAT_INTERVAL:"), "{e}");
        assert!(cfg(&sw(&[("heartbeat_interval", "0")])).is_err());
        assert!(cfg(&sw(&[("identity", "")])).is_err());
    }
}
