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
    #[serde(default)]
    targets: Option<Vec<String>>,
    /// `N` or `N%`: roll this block (and the rest of the run) over its
    /// nodes, as `--batch` does for a whole run.
    #[serde(default)]
    batch: Option<Scalar>,
    #[serde(default)]
    max_fail: Option<Scalar>,
    jobs: Vec<FileJob>,
}

/// One `- VERB: args` entry, parsed as a task while its position is known.
struct FileJob(Task);

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
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
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
                        de::Error::custom(format!("{e} (a job's other fields: name, onchanges)"))
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
        let mut task = Task::parse(verb, &args).map_err(de::Error::custom)?;
        if name.is_some() || !onchanges.is_empty() {
            task.options.handler = Some(Box::new(crate::dsl::Handler {
                name,
                onchanges,
                triggers: Vec::new(),
            }));
        }
        Ok(FileJob(task))
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
                f.write_str("the job's arguments as a string")
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
            // An empty list or pattern (a template or variable that came
            // out empty) would mean every node: refused.
            match &b.targets {
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
            Ok(Block {
                targets: b.targets.unwrap_or_default(),
                tasks: b.jobs.into_iter().map(|j| j.0).collect(),
                rolling,
                origin: format!("{}, block {}", path.display(), i + 1),
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
        // ADD sources are found and hashed here, on the server's machine.
        for (b, block) in parsed.iter_mut().enumerate() {
            for (j, task) in block.tasks.iter_mut().enumerate() {
                crate::sources::resolve(task).map_err(|e| {
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

/// Every `onchanges` names an earlier job of the run, and no two jobs
/// share a name.
pub fn check_handlers(blocks: &[Block]) -> Result<(), String> {
    let mut names = std::collections::HashSet::new();
    for (i, b) in blocks.iter().enumerate() {
        for (j, t) in b.tasks.iter().enumerate() {
            let at = || format!("{}, job {}", b.label(i), j + 1);
            for n in t.options.onchanges() {
                if !names.contains(n.as_str()) {
                    return Err(format!(
                        "{}: onchanges names '{n}', which no earlier job of the run has as its name",
                        at()
                    ));
                }
            }
            if let Some(n) = t.options.name() {
                if !names.insert(n) {
                    return Err(format!("{}: two jobs of the run are named '{n}'", at()));
                }
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
            b.targets = sel.targets.clone();
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
