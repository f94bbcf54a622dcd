//! Plugins written in Python and JavaScript (`sdk/examples`), built from
//! the package registries (componentize-py from PyPI, componentize-js from
//! npm; `scripts/setup.sh --peers` installs the npm packages), run on their
//! golden fixtures under production limits, and the JavaScript connector
//! carrying a campaign through a running broker to a gateway on loopback.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mhero_broker::dispatch::{AudienceSpec, CampaignSpec, Recipient};
use mhero_proto::Lane;

use mhero_tests::examples::{examples, run_build, tools_present};

use super::http_crash::{sink_stats, start_sink};
use super::mhero;

fn plugin_test(dir: &Path, wasm: &str) {
    plugin_test_on(dir, wasm, &[dir.join("tests/fixtures")]);
}

fn plugin_test_on(dir: &Path, wasm: &str, fixtures: &[PathBuf]) {
    let mut cmd = mhero();
    cmd.args(["plugin", "test"]).arg(dir.join(wasm));
    for f in fixtures {
        cmd.arg("--fixture").arg(f);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("PASS") && !text.contains("FAIL"),
        "{wasm}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The component's import section names `interface` (a component's
/// import names are stored as plain text).
fn assert_imports(wasm: &Path, interface: &str) {
    let bytes = std::fs::read(wasm).unwrap();
    assert!(
        bytes
            .windows(interface.len())
            .any(|w| w == interface.as_bytes()),
        "{} does not import {interface}",
        wasm.display()
    );
}

#[test]
fn python_and_javascript_plugins_build_from_the_registries_and_carry_a_campaign() {
    if !tools_present() {
        return;
    }
    // The Rust `keywords` classifier's own fixtures for the part of it the
    // examples implement.
    let keywords = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/classifiers/keywords/tests/fixtures");
    let shared: Vec<PathBuf> = ["yes-no-french", "numbered-choice", "unknown", "keywords"]
        .iter()
        .map(|f| keywords.join(format!("{f}.json")))
        .collect();
    let python = examples().join("python-classifier");
    run_build(&python, "sh", &["build.sh"]);
    // Built with the toolchains' defaults, the components import the
    // network interfaces the broker links with every use denied.
    assert_imports(&python.join("py-keywords.wasm"), "wasi:sockets/tcp@");
    plugin_test(&python, "py-keywords.wasm");
    plugin_test_on(&python, "py-keywords.wasm", &shared);
    let js = examples().join("js-classifier");
    run_build(&js, "node", &["build.mjs"]);
    plugin_test(&js, "js-keywords.wasm");
    plugin_test_on(&js, "js-keywords.wasm", &shared);
    let connector = examples().join("js-connector");
    run_build(&connector, "node", &["build.mjs"]);
    assert_imports(&js.join("js-keywords.wasm"), "wasi:http/outgoing-handler@");
    assert_imports(
        &connector.join("json-gateway.wasm"),
        "wasi:http/outgoing-handler@",
    );
    plugin_test(&connector, "json-gateway.wasm");

    // The Python connector speaks the same gateway: the JavaScript one's
    // fixtures, all but its describe().
    let js_fixtures: Vec<PathBuf> = std::fs::read_dir(connector.join("tests/fixtures"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.ends_with("describe.json"))
        .collect();
    assert!(js_fixtures.len() >= 9, "{js_fixtures:?}");
    let py_connector = examples().join("python-connector");
    run_build(&py_connector, "sh", &["build.sh"]);
    plugin_test(&py_connector, "py-gateway.wasm");
    plugin_test_on(&py_connector, "py-gateway.wasm", &js_fixtures);

    // The mappers: their own fixtures, and the Rust iHRIS mapper's for the
    // part they implement (bad entries, a document that is not FHIR).
    let ihris = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/fhir/ihris-practitioner/tests/fixtures");
    let shared: Vec<PathBuf> = ["bad-entries", "not-fhir"]
        .iter()
        .map(|f| ihris.join(format!("{f}.json")))
        .collect();
    let py_mapper = examples().join("python-fhir-mapper");
    run_build(&py_mapper, "sh", &["build.sh"]);
    plugin_test(&py_mapper, "py-practitioner.wasm");
    plugin_test_on(&py_mapper, "py-practitioner.wasm", &shared);
    let js_mapper = examples().join("js-fhir-mapper");
    run_build(&js_mapper, "node", &["build.mjs"]);
    plugin_test(&js_mapper, "js-practitioner.wasm");
    let mut shared = shared;
    shared.push(py_mapper.join("tests/fixtures/one-resource.json"));
    plugin_test_on(&js_mapper, "js-practitioner.wasm", &shared);

    // The JavaScript connector in a running broker, against a gateway on
    // loopback that records what it receives.
    let tmp = tempfile::tempdir().unwrap();
    let sink = start_sink(&tmp.path().join("sink.log"));
    let plugins = tmp.path().join("plugins/json-gateway");
    std::fs::create_dir_all(&plugins).unwrap();
    for file in ["plugin.toml", "json-gateway.wasm"] {
        std::fs::copy(connector.join(file), plugins.join(file)).unwrap();
    }
    let config = mhero_broker::Config::from_toml(
        &format!(
            r#"data_dir = "{data}"
[plugins]
dir = "{plugins}"
[plugins.config.json-gateway]
base_url = "http://{addr}"
token = "sandbox-token"
[channels.sms]
connector = "json-gateway"
rate = 200
"#,
            data = tmp.path().join("data").display(),
            plugins = tmp.path().join("plugins").display(),
            addr = sink.addr,
        ),
        Path::new("test.toml"),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let broker = mhero_broker::Broker::open(config).await.unwrap();
        let mut spec = CampaignSpec::generated(
            "js connector",
            Lane::High,
            "Clinic opens at 8 tomorrow.",
            1,
            &["sms"],
        );
        spec.audience = AudienceSpec::Recipients(
            (0..50)
                .map(|i| Recipient {
                    phone: Some(format!("07700{i:05}")),
                    ..Recipient::default()
                })
                .collect(),
        );
        let id = broker.dispatcher().submit(spec).await.unwrap().id;
        assert!(
            broker
                .dispatcher()
                .wait_done(&[id], Duration::from_secs(120))
                .await,
            "{:?}",
            broker.dispatcher().progress(id)
        );
        let p = broker.dispatcher().progress(id).unwrap();
        assert_eq!((p.wired, p.failed, p.dead), (50, 0, 0), "{p:?}");
        broker.shutdown().await;
    });
    let stats = sink_stats(&sink.addr);
    assert_eq!(stats["messages"], 50, "{stats}");
    assert_eq!(stats["duplicates"], 0, "{stats}");
}

/// `mhero plugin new <kind> --lang python|js`: each kind's template in
/// each language, as made, builds from the registries and passes its
/// fixture unchanged.
#[test]
fn new_python_and_javascript_plugins_build_and_pass_their_fixture() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (kind, lang, name) in [
        ("classifier", "python", "hello-py"),
        ("connector", "python", "gateway-py"),
        ("fhir-mapper", "python", "mapper-py"),
        ("classifier", "js", "hello-js"),
        ("connector", "js", "gateway-js"),
        ("fhir-mapper", "js", "mapper-js"),
    ] {
        let out = mhero()
            .args(["plugin", "new", kind, name, "--lang", lang, "--dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let folder = dir.path().join(name);
        if lang == "python" {
            run_build(&folder, "sh", &["build.sh"]);
        } else {
            run_build(
                &folder,
                "npm",
                &[
                    "ci",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                    // A stalled registry connection is dropped and tried
                    // again after a minute, not after npm's five.
                    "--fetch-timeout=60000",
                    "--fetch-retries=5",
                ],
            );
            run_build(&folder, "node", &["build.mjs"]);
        }
        plugin_test(&folder, &format!("{name}.wasm"));
    }
}
