//! Directord's container verbs, through podman's CLI on the node, talking
//! to the podman service on `--socket-path` (podman's remote mode: `podman
//! --url unix://PATH`), as Directord talked to its REST API there:
//!
//! - `CONTAINER_IMAGE [--socket-path P] [--no-tlsverify] --pull|--push|
//!   --inspect IMAGE...`, `--tag IMAGE NEW`, `--list`;
//! - `POD [--socket-path P] --start|--stop|--rm|--kill|--inspect NAME`,
//!   `--play FILE`, `--exec-run CONTAINER --command 'CMD'`, with
//!   `--force` (rm), `--kill-signal SIG`, `--env K=V,...` and
//!   `--privileged` (exec-run), `--no-tlsverify` (play).
//!
//! Reading (`--list`, `--inspect`) is `unchanged`; everything else acts
//! and is a change; `--check` says what would run and runs only the reads.

use serde::{Deserialize, Serialize};

use super::{sh_quote, Flag};

/// Directord's default socket.
pub const DEFAULT_SOCKET: &str = "/var/run/podman/podman.sock";

/// What CONTAINER_IMAGE does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageOp {
    Pull,
    Push,
    Tag,
    List,
    Inspect,
}

/// What both verbs take besides their action: where podman's service
/// is, whether to verify TLS, and the ARG to keep a read's output in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conn {
    pub socket: String,
    pub tls_verify: bool,
    /// `--stdout-arg NAME`: keep what podman printed as that ARG.
    pub stdout_arg: Option<String>,
}

/// A CONTAINER_IMAGE job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub conn: Conn,
    pub op: ImageOp,
    #[serde(deserialize_with = "crate::wire::cautious_seq")]
    pub images: Vec<String>,
}

/// What POD does, and to what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodOp {
    Start(String),
    Stop(String),
    Rm {
        name: String,
        force: bool,
    },
    Kill {
        name: String,
        signal: String,
    },
    Inspect(String),
    Play(String),
    ExecRun {
        container: String,
        command: String,
        #[serde(deserialize_with = "crate::wire::cautious_seq")]
        env: Vec<String>,
        privileged: bool,
    },
}

/// A POD job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    pub conn: Conn,
    pub op: PodOp,
}

pub const IMAGE_OPTIONS: &[(&str, bool)] = &[
    ("socket-path", true),
    ("stdout-arg", true),
    ("no-tlsverify", false),
    ("pull", false),
    ("push", false),
    ("tag", false),
    ("list", false),
    ("inspect", false),
];

pub const POD_OPTIONS: &[(&str, bool)] = &[
    ("socket-path", true),
    ("stdout-arg", true),
    ("no-tlsverify", false),
    ("force", false),
    ("kill-signal", true),
    ("env", true),
    ("command", true),
    ("privileged", false),
    ("start", true),
    ("stop", true),
    ("rm", true),
    ("kill", true),
    ("inspect", true),
    ("play", true),
    ("exec-run", true),
];

/// A name podman takes (an image reference, a pod or container name, a
/// signal): nothing a shell or podman's own flags would misread.
fn check_name(word: &str, what: &str) -> Result<(), String> {
    let ok = !word.is_empty()
        && !word.starts_with('-')
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-:/@+".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("'{word}' is not a {what} podman takes"))
    }
}

impl Conn {
    /// `--socket-path`, `--no-tlsverify` and `--stdout-arg`; a read's
    /// output may be kept (`reads`), an action's may not.
    fn parse(flags: &[Flag], verb: &str, reads: bool) -> Result<Conn, String> {
        let mut conn = Conn {
            socket: DEFAULT_SOCKET.to_owned(),
            tls_verify: true,
            stdout_arg: None,
        };
        for (name, value) in flags {
            match (*name, value) {
                ("socket-path", Some(p)) => {
                    if !p.starts_with('/') {
                        return Err(format!("--socket-path '{p}' is not an absolute path"));
                    }
                    conn.socket = p.clone();
                }
                ("no-tlsverify", _) => conn.tls_verify = false,
                ("stdout-arg", Some(n)) => {
                    crate::dsl::check_name(n, "--stdout-arg name")?;
                    conn.stdout_arg = Some(n.clone());
                }
                _ => {}
            }
        }
        if conn.stdout_arg.is_some() && !reads {
            return Err(format!(
                "{verb} --stdout-arg keeps what a read (--inspect, --list) prints"
            ));
        }
        Ok(conn)
    }

    /// Its options as the job string writes them.
    fn args(&self, out: &mut Vec<String>) {
        if self.socket != DEFAULT_SOCKET {
            out.push(format!(
                "--socket-path {}",
                crate::dsl::quote_value(&self.socket)
            ));
        }
        if !self.tls_verify {
            out.push("--no-tlsverify".into());
        }
        if let Some(a) = &self.stdout_arg {
            out.push(format!("--stdout-arg {a}"));
        }
    }

    /// podman's remote mode, on the service's socket (one shell word,
    /// whatever the path holds).
    fn url(&self) -> String {
        let word = format!("unix://{}", self.socket);
        if word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:".contains(c))
        {
            format!("--url {word}")
        } else {
            format!("--url {}", sh_quote(&word))
        }
    }

    /// The flag that turns TLS verification off, where it is.
    fn tls(&self) -> &'static str {
        if self.tls_verify {
            ""
        } else {
            " --tls-verify=false"
        }
    }
}

pub fn parse_image(flags: Vec<Flag>, rest: &str) -> Result<Image, String> {
    let ops: Vec<ImageOp> = flags
        .iter()
        .filter_map(|(n, _)| match *n {
            "pull" => Some(ImageOp::Pull),
            "push" => Some(ImageOp::Push),
            "tag" => Some(ImageOp::Tag),
            "list" => Some(ImageOp::List),
            "inspect" => Some(ImageOp::Inspect),
            _ => None,
        })
        .collect();
    let [op] = ops[..] else {
        return Err(
            "CONTAINER_IMAGE takes one of --pull, --push, --tag, --list and --inspect".into(),
        );
    };
    let images: Vec<String> = rest.split_whitespace().map(str::to_owned).collect();
    for i in &images {
        check_name(i, "image")?;
    }
    match (op, images.len()) {
        (ImageOp::Tag, n) if n != 2 => {
            return Err("CONTAINER_IMAGE --tag needs exactly two images: IMAGE NEW_NAME".into())
        }
        (ImageOp::List, n) if n > 0 => return Err("CONTAINER_IMAGE --list takes no images".into()),
        (ImageOp::Pull | ImageOp::Push | ImageOp::Inspect, 0) => {
            return Err(format!(
                "CONTAINER_IMAGE --{} needs at least one image",
                op_name(op)
            ))
        }
        _ => {}
    }
    let reads = matches!(op, ImageOp::List | ImageOp::Inspect);
    Ok(Image {
        conn: Conn::parse(&flags, "CONTAINER_IMAGE", reads)?,
        op,
        images,
    })
}

fn op_name(op: ImageOp) -> &'static str {
    match op {
        ImageOp::Pull => "pull",
        ImageOp::Push => "push",
        ImageOp::Tag => "tag",
        ImageOp::List => "list",
        ImageOp::Inspect => "inspect",
    }
}

pub fn parse_pod(flags: Vec<Flag>, rest: &str) -> Result<Pod, String> {
    if !rest.is_empty() {
        return Err(format!(
            "POD takes its names in its options (--start NAME, ...), not '{rest}'"
        ));
    }
    let value = |n: &str| {
        flags
            .iter()
            .rev()
            .find(|(f, _)| *f == n)
            .and_then(|(_, v)| v.clone())
    };
    let has = |n: &str| flags.iter().any(|(f, _)| *f == n);
    let mut ops = Vec::new();
    for (n, v) in &flags {
        let Some(v) = v else { continue };
        let op = match *n {
            "start" => PodOp::Start(v.clone()),
            "stop" => PodOp::Stop(v.clone()),
            "rm" => PodOp::Rm {
                name: v.clone(),
                force: has("force"),
            },
            "kill" => PodOp::Kill {
                name: v.clone(),
                signal: value("kill-signal").unwrap_or_else(|| "SIGKILL".into()),
            },
            "inspect" => PodOp::Inspect(v.clone()),
            "play" => PodOp::Play(v.clone()),
            "exec-run" => PodOp::ExecRun {
                container: v.clone(),
                command: value("command").ok_or(
                    "POD --exec-run needs --command 'COMMAND' (quoted when it has spaces)",
                )?,
                env: value("env")
                    .map(|e| e.split(',').map(str::to_owned).collect())
                    .unwrap_or_default(),
                privileged: has("privileged"),
            },
            _ => continue,
        };
        ops.push(op);
    }
    let [op] = &ops[..] else {
        return Err(
            "POD takes one of --start, --stop, --rm, --kill, --inspect, --play and --exec-run"
                .into(),
        );
    };
    match op {
        PodOp::Start(n) | PodOp::Stop(n) | PodOp::Inspect(n) => check_name(n, "pod name")?,
        PodOp::Rm { name, .. } => check_name(name, "pod name")?,
        PodOp::Kill { name, signal } => {
            check_name(name, "pod name")?;
            check_name(signal, "signal")?;
        }
        PodOp::Play(file) if !file.starts_with('/') => {
            return Err(format!(
                "POD --play '{file}': give the file's absolute path on the node"
            ))
        }
        PodOp::Play(_) => {}
        PodOp::ExecRun { container, env, .. } => {
            check_name(container, "container name")?;
            if let Some(e) = env.iter().find(|e| !e.contains('=')) {
                return Err(format!("POD --env '{e}' is not KEY=VALUE"));
            }
        }
    }
    Ok(Pod {
        conn: Conn::parse(&flags, "POD", matches!(op, PodOp::Inspect(_)))?,
        op: op.clone(),
    })
}

impl Image {
    pub fn args(&self) -> String {
        let mut out = Vec::new();
        self.conn.args(&mut out);
        out.push(format!("--{}", op_name(self.op)));
        out.extend(self.images.iter().cloned());
        out.join(" ")
    }

    /// The podman command, and whether it only reads.
    pub fn command(&self) -> (String, bool) {
        let (url, tls) = (self.conn.url(), self.conn.tls());
        let images: Vec<String> = self.images.iter().map(|i| sh_quote(i)).collect();
        let images = images.join(" ");
        match self.op {
            ImageOp::Pull => (format!("podman {url} pull{tls} {images}"), false),
            ImageOp::Push => (
                format!("for i in {images}; do podman {url} push{tls} \"$i\" || exit; done"),
                false,
            ),
            ImageOp::Tag => (format!("podman {url} tag {images}"), false),
            ImageOp::List => (format!("podman {url} images --format json"), true),
            ImageOp::Inspect => (format!("podman {url} image inspect {images}"), true),
        }
    }
}

impl Pod {
    pub fn args(&self) -> String {
        let mut out = Vec::new();
        self.conn.args(&mut out);
        match &self.op {
            PodOp::Start(n) => out.push(format!("--start {n}")),
            PodOp::Stop(n) => out.push(format!("--stop {n}")),
            PodOp::Rm { name, force } => {
                if *force {
                    out.push("--force".into());
                }
                out.push(format!("--rm {name}"));
            }
            PodOp::Kill { name, signal } => {
                out.push(format!("--kill-signal {signal}"));
                out.push(format!("--kill {name}"));
            }
            PodOp::Inspect(n) => out.push(format!("--inspect {n}")),
            PodOp::Play(f) => out.push(format!("--play {}", crate::dsl::quote_value(f))),
            PodOp::ExecRun {
                container,
                command,
                env,
                privileged,
            } => {
                if *privileged {
                    out.push("--privileged".into());
                }
                if !env.is_empty() {
                    out.push(format!("--env {}", crate::dsl::quote_value(&env.join(","))));
                }
                out.push(format!("--command {}", crate::dsl::quote_value(command)));
                out.push(format!("--exec-run {container}"));
            }
        }
        out.join(" ")
    }

    /// The podman command, and whether it only reads.
    pub fn command(&self) -> (String, bool) {
        let (url, tls) = (self.conn.url(), self.conn.tls());
        match &self.op {
            PodOp::Start(n) => (format!("podman {url} pod start {}", sh_quote(n)), false),
            PodOp::Stop(n) => (format!("podman {url} pod stop {}", sh_quote(n)), false),
            PodOp::Rm { name, force } => (
                format!(
                    "podman {url} pod rm{} {}",
                    if *force { " --force" } else { "" },
                    sh_quote(name)
                ),
                false,
            ),
            PodOp::Kill { name, signal } => (
                format!(
                    "podman {url} pod kill --signal {} {}",
                    sh_quote(signal),
                    sh_quote(name)
                ),
                false,
            ),
            PodOp::Inspect(n) => (format!("podman {url} pod inspect {}", sh_quote(n)), true),
            PodOp::Play(f) => (
                format!("podman {url} play kube{tls} {}", sh_quote(f)),
                false,
            ),
            PodOp::ExecRun {
                container,
                command,
                env,
                privileged,
            } => {
                let mut c = format!("podman {url} exec");
                if *privileged {
                    c.push_str(" --privileged");
                }
                for e in env {
                    c.push_str(&format!(" --env {}", sh_quote(e)));
                }
                c.push_str(&format!(
                    " {} /bin/sh -c {}",
                    sh_quote(container),
                    sh_quote(command)
                ));
                (c, false)
            }
        }
    }
}

/// The script around a podman command: podman must be there; a read runs
/// even under `--check`, an action says what it would run; an action that
/// ran prints the marker.
pub fn script(command: &str, reads: bool, check: bool, mark: &str) -> String {
    let need = "command -v podman >/dev/null 2>&1 || { echo 'podman is not installed on this node (install its podman package)' >&2; exit 127; }\n";
    if reads {
        return format!("{need}exec {command}\n");
    }
    if check {
        return format!(
            "{need}echo {}\necho '{mark}'\n",
            sh_quote(&format!("would run: {command}"))
        );
    }
    format!("{need}{command} || exit\necho '{mark}'\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(s: &[(&'static str, Option<&str>)]) -> Vec<Flag> {
        s.iter().map(|(n, v)| (*n, v.map(str::to_owned))).collect()
    }

    #[test]
    fn directords_container_image_lines_become_podman_commands() {
        let i = parse_image(
            flags(&[
                ("socket-path", Some("/tmp/podman.sock")),
                ("no-tlsverify", None),
                ("pull", None),
            ]),
            "alpine:3.13 alpine:3.12",
        )
        .unwrap();
        assert_eq!(
            i.command(),
            (
                "podman --url unix:///tmp/podman.sock pull --tls-verify=false 'alpine:3.13' 'alpine:3.12'".into(),
                false
            )
        );
        assert_eq!(
            i.args(),
            "--socket-path /tmp/podman.sock --no-tlsverify --pull alpine:3.13 alpine:3.12"
        );
        let t = parse_image(flags(&[("tag", None)]), "alpine:3.12 quay.io/test/alpine").unwrap();
        assert_eq!(
            t.command().0,
            "podman --url unix:///var/run/podman/podman.sock tag 'alpine:3.12' 'quay.io/test/alpine'"
        );
        assert!(
            parse_image(flags(&[("list", None)]), "")
                .unwrap()
                .command()
                .1
        );
        assert!(parse_image(flags(&[("tag", None)]), "a").is_err());
        assert!(parse_image(flags(&[("list", None)]), "a").is_err());
        assert!(parse_image(flags(&[("pull", None), ("push", None)]), "a").is_err());
        assert!(parse_image(flags(&[("pull", None)]), "a;rm").is_err());
        assert!(parse_image(flags(&[("socket-path", Some("rel")), ("list", None)]), "").is_err());
        let odd = parse_image(
            flags(&[("socket-path", Some("/run/a b;x")), ("list", None)]),
            "",
        )
        .unwrap();
        assert_eq!(
            odd.command().0,
            "podman --url 'unix:///run/a b;x' images --format json"
        );
        let i = parse_image(
            flags(&[("stdout-arg", Some("inspection")), ("inspect", None)]),
            "127.0.0.1:5000/myimage:spec",
        )
        .unwrap();
        assert_eq!(i.conn.stdout_arg.as_deref(), Some("inspection"));
        assert!(i.command().1);
        assert!(parse_image(flags(&[("stdout-arg", Some("x")), ("pull", None)]), "a").is_err());
    }

    #[test]
    fn directords_pod_lines_become_podman_commands() {
        let p = parse_pod(
            flags(&[
                ("env", Some("A=1,B=2")),
                ("command", Some("echo hi")),
                ("exec-run", Some("web")),
            ]),
            "",
        )
        .unwrap();
        assert_eq!(
            p.command().0,
            "podman --url unix:///var/run/podman/podman.sock exec --env 'A=1' --env 'B=2' 'web' /bin/sh -c 'echo hi'"
        );
        let k = parse_pod(flags(&[("kill", Some("p1"))]), "").unwrap();
        assert_eq!(
            k.command().0,
            "podman --url unix:///var/run/podman/podman.sock pod kill --signal 'SIGKILL' 'p1'"
        );
        assert_eq!(k.args(), "--kill-signal SIGKILL --kill p1");
        assert!(
            parse_pod(flags(&[("inspect", Some("p1"))]), "")
                .unwrap()
                .command()
                .1
        );
        assert!(parse_pod(flags(&[("play", Some("rel.yaml"))]), "").is_err());
        assert!(parse_pod(flags(&[("exec-run", Some("c"))]), "").is_err());
        assert!(parse_pod(flags(&[]), "").is_err());
        assert!(parse_pod(flags(&[("start", Some("a")), ("stop", Some("a"))]), "").is_err());
        let s = script("podman x", false, true, "MARK");
        assert!(
            s.contains("would run: podman x") && !s.contains("\npodman x"),
            "{s}"
        );
    }
}
