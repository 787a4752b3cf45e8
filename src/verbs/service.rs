//! `SERVICE UNIT...`: systemd units in a running state (`--state
//! started|stopped|restarted|reloaded`, or Directord's `--restarted`,
//! `--stopped`, `--reloaded`; started by default, as Directord does) and
//! an enablement (`--enable`, `--disable`, `--mask`, `--unmask`), after an
//! optional `--daemon-reload`. Each is asked of `systemctl` first
//! (`is-active`, `is-enabled`) and changed only where it differs; a
//! restart or a reload always acts, and is always a change.

use serde::{Deserialize, Serialize};

use super::{check_item, sh_quote, Flag};

/// Whether the units should run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Running {
    Started,
    Stopped,
    Restarted,
    Reloaded,
}

impl Running {
    pub fn name(self) -> &'static str {
        match self {
            Running::Started => "started",
            Running::Stopped => "stopped",
            Running::Restarted => "restarted",
            Running::Reloaded => "reloaded",
        }
    }
}

/// Whether the units start at boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Enablement {
    Enable,
    Disable,
    Mask,
    Unmask,
}

impl Enablement {
    pub fn name(self) -> &'static str {
        match self {
            Enablement::Enable => "enable",
            Enablement::Disable => "disable",
            Enablement::Mask => "mask",
            Enablement::Unmask => "unmask",
        }
    }
}

/// A SERVICE job's arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    #[serde(deserialize_with = "crate::wire::cautious_seq")]
    pub units: Vec<String>,
    pub running: Running,
    pub enablement: Option<Enablement>,
    pub daemon_reload: bool,
}

pub const OPTIONS: &[(&str, bool)] = &[
    ("state", true),
    ("started", false),
    ("stopped", false),
    ("restarted", false),
    ("reloaded", false),
    ("enable", false),
    ("disable", false),
    ("mask", false),
    ("unmask", false),
    ("daemon-reload", false),
];

pub fn parse(flags: Vec<Flag>, rest: &str) -> Result<Service, String> {
    let mut running = None;
    let mut enablement = None;
    let mut daemon_reload = false;
    for (name, value) in flags {
        let r = match (name, value.as_deref()) {
            ("state", Some(v)) => Some(match v {
                "started" => Running::Started,
                "stopped" => Running::Stopped,
                "restarted" => Running::Restarted,
                "reloaded" => Running::Reloaded,
                _ => {
                    return Err(format!(
                    "SERVICE option --state: '{v}' is not started, stopped, restarted or reloaded"
                ))
                }
            }),
            ("started", _) => Some(Running::Started),
            ("stopped", _) => Some(Running::Stopped),
            ("restarted", _) => Some(Running::Restarted),
            ("reloaded", _) => Some(Running::Reloaded),
            _ => None,
        };
        if let Some(r) = r {
            if running.is_some_and(|old| old != r) {
                return Err(
                    "SERVICE takes one state (--state started|stopped|restarted|reloaded)".into(),
                );
            }
            running = Some(r);
            continue;
        }
        let e = match name {
            "enable" => Enablement::Enable,
            "disable" => Enablement::Disable,
            "mask" => Enablement::Mask,
            "unmask" => Enablement::Unmask,
            _ => {
                daemon_reload = true;
                continue;
            }
        };
        if enablement.is_some_and(|old| old != e) {
            return Err("SERVICE takes one of --enable, --disable, --mask and --unmask".into());
        }
        enablement = Some(e);
    }
    let units: Vec<String> = rest.split_whitespace().map(str::to_owned).collect();
    if units.is_empty() {
        return Err("SERVICE needs at least one unit".into());
    }
    for u in &units {
        check_item(u, "unit")?;
    }
    if running.is_none() && matches!(enablement, Some(Enablement::Mask)) {
        // A masked unit cannot be started: mask alone means "and leave it".
        running = Some(Running::Stopped);
    }
    Ok(Service {
        units,
        running: running.unwrap_or(Running::Started),
        enablement,
        daemon_reload,
    })
}

impl Service {
    pub fn args(&self) -> String {
        let mut out = String::new();
        if self.daemon_reload {
            out.push_str("--daemon-reload ");
        }
        if let Some(e) = self.enablement {
            out.push_str(&format!("--{} ", e.name()));
        }
        let masked_stop =
            self.enablement == Some(Enablement::Mask) && self.running == Running::Stopped;
        if self.running != Running::Started && !masked_stop {
            out.push_str(&format!("--state {} ", self.running.name()));
        }
        out.push_str(&self.units.join(" "));
        out
    }
}

/// The script that brings the units to their state (or, `check`, says
/// what it would do).
pub fn script(s: &Service, check: bool, mark: &str) -> String {
    let units: Vec<String> = s.units.iter().map(|u| sh_quote(u)).collect();
    let enable = match s.enablement {
        None => "",
        Some(Enablement::Enable) => {
            r#"case $(systemctl is-enabled "$u" 2>/dev/null) in enabled|enabled-runtime|static|alias|indirect|generated) ;; *) act enable "$u" enabled ;; esac"#
        }
        Some(Enablement::Disable) => {
            r#"case $(systemctl is-enabled "$u" 2>/dev/null) in enabled|enabled-runtime) act disable "$u" disabled ;; esac"#
        }
        Some(Enablement::Mask) => {
            r#"case $(systemctl is-enabled "$u" 2>/dev/null) in masked|masked-runtime) ;; *) act mask "$u" masked ;; esac"#
        }
        Some(Enablement::Unmask) => {
            r#"case $(systemctl is-enabled "$u" 2>/dev/null) in masked|masked-runtime) act unmask "$u" unmasked ;; esac"#
        }
    };
    let running = match s.running {
        Running::Started => {
            r#"case $(systemctl is-active "$u" 2>/dev/null) in active|reloading|activating) ;; *) act start "$u" started ;; esac"#
        }
        Running::Stopped => {
            r#"case $(systemctl is-active "$u" 2>/dev/null) in active|reloading|activating) act stop "$u" stopped ;; esac"#
        }
        Running::Restarted => r#"act restart "$u" restarted"#,
        Running::Reloaded => {
            r#"case $(systemctl is-active "$u" 2>/dev/null) in active|reloading) act reload "$u" reloaded ;; *) act start "$u" started ;; esac"#
        }
    };
    let reload = if s.daemon_reload {
        "if [ $check = 1 ]; then echo 'would reload the systemd manager'; else systemctl daemon-reload || { echo 'systemctl daemon-reload failed' >&2; exit 1; }; echo 'reloaded the systemd manager'; fi\n"
    } else {
        ""
    };
    format!(
        r#"set -u
check={check}; changed=0
act() {{
  changed=1
  if [ $check = 1 ]; then echo "would $1 $2"; return 0; fi
  systemctl "$1" "$2" || {{ rc=$?; echo "systemctl $1 $2 failed (exit $rc)" >&2; [ $changed = 1 ] && echo "{mark}"; exit $rc; }}
  echo "$3 $2"
}}
{reload}for u in {units}; do
  {enable}
  {running}
done
if [ $changed = 1 ]; then echo "{mark}"; else echo "every unit is as asked"; fi
"#,
        check = u8::from(check),
        units = units.join(" "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directord_and_director_spellings() {
        let s = parse(vec![("restarted", None)], "nginx").unwrap();
        assert_eq!(s.running, Running::Restarted);
        assert_eq!(s.args(), "--state restarted nginx");
        let s = parse(
            vec![
                ("state", Some("stopped".into())),
                ("disable", None),
                ("daemon-reload", None),
            ],
            "a b.service",
        )
        .unwrap();
        assert_eq!(
            (s.running, s.enablement, s.daemon_reload),
            (Running::Stopped, Some(Enablement::Disable), true)
        );
        assert_eq!(
            s.args(),
            "--daemon-reload --disable --state stopped a b.service"
        );
        assert_eq!(parse(vec![], "x").unwrap().running, Running::Started);
        assert_eq!(parse(vec![("mask", None)], "x").unwrap().args(), "--mask x");
        assert!(parse(vec![("enable", None), ("mask", None)], "x").is_err());
        assert!(parse(vec![("stopped", None), ("restarted", None)], "x").is_err());
        assert!(parse(vec![], "").unwrap_err().contains("at least one unit"));
        assert!(parse(vec![], "a;b").is_err());
        for s in [
            "--daemon-reload --enable --state reloaded a",
            "--unmask b",
            "--state stopped c",
        ] {
            let (flags, rest) = s.rsplit_once(' ').unwrap();
            let mut fl = Vec::new();
            let mut words = flags.split(' ').peekable();
            while let Some(w) = words.next() {
                let name = OPTIONS.iter().find(|(n, _)| *n == &w[2..]).unwrap();
                let v = name.1.then(|| words.next().unwrap().to_owned());
                fl.push((name.0, v));
            }
            assert_eq!(parse(fl, rest).unwrap().args(), s);
        }
    }
}
