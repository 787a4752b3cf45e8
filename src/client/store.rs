//! The node's store of the ADD sources it computes on (blueprints, and
//! plain files kept for `--diff`): one file per SHA1, in `blueprints/`
//! under `--cache-path`.
//!
//! It is only a cache, and a bounded one: an entry that is missing is
//! fetched again, a damaged one is removed (by the job that finds it).
//! After a job stores something, the entries used least recently go until
//! the store is within `MAX_BYTES` and `MAX_FILES`, so a template edited
//! every day does not fill the node's disk with its old versions. Using an
//! entry renews its modification time (at most once per `RENEW`, so an
//! unchanged rerun does not rewrite an inode per file), and that time is
//! the order of eviction.

use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// The most bytes the store keeps.
pub const MAX_BYTES: u64 = 64 << 20;
/// The most entries it keeps.
pub const MAX_FILES: usize = 4096;
/// An entry used is renewed when its time is older than this.
const RENEW: Duration = Duration::from_secs(3600);
/// A temporary file left by a killed client (where `O_TMPFILE` is not
/// supported) is removed once it is this old.
const STALE_TMP: Duration = Duration::from_secs(3600);

/// Mark an entry as used now (its modification time), unless it was
/// marked recently. Failing only makes it an earlier candidate for
/// eviction, so it is not an error.
pub fn renew(file: &File, now: SystemTime) {
    let Ok(meta) = file.metadata() else {
        return;
    };
    let recent = meta
        .modified()
        .ok()
        .and_then(|m| now.duration_since(m).ok())
        .is_some_and(|age| age < RENEW);
    if !recent {
        if let Err(e) = file.set_modified(now) {
            log::debug!("cannot renew a stored source: {e}");
        }
    }
}

/// Create the store, private as the rest of the cache is: templates can
/// hold what an operator would not show every local user.
pub fn create(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// What a pruning did.
#[derive(Debug, PartialEq, Eq)]
pub struct Pruned {
    pub removed: usize,
    pub freed: u64,
    pub kept: usize,
    pub kept_bytes: u64,
}

/// Is `name` an entry's name (40 lowercase hex digits)?
fn is_entry(name: &str) -> bool {
    name.len() == 40 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Remove the entries used least recently until at most `max_bytes` and
/// `max_files` are left, and temporary files older than an hour. Runs on
/// the I/O thread.
pub fn prune(
    dir: &Path,
    max_bytes: u64,
    max_files: usize,
    now: SystemTime,
) -> Result<Pruned, String> {
    let listing = match fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Pruned {
                removed: 0,
                freed: 0,
                kept: 0,
                kept_bytes: 0,
            })
        }
        Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
    };
    let mut entries = Vec::new();
    let mut removed = 0;
    let mut freed = 0;
    for item in listing {
        let item = item.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let name = item.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let Ok(meta) = item.metadata() else {
            continue; // gone meanwhile
        };
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        if is_entry(name) && meta.is_file() {
            entries.push((modified, meta.len(), item.path()));
        } else if name.starts_with(".director-tmp-")
            && now
                .duration_since(modified)
                .is_ok_and(|age| age > STALE_TMP)
            && fs::remove_file(item.path()).is_ok()
        {
            removed += 1;
            freed += meta.len();
        }
    }
    let mut bytes: u64 = entries.iter().map(|e| e.1).sum();
    // Newest first: what is kept is a prefix.
    entries.sort_by_key(|e| std::cmp::Reverse(e.0));
    while entries.len() > max_files || bytes > max_bytes {
        let Some((_, len, path)) = entries.pop() else {
            break;
        };
        match fs::remove_file(&path) {
            Ok(()) => {
                removed += 1;
                freed += len;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {}: {e}", path.display())),
        }
        bytes -= len;
    }
    Ok(Pruned {
        removed,
        freed,
        kept: entries.len(),
        kept_bytes: bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dir: &Path, i: u8, len: usize, age_s: u64, now: SystemTime) -> std::path::PathBuf {
        let p = dir.join(format!("{:040x}", i));
        fs::write(&p, vec![b'x'; len]).unwrap();
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(now - Duration::from_secs(age_s))
            .unwrap();
        p
    }

    fn tmpdir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("director-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_least_recently_used_entries_go_first_until_within_both_bounds() {
        let d = tmpdir("lru");
        let now = SystemTime::now();
        let old = entry(&d, 1, 100, 300, now);
        let older = entry(&d, 2, 100, 400, now);
        let new = entry(&d, 3, 100, 10, now);
        let mid = entry(&d, 4, 100, 200, now);
        fs::write(d.join("not-an-entry"), b"kept").unwrap();
        // By bytes: 400 held, 250 allowed: the two oldest go.
        let p = prune(&d, 250, 10, now).unwrap();
        assert_eq!(
            p,
            Pruned {
                removed: 2,
                freed: 200,
                kept: 2,
                kept_bytes: 200
            }
        );
        assert!(!older.exists() && !old.exists());
        assert!(new.exists() && mid.exists() && d.join("not-an-entry").exists());
        // By count.
        let p = prune(&d, 1 << 20, 1, now).unwrap();
        assert_eq!(p.removed, 1);
        assert!(new.exists() && !mid.exists());
        // Within bounds: nothing goes.
        assert_eq!(prune(&d, 1 << 20, 1, now).unwrap().removed, 0);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn stale_temporary_files_go_and_fresh_ones_stay() {
        let d = tmpdir("tmp");
        let now = SystemTime::now();
        let stale = d.join(".director-tmp-1-0");
        let fresh = d.join(".director-tmp-1-1");
        for p in [&stale, &fresh] {
            fs::write(p, b"partial").unwrap();
        }
        File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(now - Duration::from_secs(7200))
            .unwrap();
        let p = prune(&d, 0, 0, now).unwrap();
        assert_eq!(p.removed, 1);
        assert!(!stale.exists() && fresh.exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_missing_store_is_empty_and_renewing_moves_an_entry_to_the_back() {
        let now = SystemTime::now();
        assert_eq!(
            prune(Path::new("/nonexistent/director-store"), 0, 0, now)
                .unwrap()
                .kept,
            0
        );
        let d = tmpdir("renew");
        let a = entry(&d, 1, 10, 7200, now);
        let b = entry(&d, 2, 10, 5000, now);
        renew(&File::open(&a).unwrap(), now);
        prune(&d, 10, 10, now).unwrap();
        assert!(a.exists() && !b.exists(), "the renewed entry is kept");
        // Renewed recently: not rewritten again.
        let before = fs::metadata(&a).unwrap().modified().unwrap();
        renew(&File::open(&a).unwrap(), now + Duration::from_secs(60));
        assert_eq!(fs::metadata(&a).unwrap().modified().unwrap(), before);
        fs::remove_dir_all(&d).unwrap();
    }
}
