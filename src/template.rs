//! Jinja templates (minijinja) over a node's ARG values: RUN commands and
//! WORKDIR paths are rendered on the node before use. A string without `{{`
//! or `{%` is used as it is, so shell syntax such as `${#list[@]}` is safe
//! in commands that use no template.

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior, Value};

/// Render `source` with `args` as its variables. An undefined variable is
/// an error naming it.
pub fn render(source: &str, args: &BTreeMap<String, String>) -> Result<String, String> {
    if !source.contains("{{") && !source.contains("{%") {
        return Ok(source.to_owned());
    }
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    let tmpl = env
        .template_from_str(source)
        .map_err(|e| format!("bad template: {e}"))?;
    tmpl.render(Value::from(args.clone())).map_err(|e| {
        if e.kind() != minijinja::ErrorKind::UndefinedError {
            return format!("template error: {e}");
        }
        // Name what is missing; `default` and `is defined` are fine.
        let mut missing: Vec<String> = tmpl
            .undeclared_variables(false)
            .into_iter()
            .filter(|v| !args.contains_key(v))
            .collect();
        missing.sort();
        let s = if missing.len() == 1 { "" } else { "s" };
        format!(
            "undefined template variable{s} {} (set with ARG or RUN --stdout-arg before this job)",
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
