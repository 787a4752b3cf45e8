//! An append-only file of length-prefixed bincode records, the on-disk form
//! of the client cache, the server's job history and its key table.
//!
//! The loop appends records to memory (`append`); `take` cuts what was
//! appended into a `Batch` that any thread may write and sync, so the loop
//! never waits on the disk. A batch that fails (full or failing disk) leaves
//! the file as it was before it (its torn tail is cut off before the next
//! write, fsync failures included: pages that failed to sync are written
//! again, never trusted) and goes back in front of what was appended since,
//! so nothing is lost or reordered and a retry writes it all.
//!
//! `snapshot` replaces the whole file with live records only: temporary
//! file, fsync, rename, fsync of the directory. At load, records are read
//! one at a time (memory does not grow with the file), and a torn or
//! corrupt tail (a crash mid-append) is dropped with a warning.
//!
//! Every file it writes is its owner's only (mode 0600, an existing file
//! made so at open): journals hold outputs, values and keys.
//!
//! A file starts with a header naming the layout of its records (`Layout`):
//! a file of an older layout (or from before headers, layout 0) is
//! upgraded at open, record by record into a new file that replaces it
//! once synced, so a failed upgrade leaves it as it was; a newer layout is
//! refused, never misread.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

mod file;

use file::*;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest record accepted at load.
const MAX_RECORD: usize = 64 << 20;

/// What a compaction reads of the old file at once.
const COPY_CHUNK: u64 = 1 << 20;

/// A journal's first bytes: these, then its layout as a little-endian
/// u32. (Read as a record's length, they are far past `MAX_RECORD`: a file
/// from before headers never starts with them.)
const MAGIC: [u8; 4] = *b"DIRJ";
/// Where the first record starts.
pub const HEADER_LEN: u64 = 8;

/// The records of one journal, and how their encoding changed: bump
/// `VERSION` when a record's encoding changes, and teach `upgrade` the
/// layout before it.
pub trait Layout: Serialize + DeserializeOwned {
    /// The layout this build writes.
    const VERSION: u32;
    /// A record of layout `version` (older than `VERSION`; 0 is a file
    /// from before headers), from its encoded bytes; `None` if they do
    /// not decode as one.
    fn upgrade(version: u32, body: &[u8]) -> Option<Self>;
}

/// Decode one record body as `T`, all of it.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Option<T> {
    let config = bincode::config::standard().with_limit::<MAX_RECORD>();
    bincode::serde::decode_from_slice(body, config)
        .ok()
        .filter(|(_, used)| *used == body.len())
        .map(|(rec, _)| rec)
}

#[cfg(test)]
impl Layout for String {
    const VERSION: u32 = 1;
    fn upgrade(_: u32, body: &[u8]) -> Option<Self> {
        decode(body)
    }
}

#[cfg(test)]
impl Layout for u32 {
    const VERSION: u32 = 1;
    fn upgrade(_: u32, body: &[u8]) -> Option<Self> {
        decode(body)
    }
}

/// A journal's write for another thread (the owner's I/O worker): a
/// batch of appended records, or a rewrite; hand the result back to the
/// journal's owner.
pub enum JournalIo {
    Write(Batch),
    Rewrite(Rewrite),
}

/// What the other thread did with a `JournalIo`.
pub enum JournalIoDone {
    Written(Result<(), (Batch, io::Error)>),
    Rewritten(Result<(), (Rewrite, io::Error)>),
}

impl JournalIo {
    /// Do it (on the I/O thread).
    pub fn run(self) -> JournalIoDone {
        match self {
            JournalIo::Write(batch) => JournalIoDone::Written(batch.run()),
            JournalIo::Rewrite(rw) => JournalIoDone::Rewritten(rw.run()),
        }
    }
}

/// What `open_lazy` hands over: a record, or what its `head` took from it.
pub enum Lazy<T, H> {
    Whole(T),
    Head(H),
}

/// The most a lazy open reads of a record it takes by its head.
pub const PEEK: usize = 4096;

/// One journal, as the loop holds it.
pub struct Journal {
    path: PathBuf,
    file: Arc<Mutex<JournalFile>>,
    /// Appended, not yet handed to a batch.
    pending: Vec<u8>,
    /// Where the next record lands in the file. Failed writes are retried
    /// at the same place, so an offset, once given, holds.
    end: u64,
    /// Records in the file and pending, live or not: the owner compacts
    /// when it is many more than what it holds.
    records: usize,
}

/// The file itself, written by whichever thread runs a batch.
struct JournalFile {
    path: PathBuf,
    file: File,
    /// Length of the file up to the last write that succeeded.
    good_len: u64,
    /// A write failed after `good_len`: cut the file back before the next.
    torn: bool,
    /// What a rewrite starts with.
    header: [u8; HEADER_LEN as usize],
    /// Space kept allocated past the end (`Journal::reserve`), and where
    /// the allocation reaches.
    reserve: u64,
    reserved_to: u64,
}

/// Appended records, to be written (and synced) on any thread.
pub struct Batch {
    file: Arc<Mutex<JournalFile>>,
    bytes: Vec<u8>,
    sync: bool,
}

/// A whole new content for the file.
pub struct Rewrite {
    file: Arc<Mutex<JournalFile>>,
    /// The new records, encoded.
    bytes: Vec<u8>,
    /// The file in order: ranges of `bytes`, and records copied.
    parts: Vec<Piece>,
    /// The file's length and records before and after, to give the
    /// rewrite up (`Journal::abandon`).
    before: (u64, usize),
    after: (u64, usize),
}

#[cfg(test)]
impl Rewrite {
    /// How many pieces (new bytes, copies) the file is written in.
    pub fn pieces(&self) -> usize {
        self.parts.len()
    }
}

/// One record of a rewrite: new bytes, or a record kept where the current
/// file has it (its bytes need not be in memory).
pub enum Item<T> {
    New(T),
    Copy(Span),
}

/// Where a record is in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub at: u64,
    pub len: u32,
}

enum Piece {
    Bytes(std::ops::Range<usize>),
    Copy(Span),
}

/// Where a rewrite puts the records it copies, both ways: a few bytes per
/// run of records adjacent in both files, not per record (after a first
/// compaction, a job's finished parts are one run).
#[derive(Default)]
pub struct Moves {
    /// In the order of the new file.
    runs: Vec<Run>,
    /// Indexes into `runs`, in the order of the old file.
    by_old: Vec<u32>,
}

#[derive(Clone, Copy)]
struct Run {
    old: u64,
    new: u64,
    len: u64,
}

impl Moves {
    fn new(runs: Vec<Run>) -> Moves {
        let mut by_old: Vec<u32> = (0..runs.len() as u32).collect();
        by_old.sort_unstable_by_key(|&i| runs[i as usize].old);
        Moves { runs, by_old }
    }

    /// Where the record at `old` is in the new file, if it was copied.
    pub fn forward(&self, old: Span) -> Option<Span> {
        let i = self
            .by_old
            .partition_point(|&i| self.runs[i as usize].old <= old.at)
            .checked_sub(1)?;
        let r = self.runs[self.by_old[i] as usize];
        Run::within(old, r.old, r.len).map(|off| Span {
            at: r.new + off,
            len: old.len,
        })
    }

    /// Where a copied record now at `new` was in the old file.
    pub fn back(&self, new: Span) -> Option<Span> {
        let i = self
            .runs
            .partition_point(|r| r.new <= new.at)
            .checked_sub(1)?;
        let r = self.runs[i];
        Run::within(new, r.new, r.len).map(|off| Span {
            at: r.old + off,
            len: new.len,
        })
    }
}

impl Run {
    /// The offset of `span` in the run starting at `start`, if it lies
    /// whole within it.
    fn within(span: Span, start: u64, len: u64) -> Option<u64> {
        let off = span.at.checked_sub(start)?;
        (off + u64::from(span.len) <= len).then_some(off)
    }
}

/// Reads records back from the file, on any thread.
#[derive(Clone)]
pub struct Reader {
    file: Arc<Mutex<JournalFile>>,
}

impl Journal {
    /// Open (creating `dir` and the file) and hand every whole record to
    /// `each`, in order, reading one record at a time. A file of an older
    /// layout is upgraded first.
    pub fn open_with<T: Layout>(
        dir: &Path,
        name: &str,
        mut each: impl FnMut(T, Span),
    ) -> io::Result<Journal> {
        Journal::open_lazy::<T, ()>(
            dir,
            name,
            |_| None,
            |rec, span| {
                if let Lazy::Whole(rec) = rec {
                    each(rec, span)
                }
            },
        )
    }

    /// Like `open_with`, where `head` may take a record from its first
    /// bytes (at most `PEEK`): then the rest of it is skipped, never read
    /// (a record's bulk, such as a job's output, stays on disk for a
    /// `Reader`), and `each` gets the head. Opening then costs what the
    /// heads are, not what the file is.
    pub fn open_lazy<T: Layout, H>(
        dir: &Path,
        name: &str,
        head: impl Fn(&[u8]) -> Option<H>,
        mut each: impl FnMut(Lazy<T, H>, Span),
    ) -> io::Result<Journal> {
        fs::create_dir_all(dir)?;
        let path = dir.join(name);
        match read_header(&path)? {
            Header::Fresh => write_fresh(&path, T::VERSION)?,
            Header::Layout(v) if v == T::VERSION => {}
            Header::Layout(v) if v > T::VERSION => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} was written by a newer director (record layout {v}; this one reads up to {}); the file was left as it is: run that version or a later one",
                        path.display(),
                        T::VERSION
                    ),
                ));
            }
            Header::Layout(v) => upgrade::<T>(&path, v, HEADER_LEN)?,
            Header::Legacy => upgrade::<T>(&path, 0, 0)?,
        }
        let mut good_len = HEADER_LEN;
        let f = File::open(&path)?;
        let total = f.metadata()?.len();
        let mut r = BufReader::with_capacity(1 << 16, f);
        let mut header_bytes = [0u8; HEADER_LEN as usize];
        r.read_exact(&mut header_bytes)?;
        let mut body = Vec::new();
        let mut records = 0;
        while good_len < total {
            let mut len_bytes = [0u8; 4];
            if !read_full(&mut r, &mut len_bytes)? {
                torn_tail(&path, total - good_len);
                break;
            }
            let len = u32::from_le_bytes(len_bytes) as usize;
            // No record is empty; zeros here are a hole (see refuse_or_cut).
            if len == 0 || len > MAX_RECORD {
                refuse_or_cut(&path, &mut r, good_len, total)?;
                break;
            }
            let used = 4 + len;
            if good_len + used as u64 > total {
                torn_tail(&path, total - good_len);
                break;
            }
            let span = Span {
                at: good_len,
                len: used as u32,
            };
            body.resize(len.min(PEEK), 0);
            if !read_full(&mut r, &mut body)? {
                torn_tail(&path, total - good_len);
                break;
            }
            records += 1;
            if let Some(h) = head(&body) {
                r.seek_relative((len - body.len()) as i64)?;
                each(Lazy::Head(h), span);
                good_len += used as u64;
                continue;
            }
            let have = body.len();
            body.resize(len, 0);
            if !read_full(&mut r, &mut body[have..])? {
                torn_tail(&path, total - good_len);
                break;
            }
            // A record of this layout that does not decode is unreadable,
            // like a damaged one.
            let Some(rec) = decode::<T>(&body) else {
                refuse_or_cut(&path, &mut r, good_len, total)?;
                break;
            };
            each(Lazy::Whole(rec), span);
            good_len += used as u64;
        }
        let file = open_rw(&path)?;
        // A torn tail is cut off before the first append: records after it
        // would never be read.
        let torn = file.metadata()?.len() != good_len;
        Ok(Journal {
            path: path.clone(),
            file: Arc::new(Mutex::new(JournalFile {
                path,
                file,
                good_len,
                torn,
                header: header(T::VERSION),
                reserve: 0,
                reserved_to: 0,
            })),
            pending: Vec::new(),
            end: good_len,
            records,
        })
    }

    /// Open and collect every record (for small journals).
    pub fn open<T: Layout>(dir: &Path, name: &str) -> io::Result<(Journal, Vec<T>)> {
        let mut out = Vec::new();
        let j = Journal::open_with(dir, name, |r, _| out.push(r))?;
        Ok((j, out))
    }

    /// Append one record, in memory until a batch writes it; where it
    /// will be in the file.
    pub fn append<T: Serialize>(&mut self, rec: &T) -> Span {
        self.records += 1;
        let before = self.pending.len();
        encode_into(&mut self.pending, rec);
        let len = (self.pending.len() - before) as u32;
        let span = Span { at: self.end, len };
        self.end += u64::from(len);
        span
    }

    /// Keep `bytes` allocated past the file's end from now on (renewed as
    /// appends use it): appends that fit in it work on a full disk. For a
    /// journal whose small records must land when nothing else can.
    pub fn reserve(&mut self, bytes: u64) {
        let mut f = lock(&self.file);
        f.reserve = bytes;
        f.keep_reserve();
    }

    /// Is anything appended and not yet handed to a batch?
    pub fn is_dirty(&self) -> bool {
        !self.pending.is_empty()
    }

    /// What was appended so far, to be written and synced (`sync`) or only
    /// written.
    pub fn take(&mut self, sync: bool) -> Option<Batch> {
        if self.pending.is_empty() {
            return None;
        }
        Some(Batch {
            file: Arc::clone(&self.file),
            bytes: std::mem::take(&mut self.pending),
            sync,
        })
    }

    /// What was appended so far (perhaps nothing), to be written, then
    /// everything written so far synced.
    pub fn take_synced(&mut self) -> Batch {
        Batch {
            file: Arc::clone(&self.file),
            bytes: std::mem::take(&mut self.pending),
            sync: true,
        }
    }

    /// Records another journal of this layout encoded (a server's
    /// replicated log), appended as they are; how many. Refused, and
    /// nothing appended, unless `bytes` are whole records.
    pub fn append_encoded(&mut self, bytes: &[u8]) -> Result<usize, String> {
        let n = count_records(bytes)?;
        self.pending.extend_from_slice(bytes);
        self.records += n;
        self.end += bytes.len() as u64;
        Ok(n)
    }

    /// The whole file replaced by records another journal of this layout
    /// encoded; refused unless they are whole records.
    pub fn replace_encoded(&mut self, bytes: Vec<u8>) -> Result<Rewrite, String> {
        let n = count_records(&bytes)?;
        self.pending.clear();
        let before = (self.end, self.records);
        self.records = n;
        self.end = HEADER_LEN + bytes.len() as u64;
        let parts = if bytes.is_empty() {
            Vec::new()
        } else {
            vec![Piece::Bytes(0..bytes.len())]
        };
        Ok(Rewrite {
            file: Arc::clone(&self.file),
            bytes,
            parts,
            before,
            after: (self.end, n),
        })
    }

    /// Every record on disk, as encoded (blocking: read from the file).
    /// What is appended and not yet written is not in it.
    pub fn encoded(&self) -> io::Result<Vec<u8>> {
        self.reader().encoded()
    }

    /// A batch that failed goes back in front of what came after it.
    pub fn put_back(&mut self, batch: Batch) {
        let mut bytes = batch.bytes;
        bytes.append(&mut self.pending);
        self.pending = bytes;
    }

    /// Forget what was appended and not yet handed to a batch: records
    /// whose write failed and that must not be written later.
    pub fn drop_pending(&mut self) {
        self.end -= self.pending.len() as u64;
        self.pending.clear();
    }

    /// Take back the record at `span`, the last one appended (its write
    /// failed, and it must not be written later). False if it is not last.
    pub fn retract(&mut self, span: Span) -> bool {
        let len = span.len as usize;
        if span.at + u64::from(span.len) != self.end || self.pending.len() < len {
            return false;
        }
        self.pending.truncate(self.pending.len() - len);
        self.end = span.at;
        self.records -= 1;
        true
    }

    /// Write and sync everything appended, on this thread.
    #[cfg(test)]
    pub fn sync_now(&mut self) -> io::Result<()> {
        let Some(batch) = self.take(true) else {
            return Ok(());
        };
        match batch.run() {
            Ok(()) => Ok(()),
            Err((batch, e)) => {
                self.put_back(batch);
                Err(e)
            }
        }
    }

    /// The file's new content: `recs`, which must cover everything appended
    /// so far (it replaces it). Run the rewrite on any thread.
    pub fn snapshot<T: Serialize>(&mut self, recs: impl IntoIterator<Item = T>) -> Rewrite {
        self.snapshot_items(recs.into_iter().map(Item::New)).0
    }

    /// Like `snapshot`, where some records are copied from the current
    /// file: each must be durable there (nothing pending or failed before
    /// it). Items come one at a time: nothing is collected but the new
    /// bytes, in one buffer, and the copies' runs, adjacent ones merged,
    /// which also say where each copied record goes (`Moves`).
    pub fn snapshot_items<T: Serialize>(
        &mut self,
        items: impl IntoIterator<Item = Item<T>>,
    ) -> (Rewrite, Moves) {
        let mut parts = Vec::new();
        let mut runs: Vec<Run> = Vec::new();
        let mut bytes = Vec::new();
        let mut at = HEADER_LEN;
        let mut records = 0;
        // Start of the new bytes not yet in a piece.
        let mut run = 0;
        for item in items {
            records += 1;
            let len = match item {
                Item::New(rec) => {
                    let before = bytes.len();
                    encode_into(&mut bytes, &rec);
                    (bytes.len() - before) as u64
                }
                Item::Copy(old) => {
                    if run < bytes.len() {
                        parts.push(Piece::Bytes(run..bytes.len()));
                        run = bytes.len();
                    }
                    // Records that follow each other in the old file are
                    // one copy (after a first compaction, most are).
                    match parts.last_mut() {
                        Some(Piece::Copy(prev))
                            if prev.at + u64::from(prev.len) == old.at
                                && prev.len.checked_add(old.len).is_some() =>
                        {
                            prev.len += old.len;
                            if let Some(last) = runs.last_mut() {
                                last.len += u64::from(old.len);
                            }
                        }
                        _ => {
                            parts.push(Piece::Copy(old));
                            runs.push(Run {
                                old: old.at,
                                new: at,
                                len: u64::from(old.len),
                            });
                        }
                    }
                    u64::from(old.len)
                }
            };
            at += len;
        }
        if run < bytes.len() {
            parts.push(Piece::Bytes(run..bytes.len()));
        }
        self.pending.clear();
        let before = (self.end, self.records);
        self.records = records;
        self.end = at;
        let rewrite = Rewrite {
            file: Arc::clone(&self.file),
            bytes,
            parts,
            before,
            after: (at, records),
        };
        (rewrite, Moves::new(runs))
    }

    /// A rewrite that failed is given up: the file is as it was, and what
    /// was appended since lands after its old end. Returns how far those
    /// records move (their spans, given for the new layout, move by as
    /// much): old end minus new end.
    pub fn abandon(&mut self, rw: &Rewrite) -> i64 {
        let shift = rw.before.0 as i64 - rw.after.0 as i64;
        self.end = (self.end as i64 + shift) as u64;
        self.records = rw.before.1 + self.records.saturating_sub(rw.after.1);
        shift
    }

    /// Where the rewritten file ends (records appended after it start
    /// there).
    pub fn rewrite_end(rw: &Rewrite) -> u64 {
        rw.after.0
    }

    /// A reader of this journal's records, for another thread.
    pub fn reader(&self) -> Reader {
        Reader {
            file: Arc::clone(&self.file),
        }
    }

    /// Records in the file and pending, live or not.
    pub fn records(&self) -> usize {
        self.records
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// How many whole records `bytes` are, or why they are not.
fn count_records(bytes: &[u8]) -> Result<usize, String> {
    Ok(split_records(bytes)?.len())
}

/// The bodies of the whole records `bytes` hold, or why they are not
/// whole records.
fn split_records(bytes: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < bytes.len() {
        let Some(len) = bytes.get(at..at + 4) else {
            return Err(format!("a record's length is cut off at byte {at}"));
        };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len == 0 || len > MAX_RECORD {
            return Err(format!("a record of {len} bytes at byte {at}"));
        }
        let Some(body) = bytes.get(at + 4..at + 4 + len) else {
            return Err(format!(
                "the last record is cut off ({} bytes)",
                bytes.len()
            ));
        };
        out.push(body);
        at += 4 + len;
    }
    Ok(out)
}

/// Records another journal of `T`'s layout encoded (`Journal::encoded`),
/// decoded; refused unless every one is whole and decodes.
pub fn decode_encoded<T: DeserializeOwned>(bytes: &[u8]) -> Result<Vec<T>, String> {
    split_records(bytes)?
        .into_iter()
        .enumerate()
        .map(|(i, body)| decode(body).ok_or_else(|| format!("record {} does not decode", i + 1)))
        .collect()
}

impl Batch {
    /// The records it writes, as encoded.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Does it end with a sync (else it only writes into the page cache)?
    pub fn syncs(&self) -> bool {
        self.sync
    }

    /// Write the batch and, if asked, sync it. On failure the batch comes
    /// back, to be put back into its journal.
    pub fn run(self) -> Result<(), (Batch, io::Error)> {
        let result = lock(&self.file).write(&self.bytes, self.sync);
        result.map_err(|e| (self, e))
    }
}

impl Rewrite {
    /// Replace the file, atomically and durably. On failure the rewrite
    /// comes back, to be tried again.
    pub fn run(self) -> Result<(), (Rewrite, io::Error)> {
        let result = lock(&self.file).replace(&self.bytes, &self.parts);
        result.map_err(|e| (self, e))
    }
}

impl Reader {
    /// Every record on disk, as encoded.
    pub fn encoded(&self) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let f = lock(&self.file);
        let mut buf = vec![0u8; f.good_len.saturating_sub(HEADER_LEN) as usize];
        f.file.read_exact_at(&mut buf, HEADER_LEN)?;
        Ok(buf)
    }

    /// The record at `span`.
    pub fn read<T: DeserializeOwned>(&self, span: Span) -> io::Result<T> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; span.len as usize];
        lock(&self.file).file.read_exact_at(&mut buf, span.at)?;
        let mut body = Vec::new();
        let rec = match next_frame(&mut buf.as_slice(), &mut body)? {
            Frame::Whole(used) if used == buf.len() => decode(&body),
            _ => None,
        };
        match rec {
            Some(rec) => Ok(rec),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no whole record at offset {}", span.at),
            )),
        }
    }
}

impl JournalFile {
    fn write(&mut self, bytes: &[u8], sync: bool) -> io::Result<()> {
        if self.torn {
            self.file.set_len(self.good_len)?;
            self.torn = false;
            // A truncation frees what was allocated past the end too.
            self.reserved_to = 0;
        }
        self.torn = true;
        self.file.write_all(bytes)?;
        if sync {
            self.file.sync_data()?;
        }
        self.torn = false;
        self.good_len += bytes.len() as u64;
        self.keep_reserve();
        Ok(())
    }

    /// Allocate `reserve` bytes past the end once less than half of it is
    /// left. Best effort: on a full disk (or a file system without
    /// `fallocate`) what is left of it is used, and it is tried again
    /// after the next write.
    fn keep_reserve(&mut self) {
        use std::os::fd::AsRawFd;
        if self.reserve == 0 || self.reserved_to >= self.good_len + self.reserve / 2 {
            return;
        }
        // Less on a small file system (a quarter, a sixteenth).
        for len in [self.reserve, self.reserve / 4, self.reserve / 16] {
            let (Ok(at), Ok(n)) = (
                libc::off_t::try_from(self.good_len),
                libc::off_t::try_from(len),
            ) else {
                return;
            };
            // SAFETY: a valid open descriptor; KEEP_SIZE changes no content.
            let r =
                unsafe { libc::fallocate(self.file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, at, n) };
            if r == 0 {
                self.reserved_to = self.good_len + len;
                return;
            }
        }
    }

    fn replace(&mut self, bytes: &[u8], parts: &[Piece]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = self.path.with_extension("tmp");
        // Not started without room for the copy and a margin: on a nearly
        // full disk the appends that still fit come first.
        let size: u64 = parts
            .iter()
            .map(|p| match p {
                Piece::Bytes(r) => r.len() as u64,
                Piece::Copy(s) => u64::from(s.len),
            })
            .sum();
        let need = size + size / 10 + (64 << 10);
        if let Some(free) = free_bytes(dir).filter(|free| *free < need) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "{} MiB free, about {} MiB needed for the copy",
                    free >> 20,
                    need >> 20
                ),
            ));
        }
        let mut len = HEADER_LEN;
        let written = (|| {
            let mut f = io::BufWriter::with_capacity(1 << 16, create_private(&tmp)?);
            f.write_all(&self.header)?;
            let mut buf = Vec::new();
            for piece in parts {
                match piece {
                    Piece::Bytes(range) => {
                        f.write_all(&bytes[range.clone()])?;
                        len += range.len() as u64;
                    }
                    // A piece may be many records merged: in bounded
                    // reads, never whole.
                    Piece::Copy(span) => {
                        let end = span.at + u64::from(span.len);
                        let mut at = span.at;
                        while at < end {
                            let n = (end - at).min(COPY_CHUNK);
                            buf.resize(n as usize, 0);
                            self.file.read_exact_at(&mut buf, at)?;
                            f.write_all(&buf)?;
                            at += n;
                        }
                        len += u64::from(span.len);
                    }
                }
            }
            let f = f.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        self.file = open_rw(&self.path)?;
        self.good_len = len;
        self.torn = false;
        self.reserved_to = 0;
        self.keep_reserve();
        Ok(())
    }
}
#[cfg(test)]
mod tests;
