//! The built binary runs with the allocator options it was given: jemalloc prints the
//! options in force when asked through its environment variable (which adds to the
//! built-in ones, and would override them if it named them).

#[cfg(feature = "jemalloc")]
#[test]
fn the_binary_runs_jemalloc_without_huge_pages_returning_freed_pages_within_a_second() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_metal3-fakenode"))
        .arg("--version")
        .env_clear()
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stats = String::from_utf8_lossy(&out.stderr);
    for option in ["opt.thp: \"never\"", "opt.dirty_decay_ms: 1000 "] {
        assert!(
            stats.lines().any(|l| l.trim_start().starts_with(option)),
            "{option} not in force:\n{}",
            stats
                .lines()
                .filter(|l| l.contains("opt."))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
