//! The converge benchmark: 200 `ADD --blueprint` files to 6 clients on
//! loopback, a first run (each node fetches, renders and writes every
//! file) and an unchanged rerun (each node renders and compares, and sends
//! and writes nothing), each against its floor measured in the same run on
//! the same machine: rendering the same templates with the same engine and
//! writing them (synced, renamed into place) for 6 nodes in one process;
//! then rendering and comparing them with what is on disk.
//!
//! Run: `cargo bench --bench converge` (FILES and NODES may be set in the
//! environment). The cluster runs with CURVE, as by default.

#[path = "../tests/util/mod.rs"]
mod util;

use std::fs;
use std::io::Write;
use std::time::{Duration, Instant};

fn template(i: usize) -> String {
    let mut t = format!("# managed by director: file {i}\nlisten {{{{ port }}}};\n");
    t.push_str("{% for w in range(4) %}\nworker {{ w }} on {{ port }};\n{% endfor %}\n");
    for l in 0..40 {
        t.push_str(&format!("option_{l} = value_{i}_{l}\n"));
    }
    t
}

fn render(env: &minijinja::Environment, src: &str) -> String {
    env.render_str(src, minijinja::context! { port => "8080" })
        .unwrap()
}

fn main() {
    let files = util::env_usize("FILES", 200);
    let nodes = util::env_usize("NODES", 6);
    let names: Vec<String> = (1..=nodes).map(|i| format!("conv-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let c = util::Cluster::start_in(util::bench_cluster("converge-bench", "5"), &refs);
    let src = c.dir.path.join("templates");
    fs::create_dir_all(&src).unwrap();
    let templates: Vec<String> = (0..files).map(template).collect();
    for (i, t) in templates.iter().enumerate() {
        fs::write(src.join(format!("f{i:03}.conf")), t).unwrap();
    }
    println!(
        "ADD --blueprint of {files} templates ({} bytes each) to {nodes} clients on loopback",
        templates[0].len()
    );
    let out = c.cli(&["exec", "--verb", "ARG", "--wait", "port 8080"]);
    assert_eq!(out.code, 0, "{out:?}");

    // The floors: the same rendering (the same engine, the same settings),
    // each file written as the client does (synced, renamed) for each
    // node; then rendered and compared.
    let mut env = minijinja::Environment::new();
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .keep_trailing_newline(true)
            .build()
            .unwrap(),
    );
    let floor_dir = c.dir.path.join("floor");
    let start = Instant::now();
    for n in 0..nodes {
        let d = floor_dir.join(format!("n{n}"));
        fs::create_dir_all(&d).unwrap();
        for (i, t) in templates.iter().enumerate() {
            let out = render(&env, t);
            let tmp = d.join(format!(".tmp{i}"));
            let mut f = fs::File::create(&tmp).unwrap();
            f.write_all(out.as_bytes()).unwrap();
            f.sync_data().unwrap();
            fs::rename(&tmp, d.join(format!("f{i:03}.conf"))).unwrap();
        }
    }
    let floor_first = start.elapsed();
    let start = Instant::now();
    for n in 0..nodes {
        let d = floor_dir.join(format!("n{n}"));
        for (i, t) in templates.iter().enumerate() {
            let out = render(&env, t);
            let have = fs::read(d.join(format!("f{i:03}.conf"))).unwrap();
            assert_eq!(have, out.as_bytes());
        }
    }
    let floor_again = start.elapsed();

    let job = format!("--blueprint {}/*.conf conf/", src.display());
    let run = |what: &str| -> Duration {
        let start = Instant::now();
        let out = c.cli(&["exec", "--verb", "ADD", "--wait", &job]);
        let took = start.elapsed();
        assert_eq!(out.code, 0, "{what}: {out:?}");
        took
    };
    let first = run("first run");
    for n in &names {
        assert_eq!(
            fs::read_dir(c.node_dir(n).join("conf")).unwrap().count(),
            files,
            "{n} has every file"
        );
    }
    let fetched = |c: &util::Cluster| -> usize {
        names
            .iter()
            .map(|n| {
                fs::read_to_string(c.dir.path.join(format!("client-{n}.log")))
                    .unwrap_or_default()
                    .matches(": receiving ")
                    .count()
            })
            .sum()
    };
    let after_first = fetched(&c);
    let again = run("unchanged rerun");
    let after_again = fetched(&c);
    let jobs = c.jobs_json();
    let last = jobs.last().unwrap();
    assert_eq!(last["changed"], 0, "the rerun changed nothing: {last}");
    assert_eq!(after_again, after_first, "the rerun fetched nothing");

    let secs = |d: Duration| d.as_secs_f64();
    println!(
        "first run:       {:>8.3}s   floor (render + write, synced): {:>8.3}s   {:.2}x the floor; {after_first} files fetched",
        secs(first),
        secs(floor_first),
        secs(first) / secs(floor_first)
    );
    println!(
        "unchanged rerun: {:>8.3}s   floor (render + compare):       {:>8.3}s   {:.2}x the floor; {} files fetched",
        secs(again),
        secs(floor_again),
        secs(again) / secs(floor_again),
        after_again - after_first
    );
    println!(
        "the unchanged rerun costs {:.0}% of the first run",
        100.0 * secs(again) / secs(first)
    );
}
