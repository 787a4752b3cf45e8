//! "Did you mean": the known name nearest a mistyped one, for the one-line
//! errors of unknown options and configuration keys.

/// The candidate nearest `word` by edit distance, if it is near enough to
/// be what was meant (at most a third of its length wrong, or one
/// character for short words).
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    // No option is this long; and the distance table grows with it.
    if word.len() > 64 {
        return None;
    }
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// " (did you mean X?)", or nothing.
pub fn hint<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    nearest(word, candidates)
        .map(|c| format!(" (did you mean {c}?)"))
        .unwrap_or_default()
}

/// Levenshtein distance, counting a swap of two neighbours as one edit
/// (the commonest typo).
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nearest_known_name_is_suggested_when_close_enough() {
        let opts = ["--target", "--timeout", "--exclude", "--wait"];
        assert_eq!(nearest("--tagret", opts), Some("--target"));
        assert_eq!(nearest("--targets", opts), Some("--target"));
        assert_eq!(nearest("--wiat", opts), Some("--wait"));
        assert_eq!(nearest("--frobnicate", opts), None);
        assert_eq!(
            hint("heartbeat_intervall", ["heartbeat_interval", "debug"]),
            " (did you mean heartbeat_interval?)"
        );
        assert_eq!(hint("x", ["debug"]), "");
        assert_eq!(nearest(&format!("--{}", "t".repeat(100_000)), opts), None);
    }
}
