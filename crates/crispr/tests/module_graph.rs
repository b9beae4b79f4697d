//! The engine's modules import each other without cycles: a file-level graph of `crate::…`
//! paths (comments and unit-test modules left out; a module's use of its own submodules is
//! containment, not an edge), checked for strongly connected components among the modules that
//! make up the engine (`model/**`, `score`, `loader`, `files`, `text`, `weights`, `gguf`,
//! `export`, `prune`, `tensor*`, `precision`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

fn modules(root: &Path) -> BTreeMap<Module, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(root).unwrap().with_extension("");
                let mut parts: Module = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
                if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                    parts.pop();
                }
                out.insert(parts, path);
            }
        }
    }
    out
}

/// The deepest module a `crate::a::b::Item` path names.
fn resolve(mods: &BTreeMap<Module, PathBuf>, path: &str) -> Module {
    let mut parts: Module = path.split("::").map(str::to_string).collect();
    while !parts.is_empty() && !mods.contains_key(&parts) {
        parts.pop();
    }
    parts
}

fn edges(mods: &BTreeMap<Module, PathBuf>) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut out = BTreeMap::new();
    for (m, path) in mods {
        let text = std::fs::read_to_string(path).unwrap();
        let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
        let mut targets = BTreeSet::new();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + "crate::".len()..];
                let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len());
                let t = resolve(mods, rest[..end].trim_end_matches(':'));
                if &t != m && !t.starts_with(m) {
                    targets.insert(t);
                }
            }
        }
        out.insert(m.clone(), targets);
    }
    out
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(g: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct State<'a> {
        g: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on: BTreeSet<&'a Module>,
        out: Vec<Vec<Module>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Module) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on.insert(v);
        for w in s.g.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn the_engine_has_no_import_cycle() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&root);
    assert!(mods.contains_key(&vec!["model".to_string(), "llama".to_string()]), "module walk found the engine");
    let engine = |m: &Module| {
        let first = m.first().map(String::as_str).unwrap_or("");
        matches!(
            first,
            "model" | "score" | "loader" | "files" | "text" | "weights" | "gguf" | "export" | "prune" | "precision"
        ) || first.starts_with("tensor")
    };
    let found: Vec<Vec<Module>> = cycles(&edges(&mods)).into_iter().filter(|c| c.iter().any(engine)).collect();
    assert!(found.is_empty(), "import cycles through the engine: {found:?}");
}

#[test]
fn a_cycle_is_found_when_there_is_one() {
    let m = |s: &str| -> Module { s.split("::").map(str::to_string).collect() };
    let g: BTreeMap<Module, BTreeSet<Module>> = [
        (m("score"), [m("model::llama")].into()),
        (m("model::llama"), [m("score"), m("tensor")].into()),
        (m("tensor"), BTreeSet::new()),
    ]
    .into();
    assert_eq!(cycles(&g).len(), 1);
}
