//! Source-structure checks of `cargo xtask tidy` for the Azure provider's `service/` modules:
//! no import cycle between them (a module names a sibling as `super::name`; the facade
//! `mod.rs`, which re-exports and holds the shared state, is not a node), and no function longer
//! than [`MAX_FN_LINES`] lines (apart from listed debt, which may only shrink; none is listed).

use anyhow::{Result, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The longest function allowed in `service/`.
pub(crate) const MAX_FN_LINES: usize = 80;

/// Functions known to be longer (name, current length): to be split, never to grow. Empty: every
/// function of `service/` is within the limit.
const LONG_FN_DEBT: &[(&str, usize)] = &[];

/// Module name -> the sibling modules its code (not its comments) refers to.
pub(crate) fn module_graph(dir: &Path) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let mut sources = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else { continue };
        if path.extension().is_some_and(|e| e == "rs") && name != "mod" {
            sources.insert(name.to_owned(), std::fs::read_to_string(&path)?);
        }
    }
    let names: BTreeSet<String> = sources.keys().cloned().collect();
    Ok(sources.iter().map(|(name, text)| (name.clone(), references(text, &names, name))).collect())
}

fn references(text: &str, modules: &BTreeSet<String>, own: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(i) = rest.find("super::") {
            rest = &rest[i + "super::".len()..];
            let mut found: Vec<String> = Vec::new();
            if let Some(group) = rest.strip_prefix('{') {
                // `use super::{a, b::{X, Y}, c};`: the top-level items of the group.
                let mut depth = 0usize;
                let mut item = String::new();
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            found.push(ident(item.trim()));
                            item.clear();
                            continue;
                        }
                        _ => {}
                    }
                    if depth == 0 {
                        item.push(c);
                    }
                }
                found.push(ident(item.trim()));
            } else {
                found.push(ident(rest));
            }
            out.extend(found.into_iter().filter(|m| modules.contains(m) && m != own));
        }
    }
    out
}

fn ident(s: &str) -> String {
    s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
}

/// A cycle in `graph`, as the modules along it, if there is one.
pub(crate) fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

/// `(file, function, lines)` of every function in `dir` longer than [`MAX_FN_LINES`].
pub(crate) fn long_functions(dir: &Path) -> Result<Vec<(String, String, usize)>> {
    let mut out = Vec::new();
    let mut files: Vec<_> =
        std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    for path in files.iter().filter(|p| p.extension().is_some_and(|e| e == "rs")) {
        let text = std::fs::read_to_string(path)?;
        let file = path.file_name().and_then(|f| f.to_str()).unwrap_or_default().to_owned();
        for (name, lines) in function_lengths(&text) {
            if lines > MAX_FN_LINES {
                out.push((file.clone(), name, lines));
            }
        }
    }
    Ok(out)
}

/// `(name, lines)` of every `fn` whose body closes at its own indentation (rustfmt layout).
fn function_lengths(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let after_vis = trimmed
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub(super) ")
            .trim_start_matches("pub ")
            .trim_start_matches("async ");
        if let Some(rest) = after_vis.strip_prefix("fn ") {
            let name = ident(rest);
            let close = format!("{}}}", " ".repeat(indent));
            if let Some(end) = (i + 1..lines.len()).find(|&j| lines[j] == close) {
                out.push((name, end - i + 1));
                i = end;
            }
        }
        i += 1;
    }
    out
}

/// The checks, for `tidy`: `root` is the workspace root.
pub(crate) fn check_service(root: &Path) -> Result<()> {
    let dir = root.join("crates/provider-azure-storage/src/service");
    let graph = module_graph(&dir)?;
    if graph.len() < 5 {
        bail!("service/ has only {} modules: the check reads the wrong directory", graph.len());
    }
    if let Some(cycle) = find_cycle(&graph) {
        bail!("import cycle between service modules: {}", cycle.join(" -> "));
    }
    let mut errors = Vec::new();
    let long = long_functions(&dir)?;
    for (name, _) in LONG_FN_DEBT {
        if !long.iter().any(|(_, n, _)| n == name) {
            errors.push(format!(
                "{name} is no longer over {MAX_FN_LINES} lines: remove its debt entry"
            ));
        }
    }
    for (file, name, lines) in long {
        match LONG_FN_DEBT.iter().find(|(n, _)| *n == name) {
            Some((_, allowed)) if lines <= *allowed => {}
            Some((_, allowed)) => errors.push(format!(
                "{file}: {name} grew to {lines} lines (debt recorded at {allowed}; split it)"
            )),
            None => errors.push(format!(
                "{file}: {name} has {lines} lines (at most {MAX_FN_LINES}; split it)"
            )),
        }
    }
    if errors.is_empty() { Ok(()) } else { bail!("{}", errors.join("\n")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        edges
            .iter()
            .map(|(n, ds)| ((*n).to_owned(), ds.iter().map(|d| (*d).to_owned()).collect()))
            .collect()
    }

    #[test]
    fn cycles_are_found_and_dags_pass() {
        let dag = graph(&[("a", &["b", "c"]), ("b", &["c"]), ("c", &[])]);
        assert_eq!(find_cycle(&dag), None);
        let cyclic = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"])]);
        assert_eq!(find_cycle(&cyclic).unwrap(), vec!["a", "b", "c", "a"]);
    }

    #[test]
    fn references_read_code_not_comments() {
        let modules: BTreeSet<String> =
            ["buffer", "messages", "poller"].iter().map(|s| (*s).to_owned()).collect();
        let text = "use super::{Inner, buffer::{Buffered, take}, messages};\n\
                    /// see [`super::poller::x`]\n\
                    fn f() { super::poller::run(); }\n";
        let got = references(text, &modules, "prefetch");
        assert_eq!(got.into_iter().collect::<Vec<_>>(), vec!["buffer", "messages", "poller"]);
        let commented = "// super::poller::run();\n";
        assert!(references(commented, &modules, "x").is_empty());
    }

    #[test]
    fn function_lengths_follow_rustfmt_layout() {
        let text = "fn a() {\n    x();\n}\n\nimpl T {\n    pub(crate) async fn b(\n        y: u8,\n    ) {\n        z();\n    }\n}\n";
        assert_eq!(function_lengths(text), vec![("a".to_owned(), 3), ("b".to_owned(), 5)]);
    }

    #[test]
    fn the_service_modules_have_no_cycle_and_no_new_long_function() {
        check_service(&crate::project_root()).unwrap();
    }
}
