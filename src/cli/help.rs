//! What `--help` says: usage, the job string, each mode's options and
//! the exit codes.

use super::*;

pub(super) fn string(v: OsString) -> Result<String> {
    v.into_string().map_err(|v| {
        Error::Usage(format!(
            "argument {} is not valid UTF-8",
            v.to_string_lossy()
        ))
    })
}

pub(super) fn option_lines(scopes: &[Scope]) -> String {
    let mut out = String::new();
    for o in OPTIONS.iter().filter(|o| scopes.contains(&o.scope)) {
        let flag = o.name.replace('_', "-");
        let value = match o.kind {
            Kind::Flag => String::new(),
            Kind::Port => " PORT".into(),
            Kind::Seconds => " SECONDS".into(),
            Kind::Count => " N".into(),
            Kind::Labels => " KEY=VALUE,...".into(),
            Kind::Text if o.name == "curve" => " on|off".into(),
            Kind::Text => format!(
                " {}",
                o.name
                    .rsplit('_')
                    .next()
                    .unwrap_or(o.name)
                    .to_ascii_uppercase()
            ),
        };
        let default = o
            .default
            .map(|d| format!(" [default: {d}]"))
            .unwrap_or_default();
        out.push_str(&format!(
            "  --{flag}{value}\n      {}{default}\n      env {}\n",
            o.help,
            config::env_name(o.name)
        ));
    }
    out
}

pub(super) const USAGE: &str = "\
Usage:
  director [OPTIONS] server                        run the server daemon
  director [OPTIONS] client                        run the client daemon on a node
  director [OPTIONS] exec --verb VERB [--target PATTERN]... [--exclude PATTERN]... [--check] [--diff] [--wait [--follow]] 'ARGS'
  director [OPTIONS] orchestrate FILE... [--target PATTERN]... [--exclude PATTERN]... [--batch N|N%] [--max-fail N|N%] [--restrict SHA1]... [--ignore-cache] [--check] [--diff] [--wait] [--dry-run]
  director [OPTIONS] manage (--list-nodes | --node-info NAME [--show-values] | --list-jobs [--show-values] | --list-runs | --job-info ID [--show-values] | --watch ID | --clear-cache PATTERN | --purge-jobs | --purge-nodes) [--format table|json]
  director [OPTIONS] manage (--show-key | --list-keys | --accept-key NAME | --accept-all | --reject-key NAME | --delete-key NAME)
  director [OPTIONS] manage (--create-token NAME --role ROLE [--targets PATTERN] | --list-tokens | --revoke-token NAME)
  director [OPTIONS] manage --cluster
  director completions bash|zsh|fish               print a shell completion script
";

pub(super) const JOB_STRING: &str = "\
The job string starts with options, then the verb's arguments (with exec, the options
may also be given as switches: exec --verb RUN --timeout 30 'make'):
  --skip-cache         run even if the node cached a success for this step
  --run-once           run on exactly one of the targets
  --timeout SECONDS    kill the command's process group after this long (default 600)
  --retries N          RUN only: run a failed command again, up to N more times (0-100)
  --retry-delay SECS   RUN only: wait this long before each new attempt (default 5)
  --stdout-arg NAME    RUN only: store the command's stdout as the ARG NAME
  --creates PATH       RUN only: not run (unchanged) when PATH exists on the node
  --unless COMMAND     RUN only: not run (unchanged) when COMMAND exits 0 (quote it)
  --chown USER[:GROUP] ADD/COPY/WORKDIR: owner on the node (names or ids)
  --chmod MODE         ADD/COPY/WORKDIR: mode on the node, in octal (0644)
  --blueprint          ADD/COPY only: each file is a Jinja template rendered on the node
Verbs (each reports changed or unchanged; files, packages and units are checked on
every run, whatever the node's cache says):
  RUN COMMAND          run COMMAND with /bin/sh -c (a Jinja template over the ARGs)
  ARG KEY VALUE        store a template variable in the node's cache
  ENV KEY VALUE        set an environment variable for later RUNs on the node
  WORKDIR PATH         create PATH and its parents (a template)
  ADD SRC... DEST      send files or globs from this machine; DEST is a directory if it
                       ends in / or several files go, else the file's path (a template)
  COPY SRC... DEST     the same as ADD
  QUERY KEY            collect the ARG KEY from every target; each gets the map as
                       {{ query.KEY[\"NODE\"] }} once every target has answered
  PACKAGE NAME...      packages present (default), --state latest or --state absent, with
                       the node's apt, dnf, yum, zypper or apk; NAME may be a package
                       file's absolute path on the node. DNF is the same (--latest, --absent)
  SERVICE UNIT...      systemd units --state started (default), stopped, restarted or
                       reloaded (or --restarted, --stopped, --reloaded), with --enable,
                       --disable, --mask or --unmask, after --daemon-reload if given
  WAIT --seconds N | --url http://... | --cmd COMMAND
                       wait, or until the URL answers 2xx/3xx or COMMAND exits 0, tried
                       --retry N more times (default 30) --retry-wait SECS apart (default 1)
  ECHO TEXT            print TEXT (a template): it is the job's output
  CACHEEVICT PART      forget the node's args, envs, query, jobs (steps remembered) or all
  CACHEFILE PATH       load a YAML or JSON file of key: value into the node's ARGs: an
                       absolute (or templated) PATH is read on the node, a relative one here (beside the
                       orchestration file that names it)
  FACTER               run facter --json (--custom-dir DIR, --external-dir DIR) and keep its
                       facts as the ARG facter ({{ facter.kernel }}); fails where facter is
                       not installed
  CONTAINER_IMAGE      podman images on --socket-path (default /var/run/podman/podman.sock):
                       --pull|--push|--inspect IMAGE..., --tag IMAGE NEW, --list;
                       --no-tlsverify; --stdout-arg NAME keeps what --inspect/--list print
  POD                  podman pods: --start|--stop|--rm [--force]|--kill [--kill-signal S]|
                       --inspect NAME, --play FILE, --exec-run CONTAINER --command 'CMD'
                       [--env K=V,...] [--privileged]
  QUEUESENTINEL        accepted for Directord's files; does nothing
";

pub(super) const EXEC_HELP: &str = "\
director exec — submit one job

Usage: director [OPTIONS] exec --verb VERB [--target PATTERN]... [--exclude PATTERN]...
                                [--wait [--follow]] 'ARGS'

  --verb VERB      RUN, ARG, ENV, WORKDIR, ADD, COPY, QUERY, PACKAGE (DNF), SERVICE, WAIT,
                   ECHO, CACHEEVICT, CACHEFILE, FACTER, CONTAINER_IMAGE, POD or
                   QUEUESENTINEL
  --target PATTERN the nodes to run on (default: every connected node): a node name, a
                   glob on names (web*, db-[12]), or KEY=VALUE on a label or fact
                   (role=web, os_id=debian; VALUE may be a glob); repeat, or separate
                   with commas, for a union. A pattern that matches no node is an error
  --exclude PATTERN  leave out the nodes it matches; repeatable
  --queue-offline  a target that is offline gets the job when it is back, up to the job's
                   --timeout, instead of it ending unreachable at once
  --check          change nothing on any node: each says what would change, or that
                   it is as asked (a RUN would run; its guards are evaluated)
  --diff           show a unified diff of each text file that changes (or would)
  --wait           stay connected, print each node's result as it arrives, and exit
                   0 only if every node succeeded (with --check: 5 if something would
                   change)
  -f, --follow     with --wait: show each node's output lines as they are printed
  --format json    for scripts and CI: one JSON object a line ({\"event\", \"data\"}, as the
                   API's event stream names them), ending with the job's end (--wait)

Prints the job id and its task SHA1. Options the CLI uses: --socket-path, --config-file.
";

pub(super) const ORCHESTRATE_HELP: &str = "\
director orchestrate — submit orchestration files

Usage: director [OPTIONS] orchestrate FILE... [--target PATTERN]... [--exclude PATTERN]...
                                     [--batch N|N%] [--max-fail N|N%] [--restrict SHA1]...
                                     [--ignore-cache] [--wait [--follow] [-v]] [--dry-run]

A file is a YAML list of blocks: {targets: [PATTERN...] (optional: every node), jobs: [{VERB: ARGS}...]},
and one block may have batch: N|N% (and max_fail: N|N%) to roll from there on, as --batch does.
A job may have a name (name: NAME) and be a handler (onchanges: [NAME...]): it runs on a node
only where one of the named earlier jobs changed something, and is skipped (no change) elsewhere.
Directord's fields work too: a block's name, assign (replaces targets) and async (true: the
consecutive async blocks run side by side on each node, each in order); a job's assign (its
own targets) and vars (a map of options: stdout_arg: x is --stdout-arg x). --target wins over
both assigns. Relative ADD, --blueprint and CACHEFILE paths are found beside the file.
A pattern is a node name, a glob on names (web*), or KEY=VALUE on a label or fact (role=web).
Every file is checked before anything is submitted. On each node the jobs run one at a
time in file order (but async blocks); after a failure there, the rest of the run is skipped
on that node.

  --target PATTERN replace every block's targets; repeat for several
  --exclude PATTERN  leave the nodes it matches out of every block; repeatable
  --queue-offline  offline targets get their jobs when they are back, up to each job's
                   --timeout, instead of them ending unreachable at once
  --batch N|N%     run on N nodes (or N% of the run's nodes) at a time, in name order;
                   the next batch starts once every node of the last has finished
  --max-fail N|N%  with --batch: start no new batch once more than N nodes have failed;
                   the nodes never started are reported skipped
  --restrict SHA1  submit only the jobs with this task SHA1 (or prefix); repeatable
  --ignore-cache   run every job even where the node cached a success
  --check          change nothing on any node: each job says what would change
  --diff           show a unified diff of each text file that changes (or would)
  --wait           show progress, then a recap per node and the output of each failure
  -f, --follow     with --wait: show each node's output lines as they are printed
  -v, --verbose    with --wait: the recap also shows what the steps that succeeded printed
  --dry-run        check everything and print the jobs that would be submitted
  --format json    for scripts and CI: one JSON object a line, the plan first, then
                   (--wait) each part and job as it ends, and the run's end last
";

pub(super) const EXIT_CODES: &str = "\
Exit status: 0 success; 1 remote work failed (a node failed or was lost);
2 bad usage, bad input or a local error; 3 the server cannot be reached;
4 (--wait) some targets were offline and nothing failed; 5 (--check --wait) something
would change (drift), nothing failed and every target answered.
";

/// Every mode's help, for checks that the others cover the same switches.
#[cfg(test)]
pub fn full_help() -> String {
    [
        None,
        Some(Mode::Server),
        Some(Mode::Client),
        Some(Mode::Exec),
        Some(Mode::Orchestrate),
        Some(Mode::Manage),
    ]
    .into_iter()
    .map(help_text)
    .collect()
}

pub(super) fn help_text(mode: Option<Mode>) -> String {
    let precedence = "Every option is also read from DIRECTOR_<NAME> and from the config file;\nprecedence: switch > environment > config file > default.\n";
    match mode {
        None => format!(
            "director {} — deployment and operations for the data-center life cycle\n\n{USAGE}\nGlobal options (before or after the mode):\n{}\nServer options:\n{}\nClient options:\n{}\n  -h, --help      this help (director MODE --help for one mode)\n  -V, --version   print the version\n\n{JOB_STRING}\n{precedence}{EXIT_CODES}",
            env!("CARGO_PKG_VERSION"),
            option_lines(&[Scope::Global]),
            option_lines(&[Scope::Server]),
            option_lines(&[Scope::Client]),
        ),
        Some(Mode::Server) => format!(
            "director server — the server daemon: holds the cluster's state, hands out jobs\n\nUsage: director [OPTIONS] server\n\nOptions:\n{}\n{precedence}SIGTERM or SIGINT stops it cleanly and removes its socket file.\n",
            option_lines(&[Scope::Global, Scope::Server])
        ),
        Some(Mode::Client) => format!(
            "director client — the node agent: runs the jobs the server sends\n\nUsage: director [OPTIONS] client\n\nOptions:\n{}\n{precedence}SIGTERM or SIGINT stops it cleanly, killing a running command's process group.\n",
            option_lines(&[Scope::Global, Scope::Client])
        ),
        Some(Mode::Exec) => format!("{EXEC_HELP}\n{JOB_STRING}\n{EXIT_CODES}"),
        Some(Mode::Orchestrate) => format!("{ORCHESTRATE_HELP}\n{JOB_STRING}\n{EXIT_CODES}"),
        Some(Mode::Manage) => format!(
            "director manage — inspect and change the cluster's state\n\nUsage: director [OPTIONS] manage ACTION [--format table|json]\n\n  --list-nodes     nodes with their last heartbeat, expiry and labels\n  --node-info NAME one node: its labels, facts (OS, kernel, CPUs, memory, addresses) and\n                   cache (ARG keys, ENV keys, QUERY maps, steps remembered)\n  --show-values    with --node-info, --list-jobs or --job-info: ARG and ENV values too\n                   (they may be secrets: shown as <hidden> otherwise)\n  --list-jobs      jobs with their run, verb, arguments, node counts per state and time\n  --list-runs      orchestration runs: jobs, nodes, parts per state, times\n  --job-info ID    everything about one job, per node: state, exit code, output, times;\n                   or a run: its jobs, the recap per node, each failure's output.\n                   ID may be any unique prefix of 6 characters or more\n  --watch ID       follow a job or run already going, as --wait does (same exit status);\n                   with -f/--follow, also the nodes' output from now on\n  --purge-jobs     forget every finished job\n  --purge-nodes    forget every offline node with no work queued\n  --clear-cache PATTERN  empty the cache (ARGs, ENVs, QUERY maps, steps) of the nodes\n                   PATTERN matches (a name, glob or KEY=VALUE; commas for several);\n                   their files stay as they are. Waits for each node's answer\n\nNode keys (CURVE):\n  --show-key          print the server's public key (Z85), for clients' --server-key\n  --list-keys         every node key: name, state (pending, accepted, rejected), fingerprint, first and last seen\n  --accept-key NAME   let the node with this name in (pending or rejected key)\n  --accept-all        accept every pending key\n  --reject-key NAME   refuse this node's key at every handshake; its unfinished jobs are lost\n  --delete-key NAME   forget the key: the name is free, and a node that comes back enrolls anew\n\nHTTP API tokens (server with --api-port):\n  --create-token NAME --role read|run|admin [--targets PATTERN]\n                      make a token; it is printed once, alone on the last line (the server\n                      keeps only its hash). read: see all but secret values; run: also\n                      submit (with --targets: only to nodes PATTERN matches); admin: also\n                      change keys, purge, see values\n  --list-tokens       every token: name, role, targets, created, last used\n  --revoke-token NAME the token stops working at once\n\nServers on etcd (--etcd-endpoints):\n  --cluster           every server: role, address, the log entry it holds, how far behind,\n                      when last seen; who leads and whether etcd answers (a standby answers too)\n\n  --format FORMAT  table (aligned columns, the default) or json (a list of objects)\n\n{EXIT_CODES}"
        ),
    }
}
