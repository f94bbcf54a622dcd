//! Integration tests: the real `mhero` binary and the real broker over
//! their real interfaces. One test binary; one module per area.
//!
//! The binary is the one `cargo test --workspace` builds next to this
//! test (`target/<profile>/mhero`).

mod campaigns;
mod cap;
mod crash;
mod dashboard;
mod faults;
mod fhir_sync;
mod gateway_tls;
mod http_crash;
mod kannel;
mod lab;
mod media;
mod quic;
mod reports;
mod scaffold;
mod sdk_examples;
mod server;
mod store;
mod surveys;
mod telegram;

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
    let mut cmd = mhero();
    cmd.args(["status", "--json"])
        .args(extra)
        .arg("--data-dir")
        .arg(data);
    parsed_status(cmd)
}

/// `mhero --config <config> status --json [extra…]`, parsed.
pub fn status_json_with(config: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let mut cmd = mhero();
    cmd.arg("--config")
        .arg(config)
        .args(["status", "--json"])
        .args(extra);
    parsed_status(cmd)
}

fn parsed_status(mut cmd: Command) -> serde_json::Value {
    let out = cmd.output().expect("run mhero status");
    assert!(
        out.status.success(),
        "mhero status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status prints JSON")
}

/// Waits for `mhero demo`'s banner (it prints it once it dispatches), lets
/// it run for `after`, then kills it with SIGKILL: no destructor runs,
/// nothing is flushed. Panics if it ends by itself first.
pub fn kill_after_banner(mut child: std::process::Child, after: std::time::Duration, round: usize) {
    use std::io::{BufRead, BufReader, Read};
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let banner = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .unwrap_or_else(|_| panic!("round {round}: no banner from mhero demo"));
    assert!(banner.starts_with("mHero demo:"), "{banner}");
    let started = std::time::Instant::now();
    while started.elapsed() < after {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("round {round}: mhero exited early ({status}): {err}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The campaigns of a `status --json` answer that were accepted: a kill
/// between storing a campaign and accepting it leaves it abandoned (never
/// acknowledged, never sent), and the demo then submits it again.
pub fn accepted_campaigns(status: &serde_json::Value) -> Vec<&serde_json::Value> {
    status["campaigns"]
        .as_array()
        .expect("status lists campaigns")
        .iter()
        .filter(|c| c["state"] != "abandoned")
        .collect()
}
