//! The files ADD writes: temporary files beside their destination,
//! persisted by rename, their owner and mode.

use super::*;

/// A temporary file beside the destination, removed unless persisted.
pub struct Tmp {
    pub file: File,
    /// `None` for an unnamed `O_TMPFILE`, which needs no cleanup.
    named: Option<PathBuf>,
}

impl Tmp {
    pub fn create(dir: &Path) -> io::Result<Tmp> {
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
    pub fn persist(mut self, target: &Path) -> io::Result<()> {
        let dir = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let named = match self.named.take() {
            Some(p) => p,
            None => {
                // An unnamed file gets its name from /proc: the target's
                // itself when there is none yet (so a kill leaves either
                // nothing or the whole file, never a temporary name),
                // else a temporary one that replaces it by rename.
                match self.link_as(target) {
                    Ok(()) => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
                let path = tmp_name(dir);
                self.link_as(&path)?;
                path
            }
        };
        fs::rename(&named, target).inspect_err(|_| {
            let _ = fs::remove_file(&named);
        })
    }
}

impl Tmp {
    /// Give the unnamed file the name `path` (which must not exist).
    fn link_as(&self, path: &Path) -> io::Result<()> {
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
        Ok(())
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        if let Some(p) = self.named.take() {
            let _ = fs::remove_file(p);
        }
    }
}

pub(super) fn tmp_name(dir: &Path) -> PathBuf {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".director-tmp-{}-{n}", std::process::id()))
}

/// Ask the kernel to start writing back a range, without waiting.
pub(super) fn start_writeback(file: &File, offset: u64, len: u64) {
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
pub fn resolve_owner(spec: &str) -> Result<(Option<u32>, Option<u32>), String> {
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

pub(super) fn set_owner_and_mode_fd(
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

pub(super) fn set_owner_and_mode_path(
    path: &Path,
    uid: Option<u32>,
    gid: Option<u32>,
    mode: u32,
) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    set_owner_and_mode_fd(&file, uid, gid, mode).map_err(|e| format!("{}: {e}", path.display()))
}
