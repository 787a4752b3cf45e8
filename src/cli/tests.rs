use super::*;

#[test]
fn job_options_outside_the_job_string_join_it_and_a_mistyped_mode_is_named() {
    let inv = parse_v(&[
        "exec",
        "--verb",
        "RUN",
        "--skip-cache",
        "--timeout",
        "30",
        "echo hi",
    ])
    .unwrap();
    let Command::Exec(e) = inv.command else {
        panic!("not exec")
    };
    assert_eq!(e.args, "--skip-cache --timeout=30 echo hi");
    let t = crate::dsl::Task::parse(e.verb, &e.args).unwrap();
    assert_eq!(t.args(), "--skip-cache --timeout 30 echo hi");
    let err = parse_v(&["orchestrate", "f.yml", "--retries", "2"]).unwrap_err();
    assert!(
        err.to_string()
            .contains("--retries only applies to `director exec`"),
        "{err}"
    );
    let err = parse_v(&["servr"]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("unknown mode 'servr': expected server"),
        "{err}"
    );
}

fn parse_v(args: &[&str]) -> Result<Invocation> {
    parse_with_env(args, &[])
}

fn parse_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<Invocation> {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut all = vec!["--identity", "test-node"];
    all.extend_from_slice(args);
    parse(all.iter().map(OsString::from).collect(), move |k| {
        env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.clone())
    })
}

#[test]
fn modes_by_word_switch_and_env() {
    assert!(matches!(
        parse_v(&["server"]).unwrap().command,
        Command::Server
    ));
    assert!(matches!(
        parse_v(&["--mode", "client"]).unwrap().command,
        Command::Client
    ));
    assert!(matches!(
        parse_with_env(&[], &[("DIRECTOR_MODE", "server")])
            .unwrap()
            .command,
        Command::Server
    ));
    // The word beats the environment, as a switch does.
    assert!(matches!(
        parse_with_env(&["client"], &[("DIRECTOR_MODE", "server")])
            .unwrap()
            .command,
        Command::Client
    ));
    assert!(parse_v(&[]).unwrap_err().to_string().contains("no mode"));
    assert!(parse_v(&["--mode", "bogus"])
        .unwrap_err()
        .to_string()
        .contains("unknown mode 'bogus'"));
}

#[test]
fn global_options_before_or_after_mode() {
    let a = parse_v(&["--job-port", "7000", "server", "--heartbeat-interval", "2"]).unwrap();
    assert_eq!(a.config.job_port, 7000);
    assert_eq!(a.config.heartbeat_ivl.as_secs(), 2);
    let b = parse_v(&["client", "--debug", "--server-address", "10.0.0.1"]).unwrap();
    assert!(b.config.debug);
    assert_eq!(b.config.server_address, "10.0.0.1");
    assert_eq!(b.config.identity, "test-node");
}

#[test]
fn exec_args() {
    let inv = parse_v(&[
        "exec",
        "--verb",
        "run",
        "--target",
        "a",
        "--target",
        "b,c",
        "--target",
        "a",
        "--wait",
        "--exclude",
        "role=db",
        "--label",
        "x=1",
        "echo hi",
    ])
    .unwrap();
    // `--label` is repeatable and adds up.
    assert_eq!(inv.config.labels.get("x").map(String::as_str), Some("1"));
    let Command::Exec(e) = inv.command else {
        panic!("not exec")
    };
    assert_eq!(
        e,
        ExecArgs {
            verb: Verb::Run,
            targets: vec!["a".into(), "b".into(), "c".into()],
            exclude: vec!["role=db".into()],
            queue_offline: false,
            wait: true,
            follow: false,
            args: "echo hi".into(),
            check: false,
            diff: false,
            json: false,
        }
    );
    assert!(parse_v(&["exec", "echo"])
        .unwrap_err()
        .to_string()
        .contains("--verb"));
    assert!(parse_v(&["exec", "--verb", "RUN"])
        .unwrap_err()
        .to_string()
        .contains("needs the job's arguments"));
    assert!(parse_v(&["exec", "--verb", "FLY", "x"])
        .unwrap_err()
        .to_string()
        .contains("unknown verb 'FLY'"));
    // A job string may start with its own options.
    let inv = parse_v(&[
        "exec",
        "--verb",
        "RUN",
        "--skip-cache --timeout=5 echo hi",
        "--wait",
    ])
    .unwrap();
    let Command::Exec(e) = inv.command else {
        panic!("not exec")
    };
    assert_eq!(e.args, "--skip-cache --timeout=5 echo hi");
    assert!(e.wait);
    // With --mode given, a mode word is just an argument.
    let inv = parse_v(&["--mode", "exec", "--verb", "RUN", "client"]).unwrap();
    let Command::Exec(e) = inv.command else {
        panic!("not exec")
    };
    assert_eq!(e.args, "client");
}

#[test]
fn manage_args() {
    let inv = parse_v(&["manage", "--list-nodes", "--format", "json"]).unwrap();
    let Command::Manage(m) = inv.command else {
        panic!("not manage")
    };
    assert_eq!(
        m,
        ManageArgs {
            action: ManageAction::ListNodes,
            format: Format::Json,
            follow: false,
        }
    );
    assert!(parse_v(&["manage"]).is_err());
    assert!(parse_v(&["manage", "--list-nodes", "--list-jobs"]).is_err());
    assert!(parse_v(&["manage", "--job-info", "nope"])
        .unwrap_err()
        .to_string()
        .contains("'nope' is not a job or run id"));
    assert!(parse_v(&["manage", "--list-nodes", "--format", "xml"]).is_err());
    let inv = parse_v(&["manage", "--accept-key", "web1"]).unwrap();
    let Command::Manage(m) = inv.command else {
        panic!("not manage")
    };
    assert_eq!(m.action, ManageAction::AcceptKey("web1".into()));
    for (flag, action) in [
        ("--show-key", ManageAction::ShowKey),
        ("--list-keys", ManageAction::ListKeys),
        ("--accept-all", ManageAction::AcceptAll),
    ] {
        let Command::Manage(m) = parse_v(&["manage", flag]).unwrap().command else {
            panic!("not manage")
        };
        assert_eq!(m.action, action);
    }
    assert!(parse_v(&["manage", "--reject-key"]).is_err());
    assert!(parse_v(&["manage", "--delete-key", "a", "--accept-all"])
        .unwrap_err()
        .to_string()
        .contains("only one of"));
    assert!(parse_v(&["exec", "--verb", "RUN", "--accept-all", "x"])
        .unwrap_err()
        .to_string()
        .contains("--accept-all only applies to `director manage`"));
}

#[test]
fn mode_options_must_fit_the_mode() {
    let e = parse_v(&["server", "--wait"]).unwrap_err().to_string();
    assert!(
        e.contains("--wait only applies to `director exec` or `director orchestrate`"),
        "{e}"
    );
    let e = parse_v(&["exec", "--verb", "RUN", "--list-jobs", "x"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--list-jobs only applies to `director manage`"),
        "{e}"
    );
    assert!(parse_v(&["server", "--bogus"])
        .unwrap_err()
        .to_string()
        .contains("--bogus"));
}

#[test]
fn help_mentions_every_option() {
    let Command::Help(text) = parse_v(&["--help"]).unwrap().command else {
        panic!("not help")
    };
    for o in OPTIONS {
        assert!(
            text.contains(&format!("--{}", o.name.replace('_', "-"))),
            "{}",
            o.name
        );
    }
    let Command::Help(text) = parse_v(&["exec", "--help"]).unwrap().command else {
        panic!("not help")
    };
    assert!(text.contains("--target"));
}
