//! Helpers shared by test binaries of several crates. Those of the
//! integration tests alone live in the test binary itself.

/// Whether a test's peer is here (`missing`: why not). If not, says so and
/// the test skips — a failure under `CI=true` or `MHERO_PEERS=1`, where
/// every peer must run.
pub fn peer_present(missing: Option<String>) -> bool {
    let Some(why) = missing else {
        return true;
    };
    let required = std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("MHERO_PEERS").is_ok_and(|v| v == "1");
    assert!(!required, "{why}");
    println!("skipped: {why}");
    false
}

/// The path of a program on `PATH`, if it is there.
pub fn program(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

pub mod examples {
    //! The SDK's Python and JavaScript examples (`sdk/examples`), built
    //! from the package registries as their authors build them.

    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// The examples folder.
    pub fn examples() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/examples")
    }

    /// What building the examples needs, or why it is missing.
    pub fn missing_tools() -> Option<String> {
        let works = |cmd: &str, args: &[&str]| {
            Command::new(cmd)
                .args(args)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        // A venv gets pip through ensurepip, which Debian leaves out of
        // python3 (python3-venv adds it). The examples' builds take the
        // python3 on PATH, else Debian's own.
        let venv = ["-c", "import ensurepip, venv"];
        if !works("python3", &venv) && !works("/usr/bin/python3", &venv) {
            return Some("python3 with venv and ensurepip".into());
        }
        if !works("node", &["--version"]) {
            return Some("node".into());
        }
        for js in ["js-classifier", "js-connector", "js-fhir-mapper"] {
            if !examples()
                .join(js)
                .join("node_modules/@bytecodealliance/componentize-js")
                .is_dir()
            {
                return Some(format!("the npm packages of sdk/examples/{js}"));
            }
        }
        None
    }

    /// Whether the tools are here; if not, says so and the test skips (a
    /// failure under `CI=true` or `MHERO_PEERS=1`).
    pub fn tools_present() -> bool {
        super::peer_present(
            missing_tools()
                .map(|what| format!("{what} is not installed (run `scripts/setup.sh --peers`)")),
        )
    }

    /// Runs a build as an author would: nothing of this test's cargo
    /// environment.
    pub fn run_build(dir: &Path, program: &str, args: &[&str]) {
        let mut cmd = Command::new(program);
        cmd.args(args).current_dir(dir);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("CARGO") && key != "CARGO_HOME" {
                cmd.env_remove(&key);
            }
        }
        let out = cmd.output().expect("run the build");
        assert!(
            out.status.success(),
            "{program} {args:?} in {} failed: {}{}",
            dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Builds the Python and JavaScript classifiers, when their tools are
    /// here (see [`tools_present`]); whether they were built.
    pub fn build_classifiers() -> bool {
        if !tools_present() {
            return false;
        }
        run_build(&examples().join("python-classifier"), "sh", &["build.sh"]);
        run_build(&examples().join("js-classifier"), "node", &["build.mjs"]);
        true
    }
}

pub mod kannel;

/// A TCP port free on loopback now (bound, then released: a peer started
/// next can take it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on loopback")
}
