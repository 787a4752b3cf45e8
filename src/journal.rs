//! An append-only file of length-prefixed bincode records, the on-disk form
//! of the client cache and the server's job history. Appends are plain
//! writes; `sync` makes them durable (the owner decides when). `rewrite`
//! replaces the whole file with live records only: temporary file, fsync,
//! rename, fsync of the directory. At load, a torn or corrupt tail (a crash
//! mid-append) is dropped with a warning and the rest is kept.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest record accepted at load.
const MAX_RECORD: usize = 64 << 20;

/// One journal file.
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Records in the file, live or not: the owner compacts when it is many
    /// more than what it holds.
    records: usize,
    dirty: bool,
}

impl Journal {
    /// Open (creating `dir` and the file) and read every whole record.
    pub fn open<T: DeserializeOwned>(dir: &Path, name: &str) -> io::Result<(Journal, Vec<T>)> {
        fs::create_dir_all(dir)?;
        let path = dir.join(name);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            match next_record(rest) {
                Some((rec, tail)) => {
                    out.push(rec);
                    rest = tail;
                }
                None => {
                    log::warn!(
                        "{}: dropped a torn or corrupt tail of {} bytes",
                        path.display(),
                        rest.len()
                    );
                    break;
                }
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let records = out.len();
        Ok((
            Journal {
                path,
                file,
                records,
                dirty: false,
            },
            out,
        ))
    }

    /// Append one record (durable after the next `sync`).
    pub fn append<T: Serialize>(&mut self, rec: &T) -> io::Result<()> {
        self.records += 1;
        self.dirty = true;
        self.file.write_all(&encode(rec))
    }

    /// Make every append so far durable; free when nothing was appended.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.dirty {
            self.file.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Records in the file, live or not.
    pub fn records(&self) -> usize {
        self.records
    }

    /// Replace the file with `recs`, atomically and durably.
    pub fn rewrite<T: Serialize>(&mut self, recs: impl IntoIterator<Item = T>) -> io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = self.path.with_extension("tmp");
        let mut out = Vec::new();
        let mut records = 0;
        for rec in recs {
            out.extend(encode(&rec));
            records += 1;
        }
        let mut f = File::create(&tmp)?;
        f.write_all(&out)?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.records = records;
        self.dirty = false;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn encode<T: Serialize>(rec: &T) -> Vec<u8> {
    // Our own record types always encode.
    let body = bincode::serde::encode_to_vec(rec, bincode::config::standard())
        .expect("journal records encode");
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend(body);
    out
}

fn next_record<T: DeserializeOwned>(bytes: &[u8]) -> Option<(T, &[u8])> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    if len > MAX_RECORD {
        return None;
    }
    let body = bytes.get(4..4 + len)?;
    let config = bincode::config::standard().with_limit::<MAX_RECORD>();
    let (rec, used) = bincode::serde::decode_from_slice(body, config).ok()?;
    (used == len).then_some((rec, &bytes[4 + len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_survive_and_a_torn_tail_is_dropped() {
        let d = std::env::temp_dir().join(format!("director-journal-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let (mut j, recs) = Journal::open::<String>(&d, "j.bin").unwrap();
        assert!(recs.is_empty());
        j.append(&"one".to_string()).unwrap();
        j.append(&"two".to_string()).unwrap();
        j.sync().unwrap();
        drop(j);
        let mut f = OpenOptions::new()
            .append(true)
            .open(d.join("j.bin"))
            .unwrap();
        f.write_all(&[9, 0, 0, 0, b'x']).unwrap();
        drop(f);
        let (mut j, recs) = Journal::open::<String>(&d, "j.bin").unwrap();
        assert_eq!(recs, vec!["one".to_string(), "two".to_string()]);
        j.rewrite(["two".to_string()]).unwrap();
        assert_eq!(j.records(), 1);
        j.append(&"three".to_string()).unwrap();
        drop(j);
        let (_, recs) = Journal::open::<String>(&d, "j.bin").unwrap();
        assert_eq!(recs, vec!["two".to_string(), "three".to_string()]);
        fs::remove_dir_all(d).unwrap();
    }
}
