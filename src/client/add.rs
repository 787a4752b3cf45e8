//! ADD/COPY on a node: for each file, skip it when the destination already
//! has the source's SHA1 ("unchanged"); otherwise pull it in chunks with a
//! bounded credit into a temporary file beside the destination, check the
//! SHA1, set the source's mode and the requested owner, and rename it into
//! place. The temporary file is an unnamed `O_TMPFILE` where the filesystem
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
use std::time::Instant;

use sha1::{Digest, Sha1};
use uuid::Uuid;

use crate::dsl::{dest_is_dir, hex_sha1, Action, SourceFile, Task};
use crate::ids;
use crate::template;
use crate::transfer::Receiver;
use crate::wire::{ClientMsg, Exit, Outcome, CHUNK, CREDIT};

/// Bytes of an existing file hashed per loop tick.
const HASH_SLICE: usize = 4 << 20;
/// Start writeback every this many bytes received.
const WRITEBACK_EVERY: u64 = 16 << 20;

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Where the job stands.
enum Step {
    /// Start file `next` on the next tick.
    Next,
    /// Hashing the file already at the destination.
    Checking { file: File, hasher: Sha1, left: u64 },
    /// Pulling the file into a temporary file.
    Receiving {
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
}

/// What the I/O thread found.
pub enum AddDone {
    Resolved(Result<(Option<u32>, Option<u32>), String>),
    Placed(Result<(), String>),
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
        }
    }
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
    step: Step,
    /// Work for the I/O thread, for the runner to hand over.
    io: Option<AddIo>,
    report: String,
    started: Instant,
    /// When data last came from the server (or was first asked for).
    last_data: Instant,
}

impl AddJob {
    /// Plan the job: render the destination and resolve the owner. An error
    /// ends the job before any transfer.
    pub fn new(job_id: Uuid, task: &Task, vars: &template::Vars) -> Result<AddJob, String> {
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
            step,
            io,
            report: String::new(),
            started: Instant::now(),
            last_data: Instant::now(),
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

    /// Is it waiting for the I/O thread? (Then it must not be abandoned: the
    /// file may be put in place anyway.)
    pub fn in_io(&self) -> bool {
        matches!(self.step, Step::Io)
    }

    /// The I/O thread is done with what this job gave it.
    pub fn io_done(&mut self, done: AddDone, out: &mut Vec<ClientMsg>) -> Progress {
        let result = match done {
            AddDone::Resolved(Ok((uid, gid))) => {
                (self.uid, self.gid) = (uid, gid);
                self.step = Step::Next;
                self.advance(out)
            }
            AddDone::Resolved(Err(e)) => Err(e),
            AddDone::Placed(Ok(())) => {
                self.step = Step::Next;
                let (src, target) = &self.files[self.next];
                self.report
                    .push_str(&format!("sent {} ({} bytes)\n", target.display(), src.size));
                self.next += 1;
                Ok(())
            }
            AddDone::Placed(Err(e)) => Err(e),
        };
        match result {
            Ok(()) if self.next >= self.files.len() => {
                Progress::Finished(self.outcome(Exit::Code(0)))
            }
            Ok(()) => Progress::Continue,
            Err(e) => Progress::Finished(self.give_up(e)),
        }
    }

    /// Do a bounded slice of work.
    pub fn tick(&mut self, out: &mut Vec<ClientMsg>) -> Progress {
        match self.advance(out) {
            Ok(()) if self.next >= self.files.len() => {
                Progress::Finished(self.outcome(Exit::Code(0)))
            }
            Ok(()) => Progress::Continue,
            Err(e) => Progress::Finished(self.give_up(e)),
        }
    }

    fn advance(&mut self, out: &mut Vec<ClientMsg>) -> Result<(), String> {
        match &mut self.step {
            Step::Next => {
                let Some((src, target)) = self.files.get(self.next) else {
                    return Ok(());
                };
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
                    _ => self.start_receiving(out),
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
                let (src, target) = &self.files[self.next];
                if digest == src.sha1 {
                    set_owner_and_mode_path(target, self.uid, self.gid, src.mode)?;
                    self.report
                        .push_str(&format!("unchanged {}\n", target.display()));
                    self.next += 1;
                    Ok(())
                } else {
                    self.start_receiving(out)
                }
            }
            Step::Receiving { .. } | Step::Io => Ok(()),
        }
    }

    fn start_receiving(&mut self, out: &mut Vec<ClientMsg>) -> Result<(), String> {
        let (src, target) = &self.files[self.next];
        let dir = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = Tmp::create(dir)
            .map_err(|e| format!("cannot create a temporary file in {}: {e}", dir.display()))?;
        log::info!(
            "job {}: receiving {} ({} bytes)",
            self.job_id,
            target.display(),
            src.size
        );
        let mut flow = Receiver::new(src.size, CHUNK, CREDIT);
        self.fetch(&mut flow, out);
        self.last_data = Instant::now();
        self.step = Step::Receiving {
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
        out: &mut Vec<ClientMsg>,
    ) -> Progress {
        match self.take_chunk(file, offset, data, out) {
            Ok(()) if self.next >= self.files.len() => {
                Progress::Finished(self.outcome(Exit::Code(0)))
            }
            Ok(()) => Progress::Continue,
            Err(e) => Progress::Finished(self.give_up(e)),
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
        } = &mut self.step
        else {
            return Err(format!("unexpected data for file {file}"));
        };
        if file as usize != index {
            return Err(format!("data for file {file} while receiving file {index}"));
        }
        flow.accept(offset, data.len())?;
        self.last_data = Instant::now();
        tmp.file
            .write_all_at(data, offset)
            .map_err(|e| format!("cannot write {}: {e}", self.files[index].1.display()))?;
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
        let Step::Receiving { tmp, hasher, .. } = std::mem::replace(&mut self.step, Step::Next)
        else {
            return Err("no file is being received".into());
        };
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
        self.io = Some(AddIo::Place {
            tmp,
            target: target.clone(),
            uid: self.uid,
            gid: self.gid,
            mode: src.mode,
        });
        self.step = Step::Io;
        Ok(())
    }

    /// The server could not serve a file.
    pub fn on_fetch_error(&mut self, file: u32, message: &str) -> Progress {
        let file = self
            .files
            .get(file as usize)
            .map_or("?", |f| f.0.path.as_str());
        let message = format!("file {file}: {message}");
        Progress::Finished(self.give_up(message))
    }

    /// End the job now with `message` (it failed, or stalled): what was
    /// sent so far stays in the report, the file being received is dropped.
    pub fn give_up(&mut self, message: String) -> Outcome {
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
            exec_secs: self.started.elapsed().as_secs_f64(),
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

/// A temporary file beside the destination, removed unless persisted.
pub struct Tmp {
    file: File,
    /// `None` for an unnamed `O_TMPFILE`, which needs no cleanup.
    named: Option<PathBuf>,
}

impl Tmp {
    fn create(dir: &Path) -> io::Result<Tmp> {
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o600)
            .open(dir)
        {
            Ok(file) => return Ok(Tmp { file, named: None }),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
                ) => {}
            Err(e) => return Err(e),
        }
        let path = tmp_name(dir);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok(Tmp {
            file,
            named: Some(path),
        })
    }

    /// Give the file its final name, replacing what was there.
    fn persist(mut self, target: &Path) -> io::Result<()> {
        let dir = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let named = match self.named.take() {
            Some(p) => p,
            None => {
                // An unnamed file gets a name first: link it from /proc.
                let path = tmp_name(dir);
                let src = CString::new(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
                    .map_err(io::Error::other)?;
                let dst = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
                // SAFETY: both are valid NUL-terminated paths.
                let rc = unsafe {
                    libc::linkat(
                        libc::AT_FDCWD,
                        src.as_ptr(),
                        libc::AT_FDCWD,
                        dst.as_ptr(),
                        libc::AT_SYMLINK_FOLLOW,
                    )
                };
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
                path
            }
        };
        fs::rename(&named, target).inspect_err(|_| {
            let _ = fs::remove_file(&named);
        })
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        if let Some(p) = self.named.take() {
            let _ = fs::remove_file(p);
        }
    }
}

fn tmp_name(dir: &Path) -> PathBuf {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".director-tmp-{}-{n}", std::process::id()))
}

/// Ask the kernel to start writing back a range, without waiting.
fn start_writeback(file: &File, offset: u64, len: u64) {
    // SAFETY: plain syscall on a descriptor we own; failure only costs a
    // longer final sync.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as i64,
            len as i64,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// `USER[:GROUP]`, names or numbers, to ids on this node.
fn resolve_owner(spec: &str) -> Result<(Option<u32>, Option<u32>), String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let uid =
        ids::user_id(user).ok_or_else(|| format!("--chown: unknown user '{user}' on this node"))?;
    let gid = match group {
        None => None,
        Some(g) => Some(
            ids::group_id(g).ok_or_else(|| format!("--chown: unknown group '{g}' on this node"))?,
        ),
    };
    Ok((Some(uid), gid))
}

fn set_owner_and_mode_fd(
    file: &File,
    uid: Option<u32>,
    gid: Option<u32>,
    mode: u32,
) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: plain syscalls on a descriptor we own. Owner first: chown
    // clears set-id bits that chmod then puts back.
    unsafe {
        if (uid.is_some() || gid.is_some())
            && libc::fchown(fd, uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX)) != 0
        {
            return Err(io::Error::last_os_error());
        }
        if libc::fchmod(fd, mode) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn set_owner_and_mode_path(
    path: &Path,
    uid: Option<u32>,
    gid: Option<u32>,
    mode: u32,
) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    set_owner_and_mode_fd(&file, uid, gid, mode).map_err(|e| format!("{}: {e}", path.display()))
}

/// The cache key of an ADD: its task SHA1 (which covers the contents) and
/// the rendered destination.
pub fn cache_key(task: &Task, vars: &template::Vars) -> Option<String> {
    let Action::Add(add) = &task.action else {
        return None;
    };
    let dest = template::render(&add.dest, vars).ok()?;
    Some(hex_sha1(format!("{}\0{dest}", task.sha1()).as_bytes()))
}
