//! `director completions bash|zsh|fish`: a completion script for the shell,
//! made from the same lists the parser and `--help` use (modes, options,
//! verbs), so it cannot drift from them.

use crate::config::OPTIONS;
use crate::dsl::Verb;

/// Switches of each mode, besides the global options.
pub const EXEC: &[&str] = &[
    "--verb",
    "--target",
    "--exclude",
    "--queue-offline",
    "--wait",
    "--follow",
    "--skip-cache",
    "--run-once",
    "--timeout",
    "--stdout-arg",
    "--chown",
    "--retries",
    "--retry-delay",
];
pub const ORCHESTRATE: &[&str] = &[
    "--target",
    "--exclude",
    "--queue-offline",
    "--batch",
    "--max-fail",
    "--restrict",
    "--ignore-cache",
    "--wait",
    "--follow",
    "--verbose",
    "--dry-run",
];
pub const MANAGE: &[&str] = &[
    "--list-nodes",
    "--node-info",
    "--show-values",
    "--list-jobs",
    "--list-runs",
    "--job-info",
    "--watch",
    "--follow",
    "--purge-jobs",
    "--purge-nodes",
    "--clear-cache",
    "--show-key",
    "--list-keys",
    "--accept-key",
    "--create-token",
    "--list-tokens",
    "--cluster",
    "--revoke-token",
    "--role",
    "--targets",
    "--accept-all",
    "--reject-key",
    "--delete-key",
    "--format",
];
const MODES: &[&str] = &[
    "server",
    "client",
    "exec",
    "orchestrate",
    "manage",
    "completions",
];
const SHELLS: &[&str] = &["bash", "zsh", "fish"];

/// Global options, with `--label` (which adds to `--labels`).
fn globals() -> Vec<String> {
    let mut g: Vec<String> = OPTIONS
        .iter()
        .map(|o| format!("--{}", o.name.replace('_', "-")))
        .collect();
    g.extend(["--label", "--help", "--version"].map(String::from));
    g
}

/// Every option of every mode, for suggesting the one meant.
pub fn all_options() -> Vec<String> {
    let mut all = globals();
    all.extend(
        [EXEC, ORCHESTRATE, MANAGE]
            .concat()
            .iter()
            .map(|s| s.to_string()),
    );
    all.sort();
    all.dedup();
    all
}

/// Options whose value is a path.
fn path_options() -> Vec<String> {
    OPTIONS
        .iter()
        .filter(|o| o.name.ends_with("_path") || o.name.ends_with("_file"))
        .map(|o| format!("--{}", o.name.replace('_', "-")))
        .collect()
}

fn verbs() -> Vec<&'static str> {
    Verb::ALL.iter().map(|v| v.name()).collect()
}

/// The script for `shell`, or why not.
pub fn script(shell: &str) -> Result<String, String> {
    match shell {
        "bash" => Ok(bash()),
        // zsh runs bash completions through its bashcompinit.
        "zsh" => Ok(format!(
            "#compdef director\nautoload -U +X bashcompinit && bashcompinit\n{}",
            bash()
        )),
        "fish" => Ok(fish()),
        other => Err(format!(
            "completions: unknown shell '{other}' (expected {})",
            SHELLS.join(", ")
        )),
    }
}

fn bash() -> String {
    let globals = globals().join(" ");
    let paths = path_options().join("|");
    format!(
        r#"# bash completion for director: source it, or put it in
# /etc/bash_completion.d/director (made by `director completions bash`)
_director() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    local mode="" w
    for w in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        case "$w" in {modes_case}) mode="$w"; break ;; esac
    done
    case "$prev" in
        --verb) COMPREPLY=($(compgen -W "{verbs}" -- "$cur")); return ;;
        --format) COMPREPLY=($(compgen -W "table json" -- "$cur")); return ;;
        --curve) COMPREPLY=($(compgen -W "on off" -- "$cur")); return ;;
        --mode) COMPREPLY=($(compgen -W "{modes}" -- "$cur")); return ;;
        {paths}) COMPREPLY=($(compgen -f -- "$cur")); return ;;
    esac
    local opts="{globals}"
    case "$mode" in
        "") opts="$opts {modes}" ;;
        exec) opts="$opts {exec}" ;;
        orchestrate)
            opts="$opts {orchestrate}"
            if [[ "$cur" != -* ]]; then COMPREPLY=($(compgen -f -- "$cur")); return; fi ;;
        manage) opts="$opts {manage}" ;;
        completions) opts="{shells}" ;;
    esac
    COMPREPLY=($(compgen -W "$opts" -- "$cur"))
}}
complete -F _director director
"#,
        modes_case = MODES.join("|"),
        modes = MODES.join(" "),
        verbs = verbs().join(" "),
        exec = EXEC.join(" "),
        orchestrate = ORCHESTRATE.join(" "),
        manage = MANAGE.join(" "),
        shells = SHELLS.join(" "),
    )
}

fn fish() -> String {
    let mut s = String::from(
        "# fish completion for director (made by `director completions fish`)\ncomplete -c director -f\n",
    );
    let modes = MODES.join(" ");
    s.push_str(&format!(
        "complete -c director -n 'not __fish_seen_subcommand_from {modes}' -a '{modes}'\n"
    ));
    let paths = path_options();
    for g in globals() {
        let name = g.trim_start_matches("--");
        let file = if paths.contains(&g) { " -r -F" } else { "" };
        s.push_str(&format!("complete -c director -l {name}{file}\n"));
    }
    for (mode, switches) in [
        ("exec", EXEC),
        ("orchestrate", ORCHESTRATE),
        ("manage", MANAGE),
    ] {
        for sw in switches {
            let name = sw.trim_start_matches("--");
            let values = match name {
                "verb" => format!(" -x -a '{}'", verbs().join(" ")),
                "format" => " -x -a 'table json'".into(),
                _ => String::new(),
            };
            s.push_str(&format!(
                "complete -c director -n '__fish_seen_subcommand_from {mode}' -l {name}{values}\n"
            ));
        }
    }
    s.push_str("complete -c director -n '__fish_seen_subcommand_from orchestrate' -F\n");
    s.push_str(&format!(
        "complete -c director -n '__fish_seen_subcommand_from completions' -a '{}'\n",
        SHELLS.join(" ")
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_switch_the_help_names_is_completed_and_every_shell_has_a_script() {
        let help = crate::cli::full_help();
        for sw in EXEC.iter().chain(ORCHESTRATE).chain(MANAGE) {
            assert!(help.contains(sw), "{sw} is completed but not in --help");
        }
        for shell in SHELLS {
            let s = script(shell).unwrap();
            for word in ["verb", "list-nodes", "batch", "orchestrate", "QUERY"] {
                assert!(s.contains(word), "{shell}: {word}");
            }
        }
        assert!(script("tcsh").unwrap_err().contains("unknown shell 'tcsh'"));
    }
}
