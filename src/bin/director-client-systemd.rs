//! Writes the systemd unit for `director client`.

#[path = "../systemd.rs"]
mod systemd;

fn main() {
    std::process::exit(systemd::main(env!("CARGO_BIN_NAME")));
}
