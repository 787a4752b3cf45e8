//! The crate's error type. Every variant carries enough context to read as one
//! line to an operator: "what failed: why". `exit_code` maps each kind to the
//! documented exit status of the CLI.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Exit status when everything succeeded.
pub const EXIT_OK: i32 = 0;
/// Exit status when remote work failed (a node failed, timed out or was lost).
pub const EXIT_FAILED: i32 = 1;
/// Exit status for bad usage, bad input, or a local error.
pub const EXIT_USAGE: i32 = 2;
/// Exit status when the server cannot be reached over its control socket.
pub const EXIT_UNREACHABLE: i32 = 3;
/// Exit status of `--wait` when some targets were offline (`unreachable`)
/// and nothing else went wrong.
pub const EXIT_NODES_OFFLINE: i32 = 4;
/// Exit status of `--check --wait` when something would change (drift),
/// nothing failed and every target answered.
pub const EXIT_WOULD_CHANGE: i32 = 5;

/// The exit status of `--wait` for the final states of its parts: a
/// failure anywhere wins over offline nodes, which win over drift found
/// by `--check`.
pub fn exit_for(states: impl IntoIterator<Item = crate::wire::JobState>) -> i32 {
    use crate::wire::JobState;
    let mut code = EXIT_OK;
    for s in states {
        match s {
            JobState::Unreachable => code = EXIT_NODES_OFFLINE,
            JobState::WouldChange if code == EXIT_OK => code = EXIT_WOULD_CHANGE,
            s if !s.is_ok() => return EXIT_FAILED,
            _ => {}
        }
    }
    code
}

/// Everything that can stop a `director` command.
#[derive(Debug)]
pub enum Error {
    /// The command line is wrong.
    Usage(String),
    /// A configuration source (file, environment, switch) holds a bad value.
    Config(String),
    /// A local I/O operation failed.
    Io { what: String, source: io::Error },
    /// A ZeroMQ operation failed.
    Zmq { what: String, source: zmq::Error },
    /// The CLI could not talk to the server over its control socket.
    Unreachable { path: PathBuf, source: io::Error },
    /// The server answered, but refused the request.
    Rejected(String),
    /// The server sent something the CLI could not understand, or hung up early.
    Protocol(String),
    /// The server will not have this client as a node (key rejected, name
    /// owned by another key): retrying cannot help.
    Refused(String),
}

/// The crate's result alias.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wrap an I/O error with what was being attempted.
    pub fn io(what: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// Wrap a ZeroMQ error with what was being attempted.
    pub fn zmq(what: impl Into<String>, source: zmq::Error) -> Error {
        Error::Zmq {
            what: what.into(),
            source,
        }
    }

    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Unreachable { .. } | Error::Protocol(_) => EXIT_UNREACHABLE,
            _ => EXIT_USAGE,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(msg) => write!(f, "{msg} (see director --help)"),
            Error::Config(msg)
            | Error::Rejected(msg)
            | Error::Protocol(msg)
            | Error::Refused(msg) => f.write_str(msg),
            Error::Io { what, source } => write!(f, "{what}: {source}"),
            Error::Zmq { what, source } => write!(f, "{what}: {source}"),
            Error::Unreachable { path, source } => write!(
                f,
                "cannot reach the director server at {}: {source} (is `director server` running with this --socket-path?)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } | Error::Unreachable { source, .. } => Some(source),
            Error::Zmq { source, .. } => Some(source),
            _ => None,
        }
    }
}
