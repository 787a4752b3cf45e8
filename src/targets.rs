//! Target patterns, the same in `--target`, `--exclude` and an
//! orchestration's `targets:`: a node name, a glob on names (`web*`,
//! `db-[12]`), or `KEY=VALUE` on a label or fact (`role=web`,
//! `os_id=debian`; the value may be a glob too). Several patterns are a
//! union; exclusions subtract. A pattern that matches no node is an error
//! naming it, so a typo never widens or narrows a run silently.

use crate::facts;

/// One parsed pattern.
#[derive(Debug)]
enum Pattern {
    Name(String),
    Glob(glob::Pattern),
    /// A label of that name, else a fact, whose value matches.
    Match {
        key: String,
        value: glob::Pattern,
    },
}

impl Pattern {
    fn parse(text: &str) -> Result<Pattern, String> {
        let glob = |g: &str| {
            glob::Pattern::new(g).map_err(|e| format!("target '{text}': bad pattern: {}", e.msg))
        };
        if let Some((key, value)) = text.split_once('=') {
            let key = key.trim();
            if !facts::is_key(key) {
                return Err(format!(
                    "target '{text}': '{key}' is not a label or fact name"
                ));
            }
            return Ok(Pattern::Match {
                key: key.to_owned(),
                value: glob(value.trim())?,
            });
        }
        if text.contains(['*', '?', '[']) {
            return Ok(Pattern::Glob(glob(text)?));
        }
        Ok(Pattern::Name(text.to_owned()))
    }

    fn matches(&self, name: &str, about: &facts::Node) -> bool {
        match self {
            Pattern::Name(n) => n == name,
            Pattern::Glob(g) => g.matches(name),
            Pattern::Match { key, value } => about
                .labels
                .get(key)
                .or_else(|| about.facts.get(key))
                .is_some_and(|v| value.matches(v)),
        }
    }
}

/// The nodes `targets` name (every node when empty), less those `exclude`
/// names, in the order of `nodes`. The error names the first pattern that
/// matches nothing, or says no node is left.
pub fn resolve<'a>(
    nodes: impl Iterator<Item = (&'a str, &'a facts::Node)> + Clone,
    targets: &[String],
    exclude: &[String],
) -> Result<Vec<String>, String> {
    let known = || known_list(nodes.clone().map(|(n, _)| n));
    let parse = |list: &[String]| -> Result<Vec<(String, Pattern)>, String> {
        list.iter()
            .map(|t| t.trim())
            .filter(|t| !t.is_empty())
            .map(|t| Ok((t.to_owned(), Pattern::parse(t)?)))
            .collect()
    };
    let want = parse(targets)?;
    let skip = parse(exclude)?;
    for (text, p) in &want {
        if !nodes.clone().any(|(n, a)| p.matches(n, a)) {
            return Err(match p {
                Pattern::Name(_) => {
                    format!("unknown target node '{text}' (known nodes: {})", known())
                }
                _ => format!("target '{text}' matches no node (known nodes: {})", known()),
            });
        }
    }
    for (text, p) in &skip {
        if !nodes.clone().any(|(n, a)| p.matches(n, a)) {
            return Err(format!(
                "--exclude '{text}' matches no node (known nodes: {})",
                known()
            ));
        }
    }
    let picked: Vec<String> = nodes
        .filter(|(n, a)| want.is_empty() || want.iter().any(|(_, p)| p.matches(n, a)))
        .filter(|(n, a)| !skip.iter().any(|(_, p)| p.matches(n, a)))
        .map(|(n, _)| n.to_owned())
        .collect();
    if picked.is_empty() {
        return Err(if skip.is_empty() {
            "no nodes are connected: start `director client` on the nodes first".into()
        } else {
            "no node is left once the exclusions are taken out".into()
        });
    }
    Ok(picked)
}

/// Node names for a message: the first few, and how many more.
fn known_list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    const SHOWN: usize = 10;
    let names: Vec<&str> = names.collect();
    match names.len() {
        0 => "none connected".into(),
        n if n <= SHOWN => names.join(", "),
        n => format!("{}, and {} more", names[..SHOWN].join(", "), n - SHOWN),
    }
}

/// Split `--target`/`--exclude` values on commas: `web1,web2` is two
/// patterns.
pub fn split(values: &[String]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(labels: &[(&str, &str)], facts: &[(&str, &str)]) -> facts::Node {
        let map = |p: &[(&str, &str)]| {
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        facts::Node {
            labels: map(labels),
            facts: map(facts),
        }
    }

    fn fleet() -> Vec<(String, facts::Node)> {
        vec![
            (
                "db-1".into(),
                node(&[("role", "db")], &[("os_id", "debian")]),
            ),
            (
                "db-2".into(),
                node(&[("role", "db")], &[("os_id", "rocky")]),
            ),
            (
                "web-1".into(),
                node(&[("role", "web")], &[("os_id", "debian")]),
            ),
            (
                "web-2".into(),
                node(&[], &[("os_id", "debian"), ("role", "fact")]),
            ),
        ]
    }

    fn pick(targets: &[&str], exclude: &[&str]) -> Result<Vec<String>, String> {
        let f = fleet();
        let s = |l: &[&str]| l.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        resolve(
            f.iter().map(|(n, a)| (n.as_str(), a)),
            &split(&s(targets)),
            &split(&s(exclude)),
        )
    }

    #[test]
    fn names_globs_and_labels_or_facts_are_a_union_less_exclusions() {
        assert_eq!(pick(&[], &[]).unwrap().len(), 4);
        assert_eq!(pick(&["web*"], &[]).unwrap(), ["web-1", "web-2"]);
        assert_eq!(pick(&["db-[12]"], &["db-2"]).unwrap(), ["db-1"]);
        assert_eq!(
            pick(&["role=db", "web-1"], &[]).unwrap(),
            ["db-1", "db-2", "web-1"]
        );
        // A label wins over a fact of the same name; values may be globs.
        assert_eq!(pick(&["role=fact"], &[]).unwrap(), ["web-2"]);
        assert_eq!(
            pick(&["os_id=deb*"], &["role=web"]).unwrap(),
            ["db-1", "web-2"]
        );
        assert_eq!(pick(&["db-1,web-1"], &[]).unwrap(), ["db-1", "web-1"]);
        assert_eq!(pick(&[], &["os_id=debian"]).unwrap(), ["db-2"]);
    }

    #[test]
    fn a_pattern_that_matches_nothing_is_named() {
        assert_eq!(
            pick(&["web-9"], &[]).unwrap_err(),
            "unknown target node 'web-9' (known nodes: db-1, db-2, web-1, web-2)"
        );
        assert!(pick(&["role=cache"], &[])
            .unwrap_err()
            .starts_with("target 'role=cache' matches no node"));
        assert!(pick(&["web*"], &["wbe-1"])
            .unwrap_err()
            .starts_with("--exclude 'wbe-1' matches no node"));
        assert_eq!(
            pick(&["web*"], &["role=web", "web-2"]).unwrap_err(),
            "no node is left once the exclusions are taken out"
        );
        assert!(pick(&["a b=c"], &[])
            .unwrap_err()
            .contains("not a label or fact name"));
        assert!(pick(&["db-[1"], &[]).unwrap_err().contains("bad pattern"));
    }

    /// The figure of issue 9: a label over 2,000 registered nodes, resolved
    /// as the server does. A measurement, not a test of speed: run with
    /// `cargo test --release -- --ignored --nocapture resolving_2000`.
    #[test]
    #[ignore]
    fn resolving_2000_nodes_by_label() {
        let fleet: Vec<(String, facts::Node)> = (0..2000)
            .map(|i| {
                let role = ["web", "db", "cache", "batch"][i % 4];
                let facts = [("os_id", "debian"), ("arch", "x86_64"), ("cpus", "8")];
                (
                    format!("node-{i:04}"),
                    node(&[("role", role), ("dc", "fra")], &facts),
                )
            })
            .collect();
        let want = vec!["role=db".to_owned()];
        let rounds = 200;
        let start = std::time::Instant::now();
        let mut n = 0;
        for _ in 0..rounds {
            let picked = resolve(fleet.iter().map(|(n, a)| (n.as_str(), a)), &want, &[]).unwrap();
            n = picked.len();
        }
        let per = start.elapsed() / rounds;
        println!("2000 nodes, --target role=db: {n} nodes in {per:?} per resolution (the bar: under 10 ms)");
        assert_eq!(n, 500);
    }

    #[test]
    fn long_node_lists_are_cut() {
        let names: Vec<String> = (0..25).map(|i| format!("n{i}")).collect();
        let s = known_list(names.iter().map(String::as_str));
        assert!(s.ends_with("n9, and 15 more"), "{s}");
    }
}
