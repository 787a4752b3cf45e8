//! What a node says about itself when it registers: facts read from the
//! machine, and the labels its operator gave it. Both are flat maps of
//! text, so targets match them (`os_id=debian`, `role=web`) and templates
//! read them (`{{ facts.os_id }}`, `{{ labels.role }}`) the same way.

use std::collections::BTreeMap;

/// Name to value; sorted, so listings and messages are stable.
pub type Map = BTreeMap<String, String>;

/// What a client says of its node when it registers, and what its
/// templates read besides ARG values.
#[derive(Clone, Debug, Default)]
pub struct Node {
    pub facts: Map,
    pub labels: Map,
}

/// The facts of this machine, read once at client start. A fact that cannot
/// be read is absent, not an error: a container may have no
/// `/etc/os-release`.
pub fn gather() -> Map {
    let mut f = Map::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            f.insert(k.to_owned(), v);
        }
    };
    let uts = uname();
    put("hostname", uts.as_ref().map(|u| u.0.clone()));
    put("kernel", uts.as_ref().map(|u| u.1.clone()));
    put("arch", uts.map(|u| u.2));
    let release = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    let os = os_release(&release);
    put("os_id", os.get("ID").cloned());
    put("os_version", os.get("VERSION_ID").cloned());
    put("os_name", os.get("PRETTY_NAME").cloned());
    put(
        "cpus",
        std::thread::available_parallelism()
            .ok()
            .map(|n| n.to_string()),
    );
    put("memory_mb", memory_mb().map(|m| m.to_string()));
    put("addresses", Some(addresses().join(",")));
    put("version", Some(env!("CARGO_PKG_VERSION").to_owned()));
    // What PACKAGE drives here.
    put(
        "package_manager",
        std::env::var("PATH")
            .ok()
            .and_then(|p| crate::verbs::package::detect(&p))
            .map(|m| m.name().to_owned()),
    );
    f
}

/// `KEY=value` lines of an os-release file, quotes removed.
fn os_release(text: &str) -> Map {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            (k.trim().to_owned(), v.to_owned())
        })
        .collect()
}

/// Host name, kernel release and machine architecture.
fn uname() -> Option<(String, String, String)> {
    // SAFETY: uname fills the zeroed struct it is given; its fields are
    // NUL-terminated arrays.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    let text = |field: &[libc::c_char]| {
        let bytes: Vec<u8> = field
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Some((text(&u.nodename), text(&u.release), text(&u.machine)))
}

/// Total memory in MiB.
fn memory_mb() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// The machine's IP addresses, loopback and link-local left out.
fn addresses() -> Vec<String> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we walk read-only and free once.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: the family says which sockaddr type the address is.
        let ip: std::net::IpAddr = match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
            libc::AF_INET => {
                let a = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)).into()
            }
            libc::AF_INET6 => {
                let a = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                std::net::Ipv6Addr::from(a.sin6_addr.s6_addr).into()
            }
            _ => continue,
        };
        let link_local = match ip {
            std::net::IpAddr::V4(v4) => v4.is_link_local(),
            std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        };
        let text = ip.to_string();
        if !ip.is_loopback() && !link_local && !out.contains(&text) {
            out.push(text);
        }
    }
    // SAFETY: the list from getifaddrs above, freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// Most facts or labels a node may report, and their sizes: what a peer
/// sends is kept, so it is bounded.
const MAX_ENTRIES: usize = 64;
const MAX_VALUE: usize = 1024;

/// What the server keeps of a node's facts or labels: valid names, one-line
/// values, within bounds (a hand-made peer may send anything).
pub fn bounded(map: Map) -> Map {
    map.into_iter()
        .filter(|(k, _)| is_key(k))
        .map(|(k, v)| {
            let v: String = v
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_VALUE)
                .collect();
            (k, v)
        })
        .take(MAX_ENTRIES)
        .collect()
}

/// Parse labels given as `KEY=VALUE` items separated by commas (several
/// `--label` switches are joined that way). Keys are letters, digits, `_`,
/// `-` and `.`; values are any text without a comma. The error names the
/// item.
pub fn parse_labels(text: &str) -> Result<Map, String> {
    let mut out = Map::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("label '{item}' is not KEY=VALUE"))?;
        let (k, v) = (k.trim(), v.trim());
        if !is_key(k) {
            return Err(format!(
                "label '{item}': the key must be letters, digits, '_', '-' or '.'"
            ));
        }
        if v.chars().any(char::is_control) {
            return Err(format!("label '{k}': the value has a control character"));
        }
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

/// A label or fact name.
pub fn is_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 64
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_values_lose_their_quotes() {
        let m = os_release("ID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME='Debian 12'\n# x\n");
        assert_eq!(m["ID"], "debian");
        assert_eq!(m["VERSION_ID"], "12");
        assert_eq!(m["PRETTY_NAME"], "Debian 12");
    }

    #[test]
    fn this_machine_has_the_facts_every_linux_has() {
        let f = gather();
        for k in ["hostname", "kernel", "arch", "cpus", "memory_mb", "version"] {
            assert!(f.contains_key(k), "{k} missing from {f:?}");
        }
        assert!(f["cpus"].parse::<u32>().unwrap() >= 1);
    }

    #[test]
    fn what_a_peer_reports_is_kept_within_bounds() {
        let mut m: Map = (0..1000)
            .map(|i| (format!("k{i:04}"), "v".repeat(5000)))
            .collect();
        m.insert("bad key".into(), "x".into());
        m.insert("a".into(), "two\nlines\x1b[31m".into());
        let b = bounded(m);
        assert_eq!(b.len(), MAX_ENTRIES);
        assert!(!b.contains_key("bad key"));
        assert_eq!(b["a"], "twolines[31m");
        assert!(b.values().all(|v| v.chars().count() <= MAX_VALUE));
    }

    #[test]
    fn labels_are_key_value_items_and_a_bad_one_is_named() {
        let m = parse_labels("role=web, dc=fra-1 ,,tier=").unwrap();
        assert_eq!(m["role"], "web");
        assert_eq!(m["dc"], "fra-1");
        assert_eq!(m["tier"], "");
        assert_eq!(
            parse_labels("role").unwrap_err(),
            "label 'role' is not KEY=VALUE"
        );
        assert!(parse_labels("ro le=x").unwrap_err().contains("'ro le=x'"));
    }
}
