//! Orchestration files: the original Director's YAML format, a list of blocks
//! `{targets: [NODE...] (optional: every node), jobs: [{VERB: "args"}...]}`.
//! Pure: text in, blocks of parsed tasks out, with every error naming the file,
//! the line and the column. All files are parsed and checked before anything
//! is submitted.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::dsl::{Task, Verb};
use crate::wire::{Amount, Block, Rolling};

/// How the command line narrows or changes what the files say.
#[derive(Debug, Default, PartialEq)]
pub struct Selection {
    /// Replaces every block's targets when not empty.
    pub targets: Vec<String>,
    /// Keep only the jobs whose task SHA1 starts with one of these.
    pub restrict: Vec<String>,
    /// Run every job even where the node cached a success.
    pub ignore_cache: bool,
    /// `--check`: change nothing.
    pub check: bool,
    /// `--diff`: show how text files change.
    pub diff: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBlock {
    /// Shown with its jobs (Directord's orchestration name).
    #[serde(default)]
    name: Option<Scalar>,
    #[serde(default)]
    targets: Option<Vec<String>>,
    /// Directord's spelling of targets, which it overrides.
    #[serde(default)]
    assign: Option<Vec<String>>,
    /// A bool, or a bool-like string as Python's strtobool reads it.
    #[serde(default, rename = "async")]
    concurrent: Option<Scalar>,
    /// `N` or `N%`: roll this block (and the rest of the run) over its
    /// nodes, as `--batch` does for a whole run.
    #[serde(default)]
    batch: Option<Scalar>,
    #[serde(default)]
    max_fail: Option<Scalar>,
    jobs: Vec<FileJob>,
}

/// One `- VERB: args` entry, parsed as a task while its position is known,
/// with its own `assign:` targets if it has them.
struct FileJob(Task, Option<Vec<String>>);

impl<'de> Deserialize<'de> for FileJob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<FileJob, D::Error> {
        d.deserialize_map(JobVisitor)
    }
}

struct JobVisitor;

const JOB_SHAPE: &str = "a job is a map of one VERB to its arguments, e.g. `- RUN: echo hi`";

impl<'de> Visitor<'de> for JobVisitor {
    type Value = FileJob;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a job: a map of one VERB to its arguments, e.g. `- RUN: echo hi`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FileJob, A::Error> {
        let mut job: Option<(Verb, String)> = None;
        let mut name = None;
        let mut onchanges = Vec::new();
        let mut vars = String::new();
        let mut assign = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "vars" => {
                    vars = vars_as_options(map.next_value::<serde_yaml::Mapping>()?)
                        .map_err(de::Error::custom)?
                }
                "assign" => {
                    let a = map.next_value::<Vec<String>>().map_err(|_| {
                        de::Error::custom("assign is a list of targets: `assign: [web1, web2]`")
                    })?;
                    if a.is_empty() || a.iter().any(|p| p.trim().is_empty()) {
                        return Err(de::Error::custom(
                            "assign is empty or holds an empty pattern: give node names, globs or KEY=VALUE (leave assign out for the block's targets)",
                        ));
                    }
                    assign = Some(a);
                }
                "name" => {
                    let n = map.next_value::<Scalar>()?.0;
                    if n.trim().is_empty() {
                        return Err(de::Error::custom("a job's name is empty"));
                    }
                    name = Some(n);
                }
                "onchanges" => {
                    onchanges = map.next_value::<Names>()?.0;
                    if onchanges.is_empty() || onchanges.iter().any(|n| n.trim().is_empty()) {
                        return Err(de::Error::custom(
                            "onchanges needs the names of earlier jobs of the run: `onchanges: [nginx-config]`",
                        ));
                    }
                }
                verb => {
                    let verb: Verb = verb.parse().map_err(|e: String| {
                        de::Error::custom(format!(
                            "{e} (a job's other fields: name, vars, assign, onchanges)"
                        ))
                    })?;
                    let args = map.next_value::<Scalar>()?.0;
                    if let Some((other, _)) = &job {
                        return Err(de::Error::custom(format!(
                            "a job has one verb, this one has {other} and {verb}: start each job with its own `- `"
                        )));
                    }
                    job = Some((verb, args));
                }
            }
        }
        let Some((verb, args)) = job else {
            return Err(de::Error::custom(format!(
                "a job without a verb: {JOB_SHAPE}"
            )));
        };
        let args = if vars.is_empty() {
            args
        } else {
            format!("{vars} {args}")
        };
        let mut task = Task::parse(verb, &args).map_err(de::Error::custom)?;
        if name.is_some() || !onchanges.is_empty() {
            task.options.handler = Some(Box::new(crate::dsl::Handler {
                name,
                onchanges,
                triggers: Vec::new(),
            }));
        }
        Ok(FileJob(task, assign))
    }
}

/// A job's `vars:` as the options they stand for, to go before its
/// arguments: `stdout_arg: out` is `--stdout-arg out`, `skip_cache: true`
/// is `--skip-cache` (false: left out).
fn vars_as_options(vars: serde_yaml::Mapping) -> Result<String, String> {
    use serde_yaml::Value;
    let mut out = Vec::new();
    for (k, v) in vars {
        let key = match k.as_str() {
            Some(key)
                if !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
            {
                key
            }
            _ => {
                return Err(format!(
                    "vars: {k:?} is not an option's name (stdout_arg, skip_cache, ...)"
                ))
            }
        };
        let flag = format!("--{}", key.replace('_', "-"));
        let text = match v {
            Value::Bool(true) => {
                out.push(flag);
                continue;
            }
            Value::Bool(false) | Value::Null => continue,
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            _ => {
                return Err(format!(
                "vars: {key} is a list or map; an option's value is a string, a number or a bool"
            ))
            }
        };
        // One word the job string reads back as it is: never something that
        // could end the quoting and spill into the command.
        if (text.contains('\'') && text.contains('"')) || text.contains(['\n', '\r']) {
            return Err(format!(
                "vars: {key} holds both quote marks or a line break; write that option in the job string"
            ));
        }
        out.push(format!("{flag} {}", crate::dsl::quote_value(&text)));
    }
    Ok(out.join(" "))
}

/// `async:` as Directord reads it: a bool, or a string Python's
/// `strtobool` takes.
fn bool_like(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "y" | "yes" | "t" | "true" | "on" | "1" => Some(true),
        "n" | "no" | "f" | "false" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// `onchanges`: a list of job names, or one.
struct Names(Vec<String>);

impl<'de> Deserialize<'de> for Names {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Names, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        match OneOrMany::deserialize(d)? {
            OneOrMany::One(n) => Ok(Names(vec![n])),
            OneOrMany::Many(v) => Ok(Names(v)),
        }
    }
}

/// A job's arguments: a string, or a number or boolean taken as text.
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Scalar, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, a number or a boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A YAML error, and the likely cause when the line it points at has a
/// value starting with `{{`: YAML reads that as a mapping, so a template
/// at the start of a value must be quoted.
fn with_quote_hint(text: &str, e: &serde_yaml::Error) -> String {
    let line = e
        .location()
        .and_then(|l| text.lines().nth(l.line().saturating_sub(1)));
    let unquoted = line.is_some_and(|l| {
        l.split_once(':').is_some_and(|(_, v)| {
            v.trim_start().starts_with("{{") || v.trim_start().starts_with("{%")
        })
    });
    if unquoted {
        format!(
            "{e} (a value that starts with {{{{ must be quoted, or YAML reads it as a mapping: `- RUN: \"{{{{ cmd }}}} --flag\"`)"
        )
    } else {
        e.to_string()
    }
}

/// Does the YAML look like an Ansible playbook: plays with `hosts` or
/// `tasks`, and none with `jobs`?
fn is_playbook(v: &serde_yaml::Value) -> bool {
    let Some(plays) = v.as_sequence() else {
        return false;
    };
    let has = |m: &serde_yaml::Mapping, k: &str| m.contains_key(serde_yaml::Value::from(k));
    let maps: Vec<&serde_yaml::Mapping> = plays.iter().filter_map(|p| p.as_mapping()).collect();
    maps.iter()
        .any(|m| has(m, "hosts") || has(m, "tasks") || has(m, "roles"))
        && !maps.iter().any(|m| has(m, "jobs"))
}

/// Parse one file's text into blocks.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Block>, String> {
    let err = |msg: String| format!("orchestration file {}: {msg}", path.display());
    let value = serde_yaml::from_str::<serde_yaml::Value>(text)
        .map_err(|e| err(with_quote_hint(text, &e)))?;
    if value.is_null() {
        return Err(err(
            "it is empty: expected a list of blocks with `jobs`".into()
        ));
    }
    if is_playbook(&value) {
        return Err(err(
            "this is an Ansible playbook (hosts:, tasks:), not a director orchestration: that is a list of blocks, each with optional `targets:` (node names, globs, KEY=VALUE) and `jobs:`, a list of one-verb maps, e.g. `- targets: [web*]` then `  jobs: [{RUN: systemctl reload nginx}]`".into(),
        ));
    }
    let blocks: Vec<FileBlock> =
        serde_yaml::from_str(text).map_err(|e| err(with_quote_hint(text, &e)))?;
    if blocks.is_empty() {
        return Err(err("it has no blocks".into()));
    }
    blocks
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            let amount = |v: Option<Scalar>, key: &str| {
                let parse = if key == "batch" {
                    Amount::parse_batch
                } else {
                    Amount::parse
                };
                v.map(|v| parse(&v.0, key))
                    .transpose()
                    .map_err(|e| err(format!("block {}: {e}", i + 1)))
            };
            let rolling = match (amount(b.batch, "batch")?, amount(b.max_fail, "max_fail")?) {
                (Some(batch), max_fail) => Some(Rolling { batch, max_fail }),
                (None, Some(_)) => {
                    return Err(err(format!(
                        "block {}: max_fail needs batch in the same block",
                        i + 1
                    )))
                }
                (None, None) => None,
            };
            let name = match b.name {
                Some(n) if n.0.trim().is_empty() => {
                    return Err(err(format!("block {}: name is empty", i + 1)))
                }
                n => n.map(|n| n.0),
            };
            let concurrent = match b.concurrent {
                None => false,
                Some(v) => bool_like(&v.0).ok_or_else(|| {
                    err(format!(
                        "block {}: async: '{}' is not a bool (true, false, yes, no, on, off, 1, 0)",
                        i + 1,
                        v.0
                    ))
                })?,
            };
            if b.assign.as_ref().is_some_and(|a| a.is_empty()) {
                return Err(err(format!(
                    "block {}: assign is an empty list: leave it out to use targets",
                    i + 1
                )));
            }
            // Directord's order: a block's assign before its targets.
            let targets = b.assign.or(b.targets);
            // An empty list or pattern (a template or variable that came
            // out empty) would mean every node: refused.
            match &targets {
                Some(t) if t.is_empty() => {
                    return Err(err(format!(
                        "block {}: targets is an empty list: leave targets out to mean every node online",
                        i + 1
                    )))
                }
                Some(t) if t.iter().any(|p| p.trim().is_empty()) => {
                    return Err(err(format!(
                        "block {}: targets holds an empty pattern: give a node name, a glob or KEY=VALUE",
                        i + 1
                    )))
                }
                _ => {}
            }
            let assign: Vec<Option<crate::wire::Assigned>> = b
                .jobs
                .iter()
                .map(|j| j.1.clone().map(crate::wire::Assigned))
                .collect();
            Ok(Block {
                targets: targets.unwrap_or_default(),
                tasks: b.jobs.into_iter().map(|j| j.0).collect(),
                rolling,
                origin: format!("{}, block {}", path.display(), i + 1),
                name,
                assign: if assign.iter().any(Option::is_some) {
                    assign
                } else {
                    Vec::new()
                },
                concurrent,
            })
        })
        .collect()
}

/// Read and parse every file, then apply the selection. Any error stops
/// everything: nothing is submitted from a run with one bad file.
pub fn load(files: &[PathBuf], sel: &Selection) -> Result<Vec<Block>, String> {
    let mut blocks = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read orchestration file {}: {e}", path.display()))?;
        let mut parsed = parse(path, &text)?;
        // ADD sources are found and hashed here, on the server's machine;
        // a relative one beside the file, as Directord's files expect.
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        for (b, block) in parsed.iter_mut().enumerate() {
            for (j, task) in block.tasks.iter_mut().enumerate() {
                crate::sources::resolve_in(task, Some(base)).map_err(|e| {
                    format!(
                        "orchestration file {}: block {}, job {}: {e}",
                        path.display(),
                        b + 1,
                        j + 1
                    )
                })?;
            }
        }
        blocks.extend(parsed);
    }
    check_handlers(&blocks)?;
    select(blocks, sel)
}

/// Every `onchanges` names exactly one earlier job of the run. (Names
/// may repeat, as Directord allows, as long as no handler names one that
/// does.)
pub fn check_handlers(blocks: &[Block]) -> Result<(), String> {
    let mut names: std::collections::HashMap<&str, u32> = Default::default();
    for (i, b) in blocks.iter().enumerate() {
        for (j, t) in b.tasks.iter().enumerate() {
            let at = || format!("{}, job {}", b.label(i), j + 1);
            for n in t.options.onchanges() {
                match names.get(n.as_str()) {
                    Some(1) => {}
                    Some(_) => {
                        return Err(format!(
                            "{}: onchanges names '{n}', which more than one earlier job has as its name: give them names of their own",
                            at()
                        ))
                    }
                    None => {
                        return Err(format!(
                            "{}: onchanges names '{n}', which no earlier job of the run has as its name",
                            at()
                        ))
                    }
                }
            }
            if let Some(n) = t.options.name() {
                *names.entry(n).or_default() += 1;
            }
        }
    }
    Ok(())
}

/// Apply `--target`, `--restrict` and `--ignore-cache`.
pub fn select(mut blocks: Vec<Block>, sel: &Selection) -> Result<Vec<Block>, String> {
    for r in &sel.restrict {
        if r.len() < 4 || !r.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "--restrict '{r}': expected a task SHA1 (or its first 4 or more hex digits)"
            ));
        }
    }
    let wanted = |t: &Task| {
        let sha = t.sha1();
        sel.restrict.is_empty()
            || sel
                .restrict
                .iter()
                .any(|r| sha.starts_with(&r.to_ascii_lowercase()))
    };
    if let Some(r) = sel.restrict.iter().find(|r| {
        !blocks
            .iter()
            .flat_map(|b| &b.tasks)
            .any(|t| t.sha1().starts_with(&r.to_ascii_lowercase()))
    }) {
        return Err(format!(
            "--restrict {r} matches no job in the orchestration"
        ));
    }
    for b in &mut blocks {
        if !sel.targets.is_empty() {
            // The operator's --target wins over assign and targets.
            b.targets = sel.targets.clone();
            b.assign.clear();
        }
        if !b.assign.is_empty() {
            let assign = std::mem::take(&mut b.assign);
            b.assign = b
                .tasks
                .iter()
                .zip(assign)
                .filter(|(t, _)| wanted(t))
                .map(|(_, a)| a)
                .collect();
        }
        b.tasks.retain(|t| wanted(t));
        for t in &mut b.tasks {
            t.options.skip_cache |= sel.ignore_cache;
            t.options.check |= sel.check;
            t.options.diff |= sel.diff;
        }
    }
    blocks.retain(|b| !b.tasks.is_empty());
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dsl::Action;

    fn p(text: &str) -> Result<Vec<Block>, String> {
        parse(Path::new("site.yml"), text)
    }

    #[test]
    fn an_unquoted_template_value_gets_a_hint_and_a_bad_template_is_refused() {
        for text in [
            "- jobs:\n  - RUN: {{ x }}\n",
            "- jobs:\n  - WORKDIR: {{ dir }}/sub\n",
        ] {
            let e = p(text).unwrap_err();
            assert!(e.contains("must be quoted"), "{e}");
        }
        let e = p("- jobs:\n  - RUN: --skip-cache true\n  - RUN: x\n  - RUN: [1\n").unwrap_err();
        assert!(!e.contains("must be quoted"), "{e}");
        let e = p("- jobs:\n  - RUN: \"echo {{ x\"\n").unwrap_err();
        assert!(e.contains("RUN command: bad template: syntax error"), "{e}");
    }

    const EXAMPLE: &str = "---
- jobs:
  - WORKDIR: /home/centos/.ssh
  - RUN: chmod 600 /home/centos/.ssh/* && chmod 700 /home/centos/.ssh
- targets:
  - df.next-c1.localdomain-client-1
  - df.next-c2.localdomain-client-1
  jobs:
  - RUN: dnf install -y wget
  - ARG: port 8080
";

    #[test]
    fn the_original_example_parses() {
        let blocks = p(EXAMPLE).unwrap();
        assert_eq!(blocks.len(), 2);
        assert!(blocks[0].targets.is_empty());
        assert_eq!(
            blocks[0].tasks[0].action,
            Action::Workdir {
                stdout_arg: None,
                path: "/home/centos/.ssh".into(),
                chown: None,
                mode: None,
            }
        );
        assert_eq!(blocks[1].targets.len(), 2);
        assert_eq!(
            blocks[1].tasks[1].action,
            Action::Arg {
                key: "port".into(),
                value: "8080".into()
            }
        );
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let e = p("- jobs:\n  - RUN: echo\n    ARG: a b\n").unwrap_err();
        assert!(e.starts_with("orchestration file site.yml: "), "{e}");
        assert!(e.contains("one verb") && e.contains("line 2"), "{e}");
        let e = p("- jobs:\n  - FLY: away\n").unwrap_err();
        assert!(
            e.contains("unknown verb 'FLY'") && e.contains("line 2 column 5"),
            "{e}"
        );
        let e = p("- targets: [a]\n").unwrap_err();
        assert!(
            e.contains("missing field `jobs`") && e.contains("line 1"),
            "{e}"
        );
        let e = p("- jobs:\n  - RUN: --timeout x sleep 1\n").unwrap_err();
        assert!(e.contains("--timeout") && e.contains("line 2"), "{e}");
        let e = p("- jobs: [{RUN: a}]\n  tragets: [x]\n").unwrap_err();
        assert!(e.contains("unknown field `tragets`"), "{e}");
        let e = p("- jobs:\n  - echo hi\n").unwrap_err();
        assert!(e.contains("a map of one VERB"), "{e}");
        let e = p("- jobs: [\n").unwrap_err();
        assert!(e.contains("line"), "{e}");
        assert!(p("").unwrap_err().contains("empty"));
        assert!(p("[]").unwrap_err().contains("no blocks"));
        assert!(p("jobs: []").is_err());
    }

    #[test]
    fn selection_overrides_targets_restricts_and_ignores_cache() {
        let blocks = p(EXAMPLE).unwrap();
        let sha = blocks[1].tasks[0].sha1();
        let sel = Selection {
            targets: vec!["n1".into()],
            restrict: vec![sha[..8].to_uppercase()],
            ignore_cache: true,
            ..Selection::default()
        };
        let out = select(blocks.clone(), &sel).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].targets, vec!["n1".to_string()]);
        assert_eq!(out[0].tasks.len(), 1);
        assert_eq!(out[0].tasks[0].sha1(), sha);
        assert!(out[0].tasks[0].options.skip_cache);
        let sel = Selection {
            restrict: vec!["deadbeef".into()],
            ..Selection::default()
        };
        assert_eq!(
            select(blocks.clone(), &sel).unwrap_err(),
            "--restrict deadbeef matches no job in the orchestration"
        );
        let sel = Selection {
            restrict: vec!["xyz".into()],
            ..Selection::default()
        };
        assert!(select(blocks, &sel)
            .unwrap_err()
            .contains("expected a task SHA1"));
    }

    #[test]
    fn directords_block_and_job_fields() {
        let text = "
- name: Functional test parent
  async: 'True'
  targets: [all-of-them]
  assign: [n1, n2]
  jobs:
  - RUN: echo hello world 3
    name: Job name test
    vars:
      stdout_arg: test_stdout_arg2
      stderr_arg: err2
      timeout: 30
      skip_cache: true
      run_once: false
  - RUN: echo only on n3
    assign: [n3]
- async: off
  jobs:
  - ECHO: hi
";
        let text = text.replace("ECHO: hi", "RUN: echo hi");
        let blocks = p(&text).unwrap();
        let b = &blocks[0];
        assert_eq!(b.name.as_deref(), Some("Functional test parent"));
        assert!(b.concurrent && !blocks[1].concurrent);
        assert_eq!(b.targets, ["n1", "n2"], "assign before targets");
        assert_eq!(b.job_targets(0), ["n1", "n2"]);
        assert_eq!(
            b.job_targets(1),
            ["n3"],
            "a job's assign before the block's"
        );
        let t = &b.tasks[0];
        assert_eq!(t.options.name(), Some("Job name test"));
        assert!(t.options.skip_cache && !t.options.run_once);
        let Action::Run { stdout_arg, .. } = &t.action else {
            panic!("{t:?}")
        };
        assert_eq!(stdout_arg.as_deref(), Some("test_stdout_arg2"));
        assert_eq!(
            t.args(),
            "--skip-cache --timeout 30 --stdout-arg test_stdout_arg2 --stderr-arg err2 echo hello world 3"
        );
        // --target wins over assign; --restrict keeps each job's assign.
        let sel = Selection {
            targets: vec!["only".into()],
            ..Selection::default()
        };
        let out = select(blocks.clone(), &sel).unwrap();
        assert_eq!(out[0].job_targets(1), ["only"]);
        let sel = Selection {
            restrict: vec![b.tasks[1].sha1()[..8].into()],
            ..Selection::default()
        };
        let out = select(blocks, &sel).unwrap();
        assert_eq!(out[0].tasks.len(), 1);
        assert_eq!(out[0].job_targets(0), ["n3"]);
        // Slips.
        let e = p("- async: maybe\n  jobs: [{RUN: x}]\n").unwrap_err();
        assert!(e.contains("async: 'maybe' is not a bool"), "{e}");
        let e = p("- assign: []\n  jobs: [{RUN: x}]\n").unwrap_err();
        assert!(e.contains("assign is an empty list"), "{e}");
        let e = p("- jobs:\n  - RUN: x\n    assign: n1\n").unwrap_err();
        assert!(e.contains("assign is a list of targets"), "{e}");
        let e = p("- jobs:\n  - RUN: x\n    vars: {stdout_arg: [a]}\n").unwrap_err();
        assert!(e.contains("vars: stdout_arg is a list or map"), "{e}");
        let e = p("- jobs:\n  - RUN: x\n    vars: {\"\": 1}\n").unwrap_err();
        assert!(e.contains("is not an option's name"), "{e}");
        let e = p("- jobs:\n  - RUN: echo hi\n    vars: {stdout_arg: \"a'b\\\"c\"}\n").unwrap_err();
        assert!(e.contains("both quote marks"), "{e}");
        let e = p("- jobs:\n  - RUN: x\n    vars: {colour: red}\n").unwrap_err();
        assert!(e.contains("--colour"), "{e}");
    }

    #[test]
    fn names_may_repeat_unless_a_handler_names_one() {
        let ok = "- jobs:\n  - RUN: a\n    name: x\n  - RUN: b\n    name: x\n";
        assert!(load_text(ok).is_ok());
        let bad = format!("{ok}  - RUN: c\n    onchanges: [x]\n");
        let e = load_text(&bad).unwrap_err();
        assert!(e.contains("more than one earlier job"), "{e}");
    }

    fn load_text(text: &str) -> Result<(), String> {
        check_handlers(&p(text)?)
    }

    #[test]
    fn slips_are_refused_with_what_to_write() {
        let p = |t: &str| parse(Path::new("f.yml"), t);
        let e = p("- hosts: web\n  tasks:\n  - name: x\n    command: uptime\n").unwrap_err();
        assert!(
            e.contains("this is an Ansible playbook") && e.contains("jobs:"),
            "{e}"
        );
        assert!(!e.contains('\n'), "one line: {e}");
        let e = p("- targets: []\n  jobs:\n  - RUN: x\n").unwrap_err();
        assert!(e.contains("block 1: targets is an empty list"), "{e}");
        let e = p("- targets: ['']\n  jobs:\n  - RUN: x\n").unwrap_err();
        assert!(e.contains("block 1: targets holds an empty pattern"), "{e}");
        let e = p("- batch: 0\n  jobs:\n  - RUN: x\n").unwrap_err();
        assert!(
            e.contains("block 1: batch: a batch needs at least one node"),
            "{e}"
        );
        assert!(p("- batch: 1\n  max_fail: 0\n  jobs:\n  - RUN: x\n").is_ok());
    }
}
