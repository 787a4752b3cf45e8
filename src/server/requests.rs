//! The control requests, as the core answers them: submissions,
//! questions, key changes, and progress for those that wait. Answers that
//! depend on records go through the persistence layer's `hold`, so they
//! leave only once durable. The connections themselves are the loop's.

use std::path::Path;

use mio::net::UnixListener;
use mio::Token;
use uuid::Uuid;

use super::core::{Auth, Core, Out};
use super::keys::KeyRecord;
use super::persist::Held;
use super::routes::Principal;
use crate::curve::PublicKey;
use crate::error::{Error, Result};
use crate::wire::{Denial, KeyState, KeyView, Request, Response, ServerKeyView, ServerMsg};

impl Core {
    /// Push `resp` to every connection waiting on `id` (a job or a run).
    pub(super) fn notify(&mut self, job_id: &Uuid, resp: &Response) {
        for token in self.watchers.of(job_id).to_vec() {
            self.hold(Held::Note {
                token,
                resp: resp.clone(),
            });
        }
    }

    /// Requests read from a control connection, in order.
    pub fn requests(&mut self, token: Token, requests: Vec<Request>) {
        for req in requests {
            // A question about the state answers at once, unless an earlier
            // answer on this connection still waits for the disk (order).
            let reads_only = reads_only(&req);
            if let Some(resp) = self.handle_request(token, req) {
                if reads_only && !self.persist.holds_for(token) {
                    self.out.push(Out::Note { token, resp });
                } else {
                    self.hold(Held::Note { token, resp });
                }
            }
        }
    }

    /// Answer a request; `None` when the answer was already queued.
    /// A submission with no node online: say when keys wait for an
    /// operator's accept (a new node's usual first stop).
    fn why_none_online(&self, why: crate::targets::Refusal) -> String {
        let why = match why {
            crate::targets::Refusal::NoneOnline(why) => why,
            other => return other.to_string(),
        };
        let Auth::Curve(c) = &self.auth else {
            return why;
        };
        let pending = c.keys.pending_names();
        match pending.as_slice() {
            [] => why,
            [one] => format!(
                "{why}; the key of node '{one}' waits for acceptance: run `director manage --accept-key {one}` (check its fingerprint with --list-keys first)"
            ),
            many => format!(
                "{why}; {} keys wait for acceptance ({}): `director manage --list-keys`, then --accept-key NAME",
                many.len(),
                crate::targets::known_list(many.iter().map(String::as_str))
            ),
        }
    }

    fn create_token(
        &mut self,
        name: &str,
        role: crate::wire::Role,
        targets: Option<String>,
    ) -> Response {
        if let Some(t) = &targets {
            if let Err(e) = crate::targets::check(t, "--targets") {
                return Response::Rejected(e);
            }
        }
        match self.tokens.create(name, role, targets, self.now.ms) {
            Ok((secret, rec, view)) => {
                self.record_token(&rec);
                log::info!("API token '{name}' ({}) created", role.name());
                Response::TokenCreated {
                    token: view,
                    secret,
                }
            }
            Err(e) => Response::Rejected(e),
        }
    }

    pub(super) fn handle_request(&mut self, token: Token, req: Request) -> Option<Response> {
        log::debug!("control <- {req:?}");
        let resp = match req {
            Request::Submit {
                task,
                targets,
                exclude,
                wait,
                queue_offline,
                follow,
            } => {
                let mut out = std::mem::take(&mut self.effects);
                let resp = match self
                    .cluster
                    .submit(task, &targets, &exclude, self.now, &mut out)
                {
                    Ok(submitted) => {
                        log::info!(
                            "job {} ({}) queued for {}",
                            submitted.job_id,
                            submitted.task_sha1,
                            submitted.targets.join(", ")
                        );
                        if wait {
                            self.watchers.watch(submitted.job_id, token, follow);
                            if follow {
                                self.cluster.follow(&[submitted.job_id]);
                            }
                        }
                        if queue_offline {
                            self.cluster.queue_offline(&[submitted.job_id], &mut out);
                        }
                        self.record_by(token, &[submitted.job_id], &mut out);
                        self.publish(Response::Submitted(submitted.clone()));
                        Response::Submitted(submitted)
                    }
                    Err(why) => Response::Rejected(self.why_none_online(why)),
                };
                self.submitted(token, resp, out);
                return None;
            }
            Request::Orchestrate {
                blocks,
                exclude,
                rolling,
                wait,
                dry_run,
                queue_offline,
                follow,
            } => {
                let mut out = std::mem::take(&mut self.effects);
                let resp = match self
                    .cluster
                    .orchestrate(blocks, &exclude, rolling, dry_run, self.now, &mut out)
                {
                    Ok(plan) => {
                        if let Some(parent) = plan.parent_id {
                            log::info!("orchestration {parent} queued: {} jobs", plan.jobs.len());
                            let ids: Vec<Uuid> =
                                plan.jobs.iter().filter_map(|j| j.job_id).collect();
                            self.record_by(token, &ids, &mut out);
                            if wait {
                                self.watchers.watch(parent, token, follow);
                                if follow {
                                    self.cluster.follow(&ids);
                                }
                            }
                            if queue_offline {
                                self.cluster.queue_offline(&ids, &mut out);
                            }
                        }
                        Response::Orchestrated(plan)
                    }
                    Err(why) => Response::Rejected(self.why_none_online(why)),
                };
                self.submitted(token, resp, out);
                return None;
            }
            Request::ListNodes => Response::Nodes(self.cluster.list_nodes()),
            Request::NodeInfo { name, show_values } => {
                match self.cluster.node_info(&name, show_values) {
                    Ok(view) => Response::Nodes(vec![view]),
                    Err(why) => Response::Rejected(why),
                }
            }
            Request::ListJobs { show_values } => {
                let mut jobs = self.cluster.list_jobs();
                if show_values {
                    for v in &mut jobs {
                        self.cluster.show_values(v);
                    }
                }
                Response::Jobs(jobs)
            }
            Request::FindJobs {
                show_values,
                state,
                verb,
                run,
                limit,
            } => {
                let mut jobs = self.cluster.find_jobs(state, verb, run, limit);
                if show_values {
                    for v in &mut jobs {
                        self.cluster.show_values(v);
                    }
                }
                Response::Jobs(jobs)
            }
            Request::Resolve { id } => match self.cluster.resolve_id(&id) {
                Ok((id, run)) => Response::Resolved { id, run },
                Err(why) => Response::Rejected(why),
            },
            Request::RunInfo { parent } => match self.cluster.run_detail(&parent) {
                Some(run) => Response::Run(run),
                None => Response::Rejected(format!("no run with id {parent}")),
            },
            Request::ListRuns => Response::Runs(self.cluster.list_runs()),
            Request::Watch { id, run, follow } => {
                // What finished already, then what finishes from now on:
                // one thread, so nothing falls between the two.
                // And the jobs still going, for `follow`.
                let (parts, end, going) = if run {
                    let Some(d) = self.cluster.run_detail(&id) else {
                        return Some(Response::Rejected(format!("no run with id {id}")));
                    };
                    let going: Vec<Uuid> = d
                        .jobs
                        .iter()
                        .filter(|j| j.finished_ms.is_none())
                        .map(|j| j.id)
                        .collect();
                    let end = going.is_empty().then_some(Response::ParentDone {
                        parent_id: id,
                        jobs: d.jobs,
                    });
                    (d.parts, end, going)
                } else {
                    let Some((job, parts)) = self.cluster.job_parts(&id) else {
                        return Some(Response::Rejected(format!("no job with id {id}")));
                    };
                    let end = job.finished_ms.is_some().then_some(Response::JobDone(job));
                    (parts, end, vec![id])
                };
                for p in parts.into_iter().filter(|p| p.state.is_done()) {
                    self.hold(Held::Note {
                        token,
                        resp: Response::NodeDone(p),
                    });
                }
                match end {
                    Some(resp) => self.hold(Held::Note { token, resp }),
                    None => {
                        self.watchers.watch(id, token, follow);
                        if follow {
                            let mut out = std::mem::take(&mut self.effects);
                            self.cluster.follow_going(&going, &mut out);
                            self.apply(out);
                        }
                    }
                }
                return None;
            }
            Request::JobInfo { id, show_values } => match self.cluster.job_info(&id) {
                Some((mut detail, reads)) => {
                    if show_values {
                        self.cluster.show_values(&mut detail.job);
                    }
                    if reads.is_empty() {
                        return Some(Response::Job(detail));
                    }
                    // Outputs are read from the journal once it holds them.
                    self.hold(Held::Read {
                        token,
                        detail: Box::new(detail),
                        reads,
                    });
                    return None;
                }
                None => Response::Rejected(format!("no job with id {id}")),
            },
            Request::PurgeJobs => {
                let (purged, kept) = self.cluster.purge_jobs();
                // The answer waits for the rewrite, like any record's.
                self.compact_wanted = true;
                Response::Purged { purged, kept }
            }
            Request::PurgeNodes => {
                let mut out = std::mem::take(&mut self.effects);
                let (purged, kept) = self.cluster.purge_nodes(&mut out);
                // The answer waits for the records, like any.
                self.submitted(token, Response::Purged { purged, kept }, out);
                return None;
            }
            Request::ShowKey => match &self.auth {
                Auth::Curve(c) => Response::ServerKey(ServerKeyView {
                    public_key: c.pair.public.z85(),
                    fingerprint: c.pair.public.fingerprint(),
                    source: c.source.clone(),
                }),
                Auth::Off => Response::Rejected(CURVE_OFF.into()),
            },
            Request::ListKeys => match &self.auth {
                Auth::Curve(c) => Response::Keys(c.keys.list()),
                Auth::Off => Response::Rejected(CURVE_OFF.into()),
            },
            Request::AcceptKey { name } => self.change_keys(KeyChange::Accept(name)),
            Request::AcceptAll => self.change_keys(KeyChange::AcceptAll),
            Request::RejectKey { name } => self.change_keys(KeyChange::Reject(name)),
            Request::DeleteKey { name } => self.change_keys(KeyChange::Delete(name)),
            Request::CreateToken {
                name,
                role,
                targets,
            } => self.create_token(&name, role, targets),
            Request::ListTokens => Response::Tokens(self.tokens.list()),
            Request::Cluster => Response::Cluster(self.cluster_view.clone().unwrap_or_else(|| {
                crate::wire::ClusterView {
                    this: String::new(),
                    role: "alone".into(),
                    leader: None,
                    etcd_endpoints: Vec::new(),
                    etcd_error: None,
                    servers: Vec::new(),
                }
            })),
            Request::RevokeToken { name } => match self.tokens.revoke(&name) {
                Ok((view, rec)) => {
                    self.record_token(&rec);
                    log::info!("API token '{name}' revoked");
                    Response::Tokens(vec![view])
                }
                Err(e) => Response::Rejected(e),
            },
        };
        Some(resp)
    }

    /// An operator's accept, reject or delete. The answer waits for the key
    /// table's sync (it goes through `notes`).
    pub(super) fn change_keys(&mut self, change: KeyChange) -> Response {
        let Auth::Curve(c) = &mut self.auth else {
            return Response::Rejected(CURVE_OFF.into());
        };
        let keys = &mut c.keys;
        let mut changed: Vec<(KeyView, KeyRecord)> = Vec::new();
        let result = match &change {
            KeyChange::Accept(name) => keys
                .set_state(name, KeyState::Accepted)
                .map(|rec| changed.extend(keys.view(name).map(|v| (v, rec)))),
            KeyChange::AcceptAll => {
                for rec in keys.accept_all() {
                    if let KeyRecord::Set { name, .. } = &rec {
                        changed.extend(keys.view(name).map(|v| (v, rec.clone())));
                    }
                }
                Ok(())
            }
            KeyChange::Reject(name) => keys
                .set_state(name, KeyState::Rejected)
                .map(|rec| changed.extend(keys.view(name).map(|v| (v, rec)))),
            KeyChange::Delete(name) => {
                let view = keys.view(name);
                keys.delete(name)
                    .map(|rec| changed.extend(view.map(|v| (v, rec))))
            }
        };
        if let Err(why) = result {
            return Response::Rejected(why);
        }
        let now = self.now;
        let mut out = std::mem::take(&mut self.effects);
        for (view, rec) in &changed {
            self.record_key(rec);
            let who = PublicKey::from_z85(&view.public_key).map(Principal::Key);
            let name = &view.name;
            match &change {
                KeyChange::Accept(_) | KeyChange::AcceptAll => {
                    log::info!("node={name}: key {} accepted", view.fingerprint);
                    // A connected client hears it as soon as the accept is
                    // on disk, and says Ready.
                    self.hold(Held::Ack {
                        node: name.clone(),
                        msg: ServerMsg::Register,
                    });
                }
                KeyChange::Reject(_) => {
                    log::warn!("node={name}: key {} rejected", view.fingerprint);
                    let _ = self.send(name, &ServerMsg::Denied(Denial::Rejected));
                    self.cluster
                        .drop_node(name, "the node's key was rejected", now, &mut out);
                    if let Ok(who) = &who {
                        self.routes.forget(who);
                    }
                }
                KeyChange::Delete(_) => {
                    log::warn!("node={name}: key {} deleted", view.fingerprint);
                    self.cluster
                        .drop_node(name, "the node's key was deleted", now, &mut out);
                    if let Ok(who) = &who {
                        self.routes.forget(who);
                    }
                }
            }
        }
        self.apply(out);
        Response::KeysChanged(changed.into_iter().map(|(v, _)| v).collect())
    }

    /// A control connection is gone: nothing more for it.
    pub fn closed(&mut self, token: Token) {
        self.watchers.closed(token);
        self.callers.remove(&token);
    }

    /// Record who submitted `jobs`, if the connection said.
    fn record_by(&mut self, token: Token, jobs: &[Uuid], out: &mut Vec<super::cluster::Effect>) {
        let Some(by) = self.callers.get(&token) else {
            return;
        };
        for id in jobs {
            if self.cluster.set_by(id, by) {
                out.push(super::cluster::Effect::Journal(
                    super::history::Record::SubmittedBy {
                        id: *id,
                        by: by.clone(),
                    },
                ));
            }
        }
    }

    /// A node's live output: to each CLI following its job or run. One
    /// that does not keep up loses output (counted and shown to it), not
    /// the server's memory.
    pub(super) fn forward_output(
        &mut self,
        node: &str,
        job_id: Uuid,
        stream: crate::wire::Stream,
        data: Vec<u8>,
        dropped: u64,
    ) {
        // Only a node running the job speaks for it.
        if !self.cluster.runs_on(&job_id, node) {
            return;
        }
        let parent = self.cluster.parent_of(&job_id);
        for token in self.watchers.following(job_id, parent) {
            let resp = Response::Output {
                job_id,
                node: node.to_owned(),
                stream,
                data: data.clone(),
                dropped,
            };
            self.out.push(Out::Live { token, resp });
        }
    }
}

/// What an operator asked of the key table.
pub(super) enum KeyChange {
    Accept(String),
    AcceptAll,
    Reject(String),
    Delete(String),
}

/// A following CLI with this much not yet read gets no more live output
/// until it catches up.
pub(super) const LIVE_BACKLOG: usize = 1 << 20;

pub(super) const CURVE_OFF: &str =
    "the server runs with --curve off: it has no key, and admits every node without one";

/// Questions about nodes, jobs and runs: what the job history answers
/// (a standby answers them from its own).
pub(super) fn history_reads(req: &Request) -> bool {
    matches!(
        req,
        Request::ListNodes
            | Request::NodeInfo { .. }
            | Request::Resolve { .. }
            | Request::RunInfo { .. }
            | Request::ListRuns
            | Request::ListJobs { .. }
            | Request::FindJobs { .. }
            | Request::JobInfo { .. }
    )
}

/// Requests that change nothing: their answers need no sync.
pub(super) fn reads_only(req: &Request) -> bool {
    history_reads(req)
        || matches!(
            req,
            Request::ShowKey | Request::ListKeys | Request::ListTokens | Request::Cluster
        )
}

/// Bind the control socket, replacing a stale socket file but never a live
/// server's. It is created mode 0600 (the umask is tightened around the
/// bind, so it is never open to others even for an instant), or 0660 and
/// owned by `group`: only its owner (root) and that group may submit work.
pub(super) fn bind_control(path: &Path, group: Option<&str>) -> Result<UnixListener> {
    let gid = group
        .map(|g| {
            crate::support::ids::group_id(g)
                .ok_or_else(|| Error::Config(format!("--socket-group: no group named '{g}'")))
        })
        .transpose()?;
    if path.exists() {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(Error::Config(format!(
                    "another director server is already listening on {}",
                    path.display()
                )))
            }
            // Someone else's live socket we may not even talk to: leave it.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(Error::Config(format!(
                    "{} exists and we may not connect to it (another user's server?); remove it or choose another --socket-path",
                    path.display()
                )))
            }
            Err(_) => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    // SAFETY: umask only changes this process's file-creation mask; we
    // restore it right after the bind, before anything else creates files.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let listener = bound.map_err(|e| {
        Error::io(
            format!("cannot bind the control socket {}", path.display()),
            e,
        )
    })?;
    if let Some(gid) = gid {
        use std::os::unix::fs::PermissionsExt;
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::Config(format!("{}: a NUL in the path", path.display())))?;
        // SAFETY: a valid C string; -1 keeps the owner.
        if unsafe { libc::chown(c_path.as_ptr(), u32::MAX, gid) } != 0 {
            let e = std::io::Error::last_os_error();
            let _ = std::fs::remove_file(path);
            return Err(Error::io(
                format!(
                    "cannot give the control socket {} to group '{}'",
                    path.display(),
                    group.unwrap_or_default()
                ),
                e,
            ));
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(|e| {
            Error::io(
                format!("cannot chmod the control socket {}", path.display()),
                e,
            )
        })?;
    }
    Ok(listener)
}
