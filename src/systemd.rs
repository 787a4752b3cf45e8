//! `director-server-systemd` and `director-client-systemd`: write the systemd
//! unit that runs director in that mode, pointing at the director binary
//! that sits beside the helper (so it works from a virtualenv-like prefix as
//! well as from /usr/bin), and create the config file it reads if missing.
//! Shared by the two helper binaries through `#[path]`; std and lexopt only.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

const SERVER_UNIT: &str = include_str!("../systemd/director-server.service");
const CLIENT_UNIT: &str = include_str!("../systemd/director-client.service");

const CONFIG_HEADER: &str = "\
# director configuration: keys are the long option names, for example
#   heartbeat_interval: 60
#   server_address: director.example.com   (clients)
#   bind_address: \"*\"                       (server)
# Trust (see the README's Security section), one of:
#   shared_key: <the same long random secret on the server and every node>
#   server_key: <`director manage --show-key` on the server>  (clients;
#                then accept each node there with --accept-key)
# Keep this file mode 0600 when it holds the shared key.
# See `director --help` for every option.
";

/// Which unit to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Server,
    Client,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Server => "server",
            Mode::Client => "client",
        }
    }
}

/// What to write, and where.
#[derive(Debug, PartialEq)]
pub struct Plan {
    pub unit_dir: PathBuf,
    pub config_file: PathBuf,
    pub director: PathBuf,
}

fn usage(mode: Mode) -> String {
    format!(
        "director-{m}-systemd — write the systemd unit for `director {m}`

Usage: director-{m}-systemd [--unit-dir DIR] [--config-file FILE] [--director PATH]

  --unit-dir DIR      where to write director-{m}.service [default: /etc/systemd/system]
  --config-file FILE  the config file the unit passes to director; created (with
                      comments only) if missing [default: /etc/director/config.yaml]
  --director PATH     the director binary [default: the one beside this helper,
                      else the first on PATH]

Then: systemctl daemon-reload && systemctl enable --now director-{m}
",
        m = mode.name()
    )
}

/// Parse the helper's arguments; `Ok(None)` when help was printed.
pub fn parse(mode: Mode, args: Vec<OsString>) -> Result<Option<Plan>, String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let mut unit_dir = PathBuf::from("/etc/systemd/system");
    let mut config_file = PathBuf::from("/etc/director/config.yaml");
    let mut director = None;
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Short('h') | Long("help") => {
                print!("{}", usage(mode));
                return Ok(None);
            }
            Long("unit-dir") => unit_dir = parser.value().map_err(|e| e.to_string())?.into(),
            Long("config-file") => config_file = parser.value().map_err(|e| e.to_string())?.into(),
            Long("director") => {
                director = Some(PathBuf::from(parser.value().map_err(|e| e.to_string())?))
            }
            _ => return Err(format!("{} (see --help)", arg.unexpected())),
        }
    }
    let director = match director {
        Some(d) => d,
        None => find_director().ok_or(
            "cannot find the director binary beside this helper or on PATH; give --director PATH",
        )?,
    };
    let director = absolute(&director);
    if !director.is_file() {
        return Err(format!(
            "{} is not a file: give the director binary with --director",
            director.display()
        ));
    }
    Ok(Some(Plan {
        unit_dir,
        config_file: absolute(&config_file),
        director,
    }))
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_owned())
    }
}

fn find_director() -> Option<PathBuf> {
    let beside = std::env::current_exe().ok()?.parent()?.join("director");
    if beside.is_file() {
        return Some(beside);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("director"))
        .find(|p| p.is_file())
}

/// The unit's text.
pub fn unit(mode: Mode, plan: &Plan) -> String {
    let template = match mode {
        Mode::Server => SERVER_UNIT,
        Mode::Client => CLIENT_UNIT,
    };
    template
        .replace("@DIRECTOR@", &plan.director.display().to_string())
        .replace("@CONFIG@", &plan.config_file.display().to_string())
}

/// Write the unit (temporary file, then rename) and the config file if
/// missing. Returns what was done, for the operator.
pub fn write(mode: Mode, plan: &Plan) -> Result<String, String> {
    let mut report = String::new();
    fs::create_dir_all(&plan.unit_dir)
        .map_err(|e| format!("cannot create {}: {e}", plan.unit_dir.display()))?;
    let path = plan
        .unit_dir
        .join(format!("director-{}.service", mode.name()));
    let tmp = plan
        .unit_dir
        .join(format!(".director-{}.service.tmp", mode.name()));
    let text = unit(mode, plan);
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })?;
    report.push_str(&format!("wrote {}\n", path.display()));
    if !plan.config_file.exists() {
        if let Some(dir) = plan.config_file.parent() {
            fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        // 0600 from its first byte: it is where the shared key goes.
        let created = || -> std::io::Result<()> {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&plan.config_file)?;
            f.write_all(CONFIG_HEADER.as_bytes())?;
            f.sync_all()
        };
        created().map_err(|e| format!("cannot write {}: {e}", plan.config_file.display()))?;
        report.push_str(&format!(
            "wrote {} (comments only: edit it)\n",
            plan.config_file.display()
        ));
    }
    report.push_str(&format!(
        "next: systemctl daemon-reload && systemctl enable --now director-{}\n",
        mode.name()
    ));
    Ok(report)
}

/// The helper's whole run, for the binary named `bin`: exit 0 on success,
/// 2 with one line on error.
pub fn main(bin: &str) -> i32 {
    let mode = if bin.contains("client") {
        Mode::Client
    } else {
        Mode::Server
    };
    let result = parse(mode, std::env::args_os().skip(1).collect()).and_then(|plan| match plan {
        Some(plan) => write(mode, &plan).map(|r| print!("{r}")),
        None => Ok(()),
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("director-{}-systemd: {e}", mode.name());
            2
        }
    }
}
