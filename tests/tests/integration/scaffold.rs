//! `mhero plugin new`: each kind's folder, as made, builds and passes
//! `mhero plugin test` unchanged (what the SDK guide tells authors to run).

use std::path::Path;
use std::process::Command;

use super::mhero;

/// Runs a folder's `build.sh` as an author would: a shell, nothing of this
/// test's cargo environment (its target folder lock, its flags).
fn build(folder: &Path) {
    let mut cmd = Command::new("sh");
    cmd.arg(folder.join("build.sh"));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if (key.starts_with("CARGO") && key != "CARGO_HOME")
            || key.starts_with("RUST") && key != "RUSTUP_HOME"
        {
            cmd.env_remove(&key);
        }
    }
    // Shared by the runs on one machine, so the SDK's dependencies build once.
    cmd.env(
        "MHERO_PLUGIN_TARGET_DIR",
        std::env::temp_dir().join("mhero-plugin-new-target"),
    );
    let out = cmd.output().expect("run sh");
    assert!(
        out.status.success(),
        "{} failed: {}",
        folder.join("build.sh").display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_new_rust_plugin_of_each_kind_builds_and_passes_its_fixture() {
    let dir = tempfile::tempdir().unwrap();
    for kind in ["classifier", "connector", "fhir-mapper"] {
        let name = format!("my-{kind}");
        let out = mhero()
            .args(["plugin", "new", kind, &name, "--lang", "rust", "--dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let folder = dir.path().join(&name);
        build(&folder);
        let out = mhero()
            .args(["plugin", "test"])
            .arg(folder.join(format!("{name}.wasm")))
            .arg("--fixture")
            .arg(folder.join("tests/fixtures"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("PASS") && !text.contains("FAIL"),
            "{kind}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A name that is not one, or a folder that exists, is refused.
    let out = mhero()
        .args(["plugin", "new", "classifier", "My_Plugin", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lower-case"));
    let out = mhero()
        .args(["plugin", "new", "classifier", "my-classifier", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists already"));
}
