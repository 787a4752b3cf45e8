use super::*;

fn run(s: &str) -> Result<Task, String> {
    Task::parse(Verb::Run, s)
}

#[test]
fn verbs_with_their_own_options_print_a_job_string_that_parses_back() {
    for (verb, args) in [
        (
            Verb::Service,
            "--daemon-reload --enable --state restarted podman.socket",
        ),
        (Verb::Package, "--state latest nginx"),
        (Verb::Wait, "--seconds 5"),
        (Verb::Facter, "--skip-cache --custom-dir /x"),
    ] {
        let t = Task::parse(verb, args).unwrap();
        assert!(
            !t.args().starts_with("--  ") && !t.args().contains("-- --"),
            "{}",
            t.args()
        );
        assert_eq!(
            Task::parse(verb, &t.args()).unwrap(),
            t,
            "{verb} {}",
            t.args()
        );
    }
}

#[test]
fn arg_extend_args_takes_a_list_or_a_map_only() {
    let t = Task::parse(Verb::Arg, "--extend-args items ['b']").unwrap();
    assert_eq!(
        t.action,
        Action::ExtendArg {
            key: "items".into(),
            value: "['b']".into()
        }
    );
    assert_eq!(t.args(), "--extend-args items ['b']");
    assert_ne!(
        t.sha1(),
        Task::parse(Verb::Arg, "items ['b']").unwrap().sha1()
    );
    let e = Task::parse(Verb::Arg, "--extend-args items b").unwrap_err();
    assert!(e.contains("not a list or a map"), "{e}");
    assert!(Task::parse(Verb::Env, "--extend-args E ['b']").is_err());
}

#[test]
fn verbs_parse_case_insensitively() {
    assert_eq!("run".parse::<Verb>(), Ok(Verb::Run));
    assert_eq!("Workdir".parse::<Verb>(), Ok(Verb::Workdir));
    assert_eq!(
        "FLY".parse::<Verb>().unwrap_err(),
        "unknown verb 'FLY' (known verbs: RUN, ARG, ENV, WORKDIR, ADD, COPY, QUERY, PACKAGE, DNF, SERVICE, WAIT, ECHO, CACHEEVICT, CACHEFILE, FACTER, CONTAINER_IMAGE, POD, QUEUESENTINEL)"
    );
}

#[test]
fn retries_are_run_options_that_join_the_sha1_only_when_asked() {
    let plain = run("make").unwrap();
    let t = run("--retries 2 --retry-delay 0 make").unwrap();
    assert_eq!((t.options.retries, t.options.retry_delay_ms), (2, 0));
    assert_eq!(t.args(), "--retries 2 --retry-delay 0 make");
    assert_eq!(run(&t.args()).unwrap(), t);
    // Fractions of a second, as --heartbeat-interval takes them; the
    // SHA1 of a whole number of seconds is the one it always was.
    let f = run("--retries 2 --retry-delay 0.25 make").unwrap();
    assert_eq!(f.options.retry_delay_ms, 250);
    assert_eq!(f.args(), "--retries 2 --retry-delay 0.25 make");
    assert_eq!(run(&f.args()).unwrap(), f);
    let whole = run("--retries 1 --retry-delay 3 make").unwrap();
    assert_eq!(
        whole.canonical(),
        "RUN\0timeout=600\0retries=1\0retry_delay=3\0stdout_arg=\0make"
    );
    for bad in ["-1", "nan", "inf", "86401", "1e9", "abc"] {
        let e = run(&format!("--retries 1 --retry-delay {bad} make")).unwrap_err();
        assert!(
            e.contains("is not a number of seconds from 0 to 86400"),
            "{bad}: {e}"
        );
    }
    assert_ne!(t.sha1(), plain.sha1());
    assert_ne!(t.sha1(), run("--retries 2 make").unwrap().sha1());
    // A task without retries keeps the SHA1 it had before they existed.
    assert_eq!(plain.canonical(), "RUN\0timeout=600\0stdout_arg=\0make");
    assert_eq!(
        run("--retries 101 make").unwrap_err(),
        "RUN option --retries: '101' is not a whole number from 0 to 100"
    );
    assert_eq!(
        run("--retry-delay 3 make").unwrap_err(),
        "RUN option --retry-delay needs --retries N (how many times to retry)"
    );
    assert_eq!(
        Task::parse(Verb::Arg, "--retries 2 k v").unwrap_err(),
        "option --retries does not apply to ARG (only to RUN)"
    );
}

#[test]
fn options_come_first_and_the_command_stays_verbatim() {
    let t = run("--skip-cache --timeout=5 --run-once --stdout-arg out  echo  'a  b' --x").unwrap();
    assert_eq!(
        t.options,
        JobOptions {
            skip_cache: true,
            run_once: true,
            timeout_secs: 5,
            ..JobOptions::default()
        }
    );
    assert_eq!(
        t.action,
        Action::Run {
            stderr_arg: None,
            command: "echo  'a  b' --x".into(),
            stdout_arg: Some("out".into()),
            guard: None,
        }
    );
    let t = run("--timeout 7 -- --not-an-option").unwrap();
    assert_eq!(t.options.timeout_secs, 7);
    assert_eq!(
        t.action,
        Action::Run {
            stderr_arg: None,
            command: "--not-an-option".into(),
            stdout_arg: None,
            guard: None,
        }
    );
    // Round trip through the normalized form.
    assert_eq!(run(&t.args()).unwrap().sha1(), t.sha1());
}

#[test]
fn bad_jobs_are_refused() {
    assert_eq!(run("   ").unwrap_err(), "RUN needs a command to run");
    assert!(run("--timeout").unwrap_err().contains("needs a number"));
    assert!(run("--timeout soon x").unwrap_err().contains("'soon'"));
    assert!(run("--timeout 0 x").is_err());
    assert!(run("--frobnicate x")
        .unwrap_err()
        .contains("unknown option --frobnicate for RUN"));
    assert!(run("--stdout-arg 9x echo")
        .unwrap_err()
        .contains("not a valid name"));
    let e = Task::parse(Verb::Arg, "--stdout-arg x k v").unwrap_err();
    assert_eq!(
        e,
        "option --stdout-arg does not apply to ARG (only to RUN, WORKDIR, CONTAINER_IMAGE and POD)"
    );
    assert_eq!(
        Task::parse(Verb::Arg, "onlykey").unwrap_err(),
        "ARG needs KEY VALUE"
    );
    assert!(Task::parse(Verb::Env, "BAD-NAME v")
        .unwrap_err()
        .contains("not a valid name"));
    assert_eq!(
        Task::parse(Verb::Workdir, "--skip-cache").unwrap_err(),
        "WORKDIR needs a path"
    );
}

#[test]
fn add_sources_and_destination() {
    let t = Task::parse(
        Verb::Copy,
        "--chown=centos:centos /home/c/.ssh/* '/srv/my dir/{{ app }}/' ",
    )
    .unwrap();
    let Action::Add(add) = &t.action else {
        panic!("not ADD")
    };
    let Add {
        chown,
        sources,
        dest,
        files,
        ..
    } = &**add;
    assert_eq!(chown.as_deref(), Some("centos:centos"));
    assert_eq!(sources, &vec!["/home/c/.ssh/*".to_string()]);
    assert_eq!(dest, "/srv/my dir/{{ app }}/");
    assert!(files.is_empty());
    assert_eq!(t.verb(), Verb::Add);
    let t = Task::parse(Verb::Add, "a b dest/{{ x | default('d') }}/").unwrap();
    let Action::Add(add) = &t.action else {
        panic!("not ADD")
    };
    let (sources, dest) = (&add.sources, &add.dest);
    assert_eq!(sources.len(), 2);
    assert_eq!(dest, "dest/{{ x | default('d') }}/");
    assert_eq!(
        Task::parse(Verb::Add, "only").unwrap_err(),
        "ADD needs at least one SRC and a DEST"
    );
    assert!(Task::parse(Verb::Add, "--chown a:b:c x y")
        .unwrap_err()
        .contains("USER[:GROUP]"));
    assert!(Task::parse(Verb::Add, "x 'y")
        .unwrap_err()
        .contains("unclosed"));
    assert!(Task::parse(Verb::Run, "--chown a x")
        .unwrap_err()
        .contains("only to WORKDIR, ADD and COPY"));
}

#[test]
fn arg_env_and_workdir() {
    let t = Task::parse(Verb::Arg, "db_password  s3cret with spaces").unwrap();
    assert_eq!(
        t.action,
        Action::Arg {
            key: "db_password".into(),
            value: "s3cret with spaces".into()
        }
    );
    let t = Task::parse(Verb::Env, "--skip-cache LANG C.UTF-8").unwrap();
    assert_eq!(
        t.action,
        Action::Env {
            key: "LANG".into(),
            value: "C.UTF-8".into()
        }
    );
    let t = Task::parse(Verb::Workdir, "/srv/{{ app }}/data").unwrap();
    assert_eq!(
        t.action,
        Action::Workdir {
            stdout_arg: None,
            path: "/srv/{{ app }}/data".into(),
            chown: None,
            mode: None,
        }
    );
}

#[test]
fn sha1_covers_what_runs_not_how_it_is_scheduled() {
    let a = run("echo hi").unwrap();
    assert_eq!(
        a.sha1(),
        run("--skip-cache --run-once echo hi ").unwrap().sha1()
    );
    assert_ne!(a.sha1(), run("echo ho").unwrap().sha1());
    assert_ne!(a.sha1(), run("--timeout 5 echo hi").unwrap().sha1());
    assert_ne!(a.sha1(), run("--stdout-arg x echo hi").unwrap().sha1());
    assert_ne!(
        a.sha1(),
        Task::parse(Verb::Workdir, "echo hi").unwrap().sha1()
    );
    assert_eq!(
        a.sha1(),
        hex_sha1(b"RUN\0timeout=600\0stdout_arg=\0echo hi")
    );
    assert_eq!(a.sha1().len(), 40);
}
