//! A standby's job port: a node that reaches a standby (its address is
//! one of several a client was given) is told where the active server is,
//! and moves there at once rather than trying the addresses in turn.
//! Nothing else is served: every message is answered with `Standby`.
//!
//! With CURVE the port uses the servers' one key pair, so only clients
//! that trust it can speak to it; it has no ZAP handler (libzmq then lets
//! every such client in): a node is not admitted here, only told where to
//! go, which its own `--server-address` list already says.

use mio::{Registry, Token};

use crate::config::{Config, Curve};
use crate::error::{Error, Result};
use crate::reactor::zmq::{endpoint, PortSpec, Security, ZmqPort};
use crate::wire::{self, ServerMsg};

/// Messages read per pass: a flood of them is answered a batch at a time.
const BUDGET: usize = 256;

/// The server's job port, but a node asks once per connection: one that
/// asks more is answered within this bound and dropped past it.
const SPEC: PortSpec = PortSpec {
    peer_cap: 4,
    ..super::super::JOB_PORT
};

pub struct Redirect {
    port: ZmqPort,
    // Dropped after the port (fields drop in order): the context's end
    // waits for its sockets.
    _ctx: zmq::Context,
}

impl Redirect {
    pub fn bind(cfg: &Config, registry: &Registry, token: Token) -> Result<Redirect> {
        let ctx = zmq::Context::new();
        let pair = match cfg.curve {
            Curve::On => Some(crate::server::server_key_pair(cfg)?.0),
            Curve::Off => None,
        };
        let security = match &pair {
            Some(p) => Security::CurveServer { secret: &p.secret },
            None => Security::Plain,
        };
        let ep = endpoint(&cfg.bind_address, cfg.job_port);
        let port = ZmqPort::bind(&ctx, SPEC, &ep, security, registry, token)
            .map_err(|e| Error::zmq(format!("cannot bind the job socket to {ep}"), e))?;
        Ok(Redirect { port, _ctx: ctx })
    }

    pub fn mark_ready(&mut self) {
        self.port.mark_ready();
    }

    /// Answer what came with where the active server is: `leader`, at
    /// `address` (`None` while no server leads). True when more waits to
    /// be read or sent: serve again at once.
    pub fn serve(&mut self, leader: Option<&str>, address: Option<&str>) -> bool {
        let done = match self.port.service(BUDGET) {
            Ok(d) => d,
            Err(e) => {
                log::warn!("job port: {e}");
                return false;
            }
        };
        if done.received.is_empty() {
            return done.busy || self.port.has_backlog();
        }
        let answer = ServerMsg::Standby {
            leader: leader.map(str::to_owned),
            address: address.map(str::to_owned),
        };
        for m in done.received {
            let Some(id) = m.frames.first() else { continue };
            log::debug!(
                "job -> {}: {}",
                m.peer_address.as_deref().unwrap_or("a node"),
                answer.describe()
            );
            let mut frames = vec![id.clone()];
            frames.extend(wire::encode(&answer));
            self.port.queue(frames);
        }
        // Sent now, not at the next event.
        let _ = self.port.service(0);
        done.busy || self.port.has_backlog()
    }
}
