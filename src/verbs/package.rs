//! `PACKAGE NAME...` (also Directord's `DNF`): packages present, at their
//! latest version, or absent, through the node's package manager (the
//! `package_manager` fact: apt, dnf, yum, zypper or apk). A NAME may also
//! be the path of a package file on the node (`/tmp/app_1.2_all.deb`),
//! installed (or upgraded to) as it is. Changed only when something was
//! installed, upgraded or removed; the output says what, with versions.

use serde::{Deserialize, Serialize};

use super::{check_item, sh_quote, Flag};

/// What `--state` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PackageState {
    Present,
    Latest,
    Absent,
}

impl PackageState {
    pub fn name(self) -> &'static str {
        match self {
            PackageState::Present => "present",
            PackageState::Latest => "latest",
            PackageState::Absent => "absent",
        }
    }
}

/// A PACKAGE job's arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    #[serde(deserialize_with = "crate::wire::cautious_seq")]
    pub names: Vec<String>,
    pub state: PackageState,
}

/// The options PACKAGE (and DNF) take: name, and whether a value follows.
pub const OPTIONS: &[(&str, bool)] = &[
    ("state", true),
    ("latest", false),
    ("absent", false),
    ("present", false),
];

/// Build the job from its options and the words after them.
pub fn parse(flags: Vec<Flag>, rest: &str) -> Result<Package, String> {
    let mut state = None;
    for (name, value) in flags {
        let s = match (name, value.as_deref()) {
            ("state", Some("present")) | ("present", None) => PackageState::Present,
            ("state", Some("latest")) | ("latest", None) => PackageState::Latest,
            ("state", Some("absent")) | ("absent", None) => PackageState::Absent,
            (_, v) => {
                return Err(format!(
                    "PACKAGE option --state: '{}' is not present, latest or absent",
                    v.unwrap_or("")
                ))
            }
        };
        if state.is_some_and(|old| old != s) {
            return Err("PACKAGE takes one state (--state present|latest|absent)".into());
        }
        state = Some(s);
    }
    let names: Vec<String> = rest.split_whitespace().map(str::to_owned).collect();
    if names.is_empty() {
        return Err("PACKAGE needs at least one package name".into());
    }
    for n in &names {
        if n.contains('/') {
            check_path(n)?;
        } else {
            check_item(n, "package")?;
        }
    }
    Ok(Package {
        names,
        state: state.unwrap_or(PackageState::Present),
    })
}

/// A package file's path: absolute, and nothing a shell reads as syntax.
fn check_path(p: &str) -> Result<(), String> {
    let ok = p.starts_with('/')
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+-:@=~^/".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "package file '{p}' must be an absolute path of letters, digits and . _ + - : @ = ~ ^ /"
        ))
    }
}

impl Package {
    /// The arguments as written, normalized.
    pub fn args(&self) -> String {
        let mut out = String::new();
        if self.state != PackageState::Present {
            out.push_str(&format!("--state {} ", self.state.name()));
        }
        out.push_str(&self.names.join(" "));
        out
    }
}

/// The package managers PACKAGE drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Manager {
    Apt,
    Dnf,
    Yum,
    Zypper,
    Apk,
}

impl Manager {
    pub const ALL: &'static [Manager] = &[
        Manager::Apt,
        Manager::Dnf,
        Manager::Yum,
        Manager::Zypper,
        Manager::Apk,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Manager::Apt => "apt",
            Manager::Dnf => "dnf",
            Manager::Yum => "yum",
            Manager::Zypper => "zypper",
            Manager::Apk => "apk",
        }
    }

    /// The program whose presence means this manager.
    pub fn program(self) -> &'static str {
        match self {
            Manager::Apt => "apt-get",
            m => m.name(),
        }
    }

    pub fn from_name(name: &str) -> Option<Manager> {
        Manager::ALL.iter().copied().find(|m| m.name() == name)
    }

    /// Shell functions: `pkgname P` (a file's package name, or P),
    /// `installed NAME` (its version, or nothing), `candidate P` (the
    /// version installing P would give, or nothing), and `install`,
    /// `upgrade`, `remove` of the words given.
    fn functions(self) -> &'static str {
        match self {
            Manager::Apt => {
                r#"export DEBIAN_FRONTEND=noninteractive
pkgname() { case "$1" in /*) dpkg-deb -f "$1" Package ;; *) printf '%s\n' "${1%%=*}" ;; esac; }
installed() { v=$(dpkg-query -W -f='${Status} ${Version}' "$1" 2>/dev/null) || return 0; case "$v" in "install ok installed "*) printf '%s\n' "${v#install ok installed }" ;; esac; }
candidate() { case "$1" in /*) dpkg-deb -f "$1" Version ;; *=*) printf '%s\n' "${1#*=}" ;; *) LC_ALL=C apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p' | grep -v '^(none)$' ;; esac; }
files() { for f in "$@"; do case "$f" in /*) printf '%s\n' "$f" ;; esac; done; }
names() { for f in "$@"; do case "$f" in /*) ;; *) printf '%s\n' "$f" ;; esac; done; }
install() { f=$(files "$@"); n=$(names "$@"); if [ -n "$f" ]; then dpkg -i $f || return; fi; if [ -n "$n" ]; then apt-get install -y -q $n; fi; }
upgrade() { install "$@"; }
remove() { apt-get remove -y -q "$@"; }
"#
            }
            Manager::Dnf | Manager::Yum => {
                r#"pkgname() { case "$1" in /*) rpm -qp --qf '%{NAME}\n' "$1" 2>/dev/null ;; *) printf '%s\n' "$1" ;; esac; }
installed() { rpm -q --qf '%{VERSION}-%{RELEASE}\n' "$1" 2>/dev/null | grep -v 'is not installed' | tail -n 1; }
candidate() { case "$1" in /*) rpm -qp --qf '%{VERSION}-%{RELEASE}\n' "$1" 2>/dev/null ;; *) PM -q list --available --showduplicates "$1" 2>/dev/null | awk -v n="$1" 'index($1, n ".") == 1 { v = $2 } END { if (v != "") { sub(/^[0-9]+:/, "", v); print v } }' ;; esac; }
install() { PM -y install "$@"; }
upgrade() { PM -y upgrade "$@"; }
remove() { PM -y remove "$@"; }
"#
            }
            Manager::Zypper => {
                r#"pkgname() { case "$1" in /*) rpm -qp --qf '%{NAME}\n' "$1" 2>/dev/null ;; *) printf '%s\n' "$1" ;; esac; }
installed() { rpm -q --qf '%{VERSION}-%{RELEASE}\n' "$1" 2>/dev/null | grep -v 'is not installed' | tail -n 1; }
candidate() { case "$1" in /*) rpm -qp --qf '%{VERSION}-%{RELEASE}\n' "$1" 2>/dev/null ;; *) zypper -n -q info "$1" 2>/dev/null | sed -n 's/^Version *: *//p' | head -n 1 ;; esac; }
install() { zypper -n install "$@"; }
upgrade() { zypper -n update "$@"; }
remove() { zypper -n remove "$@"; }
"#
            }
            Manager::Apk => {
                r#"pkgname() { printf '%s\n' "$1"; }
installed() { apk info -e "$1" >/dev/null 2>&1 || return 0; apk list -I "$1" 2>/dev/null | sed -n "s/^$1-\([0-9][^ ]*\) .*/\1/p" | head -n 1; }
candidate() { apk list "$1" 2>/dev/null | sed -n "s/^$1-\([0-9][^ ]*\) .*/\1/p" | head -n 1; }
install() { apk add "$@"; }
upgrade() { apk add -u "$@"; }
remove() { apk del "$@"; }
"#
            }
        }
    }
}

/// The script that brings the packages to their state with `manager` (or,
/// `check`, says what it would do and changes nothing). It prints one line
/// per package it changed, then `MARK` and the job's id if any.
pub fn script(p: &Package, manager: Manager, check: bool, mark: &str) -> String {
    let mut s = String::from("set -u\n");
    s.push_str(&manager.functions().replace("PM", manager.name()));
    let words: Vec<String> = p.names.iter().map(|n| sh_quote(n)).collect();
    s.push_str(&format!(
        r#"state={state}; check={check}; changed=0
todo=""; plan=""
for p in {words}; do
  name=$(pkgname "$p")
  if [ -z "$name" ]; then echo "cannot read the package file $p" >&2; exit 1; fi
  cur=$(installed "$name")
  case $state in
    present) if [ -z "$cur" ]; then todo="$todo $p"; plan="$plan
install $name $(candidate "$p")"; fi ;;
    latest) want=$(candidate "$p")
      if [ -z "$cur" ]; then todo="$todo $p"; plan="$plan
install $name $want"
      elif [ -n "$want" ] && [ "$want" != "$cur" ]; then todo="$todo $p"; plan="$plan
upgrade $name $cur -> $want"; fi ;;
    absent) if [ -n "$cur" ]; then todo="$todo $name"; plan="$plan
remove $name $cur"; fi ;;
  esac
done
if [ -z "$todo" ]; then echo "every package is {state}"; exit 0; fi
if [ $check = 1 ]; then
  printf '%s\n' "$plan" | sed -e '/^$/d' -e 's/^/would /'
  echo "{mark}"; exit 0
fi
before=""
for p in $todo; do before="$before $(pkgname "$p")=$(installed "$(pkgname "$p")")"; done
case $state in
  present) install $todo >&2 ;;
  latest) install $todo >&2 && upgrade $todo >/dev/null 2>&1 ;;
  absent) remove $todo >&2 ;;
esac
rc=$?
for b in $before; do
  name=${{b%%=*}}; old=${{b#*=}}; now=$(installed "$name")
  if [ "$now" = "$old" ]; then continue; fi
  changed=1
  if [ -z "$old" ]; then echo "installed $name $now"
  elif [ -z "$now" ]; then echo "removed $name $old"
  else echo "upgraded $name $old -> $now"; fi
done
if [ $changed = 1 ]; then echo "{mark}"; fi
if [ $rc != 0 ]; then echo "{manager} failed (exit $rc)" >&2; exit $rc; fi
"#,
        state = p.state.name(),
        check = u8::from(check),
        words = words.join(" "),
        manager = manager.name(),
    ));
    s
}

/// Which package manager this node has, for its facts: the first found
/// on `PATH`.
pub fn detect(path: &str) -> Option<Manager> {
    Manager::ALL.iter().copied().find(|m| {
        std::env::split_paths(path).any(|d| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(d.join(m.program()))
                .is_ok_and(|md| md.is_file() && md.permissions().mode() & 0o111 != 0)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_args(s: &str, flags: Vec<Flag>) -> Result<Package, String> {
        parse(flags, s)
    }

    #[test]
    fn states_and_names() {
        let p = parse_args("nginx curl", vec![]).unwrap();
        assert_eq!(p.state, PackageState::Present);
        assert_eq!(p.args(), "nginx curl");
        let p = parse_args("nginx", vec![("latest", None)]).unwrap();
        assert_eq!(p.args(), "--state latest nginx");
        let p = parse_args("nginx", vec![("state", Some("absent".into()))]).unwrap();
        assert_eq!(p.state, PackageState::Absent);
        assert!(parse_args("", vec![]).unwrap_err().contains("at least one"));
        assert!(parse_args("x", vec![("state", Some("gone".into()))])
            .unwrap_err()
            .contains("'gone' is not present, latest or absent"));
        assert!(parse_args("x", vec![("latest", None), ("absent", None)])
            .unwrap_err()
            .contains("one state"));
        assert!(parse_args("x;rm", vec![]).is_err());
        assert!(parse_args("rel/a.deb", vec![])
            .unwrap_err()
            .contains("absolute"));
        assert!(parse_args("/tmp/a_1.0_all.deb", vec![]).is_ok());
    }

    #[test]
    fn each_manager_gets_its_own_commands() {
        let p = parse_args("nginx", vec![("latest", None)]).unwrap();
        let apt = script(&p, Manager::Apt, false, "M");
        assert!(apt.contains("apt-get install -y -q"), "{apt}");
        assert!(apt.contains("dpkg-query -W"));
        let dnf = script(&p, Manager::Dnf, false, "M");
        assert!(dnf.contains("dnf -y upgrade"), "{dnf}");
        assert!(!dnf.contains("PM "));
        let yum = script(&p, Manager::Yum, false, "M");
        assert!(yum.contains("yum -y install"));
        let zyp = script(&p, Manager::Zypper, false, "M");
        assert!(zyp.contains("zypper -n update"));
        let apk = script(&p, Manager::Apk, false, "M");
        assert!(apk.contains("apk add -u"));
        assert!(apk.contains("for p in 'nginx'"));
    }

    /// The scripts' logic against a stand-in manager: a directory of
    /// "installed" versions, and `check` changes nothing.
    #[test]
    fn the_script_installs_upgrades_and_removes_and_says_so() {
        let dir = std::env::temp_dir().join(format!("director-pkg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("db")).unwrap();
        std::fs::write(dir.join("repo"), "a 2.0\nb 1.0\n").unwrap();
        std::fs::write(dir.join("db/a"), "1.0").unwrap();
        let d = dir.display();
        let fake = format!(
            r#"pkgname() {{ printf '%s\n' "$1"; }}
installed() {{ cat "{d}/db/$1" 2>/dev/null; }}
candidate() {{ sed -n "s/^$1 //p" "{d}/repo"; }}
install() {{ for p in "$@"; do candidate "$p" > "{d}/db/$p"; done; }}
upgrade() {{ install "$@"; }}
remove() {{ for p in "$@"; do rm "{d}/db/$p"; done; }}
"#
        );
        let run = |names: &str, state: PackageState, check: bool| {
            let p = Package {
                names: names.split(' ').map(str::to_owned).collect(),
                state,
            };
            let s = script(&p, Manager::Apk, check, "MARK");
            let body = s.split_once("state=").unwrap().1;
            let s = format!("set -u\n{fake}state={body}");
            let out = std::process::Command::new("/bin/sh")
                .args(["-c", &s])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        assert_eq!(
            run("a b", PackageState::Present, true),
            "would install b 1.0\nMARK\n"
        );
        assert!(!dir.join("db/b").exists(), "a check installed something");
        assert_eq!(
            run("a b", PackageState::Present, false),
            "installed b 1.0\nMARK\n"
        );
        assert_eq!(
            run("a b", PackageState::Present, false),
            "every package is present\n"
        );
        assert_eq!(
            run("a b", PackageState::Latest, false),
            "upgraded a 1.0 -> 2.0\nMARK\n"
        );
        assert_eq!(
            run("a", PackageState::Absent, false),
            "removed a 2.0\nMARK\n"
        );
        assert_eq!(
            run("a", PackageState::Absent, false),
            "every package is absent\n"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
