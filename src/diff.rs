//! Unified diffs of text files, for `--diff`: line by line, three lines of
//! context, bounded: files too large to compare line by line are named,
//! not shown, and the text is cut at `DIFF_CAP`.

/// The most a diff shows of one file.
pub const DIFF_CAP: usize = 64 << 10;
/// Line pairs compared at most (the table of the longest common
/// subsequence): beyond, the file is said to differ, without its lines.
const CELLS: usize = 4_000_000;
const CONTEXT: usize = 3;

/// The diff from `old` to `new` of the file `name` (either may be absent:
/// created, removed). `None` when they are equal.
pub fn unified(name: &str, old: Option<&[u8]>, new: Option<&[u8]>) -> Option<String> {
    if old == new {
        return None;
    }
    let (Ok(a), Ok(b)) = (
        std::str::from_utf8(old.unwrap_or_default()),
        std::str::from_utf8(new.unwrap_or_default()),
    ) else {
        return Some(format!("Binary file {name} differs (not shown)\n"));
    };
    if a.contains('\0') || b.contains('\0') {
        return Some(format!("Binary file {name} differs (not shown)\n"));
    }
    let a: Vec<&str> = a.split_inclusive('\n').collect();
    let b: Vec<&str> = b.split_inclusive('\n').collect();
    let mut out = format!(
        "--- {}\n+++ {}\n",
        if old.is_some() { name } else { "/dev/null" },
        if new.is_some() { name } else { "/dev/null" }
    );
    let Some(ops) = lcs_ops(&a, &b) else {
        out.push_str(&format!(
            "(too large to compare line by line: {} lines and {} lines)\n",
            a.len(),
            b.len()
        ));
        return Some(out);
    };
    for hunk in hunks(&ops) {
        let (a0, b0) = (hunk.first_a, hunk.first_b);
        let (na, nb) = hunk.ops.iter().fold((0, 0), |(na, nb), op| match op {
            Op::Same(..) => (na + 1, nb + 1),
            Op::Del(_) => (na + 1, nb),
            Op::Add(_) => (na, nb + 1),
        });
        out.push_str(&format!("@@ -{} +{} @@\n", range(a0, na), range(b0, nb)));
        for op in &hunk.ops {
            let (sign, line) = match *op {
                Op::Same(i, _) => (' ', a[i]),
                Op::Del(i) => ('-', a[i]),
                Op::Add(j) => ('+', b[j]),
            };
            out.push(sign);
            out.push_str(line);
            if !line.ends_with('\n') {
                out.push_str("\n\\ No newline at end of file\n");
            }
        }
        if out.len() > DIFF_CAP {
            let mut end = DIFF_CAP;
            while !out.is_char_boundary(end) {
                end -= 1;
            }
            out.truncate(end);
            out.push_str("\n... (diff cut)\n");
            break;
        }
    }
    Some(out)
}

fn range(first: usize, n: usize) -> String {
    match n {
        0 => format!("{first},0"),
        1 => format!("{}", first + 1),
        n => format!("{},{n}", first + 1),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Same(usize, usize),
    Del(usize),
    Add(usize),
}

/// The edit from `a` to `b` through their longest common subsequence;
/// `None` if the table would be too big.
fn lcs_ops(a: &[&str], b: &[&str]) -> Option<Vec<Op>> {
    // Common head and tail first: most edits are small.
    let head = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let tail = a[head..]
        .iter()
        .rev()
        .zip(b[head..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (ma, mb) = (&a[head..a.len() - tail], &b[head..b.len() - tail]);
    let (n, m) = (ma.len(), mb.len());
    if n.saturating_mul(m) > CELLS {
        return None;
    }
    // len[i][j]: the LCS of ma[i..] and mb[j..].
    let w = m + 1;
    let mut len = vec![0u32; (n + 1) * w];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            len[i * w + j] = if ma[i] == mb[j] {
                len[(i + 1) * w + j + 1] + 1
            } else {
                len[(i + 1) * w + j].max(len[i * w + j + 1])
            };
        }
    }
    let mut ops: Vec<Op> = (0..head).map(|i| Op::Same(i, i)).collect();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && ma[i] == mb[j] {
            ops.push(Op::Same(head + i, head + j));
            i += 1;
            j += 1;
        } else if j < m && (i == n || len[i * w + j + 1] >= len[(i + 1) * w + j]) {
            ops.push(Op::Add(head + j));
            j += 1;
        } else {
            ops.push(Op::Del(head + i));
            i += 1;
        }
    }
    // Deletions before additions within a change, as diff prints them.
    let mut k = 0;
    while k < ops.len() {
        let start = k;
        while k < ops.len() && !matches!(ops[k], Op::Same(..)) {
            k += 1;
        }
        ops[start..k].sort_by_key(|op| matches!(op, Op::Add(_)));
        k += 1;
    }
    ops.extend((0..tail).map(|t| Op::Same(a.len() - tail + t, b.len() - tail + t)));
    Some(ops)
}

struct Hunk {
    first_a: usize,
    first_b: usize,
    ops: Vec<Op>,
}

/// The changes with their context, close ones merged.
fn hunks(ops: &[Op]) -> Vec<Hunk> {
    let changed: Vec<usize> = (0..ops.len())
        .filter(|&k| !matches!(ops[k], Op::Same(..)))
        .collect();
    let mut out: Vec<Hunk> = Vec::new();
    let mut k = 0;
    while k < changed.len() {
        let start = changed[k].saturating_sub(CONTEXT);
        let mut end = changed[k];
        while k + 1 < changed.len() && changed[k + 1] <= end + 2 * CONTEXT + 1 {
            k += 1;
            end = changed[k];
        }
        let end = (end + CONTEXT + 1).min(ops.len());
        // Where the hunk starts in each file: the lines before it.
        let (mut fa, mut fb) = (0, 0);
        for op in &ops[..start] {
            match op {
                Op::Same(..) => {
                    fa += 1;
                    fb += 1;
                }
                Op::Del(_) => fa += 1,
                Op::Add(_) => fb += 1,
            }
        }
        out.push(Hunk {
            first_a: fa,
            first_b: fb,
            ops: ops[start..end].to_vec(),
        });
        k += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_line_with_its_context() {
        let old = b"a\nb\nc\nd\ne\nf\ng\nh\n";
        let new = b"a\nb\nc\nd\nE\nf\ng\nh\n";
        assert_eq!(
            unified("/etc/x", Some(old), Some(new)).unwrap(),
            "--- /etc/x\n+++ /etc/x\n@@ -2,7 +2,7 @@\n b\n c\n d\n-e\n+E\n f\n g\n h\n"
        );
        assert_eq!(unified("x", Some(old), Some(old)), None);
    }

    #[test]
    fn created_binary_and_no_final_newline() {
        assert_eq!(
            unified("x", None, Some(b"one\ntwo")).unwrap(),
            "--- /dev/null\n+++ x\n@@ -0,0 +1,2 @@\n+one\n+two\n\\ No newline at end of file\n"
        );
        assert!(unified("x", Some(b"\xff\xfe"), Some(b"a"))
            .unwrap()
            .contains("Binary file x differs"));
        let far = (0..30).map(|i| format!("line {i}\n")).collect::<String>();
        let near = far.replace("line 2\n", "two\n").replace("line 27\n", "x\n");
        let d = unified("f", Some(far.as_bytes()), Some(near.as_bytes())).unwrap();
        assert_eq!(d.matches("@@").count(), 4, "two hunks: {d}");
    }

    #[test]
    fn huge_files_are_named_not_compared() {
        let a: String = (0..3000).map(|i| format!("a{i}\n")).collect();
        let b: String = (0..3000).map(|i| format!("b{i}\n")).collect();
        let d = unified("big", Some(a.as_bytes()), Some(b.as_bytes())).unwrap();
        assert!(d.contains("too large to compare"), "{d}");
    }
}
