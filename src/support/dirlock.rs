//! One daemon per directory, and the directory its owner's only.
//!
//! The lock is an exclusive `flock` on the directory itself, held for the
//! life of the process (the kernel drops it when the process dies, even by
//! SIGKILL, so a crash leaves nothing stale). A file in the directory could
//! be deleted or replaced under a running daemon, letting a second one in;
//! the directory cannot be swapped while it is held open and locked.
//! `director.lock` holds the owner's PID, only for the message the next
//! daemon prints.
//!
//! The directory holds keys, job history and cached values: it is made
//! mode 0700 (a directory that existed with more is narrowed, and one that
//! belongs to another user is refused), whatever the umask.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// File name of the PID note in each directory.
pub const FILE: &str = "director.lock";

/// A held lock; released when dropped or when the process ends.
#[derive(Debug)]
pub struct DirLock {
    _dir: File,
}

/// Lock `dir` (created if missing) for this process, or say who holds it.
/// `what` names the directory's role and option for the message, e.g.
/// "state directory (--state-path)".
pub fn lock(dir: &Path, what: &str) -> Result<DirLock> {
    create(dir, what)?;
    let handle = File::open(dir)
        .map_err(|e| Error::io(format!("cannot open the {what} {}", dir.display()), e))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(handle.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(Error::io(format!("cannot lock {}", dir.display()), e));
        }
        let mut text = String::new();
        if let Ok(mut f) = File::open(dir.join(FILE)) {
            let _ = f.read_to_string(&mut text);
        }
        return Err(Error::Config(held_by(&text, what, dir)));
    }
    let path = dir.join(FILE);
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| {
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
            f.set_len(0)?;
            f.rewind()?;
            write!(f, "{}", note())
        });
    if let Err(e) = written {
        return Err(Error::io(format!("cannot write {}", path.display()), e));
    }
    Ok(DirLock { _dir: handle })
}

/// What `director.lock` says of its owner: its PID on the first line (all
/// that older versions wrote), then its host name and PID namespace, so
/// that a daemon in another container sharing the volume is named as such.
fn note() -> String {
    format!(
        "{}\nhost {}\npidns {}\n",
        std::process::id(),
        crate::config::hostname(),
        pid_namespace().unwrap_or_default()
    )
}

fn pid_namespace() -> Option<String> {
    Some(
        fs::read_link("/proc/self/ns/pid")
            .ok()?
            .to_string_lossy()
            .into_owned(),
    )
}

/// The refusal for a directory whose lock is held, from its note.
fn held_by(note: &str, what: &str, dir: &Path) -> String {
    let mut lines = note.lines();
    let pid = lines.next().and_then(|l| l.trim().parse::<u32>().ok());
    let (mut host, mut ns) = (None, None);
    for l in lines {
        if let Some(h) = l.strip_prefix("host ") {
            host = Some(h.trim().to_owned()).filter(|h| !h.is_empty());
        } else if let Some(n) = l.strip_prefix("pidns ") {
            ns = Some(n.trim().to_owned()).filter(|n| !n.is_empty());
        }
    }
    let elsewhere = ns.is_some() && ns != pid_namespace();
    let dir = dir.display();
    match (pid, elsewhere) {
        (Some(pid), true) => format!(
            "the {what} {dir} is in use by a director in another container or PID namespace \
             (pid {pid} there{}): each daemon needs directories of its own; \
             give each container its own volume (or its own path)",
            host.map_or(String::new(), |h| format!(", host name {h}"))
        ),
        (Some(pid), false) => format!(
            "the {what} {dir} is in use by director process {pid}: stop it, \
             or give this one another directory"
        ),
        (None, _) => format!(
            "the {what} {dir} is in use by another director process: stop it, \
             or give this one another directory"
        ),
    }
}

/// Lock each distinct directory of `dirs` (the same directory twice would
/// conflict with itself: flock is per open file).
pub fn lock_all(dirs: &[(&Path, &str)]) -> Result<Vec<DirLock>> {
    let mut held: Vec<(PathBuf, DirLock)> = Vec::new();
    for (dir, what) in dirs {
        create(dir, what)?;
        let real = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        if held.iter().any(|(p, _)| *p == real) {
            continue;
        }
        held.push((real, lock(dir, what)?));
    }
    Ok(held.into_iter().map(|(_, l)| l).collect())
}

/// Create `dir` if missing, private to its owner: it holds keys, history,
/// cached values. An existing one is narrowed to 0700; one that belongs
/// to another user is refused (making it ours is its owner's call).
pub fn create(dir: &Path, what: &str) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| create_error(dir, what, e))?;
    let meta = fs::metadata(dir)
        .map_err(|e| Error::io(format!("cannot read the {what} {}", dir.display()), e))?;
    // SAFETY: geteuid cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(Error::Config(format!(
            "the {what} {} belongs to uid {}, not to this process's user (uid {me}): run as its owner (root for the default paths), or give {} a directory of this user's",
            dir.display(),
            meta.uid(),
            option_of(what)
        )));
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| {
            Error::io(
                format!(
                    "cannot make the {what} {} private (mode 0700)",
                    dir.display()
                ),
                e,
            )
        })?;
        log::info!(
            "the {what} {} was mode {:o}; made it 0700 (only its owner may read it)",
            dir.display(),
            meta.mode() & 0o777
        );
    }
    Ok(())
}

/// A directory that cannot be made: say what to do when it is a matter of
/// permissions (a user running a daemon with the default paths).
fn create_error(dir: &Path, what: &str, e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::PermissionDenied {
        return Error::Config(format!(
            "cannot create the {what} {}: permission denied; run as root, or give {} a directory this user may write",
            dir.display(),
            option_of(what)
        ));
    }
    Error::io(format!("cannot create the {what} {}", dir.display()), e)
}

/// The option in "state directory (--state-path)".
fn option_of(what: &str) -> &str {
    what.split_once('(')
        .and_then(|(_, o)| o.strip_suffix(')'))
        .unwrap_or("its option")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_a_dropped_one_is_free_again() {
        let d = std::env::temp_dir().join(format!("director-lock-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let held = lock(&d, "state directory (--state-path)").unwrap();
        let e = lock(&d, "state directory (--state-path)")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "the state directory (--state-path) {} is in use by director process {}: stop it, or give this one another directory",
                d.display(),
                std::process::id()
            )
        );
        drop(held);
        let again = lock_all(&[(&d, "cache"), (&d.join("."), "key directory")]).unwrap();
        assert_eq!(again.len(), 1);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_holder_in_another_pid_namespace_is_named_as_another_container() {
        let dir = Path::new("/var/lib/director/node");
        let what = "key directory (--key-path)";
        // Two client containers on one volume: the other's daemon is PID 2
        // in its own namespace, which says nothing here.
        let e = held_by("2\nhost web-2\npidns pid:[1]\n", what, dir);
        assert_eq!(
            e,
            "the key directory (--key-path) /var/lib/director/node is in use by a director in \
             another container or PID namespace (pid 2 there, host name web-2): each daemon \
             needs directories of its own; give each container its own volume (or its own path)"
        );
        // Ours, or a note from before host and namespace were written.
        let ours = format!("7\nhost h\npidns {}\n", pid_namespace().unwrap());
        assert!(held_by(&ours, what, dir).contains("in use by director process 7: stop it"));
        assert!(held_by("7\n", what, dir).contains("in use by director process 7: stop it"));
        assert!(held_by("", what, dir).contains("in use by another director process"));
    }

    #[test]
    fn deleting_the_pid_note_lets_no_second_daemon_in() {
        let d = std::env::temp_dir().join(format!("director-lock-rm-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let _held = lock(&d, "state directory (--state-path)").unwrap();
        fs::remove_file(d.join(FILE)).unwrap();
        let e = lock(&d, "state directory (--state-path)")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is in use by another director process"), "{e}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_directory_open_to_others_is_narrowed_and_one_of_another_user_refused() {
        let d = std::env::temp_dir().join(format!("director-lock-mode-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        let held = lock(&d, "cache directory (--cache-path)").unwrap();
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(d.join(FILE)).unwrap().mode() & 0o777, 0o600);
        drop(held);
        // SAFETY: geteuid touches no memory.
        if unsafe { libc::geteuid() } == 0 {
            // SAFETY: a valid C path; chown changes only ownership.
            let c = std::ffi::CString::new(d.as_os_str().as_encoded_bytes()).unwrap();
            assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
            let e = lock(&d, "cache directory (--cache-path)")
                .unwrap_err()
                .to_string();
            assert!(e.contains("belongs to uid 65534"), "{e}");
            assert!(e.contains("give --cache-path a directory"), "{e}");
        }
        fs::remove_dir_all(&d).unwrap();
    }
}
