//! Reading ADD sources for nodes, one chunk at a time: never a whole file.
//! A source whose size changed since submission, or that vanished, is an
//! error the node reports; the node also checks the SHA1 of what it got.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::dsl::SourceFile;

/// Up to `len` bytes of `src` at `offset`.
pub fn read_chunk(src: &SourceFile, offset: u64, len: u32) -> Result<Vec<u8>, String> {
    let file = File::open(&src.path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => format!("source {} vanished since submission", src.path),
        _ => format!("cannot read source {}: {e}", src.path),
    })?;
    let size = file
        .metadata()
        .map_err(|e| format!("cannot read source {}: {e}", src.path))?
        .len();
    if size != src.size {
        return Err(format!(
            "source {} changed since submission (now {size} bytes, was {})",
            src.path, src.size
        ));
    }
    if offset > size {
        return Err(format!(
            "offset {offset} is past the end of {} ({size} bytes)",
            src.path
        ));
    }
    let want = (size - offset).min(u64::from(len)) as usize;
    let mut buf = vec![0u8; want];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| format!("cannot read source {}: {e}", src.path))?;
    Ok(buf)
}
