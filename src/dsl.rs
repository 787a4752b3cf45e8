//! The job DSL: a verb and its argument string parsed into a `Task`, with its
//! canonical form and task SHA1. Pure: no I/O. The SHA1 covers what would run
//! (verb and arguments), never targets or ids, so the same task submitted twice
//! has the same SHA1.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

/// A verb of the DSL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verb {
    /// Run a command with `/bin/sh -c`.
    #[serde(rename = "RUN")]
    Run,
}

impl Verb {
    /// Every verb, for messages that list them.
    pub const ALL: &'static [Verb] = &[Verb::Run];

    /// The verb as users write it.
    pub fn name(self) -> &'static str {
        match self {
            Verb::Run => "RUN",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Verb {
    type Err = String;

    fn from_str(s: &str) -> Result<Verb, String> {
        Verb::ALL
            .iter()
            .copied()
            .find(|v| v.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let known: Vec<&str> = Verb::ALL.iter().map(|v| v.name()).collect();
                format!("unknown verb '{s}' (known verbs: {})", known.join(", "))
            })
    }
}

/// A parsed job definition: what a node executes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Task {
    /// `RUN COMMAND`.
    Run { command: String },
}

impl Task {
    /// Parse the argument string of `verb`.
    pub fn parse(verb: Verb, args: &str) -> Result<Task, String> {
        match verb {
            Verb::Run => {
                let command = args.trim();
                if command.is_empty() {
                    return Err("RUN needs a command to run".into());
                }
                Ok(Task::Run {
                    command: command.to_owned(),
                })
            }
        }
    }

    /// The task's verb.
    pub fn verb(&self) -> Verb {
        match self {
            Task::Run { .. } => Verb::Run,
        }
    }

    /// The arguments as they will be shown to operators.
    pub fn args(&self) -> &str {
        match self {
            Task::Run { command } => command,
        }
    }

    /// The canonical definition the task SHA1 is computed over.
    pub fn canonical(&self) -> String {
        format!("{}\0{}", self.verb().name(), self.args())
    }

    /// The task SHA1, lower-case hex.
    pub fn sha1(&self) -> String {
        let digest = Sha1::digest(self.canonical().as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_parse_case_insensitively() {
        assert_eq!("run".parse::<Verb>(), Ok(Verb::Run));
        assert_eq!("RUN".parse::<Verb>(), Ok(Verb::Run));
        assert_eq!(
            "FLY".parse::<Verb>().unwrap_err(),
            "unknown verb 'FLY' (known verbs: RUN)"
        );
    }

    #[test]
    fn run_needs_a_command() {
        assert!(Task::parse(Verb::Run, "   ").is_err());
        assert_eq!(
            Task::parse(Verb::Run, " echo hi ").unwrap(),
            Task::Run {
                command: "echo hi".into()
            }
        );
    }

    #[test]
    fn sha1_is_stable_and_covers_the_definition() {
        let a = Task::parse(Verb::Run, "echo hi").unwrap();
        assert_eq!(a.sha1(), Task::parse(Verb::Run, "echo hi ").unwrap().sha1());
        assert_ne!(a.sha1(), Task::parse(Verb::Run, "echo ho").unwrap().sha1());
        assert_eq!(a.sha1().len(), 40);
        // sha1("RUN\0echo hi"), computed independently.
        assert_eq!(a.sha1(), {
            let d = Sha1::digest(b"RUN\0echo hi");
            d.iter().map(|b| format!("{b:02x}")).collect::<String>()
        });
    }
}
