//! Integration tests: the real `mhero` binary and the real broker over
//! their real interfaces. One test binary; one module per area.
//!
//! The binary is the one `cargo test --workspace` builds next to this
//! test (`target/<profile>/mhero`).

mod crash;
mod store;

use std::path::PathBuf;
use std::process::Command;

/// The `mhero` binary of this build.
pub fn mhero_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/integration-<hash> → target/<profile>/mhero
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let bin = profile_dir.join(format!("mhero{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (which builds it) or `cargo build -p mhero` first",
        bin.display()
    );
    bin
}

pub fn mhero() -> Command {
    let mut cmd = Command::new(mhero_bin());
    cmd.env("MHERO_LOG", "warn");
    cmd
}

/// `mhero status --json [extra…] --data-dir <data>`, parsed.
pub fn status_json(data: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let out = mhero()
        .args(["status", "--json"])
        .args(extra)
        .arg("--data-dir")
        .arg(data)
        .output()
        .expect("run mhero status");
    assert!(
        out.status.success(),
        "mhero status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status prints JSON")
}
