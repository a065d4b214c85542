//! The layout the README describes: no module of the product depends, directly or through
//! others, on itself, so each can be read and tested on its own. Read from the sources:
//! `crate::<module>` paths outside unit tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module → the modules it names, from `src/<module>.rs` or `src/<module>/*.rs`.
fn dependencies(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut deps = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let (module, files) = if path.is_dir() {
            let files: Vec<_> = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            (
                path.file_name().unwrap().to_string_lossy().to_string(),
                files,
            )
        } else {
            let stem = path.file_stem().unwrap().to_string_lossy().to_string();
            (stem, vec![path])
        };
        if matches!(module.as_str(), "lib" | "main") {
            continue;
        }
        let names: &mut BTreeSet<String> = deps.entry(module.clone()).or_default();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let code = text
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap_or_default();
            for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (at, _) in line.match_indices("crate::") {
                    let name: String = line[at + 7..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != module {
                        names.insert(name);
                    }
                }
            }
        }
    }
    deps
}

/// A path from `from` back to `from` through `deps`, if there is one.
fn cycle(deps: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![vec![from.to_string()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().unwrap();
        for next in deps.get(last).into_iter().flatten() {
            if next == from {
                let mut found = path.clone();
                found.push(next.clone());
                return Some(found);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push(longer);
            }
        }
    }
    None
}

#[test]
fn no_module_of_the_product_depends_on_itself() {
    let deps = dependencies(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(
        deps.contains_key("controller") && deps.contains_key("plan"),
        "{deps:?}"
    );
    let cycles: Vec<String> = deps
        .keys()
        .filter_map(|m| cycle(&deps, m))
        .map(|c| c.join(" -> "))
        .collect();
    assert!(cycles.is_empty(), "module cycles: {cycles:#?}");
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let deps = BTreeMap::from([
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
        ("d".to_string(), BTreeSet::from(["a".to_string()])),
    ]);
    assert_eq!(cycle(&deps, "a").unwrap().join(" -> "), "a -> b -> c -> a");
    assert!(cycle(&deps, "d").is_none());
}
