//! Reading a source file: tokens without comments and strings, and the crates it names.

/// External crates and the only places that may name them.
pub const ROOMS: &[(&str, &[&str])] = &[
    ("sled", &["src/store/"]),
    ("lapin", &["src/publish/"]),
    ("actix", &["src/http/"]),
    // The alert webhook and the OTLP collector are no HighLevel endpoints: each sender is a
    // room of its own.
    (
        "reqwest",
        &[
            "src/highlevel/",
            "src/cli/",
            "src/health/notify.rs",
            "src/traces/export.rs",
        ],
    ),
];

/// A file of the crate: its path from the crate root (`src/http/admin.rs`) and its text.
pub struct Source {
    pub path: String,
    pub text: String,
}

pub fn source(path: &str, text: &str) -> Source {
    Source {
        path: path.into(),
        text: text.into(),
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
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
pub fn tokens(text: &str) -> Vec<(Tok, usize)> {
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

pub fn ident(t: &[(Tok, usize)], i: usize) -> Option<&str> {
    match t.get(i) {
        Some((Tok::Ident(s), _)) => Some(s),
        _ => None,
    }
}

/// Each external crate a file names outside its room: (crate, line).
pub fn trespasses(file: &Source) -> Vec<(&'static str, usize)> {
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
pub fn module_of(path: &str) -> Vec<String> {
    let rel = path.trim_start_matches("src/").trim_end_matches(".rs");
    let mut m: Vec<String> = rel.split('/').map(String::from).collect();
    if matches!(m.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        m.pop();
    }
    m
}
