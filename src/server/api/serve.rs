//! The loop's side of the API: accepting, reading, routing, authorizing,
//! answering from the core's notes, event streams, and deadlines.

use std::time::Instant;

use mio::{Interest, Token};

use super::conn::{Conn, Inbound, State};
use super::routes::{self, Rendered, Route};
use super::{events, http, HEAD_TIMEOUT, IDLE_TIMEOUT, KEEPALIVE, MAX_CONNS, SWEEP};
use crate::server::Server;
use crate::wire::{Request, Response, Role};

const JSON: &str = "application/json";
/// Answers a connection may leave unread before its next request waits.
const PIPELINE_BACKLOG: usize = 1 << 20;

impl Server {
    pub(in crate::server) fn accept_api(&mut self) {
        loop {
            let Some(api) = &mut self.api else { return };
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
            let token = self.tokens.next();
            let mut conn = Conn::new(stream, tls, Instant::now() + HEAD_TIMEOUT, addr.to_string());
            if let Err(e) = self.poll.registry().register(
                &mut conn.stream,
                token,
                Interest::READABLE | Interest::WRITABLE,
            ) {
                log::warn!("API: cannot watch a connection from {addr}: {e}; closed");
                continue;
            }
            api.conns.insert(token, conn);
            // Bytes may have come before the registration.
            self.handle_api(token);
        }
    }

    pub(in crate::server) fn is_api(&self, token: Token) -> bool {
        self.api
            .as_ref()
            .is_some_and(|a| a.conns.contains_key(&token))
    }

    /// The connection's socket is ready: write what waits, read what came,
    /// and serve the requests it holds, one at a time.
    pub(in crate::server) fn handle_api(&mut self, token: Token) {
        let Some(api) = &mut self.api else { return };
        let Some(conn) = api.conns.get_mut(&token) else {
            return;
        };
        if conn.flush().is_err() {
            return self.close_api(token);
        }
        if conn.closing {
            if !conn.has_output() {
                self.close_api(token);
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
        self.serve_api(token);
        if closed {
            // A peer that stopped writing may still read an answer it is
            // waiting for, or the rest of one; one with nothing pending is
            // gone.
            let waiting = self
                .api
                .as_ref()
                .and_then(|a| a.conns.get(&token))
                .is_some_and(|c| {
                    (matches!(c.state, State::Waiting(_)) || c.has_output())
                        && !matches!(c.state, State::Events(_))
                });
            if waiting {
                if let Some(c) = self.api.as_mut().and_then(|a| a.conns.get_mut(&token)) {
                    c.closing = true;
                }
            } else {
                self.close_api(token);
            }
        }
    }

    /// Take whole requests from the connection's buffer while it is free
    /// to answer one.
    fn serve_api(&mut self, token: Token) {
        loop {
            let Some(api) = &mut self.api else { return };
            let Some(conn) = api.conns.get_mut(&token) else {
                return;
            };
            if !matches!(conn.state, State::Reading) || conn.closing {
                return;
            }
            // A client that sends requests without reading the answers
            // gets no more answered until it reads: what it makes us hold
            // stays bounded.
            if conn.backlog() > PIPELINE_BACKLOG {
                return;
            }
            match conn.reader.next() {
                Ok(None) => {
                    // A body on its way from a stranger is not waited for.
                    if !conn.body_checked {
                        if let Some(bearer) = conn.reader.body_pending() {
                            conn.body_checked = true;
                            let known =
                                bearer.is_some_and(|b| self.core.authenticate(&b).is_some());
                            if !known {
                                let msg = "a request with a body needs a valid token: send `Authorization: Bearer TOKEN`";
                                self.api_respond(token, 401, &http::error_body(msg), true);
                            }
                        }
                    }
                    return;
                }
                Ok(Some(req)) => {
                    conn.body_checked = false;
                    self.api_request(token, req)
                }
                Err(refused) => {
                    log::debug!("API: {} sent a bad request: {}", conn.peer, refused.message);
                    self.api_respond(
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

    /// Queue a whole response; the connection reads the next request (or
    /// closes) once it is written.
    fn api_respond(&mut self, token: Token, status: u16, body: &[u8], close: bool) {
        self.api_respond_typed(token, status, JSON, body, close);
    }

    fn api_respond_typed(
        &mut self,
        token: Token,
        status: u16,
        content_type: &str,
        body: &[u8],
        close: bool,
    ) {
        let Some(api) = &mut self.api else { return };
        api.metrics.api(status);
        let Some(conn) = api.conns.get_mut(&token) else {
            return;
        };
        let close = close || conn.closing;
        conn.queue(&http::response(status, content_type, body, close));
        conn.state = State::Reading;
        conn.deadline = Instant::now() + IDLE_TIMEOUT;
        if close {
            conn.closing = true;
        }
        if conn.flush().is_err() {
            return self.close_api(token);
        }
        if close && !conn.has_output() {
            return self.close_api(token);
        }
        // A pipelined request may be waiting in the buffer.
        self.serve_api(token);
    }

    /// Who the request's token says it is from, if anyone.
    fn caller(&mut self, req: &http::Request) -> Option<crate::server::tokens::Caller> {
        let secret = req.bearer.as_deref()?;
        self.core.authenticate(secret)
    }

    fn api_request(&mut self, token: Token, req: http::Request) {
        let route = match routes::route(&req) {
            Ok(r) => r,
            Err((status, msg)) => {
                return self.api_respond(token, status, &http::error_body(&msg), req.close)
            }
        };
        let need = match &route {
            Route::Dashboard => {
                return self.api_respond_typed(
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
                return self.api_respond(token, 200, body.as_bytes(), req.close);
            }
            Route::Metrics | Route::WhoAmI | Route::Events { .. } => Role::Read,
            Route::Control { need, .. } => *need,
        };
        let caller = match self.caller(&req) {
            Some(c) => c,
            None => {
                let Some(api) = &mut self.api else { return };
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
                return self.api_respond(token, 401, &http::error_body(msg), req.close);
            }
        };
        if caller.role < need {
            let msg = format!(
                "token '{}' has role {}; this needs {}",
                caller.name,
                caller.role.name(),
                need.name()
            );
            return self.api_respond(token, 403, &http::error_body(&msg), req.close);
        }
        match route {
            Route::Metrics => {
                let text = self.metrics_text();
                self.api_respond_typed(
                    token,
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    text.as_bytes(),
                    req.close,
                )
            }
            Route::WhoAmI => {
                let body = serde_json::json!({
                    "name": caller.name,
                    "role": caller.role.name(),
                    "targets": caller.targets,
                });
                self.api_respond(token, 200, format!("{body}\n").as_bytes(), req.close)
            }
            Route::Events { follow } => {
                self.start_events(token, follow, req.last_event_id.as_deref())
            }
            Route::Control {
                req: creq, pending, ..
            } => {
                if let (Some(scope), true) = (
                    &caller.targets,
                    matches!(creq, Request::Submit { .. } | Request::Orchestrate { .. }),
                ) {
                    if let Err(why) = self.core.within_scope(&creq, scope) {
                        let msg = format!(
                            "token '{}' may submit to nodes matching '{scope}' only: {why}",
                            caller.name
                        );
                        return self.api_respond(token, 403, &http::error_body(&msg), req.close);
                    }
                }
                if matches!(
                    creq,
                    Request::Submit { .. } | Request::Orchestrate { dry_run: false, .. }
                ) {
                    log::info!("API: token '{}' submits: {}", caller.name, brief(&creq));
                }
                if let Some(conn) = self.api.as_mut().and_then(|a| a.conns.get_mut(&token)) {
                    conn.state = State::Waiting(pending);
                }
                self.core
                    .set_caller(token, format!("token {}", caller.name));
                self.core.requests(token, vec![creq]);
                self.perform();
            }
            Route::Dashboard | Route::Health => {}
        }
    }

    /// The exposition; the cluster's gauges are counted at most once per
    /// `COUNTS_TTL` (counting walks every retained part, and scrapers may
    /// be many).
    fn metrics_text(&mut self) -> String {
        let now = Instant::now();
        let Some(api) = &mut self.api else {
            return String::new();
        };
        let fresh = api
            .counts
            .as_ref()
            .is_some_and(|(at, _)| now < *at + super::COUNTS_TTL);
        if !fresh {
            api.counts = Some((now, self.core.counts()));
        }
        let counts = &api.counts.as_ref().expect("just set").1;
        let mut text = api
            .metrics
            .render(counts, api.conns.len(), api.event_readers());
        if let Some(ha) = &self.ha {
            text.push_str(&super::metrics::ha_text(&ha.view()));
        }
        text
    }

    fn start_events(&mut self, token: Token, follow: Option<uuid::Uuid>, last: Option<&str>) {
        let Some(api) = &mut self.api else { return };
        // What the readers so far have yet to get goes to them alone: the
        // new one starts after it (or replays it by its id).
        api.deal_batch(Instant::now());
        let replay = match (follow, last.and_then(|l| l.parse::<u64>().ok())) {
            (None, Some(last)) => Some(
                api.bus
                    .since(last)
                    .unwrap_or_else(|| events::reset(api.bus.last_id())),
            ),
            _ => None,
        };
        api.metrics.api(200);
        let Some(conn) = api.conns.get_mut(&token) else {
            return;
        };
        conn.queue(&http::event_stream_head());
        // A first comment: the stream is open, even before any event.
        conn.queue(b": director events\n\n");
        if let Some(bytes) = replay {
            conn.queue(&bytes);
        }
        conn.state = State::Events(events::Follower {
            job: follow,
            next: 1,
        });
        conn.deadline = Instant::now() + KEEPALIVE;
        let _ = conn.flush();
        match follow {
            Some(id) => {
                self.core.requests(
                    token,
                    vec![Request::Watch {
                        id,
                        run: false,
                        follow: true,
                    }],
                );
                self.perform();
            }
            None => self.core.set_publishing(true),
        }
    }

    /// A note from the core for an API connection (or for the event bus).
    pub(in crate::server) fn api_note(&mut self, token: Token, resp: Response) {
        if token == crate::server::core::EVENTS {
            return self.broadcast(&resp);
        }
        let Some(api) = &mut self.api else { return };
        let Some(conn) = api.conns.get_mut(&token) else {
            return;
        };
        let (rendered, close) = match &mut conn.state {
            State::Waiting(p) => (routes::render(p, resp), p.close),
            State::Events(f) => {
                let end = matches!(resp, Response::JobDone(_) | Response::Rejected(_));
                let bytes = match (&resp, events::encode(&resp)) {
                    (Response::Rejected(why), _) => {
                        let data = serde_json::json!({ "error": why }).to_string();
                        Some(http::event(f.next, "error", &data))
                    }
                    (_, Some((name, data))) => Some(http::event(f.next, name, &data)),
                    (_, None) => None,
                };
                if let Some(b) = bytes {
                    let id = f.next;
                    f.next += 1;
                    if conn.push_event(&b, id, Instant::now(), super::DROP_GRACE) {
                        api.events_pending = true;
                    } else {
                        log::warn!("API: follower {} fell behind; dropped", conn.peer);
                    }
                }
                if end && !conn.closing {
                    conn.closing = true;
                    conn.deadline = Instant::now() + super::DROP_GRACE;
                }
                return;
            }
            State::Reading => return,
        };
        match rendered {
            Rendered::Keep => {}
            Rendered::Ask(req) => self.core.requests(token, vec![req]),
            Rendered::Respond(status, body) => self.api_respond(token, status, &body, close),
        }
    }

    /// An event for every reader of the whole stream, sent with the
    /// next batch (`flush_api`).
    fn broadcast(&mut self, resp: &Response) {
        let Some(api) = &mut self.api else { return };
        log::debug!(
            "API: event {} for {} readers",
            events::encode(resp).map_or("-", |(name, _)| name),
            api.event_readers()
        );
        if api.bus.publish(resp) {
            api.events_pending = true;
            // A burst is written at once, as a stream holding
            // `EVENTS_BATCH` is.
            if api.bus.unsealed() >= super::EVENTS_BATCH {
                api.deal_batch(Instant::now());
            }
        }
    }

    /// Write what this pass queued for API connections, and close those
    /// done.
    pub(in crate::server) fn flush_api(&mut self) {
        let Some(api) = &mut self.api else { return };
        // Event streams are written in batches, every `EVENTS_EVERY`: a
        // busy cluster publishes thousands of events a second, and a write
        // per event per reader would cost more than the work itself.
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
            self.close_api(t);
        }
    }

    /// Deadlines: requests too slow to arrive, idle connections, and a
    /// comment line on quiet event streams.
    pub(in crate::server) fn sweep_api(&mut self, now: Instant) {
        let Some(api) = &mut self.api else { return };
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
            // One closing that cannot hand over its last bytes in time
            // (a reader that stopped reading) is cut: its buffer goes.
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
            self.api_respond(
                t,
                408,
                &http::error_body("the request took too long to arrive"),
                true,
            );
        }
        for t in gone {
            self.close_api(t);
        }
    }

    pub(in crate::server) fn close_api(&mut self, token: Token) {
        let Some(api) = &mut self.api else { return };
        if let Some(mut conn) = api.conns.remove(&token) {
            conn.close_notify();
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
        let readers = api.event_readers();
        self.core.closed(token);
        if readers == 0 {
            self.core.set_publishing(false);
        }
    }
}

/// A submission in a few words, for the log.
fn brief(req: &Request) -> String {
    match req {
        Request::Submit { task, targets, .. } => format!(
            "{} {} on {}",
            task.verb().name(),
            crate::dsl::one_line(&task.args_masked()),
            if targets.is_empty() {
                "every node".to_owned()
            } else {
                targets.join(",")
            }
        ),
        Request::Orchestrate { blocks, .. } => {
            format!(
                "an orchestration of {} jobs",
                blocks.iter().map(|b| b.tasks.len()).sum::<usize>()
            )
        }
        _ => String::new(),
    }
}
