//! director as a library: the daemons' cores, the wire format and the
//! CLI, for the `director` binary, the tests and the benchmarks. The binary
//! is `main.rs`: it only maps `run`'s outcome to an exit status.

mod cli;
mod client;
mod config;
mod curve;
mod diff;
mod dsl;
pub mod error;
pub mod etcd;
mod facts;
#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod heapcount;
mod journal;
mod orchestrate;
mod reactor;
mod server;
#[cfg(test)]
mod sim;
mod sources;
mod support;
mod targets;
mod template;
mod transfer;
mod verbs;
pub mod wire;

use std::io::Write;

use cli::Command;
use error::{Error, EXIT_OK};

#[cfg(test)]
#[global_allocator]
static HEAP: heapcount::Counting = heapcount::Counting;

/// Run the command line this process was given; the exit status to end
/// with, or the error to print.
pub fn run() -> error::Result<i32> {
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
            let init = support::init::supervise_if_pid1();
            support::logger::init(cfg.debug);
            init.log();
            server::run(&cfg).map(|()| EXIT_OK)
        }
        Command::Client => {
            let init = support::init::supervise_if_pid1();
            support::logger::init(cfg.debug);
            init.log();
            client::run(&cfg).map(|()| EXIT_OK)
        }
        Command::Exec(args) => {
            support::logger::init(cfg.debug);
            cli::user::exec(&cfg, args)
        }
        Command::Orchestrate(args) => {
            support::logger::init(cfg.debug);
            cli::user::orchestrate(&cfg, args)
        }
        Command::Manage(args) => {
            support::logger::init(cfg.debug);
            cli::user::manage(&cfg, args)
        }
    }
}

fn print_text(text: &str) -> error::Result<()> {
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(|e| Error::io("cannot write to stdout", e))
}
