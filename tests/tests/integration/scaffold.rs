//! `mhero plugin new`: each kind's folder, as made, builds and passes
//! `mhero plugin test` unchanged (what the SDK guide tells authors to run).

use std::path::Path;
use std::process::Command;

use super::mhero;

/// A command run in a plugin folder as its author would: nothing of this
/// test's cargo environment (its target folder lock, its flags).
fn as_author(program: &str, folder: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(folder);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if (key.starts_with("CARGO") && key != "CARGO_HOME")
            || key.starts_with("RUST") && key != "RUSTUP_HOME"
        {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// Where the runs on one machine build, so the SDK's dependencies build once.
fn shared_target() -> std::path::PathBuf {
    std::env::temp_dir().join("mhero-plugin-new-target")
}

fn run(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a folder's `build.sh`.
fn build(folder: &Path) {
    let mut cmd = as_author("sh", folder);
    cmd.arg("build.sh")
        .env("MHERO_PLUGIN_TARGET_DIR", shared_target());
    run(cmd, &folder.join("build.sh").display().to_string());
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
        // The README's `cargo test`: the same fixtures, natively.
        let mut cmd = as_author("cargo", &folder);
        cmd.args(["test", "--target-dir"]).arg(shared_target());
        let out = run(cmd, "cargo test");
        assert!(
            out.contains("golden_fixtures_pass_natively ... ok") && out.contains("1 passed"),
            "{kind}: {out}"
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
