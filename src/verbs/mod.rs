//! The verbs that manage a node's state beyond RUN, ADD and WORKDIR: one
//! module each, holding the verb's arguments, their parsing (shared by the
//! CLI, `--dry-run` and the node), and what the node runs to check and to
//! apply them. The server never looks inside: it carries the task.
//!
//! Each verb runs on the node as a child process of the client loop, like
//! RUN: a short POSIX shell script built here, whose exit status says
//! whether it worked and whose last marker line (`MARK` and the job's id)
//! says whether anything changed. The script prints, for the operator, what
//! it did or (with `--check`) would do.

pub mod cachefile;
pub mod package;
pub mod podman;
pub mod service;
pub mod wait;

/// A verb-specific option as written: its name and, for those that take
/// one, its value.
pub type Flag = (&'static str, Option<String>);

/// The line a verb's script prints, with the job's id, when it changed
/// something (or, checking, would).
pub const MARK: &str = "director-changed";

/// `word` as one single-quoted shell word.
pub fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Package and unit names: what a package manager or systemd takes, and
/// nothing a shell would read as syntax (`nginx`, `python3.11`,
/// `libfoo-dev:amd64`, `getty@tty1.service`, `foo=1.2-1`).
pub fn check_item(word: &str, what: &str) -> Result<(), String> {
    let ok = !word.is_empty()
        && !word.starts_with('-')
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+-:@=~^".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} '{word}' is not a valid name (letters, digits and . _ + - : @ = ~ ^)"
        ))
    }
}

/// Strip the marker line from a script's output: whether it was there.
pub fn take_mark(stdout: &mut Vec<u8>, job_id: &uuid::Uuid) -> bool {
    let mark = format!("{MARK} {job_id}\n");
    let text = String::from_utf8_lossy(stdout);
    if !text.contains(&mark) {
        return false;
    }
    let kept = text.replace(&mark, "");
    *stdout = kept.into_bytes();
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_names() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
        assert!(check_item("getty@tty1.service", "unit").is_ok());
        assert!(check_item("libfoo-dev:amd64", "package").is_ok());
        for bad in ["", "-rf", "a;b", "a b", "$(x)", "a`b`"] {
            assert!(check_item(bad, "package").is_err(), "{bad}");
        }
        let id = uuid::Uuid::nil();
        let mut out = format!("installed x\n{MARK} {id}\n").into_bytes();
        assert!(take_mark(&mut out, &id));
        assert_eq!(out, b"installed x\n");
        assert!(!take_mark(&mut out, &id));
    }
}
