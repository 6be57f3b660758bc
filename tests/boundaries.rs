//! The crate's rooms and arrows, read from `src/`: each of sled, lapin, actix and reqwest is named
//! only in its room, and there is no import cycle, neither between top-level modules nor between
//! the files of one folder.
//!
//! An arrow goes from a file to the file that defines a name it takes: `use` trees and paths in
//! code (`crate::…`, `super::…`, or through a name a `use` brought in) are followed, and a name a
//! `mod.rs` re-exports counts as taken from the file that defines it. A folder's root file
//! re-exporting its own children is not an arrow: it is the folder's front door.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// External crates and the only places that may name them.
const ROOMS: &[(&str, &[&str])] = &[
    ("sled", &["src/store/"]),
    ("lapin", &["src/publish/"]),
    ("actix", &["src/http/"]),
    ("reqwest", &["src/highlevel/", "src/cli.rs"]),
];

/// A file of the crate: its path from the crate root (`src/http/admin.rs`) and its text.
struct Source {
    path: String,
    text: String,
}

fn source(path: &str, text: &str) -> Source {
    Source {
        path: path.into(),
        text: text.into(),
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    Sep,
    Open,
    Close,
    Semi,
    Comma,
    Star,
    Other(char),
}

/// Rust tokens enough for paths, with their line; comments, strings, chars and lifetimes dropped.
fn tokens(text: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = text.chars().collect();
    let (mut out, mut i, mut line) = (Vec::new(), 0, 1);
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            loop {
                match (at(i), at(i + 1)) {
                    ('\0', _) => break,
                    ('/', '*') => (depth, i) = (depth + 1, i + 2),
                    ('*', '/') => {
                        (depth, i) = (depth - 1, i + 2);
                        if depth == 0 {
                            break;
                        }
                    }
                    ('\n', _) => (line, i) = (line + 1, i + 1),
                    _ => i += 1,
                }
            }
        } else if ch == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                line += usize::from(at(i) == '\n');
                i += 1;
            }
            i += 1;
        } else if ch == '\'' {
            if at(i + 1) == '\\' {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                // A lifetime or a label: its name is no path.
                i += 1;
                while at(i).is_alphanumeric() || at(i) == '_' {
                    i += 1;
                }
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while at(i).is_alphanumeric() || at(i) == '_' {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let raw_string = matches!(word.as_str(), "r" | "br") && matches!(at(i), '"' | '#');
            if raw_string && !(at(i) == '#' && (at(i + 1).is_alphabetic() || at(i + 1) == '_')) {
                let mut hashes = 0;
                while at(i) == '#' {
                    (hashes, i) = (hashes + 1, i + 1);
                }
                i += 1;
                while i < c.len() && !(c[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#')) {
                    line += usize::from(c[i] == '\n');
                    i += 1;
                }
                i += 1 + hashes;
            } else if word == "r" && at(i) == '#' {
                // A raw identifier (`r#type`): the next word is the identifier.
                i += 1;
            } else if matches!(word.as_str(), "b" | "c") && matches!(at(i), '"' | '\'') {
                // A byte string or byte char: the literal follows.
            } else {
                out.push((Tok::Ident(word), line));
            }
        } else if ch.is_ascii_digit() {
            while at(i).is_alphanumeric() || at(i) == '_' {
                i += 1;
            }
        } else {
            let tok = match ch {
                ':' if at(i + 1) == ':' => {
                    i += 1;
                    Tok::Sep
                }
                '{' => Tok::Open,
                '}' => Tok::Close,
                ';' => Tok::Semi,
                ',' => Tok::Comma,
                '*' => Tok::Star,
                other => Tok::Other(other),
            };
            out.push((tok, line));
            i += 1;
        }
    }
    out
}

fn ident(t: &[(Tok, usize)], i: usize) -> Option<&str> {
    match t.get(i) {
        Some((Tok::Ident(s), _)) => Some(s),
        _ => None,
    }
}

/// Each external crate a file names outside its room: (crate, line).
fn trespasses(file: &Source) -> Vec<(&'static str, usize)> {
    let t = tokens(&file.text);
    let mut found = Vec::new();
    for (i, (tok, line)) in t.iter().enumerate() {
        let Tok::Ident(word) = tok else { continue };
        let prev = i.checked_sub(1).map(|p| &t[p].0);
        let rooted = !matches!(prev, Some(Tok::Sep | Tok::Other('.')));
        let as_path = matches!(t.get(i + 1), Some((Tok::Sep, _)))
            || matches!(prev, Some(Tok::Ident(p)) if p == "use" || p == "crate");
        for (name, rooms) in ROOMS {
            let names_it = word == name || word.starts_with(&format!("{name}_"));
            if names_it && rooted && as_path && !rooms.iter().any(|r| file.path.starts_with(r)) {
                found.push((*name, *line));
            }
        }
    }
    found
}

/// A file's module path: `src/http/admin.rs` is `http::admin`, `src/http/mod.rs` is `http`.
fn module_of(path: &str) -> Vec<String> {
    let rel = path.trim_start_matches("src/").trim_end_matches(".rs");
    let mut m: Vec<String> = rel.split('/').map(String::from).collect();
    if matches!(m.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        m.pop();
    }
    m
}

/// One `use` leaf: the absolute path it names and the name it binds in its scope.
struct Import {
    scope: Vec<String>,
    path: Vec<String>,
    name: Option<String>,
    line: usize,
    reexport: bool,
}

/// A path in code (`crate::a::f`, `y::g`): the module scope it is in, its segments, its line.
type CodePath = (Vec<String>, Vec<String>, usize);

/// What the crate's files take from each other.
struct Crate<'a> {
    files: &'a [Source],
    modules: BTreeMap<Vec<String>, usize>,
    imports: Vec<Vec<Import>>,
}

/// Reads a use tree from `t[*i]` on, under `prefix`, into `out` as (path, bound name, line).
fn use_tree(t: &[(Tok, usize)], i: &mut usize, mut prefix: Vec<String>, out: &mut Vec<Import>) {
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
fn walk(file: &Source) -> (Vec<Import>, Vec<CodePath>) {
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
fn is_test_module(t: &[(Tok, usize)], i: usize) -> bool {
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
fn past_block(t: &[(Tok, usize)], open: usize) -> usize {
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
fn is_visibility(t: &[(Tok, usize)], i: usize) -> bool {
    ident(t, i) == Some("pub")
        || (t[i].0 == Tok::Other(')') && i >= 3 && ident(t, i - 3) == Some("pub"))
}

impl<'a> Crate<'a> {
    fn new(files: &'a [Source]) -> Self {
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
    fn arrows(&self) -> BTreeMap<(usize, usize), (usize, String)> {
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
fn cycle<N: Ord + Clone>(nodes: &BTreeSet<N>, edges: &BTreeSet<(N, N)>) -> Option<Vec<N>> {
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
fn top(path: &str) -> String {
    match path {
        "src/main.rs" => "main".into(),
        _ => module_of(path)
            .first()
            .cloned()
            .unwrap_or_else(|| "lib".into()),
    }
}

/// The folder a file belongs to (`src/http/admin.rs` and `src/http.rs`: `src/http`), if any.
fn folder(path: &str, folders: &BTreeSet<String>) -> Option<String> {
    let dir = Path::new(path).parent()?.to_str()?.to_string();
    let own = path.trim_end_matches(".rs").to_string();
    [dir, own].into_iter().find(|d| folders.contains(d))
}

/// A cycle, said with the arrows that make it (file, line, the path that ties it).
fn explain(ring: &[String], ties: &BTreeMap<(String, String), String>) -> String {
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
fn module_cycle(files: &[Source]) -> Option<String> {
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
fn file_cycles(files: &[Source], only: &[&str]) -> Vec<String> {
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

/// Every `.rs` file under `src/`.
fn crate_sources() -> Vec<Source> {
    fn read(dir: &Path, root: &Path, out: &mut Vec<Source>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.path());
        for entry in entries {
            let path = entry.path();
            if path.is_dir() {
                read(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(root).unwrap().to_str().unwrap();
                out.push(source(rel, &std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    read(&root.join("src"), root, &mut out);
    assert!(out.len() > 10, "src/ was not read");
    out
}

/// Fails naming every file and line under `under` that names `krate` outside its room.
fn assert_room(krate: &str, under: &str) {
    let mut found = Vec::new();
    for file in crate_sources().iter().filter(|f| f.path.starts_with(under)) {
        for (name, line) in trespasses(file) {
            if name == krate {
                found.push(format!("{}:{line} names {name}", file.path));
            }
        }
    }
    let rooms = ROOMS.iter().find(|(n, _)| *n == krate).unwrap().1;
    assert!(
        found.is_empty(),
        "only {rooms:?} may name {krate}:\n{}",
        found.join("\n")
    );
}

#[test]
fn only_the_store_names_sled() {
    assert_room("sled", "src/");
}

#[test]
fn only_publish_names_lapin() {
    assert_room("lapin", "src/");
}

#[test]
fn only_http_names_actix() {
    assert_room("actix", "src/");
}

#[test]
fn only_the_highlevel_client_and_the_cli_name_reqwest() {
    assert_room("reqwest", "src/");
}

#[test]
fn http_names_no_crate_of_another_room() {
    for (krate, _) in ROOMS {
        assert_room(krate, "src/http/");
    }
}

#[test]
fn top_level_modules_form_no_cycle() {
    if let Some(c) = module_cycle(&crate_sources()) {
        panic!("{c}");
    }
}

#[test]
fn the_files_of_http_form_no_cycle() {
    let found = file_cycles(&crate_sources(), &["src/http"]);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_files_of_each_folder_form_no_cycle() {
    let found = file_cycles(&crate_sources(), &[]);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

// ---- the checks themselves ------------------------------------------------------------------

#[test]
fn a_crate_named_outside_its_room_is_reported_with_its_line() {
    let file = source("src/http/admin.rs", "//! admin\n\nuse sled::Db;\n");
    assert_eq!(trespasses(&file), [("sled", 3)]);
    let file = source(
        "src/startup.rs",
        "fn f() { let _ = actix_web::web::Data::new(1); }",
    );
    assert_eq!(trespasses(&file), [("actix", 1)]);
    let inside = source("src/store/writer.rs", "use sled::Db;");
    assert!(trespasses(&inside).is_empty());
}

#[test]
fn comments_strings_and_fields_do_not_name_a_crate() {
    let text = "// sled::Db\n/* lapin::Channel */\nlet s = \"reqwest::get\";\n\
                let r = r#\"sled::x\"#;\nlet n = store.sled; let c = 'a'; fn f<'a>() {}";
    assert!(trespasses(&source("src/http/public.rs", text)).is_empty());
}

#[test]
fn a_cycle_between_two_modules_is_found_through_a_path_in_code() {
    let files = [
        source("src/lib.rs", "pub mod a; pub mod b;"),
        source("src/a.rs", "use crate::b::B;\npub fn g() {}"),
        source("src/b.rs", "pub struct B;\nfn f() { crate::a::g() }"),
    ];
    let found = module_cycle(&files).expect("a cycle");
    assert!(found.starts_with("cycle: a -> b -> a"), "{found}");
    assert!(found.contains("src/b.rs:2 crate::a::g"), "{found}");
    let one_way = [
        source("src/a.rs", "use crate::b::B;"),
        source("src/b.rs", "pub struct B;"),
    ];
    assert_eq!(module_cycle(&one_way), None);
}

#[test]
fn a_name_taken_from_mod_rs_counts_as_taken_from_where_it_is_defined() {
    let files = [
        source(
            "src/a/mod.rs",
            "mod x;\nmod y;\npub use x::X;\npub use y::{self, Y as Why};",
        ),
        source("src/a/x.rs", "use super::y::Y;\npub struct X;"),
        source("src/a/y.rs", "use super::X;\npub struct Y;"),
    ];
    let found = file_cycles(&files, &[]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("src/a/x.rs -> src/a/y.rs"),
        "{}",
        found[0]
    );
    assert!(
        found[0].contains("src/a/y.rs -> src/a/x.rs: line 1 super::X"),
        "{}",
        found[0]
    );
}

#[test]
fn a_module_alias_is_followed_and_test_modules_draw_no_arrow() {
    let inline = |attr: &str| {
        [
            source("src/a/mod.rs", "pub mod x;\npub mod y;"),
            source("src/a/x.rs", "use super::y;\nfn f() { y::g() }"),
            source(
                "src/a/y.rs",
                &format!(
                    "pub fn g() {{}}\n{attr}\npub(super) mod inner {{\n    use super::*;\n    \
                     use super::super::x;\n}}"
                ),
            ),
        ]
    };
    let found = file_cycles(&inline(""), &[]);
    assert_eq!(
        found.len(),
        1,
        "an inline module's import counts: {found:?}"
    );
    let found = file_cycles(&inline("#[cfg(test)]"), &[]);
    assert!(
        found.is_empty(),
        "a test module's import does not: {found:?}"
    );
}

#[test]
fn the_crate_is_read_and_has_arrows() {
    let files = crate_sources();
    let krate = Crate::new(&files);
    let arrows = krate.arrows();
    let named = |from: &str, to: &str| {
        arrows
            .keys()
            .any(|(a, b)| files[*a].path == from && files[*b].path == to)
    };
    assert!(named("src/startup.rs", "src/http/server.rs"));
    assert!(named("src/http/admin.rs", "src/http/state.rs"));
}
