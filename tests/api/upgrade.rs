//! A data dir written by the release before the event log (`tests/fixtures/previous-release/store`:
//! five events and an array of three posted to that binary with the broker away, then stopped)
//! opens with this one: every stored event is published once, byte for byte, in order, and new
//! events follow with the next seqs.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::durability::{process_env, spawn_process};
use crate::helpers::*;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for item in std::fs::read_dir(from).unwrap() {
        let item = item.unwrap();
        let target = to.join(item.file_name());
        if item.file_type().unwrap().is_dir() {
            copy_dir(&item.path(), &target);
        } else {
            std::fs::copy(item.path(), &target).unwrap();
        }
    }
}

/// The bodies the fixture holds, one per seq: an array's elements each on their own.
fn stored_bodies(fixture: &Path) -> Vec<Vec<u8>> {
    let mut bodies = Vec::new();
    for i in 1..=6 {
        let bytes = std::fs::read(fixture.join(format!("ev/{i}.json"))).unwrap();
        match serde_json::from_slice::<serde_json::Value>(&bytes).unwrap() {
            serde_json::Value::Array(elements) => {
                bodies.extend(elements.iter().map(|e| serde_json::to_vec(e).unwrap()))
            }
            _ => bodies.push(bytes),
        }
    }
    bodies
}

#[tokio::test]
async fn a_data_dir_of_the_previous_release_is_published_and_goes_on() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/previous-release");
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture.join("store"), &dir.path().join("data"));
    let exchange = unique("test.upgrade");
    let (ed, rsa) = (Signer::ed25519(), Signer::rsa());
    let env = process_env(dir.path(), &exchange, &ed, &rsa);
    let mut tap = Tap::bind(&exchange, "#").await;

    let process = spawn_process(&env, Stdio::null());
    process.wait_ready().await;
    let want = stored_bodies(&fixture);
    let got = tap.take(want.len()).await;
    let bodies: Vec<Vec<u8>> = got.iter().map(|d| d.data.clone()).collect();
    assert_eq!(bodies, want);
    let seqs: Vec<String> = got
        .iter()
        .map(|d| header(d, "x-hl-sequence").unwrap())
        .collect();
    assert_eq!(seqs, ["1", "2", "3", "4", "5", "6", "7", "8"]);
    tap.assert_quiet(Duration::from_millis(500)).await;

    // New events go to the event log, after the old ones.
    let (id, body) = contact_event("locNew");
    let answer = process.post_signed(&ed, body.clone()).await;
    assert_eq!(answer.status(), 200);
    let d = tap.take(1).await.remove(0);
    assert_eq!((message_id(&d), d.data.clone()), (id, body));
    assert_eq!(header(&d, "x-hl-sequence").as_deref(), Some("9"));
    assert!(dir
        .path()
        .join(format!("data/events/{:020}/segment", 9))
        .exists());
    process.signal("TERM");
    tap.cleanup(&exchange).await;
}
