//! The active server as the API's host: requests go to its core, whose
//! notes come back as answers; the event stream; `/metrics`.

use std::time::Instant;

use mio::{Registry, Token};

use super::conn::State;
use super::host::{self, Host};
use super::routes::{self, Pending, Rendered, Route};
use super::{events, http, Api, KEEPALIVE};
use crate::server::tokens::Caller;
use crate::server::Server;
use crate::wire::{Request, Response};

impl Host for Server {
    fn api(&mut self) -> Option<&mut Api> {
        self.api.as_mut()
    }

    fn registry(&self) -> &Registry {
        self.poll.registry()
    }

    fn next_token(&mut self) -> Token {
        self.tokens.next()
    }

    fn authenticate(&mut self, secret: &str) -> Option<Caller> {
        self.core.authenticate(secret)
    }

    fn serve(&mut self, token: Token, route: Route, caller: Caller, req: &http::Request) {
        let close = req.close;
        match route {
            Route::Metrics => {
                let text = self.metrics_text();
                host::respond_typed(self, token, 200, host::METRICS, text.as_bytes(), close)
            }
            Route::Events { follow } => {
                self.start_events(token, follow, req.last_event_id.as_deref())
            }
            Route::Control {
                req: creq, pending, ..
            } => self.control(token, creq, pending, &caller, close),
            Route::Dashboard | Route::Health | Route::WhoAmI => {}
        }
    }

    fn closed(&mut self, token: Token, readers: usize) {
        self.core.closed(token);
        if readers == 0 {
            self.core.set_publishing(false);
        }
    }
}

impl Server {
    pub(in crate::server) fn accept_api(&mut self) {
        host::accept(self)
    }

    pub(in crate::server) fn is_api(&self, token: Token) -> bool {
        self.api
            .as_ref()
            .is_some_and(|a| a.conns.contains_key(&token))
    }

    pub(in crate::server) fn handle_api(&mut self, token: Token) {
        host::handle(self, token)
    }

    pub(in crate::server) fn flush_api(&mut self) {
        host::flush(self)
    }

    pub(in crate::server) fn sweep_api(&mut self, now: Instant) {
        host::sweep(self, now)
    }

    fn control(
        &mut self,
        token: Token,
        creq: Request,
        pending: Pending,
        caller: &Caller,
        close: bool,
    ) {
        if let (Some(scope), true) = (
            &caller.targets,
            matches!(creq, Request::Submit { .. } | Request::Orchestrate { .. }),
        ) {
            if let Err(why) = self.core.within_scope(&creq, scope) {
                let msg = format!(
                    "token '{}' may submit to nodes matching '{scope}' only: {why}",
                    caller.name
                );
                return host::respond(self, token, 403, &http::error_body(&msg), close);
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
            Rendered::Respond(status, body) => host::respond(self, token, status, &body, close),
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
