//! Jinja templates (minijinja) over a node's ARG values: RUN commands and
//! WORKDIR paths are rendered on the node before use. A string without `{{`
//! or `{%` is used as it is, so shell syntax such as `${#list[@]}` is safe
//! in commands that use no template.

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior, Value};

/// What a node's templates read: its ARG values by name, its `facts` and
/// `labels` (`{{ facts.os_id }}`, `{{ labels.role }}`), and what QUERY
/// jobs collected (`{{ query.KEY["node"] }}`), which an ARG of that name
/// cannot hide.
#[derive(Clone, Copy)]
pub struct Vars<'a> {
    pub args: &'a BTreeMap<String, String>,
    pub facts: &'a BTreeMap<String, String>,
    pub labels: &'a BTreeMap<String, String>,
    pub query: &'a BTreeMap<String, BTreeMap<String, String>>,
}

impl<'a> Vars<'a> {
    /// ARG values only.
    #[cfg(test)]
    pub fn args(args: &'a BTreeMap<String, String>) -> Vars<'a> {
        const EMPTY: &BTreeMap<String, String> = &BTreeMap::new();
        const NONE: &BTreeMap<String, BTreeMap<String, String>> = &BTreeMap::new();
        Vars {
            args,
            facts: EMPTY,
            labels: EMPTY,
            query: NONE,
        }
    }

    /// Is the dotted variable `path` (`user`, `facts.os_id`) set?
    fn has(&self, path: &str) -> bool {
        match path.split_once('.') {
            Some(("facts", k)) => self.facts.contains_key(k),
            Some(("labels", k)) => self.labels.contains_key(k),
            Some(("query", k)) => self.query.contains_key(k.split('.').next().unwrap_or(k)),
            _ => {
                let top = path.split('.').next().unwrap_or(path);
                matches!(top, "facts" | "labels" | "query") || self.args.contains_key(top)
            }
        }
    }

    fn context(&self) -> Value {
        let mut ctx: BTreeMap<String, Value> = self
            .args
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        ctx.insert("facts".into(), Value::from(self.facts.clone()));
        ctx.insert("labels".into(), Value::from(self.labels.clone()));
        ctx.insert("query".into(), Value::from(self.query.clone()));
        Value::from(ctx)
    }
}

/// Is `source` a template that compiles? Checked at submission, so that a
/// syntax error is refused before anything is queued, not on every node.
pub fn check(source: &str) -> Result<(), String> {
    if !source.contains("{{") && !source.contains("{%") {
        return Ok(());
    }
    let env = Environment::new();
    env.template_from_str(source)
        .map(|_| ())
        .map_err(|e| format!("bad template: {e}"))
}

/// Render `source` with `vars`. An undefined variable is an error naming
/// it.
pub fn render(source: &str, vars: &Vars) -> Result<String, String> {
    if !source.contains("{{") && !source.contains("{%") {
        return Ok(source.to_owned());
    }
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    let tmpl = env
        .template_from_str(source)
        .map_err(|e| format!("bad template: {e}"))?;
    tmpl.render(vars.context()).map_err(|e| {
        if e.kind() != minijinja::ErrorKind::UndefinedError {
            return format!("template error: {e}");
        }
        // Name what is missing; `default` and `is defined` are fine.
        let mut missing: Vec<String> = tmpl
            .undeclared_variables(true)
            .into_iter()
            .filter(|v| !vars.has(v))
            .collect();
        missing.sort();
        if missing.is_empty() {
            // Set at the top, missing below: a node absent from a
            // QUERY's map, or an attribute a value does not have.
            return format!("undefined value in the template: {e} (a node without the ARG is absent from a QUERY's map: `| default(\"\")` covers it)");
        }
        let s = if missing.len() == 1 { "" } else { "s" };
        let hint = if missing.iter().all(|m| m.starts_with("facts.")) {
            "the node does not report it: `director manage --node-info NODE` lists its facts"
        } else if missing.iter().all(|m| m.starts_with("labels.")) {
            "give the node the label with --label KEY=VALUE"
        } else if missing.iter().all(|m| m.starts_with("query.")) {
            "run QUERY KEY on this node before this job"
        } else {
            "set with ARG or RUN --stdout-arg before this job"
        };
        format!(
            "undefined template variable{s} {} ({hint})",
            missing
                .iter()
                .map(|m| format!("'{m}'"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn render(source: &str, a: &BTreeMap<String, String>) -> Result<String, String> {
        super::render(source, &Vars::args(a))
    }

    #[test]
    fn a_query_map_reads_by_node_and_loops_and_a_missing_node_is_named() {
        let a = args(&[]);
        let mut query = BTreeMap::new();
        query.insert(
            "addr".to_string(),
            args(&[("db-1", "10.0.0.1"), ("db-2", "10.0.0.2")]),
        );
        let v = Vars {
            query: &query,
            ..Vars::args(&a)
        };
        let r = |s| super::render(s, &v);
        assert_eq!(r("{{ query.addr['db-2'] }}").unwrap(), "10.0.0.2");
        assert_eq!(
            r("{% for n, a in query.addr | items %}{{ n }}={{ a }} {% endfor %}").unwrap(),
            "db-1=10.0.0.1 db-2=10.0.0.2 "
        );
        assert_eq!(r("{{ query.addr['web-1'] | default('') }}").unwrap(), "");
        let e = r("{{ query.addr['web-1'] }}").unwrap_err();
        assert!(e.contains("absent from a QUERY's map"), "{e}");
        let e = r("{{ query.nope['x'] }}").unwrap_err();
        assert!(
            e.contains("'query.nope'") && e.contains("run QUERY KEY"),
            "{e}"
        );
    }

    #[test]
    fn facts_and_labels_are_variables_an_arg_cannot_hide() {
        let a = args(&[("facts", "shadow"), ("user", "u")]);
        let facts = args(&[("os_id", "debian")]);
        let labels = args(&[("role", "web")]);
        let v = Vars {
            args: &a,
            facts: &facts,
            labels: &labels,
            query: &BTreeMap::new(),
        };
        assert_eq!(
            super::render("{{ user }} {{ facts.os_id }} {{ labels.role }}", &v).unwrap(),
            "u debian web"
        );
        let e = super::render("{{ facts.nope }}", &v).unwrap_err();
        assert!(
            e.contains("'facts.nope'") && e.contains("--node-info"),
            "{e}"
        );
        let e = super::render("{{ labels.tier }}", &v).unwrap_err();
        assert!(e.contains("'labels.tier'") && e.contains("--label"), "{e}");
        assert_eq!(
            super::render("{{ labels.tier | default('none') }}", &v).unwrap(),
            "none"
        );
    }

    #[test]
    fn renders_variables() {
        let a = args(&[("user", "ops"), ("port", "8080")]);
        assert_eq!(
            render("echo {{ user }}:{{port}}", &a).unwrap(),
            "echo ops:8080"
        );
        assert_eq!(render("{% if port %}p{% endif %}", &a).unwrap(), "p");
        assert_eq!(
            render("{{ nope | default('d') }}/{{ user }}", &a).unwrap(),
            "d/ops"
        );
        assert_eq!(
            render("{% if nope is defined %}x{% endif %}", &a).unwrap(),
            ""
        );
    }

    #[test]
    fn plain_strings_are_untouched() {
        assert_eq!(
            render("echo ${#x[@]} {#", &BTreeMap::new()).unwrap(),
            "echo ${#x[@]} {#"
        );
    }

    #[test]
    fn undefined_variables_are_named() {
        let e = render(
            "mysql -p{{ mysql_root_password }} {{ b }}",
            &args(&[("b", "1")]),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "undefined template variable 'mysql_root_password' (set with ARG or RUN --stdout-arg before this job)"
        );
        assert!(render("{{ a }", &BTreeMap::new())
            .unwrap_err()
            .starts_with("bad template"));
    }
}
