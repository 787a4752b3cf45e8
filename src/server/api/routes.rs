//! The API's paths: which request of the control protocol each one is
//! (the CLI and the API share that one request layer), which role it
//! needs, and how the answers render as JSON with an HTTP status.
//!
//! `/api/v1/...`: nodes, keys, jobs, runs (reads); `exec` and
//! `orchestrate` (submissions); key changes and purges (admin);
//! `events` (server-sent events); `/metrics`; `/` the dashboard.

use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::http::Request as Http;
use crate::dsl::{Action, Task, Verb};
use crate::wire::{Request, Response, Role};

/// Where a request goes.
#[derive(Debug)]
pub enum Route {
    /// The dashboard's page (it holds no data: it asks the API).
    Dashboard,
    /// Liveness, without a token.
    Health,
    Metrics,
    /// Who the token is: its name, role and targets (for the dashboard).
    WhoAmI,
    /// A server-sent event stream, of everything or following one job.
    Events {
        follow: Option<Uuid>,
    },
    /// A request for the core, and what its answer is awaited as.
    Control {
        req: Request,
        need: Role,
        pending: Pending,
    },
}

/// How the answers to a request become one HTTP response.
#[derive(Debug)]
pub struct Pending {
    pub expect: Expect,
    /// Close after answering.
    pub close: bool,
    /// A rejection is a missing thing (404) rather than a bad request.
    pub lookup: bool,
}

#[derive(Debug, PartialEq)]
pub enum Expect {
    /// The first answer.
    Answer,
    /// `Nodes` of one: that node.
    One,
    /// `?wait`: past `Submitted`/`Orchestrated` and every part's
    /// progress, the final `JobDone`/`ParentDone`.
    Final,
    /// `Resolved`: then that job's (or run's) detail, asked next.
    Detail { show_values: bool },
}

/// What an answer from the core does to a waiting request.
pub enum Rendered {
    /// Answer the request now.
    Respond(u16, Vec<u8>),
    /// Not the answer yet (progress): keep waiting.
    Keep,
    /// Ask the core this next (a resolved id's detail).
    Ask(Request),
}

/// Refused before reaching the core: status and message.
pub type Refusal = (u16, String);

fn bad(msg: impl Into<String>) -> Refusal {
    (400, msg.into())
}

/// The body of `POST /api/v1/exec`: the same strings the CLI takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecBody {
    verb: String,
    #[serde(default)]
    args: String,
    #[serde(default)]
    targets: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    wait: bool,
    #[serde(default)]
    queue_offline: bool,
    #[serde(default)]
    check: bool,
    #[serde(default)]
    diff: bool,
}

/// Where `req` goes, or why it goes nowhere.
pub fn route(req: &Http) -> Result<Route, Refusal> {
    let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    let m = req.method.as_str();
    let pending = |expect: Expect, lookup: bool| Pending {
        expect,
        close: req.close,
        lookup,
    };
    let control = |req: Request, need: Role, p: Pending| {
        Ok(Route::Control {
            req,
            need,
            pending: p,
        })
    };
    let show_values = req.flag("show_values");
    let reader = if show_values { Role::Admin } else { Role::Read };
    match (m, segs.as_slice()) {
        ("GET", [] | ["index.html"]) => Ok(Route::Dashboard),
        ("GET", ["metrics"]) => Ok(Route::Metrics),
        ("GET", ["api", "v1", "health"]) => Ok(Route::Health),
        ("GET", ["api", "v1", "whoami"]) => Ok(Route::WhoAmI),
        ("GET", ["api", "v1", "events"]) => {
            let follow = match req.param("follow") {
                Some(id) => Some(
                    Uuid::parse_str(id)
                        .map_err(|_| bad(format!("follow: '{id}' is not a job id")))?,
                ),
                None => None,
            };
            Ok(Route::Events { follow })
        }
        ("GET", ["api", "v1", "nodes"]) => control(
            Request::ListNodes,
            Role::Read,
            pending(Expect::Answer, false),
        ),
        ("GET", ["api", "v1", "nodes", name]) => control(
            Request::NodeInfo {
                name: (*name).to_owned(),
                show_values,
            },
            reader,
            pending(Expect::One, true),
        ),
        ("GET", ["api", "v1", "cluster"]) => {
            control(Request::Cluster, Role::Read, pending(Expect::Answer, false))
        }
        ("GET", ["api", "v1", "keys"]) => control(
            Request::ListKeys,
            Role::Read,
            pending(Expect::Answer, false),
        ),
        ("GET", ["api", "v1", "keys", "server"]) => {
            control(Request::ShowKey, Role::Read, pending(Expect::Answer, false))
        }
        ("POST", ["api", "v1", "keys", "accept-all"]) => control(
            Request::AcceptAll,
            Role::Admin,
            pending(Expect::Answer, false),
        ),
        ("POST", ["api", "v1", "keys", name, action]) => {
            let name = (*name).to_owned();
            let req = match *action {
                "accept" => Request::AcceptKey { name },
                "reject" => Request::RejectKey { name },
                other => return Err((404, format!("no key action '{other}': accept or reject"))),
            };
            control(req, Role::Admin, pending(Expect::Answer, true))
        }
        ("DELETE", ["api", "v1", "keys", name]) => control(
            Request::DeleteKey {
                name: (*name).to_owned(),
            },
            Role::Admin,
            pending(Expect::Answer, true),
        ),
        ("GET", ["api", "v1", "jobs"]) => control(
            find_jobs(req, show_values)?,
            reader,
            pending(Expect::Answer, false),
        ),
        ("GET", ["api", "v1", "jobs" | "runs", id]) => control(
            Request::Resolve {
                id: (*id).to_owned(),
            },
            reader,
            pending(Expect::Detail { show_values }, true),
        ),
        ("GET", ["api", "v1", "runs"]) => control(
            Request::ListRuns,
            Role::Read,
            pending(Expect::Answer, false),
        ),
        ("POST", ["api", "v1", "exec"]) => {
            let (req, wait) = exec(&req.body)?;
            let expect = if wait { Expect::Final } else { Expect::Answer };
            control(req, Role::Run, pending(expect, false))
        }
        ("POST", ["api", "v1", "orchestrate"]) => {
            let (req, wait) = orchestrate(req)?;
            let expect = if wait { Expect::Final } else { Expect::Answer };
            control(req, Role::Run, pending(expect, false))
        }
        ("POST", ["api", "v1", "purge", "jobs"]) => control(
            Request::PurgeJobs,
            Role::Admin,
            pending(Expect::Answer, false),
        ),
        ("POST", ["api", "v1", "purge", "nodes"]) => control(
            Request::PurgeNodes,
            Role::Admin,
            pending(Expect::Answer, false),
        ),
        ("POST", ["api", "v1", "clear-cache"]) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Body {
                targets: Vec<String>,
            }
            let body: Body = serde_json::from_slice(&req.body).map_err(|e| {
                bad(format!(
                    "body: {e} (expected {{\"targets\": [\"PATTERN\", ...]}})"
                ))
            })?;
            if body.targets.is_empty() {
                return Err(bad(
                    "clear-cache needs targets: it never empties every node's cache by default",
                ));
            }
            let task = Task::parse(Verb::ClearCache, "").map_err(bad)?;
            let req = Request::Submit {
                task,
                targets: body.targets,
                exclude: Vec::new(),
                wait: true,
                queue_offline: false,
                follow: false,
            };
            control(req, Role::Admin, pending(Expect::Final, false))
        }
        (_, ["api", "v1", ..]) | (_, ["metrics"]) | (_, []) => {
            if known_path(&segs) {
                Err((405, format!("{m} is not allowed on {}", req.path)))
            } else {
                Err((
                    404,
                    format!(
                        "no such endpoint: {} (see /api/v1/ in the README)",
                        req.path
                    ),
                ))
            }
        }
        _ => Err((404, format!("no such endpoint: {}", req.path))),
    }
}

/// Does the path exist with another method?
fn known_path(segs: &[&str]) -> bool {
    matches!(
        segs,
        [] | ["metrics"]
            | [
                "api",
                "v1",
                "health"
                    | "whoami"
                    | "events"
                    | "nodes"
                    | "keys"
                    | "jobs"
                    | "runs"
                    | "exec"
                    | "orchestrate"
                    | "clear-cache"
            ]
            | ["api", "v1", "nodes" | "keys" | "jobs" | "runs", _]
            | ["api", "v1", "purge", "jobs" | "nodes"]
    )
}

/// `GET /api/v1/jobs`: its filters, as the core's `FindJobs`.
fn find_jobs(req: &Http, show_values: bool) -> Result<Request, Refusal> {
    let state = match req.param("state") {
        Some(s) => Some(
            serde_json::from_value(Value::String(s.to_owned())).map_err(|_| {
                bad(format!(
                    "state: '{s}' is not a job state (queued, running, succeeded, failed, ...)"
                ))
            })?,
        ),
        None => None,
    };
    let verb = match req.param("verb") {
        Some(v) => Some(v.parse::<Verb>().map_err(bad)?),
        None => None,
    };
    let run = match req.param("run") {
        Some(r) => {
            Some(Uuid::parse_str(r).map_err(|_| bad(format!("run: '{r}' is not a run id")))?)
        }
        None => None,
    };
    let limit = match req.param("limit") {
        Some(l) => Some(
            l.parse::<u32>()
                .map_err(|_| bad(format!("limit: '{l}' is not a number")))?,
        ),
        None => None,
    };
    Ok(Request::FindJobs {
        show_values,
        state,
        verb,
        run,
        limit,
    })
}

/// Submissions through the API carry no files of the server's machine:
/// the API's callers are not its local users.
fn no_server_files(task: &Task, what: &str) -> Result<(), Refusal> {
    let reads = match &task.action {
        Action::Add(_) => true,
        Action::CacheFile(c) => c.here,
        _ => false,
    };
    if reads {
        return Err((
            403,
            format!(
                "{what}: {} reads files on the server's machine; submit it with the CLI there",
                task.verb().name()
            ),
        ));
    }
    Ok(())
}

fn exec(body: &[u8]) -> Result<(Request, bool), Refusal> {
    let b: ExecBody = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "body: {e} (expected {{\"verb\": \"RUN\", \"args\": \"...\", \"targets\": [...]}})"
        ))
    })?;
    let verb: Verb = b.verb.parse().map_err(bad)?;
    let mut task = Task::parse(verb, &b.args).map_err(bad)?;
    task.options.check = b.check;
    task.options.diff = b.diff;
    no_server_files(&task, "exec")?;
    let targets = crate::targets::split(&b.targets, "targets").map_err(bad)?;
    let exclude = crate::targets::split(&b.exclude, "exclude").map_err(bad)?;
    Ok((
        Request::Submit {
            task,
            targets,
            exclude,
            wait: b.wait,
            queue_offline: b.queue_offline,
            follow: false,
        },
        b.wait,
    ))
}

fn orchestrate(req: &Http) -> Result<(Request, bool), Refusal> {
    let text =
        std::str::from_utf8(&req.body).map_err(|_| bad("body: the orchestration is not UTF-8"))?;
    let path = std::path::Path::new("request body");
    let blocks = crate::orchestrate::parse(path, text).map_err(bad)?;
    for (b, block) in blocks.iter().enumerate() {
        for (j, task) in block.tasks.iter().enumerate() {
            no_server_files(task, &format!("block {}, job {}", b + 1, j + 1))?;
        }
    }
    crate::orchestrate::check_handlers(&blocks).map_err(|e| bad(e.to_string()))?;
    let list = |key: &str| -> Result<Vec<String>, Refusal> {
        match req.param(key) {
            Some(v) => crate::targets::split(&[v.to_owned()], key).map_err(bad),
            None => Ok(Vec::new()),
        }
    };
    let sel = crate::orchestrate::Selection {
        targets: list("targets")?,
        ..Default::default()
    };
    let blocks = crate::orchestrate::select(blocks, &sel).map_err(bad)?;
    let dry_run = req.flag("dry_run");
    let wait = req.flag("wait") && !dry_run;
    Ok((
        Request::Orchestrate {
            blocks,
            exclude: list("exclude")?,
            rolling: None,
            wait,
            dry_run,
            queue_offline: req.flag("queue_offline"),
            follow: false,
        },
        wait,
    ))
}

fn body(v: impl serde::Serialize) -> Vec<u8> {
    let mut b = serde_json::to_vec(&v)
        .unwrap_or_else(|e| super::http::error_body(&format!("cannot encode: {e}")));
    b.push(b'\n');
    b
}

/// What `resp` does to the request waiting as `p`.
pub fn render(p: &Pending, resp: Response) -> Rendered {
    use Rendered::{Ask, Keep, Respond};
    match (resp, &p.expect) {
        (Response::Rejected(why), _) => {
            let status = if p.lookup { 404 } else { 400 };
            Respond(status, super::http::error_body(&why))
        }
        (Response::Stopping, _) => Respond(
            503,
            super::http::error_body("the server is stopping; the work goes on when it is back"),
        ),
        (
            Response::Submitted(_)
            | Response::NodeDone(_)
            | Response::Output { .. }
            | Response::Withheld { .. },
            Expect::Final,
        ) => Keep,
        (Response::Orchestrated(plan), Expect::Final) if plan.parent_id.is_some() => Keep,
        (Response::JobDone(job), _) => Respond(200, body(job)),
        (Response::ParentDone { parent_id, jobs }, _) => {
            Respond(200, body(json!({ "parent_id": parent_id, "jobs": jobs })))
        }
        (Response::Submitted(s), _) => Respond(202, body(s)),
        (Response::Orchestrated(plan), _) => {
            Respond(if plan.parent_id.is_some() { 202 } else { 200 }, body(plan))
        }
        (Response::Resolved { id, run }, Expect::Detail { show_values }) => Ask(if run {
            Request::RunInfo { parent: id }
        } else {
            Request::JobInfo {
                id,
                show_values: *show_values,
            }
        }),
        (Response::Nodes(nodes), Expect::One) => match nodes.into_iter().next() {
            Some(n) => Respond(200, body(n)),
            None => Respond(404, super::http::error_body("no such node")),
        },
        (Response::Nodes(v), _) => Respond(200, body(v)),
        (Response::Jobs(jobs), _) => Respond(200, body(jobs)),
        (Response::Job(d), _) => Respond(200, body(d)),
        (Response::Run(d), _) => Respond(200, body(d)),
        (Response::Runs(v), _) => Respond(200, body(v)),
        (Response::Purged { purged, kept }, _) => {
            Respond(200, body(json!({ "purged": purged, "kept": kept })))
        }
        (Response::ServerKey(k), _) => Respond(200, body(k)),
        (Response::Keys(v) | Response::KeysChanged(v), _) => Respond(200, body(v)),
        (Response::Tokens(v), _) => Respond(200, body(v)),
        (Response::Cluster(v), _) => Respond(200, body(v)),
        (Response::NodeDone(_) | Response::Output { .. } | Response::Withheld { .. }, _) => Keep,
        (other, _) => {
            log::warn!("API: an answer it has no rendering for: {other:?}");
            Respond(
                500,
                super::http::error_body("the server gave an answer the API cannot render"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(method: &str, target: &str, body: &str) -> Http {
        let mut r = super::super::http::Reader::default();
        r.push(
            format!(
                "{method} {target} HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        r.next().unwrap().unwrap()
    }

    fn need(method: &str, target: &str, body: &str) -> Role {
        match route(&http(method, target, body)) {
            Ok(Route::Control { need, .. }) => need,
            other => panic!("{method} {target}: {other:?}"),
        }
    }

    #[test]
    fn each_path_needs_its_role_and_secret_values_need_admin() {
        assert_eq!(need("GET", "/api/v1/nodes", ""), Role::Read);
        assert_eq!(need("GET", "/api/v1/jobs?show_values=1", ""), Role::Admin);
        assert_eq!(need("GET", "/api/v1/jobs/abcdef", ""), Role::Read);
        assert_eq!(
            need("POST", "/api/v1/exec", r#"{"verb":"RUN","args":"uptime"}"#),
            Role::Run
        );
        assert_eq!(
            need("POST", "/api/v1/orchestrate", "- jobs:\n  - RUN: uptime\n"),
            Role::Run
        );
        assert_eq!(need("POST", "/api/v1/keys/web1/accept", ""), Role::Admin);
        assert_eq!(need("DELETE", "/api/v1/keys/web1", ""), Role::Admin);
        assert_eq!(need("POST", "/api/v1/purge/jobs", ""), Role::Admin);
    }

    #[test]
    fn bad_bodies_unknown_paths_and_wrong_methods_are_refused_with_their_status() {
        let status = |m: &str, t: &str, b: &str| route(&http(m, t, b)).unwrap_err().0;
        assert_eq!(status("POST", "/api/v1/exec", "{"), 400);
        assert_eq!(status("POST", "/api/v1/exec", r#"{"verb":"NOPE"}"#), 400);
        assert_eq!(
            status(
                "POST",
                "/api/v1/exec",
                r#"{"verb":"RUN","args":"x","extra":1}"#
            ),
            400
        );
        assert_eq!(
            status(
                "POST",
                "/api/v1/exec",
                r#"{"verb":"RUN","args":"x","targets":[""]}"#
            ),
            400
        );
        assert_eq!(
            status(
                "POST",
                "/api/v1/exec",
                r#"{"verb":"ADD","args":"/etc/shadow /tmp/x"}"#
            ),
            403
        );
        assert_eq!(status("POST", "/api/v1/orchestrate", "- jobs: [1, 2"), 400);
        assert_eq!(status("GET", "/api/v1/nope", ""), 404);
        assert_eq!(status("DELETE", "/api/v1/nodes", ""), 405);
        assert_eq!(
            status("POST", "/api/v1/clear-cache", r#"{"targets":[]}"#),
            400
        );
        assert_eq!(status("GET", "/api/v1/jobs?state=bogus", ""), 400);
    }
}
