//! The systemd helpers write units that run this director with the config
//! file they name, and a config file director accepts.

mod util;

use std::fs;

#[test]
fn helpers_write_units_and_a_config_director_accepts() {
    let dir = util::TestDir::new("systemd");
    for (bin, mode) in [
        (env!("CARGO_BIN_EXE_director-server-systemd"), "server"),
        (env!("CARGO_BIN_EXE_director-client-systemd"), "client"),
    ] {
        let units = dir.path.join("units");
        let config = dir.path.join(format!("etc-{mode}/config.yaml"));
        let out = std::process::Command::new(bin)
            .args([
                "--unit-dir",
                units.to_str().unwrap(),
                "--config-file",
                config.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let unit = fs::read_to_string(units.join(format!("director-{mode}.service"))).unwrap();
        // The director beside the helper, by absolute path.
        let want = format!(
            "ExecStart={} --config-file {} {mode}",
            util::BIN,
            config.display()
        );
        assert!(unit.contains(&want), "{unit}");
        assert!(unit.contains("[Install]") && unit.contains("WantedBy=multi-user.target"));
        // The config file will hold the shared key: 0600 from the start.
        use std::os::unix::fs::PermissionsExt;
        let config_mode = fs::metadata(&config).unwrap().permissions().mode() & 0o777;
        assert_eq!(config_mode, 0o600, "{config_mode:o}");
        verify_unit(&units.join(format!("director-{mode}.service")), mode);
        // The config it created parses: director reads it without complaint.
        let check = util::run_cli(
            &dir.path,
            &[
                "--config-file".into(),
                config.display().to_string(),
                "--help".into(),
            ],
        );
        assert_eq!(check.code, 0, "{check:?}");
        let bad = util::run_cli(
            &dir.path,
            &[
                "manage".into(),
                "--list-nodes".into(),
                "--config-file".into(),
                config.display().to_string(),
                "--socket-path".into(),
                dir.path.join("none.sock").display().to_string(),
            ],
        );
        assert_eq!(
            bad.code, 3,
            "the config is valid; only the server is missing: {bad:?}"
        );
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_director-server-systemd"))
        .arg("--director")
        .arg(dir.path.join("nope"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a file"));
}

/// `systemd-analyze verify` accepts the unit, and the server's is
/// hardened: its exposure as `systemd-analyze security` rates it is 3.0
/// ("OK") or less (it was 9.6, "UNSAFE"). The client's is not sandboxed by
/// design (it installs packages and manages services as root).
fn verify_unit(unit: &std::path::Path, mode: &str) {
    let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
    else {
        eprintln!("skipped the unit checks: no systemd-analyze");
        return;
    };
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}: {}",
        unit.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    if mode != "server" {
        return;
    }
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=30"])
        .arg(unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the server's unit is exposed beyond 3.0: {}",
        text.lines().last().unwrap_or("")
    );
}

/// `director completions bash` is a script bash reads, and it completes
/// modes, switches and verbs.
#[test]
fn the_bash_completion_script_loads_and_completes() {
    let dir = util::TestDir::new("completions");
    let out = util::run_cli(&dir.path, &["completions".into(), "bash".into()]);
    assert_eq!(out.code, 0, "{out:?}");
    let script = dir.path.join("director.bash");
    fs::write(&script, &out.stdout).unwrap();
    let probe = format!(
        "source {}; \
         COMP_WORDS=(director manage --list-n); COMP_CWORD=2; _director; echo \"${{COMPREPLY[@]}}\"; \
         COMP_WORDS=(director exec --verb WA); COMP_CWORD=3; _director; echo \"${{COMPREPLY[@]}}\"; \
         COMP_WORDS=(director orch); COMP_CWORD=1; _director; echo \"${{COMPREPLY[@]}}\"",
        script.display()
    );
    let run = std::process::Command::new("bash")
        .args(["-c", &probe])
        .output()
        .unwrap();
    assert!(run.status.success(), "{run:?}");
    let lines: Vec<String> = String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines, ["--list-nodes", "WAIT", "orchestrate"], "{run:?}");
    let out = util::run_cli(&dir.path, &["completions".into(), "tcsh".into()]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("unknown shell 'tcsh'"), "{out:?}");
}
