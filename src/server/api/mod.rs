//! The HTTP API, the event stream, `/metrics` and the dashboard, on the
//! server's own loop (`--api-port`): no async runtime, no thread per
//! connection. Each connection is a `Conn` (TCP, or TLS through rustls's
//! sans-io `ServerConnection`); a request is routed (`routes`) to the same
//! control requests the CLI sends, checked against its token's role, and
//! handed to the core under the connection's token; the core's answers
//! come back as notes and render as JSON. Without TLS the API binds
//! loopback only (`config::ApiConfig`).
//!
//! Bounds: `MAX_CONNS` connections; a request head within `HEAD_TIMEOUT`
//! of its first byte (slowloris), an idle keep-alive connection closed
//! after `IDLE_TIMEOUT`; heads and bodies bounded in `http`; an event
//! reader dropped past `events::SLOW` unread bytes.

mod conn;
pub mod events;
pub mod host;
pub mod http;
pub mod metrics;
pub mod routes;
mod serve;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::Token;

use crate::config::ApiConfig;
use crate::error::{Error, Result};
use crate::support::hash::Map as HashMap;

pub use conn::{Conn, State};

/// Connections served at once; past it, new ones get a 503 and are closed.
pub const MAX_CONNS: usize = 4096;
/// How long a request's head and body may take to arrive.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a kept-alive connection may sit idle between requests.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How often idle event streams get a comment line (proxies and dead
/// peers show themselves).
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// How often event streams are written to (their events batched).
pub const EVENTS_EVERY: Duration = Duration::from_millis(25);
/// An event stream holding this much is written at once.
pub const EVENTS_BATCH: usize = 64 << 10;
/// How long a dropped reader has to take its last event before it is cut.
pub const DROP_GRACE: Duration = Duration::from_secs(5);
/// How long the cluster's counts for `/metrics` are reused.
pub const COUNTS_TTL: Duration = Duration::from_secs(1);
/// How often deadlines are looked at.
const SWEEP: Duration = Duration::from_secs(1);

/// The dashboard: one page, in the binary.
pub const DASHBOARD: &str = include_str!("dashboard.html");

/// The API's listener and connections.
pub struct Api {
    pub listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    pub conns: HashMap<Token, Conn>,
    pub bus: events::Bus,
    pub metrics: metrics::Metrics,
    next_sweep: Instant,
    last_keepalive: Instant,
    /// When event streams were last written.
    events_flushed: Instant,
    /// Events were queued since.
    events_pending: bool,
    /// The cluster's gauges, as last counted.
    counts: Option<(Instant, crate::server::cluster::Counts)>,
    /// Failed authentications said, at most once a minute.
    auth_log: crate::support::ratelog::Every,
    /// Header lines every response carries (a standby says so in them).
    pub headers: String,
}

impl Api {
    /// Bind as `cfg` says; TLS files are read and checked here, so a bad
    /// one stops the server at start with its path.
    pub fn bind(cfg: &ApiConfig, now: Instant) -> Result<Api> {
        let tls = match &cfg.tls {
            Some((cert, key)) => Some(Arc::new(tls_config(cert, key)?)),
            None => None,
        };
        let addr: std::net::SocketAddr = format!("{}:{}", bracket(&cfg.address), cfg.port)
            .parse()
            .map_err(|_| {
                Error::Config(format!(
                    "--api-address '{}' is not an IP address",
                    cfg.address
                ))
            })?;
        let listener = TcpListener::bind(addr)
            .map_err(|e| Error::io(format!("cannot bind the API to {addr}"), e))?;
        Ok(Api {
            listener,
            tls,
            conns: HashMap::default(),
            bus: events::Bus::default(),
            metrics: metrics::Metrics::default(),
            next_sweep: now + SWEEP,
            last_keepalive: now,
            events_flushed: now,
            events_pending: false,
            auth_log: crate::support::ratelog::Every::minute(),
            counts: None,
            headers: String::new(),
        })
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// When the API next has deadlines to look at, or event streams to
    /// write.
    pub fn next_deadline(&self) -> Instant {
        if self.events_pending {
            self.next_sweep.min(self.events_flushed + EVENTS_EVERY)
        } else {
            self.next_sweep
        }
    }

    /// Hand the events published since the last batch to every reader of
    /// the whole stream, one shared buffer for all; one too far behind
    /// gets a last `dropped` event and is closed.
    fn deal_batch(&mut self, now: Instant) {
        let Some((batch, before)) = self.bus.seal() else {
            return;
        };
        for conn in self.conns.values_mut() {
            if !matches!(&conn.state, conn::State::Events(f) if f.job.is_none()) || conn.closing {
                continue;
            }
            if !conn.push_batch(&batch, before, now, DROP_GRACE) {
                log::warn!("API: event reader {} fell behind; dropped", conn.peer);
            }
        }
    }

    /// How many connections read the whole event stream.
    pub fn event_readers(&self) -> usize {
        self.conns
            .values()
            .filter(|c| matches!(&c.state, conn::State::Events(f) if f.job.is_none()))
            .count()
    }
}

fn bracket(addr: &str) -> String {
    if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_owned()
    }
}

/// The TLS configuration from PEM files: the certificate chain, and its
/// key (PKCS#8, PKCS#1 or SEC1).
fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| Error::Config(format!("--api-tls-cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "--api-tls-cert {}: no certificate in it (a PEM file with BEGIN CERTIFICATE)",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::Config(format!("--api-tls-key {}: {e}", key.display())))?;
    // ring, not aws-lc-rs (cmake and a long C build in CI): its provider
    // lacks only the post-quantum key exchange, hence the deprecation.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| Error::Config(format!("--api-tls-cert/--api-tls-key: {e}")))
}
