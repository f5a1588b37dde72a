//! Every committed seed (`corpus/<target>/`) and crash reproducer (`regressions/<target>/`,
//! inputs that once crashed a target, kept so the fix stays) through the target's own code
//! (`walbrook_fuzz::targets::<target>::run`), as an ordinary test: no sanitizer build, no
//! fuzzing. The coverage-guided campaigns are `make fuzz` (docs/fuzzing.md).

use std::path::Path;

use walbrook_fuzz::targets;

type Target = (&'static str, fn(&[u8]));

const TARGETS: &[Target] = &[
    ("pgoutput_decode", targets::pgoutput_decode::run),
    ("single_object", targets::single_object::run),
    ("text_parsers", targets::text_parsers::run),
    ("schema_lookup", targets::schema_lookup::run),
    ("snapshot_rpc", targets::snapshot_rpc::run),
];

/// The files of `dir` (none when it does not exist), sorted.
fn inputs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.is_file());
    files.sort();
    files
}

#[test]
fn every_committed_input_runs_through_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut failures = Vec::new();
    let mut seeds_run = 0;
    for (name, run) in TARGETS {
        let seeds = inputs(&root.join("corpus").join(name));
        assert!(!seeds.is_empty(), "{name} has no committed seeds");
        let reproducers = inputs(&root.join("regressions").join(name));
        for input in seeds.iter().chain(&reproducers) {
            let data = std::fs::read(input).unwrap();
            if let Err(panic) = std::panic::catch_unwind(|| run(&data)) {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{name} {}: {message}", input.display()));
            }
            seeds_run += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} inputs crash:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The corpora hold 273 seeds today: a lost folder must not pass as "nothing crashed".
    assert!(seeds_run >= 250, "only {seeds_run} inputs ran");
}

#[test]
fn the_target_list_matches_the_fuzz_targets() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut on_disk: Vec<String> = inputs(&root.join("fuzz_targets"))
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "every fuzz target is run on its inputs here"
    );
}
