//! What both daemons and the CLI stand on: time, the log, rate-limited
//! log lines, directory locks, user and group lookups, PID 1's duties.

pub mod base64;
pub mod clock;
pub mod dirlock;
pub mod hash;
pub mod ids;
pub mod init;
pub mod logger;
#[cfg(test)]
pub mod mutation;
pub mod ratelog;
