//! `director`: one binary for the server, the client and the user CLI.
//! `main` maps the outcome of `run` to the documented exit status:
//! 0 success, 1 remote work failed, 2 usage/input/local error, 3 server
//! unreachable. Errors print as one line: `director: what failed: why`.

mod cli;
mod client;
mod clock;
mod completions;
mod config;
mod curve;
mod diff;
mod dirlock;
mod dsl;
mod error;
mod facts;
mod follow;
#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod heapcount;
mod ids;
mod interrupt;
mod journal;
mod logger;
mod orchestrate;
mod output;
mod progress;
mod ratelog;
mod reactor;
mod server;
mod sources;
mod suggest;
mod targets;
mod template;
mod transfer;
mod user;
mod verbs;
mod wire;

use std::io::Write;

use cli::Command;

#[cfg(test)]
#[global_allocator]
static HEAP: heapcount::Counting = heapcount::Counting;
use error::{Error, EXIT_OK};

fn main() {
    let code = match run() {
        Ok(code) => code,
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => EXIT_OK,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "director: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}

fn run() -> error::Result<i32> {
    let inv = cli::parse_env()?;
    let cfg = inv.config;
    match inv.command {
        Command::Help(text) => {
            print_text(&text)?;
            Ok(EXIT_OK)
        }
        Command::Version => {
            print_text(&format!("director {}\n", env!("CARGO_PKG_VERSION")))?;
            Ok(EXIT_OK)
        }
        Command::Server => {
            logger::init(cfg.debug);
            server::run(&cfg).map(|()| EXIT_OK)
        }
        Command::Client => {
            logger::init(cfg.debug);
            client::run(&cfg).map(|()| EXIT_OK)
        }
        Command::Exec(args) => {
            logger::init(cfg.debug);
            user::exec(&cfg, args)
        }
        Command::Orchestrate(args) => {
            logger::init(cfg.debug);
            user::orchestrate(&cfg, args)
        }
        Command::Manage(args) => {
            logger::init(cfg.debug);
            user::manage(&cfg, args)
        }
    }
}

fn print_text(text: &str) -> error::Result<()> {
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(|e| Error::io("cannot write to stdout", e))
}
