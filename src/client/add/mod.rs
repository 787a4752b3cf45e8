//! ADD/COPY on a node: for each file, skip it when the destination already
//! has the source's SHA1 ("unchanged"); otherwise pull it in chunks with a
//! bounded credit into a temporary file beside the destination, check the
//! SHA1, set the source's mode (or `--chmod`) and the requested owner, and
//! rename it into place. Every run checks every file, whatever the node
//! cache says: content, mode and owner are put right where they differ,
//! and the job is `unchanged` when nothing did.
//!
//! A `--blueprint` file is a template: its source is kept on the node by
//! its SHA1 (under `--cache-path`, `blueprints/`), so it crosses the
//! network once per version, and it is rendered with the node's values on
//! the I/O thread, compared with what is there, and written only if it
//! differs. With `--diff` a plain text file goes the same way (kept, then
//! compared line by line). With `--check` nothing on the node changes. The temporary file is an unnamed `O_TMPFILE` where the filesystem
//! has them, so even a SIGKILL leaves nothing behind; elsewhere a named one
//! removed on every failure path. The old file stays as it was until the
//! rename.
//!
//! Nothing here blocks for long: an existing file is hashed a slice per loop
//! tick, chunks are written as they arrive, and writeback is started along
//! the way so the final sync is short.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

mod file;

pub use file::resolve_owner;
use file::*;

use sha1::{Digest, Sha1};
use uuid::Uuid;

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use super::store;
use crate::dsl::{dest_is_dir, hex_sha1, Action, SourceFile, Task};
use crate::support::ids;
use crate::template;
use crate::transfer::Receiver;
use crate::wire::{ClientMsg, Exit, Outcome, CHUNK, CREDIT};

/// Bytes of an existing file hashed per loop tick.
const HASH_SLICE: usize = 4 << 20;
/// Start writeback every this many bytes received.
const WRITEBACK_EVERY: u64 = 16 << 20;
/// The largest blueprint (its source, and what it renders to), and the
/// largest plain file `--diff` shows.
pub const BLUEPRINT_CAP: u64 = 8 << 20;
/// The largest plain file `--diff` compares line by line.
const DIFF_SOURCE_CAP: u64 = 1 << 20;

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Where the job stands.
enum Step {
    /// Start file `next` on the next tick.
    Next,
    /// Hashing the file already at the destination.
    Checking { file: File, hasher: Sha1, left: u64 },
    /// Pulling the file (or, `to_store`, its source into the store) into
    /// a temporary file.
    Receiving {
        to_store: bool,
        tmp: Tmp,
        hasher: Sha1,
        flow: Receiver,
        synced: u64,
    },
    /// Waiting for the I/O thread: the owner's ids (`--chown`), or the
    /// received file's sync and rename.
    Io,
}

/// What the I/O thread does for an ADD job: calls that may block (a user
/// lookup through LDAP, an fsync).
pub enum AddIo {
    /// Look up `--chown USER[:GROUP]`.
    Resolve(String),
    /// Give the received file its owner and mode, sync it, and rename it
    /// over the target.
    Place {
        tmp: Tmp,
        target: PathBuf,
        uid: Option<u32>,
        gid: Option<u32>,
        mode: u32,
    },
    /// Render (or take as it is) a stored source, compare it with the
    /// target, and write what differs.
    Converge(Box<Converge>),
}

/// What the I/O thread found.
pub enum AddDone {
    Resolved(Result<(Option<u32>, Option<u32>), String>),
    Placed(Result<(), String>),
    /// Whether anything changed (or would), and what.
    Converged(Result<(bool, String), String>),
    /// The stored source is gone (evicted, or removed by hand): fetch it
    /// again.
    SourceGone,
}

/// A file whose wanted content is computed on the node: a blueprint
/// rendered, or a plain file kept for `--diff`.
pub struct Converge {
    /// The stored source, and its SHA1.
    pub source: PathBuf,
    pub sha1: String,
    /// Its path on the server's machine, for messages.
    pub name: String,
    /// The values to render it with; `None`: the content as it is.
    pub vars: Option<Arc<template::OwnedVars>>,
    pub target: PathBuf,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: u32,
    pub check: bool,
    pub diff: bool,
}

impl AddIo {
    /// Run it (on the I/O thread).
    pub fn run(self) -> AddDone {
        match self {
            AddIo::Resolve(spec) => AddDone::Resolved(resolve_owner(&spec)),
            AddIo::Place {
                tmp,
                target,
                uid,
                gid,
                mode,
            } => AddDone::Placed((|| {
                set_owner_and_mode_fd(&tmp.file, uid, gid, mode)
                    .map_err(|e| format!("{}: {e}", target.display()))?;
                tmp.file
                    .sync_data()
                    .map_err(|e| format!("cannot sync {}: {e}", target.display()))?;
                tmp.persist(&target)
                    .map_err(|e| format!("cannot put {} in place: {e}", target.display()))
            })()),
            AddIo::Converge(c) => match File::open(&c.source) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => AddDone::SourceGone,
                Err(e) => AddDone::Converged(Err(format!(
                    "cannot read the stored copy {}: {e}",
                    c.source.display()
                ))),
                Ok(f) => AddDone::Converged(c.run(f)),
            },
        }
    }
}

impl Converge {
    /// `stored`: the stored source, open.
    fn run(&self, stored: File) -> Result<(bool, String), String> {
        let t = self.target.display();
        let read = |path: &Path, what: &str| -> Result<Vec<u8>, String> {
            let mut buf = Vec::new();
            File::open(path)
                .and_then(|f| f.take(BLUEPRINT_CAP + 1).read_to_end(&mut buf))
                .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
            Ok(buf)
        };
        let mut source = Vec::new();
        (&stored)
            .take(BLUEPRINT_CAP + 1)
            .read_to_end(&mut source)
            .map_err(|e| format!("cannot read the stored copy {}: {e}", self.source.display()))?;
        if hex_sha1(&source) != self.sha1 {
            let _ = fs::remove_file(&self.source);
            return Err(format!(
                "the stored copy of {} was damaged and is removed: run the job again",
                self.name
            ));
        }
        store::renew(&stored, SystemTime::now());
        let wanted = match &self.vars {
            None => source,
            Some(vars) => {
                let text = String::from_utf8(source).map_err(|_| {
                    format!("blueprint {}: not UTF-8 text (a blueprint is a template; send binary files without --blueprint)", self.name)
                })?;
                let out = template::render_file(&text, &vars.vars())
                    .map_err(|e| format!("blueprint {}: {e}", self.name))?;
                if out.len() as u64 > BLUEPRINT_CAP {
                    return Err(format!(
                        "blueprint {} renders to more than {} bytes",
                        self.name, BLUEPRINT_CAP
                    ));
                }
                out.into_bytes()
            }
        };
        let meta = match fs::metadata(&self.target) {
            Ok(m) if m.is_dir() => return Err(format!("{t} is a directory")),
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("cannot read {t}: {e}")),
        };
        let old = match &meta {
            Some(m) if m.len() == wanted.len() as u64 => Some(read(&self.target, "")?),
            Some(m) if m.len() <= BLUEPRINT_CAP && self.diff => Some(read(&self.target, "")?),
            _ => None,
        };
        let content = old.as_deref() != Some(&wanted[..]);
        let would = if self.check { "would " } else { "" };
        let mut text = String::new();
        match (&meta, content) {
            (None, _) => text.push_str(&format!("{would}create {t} ({} bytes)\n", wanted.len())),
            (Some(_), true) => text.push_str(&format!("{would}update {t} (content differs)\n")),
            (Some(_), false) => {}
        }
        let mut fix_attrs = false;
        if let (Some(m), false) = (&meta, content) {
            fix_attrs = attrs_text(
                &mut text,
                m,
                self.uid,
                self.gid,
                self.mode,
                would,
                &t.to_string(),
            );
        }
        if self.diff && content {
            let shown = crate::diff::unified(
                &t.to_string(),
                meta.as_ref().and(old.as_deref()),
                Some(&wanted),
            )
            .unwrap_or_default();
            let shown = match (&meta, &old) {
                (Some(m), None) => format!(
                    "{t} is {} bytes: too large to show how it changes\n",
                    m.len()
                ),
                _ => shown,
            };
            text.push_str(&mask(shown, self.vars.as_deref()));
        }
        if text.is_empty() {
            return Ok((false, format!("unchanged {t}\n")));
        }
        if self.check {
            return Ok((true, text));
        }
        if content {
            let dir = self
                .target
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let tmp = Tmp::create(dir)
                .map_err(|e| format!("cannot create a temporary file in {}: {e}", dir.display()))?;
            tmp.file
                .write_all_at(&wanted, 0)
                .map_err(|e| format!("cannot write {t}: {e}"))?;
            set_owner_and_mode_fd(&tmp.file, self.uid, self.gid, self.mode)
                .map_err(|e| format!("{t}: {e}"))?;
            tmp.file
                .sync_data()
                .map_err(|e| format!("cannot sync {t}: {e}"))?;
            tmp.persist(&self.target)
                .map_err(|e| format!("cannot put {t} in place: {e}"))?;
        } else if fix_attrs {
            set_owner_and_mode_path(&self.target, self.uid, self.gid, self.mode)?;
        }
        Ok((true, text))
    }
}

/// Say how a file's owner and mode differ from those wanted (`would`
/// change them, or change them): whether they do.
fn attrs_text(
    text: &mut String,
    m: &fs::Metadata,
    uid: Option<u32>,
    gid: Option<u32>,
    mode: u32,
    would: &str,
    t: &str,
) -> bool {
    let mut differs = false;
    if uid.is_some_and(|u| u != m.uid()) || gid.is_some_and(|g| g != m.gid()) {
        text.push_str(&format!(
            "{would}change the owner of {t} from {}:{} to {}:{}\n",
            m.uid(),
            m.gid(),
            uid.unwrap_or(m.uid()),
            gid.unwrap_or(m.gid())
        ));
        differs = true;
    }
    let now = m.mode() & 0o7777;
    if now != mode {
        text.push_str(&format!(
            "{would}change the mode of {t} from {now:04o} to {mode:04o}\n"
        ));
        differs = true;
    }
    differs
}

/// A diff with the ARG values that may be secrets shown as `<hidden>`, as
/// every other view of them is: those of 8 characters or more, and those
/// of ARGs named like a secret (`password`, `db_pass`, `api_token`,
/// `secret_key`, ...). A rendered config file often holds a password;
/// a port or a short word stays readable.
fn mask(mut text: String, vars: Option<&template::OwnedVars>) -> String {
    let Some(vars) = vars else {
        return text;
    };
    let secret_name = |k: &str| {
        let k = k.to_ascii_lowercase();
        ["pass", "secret", "token", "key", "cred"]
            .iter()
            .any(|s| k.contains(s))
    };
    let mut values: Vec<&String> = vars
        .args
        .iter()
        .filter(|(k, v)| v.len() >= 8 || (secret_name(k) && !v.is_empty()))
        .map(|(_, v)| v)
        .collect();
    // Longest first: a value inside another is hidden with it.
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    for v in values {
        if text.contains(v.as_str()) {
            text = text.replace(v.as_str(), crate::dsl::HIDDEN);
        }
    }
    text
}

/// What the loop should do after a call.
pub enum Progress {
    Continue,
    Finished(Outcome),
}

/// One running ADD job.
pub struct AddJob {
    job_id: Uuid,
    files: Vec<(SourceFile, PathBuf)>,
    /// Index of the file being handled.
    next: usize,
    uid: Option<u32>,
    gid: Option<u32>,
    /// `--chmod`: every file's mode, instead of its source's.
    mode: Option<u32>,
    /// Render each file on the node (`--blueprint`) with these values.
    blueprint: Option<Arc<template::OwnedVars>>,
    /// Where sources computed on are kept, by SHA1.
    store: PathBuf,
    check: bool,
    diff: bool,
    /// Something changed (or, checking, would).
    changed: bool,
    /// A source was added to the store (which may now need pruning).
    stored: bool,
    step: Step,
    /// Work for the I/O thread, for the runner to hand over.
    io: Option<AddIo>,
    report: String,
    started: Instant,
    /// When data last came from the server (or was first asked for).
    last_data: Instant,
    /// The time of the input being handled (set by the runner).
    now: Instant,
}

impl AddJob {
    /// Plan the job: render the destination and resolve the owner. An error
    /// ends the job before any transfer.
    /// `store`: where blueprints (and files to diff) are kept by SHA1.
    pub fn new(
        job_id: Uuid,
        task: &Task,
        vars: &template::Vars,
        store: &Path,
        now: Instant,
    ) -> Result<AddJob, String> {
        let Action::Add(add) = &task.action else {
            return Err("not an ADD job".into());
        };
        let (chown, dest, files) = (&add.chown, &add.dest, &add.files);
        if files.is_empty() {
            return Err("ADD job without files (the CLI resolves them before submission)".into());
        }
        let dest = template::render(dest, vars).map_err(|e| format!("ADD destination: {e}"))?;
        let into_dir = dest_is_dir(&dest, files);
        let files = files
            .iter()
            .map(|f| {
                let target = if into_dir {
                    Path::new(&dest).join(f.name())
                } else {
                    PathBuf::from(&dest)
                };
                (f.clone(), target)
            })
            .collect();
        // The owner is looked up on the I/O thread (the name service may
        // hang); the transfer starts once it is known.
        let (step, io) = match chown {
            Some(spec) => (Step::Io, Some(AddIo::Resolve(spec.clone()))),
            None => (Step::Next, None),
        };
        Ok(AddJob {
            job_id,
            files,
            next: 0,
            uid: None,
            gid: None,
            mode: add.mode,
            blueprint: add
                .blueprint
                .then(|| Arc::new(template::OwnedVars::of(vars))),
            store: store.to_owned(),
            check: task.options.check,
            diff: task.options.diff,
            changed: false,
            stored: false,
            step,
            io,
            report: String::new(),
            started: now,
            last_data: now,
            now,
        })
    }

    /// Since when it has been waiting for the server's data; `None` while it
    /// works locally (hashing an existing file).
    pub fn waiting_since(&self) -> Option<Instant> {
        matches!(self.step, Step::Receiving { .. }).then_some(self.last_data)
    }

    /// Has it work to do without waiting for the network?
    pub fn wants_tick(&self) -> bool {
        matches!(self.step, Step::Next | Step::Checking { .. })
    }

    /// Work for the I/O thread, if any is due.
    pub fn take_io(&mut self) -> Option<AddIo> {
        self.io.take()
    }

    /// Did it add a source to the store?
    pub fn stored(&self) -> bool {
        self.stored
    }

    /// Is it waiting for the I/O thread? (Then it must not be abandoned: the
    /// file may be put in place anyway.)
    pub fn in_io(&self) -> bool {
        matches!(self.step, Step::Io)
    }

    /// The I/O thread is done with what this job gave it.
    /// The time of what is handled next.
    /// What the I/O thread did for it, at `now`.
    pub fn io_done(&mut self, done: AddDone, now: Instant, out: &mut Vec<ClientMsg>) -> Progress {
        self.now = now;
        let result = match done {
            AddDone::Resolved(Ok((uid, gid))) => {
                (self.uid, self.gid) = (uid, gid);
                self.step = Step::Next;
                self.advance(out)
            }
            AddDone::Resolved(Err(e)) => Err(e),
            AddDone::Placed(Ok(())) if self.via_store() => {
                // The source is in the store now: on to its file.
                self.stored = true;
                self.converge();
                Ok(())
            }
            AddDone::Placed(Ok(())) => {
                self.step = Step::Next;
                let (src, target) = &self.files[self.next];
                self.report
                    .push_str(&format!("sent {} ({} bytes)\n", target.display(), src.size));
                self.changed = true;
                self.next += 1;
                Ok(())
            }
            AddDone::Placed(Err(e)) => Err(e),
            AddDone::Converged(Ok((changed, text))) => {
                self.step = Step::Next;
                self.report.push_str(&text);
                self.changed |= changed;
                self.next += 1;
                Ok(())
            }
            AddDone::Converged(Err(e)) => Err(e),
            AddDone::SourceGone => {
                log::info!(
                    "job {}: the stored source of {} is gone; fetching it again",
                    self.job_id,
                    self.files[self.next].0.path
                );
                store::create(&self.store).and_then(|()| self.start_receiving(true, out))
            }
        };
        match result {
            Ok(()) if self.next >= self.files.len() => Progress::Finished(self.done()),
            Ok(()) => Progress::Continue,
            Err(e) => Progress::Finished(self.give_up(e, now)),
        }
    }

    /// Every file is as asked: the outcome says whether any changed.
    fn done(&mut self) -> Outcome {
        let exit = match (self.changed, self.check) {
            (false, _) => Exit::Unchanged,
            (true, true) => Exit::WouldChange,
            (true, false) => Exit::Code(0),
        };
        self.outcome(exit)
    }

    /// Is the current file's wanted content computed on the node from its
    /// stored source (a blueprint, or a text file to diff)?
    fn via_store(&self) -> bool {
        let Some((src, _)) = self.files.get(self.next) else {
            return false;
        };
        self.blueprint.is_some() || (self.diff && src.size <= DIFF_SOURCE_CAP)
    }

    /// The mode the current file should have.
    fn wanted_mode(&self) -> u32 {
        self.mode
            .unwrap_or_else(|| self.files.get(self.next).map_or(0o644, |f| f.0.mode))
    }

    /// Hand the current file's stored source to the I/O thread, to render
    /// (or take), compare and write.
    fn converge(&mut self) {
        let (src, target) = &self.files[self.next];
        self.io = Some(AddIo::Converge(Box::new(Converge {
            source: self.store.join(&src.sha1),
            sha1: src.sha1.clone(),
            name: src.path.clone(),
            vars: self.blueprint.clone(),
            target: target.clone(),
            uid: self.uid,
            gid: self.gid,
            mode: self.wanted_mode(),
            check: self.check,
            diff: self.diff,
        })));
        self.step = Step::Io;
    }

    /// Do a bounded slice of work.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<ClientMsg>) -> Progress {
        self.now = now;
        match self.advance(out) {
            Ok(()) if self.next >= self.files.len() => Progress::Finished(self.done()),
            Ok(()) => Progress::Continue,
            Err(e) => Progress::Finished(self.give_up(e, now)),
        }
    }

    fn advance(&mut self, out: &mut Vec<ClientMsg>) -> Result<(), String> {
        match &mut self.step {
            Step::Next => {
                let Some((src, target)) = self.files.get(self.next) else {
                    return Ok(());
                };
                if self.via_store() {
                    if src.size > BLUEPRINT_CAP {
                        return Err(format!(
                            "blueprint {} is {} bytes; a blueprint is at most {BLUEPRINT_CAP}",
                            src.path, src.size
                        ));
                    }
                    let stored = self.store.join(&src.sha1);
                    return match fs::metadata(&stored) {
                        Ok(m) if m.is_file() && m.len() == src.size => {
                            self.converge();
                            Ok(())
                        }
                        _ => {
                            store::create(&self.store)?;
                            self.start_receiving(true, out)
                        }
                    };
                }
                if self.check {
                    return self.check_plain();
                }
                if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
                    fs::create_dir_all(parent)
                        .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
                }
                match fs::metadata(target) {
                    Ok(m) if m.is_file() && m.len() == src.size => {
                        let file = File::open(target)
                            .map_err(|e| format!("cannot read {}: {e}", target.display()))?;
                        self.step = Step::Checking {
                            file,
                            hasher: Sha1::new(),
                            left: src.size,
                        };
                        Ok(())
                    }
                    Ok(m) if m.is_dir() => Err(format!("{} is a directory", target.display())),
                    _ => self.start_receiving(false, out),
                }
            }
            Step::Checking { file, hasher, left } => {
                let mut buf = vec![0u8; HASH_SLICE.min(*left as usize)];
                let n = file
                    .read(&mut buf)
                    .map_err(|e| format!("cannot read the existing file: {e}"))?;
                hasher.update(&buf[..n]);
                *left -= n as u64;
                if n > 0 && *left > 0 {
                    return Ok(());
                }
                let digest = hex(std::mem::take(hasher));
                self.step = Step::Next;
                let mode = self.wanted_mode();
                let (src, target) = &self.files[self.next];
                let t = target.display().to_string();
                match (digest == src.sha1, self.check) {
                    (true, check) => {
                        let m =
                            fs::metadata(target).map_err(|e| format!("cannot read {t}: {e}"))?;
                        let would = if check { "would " } else { "" };
                        let mut text = String::new();
                        if attrs_text(&mut text, &m, self.uid, self.gid, mode, would, &t) {
                            if !check {
                                set_owner_and_mode_path(target, self.uid, self.gid, mode)?;
                            }
                            self.changed = true;
                        } else {
                            text = format!("unchanged {t}\n");
                        }
                        self.report.push_str(&text);
                        self.next += 1;
                        Ok(())
                    }
                    (false, true) => {
                        self.report
                            .push_str(&format!("would update {t} (content differs)\n"));
                        self.changed = true;
                        self.next += 1;
                        Ok(())
                    }
                    (false, false) => self.start_receiving(false, out),
                }
            }
            Step::Receiving { .. } | Step::Io => Ok(()),
        }
    }

    /// `--check` of a plain file: what would change, by its size, its
    /// SHA1 (hashed a slice per tick), mode and owner; nothing is fetched.
    fn check_plain(&mut self) -> Result<(), String> {
        let (src, target) = &self.files[self.next];
        let t = target.display().to_string();
        match fs::metadata(target) {
            Ok(m) if m.is_dir() => Err(format!("{t} is a directory")),
            Ok(m) if m.is_file() && m.len() == src.size => {
                let file = File::open(target).map_err(|e| format!("cannot read {t}: {e}"))?;
                self.step = Step::Checking {
                    file,
                    hasher: Sha1::new(),
                    left: src.size,
                };
                Ok(())
            }
            Ok(_) => {
                self.report
                    .push_str(&format!("would update {t} (content differs)\n"));
                self.changed = true;
                self.next += 1;
                Ok(())
            }
            Err(_) => {
                self.report
                    .push_str(&format!("would create {t} ({} bytes)\n", src.size));
                self.changed = true;
                self.next += 1;
                Ok(())
            }
        }
    }

    /// Fetch the current file: to its target, or (`to_store`) its source
    /// into the store.
    fn start_receiving(&mut self, to_store: bool, out: &mut Vec<ClientMsg>) -> Result<(), String> {
        let (src, target) = &self.files[self.next];
        let dir = if to_store {
            self.store.as_path()
        } else {
            target
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
        };
        let tmp = Tmp::create(dir)
            .map_err(|e| format!("cannot create a temporary file in {}: {e}", dir.display()))?;
        log::info!(
            "job {}: receiving {} ({} bytes){}",
            self.job_id,
            target.display(),
            src.size,
            if to_store {
                ", its source kept by SHA1"
            } else {
                ""
            }
        );
        let mut flow = Receiver::new(src.size, CHUNK, CREDIT);
        self.fetch(&mut flow, out);
        self.last_data = self.now;
        self.step = Step::Receiving {
            to_store,
            tmp,
            hasher: Sha1::new(),
            flow,
            synced: 0,
        };
        if src.size == 0 {
            return self.finish_file();
        }
        Ok(())
    }

    fn fetch(&self, flow: &mut Receiver, out: &mut Vec<ClientMsg>) {
        for (offset, len) in flow.requests() {
            out.push(ClientMsg::Fetch {
                job_id: self.job_id,
                file: self.next as u32,
                offset,
                len,
            });
        }
    }

    /// File data from the server.
    pub fn on_chunk(
        &mut self,
        file: u32,
        offset: u64,
        data: &[u8],
        now: Instant,
        out: &mut Vec<ClientMsg>,
    ) -> Progress {
        self.now = now;
        match self.take_chunk(file, offset, data, out) {
            Ok(()) if self.next >= self.files.len() => Progress::Finished(self.done()),
            Ok(()) => Progress::Continue,
            Err(e) => Progress::Finished(self.give_up(e, now)),
        }
    }

    fn take_chunk(
        &mut self,
        file: u32,
        offset: u64,
        data: &[u8],
        out: &mut Vec<ClientMsg>,
    ) -> Result<(), String> {
        let index = self.next;
        let Step::Receiving {
            tmp,
            hasher,
            flow,
            synced,
            to_store,
        } = &mut self.step
        else {
            return Err(format!("unexpected data for file {file}"));
        };
        if file as usize != index {
            return Err(format!("data for file {file} while receiving file {index}"));
        }
        flow.accept(offset, data.len())?;
        self.last_data = self.now;
        tmp.file.write_all_at(data, offset).map_err(|e| {
            if *to_store {
                format!(
                    "cannot keep the source of {} in {}: {e}",
                    self.files[index].0.path,
                    self.store.display()
                )
            } else {
                format!("cannot write {}: {e}", self.files[index].1.display())
            }
        })?;
        hasher.update(data);
        if flow.received() - *synced >= WRITEBACK_EVERY {
            start_writeback(&tmp.file, *synced, flow.received() - *synced);
            *synced = flow.received();
        }
        if !flow.is_complete() {
            let mut more = Vec::new();
            for (offset, len) in flow.requests() {
                more.push(ClientMsg::Fetch {
                    job_id: self.job_id,
                    file,
                    offset,
                    len,
                });
            }
            out.extend(more);
            return Ok(());
        }
        self.finish_file()
    }

    /// The whole file is in the temporary file: verify and put it in place.
    fn finish_file(&mut self) -> Result<(), String> {
        let Step::Receiving {
            tmp,
            hasher,
            to_store,
            ..
        } = std::mem::replace(&mut self.step, Step::Next)
        else {
            return Err("no file is being received".into());
        };
        let mode = self.wanted_mode();
        let (src, target) = &self.files[self.next];
        if hex(hasher) != src.sha1 {
            return Err(format!(
                "source {} changed since submission (its SHA1 differs); {} was left as it was",
                src.path,
                target.display()
            ));
        }
        // Owner, mode, sync and rename on the I/O thread; the next file
        // starts when it is back.
        self.io = Some(if to_store {
            AddIo::Place {
                tmp,
                target: self.store.join(&src.sha1),
                uid: None,
                gid: None,
                mode: 0o600,
            }
        } else {
            AddIo::Place {
                tmp,
                target: target.clone(),
                uid: self.uid,
                gid: self.gid,
                mode,
            }
        });
        self.step = Step::Io;
        Ok(())
    }

    /// The server could not serve a file.
    pub fn on_fetch_error(&mut self, file: u32, message: &str, now: Instant) -> Progress {
        self.now = now;
        let file = self
            .files
            .get(file as usize)
            .map_or("?", |f| f.0.path.as_str());
        let message = format!("file {file}: {message}");
        Progress::Finished(self.give_up(message, now))
    }

    /// End the job now with `message` (it failed, or stalled): what was
    /// sent so far stays in the report, the file being received is dropped.
    pub fn give_up(&mut self, message: String, now: Instant) -> Outcome {
        self.now = now;
        // Dropping a temporary file removes it.
        self.step = Step::Next;
        self.next = self.files.len();
        self.outcome(Exit::Error(message))
    }

    fn outcome(&mut self, exit: Exit) -> Outcome {
        Outcome {
            exit,
            stdout: std::mem::take(&mut self.report).into_bytes(),
            stderr: Vec::new(),
            stdout_dropped: 0,
            stderr_dropped: 0,
            exec_secs: self
                .now
                .saturating_duration_since(self.started)
                .as_secs_f64(),
            attempts: Vec::new(),
        }
    }
}

fn hex(hasher: Sha1) -> String {
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_source_gone_before_its_turn_is_fetched_again_not_a_failure() {
        let dir = std::env::temp_dir().join(format!("director-add-gone-{}", std::process::id()));
        let c = Converge {
            source: dir.join("0123456789abcdef0123456789abcdef01234567"),
            sha1: "0123456789abcdef0123456789abcdef01234567".into(),
            name: "app.conf.j2".into(),
            vars: None,
            target: dir.join("app.conf"),
            uid: None,
            gid: None,
            mode: 0o644,
            check: false,
            diff: false,
        };
        assert!(matches!(
            AddIo::Converge(Box::new(c)).run(),
            AddDone::SourceGone
        ));
        assert!(!dir.exists(), "nothing was written");
    }
}
