//! The code map kept honest: crates depend on each other only in the direction
//! ARCHITECTURE.md writes down (read from `cargo metadata`), and no source file of a crate
//! imports from a file that imports it back, directly or around a longer circle.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (this suite lives in `tests/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The layers of ARCHITECTURE.md's "Dependency direction" block, lowest first: each line
/// of the fenced block is a layer, its package names are the words that start with
/// `sluice`.
fn written_layers() -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let section = text
        .split("## Dependency direction")
        .nth(1)
        .expect("ARCHITECTURE.md has a `## Dependency direction` section");
    let block = section
        .split("```")
        .nth(1)
        .expect("the section starts with a fenced block of layers");
    block
        .lines()
        .map(|line| {
            line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .filter(|word| word.starts_with("sluice"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|layer| !layer.is_empty())
        .collect()
}

/// Each workspace package's normal and build dependencies on other workspace packages
/// (dev-dependencies may point anywhere: a crate's tests use the test kit).
fn workspace_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    let names: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    packages
        .iter()
        .map(|package| {
            let dependencies = package["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].as_str() != Some("dev"))
                .map(|d| d["name"].as_str().unwrap().to_owned())
                .filter(|name| names.contains(name))
                .collect();
            (package["name"].as_str().unwrap().to_owned(), dependencies)
        })
        .collect()
}

/// What breaks the written direction: a dependency on a crate that is not in a lower
/// layer, a package the layers do not place, a name that is not a package.
fn direction_violations(
    layers: &[Vec<String>],
    dependencies: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut layer_of: BTreeMap<&str, usize> = BTreeMap::new();
    for (index, layer) in layers.iter().enumerate() {
        for name in layer {
            if layer_of.insert(name, index).is_some() {
                wrong.push(format!("{name} is named twice in the layers"));
            }
        }
    }
    for (package, uses) in dependencies {
        let Some(&layer) = layer_of.get(package.as_str()) else {
            wrong.push(format!("{package} is not placed in the layers"));
            continue;
        };
        for dependency in uses {
            match layer_of.get(dependency.as_str()) {
                Some(&below) if below < layer => {}
                _ => wrong.push(format!(
                    "{package} depends on {dependency}, which is not below it"
                )),
            }
        }
    }
    for name in layer_of.keys() {
        if !dependencies.contains_key(*name) {
            wrong.push(format!(
                "the layers name {name}, which is not a workspace package"
            ));
        }
    }
    wrong
}

#[test]
fn crates_depend_only_downward_as_architecture_md_writes() {
    let wrong = direction_violations(&written_layers(), &workspace_dependencies());
    assert!(
        wrong.is_empty(),
        "against ARCHITECTURE.md's dependency direction:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_direction_check_catches_what_breaks_it() {
    let layers = vec![vec!["a".to_owned()], vec!["b".to_owned(), "c".to_owned()]];
    let deps = |pairs: &[(&str, &[&str])]| -> BTreeMap<String, BTreeSet<String>> {
        pairs
            .iter()
            .map(|(p, d)| (p.to_string(), d.iter().map(|s| s.to_string()).collect()))
            .collect()
    };
    assert!(
        direction_violations(&layers, &deps(&[("a", &[]), ("b", &["a"]), ("c", &["a"])]))
            .is_empty()
    );
    // Up, sideways, unplaced, and a name that is no package.
    assert_eq!(
        direction_violations(&layers, &deps(&[("a", &["b"]), ("b", &[]), ("c", &[])])).len(),
        1
    );
    assert_eq!(
        direction_violations(&layers, &deps(&[("a", &[]), ("b", &["c"]), ("c", &[])])).len(),
        1
    );
    assert_eq!(
        direction_violations(
            &layers,
            &deps(&[("a", &[]), ("b", &[]), ("c", &[]), ("d", &[])])
        )
        .len(),
        1
    );
    assert_eq!(
        direction_violations(&layers, &deps(&[("a", &[]), ("b", &[])])).len(),
        1
    );
}

/// The module files of a crate's `src/` whose paths (`crate::`, `super::`, `self::`) each
/// source file uses.
fn import_graph(src: &Path) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mut graph = BTreeMap::new();
    for file in rust_files(src) {
        let text = std::fs::read_to_string(&file).unwrap();
        // A file's unit tests (at its end, by the house style) use `super::*` of the file
        // itself, not of its parent.
        let text = text.split("#[cfg(test)]").next().unwrap_or_default();
        let code = strip_comments(text);
        let module = module_path(src, &file);
        let mut targets = BTreeSet::new();
        for path in module_paths(&code, &module) {
            if let Some(target) = resolve(src, &path)
                && target != file
            {
                targets.insert(target);
            }
        }
        graph.insert(file, targets);
    }
    graph
}

/// A file's module path from the crate root: `src/a/b.rs` and `src/a/b/mod.rs` are
/// `["a", "b"]`, `src/lib.rs` is `[]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let mut path: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        path.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        path.pop();
    }
    path
}

/// Every path from the crate root that `code` names, `module` being its own module.
fn module_paths(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let parent = &module[..module.len().saturating_sub(1)];
    let mut paths = Vec::new();
    for (anchor, base) in [
        ("crate::", &[][..]),
        ("super::", parent),
        ("self::", module),
    ] {
        let mut rest = code;
        while let Some(at) = rest.find(anchor) {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + anchor.len()..];
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                continue; // e.g. `sluice_crate::`, `super::super::`
            }
            paths.extend(expand(rest, base.to_vec()));
        }
    }
    paths
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The text without `//` comments (doc comments name modules in prose, not as imports).
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths a `use` tree starting at `text` names, each prefixed with `prefix`.
fn expand(text: &str, prefix: Vec<String>) -> Vec<Vec<String>> {
    let mut path = prefix;
    let mut rest = text;
    loop {
        if let Some(group) = rest.strip_prefix('{') {
            return split_group(group)
                .into_iter()
                .flat_map(|item| expand(item.trim(), path.clone()))
                .collect();
        }
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end > 0 {
            path.push(rest[..end].to_owned());
        }
        rest = &rest[end..];
        if let Some(next) = rest.strip_prefix("::") {
            rest = next;
        } else {
            return vec![path];
        }
    }
}

/// The items of a brace group up to its closing brace, split at top-level commas.
fn split_group(text: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&text[start..i]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items
}

/// The deepest module file a path goes through (`crate::a::b::C` → `src/a/b.rs`; an item
/// of the crate root → `src/lib.rs`, or `src/main.rs` for a binary).
fn resolve(src: &Path, path: &[String]) -> Option<PathBuf> {
    let mut dir = src.to_path_buf();
    let mut found = ["lib.rs", "main.rs"]
        .into_iter()
        .map(|root| src.join(root))
        .find(|root| root.is_file());
    for segment in path {
        let file = dir.join(format!("{segment}.rs"));
        let module = dir.join(segment).join("mod.rs");
        if file.is_file() {
            found = Some(file);
        } else if module.is_file() {
            found = Some(module);
        } else {
            break;
        }
        dir = dir.join(segment);
    }
    found
}

/// The circles of a graph, each as the files around it.
fn circles(graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    // Depth-first search; a back edge to a file on the stack closes a circle.
    fn visit(
        node: &PathBuf,
        graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        stack: &mut Vec<PathBuf>,
        done: &mut BTreeSet<PathBuf>,
        found: &mut Vec<Vec<PathBuf>>,
    ) {
        if done.contains(node) {
            return;
        }
        if let Some(at) = stack.iter().position(|n| n == node) {
            found.push(stack[at..].to_vec());
            return;
        }
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, stack, done, found);
        }
        stack.pop();
        done.insert(node.clone());
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, graph, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

#[test]
fn no_source_file_imports_from_a_file_that_imports_it_back() {
    let mut wrong = Vec::new();
    for entry in std::fs::read_dir(root().join("crates")).unwrap() {
        let src = entry.unwrap().path().join("src");
        if !src.is_dir() {
            continue;
        }
        for circle in circles(&import_graph(&src)) {
            let names: Vec<String> = circle
                .iter()
                .map(|p| p.strip_prefix(root()).unwrap_or(p).display().to_string())
                .collect();
            wrong.push(names.join(" -> "));
        }
    }
    assert!(
        wrong.is_empty(),
        "import circles (each file imports the next, the last the first):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_import_reader_sees_groups_nested_paths_and_circles() {
    let code = "use crate::state::{claims::{Claims, DeliveryKey}, fanouts};\n\
                let x = crate::metrics::metrics(); // crate::ignored::path\n\
                use sluice_crate::nothing;\n\
                use super::lanes::Lane;\n\
                use self::inner::Thing;\n\
                use crate::{child, publisher};";
    let module = ["deliver".to_owned(), "scanner".to_owned()];
    let paths: Vec<String> = module_paths(&strip_comments(code), &module)
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    assert_eq!(
        paths,
        [
            "state::claims::Claims",
            "state::claims::DeliveryKey",
            "state::fanouts",
            "metrics::metrics",
            "child",
            "publisher",
            "deliver::lanes::Lane",
            "deliver::scanner::inner::Thing"
        ]
    );
    let a = PathBuf::from("a.rs");
    assert_eq!(
        module_path(Path::new("src"), Path::new("src/deliver/mod.rs")),
        ["deliver"]
    );
    assert!(module_path(Path::new("src"), Path::new("src/lib.rs")).is_empty());
    let b = PathBuf::from("b.rs");
    let c = PathBuf::from("c.rs");
    let graph = BTreeMap::from([
        (a.clone(), BTreeSet::from([b.clone()])),
        (b.clone(), BTreeSet::from([c.clone()])),
        (c.clone(), BTreeSet::from([a.clone()])),
    ]);
    assert_eq!(circles(&graph), [vec![a.clone(), b.clone(), c.clone()]]);
    let acyclic = BTreeMap::from([(a, BTreeSet::from([b.clone()])), (b, BTreeSet::new())]);
    assert!(circles(&acyclic).is_empty());
}
