//! Jinja templates (minijinja) over a node's ARG values: RUN commands and
//! WORKDIR paths are rendered on the node before use. A string without `{{`
//! or `{%` is used as it is, so shell syntax such as `${#list[@]}` is safe
//! in commands that use no template.
//!
//! Trust: this node's own values (its ARGs, set by the operator or by its
//! own commands' `--stdout-arg`, its facts and labels) are trusted. A value
//! any other node supplied (a QUERY map's names and values, anything later
//! relayed between nodes) is not: another enrolled node must not be able
//! to run commands here. In a RUN command (`render_shell`) every value
//! that is not trusted, including what the template builds itself (`~`,
//! filters, literals), is inserted only if it is made of characters no
//! shell context reads as syntax (letters, digits, `_ . , : / @ % + = -`);
//! any other is refused, failing the job, unless the template says how:
//! `| quote` makes it one single-quoted shell word (for use outside
//! quotes), `| safe` inserts it as it is (the operator's explicit opt-out).
//!
//! Rendering is bounded (`FUEL`): a template that loops too long or builds
//! too much fails its job with one line instead of stalling the node.

use std::collections::BTreeMap;

use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior, Value};

/// The work one render may do: about this many instructions, or 64 times
/// as many bytes built (minijinja's fuel). Real templates use a few
/// thousand; a runaway loop stops within a fraction of a second.
pub const FUEL: u64 = 500_000;

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

    /// The template's variables: this node's own values marked safe
    /// (trusted), other nodes' (QUERY maps) not.
    fn context(&self) -> Value {
        let trusted = |m: &BTreeMap<String, String>| -> BTreeMap<String, Value> {
            m.iter()
                .map(|(k, v)| (k.clone(), Value::from_safe_string(v.clone())))
                .collect()
        };
        let mut ctx: BTreeMap<String, Value> = self
            .args
            .iter()
            .map(|(k, v)| (k.clone(), arg_value(v)))
            .collect();
        ctx.insert("facts".into(), Value::from(trusted(self.facts)));
        ctx.insert("labels".into(), Value::from(trusted(self.labels)));
        ctx.insert("query".into(), query_value(self.query));
        Value::from(ctx)
    }
}

/// An ARG's value as templates see it: a list or a map when its text is
/// one (`['a', 'b']`, `{"k": 1}`: YAML's flow forms, which take JSON and
/// Python's literals), so that `{{ items | length }}` and `{% for %}`
/// work as in Directord; otherwise the text. Scalars stay text, as
/// director's templates have always compared them (`port == '8080'`).
/// Every string in it is trusted: the node's own value.
pub fn arg_value(text: &str) -> Value {
    structured(text).map_or_else(|| Value::from_safe_string(text.to_owned()), |v| trusted(&v))
}

/// The list or map `text` spells, if it spells one.
pub fn structured(text: &str) -> Option<serde_yaml::Value> {
    let t = text.trim_start();
    if !t.starts_with(['[', '{']) {
        return None;
    }
    match serde_yaml::from_str::<serde_yaml::Value>(text) {
        Ok(v @ (serde_yaml::Value::Sequence(_) | serde_yaml::Value::Mapping(_))) => Some(v),
        _ => None,
    }
}

/// `ARG --extend-args`: the list `new` appended to the list `old`, or the
/// map `new` merged over the map `old`, as text that spells the result.
pub fn extend(old: &str, new: &str) -> Result<String, String> {
    use serde_yaml::Value as Y;
    let kind = |v: &Option<Y>| match v {
        Some(Y::Sequence(_)) => "a list",
        Some(Y::Mapping(_)) => "a map",
        _ => "neither a list nor a map",
    };
    let merged = match (structured(old), structured(new)) {
        (Some(Y::Sequence(mut a)), Some(Y::Sequence(b))) => {
            a.extend(b);
            Y::Sequence(a)
        }
        (Some(Y::Mapping(mut a)), Some(Y::Mapping(b))) => {
            for (k, v) in b {
                a.insert(k, v);
            }
            Y::Mapping(a)
        }
        (o, n) => {
            return Err(format!(
                "the value here is {} and the new one {}: both must be lists or both maps",
                kind(&o),
                kind(&n)
            ))
        }
    };
    serde_json::to_string(&merged).map_err(|e| format!("cannot write the merged value: {e}"))
}

/// What QUERY jobs collected, readable both ways: director's
/// `query.KEY[NODE]` and Directord's `query[NODE][KEY]` (and
/// `query.values()`, where Directord's files use `select('defined')` over
/// the nodes' maps). A name that is both a KEY and a node is the KEY's.
/// Every value came from another node: none is trusted, lists and maps
/// included.
fn query_value(query: &BTreeMap<String, BTreeMap<String, String>>) -> Value {
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    let mut by_node: BTreeMap<&str, BTreeMap<String, Value>> = BTreeMap::new();
    for (key, nodes) in query {
        let mut per_key = BTreeMap::new();
        for (node, v) in nodes {
            let v = structured(v).map_or_else(|| Value::from(v.clone()), |y| untrusted(&y));
            by_node
                .entry(node.as_str())
                .or_default()
                .insert(key.clone(), v.clone());
            per_key.insert(node.clone(), v);
        }
        out.insert(key.clone(), Value::from(per_key));
    }
    for (node, keys) in by_node {
        out.entry(node.to_owned())
            .or_insert_with(|| Value::from(keys));
    }
    Value::from(out)
}

/// A YAML value as a template value, its strings not trusted.
fn untrusted(v: &serde_yaml::Value) -> Value {
    use serde_yaml::Value as Y;
    match v {
        Y::String(s) => Value::from(s.clone()),
        Y::Sequence(items) => Value::from(items.iter().map(untrusted).collect::<Vec<_>>()),
        Y::Mapping(m) => Value::from(
            m.iter()
                .map(|(k, v)| (yaml_key(k), untrusted(v)))
                .collect::<BTreeMap<String, Value>>(),
        ),
        Y::Tagged(t) => untrusted(&t.value),
        other => trusted(other),
    }
}

/// Python's `dict.keys()`, `.values()` and `.items()`, which Jinja2
/// templates (Directord's) call on maps.
fn dict_methods(
    _: &mut minijinja::State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    use minijinja::value::ValueKind;
    if value.kind() != ValueKind::Map || !args.is_empty() {
        return Err(Error::from(ErrorKind::UnknownMethod));
    }
    let keys: Vec<Value> = value.try_iter()?.collect();
    let get = |k: &Value| value.get_item(k).unwrap_or_default();
    Ok(match method {
        "keys" => Value::from(keys),
        "values" => Value::from(keys.iter().map(get).collect::<Vec<_>>()),
        "items" => Value::from(
            keys.iter()
                .map(|k| Value::from(vec![k.clone(), get(k)]))
                .collect::<Vec<_>>(),
        ),
        _ => return Err(Error::from(ErrorKind::UnknownMethod)),
    })
}

/// A YAML value as a template value, its strings trusted.
fn trusted(v: &serde_yaml::Value) -> Value {
    use serde_yaml::Value as Y;
    match v {
        Y::Null => Value::from(()),
        Y::Bool(b) => Value::from(*b),
        Y::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(f)) => Value::from(f),
            _ => Value::from_safe_string(n.to_string()),
        },
        Y::String(s) => Value::from_safe_string(s.clone()),
        Y::Sequence(items) => Value::from(items.iter().map(trusted).collect::<Vec<_>>()),
        Y::Mapping(m) => Value::from(
            m.iter()
                .map(|(k, v)| (Value::from_safe_string(yaml_key(k)), trusted(v)))
                .collect::<BTreeMap<Value, Value>>(),
        ),
        Y::Tagged(t) => trusted(&t.value),
    }
}

/// A map key as text.
fn yaml_key(k: &serde_yaml::Value) -> String {
    match k {
        serde_yaml::Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .map(|s| s.trim_end().to_owned())
            .unwrap_or_default(),
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

/// Characters that are syntax in no shell context (unquoted, in single
/// or double quotes, in a here-document).
fn is_inert(c: char) -> bool {
    c.is_alphanumeric() || "_.,:/@%+=-".contains(c)
}

/// `s` as one single-quoted shell word.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Why a value that is not trusted cannot go into a shell command as it
/// is (its characters, not the value: it may be a secret).
fn not_inert(text: &str) -> Option<String> {
    let mut bad: Vec<char> = text.chars().filter(|c| !is_inert(*c)).collect();
    if bad.is_empty() {
        return None;
    }
    bad.sort_unstable();
    bad.dedup();
    let shown: Vec<String> = bad
        .iter()
        .take(6)
        .map(|c| match c {
            ' ' => "a space".to_owned(),
            '\n' => "a newline".to_owned(),
            '\t' => "a tab".to_owned(),
            c if c.is_control() => format!("{:?}", c),
            c => format!("`{c}`"),
        })
        .collect();
    Some(format!(
        "a value that did not come from this node (a QUERY value, or one built in the template) holds {}, which a shell may read as syntax: it is not inserted; write `{{{{ ... | quote }}}}` to pass it as one quoted word, or `{{{{ ... | safe }}}}` to insert it as it is",
        shown.join(", ")
    ))
}

/// An environment for rendering `source`: strict about undefined values,
/// bounded by `FUEL`, with the `quote` filter.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_unknown_method_callback(dict_methods);
    env.add_filter("quote", |v: String| {
        Value::from_safe_string(shell_quote(&v))
    });
    env
}

/// `Vars` that own their maps: for work handed to the I/O thread.
pub struct OwnedVars {
    pub args: BTreeMap<String, String>,
    pub facts: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub query: BTreeMap<String, BTreeMap<String, String>>,
}

impl OwnedVars {
    pub fn of(v: &Vars) -> OwnedVars {
        OwnedVars {
            args: v.args.clone(),
            facts: v.facts.clone(),
            labels: v.labels.clone(),
            query: v.query.clone(),
        }
    }

    pub fn vars(&self) -> Vars<'_> {
        Vars {
            args: &self.args,
            facts: &self.facts,
            labels: &self.labels,
            query: &self.query,
        }
    }
}

/// Render a file's content (`ADD --blueprint`) with `vars`: as `render`,
/// keeping its last newline, and dropping the newline after a block tag
/// (`{% if %}` lines leave no empty line).
pub fn render_file(source: &str, vars: &Vars) -> Result<String, String> {
    let mut env = environment();
    // As Ansible's template module: a block tag's own newline goes, the
    // file's last newline stays.
    match minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .keep_trailing_newline(true)
        .build()
    {
        Ok(syntax) => env.set_syntax(syntax),
        Err(e) => return Err(format!("template settings: {e}")),
    }
    render_with(source, vars, env)
}

/// Render `source` with `vars`, for a path (no shell reads it). An
/// undefined variable is an error naming it.
pub fn render(source: &str, vars: &Vars) -> Result<String, String> {
    render_with(source, vars, environment())
}

/// Render `source` with `vars` for `/bin/sh -c`: a value that is not
/// trusted is inserted only if no shell can read it as syntax (see the
/// module's notes).
pub fn render_shell(source: &str, vars: &Vars) -> Result<String, String> {
    let mut env = environment();
    env.set_formatter(|out, _state, value| {
        let text = value.to_string();
        if !is_trusted(value) {
            if let Some(why) = not_inert(&text) {
                return Err(Error::new(ErrorKind::InvalidOperation, why));
            }
        }
        out.write_str(&text)
            .map_err(|_| Error::new(ErrorKind::WriteFailure, "cannot write the output"))
    });
    render_with(source, vars, env)
}

/// Did every string in `v` come from this node (a safe string), so that
/// it may go into a shell command as it is? Numbers, booleans and none are
/// inert anyway; a list or map is trusted when all it holds is.
fn is_trusted(v: &Value) -> bool {
    use minijinja::value::ValueKind;
    match v.kind() {
        ValueKind::Number | ValueKind::Bool | ValueKind::None | ValueKind::Undefined => true,
        ValueKind::Seq => v.try_iter().is_ok_and(|mut it| it.all(|x| is_trusted(&x))),
        ValueKind::Map => v.try_iter().is_ok_and(|mut keys| {
            keys.all(|k| is_trusted(&k) && v.get_item(&k).is_ok_and(|x| is_trusted(&x)))
        }),
        _ => v.is_safe(),
    }
}

fn render_with(source: &str, vars: &Vars, env: Environment<'static>) -> Result<String, String> {
    if !source.contains("{{") && !source.contains("{%") {
        return Ok(source.to_owned());
    }
    let tmpl = env
        .template_from_str(source)
        .map_err(|e| format!("bad template: {e}"))?;
    tmpl.render(vars.context()).map_err(|e| {
        match e.kind() {
            ErrorKind::UndefinedError => {}
            ErrorKind::OutOfFuel => {
                return "the template does too much work (a loop too long, or a value too big): rendering stopped".to_owned();
            }
            ErrorKind::InvalidOperation if e.detail().is_some_and(|d| d.starts_with("a value that did not come")) => {
                return e.detail().unwrap_or_default().to_owned();
            }
            _ => return format!("template error: {e}"),
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

    #[test]
    fn query_reads_both_ways_and_python_dict_methods_work() {
        let a = args(&[]);
        let q: BTreeMap<String, BTreeMap<String, String>> = [
            (
                "base64_hosts".to_string(),
                [("n1".to_string(), "aGVsbG8=".to_string())].into(),
            ),
            (
                "facter".to_string(),
                [
                    ("n1".to_string(), r#"{"kernel": "Linux"}"#.to_string()),
                    ("n2".to_string(), r#"{"kernel": "Linux"}"#.to_string()),
                ]
                .into(),
            ),
        ]
        .into();
        let v = Vars {
            query: &q,
            ..Vars::args(&a)
        };
        let r = |t: &str| render_shell(t, &v);
        // Directord's functional test, as written.
        assert_eq!(
            r(r#"echo "{{ query.values() | map(attribute='base64_hosts') | select('defined') | list | first }}" | base64 -d"#).unwrap(),
            r#"echo "aGVsbG8=" | base64 -d"#
        );
        assert_eq!(
            r(r#"{{ query.values() | map(attribute="facter") | select("defined") | map(attribute="kernel") | list | first }}"#).unwrap(),
            "Linux"
        );
        // Directord's query[node][key] and director's query.key[node].
        assert_eq!(
            r("{{ query['n2'].facter.kernel }} {{ query.base64_hosts.n1 }}").unwrap(),
            "Linux aGVsbG8="
        );
        assert_eq!(
            r("{{ query.keys() | length }} {{ query.items() | length }}").unwrap(),
            "4 4"
        );
        // Another node's structured value is not trusted in a shell.
        let q2: BTreeMap<String, BTreeMap<String, String>> = [(
            "k".to_string(),
            [("n1".to_string(), "['a;b']".to_string())].into(),
        )]
        .into();
        let v = Vars { query: &q2, ..v };
        let e = render_shell("echo {{ query.k.n1[0] }}", &v).unwrap_err();
        assert!(e.contains("did not come from this node"), "{e}");
    }

    #[test]
    fn extend_appends_lists_merges_maps_and_refuses_a_mix() {
        assert_eq!(extend("['a']", "[\"b\"]").unwrap(), r#"["a","b"]"#);
        assert_eq!(
            extend("{a: 1, b: 2}", "{'b': 3, 'c': [4]}").unwrap(),
            r#"{"a":1,"b":3,"c":[4]}"#
        );
        let e = extend("['a']", "{b: 1}").unwrap_err();
        assert!(e.contains("a list and the new one a map"), "{e}");
        assert!(extend("plain", "[1]").is_err());
    }

    #[test]
    fn lists_and_maps_are_structured_and_scalars_stay_text() {
        let a = args(&[
            ("items", "['a', 'b c']"),
            ("d", "{\"a\": \"b\", 'n': [1, 2.5, True]}"),
            ("port", "8080"),
            ("flag", "[not closed"),
        ]);
        let v = Vars::args(&a);
        let r = |t: &str| super::render(t, &v).unwrap();
        assert_eq!(r("{{ items | length }}"), "2");
        assert_eq!(r("{% for x in items %}<{{ x }}>{% endfor %}"), "<a><b c>");
        assert_eq!(r("{{ d.a }} {{ d.n[0] + 1 }} {{ d.n | length }}"), "b 2 3");
        assert_eq!(r("{{ port == '8080' }}"), "True", "scalars compare as text");
        assert_eq!(r("{{ flag }}"), "[not closed", "not a list: text");
        // The node's own structured value is trusted in a shell command,
        // whole or in parts.
        let sh = |t: &str| render_shell(t, &v);
        assert_eq!(sh("echo {{ items[1] }}").unwrap(), "echo b c");
        assert!(sh("echo {{ items }}").is_ok());
        // A list the template builds from another node's value is not.
        let q: BTreeMap<String, BTreeMap<String, String>> = [(
            "k".to_string(),
            [("n2".to_string(), "a;b".to_string())].into(),
        )]
        .into();
        let v = Vars { query: &q, ..v };
        let e = render_shell("echo {{ [query.k.n2] }}", &v).unwrap_err();
        assert!(e.contains("did not come from this node"), "{e}");
    }

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

    /// The README's recipe, with what a lying node answered: its value
    /// is refused in a shell command, never run; the operator's quoting
    /// and opt-out work; this node's own values are used as they are.
    #[test]
    fn another_nodes_value_never_becomes_shell_syntax() {
        let own = args(&[("greeting", "it's $HOME; fine")]);
        let evil = "1.2.3.4' ; touch \"$OUT/pwned-$NODE\" ; echo '";
        let mut query = BTreeMap::new();
        query.insert(
            "db_addr".to_string(),
            args(&[("db-1", "10.0.0.1"), ("db-2", evil)]),
        );
        let recipe = "printf '%s\\n' {% for node, addr in query.db_addr | items %}'{{ node }} {{ addr }}' {% endfor %} > /etc/app/db-nodes";
        {
            let v = Vars {
                query: &query,
                ..Vars::args(&own)
            };
            let e = render_shell(recipe, &v).unwrap_err();
            assert!(e.contains("did not come from this node"), "{e}");
            assert!(
                e.contains("`'`") && e.contains("`;`") && e.contains("`$`"),
                "{e}"
            );
            assert!(!e.contains("pwned"), "the value itself is not shown: {e}");
            // One quoted word, or the operator's explicit opt-out.
            let quoted = render_shell("echo {{ query.db_addr['db-2'] | quote }}", &v).unwrap();
            assert_eq!(
                quoted,
                r#"echo '1.2.3.4'\'' ; touch "$OUT/pwned-$NODE" ; echo '\'''"#
            );
            let out = std::process::Command::new("/bin/sh")
                .args(["-c", &quoted])
                .env("OUT", "/nonexistent")
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), evil);
            assert_eq!(
                render_shell("{{ query.db_addr['db-2'] | safe }}", &v).unwrap(),
                evil
            );
            // Built from an untrusted value: untrusted too.
            assert!(render_shell("{{ 'x' ~ query.db_addr['db-2'] }}", &v).is_err());
            assert!(render_shell("{{ query.db_addr['db-2'] | upper }}", &v).is_err());
            // This node's own ARG: the operator's, as it is.
            assert_eq!(
                render_shell("echo {{ greeting }}", &v).unwrap(),
                "echo it's $HOME; fine"
            );
            // Paths are no shell: untouched.
            assert_eq!(
                super::render("/srv/{{ query.db_addr['db-2'] }}", &v).unwrap(),
                format!("/srv/{evil}")
            );
        }
        // Benign values render as they are, inside quotes or out.
        query.get_mut("db_addr").unwrap().remove("db-2");
        let v = Vars {
            query: &query,
            ..Vars::args(&own)
        };
        assert_eq!(
            render_shell(recipe, &v).unwrap(),
            "printf '%s\\n' 'db-1 10.0.0.1'  > /etc/app/db-nodes"
        );
    }

    /// A template that loops too long fails at once with one line, rather
    /// than holding the node's loop (heartbeats, SIGTERM) for minutes.
    #[test]
    fn rendering_is_bounded() {
        let a = args(&[]);
        let e = render_shell(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            &Vars::args(&a),
        )
        .unwrap_err();
        assert!(e.contains("does too much work"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        let e = super::render("{{ 'x' * 100000000 }}", &Vars::args(&a)).unwrap_err();
        assert!(e.contains("does too much work"), "{e}");
        // Ordinary templates are far below the bound.
        let long: String = (0..200).map(|i| format!("{{{{ {i} }}}} ")).collect();
        assert!(render_shell(&long, &Vars::args(&a)).is_ok());
    }
}
