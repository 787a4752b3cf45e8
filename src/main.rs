//! `director`: one binary for the server, the client and the user CLI.
//! `main` maps the outcome of `run` to the documented exit status:
//! 0 success, 1 remote work failed, 2 usage/input/local error, 3 server
//! unreachable. Errors print as one line: `director: what failed: why`.

use std::io::Write;

use director::error::{Error, EXIT_OK};

fn main() {
    let code = match director::run() {
        Ok(code) => code,
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => EXIT_OK,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "director: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}
