//! The crate's rooms and arrows, read from `src/`: each of sled, lapin, actix and reqwest is named
//! only in its room, and there is no import cycle, neither between top-level modules nor between
//! the files of one folder.
//!
//! An arrow goes from a file to the file that defines a name it takes: `use` trees and paths in
//! code (`crate::…`, `super::…`, or through a name a `use` brought in) are followed, and a name a
//! `mod.rs` re-exports counts as taken from the file that defines it. A folder's root file
//! re-exporting its own children is not an arrow: it is the folder's front door.

mod graph;
mod source;

use std::path::Path;

use graph::*;
use source::*;

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
fn only_the_highlevel_client_the_cli_and_the_alert_sender_name_reqwest() {
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
