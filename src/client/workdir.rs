//! WORKDIR on a node (on the I/O thread: a hung mount or a name service
//! must not stop the loop): the directory, its parents, and with
//! `--chown`/`--chmod` its owner and mode, changed only where they differ.
//! With `--check` nothing is touched: the report says what would change.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

/// A WORKDIR to bring about.
pub struct DirTask {
    pub path: PathBuf,
    pub chown: Option<String>,
    pub mode: Option<u32>,
    pub check: bool,
    /// `--stdout-arg NAME`: keep the path as that ARG (the runner takes
    /// it before the task goes to the I/O thread).
    pub stdout_arg: Option<String>,
}

/// What was done (or, checking, would be): whether anything changed, and
/// one line per change.
pub struct Report {
    pub changed: bool,
    /// Nothing was touched (`--check`).
    pub check: bool,
    pub text: String,
}

impl DirTask {
    pub fn run(&self) -> Result<Report, String> {
        let p = self.path.display();
        let (uid, gid) = match &self.chown {
            Some(spec) => super::add::resolve_owner(spec)?,
            None => (None, None),
        };
        let mut text = String::new();
        let would = if self.check { "would " } else { "" };
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) if m.is_dir() => Some(m),
            Ok(_) => return Err(format!("{p} exists and is not a directory")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("cannot read {p}: {e}")),
        };
        if meta.is_none() {
            text.push_str(&format!("{would}create {p}\n"));
            if self.check {
                return Ok(Report {
                    changed: true,
                    check: true,
                    text,
                });
            }
            std::fs::create_dir_all(&self.path)
                .map_err(|e| format!("cannot create directory {p}: {e}"))?;
        }
        let meta = std::fs::metadata(&self.path).map_err(|e| format!("cannot read {p}: {e}"))?;
        let owner_differs =
            uid.is_some_and(|u| u != meta.uid()) || gid.is_some_and(|g| g != meta.gid());
        if owner_differs {
            text.push_str(&format!(
                "{would}change the owner of {p} from {}:{} to {}:{}\n",
                meta.uid(),
                meta.gid(),
                uid.unwrap_or(meta.uid()),
                gid.unwrap_or(meta.gid())
            ));
            if !self.check {
                std::os::unix::fs::chown(&self.path, uid, gid)
                    .map_err(|e| format!("cannot change the owner of {p}: {e}"))?;
            }
        }
        if let Some(mode) = self.mode {
            // A chown may have cleared set-id bits: read the mode again.
            let now = std::fs::metadata(&self.path)
                .map(|m| m.mode() & 0o7777)
                .unwrap_or(meta.mode() & 0o7777);
            if now != mode {
                text.push_str(&format!(
                    "{would}change the mode of {p} from {now:04o} to {mode:04o}\n"
                ));
                if !self.check {
                    std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(mode))
                        .map_err(|e| format!("cannot change the mode of {p}: {e}"))?;
                }
            }
        }
        Ok(Report {
            changed: !text.is_empty(),
            check: self.check,
            text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_converges_and_a_check_changes_nothing() {
        let base = std::env::temp_dir().join(format!("director-workdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let path = base.join("a/b");
        let task = |check| DirTask {
            stdout_arg: None,
            path: path.clone(),
            chown: None,
            mode: Some(0o750),
            check,
        };
        let r = task(true).run().unwrap();
        assert!(
            r.changed && r.text.starts_with("would create"),
            "{}",
            r.text
        );
        assert!(!path.exists());
        let r = task(false).run().unwrap();
        assert!(r.changed, "{}", r.text);
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o750);
        let r = task(false).run().unwrap();
        assert!(!r.changed, "{}", r.text);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        let r = task(true).run().unwrap();
        assert_eq!(
            r.text,
            format!(
                "would change the mode of {} from 0700 to 0750\n",
                path.display()
            )
        );
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o700);
        std::fs::write(base.join("f"), "").unwrap();
        let e = DirTask {
            stdout_arg: None,
            path: base.join("f"),
            chown: None,
            mode: None,
            check: false,
        }
        .run()
        .err()
        .unwrap();
        assert!(e.contains("is not a directory"), "{e}");
        let _ = std::fs::remove_dir_all(&base);
    }
}
