//! One daemon per directory: an exclusive `flock` on `DIR/director.lock`,
//! held for the life of the process (the kernel drops it when the process
//! dies, even by SIGKILL, so a crash leaves nothing stale). The file holds
//! the owner's PID, for the message the next daemon prints.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// File name of the lock in each directory.
pub const FILE: &str = "director.lock";

/// A held lock; released when dropped or when the process ends.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Lock `dir` (created if missing) for this process, or say who holds it.
/// `what` names the directory's role and option for the message, e.g.
/// "state directory (--state-path)".
pub fn lock(dir: &Path, what: &str) -> Result<DirLock> {
    create(dir, what)?;
    let path = dir.join(FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(&path)
        .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(Error::io(format!("cannot lock {}", path.display()), e));
        }
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        let holder = match text.trim().parse::<u32>() {
            Ok(pid) => format!("director process {pid}"),
            Err(_) => "another director process".to_owned(),
        };
        return Err(Error::Config(format!(
            "the {what} {} is in use by {holder}: stop it, or give this one another directory",
            dir.display()
        )));
    }
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    if let Err(e) = written {
        return Err(Error::io(format!("cannot write {}", path.display()), e));
    }
    Ok(DirLock { _file: file })
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
/// cached values.
fn create(dir: &Path, what: &str) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(format!("cannot create the {what} {}", dir.display()), e))
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
}
