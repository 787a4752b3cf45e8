//! How a node's part of a job is shown to an operator: its message, then
//! each line of its output under its stream's name, indented; with
//! `--retries`, every earlier attempt first. Shared by `--job-info`
//! (user.rs) and the recap (progress.rs).

use std::io::{self, Write};

use crate::support::clock::format_secs;
use crate::wire::PartView;

/// A part's message and captured output, indented; with `--retries`,
/// each failed attempt before them.
pub fn write_output(out: &mut impl Write, p: &PartView) -> io::Result<()> {
    let last = p.attempts.len() + 1;
    for (i, a) in p.attempts.iter().enumerate() {
        let ending = match (a.exit_code, a.signal, &a.message) {
            (Some(c), _, _) => format!("exit {c}"),
            (_, Some(sig), _) => format!("killed by signal {sig}"),
            (_, _, Some(m)) => m.clone(),
            _ => "failed".into(),
        };
        let secs = format_secs(a.exec_secs);
        writeln!(out, "  attempt {} of {last}: {ending}, {secs}", i + 1)?;
        write_streams(
            out,
            "    ",
            [(&a.stdout, a.stdout_dropped), (&a.stderr, a.stderr_dropped)],
        )?;
    }
    if !p.attempts.is_empty() {
        writeln!(out, "  attempt {last} of {last}: {}", p.state.name())?;
    }
    if let Some(m) = &p.message {
        writeln!(out, "  {m}")?;
    }
    write_streams(
        out,
        "  ",
        [(&p.stdout, p.stdout_dropped), (&p.stderr, p.stderr_dropped)],
    )
}

/// Captured stdout and stderr, each line under its stream's name.
fn write_streams(
    out: &mut impl Write,
    indent: &str,
    streams: [(&String, u64); 2],
) -> io::Result<()> {
    for (name, (text, dropped)) in ["stdout", "stderr"].into_iter().zip(streams) {
        for l in text.lines() {
            writeln!(out, "{indent}{name} | {l}")?;
        }
        if dropped > 0 {
            writeln!(
                out,
                "{indent}{name} | [output cut: {dropped} more bytes not kept]"
            )?;
        }
    }
    Ok(())
}
