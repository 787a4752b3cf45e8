//! Job strings into tasks: options, flags and each verb's arguments.

use super::*;

impl Task {
    pub(super) fn parse_raw(verb: Verb, args: &str) -> Result<Task, String> {
        let mut options = JobOptions::default();
        let mut retry_delay = false;
        let mut flags: Vec<Flag> = Vec::new();
        let own = verb_options(verb);
        let mut rest = args.trim();
        while let Some(after) = rest.strip_prefix("--") {
            if after.is_empty() || after.starts_with(char::is_whitespace) {
                rest = after.trim_start(); // `--` ends the options
                break;
            }
            let (word, tail) = split_word(after);
            rest = tail;
            let (name, inline) = match word.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (word, None),
            };
            let mut value = |what: &str| -> Result<String, String> {
                if let Some(v) = inline {
                    return Ok(v.to_owned());
                }
                let (v, tail) = take_value(rest)?;
                if v.is_empty() && tail.len() == rest.len() {
                    return Err(format!("{verb} option --{name} needs {what}"));
                }
                rest = tail;
                Ok(v)
            };
            match name {
                "skip-cache" if inline.is_none() => options.skip_cache = true,
                "run-once" if inline.is_none() => options.run_once = true,
                "timeout" => {
                    let v = value("a number of seconds")?;
                    options.timeout_secs = v
                        .parse::<u64>()
                        .ok()
                        .filter(|s| (1..=31_536_000).contains(s))
                        .ok_or_else(|| format!("{verb} option --timeout: '{v}' is not a whole number of seconds (1 or more)"))?;
                }
                "retries" if verb == Verb::Run => {
                    let v = value("a number of retries")?;
                    options.retries = v
                        .parse::<u32>()
                        .ok()
                        .filter(|n| *n <= MAX_RETRIES)
                        .ok_or_else(|| format!("{verb} option --retries: '{v}' is not a whole number from 0 to {MAX_RETRIES}"))?;
                }
                "retry-delay" if verb == Verb::Run => {
                    let v = value("a number of seconds")?;
                    options.retry_delay_ms = parse_secs_ms(&v, 86_400).ok_or_else(|| {
                        format!("{verb} option --retry-delay: '{v}' is not a number of seconds from 0 to 86400 (fractions allowed: 0.5)")
                    })?;
                    retry_delay = true;
                }
                "retries" | "retry-delay" => {
                    return Err(format!(
                        "option --{name} does not apply to {verb} (only to RUN)"
                    ))
                }
                _ => match own.iter().find(|(n, _)| *n == name) {
                    Some(&(n, true)) => flags.push((n, Some(value("a value")?))),
                    Some(&(n, false)) if inline.is_none() => flags.push((n, None)),
                    Some(_) => return Err(format!("{verb} option --{name} takes no value")),
                    None => return Err(unknown_option(verb, name)),
                },
            }
        }
        if retry_delay && options.retries == 0 {
            return Err(format!(
                "{verb} option --retry-delay needs --retries N (how many times to retry)"
            ));
        }
        let flag = |flags: &[Flag], n: &str| -> Option<String> {
            flags
                .iter()
                .rev()
                .find(|(f, _)| *f == n)
                .and_then(|(_, v)| v.clone())
        };
        let has = |flags: &[Flag], n: &str| flags.iter().any(|(f, _)| *f == n);
        let chown = flag(&flags, "chown")
            .map(|v| {
                let (user, group) = v.split_once(':').unwrap_or((&v, ""));
                if user.is_empty() || v.ends_with(':') || group.contains(':') {
                    return Err(format!("{verb} option --chown: '{v}' is not USER[:GROUP]"));
                }
                Ok(v)
            })
            .transpose()?;
        let mode = flag(&flags, "chmod")
            .map(|v| parse_mode(&v).map_err(|e| format!("{verb} option --chmod: {e}")))
            .transpose()?;
        let action = match verb {
            Verb::Run => {
                if rest.is_empty() {
                    return Err("RUN needs a command to run".into());
                }
                crate::template::check(rest).map_err(|e| format!("RUN command: {e}"))?;
                let stdout_arg = flag(&flags, "stdout-arg");
                if let Some(v) = &stdout_arg {
                    check_name(v, "--stdout-arg name")?;
                }
                let stderr_arg = flag(&flags, "stderr-arg");
                if let Some(v) = &stderr_arg {
                    check_name(v, "--stderr-arg name")?;
                }
                let creates = flag(&flags, "creates");
                if let Some(c) = &creates {
                    if c.trim().is_empty() {
                        return Err("RUN option --creates needs a path".into());
                    }
                    crate::template::check(c).map_err(|e| format!("RUN --creates: {e}"))?;
                }
                let unless = flag(&flags, "unless");
                if let Some(u) = &unless {
                    if u.trim().is_empty() {
                        return Err("RUN option --unless needs a command".into());
                    }
                    crate::template::check(u).map_err(|e| format!("RUN --unless: {e}"))?;
                }
                Action::Run {
                    command: rest.to_owned(),
                    stdout_arg,
                    stderr_arg: stderr_arg.map(Box::new),
                    guard: (creates.is_some() || unless.is_some())
                        .then(|| Box::new(Guard { creates, unless })),
                }
            }
            Verb::Echo => {
                crate::template::check(rest).map_err(|e| format!("ECHO text: {e}"))?;
                Action::Echo {
                    text: rest.to_owned(),
                }
            }
            Verb::CacheEvict => {
                let part = match rest.to_ascii_lowercase().as_str() {
                    "all" => None,
                    "args" => Some(CachePart::Args),
                    "envs" => Some(CachePart::Envs),
                    "query" => Some(CachePart::Query),
                    "jobs" => Some(CachePart::Jobs),
                    _ => {
                        return Err(format!(
                            "CACHEEVICT needs one of args, envs, query, jobs or all, not '{rest}'"
                        ))
                    }
                };
                Action::CacheEvict { part }
            }
            Verb::CacheFile => {
                Action::CacheFile(Box::new(crate::verbs::cachefile::CacheFile::parse(rest)?))
            }
            Verb::ContainerImage => {
                Action::Image(Box::new(crate::verbs::podman::parse_image(flags, rest)?))
            }
            Verb::Pod => Action::Pod(Box::new(crate::verbs::podman::parse_pod(flags, rest)?)),
            Verb::QueueSentinel => Action::QueueSentinel,
            Verb::Facter => {
                if !rest.is_empty() {
                    return Err(format!(
                        "FACTER takes only --custom-dir DIR and --external-dir DIR, not '{rest}'"
                    ));
                }
                Action::Facter {
                    custom_dir: flag(&flags, "custom-dir"),
                    external_dir: flag(&flags, "external-dir"),
                }
            }
            Verb::Arg | Verb::Env => {
                let (key, value) = split_word(rest);
                if key.is_empty() || value.is_empty() {
                    return Err(format!("{verb} needs KEY VALUE"));
                }
                check_name(key, &format!("{verb} key"))?;
                let (key, value) = (key.to_owned(), value.to_owned());
                if has(&flags, "extend-args") {
                    if crate::template::structured(&value).is_none() {
                        return Err(format!(
                            "ARG --extend-args {key}: the value is not a list or a map (['a'], {{\"k\": \"v\"}})"
                        ));
                    }
                    Action::ExtendArg { key, value }
                } else if verb == Verb::Arg {
                    Action::Arg { key, value }
                } else {
                    Action::Env { key, value }
                }
            }
            Verb::Query => {
                let (key, more) = split_word(rest);
                if key.is_empty() || !more.is_empty() {
                    return Err("QUERY needs one ARG name".into());
                }
                check_name(key, "QUERY key")?;
                if options.run_once {
                    return Err(
                        "option --run-once does not apply to QUERY (it asks every target)".into(),
                    );
                }
                Action::Query {
                    key: key.to_owned(),
                }
            }
            Verb::ClearCache => {
                if !rest.is_empty() {
                    return Err("CLEAR-CACHE takes no arguments".into());
                }
                Action::ClearCache
            }
            Verb::Workdir => {
                if rest.is_empty() {
                    return Err("WORKDIR needs a path".into());
                }
                crate::template::check(rest).map_err(|e| format!("WORKDIR path: {e}"))?;
                let stdout_arg = flag(&flags, "stdout-arg");
                if let Some(v) = &stdout_arg {
                    check_name(v, "--stdout-arg name")?;
                }
                Action::Workdir {
                    path: rest.to_owned(),
                    chown,
                    mode,
                    stdout_arg: stdout_arg.map(Box::new),
                }
            }
            Verb::Add | Verb::Copy => {
                let mut words = split_paths(rest)?;
                if words.len() < 2 {
                    return Err(format!("{verb} needs at least one SRC and a DEST"));
                }
                let dest = words.pop().unwrap_or_default();
                crate::template::check(&dest).map_err(|e| format!("{verb} DEST: {e}"))?;
                Action::Add(Box::new(Add {
                    chown,
                    sources: words,
                    dest,
                    files: Vec::new(),
                    blueprint: has(&flags, "blueprint"),
                    mode,
                }))
            }
            Verb::Package | Verb::Dnf => {
                Action::Package(Box::new(crate::verbs::package::parse(flags, rest)?))
            }
            Verb::Service => Action::Service(Box::new(crate::verbs::service::parse(flags, rest)?)),
            Verb::Wait => {
                let w = crate::verbs::wait::parse(flags, rest)?;
                if let crate::verbs::wait::Until::Cmd(c) = &w.until {
                    crate::template::check(c).map_err(|e| format!("WAIT command: {e}"))?;
                }
                Action::Wait(Box::new(w))
            }
        };
        Ok(Task { action, options })
    }
}

/// The options only `verb` takes: name, and whether a value follows.
pub(super) fn verb_options(verb: Verb) -> &'static [(&'static str, bool)] {
    match verb {
        Verb::Run => &[
            ("stdout-arg", true),
            ("stderr-arg", true),
            ("creates", true),
            ("unless", true),
        ],
        Verb::Add | Verb::Copy => &[("chown", true), ("chmod", true), ("blueprint", false)],
        Verb::Workdir => &[("chown", true), ("chmod", true), ("stdout-arg", true)],
        Verb::Package | Verb::Dnf => crate::verbs::package::OPTIONS,
        Verb::Service => crate::verbs::service::OPTIONS,
        Verb::Wait => crate::verbs::wait::OPTIONS,
        Verb::Arg => &[("extend-args", false)],
        Verb::Env
        | Verb::Query
        | Verb::ClearCache
        | Verb::Echo
        | Verb::CacheEvict
        | Verb::CacheFile => &[],
        Verb::Facter => &[("custom-dir", true), ("external-dir", true)],
        Verb::ContainerImage => crate::verbs::podman::IMAGE_OPTIONS,
        Verb::Pod => crate::verbs::podman::POD_OPTIONS,
        Verb::QueueSentinel => &[],
    }
}

/// Why `--name` is refused for `verb`: which verbs take it, or which
/// options `verb` has.
pub(super) fn unknown_option(verb: Verb, name: &str) -> String {
    let takers: Vec<&str> = Verb::ALL
        .iter()
        .filter(|v| verb_options(**v).iter().any(|(n, _)| *n == name))
        .map(|v| v.name())
        .collect();
    if !takers.is_empty() {
        let list = match takers.split_last() {
            Some((last, [])) => last.to_string(),
            Some((last, init)) => format!("{} and {last}", init.join(", ")),
            None => String::new(),
        };
        return format!("option --{name} does not apply to {verb} (only to {list})");
    }
    let mut known = vec!["--skip-cache", "--run-once", "--timeout SECONDS"];
    if verb == Verb::Run {
        known.extend(["--retries N", "--retry-delay SECONDS"]);
    }
    let own: Vec<String> = verb_options(verb)
        .iter()
        .map(|(n, v)| {
            if *v {
                format!("--{n} VALUE")
            } else {
                format!("--{n}")
            }
        })
        .collect();
    let mut all: Vec<String> = known.iter().map(|s| s.to_string()).collect();
    all.extend(own);
    format!(
        "unknown option --{name} for {verb} (options: {})",
        all.join(", ")
    )
}

/// An option's value: one word, or a quoted string (`'test -f /x'`).
pub(super) fn take_value(s: &str) -> Result<(String, &str), String> {
    let s = s.trim_start();
    match s.chars().next() {
        Some(q @ ('\'' | '"')) => match s[1..].find(q) {
            Some(i) => Ok((s[1..1 + i].to_owned(), s[i + 2..].trim_start())),
            None => Err(format!("unclosed quote in '{s}'")),
        },
        _ => {
            let (w, rest) = split_word(s);
            Ok((w.to_owned(), rest))
        }
    }
}

/// The first whitespace-separated word and the rest, both trimmed.
pub(super) fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

/// ADD's SRC... DEST words: split at whitespace, except inside quotes
/// (which are removed) and inside `{{ }}` or `{% %}` template tags.
pub(super) fn split_paths(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut tag: Option<&str> = None;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if let Some(close) = tag {
            word.push(c);
            if word.ends_with(close) {
                tag = None;
            }
            continue;
        }
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, '{') if matches!(chars.peek(), Some('{') | Some('%')) => {
                let open = chars.next().unwrap_or('{');
                word.push('{');
                word.push(open);
                tag = Some(if open == '{' { "}}" } else { "%}" });
                in_word = true;
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() || tag.is_some() {
        return Err(format!("unclosed quote or template tag in '{s}'"));
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// CACHEEVICT's word for a part of the cache.
pub(super) fn cache_part_name(part: Option<CachePart>) -> &'static str {
    match part {
        None => "all",
        Some(CachePart::Args) => "args",
        Some(CachePart::Envs) => "envs",
        Some(CachePart::Query) => "query",
        Some(CachePart::Jobs) => "jobs",
    }
}
