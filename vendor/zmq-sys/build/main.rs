//! Build the vendored libzmq (zeromq-src) with CURVE, against the libsodium
//! that `libsodium-sys-stable` built from its bundled source. Its build
//! script reports where it put the library and headers as `cargo:lib` and
//! `cargo:include`, which reach us as `DEP_SODIUM_LIB` and
//! `DEP_SODIUM_INCLUDE`. Nothing has to be installed on the machine.

use std::env;
use std::path::PathBuf;

fn dep(name: &str) -> PathBuf {
    match env::var_os(name) {
        Some(v) => PathBuf::from(v),
        None => panic!(
            "{} is not set: libsodium-sys-stable must be a direct dependency of zmq-sys",
            name
        ),
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build/main.rs");
    println!("cargo:rerun-if-env-changed=PROFILE");
    let lib = dep("DEP_SODIUM_LIB");
    let include = dep("DEP_SODIUM_INCLUDE");
    // libzmq's own sources warn about unused parameters and the like; from a
    // path dependency cargo would print every one on each fresh build.
    for var in ["CFLAGS", "CXXFLAGS"] {
        let mut flags = env::var(var).unwrap_or_default();
        flags.push_str(" -w");
        env::set_var(var, flags.trim());
    }
    zeromq_src::Build::new()
        .with_libsodium(Some(zeromq_src::LibLocation::new(lib, include)))
        .build();
}
