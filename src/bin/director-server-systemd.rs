//! Writes the systemd unit for `director server`.

#[path = "../systemd.rs"]
mod systemd;

fn main() {
    std::process::exit(systemd::main(env!("CARGO_BIN_NAME")));
}
