//! Embeds `schemas/` in the binary: writes `$OUT_DIR/schemas.rs` with `SCHEMA_INDEX` (the text of
//! `schemas/index.json`) and `SCHEMA_FILES` (every `schemas/highlevel/*.json` by its path relative
//! to `schemas/`), each an `include_str!`, so a release binary or image needs no schema files.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=schemas");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let schemas = manifest.join("schemas");

    let mut files: Vec<PathBuf> = std::fs::read_dir(schemas.join("highlevel"))
        .expect("schemas/highlevel is readable")
        .map(|entry| entry.expect("schemas/highlevel entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    // Sorted, so the generated file (and the binary) does not depend on directory order.
    files.sort();

    let mut out = String::new();
    writeln!(
        out,
        "/// The text of `schemas/index.json`: event type -> file relative to `schemas/`.\n\
         pub static SCHEMA_INDEX: &str = include_str!({:?});",
        path_text(&schemas.join("index.json"))
    )
    .unwrap();
    out.push_str(
        "/// Every embedded schema file: (path relative to `schemas/`, text).\n\
         pub static SCHEMA_FILES: &[(&str, &str)] = &[\n",
    );
    for file in &files {
        let relative = file
            .strip_prefix(&schemas)
            .expect("inside schemas/")
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        writeln!(
            out,
            "    ({relative:?}, include_str!({:?})),",
            path_text(file)
        )
        .unwrap();
    }
    out.push_str("];\n");

    let target =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it")).join("schemas.rs");
    std::fs::write(&target, out).expect("OUT_DIR is writable");
}

fn path_text(path: &Path) -> String {
    path.to_str()
        .expect("the schema paths are UTF-8")
        .to_string()
}
