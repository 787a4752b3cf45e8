//! The API's connection handling, for any loop that serves it: the active
//! server (answers from its core) and a standby (answers from its
//! replica). A host owns the `Api` and says who a token is and how a
//! routed request is answered; accepting, reading, authorizing,
//! responding, deadlines and closing are the same for both.

use std::time::Instant;

use mio::{Interest, Registry, Token};

use super::conn::{Conn, Inbound, State};
use super::routes::{self, Route};
use super::{http, Api, HEAD_TIMEOUT, IDLE_TIMEOUT, KEEPALIVE, MAX_CONNS, SWEEP};
use crate::server::tokens::Caller;
use crate::wire::Role;

pub const JSON: &str = "application/json";
/// Prometheus's text exposition.
pub const METRICS: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Answers a connection may leave unread before its next request waits.
const PIPELINE_BACKLOG: usize = 1 << 20;

/// What a loop serving the API provides.
pub trait Host {
    fn api(&mut self) -> Option<&mut Api>;
    fn registry(&self) -> &Registry;
    fn next_token(&mut self) -> Token;
    /// Who an API token's secret belongs to.
    fn authenticate(&mut self, secret: &str) -> Option<Caller>;
    /// A request routed and allowed: metrics, an event stream, or a
    /// request for the core.
    fn serve(&mut self, token: Token, route: Route, caller: Caller, req: &http::Request);
    /// The connection is gone; `readers` of the whole event stream remain.
    fn closed(&mut self, token: Token, readers: usize);
}

pub fn accept<H: Host>(h: &mut H) {
    loop {
        let Some(api) = h.api() else { return };
        let (mut stream, addr) = match api.listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("API: accept failed: {e}");
                return;
            }
        };
        if api.conns.len() >= MAX_CONNS {
            // Best effort: it is closed either way.
            let body = http::error_body("too many connections; try again later");
            let _ = std::io::Write::write(&mut stream, &http::response(503, JSON, &body, true));
            api.metrics.api(503);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let tls = match &api.tls {
            Some(cfg) => match rustls::ServerConnection::new(cfg.clone()) {
                Ok(c) => Some(c),
                Err(e) => {
                    log::warn!("API: cannot start TLS for {addr}: {e}");
                    continue;
                }
            },
            None => None,
        };
        let token = h.next_token();
        let mut conn = Conn::new(stream, tls, Instant::now() + HEAD_TIMEOUT, addr.to_string());
        if let Err(e) = h.registry().register(
            &mut conn.stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("API: cannot watch a connection from {addr}: {e}; closed");
            continue;
        }
        if let Some(api) = h.api() {
            api.conns.insert(token, conn);
        }
        // Bytes may have come before the registration.
        handle(h, token);
    }
}

/// The connection's socket is ready: write what waits, read what came,
/// and serve the requests it holds, one at a time.
pub fn handle<H: Host>(h: &mut H, token: Token) {
    let Some(conn) = h.api().and_then(|a| a.conns.get_mut(&token)) else {
        return;
    };
    if conn.flush().is_err() {
        return close(h, token);
    }
    if conn.closing {
        if !conn.has_output() {
            close(h, token);
        }
        return;
    }
    let idle = !conn.reader.is_partial();
    let closed = matches!(conn.read(), Inbound::Closed);
    // A request begun on a kept-alive connection has the head timeout
    // from its first byte, not the idle one.
    if idle && conn.reader.is_partial() && matches!(conn.state, State::Reading) {
        conn.deadline = conn.deadline.min(Instant::now() + HEAD_TIMEOUT);
    }
    serve_requests(h, token);
    if closed {
        // A peer that stopped writing may still read an answer it is
        // waiting for, or the rest of one; one with nothing pending is
        // gone.
        let Some(c) = h.api().and_then(|a| a.conns.get_mut(&token)) else {
            return;
        };
        let waiting = (matches!(c.state, State::Waiting(_)) || c.has_output())
            && !matches!(c.state, State::Events(_));
        if waiting {
            c.closing = true;
        } else {
            close(h, token);
        }
    }
}

/// Take whole requests from the connection's buffer while it is free to
/// answer one.
fn serve_requests<H: Host>(h: &mut H, token: Token) {
    loop {
        let Some(conn) = h.api().and_then(|a| a.conns.get_mut(&token)) else {
            return;
        };
        if !matches!(conn.state, State::Reading) || conn.closing {
            return;
        }
        // A client that sends requests without reading the answers gets
        // no more answered until it reads: what it makes us hold stays
        // bounded.
        if conn.backlog() > PIPELINE_BACKLOG {
            return;
        }
        match conn.reader.next() {
            Ok(None) => {
                // A body on its way from a stranger is not waited for.
                if conn.body_checked {
                    return;
                }
                let Some(bearer) = conn.reader.body_pending() else {
                    return;
                };
                conn.body_checked = true;
                let known = bearer.is_some_and(|b| h.authenticate(&b).is_some());
                if !known {
                    let msg =
                        "a request with a body needs a valid token: send `Authorization: Bearer TOKEN`";
                    respond(h, token, 401, &http::error_body(msg), true);
                }
                return;
            }
            Ok(Some(req)) => {
                conn.body_checked = false;
                request(h, token, req)
            }
            Err(refused) => {
                log::debug!("API: {} sent a bad request: {}", conn.peer, refused.message);
                respond(
                    h,
                    token,
                    refused.status,
                    &http::error_body(&refused.message),
                    true,
                );
                return;
            }
        }
    }
}

/// Queue a whole JSON response; the connection reads the next request (or
/// closes) once it is written.
pub fn respond<H: Host>(h: &mut H, token: Token, status: u16, body: &[u8], close: bool) {
    respond_typed(h, token, status, JSON, body, close);
}

pub fn respond_typed<H: Host>(
    h: &mut H,
    token: Token,
    status: u16,
    content_type: &str,
    body: &[u8],
    close_after: bool,
) {
    let Some(api) = h.api() else { return };
    api.metrics.api(status);
    let headers = api.headers.clone();
    let Some(conn) = api.conns.get_mut(&token) else {
        return;
    };
    let close_after = close_after || conn.closing;
    conn.queue(&http::response_with(
        status,
        content_type,
        body,
        close_after,
        &headers,
    ));
    conn.state = State::Reading;
    conn.deadline = Instant::now() + IDLE_TIMEOUT;
    if close_after {
        conn.closing = true;
    }
    if conn.flush().is_err() {
        return close(h, token);
    }
    if close_after && !conn.has_output() {
        return close(h, token);
    }
    // A pipelined request may be waiting in the buffer.
    serve_requests(h, token);
}

/// Route a request, answer what needs no token, check the token's role,
/// and hand the rest to the host.
fn request<H: Host>(h: &mut H, token: Token, req: http::Request) {
    let route = match routes::route(&req) {
        Ok(r) => r,
        Err((status, msg)) => return respond(h, token, status, &http::error_body(&msg), req.close),
    };
    let need = match &route {
        Route::Dashboard => {
            return respond_typed(
                h,
                token,
                200,
                "text/html; charset=utf-8",
                super::DASHBOARD.as_bytes(),
                req.close,
            )
        }
        Route::Health => {
            let body = format!(
                "{{\"ok\":true,\"version\":\"{}\"}}\n",
                env!("CARGO_PKG_VERSION")
            );
            return respond(h, token, 200, body.as_bytes(), req.close);
        }
        Route::Metrics | Route::WhoAmI | Route::Events { .. } => Role::Read,
        Route::Control { need, .. } => *need,
    };
    let caller = match req.bearer.as_deref().and_then(|s| h.authenticate(s)) {
        Some(c) => c,
        None => return unauthorized(h, token, &req),
    };
    if caller.role < need {
        let msg = format!(
            "token '{}' has role {}; this needs {}",
            caller.name,
            caller.role.name(),
            need.name()
        );
        return respond(h, token, 403, &http::error_body(&msg), req.close);
    }
    if matches!(route, Route::WhoAmI) {
        let body = serde_json::json!({
            "name": caller.name,
            "role": caller.role.name(),
            "targets": caller.targets,
        });
        return respond(h, token, 200, format!("{body}\n").as_bytes(), req.close);
    }
    h.serve(token, route, caller, &req);
}

fn unauthorized<H: Host>(h: &mut H, token: Token, req: &http::Request) {
    let Some(api) = h.api() else { return };
    api.metrics.api_auth_failures += 1;
    let peer = api
        .conns
        .get(&token)
        .map(|c| c.peer.clone())
        .unwrap_or_default();
    let why = if req.bearer.is_some() {
        "unknown or revoked token"
    } else {
        "no token"
    };
    if api.auth_log.first(Instant::now()) {
        let more = std::mem::take(&mut api.auth_log.suppressed);
        log::warn!(
            "API: {} {} from {peer} refused: {why}{}",
            req.method,
            req.path,
            if more > 0 {
                format!(" ({more} more refused since the last said)")
            } else {
                String::new()
            }
        );
    }
    let msg = if req.bearer.is_some() {
        "unknown or revoked token"
    } else {
        "this needs a token: send `Authorization: Bearer TOKEN` (`director manage --create-token NAME --role read|run|admin` makes one)"
    };
    respond(h, token, 401, &http::error_body(msg), req.close);
}

/// Write what this pass queued for API connections, and close those
/// done.
pub fn flush<H: Host>(h: &mut H) {
    let Some(api) = h.api() else { return };
    // Event streams are written in batches, every `EVENTS_EVERY`: a busy
    // cluster publishes thousands of events a second, and a write per
    // event per reader would cost more than the work itself.
    let now = Instant::now();
    let events_due = api.events_pending && now >= api.events_flushed + super::EVENTS_EVERY;
    if events_due {
        api.events_flushed = now;
        api.events_pending = false;
        api.deal_batch(now);
    }
    let mut gone = Vec::new();
    for (t, c) in api.conns.iter_mut() {
        if !c.has_output() {
            continue;
        }
        let batched = matches!(c.state, State::Events(_)) && !c.closing;
        if batched && !events_due && c.backlog() < super::EVENTS_BATCH {
            continue;
        }
        if c.flush().is_err() || (c.closing && !c.has_output()) {
            gone.push(*t);
        }
    }
    for t in gone {
        close(h, t);
    }
}

/// Deadlines: requests too slow to arrive, idle connections, and a
/// comment line on quiet event streams.
pub fn sweep<H: Host>(h: &mut H, now: Instant) {
    let Some(api) = h.api() else { return };
    if now < api.next_sweep {
        return;
    }
    api.next_sweep = now + SWEEP;
    let ping = now >= api.last_keepalive + KEEPALIVE;
    if ping {
        api.last_keepalive = now;
    }
    let mut late = Vec::new();
    let mut gone = Vec::new();
    for (t, c) in api.conns.iter_mut() {
        // One closing that cannot hand over its last bytes in time (a
        // reader that stopped reading) is cut: its buffer goes.
        if c.closing && now >= c.deadline && c.has_output() {
            gone.push(*t);
            continue;
        }
        match &c.state {
            State::Reading if now >= c.deadline => {
                if c.reader.is_partial() && !c.closing {
                    late.push(*t);
                } else {
                    gone.push(*t);
                }
            }
            State::Events(_) if ping => {
                c.queue(b": keep-alive\n\n");
                if c.flush().is_err() {
                    gone.push(*t);
                }
            }
            _ => {}
        }
    }
    for t in late {
        respond(
            h,
            t,
            408,
            &http::error_body("the request took too long to arrive"),
            true,
        );
    }
    for t in gone {
        close(h, t);
    }
}

pub fn close<H: Host>(h: &mut H, token: Token) {
    let Some(api) = h.api() else { return };
    let Some(mut conn) = api.conns.remove(&token) else {
        return;
    };
    let readers = api.event_readers();
    conn.close_notify();
    let _ = h.registry().deregister(&mut conn.stream);
    h.closed(token, readers);
}
