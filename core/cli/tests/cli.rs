//! The `mhero` binary's argument and config handling. (Having an
//! integration test here also makes `cargo test --workspace` build the
//! binary that `mhero-tests` drives.)

use std::process::Command;

fn mhero() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mhero"))
}

#[test]
fn unknown_config_keys_are_refused_with_the_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mhero.toml");
    std::fs::write(&file, "[store]\ndurabilty = \"sync\"\n").unwrap();
    let out = mhero().arg("config-check").arg(&file).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("durabilty") && err.contains("mhero.toml"),
        "{err}"
    );
}

#[test]
fn the_example_config_checks_out() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("example.toml");
    let out = mhero().arg("config-example").output().unwrap();
    assert!(out.status.success());
    std::fs::write(&file, &out.stdout).unwrap();
    let out = mhero().arg("config-check").arg(&file).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn status_of_a_missing_store_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere");
    let out = mhero()
        .arg("status")
        .arg("--data-dir")
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no store at") && err.contains("nowhere"),
        "{err}"
    );
    assert!(!missing.exists(), "status never creates a store");
}
