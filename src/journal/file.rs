//! The journal file on disk: its header, frames, upgrades, torn tails
//! and damage, and the system calls around it.

use super::*;

/// Free bytes for this process on the filesystem holding `dir`.
pub(super) fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs only fills the struct; zeroes are a valid start.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a statvfs to fill.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The journal file, for appends and for reading records back; its
/// owner's only, whatever mode it had.
pub(super) fn open_rw(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    make_private(&f)?;
    Ok(f)
}

/// A new file (or an emptied one) that only its owner may read, whatever
/// the umask.
pub(super) fn create_private(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    make_private(&f)?;
    Ok(f)
}

/// Mode 0600 for a file others may read or write: `mode` at creation
/// does not touch a file that already existed.
pub(super) fn make_private(f: &File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if f.metadata()?.permissions().mode() & 0o077 != 0 {
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// The file behind a journal; a panic elsewhere while it was held leaves
/// nothing half-done in it that the next write does not cut off.
pub(super) fn lock(file: &Mutex<JournalFile>) -> std::sync::MutexGuard<'_, JournalFile> {
    file.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn encode_into<T: Serialize>(out: &mut Vec<u8>, rec: &T) {
    // Our own record types always encode.
    let body = bincode::serde::encode_to_vec(rec, bincode::config::standard())
        .expect("journal records encode");
    out.extend((body.len() as u32).to_le_bytes());
    out.extend(body);
}

/// What the next bytes of a journal hold.
pub(super) enum Frame {
    /// A whole frame, its body read into the buffer, and the bytes it took.
    Whole(usize),
    /// The file ends before the frame does: a write cut short.
    Short,
    /// A length no record has: too long, or zero (zeros where a frame
    /// starts: a power loss's hole in an unsynced write if only zeros
    /// follow to the end, damage if records do).
    TooLong,
}

pub(super) fn next_frame(r: &mut impl Read, body: &mut Vec<u8>) -> io::Result<Frame> {
    let mut head = [0u8; 4];
    if !read_full(r, &mut head)? {
        return Ok(Frame::Short);
    }
    let len = u32::from_le_bytes(head) as usize;
    // No record is empty.
    if len == 0 || len > MAX_RECORD {
        return Ok(Frame::TooLong);
    }
    body.resize(len, 0);
    if !read_full(r, body)? {
        return Ok(Frame::Short);
    }
    Ok(Frame::Whole(4 + len))
}

/// What a journal's first bytes say.
pub(super) enum Header {
    /// No file, or one cut short before its header was whole.
    Fresh,
    /// A file from before headers.
    Legacy,
    Layout(u32),
}

pub(super) fn header(version: u32) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..4].copy_from_slice(&MAGIC);
    h[4..].copy_from_slice(&version.to_le_bytes());
    h
}

pub(super) fn read_header(path: &Path) -> io::Result<Header> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Header::Fresh),
        Err(e) => return Err(e),
    };
    let mut head = Vec::with_capacity(HEADER_LEN as usize);
    (&mut f).take(HEADER_LEN).read_to_end(&mut head)?;
    if head.len() == HEADER_LEN as usize && head[..4] == MAGIC {
        let v = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        return Ok(Header::Layout(v));
    }
    // A crash while a new file got its header leaves a part of it (or,
    // unsynced, zeros): nothing was ever written after it.
    let partial = head.iter().zip(MAGIC).all(|(b, m)| *b == m)
        || (head.iter().all(|b| *b == 0) && f.metadata()?.len() == head.len() as u64);
    if head.len() < HEADER_LEN as usize && partial {
        return Ok(Header::Fresh);
    }
    Ok(Header::Legacy)
}

/// A new, empty journal of `version`, durably.
pub(super) fn write_fresh(path: &Path, version: u32) -> io::Result<()> {
    let mut f = create_private(path)?;
    f.write_all(&header(version))?;
    f.sync_all()?;
    sync_dir(path);
    Ok(())
}

pub(super) fn sync_dir(path: &Path) {
    if let Ok(d) = File::open(path.parent().unwrap_or(Path::new("."))) {
        let _ = d.sync_all();
    }
}

/// Rewrite a journal of layout `from` (its records starting at `start`)
/// in `T`'s layout: record by record into a new file, which replaces the
/// old one only once whole and synced.
pub(super) fn upgrade<T: Layout>(path: &Path, from: u32, start: u64) -> io::Result<()> {
    let tmp = path.with_extension("upgrade");
    let mut records = 0usize;
    let written = (|| {
        let f = File::open(path)?;
        let total = f.metadata()?.len();
        let mut r = BufReader::with_capacity(1 << 16, f);
        io::copy(&mut (&mut r).take(start), &mut io::sink())?;
        let mut w = io::BufWriter::with_capacity(1 << 16, create_private(&tmp)?);
        w.write_all(&header(T::VERSION))?;
        let mut at = start;
        let mut body = Vec::new();
        let mut out = Vec::new();
        while at < total {
            match next_frame(&mut r, &mut body)? {
                Frame::Whole(used) => {
                    let Some(rec) = T::upgrade(from, &body) else {
                        refuse_or_cut(path, &mut r, at, total)?;
                        break;
                    };
                    out.clear();
                    encode_into(&mut out, &rec);
                    w.write_all(&out)?;
                    records += 1;
                    at += used as u64;
                }
                Frame::TooLong => {
                    refuse_or_cut(path, &mut r, at, total)?;
                    break;
                }
                Frame::Short => {
                    torn_tail(path, total - at);
                    break;
                }
            }
        }
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io::Error::new(
            e.kind(),
            format!(
                "cannot upgrade {} from record layout {from} to {}: {e}",
                path.display(),
                T::VERSION
            ),
        ));
    }
    sync_dir(path);
    log::info!(
        "{}: upgraded {records} records from layout {from} to {}",
        path.display(),
        T::VERSION
    );
    Ok(())
}

pub(super) fn torn_tail(path: &Path, bytes: u64) {
    log::warn!(
        "{}: dropped a torn or corrupt tail of {bytes} bytes",
        path.display()
    );
}

/// A whole record at `at` cannot be read. Records are only ever appended:
/// with more after it, it was not cut short by a crash. It was written by
/// another version, or the file is damaged; dropping it and all that
/// follows would lose acknowledged work, so the open is refused. Last (or
/// followed by zeros only), it is a torn tail, dropped.
pub(super) fn refuse_or_cut(path: &Path, r: &mut impl Read, at: u64, total: u64) -> io::Result<()> {
    if !rest_is_zero(r)? {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the record at byte {at} of {} cannot be read, and more follow (written by another version of director, or damaged); the file was left as it is: run the version that wrote it, or keep the records before it with `truncate -s {at} {}`",
                path.display(),
                path.display()
            ),
        ));
    }
    torn_tail(path, total - at);
    Ok(())
}

/// Are the rest of `r`'s bytes all zero (what a crash can leave after the
/// last record on some file systems)?
pub(super) fn rest_is_zero(r: &mut impl Read) -> io::Result<bool> {
    let mut buf = [0u8; 1 << 14];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) if buf[..n].iter().any(|&b| b != 0) => return Ok(false),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Fill `buf`; false at an end of file before it is full.
pub(super) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut at = 0;
    while at < buf.len() {
        match r.read(&mut buf[at..]) {
            Ok(0) => return Ok(false),
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
