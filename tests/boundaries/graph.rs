//! The arrows between files and modules, and the cycles they form.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::source::*;

/// One `use` leaf: the absolute path it names and the name it binds in its scope.
pub struct Import {
    pub scope: Vec<String>,
    pub path: Vec<String>,
    pub name: Option<String>,
    pub line: usize,
    pub reexport: bool,
}

/// A path in code (`crate::a::f`, `y::g`): the module scope it is in, its segments, its line.
pub type CodePath = (Vec<String>, Vec<String>, usize);

/// What the crate's files take from each other.
pub struct Crate<'a> {
    pub files: &'a [Source],
    pub modules: BTreeMap<Vec<String>, usize>,
    pub imports: Vec<Vec<Import>>,
}

/// Reads a use tree from `t[*i]` on, under `prefix`, into `out` as (path, bound name, line).
pub fn use_tree(t: &[(Tok, usize)], i: &mut usize, mut prefix: Vec<String>, out: &mut Vec<Import>) {
    loop {
        let Some((tok, line)) = t.get(*i) else { return };
        match tok {
            Tok::Sep => *i += 1,
            Tok::Ident(s) => {
                prefix.push(s.clone());
                *i += 1;
                if matches!(t.get(*i), Some((Tok::Sep, _))) {
                    *i += 1;
                    continue;
                }
                let mut name = prefix.last().cloned();
                if prefix.last().map(String::as_str) == Some("self") {
                    prefix.pop();
                    name = prefix.last().cloned();
                }
                if ident(t, *i) == Some("as") {
                    name = ident(t, *i + 1).map(String::from);
                    *i += 2;
                }
                let (path, line) = (prefix, *line);
                out.push(Import {
                    scope: Vec::new(),
                    path,
                    name,
                    line,
                    reexport: false,
                });
                return;
            }
            Tok::Open => {
                *i += 1;
                while !matches!(t.get(*i), None | Some((Tok::Close, _))) {
                    use_tree(t, i, prefix.clone(), out);
                    if matches!(t.get(*i), Some((Tok::Comma, _))) {
                        *i += 1;
                    }
                }
                *i += 1;
                return;
            }
            Tok::Star => {
                let line = *line;
                *i += 1;
                out.push(Import {
                    scope: Vec::new(),
                    path: prefix,
                    name: None,
                    line,
                    reexport: false,
                });
                return;
            }
            _ => return,
        }
    }
}

/// Walks a file: its `use` leaves and the paths in its code, each with the module scope it is
/// in (inline `mod name { … }` blocks, such as tests, nest the scope).
pub fn walk(file: &Source) -> (Vec<Import>, Vec<CodePath>) {
    let t = tokens(&file.text);
    let module = module_of(&file.path);
    let (mut imports, mut paths) = (Vec::new(), Vec::new());
    let mut scopes: Vec<(String, usize)> = Vec::new();
    let (mut depth, mut i) = (0usize, 0);
    let scope = |scopes: &[(String, usize)]| {
        let mut s = module.clone();
        s.extend(scopes.iter().map(|(name, _)| name.clone()));
        s
    };
    while i < t.len() {
        match &t[i].0 {
            Tok::Open => depth += 1,
            Tok::Close => {
                depth = depth.saturating_sub(1);
                if scopes.last().is_some_and(|(_, d)| *d == depth) {
                    scopes.pop();
                }
            }
            Tok::Ident(w) if w == "mod" && matches!(t.get(i + 2), Some((Tok::Open, _))) => {
                // Tests may reach across their folder: what they use draws no arrow.
                if is_test_module(&t, i) {
                    i = past_block(&t, i + 2);
                    continue;
                }
                if let Some(name) = ident(&t, i + 1) {
                    scopes.push((name.to_string(), depth));
                }
            }
            Tok::Ident(w) if w == "use" => {
                let reexport = i > 0 && is_visibility(&t, i - 1);
                let mut leaves = Vec::new();
                i += 1;
                use_tree(&t, &mut i, Vec::new(), &mut leaves);
                for mut leaf in leaves {
                    (leaf.scope, leaf.reexport) = (scope(&scopes), reexport);
                    imports.push(leaf);
                }
                continue;
            }
            // `pub(in crate::x)` names where an item is visible, not something it uses.
            Tok::Ident(w)
                if w == "pub"
                    && matches!(t.get(i + 1), Some((Tok::Other('('), _)))
                    && ident(&t, i + 2) == Some("in") =>
            {
                i += 3;
                while matches!(t.get(i), Some((Tok::Ident(_) | Tok::Sep, _))) {
                    i += 1;
                }
                continue;
            }
            Tok::Ident(w) if i == 0 || !matches!(t[i - 1].0, Tok::Sep | Tok::Other('.')) => {
                let mut segs = vec![w.clone()];
                let mut j = i + 1;
                while matches!(t.get(j), Some((Tok::Sep, _))) {
                    match ident(&t, j + 1) {
                        Some(s) => segs.push(s.to_string()),
                        None => break,
                    }
                    j += 2;
                }
                if segs.len() > 1 {
                    paths.push((scope(&scopes), segs, t[i].1));
                    i = j;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    (imports, paths)
}

/// Whether the `mod` at `i` carries `#[cfg(test)]` (before an optional visibility).
pub fn is_test_module(t: &[(Tok, usize)], i: usize) -> bool {
    let mut k = i;
    if k >= 1 && ident(t, k - 1) == Some("pub") {
        k -= 1;
    } else if k >= 4 && t[k - 1].0 == Tok::Other(')') && ident(t, k - 4) == Some("pub") {
        k -= 4;
    }
    k >= 6
        && t[k - 1].0 == Tok::Other(']')
        && ident(t, k - 3) == Some("test")
        && ident(t, k - 5) == Some("cfg")
}

/// The index just past the block that opens at `open`.
pub fn past_block(t: &[(Tok, usize)], open: usize) -> usize {
    let mut depth = 0usize;
    for (j, (tok, _)) in t.iter().enumerate().skip(open) {
        match tok {
            Tok::Open => depth += 1,
            Tok::Close => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
    }
    t.len()
}

/// Whether the tokens ending at `i` are a visibility (`pub`, `pub(crate)`, `pub(super)`).
pub fn is_visibility(t: &[(Tok, usize)], i: usize) -> bool {
    ident(t, i) == Some("pub")
        || (t[i].0 == Tok::Other(')') && i >= 3 && ident(t, i - 3) == Some("pub"))
}

impl<'a> Crate<'a> {
    pub fn new(files: &'a [Source]) -> Self {
        let mut modules = BTreeMap::new();
        for (n, f) in files.iter().enumerate() {
            if f.path != "src/main.rs" {
                modules.insert(module_of(&f.path), n);
            }
        }
        let imports = files.iter().map(|f| walk(f).0).collect();
        Crate {
            files,
            modules,
            imports,
        }
    }

    /// Absolute form of `segs` seen from module `scope` of the file `path`: from `crate`,
    /// `self`, `super` or a child module of the scope; `None` when it names another crate.
    fn absolute(&self, path: &str, scope: &[String], segs: &[String]) -> Option<Vec<String>> {
        let mut base = scope.to_vec();
        let mut rest = segs;
        match rest.first().map(String::as_str) {
            Some("crate") => (base, rest) = (Vec::new(), &rest[1..]),
            Some("hlgate") if path == "src/main.rs" => (base, rest) = (Vec::new(), &rest[1..]),
            Some("self") => rest = &rest[1..],
            Some("super") => {
                while rest.first().map(String::as_str) == Some("super") {
                    base.pop();
                    rest = &rest[1..];
                }
            }
            Some(first) => {
                let mut child = scope.to_vec();
                child.push(first.to_string());
                if !self.modules.contains_key(&child) {
                    return None;
                }
            }
            None => return None,
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }

    /// The absolute path an import of file `n` in `scope` binds to `name`, if any.
    fn alias(&self, n: usize, scope: &[String], name: &str) -> Option<Vec<String>> {
        let path = &self.files[n].path;
        (0..=scope.len()).rev().find_map(|k| {
            self.imports[n]
                .iter()
                .filter(|im| im.scope == scope[..k] && im.name.as_deref() == Some(name))
                .find_map(|im| self.absolute(path, &im.scope, &im.path))
        })
    }

    /// The file defining what `abs` names, and whether it named a whole module.
    fn resolve(&self, abs: &[String], hops: usize) -> Option<(usize, bool)> {
        let k = (0..=abs.len())
            .rev()
            .find(|k| self.modules.contains_key(&abs[..*k]))?;
        let n = self.modules[&abs[..k]];
        if k == abs.len() {
            return Some((n, true));
        }
        match self.alias(n, &abs[..k], &abs[k]) {
            Some(mut target) if hops < 8 && target != abs[..=k] => {
                target.extend(abs[k + 1..].iter().cloned());
                self.resolve(&target, hops + 1).or(Some((n, false)))
            }
            _ => Some((n, false)),
        }
    }

    /// Arrows between files: (from, to) with the line and the name of the first evidence.
    pub fn arrows(&self) -> BTreeMap<(usize, usize), (usize, String)> {
        let mut arrows = BTreeMap::new();
        for (n, file) in self.files.iter().enumerate() {
            let module = module_of(&file.path);
            let (imports, paths) = walk(file);
            let mut found = Vec::new();
            for im in &imports {
                let Some(abs) = self.absolute(&file.path, &im.scope, &im.path) else {
                    continue;
                };
                let Some((to, _)) = self.resolve(&abs, 0) else {
                    continue;
                };
                let front_door =
                    im.reexport && module_of(&self.files[to].path).starts_with(&module);
                if !front_door {
                    found.push((to, im.line, im.path.join("::")));
                }
            }
            for (scope, segs, line) in &paths {
                let abs = self.absolute(&file.path, scope, segs).or_else(|| {
                    let mut a = self.alias(n, scope, &segs[0])?;
                    a.extend(segs[1..].iter().cloned());
                    Some(a)
                });
                if let Some((to, _)) = abs.and_then(|a| self.resolve(&a, 0)) {
                    found.push((to, *line, segs.join("::")));
                }
            }
            for (to, line, what) in found {
                if to != n {
                    arrows.entry((n, to)).or_insert((line, what));
                }
            }
        }
        arrows
    }
}

/// The first cycle of the graph `edges` over `nodes`, as its nodes in order.
pub fn cycle<N: Ord + Clone>(nodes: &BTreeSet<N>, edges: &BTreeSet<(N, N)>) -> Option<Vec<N>> {
    fn visit<N: Ord + Clone>(
        n: &N,
        edges: &BTreeSet<(N, N)>,
        done: &mut BTreeSet<N>,
        stack: &mut Vec<N>,
    ) -> Option<Vec<N>> {
        if let Some(at) = stack.iter().position(|s| s == n) {
            return Some(stack[at..].to_vec());
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.clone());
        for (_, to) in edges.iter().filter(|(from, _)| from == n) {
            if let Some(c) = visit(to, edges, done, stack) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.clone());
        None
    }
    let mut done = BTreeSet::new();
    nodes
        .iter()
        .find_map(|n| visit(n, edges, &mut done, &mut Vec::new()))
}

/// The top-level module of a file (`src/http/admin.rs`: `http`; `src/main.rs`: `main`).
pub fn top(path: &str) -> String {
    match path {
        "src/main.rs" => "main".into(),
        _ => module_of(path)
            .first()
            .cloned()
            .unwrap_or_else(|| "lib".into()),
    }
}

/// The folder a file belongs to (`src/http/admin.rs` and `src/http.rs`: `src/http`), if any.
pub fn folder(path: &str, folders: &BTreeSet<String>) -> Option<String> {
    let dir = Path::new(path).parent()?.to_str()?.to_string();
    let own = path.trim_end_matches(".rs").to_string();
    [dir, own].into_iter().find(|d| folders.contains(d))
}

/// A cycle, said with the arrows that make it (file, line, the path that ties it).
pub fn explain(ring: &[String], ties: &BTreeMap<(String, String), String>) -> String {
    let mut text = format!("cycle: {} -> {}", ring.join(" -> "), ring[0]);
    for (k, from) in ring.iter().enumerate() {
        let to = &ring[(k + 1) % ring.len()];
        let why = ties
            .get(&(from.clone(), to.clone()))
            .cloned()
            .unwrap_or_default();
        text.push_str(&format!("\n  {from} -> {to}: {why}"));
    }
    text
}

/// The import cycle between top-level modules, if there is one.
pub fn module_cycle(files: &[Source]) -> Option<String> {
    let krate = Crate::new(files);
    let mut ties = BTreeMap::new();
    for ((from, to), (line, what)) in krate.arrows() {
        let (a, b) = (top(&files[from].path), top(&files[to].path));
        if a != b && a != "lib" {
            let why = format!("{}:{line} {what}", files[from].path);
            ties.entry((a, b)).or_insert(why);
        }
    }
    let nodes = files.iter().map(|f| top(&f.path)).collect();
    let edges = ties.keys().cloned().collect();
    cycle(&nodes, &edges).map(|ring| explain(&ring, &ties))
}

/// The import cycle between the files of each folder under `src/` named in `only` (all when
/// empty).
pub fn file_cycles(files: &[Source], only: &[&str]) -> Vec<String> {
    let folders: BTreeSet<String> = files
        .iter()
        .filter_map(|f| Some(Path::new(&f.path).parent()?.to_str()?.to_string()))
        .filter(|d| d != "src")
        .filter(|d| only.is_empty() || only.contains(&d.as_str()))
        .collect();
    let krate = Crate::new(files);
    let arrows = krate.arrows();
    let mut found = Vec::new();
    for dir in &folders {
        let mine = |n: usize| folder(&files[n].path, &folders).as_ref() == Some(dir);
        let mut ties = BTreeMap::new();
        for ((from, to), (line, what)) in &arrows {
            if mine(*from) && mine(*to) {
                let (a, b) = (files[*from].path.clone(), files[*to].path.clone());
                ties.insert((a, b), format!("line {line} {what}"));
            }
        }
        let nodes = (0..files.len())
            .filter(|n| mine(*n))
            .map(|n| files[n].path.clone())
            .collect();
        let edges = ties.keys().cloned().collect();
        found.extend(cycle(&nodes, &edges).map(|ring| explain(&ring, &ties)));
    }
    found
}
