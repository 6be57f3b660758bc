//! What hlgate keeps on disk is for its own user only.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use crate::durability::{process_env, spawn_process};
use crate::helpers::*;

/// Every path under `dir` whose mode lets group or others in.
fn open_to_others(dir: &Path, out: &mut Vec<String>) {
    for item in std::fs::read_dir(dir).unwrap() {
        let path = item.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.permissions().mode() & 0o077 != 0 {
            out.push(format!(
                "{} {:o}",
                path.display(),
                meta.permissions().mode()
            ));
        }
        if meta.is_dir() {
            open_to_others(&path, out);
        }
    }
}

#[tokio::test]
async fn the_data_dir_and_its_files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Made by hand, open to everyone, as an older version left it.
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exchange = unique("test.files");
    let (ed, rsa) = (Signer::ed25519(), Signer::rsa());
    let env = process_env(dir.path(), &exchange, &ed, &rsa);
    let mut process = spawn_process(&env, Stdio::null());
    process.wait_ready().await;
    for _ in 0..3 {
        let (_, body) = contact_event("L");
        assert_eq!(process.post_signed(&ed, body).await.status(), 200);
    }
    process.signal("TERM");
    assert!(process.child.wait().unwrap().success());

    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the data dir");
    let mut open = Vec::new();
    open_to_others(&data, &mut open);
    assert!(open.is_empty(), "readable by others: {open:?}");
    assert!(
        data.join("token.key").exists(),
        "the test looked at a full data dir"
    );
}
