//! `cargo xtask layout`: the house rules a reader relies on to find their way, checked.
//!
//! - Dependencies between the daemon crate's top-level modules point one way: a module is
//!   the first path segment after `crate::` in any file under `splitter/src/<module>`; a
//!   strongly connected component of more than one module is a cycle.
//! - No product source file grows past `MAX_LINES` (the tests crate is exempt: its test
//!   tables are long by nature).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context;

/// Longest product source file accepted, in lines.
const MAX_LINES: usize = 650;
/// The crates whose files are held to `MAX_LINES`.
const PRODUCT_CRATES: [&str; 3] = ["splitter", "splitter-common", "splitter-ebpf"];

#[derive(clap::Args)]
pub struct Options {}

pub fn run(_options: &Options) -> anyhow::Result<()> {
    let root = crate::workspace_root();
    let graph = module_graph(&root.join("splitter/src"))?;
    for (module, deps) in &graph {
        let deps: Vec<_> = deps.iter().map(String::as_str).collect();
        eprintln!(
            "  {module:<10} -> {}",
            if deps.is_empty() {
                "-".to_owned()
            } else {
                deps.join(", ")
            }
        );
    }
    let cycles = cycles(&graph);
    anyhow::ensure!(
        cycles.is_empty(),
        "module cycles in splitter/src (dependencies must point one way): {cycles:?}"
    );
    eprintln!("  no module cycle in splitter/src");

    let mut long = Vec::new();
    for krate in PRODUCT_CRATES {
        for file in rust_files(&root.join(krate).join("src"))? {
            let lines = fs::read_to_string(&file)?.lines().count();
            if lines > MAX_LINES {
                long.push(format!(
                    "{} ({lines} lines)",
                    file.strip_prefix(&root)?.display()
                ));
            }
        }
    }
    anyhow::ensure!(
        long.is_empty(),
        "files over {MAX_LINES} lines (split them by role): {}",
        long.join(", ")
    );
    eprintln!("  no product file over {MAX_LINES} lines");
    Ok(())
}

fn rust_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(rust_files(&path)?);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    Ok(files)
}

/// Top-level module → the top-level modules its files name through `crate::`.
fn module_graph(src: &Path) -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(src)? {
        let relative = file.strip_prefix(src)?;
        let first = relative.components().next().context("empty path")?;
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = fs::read_to_string(&file)?;
        let deps = graph.entry(module.clone()).or_default();
        for dep in crate_references(&text) {
            if dep != module {
                deps.insert(dep);
            }
        }
    }
    Ok(graph)
}

/// The first segment of every `crate::` path, including each member of `crate::{a, b::c}`.
fn crate_references(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Members at depth 0 of the brace group.
            let mut depth = 0;
            let mut member = String::new();
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        push_first_segment(&mut found, &member);
                        member.clear();
                        continue;
                    }
                    _ => {}
                }
                member.push(ch);
            }
            push_first_segment(&mut found, &member);
        } else {
            push_first_segment(&mut found, rest);
        }
    }
    found
}

fn push_first_segment(found: &mut BTreeSet<String>, path: &str) {
    let segment: String = path
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
        .collect();
    if !segment.is_empty() {
        found.insert(segment);
    }
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, node: &'a str) {
            let n = self.index.len();
            self.index.insert(node, n);
            self.low.insert(node, n);
            self.stack.push(node);
            for next in self.graph.get(node).into_iter().flatten() {
                let next = next.as_str();
                if !self.graph.contains_key(next) {
                    continue;
                }
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next]);
                    self.low.insert(node, low);
                } else if self.stack.contains(&next) {
                    let low = self.low[node].min(self.index[next]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let mut component = Vec::new();
                while let Some(member) = self.stack.pop() {
                    component.push(member.to_owned());
                    if member == node {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !walk.index.contains_key(node.as_str()) {
            walk.visit(node);
        }
    }
    walk.found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_in_paths_and_groups() {
        let text = "use crate::{config::Config, control::{a, b}, units};\nlet x = crate::state::load(); // crate::daemon\n";
        let found: Vec<_> = crate_references(text).into_iter().collect();
        assert_eq!(found, ["config", "control", "state", "units"]);
    }

    #[test]
    fn a_cycle_is_found_and_a_chain_is_not() {
        let graph = |edges: &[(&str, &str)]| {
            let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for (from, to) in edges {
                graph
                    .entry((*from).to_owned())
                    .or_default()
                    .insert((*to).to_owned());
                graph.entry((*to).to_owned()).or_default();
            }
            graph
        };
        assert!(cycles(&graph(&[("a", "b"), ("b", "c")])).is_empty());
        assert_eq!(
            cycles(&graph(&[("a", "b"), ("b", "c"), ("c", "a")])).len(),
            1
        );
    }
}
