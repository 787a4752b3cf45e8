//! Tasks back into text: the job string as shown, and the canonical form
//! the task SHA1 is taken over.

use super::*;

impl Task {
    pub(super) fn job_string(&self, mask: bool) -> String {
        let mut out = Vec::new();
        if self.options.skip_cache {
            out.push("--skip-cache".to_owned());
        }
        if self.options.run_once {
            out.push("--run-once".to_owned());
        }
        if self.options.timeout_secs != DEFAULT_TIMEOUT_SECS {
            out.push(format!("--timeout {}", self.options.timeout_secs));
        }
        if self.options.retries > 0 {
            out.push(format!("--retries {}", self.options.retries));
            if self.options.retry_delay_ms != DEFAULT_RETRY_DELAY_MS {
                out.push(format!(
                    "--retry-delay {}",
                    secs_text(self.options.retry_delay_ms)
                ));
            }
        }
        match &self.action {
            Action::Run {
                command,
                stdout_arg,
                stderr_arg,
                guard,
            } => {
                let (creates, unless) = guard
                    .as_ref()
                    .map_or((None, None), |g| (g.creates.as_ref(), g.unless.as_ref()));
                if let Some(name) = stdout_arg {
                    out.push(format!("--stdout-arg {name}"));
                }
                if let Some(name) = stderr_arg {
                    out.push(format!("--stderr-arg {name}"));
                }
                if let Some(c) = creates {
                    out.push(format!("--creates {}", quote_value(c)));
                }
                if let Some(u) = unless {
                    out.push(format!("--unless {}", quote_value(u)));
                }
                out.push(command.clone());
            }
            Action::ExtendArg { key, .. } if mask => {
                out.push("--extend-args".into());
                out.push(format!("{key} {HIDDEN}"))
            }
            Action::ExtendArg { key, value } => {
                out.push("--extend-args".into());
                out.push(format!("{key} {value}"))
            }
            Action::Arg { key, .. } | Action::Env { key, .. } if mask => {
                out.push(format!("{key} {HIDDEN}"))
            }
            Action::Arg { key, value } | Action::Env { key, value } => {
                out.push(format!("{key} {value}"))
            }
            Action::Workdir {
                path,
                chown,
                mode,
                stdout_arg,
            } => {
                if let Some(c) = chown {
                    out.push(format!("--chown {}", quote_value(c)));
                }
                if let Some(name) = stdout_arg {
                    out.push(format!("--stdout-arg {name}"));
                }
                if let Some(m) = mode {
                    out.push(format!("--chmod {m:04o}"));
                }
                out.push(path.clone())
            }
            Action::Query { key } => out.push(key.clone()),
            Action::ClearCache => {}
            Action::Package(p) => out.push(p.args()),
            Action::Service(v) => out.push(v.args()),
            Action::Wait(w) => out.push(w.args()),
            Action::Echo { text } => out.push(text.clone()),
            Action::CacheEvict { part } => out.push(cache_part_name(*part).into()),
            Action::CacheFile(c) => out.push(c.path.clone()),
            Action::Image(i) => out.push(i.args()),
            Action::Pod(p) => out.push(p.args()),
            Action::QueueSentinel => {}
            Action::Facter {
                custom_dir,
                external_dir,
            } => {
                if let Some(d) = custom_dir {
                    out.push(format!("--custom-dir {}", quote_value(d)));
                }
                if let Some(d) = external_dir {
                    out.push(format!("--external-dir {}", quote_value(d)));
                }
            }
            Action::Add(add) => {
                let Add {
                    chown,
                    sources,
                    dest,
                    blueprint,
                    mode,
                    ..
                } = &**add;
                if let Some(c) = chown {
                    out.push(format!("--chown {}", quote_value(c)));
                }
                if let Some(m) = mode {
                    out.push(format!("--chmod {m:04o}"));
                }
                if *blueprint {
                    out.push("--blueprint".into());
                }
                out.push(
                    sources
                        .iter()
                        .chain([dest])
                        .map(|w| quote_path(w))
                        .collect::<Vec<_>>()
                        .join(" "),
                );
            }
        }
        if let Some(body) = out.last_mut().filter(|_| self.action.ends_in_text()) {
            if body.starts_with("--") {
                *body = format!("-- {body}");
            }
        }
        out.join(" ")
    }

    /// The canonical definition the task SHA1 is computed over.
    pub fn canonical(&self) -> String {
        let body = match &self.action {
            Action::Run {
                command,
                stdout_arg,
                stderr_arg,
                guard,
            } => {
                let (creates, unless) = guard
                    .as_ref()
                    .map_or((None, None), |g| (g.creates.as_ref(), g.unless.as_ref()));
                // Guards and --stderr-arg joined later: a RUN without them
                // keeps its SHA1.
                let mut guards = String::new();
                if let Some(e) = stderr_arg {
                    guards.push_str(&format!("stderr_arg={e}\0"));
                }
                if let Some(c) = creates {
                    guards.push_str(&format!("creates={c}\0"));
                }
                if let Some(u) = unless {
                    guards.push_str(&format!("unless={u}\0"));
                }
                format!(
                    "stdout_arg={}\0{guards}{command}",
                    stdout_arg.as_deref().unwrap_or("")
                )
            }
            Action::Arg { key, value } | Action::Env { key, value } => format!("{key}\0{value}"),
            Action::ExtendArg { key, value } => format!("extend\0{key}\0{value}"),
            Action::Workdir {
                path,
                chown,
                mode,
                stdout_arg,
            } => {
                let mut s = path.clone();
                if let Some(c) = chown {
                    s.push_str(&format!("\0chown={c}"));
                }
                if let Some(a) = stdout_arg {
                    s.push_str(&format!("\0stdout_arg={a}"));
                }
                if let Some(m) = mode {
                    s.push_str(&format!("\0mode={m:o}"));
                }
                s
            }
            Action::Query { key } => key.clone(),
            Action::ClearCache => String::new(),
            Action::Package(p) => p.args(),
            Action::Service(v) => v.args(),
            Action::Wait(w) => w.args(),
            Action::Echo { text } => text.clone(),
            Action::CacheEvict { part } => cache_part_name(*part).into(),
            Action::CacheFile(c) => c.path.clone(),
            Action::Image(i) => i.args(),
            Action::Pod(p) => p.args(),
            Action::QueueSentinel => String::new(),
            Action::Facter {
                custom_dir,
                external_dir,
            } => format!(
                "{}\0{}",
                custom_dir.as_deref().unwrap_or(""),
                external_dir.as_deref().unwrap_or("")
            ),
            // What lands on the node: names, contents and modes, not where
            // the sources sat on the server's machine.
            Action::Add(add) => {
                let Add {
                    chown,
                    dest,
                    files,
                    blueprint,
                    mode,
                    ..
                } = &**add;
                let mut s = format!("chown={}\0{dest}", chown.as_deref().unwrap_or(""));
                if *blueprint {
                    s.push_str("\0blueprint");
                }
                if let Some(m) = mode {
                    s.push_str(&format!("\0mode={m:o}"));
                }
                for f in files {
                    s.push_str(&format!(
                        "\0{}:{}:{:o}:{}",
                        f.name(),
                        f.size,
                        f.mode,
                        f.sha1
                    ));
                }
                s
            }
        };
        // Retries joined the definition later: a task without them keeps
        // the SHA1 it always had (node caches, --restrict lists).
        let retries = match self.options.retries {
            0 => String::new(),
            n => format!(
                "retries={n}\0retry_delay={}\0",
                secs_text(self.options.retry_delay_ms)
            ),
        };
        format!(
            "{}\0timeout={}\0{retries}{body}",
            self.verb().name(),
            self.options.timeout_secs
        )
    }
}
