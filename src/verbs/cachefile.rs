//! CACHEFILE PATH: a YAML (or JSON) file of `key: value` pairs loaded
//! into the node's ARGs, as Directord's. An absolute PATH, or one that is
//! a template, is read on the node (on its I/O thread); any other relative
//! one on the server's machine when
//! the job is submitted (beside the orchestration file that names it), its
//! values sent with the job.
//!
//! A string is kept as it is; a number or a boolean as its YAML text; a
//! list or a map as JSON text, which templates see as a list or a map
//! (`template::arg_value`).

use serde::{Deserialize, Serialize};

/// The most bytes a cache file read on the node may have.
pub const CAP: u64 = 1 << 20;
/// The most bytes of one read on the server's machine: its values travel
/// with the job and stay with it in the server's memory while retained.
pub const CAP_HERE: u64 = 64 << 10;

/// Where the values come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheFile {
    /// As written (a template when read on the node).
    pub path: String,
    /// The values, when the file was read on the server's machine.
    #[serde(deserialize_with = "crate::wire::cautious_seq")]
    pub values: Vec<(String, String)>,
    /// Read on the server's machine (`values` holds what it had).
    pub here: bool,
}

impl CacheFile {
    pub fn parse(rest: &str) -> Result<CacheFile, String> {
        let path = rest.trim();
        if path.is_empty() {
            return Err("CACHEFILE needs one PATH (a YAML or JSON file of key: value)".into());
        }
        crate::template::check(path).map_err(|e| format!("CACHEFILE path: {e}"))?;
        Ok(CacheFile {
            path: path.to_owned(),
            values: Vec::new(),
            // A template can only be rendered on the node.
            here: !path.starts_with('/') && !path.contains("{{") && !path.contains("{%"),
        })
    }
}

/// The ARGs a cache file's text holds, in the file's order.
pub fn pairs(text: &str, name: &str) -> Result<Vec<(String, String)>, String> {
    use serde_yaml::Value as Y;
    let doc: Y = serde_yaml::from_str(text).map_err(|e| format!("cache file {name}: {e}"))?;
    let map = match doc {
        Y::Mapping(m) => m,
        Y::Null => return Ok(Vec::new()),
        _ => {
            return Err(format!(
                "cache file {name}: expected a map of key: value at its top"
            ))
        }
    };
    let mut out = Vec::with_capacity(map.len());
    for (k, v) in map {
        let Some(key) = k.as_str() else {
            return Err(format!("cache file {name}: a key is not a name: {k:?}"));
        };
        crate::dsl::check_name(key, &format!("cache file {name}: key"))?;
        let text = match v {
            Y::String(s) => s,
            Y::Null => String::new(),
            Y::Bool(b) => if b { "True" } else { "False" }.to_owned(),
            Y::Number(n) => n.to_string(),
            other => serde_json::to_string(&other)
                .map_err(|e| format!("cache file {name}: {key}: {e}"))?,
        };
        out.push((key.to_owned(), text));
    }
    Ok(out)
}

/// Read and parse a cache file of at most `cap` bytes (on the I/O
/// thread, or by the CLI).
pub fn load(path: &std::path::Path, cap: u64) -> Result<Vec<(String, String)>, String> {
    use std::io::Read;
    let shown = path.display().to_string();
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(cap + 1).read_to_string(&mut text))
        .map_err(|e| format!("cache file {shown}: {e}"))?;
    if text.len() as u64 > cap {
        return Err(format!(
            "cache file {shown} is larger than {cap} bytes (a file of values: put large data in files ADD sends)"
        ));
    }
    pairs(&text, &shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directords_test_cache_file_becomes_args() {
        let text = "---\ntest_string_args: test\ntest_integer_args: 9000\ntest_float_args: 51.50\ntest_boolean_args: true\ntest_nested_args:\n  test: true\ntest_array_args:\n- test\n";
        let p = pairs(text, "t.yaml").unwrap();
        assert_eq!(
            p,
            [
                ("test_string_args", "test"),
                ("test_integer_args", "9000"),
                ("test_float_args", "51.5"),
                ("test_boolean_args", "True"),
                ("test_nested_args", r#"{"test":true}"#),
                ("test_array_args", r#"["test"]"#),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert!(pairs("- a\n- b\n", "l.yaml")
            .unwrap_err()
            .contains("expected a map"));
        assert!(pairs("9x: 1\n", "k.yaml").unwrap_err().contains("key"));
        assert!(CacheFile::parse("/tmp/a.yaml").is_ok_and(|c| !c.here));
        assert!(CacheFile::parse("files/a.yaml").is_ok_and(|c| c.here));
        assert!(CacheFile::parse("files/{{ env }}.yaml").is_ok_and(|c| !c.here));
        assert!(CacheFile::parse("").is_err());
    }

    #[test]
    fn a_file_over_its_cap_or_missing_is_one_line() {
        let p = std::env::temp_dir().join(format!("director-cachefile-{}", std::process::id()));
        std::fs::write(&p, "a: 1\nb: 2\n").unwrap();
        assert_eq!(load(&p, 64).unwrap().len(), 2);
        let e = load(&p, 4).unwrap_err();
        assert!(
            e.contains("is larger than 4 bytes") && !e.contains('\n'),
            "{e}"
        );
        std::fs::remove_file(&p).unwrap();
        assert!(load(&p, 64).unwrap_err().contains("No such file"));
    }
}
