//! Building an example with the profile of the test binary that asks for it.

use std::path::Path;
use std::process::Command;

/// Builds `examples/<name>.rs` with the profile of this test binary and returns its path.
pub fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => "dev",
    };
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--locked", "--example", name])
        .args(["--profile", profile])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success(), "cargo build --example {name}");
    profile_dir.join("examples").join(name)
}
