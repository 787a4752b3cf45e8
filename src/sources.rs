//! ADD sources on the server's machine: the CLI expands globs and measures
//! and hashes each file before anything is submitted, so a pattern that
//! matches nothing or a file that cannot be read is an error up front, and
//! the task SHA1 (and so the node's cache key) covers the content.
//! Files are hashed in fixed-size reads; none is held in memory.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};

use crate::dsl::{dest_is_dir, Action, Add, SourceFile, Task};

/// Fill in the files of an ADD task; other tasks are left as they are.
pub fn resolve(task: &mut Task) -> Result<(), String> {
    resolve_in(task, None)
}

/// As `resolve`, with relative sources found under `base` (an
/// orchestration file's directory) instead of the working directory. The
/// sources stay as written: the task's SHA1 does not depend on where the
/// file lies.
pub fn resolve_in(task: &mut Task, base: Option<&Path>) -> Result<(), String> {
    // A relative CACHEFILE is read here, and its values go with the job.
    if let Action::CacheFile(c) = &mut task.action {
        if c.here {
            let path = base.map_or_else(|| PathBuf::from(&c.path), |b| b.join(&c.path));
            c.values = crate::verbs::cachefile::load(&path, crate::verbs::cachefile::CAP_HERE)?;
        }
        return Ok(());
    }
    let Action::Add(add) = &mut task.action else {
        return Ok(());
    };
    let Add {
        sources,
        dest,
        files,
        ..
    } = &mut **add;
    files.clear();
    for pattern in sources.iter() {
        let pattern = match base {
            Some(dir) if Path::new(pattern).is_relative() => {
                dir.join(pattern).to_string_lossy().into_owned()
            }
            _ => pattern.clone(),
        };
        for path in expand(&pattern)? {
            files.push(describe(&path)?);
        }
    }
    if dest_is_dir(dest, files) {
        let mut names: Vec<&str> = files.iter().map(SourceFile::name).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!(
                "two sources are named '{}': they would land on the same file under {dest}",
                w[0]
            ));
        }
    }
    Ok(())
}

fn expand(pattern: &str) -> Result<Vec<PathBuf>, String> {
    if !pattern.contains(['*', '?', '[']) {
        return Ok(vec![PathBuf::from(pattern)]);
    }
    let paths = glob::glob(pattern).map_err(|e| format!("bad glob '{pattern}': {e}"))?;
    let mut out = Vec::new();
    for p in paths {
        let p = p.map_err(|e| {
            format!(
                "glob '{pattern}': cannot read {}: {}",
                e.path().display(),
                e.error()
            )
        })?;
        if p.is_file() {
            out.push(p);
        }
    }
    if out.is_empty() {
        return Err(format!("glob '{pattern}' matches no file"));
    }
    Ok(out)
}

/// Measure and hash one source file.
fn describe(path: &Path) -> Result<SourceFile, String> {
    let shown = path.display();
    let abs = path
        .canonicalize()
        .map_err(|e| format!("source {shown}: {e}"))?;
    let mut file = File::open(&abs).map_err(|e| format!("source {shown}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("source {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("source {shown} is not a regular file (ADD sends files; a glob such as {shown}/* sends a directory's files)"));
    }
    let mut hasher = Sha1::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                size += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("source {shown}: {e}")),
        }
    }
    let path = abs
        .to_str()
        .ok_or_else(|| format!("source {shown}: the path is not valid UTF-8"))?
        .to_owned();
    Ok(SourceFile {
        path,
        size,
        mode: meta.permissions().mode() & 0o7777,
        sha1: hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dsl::Verb;

    #[test]
    fn globs_expand_and_files_are_hashed() {
        let d = std::env::temp_dir().join(format!("director-sources-{}", std::process::id()));
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("a.conf"), "alpha").unwrap();
        std::fs::write(d.join("b.conf"), "").unwrap();
        std::fs::write(d.join("sub/a.conf"), "other").unwrap();
        let dir = d.display();

        let mut t = Task::parse(Verb::Add, &format!("--chown 0:0 {dir}/*.conf /etc/app/")).unwrap();
        resolve(&mut t).unwrap();
        let Action::Add(add) = &t.action else {
            panic!()
        };
        let files = &add.files;
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].name(), "a.conf");
        assert_eq!(files[0].size, 5);
        assert_eq!(files[0].sha1, crate::dsl::hex_sha1(b"alpha"));
        assert_eq!(files[1].sha1, crate::dsl::hex_sha1(b""));

        // The content is in the task SHA1.
        let before = t.sha1();
        std::fs::write(d.join("a.conf"), "beta!").unwrap();
        resolve(&mut t).unwrap();
        assert_ne!(t.sha1(), before);

        let mut t = Task::parse(Verb::Add, &format!("{dir}/*.none /x/")).unwrap();
        assert_eq!(
            resolve(&mut t).unwrap_err(),
            format!("glob '{dir}/*.none' matches no file")
        );
        let mut t = Task::parse(Verb::Add, &format!("{dir}/missing /x")).unwrap();
        assert!(resolve(&mut t).unwrap_err().contains("No such file"));
        let mut t = Task::parse(Verb::Add, &format!("{dir}/sub /x")).unwrap();
        assert!(resolve(&mut t).unwrap_err().contains("not a regular file"));
        let mut t = Task::parse(Verb::Add, &format!("{dir}/a.conf {dir}/sub/a.conf /x/")).unwrap();
        assert!(resolve(&mut t)
            .unwrap_err()
            .contains("two sources are named 'a.conf'"));
        std::fs::remove_dir_all(d).unwrap();
    }
}
