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

fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn plugin_test_runs_a_built_in_plugin_on_its_fixtures() {
    let fixtures = workspace().join("plugins/classifiers/keywords/tests/fixtures");
    let out = mhero()
        .args(["plugin", "test", "keywords", "--json", "--fixture"])
        .arg(&fixtures)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 8);
    for l in &lines {
        assert_eq!(l["pass"], true, "{l}");
        assert!(l["fuel"].as_u64().unwrap() > 0, "fuel is metered: {l}");
        assert!(l["peak_memory_bytes"].as_u64().unwrap() > 0);
        assert!(l["time_us"].as_f64().unwrap() > 0.0);
        assert!(l["instantiate_ms"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn plugin_test_reports_a_failing_fixture_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("wrong.json");
    std::fs::write(
        &fixture,
        r#"{"call": "classify", "input": {"text": "oui", "context": {"expected": "YesNo", "choices": [], "language_hint": null}},
            "expect": {"label": "no"}}"#,
    )
    .unwrap();
    let out = mhero()
        .args(["plugin", "test", "keywords", "--fixture"])
        .arg(&fixture)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("FAIL") && stdout.contains("\"label\": \"yes\""),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of 1 fixtures failed"));
    let out = mhero()
        .args(["plugin", "test", "nonesuch", "--fixture"])
        .arg(&fixture)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("neither a component file nor a built-in plugin")
    );
}

#[test]
fn plugin_test_never_prints_the_connectors_token() {
    let fixture = workspace().join("plugins/connectors/sandbox/tests/fixtures/build-send.json");
    // The manifest's own token: the fixture passes, the token is hidden.
    let out = mhero()
        .args(["plugin", "test", "sandbox", "--fixture"])
        .arg(&fixture)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("PASS") && stdout.contains("[redacted]"),
        "{stdout}"
    );
    assert!(!stdout.contains("sandbox-token"), "{stdout}");
    // An operator's token: the fixture now fails, and its diff shows
    // neither token.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mhero.toml");
    std::fs::write(
        &config,
        "[plugins.config.sandbox]\ntoken = \"op-7f3c9e1d2b\"\n",
    )
    .unwrap();
    for mode in [&[][..], &["--json"][..]] {
        let out = mhero()
            .arg("--config")
            .arg(&config)
            .args(["plugin", "test", "sandbox"])
            .args(mode)
            .arg("--fixture")
            .arg(&fixture)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!stdout.contains("op-7f3c9e1d2b"), "{stdout}");
        assert!(stdout.contains("[redacted]"), "{stdout}");
    }
}
