//! What `--follow` prints: each node's output lines as they come, prefixed
//! with the node's name (aligned; coloured on a terminal, plain when piped;
//! `|` for stdout, `!` for stderr). Nodes send bytes, not lines: a line cut
//! between two sends waits here for its end, or for its part to finish.

use std::collections::HashMap;

use crate::wire::Stream;

/// Colours for node names, in turn (ANSI foreground).
const COLOURS: [u8; 6] = [36, 33, 35, 32, 34, 31];

pub struct Follow {
    width: usize,
    tty: bool,
    /// A colour per node, in the order first seen.
    colours: HashMap<String, u8>,
    /// The unfinished last line of each node's stream.
    partial: HashMap<(String, Stream), Vec<u8>>,
}

impl Follow {
    /// For a job or run over `nodes`; `tty`: colour the names.
    pub fn new<'a>(nodes: impl IntoIterator<Item = &'a String>, tty: bool) -> Follow {
        let mut colours = HashMap::new();
        let mut width = 0;
        for (i, n) in nodes.into_iter().enumerate() {
            width = width.max(n.len());
            colours
                .entry(n.clone())
                .or_insert(COLOURS[i % COLOURS.len()]);
        }
        Follow {
            width,
            tty,
            colours,
            partial: HashMap::new(),
        }
    }

    fn line(&self, node: &str, stream: Stream, text: &[u8]) -> String {
        let mark = match stream {
            Stream::Stdout => '|',
            Stream::Stderr => '!',
        };
        let text = String::from_utf8_lossy(text);
        let text = text.trim_end_matches('\r');
        let width = self.width;
        if self.tty {
            let c = self.colours.get(node).copied().unwrap_or(COLOURS[0]);
            format!("\x1b[{c}m{node:<width$}\x1b[0m {mark} {text}\n")
        } else {
            format!("{node:<width$} {mark} {text}\n")
        }
    }

    /// What a node printed: the whole lines it completes.
    pub fn output(&mut self, node: &str, stream: Stream, data: &[u8], dropped: u64) -> String {
        let mut out = String::new();
        let key = (node.to_owned(), stream);
        if dropped > 0 {
            let cut = self.partial.remove(&key).unwrap_or_default();
            if !cut.is_empty() {
                out.push_str(&self.line(node, stream, &cut));
            }
            let note = format!("[{dropped} bytes not shown live: see --job-info]");
            out.push_str(&self.line(node, stream, note.as_bytes()));
        }
        let buf = self.partial.entry(key.clone()).or_default();
        buf.extend_from_slice(data);
        let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
            return out;
        };
        let whole: Vec<u8> = buf.drain(..=end).collect();
        for l in whole[..whole.len() - 1].split(|b| *b == b'\n') {
            out.push_str(&self.line(node, stream, l));
        }
        out
    }

    /// The node's part ended: its unfinished lines, as they are.
    pub fn finish(&mut self, node: &str) -> String {
        let mut out = String::new();
        for stream in [Stream::Stdout, Stream::Stderr] {
            if let Some(rest) = self.partial.remove(&(node.to_owned(), stream)) {
                if !rest.is_empty() {
                    out.push_str(&self.line(node, stream, &rest));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_joined_across_sends_aligned_and_marked_by_stream() {
        let nodes = vec!["a".to_string(), "web-1".to_string()];
        let mut f = Follow::new(&nodes, false);
        assert_eq!(
            f.output("a", Stream::Stdout, b"one\ntw", 0),
            "a     | one\n"
        );
        assert_eq!(f.output("a", Stream::Stdout, b"o\n", 0), "a     | two\n");
        assert_eq!(
            f.output("web-1", Stream::Stderr, b"oops\n", 0),
            "web-1 ! oops\n"
        );
        assert_eq!(f.output("a", Stream::Stdout, b"tail", 0), "");
        assert_eq!(f.finish("a"), "a     | tail\n");
        let cut = f.output("a", Stream::Stdout, b"x\n", 10);
        assert!(cut.starts_with("a     | [10 bytes not shown live"), "{cut}");
        let mut tty = Follow::new(&nodes, true);
        assert!(tty
            .output("a", Stream::Stdout, b"c\n", 0)
            .starts_with("\x1b[36ma    \x1b[0m | c"));
    }
}
