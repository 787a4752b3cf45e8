//! The API on a standby: the same routes, answered from its replica.
//! Reads (nodes, jobs, runs, a job's detail) come from the snapshot of its
//! journals, `/api/v1/cluster` from what it knows first hand; every
//! response says in its headers that a standby answered, how far behind,
//! and who leads. What only the active server can do (submissions, key
//! and token changes, the event stream) is refused with a 503 naming it.

use mio::{Registry, Token};

use super::standby::Standby;
use crate::server::api::host::{self, Host};
use crate::server::api::routes::{self, Rendered, Route};
use crate::server::api::{http, metrics, Api, State};
use crate::server::tokens::Caller;
use crate::wire::{Request, Response};

impl Host for Standby<'_> {
    fn api(&mut self) -> Option<&mut Api> {
        self.api.as_mut()
    }

    fn registry(&self) -> &Registry {
        Standby::registry(self)
    }

    fn next_token(&mut self) -> Token {
        Standby::next_token(self)
    }

    fn authenticate(&mut self, secret: &str) -> Option<Caller> {
        let now_ms = crate::support::clock::now_ms();
        self.api_tokens.authenticate(secret, now_ms)
    }

    fn serve(&mut self, token: Token, route: Route, _caller: Caller, req: &http::Request) {
        let close = req.close;
        match route {
            Route::Metrics => {
                let text = metrics::ha_text(&self.ha.view());
                host::respond_typed(self, token, 200, host::METRICS, text.as_bytes(), close)
            }
            Route::Control { req, pending, .. }
                if matches!(req, Request::Cluster)
                    || crate::server::requests::history_reads(&req) =>
            {
                if let Some(conn) = self.api.as_mut().and_then(|a| a.conns.get_mut(&token)) {
                    conn.state = State::Waiting(pending);
                }
                match req {
                    Request::Cluster => {
                        let view = Response::Cluster(self.ha.view());
                        self.api_answers(token, vec![view]);
                    }
                    // Answered on the I/O thread, from the snapshot.
                    req => self.park(token, req),
                }
            }
            _ => {
                let why = self.not_here();
                host::respond(self, token, 503, &http::error_body(&why), close)
            }
        }
    }

    fn closed(&mut self, _token: Token, _readers: usize) {}
}

impl Standby<'_> {
    /// Answers for an API connection, rendered as its route expects; a
    /// resolved id's detail is asked of the snapshot next.
    pub(super) fn api_answers(&mut self, token: Token, answers: Vec<Response>) {
        let mut queue: std::collections::VecDeque<Response> = answers.into();
        while let Some(resp) = queue.pop_front() {
            if let Response::Replica { leader, behind, .. } = &resp {
                let headers = format!(
                    "X-Director-Role: standby\r\nX-Director-Behind: {behind}\r\nX-Director-Leader: {}\r\n",
                    leader.as_deref().unwrap_or("")
                );
                if let Some(api) = self.api.as_mut() {
                    api.headers = headers;
                }
                continue;
            }
            let Some(conn) = self.api.as_mut().and_then(|a| a.conns.get_mut(&token)) else {
                return;
            };
            let State::Waiting(pending) = &conn.state else {
                return;
            };
            let close = pending.close;
            match routes::render(pending, resp) {
                Rendered::Keep => {}
                // A resolved id's detail: asked of the snapshot next.
                Rendered::Ask(next) => {
                    self.park(token, next);
                    break;
                }
                Rendered::Respond(status, body) => {
                    host::respond(self, token, status, &body, close);
                    break;
                }
            }
        }
        if let Some(api) = self.api.as_mut() {
            api.headers = "X-Director-Role: standby\r\n".into();
        }
    }
}
